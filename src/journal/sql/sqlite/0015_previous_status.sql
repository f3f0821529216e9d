-- What an entry's status and state were before the last event that changed each (the fold,
-- journal/inventory.c); entries kept before have none until their next change.
ALTER TABLE inventory ADD COLUMN previous_status TEXT;
ALTER TABLE inventory ADD COLUMN previous_state TEXT;
