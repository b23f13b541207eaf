-- A call waiting for a re-dial or an agent-scheduled callback (retry_wait) may be held by a
-- rule when it comes due (a cap, a holiday, calling hours): it then waits as scheduled
-- until the hold clears, as any waiting call does. Both are waiting states of one rank.
INSERT INTO call_moves (from_state, to_state) VALUES ('retry_wait', 'scheduled')
ON CONFLICT DO NOTHING;
