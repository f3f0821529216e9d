-- An expiry known only to a day (stated in days, or as a day): 1; when the inventory last
-- heard that an expiry was reached; the canonical state (entries kept before have none until
-- their next event).
ALTER TABLE inventory ADD COLUMN expires_at_approximate INTEGER;
ALTER TABLE inventory ADD COLUMN reached_at REAL;
ALTER TABLE inventory ADD COLUMN state TEXT;
