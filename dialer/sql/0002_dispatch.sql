-- Dispatch to providers: stable custom-field slots, per-target pacing state,
-- instance heartbeats (to tell a dead sender from a slow one), and richer chunks.

CREATE TABLE target_fields (
    target      text    NOT NULL,
    name        text    NOT NULL,
    slot        integer NOT NULL,
    PRIMARY KEY (target, name),
    UNIQUE (target, slot)
);

CREATE TABLE target_state (
    target          text PRIMARY KEY,
    paused          boolean     NOT NULL DEFAULT false,
    paused_reason   text,
    rr_index        bigint      NOT NULL DEFAULT 0,   -- round-robin across campaigns
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE instances (
    id              text PRIMARY KEY,
    started_at      timestamptz NOT NULL DEFAULT now(),
    heartbeat_at    timestamptz NOT NULL DEFAULT now(),
    http_listen     text
);

-- recorded: written, not yet sent (safe to send) → sending: the HTTP request may be out
-- → sent | failed (provider never took it: calls back to pending) | rejected (4xx)
-- | uncertain (sent, outcome unknown: never resent blindly)
ALTER TABLE chunks
    ADD COLUMN kind         text NOT NULL DEFAULT 'queue',
    ADD COLUMN agent        text,
    ADD COLUMN http_status  integer,
    ADD COLUMN error        text,
    ADD COLUMN finished_at  timestamptz,
    ADD CONSTRAINT chunks_state_check CHECK (state IN
        ('recorded', 'sending', 'sent', 'failed', 'rejected', 'uncertain'));
CREATE INDEX chunks_open ON chunks (state, created_at) WHERE state IN ('recorded', 'sending', 'uncertain');

ALTER TABLE calls
    ADD COLUMN provider_call_id text,
    ADD COLUMN requeued         integer NOT NULL DEFAULT 0;   -- uncertain re-queues (at most once)
CREATE INDEX calls_chunk ON calls (chunk_id) WHERE chunk_id IS NOT NULL;
CREATE INDEX calls_in_flight ON calls (target, state)
    WHERE state IN ('submitting', 'uncertain', 'queued', 'assigned', 'connected');
CREATE INDEX calls_ended_agent ON calls (target, ended_at) WHERE agent IS NOT NULL AND ended_at IS NOT NULL;

ALTER TABLE chunks ADD COLUMN next_attempt_at timestamptz;
