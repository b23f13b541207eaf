-- Campaign figures (SPEC §10): the pieces the figures queries share, so each rule is
-- written once.

-- The key of the zone a call's local hour is read in (dispatch/hours.py zones_for): the
-- lead's timezone when it has one, else its number — NANP numbers by NPA-NXX (the zone
-- follows it, as intake/phones.py caches it), other numbers whole. The figures code maps
-- each key to one IANA zone in Python (phonenumbers) and hands the map back to SQL.
CREATE FUNCTION figures_zone_key(tz text, e164 text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN tz IS NOT NULL THEN 'tz:' || tz
                WHEN e164 LIKE '+1%' AND length(e164) = 12 THEN left(e164, 8) || '0000'
                ELSE e164 END
$$;

-- The talk time a terminal callback reported, read as leniently as lifecycle/payload.py
-- reads it: key case and '_'/'-' ignored, talkTime first, else duration; a value that is
-- not a plain non-negative number counts as not reported.
CREATE FUNCTION figures_talk_s(body jsonb) RETURNS float8
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    v text;
BEGIN
    IF jsonb_typeof(body) IS DISTINCT FROM 'object' THEN
        RETURN NULL;
    END IF;
    v := coalesce(body->>'talkTime', body->>'talk_time');  -- the usual spellings: cheap
    IF v IS NULL THEN
        SELECT e.value INTO v FROM jsonb_each_text(body) e
        WHERE lower(translate(e.key, '_-', '')) IN ('talktime', 'duration')
        ORDER BY lower(translate(e.key, '_-', '')) = 'duration'
        LIMIT 1;
    END IF;
    IF v ~ '^\s*[0-9]{1,9}(\.[0-9]+)?\s*$' THEN
        RETURN v::float8;
    END IF;
    RETURN NULL;
END
$$;

-- A target's recent send rate (attempts claimed in the last minutes): the attempts of one
-- target by the time they were claimed. Only claimed rows are in it, so intake pays nothing.
CREATE INDEX calls_target_submitted ON calls (target, submitted_at) WHERE submitted_at IS NOT NULL;
