/*
 * journal_floor.c -- the least a durable journal like certhook's costs on this machine, with
 * no HTTP, no Lua and no threads: how much CPU per event SQLite (WAL, synchronous=FULL) needs
 * to commit events in batches, each commit also recording one finished delivery for every
 * event of the batch before -- as certhook's writer does: a delivery that succeeds rides in
 * the next batch of events. make bench runs it (part 4) so the figure can be set against the
 * peers' whole request; it is not part of certhook.
 *
 *   journal_floor DIR EVENTS BATCH   -> one line: events, batch, CPU us per event, commits/s
 *
 * Same tables and indexes as the journal's schema (src/journal/sql/sqlite/), the same
 * statements in spirit: an INSERT per event (random 36-character id) and of its data (a 1.1 KB
 * body and a 850-byte packed event), a certificates upsert, a delivery row and the event's
 * state.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>

#include <sqlite3.h>

static const char schema[] =
    "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA cache_size=-256;"
    "CREATE TABLE events (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, source TEXT NOT "
    "NULL, provider TEXT NOT NULL, type TEXT NOT NULL, provider_type TEXT, hostname TEXT, "
    "received_at REAL NOT NULL, state INTEGER NOT NULL DEFAULT 0, occurred_at REAL);"
    "CREATE TABLE event_data (seq INTEGER PRIMARY KEY, event BLOB, body TEXT NOT NULL);"
    "CREATE INDEX events_todo ON events(state) WHERE state <> 2;"
    "CREATE TABLE deliveries (event_seq INTEGER NOT NULL, handler TEXT NOT NULL, status TEXT "
    "NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, generation INTEGER, started_at REAL, "
    "duration REAL, last_error TEXT, next_at REAL, first_at REAL, traceback TEXT, "
    "crashes INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (event_seq, handler)) WITHOUT ROWID;"
    "CREATE INDEX deliveries_todo ON deliveries(status) WHERE status <> 'done' AND status <> "
    "'dead';"
    "CREATE INDEX deliveries_dead ON deliveries(status) WHERE status = 'dead';"
    "CREATE TABLE certificates (hostname TEXT PRIMARY KEY, type TEXT NOT NULL, status TEXT,"
    "  expires_at REAL, updated_at REAL NOT NULL) WITHOUT ROWID;";

static void must(int rc, sqlite3 *db)
{
    if (rc != SQLITE_OK && rc != SQLITE_DONE && rc != SQLITE_ROW) {
        fprintf(stderr, "journal_floor: %s\n", sqlite3_errmsg(db));
        exit(1);
    }
}

static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static double wall_seconds(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

/* The delivery of event k (seq k + 1) finished, and so did the event. */
static void done(sqlite3 *db, sqlite3_stmt *del, sqlite3_stmt *fin, int k)
{
    sqlite3_bind_int(del, 1, k + 1);
    sqlite3_bind_double(del, 2, 1.7e9 + k);
    sqlite3_bind_double(del, 3, 1.7e9 + k);
    must(sqlite3_step(del), db);
    sqlite3_reset(del);
    sqlite3_bind_int(fin, 1, k + 1);
    must(sqlite3_step(fin), db);
    sqlite3_reset(fin);
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: journal_floor DIR EVENTS BATCH\n");
        return 2;
    }
    char path[4096];
    int n = atoi(argv[2]), batch = atoi(argv[3]), commits = 0, prev = 0;
    snprintf(path, sizeof path, "%s/floor.db", argv[1]);
    sqlite3 *db;
    sqlite3_stmt *ins, *data, *cert, *del, *fin;
    must(sqlite3_open(path, &db), db);
    must(sqlite3_exec(db, schema, NULL, NULL, NULL), db);
    must(sqlite3_prepare_v2(db, "INSERT INTO events (id, source, provider, type, provider_type, "
                                "hostname, received_at, occurred_at) VALUES (?,?,?,?,?,?,?,?) ON "
                                "CONFLICT (id) DO NOTHING", -1, &ins, NULL), db);
    must(sqlite3_prepare_v2(db, "INSERT INTO event_data VALUES (?,?,?)", -1, &data, NULL), db);
    must(sqlite3_prepare_v2(db, "INSERT INTO certificates VALUES (?, 'custom_hostname', "
                                "'pending_validation', NULL, ?) ON CONFLICT (hostname) DO UPDATE "
                                "SET updated_at = excluded.updated_at", -1, &cert, NULL), db);
    must(sqlite3_prepare_v2(db, "INSERT INTO deliveries (event_seq, handler, status, attempts, "
                                "generation, first_at, started_at, duration) VALUES "
                                "(?, 'bench.lua:certificate.*', 'done', 1, 1, ?, ?, 0.00001)",
                            -1, &del, NULL), db);
    must(sqlite3_prepare_v2(db, "UPDATE events SET state = 2 WHERE seq = ?", -1, &fin, NULL), db);
    char payload[1114], packed[850], id[40];
    memset(payload, 'x', sizeof payload - 1);
    payload[sizeof payload - 1] = '\0';
    memset(packed, 'e', sizeof packed);
    srandom(1);
    double c0 = cpu_seconds(), w0 = wall_seconds();
    for (int i = 0; i < n; i += batch) {
        int end = i + batch < n ? i + batch : n;
        must(sqlite3_exec(db, "BEGIN", NULL, NULL, NULL), db);
        for (int k = i; k < end; k++) {
            snprintf(id, sizeof id, "%08lx-%04lx-%04lx-%04lx-%012lx", random(),
                     random() & 0xffff, random() & 0xffff, random() & 0xffff, random());
            sqlite3_bind_text(ins, 1, id, -1, SQLITE_STATIC);
            sqlite3_bind_text(ins, 2, "cloudflare", -1, SQLITE_STATIC);
            sqlite3_bind_text(ins, 3, "cloudflare", -1, SQLITE_STATIC);
            sqlite3_bind_text(ins, 4, "certificate.validation.failed", -1, SQLITE_STATIC);
            sqlite3_bind_text(ins, 5, "ssl.custom_hostname_certificate.validation.failed", -1,
                              SQLITE_STATIC);
            sqlite3_bind_text(ins, 6, "app.example.com", -1, SQLITE_STATIC);
            sqlite3_bind_double(ins, 7, 1.7e9 + k);
            sqlite3_bind_double(ins, 8, 1.7e9 + k);
            must(sqlite3_step(ins), db);
            sqlite3_reset(ins);
            sqlite3_bind_int64(data, 1, sqlite3_last_insert_rowid(db));
            sqlite3_bind_blob(data, 2, packed, sizeof packed, SQLITE_STATIC);
            sqlite3_bind_text(data, 3, payload, -1, SQLITE_STATIC);
            must(sqlite3_step(data), db);
            sqlite3_reset(data);
            sqlite3_bind_text(cert, 1, "app.example.com", -1, SQLITE_STATIC);
            sqlite3_bind_double(cert, 2, 1.7e9 + k);
            must(sqlite3_step(cert), db);
            sqlite3_reset(cert);
        }
        for (int k = prev; k < i; k++) /* the batch before: its deliveries are done */
            done(db, del, fin, k);
        must(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), db);
        commits++;
        prev = i;
    }
    must(sqlite3_exec(db, "BEGIN", NULL, NULL, NULL), db);
    for (int k = prev; k < n; k++)
        done(db, del, fin, k);
    must(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), db);
    commits++;
    double cpu = cpu_seconds() - c0, wall = wall_seconds() - w0;
    printf("%d %d %.1f %.0f\n", n, batch, cpu / n * 1e6, commits / wall);
    sqlite3_finalize(ins);
    sqlite3_finalize(data);
    sqlite3_finalize(cert);
    sqlite3_finalize(del);
    sqlite3_finalize(fin);
    sqlite3_close(db);
    return 0;
}
