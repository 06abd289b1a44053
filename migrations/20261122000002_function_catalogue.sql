-- The functions catalogue shows what a function takes and gives: predefined
-- functions ship a JSON Schema of their params and worked examples.
ALTER TABLE functions ADD COLUMN params_schema JSONB;
ALTER TABLE functions ADD COLUMN examples JSONB;
CREATE INDEX functions_by_language ON functions (language, language_title);
