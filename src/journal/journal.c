/*
 * journal.c -- opening the journal on its store, and what is read from it: every read goes
 * to the store's operations (store.h) on its reader connection, one at a time (the dispatcher,
 * a generation loading on the reload's thread, the admin listener may read at once). The
 * writer's side is writer.c.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "journal/store.h"

/* The value of a read operation, with the reader to itself (a recursive lock: a scan's
 * callback may read again). */
#define READ(j, call)                                                                          \
    __extension__({                                                                            \
        pthread_mutex_lock(&(j)->rmu);                                                         \
        __typeof__(call) read_result_ = (call);                                                \
        pthread_mutex_unlock(&(j)->rmu);                                                       \
        read_result_;                                                                          \
    })

int journal_is_database(const char *where)
{
    return strncmp(where, "postgresql://", 13) == 0 || strncmp(where, "postgres://", 11) == 0;
}

/* The store for where: a URI is PostgreSQL's, a data directory SQLite's. */
static const struct store_ops *store_for(const char *where)
{
    return journal_is_database(where) ? &store_pg : &store_sqlite;
}

int journal_open(struct journal **jp, const struct journal_options *o, char *err, size_t errlen)
{
    struct journal *j = calloc(1, sizeof *j);
    *jp = NULL;
    if (j == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    j->ops = store_for(o->where);
    if (j->ops->open(&j->s, o, err, errlen) != 0) {
        free(j);
        return -1;
    }
    pthread_mutex_init(&j->mu, NULL);
    pthread_mutexattr_t ma;
    pthread_mutexattr_init(&ma);
    pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&j->rmu, &ma);
    pthread_mutexattr_destroy(&ma);
    pthread_condattr_t ca; /* the writer's timed waits follow the monotonic clock */
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&j->cv, &ca);
    pthread_cond_init(&j->fcv, &ca);
    pthread_condattr_destroy(&ca);
    j->reqs_tail = &j->reqs;
    j->dones_tail = &j->dones;
    j->unfolded_tail = &j->unfolded;
    j->pdones_tail = &j->pdones;
    j->exclusive = (o->flags & JOURNAL_EXCLUSIVE) != 0;
    pthread_mutex_init(&j->smu, NULL);
    j->where = strdup(o->where);
    j->busy_timeout = o->busy_timeout;
    j->healthy = 1;
    j->retention = o->retention;
    *jp = j;
    return 0;
}

void journal_close(struct journal *j)
{
    if (j == NULL)
        return;
    journal_stop(j);
    j->ops->close(j->s);
    if (j->side)
        j->ops->close(j->side);
    pthread_mutex_destroy(&j->smu);
    free(j->where);
    inventory_free(j->inv);
    event_free_list(j->unfolded);
    for (struct journal_done *d = j->pdones, *next; d; d = next) {
        next = d->next;
        journal_done_free(d);
    }
    pthread_mutex_destroy(&j->mu);
    pthread_mutex_destroy(&j->rmu);
    pthread_cond_destroy(&j->cv);
    pthread_cond_destroy(&j->fcv);
    free(j);
}

int journal_upgrade(struct journal *j,
                    int (*fn)(void *cls, const struct event *ev, struct buf *packed, char *err,
                              size_t errlen),
                    void *cls, char *err, size_t errlen)
{
    return j->ops->upgrade(j->s, fn, cls, err, errlen);
}

int64_t journal_max_seq(struct journal *j)
{
    return READ(j, j->ops->max_seq(j->s));
}

int journal_scan_events(struct journal *j, int state, int64_t after, int64_t upto, int limit,
                        void (*fn)(void *cls, struct event *ev), void *cls)
{
    return READ(j, j->ops->scan_events(j->s, state, after, upto, limit, fn, cls));
}

struct event *journal_load(struct journal *j, int64_t seq, const char *id)
{
    return READ(j, j->ops->load(j->s, seq, id));
}

int journal_scan_deliveries(struct journal *j, const char *status, int64_t seq,
                            void (*fn)(void *cls, const struct journal_delivery *row), void *cls)
{
    return READ(j, j->ops->scan_deliveries(j->s, status, seq, fn, cls));
}

int journal_scan_replays(struct journal *j, int64_t after,
                         void (*fn)(void *cls, const struct journal_replay *r), void *cls)
{
    return READ(j, j->ops->scan_replays(j->s, after, fn, cls));
}

int journal_state_get(struct journal *j, const char *key, char **out, size_t *len, char *err,
                      size_t errlen)
{
    return READ(j, j->ops->state_get(j->s, key, out, len, err, errlen));
}

int journal_once_get(struct journal *j, const char *key, char **out, size_t *len, char *err,
                     size_t errlen)
{
    return READ(j, j->ops->once_get(j->s, key, out, len, err, errlen));
}

int journal_state_keys(struct journal *j, const char *prefix, void (*fn)(void *, const char *),
                       void *cls, char *err, size_t errlen)
{
    return READ(j, j->ops->state_keys(j->s, prefix, fn, cls, err, errlen));
}

