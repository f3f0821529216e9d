-- The inventory folded off the path to the 202 (journal/inventory.c): what an event says of its
-- certificates, packed, kept with it (folded again after a crash between the two
-- transactions); what the inventory said when each came, written by the fold; how far the log
-- is folded.
ALTER TABLE event_data ADD COLUMN facts BLOB;
CREATE TABLE contexts (seq INTEGER PRIMARY KEY, context TEXT NOT NULL);
CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
INSERT INTO meta (key, value) SELECT 'folded', coalesce(max(seq), 0) FROM events;
