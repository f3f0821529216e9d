/*
 * journal.c -- the durable journal: SQLite in WAL mode, synchronous=FULL (DESIGN §9).
 *
 * One writer thread owns the write connection. Intake threads queue new events, handlers
 * queue certhook.state writes, the dispatcher queues delivery states; the writer takes
 * everything queued, writes it in one transaction and commits with one fsync (group
 * commit), and only then answers the requests and hands the accepted events to the
 * dispatcher (sink). A failed batch rolls back whole: nothing half-written, every request in
 * it is answered FAILED (-> 503). Between batches the writer prunes what is older than the
 * retention. The main thread reads on a second connection (scans, state reads, the CLI).
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <sqlite3.h>

#include "certhook.h"

#define PRUNE_BATCH 1000
#define CACHE_KIB 128          /* page cache of each connection (open_db) */
#define CHECKPOINT_FRAMES 1000 /* WAL frames (pages: 4 MiB) after which the checkpointer runs */
#define WAL_KEEP (4 << 20)     /* bytes a WAL file is cut back to when it restarts */
#define BEHIND_RETRY 1.0       /* seconds between checkpoints while a reader holds one back */
#define BEHIND_WARN 30.0       /* seconds between warnings about that */
#define BEHIND_GRACE 2.0       /* seconds held back before it is worth a warning */

struct journal {
    sqlite3 *db;  /* the writer's; NULL when read-only */
    sqlite3 *rdb; /* the main thread's */
    sqlite3_stmt *ins, *fin, *del, *sset, *sdel, *sget, *rload, *rload_id, *cert, *uncert;
    sqlite3 *adb; /* the admin thread's (counts for /metrics), opened on first use */
    sqlite3 *cdb; /* the checkpointer's */
    pthread_t ckthread;
    int ck_started, ck_due, ck_stop; /* under mu */
    pthread_cond_t ckcv;
    size_t max_wal;                  /* bytes past which the WAL is truncated */
    _Atomic double behind_since;     /* time_mono() since when the WAL is not all copied; 0 */
    pthread_mutex_t amu;
    char *path;
    size_t queued; /* requests waiting for the writer */
    pthread_t thread;
    int started, stop;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct journal_req *reqs, **reqs_tail;
    struct journal_done *dones, **dones_tail;
    journal_sink sink;
    void *sink_cls;
    double retention, next_prune;
    int healthy;
    char why[200];
};

const char *const delivery_status_names[] = {"pending", "running", "retrying", "done", "dead"};

/* Schema versions, in order: migration i takes user_version i to i + 1. events.state: 0 not
 * yet dispatched, 1 deliveries not all final, 2 all final (done/dead, or no handler matched),
 * 3 replay requested. */
static const char *const migrations[] = {
    "CREATE TABLE events ("
    "  seq INTEGER PRIMARY KEY,"
    "  id TEXT NOT NULL UNIQUE,"
    "  source TEXT NOT NULL,"
    "  provider TEXT NOT NULL,"
    "  type TEXT NOT NULL,"
    "  provider_type TEXT,"
    "  hostname TEXT,"
    "  received_at REAL NOT NULL,"
    "  payload TEXT NOT NULL,"
    "  state INTEGER NOT NULL DEFAULT 0);"
    "CREATE INDEX events_new ON events(seq) WHERE state = 0;"
    "CREATE TABLE deliveries ("
    "  event_seq INTEGER NOT NULL,"
    "  handler TEXT NOT NULL,"
    "  status TEXT NOT NULL,"
    "  attempts INTEGER NOT NULL DEFAULT 0,"
    "  generation INTEGER,"
    "  started_at REAL,"
    "  duration REAL,"
    "  last_error TEXT,"
    "  PRIMARY KEY (event_seq, handler)) WITHOUT ROWID;",

    "ALTER TABLE deliveries ADD COLUMN next_at REAL;"
    "ALTER TABLE deliveries ADD COLUMN first_at REAL;"
    "ALTER TABLE deliveries ADD COLUMN traceback TEXT;"
    "CREATE INDEX deliveries_todo ON deliveries(status) WHERE status IN ('pending', 'running', 'retrying');"
    "CREATE INDEX deliveries_dead ON deliveries(status) WHERE status = 'dead';"
    "DROP INDEX events_new;"
    "CREATE INDEX events_todo ON events(state) WHERE state IN (0, 3);"
    "CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT NOT NULL, expires_at REAL) WITHOUT ROWID;"
    "CREATE TABLE replays (id INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT,"
    "  dead INTEGER NOT NULL DEFAULT 0,"
    "  requested_at REAL NOT NULL);",

    /* the certificate inventory (metrics.c): the last known facts per hostname */
    "CREATE TABLE certificates (hostname TEXT PRIMARY KEY, type TEXT NOT NULL, status TEXT,"
    "  expires_at REAL, updated_at REAL NOT NULL) WITHOUT ROWID;",

    /* partial indexes without IN lists: SQLite builds an ephemeral table for an IN list each
     * time it checks a row against the index, on every insert and update. Queries that use
     * them repeat their WHERE terms (OPEN_DELIVERY, OPEN_EVENT). */
    "DROP INDEX deliveries_todo;"
    "CREATE INDEX deliveries_todo ON deliveries(status) WHERE status <> 'done' AND status <> 'dead';"
    "DROP INDEX events_todo;"
    "CREATE INDEX events_todo ON events(state) WHERE state <> 2;",

    /* deaths of the process while the delivery's handler ran (running.c): two make it dead */
    "ALTER TABLE deliveries ADD COLUMN crashes INTEGER NOT NULL DEFAULT 0;",
};

