/*
 * journal.c -- the durable journal: SQLite in WAL mode, synchronous=FULL (DESIGN §9).
 *
 * One writer thread owns the write connection. Intake threads queue append requests and
 * the dispatcher queues delivery results; the writer takes everything queued, writes it in
 * one transaction and commits with one fsync (group commit), and only then answers the
 * requests and hands the accepted events to the dispatcher (sink). A failed batch rolls
 * back whole: nothing half-written, every request in it is answered FAILED (-> 503).
 * The main thread has a second, read connection for scans.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <sqlite3.h>

#include "certhook.h"

struct journal {
    sqlite3 *db;  /* the writer's */
    sqlite3 *rdb; /* the main thread's */
    sqlite3_stmt *ins, *fin, *del;
    pthread_t thread;
    int started, stop;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct journal_req *reqs, **reqs_tail;
    struct journal_done *dones, **dones_tail;
    journal_sink sink;
    void *sink_cls;
    int healthy;
    char why[200];
};

static const char schema[] =
    "CREATE TABLE IF NOT EXISTS events ("
    "  seq INTEGER PRIMARY KEY,"
    "  id TEXT NOT NULL UNIQUE,"
    "  source TEXT NOT NULL,"
    "  provider TEXT NOT NULL,"
    "  type TEXT NOT NULL,"
    "  provider_type TEXT,"
    "  hostname TEXT,"
    "  received_at REAL NOT NULL,"
    "  payload TEXT NOT NULL,"
    "  state INTEGER NOT NULL DEFAULT 0);" /* 0: not yet dispatched, 2: dispatched */
    "CREATE INDEX IF NOT EXISTS events_new ON events(seq) WHERE state = 0;"
    "CREATE TABLE IF NOT EXISTS deliveries ("
    "  event_seq INTEGER NOT NULL,"
    "  handler TEXT NOT NULL,"
    "  status TEXT NOT NULL,"
    "  attempts INTEGER NOT NULL DEFAULT 0,"
    "  generation INTEGER,"
    "  started_at REAL,"
    "  duration REAL,"
    "  last_error TEXT,"
    "  PRIMARY KEY (event_seq, handler)) WITHOUT ROWID;"
    "PRAGMA user_version = 1;";

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
    return ev;
}

void journal_event_free(struct journal_event *ev)
{
    free(ev);
}

void journal_done_free(struct journal_done *d)
{
    if (d == NULL)
        return;
    for (size_t i = 0; i < d->n; i++) {
        free(d->r[i].handler);
        free(d->r[i].error);
    }
    free(d);
}

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

static int open_db(sqlite3 **db, const char *path, int flags, double busy_timeout, char *err,
                   size_t errlen)
{
    if (sqlite3_open_v2(path, db, flags | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "cannot open journal %s: %s", path,
                 *db ? sqlite3_errmsg(*db) : "out of memory");
        return -1;
    }
    sqlite3_busy_timeout(*db, (int)(busy_timeout * 1000));
    return 0;
}

int journal_open(struct journal **jp, const char *dir, double busy_timeout, char *err,
                 size_t errlen)
{
    char path[4096];
    struct journal *j = calloc(1, sizeof *j);
    *jp = NULL;
    if (j == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    pthread_mutex_init(&j->mu, NULL);
    pthread_cond_init(&j->cv, NULL);
    j->reqs_tail = &j->reqs;
    j->dones_tail = &j->dones;
    j->healthy = 1;
    if (mkdirs(dir) != 0) {
        snprintf(err, errlen, "cannot create data directory %s: %s", dir, strerror(errno));
        goto fail;
    }
    snprintf(path, sizeof path, "%s/certhook.db", dir);
    if (open_db(&j->db, path, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, busy_timeout, err,
                errlen) != 0)
        goto fail;
    char *msg = NULL;
    if (sqlite3_exec(j->db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;", NULL, NULL,
                     &msg) != SQLITE_OK ||
        sqlite3_exec(j->db, schema, NULL, NULL, &msg) != SQLITE_OK) {
        snprintf(err, errlen, "cannot initialize journal %s: %s", path,
                 msg ? msg : sqlite3_errmsg(j->db));
        sqlite3_free(msg);
        goto fail;
    }
    if (sqlite3_prepare_v3(j->db,
                           "INSERT INTO events (id, source, provider, type, provider_type, "
                           "hostname, received_at, payload) VALUES (?,?,?,?,?,?,?,?) "
                           "ON CONFLICT (id) DO NOTHING",
                           -1, SQLITE_PREPARE_PERSISTENT, &j->ins, NULL) != SQLITE_OK ||
        sqlite3_prepare_v3(j->db, "UPDATE events SET state = 2 WHERE seq = ?", -1,
                           SQLITE_PREPARE_PERSISTENT, &j->fin, NULL) != SQLITE_OK ||
        sqlite3_prepare_v3(j->db,
                           "INSERT OR REPLACE INTO deliveries (event_seq, handler, status, "
                           "attempts, generation, started_at, duration, last_error) "
                           "VALUES (?,?,?,?,?,?,?,?)",
                           -1, SQLITE_PREPARE_PERSISTENT, &j->del, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "cannot prepare journal statements: %s", sqlite3_errmsg(j->db));
        goto fail;
    }
    if (open_db(&j->rdb, path, SQLITE_OPEN_READONLY, busy_timeout, err, errlen) != 0)
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
    sqlite3_finalize(j->ins);
    sqlite3_finalize(j->fin);
    sqlite3_finalize(j->del);
    sqlite3_close(j->db);
    sqlite3_close(j->rdb);
    pthread_mutex_destroy(&j->mu);
    pthread_cond_destroy(&j->cv);
    free(j);
}

/* ---- the writer ------------------------------------------------------------------------------- */

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
    if (sqlite3_changes(j->db) == 1) {
        r->result = JOURNAL_ACCEPTED;
        ev->seq = sqlite3_last_insert_rowid(j->db);
    } else {
        r->result = JOURNAL_DUPLICATE;
    }
    return 0;
}

