-- Deaths of the process while the delivery's handler ran (dispatch/stall.c): two make it
-- dead.
ALTER TABLE deliveries ADD COLUMN crashes INTEGER NOT NULL DEFAULT 0;
