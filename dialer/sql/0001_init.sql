-- Foundation schema: batches of leads, the calls made from them, their audit trail,
-- the submissions (chunks) sent to providers, the do-not-call list, inbox files and
-- API idempotency keys.

CREATE TABLE batches (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    target          text        NOT NULL,
    source          text        NOT NULL CHECK (source IN ('inbox', 'api', 'cli')),
    source_name     text,
    sha256          text,
    -- receiving: rows are streaming in; ingested: calls exist; failed: unreadable input
    state           text        NOT NULL DEFAULT 'receiving'
                    CHECK (state IN ('receiving', 'ingested', 'failed', 'cancelled', 'done')),
    rows_read       integer     NOT NULL DEFAULT 0,   -- resume point: data rows committed
    counts          jsonb       NOT NULL DEFAULT '{}',
    error           text,
    result_webhook_url text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    ingested_at     timestamptz,
    ended_at        timestamptz
);
CREATE INDEX batches_created ON batches (created_at DESC);

-- One row per input row and per dial attempt. The first attempt of a lead *is* its
-- input row (valid or not: the report is read from here); a re-dial adds a row with
-- attempt + 1 and lead_id pointing at the first. Keeping leads and calls in one table
-- lets intake COPY each row once instead of writing it twice.
-- No foreign keys on calls and call_events: they are written in bulk (COPY of a million
-- rows), a per-row key check would double the ingest time, and the daemon is the only writer.
CREATE TABLE calls (
    id              bigserial PRIMARY KEY,
    batch_id        uuid        NOT NULL,
    target          text        NOT NULL,
    line            integer     NOT NULL,             -- file line / sheet row / API index
    lead_id         bigint,                           -- NULL on the first attempt (the lead itself)
    attempt         integer     NOT NULL DEFAULT 1,
    raw_number      text,
    e164            text,
    priority        integer     NOT NULL DEFAULT 0,
    agents          text[],
    external_id     text,
    timezone        text,
    fields          jsonb,
    -- intake outcomes (invalid, duplicate, dnc) never dial; the rest is the call lifecycle
    state           text        NOT NULL DEFAULT 'pending',
    reason          text,
    outcome         text,                             -- provider's disposition, verbatim
    agent           text,
    chunk_id        bigint,
    not_before      timestamptz,                      -- scheduled / retry_wait until
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    submitted_at    timestamptz,
    ended_at        timestamptz
);
-- report order, resume, and the per-batch scans of finalise
CREATE INDEX calls_batch_line ON calls (batch_id, line);
-- dedupe and DNC look numbers up by equality only: a hash index is far cheaper to keep
CREATE INDEX calls_e164 ON calls USING hash (e164);
-- btree, not hash: CRM ids usually arrive in order, and appending to a btree is cheap
CREATE INDEX calls_external_id ON calls (external_id) WHERE external_id IS NOT NULL;
CREATE INDEX calls_dispatchable ON calls (target, priority DESC, id)
    WHERE state IN ('pending', 'scheduled', 'retry_wait');

CREATE VIEW leads AS SELECT * FROM calls WHERE attempt = 1;

-- Append-only audit trail: every callback, timer and API action with its raw payload.
CREATE TABLE call_events (
    id              bigserial PRIMARY KEY,
    call_id         bigint,
    at              timestamptz NOT NULL DEFAULT now(),
    kind            text        NOT NULL,
    from_state      text,
    to_state        text,
    applied         boolean     NOT NULL DEFAULT true,  -- false: late/duplicate, kept only
    payload         jsonb
);
CREATE INDEX call_events_call ON call_events (call_id, id);

-- Submissions to a provider, recorded before they are sent.
CREATE TABLE chunks (
    id              bigserial PRIMARY KEY,
    target          text        NOT NULL,
    token           text        NOT NULL UNIQUE,
    state           text        NOT NULL DEFAULT 'recorded',
    rows            integer     NOT NULL DEFAULT 0,
    request         jsonb,
    response        jsonb,
    attempts        integer     NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    claimed_by      text,
    claimed_at      timestamptz
);

CREATE TABLE dnc (
    e164            text PRIMARY KEY,
    source          text        NOT NULL DEFAULT 'api',
    added_at        timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz
);

CREATE TABLE inbox_files (
    sha256          text PRIMARY KEY,
    batch_id        uuid        REFERENCES batches (id) ON DELETE SET NULL,
    name            text        NOT NULL,
    target          text        NOT NULL,
    -- ingesting → ingested (calls exist) → filed (moved with its report); or failed
    state           text        NOT NULL DEFAULT 'ingesting'
                    CHECK (state IN ('ingesting', 'ingested', 'filed', 'failed')),
    path            text        NOT NULL,
    filed_path      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    filed_at        timestamptz
);

CREATE TABLE idempotency_keys (
    key             text PRIMARY KEY,
    request_sha256  text        NOT NULL,
    status_code     integer     NOT NULL,
    response        jsonb       NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
