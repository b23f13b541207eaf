-- Call lifecycle: re-dial attempts, the result-webhook outbox, batch completion.

-- attempts after the first point at their lead (the first row); NULL on first attempts,
-- so ingest pays nothing for this index
CREATE INDEX calls_lead ON calls (lead_id) WHERE lead_id IS NOT NULL;

-- Durable outbox of signed result webhooks: one row per ended call, retried for 24 h.
CREATE TABLE webhook_outbox (
    id              bigserial PRIMARY KEY,
    batch_id        uuid        NOT NULL,
    call_id         bigint      NOT NULL,
    url             text        NOT NULL,
    body            bytea       NOT NULL,          -- exactly the bytes that are signed
    state           text        NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_status     integer,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    UNIQUE (call_id)
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_at) WHERE state = 'pending';

ALTER TABLE batches ADD COLUMN results_path text;
