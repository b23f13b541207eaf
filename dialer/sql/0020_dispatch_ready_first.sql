-- Dispatch looks only at calls that are due. A waiting call held until a time (calling
-- hours, a holiday, a cap, a re-dial or callback due later) stayed in calls_dispatchable
-- among the due ones, in priority and id order, so every fill walked past all of them:
-- 1.5 M leads out of hours kept the in-hours leads queued behind them waiting while agents
-- were idle.
--
-- calls_dispatchable keeps its predicate (every waiting call: the counts read it) and its
-- width; its priority key is NULL for a call held until a time (not_before set), and NULLS
-- LAST puts those after every due call: dispatch_candidates reads the due ones in priority
-- and id order and stops there. calls_held orders the held ones by when they come due, for
-- dispatch_release_due to move them back (not_before to NULL) when their time has come.
-- Intake rows have no not_before: they enter calls_dispatchable as before (the key stays 16
-- bytes, so btree's split for ascending ids still packs its pages: 31 MB a million rows; a
-- timestamp key column made it 86 MB) and never enter calls_held.
DROP INDEX calls_dispatchable;
CREATE INDEX calls_dispatchable
    ON calls (hashtext(target), (CASE WHEN not_before IS NULL THEN priority END) DESC NULLS LAST, id)
    WHERE state IN ('pending', 'scheduled', 'retry_wait');
CREATE INDEX calls_held ON calls (hashtext(target), not_before)
    WHERE state IN ('pending', 'scheduled', 'retry_wait') AND not_before IS NOT NULL;
