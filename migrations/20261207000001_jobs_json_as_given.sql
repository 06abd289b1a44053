-- What callers and scripts hand over is kept as they gave it. `jsonb` refuses
-- text PostgreSQL cannot hold (a "\u0000" escape, valid JSON) and a statement
-- carrying one such value fails as a whole; `json` keeps the text as given
-- and still checks that it is JSON.
ALTER TABLE jobs
    ALTER COLUMN params TYPE json USING params::json,
    ALTER COLUMN context TYPE json USING context::json,
    ALTER COLUMN result TYPE json USING result::json,
    ALTER COLUMN error TYPE json USING error::json,
    ALTER COLUMN logs TYPE json USING logs::json;

ALTER TABLE sessions ALTER COLUMN context TYPE json USING context::json;

-- The record is assembled as text, so that no part of it passes through jsonb:
-- the fixed fields (which never hold such text) first, then the result, the
-- error and the logs exactly as stored, each only when present.
DROP FUNCTION job_record(jobs);
CREATE FUNCTION job_record(j jobs) RETURNS json LANGUAGE sql STABLE AS $$
    SELECT (left(jsonb_build_object(
               'job_id', j.job_id,
               'batch_id', j.batch_id,
               'request_id', j.request_id,
               'language_title', j.language_title,
               'status', j.status,
               'attempts', j.attempts,
               'created_at', j.created_at,
               'started_at', j.started_at,
               'finished_at', j.finished_at,
               'execution_time', j.execution_time_ms)::text, -1)
           || CASE WHEN j.result IS NULL THEN '' ELSE ', "result": ' || j.result::text END
           || CASE WHEN j.error IS NULL THEN '' ELSE ', "error": ' || j.error::text END
           || CASE WHEN j.logs IS NULL THEN '' ELSE ', "logs": ' || j.logs::text END
           || '}')::json
$$;
