-- The inventory folded off the path to the 202, as ../sqlite's 0011 (journal/inventory.c, by
-- the writer of the server holding the fold, store_pg.c): the commit a 202 waits for writes the
-- batch's events and nothing else -- what each says of its certificates kept with it (facts,
-- packed) -- and remember, which folded them in that commit, is gone. What the inventory said
-- when each event came goes to contexts; fold.upto: the log is folded up to that seq (every
-- event of an older journal was folded when it came).
DROP FUNCTION remember(text[], bytea[], bytea[], text[], text[], float8[], float8[], text[],
  text[]);
ALTER TABLE event_data ADD COLUMN facts bytea;
CREATE TABLE contexts (seq bigint PRIMARY KEY, context text NOT NULL);
CREATE TABLE fold (upto bigint NOT NULL);
INSERT INTO fold SELECT coalesce(max(seq), 0) FROM events;
-- A batch's transaction takes, before it draws its seqs, a shared advisory lock whose key holds
-- the last seq drawn then (below all of the batch's), until its commit: seqs are drawn in one
-- order by every server but committed in another, and a fold must not pass a seq still in
-- flight. The key: 'CH' in its top 16 bits, the seq in the other 48.
CREATE FUNCTION appending() RETURNS void LANGUAGE sql AS $$
  SELECT pg_advisory_xact_lock_shared(4848124998864338944 +
    CASE WHEN is_called THEN last_value ELSE last_value - 1 END) FROM events_seq_seq $$;
-- The fold's start, in its transaction: NULLs when another server folds now; else how far the
-- log is folded, and how far it may be now (horizon): the last seq drawn, read first, and below
-- the lowest seq any batch still in flight may hold, read after (a batch that drew a seq before
-- the first read either holds its lock at the second or has ended: its events are seen by the
-- statements that follow).
CREATE FUNCTION fold_begin(OUT folded bigint, OUT horizon bigint) LANGUAGE plpgsql AS $$
DECLARE drawn bigint; held bigint;
BEGIN
  IF NOT pg_try_advisory_xact_lock(4848124998864338943) THEN RETURN; END IF;
  SELECT upto INTO folded FROM fold;
  SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END INTO drawn
    FROM events_seq_seq;
  SELECT min(((l.classid::bigint & 65535) << 32) | l.objid::bigint) INTO held FROM pg_locks l
    WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.classid::bigint >> 16 = 17224
    AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database());
  horizon := least(drawn, held);
END $$;
