-- An inbox batch owes its results file from the commit that makes it done until the file
-- is renamed into place: results_due_at is when to (re)try writing it, NULL once written
-- (or never owed). A failed write, or a crash between that commit and the write, leaves it
-- owed, and the completion sweep retries it with backoff (results_attempts).
ALTER TABLE batches ADD COLUMN results_due_at timestamptz,
                    ADD COLUMN results_attempts integer NOT NULL DEFAULT 0;
-- the sweep reads only the owed ones: almost none, whatever the number of batches
CREATE INDEX batches_results_owed ON batches (results_due_at) WHERE results_due_at IS NOT NULL;
