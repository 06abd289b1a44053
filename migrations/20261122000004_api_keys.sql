-- API keys: a caller may authenticate with `X-API-Key` instead of a JWT.
-- Only the SHA-256 of a key is kept, so a copy of this table lets nobody in;
-- the key itself is shown once, when it is created. `prefix` (the first
-- characters of the key) tells keys apart in listings.

CREATE TABLE api_keys (
    id           UUID PRIMARY KEY,
    key_hash     TEXT NOT NULL UNIQUE,
    prefix       TEXT NOT NULL,
    owner        TEXT NOT NULL CHECK (owner <> ''),
    scopes       TEXT[] NOT NULL,
    description  TEXT,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at   TIMESTAMPTZ
);

CREATE INDEX api_keys_owner ON api_keys (owner);
