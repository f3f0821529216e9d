-- The tables as SQLite's (../sqlite), plus nodes (the servers and their leases), events.owner
-- (the server that holds an event) and replays.claimed_by. state keeps keys and values as
-- bytes (handlers may use any); num() writes a number as certhook.state does.
CREATE TABLE nodes (id bigserial PRIMARY KEY, name text NOT NULL, pid integer,
  started_at timestamptz NOT NULL DEFAULT now(), lease_until timestamptz NOT NULL);
CREATE TABLE events (seq bigserial PRIMARY KEY, id text NOT NULL UNIQUE,
  source text NOT NULL, provider text NOT NULL, type text NOT NULL, provider_type text,
  hostname text, received_at double precision NOT NULL, occurred_at double precision,
  state smallint NOT NULL DEFAULT 0, owner bigint);
CREATE INDEX events_held ON events (owner) WHERE state <> 2;
CREATE INDEX events_free ON events (seq) WHERE owner IS NULL AND state <> 2;
-- kept whole in the row up to 8 KB: no compression (its CPU) for the usual event
CREATE TABLE event_data (seq bigint PRIMARY KEY, event bytea, body bytea NOT NULL)
  WITH (toast_tuple_target = 8160);
CREATE TABLE deliveries (event_seq bigint NOT NULL, handler text NOT NULL,
  status text NOT NULL, attempts integer NOT NULL DEFAULT 0,
  crashes integer NOT NULL DEFAULT 0, generation bigint, first_at double precision,
  started_at double precision, duration double precision, next_at double precision,
  last_error text, traceback text, PRIMARY KEY (event_seq, handler));
-- OPEN_DELIVERY in store_pg.c
CREATE INDEX deliveries_open ON deliveries (status) WHERE status <> 'done' AND status <> 'dead';
CREATE INDEX deliveries_dead ON deliveries (event_seq) WHERE status = 'dead';
CREATE TABLE state (key bytea PRIMARY KEY, value bytea NOT NULL,
  expires_at double precision);
CREATE TABLE replays (id bigserial PRIMARY KEY, event_id text,
  dead boolean NOT NULL DEFAULT false, requested_at double precision NOT NULL,
  claimed_by bigint);
CREATE TABLE certificates (hostname text PRIMARY KEY, type text NOT NULL, status text,
  expires_at double precision, updated_at double precision NOT NULL);
CREATE FUNCTION num(v double precision) RETURNS text LANGUAGE sql IMMUTABLE AS
  $$ SELECT CASE WHEN v = trunc(v) AND abs(v) < 9007199254740992
     THEN trunc(v)::bigint::text ELSE v::text END $$;
