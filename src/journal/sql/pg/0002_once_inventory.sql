-- certhook.once, and the inventory by certificate with what it said when each event came
-- (event_data.context), as ../sqlite's (the hostnames of the previous inventory become
-- entries of their own).
CREATE TABLE once (key bytea PRIMARY KEY, results bytea, lease_until double precision);
CREATE TABLE inventory (key text PRIMARY KEY, provider text NOT NULL, source text,
  hostname text, certificate_id text, name text, scope text, status text, domains jsonb,
  issuer text, serial_number text, not_before double precision,
  expires_at double precision, last_event text, last_type text,
  last_occurred_at double precision, repeats integer NOT NULL DEFAULT 1,
  warned_at double precision, renewed_at double precision,
  first_seen double precision NOT NULL, updated_at double precision NOT NULL)
  WITH (fillfactor = 70); -- room for the updates of an entry in its page (HOT)
CREATE INDEX inventory_hostname ON inventory (hostname);
CREATE INDEX inventory_certificate ON inventory (certificate_id);
CREATE INDEX inventory_expiry ON inventory (expires_at);
INSERT INTO inventory (key, provider, hostname, status, expires_at, last_type,
  last_occurred_at, first_seen, updated_at)
  SELECT p || ':host:' || hostname, p, hostname, status, expires_at, type, updated_at,
    updated_at, updated_at FROM (SELECT c.*, coalesce((SELECT provider FROM events e WHERE
    e.hostname = c.hostname ORDER BY seq DESC LIMIT 1), 'unknown') AS p FROM certificates c) x;
DROP TABLE certificates;
ALTER TABLE event_data ADD COLUMN context text;
-- certhook.once's claim: 0 ours to run, 1 it ran to success, 2 another claim holds it (till
-- held_until)
CREATE FUNCTION once_claim(k bytea, till float8, now float8, OUT result integer,
  OUT held_until float8) LANGUAGE plpgsql AS $$ BEGIN
  INSERT INTO once AS o (key, lease_until) VALUES (k, till) ON CONFLICT (key) DO UPDATE
    SET lease_until = excluded.lease_until WHERE o.results IS NULL AND o.lease_until < now;
  IF FOUND THEN result := 0; RETURN; END IF;
  SELECT CASE WHEN o.results IS NOT NULL THEN 1 ELSE 2 END, o.lease_until
    INTO result, held_until FROM once o WHERE o.key = k;
  result := coalesce(result, 2);
END $$;
