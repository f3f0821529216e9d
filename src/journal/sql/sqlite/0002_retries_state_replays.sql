-- Retries of deliveries, handlers' state (certhook.state) and replay requests.
ALTER TABLE deliveries ADD COLUMN next_at REAL;
ALTER TABLE deliveries ADD COLUMN first_at REAL;
ALTER TABLE deliveries ADD COLUMN traceback TEXT;
CREATE INDEX deliveries_todo ON deliveries(status) WHERE status IN ('pending', 'running', 'retrying');
CREATE INDEX deliveries_dead ON deliveries(status) WHERE status = 'dead';
DROP INDEX events_new;
CREATE INDEX events_todo ON events(state) WHERE state IN (0, 3);
CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT NOT NULL, expires_at REAL) WITHOUT ROWID;
CREATE TABLE replays (id INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT,
  dead INTEGER NOT NULL DEFAULT 0,
  requested_at REAL NOT NULL);
