-- The events, and their deliveries to the handlers. events.state: 0 not yet dispatched,
-- 1 deliveries not all final, 2 all final (done/dead, or no handler matched), 3 replay
-- requested.
CREATE TABLE events (
  seq INTEGER PRIMARY KEY,
  id TEXT NOT NULL UNIQUE,
  source TEXT NOT NULL,
  provider TEXT NOT NULL,
  type TEXT NOT NULL,
  provider_type TEXT,
  hostname TEXT,
  received_at REAL NOT NULL,
  payload TEXT NOT NULL,
  state INTEGER NOT NULL DEFAULT 0);
CREATE INDEX events_new ON events(seq) WHERE state = 0;
CREATE TABLE deliveries (
  event_seq INTEGER NOT NULL,
  handler TEXT NOT NULL,
  status TEXT NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  generation INTEGER,
  started_at REAL,
  duration REAL,
  last_error TEXT,
  PRIMARY KEY (event_seq, handler)) WITHOUT ROWID;
