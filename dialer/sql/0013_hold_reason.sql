-- Why isn't it dialing? (issue 16.1, SPEC §10): what holds a waiting call, recorded by the
-- move that holds it (lifecycle/moves.py hold and withdraw), so GET /v1/targets/{name}/waiting
-- groups a target's waiting calls in one pass without re-running the compliance rules.
-- One of calling_hours, holiday, cap, campaign_window, other (lifecycle/holds.py); NULL for
-- calls no rule holds (and for holds recorded before this migration: they count as 'other').
-- Nullable with no default: adding it rewrites nothing.
ALTER TABLE calls ADD COLUMN hold_reason text;
