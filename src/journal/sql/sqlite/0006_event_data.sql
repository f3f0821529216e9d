-- The event as normalized at intake (base/pack.c), kept with the body as received, in a
-- table of their own: written once, while the events row stays small for the state updates
-- and the scans. Rows of earlier versions get their event from journal_upgrade.
CREATE TABLE event_data (seq INTEGER PRIMARY KEY, event BLOB, body TEXT NOT NULL);
INSERT INTO event_data (seq, body) SELECT seq, payload FROM events;
ALTER TABLE events DROP COLUMN payload;
ALTER TABLE events ADD COLUMN occurred_at REAL;
