-- Every replay asked for, kept (replays is the servers' queue: a request goes once handled):
-- when, who (the admin token's name "admin" through the console's API, "local" from the
-- command line or a token-less loopback admin listener), of what (event_id NULL: every dead
-- delivery; handler NULL: the event's deliveries that did not succeed).
CREATE TABLE replay_log (id bigserial PRIMARY KEY, event_id text, handler text,
  dead boolean NOT NULL DEFAULT false, requested_at float8 NOT NULL, requested_by text);
CREATE INDEX replay_log_event ON replay_log (event_id);
