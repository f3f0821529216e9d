/*
 * store_sqlite.c -- the journal in a data directory: SQLite in WAL mode (DESIGN §10).
 *
 * certhook.db holds events (the summary columns, the event as packed at intake, the body),
 * deliveries, certhook.state, replay requests and the certificate inventory. The writer
 * thread owns the write connection and commits a batch at a time, synchronous=FULL (an fsync
 * of the WAL) when the batch must be durable, NORMAL when it may wait for the next one. A
 * checkpointer thread copies the WAL into the database on a connection of its own and keeps
 * the WAL bounded. Reads use a second connection (the dispatcher's, the command line's) and a
 * third for the admin listener's counts. A server holds certhook.lock for its lifetime: one
 * server per data directory.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "journal/store.h"

#define PRUNE_BATCH 1000
#define CACHE_KIB 128          /* page cache of each connection (open_db) */
#define CHECKPOINT_FRAMES 1000 /* WAL frames (pages: 4 MiB) after which the checkpointer runs */
#define WAL_KEEP (4 << 20)     /* bytes a WAL file is cut back to when it restarts */
#define BEHIND_RETRY 1.0       /* seconds between checkpoints while a reader holds one back */
#define BEHIND_WARN 30.0       /* seconds between warnings about that */
#define BEHIND_GRACE 2.0       /* seconds held back before it is worth a warning */

struct store {
    sqlite3 *db;  /* the writer's; NULL when read-only */
    sqlite3 *rdb; /* the reader's */
    sqlite3_stmt *ins, *ins_data, *fin, *del, *sset, *sdel, *sget, *rload, *rload_id, *eget,
        *eput, *ctx, *fold, *idget, *dgone, *dfin, *dunlist, *hget, *hput;
    /* deliveries that succeeded at their first attempt, for events.done (sq_delivery): the
     * event, the entries since its last settle, the handlers' ids (cleared by a rollback); the
     * newest event that has a row of deliveries (none after it: no row to look for) */
    int64_t cseq, rows_upto;
    struct buf compact;
    struct handler_id {
        char *name;
        int64_t id;
    } *hids;
    size_t nhids;
    struct ids *ids; /* the writer's: every id the journal holds (ids.c), made at open */
    sqlite3 *adb; /* the admin thread's (counts for /metrics), opened on first use */
    pthread_mutex_t amu;
    sqlite3 *cdb; /* the checkpointer's */
    pthread_t ckthread;
    int ck_started, ck_due, ck_stop; /* under mu */
    pthread_mutex_t mu;
    pthread_cond_t ckcv;             /* on the monotonic clock */
    size_t max_wal;                  /* bytes past which the WAL is truncated */
    _Atomic double behind_since;     /* time_mono() since when the WAL is not all copied; 0 */
    int durable;                     /* the writer connection's synchronous is FULL */
    int lock_fd;                     /* certhook.lock, JOURNAL_EXCLUSIVE; -1 */
    int announced;                   /* certhook.listening is this server's */
    char *path;                      /* <dir>/certhook.db */
    char *dir;                       /* the data directory */
};

/* An event's row: the summary in events (small: its state changes), the event, the body and
 * what it says of its certificates in event_data (written once), what the inventory said when
 * it came in contexts (written by the fold; journals of an earlier version have it in
 * event_data). */
#define EVENT_COLUMNS "e.seq, e.id, e.source, e.provider, e.type, e.provider_type, e.hostname, " \
                      "e.received_at, e.occurred_at, d.event, d.body, "                        \
                      "coalesce(c.context, d.context), d.facts"
#define EVENT_FROM "events e JOIN event_data d ON d.seq = e.seq LEFT JOIN contexts c ON c.seq = e.seq"

/* The inventory's columns in ENTRY_FIELDS order, and its upsert (entry_put): made once. */
static char entry_columns[512], entry_upsert[2048];

/* The schema's migrations, in order: migration i takes user_version i to i + 1. Each is a file
 * of src/journal/sql/sqlite/ (NNNN_<what>.sql), made C strings by the Makefile. */
static const char *const migrations[] = {
#include "sql_sqlite.h"
};


static const char *column(sqlite3_stmt *s, int i);

#define OPEN_DELIVERY "status <> 'done' AND status <> 'dead'"

/* The deliveries kept in events.done (0013_done_in_event.sql), as the rows they stand for: the
 * columns the event (its seq), the handler, 'done', 1 attempt (0 crashes); then what a query
 * wants of the entry (j.value: [handler id, generation, started_at in milliseconds, duration in
 * microseconds]). */
#define DONE_FROM "events e JOIN json_each(e.done) j JOIN handlers h ON h.id = j.value ->> 0"
#define DONE_ENTRY "e.seq, h.name, 'done', 1"
#define DONE_GENERATION "j.value ->> 1"
#define DONE_START "(j.value ->> 2) / 1e3"
#define DONE_DURATION "(j.value ->> 3) / 1e6"
#define OPEN_EVENT "state <> 2"

/* ---- opening ------------------------------------------------------------------------------- */

static int mkdirs(const char *dir)
{
    char path[4096];
    snprintf(path, sizeof path, "%s", dir);
    for (char *p = path + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(path, 0700) != 0 && errno != EEXIST)
            return -1;
        *p = '/';
    }
    return mkdir(path, 0700) != 0 && errno != EEXIST ? -1 : 0;
}

/* Opens a connection to the journal, with a small page cache: SQLite's default is 2 MiB per
 * connection, and certhook has four (writer, reader, admin, checkpointer); the pages it misses
 * come from the kernel's page cache, a pread each. Measured with 50 connections posting: 128 KiB
 * (CACHE_KIB) cost no throughput and kept the peak RSS 2 MiB lower. */
static int open_db(sqlite3 **db, const char *path, int flags, double busy_timeout, char *err,
                   size_t errlen)
{
    if (sqlite3_open_v2(path, db, flags | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "cannot open journal %s: %s", path,
                 *db ? sqlite3_errmsg(*db) : "out of memory");
        return -1;
    }
    sqlite3_busy_timeout(*db, (int)(busy_timeout * 1000));
    char pragma[48];
    snprintf(pragma, sizeof pragma, "PRAGMA cache_size = -%d", CACHE_KIB);
    sqlite3_exec(*db, pragma, NULL, NULL, NULL); /* a hint: without it, the default size */
    sqlite3_extended_result_codes(*db, 1);
    return 0;
}


/* Brings the schema to the newest version, in one transaction. */
static int migrate(sqlite3 *db, const char *path, char *err, size_t errlen)
{
    sqlite3_stmt *s;
    int version = 0, n = (int)(sizeof migrations / sizeof migrations[0]);
    char *msg = NULL;
    if (sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &s, NULL) == SQLITE_OK &&
        sqlite3_step(s) == SQLITE_ROW)
        version = sqlite3_column_int(s, 0);
    sqlite3_finalize(s);
    if (version > n) {
        snprintf(err, errlen, "journal %s is from a newer certhook (schema %d, this one knows %d)",
                 path, version, n);
        return -1;
    }
    if (version == n)
        return 0;
    int ok = sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, &msg) == SQLITE_OK;
    for (int i = version; ok && i < n; i++)
        ok = sqlite3_exec(db, migrations[i], NULL, NULL, &msg) == SQLITE_OK;
    if (ok) {
        char sql[64];
        snprintf(sql, sizeof sql, "PRAGMA user_version = %d; COMMIT", n);
        ok = sqlite3_exec(db, sql, NULL, NULL, &msg) == SQLITE_OK;
    }
    if (!ok) {
        snprintf(err, errlen, "cannot initialize journal %s: %s", path,
                 msg ? msg : sqlite3_errmsg(db));
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    }
    sqlite3_free(msg);
    return ok ? 0 : -1;
}

static int prepare(sqlite3 *db, const char *sql, sqlite3_stmt **s, char *err, size_t errlen)
{
    if (sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, s, NULL) == SQLITE_OK)
        return 0;
    snprintf(err, errlen, "cannot prepare journal statements: %s", sqlite3_errmsg(db));
    return -1;
}


