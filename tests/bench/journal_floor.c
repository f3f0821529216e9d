/*
 * journal_floor.c -- the least the durable append a 202 waits for costs on this machine, with
 * no HTTP, no Lua and no threads: CPU per event for SQLite (WAL, synchronous=FULL, 16 KiB
 * pages, checkpoints in the same thread) committing events in batches. make bench runs it
 * (part 4) so the figure can be set against the peers' whole request and against the writer's
 * own; it is not part of certhook.
 *
 *   journal_floor DIR EVENTS BATCH MODE   -> one line: mode, events, batch, CPU us/event, commits/s
 *
 * MODE:
 *   log     the least a durable log needs: one table (seq, id, data), a 2 KB blob per event
 *   unique  the same with a UNIQUE index on the random 36-character id (dedup by B-tree)
 *   ack     what certhook's ack transaction writes (src/journal/sql/sqlite/, after 0012): the
 *           events row (summary columns, the events_todo partial index) and event_data (the
 *           packed event, 850 bytes, the body, 1.1 KB, and the certificates' facts); dedup in
 *           memory, so no index on the id
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>

#include <sqlite3.h>

static const char pragmas[] =
    "PRAGMA page_size=16384; PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;";

static const char log_schema[] = "CREATE TABLE log (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, "
                                 "data BLOB NOT NULL);";

static const char unique_schema[] = "CREATE TABLE log (seq INTEGER PRIMARY KEY, id TEXT NOT NULL "
                                    "UNIQUE, data BLOB NOT NULL);";

static const char ack_schema[] =
    "CREATE TABLE events (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, source TEXT NOT NULL, "
    "provider TEXT NOT NULL, type TEXT NOT NULL, provider_type TEXT, hostname TEXT, "
    "received_at REAL NOT NULL, state INTEGER NOT NULL DEFAULT 0, occurred_at REAL);"
    "CREATE INDEX events_todo ON events(state) WHERE state <> 2;"
    "CREATE TABLE event_data (seq INTEGER PRIMARY KEY, event BLOB, body TEXT NOT NULL, "
    "context TEXT, facts BLOB);";

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

int main(int argc, char **argv)
{
    if (argc != 5 || (strcmp(argv[4], "log") && strcmp(argv[4], "unique") &&
                      strcmp(argv[4], "ack"))) {
        fprintf(stderr, "usage: journal_floor DIR EVENTS BATCH log|unique|ack\n");
        return 2;
    }
    const char *mode = argv[4];
    int ack = strcmp(mode, "ack") == 0;
    char path[4096];
    int n = atoi(argv[2]), batch = atoi(argv[3]), commits = 0;
    snprintf(path, sizeof path, "%s/floor-%s.db", argv[1], mode);
    sqlite3 *db;
    sqlite3_stmt *ins, *data = NULL;
    must(sqlite3_open(path, &db), db);
    must(sqlite3_exec(db, pragmas, NULL, NULL, NULL), db);
    must(sqlite3_exec(db, ack ? ack_schema : *mode == 'u' ? unique_schema : log_schema, NULL,
                      NULL, NULL), db);
    if (ack) {
        must(sqlite3_prepare_v2(db, "INSERT INTO events (id, source, provider, type, "
                                    "provider_type, hostname, received_at, occurred_at) VALUES "
                                    "(?,?,?,?,?,?,?,?)", -1, &ins, NULL), db);
        must(sqlite3_prepare_v2(db, "INSERT INTO event_data (seq, event, body, facts) VALUES "
                                    "(?,?,?,?)", -1, &data, NULL), db);
    } else {
        must(sqlite3_prepare_v2(db, "INSERT INTO log (id, data) VALUES (?,?)", -1, &ins, NULL),
             db);
    }
    char payload[1114], packed[850], blob[2048], facts[120], id[40];
    memset(payload, 'x', sizeof payload - 1);
    payload[sizeof payload - 1] = '\0';
    memset(packed, 'e', sizeof packed);
    memset(blob, 'b', sizeof blob);
    memset(facts, 'f', sizeof facts);
    srandom(1);
    double c0 = cpu_seconds(), w0 = wall_seconds();
    for (int i = 0; i < n; i += batch) {
        int end = i + batch < n ? i + batch : n;
        must(sqlite3_exec(db, "BEGIN", NULL, NULL, NULL), db);
        for (int k = i; k < end; k++) {
            snprintf(id, sizeof id, "%08lx-%04lx-%04lx-%04lx-%012lx", random(),
                     random() & 0xffff, random() & 0xffff, random() & 0xffff, random());
            sqlite3_bind_text(ins, 1, id, -1, SQLITE_STATIC);
            if (!ack) {
                sqlite3_bind_blob(ins, 2, blob, sizeof blob, SQLITE_STATIC);
                must(sqlite3_step(ins), db);
                sqlite3_reset(ins);
                continue;
            }
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
            sqlite3_bind_blob(data, 4, facts, sizeof facts, SQLITE_STATIC);
            must(sqlite3_step(data), db);
            sqlite3_reset(data);
        }
        must(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), db);
        commits++;
    }
    double cpu = cpu_seconds() - c0, wall = wall_seconds() - w0;
    printf("%s %d %d %.1f %.0f\n", mode, n, batch, cpu / n * 1e6, commits / wall);
    sqlite3_finalize(ins);
    sqlite3_finalize(data);
    sqlite3_close(db);
    return 0;
}
