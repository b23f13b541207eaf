-- How many times the provider dialed a call, when its terminal callback says more than once
-- (Ryng's own maxRetries re-dials an unreachable or busy customer): the per-number caps
-- count every dial (SPEC §9), not only our one request. NULL: once.
ALTER TABLE calls ADD COLUMN dials smallint;