/* One server per data directory: dir/certhook.lock, flock'ed until close, holds its PID. */
static int lock_dir(struct store *j, const char *dir, char *err, size_t errlen)
{
    char path[4096], pid[32];
    snprintf(path, sizeof path, "%s/certhook.lock", dir);
    j->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (j->lock_fd < 0) {
        snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    if (flock(j->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        if (errno != EWOULDBLOCK) {
            snprintf(err, errlen, "cannot lock %s: %s", path, strerror(errno));
            return -1;
        }
        ssize_t n = pread(j->lock_fd, pid, sizeof pid - 1, 0);
        pid[n > 0 ? n : 0] = '\0';
        pid[strcspn(pid, "\n")] = '\0';
        snprintf(err, errlen, "another certhook serve (pid %s) is using the data directory %s: "
                              "one server per data directory", pid[0] ? pid : "?", dir);
        return -1;
    }
    int n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(j->lock_fd, 0) != 0 || pwrite(j->lock_fd, pid, (size_t)n, 0) != n)
        log_msg(LOG_WARN, "cannot write the pid into %s: %s", path, strerror(errno));
    return 0;
}

static void sq_close(struct store *j);
static void forget_handlers(struct store *j);
static int load_ids(struct store *j);
static int prepare_entry_get(sqlite3 *db, sqlite3_stmt **s, char *err, size_t errlen);

/* Where the server listens (journal_announce): dir/certhook.listening, "pid N\nlisten
 * URL\nadmin URL\n", while it runs. */
static const char *listening(struct store *j, char *path, size_t n)
{
    snprintf(path, n, "%s/certhook.listening", j->dir);
    return path;
}

/* Before SQLite's first use: no statistics of its memory use (a global mutex on every
 * allocation otherwise). */
static void sqlite_setup(void)
{
    sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
    sqlite3_initialize();
    struct buf cols, set, marks;
    buf_init(&cols);
    buf_init(&set);
    buf_init(&marks);
#define COLUMN(f)                                                                              \
    buf_printf(&cols, "%s" #f, cols.n ? ", " : "");                                            \
    buf_printf(&marks, "%s?", marks.n ? ", " : "");                                            \
    if (strcmp(#f, "key") != 0)                                                                \
        buf_printf(&set, "%s" #f " = excluded." #f, set.n ? ", " : "");
    ENTRY_FIELDS(COLUMN, COLUMN, COLUMN, COLUMN, COLUMN)
#undef COLUMN
    snprintf(entry_columns, sizeof entry_columns, "%s", cols.p);
    snprintf(entry_upsert, sizeof entry_upsert,
             "INSERT INTO inventory (%s) VALUES (%s) ON CONFLICT (key) DO UPDATE SET %s", cols.p,
             marks.p, set.p);
    buf_free(&cols);
    buf_free(&set);
    buf_free(&marks);
}

static int sq_open(struct store **sp, const struct journal_options *o, char *err, size_t errlen)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    char path[4096];
    struct stat st;
    pthread_once(&once, sqlite_setup);
    struct store *j = calloc(1, sizeof *j);
    *sp = NULL;
    if (j == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    j->lock_fd = -1;
    pthread_mutex_init(&j->mu, NULL);
    pthread_mutex_init(&j->amu, NULL);
    pthread_condattr_t ca; /* timed waits follow the monotonic clock */
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&j->ckcv, &ca);
    pthread_condattr_destroy(&ca);
    j->max_wal = o->max_wal ? o->max_wal : 64 << 20;
    j->durable = 1;
    snprintf(path, sizeof path, "%s/certhook.db", o->where);
    if ((j->path = strdup(path)) == NULL || (j->dir = strdup(o->where)) == NULL) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    if (o->flags & JOURNAL_CREATE) {
        if (mkdirs(o->where) != 0) {
            snprintf(err, errlen, "cannot create data directory %s: %s", o->where,
                     strerror(errno));
            goto fail;
        }
    } else if (stat(path, &st) != 0) {
        snprintf(err, errlen, "no journal at %s (is --data right?)", path);
        goto fail;
    }
    if ((o->flags & JOURNAL_EXCLUSIVE) && lock_dir(j, o->where, err, errlen) != 0)
        goto fail;
    if (!(o->flags & JOURNAL_READONLY)) {
        if (open_db(&j->db, path, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, o->busy_timeout,
                    err, errlen) != 0)
            goto fail;
        char *msg = NULL;
        /* 16 KiB pages for a new journal (one made before keeps its size): an event's row -- its
         * packed form and its body, 2 KiB and more -- took a 4 KiB page of its own (two do not
         * fit), so every event wrote 4 KiB to the WAL and again to the database. Measured here:
         * appending 2 KiB rows in batches of 50, 17 CPU us and 4.1 KiB on disk per row with 4 KiB
         * pages, 6 us and 2.5 KiB with 16 KiB (tests/bench/journal_floor.c). */
        if (sqlite3_exec(j->db, "PRAGMA page_size = 16384; PRAGMA journal_mode=WAL; "
                                "PRAGMA synchronous=FULL;", NULL, NULL, &msg) != SQLITE_OK) {
            snprintf(err, errlen, "cannot initialize journal %s: %s", path,
                     msg ? msg : sqlite3_errmsg(j->db));
            sqlite3_free(msg);
            goto fail;
        }
        if (migrate(j->db, path, err, errlen) != 0 ||
            prepare(j->db,
                    "INSERT INTO events (id, source, provider, type, provider_type, hostname, "
                    "received_at, occurred_at) VALUES (?,?,?,?,?,?,?,?)",
                    &j->ins, err, errlen) ||
            prepare(j->db, "SELECT id FROM events WHERE seq = ?", &j->idget, err, errlen) ||
            prepare(j->db, "INSERT INTO event_data (seq, event, body, facts) VALUES (?,?,?,?)",
                    &j->ins_data, err, errlen) ||
            prepare(j->db,
                    "UPDATE events SET state = CASE WHEN EXISTS (SELECT 1 FROM deliveries WHERE "
                    "event_seq = ?1 AND " OPEN_DELIVERY ") THEN 1 ELSE 2 END "
                    "WHERE seq = ?1",
                    &j->fin, err, errlen) ||
            prepare(j->db,
                    "INSERT INTO deliveries (event_seq, handler, status, attempts, generation, "
                    "first_at, started_at, duration, next_at, last_error, traceback, crashes) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (event_seq, handler) DO UPDATE SET "
                    "status = excluded.status, attempts = excluded.attempts, "
                    "crashes = excluded.crashes, "
                    "generation = coalesce(excluded.generation, generation), "
                    "first_at = coalesce(first_at, excluded.first_at), "
                    "started_at = coalesce(excluded.started_at, started_at), "
                    "duration = coalesce(excluded.duration, duration), next_at = excluded.next_at, "
                    "last_error = " KEPT_ERROR("", "last_error") ", "
                    "traceback = " KEPT_ERROR("", "traceback"),
                    &j->del, err, errlen) ||
            prepare(j->db,
                    "INSERT INTO state (key, value, expires_at) VALUES (?,?,?) ON CONFLICT (key) "
                    "DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at",
                    &j->sset, err, errlen) ||
            prepare(j->db, "DELETE FROM state WHERE key = ?", &j->sdel, err, errlen) ||
            prepare(j->db, "SELECT value FROM state WHERE key = ? AND (expires_at IS NULL OR "
                           "expires_at > ?)", &j->sget, err, errlen) ||
            prepare_entry_get(j->db, &j->eget, err, errlen) ||
            prepare(j->db, entry_upsert, &j->eput, err, errlen) ||
            prepare(j->db, "INSERT INTO contexts (seq, context) VALUES (?, ?)", &j->ctx, err,
                    errlen) ||
            prepare(j->db, "UPDATE meta SET value = ? WHERE key = 'folded'", &j->fold, err,
                    errlen) ||
            prepare(j->db, "DELETE FROM deliveries WHERE event_seq = ? AND handler = ?",
                    &j->dgone, err, errlen) ||
            prepare(j->db,
                    "UPDATE events SET done = CASE WHEN done IS NULL THEN ?2 ELSE (SELECT "
                    "json_group_array(json(v)) FROM (SELECT value AS v FROM json_each(events.done) "
                    "WHERE value ->> 0 NOT IN (SELECT value ->> 0 FROM json_each(?2)) UNION ALL "
                    "SELECT value FROM json_each(?2))) END, state = CASE WHEN EXISTS (SELECT 1 "
                    "FROM deliveries WHERE event_seq = ?1 AND " OPEN_DELIVERY ") THEN 1 ELSE 2 "
                    "END WHERE seq = ?1",
                    &j->dfin, err, errlen) ||
            prepare(j->db,
                    "UPDATE events SET done = nullif((SELECT json_group_array(json(value)) FROM "
                    "json_each(events.done) WHERE value ->> 0 <> ?2), '[]') WHERE seq = ?1 AND "
                    "done IS NOT NULL AND EXISTS (SELECT 1 FROM json_each(events.done) WHERE "
                    "value ->> 0 = ?2)",
                    &j->dunlist, err, errlen) ||
            prepare(j->db, "SELECT id FROM handlers WHERE name = ?", &j->hget, err, errlen) ||
            prepare(j->db, "INSERT INTO handlers (name) VALUES (?)", &j->hput, err, errlen))
            goto fail;
        sqlite3_stmt *q;
        if (sqlite3_prepare_v2(j->db, "SELECT coalesce(max(event_seq), 0) FROM deliveries", -1,
                               &q, NULL) != SQLITE_OK ||
            sqlite3_step(q) != SQLITE_ROW) {
            snprintf(err, errlen, "cannot read journal %s: %s", path, sqlite3_errmsg(j->db));
            sqlite3_finalize(q);
            goto fail;
        }
        j->rows_upto = sqlite3_column_int64(q, 0);
        sqlite3_finalize(q);
        if ((o->flags & JOURNAL_EXCLUSIVE) && load_ids(j) != 0) { /* before the first request */
            snprintf(err, errlen, "cannot read the ids of journal %s: %s", path,
                     sqlite3_errmsg(j->db));
            goto fail;
        }
    }
    if (open_db(&j->rdb, path, SQLITE_OPEN_READONLY, o->busy_timeout, err, errlen) != 0 ||
        prepare(j->rdb, "SELECT " EVENT_COLUMNS " FROM " EVENT_FROM " WHERE e.seq = ?", &j->rload,
                err, errlen) != 0 ||
        prepare(j->rdb, "SELECT " EVENT_COLUMNS " FROM " EVENT_FROM " WHERE e.id = ?",
                &j->rload_id, err, errlen) != 0)
        goto fail;
    *sp = j;
    return 0;
fail:
    sq_close(j);
    return -1;
}

static void sq_close(struct store *j)
{
    char path[4096];
    if (j == NULL)
        return;
    sqlite3_stmt *stmts[] = {j->ins,  j->ins_data, j->fin,   j->del,      j->sset,
                             j->sdel, j->sget,     j->rload, j->rload_id, j->eget,
                             j->eput, j->ctx,      j->fold,  j->idget,    j->dgone,
                             j->dfin, j->dunlist,  j->hget,  j->hput};
    for (size_t i = 0; i < sizeof stmts / sizeof stmts[0]; i++)
        sqlite3_finalize(stmts[i]);
    ids_free(j->ids);
    forget_handlers(j);
    buf_free(&j->compact);
    sqlite3_close(j->db);
    sqlite3_close(j->rdb);
    sqlite3_close(j->adb);
    sqlite3_close(j->cdb);
    if (j->announced)
        unlink(listening(j, path, sizeof path));
    if (j->lock_fd >= 0)
        close(j->lock_fd); /* releases the lock */
    free(j->path);
    free(j->dir);
    pthread_mutex_destroy(&j->mu);
    pthread_mutex_destroy(&j->amu);
    pthread_cond_destroy(&j->ckcv);
    free(j);
}

/* ---- the writer ------------------------------------------------------------------------------- */

static int step_reset(sqlite3_stmt *s)
{
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return rc == SQLITE_DONE ? 0 : -1;
}

static int sq_begin(struct store *j, int durable)
{
    if (durable != j->durable) { /* WAL mode: NORMAL writes the WAL, FULL also syncs it */
        if (sqlite3_exec(j->db, durable ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL",
                         NULL, NULL, NULL) != SQLITE_OK)
            return -1;
        j->durable = durable;
    }
    return sqlite3_exec(j->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) == SQLITE_OK ? 0 : -1;
}

/* ids_find's check: the id journaled under seq is the one looked for. */
struct looked {
    struct store *j;
    const char *id;
};

static int same_id(void *cls, int64_t seq)
{
    struct looked *l = cls;
    sqlite3_stmt *s = l->j->idget;
    sqlite3_bind_int64(s, 1, seq);
    int same = sqlite3_step(s) == SQLITE_ROW && strcmp(column(s, 0), l->id) == 0;
    sqlite3_reset(s);
    return same;
}

/* The ids the journal holds, read once (the writer's first append, or a server's open). */
static int load_ids(struct store *j)
{
    sqlite3_stmt *s;
    int rc;
    if (j->ids != NULL)
        return 0;
    if ((j->ids = ids_new()) == NULL ||
        sqlite3_prepare_v2(j->db, "SELECT seq, id FROM events", -1, &s, NULL) != SQLITE_OK) {
        ids_free(j->ids);
        j->ids = NULL;
        return -1;
    }
    while ((rc = sqlite3_step(s)) == SQLITE_ROW)
        if (ids_add(j->ids, ids_hash(column(s, 1)), sqlite3_column_int64(s, 0)) != 0)
            break;
    sqlite3_finalize(s);
    if (rc != SQLITE_DONE) {
        ids_free(j->ids);
        j->ids = NULL;
        return -1;
    }
    return 0;
}

/* 1: ev is journaled now (ev->seq set); 0: its id is journaled already; -1: an error. */
static int sq_insert_event(struct store *j, struct event *ev)
{
    if (load_ids(j) != 0)
        return -1;
    uint32_t h = ids_hash(ev->id);
    struct looked l = {j, ev->id};
    if (ids_find(j->ids, h, same_id, &l) != 0)
        return 0;
    sqlite3_stmt *s = j->ins;
    sqlite3_bind_text(s, 1, ev->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, ev->source, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 3, ev->provider, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 4, ev->type, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 5, ev->provider_type, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 6, ev->hostname, -1, SQLITE_STATIC);
    sqlite3_bind_double(s, 7, ev->received_at);
    if (ev->occurred_at != 0)
        sqlite3_bind_double(s, 8, ev->occurred_at);
    int rc = step_reset(s);
    if (rc != 0)
        return -1;
    ev->seq = sqlite3_last_insert_rowid(j->db);
    if (ids_add(j->ids, h, ev->seq) != 0) /* (a batch rolled back leaves its ids: never matched) */
        return -1;
    sqlite3_bind_int64(j->ins_data, 1, ev->seq);
    sqlite3_bind_blob(j->ins_data, 2, ev->packed, (int)ev->packed_len, SQLITE_STATIC);
    sqlite3_bind_text(j->ins_data, 3, ev->body, (int)ev->body_len, SQLITE_STATIC);
    if (ev->certs != NULL)
        sqlite3_bind_blob(j->ins_data, 4, ev->certs, (int)ev->certs_len, SQLITE_STATIC);
    if (step_reset(j->ins_data) != 0)
        return -1;
    return 1;
}

static int sq_insert(struct store *j, struct journal_req *r)
{
    int rc = sq_insert_event(j, r->ev);
    if (rc < 0)
        return -1;
    r->result = rc == 1 ? JOURNAL_ACCEPTED : JOURNAL_DUPLICATE;
    return 0;
}

/* ---- the projections: the inventory's entries, the contexts, the watermark ------------------- */

static int prepare_entry_get(sqlite3 *db, sqlite3_stmt **s, char *err, size_t errlen)
{
    char sql[1024];
    snprintf(sql, sizeof sql, "SELECT %s FROM inventory WHERE key = ?", entry_columns);
    return prepare(db, sql, s, err, errlen);
}

/* The entry in the columns of the current row of s from at on (entry_columns' order). 0, or
 * -1: out of memory (e cleared). */
static int row_entry(sqlite3_stmt *s, int at, struct entry *e)
{
    int i = at, rc = 0;
#define R_S(f)                                                                                 \
    if (sqlite3_column_type(s, i) != SQLITE_NULL && (e->f = strdup(column(s, i))) == NULL)   \
        rc = -1;                                                                               \
    i++;
#define R_N(f)                                                                                 \
    e->f = sqlite3_column_type(s, i) == SQLITE_NULL ? NAN : sqlite3_column_double(s, i);       \
    i++;
#define R_I(f) e->f = sqlite3_column_int(s, i++);
    ENTRY_FIELDS(R_S, R_S, R_N, R_I, R_I)
#undef R_S
#undef R_N
#undef R_I
    if (rc != 0)
        entry_clear(e);
    return rc;
}

static int sq_entry_get(struct store *j, const char *key, struct entry *e)
{
    sqlite3_stmt *s = j->eget;
    sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC);
    int rc = sqlite3_step(s);
    int found = rc == SQLITE_ROW ? (row_entry(s, 0, e) == 0 ? 1 : -1) : rc == SQLITE_DONE ? 0 : -1;
    sqlite3_reset(s);
    return found;
}

static int sq_entry_put(struct store *j, const struct entry *e)
{
    sqlite3_stmt *s = j->eput;
    int i = 1;
#define B_S(f) sqlite3_bind_text(s, i++, e->f, -1, SQLITE_STATIC);
#define B_N(f)                                                                                 \
    if (isnan(e->f))                                                                           \
        sqlite3_bind_null(s, i++);                                                             \
    else                                                                                       \
        sqlite3_bind_double(s, i++, e->f);
#define B_B(f)                                                                                 \
    if (e->f)                                                                                  \
        sqlite3_bind_int(s, i++, 1);                                                           \
    else                                                                                       \
        sqlite3_bind_null(s, i++);
#define B_I(f) sqlite3_bind_int(s, i++, e->f);
    ENTRY_FIELDS(B_S, B_S, B_N, B_B, B_I)
#undef B_S
#undef B_N
#undef B_B
#undef B_I
    return step_reset(s);
}

static int sq_context(struct store *j, int64_t seq, const char *context)
{
    sqlite3_bind_int64(j->ctx, 1, seq);
    sqlite3_bind_text(j->ctx, 2, context, -1, SQLITE_STATIC);
    return step_reset(j->ctx);
}

static int sq_folded(struct store *j, int64_t upto)
{
    sqlite3_bind_int64(j->fold, 1, upto);
    return step_reset(j->fold);
}

/* Reads a JSON number (as certhook.state stores numbers) into *v; 0, or -1 if not one. */
static int json_number(const char *s, double *v)
{
    char *end;
    if (s == NULL)
        return -1;
    *v = strtod(s, &end);
    return end != s && *end == '\0' ? 0 : -1;
}

/* certhook.once's writes. */
static int sq_once(struct store *j, struct journal_req *r)
{
    static const char *const sql[] = {
        [JOURNAL_ONCE_CLAIM] = "INSERT INTO once (key, lease_until) VALUES (?1, ?2) ON CONFLICT "
                               "(key) DO UPDATE SET lease_until = excluded.lease_until WHERE "
                               "results IS NULL AND lease_until < ?3",
        [JOURNAL_ONCE_DONE] = "INSERT INTO once (key, results) VALUES (?1, ?4) ON CONFLICT (key) "
                              "DO UPDATE SET results = excluded.results, lease_until = NULL",
        [JOURNAL_ONCE_RELEASE] = "DELETE FROM once WHERE key = ?1 AND results IS NULL",
    };
    sqlite3_stmt *s = NULL, *q = NULL;
    int rc = -1;
    if (sqlite3_prepare_v2(j->db, sql[r->op], -1, &s, NULL) != SQLITE_OK)
        return -1;
    sqlite3_bind_text(s, 1, r->key, -1, SQLITE_STATIC);
    if (r->op == JOURNAL_ONCE_CLAIM) {
        sqlite3_bind_double(s, 2, r->expires_at);
        sqlite3_bind_double(s, 3, time_now());
    }
    if (r->op == JOURNAL_ONCE_DONE)
        sqlite3_bind_text(s, 4, r->value, (int)r->value_len, SQLITE_STATIC);
    if (sqlite3_step(s) != SQLITE_DONE)
        goto done;
    r->result = JOURNAL_ACCEPTED;
    if (r->op == JOURNAL_ONCE_CLAIM && sqlite3_changes(j->db) == 0) { /* done, or held */
        if (sqlite3_prepare_v2(j->db, "SELECT results IS NOT NULL, lease_until FROM once WHERE "
                                      "key = ?", -1, &q, NULL) != SQLITE_OK)
            goto done;
        sqlite3_bind_text(q, 1, r->key, -1, SQLITE_STATIC);
        if (sqlite3_step(q) != SQLITE_ROW)
            goto done;
        r->result = sqlite3_column_int(q, 0) ? JOURNAL_DUPLICATE : JOURNAL_REFUSED;
        r->expires_at = sqlite3_column_double(q, 1);
    }
    rc = 0;
done:
    sqlite3_finalize(q);
    sqlite3_finalize(s);
    return rc;
}

static int sq_state(struct store *j, struct journal_req *r)
{
    double now = time_now();
    if (r->op == JOURNAL_ONCE_CLAIM || r->op == JOURNAL_ONCE_DONE ||
        r->op == JOURNAL_ONCE_RELEASE)
        return sq_once(j, r);
    if (r->op == JOURNAL_STATE_DELETE) {
        sqlite3_bind_text(j->sdel, 1, r->key, -1, SQLITE_STATIC);
        if (step_reset(j->sdel) != 0)
            return -1;
        r->result = JOURNAL_ACCEPTED;
        return 0;
    }
    const char *value = r->value;
    size_t len = r->value_len;
    if (r->op == JOURNAL_STATE_INCR) {
        double cur = 0, next;
        sqlite3_bind_text(j->sget, 1, r->key, -1, SQLITE_STATIC);
        sqlite3_bind_double(j->sget, 2, now);
        int rc = sqlite3_step(j->sget);
        if (rc == SQLITE_ROW &&
            json_number((const char *)sqlite3_column_text(j->sget, 0), &cur) != 0) {
            snprintf(r->error, sizeof r->error, "the value of %.100s is not a number", r->key);
            r->result = JOURNAL_REFUSED;
        }
        sqlite3_reset(j->sget);
        if (rc != SQLITE_ROW && rc != SQLITE_DONE)
            return -1;
        if (r->result == JOURNAL_REFUSED)
            return 0;
        next = cur + r->by;
        if (next == floor(next) && fabs(next) < 9007199254740992.0)
            snprintf(r->number, sizeof r->number, "%lld", (long long)next);
        else
            snprintf(r->number, sizeof r->number, "%.17g", next);
        value = r->number;
        len = strlen(value);
        r->expires_at = 0; /* incr keeps no TTL */
    }
    sqlite3_bind_text(j->sset, 1, r->key, -1, SQLITE_STATIC);
    sqlite3_bind_text(j->sset, 2, value, (int)len, SQLITE_STATIC);
    if (r->expires_at > 0)
        sqlite3_bind_double(j->sset, 3, r->expires_at);
    if (step_reset(j->sset) != 0)
        return -1;
    r->result = JOURNAL_ACCEPTED;
    return 0;
}

/* ---- delivery states: rows in deliveries, or entries of events.done ---------------------------- */

static void forget_handlers(struct store *j)
{
    for (size_t i = 0; i < j->nhids; i++)
        free(j->hids[i].name);
    free(j->hids);
    j->hids = NULL;
    j->nhids = 0;
}

/* The id of the handler name in handlers, made when add (and it is not there yet): > 0, 0 when
 * it is not there, -1 on an error. Ids are cached until a rollback. */
static int64_t handler_id(struct store *j, const char *name, int add)
{
    for (size_t i = 0; i < j->nhids; i++)
        if (strcmp(j->hids[i].name, name) == 0)
            return j->hids[i].id;
    int64_t id = 0;
    sqlite3_bind_text(j->hget, 1, name, -1, SQLITE_STATIC);
    int rc = sqlite3_step(j->hget);
    if (rc == SQLITE_ROW)
        id = sqlite3_column_int64(j->hget, 0);
    sqlite3_reset(j->hget);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        return -1;
    if (id == 0 && add) {
        sqlite3_bind_text(j->hput, 1, name, -1, SQLITE_STATIC);
        if (step_reset(j->hput) != 0)
            return -1;
        id = sqlite3_last_insert_rowid(j->db);
    }
    if (id == 0)
        return 0;
    struct handler_id *h = realloc(j->hids, (j->nhids + 1) * sizeof *h);
    if (h == NULL)
        return -1;
    j->hids = h;
    if ((h[j->nhids].name = strdup(name)) == NULL)
        return -1;
    h[j->nhids++].id = id;
    return id;
}

/* A delivery that succeeded at its first attempt, with nothing else to say (no error, no
 * crash): kept as an entry of its event's done, not as a row. */
static int first_success(const struct delivery_result *r)
{
    return r->status == DELIVERY_DONE && r->attempts == 1 && r->crashes == 0 &&
           r->error == NULL && r->traceback == NULL && r->started_at > 0 &&
           (r->first_at <= 0 || r->first_at == r->started_at);
}

static int sq_settle(struct store *j, int64_t seq);

static int sq_delivery(struct store *j, int64_t seq, const struct delivery_result *r)
{
    if (j->compact.n > 0 && j->cseq != seq && sq_settle(j, j->cseq) != 0)
        return -1;
    if (first_success(r)) {
        /* its row goes, if it had one (it ran while a batch was written, or was replayed) */
        int64_t id = handler_id(j, r->handler, 1);
        if (id < 0)
            return -1;
        if (seq <= j->rows_upto) {
            sqlite3_bind_int64(j->dgone, 1, seq);
            sqlite3_bind_text(j->dgone, 2, r->handler, -1, SQLITE_STATIC);
            if (step_reset(j->dgone) != 0)
                return -1;
        }
        j->cseq = seq;
        /* integers: the start in milliseconds, the duration in microseconds (no %f to format) */
        return buf_printf(&j->compact, "%c[%lld,%u,%lld,%lld", j->compact.n ? ',' : '[',
                          (long long)id, r->generation, llround(r->started_at * 1e3),
                          llround(r->duration * 1e6)) == 0 &&
                       buf_adds(&j->compact, "]") == 0
                   ? 0
                   : -1;
    }
    sqlite3_stmt *s = j->del;
    sqlite3_bind_int64(s, 1, seq);
    sqlite3_bind_text(s, 2, r->handler, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 3, delivery_status_names[r->status], -1, SQLITE_STATIC);
    sqlite3_bind_int(s, 4, r->attempts);
    if (r->generation)
        sqlite3_bind_int64(s, 5, r->generation);
    if (r->first_at > 0)
        sqlite3_bind_double(s, 6, r->first_at);
    if (r->started_at > 0) {
        sqlite3_bind_double(s, 7, r->started_at);
        sqlite3_bind_double(s, 8, r->duration);
    }
    if (r->status == DELIVERY_RETRYING || r->status == DELIVERY_PENDING)
        sqlite3_bind_double(s, 9, r->next_at);
    sqlite3_bind_text(s, 10, r->error, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 11, r->traceback, -1, SQLITE_STATIC);
    sqlite3_bind_int(s, 12, r->crashes);
    if (step_reset(s) != 0)
        return -1;
    if (seq > j->rows_upto)
        j->rows_upto = seq; /* (a rollback may leave it higher than it is: a look for nothing) */
    /* a row now: an entry of done it had (a replay of it) goes */
    int64_t id = handler_id(j, r->handler, 0);
    if (id <= 0)
        return id < 0 ? -1 : 0;
    sqlite3_bind_int64(j->dunlist, 1, seq);
    sqlite3_bind_int64(j->dunlist, 2, id);
    return step_reset(j->dunlist);
}

/* The event's state from its deliveries' rows, with the entries of done since the last. */
static int sq_settle(struct store *j, int64_t seq)
{
    if (j->compact.n > 0 && j->cseq == seq) {
        int rc = buf_adds(&j->compact, "]");
        if (rc == 0) {
            sqlite3_bind_int64(j->dfin, 1, seq);
            sqlite3_bind_text(j->dfin, 2, j->compact.p, (int)j->compact.n, SQLITE_STATIC);
            rc = step_reset(j->dfin);
        }
        j->compact.n = 0;
        return rc;
    }
    sqlite3_bind_int64(j->fin, 1, seq);
    return step_reset(j->fin);
}

static int sq_replayed(struct store *j, int64_t upto)
{
    char sql[96];
    snprintf(sql, sizeof sql, "DELETE FROM replays WHERE id <= %lld", (long long)upto);
    return sqlite3_exec(j->db, sql, NULL, NULL, NULL) == SQLITE_OK ? 0 : -1;
}

static int sq_commit(struct store *j)
{
    if (j->compact.n > 0 && sq_settle(j, j->cseq) != 0)
        return -1;
    return sqlite3_exec(j->db, "COMMIT", NULL, NULL, NULL) == SQLITE_OK ? 0 : -1;
}

static void sq_rollback(struct store *j)
{
    j->compact.n = 0;
    forget_handlers(j); /* those it added are gone */
    if (sqlite3_get_autocommit(j->db) == 0)
        sqlite3_exec(j->db, "ROLLBACK", NULL, NULL, NULL);
}

static const char *sq_error(struct store *j)
{
    return sqlite3_errmsg(j->db);
}

/* Deletes finished events (and their deliveries) received before the retention, the replays
 * asked before it (replay_log: by age, README "journal.retention") and expired state, a chunk
 * per transaction. seq follows received_at, so the old events come first. */
/* The events a prune deletes, to leave the ids (sq_prune). */
struct gone {
    struct {
        uint32_t h;
        int64_t seq;
    } *p;
    size_t n, cap;
};

static int note_gone(void *cls, int ncol, char **vals, char **names)
{
    struct gone *g = cls;
    (void)ncol, (void)names;
    if (g->n == g->cap) {
        size_t cap = g->cap ? 2 * g->cap : 256;
        void *p = realloc(g->p, cap * sizeof *g->p);
        if (p == NULL)
            return 1; /* the prune is abandoned */
        g->p = p;
        g->cap = cap;
    }
    g->p[g->n].seq = strtoll(vals[0], NULL, 10);
    g->p[g->n++].h = ids_hash(vals[1] ? vals[1] : "");
    return 0;
}

static void sq_prune(struct store *j, double retention)
{
    double now = time_now();
    sqlite3_stmt *s;
    int64_t cutoff = 0;
    int n = 0, chunk = 0;
    if (sqlite3_prepare_v2(j->db, "SELECT coalesce((SELECT seq FROM events WHERE received_at >= ? "
                                  "ORDER BY seq LIMIT 1), (SELECT max(seq) + 1 FROM events), 0)",
                           -1, &s, NULL) == SQLITE_OK) {
        sqlite3_bind_double(s, 1, now - retention);
        if (sqlite3_step(s) == SQLITE_ROW)
            cutoff = sqlite3_column_int64(s, 0);
    }
    sqlite3_finalize(s);
    do {
        char pick[320], drop[480];
        snprintf(pick, sizeof pick,
                 "BEGIN IMMEDIATE; CREATE TEMP TABLE IF NOT EXISTS doomed (seq INTEGER PRIMARY KEY);"
                 "DELETE FROM doomed; INSERT INTO doomed SELECT seq FROM events WHERE seq < %lld "
                 "AND state = 2 ORDER BY seq LIMIT %d",
                 (long long)cutoff, PRUNE_BATCH);
        snprintf(drop, sizeof drop,
                 "DELETE FROM deliveries WHERE event_seq IN (SELECT seq FROM doomed);"
                 "DELETE FROM event_data WHERE seq IN (SELECT seq FROM doomed);"
                 "DELETE FROM contexts WHERE seq IN (SELECT seq FROM doomed);"
                 "DELETE FROM events WHERE seq IN (SELECT seq FROM doomed);"
                 "DELETE FROM replay_log WHERE requested_at < %.6f;"
                 "DELETE FROM state WHERE expires_at < %.6f; COMMIT",
                 now - retention, now);
        struct gone gone = {0};
        if (sqlite3_exec(j->db, pick, NULL, NULL, NULL) != SQLITE_OK ||
            (chunk = sqlite3_changes(j->db),
             j->ids != NULL && sqlite3_exec(j->db, "SELECT e.seq, e.id FROM doomed d JOIN events "
                                                   "e ON e.seq = d.seq", note_gone, &gone,
                                            NULL) != SQLITE_OK) ||
            sqlite3_exec(j->db, drop, NULL, NULL, NULL) != SQLITE_OK) {
            log_msg(LOG_WARN, "journal pruning failed: %s", sqlite3_errmsg(j->db));
            if (sqlite3_get_autocommit(j->db) == 0)
                sqlite3_exec(j->db, "ROLLBACK", NULL, NULL, NULL);
            free(gone.p);
            return;
        }
        for (size_t i = 0; i < gone.n; i++) /* their ids are new again */
            ids_remove(j->ids, gone.p[i].h, gone.p[i].seq);
        free(gone.p);
        n += chunk;
    } while (chunk == PRUNE_BATCH);
    if (n > 0)
        log_msg(LOG_INFO, "pruned %d finished events older than the retention", n);
}

/* ---- the checkpointer ------------------------------------------------------------------------- */

/* After each commit of the writer: past CHECKPOINT_FRAMES, wake the checkpointer. */
static int wal_grew(void *arg, sqlite3 *db, const char *name, int frames)
{
    struct store *j = arg;
    (void)db, (void)name;
    if (frames >= CHECKPOINT_FRAMES) {
        pthread_mutex_lock(&j->mu);
        j->ck_due = 1;
        pthread_cond_signal(&j->ckcv);
        pthread_mutex_unlock(&j->mu);
    }
    return SQLITE_OK;
}

static double wal_bytes(const struct store *j)
{
    char path[4200];
    struct stat st;
    snprintf(path, sizeof path, "%s-wal", j->path);
    return stat(path, &st) == 0 ? (double)st.st_size : 0;
}

/* One round of the checkpointer: copy what it can; past max_wal, copy all of it and cut the
 * file back (TRUNCATE waits, up to its busy timeout, for the writer's batch and for readers).
 * Returns 1 if frames remain that a reader keeps from being copied. */
static int checkpoint(struct store *j, double *warned)
{
    int log = 0, done = 0;
    int rc = sqlite3_wal_checkpoint_v2(j->cdb, "main", SQLITE_CHECKPOINT_PASSIVE, &log, &done);
    if ((rc != SQLITE_OK && rc != SQLITE_BUSY) || log < 0) {
        log_msg(LOG_WARN, "journal checkpoint failed: %s",
                log < 0 ? "not in WAL mode" : sqlite3_errmsg(j->cdb));
        return 0;
    }
    /* All of it copied: no reader holds frames back, so cutting the WAL back waits only for the
     * writer's batch and our short reads. Frames held back: TRUNCATE would hold the writer up
     * while it waits on that reader -- wait for the reader to end instead. */
    double size = wal_bytes(j);
    if (size > (double)j->max_wal && done == log) {
        rc = sqlite3_wal_checkpoint_v2(j->cdb, "main", SQLITE_CHECKPOINT_TRUNCATE, &log, &done);
        size = wal_bytes(j);
    }
    int behind = done < log || size > (double)j->max_wal;
    double now = time_mono(), since = atomic_load(&j->behind_since);
    if (!behind) {
        if (since > 0 && *warned > 0)
            log_msg(LOG_INFO, "the journal's WAL is checkpointed again (%.1f MiB)", size / 1048576);
        atomic_store(&j->behind_since, 0.0);
        *warned = 0;
        return 0;
    }
    if (since == 0)
        atomic_store(&j->behind_since, since = now);
    if (size > (double)j->max_wal && now - since >= BEHIND_GRACE && now - *warned >= BEHIND_WARN) {
        struct log_line l;
        log_begin(&l, LOG_WARN, "a reader keeps the journal's WAL from being checkpointed: it "
                                "grows until the reader ends (a long read, an open sqlite3 "
                                "shell, a .backup of a busy journal?)");
        log_num(&l, "wal_mib", round(size / 104857.6) / 10);
        log_num(&l, "max_wal_mib", round((double)j->max_wal / 104857.6) / 10);
        log_num(&l, "behind_seconds", round(now - since));
        log_end(&l);
        *warned = now;
    }
    return 1;
}

/* Copies the WAL back into the database on its own connection and thread, so the writer
 * never stops to do it (and its fsyncs) between two commits: after commits that left
 * CHECKPOINT_FRAMES in the WAL, and every BEHIND_RETRY while a reader holds frames back. The
 * writer restarts the WAL once all of it is copied, cutting the file back to WAL_KEEP. */
static void *checkpointer_main(void *arg)
{
    struct store *j = arg;
    int behind = 0;
    double warned = 0;
    pthread_mutex_lock(&j->mu);
    for (;;) {
        while (!j->ck_due && !j->ck_stop) {
            if (!behind) {
                pthread_cond_wait(&j->ckcv, &j->mu);
                continue;
            }
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            ts.tv_sec += (time_t)BEHIND_RETRY;
            if (pthread_cond_timedwait(&j->ckcv, &j->mu, &ts) != 0)
                break; /* time to look again */
        }
        if (j->ck_stop)
            break;
        j->ck_due = 0;
        pthread_mutex_unlock(&j->mu);
        behind = checkpoint(j, &warned);
        pthread_mutex_lock(&j->mu);
    }
    pthread_mutex_unlock(&j->mu);
    return NULL;
}

static int sq_writer_start(struct store *j)
{
    char err[300];
    /* The checkpointer's connection must have read the database once: before that it does not
     * know the database is in WAL mode, and a checkpoint is a silent no-op (log -1). Its busy
     * timeout bounds how long a TRUNCATE checkpoint holds the writer back while it waits for a
     * reader: 0.2 s, once a second, only while a reader keeps the WAL past max_wal. */
    if (open_db(&j->cdb, j->path, SQLITE_OPEN_READWRITE, 0.2, err, sizeof err) == 0 &&
        sqlite3_exec(j->cdb, "PRAGMA journal_mode=WAL", NULL, NULL, NULL) == SQLITE_OK &&
        pthread_create(&j->ckthread, NULL, checkpointer_main, j) == 0) {
        j->ck_started = 1;
        pthread_setname_np(j->ckthread, "wal-checkpoint");
        sqlite3_wal_autocheckpoint(j->db, 0);
        sqlite3_wal_hook(j->db, wal_grew, j);
        char pragma[64];
        snprintf(pragma, sizeof pragma, "PRAGMA journal_size_limit = %d", WAL_KEEP);
        sqlite3_exec(j->db, pragma, NULL, NULL, NULL);
    } else {
        log_msg(LOG_WARN, "no checkpointer thread: the writer checkpoints itself");
    }
    return 0;
}

static void sq_writer_stop(struct store *j)
{
    if (!j->ck_started)
        return;
    pthread_mutex_lock(&j->mu);
    j->ck_stop = 1;
    pthread_cond_signal(&j->ckcv);
    pthread_mutex_unlock(&j->mu);
    pthread_join(j->ckthread, NULL);
    j->ck_started = 0;
    sqlite3_wal_hook(j->db, NULL, NULL);
    sqlite3_wal_autocheckpoint(j->db, 1000); /* the last close checkpoints and removes it */
}

/* ---- reads (the reader's connection) ---------------------------------------------------------- */

static const char *column(sqlite3_stmt *s, int i)
{
    return (const char *)sqlite3_column_text(s, i);
}

static void read_failed(struct store *j, const char *what)
{
    log_msg(LOG_ERROR, "journal read failed (%s): %s", what, sqlite3_errmsg(j->rdb));
}

static int64_t sq_max_seq(struct store *j)
{
    sqlite3_stmt *s;
    int64_t seq = 0;
    if (sqlite3_prepare_v2(j->rdb, "SELECT coalesce(max(seq), 0) FROM events", -1, &s, NULL) ==
            SQLITE_OK &&
        sqlite3_step(s) == SQLITE_ROW)
        seq = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    return seq;
}

/* The event of the current row of a statement that selects EVENT_COLUMNS. */
static struct event *row_event(sqlite3_stmt *s)
{
    struct event ev = {
        .seq = sqlite3_column_int64(s, 0), .id = column(s, 1), .source = column(s, 2),
        .provider = column(s, 3), .type = column(s, 4), .provider_type = column(s, 5),
        .hostname = column(s, 6), .received_at = sqlite3_column_double(s, 7),
        .occurred_at = sqlite3_column_double(s, 8),
        .packed = sqlite3_column_blob(s, 9), .packed_len = (size_t)sqlite3_column_bytes(s, 9),
        .body = column(s, 10), .body_len = (size_t)sqlite3_column_bytes(s, 10),
        .context = (char *)column(s, 11), .certs = sqlite3_column_blob(s, 12),
        .certs_len = (size_t)sqlite3_column_bytes(s, 12)};
    return event_new(&ev);
}

static int sq_unfolded(struct store *j, void (*fn)(void *cls, struct event *ev), void *cls)
{
    sqlite3_stmt *s;
    int rc;
    if (sqlite3_prepare_v2(j->db,
                           "SELECT " EVENT_COLUMNS " FROM " EVENT_FROM " WHERE e.seq > (SELECT "
                           "value FROM meta WHERE key = 'folded') ORDER BY e.seq",
                           -1, &s, NULL) != SQLITE_OK) {
        read_failed(j, "events not yet folded");
        return -1;
    }
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        struct event *ev = row_event(s);
        if (ev == NULL)
            break;
        free(ev->context); /* folded again */
        ev->context = NULL;
        fn(cls, ev);
    }
    sqlite3_finalize(s);
    return rc == SQLITE_DONE ? 0 : -1;
}

static int sq_scan_events(struct store *j, int state, int64_t after, int64_t upto, int limit,
                          void (*fn)(void *cls, struct event *ev), void *cls)
{
    sqlite3_stmt *s;
    int n = 0, rc;
    if (sqlite3_prepare_v2(j->rdb,
                           "SELECT " EVENT_COLUMNS " FROM " EVENT_FROM " WHERE e." OPEN_EVENT
                           " AND e.state = ? AND e.seq > ? AND e.seq <= ? ORDER BY e.seq LIMIT ?",
                           -1, &s, NULL) != SQLITE_OK) {
        read_failed(j, "events");
        return -1;
    }
    sqlite3_bind_int(s, 1, state);
    sqlite3_bind_int64(s, 2, after);
    sqlite3_bind_int64(s, 3, upto);
    sqlite3_bind_int(s, 4, limit);
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        struct event *ev = row_event(s);
        if (ev == NULL)
            break;
        fn(cls, ev);
        n++;
    }
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
        read_failed(j, "events");
        n = -1;
    }
    sqlite3_finalize(s);
    return n;
}

