-- Performance: the dispatch index keyed for cheap ingest, and pacing by agent.

-- Ingest speed: the dispatch queue's index keyed by a fixed-width hash of the target.
--
-- Intake appends a million rows to calls per file, and every pending row enters this
-- index. Keyed (target, priority DESC, id), its leaf pages split half full under that
-- insertion pattern (one run of ascending ids per priority): 69 MB for a million rows,
-- where (hashtext(target), priority DESC, id) stays packed at 31 MB, with less work per
-- row (measured on the 1,000,000-row file of bench/ingest.py). dispatch_candidates asks
-- for the hash and the target both (a hash shared by two targets only costs rows to skip).
DROP INDEX calls_dispatchable;
CREATE INDEX calls_dispatchable ON calls (hashtext(target), priority DESC, id)
    WHERE state IN ('pending', 'scheduled', 'retry_wait');

-- Pacing by agent: the agent a sent call was directed to (a target with a global agent
-- list sends each call to one agent with room for it), until a callback names the agent
-- who took it (agent). Counted while the call is in flight; NULL for other mappings.
ALTER TABLE calls ADD COLUMN offered_to text;