int journal_announce(struct journal *j, const struct journal_server *me, char *err,
                     size_t errlen)
{
    return READ(j, j->ops->announce(j->s, me, err, errlen)); /* (PostgreSQL: the reader's) */
}

int journal_servers(struct journal *j, void (*fn)(void *cls, const struct journal_server *srv),
                    void *cls, char *err, size_t errlen)
{
    return READ(j, j->ops->servers(j->s, fn, cls, err, errlen));
}

int journal_list(struct journal *j, const struct journal_filter *f,
                 void (*fn)(void *cls, const struct journal_row *row), void *cls, char *err,
                 size_t errlen)
{
    return READ(j, j->ops->list(j->s, f, fn, cls, err, errlen));
}

int journal_request_replay(struct journal *j, const char *event_id, const char *handler,
                           const char *who, int *count, char *err, size_t errlen)
{
    if (!j->exclusive)
        return READ(j, j->ops->request_replay(j->s, event_id, handler, who, count, err, errlen));
    /* a server's: its writer's connection is the writer thread's alone */
    pthread_mutex_lock(&j->smu);
    int rc = -1;
    *count = 0;
    if (j->side == NULL) {
        struct journal_options o = {.where = j->where, .busy_timeout = j->busy_timeout};
        if (j->where == NULL)
            snprintf(err, errlen, "out of memory");
        else if (j->ops->open(&j->side, &o, err, errlen) != 0)
            j->side = NULL;
    }
    if (j->side != NULL)
        rc = j->ops->request_replay(j->side, event_id, handler, who, count, err, errlen);
    pthread_mutex_unlock(&j->smu);
    return rc;
}

int journal_replay_log(struct journal *j, const char *event_id, int limit,
                       void (*fn)(void *cls, const struct journal_replay_record *r), void *cls,
                       char *err, size_t errlen)
{
    return READ(j, j->ops->replay_log(j->s, event_id, limit, fn, cls, err, errlen));
}

void journal_status(struct journal *j, struct journal_status *st)
{
    memset(st, 0, sizeof *st);
    pthread_mutex_lock(&j->mu);
    st->queued = j->queued;
    pthread_mutex_unlock(&j->mu);
    j->ops->status(j->s, st);
}

void journal_versions(struct buf *b)
{
    store_sqlite_version(b);
    buf_adds(b, ", ");
    store_pg_version(b);
}

int journal_load_inventory(struct journal *j, size_t cap)
{
    return READ(j, j->ops->load_inventory(j->s, cap));
}

int journal_certs(struct journal *j, const struct journal_certs_query *q,
                  void (*fn)(void *cls, const char *json), void *cls, char *err, size_t errlen)
{
    return READ(j, j->ops->certs(j->s, q, fn, cls, err, errlen));
}

const char *journal_directory(struct journal *j)
{
    return j->ops->directory ? j->ops->directory(j->s) : NULL;
}

/* ---- claims: no-ops on a journal one server uses ---------------------------------------------- */

int journal_claim(struct journal *j, int limit,
                  void (*on_delivery)(void *cls, const struct journal_delivery *row),
                  void (*on_event)(void *cls, struct event *ev), void *cls)
{
    return j->ops->claim ? READ(j, j->ops->claim(j->s, limit, on_delivery, on_event, cls)) : 0;
}

double journal_lease(struct journal *j)
{
    return j->ops->lease ? j->ops->lease(j->s) : INFINITY;
}

int journal_wake_fd(struct journal *j)
{
    return j->ops->wake_fd ? j->ops->wake_fd(j->s) : -1;
}

void journal_wake_clear(struct journal *j)
{
    if (j->ops->wake_clear)
        j->ops->wake_clear(j->s);
}

/* ---- copies ------------------------------------------------------------------------------------ */

struct copy {
    struct journal *to;
    long *counts;
    char *err;
    size_t errlen;
};

static int copy_record(void *cls, const struct journal_record *rec)
{
    struct copy *c = cls;
    if (c->to->ops->import(c->to->s, rec, c->err, c->errlen) != 0)
        return -1;
    c->counts[rec->kind]++;
    return 0;
}

int journal_copy(struct journal *from, struct journal *to, long counts[JR_KINDS], char *err,
                 size_t errlen)
{
    struct copy c = {to, counts, err, errlen};
    memset(counts, 0, JR_KINDS * sizeof counts[0]);
    if (from->ops->export == NULL || to->ops->import_begin == NULL) {
        snprintf(err, errlen, "a journal is copied from a data directory (SQLite) into a "
                              "database (PostgreSQL)");
        return -1;
    }
    if (to->ops->import_begin(to->s, err, errlen) != 0)
        return -1;
    int ok = from->ops->export(from->s, copy_record, &c, err, errlen) == 0;
    char end[300] = "";
    if (to->ops->import_end(to->s, ok, end, sizeof end) != 0 && ok) {
        snprintf(err, errlen, "%s", end);
        ok = 0;
    }
    return ok ? 0 : -1;
}
