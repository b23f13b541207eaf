-- Issue 16, points 3 and 4: the provider rate budget shared by every instance, and the
-- abandon-rate guard of customer-first targets.

-- ==== provider rate budget ==================================================================
-- One row per provider: the AIMD state (a 429 halves the rate, which then climbs back
-- linearly) and a hold every instance honours after a 429's Retry-After. Its row lock
-- serialises reservations across instances.
CREATE TABLE rate_budget (
    provider        text PRIMARY KEY,
    factor          double precision NOT NULL DEFAULT 1,  -- share of the budget at changed_at
    changed_at      timestamptz,                          -- last decrease (NULL: never lowered)
    blocked_until   timestamptz,                          -- nothing is sent before (Retry-After)
    lowered_total   bigint      NOT NULL DEFAULT 0
);

-- Every send counted against the budget: it occupies the window from its reservation
-- until ``window`` after its request finished (so it is counted however long the request
-- took to reach the provider). Rows leave once they can no longer count.
CREATE TABLE rate_budget_sends (
    id              bigserial PRIMARY KEY,
    provider        text        NOT NULL,
    reserved_at     timestamptz NOT NULL,
    finished_at     timestamptz,                          -- NULL: the request is out
    calls           integer     NOT NULL CHECK (calls >= 0),
    chunk_id        bigint
);
CREATE INDEX rate_budget_sends_open ON rate_budget_sends (provider, finished_at);

-- ==== abandon-rate guard ====================================================================
-- A new terminal state: the customer picked up and no agent came (a customer-first dial the
-- provider dropped). Not `answered` (nobody talked: contact rate and results would lie), not
-- `no_answer` (the customer did pick up, and its re-dial must wait abandon_redial_min).
-- The state check is rebuilt from call_moves, so it keeps any state an earlier migration
-- added there, whatever order migrations of parallel branches were numbered in.
INSERT INTO call_moves (from_state, to_state)
SELECT s, 'abandoned' FROM unnest(ARRAY['pending', 'scheduled', 'submitting', 'uncertain', 'queued',
                                        'assigned', 'connected', 'retry_wait']) AS s
ON CONFLICT DO NOTHING;

DO $$
DECLARE known text[];
BEGIN
    SELECT array_agg(DISTINCT s ORDER BY s) INTO known FROM (
        SELECT from_state AS s FROM call_moves UNION SELECT to_state FROM call_moves
        UNION SELECT unnest(ARRAY['answered', 'no_answer', 'busy', 'unreachable', 'failed',
                                  'rejected_by_provider', 'cancelled', 'expired', 'capped',
                                  'invalid', 'duplicate', 'dnc'])) AS all_states;
    ALTER TABLE calls DROP CONSTRAINT calls_state_check;
    EXECUTE format('ALTER TABLE calls ADD CONSTRAINT calls_state_check CHECK (state = ANY (%L::text[]))', known);
END
$$;

-- The rolling 30-day abandon rate reads customer-answered calls by target and end time.
CREATE INDEX calls_picked_up ON calls (target, ended_at) WHERE state IN ('answered', 'abandoned');

-- Where each customer-first target's guard stands (shared by every instance):
-- ok → slowdown (one call per ready agent) → paused (the target paused itself);
-- overridden: an operator resumed a self-paused target; it stays slowed and is not paused
-- again until the rate has fallen below abandon_max_pct and reached it once more.
CREATE TABLE abandon_guard (
    target          text PRIMARY KEY,
    level           text        NOT NULL DEFAULT 'ok'
                    CHECK (level IN ('ok', 'slowdown', 'paused', 'overridden')),
    rate            double precision NOT NULL DEFAULT 0,   -- abandoned / picked up, 0..1
    abandoned       bigint      NOT NULL DEFAULT 0,
    picked_up       bigint      NOT NULL DEFAULT 0,
    checked_at      timestamptz,
    changed_at      timestamptz
);