static struct event *sq_load(struct store *j, int64_t seq, const char *id)
{
    sqlite3_stmt *s = id ? j->rload_id : j->rload;
    struct event *ev = NULL;
    if (id)
        sqlite3_bind_text(s, 1, id, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_int64(s, 1, seq);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW)
        ev = row_event(s);
    else if (rc != SQLITE_DONE)
        read_failed(j, "event");
    sqlite3_reset(s);
    return ev;
}

static int sq_scan_deliveries(struct store *j, const char *status, int64_t seq,
                              void (*fn)(void *cls, const struct journal_delivery *row), void *cls)
{
    sqlite3_stmt *s;
    int n = 0, rc;
    if (sqlite3_prepare_v2(j->rdb,
                           /* those done: the rows, and the entries of events.done (of one
                            * event: found by its seq, not by a scan of every event) */
                           status && strcmp(status, "done") == 0 && seq > 0
                               ? "SELECT event_seq, handler, status, attempts, crashes, next_at, "
                                 "first_at FROM deliveries WHERE status = ?1 AND event_seq = ?2 "
                                 "UNION ALL SELECT " DONE_ENTRY ", 0, NULL, " DONE_START " FROM "
                                 DONE_FROM " WHERE e.seq = ?2"
                           : status && strcmp(status, "done") == 0
                               ? "SELECT event_seq, handler, status, attempts, crashes, next_at, "
                                 "first_at FROM deliveries WHERE status = ?1 UNION ALL SELECT "
                                 DONE_ENTRY ", 0, NULL, " DONE_START " FROM " DONE_FROM
                                 " WHERE e.done IS NOT NULL AND ?2 = 0"
                           : status ? "SELECT event_seq, handler, status, attempts, crashes, next_at, "
                                    "first_at FROM deliveries WHERE status = ?1 AND (?2 = 0 OR "
                                    "event_seq = ?2)"
                                  : "SELECT event_seq, handler, status, attempts, crashes, next_at, "
                                    "first_at FROM deliveries WHERE " OPEN_DELIVERY " AND (?2 = 0 "
                                    "OR event_seq = ?2)",
                           -1, &s, NULL) != SQLITE_OK) {
        read_failed(j, "deliveries");
        return -1;
    }
    if (status)
        sqlite3_bind_text(s, 1, status, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, seq);
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        struct journal_delivery row = {
            .seq = sqlite3_column_int64(s, 0), .handler = column(s, 1),
            .status = DELIVERY_PENDING, .attempts = sqlite3_column_int(s, 3),
            .crashes = sqlite3_column_int(s, 4), .next_at = sqlite3_column_double(s, 5),
            .first_at = sqlite3_column_double(s, 6)};
        for (int i = 0; i < 5; i++)
            if (column(s, 2) && strcmp(column(s, 2), delivery_status_names[i]) == 0)
                row.status = (enum delivery_status)i;
        fn(cls, &row);
        n++;
    }
    if (rc != SQLITE_DONE)
        read_failed(j, "deliveries");
    sqlite3_finalize(s);
    return rc == SQLITE_DONE ? n : -1;
}

