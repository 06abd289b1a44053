-- Asynchronous jobs: the record a 202 promises. The dispatcher moves a job
-- through queued → running → succeeded | failed | timed_out | cancelled | dead;
-- every transition is guarded by the statuses it may leave (WHERE status IN …),
-- so each job commits exactly one terminal result however often it ran.

CREATE TABLE jobs (
    job_id             UUID PRIMARY KEY,
    batch_id           UUID,
    owner              TEXT NOT NULL,
    request_id         UUID,
    language           TEXT NOT NULL,
    language_title     TEXT NOT NULL,
    script_hash        TEXT NOT NULL REFERENCES scripts (hash),
    params             JSONB NOT NULL,
    context            JSONB NOT NULL,
    timeout_ms         BIGINT NOT NULL,
    memory_mb          INTEGER NOT NULL,
    status             TEXT NOT NULL DEFAULT 'queued' CHECK (status IN
                         ('queued', 'running', 'succeeded', 'failed', 'timed_out', 'cancelled', 'dead')),
    -- Deliveries to workers seen so far (JetStream's delivery count).
    attempts           INTEGER NOT NULL DEFAULT 0,
    -- Times the job was (re)published: part of its Nats-Msg-Id, so a republish
    -- is not mistaken for a duplicate of the first publish.
    generation         INTEGER NOT NULL DEFAULT 0,
    -- Jobs-stream sequence of the latest publish, once JetStream acknowledged it.
    published_seq      BIGINT,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at         TIMESTAMPTZ,
    finished_at        TIMESTAMPTZ,
    execution_time_ms  DOUBLE PRECISION,
    result             JSONB,
    error              JSONB,
    logs               JSONB,
    worker_id          TEXT,
    callback_url       TEXT,
    -- NULL without a callback; 'pending' once terminal, until 'delivered' or 'failed'.
    callback_state     TEXT CHECK (callback_state IN ('pending', 'delivered', 'failed')),
    callback_attempts  INTEGER NOT NULL DEFAULT 0,
    next_callback_at   TIMESTAMPTZ,
    idempotency_key    TEXT
);

CREATE INDEX jobs_batch ON jobs (batch_id, status) WHERE batch_id IS NOT NULL;
CREATE INDEX jobs_owner_status ON jobs (owner, status, created_at);
-- What the sweeper looks at: jobs not finished.
CREATE INDEX jobs_open ON jobs (updated_at) WHERE status IN ('queued', 'running');
CREATE INDEX jobs_callbacks ON jobs (next_callback_at) WHERE callback_state = 'pending';
-- A repeated Idempotency-Key (or Nats-Msg-Id of a direct submission) finds the
-- first job; keys older than 24 h are released when reused.
CREATE UNIQUE INDEX jobs_idempotency ON jobs (owner, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Every attempt to deliver a callback.
CREATE TABLE callback_attempts (
    job_id        UUID NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
    attempt       INTEGER NOT NULL,
    attempted_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    status_code   INTEGER,
    error         TEXT,
    delivered     BOOLEAN NOT NULL,
    PRIMARY KEY (job_id, attempt)
);
-- At most one successful delivery per job.
CREATE UNIQUE INDEX callback_delivered_once ON callback_attempts (job_id) WHERE delivered;

-- Direct NATS submissions that could not be accepted: kept, never dropped silently.
CREATE TABLE rejected_submissions (
    id           BIGSERIAL PRIMARY KEY,
    subject      TEXT NOT NULL,
    payload      BYTEA NOT NULL,
    code         TEXT NOT NULL,
    message      TEXT NOT NULL,
    received_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The record callers see (GET /api/v1/jobs/{id}), the dispatcher publishes on
-- <prefix>.results.<language_title> and POSTs to callbacks: one definition for all.
CREATE FUNCTION job_record(j jobs) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
               'job_id', j.job_id,
               'batch_id', j.batch_id,
               'request_id', j.request_id,
               'language_title', j.language_title,
               'status', j.status,
               'attempts', j.attempts,
               'created_at', j.created_at,
               'started_at', j.started_at,
               'finished_at', j.finished_at,
               'execution_time', j.execution_time_ms)
           || CASE WHEN j.result IS NULL THEN '{}'::jsonb ELSE jsonb_build_object('result', j.result) END
           || CASE WHEN j.error IS NULL THEN '{}'::jsonb ELSE jsonb_build_object('error', j.error) END
           || CASE WHEN j.logs IS NULL THEN '{}'::jsonb ELSE jsonb_build_object('logs', j.logs) END
$$;
