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

-- Every input row, valid or not: the report is read from here.
-- No foreign keys on leads, calls and call_events: they are written in bulk (COPY,
-- INSERT … SELECT of a million rows), a per-row key check would double the ingest time,
-- and the intake code is the only writer.
CREATE TABLE leads (
    id              bigserial PRIMARY KEY,
    batch_id        uuid        NOT NULL,
    line            integer     NOT NULL,             -- file line / sheet row / API index
    raw_number      text,
    e164            text,
    priority        integer     NOT NULL DEFAULT 0,
    agents          text[],
    external_id     text,
    timezone        text,
    fields          jsonb,
    -- ok → accepted at finalise; else the intake outcome that never dials
    status          text        NOT NULL CHECK (status IN
                    ('ok', 'invalid', 'duplicate', 'dnc', 'rejected')),
    reason          text
);
CREATE INDEX leads_batch_line ON leads (batch_id, line);
CREATE INDEX leads_external_id ON leads USING hash (external_id) WHERE external_id IS NOT NULL;

CREATE TABLE calls (
    id              bigserial PRIMARY KEY,
    lead_id         bigint      NOT NULL,
    batch_id        uuid        NOT NULL,
    target          text        NOT NULL,
    e164            text        NOT NULL,
    priority        integer     NOT NULL DEFAULT 0,
    attempt         integer     NOT NULL DEFAULT 1,
    state           text        NOT NULL DEFAULT 'pending',
    outcome         text,                             -- provider's disposition, verbatim
    agent           text,
    chunk_id        bigint,
    not_before      timestamptz,                      -- scheduled / retry_wait until
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    submitted_at    timestamptz,
    ended_at        timestamptz
);
-- dedupe looks numbers up by equality only; a hash index is far cheaper to maintain
CREATE INDEX calls_e164 ON calls USING hash (e164);
CREATE INDEX calls_batch ON calls (batch_id, id);
CREATE INDEX calls_dispatchable ON calls (target, priority DESC, id)
    WHERE state IN ('pending', 'scheduled', 'retry_wait');

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
