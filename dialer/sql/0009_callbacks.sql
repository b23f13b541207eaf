-- Agent-scheduled callbacks ("call me back at 3 pm", SPEC §6). The callback itself is a
-- new attempt of the lead in `calls` (reason 'callback', retry_wait until it is due); this
-- table says who owns it and until when only that agent may take it.

CREATE TABLE callbacks (
    call_id         bigint PRIMARY KEY,            -- the attempt that makes the callback
    lead_id         bigint      NOT NULL,          -- the lead's first row
    target          text        NOT NULL,
    owner           text,                          -- the agent who promised it; NULL: anyone
    asked_at        timestamptz NOT NULL,          -- the time asked for
    due_at          timestamptz NOT NULL,          -- when it is dialed (moved into calling hours)
    grace_until     timestamptz NOT NULL,          -- the owner alone until then; anyone after
    released_at     timestamptz,                   -- when the grace passed with the owner not ready
    source          text        NOT NULL CHECK (source IN ('disposition', 'api', 'console', 'missed')),
    from_call       bigint      NOT NULL,          -- the call that asked for it
    missed          integer     NOT NULL DEFAULT 0, -- callback_missed retries before this one
    created_at      timestamptz NOT NULL
);
CREATE INDEX callbacks_due ON callbacks (target, due_at);
CREATE INDEX callbacks_lead ON callbacks (lead_id);
-- the dispatcher's question every tick: which owned callbacks still wait on their owner
CREATE INDEX callbacks_owned ON callbacks (target, grace_until) WHERE owner IS NOT NULL AND released_at IS NULL;