static int sq_scan_replays(struct store *j, int64_t after,
                           void (*fn)(void *cls, const struct journal_replay *r), void *cls)
{
    sqlite3_stmt *s;
    int n = 0, rc;
    if (sqlite3_prepare_v2(j->rdb, "SELECT id, event_id, handler, dead FROM replays WHERE id > ? "
                                   "ORDER BY id", -1, &s, NULL) != SQLITE_OK) {
        read_failed(j, "replays");
        return -1;
    }
    sqlite3_bind_int64(s, 1, after);
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        struct journal_replay r = {sqlite3_column_int64(s, 0), column(s, 1), column(s, 2),
                                   sqlite3_column_int(s, 3)};
        fn(cls, &r);
        n++;
    }
    sqlite3_finalize(s);
    return rc == SQLITE_DONE ? n : -1;
}

/* The text of the first column of the row sql selects (?1: key, ?2: now) into *out,
 * malloc'd; NULL when there is none. 0, or -1 with err. */
static int read_text(struct store *j, const char *sql, const char *key, char **out, size_t *len,
                     char *err, size_t errlen)
{
    sqlite3_stmt *s;
    *out = NULL;
    if (sqlite3_prepare_v2(j->rdb, sql, -1, &s, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "%s", sqlite3_errmsg(j->rdb));
        return -1;
    }
    sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC);
    if (sqlite3_bind_parameter_count(s) >= 2)
        sqlite3_bind_double(s, 2, time_now());
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        *len = (size_t)sqlite3_column_bytes(s, 0);
        if ((*out = malloc(*len + 1)) != NULL)
            memcpy(*out, sqlite3_column_text(s, 0), *len + 1);
        else
            snprintf(err, errlen, "out of memory"), rc = SQLITE_NOMEM;
    } else if (rc != SQLITE_DONE) {
        snprintf(err, errlen, "%s", sqlite3_errmsg(j->rdb));
    }
    sqlite3_finalize(s);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : -1;
}