static const char *const status_names[] = {"done", "dead"};

static int write_done(struct journal *j, struct journal_done *d)
{
    sqlite3_bind_int64(j->fin, 1, d->seq);
    int rc = sqlite3_step(j->fin);
    sqlite3_reset(j->fin);
    for (size_t i = 0; rc == SQLITE_DONE && i < d->n; i++) {
        const struct delivery_result *r = &d->r[i];
        sqlite3_stmt *s = j->del;
        sqlite3_bind_int64(s, 1, d->seq);
        sqlite3_bind_text(s, 2, r->handler, -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 3, status_names[r->status], -1, SQLITE_STATIC);
        sqlite3_bind_int(s, 4, r->attempts);
        sqlite3_bind_int64(s, 5, r->generation);
        sqlite3_bind_double(s, 6, r->started_at);
        sqlite3_bind_double(s, 7, r->duration);
        sqlite3_bind_text(s, 8, r->error, -1, SQLITE_STATIC);
        rc = sqlite3_step(s);
        sqlite3_reset(s);
    }
    return rc == SQLITE_DONE ? 0 : -1;
}

/* Writes one batch in one transaction; answers every request. */
static void commit_batch(struct journal *j, struct journal_req *reqs, struct journal_done *dones)
{
    int ok = sqlite3_exec(j->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) == SQLITE_OK;
    for (struct journal_req *r = reqs; ok && r; r = r->next)
        ok = insert_event(j, r) == 0;
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
        } else if (r->result == JOURNAL_ACCEPTED) {
            *tail = r->ev;
            tail = &r->ev->next;
            r->ev->next = NULL;
            r->ev = NULL;
        }
    }
    if (accepted != NULL)
        j->sink(j->sink_cls, accepted);
    for (struct journal_req *r = reqs, *next; r; r = next) {
        next = r->next;
        r->done(r);
    }
    /* unwritten results stay "new" in the journal: dispatched again at the next start */
    for (struct journal_done *d = dones, *next; d; d = next) {
        next = d->next;
        journal_done_free(d);
    }
}

static void *writer_main(void *arg)
{
    struct journal *j = arg;
    for (;;) {
        pthread_mutex_lock(&j->mu);
        while (!j->reqs && !j->dones && !j->stop)
            pthread_cond_wait(&j->cv, &j->mu);
        struct journal_req *reqs = j->reqs;
        struct journal_done *dones = j->dones;
        int stop = j->stop;
        j->reqs = NULL;
        j->reqs_tail = &j->reqs;
        j->dones = NULL;
        j->dones_tail = &j->dones;
        pthread_mutex_unlock(&j->mu);
        if (reqs == NULL && dones == NULL && stop)
            return NULL;
        commit_batch(j, reqs, dones);
    }
}

int journal_start(struct journal *j, journal_sink sink, void *cls)
{
    j->sink = sink;
    j->sink_cls = cls;
    if (pthread_create(&j->thread, NULL, writer_main, j) != 0)
        return -1;
    j->started = 1;
    return 0;
}

void journal_stop(struct journal *j)
{
    if (!j->started)
        return;
    pthread_mutex_lock(&j->mu);
    j->stop = 1;
    pthread_cond_signal(&j->cv);
    pthread_mutex_unlock(&j->mu);
    pthread_join(j->thread, NULL);
    j->started = 0;
}

void journal_append(struct journal *j, struct journal_req *r)
{
    r->next = NULL;
    r->result = JOURNAL_PENDING;
    pthread_mutex_lock(&j->mu);
    *j->reqs_tail = r;
    j->reqs_tail = &r->next;
    pthread_cond_signal(&j->cv);
    pthread_mutex_unlock(&j->mu);
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

/* ---- scans (main thread, read connection) -------------------------------------------------- */

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

static const char *column(sqlite3_stmt *s, int i)
{
    return (const char *)sqlite3_column_text(s, i);
}

int journal_scan_pending(struct journal *j, int64_t after, int64_t upto, int limit,
                         void (*fn)(void *cls, struct journal_event *ev), void *cls)
{
    sqlite3_stmt *s;
    int n = 0, rc;
    if (sqlite3_prepare_v2(j->rdb,
                           "SELECT seq, id, source, provider, type, provider_type, hostname, "
                           "received_at, payload FROM events WHERE state = 0 AND seq > ? AND "
                           "seq <= ? ORDER BY seq LIMIT ?",
                           -1, &s, NULL) != SQLITE_OK) {
        log_msg(LOG_ERROR, "journal scan failed: %s", sqlite3_errmsg(j->rdb));
        return -1;
    }
    sqlite3_bind_int64(s, 1, after);
    sqlite3_bind_int64(s, 2, upto);
    sqlite3_bind_int(s, 3, limit);
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        struct journal_event *ev = journal_event_new(
            provider_parse(column(s, 3)), sqlite3_column_double(s, 7), column(s, 1),
            column(s, 2), column(s, 4), column(s, 5), column(s, 6), column(s, 8),
            (size_t)sqlite3_column_bytes(s, 8));
        if (ev == NULL)
            break;
        ev->seq = sqlite3_column_int64(s, 0);
        fn(cls, ev);
        n++;
    }
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
        log_msg(LOG_ERROR, "journal scan failed: %s", sqlite3_errmsg(j->rdb));
        n = -1;
    }
    sqlite3_finalize(s);
    return n;
}
