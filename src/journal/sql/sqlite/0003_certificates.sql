-- The certificate inventory (metrics.c): the last known facts per hostname.
CREATE TABLE certificates (hostname TEXT PRIMARY KEY, type TEXT NOT NULL, status TEXT,
  expires_at REAL, updated_at REAL NOT NULL) WITHOUT ROWID;