static int sq_state_get(struct store *j, const char *key, char **out, size_t *len, char *err,
                        size_t errlen)
{
    return read_text(j, "SELECT value FROM state WHERE key = ?1 AND (expires_at IS NULL OR "
                        "expires_at > ?2)", key, out, len, err, errlen);
}

static int sq_once_get(struct store *j, const char *key, char **out, size_t *len, char *err,
                       size_t errlen)
{
    return read_text(j, "SELECT results FROM once WHERE key = ?1 AND results IS NOT NULL", key,
                     out, len, err, errlen);
}

/* Hands fn each entry of the rows of s (entry_columns), as JSON. SQLITE_DONE, or an error. */
static int each_entry(sqlite3_stmt *s, void (*fn)(void *cls, const char *json), void *cls)
{
    struct buf json;
    int rc;
    buf_init(&json);
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        struct entry e;
        entry_init(&e);
        json.n = 0;
        if (row_entry(s, 0, &e) != 0 || entry_json(&e, &json) != 0) {
            entry_clear(&e);
            rc = SQLITE_NOMEM;
            break;
        }
        entry_clear(&e);
        fn(cls, json.p);
    }
    buf_free(&json);
    return rc;
}

static int sq_certs(struct store *j, const struct journal_certs_query *q,
                    void (*fn)(void *cls, const char *json), void *cls, char *err, size_t errlen)
{
    sqlite3_stmt *s;
    char sql[2048];
    snprintf(sql, sizeof sql, "SELECT %s FROM inventory WHERE %s", entry_columns,
             q->find ? "key = ?1 OR certificate_id = ?1 OR hostname = ?1 ORDER BY key = ?1 DESC, "
                       "certificate_id IS ?1 DESC, updated_at DESC LIMIT 1"
                     : "CASE WHEN ?2 IS NULL THEN status IS NOT 'deleted' AND state IS NOT "
                       "'deleted' ELSE lower(status) = lower(?2) OR state = lower(?2) END AND (?5 "
                       "IS NULL OR state = ?5) AND (?6 IS NULL OR provider = ?6) AND (?3 IS NULL OR expires_at < ?3) ORDER BY "
                       "expires_at IS NULL, expires_at, hostname, key LIMIT ?4");
    if (sqlite3_prepare_v2(j->rdb, sql, -1, &s, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "%s", sqlite3_errmsg(j->rdb));
        return -1;
    }
    sqlite3_bind_text(s, 1, q->find, -1, SQLITE_STATIC);
    if (!q->find) {
        sqlite3_bind_text(s, 2, q->status, -1, SQLITE_STATIC);
        if (q->expiring_before > 0)
            sqlite3_bind_double(s, 3, q->expiring_before);
        sqlite3_bind_int(s, 4, q->limit > 0 ? q->limit : -1);
        sqlite3_bind_text(s, 5, q->state, -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 6, q->provider, -1, SQLITE_STATIC);
    }
    int rc = each_entry(s, fn, cls);
    if (rc != SQLITE_DONE)
        snprintf(err, errlen, "%s", sqlite3_errmsg(j->rdb));
    sqlite3_finalize(s);
    return rc == SQLITE_DONE ? 0 : -1;
}

