-- Every replay asked for, kept (replays is the server's queue: a request goes once handled):
-- when, who (the admin token's name "admin" through the console's API, "local" from the
-- command line or a token-less loopback admin listener), of what (event_id NULL: every dead
-- delivery; handler NULL: the event's deliveries that did not succeed).
CREATE TABLE replay_log (id INTEGER PRIMARY KEY, event_id TEXT, handler TEXT,
  dead INTEGER NOT NULL DEFAULT 0, requested_at REAL NOT NULL, requested_by TEXT);
CREATE INDEX replay_log_event ON replay_log(event_id);
