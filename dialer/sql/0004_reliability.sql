-- Reliability: send outcomes, proof of life, re-checks at send time.

-- withdrawn: every row was taken out by the re-check just before sending (DNC, cancel,
-- pause, calling hours, holiday, cap): nothing was sent, nothing will be.
ALTER TABLE chunks DROP CONSTRAINT chunks_state_check;
ALTER TABLE chunks ADD CONSTRAINT chunks_state_check CHECK (state IN
    ('recorded', 'sending', 'sent', 'failed', 'rejected', 'uncertain', 'withdrawn'));

-- Chunks a call was in before it was put back to waiting (an uncertain re-queue, a send
-- that failed): a late callback of such an earlier send still finds its call, and proves
-- that send was taken. NULL for almost every call, so the index stays tiny.
ALTER TABLE calls ADD COLUMN prev_chunks bigint[];
CREATE INDEX calls_prev_chunks ON calls USING gin (prev_chunks) WHERE prev_chunks IS NOT NULL;

-- The database refuses a state no code knows (the list is lifecycle/states.py's).
ALTER TABLE calls ADD CONSTRAINT calls_state_check CHECK (state IN (
    'pending', 'scheduled', 'submitting', 'uncertain', 'queued', 'assigned', 'connected',
    'retry_wait', 'answered', 'no_answer', 'busy', 'unreachable', 'failed',
    'rejected_by_provider', 'cancelled', 'expired', 'capped', 'invalid', 'duplicate', 'dnc'));
