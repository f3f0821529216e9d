-- A delivery that succeeded at its first attempt has no row of its own: it is kept in its
-- event's row, events.done, a JSON array of [handler, generation, started_at, duration] (the
-- handler an id of handlers, the start in milliseconds since the epoch, the duration in
-- microseconds; its first attempt is its start; no error, no crash). deliveries
-- keeps every other one: those that failed, wait, run, are dead, or succeeded after a retry.
-- all_deliveries reads both as the rows they stand for.
CREATE TABLE handlers (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
ALTER TABLE events ADD COLUMN done TEXT;
CREATE VIEW all_deliveries AS
  SELECT event_seq, handler, status, attempts, generation, started_at, duration, last_error,
    next_at, first_at, traceback, crashes FROM deliveries
  UNION ALL
  SELECT e.seq, h.name, 'done', 1, j.value ->> 1, (j.value ->> 2) / 1e3,
    (j.value ->> 3) / 1e6, NULL, NULL, (j.value ->> 2) / 1e3, NULL, 0
  FROM events e JOIN json_each(e.done) j JOIN handlers h ON h.id = j.value ->> 0
  WHERE e.done IS NOT NULL;
