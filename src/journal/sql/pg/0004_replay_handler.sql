-- A replay of one delivery of an event (NULL: those that did not succeed).
ALTER TABLE replays ADD COLUMN handler text;