static int sq_state_keys(struct store *j, const char *prefix,
                         void (*fn)(void *, const char *), void *cls, char *err, size_t errlen)
{
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(j->rdb, "SELECT key FROM state WHERE substr(key, 1, length(?1)) = ?1 "
                                   "AND (expires_at IS NULL OR expires_at > ?2) ORDER BY key",
                           -1, &s, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "%s", sqlite3_errmsg(j->rdb));
        return -1;
    }
    sqlite3_bind_text(s, 1, prefix, -1, SQLITE_STATIC);
    sqlite3_bind_double(s, 2, time_now());
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW)
        fn(cls, column(s, 0));
    if (rc != SQLITE_DONE)
        snprintf(err, errlen, "%s", sqlite3_errmsg(j->rdb));
    sqlite3_finalize(s);
    return rc == SQLITE_DONE ? 0 : -1;
}

/* ---- the command line's view --------------------------------------------------------------- */

static int sq_list(struct store *j, const struct journal_filter *f,
                   void (*fn)(void *cls, const struct journal_row *row), void *cls, char *err,
                   size_t errlen)
{
    sqlite3_stmt *s;
    int rc;
    /* the newest events that have a delivery in the status (when asked) and match the type */
    const char *sql =
        "WITH picked AS (SELECT seq FROM events e WHERE (?1 IS NULL OR type GLOB ?1 OR "
        "provider_type GLOB ?1) AND (?2 IS NULL OR EXISTS (SELECT 1 FROM deliveries d WHERE "
        "d.event_seq = e.seq AND d.status = ?2) OR (?2 = 'done' AND e.done IS NOT NULL)) AND "
        "(?4 IS NULL OR id = ?4) AND (?5 IS NULL OR provider = ?5) AND (?6 = 0 OR seq < ?6) "
        "AND (?7 = 0 OR received_at >= ?7) AND (?8 = 0 OR received_at < ?8) "
        "ORDER BY seq DESC LIMIT ?3), "
        "d AS (SELECT event_seq, handler, status, attempts, last_error, next_at, started_at, "
        "generation, traceback FROM deliveries WHERE event_seq IN (SELECT seq FROM picked) "
        "UNION ALL SELECT " DONE_ENTRY ", NULL, NULL, " DONE_START ", " DONE_GENERATION ", NULL "
        "FROM picked p JOIN " DONE_FROM " WHERE e.seq = p.seq) "
        "SELECT e.seq, e.id, e.source, e.type, e.provider_type, e.hostname, e.received_at, "
        "e.state, d.handler, d.status, d.attempts, d.last_error, d.next_at, d.started_at, "
        "d.generation, e.provider, d.traceback FROM picked JOIN events e ON e.seq = picked.seq "
        "LEFT JOIN d ON d.event_seq = e.seq ORDER BY e.seq DESC, d.handler";
    if (sqlite3_prepare_v2(j->rdb, sql, -1, &s, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "%s", sqlite3_errmsg(j->rdb));
        return -1;
    }
    sqlite3_bind_text(s, 1, f->type, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, f->status, -1, SQLITE_STATIC);
    sqlite3_bind_int(s, 3, f->limit);
    sqlite3_bind_text(s, 4, f->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 5, f->provider, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 6, f->before);
    sqlite3_bind_double(s, 7, f->since);
    sqlite3_bind_double(s, 8, f->until);
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        struct journal_row r = {
            .seq = sqlite3_column_int64(s, 0), .id = column(s, 1), .source = column(s, 2),
            .type = column(s, 3), .provider_type = column(s, 4), .hostname = column(s, 5),
            .received_at = sqlite3_column_double(s, 6), .state = sqlite3_column_int(s, 7),
            .handler = column(s, 8), .status = column(s, 9), .attempts = sqlite3_column_int(s, 10),
            .error = column(s, 11), .next_at = sqlite3_column_double(s, 12),
            .started_at = sqlite3_column_double(s, 13), .generation = sqlite3_column_int(s, 14),
            .provider = column(s, 15), .traceback = column(s, 16),
        };
        fn(cls, &r);
    }
    if (rc != SQLITE_DONE)
        snprintf(err, errlen, "%s", sqlite3_errmsg(j->rdb));
    sqlite3_finalize(s);
    return rc == SQLITE_DONE ? 0 : -1;
}

