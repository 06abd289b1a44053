-- Request and error logs: one row per API request, written by the API off the
-- request path in batches (secrets already masked), and one error_logs row per
-- server-side failure (5xx, internal error, panic) with its detail. The
-- dispatcher deletes rows older than REQUEST_LOG_RETENTION_DAYS.

CREATE TABLE request_logs (
    id               UUID PRIMARY KEY,
    created_at       TIMESTAMPTZ NOT NULL,
    method           TEXT NOT NULL,
    -- The route template (`/api/v1/execute/{request_id}`), or 'unmatched'.
    route            TEXT NOT NULL,
    -- The path and query as requested, secrets masked.
    path             TEXT NOT NULL,
    status_code      INTEGER NOT NULL,
    duration_ms      DOUBLE PRECISION NOT NULL,
    owner            TEXT,
    -- The session, when the request named or created one.
    request_id       UUID,
    job_id           UUID,
    language_title   TEXT,
    client_ip        TEXT,
    user_agent       TEXT,
    -- Request headers, credential values masked.
    request_headers  JSONB NOT NULL DEFAULT '{}',
    -- For status >= 400: the contract's error code and message.
    error_code       TEXT,
    error_message    TEXT
);

CREATE INDEX request_logs_created_at ON request_logs (created_at);
CREATE INDEX request_logs_request_id ON request_logs (request_id) WHERE request_id IS NOT NULL;
CREATE INDEX request_logs_status ON request_logs (status_code, created_at) WHERE status_code >= 400;

CREATE TABLE error_logs (
    id              UUID PRIMARY KEY,
    request_log_id  UUID REFERENCES request_logs (id) ON DELETE CASCADE,
    created_at      TIMESTAMPTZ NOT NULL,
    error_code      TEXT NOT NULL,
    error_message   TEXT NOT NULL,
    -- The cause of an internal error, a panic's message, a script's stack.
    stack_trace     TEXT,
    details         JSONB
);

CREATE INDEX error_logs_request_log_id ON error_logs (request_log_id);
CREATE INDEX error_logs_created_at ON error_logs (created_at);

-- Session expiry, reaped by the dispatcher: retained sessions expire too
-- (their expiry moves forward with each execute), so the expiry index covers
-- every session; and scripts no session, function or job refers to are
-- removed, which needs those references indexed.
DROP INDEX sessions_expiry;
CREATE INDEX sessions_expires_at ON sessions (expires_at);
CREATE INDEX sessions_script_hash ON sessions (script_hash);
CREATE INDEX functions_script_hash ON functions (script_hash);
CREATE INDEX jobs_script_hash ON jobs (script_hash);
