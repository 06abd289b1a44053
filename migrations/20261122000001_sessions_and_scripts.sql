-- Sessions, scripts and registered functions: what `initialize` stores and
-- `execute` reads. Scripts are kept once per content hash, whatever the number
-- of sessions that run them.

CREATE TABLE scripts (
    hash        TEXT PRIMARY KEY,
    language    TEXT NOT NULL,
    content     TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- A Language-Title registered by an owner (dynamic) or shipped with the
-- service (predefined, owner ''), so `initialize` may omit script_content.
CREATE TABLE functions (
    owner           TEXT NOT NULL,
    language_title  TEXT NOT NULL,
    language        TEXT NOT NULL,
    title           TEXT NOT NULL,
    kind            TEXT NOT NULL CHECK (kind IN ('predefined', 'dynamic')),
    description     TEXT,
    script_hash     TEXT NOT NULL REFERENCES scripts (hash),
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (owner, language_title)
);

CREATE TABLE sessions (
    request_id        UUID PRIMARY KEY,
    owner             TEXT NOT NULL,
    language_title    TEXT NOT NULL,
    language          TEXT NOT NULL,
    script_hash       TEXT NOT NULL REFERENCES scripts (hash),
    context           JSONB NOT NULL,
    timeout_ms        BIGINT NOT NULL,
    memory_mb         INTEGER NOT NULL,
    retain            BOOLEAN NOT NULL DEFAULT false,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at        TIMESTAMPTZ NOT NULL,
    execution_count   BIGINT NOT NULL DEFAULT 0,
    last_executed_at  TIMESTAMPTZ
);

CREATE INDEX sessions_expiry ON sessions (expires_at) WHERE NOT retain;
