-- The inventory by certificate (provider and certificate id, else hostname), with the last
-- event applied and its repeats; what it said when each event came (event_data.context).
-- The hostnames of the previous inventory become entries of their own.
CREATE TABLE inventory (key TEXT PRIMARY KEY, provider TEXT NOT NULL, source TEXT,
  hostname TEXT, certificate_id TEXT, name TEXT, scope TEXT, status TEXT, domains TEXT,
  issuer TEXT, serial_number TEXT, not_before REAL, expires_at REAL, last_event TEXT,
  last_type TEXT, last_occurred_at REAL, repeats INTEGER NOT NULL DEFAULT 1,
  warned_at REAL, renewed_at REAL, first_seen REAL NOT NULL, updated_at REAL NOT NULL)
  WITHOUT ROWID;
CREATE INDEX inventory_hostname ON inventory(hostname);
CREATE INDEX inventory_expiry ON inventory(expires_at);
INSERT INTO inventory (key, provider, hostname, status, expires_at, last_type,
  last_occurred_at, first_seen, updated_at)
  SELECT p || ':host:' || hostname, p, hostname, status, expires_at, type, updated_at,
    updated_at, updated_at FROM (SELECT c.*, coalesce((SELECT provider FROM events e WHERE
    e.hostname = c.hostname ORDER BY seq DESC LIMIT 1), 'unknown') AS p FROM certificates c);
DROP TABLE certificates;
ALTER TABLE event_data ADD COLUMN context TEXT;
