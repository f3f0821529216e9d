-- Partial indexes without IN lists: SQLite builds an ephemeral table for an IN list each
-- time it checks a row against the index, on every insert and update. Queries that use
-- them repeat their WHERE terms (OPEN_DELIVERY, OPEN_EVENT in store_sqlite.c).
DROP INDEX deliveries_todo;
CREATE INDEX deliveries_todo ON deliveries(status) WHERE status <> 'done' AND status <> 'dead';
DROP INDEX events_todo;
CREATE INDEX events_todo ON events(state) WHERE state <> 2;