#define OPEN_DELIVERY "status <> 'done' AND status <> 'dead'"
#define OPEN_EVENT "state <> 2"

struct journal_event *journal_event_new(enum provider p, double received_at, const char *id,
                                        const char *source, const char *type,
                                        const char *provider_type, const char *hostname,
                                        const char *payload, size_t payload_len)
{
    const char *strs[] = {id, source, type, provider_type, hostname};
    size_t lens[5], total = sizeof(struct journal_event) + payload_len + 1;
    for (int i = 0; i < 5; i++)
        total += (lens[i] = strs[i] ? strlen(strs[i]) + 1 : 0);
    struct journal_event *ev = malloc(total);
    if (ev == NULL)
        return NULL;
    char *at = (char *)(ev + 1);
    const char **dst[] = {&ev->id, &ev->source, &ev->type, &ev->provider_type, &ev->hostname};
    for (int i = 0; i < 5; i++) {
        *dst[i] = strs[i] ? memcpy(at, strs[i], lens[i]) : NULL;
        at += lens[i];
    }
    memcpy(at, payload, payload_len);
    at[payload_len] = '\0';
    ev->payload = at;
    ev->payload_len = payload_len;
    ev->next = NULL;
    ev->seq = 0;
    ev->received_at = received_at;
    ev->provider = p;
    ev->expires_at = 0;
    ev->cert_status[0] = '\0';
    ev->packed = NULL;
    ev->packed_len = 0;
    return ev;
}

void journal_event_free(struct journal_event *ev)
{
    if (ev != NULL)
        free(ev->packed);
    free(ev);
}

struct journal_done *journal_done_new(int64_t seq, size_t n)
{
    struct journal_done *d = calloc(1, sizeof *d + n * sizeof d->r[0]);
    if (d != NULL)
        d->seq = seq;
    return d;
}

void journal_done_free(struct journal_done *d)
{
    if (d == NULL)
        return;
    for (size_t i = 0; i < d->n; i++) {
        free(d->r[i].handler);
        free(d->r[i].error);
        free(d->r[i].traceback);
    }
    free(d);
}

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

