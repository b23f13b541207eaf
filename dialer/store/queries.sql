-- Named queries. Each starts with a "-- name: <identifier>" line.

-- name: batch_insert
INSERT INTO batches (target, source, source_name, sha256, result_webhook_url, created_at)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING id

-- name: batch_get
SELECT * FROM batches WHERE id = $1

-- name: batch_add_rows
UPDATE batches SET rows_read = rows_read + $2 WHERE id = $1 AND state = 'receiving'
RETURNING rows_read

-- name: batch_fail
UPDATE batches SET state = 'failed', error = $2, ended_at = $3 WHERE id = $1

-- name: batch_drop_leads
DELETE FROM leads WHERE batch_id = $1

-- name: batch_lock_target
SELECT pg_advisory_xact_lock(hashtext('dialer.dedupe:' || $1))

-- name: finalise_collapse_in_batch
-- Within a batch the same number collapses: the highest priority (then first line) is kept.
WITH ranked AS (
    SELECT id,
           row_number() OVER w AS rn,
           first_value(line) OVER w AS kept_line
    FROM leads
    WHERE batch_id = $1 AND status = 'ok'
      AND e164 IN (SELECT e164 FROM leads WHERE batch_id = $1 AND status = 'ok'
                   GROUP BY e164 HAVING count(*) > 1)
    WINDOW w AS (PARTITION BY e164 ORDER BY priority DESC, line)
)
UPDATE leads l
SET status = 'duplicate', reason = 'duplicate of line ' || r.kept_line || ' in this batch'
FROM ranked r
WHERE l.id = r.id AND r.rn > 1

-- name: finalise_dedupe_target
-- A number with a live call for the target, or one that ended within the window.
UPDATE leads l
SET status = 'duplicate',
    reason = CASE WHEN c.ended_at IS NULL
                  THEN 'number already has a live call (call ' || c.id || ')'
                  ELSE 'number was called within the dedupe window (call ' || c.id || ')' END
FROM calls c
WHERE l.batch_id = $1 AND l.status = 'ok'
  AND c.target = $2 AND c.e164 = l.e164 AND c.batch_id <> $1
  AND (c.ended_at IS NULL OR c.ended_at > $3)

-- name: finalise_dnc
UPDATE leads l
SET status = 'dnc', reason = 'number is on the do-not-call list'
FROM dnc d
WHERE l.batch_id = $1 AND l.status = 'ok' AND d.e164 = l.e164
  AND (d.expires_at IS NULL OR d.expires_at > $2)

-- name: finalise_insert_calls
INSERT INTO calls (lead_id, batch_id, target, e164, priority, state, created_at, updated_at)
SELECT id, batch_id, $2, e164, priority, 'pending', $3, $3
FROM leads
WHERE batch_id = $1 AND status = 'ok'
ORDER BY id

-- name: lead_status_counts
SELECT status, count(*)::int AS n FROM leads WHERE batch_id = $1 GROUP BY status

-- name: finalise_batch
UPDATE batches SET state = 'ingested', counts = $2, ingested_at = $3
WHERE id = $1 AND state = 'receiving'

-- name: batch_rejected_rows
SELECT line, status, reason, raw_number
FROM leads
WHERE batch_id = $1 AND status <> 'ok'
ORDER BY line

-- name: batch_call_counts
SELECT state, count(*)::int AS n FROM calls WHERE batch_id = $1 GROUP BY state

-- name: batch_outcome_counts
SELECT outcome, count(*)::int AS n FROM calls
WHERE batch_id = $1 AND outcome IS NOT NULL GROUP BY outcome

-- name: batch_calls_page
SELECT c.id, c.e164, c.state, c.outcome, c.attempt, c.agent, c.priority,
       c.created_at, c.updated_at, c.ended_at, l.external_id, l.line
FROM calls c JOIN leads l ON l.id = c.lead_id
WHERE c.batch_id = $1 AND c.id > $2
ORDER BY c.id
LIMIT $3

-- name: batches_recent
SELECT id, target, source, source_name, state, counts, created_at, rows_read
FROM batches ORDER BY created_at DESC LIMIT $1

-- name: call_get
SELECT c.*, l.external_id, l.line, l.raw_number, l.fields, l.agents, l.timezone
FROM calls c JOIN leads l ON l.id = c.lead_id
WHERE c.id = $1

-- name: calls_by_external_id
SELECT c.id FROM calls c JOIN leads l ON l.id = c.lead_id
WHERE l.external_id = $1
ORDER BY c.id
LIMIT 100

-- name: call_events
SELECT id, at, kind, from_state, to_state, applied, payload
FROM call_events WHERE call_id = $1 ORDER BY id

-- name: call_state_totals
SELECT state, count(*)::int AS n FROM calls GROUP BY state

-- name: inbox_file_get
SELECT * FROM inbox_files WHERE sha256 = $1

-- name: inbox_file_insert
INSERT INTO inbox_files (sha256, batch_id, name, target, path)
VALUES ($1, $2, $3, $4, $5)

-- name: inbox_file_state
UPDATE inbox_files SET state = $2, filed_path = coalesce($3, filed_path),
       filed_at = CASE WHEN $2 IN ('filed', 'failed') THEN $4::timestamptz ELSE filed_at END
WHERE sha256 = $1

-- name: dnc_add
INSERT INTO dnc (e164, source, added_at, expires_at)
SELECT n, $2, $3, $4 FROM unnest($1::text[]) AS n
ON CONFLICT (e164) DO UPDATE SET expires_at = EXCLUDED.expires_at, source = EXCLUDED.source
RETURNING e164, (xmax = 0) AS inserted

-- name: dnc_delete
DELETE FROM dnc WHERE e164 = $1 RETURNING e164

-- name: idempotency_get
SELECT request_sha256, status_code, response FROM idempotency_keys WHERE key = $1

-- name: idempotency_put
INSERT INTO idempotency_keys (key, request_sha256, status_code, response, created_at)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (key) DO NOTHING
RETURNING key

-- name: idempotency_lock
SELECT pg_advisory_xact_lock(hashtext('dialer.idem:' || $1))

-- name: file_try_lock
SELECT pg_try_advisory_lock(hashtext('dialer.file:' || $1))

-- name: file_unlock
SELECT pg_advisory_unlock(hashtext('dialer.file:' || $1))

-- name: inbox_file_restart
UPDATE inbox_files SET batch_id = $2, state = 'ingesting', name = $3, target = $4, path = $5
WHERE sha256 = $1
