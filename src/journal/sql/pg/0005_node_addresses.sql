-- Where each server listens, for the command line on its machine (journal_announce).
ALTER TABLE nodes ADD COLUMN listen text, ADD COLUMN admin text;
