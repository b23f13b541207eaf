-- Dispatch looks only at calls that are due. A waiting call held until a time (calling
-- hours, a holiday, a cap, a re-dial or callback due later) stayed in calls_dispatchable
-- among the due ones, in priority and id order, so every fill walked past all of them:
-- 1.5 M leads out of hours kept the in-hours leads queued behind them waiting while agents
-- were idle. The key now puts each target's due calls (not_before NULL) first, in dispatch
-- order, and the held ones after them by the time they come due: dispatch_candidates reads
-- only the first part, and dispatch_release_due moves the held ones whose time has come
-- back into it (not_before back to NULL). Intake rows have no not_before: they go in as
-- before, appended in priority and id order.
DROP INDEX calls_dispatchable;
CREATE INDEX calls_dispatchable
    ON calls (hashtext(target), coalesce(not_before, '-infinity'::timestamptz), priority DESC, id)
    WHERE state IN ('pending', 'scheduled', 'retry_wait');
