-- Duplicates are found in memory (journal/ids.c), not by a unique index on the event ids: the
-- ids are random, so the index took a page of its own for every event, which the write-ahead
-- log wrote whole. The table is made again without it (SQLite cannot drop a UNIQUE
-- constraint).
CREATE TABLE events_new (
  seq INTEGER PRIMARY KEY,
  id TEXT NOT NULL,
  source TEXT NOT NULL,
  provider TEXT NOT NULL,
  type TEXT NOT NULL,
  provider_type TEXT,
  hostname TEXT,
  received_at REAL NOT NULL,
  state INTEGER NOT NULL DEFAULT 0,
  occurred_at REAL);
INSERT INTO events_new (seq, id, source, provider, type, provider_type, hostname, received_at,
  state, occurred_at)
  SELECT seq, id, source, provider, type, provider_type, hostname, received_at, state,
    occurred_at FROM events;
DROP TABLE events;
ALTER TABLE events_new RENAME TO events;
CREATE INDEX events_todo ON events(state) WHERE state <> 2;
