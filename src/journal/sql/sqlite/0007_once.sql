-- certhook.once: keys that ran to success (results: JSON), or are claimed till lease_until.
CREATE TABLE once (key TEXT PRIMARY KEY, results TEXT, lease_until REAL) WITHOUT ROWID;
