-- Leads with several numbers, and lead expiry (issue 15).

-- numbers: every usable number of a lead with more than one, in the lead's order (E.164);
-- NULL for the usual one-number lead, so it costs that lead nothing. Each attempt carries
-- the list and dials one of them (e164); a re-dial goes to the next one in turn.
-- number_notes: the lead's numbers that were rejected (invalid, duplicate, dnc) while the
-- lead itself was accepted, for the report: [{"field", "number", "outcome", "reason"}].
-- expires_at: after it the lead is not dialed and ends expired.
ALTER TABLE calls
    ADD COLUMN numbers      text[],
    ADD COLUMN number_notes jsonb,
    ADD COLUMN expires_at   timestamptz;

-- finalise looks at a batch's several-number leads only; one-number rows are not in it
CREATE INDEX calls_multi_number ON calls (batch_id)
    WHERE numbers IS NOT NULL OR number_notes IS NOT NULL;
