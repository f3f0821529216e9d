-- An expiry known only to a day (stated in days, or as a day): true; when the inventory last
-- heard that an expiry was reached; the canonical state (entries kept before have none until
-- their next event); and remember, which names every column of the inventory, made again
-- (journals of an earlier certhook have an older one).
ALTER TABLE inventory ADD COLUMN expires_at_approximate boolean;
ALTER TABLE inventory ADD COLUMN reached_at double precision;
ALTER TABLE inventory ADD COLUMN state text;
DROP FUNCTION IF EXISTS remember(text[], bytea[], bytea[], text[], text[], float8[],
  float8[], text[], text[]);
-- The data of the batch's new events (those this transaction inserted: the events statement
-- runs first), with what the inventory said when each came (context), and what they say of
-- their certificates -- one event after another in the order they came, as
-- remember_certificates in store_sqlite.c: a stale event (it occurred before the last one
-- applied) leaves an entry as it is, repeats of a type are counted, the context is what the
-- entry of the event's first certificate was. The entries are folded in memory and each is
-- written once per batch, after advisory locks on all of them in one order (two servers'
-- batches never wait for each other in a cycle). Returns a row per event with a context (i,
-- context) and one per entry written (i NULL, the entry for /metrics).
CREATE FUNCTION remember(ids text[], evs bytea[], bodies bytea[], facts text[],
  types text[], occurred float8[], received float8[], providers text[], sources text[])
  RETURNS TABLE (i integer, context text, key text, hostname text, provider text,
  status text, state text, last_type text, expires_at float8, updated_at float8)
  LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE me xid := pg_current_xact_id()::xid; seqs bigint[]; ctxs text[] := '{}';
  keys text[]; entries inventory[]; k integer; at integer; fact text; f jsonb;
  e inventory; stale boolean; reps integer; ctx jsonb; occ float8; t text; r float8;
BEGIN
  SELECT array_agg((SELECT ev.seq FROM events ev WHERE ev.id = u.id AND ev.xmin = me)
    ORDER BY u.k) INTO seqs FROM unnest(ids) WITH ORDINALITY AS u(id, k);
  -- the batch's certificates, locked in one order, and their entries (planned for them:
  -- EXECUTE)
  SELECT array_agg(DISTINCT (l::jsonb)->>'key') INTO keys FROM unnest(facts) WITH
    ORDINALITY AS a(x, n), unnest(string_to_array(x, E'\n')) AS b(l)
    WHERE l <> '' AND seqs[a.n] IS NOT NULL;
  IF keys IS NULL THEN keys := '{}'; END IF;
  PERFORM pg_advisory_xact_lock(1129, h) FROM (SELECT DISTINCT hashtext(v) AS h FROM
    unnest(keys) AS v ORDER BY 1) o;
  EXECUTE 'SELECT array_agg(n ORDER BY u.k) FROM unnest($1) WITH ORDINALITY AS u(v, k)
    LEFT JOIN certhook.inventory n ON n.key = u.v' INTO entries USING keys;
  FOR k IN 1 .. coalesce(array_length(ids, 1), 0) LOOP
    ctxs[k] := NULL;
    CONTINUE WHEN seqs[k] IS NULL OR facts[k] IS NULL;
    ctx := NULL; occ := occurred[k]; t := types[k]; r := received[k];
    FOREACH fact IN ARRAY string_to_array(facts[k], E'\n') LOOP
      CONTINUE WHEN fact = '';
      f := fact::jsonb; at := array_position(keys, f->>'key'); e := entries[at];
      stale := e.key IS NOT NULL AND occ IS NOT NULL AND e.last_occurred_at IS NOT NULL
        AND occ < e.last_occurred_at;
      reps := CASE WHEN e.last_type = t THEN e.repeats + 1 ELSE 1 END;
      IF ctx IS NULL THEN
        -- an entry as JSON: its columns, as certhook.certs reads it
        ctx := CASE WHEN e.key IS NULL THEN jsonb_build_object('stale', stale, 'repeats',
          reps) ELSE jsonb_build_object('stale', stale, 'repeats', reps, 'previous',
          to_jsonb(e)) END;
      END IF;
      CONTINUE WHEN stale;
      entries[at] := ROW(f->>'key', coalesce(e.provider, providers[k]),
        coalesce(e.source, sources[k]), coalesce(f->>'hostname', e.hostname),
        coalesce(f->>'certificate_id', e.certificate_id), coalesce(f->>'name', e.name),
        coalesce(f->>'scope', e.scope), CASE WHEN t = 'certificate.deletion.succeeded'
        THEN 'deleted' ELSE coalesce(f->>'status', e.status) END,
        coalesce(nullif(f->'domains', 'null'), e.domains),
        coalesce(f->>'issuer', e.issuer), coalesce(f->>'serial_number', e.serial_number),
        coalesce((f->>'not_before')::float8, e.not_before),
        coalesce((f->>'expires_at')::float8, e.expires_at), ids[k], t,
        coalesce(occ, e.last_occurred_at), reps,
        CASE WHEN t = 'certificate.expiration.upcoming' THEN r ELSE e.warned_at END,
        CASE WHEN t IN ('certificate.renewal.succeeded', 'certificate.issuance.succeeded',
        'certificate.import.succeeded') THEN r ELSE e.renewed_at END,
        coalesce(e.first_seen, r), r, CASE WHEN f->>'expires_at' IS NULL THEN
        e.expires_at_approximate ELSE (f->>'expires_at_approximate')::boolean END,
        CASE WHEN t = 'certificate.expiration.reached' THEN r ELSE e.reached_at END,
        coalesce(f->>'state', e.state))::inventory;
    END LOOP;
    ctxs[k] := ctx::text;
  END LOOP;
  INSERT INTO event_data (seq, event, body, context) SELECT seqs[u.n], u.ev, u.body,
    ctxs[u.n] FROM unnest(evs, bodies) WITH ORDINALITY AS u(ev, body, n)
    WHERE seqs[u.n] IS NOT NULL;
  IF array_length(keys, 1) > 0 THEN
    INSERT INTO inventory AS x SELECT u.* FROM unnest(entries) AS u WHERE u.key IS NOT NULL
    ORDER BY u.key
    ON CONFLICT ON CONSTRAINT inventory_pkey DO UPDATE SET provider = excluded.provider,
      source = excluded.source, hostname = excluded.hostname,
      certificate_id = excluded.certificate_id, name = excluded.name,
      scope = excluded.scope, status = excluded.status, domains = excluded.domains,
      issuer = excluded.issuer, serial_number = excluded.serial_number,
      not_before = excluded.not_before, expires_at = excluded.expires_at,
      last_event = excluded.last_event, last_type = excluded.last_type,
      last_occurred_at = excluded.last_occurred_at, repeats = excluded.repeats,
      warned_at = excluded.warned_at, renewed_at = excluded.renewed_at,
      first_seen = excluded.first_seen, updated_at = excluded.updated_at,
      expires_at_approximate = excluded.expires_at_approximate,
      reached_at = excluded.reached_at, state = excluded.state;
  END IF;
  RETURN QUERY SELECT u.n::integer, u.c, NULL, NULL, NULL, NULL, NULL, NULL,
    NULL::float8, NULL::float8 FROM unnest(ctxs) WITH ORDINALITY AS u(c, n)
    WHERE u.c IS NOT NULL;
  RETURN QUERY SELECT NULL::integer, NULL, u.key, u.hostname, u.provider, u.status,
    u.state, u.last_type, u.expires_at, u.updated_at FROM unnest(entries) AS u
    WHERE u.key IS NOT NULL;
END $$;