int journal_open(struct journal **jp, const char *dir, int flags, double busy_timeout,
                 double retention, char *err, size_t errlen)
{
    char path[4096];
    struct stat st;
    struct journal *j = calloc(1, sizeof *j);
    *jp = NULL;
    if (j == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    pthread_mutex_init(&j->mu, NULL);
    pthread_mutex_init(&j->amu, NULL);
    pthread_condattr_t ca; /* timed waits follow the monotonic clock */
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&j->cv, &ca);
    pthread_cond_init(&j->ckcv, &ca);
    pthread_condattr_destroy(&ca);
    j->reqs_tail = &j->reqs;
    j->dones_tail = &j->dones;
    j->healthy = 1;
    j->retention = retention;
    j->max_wal = 64 << 20;
    snprintf(path, sizeof path, "%s/certhook.db", dir);
    if ((j->path = strdup(path)) == NULL) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    if (flags & JOURNAL_CREATE) {
        if (mkdirs(dir) != 0) {
            snprintf(err, errlen, "cannot create data directory %s: %s", dir, strerror(errno));
            goto fail;
        }
    } else if (stat(path, &st) != 0) {
        snprintf(err, errlen, "no journal at %s (is --data right?)", path);
        goto fail;
    }
    if (!(flags & JOURNAL_READONLY)) {
        if (open_db(&j->db, path, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, busy_timeout, err,
                    errlen) != 0)
            goto fail;
        char *msg = NULL;
        if (sqlite3_exec(j->db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;", NULL, NULL,
                         &msg) != SQLITE_OK) {
            snprintf(err, errlen, "cannot initialize journal %s: %s", path,
                     msg ? msg : sqlite3_errmsg(j->db));
            sqlite3_free(msg);
            goto fail;
        }
        if (migrate(j->db, path, err, errlen) != 0 ||
            prepare(j->db,
                    "INSERT INTO events (id, source, provider, type, provider_type, hostname, "
                    "received_at, payload) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (id) DO NOTHING",
                    &j->ins, err, errlen) ||
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
                    "last_error = coalesce(excluded.last_error, last_error), "
                    "traceback = coalesce(excluded.traceback, traceback)",
                    &j->del, err, errlen) ||
            prepare(j->db,
                    "INSERT INTO state (key, value, expires_at) VALUES (?,?,?) ON CONFLICT (key) "
                    "DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at",
                    &j->sset, err, errlen) ||
            prepare(j->db, "DELETE FROM state WHERE key = ?", &j->sdel, err, errlen) ||
            prepare(j->db, "SELECT value FROM state WHERE key = ? AND (expires_at IS NULL OR "
                           "expires_at > ?)", &j->sget, err, errlen) ||
            prepare(j->db,
                    "INSERT INTO certificates (hostname, type, status, expires_at, updated_at) "
                    "VALUES (?,?,?,?,?) ON CONFLICT (hostname) DO UPDATE SET type = excluded.type, "
                    "status = coalesce(excluded.status, status), "
                    "expires_at = coalesce(excluded.expires_at, expires_at), "
                    "updated_at = excluded.updated_at",
                    &j->cert, err, errlen) ||
            prepare(j->db, "DELETE FROM certificates WHERE hostname = ?", &j->uncert, err,
                    errlen))
            goto fail;
    }
    if (open_db(&j->rdb, path, SQLITE_OPEN_READONLY, busy_timeout, err, errlen) != 0)
        goto fail;
    static const char load[] = "SELECT seq, id, source, provider, type, provider_type, hostname, "
                               "received_at, payload FROM events WHERE ";
    char sql[256];
    snprintf(sql, sizeof sql, "%sseq = ?", load);
    if (prepare(j->rdb, sql, &j->rload, err, errlen) != 0)
        goto fail;
    snprintf(sql, sizeof sql, "%sid = ?", load);
    if (prepare(j->rdb, sql, &j->rload_id, err, errlen) != 0)
        goto fail;
    *jp = j;
    return 0;
fail:
    journal_close(j);
    return -1;
}

void journal_close(struct journal *j)
{
    if (j == NULL)
        return;
    sqlite3_stmt *stmts[] = {j->ins,  j->fin,   j->del,      j->sset, j->sdel,
                             j->sget, j->rload, j->rload_id, j->cert, j->uncert};
    for (size_t i = 0; i < sizeof stmts / sizeof stmts[0]; i++)
        sqlite3_finalize(stmts[i]);
    sqlite3_close(j->db);
    sqlite3_close(j->rdb);
    sqlite3_close(j->adb);
    sqlite3_close(j->cdb);
    free(j->path);
    pthread_mutex_destroy(&j->mu);
    pthread_mutex_destroy(&j->amu);
    pthread_cond_destroy(&j->ckcv);
    pthread_cond_destroy(&j->cv);
    free(j);
}

/* ---- the writer ------------------------------------------------------------------------------- */

static int step_reset(sqlite3_stmt *s);

/* The inventory row of the event's hostname (a deletion removes it). */
static int remember_certificate(struct journal *j, const struct journal_event *ev)
{
    if (strcmp(ev->type, "certificate.deletion.succeeded") == 0) {
        sqlite3_bind_text(j->uncert, 1, ev->hostname, -1, SQLITE_STATIC);
        return step_reset(j->uncert);
    }
    if (!metrics_inventory_room(ev->hostname))
        return 0; /* past the cap: counted as dropped after the commit, not kept */
    sqlite3_bind_text(j->cert, 1, ev->hostname, -1, SQLITE_STATIC);
    sqlite3_bind_text(j->cert, 2, ev->type, -1, SQLITE_STATIC);
    if (ev->cert_status[0])
        sqlite3_bind_text(j->cert, 3, ev->cert_status, -1, SQLITE_STATIC);
    if (ev->expires_at > 0)
        sqlite3_bind_double(j->cert, 4, ev->expires_at);
    sqlite3_bind_double(j->cert, 5, ev->received_at);
    return step_reset(j->cert);
}

