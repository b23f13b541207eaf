-- Named queries. Each starts with a "-- name: <identifier>" line.
--
-- Advisory locks use the two-key form (kind, hashtext(key)), one kind per use, so keys of
-- different kinds never collide (a number's key could otherwise wait on a file's lock,
-- held for a whole ingest): 1 dedupe (target), 2 idempotency key, 3 inbox file (sha256),
-- 4 dispatch (target), 5 singleton job, 6 number, 7 lead, 8 results file (batch).
-- (Migrations: one bigint key.)

-- name: batch_insert
INSERT INTO batches (target, source, source_name, sha256, result_webhook_url, created_at)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING id

-- name: batch_get
SELECT * FROM batches WHERE id = $1

-- name: batch_add_rows
UPDATE batches SET rows_read = rows_read + $2 WHERE id = $1 AND state = 'receiving'
RETURNING rows_read

-- name: chunk_async_commit
-- an intake chunk's commit need not wait for the WAL flush: its rows and the resume point
-- commit together, so a lost commit re-reads that chunk
SET LOCAL synchronous_commit = off

-- name: calls_reserve_ids
-- ids for one intake chunk of $1 rows, ascending, taken before its COPY in file order: the
-- chunk COPYs them explicitly, so ids follow the file's lines whichever of the parallel COPY
-- streams ends first (other sessions' nextval may interleave: ascending, not contiguous)
SELECT array_agg(id ORDER BY id) FROM (SELECT nextval('calls_id_seq') AS id FROM generate_series(1, $1)) s

-- name: batch_fail
UPDATE batches SET state = 'failed', error = $2, ended_at = $3 WHERE id = $1

-- name: batch_lock_state
-- The batch's row lock, and its state: what an ingest takes before it finalises or fails a
-- batch, and a cancel before it moves its calls (batch_mark_cancelled), so they serialise:
-- a batch cancelled first is never finalised nor failed, one finalised first is cancelled
-- as any ingested batch.
SELECT state FROM batches WHERE id = $1 FOR UPDATE

-- name: batch_drop_calls
DELETE FROM calls WHERE batch_id = $1

-- name: batch_rows_read
SELECT rows_read FROM batches WHERE id = $1

-- name: bulk_limits
-- For the rest of the transaction (limits.bulk_limits): how long one statement may run ($1,
-- ms) and one lock be waited for ($2, ms); the server's error then says which ran out.
SELECT set_config('statement_timeout', $1, true), set_config('lock_timeout', $2, true)

-- name: batch_lock_target
-- A target's dedupe lock: its finalise holds it exclusively (see dedupe_share_targets).
SELECT pg_advisory_xact_lock(1, hashtext($1))

-- name: dedupe_share_targets
-- The same lock, shared, for the moves that put a lead on another number (a several-number
-- lead going on, and a DNC cancel, which may lead to one): they and a finalise of the target
-- wait for each other, so neither misses the other's uncommitted calls, but they do not
-- wait for one another (number_locks orders those). $1 sorted: no lock-order deadlocks.
SELECT pg_advisory_xact_lock_shared(1, hashtext(t)) FROM unnest($1::text[]) AS t

-- name: batches_receiving_targets
SELECT DISTINCT target FROM batches WHERE state = 'receiving'

-- name: finalise_collapse_in_batch
-- Within a batch the same number collapses: the highest priority (then first line) is kept.
WITH ranked AS (
    SELECT id,
           row_number() OVER w AS rn,
           first_value(line) OVER w AS kept_line
    FROM calls
    WHERE batch_id = $1 AND state = 'pending'
      AND e164 IN (SELECT e164 FROM calls WHERE batch_id = $1 AND state = 'pending'
                   GROUP BY e164 HAVING count(*) > 1)
    WINDOW w AS (PARTITION BY e164 ORDER BY priority DESC, line)
)
UPDATE calls l
SET state = 'duplicate', reason = 'duplicate of line ' || r.kept_line || ' in this batch'
FROM ranked r
WHERE l.id = r.id AND r.rn > 1

-- name: finalise_dedupe_target
-- A number with a live call for the target, or one that ended within the window
-- (calls of batches still receiving rows don't count: they may yet fail).
UPDATE calls l
SET state = 'duplicate',
    reason = CASE WHEN c.ended_at IS NULL
                  THEN 'number already has a live call (call ' || c.id || ')'
                  WHEN c.submitted_at IS NULL  -- cancelled, expired or capped before it was sent
                  THEN 'number had a call that ended undialed within the dedupe window (call ' || c.id || ')'
                  ELSE 'number was called within the dedupe window (call ' || c.id || ')' END
FROM calls c JOIN batches b ON b.id = c.batch_id
WHERE l.batch_id = $1 AND l.state = 'pending'
  AND c.e164 = l.e164 AND c.target = $2 AND c.batch_id <> $1
  AND c.state NOT IN ('invalid', 'duplicate', 'dnc')
  AND b.state IN ('ingested', 'cancelled', 'done')
  AND (c.ended_at IS NULL OR c.ended_at > $3)

-- name: finalise_dnc
UPDATE calls l
SET state = 'dnc', reason = 'number is on the do-not-call list'
FROM dnc d
WHERE l.batch_id = $1 AND l.state = 'pending' AND d.e164 = l.e164
  AND (d.expires_at IS NULL OR d.expires_at > $2)

-- name: numbers_leads
-- A batch's leads with several numbers (or numbers left out), for their per-number checks:
-- highest priority first, so a number two of them share stays with the higher (SPEC §4).
SELECT id, line, e164, numbers, number_notes FROM calls
WHERE batch_id = $1 AND (numbers IS NOT NULL OR number_notes IS NOT NULL) AND state = 'pending'
ORDER BY priority DESC, line

-- name: numbers_in_batch
-- The batch's one-number leads that hold one of these numbers (the first line of each).
SELECT e164, min(line) AS line FROM calls
WHERE batch_id = $1 AND state = 'pending' AND numbers IS NULL AND number_notes IS NULL
  AND e164 = ANY($2::text[])
GROUP BY e164

-- name: numbers_seen_by_target
-- As finalise_dedupe_target, for a list of numbers: a live call for the target, or one
-- that ended since $4 (the window's start; NULL: live calls only), not of batch $3 (at
-- ingest) and not of lead $5 (its first row's id: a several-number lead going on).
SELECT DISTINCT ON (c.e164) c.e164, c.id, c.ended_at, c.submitted_at
FROM calls c JOIN batches b ON b.id = c.batch_id
WHERE c.e164 = ANY($1::text[]) AND c.target = $2
  AND c.batch_id IS DISTINCT FROM $3::uuid AND coalesce(c.lead_id, c.id) IS DISTINCT FROM $5::bigint
  AND c.state NOT IN ('invalid', 'duplicate', 'dnc')
  AND b.state IN ('ingested', 'cancelled', 'done')
  AND (c.ended_at IS NULL OR c.ended_at > $4::timestamptz)
ORDER BY c.e164, c.ended_at DESC NULLS FIRST

-- name: numbers_on_dnc
SELECT e164 FROM dnc WHERE e164 = ANY($1::text[]) AND (expires_at IS NULL OR expires_at > $2)

-- name: numbers_settle
-- Leads that lost some of their numbers at finalise but keep at least one ($4: array
-- literals, NULL when one number is left).
UPDATE calls c SET e164 = u.e164, raw_number = u.raw, numbers = u.numbers::text[], number_notes = u.notes
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::jsonb[]) AS u(id, e164, raw, numbers, notes)
WHERE c.id = u.id AND c.state = 'pending'

-- name: numbers_reject
-- Leads none of whose numbers is usable: duplicate or dnc, the reason naming each number.
UPDATE calls c SET state = u.state, reason = u.reason, number_notes = u.notes
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::jsonb[]) AS u(id, state, reason, notes)
WHERE c.id = u.id AND c.state = 'pending'

-- name: dnc_any
SELECT EXISTS (SELECT 1 FROM dnc)

-- name: intake_counts
SELECT state, count(*)::int AS n FROM calls WHERE batch_id = $1 AND attempt = 1 GROUP BY state

-- name: finalise_batch
UPDATE batches SET state = 'ingested', counts = $2, ingested_at = $3
WHERE id = $1 AND state = 'receiving'

-- name: batch_rejected_rows
-- Rows that will not be dialed, and accepted leads some of whose numbers were left out.
SELECT line, state, reason, raw_number, number_notes
FROM calls
WHERE batch_id = $1 AND attempt = 1
  AND (state IN ('invalid', 'duplicate', 'dnc') OR jsonb_array_length(number_notes->'rejected') > 0)
ORDER BY line

-- name: calls_rows_estimate
-- The planner's row count of calls (-1: never analyzed)
SELECT reltuples::float8 FROM pg_class WHERE oid = 'calls'::regclass

-- name: calls_analyze
ANALYZE calls

-- name: analyze_lock_wait
-- (to the end of the transaction, or of the savepoint if it fails)
SET LOCAL lock_timeout = '2s'

-- name: analyze_lock_wait_done
SET LOCAL lock_timeout TO DEFAULT

-- name: batch_rejected_rows_indexed
-- The same, each with its index among the batch's records (0-based, in line order): a CSV
-- body's rejects name the record as a JSON body's do (a quoted field may span lines, blank
-- lines are no record, so the line alone does not give it). API batches only: bounded.
-- $2: LIKE patterns of the reasons of a rejected multi-line row's further lines
-- (csvfile.CONTINUED): those lines take the index of the row they are part of.
SELECT line, state, reason, raw_number, number_notes, ordinal
FROM (SELECT line, state, reason, raw_number, number_notes,
             (count(*) FILTER (WHERE NOT (state = 'invalid' AND coalesce(reason LIKE ANY($2::text[]), false)))
                  OVER (ORDER BY line ROWS UNBOUNDED PRECEDING) - 1)::int AS ordinal
      FROM calls WHERE batch_id = $1 AND attempt = 1) c
WHERE state IN ('invalid', 'duplicate', 'dnc') OR jsonb_array_length(number_notes->'rejected') > 0
ORDER BY line

-- name: batch_call_counts
SELECT state, count(*)::int AS n FROM calls
WHERE batch_id = $1 AND state NOT IN ('invalid', 'duplicate', 'dnc') GROUP BY state

-- name: batch_outcome_counts
SELECT outcome, count(*)::int AS n FROM calls
WHERE batch_id = $1 AND outcome IS NOT NULL GROUP BY outcome

-- name: batch_calls_page
SELECT id, e164, raw_number, state, outcome, attempt, agent, priority,
       created_at, updated_at, ended_at, external_id, line, numbers,
       CASE WHEN numbers IS NOT NULL THEN (
           SELECT jsonb_object_agg(a.e164, a.n) FROM (
               SELECT x.e164, count(*)::int AS n FROM calls x
               WHERE (x.id = coalesce(calls.lead_id, calls.id) OR x.lead_id = coalesce(calls.lead_id, calls.id))
                 AND x.submitted_at IS NOT NULL
               GROUP BY x.e164) a)
       END AS per_number
FROM calls
WHERE batch_id = $1 AND id > $2 AND state NOT IN ('invalid', 'duplicate', 'dnc')
ORDER BY id
LIMIT $3

-- name: batches_recent
SELECT id, target, source, source_name, state, counts, created_at, rows_read
FROM batches ORDER BY created_at DESC LIMIT $1

-- name: call_get
SELECT * FROM calls WHERE id = $1 AND state NOT IN ('invalid', 'duplicate', 'dnc')

-- name: calls_by_external_id
SELECT id FROM calls
WHERE external_id = $1 AND state NOT IN ('invalid', 'duplicate', 'dnc')
ORDER BY id
LIMIT 100

-- name: call_events
SELECT id, at, kind, from_state, to_state, applied, payload
FROM call_events WHERE call_id = $1 ORDER BY id

-- name: call_state_totals
SELECT state, count(*)::int AS n FROM calls WHERE state NOT IN ('invalid', 'duplicate', 'dnc')
GROUP BY state

-- name: inbox_file_get
SELECT * FROM inbox_files WHERE sha256 = $1

-- name: inbox_file_insert
INSERT INTO inbox_files (sha256, batch_id, name, target, path, size)
VALUES ($1, $2, $3, $4, $5, $6)

-- name: inbox_file_state
UPDATE inbox_files SET state = $2, filed_path = coalesce($3, filed_path),
       filed_at = CASE WHEN $2 IN ('filed', 'failed') THEN $4::timestamptz ELSE filed_at END
WHERE sha256 = $1

-- name: dnc_add
INSERT INTO dnc (e164, source, added_at, expires_at)
SELECT n, $2, $3, $4 FROM unnest($1::text[]) AS n
ON CONFLICT (e164) DO UPDATE SET
    -- the longer protection wins (no expiry: never): a listing the customer asked for is
    -- never shortened by a later add or import (to shorten one: delete, then add); and the
    -- customer's own word ('disposition') is what the row says, whoever listed it first
    source = CASE WHEN EXCLUDED.source = 'disposition' THEN EXCLUDED.source
                  WHEN dnc.expires_at IS NOT NULL
                       AND (EXCLUDED.expires_at IS NULL OR EXCLUDED.expires_at > dnc.expires_at)
                  THEN EXCLUDED.source ELSE dnc.source END,
    expires_at = CASE WHEN dnc.expires_at IS NULL OR EXCLUDED.expires_at IS NULL THEN NULL
                      ELSE greatest(dnc.expires_at, EXCLUDED.expires_at) END
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
SELECT pg_advisory_xact_lock(2, hashtext($1))

-- name: file_try_lock
SELECT pg_try_advisory_lock(3, hashtext($1))

-- name: file_unlock
SELECT pg_advisory_unlock(3, hashtext($1))

-- name: inbox_file_restart
UPDATE inbox_files SET batch_id = $2, state = 'ingesting', name = $3, target = $4, path = $5,
       size = $6
WHERE sha256 = $1

-- name: inbox_file_resumed
-- A cut-off ingest resumed where its content is now (renamed, say): the file's path and name,
-- and the name its batch shows (GET /v1/batches/{id}'s source_name), are the new ones.
WITH f AS (UPDATE inbox_files SET path = $2, name = $3 WHERE sha256 = $1 RETURNING batch_id)
UPDATE batches b SET source_name = $3 FROM f WHERE b.id = f.batch_id

-- name: inbox_files_cut_off
-- Files whose ingest began and has not ended, their batch still receiving rows: being read
-- now (their lock is held), or cut off by a crash or the database going away, to resume, or
-- to abandon if their file is gone. $1: only those taken from that path (NULL: all).
-- Few rows, read through the partial index of migration 0022.
SELECT f.sha256, f.batch_id, f.name, f.target, f.path, f.size, b.source, b.rows_read
FROM inbox_files f JOIN batches b ON b.id = f.batch_id
WHERE f.state = 'ingesting' AND ($1::bytea IS NULL OR f.path = $1) AND b.state = 'receiving'
ORDER BY f.created_at

-- name: inbox_file_still_cut_off
-- Under the file's lock: nobody has moved it on since inbox_files_cut_off read it.
SELECT true FROM inbox_files f JOIN batches b ON b.id = f.batch_id
WHERE f.sha256 = $1 AND f.state = 'ingesting' AND f.batch_id = $2
  AND b.state = 'receiving' AND b.rows_read = $3
FOR UPDATE OF f, b

-- ---------------------------------------------------------------- dispatch

-- name: dispatch_lock_target
SELECT pg_advisory_xact_lock(4, hashtext($1))

-- name: target_pacing
-- Pacing's read of a target, in one statement so in one snapshot: read apart, a terminal
-- callback committing in between showed its agent off the call yet not in wrap-up, and
-- the agent was sent a call it could only take after its wrap-up, while the call counted
-- in flight kept the next free agent waiting (bench/pacing.py's second-long gaps).
-- wrap = false: calls in flight by agent (the agent who took it, else the one it was
-- directed to; NULL: sent to no agent in particular), counted up to a bound ($2) only so
-- the count stays cheap however many are out. wrap = true: agents whose last call ended
-- after $3 (NULL: no wrap-up) and who are not on a call, with when that call ended (their
-- wrap-up ends max_dispose_s later).
SELECT false AS wrap, coalesce(agent, offered_to) AS agent, count(*)::int AS n, NULL::timestamptz AS ended_at
FROM (
    SELECT agent, offered_to FROM calls
    WHERE target = $1 AND state IN ('submitting', 'uncertain', 'queued', 'assigned', 'connected')
    LIMIT $2
) s
GROUP BY 2
UNION ALL
SELECT true, agent, 0, max(ended_at) FROM calls
WHERE target = $1 AND agent IS NOT NULL AND ended_at > $3
  AND agent NOT IN (SELECT agent FROM calls WHERE target = $1 AND agent IS NOT NULL
                    AND state IN ('assigned', 'connected'))
GROUP BY agent

-- name: target_state_get
SELECT * FROM target_state WHERE target = $1

-- name: target_state_all
SELECT * FROM target_state

-- name: target_pause
INSERT INTO target_state (target, paused, paused_reason, updated_at) VALUES ($1, $2, $3, $4)
ON CONFLICT (target) DO UPDATE SET paused = $2, paused_reason = $3, updated_at = $4
RETURNING *

-- name: target_rotation_at
-- Our round-robin position for the target, its row locked until the caller moves it on.
INSERT INTO target_state (target) VALUES ($1)
ON CONFLICT (target) DO UPDATE SET rr_index = target_state.rr_index
RETURNING rr_index

-- name: target_rotation_move
-- Where the target's next request starts (under the lock target_rotation_at took).
UPDATE target_state SET rr_index = $2 WHERE target = $1

-- name: dispatch_release_due
-- A target's waiting calls whose time has come (a hold's until, a re-dial or callback due):
-- not_before back to NULL moves them from calls_held into the due part of
-- calls_dispatchable (migration 0020), where dispatch_candidates takes them in priority
-- order. At most $3 a fill, the longest due first; the hold's rule is checked again when
-- the call is a candidate.
WITH due AS (
    SELECT id FROM calls
    WHERE hashtext(target) = hashtext($1) AND target = $1
      AND state IN ('pending', 'scheduled', 'retry_wait')
      AND not_before IS NOT NULL AND not_before <= $2
    ORDER BY not_before
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
UPDATE calls c SET not_before = NULL FROM due WHERE c.id = due.id

-- name: dispatch_candidates
-- The due part of calls_dispatchable only (its key, migration 0020: the priority is NULL,
-- and last, for a call held until a time), in priority and id order: a held call is never
-- read here, however many there are; dispatch_release_due brings it in when due.
SELECT c.id, c.e164, c.priority, c.state, c.agents, c.fields, c.timezone, c.attempt,
       c.expires_at, c.batch_id, c.reason,
       EXISTS (SELECT 1 FROM dnc d WHERE d.e164 = c.e164
               AND (d.expires_at IS NULL OR d.expires_at > $2)) AS on_dnc
FROM calls c
WHERE hashtext(c.target) = hashtext($1) AND c.target = $1
  AND (CASE WHEN c.not_before IS NULL THEN c.priority END) IS NOT NULL
  AND c.state IN ('pending', 'scheduled', 'retry_wait')
  AND EXISTS (SELECT 1 FROM batches b WHERE b.id = c.batch_id AND b.state = 'ingested')
  -- a callback its owner still has the grace to take is not anyone's yet
  AND NOT EXISTS (SELECT 1 FROM callbacks k WHERE k.call_id = c.id AND k.owner IS NOT NULL
                  AND k.released_at IS NULL AND k.grace_until > $2)
ORDER BY (CASE WHEN c.not_before IS NULL THEN c.priority END) DESC NULLS LAST, c.id
LIMIT $3
FOR UPDATE OF c SKIP LOCKED

-- name: receiving_first_id
-- The lowest id of the target's batches still coming in (a batch's first line has its
-- lowest id: ids follow the file's lines, and resumed chunks take newer ones); NULL: none.
SELECT min(f.id) FROM batches b
CROSS JOIN LATERAL (SELECT c.id FROM calls c WHERE c.batch_id = b.id ORDER BY c.line LIMIT 1) f
WHERE b.target = $1 AND b.state = 'receiving'

-- name: dispatch_candidates_older
-- dispatch_candidates while a batch of the target is still coming in, for most fills: its
-- rows are in the due part of calls_dispatchable (not dispatchable until it is finalised),
-- and reading past them took 0.3 s a fill half-way through a 1,000,000-row file. This reads
-- the calls older than the first of them ($4: receiving_first_id) only (a skip scan over
-- the priorities, stopping at $4 in each); those newer (re-dials, callbacks, batches that
-- came in meanwhile) are read by a full dispatch_candidates one fill every few seconds
-- (dispatch/outbox.py candidates).
SELECT c.id, c.e164, c.priority, c.state, c.agents, c.fields, c.timezone, c.attempt,
       c.expires_at, c.batch_id, c.reason,
       EXISTS (SELECT 1 FROM dnc d WHERE d.e164 = c.e164
               AND (d.expires_at IS NULL OR d.expires_at > $2)) AS on_dnc
FROM calls c
WHERE hashtext(c.target) = hashtext($1) AND c.target = $1
  AND (CASE WHEN c.not_before IS NULL THEN c.priority END) IS NOT NULL
  AND c.state IN ('pending', 'scheduled', 'retry_wait') AND c.id < $4
  AND EXISTS (SELECT 1 FROM batches b WHERE b.id = c.batch_id AND b.state = 'ingested')
  AND NOT EXISTS (SELECT 1 FROM callbacks k WHERE k.call_id = c.id AND k.owner IS NOT NULL
                  AND k.released_at IS NULL AND k.grace_until > $2)
ORDER BY (CASE WHEN c.not_before IS NULL THEN c.priority END) DESC NULLS LAST, c.id
LIMIT $3
FOR UPDATE OF c SKIP LOCKED

-- name: batches_created
-- When batches came in (a target's lead_ttl_h counts from then).
SELECT id, created_at FROM batches WHERE id = ANY($1::uuid[])

-- name: calls_hold
-- Leads a rule holds (calling hours, holiday, cap, campaign window) wait as scheduled until
-- it clears; hold_reason says which kind of rule ($4, lifecycle/holds.py).
UPDATE calls c SET state = 'scheduled', not_before = u.nb, hold_reason = u.why, updated_at = $3
FROM unnest($1::bigint[], $2::timestamptz[], $4::text[]) AS u(id, nb, why)
WHERE c.id = u.id

-- name: events_bulk
INSERT INTO call_events (call_id, at, kind, from_state, to_state, applied, payload)
SELECT u.id, $2, $3, u.from_state, $4, true, $5::jsonb
FROM unnest($1::bigint[], $6::text[]) AS u(id, from_state)

-- name: events_each
-- One audit row per call, each with its own from-state and payload.
INSERT INTO call_events (call_id, at, kind, from_state, to_state, applied, payload)
SELECT u.id, $2, $3, u.from_state, $4, true, u.payload
FROM unnest($1::bigint[], $5::text[], $6::jsonb[]) AS u(id, from_state, payload)

-- name: fields_for_target
SELECT name, slot FROM target_fields WHERE target = $1

-- name: fields_add
INSERT INTO target_fields (target, name, slot)
SELECT $1, n, s FROM unnest($2::text[], $3::int[]) AS u(n, s)
ON CONFLICT DO NOTHING

-- name: chunk_next_id
SELECT nextval(pg_get_serial_sequence('chunks', 'id'))

-- name: chunk_insert
INSERT INTO chunks (id, target, token, state, rows, request, kind, agent, created_at)
VALUES ($1, $2, $3, 'recorded', $4, $5, $6, $7, $8)

-- name: calls_submitting
-- submitted_at is the attempt's time for the per-number caps, so it is set at the claim
UPDATE calls SET state = 'submitting', chunk_id = $2, updated_at = $3, submitted_at = $3
WHERE id = ANY($1::bigint[])

-- name: chunk_claim
-- A recorded chunk (never sent, or certainly not taken) is safe to send.
UPDATE chunks SET state = 'sending', claimed_by = $1, claimed_at = $2, attempts = attempts + 1
WHERE id = (
    SELECT id FROM chunks
    WHERE state = 'recorded' AND (next_attempt_at IS NULL OR next_attempt_at <= $2)
    ORDER BY id
    LIMIT 1
    FOR UPDATE SKIP LOCKED
)
RETURNING id, target, token, request, kind, attempts, rows, created_at

-- name: chunk_taken
-- Proof that the provider took a chunk — a 2xx answer, or any callback for any of its
-- rows, whatever state the sender left it in (sending, uncertain, even failed): the chunk
-- is sent and never sent again, and its calls still waiting on the send's outcome move to
-- queued, including calls an uncertain re-queue or a failed send had put back to waiting.
-- Lock order: the chunk, then its calls in id order (as every other writer).
-- $1 chunk, $2 now, $3 HTTP status (NULL: proved by a callback), $4 response, $5 why
WITH old AS (
    SELECT id, state FROM chunks WHERE id = $1 AND state <> 'sent' FOR UPDATE
), k AS (
    UPDATE chunks SET state = 'sent', http_status = coalesce($3::int, chunks.http_status),
           response = coalesce($4::jsonb, chunks.response), sent_at = coalesce(chunks.sent_at, $2),
           finished_at = $2,
           error = CASE WHEN old.state = 'sending' THEN NULL
                        ELSE $5::text || ' (chunk was ' || old.state || ')' END
    FROM old WHERE chunks.id = old.id
    RETURNING chunks.id
), c AS (
    SELECT id, state FROM calls
    WHERE ((chunk_id = $1 AND state IN ('submitting', 'uncertain'))
           OR (prev_chunks @> ARRAY[$1::bigint]
               AND state IN ('pending', 'scheduled', 'retry_wait', 'submitting', 'uncertain')))
      AND EXISTS (SELECT 1 FROM k)
    ORDER BY id
    FOR UPDATE
), m AS (
    UPDATE calls SET state = 'queued', chunk_id = $1, updated_at = $2,
           submitted_at = coalesce(calls.submitted_at, $2)
    FROM c WHERE calls.id = c.id
    RETURNING calls.id
), e AS (
    INSERT INTO call_events (call_id, at, kind, from_state, to_state, applied, payload)
    SELECT c.id, $2, 'submitted', c.state, 'queued', true,
           jsonb_build_object('chunk_id', $1, 'status', $3::int, 'proof', $5::text)
    FROM c
)
SELECT (SELECT count(*) FROM k)::int AS chunks, (SELECT count(*) FROM c)::int AS calls

-- name: chunk_calls_moved
-- Every call of a chunk still in from_state moves to to_state; returns the calls moved.
-- Locked in id order first (as the callback batch does), so the two cannot deadlock. A
-- call put back to waiting remembers the chunk (prev_chunks): a late callback of that
-- send still finds it.
WITH c AS (
    SELECT id, state FROM calls WHERE chunk_id = $1 AND state = $2 ORDER BY id FOR UPDATE
)
UPDATE calls k SET state = $3::text, updated_at = $4::timestamptz,
       submitted_at = CASE WHEN $3::text = 'pending' THEN NULL ELSE k.submitted_at END,
       ended_at = CASE WHEN $5::boolean THEN $4::timestamptz ELSE k.ended_at END,
       prev_chunks = CASE WHEN $3::text = 'pending' THEN array_append(k.prev_chunks, k.chunk_id)
                          ELSE k.prev_chunks END,
       chunk_id = CASE WHEN $3::text = 'pending' THEN NULL ELSE k.chunk_id END
FROM c WHERE k.id = c.id AND k.state = $2
RETURNING k.id, k.target, k.batch_id

-- name: chunk_retry_later
UPDATE chunks SET state = 'recorded', http_status = $2, response = $3, error = $4, next_attempt_at = $5
WHERE id = $1 AND state = 'sending'
RETURNING id

-- name: chunk_finish
-- Only a chunk still 'sending' (ours): a chunk the orphan check or a callback settled
-- meanwhile keeps that outcome.
UPDATE chunks SET state = $2, http_status = $3, response = $4, error = $5, finished_at = $6
WHERE id = $1 AND state = 'sending'
RETURNING id

-- name: instance_heartbeat
INSERT INTO instances (id, started_at, heartbeat_at, http_listen) VALUES ($1, $2, $2, $3)
ON CONFLICT (id) DO UPDATE SET heartbeat_at = $2

-- name: instance_gone
DELETE FROM instances WHERE id = $1

-- name: chunks_orphaned
-- Chunks left 'sending' by an instance that stopped heartbeating, or claimed longer ago
-- than any request can take ($3): the request may be out. A late answer is still applied.
UPDATE chunks SET state = 'uncertain', error = 'sender died while the request was in flight',
       finished_at = $2
WHERE state = 'sending'
  AND (claimed_by IS NULL OR claimed_at < $3
       OR claimed_by NOT IN (SELECT id FROM instances WHERE heartbeat_at > $1))
RETURNING id

-- name: calls_uncertain_due
SELECT c.id, c.requeued, c.target, c.batch_id,
       (SELECT b.state = 'cancelled' FROM batches b WHERE b.id = c.batch_id) AS batch_cancelled
FROM calls c JOIN chunks k ON k.id = c.chunk_id
WHERE c.state = 'uncertain' AND coalesce(k.finished_at, k.claimed_at, k.created_at) <= $1
ORDER BY c.id
LIMIT 5000
FOR UPDATE OF c SKIP LOCKED

-- name: chunks_proved_unsettled
-- Chunks not marked sent although a callback for them already moved one of their calls on
-- (the daemon stopped between that callback's commit and its proof of life): settle them.
-- The callback must name this chunk: a requeued call is also moved on by a callback for an
-- earlier chunk it was in (the provider took that one after all), which proves nothing of
-- this one, and settling it left the rows the provider never had queued for ever.
SELECT DISTINCT c.chunk_id AS id FROM calls c
WHERE c.state IN ('uncertain', 'submitting') AND c.chunk_id IS NOT NULL
  AND EXISTS (SELECT 1 FROM chunks k WHERE k.id = c.chunk_id AND k.state IN ('uncertain', 'failed'))
  AND EXISTS (SELECT 1 FROM calls s JOIN call_events e ON e.call_id = s.id
              WHERE s.chunk_id = c.chunk_id
                AND s.state NOT IN ('pending', 'scheduled', 'retry_wait', 'submitting', 'uncertain')
                AND e.applied AND e.kind LIKE 'callback\_%'
                AND e.payload->>'chunk_id' = c.chunk_id::text)
LIMIT 1000

-- name: calls_requeue
UPDATE calls SET state = 'pending', prev_chunks = array_append(prev_chunks, chunk_id), chunk_id = NULL,
       requeued = requeued + 1, updated_at = $2
WHERE id = ANY($1::bigint[]) AND state = 'uncertain'

-- name: calls_end
UPDATE calls SET state = $2, ended_at = $3, updated_at = $3, outcome = coalesce($4, outcome)
WHERE id = ANY($1::bigint[])
RETURNING id, target, batch_id

-- name: singleton_try
SELECT pg_try_advisory_xact_lock(5, hashtext($1))

-- ---------------------------------------------------------------- callbacks

-- name: call_for_update
SELECT id, state, chunk_id, prev_chunks, target, agent, attempt, batch_id, e164, lead_id
FROM calls WHERE id = $1 FOR UPDATE

-- name: chunk_state
SELECT state FROM chunks WHERE id = $1

-- name: chunk_target
-- The target a chunk was sent for: a callback's number is read in its default_region.
SELECT target FROM chunks WHERE id = $1

-- name: call_ended_row
SELECT id, batch_id, target, e164, external_id, state, outcome, attempt, agent, ended_at,
       coalesce(lead_id, id) AS lead, numbers, expires_at,
       (SELECT b.created_at FROM batches b WHERE b.id = calls.batch_id) AS batch_created_at
FROM calls WHERE id = $1

-- name: call_by_chunk_number
SELECT id FROM calls WHERE (chunk_id = $1 OR prev_chunks @> ARRAY[$1::bigint]) AND e164 = ANY($2::text[])
ORDER BY id LIMIT 1

-- name: call_move
UPDATE calls SET state = $2, updated_at = $3::timestamptz,
       agent = coalesce($4, agent),
       outcome = coalesce($5, outcome),
       ended_at = CASE WHEN $6::boolean THEN coalesce($7::timestamptz, $3::timestamptz) ELSE ended_at END,
       provider_call_id = coalesce($8, provider_call_id),
       dials = coalesce($9::smallint, dials)
WHERE id = $1

-- name: event_insert
INSERT INTO call_events (call_id, at, kind, from_state, to_state, applied, payload)
VALUES ($1, $2, $3, $4, $5, $6, $7)
RETURNING id

-- name: calls_stale
-- Live at the provider with no terminal callback for stale_after_h since it was handed over
-- (SPEC §5; progress callbacks do not restart the clock): the provider lost it, or we did.
-- Handed over when its chunk was sent (a chunk may wait long after its claim: a breaker,
-- the rate budget, a stopped daemon); submitted_at is the claim.
SELECT c.id, c.target, c.state FROM calls c LEFT JOIN chunks k ON k.id = c.chunk_id
WHERE c.state IN ('queued', 'assigned', 'connected')
  AND coalesce(k.sent_at, c.submitted_at, c.updated_at) < $1
ORDER BY c.id LIMIT 5000
FOR UPDATE OF c SKIP LOCKED

-- name: batch_cancel_calls
WITH old AS (
    SELECT id, state FROM calls WHERE batch_id = $1 AND state = ANY($3::text[]) ORDER BY id FOR UPDATE
)
UPDATE calls c SET state = 'cancelled', ended_at = $2, updated_at = $2
FROM old WHERE c.id = old.id
RETURNING c.id, old.state, c.target, c.batch_id

-- name: batch_mark_cancelled
-- First in a cancel: the batch's row lock waits for a chunk of it committing (batch_add_rows)
-- or its finalise or failure (batch_lock_state), so the calls cancelled next are every one
-- committed, and none commits after. Returns the state it had (nothing: ended, or no batch).
WITH old AS (SELECT id, state FROM batches WHERE id = $1 FOR UPDATE)
UPDATE batches b SET state = 'cancelled' FROM old
WHERE b.id = old.id AND old.state IN ('receiving', 'ingested')
RETURNING old.state

-- name: batch_cancelled_counts
-- A batch cancelled while its rows were coming in is never finalised: its counts are the
-- rows read by then, none accepted (those not rejected at reading are cancelled).
UPDATE batches b SET counts = jsonb_build_object(
        'rows', x.n, 'accepted', 0, 'invalid', x.invalid, 'duplicate', 0, 'dnc', 0,
        'cancelled', x.cancelled)
FROM (SELECT count(*)::int AS n, count(*) FILTER (WHERE state = 'invalid')::int AS invalid,
             count(*) FILTER (WHERE state = 'cancelled')::int AS cancelled
      FROM calls WHERE batch_id = $1 AND attempt = 1) x
WHERE b.id = $1

-- name: target_counts
-- Live calls by target and state (scrapes, GET /v1/targets). Two branches whose state
-- lists are the predicates of calls_dispatchable and calls_in_flight, so each reads its
-- partial index and the count never scans the history of ended calls.
SELECT target, state, count(*)::int AS n FROM calls
WHERE state IN ('pending', 'scheduled', 'retry_wait')
GROUP BY target, state
UNION ALL
SELECT target, state, count(*)::int AS n FROM calls
WHERE state IN ('submitting', 'uncertain', 'queued', 'assigned', 'connected')
GROUP BY target, state

-- ---------------------------------------------------------------- lifecycle

-- name: lead_number_attempts
-- A several-number lead's attempts per number so far (its first row's id): calls that
-- were sent (a call taken out before its send is no attempt).
SELECT e164, count(*)::int AS n FROM calls
WHERE (id = $1 OR lead_id = $1) AND submitted_at IS NOT NULL
GROUP BY e164

-- name: numbers_cancelled_for_dnc
-- Waiting attempts of several-number leads the DNC list has just cancelled ($2: that moment).
SELECT id FROM calls
WHERE e164 = ANY($1::text[]) AND state = 'cancelled' AND ended_at = $2 AND numbers IS NOT NULL

-- name: dnc_import_cancelled
-- The calls dnc_import_cancel just ended ($1: that moment; its temporary table); $2: only
-- the attempts of several-number leads.
SELECT id, batch_id FROM calls
WHERE state = 'cancelled' AND ended_at = $1 AND reason = 'dnc' AND ($2::boolean IS FALSE OR numbers IS NOT NULL)
  AND e164 IN (SELECT e164 FROM dnc_import)

-- name: recycle_count
-- How many re-dials this lead already had after the given terminal state.
SELECT count(*)::int FROM calls WHERE lead_id = $1 AND reason = $2

-- name: recycle_insert
-- Nothing for a cancelled batch: a cancel reaches later attempts too.
-- $5: the number to dial (a lead with several numbers moves on to its next one), else the same.
INSERT INTO calls (batch_id, target, line, lead_id, attempt, raw_number, e164, priority, agents,
                   external_id, timezone, fields, state, reason, not_before, created_at, updated_at,
                   numbers, expires_at)
SELECT c.batch_id, c.target, c.line, coalesce(c.lead_id, c.id), c.attempt + 1,
       CASE WHEN $5::text IS NULL OR $5::text = c.e164 THEN c.raw_number ELSE $5::text END,
       coalesce($5::text, c.e164),
       c.priority, c.agents, c.external_id, c.timezone, c.fields, 'retry_wait', $2, $3, $4, $4,
       c.numbers, c.expires_at
FROM calls c JOIN batches b ON b.id = c.batch_id
WHERE c.id = $1 AND b.state <> 'cancelled'
RETURNING id, attempt

-- name: batch_webhook_url
SELECT result_webhook_url FROM batches WHERE id = $1

-- name: webhook_enqueue
INSERT INTO webhook_outbox (batch_id, call_id, url, body, next_attempt_at, created_at)
VALUES ($1, $2, $3, $4, $5, $5)
ON CONFLICT (call_id) DO NOTHING

-- name: webhook_enqueue_ended
-- Result webhooks for calls ended without a provider's callback (cancels, DNC, expiry,
-- caps, provider rejections, sends given up): webhook_body's body, for the calls of
-- batches with a result_webhook_url ($1: call ids, $2: now, $3: terminal states; $4 false:
-- not the DNC-cancelled attempts of several-number leads, whose next number comes first).
INSERT INTO webhook_outbox (batch_id, call_id, url, body, next_attempt_at, created_at)
SELECT c.batch_id, c.id, b.result_webhook_url,
       convert_to((jsonb_build_object(
           'event', 'call.ended', 'batch_id', c.batch_id, 'call_id', c.id, 'number', c.e164,
           'external_id', c.external_id, 'state', c.state, 'outcome', c.outcome,
           'attempt', c.attempt, 'agent', c.agent, 'ended_at', c.ended_at,
           'will_retry', nx.id IS NOT NULL, 'next_call_id', nx.id,
           'number_reached', CASE WHEN c.state = 'answered' THEN c.e164 END)
         || CASE WHEN c.numbers IS NULL THEN '{}'::jsonb ELSE jsonb_build_object(
           'numbers', to_jsonb(c.numbers),
           'attempts_per_number', (
               SELECT jsonb_object_agg(n.e164, (
                   SELECT count(*) FROM calls a
                   WHERE (a.id = coalesce(c.lead_id, c.id) OR a.lead_id = coalesce(c.lead_id, c.id))
                     AND a.e164 = n.e164 AND a.submitted_at IS NOT NULL))
               FROM unnest(c.numbers) AS n(e164))) END)::text, 'UTF8'),
       $2::timestamptz, $2::timestamptz
FROM calls c
JOIN batches b ON b.id = c.batch_id
LEFT JOIN LATERAL (SELECT min(x.id) AS id FROM calls x
                   WHERE x.lead_id = coalesce(c.lead_id, c.id) AND x.id > c.id) nx ON true
WHERE c.id = ANY($1::bigint[]) AND b.result_webhook_url IS NOT NULL AND c.state = ANY($3::text[])
  AND ($4::boolean OR c.numbers IS NULL OR c.reason IS DISTINCT FROM 'dnc')
ON CONFLICT (call_id) DO NOTHING

-- name: batches_with_webhook
SELECT EXISTS (SELECT 1 FROM batches WHERE id = ANY($1::uuid[]) AND result_webhook_url IS NOT NULL)

-- name: webhook_claim
UPDATE webhook_outbox SET attempts = attempts + 1, next_attempt_at = $2
WHERE id IN (
    SELECT id FROM webhook_outbox
    WHERE state = 'pending' AND next_attempt_at <= $1
    ORDER BY next_attempt_at
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
RETURNING id, url, body, attempts, created_at

-- name: webhook_done
UPDATE webhook_outbox SET state = 'delivered', last_status = $2, delivered_at = $3, last_error = NULL
WHERE id = $1

-- name: webhook_retry
UPDATE webhook_outbox SET last_status = $2, last_error = $3, next_attempt_at = $4,
       state = CASE WHEN $5 THEN 'failed' ELSE 'pending' END
WHERE id = $1

-- name: webhook_backlog
SELECT count(*)::int FROM webhook_outbox WHERE state = 'pending'

-- name: batches_open
SELECT id FROM batches WHERE state IN ('ingested', 'cancelled') AND ended_at IS NULL
ORDER BY created_at LIMIT 1000

-- name: batch_has_live_calls
SELECT EXISTS (
    SELECT 1 FROM calls WHERE batch_id = $1
      AND state IN ('pending', 'scheduled', 'retry_wait', 'submitting', 'uncertain',
                    'queued', 'assigned', 'connected')
)

-- name: batch_done
-- done whatever ended its calls, a cancel included (SPEC §6); an inbox batch whose file is
-- filed owes its results file from this commit on (due now), until results_file_written
-- (one cancelled while its file was coming in too: a row per lead read by then)
UPDATE batches SET state = 'done', ended_at = $2,
       results_due_at = CASE WHEN source = 'inbox' AND EXISTS (
           SELECT 1 FROM inbox_files f
           WHERE f.batch_id = batches.id AND f.state = 'filed' AND f.filed_path IS NOT NULL)
           THEN $2::timestamptz END
WHERE id = $1 AND state IN ('ingested', 'cancelled') AND ended_at IS NULL
RETURNING source, source_name, results_due_at IS NOT NULL AS results_owed

-- name: batch_results
-- One row per lead: its latest attempt, and how many of its attempts were dialed (sent to
-- the provider: none for a lead rejected at intake or ended before its send); a lead with
-- several numbers also its attempts per number (one-number leads skip that lookup). The
-- window sorts as DISTINCT ON does: one sort.
SELECT DISTINCT ON (coalesce(c.lead_id, c.id))
       coalesce(c.raw_number, c.e164) AS raw_number, c.e164, c.external_id, c.state, c.outcome,
       (count(*) FILTER (WHERE c.submitted_at IS NOT NULL) OVER (
            PARTITION BY coalesce(c.lead_id, c.id) ORDER BY c.attempt DESC
            ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING))::int AS attempts,
       c.agent, c.ended_at, c.line, c.numbers,
       CASE WHEN c.numbers IS NOT NULL THEN (
           SELECT jsonb_object_agg(a.e164, a.n) FROM (
               SELECT x.e164, count(*)::int AS n FROM calls x
               WHERE (x.id = coalesce(c.lead_id, c.id) OR x.lead_id = coalesce(c.lead_id, c.id))
                 AND x.submitted_at IS NOT NULL
               GROUP BY x.e164) a)
       END AS per_number
FROM calls c
WHERE c.batch_id = $1
ORDER BY coalesce(c.lead_id, c.id), c.attempt DESC

-- name: inbox_file_for_batch
SELECT name, state, filed_path FROM inbox_files WHERE batch_id = $1

-- name: batches_results_due
-- results files owed and due now (a failed write waits out its backoff)
SELECT id FROM batches WHERE results_due_at <= $1 ORDER BY results_due_at LIMIT 100

-- name: results_file_lock
-- one writer of a batch's results file across instances, to the end of its transaction
-- (a crashed writer's lock goes with its connection)
SELECT pg_try_advisory_xact_lock(8, hashtext($1::uuid::text))

-- name: results_file_owed
-- read under results_file_lock: a writer that just finished has committed, so not owed
SELECT b.results_attempts, f.filed_path FROM batches b
JOIN inbox_files f ON f.batch_id = b.id AND f.state = 'filed' AND f.filed_path IS NOT NULL
WHERE b.id = $1 AND b.results_due_at <= $2
LIMIT 1

-- name: results_file_written
UPDATE batches SET results_path = $2, results_due_at = NULL WHERE id = $1

-- name: results_file_retry
UPDATE batches SET results_attempts = $2, results_due_at = $3 WHERE id = $1 AND results_due_at IS NOT NULL

-- name: results_file_backlog
SELECT count(*)::int FROM batches WHERE results_due_at IS NOT NULL

-- name: dnc_cancel_numbers
-- Not the calls of a batch still receiving rows: its finalise applies the list to them (and
-- to each number of a several-number lead on its own). Callers hold the dedupe locks
-- shared (next_number.hold_for_dnc): that finalise either committed before this statement
-- (the batch is no longer receiving) or waits for our list entries to commit.
WITH old AS (
    SELECT id, state FROM calls
    WHERE e164 = ANY($1::text[]) AND state IN ('pending', 'scheduled', 'retry_wait')
      AND NOT EXISTS (SELECT 1 FROM batches b WHERE b.id = calls.batch_id AND b.state = 'receiving')
    ORDER BY id
    FOR UPDATE
)
UPDATE calls c SET state = 'cancelled', ended_at = $2, updated_at = $2, reason = 'dnc'
FROM old WHERE c.id = old.id
RETURNING c.id, old.state, c.target, c.batch_id

-- ---------------------------------------------------------------- compliance

-- name: number_locks
-- Per number, across targets ($1 sorted): claims that count attempts, and leads moving onto
-- a number, serialise per number and see each other's attempts.
SELECT pg_advisory_xact_lock(6, hashtext(n)) FROM unnest($1::text[]) AS n

-- name: attempts_since
-- Attempts count from the moment a call is claimed for sending, in every target
-- ($3: calls not to count, e.g. the very attempts being re-checked); the provider's own
-- re-dials of a call (dials, from its terminal callback) count as well, each at the
-- call's end (the latest they can have been: a window never lets one out early).
SELECT e164, submitted_at FROM calls
WHERE e164 = ANY($1::text[]) AND submitted_at > $2 AND NOT (id = ANY($3::bigint[]))
UNION ALL
SELECT c.e164, c.ended_at FROM calls c CROSS JOIN LATERAL generate_series(2, c.dials) AS g
WHERE c.e164 = ANY($1::text[]) AND c.dials > 1 AND c.ended_at > $2 AND NOT (c.id = ANY($3::bigint[]))

-- ---------------------------------------------------------------- do-not-call lists

-- name: dnc_import_table
CREATE TEMP TABLE dnc_import (line integer, e164 text, expires_at timestamptz) ON COMMIT DROP

-- name: dnc_import_merge
-- Deduplicated (the latest expiry wins within the file), merged into the list.
WITH src AS (
    SELECT DISTINCT ON (e164) e164, expires_at FROM dnc_import
    ORDER BY e164, expires_at DESC NULLS FIRST
), up AS (
    INSERT INTO dnc (e164, source, added_at, expires_at)
    SELECT e164, $1, $2, expires_at FROM src
    ON CONFLICT (e164) DO UPDATE SET  -- the longer protection wins, as dnc_add
        source = CASE WHEN dnc.expires_at IS NOT NULL
                           AND (EXCLUDED.expires_at IS NULL OR EXCLUDED.expires_at > dnc.expires_at)
                      THEN EXCLUDED.source ELSE dnc.source END,
        expires_at = CASE WHEN dnc.expires_at IS NULL OR EXCLUDED.expires_at IS NULL THEN NULL
                          ELSE greatest(dnc.expires_at, EXCLUDED.expires_at) END
    RETURNING (xmax = 0) AS inserted
)
SELECT count(*) FILTER (WHERE inserted)::int AS added, count(*) FILTER (WHERE NOT inserted)::int AS updated
FROM up

-- name: dnc_import_cancel
-- Calls not yet sent to a newly listed number end as cancelled, in every target (not
-- those of a batch still receiving rows: see dnc_cancel_numbers).
WITH old AS (
    SELECT c.id, c.state FROM calls c
    WHERE c.state IN ('pending', 'scheduled', 'retry_wait')
      AND c.e164 IN (SELECT e164 FROM dnc_import)
      AND NOT EXISTS (SELECT 1 FROM batches b WHERE b.id = c.batch_id AND b.state = 'receiving')
    FOR UPDATE OF c
), moved AS (
    UPDATE calls c SET state = 'cancelled', ended_at = $1, updated_at = $1, reason = 'dnc'
    FROM old WHERE c.id = old.id
    RETURNING c.id, old.state, c.target, c.batch_id
), ev AS (
    INSERT INTO call_events (call_id, at, kind, from_state, to_state, applied, payload)
    SELECT id, $1, 'cancelled', state, 'cancelled', true, '{"rule": "dnc", "by": "import"}'::jsonb FROM moved
)
SELECT target, batch_id, count(*)::int AS n FROM moved GROUP BY target, batch_id

-- name: dnc_export
SELECT e164, source, added_at, expires_at FROM dnc ORDER BY e164

-- name: dnc_count
-- The export's progress total (read in the export's snapshot).
SELECT count(*) FROM dnc

-- ---------------------------------------------------------------- campaign figures
-- SPEC §10, dialer/results/figures.py. The scope is a list of batches ($1): one batch, or
-- a target's (figures_target_batches). Calls are read by batch (calls_batch_line), so a
-- batch's figures cost one pass over its own rows, whatever else the table holds.

-- name: figures_target_batches
-- A target's batches still open, and those created since $2.
SELECT id FROM batches WHERE target = $1 AND (ended_at IS NULL OR created_at >= $2)

-- name: figures_totals
-- Leads (first attempts), attempts (calls claimed for sending, as the caps count them),
-- leads attempted (its first row was sent, or — a first row that ended unsent: a number
-- DNC-listed before it went, the lead then on to its next number — a later one was; the
-- look-up only for such rows), answered, mean talk time (from the applied terminal
-- callback of each answered call), calls still waiting to be sent, and attempts claimed
-- in ($2, $3] (the recent send rate).
SELECT count(*) FILTER (WHERE c.attempt = 1)::int AS leads,
       count(*) FILTER (WHERE c.submitted_at IS NOT NULL)::int AS attempts,
       count(*) FILTER (WHERE CASE WHEN c.attempt <> 1 THEN false
                                   WHEN c.submitted_at IS NOT NULL THEN true
                                   WHEN c.ended_at IS NULL THEN false
                                   ELSE EXISTS (SELECT 1 FROM calls l WHERE l.lead_id = c.id
                                                AND l.submitted_at IS NOT NULL) END)::int
           AS leads_attempted,
       count(*) FILTER (WHERE c.state = 'answered')::int AS answered,
       count(tk.talk_s)::int AS talk_reported,
       avg(tk.talk_s)::float8 AS talk_mean_s,
       count(*) FILTER (WHERE c.state IN ('pending', 'scheduled', 'retry_wait'))::int AS remaining,
       count(*) FILTER (WHERE c.submitted_at > $2::timestamptz AND c.submitted_at <= $3::timestamptz)::int
           AS sent_recently
FROM calls c
LEFT JOIN LATERAL (
    SELECT figures_talk_s(e.payload->'body') AS talk_s FROM call_events e
    WHERE c.state = 'answered' AND e.call_id = c.id AND e.applied AND e.to_state = 'answered'
    ORDER BY e.id LIMIT 1
) tk ON true
WHERE c.batch_id = ANY($1::uuid[]) AND c.state NOT IN ('invalid', 'duplicate', 'dnc')

-- name: figures_zone_keys
-- The zone keys (figures_zone_key) of the scope's attempts, for the hour of the lead's day.
SELECT DISTINCT figures_zone_key(timezone, e164) AS key FROM calls
WHERE batch_id = ANY($1::uuid[]) AND submitted_at IS NOT NULL

-- name: figures_hours
-- Attempts and answered by the hour of the lead's local day when the attempt was claimed;
-- $2/$3: zone keys and the IANA zone of each (a key left out reads as UTC).
WITH z AS (
    SELECT * FROM unnest($2::text[], $3::text[]) AS u(key, zone)
)
SELECT extract(hour FROM c.submitted_at AT TIME ZONE coalesce(z.zone, 'UTC'))::int AS hour,
       count(*)::int AS attempts, count(*) FILTER (WHERE c.state = 'answered')::int AS answered
FROM calls c LEFT JOIN z ON z.key = figures_zone_key(c.timezone, c.e164)
WHERE c.batch_id = ANY($1::uuid[]) AND c.submitted_at IS NOT NULL
GROUP BY 1
ORDER BY 1

-- name: figures_target_pace
-- A target's calls waiting to be sent (calls_dispatchable) and attempts claimed in
-- ($2, $3] (calls_target_submitted): the exhaustion estimate, cheap enough for a scrape.
SELECT (SELECT count(*) FROM calls
        WHERE target = $1 AND state IN ('pending', 'scheduled', 'retry_wait'))::int AS remaining,
       (SELECT count(*) FROM calls
        WHERE target = $1 AND submitted_at > $2 AND submitted_at <= $3)::int AS sent_recently

-- name: figures_zone_names
-- The zones this PostgreSQL knows (an IANA name it lacks is read as UTC, never an error).
SELECT name FROM pg_timezone_names

-- ---- ui
-- The sales-ops console (dialer/ui): paged lists and searches the JSON API has no use for.

-- name: ui_batches_page
SELECT id, target, source, source_name, state, counts, rows_read, error,
       created_at, ingested_at, ended_at
FROM batches
ORDER BY created_at DESC, id DESC
LIMIT $1 OFFSET $2

-- name: ui_batches_total
SELECT count(*)::int FROM batches

-- name: ui_batches_call_counts
SELECT batch_id, state, count(*)::int AS n FROM calls
WHERE batch_id = ANY($1::uuid[]) AND state NOT IN ('invalid', 'duplicate', 'dnc')
GROUP BY batch_id, state

-- name: ui_batch_rejected_page
-- The report's rejected rows, by line, a page at a time (keyset on line), with accepted
-- leads some of whose numbers were left out.
SELECT line, state, reason, raw_number, number_notes
FROM calls
WHERE batch_id = $1 AND attempt = 1 AND line > $2
  AND (state IN ('invalid', 'duplicate', 'dnc') OR jsonb_array_length(number_notes->'rejected') > 0)
ORDER BY line
LIMIT $3

-- name: ui_batch_calls_after
-- $4: NULL, or an ILIKE pattern matched against the number as typed, E.164 and external id;
-- $5: the search normalised to E.164 (or NULL).
SELECT id, e164, raw_number, state, outcome, attempt, agent, external_id, line,
       created_at, updated_at, ended_at, numbers
FROM calls
WHERE batch_id = $1 AND id > $2 AND state NOT IN ('invalid', 'duplicate', 'dnc')
  AND ($4::text IS NULL OR e164 = $5::text OR e164 ILIKE $4 OR raw_number ILIKE $4
       OR external_id ILIKE $4)
ORDER BY id
LIMIT $3

-- name: ui_batch_calls_before
SELECT * FROM (
    SELECT id, e164, raw_number, state, outcome, attempt, agent, external_id, line,
           created_at, updated_at, ended_at, numbers
    FROM calls
    WHERE batch_id = $1 AND id < $2 AND state NOT IN ('invalid', 'duplicate', 'dnc')
      AND ($4::text IS NULL OR e164 = $5::text OR e164 ILIKE $4 OR raw_number ILIKE $4
           OR external_id ILIKE $4)
    ORDER BY id DESC
    LIMIT $3
) page ORDER BY id

-- name: ui_dnc_page
-- $1: a LIKE pattern on E.164; keyset paging on the number.
SELECT e164, source, added_at, expires_at FROM dnc
WHERE e164 LIKE $1 AND e164 > $2
ORDER BY e164
LIMIT $3

-- name: ui_dnc_total
SELECT count(*)::int FROM dnc

-- name: ui_session_revoked
-- Was this console session logged out, on any instance? Once per authenticated request.
SELECT EXISTS (SELECT 1 FROM console_sessions_revoked WHERE sid = $1)

-- name: ui_session_revoke
-- A logout, kept until the session would have expired ($2).
INSERT INTO console_sessions_revoked (sid, expires_at) VALUES ($1, $2)
ON CONFLICT (sid) DO NOTHING

-- name: ui_sessions_revoked_prune
-- Logouts of sessions expired since: their cookies are refused for their expiry alone.
DELETE FROM console_sessions_revoked WHERE expires_at <= $1

-- name: callback_apply_batch
-- Many callbacks in one statement and one commit: lock the calls, check each move against
-- the state table (passed in as allowed "from>to" pairs), update, audit every event, and
-- enqueue the batch's result webhook when a call ends. Rows are locked in id order, so concurrent batches cannot deadlock. A batch
-- never holds two callbacks for one call. Input rows with no matching call of their chunk
-- return nothing (the caller takes the slow path for them).
WITH input AS (
    SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[],
                         $6::boolean[], $7::text[], $8::text[], $9::jsonb[], $10::int[])
        AS u(call_id, chunk_id, dst, agent, outcome, terminal, pcid, kind, payload, ord)
), c AS (
    SELECT k.id, k.state, k.target, k.batch_id, k.e164, k.external_id, k.attempt, i.chunk_id,
           k.agent AS old_agent, i.dst, i.agent, i.outcome, i.terminal, i.pcid, i.kind, i.payload, i.ord
    FROM calls k JOIN input i ON i.call_id = k.id
        AND (k.chunk_id = i.chunk_id OR k.prev_chunks @> ARRAY[i.chunk_id])
        AND k.numbers IS NULL  -- a lead with several numbers: the slow path moves it on
    ORDER BY k.id
    FOR UPDATE OF k
), m AS (
    UPDATE calls k SET state = c.dst, updated_at = $11::timestamptz, agent = coalesce(c.agent, k.agent),
           outcome = coalesce(c.outcome, k.outcome),
           ended_at = CASE WHEN c.terminal THEN $11::timestamptz ELSE k.ended_at END,
           provider_call_id = coalesce(c.pcid, k.provider_call_id)
    FROM c WHERE k.id = c.id AND (c.state || '>' || c.dst) = ANY($12::text[])
    RETURNING k.id, k.agent, k.outcome, k.ended_at
), e AS (
    INSERT INTO call_events (call_id, at, kind, from_state, to_state, applied, payload)
    SELECT c.id, $11::timestamptz, c.kind, c.state, c.dst, m.id IS NOT NULL, c.payload
    FROM c LEFT JOIN m ON m.id = c.id
    ORDER BY c.ord
), w AS (
    INSERT INTO webhook_outbox (batch_id, call_id, url, body, next_attempt_at, created_at)
    SELECT c.batch_id, c.id, b.result_webhook_url,
           convert_to(jsonb_build_object(
               'event', 'call.ended', 'batch_id', c.batch_id, 'call_id', c.id, 'number', c.e164,
               'external_id', c.external_id, 'state', c.dst, 'outcome', m.outcome,
               'attempt', c.attempt, 'agent', m.agent, 'ended_at', m.ended_at,
               'will_retry', false, 'next_call_id', NULL,
               'number_reached', CASE WHEN c.dst = 'answered' THEN c.e164 END)::text, 'UTF8'),
           $11::timestamptz, $11::timestamptz
    FROM c JOIN m ON m.id = c.id JOIN batches b ON b.id = c.batch_id
    WHERE c.terminal AND b.result_webhook_url IS NOT NULL
    ON CONFLICT (call_id) DO NOTHING
)
SELECT c.ord, c.id, c.state, c.target, c.batch_id, c.old_agent AS agent, m.id IS NOT NULL AS applied,
       (SELECT x.state FROM chunks x WHERE x.id = c.chunk_id) AS chunk_state
FROM c LEFT JOIN m ON m.id = c.id

-- ---------------------------------------------------------------- send-time re-check

-- name: chunk_lock
SELECT state FROM chunks WHERE id = $1 FOR UPDATE

-- name: chunk_recheck_rows
-- The calls of a chunk about to be sent, with what may have changed since it was
-- recorded. Locked in id order, after the chunk (the common lock order).
SELECT c.id, c.state, c.e164, c.timezone, c.fields, c.attempt, c.target, c.batch_id, c.expires_at,
       EXISTS (SELECT 1 FROM dnc d WHERE d.e164 = c.e164
               AND (d.expires_at IS NULL OR d.expires_at > $2)) AS on_dnc,
       (SELECT b.state FROM batches b WHERE b.id = c.batch_id) AS batch_state
FROM calls c
WHERE c.chunk_id = $1
ORDER BY c.id
FOR UPDATE OF c

-- name: calls_not_sent
-- Calls taken out of a chunk just before it was sent, to be ended there: no attempt (as
-- calls_withdraw) for the caps, the counts and the dedupe wording, unless an earlier send
-- of theirs (prev_chunks) may have reached the provider.
UPDATE calls SET submitted_at = NULL
WHERE id = ANY($1::bigint[]) AND state = 'submitting' AND prev_chunks IS NULL

-- name: calls_withdraw
-- Rows taken out of a chunk before it was sent: back to waiting (scheduled until the hold
-- clears, or pending), and no longer an attempt for the caps; hold_reason as calls_hold ($4).
UPDATE calls c SET state = CASE WHEN u.nb IS NULL THEN 'pending' ELSE 'scheduled' END,
       not_before = u.nb, hold_reason = u.why, chunk_id = NULL, submitted_at = NULL, updated_at = $3
FROM unnest($1::bigint[], $2::timestamptz[], $4::text[]) AS u(id, nb, why)
WHERE c.id = u.id AND c.state = 'submitting'

-- name: chunk_request_update
UPDATE chunks SET request = $2, rows = $3 WHERE id = $1

-- name: chunk_withdraw
UPDATE chunks SET state = 'withdrawn', error = $2, finished_at = $3
WHERE id = $1 AND state = 'sending'

-- ---------------------------------------------------------------- providers and metrics

-- name: stringee_lead_owners
-- One query for every number of a Stringee get_list_agents_url request: per number, the
-- most recent live call, else the most recent call ($1: E.164 numbers, $2: targets, empty
-- = all; $3: intake outcomes, $4: terminal states — both from lifecycle/states.py).
-- owner: the agent a live agent-scheduled callback still belongs to (its grace not over, $5 now).
SELECT DISTINCT ON (e164) e164, target, agents,
       (SELECT k.owner FROM callbacks k
        WHERE k.call_id = calls.id AND k.released_at IS NULL AND k.grace_until > $5
          AND NOT (calls.state = ANY($4::text[]))) AS owner
FROM calls
WHERE e164 = ANY($1::text[])
  AND NOT (state = ANY($3::text[]))
  AND (cardinality($2::text[]) = 0 OR target = ANY($2::text[]))
ORDER BY e164, state = ANY($4::text[]), created_at DESC, id DESC

-- name: metrics_callback_wait
-- Scrape time: per target, the age of the oldest call waiting for its next callback.
SELECT target, extract(epoch FROM $1::timestamptz - min(updated_at))::float8 AS age
FROM calls WHERE state = ANY($2::text[]) GROUP BY target

-- ---------------------------------------------------------------- scale

-- name: agent_status_lock
-- The agent's row before an event, locked until the event is applied (same transaction).
SELECT status, event_at FROM agent_status WHERE source = $1 AND agent = $2 FOR UPDATE

-- name: agent_status_apply
-- One agent event ($1 source, $2 agent, $3 status, $4 raw id, $5 event time, $6 now),
-- applied only when it is newer than the row: (event_at, seq) past the row's, so a late
-- event never overrides a newer one (a newer repeat moves event_at only). Returns a row
-- only when it applied.
INSERT INTO agent_status AS a (source, agent, status, raw_id, event_at, seq, updated_at)
VALUES ($1, $2, $3, $4, $5, nextval('agent_event_seq'), $6)
ON CONFLICT (source, agent) DO UPDATE
    SET status = EXCLUDED.status, raw_id = EXCLUDED.raw_id, event_at = EXCLUDED.event_at,
        seq = EXCLUDED.seq, updated_at = EXCLUDED.updated_at
    WHERE (a.event_at, a.seq) < (EXCLUDED.event_at, EXCLUDED.seq)
RETURNING status

-- name: agent_view_heard
-- The source spoke ($1 source, $2 target or '' for the whole source, $3 when).
INSERT INTO agent_views (source, target, heard_at) VALUES ($1, $2, $3)
ON CONFLICT (source, target) DO UPDATE
    SET heard_at = greatest(agent_views.heard_at, EXCLUDED.heard_at)

-- name: agent_view_save
-- A poll's result for one target: ready agents (NULL: the poll says nothing about
-- agents), queue depth, counters, when.
INSERT INTO agent_views (source, target, ready, depth, counters, heard_at)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (source, target) DO UPDATE
    SET ready = EXCLUDED.ready, depth = EXCLUDED.depth, counters = EXCLUDED.counters,
        heard_at = EXCLUDED.heard_at

-- name: agent_view_read
-- What a source says for a target, read where pacing is measured: the target's row, the
-- source-wide row ('' target: when events last came), and the agents whose last status is
-- $3 (ringme: 'available'), with whether any agent status is known at all.
SELECT v.ready, v.depth, v.counters, v.heard_at, w.heard_at AS source_heard_at,
       (SELECT coalesce(array_agg(s.agent ORDER BY s.agent), '{}') FROM agent_status s
        WHERE s.source = $1 AND s.status = $3) AS available,
       EXISTS (SELECT 1 FROM agent_status s WHERE s.source = $1) AS known
FROM (SELECT 1) AS one
LEFT JOIN agent_views v ON v.source = $1 AND v.target = $2
LEFT JOIN agent_views w ON w.source = $1 AND w.target = ''

-- name: provider_poll_last
SELECT polled_at FROM provider_polls WHERE source = $1

-- name: provider_poll_done
INSERT INTO provider_polls (source, polled_at, polled_by) VALUES ($1, $2, $3)
ON CONFLICT (source) DO UPDATE SET polled_at = EXCLUDED.polled_at, polled_by = EXCLUDED.polled_by

-- ---------------------------------------------------------------- agent-scheduled callbacks

-- name: callback_lead_lock
-- One scheduling at a time per lead (a CRM and a terminal callback may race).
SELECT pg_advisory_xact_lock(7, hashtext($1::bigint::text))

-- name: callback_source_row
-- The call a callback is asked from, with what may forbid it ($2: now).
SELECT c.id, c.batch_id, c.target, c.e164, c.timezone, c.fields, c.state, c.agent, c.attempt,
       coalesce(c.lead_id, c.id) AS lead, b.state AS batch_state,
       EXISTS (SELECT 1 FROM dnc d WHERE d.e164 = c.e164
               AND (d.expires_at IS NULL OR d.expires_at > $2)) AS on_dnc,
       (SELECT min(l.id) FROM calls l
        WHERE (l.id = coalesce(c.lead_id, c.id) OR l.lead_id = coalesce(c.lead_id, c.id))
          AND l.state IN ('pending', 'scheduled', 'retry_wait', 'submitting', 'uncertain',
                          'queued', 'assigned', 'connected')) AS live_call,
       (SELECT max(l.ended_at) FROM calls l
        WHERE (l.id = coalesce(c.lead_id, c.id) OR l.lead_id = coalesce(c.lead_id, c.id))
          AND l.state = 'abandoned') AS abandoned_at
FROM calls c JOIN batches b ON b.id = c.batch_id
WHERE c.id = $1

-- name: callback_insert
-- The callback's attempt: waits as retry_wait until due; nothing for a cancelled batch.
INSERT INTO calls (batch_id, target, line, lead_id, attempt, raw_number, e164, priority, agents,
                   external_id, timezone, fields, state, reason, not_before, created_at, updated_at,
                   numbers, expires_at)
SELECT c.batch_id, c.target, c.line, coalesce(c.lead_id, c.id),
       (SELECT max(l.attempt) FROM calls l
        WHERE l.id = coalesce(c.lead_id, c.id) OR l.lead_id = coalesce(c.lead_id, c.id)) + 1,
       c.raw_number, c.e164, c.priority, c.agents, c.external_id, c.timezone, c.fields,
       'retry_wait', 'callback', $2, $3, $3, c.numbers, c.expires_at
FROM calls c JOIN batches b ON b.id = c.batch_id
WHERE c.id = $1 AND b.state <> 'cancelled'
RETURNING id, attempt

-- name: callback_record
INSERT INTO callbacks (call_id, lead_id, target, owner, asked_at, due_at, grace_until, source, from_call,
                       missed, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)

-- name: callback_of_call
SELECT * FROM callbacks WHERE call_id = $1

-- name: callbacks_grace_passed
-- Owned callbacks still waiting when their owner's grace ended: anyone may take them now.
UPDATE callbacks k SET released_at = $2
FROM calls c
WHERE k.target = $1 AND k.owner IS NOT NULL AND k.released_at IS NULL AND k.grace_until <= $2
  AND c.id = k.call_id AND c.state IN ('pending', 'scheduled', 'retry_wait')
RETURNING k.call_id, k.owner, k.due_at, k.grace_until, c.state

-- name: callback_owned_candidates
-- Due callbacks still in their owner's grace, for the owners who are ready ($3).
SELECT c.id, c.e164, c.priority, c.state, c.agents, c.fields, c.timezone, c.attempt, k.owner,
       c.expires_at, c.batch_id, c.reason,
       EXISTS (SELECT 1 FROM dnc d WHERE d.e164 = c.e164
               AND (d.expires_at IS NULL OR d.expires_at > $2)) AS on_dnc
FROM callbacks k JOIN calls c ON c.id = k.call_id
WHERE k.target = $1 AND k.owner = ANY($3::text[]) AND k.grace_until > $2 AND k.released_at IS NULL
  AND c.state IN ('pending', 'scheduled', 'retry_wait')
  AND (c.not_before IS NULL OR c.not_before <= $2)
  AND EXISTS (SELECT 1 FROM batches b WHERE b.id = c.batch_id AND b.state = 'ingested')
ORDER BY k.due_at, c.id
LIMIT $4
FOR UPDATE OF c SKIP LOCKED

-- name: callbacks_list
-- Callbacks by target, owner, due time and lead ($1..$4, $7 optional), soonest first.
SELECT k.call_id, k.lead_id, k.target, k.owner, k.asked_at, k.due_at, k.grace_until, k.source,
       k.from_call, k.missed, k.created_at, c.state, c.e164, c.external_id, c.not_before, c.agent,
       c.outcome, c.ended_at, c.batch_id
FROM callbacks k JOIN calls c ON c.id = k.call_id
WHERE ($1::text IS NULL OR k.target = $1) AND ($2::text IS NULL OR k.owner = $2)
  AND ($3::timestamptz IS NULL OR k.due_at >= $3) AND ($4::timestamptz IS NULL OR k.due_at < $4)
  AND ($5::boolean OR c.state IN ('pending', 'scheduled', 'retry_wait'))
  AND ($7::bigint IS NULL OR k.lead_id = $7)
ORDER BY k.due_at, k.call_id
LIMIT $6

-- name: metrics_callbacks
-- Scrape time: open callbacks per target — due (their time came, owner's grace running)
-- and overdue (grace passed, still not dialed).
SELECT k.target,
       count(*) FILTER (WHERE k.due_at <= $1 AND k.grace_until > $1)::int AS due,
       count(*) FILTER (WHERE k.grace_until <= $1)::int AS overdue,
       count(*) FILTER (WHERE k.due_at > $1)::int AS upcoming
FROM callbacks k JOIN calls c ON c.id = k.call_id
WHERE c.state IN ('pending', 'scheduled', 'retry_wait')
GROUP BY k.target

-- ==== provider rate budget (dispatch/budget.py) ==============================================

-- name: rate_budget_ensure
INSERT INTO rate_budget (provider) VALUES ($1) ON CONFLICT (provider) DO NOTHING

-- name: rate_budget_lock
-- Reservations of every instance queue on this row lock.
SELECT * FROM rate_budget WHERE provider = $1 FOR UPDATE

-- name: rate_budget_get
SELECT * FROM rate_budget WHERE provider = $1

-- name: rate_budget_counted
-- Sends that may still count against the budget: not finished, or finished after $2.
SELECT id, reserved_at, finished_at, calls FROM rate_budget_sends
WHERE provider = $1 AND (finished_at IS NULL OR finished_at > $2)
ORDER BY reserved_at

-- name: rate_budget_reserve
INSERT INTO rate_budget_sends (provider, reserved_at, calls, chunk_id) VALUES ($1, $2, $3, $4)
RETURNING id

-- name: rate_budget_finish
UPDATE rate_budget_sends SET finished_at = $2 WHERE id = $1 AND finished_at IS NULL

-- name: rate_budget_prune
-- Sends that can no longer count (a request left unfinished by a dead instance ages out too).
DELETE FROM rate_budget_sends
WHERE provider = $1 AND coalesce(finished_at, reserved_at + interval '10 minutes') < $2

-- name: chunk_budget_later
-- A claimed chunk the rate budget holds back for long: recorded again, due then, and the
-- claim not counted as a send attempt (nothing was sent).
UPDATE chunks SET state = 'recorded', next_attempt_at = $2, attempts = greatest(attempts - 1, 0)
WHERE id = $1 AND state = 'sending'

-- name: rate_budget_lower
UPDATE rate_budget SET factor = $2, changed_at = $3, blocked_until = $4,
       lowered_total = lowered_total + (CASE WHEN $5 THEN 1 ELSE 0 END)
WHERE provider = $1

-- ==== abandon-rate guard (dispatch/abandon.py) ===============================================

-- name: abandon_counts
-- Customer-answered calls of a target that ended in (since $2]: abandoned and all picked up.
SELECT count(*) FILTER (WHERE state = 'abandoned') AS abandoned, count(*) AS picked_up
FROM calls
WHERE target = $1 AND ended_at > $2 AND state IN ('answered', 'abandoned')

-- name: abandon_guard_get
SELECT * FROM abandon_guard WHERE target = $1

-- name: abandon_guard_all
SELECT * FROM abandon_guard

-- name: abandon_guard_set
INSERT INTO abandon_guard (target, level, rate, abandoned, picked_up, checked_at, changed_at)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (target) DO UPDATE SET level = $2, rate = $3, abandoned = $4, picked_up = $5,
    checked_at = $6, changed_at = $7
-- ---------------------------------------------------------------- perf

-- name: dnc_import_sorted
-- The import's numbers once each (the latest expiry wins within the file), sorted: the
-- merge then appends to the list's index in key order instead of at random.
CREATE TEMP TABLE dnc_import_src ON COMMIT DROP AS
SELECT DISTINCT ON (e164) e164, expires_at FROM dnc_import
ORDER BY e164, expires_at DESC NULLS FIRST

-- name: dnc_import_merge_sorted
-- dnc_import_merge without ON CONFLICT (a speculative insertion per row costs about as
-- much as the insertion itself): listed numbers are updated, the others inserted in key
-- order, both from one snapshot. A number another transaction lists meanwhile makes the
-- insert fail (unique violation): the caller then rolls back to its savepoint and runs
-- dnc_import_merge, which settles such races row by row.
WITH upd AS (
    UPDATE dnc d SET  -- the longer protection wins, as dnc_add
        source = CASE WHEN d.expires_at IS NOT NULL AND (s.expires_at IS NULL OR s.expires_at > d.expires_at)
                      THEN $1 ELSE d.source END,
        expires_at = CASE WHEN d.expires_at IS NULL OR s.expires_at IS NULL THEN NULL
                          ELSE greatest(d.expires_at, s.expires_at) END
    FROM dnc_import_src s WHERE d.e164 = s.e164
    RETURNING 1
), ins AS (
    INSERT INTO dnc (e164, source, added_at, expires_at)
    SELECT s.e164, $1, $2, s.expires_at FROM dnc_import_src s
    WHERE NOT EXISTS (SELECT 1 FROM dnc d WHERE d.e164 = s.e164)
    ORDER BY s.e164
    RETURNING 1
)
SELECT (SELECT count(*) FROM ins)::int AS added, (SELECT count(*) FROM upd)::int AS updated

-- name: calls_submitting_to
-- calls_submitting, each call with the agent it is directed to ($4, NULL: none).
UPDATE calls c SET state = 'submitting', chunk_id = $2, updated_at = $3, submitted_at = $3,
       offered_to = u.agent
FROM unnest($1::bigint[], $4::text[]) AS u(id, agent)
WHERE c.id = u.id

-- ==== why isn't it dialing? (dispatch/waiting.py) ============================================

-- name: waiting_counts
-- A target's waiting calls by what holds each one, in one pass over calls_dispatchable (its
-- partial predicate and hashtext key, migration 0008): the row's own hold — its batch still
-- coming in, a recycle or callback wait, a rule's hold (hold_reason, migration 0013), an
-- owned callback in its owner's grace — else 'now' (the dispatcher may take it; the target's
-- own state decides between ready, pacing, paused…). With each group: when its first row's
-- hold clears, and how many expire by $3 ($4: the target's lead_ttl_h, or NULL).
-- No per-row join: the target's few batches that matter (still receiving; whose TTL ends by
-- $3) come as arrays, and only a due callback attempt looks up its callback.
WITH b AS (
    SELECT coalesce(array_agg(id) FILTER (WHERE state = 'receiving'), '{}') AS receiving,
           coalesce(array_agg(id) FILTER (WHERE ttl <= $3), '{}') AS ttl_ids,
           coalesce(array_agg(ttl) FILTER (WHERE ttl <= $3), '{}') AS ttl_at
    FROM (SELECT id, state, created_at + $4::float8 * interval '1 hour' AS ttl FROM batches
          WHERE target = $1 AND state IN ('receiving', 'ingested')) x
)
SELECT w.why, count(*)::bigint AS n, min(w.clears) AS clears_at,
       count(*) FILTER (WHERE w.expires <= $3)::bigint AS expiring,
       min(w.expires) FILTER (WHERE w.expires <= $3) AS first_expiry
FROM (
    SELECT CASE WHEN c.batch_id = ANY(b.receiving) THEN 'receiving'
                WHEN c.not_before > $2 AND c.state = 'retry_wait' AND c.reason = 'callback'
                    THEN 'scheduled_callback'
                WHEN c.not_before > $2 AND c.state = 'retry_wait' THEN 'recycle'
                WHEN c.not_before > $2 THEN coalesce(c.hold_reason, 'other')
                WHEN c.grace IS NOT NULL THEN 'scheduled_callback'
                ELSE 'now' END AS why,
           CASE WHEN c.not_before > $2 THEN c.not_before ELSE c.grace END AS clears,
           least(c.expires_at, b.ttl_at[array_position(b.ttl_ids, c.batch_id)]) AS expires
    FROM b, (
        SELECT c.batch_id, c.state, c.reason, c.not_before, c.hold_reason, c.expires_at,
               CASE WHEN c.reason = 'callback' AND (c.not_before IS NULL OR c.not_before <= $2) THEN
                   (SELECT k.grace_until FROM callbacks k WHERE k.call_id = c.id AND k.owner IS NOT NULL
                    AND k.released_at IS NULL AND k.grace_until > $2) END AS grace
        FROM calls c
        -- hashtext(target) is the key of calls_dispatchable (migration 0008)
        WHERE hashtext(c.target) = hashtext($1) AND c.target = $1
          AND c.state IN ('pending', 'scheduled', 'retry_wait')
    ) c
) w
GROUP BY w.why

-- name: call_e164
SELECT e164 FROM calls WHERE id = $1