static int sq_request_replay(struct store *j, const char *event_id, const char *handler,
                             const char *who, int *count, char *err, size_t errlen)
{
    sqlite3_stmt *s = NULL;
    int rc = -1;
    *count = 0;
    if (sqlite3_exec(j->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        goto fail;
    if (sqlite3_prepare_v2(j->db,
                           event_id ? "SELECT e.seq, (SELECT count(*) FROM deliveries WHERE "
                                      "event_seq = e.seq AND CASE WHEN ?2 IS NULL THEN status = "
                                      "'dead' ELSE handler = ?2 END) + (SELECT count(*) FROM "
                                      "json_each(e.done) j JOIN handlers h ON h.id = j.value ->> "
                                      "0 WHERE h.name = ?2) FROM events e WHERE e.id = ?1"
                                    : "SELECT 0, count(*) FROM deliveries WHERE status = 'dead'",
                           -1, &s, NULL) != SQLITE_OK)
        goto fail;
    if (event_id) {
        sqlite3_bind_text(s, 1, event_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 2, handler, -1, SQLITE_STATIC);
    }
    int step = sqlite3_step(s);
    if (step == SQLITE_ROW)
        *count = sqlite3_column_int(s, 1);
    if (step == SQLITE_DONE || (handler && *count == 0)) {
        if (step == SQLITE_DONE)
            snprintf(err, errlen, "no event with id %s in the journal", event_id);
        else
            snprintf(err, errlen, "event %s has no delivery to %s", event_id, handler);
        sqlite3_finalize(s);
        sqlite3_exec(j->db, "ROLLBACK", NULL, NULL, NULL);
        return -1;
    }
    if (step != SQLITE_ROW)
        goto fail;
    sqlite3_finalize(s);
    s = NULL;
    /* the request (the server's queue: it goes once handled), and the record of it, kept */
    double now = time_now();
    for (int i = 0; i < 2; i++) {
        if (sqlite3_prepare_v2(j->db, i == 0 ? "INSERT INTO replays (event_id, handler, dead, "
                                               "requested_at) VALUES (?1,?2,?3,?4)"
                                             : "INSERT INTO replay_log (event_id, handler, dead, "
                                               "requested_at, requested_by) VALUES (?1,?2,?3,?4,?5)",
                               -1, &s, NULL) != SQLITE_OK)
            goto fail;
        sqlite3_bind_text(s, 1, event_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 2, event_id ? handler : NULL, -1, SQLITE_STATIC);
        sqlite3_bind_int(s, 3, event_id == NULL);
        sqlite3_bind_double(s, 4, now);
        if (i == 1)
            sqlite3_bind_text(s, 5, who, -1, SQLITE_STATIC);
        if (sqlite3_step(s) != SQLITE_DONE)
            goto fail;
        sqlite3_finalize(s);
        s = NULL;
    }
    if (sqlite3_exec(j->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        goto fail;
    rc = 0;
    goto done;
fail:
    snprintf(err, errlen, "cannot write to the journal: %s", sqlite3_errmsg(j->db));
    sqlite3_exec(j->db, "ROLLBACK", NULL, NULL, NULL);
done:
    sqlite3_finalize(s);
    return rc;
}

static int sq_replay_log(struct store *j, const char *event_id, int limit,
                         void (*fn)(void *cls, const struct journal_replay_record *r), void *cls,
                         char *err, size_t errlen)
{
    sqlite3_stmt *s;
    int rc;
    if (sqlite3_prepare_v2(j->rdb, "SELECT event_id, handler, dead, requested_at, requested_by "
                                   "FROM replay_log WHERE ?1 IS NULL OR event_id = ?1 ORDER BY "
                                   "id DESC LIMIT ?2", -1, &s, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "%s", sqlite3_errmsg(j->rdb));
        return -1;
    }
    sqlite3_bind_text(s, 1, event_id, -1, SQLITE_STATIC);
    sqlite3_bind_int(s, 2, limit);
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        struct journal_replay_record r = {column(s, 0), column(s, 1), column(s, 4),
                                          sqlite3_column_int(s, 2), sqlite3_column_double(s, 3)};
        fn(cls, &r);
    }
    if (rc != SQLITE_DONE)
        snprintf(err, errlen, "%s", sqlite3_errmsg(j->rdb));
    sqlite3_finalize(s);
    return rc == SQLITE_DONE ? 0 : -1;
}

/* ---- for /metrics, the inventory, upgrades ----------------------------------------------------- */

/* Deliveries by status, on the admin thread's connection. */
static int count_deliveries(struct store *j, double counts[5])
{
    char err[300];
    sqlite3_stmt *s = NULL;
    int rc = -1;
    memset(counts, 0, 5 * sizeof counts[0]);
    pthread_mutex_lock(&j->amu);
    if (j->adb == NULL && open_db(&j->adb, j->path, SQLITE_OPEN_READONLY, 1, err, sizeof err) != 0)
        goto done;
    if (sqlite3_prepare_v2(j->adb, "SELECT status, count(*) FROM deliveries GROUP BY status", -1,
                           &s, NULL) != SQLITE_OK)
        goto done;
    while (sqlite3_step(s) == SQLITE_ROW) {
        const char *status = (const char *)sqlite3_column_text(s, 0);
        for (int i = 0; i < 5; i++)
            if (status && strcmp(status, delivery_status_names[i]) == 0)
                counts[i] = (double)sqlite3_column_int64(s, 1);
    }
    sqlite3_finalize(s);
    s = NULL;
    if (sqlite3_prepare_v2(j->adb, "SELECT coalesce(sum(json_array_length(done)), 0) FROM events "
                                   "WHERE done IS NOT NULL", -1, &s, NULL) != SQLITE_OK ||
        sqlite3_step(s) != SQLITE_ROW)
        goto done;
    counts[DELIVERY_DONE] += (double)sqlite3_column_int64(s, 0);
    rc = 0;
done:
    sqlite3_finalize(s);
    pthread_mutex_unlock(&j->amu);
    return rc;
}


static void sq_status(struct store *j, struct journal_status *st)
{
    double behind = atomic_load(&j->behind_since);
    if (count_deliveries(j, st->deliveries) != 0)
        for (int i = 0; i < 5; i++)
            st->deliveries[i] = -1;
    st->wal_bytes = wal_bytes(j);
    st->behind = behind > 0 ? time_mono() - behind : 0;
}

static int sq_load_inventory(struct store *j, size_t cap)
{
    sqlite3_stmt *s;
    int n = 0;
    metrics_inventory_cap(cap);
    if (sqlite3_prepare_v2(j->rdb, "SELECT key, hostname, provider, status, state, last_type, "
                                   "expires_at, updated_at FROM inventory WHERE status IS NOT "
                                   "'deleted' ORDER BY updated_at DESC LIMIT ?",
                           -1, &s, NULL) != SQLITE_OK)
        return -1;
    sqlite3_bind_int64(s, 1, (sqlite3_int64)cap);
    while (sqlite3_step(s) == SQLITE_ROW) {
        metrics_certificate(column(s, 0), column(s, 1) ? column(s, 1) : "", column(s, 2),
                            column(s, 3), column(s, 4), column(s, 5),
                            sqlite3_column_double(s, 6), sqlite3_column_double(s, 7));
        n++;
    }
    sqlite3_finalize(s);
    return n;
}

static int sq_upgrade(struct store *j,
                      int (*fn)(void *cls, const struct event *ev, struct buf *packed, char *err,
                                size_t errlen),
                      void *cls, char *err, size_t errlen)
{
    sqlite3_stmt *s = NULL, *u = NULL;
    struct buf packed;
    int n = 0, rc;
    buf_init(&packed);
    if (j->db == NULL)
        return 0;
    if (sqlite3_exec(j->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(j->db, "SELECT " EVENT_COLUMNS " FROM " EVENT_FROM
                                  " WHERE d.event IS NULL", -1, &s, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(j->db, "UPDATE event_data SET event = ? WHERE seq = ?", -1, &u, NULL) !=
            SQLITE_OK) {
        snprintf(err, errlen, "cannot upgrade the journal: %s", sqlite3_errmsg(j->db));
        goto fail;
    }
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        struct event *ev = row_event(s);
        packed.n = 0;
        int ok = ev != NULL && fn(cls, ev, &packed, err, errlen) == 0;
        int64_t seq = ev ? ev->seq : 0;
        event_free(ev);
        if (!ok)
            goto fail;
        sqlite3_bind_blob(u, 1, packed.p, (int)packed.n, SQLITE_STATIC);
        sqlite3_bind_int64(u, 2, seq);
        if (step_reset(u) != 0) {
            snprintf(err, errlen, "cannot upgrade the journal: %s", sqlite3_errmsg(j->db));
            goto fail;
        }
        n++;
    }
    if (rc != SQLITE_DONE || sqlite3_exec(j->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "cannot upgrade the journal: %s", sqlite3_errmsg(j->db));
        goto fail;
    }
    sqlite3_finalize(s);
    sqlite3_finalize(u);
    buf_free(&packed);
    return n;
fail:
    sqlite3_finalize(s);
    sqlite3_finalize(u);
    buf_free(&packed);
    sq_rollback(j);
    return -1;
}

/* Written whole: a new file renamed over the old one, so that a reader never sees half. */
static int sq_announce(struct store *j, const struct journal_server *me, char *err,
                       size_t errlen)
{
    char path[4096], tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.new", listening(j, path, sizeof path));
    FILE *f = fopen(tmp, "we");
    int ok = f != NULL && fprintf(f, "pid %ld\nlisten %s\nadmin %s\n", me->pid, me->listen,
                                  me->admin) > 0;
    if (f != NULL && fclose(f) != 0)
        ok = 0;
    if (!ok || rename(tmp, path) != 0) {
        snprintf(err, errlen, "cannot write %s: %s", path, strerror(errno));
        unlink(tmp);
        return -1;
    }
    j->announced = 1;
    return 0;
}

static int sq_servers(struct store *j, void (*fn)(void *cls, const struct journal_server *srv),
                      void *cls, char *err, size_t errlen)
{
    char path[4096], listen[1024], admin[1024];
    struct journal_server srv = {0, listen, admin};
    FILE *f = fopen(listening(j, path, sizeof path), "re");
    if (f == NULL && errno == ENOENT)
        return 0;
    if (f == NULL) {
        snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
        return -1;
    }
    int n = fscanf(f, "pid %ld listen %1023s admin %1023s", &srv.pid, listen, admin);
    fclose(f);
    if (n != 3) {
        snprintf(err, errlen, "%s is not what certhook writes there", path);
        return -1;
    }
    fn(cls, &srv);
    return 1;
}

static const char *sq_directory(struct store *j)
{
    return j->dir;
}

/* ---- certhook migrate: every row, as records --------------------------------------------------- */

static double column_double(sqlite3_stmt *s, int i) /* 0 for NULL */
{
    return sqlite3_column_type(s, i) == SQLITE_NULL ? 0 : sqlite3_column_double(s, i);
}

/* Runs sql on the reader's connection and fn(cls, row) for each row; 0, or -1 with err. */
static int each_row(struct store *j, const char *sql, int (*fn)(void *cls, sqlite3_stmt *row),
                    void *cls, char *err, size_t errlen)
{
    sqlite3_stmt *s;
    int rc;
    if (sqlite3_prepare_v2(j->rdb, sql, -1, &s, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "cannot read the journal: %s", sqlite3_errmsg(j->rdb));
        return -1;
    }
    while ((rc = sqlite3_step(s)) == SQLITE_ROW)
        if (fn(cls, s) != 0) {
            sqlite3_finalize(s);
            return -1;
        }
    if (rc != SQLITE_DONE)
        snprintf(err, errlen, "cannot read the journal: %s", sqlite3_errmsg(j->rdb));
    sqlite3_finalize(s);
    return rc == SQLITE_DONE ? 0 : -1;
}

struct export {
    int (*fn)(void *cls, const struct journal_record *rec);
    void *cls;
};

static int export_event(void *cls, sqlite3_stmt *s)
{
    struct export *x = cls;
    struct event *ev = row_event(s);
    if (ev == NULL)
        return -1;
    struct journal_record rec = {.kind = JR_EVENT, .ev = ev, .state = sqlite3_column_int(s, 13)};
    int rc = x->fn(x->cls, &rec);
    event_free(ev);
    return rc;
}

static int export_delivery(void *cls, sqlite3_stmt *s)
{
    struct export *x = cls;
    struct delivery_result d = {
        .handler = (char *)column(s, 1), .status = DELIVERY_PENDING,
        .attempts = sqlite3_column_int(s, 3), .crashes = sqlite3_column_int(s, 4),
        .generation = (unsigned)sqlite3_column_int64(s, 5), .first_at = column_double(s, 6),
        .started_at = column_double(s, 7), .duration = column_double(s, 8),
        .next_at = column_double(s, 9), .error = (char *)column(s, 10),
        .traceback = (char *)column(s, 11)};
    for (int i = 0; i < 5; i++)
        if (column(s, 2) && strcmp(column(s, 2), delivery_status_names[i]) == 0)
            d.status = (enum delivery_status)i;
    struct journal_record rec = {.kind = JR_DELIVERY, .seq = sqlite3_column_int64(s, 0), .d = &d};
    return x->fn(x->cls, &rec);
}

static int export_state(void *cls, sqlite3_stmt *s)
{
    struct export *x = cls;
    struct journal_record rec = {
        .kind = JR_STATE, .key = column(s, 0), .key_len = (size_t)sqlite3_column_bytes(s, 0),
        .value = column(s, 1), .value_len = (size_t)sqlite3_column_bytes(s, 1),
        .expires_at = column_double(s, 2)};
    return x->fn(x->cls, &rec);
}

static int export_certificate(void *cls, sqlite3_stmt *s) /* an entry, as JSON */
{
    struct export *x = cls;
    struct entry e;
    struct buf json;
    buf_init(&json);
    entry_init(&e);
    int rc = row_entry(s, 0, &e) == 0 && entry_json(&e, &json) == 0 ? 0 : -1;
    if (rc == 0) {
        struct journal_record rec = {.kind = JR_CERTIFICATE, .value = json.p};
        rc = x->fn(x->cls, &rec);
    }
    entry_clear(&e);
    buf_free(&json);
    return rc;
}

static int export_once(void *cls, sqlite3_stmt *s)
{
    struct export *x = cls;
    struct journal_record rec = {
        .kind = JR_ONCE, .key = column(s, 0), .key_len = (size_t)sqlite3_column_bytes(s, 0),
        .value = column(s, 1), .value_len = (size_t)sqlite3_column_bytes(s, 1),
        .at = column_double(s, 2)};
    return x->fn(x->cls, &rec);
}

static int export_replay(void *cls, sqlite3_stmt *s)
{
    struct export *x = cls;
    struct journal_record rec = {.kind = JR_REPLAY, .seq = sqlite3_column_int64(s, 0),
                                 .event_id = column(s, 1), .dead = sqlite3_column_int(s, 2),
                                 .at = column_double(s, 3), .key = column(s, 4)};
    return x->fn(x->cls, &rec);
}

static int export_replay_log(void *cls, sqlite3_stmt *s)
{
    struct export *x = cls;
    struct journal_record rec = {.kind = JR_REPLAY_LOG, .seq = sqlite3_column_int64(s, 0),
                                 .event_id = column(s, 1), .key = column(s, 2),
                                 .dead = sqlite3_column_int(s, 3), .at = column_double(s, 4),
                                 .value = column(s, 5)};
    return x->fn(x->cls, &rec);
}

/* Every row, in one read transaction (a snapshot): events (with their data), deliveries, state,
 * certificates, replay requests, the replays asked (replay_log). */
static int sq_export(struct store *j, int (*fn)(void *cls, const struct journal_record *rec),
                     void *cls, char *err, size_t errlen)
{
    struct export x = {fn, cls};
    char inventory_sql[600];
    snprintf(inventory_sql, sizeof inventory_sql, "SELECT %s FROM inventory ORDER BY key",
             entry_columns);
    if (sqlite3_exec(j->rdb, "BEGIN", NULL, NULL, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "cannot read the journal: %s", sqlite3_errmsg(j->rdb));
        return -1;
    }
    int rc = each_row(j, "SELECT " EVENT_COLUMNS ", e.state FROM " EVENT_FROM " ORDER BY e.seq",
                      export_event, &x, err, errlen) ||
             each_row(j, "SELECT event_seq, handler, status, attempts, crashes, generation, "
                         "first_at, started_at, duration, next_at, last_error, traceback FROM "
                         "deliveries UNION ALL SELECT " DONE_ENTRY ", 0, " DONE_GENERATION ", "
                         DONE_START ", " DONE_START ", " DONE_DURATION ", NULL, NULL, NULL FROM "
                         DONE_FROM " ORDER BY 1, 2", export_delivery, &x, err, errlen) ||
             each_row(j, "SELECT key, value, expires_at FROM state ORDER BY key", export_state,
                      &x, err, errlen) ||
             each_row(j, inventory_sql, export_certificate, &x, err, errlen) ||
             each_row(j, "SELECT key, results, lease_until FROM once ORDER BY key", export_once,
                      &x, err, errlen) ||
             each_row(j, "SELECT id, event_id, dead, requested_at, handler FROM replays ORDER BY id",
                      export_replay, &x, err, errlen) ||
             each_row(j, "SELECT id, event_id, handler, dead, requested_at, requested_by FROM "
                         "replay_log ORDER BY id", export_replay_log, &x, err, errlen)
                 ? -1
                 : 0;
    sqlite3_exec(j->rdb, "COMMIT", NULL, NULL, NULL);
    return rc;
}

void store_sqlite_version(struct buf *b)
{
    buf_printf(b, "SQLite %s", sqlite3_libversion());
}

const struct store_ops store_sqlite = {
    .name = "sqlite",
    .open = sq_open,
    .close = sq_close,
    .writer_start = sq_writer_start,
    .writer_stop = sq_writer_stop,
    .begin = sq_begin,
    .insert = sq_insert,
    .state = sq_state,
    .delivery = sq_delivery,
    .settle = sq_settle,
    .replayed = sq_replayed,
    .commit = sq_commit,
    .rollback = sq_rollback,
    .error = sq_error,
    .prune = sq_prune,
    .max_seq = sq_max_seq,
    .scan_events = sq_scan_events,
    .load = sq_load,
    .scan_deliveries = sq_scan_deliveries,
    .scan_replays = sq_scan_replays,
    .state_get = sq_state_get,
    .once_get = sq_once_get,
    .entry_get = sq_entry_get,
    .entry_put = sq_entry_put,
    .context = sq_context,
    .folded = sq_folded,
    .unfolded = sq_unfolded,
    .certs = sq_certs,
    .state_keys = sq_state_keys,
    .list = sq_list,
    .request_replay = sq_request_replay,
    .replay_log = sq_replay_log,
    .status = sq_status,
    .load_inventory = sq_load_inventory,
    .upgrade = sq_upgrade,
    .directory = sq_directory,
    .announce = sq_announce,
    .servers = sq_servers,
    .export = sq_export,
};