static int insert_event(struct journal *j, struct journal_req *r)
{
    struct journal_event *ev = r->ev;
    sqlite3_stmt *s = j->ins;
    sqlite3_bind_text(s, 1, ev->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, ev->source, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 3, provider_name(ev->provider), -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 4, ev->type, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 5, ev->provider_type, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 6, ev->hostname, -1, SQLITE_STATIC);
    sqlite3_bind_double(s, 7, ev->received_at);
    sqlite3_bind_text(s, 8, ev->payload, (int)ev->payload_len, SQLITE_STATIC);
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    if (rc != SQLITE_DONE)
        return -1;
    if (sqlite3_changes(j->db) != 1) {
        r->result = JOURNAL_DUPLICATE;
        return 0;
    }
    r->result = JOURNAL_ACCEPTED;
    ev->seq = sqlite3_last_insert_rowid(j->db);
    return ev->hostname != NULL && strncmp(ev->type, "certificate.", 12) == 0
               ? remember_certificate(j, ev)
               : 0;
}

static int step_reset(sqlite3_stmt *s)
{
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return rc == SQLITE_DONE ? 0 : -1;
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

static int state_op(struct journal *j, struct journal_req *r)
{
    double now = time_now();
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

static int write_done(struct journal *j, struct journal_done *d)
{
    sqlite3_stmt *s = j->del;
    for (size_t i = 0; i < d->n; i++) {
        const struct delivery_result *r = &d->r[i];
        sqlite3_bind_int64(s, 1, d->seq);
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
    }
    if (d->seq > 0) {
        sqlite3_bind_int64(j->fin, 1, d->seq);
        if (step_reset(j->fin) != 0)
            return -1;
    }
    if (d->replays_upto > 0) {
        char sql[96];
        snprintf(sql, sizeof sql, "DELETE FROM replays WHERE id <= %lld", (long long)d->replays_upto);
        if (sqlite3_exec(j->db, sql, NULL, NULL, NULL) != SQLITE_OK)
            return -1;
    }
    return 0;
}

static int do_request(struct journal *j, struct journal_req *r)
{
    return r->op == JOURNAL_APPEND ? insert_event(j, r) : state_op(j, r);
}

/* Writes one batch in one transaction; answers every request. */
static void commit_batch(struct journal *j, struct journal_req *reqs, struct journal_done *dones)
{
    int ok = sqlite3_exec(j->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) == SQLITE_OK;
    for (struct journal_req *r = reqs; ok && r; r = r->next)
        ok = do_request(j, r) == 0;
    for (struct journal_done *d = dones; ok && d; d = d->next)
        ok = write_done(j, d) == 0;
    if (ok)
        ok = sqlite3_exec(j->db, "COMMIT", NULL, NULL, NULL) == SQLITE_OK;

    char why[200];
    if (!ok) {
        snprintf(why, sizeof why, "%s", sqlite3_errmsg(j->db));
        if (sqlite3_get_autocommit(j->db) == 0)
            sqlite3_exec(j->db, "ROLLBACK", NULL, NULL, NULL);
        log_msg(LOG_ERROR, "journal write failed, batch rolled back: %s", why);
    }
    pthread_mutex_lock(&j->mu);
    j->healthy = ok;
    if (!ok)
        snprintf(j->why, sizeof j->why, "%s", why);
    pthread_mutex_unlock(&j->mu);

    /* hand the accepted events on before answering: a request may be freed once answered */
    struct journal_event *accepted = NULL, **tail = &accepted;
    for (struct journal_req *r = reqs; r; r = r->next) {
        if (!ok) {
            r->result = JOURNAL_FAILED;
            snprintf(r->error, sizeof r->error, "%s", why);
        } else if (r->op == JOURNAL_APPEND && r->result == JOURNAL_ACCEPTED) {
            const struct journal_event *ev = r->ev;
            if (ev->hostname != NULL && strncmp(ev->type, "certificate.", 12) == 0)
                metrics_certificate(ev->hostname, ev->type,
                                    ev->cert_status[0] ? ev->cert_status : NULL, ev->expires_at,
                                    ev->received_at);
            *tail = r->ev;
            tail = &r->ev->next;
            r->ev->next = NULL;
            r->ev = NULL;
        }
    }
    if (accepted != NULL) {
        if (j->sink)
            j->sink(j->sink_cls, accepted);
        else
            while (accepted) {
                struct journal_event *next = accepted->next;
                journal_event_free(accepted);
                accepted = next;
            }
    }
    for (struct journal_req *r = reqs, *next; r; r = next) {
        next = r->next;
        r->done(r);
    }
    /* unwritten delivery states: the journal still has the previous ones, which are redone at
     * the next start (at least once) */
    for (struct journal_done *d = dones, *next; d; d = next) {
        next = d->next;
        journal_done_free(d);
    }
}

/* Deletes finished events (and their deliveries) received before the retention, and expired
 * state, a chunk per transaction. seq follows received_at, so the old events come first. */
static void prune(struct journal *j)
{
    double now = time_now();
    sqlite3_stmt *s;
    int64_t cutoff = 0;
    int n = 0, chunk = 0;
    if (sqlite3_prepare_v2(j->db, "SELECT coalesce((SELECT seq FROM events WHERE received_at >= ? "
                                  "ORDER BY seq LIMIT 1), (SELECT max(seq) + 1 FROM events), 0)",
                           -1, &s, NULL) == SQLITE_OK) {
        sqlite3_bind_double(s, 1, now - j->retention);
        if (sqlite3_step(s) == SQLITE_ROW)
            cutoff = sqlite3_column_int64(s, 0);
    }
    sqlite3_finalize(s);
    do {
        char pick[320], drop[256];
        snprintf(pick, sizeof pick,
                 "BEGIN IMMEDIATE; CREATE TEMP TABLE IF NOT EXISTS doomed (seq INTEGER PRIMARY KEY);"
                 "DELETE FROM doomed; INSERT INTO doomed SELECT seq FROM events WHERE seq < %lld "
                 "AND state = 2 ORDER BY seq LIMIT %d",
                 (long long)cutoff, PRUNE_BATCH);
        snprintf(drop, sizeof drop,
                 "DELETE FROM deliveries WHERE event_seq IN (SELECT seq FROM doomed);"
                 "DELETE FROM events WHERE seq IN (SELECT seq FROM doomed);"
                 "DELETE FROM state WHERE expires_at < %.6f; COMMIT",
                 now);
        if (sqlite3_exec(j->db, pick, NULL, NULL, NULL) != SQLITE_OK ||
            (chunk = sqlite3_changes(j->db),
             sqlite3_exec(j->db, drop, NULL, NULL, NULL) != SQLITE_OK)) {
            log_msg(LOG_WARN, "journal pruning failed: %s", sqlite3_errmsg(j->db));
            if (sqlite3_get_autocommit(j->db) == 0)
                sqlite3_exec(j->db, "ROLLBACK", NULL, NULL, NULL);
            return;
        }
        n += chunk;
    } while (chunk == PRUNE_BATCH);
    if (n > 0)
        log_msg(LOG_INFO, "pruned %d finished events older than the retention", n);
}

static void *writer_main(void *arg)
{
    struct journal *j = arg;
    double interval = j->retention / 4 < 600 ? j->retention / 4 : 600;
    if (interval < 0.25)
        interval = 0.25;
    j->next_prune = time_mono() + 1;
    for (;;) {
        pthread_mutex_lock(&j->mu);
        while (!j->reqs && !j->dones && !j->stop) {
            double wait = j->next_prune - time_mono();
            if (wait <= 0)
                break;
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            double at = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9 + wait;
            ts.tv_sec = (time_t)at;
            ts.tv_nsec = (long)((at - (double)ts.tv_sec) * 1e9);
            pthread_cond_timedwait(&j->cv, &j->mu, &ts);
        }
        struct journal_req *reqs = j->reqs;
        struct journal_done *dones = j->dones;
        int stop = j->stop;
        j->reqs = NULL;
        j->reqs_tail = &j->reqs;
        j->dones = NULL;
        j->dones_tail = &j->dones;
        pthread_mutex_unlock(&j->mu);
        size_t n = 0;
        for (struct journal_req *r = reqs; r; r = r->next)
            n++;
        if (reqs != NULL || dones != NULL)
            commit_batch(j, reqs, dones);
        else if (stop)
            return NULL;
        if (n > 0) {
            pthread_mutex_lock(&j->mu);
            j->queued -= n;
            pthread_mutex_unlock(&j->mu);
        }
        if (time_mono() >= j->next_prune) {
            prune(j);
            j->next_prune = time_mono() + interval;
        }
    }
}

/* ---- the checkpointer ------------------------------------------------------------------------- */

/* After each commit of the writer: past CHECKPOINT_FRAMES, wake the checkpointer. */
static int wal_grew(void *arg, sqlite3 *db, const char *name, int frames)
{
    struct journal *j = arg;
    (void)db, (void)name;
    if (frames >= CHECKPOINT_FRAMES) {
        pthread_mutex_lock(&j->mu);
        j->ck_due = 1;
        pthread_cond_signal(&j->ckcv);
        pthread_mutex_unlock(&j->mu);
    }
    return SQLITE_OK;
}

static double wal_bytes(const struct journal *j)
{
    char path[4200];
    struct stat st;
    snprintf(path, sizeof path, "%s-wal", j->path);
    return stat(path, &st) == 0 ? (double)st.st_size : 0;
}

/* One round of the checkpointer: copy what it can; past max_wal, copy all of it and cut the
 * file back (TRUNCATE waits, up to its busy timeout, for the writer's batch and for readers).
 * Returns 1 if frames remain that a reader keeps from being copied. */
static int checkpoint(struct journal *j, double *warned)
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
    struct journal *j = arg;
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

void journal_set_max_wal(struct journal *j, size_t bytes)
{
    j->max_wal = bytes;
}

void journal_wal_status(struct journal *j, double *bytes, double *behind)
{
    double since = atomic_load(&j->behind_since);
    *bytes = wal_bytes(j);
    *behind = since > 0 ? time_mono() - since : 0;
}

int journal_start(struct journal *j, journal_sink sink, void *cls)
{
    char err[300];
    j->sink = sink;
    j->sink_cls = cls;
    /* The checkpointer's connection must have read the database once: before that it does not
     * know the database is in WAL mode, and a checkpoint is a silent no-op (log -1). */
    /* its busy timeout bounds how long a TRUNCATE checkpoint holds the writer back while it
     * waits for a reader: 0.2 s, once a second, only while a reader keeps the WAL past max_wal */
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
    if (pthread_create(&j->thread, NULL, writer_main, j) != 0)
        return -1;
    pthread_setname_np(j->thread, "journal-writer");
    j->started = 1;
    return 0;
}

void journal_stop(struct journal *j)
{
    if (j == NULL || !j->started)
        return;
    pthread_mutex_lock(&j->mu);
    j->stop = 1;
    pthread_cond_signal(&j->cv);
    pthread_mutex_unlock(&j->mu);
    pthread_join(j->thread, NULL);
    j->started = 0;
    if (j->ck_started) {
        pthread_mutex_lock(&j->mu);
        j->ck_stop = 1;
        pthread_cond_signal(&j->ckcv);
        pthread_mutex_unlock(&j->mu);
        pthread_join(j->ckthread, NULL);
        j->ck_started = 0;
        sqlite3_wal_hook(j->db, NULL, NULL);
        sqlite3_wal_autocheckpoint(j->db, 1000); /* the last close checkpoints and removes it */
    }
}

void journal_append(struct journal *j, struct journal_req *r)
{
    r->next = NULL;
    r->result = JOURNAL_PENDING;
    pthread_mutex_lock(&j->mu);
    *j->reqs_tail = r;
    j->reqs_tail = &r->next;
    j->queued++;
    pthread_cond_signal(&j->cv);
    pthread_mutex_unlock(&j->mu);
}

struct waiter {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
};

static void wake(struct journal_req *r)
{
    struct waiter *w = r->cls;
    pthread_mutex_lock(&w->mu);
    w->done = 1;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

void journal_call(struct journal *j, struct journal_req *r)
{
    struct waiter w = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};
    r->done = wake;
    r->cls = &w;
    journal_append(j, r);
    pthread_mutex_lock(&w.mu);
    while (!w.done)
        pthread_cond_wait(&w.cv, &w.mu);
    pthread_mutex_unlock(&w.mu);
    pthread_mutex_destroy(&w.mu);
    pthread_cond_destroy(&w.cv);
}

void journal_finish(struct journal *j, struct journal_done *d)
{
    struct journal_done *last = d;
    while (last->next)
        last = last->next;
    pthread_mutex_lock(&j->mu);
    *j->dones_tail = d;
    j->dones_tail = &last->next;
    pthread_cond_signal(&j->cv);
    pthread_mutex_unlock(&j->mu);
}

int journal_healthy(struct journal *j, char *why, size_t n)
{
    pthread_mutex_lock(&j->mu);
    int ok = j->healthy;
    if (!ok)
        snprintf(why, n, "%s", j->why);
    pthread_mutex_unlock(&j->mu);
    return ok;
}

/* ---- reads (main thread, read connection) ----------------------------------------------------- */

static const char *column(sqlite3_stmt *s, int i)
{
    return (const char *)sqlite3_column_text(s, i);
}

static void read_failed(struct journal *j, const char *what)
{
    log_msg(LOG_ERROR, "journal read failed (%s): %s", what, sqlite3_errmsg(j->rdb));
}

int64_t journal_max_seq(struct journal *j)
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

/* The event of the current row of a statement that selects the columns of rload. */
static struct journal_event *row_event(sqlite3_stmt *s)
{
    const char *payload = column(s, 8);
    struct journal_event *ev = journal_event_new(
        provider_parse(column(s, 3)), sqlite3_column_double(s, 7), column(s, 1), column(s, 2),
        column(s, 4), column(s, 5), column(s, 6), payload, (size_t)sqlite3_column_bytes(s, 8));
    if (ev != NULL)
        ev->seq = sqlite3_column_int64(s, 0);
    return ev;
}

int journal_scan_events(struct journal *j, int state, int64_t after, int64_t upto, int limit,
                        void (*fn)(void *cls, struct journal_event *ev), void *cls)
{
    sqlite3_stmt *s;
    int n = 0, rc;
    if (sqlite3_prepare_v2(j->rdb,
                           "SELECT seq, id, source, provider, type, provider_type, hostname, "
                           "received_at, payload FROM events WHERE " OPEN_EVENT " AND state = ? AND "
                           "seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
                           -1, &s, NULL) != SQLITE_OK) {
        read_failed(j, "events");
        return -1;
    }
    sqlite3_bind_int(s, 1, state);
    sqlite3_bind_int64(s, 2, after);
    sqlite3_bind_int64(s, 3, upto);
    sqlite3_bind_int(s, 4, limit);
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        struct journal_event *ev = row_event(s);
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

struct journal_event *journal_load(struct journal *j, int64_t seq, const char *id)
{
    sqlite3_stmt *s = id ? j->rload_id : j->rload;
    struct journal_event *ev = NULL;
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

int journal_scan_deliveries(struct journal *j, const char *status,
                            void (*fn)(void *cls, const struct journal_delivery *row), void *cls)
{
    sqlite3_stmt *s;
    int n = 0, rc;
    if (sqlite3_prepare_v2(j->rdb,
                           status ? "SELECT event_seq, handler, status, attempts, crashes, next_at, "
                                    "first_at FROM deliveries WHERE status = ?"
                                  : "SELECT event_seq, handler, status, attempts, crashes, next_at, "
                                    "first_at FROM deliveries WHERE " OPEN_DELIVERY,
                           -1, &s, NULL) != SQLITE_OK) {
        read_failed(j, "deliveries");
        return -1;
    }
    if (status)
        sqlite3_bind_text(s, 1, status, -1, SQLITE_STATIC);
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

int journal_scan_replays(struct journal *j, int64_t after,
                         void (*fn)(void *cls, int64_t id, const char *event_id, int dead),
                         void *cls)
{
    sqlite3_stmt *s;
    int n = 0, rc;
    if (sqlite3_prepare_v2(j->rdb, "SELECT id, event_id, dead FROM replays WHERE id > ? ORDER BY id",
                           -1, &s, NULL) != SQLITE_OK) {
        read_failed(j, "replays");
        return -1;
    }
    sqlite3_bind_int64(s, 1, after);
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        fn(cls, sqlite3_column_int64(s, 0), column(s, 1), sqlite3_column_int(s, 2));
        n++;
    }
    sqlite3_finalize(s);
    return rc == SQLITE_DONE ? n : -1;
}

int journal_state_get(struct journal *j, const char *key, char **out, size_t *len, char *err,
                      size_t errlen)
{
    sqlite3_stmt *s;
    *out = NULL;
    if (sqlite3_prepare_v2(j->rdb, "SELECT value FROM state WHERE key = ? AND (expires_at IS NULL "
                                   "OR expires_at > ?)", -1, &s, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "%s", sqlite3_errmsg(j->rdb));
        return -1;
    }
    sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC);
    sqlite3_bind_double(s, 2, time_now());
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        *len = (size_t)sqlite3_column_bytes(s, 0);
        *out = malloc(*len + 1);
        if (*out)
            memcpy(*out, sqlite3_column_text(s, 0), *len + 1);
    } else if (rc != SQLITE_DONE) {
        snprintf(err, errlen, "%s", sqlite3_errmsg(j->rdb));
    }
    sqlite3_finalize(s);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : -1;
}

int journal_state_keys(struct journal *j, const char *prefix, void (*fn)(void *, const char *),
                       void *cls, char *err, size_t errlen)
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

int journal_list(struct journal *j, const struct journal_filter *f,
                 void (*fn)(void *cls, const struct journal_row *row), void *cls, char *err,
                 size_t errlen)
{
    sqlite3_stmt *s;
    int rc;
    /* the newest events that have a delivery in the status (when asked) and match the type */
    const char *sql =
        "WITH picked AS (SELECT seq FROM events e WHERE (?1 IS NULL OR type GLOB ?1 OR "
        "provider_type GLOB ?1) AND (?2 IS NULL OR EXISTS (SELECT 1 FROM deliveries d WHERE "
        "d.event_seq = e.seq AND d.status = ?2)) ORDER BY seq DESC LIMIT ?3) "
        "SELECT e.seq, e.id, e.source, e.type, e.provider_type, e.hostname, e.received_at, "
        "e.state, d.handler, d.status, d.attempts, d.last_error, d.next_at, d.started_at, "
        "d.generation FROM picked JOIN events e ON e.seq = picked.seq LEFT JOIN deliveries d "
        "ON d.event_seq = e.seq ORDER BY e.seq DESC, d.handler";
    if (sqlite3_prepare_v2(j->rdb, sql, -1, &s, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "%s", sqlite3_errmsg(j->rdb));
        return -1;
    }
    sqlite3_bind_text(s, 1, f->type, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, f->status, -1, SQLITE_STATIC);
    sqlite3_bind_int(s, 3, f->limit);
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        struct journal_row r = {
            .seq = sqlite3_column_int64(s, 0), .id = column(s, 1), .source = column(s, 2),
            .type = column(s, 3), .provider_type = column(s, 4), .hostname = column(s, 5),
            .received_at = sqlite3_column_double(s, 6), .state = sqlite3_column_int(s, 7),
            .handler = column(s, 8), .status = column(s, 9), .attempts = sqlite3_column_int(s, 10),
            .error = column(s, 11), .next_at = sqlite3_column_double(s, 12),
            .started_at = sqlite3_column_double(s, 13), .generation = sqlite3_column_int(s, 14),
        };
        fn(cls, &r);
    }
    if (rc != SQLITE_DONE)
        snprintf(err, errlen, "%s", sqlite3_errmsg(j->rdb));
    sqlite3_finalize(s);
    return rc == SQLITE_DONE ? 0 : -1;
}

int journal_request_replay(struct journal *j, const char *event_id, int *count, char *err,
                           size_t errlen)
{
    sqlite3_stmt *s = NULL;
    int rc = -1;
    *count = 0;
    if (sqlite3_exec(j->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        goto fail;
    if (sqlite3_prepare_v2(j->db,
                           event_id ? "SELECT e.seq, (SELECT count(*) FROM deliveries WHERE "
                                      "event_seq = e.seq) FROM events e WHERE e.id = ?"
                                    : "SELECT 0, count(*) FROM deliveries WHERE status = 'dead'",
                           -1, &s, NULL) != SQLITE_OK)
        goto fail;
    if (event_id)
        sqlite3_bind_text(s, 1, event_id, -1, SQLITE_STATIC);
    int step = sqlite3_step(s);
    if (step == SQLITE_DONE) {
        snprintf(err, errlen, "no event with id %s in the journal", event_id);
        sqlite3_finalize(s);
        sqlite3_exec(j->db, "ROLLBACK", NULL, NULL, NULL);
        return -1;
    }
    if (step != SQLITE_ROW)
        goto fail;
    *count = sqlite3_column_int(s, 1);
    sqlite3_finalize(s);
    s = NULL;
    if (sqlite3_prepare_v2(j->db, "INSERT INTO replays (event_id, dead, requested_at) VALUES (?,?,?)",
                           -1, &s, NULL) != SQLITE_OK)
        goto fail;
    sqlite3_bind_text(s, 1, event_id, -1, SQLITE_STATIC);
    sqlite3_bind_int(s, 2, event_id == NULL);
    sqlite3_bind_double(s, 3, time_now());
    if (sqlite3_step(s) != SQLITE_DONE || sqlite3_exec(j->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
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

/* ---- for /metrics and the inventory -------------------------------------------------------- */

size_t journal_queued(struct journal *j)
{
    pthread_mutex_lock(&j->mu);
    size_t n = j->queued;
    pthread_mutex_unlock(&j->mu);
    return n;
}

int journal_count_deliveries(struct journal *j, double counts[5])
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
    rc = 0;
done:
    sqlite3_finalize(s);
    pthread_mutex_unlock(&j->amu);
    return rc;
}

int journal_load_inventory(struct journal *j, size_t cap)
{
    sqlite3_stmt *s;
    int n = 0;
    metrics_inventory_cap(cap);
    if (sqlite3_prepare_v2(j->rdb, "SELECT hostname, type, status, expires_at, updated_at FROM "
                                   "certificates ORDER BY updated_at DESC LIMIT ?",
                           -1, &s, NULL) != SQLITE_OK)
        return -1;
    sqlite3_bind_int64(s, 1, (sqlite3_int64)cap);
    while (sqlite3_step(s) == SQLITE_ROW) {
        metrics_certificate((const char *)sqlite3_column_text(s, 0),
                            (const char *)sqlite3_column_text(s, 1),
                            (const char *)sqlite3_column_text(s, 2), sqlite3_column_double(s, 3),
                            sqlite3_column_double(s, 4));
        n++;
    }
    sqlite3_finalize(s);
    return n;
}
