/*
 * writer.c -- the journal's writer thread, whatever the store (DESIGN §10: group commit).
 *
 * Intake threads queue new events, handlers queue certhook.state writes, the dispatcher
 * queues delivery states; the writer takes everything queued, writes it in one transaction
 * and commits once, and only then answers the requests and hands the accepted events to the
 * sink (the dispatcher). A batch that fails rolls back whole: nothing half-written, every
 * request in it is answered FAILED (-> 503). A batch of nothing but delivery states that are
 * done (or running) is committed without forcing it to disk: it rides to disk with the next
 * durable commit, so the success path costs one durable commit per batch of accepted events.
 * A batch that failed for a reason that may pass by itself (a database restarting, a failover)
 * keeps its delivery states for the next batch, tried after a pause; the requests are answered
 * FAILED all the same. Between batches the store prunes what is older than the retention, and
 * a shared store renews this server's lease.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "journal/store.h"

#define HOLD 0.25            /* seconds kept delivery states wait after a failed batch */
#define LOG_EVERY 5.0        /* seconds between two messages about batches failing alike */
#define INVENTORY_CACHE 4096 /* inventory entries kept in memory (journal.inv) */
#define FOLD_BATCH 256       /* events folded at once at most, while requests wait */
#define FOLD_WAIT 0.02       /* seconds the oldest event waits for its fold at most, meanwhile */
#define FOLD_RETRY 0.002     /* seconds before a shared store's fold is tried again (another
                              * server folds, or a batch in flight holds the horizon back) */
#define CATCHUP 1.0          /* seconds between a shared store's folds at least: what a server
                              * that died left unfolded, when this one journals nothing */

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

/* Whether a delivery record must be on disk before anything that follows: everything but
 * successes and "running" marks, which a crash may lose (the handler runs again). */
static int needs_durability(const struct journal_done *d)
{
    if (d->replays_upto > 0)
        return 1;
    for (size_t i = 0; i < d->n; i++)
        if (d->r[i].status != DELIVERY_DONE && d->r[i].status != DELIVERY_RUNNING)
            return 1;
    return 0;
}

static int write_done(struct journal *j, struct journal_done *d)
{
    for (size_t i = 0; i < d->n; i++)
        if (j->ops->delivery(j->s, d->seq, &d->r[i]) != 0)
            return -1;
    if (d->seq > 0 && j->ops->settle(j->s, d->seq) != 0)
        return -1;
    if (d->replays_upto > 0 && j->ops->replayed(j->s, d->replays_upto) != 0)
        return -1;
    return 0;
}

static int do_request(struct journal *j, struct journal_req *r)
{
    return r->op == JOURNAL_APPEND ? j->ops->insert(j->s, r) : j->ops->state(j->s, r);
}

/* For the tests only: while the file the environment variable var names exists, wait --
 * CERTHOOK_TEST_HOLD_COMMIT before the commit of a batch of appends (a test sees that no
 * request is answered before it: e2e serve_spec), CERTHOOK_TEST_HOLD_FOLD before the
 * projection's (a test kills certhook between the two: inventory_spec). Unset, as in
 * production: nothing. */
/* Waits on cv (on the monotonic clock, mu held) at most `wait` seconds. */
static void wait_for(pthread_cond_t *cv, pthread_mutex_t *mu, double wait)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    double at = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9 + wait;
    ts.tv_sec = (time_t)at;
    ts.tv_nsec = (long)((at - (double)ts.tv_sec) * 1e9);
    pthread_cond_timedwait(cv, mu, &ts);
}

static void test_hold(const char *var)
{
    const char *hold = getenv(var);
    while (hold != NULL && access(hold, F_OK) == 0)
        usleep(10000);
}

/* A failed write, logged once per cause, and then every LOG_EVERY while it lasts (an outage
 * fails every batch); the store's error into why. */
static void failed_in(struct journal *j, struct store *st, const char *what, char *why, size_t n)
{
    snprintf(why, n, "%s", j->ops->error(st));
    j->ops->rollback(st);
    pthread_mutex_lock(&j->mu); /* the writer's and the fold's threads */
    double now = time_mono();
    if (strcmp(why, j->last_why) != 0 || now - j->logged_at >= LOG_EVERY) {
        if (j->unlogged > 0)
            log_msg(LOG_ERROR, "journal write failed, %s rolled back: %s (and %lu more since "
                               "the last message)", what, why, j->unlogged);
        else
            log_msg(LOG_ERROR, "journal write failed, %s rolled back: %s", what, why);
        snprintf(j->last_why, sizeof j->last_why, "%s", why);
        j->logged_at = now;
        j->unlogged = 0;
    } else {
        j->unlogged++;
    }
    pthread_mutex_unlock(&j->mu);
}

static void failed(struct journal *j, const char *what, char *why, size_t n)
{
    failed_in(j, j->s, what, why, n);
}

static void set_health(struct journal *j, int ok, const char *why)
{
    if (ok)
        j->last_why[0] = '\0';
    pthread_mutex_lock(&j->mu);
    j->healthy = ok;
    if (!ok)
        snprintf(j->why, sizeof j->why, "%s", why);
    pthread_mutex_unlock(&j->mu);
}

/* Delivery states not written: kept for a later batch when the failure may pass (the requests
 * queued meanwhile go first), else freed -- the journal still has the previous ones, which are
 * redone at the next start (at least once). 1 when kept. */
static int keep_dones(struct journal *j, struct journal_done *dones)
{
    if (dones == NULL || !j->ops->transient || !j->ops->transient(j->s))
        return 0;
    struct journal_done *last = dones;
    while (last->next)
        last = last->next;
    pthread_mutex_lock(&j->mu);
    int kept = !j->stop; /* stopping: what cannot be written now is redone elsewhere */
    if (kept) {
        last->next = j->dones;
        if (j->dones == NULL)
            j->dones_tail = &last->next;
        j->dones = dones;
        j->hold_until = time_mono() + HOLD;
    }
    pthread_mutex_unlock(&j->mu);
    return kept;
}

static void free_dones(struct journal_done *dones)
{
    for (struct journal_done *d = dones, *next; d; d = next) {
        next = d->next;
        journal_done_free(d);
    }
}

/* The projections of what the log holds now (journals whose inventory is folded here): the
 * accepted events not yet folded, in log order -- each gets its context, their certificates'
 * entries are written once -- and the delivery states, in one transaction, forced to disk only
 * when a delivery state needs it (a crash loses no committed write; a power cut may lose a
 * fold, redone from the log at the next start, or a success, run again). Then the events go to
 * the sink, their contexts known. On a failure nothing is handed on: the events wait for the
 * next try, after a pause. */
static void project(struct journal *j)
{
    struct journal_done *dones = j->pdones;
    j->pdones = NULL;
    j->pdones_tail = &j->pdones;
    int durable = 0;
    int64_t upto = 0;
    char why[200];
    for (struct journal_done *d = dones; d && !durable; d = d->next)
        durable = needs_durability(d);
    double t0 = time_mono();
    int ok = j->ops->begin(j->s, durable) == 0;
    for (struct event *ev = j->unfolded; ok && ev; ev = ev->next) {
        ok = inventory_fold(j->inv, j->s, j->ops, ev) == 0 &&
             (ev->context == NULL || j->ops->context(j->s, ev->seq, ev->context) == 0);
        upto = ev->seq;
    }
    for (struct journal_done *d = dones; ok && d; d = d->next)
        ok = write_done(j, d) == 0;
    if (ok && upto > 0)
        ok = inventory_flush(j->inv, j->s, j->ops) == 0 && j->ops->folded(j->s, upto) == 0;
    if (ok && upto > 0)
        test_hold("CERTHOOK_TEST_HOLD_FOLD");
    if (ok)
        ok = j->ops->commit(j->s) == 0;
    if (ok)
        metrics_observe(M_COMMIT_SECONDS, time_mono() - t0, "fold");
    if (!ok) {
        failed(j, "a projection", why, sizeof why);
        inventory_forget(j->inv); /* the store has the entries as they were */
        set_health(j, 0, why);
        pthread_mutex_lock(&j->mu);
        j->hold_until = time_mono() + HOLD;
        pthread_mutex_unlock(&j->mu);
        if (!keep_dones(j, dones))
            free_dones(dones);
        return;
    }
    inventory_committed(j->inv);
    struct event *folded = j->unfolded;
    j->unfolded = NULL;
    j->unfolded_tail = &j->unfolded;
    if (folded != NULL) {
        if (j->sink)
            j->sink(j->sink_cls, folded);
        else
            event_free_list(folded);
    }
    __atomic_store_n(&j->nunfolded, 0, __ATOMIC_RELEASE); /* counted by the sink now */
    free_dones(dones);
}

/* project_shared: the events of the log folded now, in log order (fold_take). */
struct folding {
    struct event *head, **tail;
    size_t n;
};

static void fold_add(void *cls, struct event *ev)
{
    struct folding *f = cls;
    ev->next = NULL;
    *f->tail = ev;
    f->tail = &ev->next;
    f->n++;
}

/* The projection of a shared store (ops->fold_take): the log is folded by one server at a time,
 * whichever takes the fold -- every server's events, from the watermark to the horizon (no seq
 * a batch still in flight may hold is passed), in log order -- and this server's accepted
 * events go to the sink once the log is folded past them, with their contexts: those of its
 * fold, or those another server's wrote. The rest wait (fold_at): another server folds now, or
 * a batch in flight holds the horizon back. The delivery states went with the requests. */
static void project_shared(struct journal *j)
{
    struct folding f = {NULL, &f.head, 0};
    struct store *st = j->fs;
    int64_t from = 0, upto = 0;
    char why[200];
    double now = time_mono();
    pthread_mutex_lock(&j->mu); /* this server's events waiting: this thread's while it folds */
    struct event *waiting = j->unfolded;
    j->unfolded = NULL;
    j->unfolded_tail = &j->unfolded;
    j->catchup_at = now + CATCHUP;
    pthread_mutex_unlock(&j->mu);
    int took = j->ops->fold_take(st, &from, &upto, fold_add, &f);
    int ok = took >= 0;
    if (took == 1) {
        if (from != j->folded) /* another server folded since: its entries may have changed */
            inventory_forget(j->inv);
        for (struct event *ev = f.head; ok && ev; ev = ev->next)
            ok = inventory_fold(j->inv, st, j->ops, ev) == 0 &&
                 (ev->context == NULL || j->ops->context(st, ev->seq, ev->context) == 0);
        if (ok)
            ok = inventory_flush(j->inv, st, j->ops) == 0 &&
                 (upto == from || j->ops->folded(st, upto) == 0);
        if (ok && f.head != NULL)
            test_hold("CERTHOOK_TEST_HOLD_FOLD");
        if (ok)
            ok = j->ops->commit(st) == 0;
        if (ok) {
            metrics_observe(M_COMMIT_SECONDS, time_mono() - now, "fold");
            inventory_committed(j->inv);
            j->folded = upto;
        } else {
            inventory_forget(j->inv); /* the store has the entries as they were */
            j->folded = -1;
        }
    }
    struct event *ready = NULL, **rtail = &ready, *read = NULL, **otail = &read;
    struct event *keep = NULL, **ktail = &keep;
    size_t nready = 0;
    if (!ok) {
        failed_in(j, st, "a projection", why, sizeof why);
        set_health(j, 0, why);
        for (keep = waiting; *ktail; ktail = &(*ktail)->next) /* they wait for the next try */
            ;
        waiting = NULL;
    }
    /* this server's events folded now: their contexts from the fold (both lists in log order
     * but the batches', whose seqs follow their ids) or, folded by another server, read */
    struct event **folded = NULL;
    if (f.n > 0 && (folded = malloc(f.n * sizeof *folded)) != NULL) {
        size_t i = 0;
        for (struct event *ev = f.head; ev; ev = ev->next)
            folded[i++] = ev;
    }
    for (struct event *ev = waiting, *next; ev; ev = next) {
        next = ev->next;
        ev->next = NULL;
        if (ev->seq > upto) {
            *ktail = ev, ktail = &ev->next;
            continue;
        }
        struct event *mine = NULL;
        for (size_t lo = 0, hi = folded ? f.n : 0; lo < hi && mine == NULL;) {
            size_t mid = lo + (hi - lo) / 2;
            if (folded[mid]->seq == ev->seq)
                mine = folded[mid];
            else if (folded[mid]->seq < ev->seq)
                lo = mid + 1;
            else
                hi = mid;
        }
        if (mine != NULL || (took == 1 && ev->seq > from)) { /* folded here */
            free(ev->context);
            ev->context = mine ? mine->context : NULL;
            if (mine)
                mine->context = NULL;
            *rtail = ev, rtail = &ev->next;
        } else {
            *otail = ev, otail = &ev->next;
        }
        nready++;
    }
    free(folded);
    event_free_list(f.head);
    if (read != NULL && j->ops->contexts(st, read) != 0) {
        failed_in(j, st, "reading the contexts", why, sizeof why);
        for (struct event *ev = read; ev; ev = ev->next)
            nready--;
        *otail = keep; /* they wait for the next try */
        if (keep == NULL)
            ktail = otail;
        keep = read;
        ok = 0;
    } else {
        *rtail = read;
    }
    pthread_mutex_lock(&j->mu); /* those that wait go first again */
    if (keep != NULL) {
        *ktail = j->unfolded;
        if (j->unfolded == NULL)
            j->unfolded_tail = ktail;
        j->unfolded = keep;
        double at = time_mono() + (ok ? FOLD_RETRY : HOLD);
        if (j->fold_at < at)
            j->fold_at = at;
    }
    pthread_mutex_unlock(&j->mu);
    if (ready != NULL) {
        if (j->sink)
            j->sink(j->sink_cls, ready);
        else
            event_free_list(ready);
    }
    __atomic_sub_fetch(&j->nunfolded, nready, __ATOMIC_RELEASE); /* counted by the sink now */
}

/* The fold's thread (a shared store): folds what this server journaled -- a fold does not hold
 * the batches back: its own connection -- once FOLD_BATCH events or FOLD_WAIT seconds waited
 * (a fold costs the database a transaction of its own: measured, folding each batch at once
 * cost more CPU per event than the fold itself), after a pause when it could not (fold_at),
 * and every CATCHUP what others left. At the stop (after the writer's), one
 * last try; what is left is folded by another server, or at the next start. */
static void *fold_main(void *arg)
{
    struct journal *j = arg;
    pthread_mutex_lock(&j->mu);
    for (;;) {
        double now = time_mono();
        int stop = j->fstop;
        double ready = j->unfolded == NULL                   ? INFINITY
                       : j->nunfolded >= FOLD_BATCH || stop ? now
                                                            : j->unfolded_since + FOLD_WAIT;
        int due = now >= j->fold_at && (now >= ready || now >= j->catchup_at);
        if (due || stop) {
            pthread_mutex_unlock(&j->mu);
            if (due || j->unfolded != NULL)
                project_shared(j);
            pthread_mutex_lock(&j->mu);
            if (stop)
                break;
            continue;
        }
        double wait = fmax(j->fold_at, fmin(ready, j->catchup_at)) - now;
        wait_for(&j->fcv, &j->mu, wait);
    }
    event_free_list(j->unfolded); /* journaled: folded elsewhere, or at the next start */
    j->unfolded = NULL;
    j->unfolded_tail = &j->unfolded;
    __atomic_store_n(&j->nunfolded, 0, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&j->mu);
    return NULL;
}

/* Writes one batch: the requests in one transaction -- the one the 202 waits for -- and
 * answers every request; the delivery states with it, or (a journal whose inventory is folded
 * here) in a projection's later (project: writer_main says when). */
static void commit_batch(struct journal *j, struct journal_req *reqs, struct journal_done *dones)
{
    int folds = j->inv != NULL; /* the accepted events wait for the fold */
    /* the delivery states go with the fold (a store of one server), or with the requests (a
     * shared store: the fold may be another server's) */
    int two = folds && j->ops->fold_take == NULL;
    if (two && dones != NULL) {
        *j->pdones_tail = dones;
        while (*j->pdones_tail)
            j->pdones_tail = &(*j->pdones_tail)->next;
        dones = NULL;
    }
    int durable = reqs != NULL;
    for (struct journal_done *d = dones; d && !durable && !two; d = d->next)
        durable = needs_durability(d);
    int ok = 1;
    char why[200] = "";
    if (reqs != NULL || dones != NULL) {
        double t0 = time_mono();
        ok = j->ops->begin(j->s, durable) == 0;
        for (struct journal_req *r = reqs; ok && r; r = r->next)
            ok = do_request(j, r) == 0;
        for (struct journal_done *d = dones; ok && d; d = d->next)
            ok = write_done(j, d) == 0;
        if (ok && reqs != NULL)
            test_hold("CERTHOOK_TEST_HOLD_COMMIT");
        if (ok)
            ok = j->ops->commit(j->s) == 0;
        if (ok)
            metrics_observe(M_COMMIT_SECONDS, time_mono() - t0, reqs != NULL ? "ack" : "fold");
        if (!ok)
            failed(j, "batch", why, sizeof why);
        set_health(j, ok, why);
    }

    /* the accepted events leave their requests before these are answered (a request may be
     * freed then): to the sink now, or once folded */
    struct event *accepted = NULL, **tail = &accepted;
    for (struct journal_req *r = reqs; r; r = r->next) {
        if (!ok) {
            r->result = JOURNAL_FAILED;
            snprintf(r->error, sizeof r->error, "%s", why);
        } else if (r->op == JOURNAL_APPEND && r->result == JOURNAL_ACCEPTED) {
            *tail = r->ev;
            tail = &r->ev->next;
            r->ev->next = NULL;
            r->ev = NULL;
        }
    }
    if (folds && accepted != NULL) {
        size_t n = 0;
        for (struct event *ev = accepted; ev; ev = ev->next)
            n++;
        __atomic_add_fetch(&j->nunfolded, n, __ATOMIC_RELEASE); /* before the 202s */
        pthread_mutex_lock(&j->mu); /* (the fold's thread's too, with a shared store) */
        if (j->unfolded == NULL)
            j->unfolded_since = time_mono();
        *j->unfolded_tail = accepted;
        j->unfolded_tail = tail;
        pthread_cond_signal(&j->fcv);
        pthread_mutex_unlock(&j->mu);
        accepted = NULL;
    }
    if (accepted != NULL) {
        if (j->sink)
            j->sink(j->sink_cls, accepted);
        else
            event_free_list(accepted);
    }
    for (struct journal_req *r = reqs, *next; r; r = next) {
        next = r->next;
        r->done(r);
    }
    if (!ok && keep_dones(j, dones))
        return;
    free_dones(dones);
}

/* Whether to fold now what waits (a journal whose inventory is folded here): when no request
 * waits -- the 202s come first -- or when enough waited, in number or in time (dispatching
 * waits for it); after a failure, once its pause is over. */
static int fold_due(struct journal *j, int stopping)
{
    double now = time_mono();
    if (j->inv == NULL || j->fs != NULL || (j->unfolded == NULL && j->pdones == NULL) ||
        now < j->hold_until)
        return 0;
    if (stopping || j->nunfolded >= FOLD_BATCH || now - j->unfolded_since >= FOLD_WAIT)
        return 1;
    pthread_mutex_lock(&j->mu);
    int waiting = j->reqs != NULL;
    pthread_mutex_unlock(&j->mu);
    return !waiting;
}

/* A shared store's lease, when it is due. A lost one: the events handed to the sink before, and
 * those waiting for their fold, are no longer this server's (another may hold them now); then
 * the store registers anew. */
static void renew(struct journal *j, double *next_renew)
{
    double next = 1;
    if (j->ops->renew == NULL || time_mono() < *next_renew)
        return;
    if (j->ops->renew(j->s, &next) == 1) {
        if (j->sink)
            j->sink(j->sink_cls, NULL);
        pthread_mutex_lock(&j->mu);
        event_free_list(j->unfolded); /* not folded yet: whoever claims them runs them */
        j->unfolded = NULL;
        j->unfolded_tail = &j->unfolded;
        __atomic_store_n(&j->nunfolded, 0, __ATOMIC_RELEASE);
        pthread_mutex_unlock(&j->mu);
        j->ops->renew(j->s, &next);
    }
    *next_renew = time_mono() + next;
}

static void *writer_main(void *arg)
{
    struct journal *j = arg;
    double interval = j->retention / 4 < 600 ? j->retention / 4 : 600;
    if (interval < 0.25)
        interval = 0.25;
    double next_prune = time_mono() + 1, next_renew = 0;
    for (;;) {
        renew(j, &next_renew);
        pthread_mutex_lock(&j->mu);
        while (!j->reqs && !j->stop) {
            double now = time_mono(), wait = next_prune - now;
            if (j->ops->renew && next_renew - now < wait)
                wait = next_renew - now;
            if (j->dones && j->hold_until - now < wait)
                wait = j->hold_until - now;
            if (!j->fs && (j->unfolded || j->pdones) && j->hold_until - now < wait)
                wait = j->hold_until - now;
            if (wait <= 0)
                break;
            wait_for(&j->cv, &j->mu, wait);
        }
        struct journal_req *reqs = j->reqs;
        struct journal_done *dones = NULL;
        int stop = j->stop;
        j->reqs = NULL;
        j->reqs_tail = &j->reqs;
        if (reqs || stop || time_mono() >= j->hold_until) { /* kept ones wait out their pause */
            dones = j->dones;
            j->dones = NULL;
            j->dones_tail = &j->dones;
        }
        pthread_mutex_unlock(&j->mu);
        size_t n = 0;
        for (struct journal_req *r = reqs; r; r = r->next)
            n++;
        if (reqs != NULL || dones != NULL)
            commit_batch(j, reqs, dones);
        if (fold_due(j, stop))
            project(j);
        if (stop && reqs == NULL && dones == NULL) {
            if (!j->fs && (j->unfolded != NULL || j->pdones != NULL)) { /* the last fold failed */
                free_dones(j->pdones);
                j->pdones = NULL;
                event_free_list(j->unfolded); /* journaled: folded at the next start */
                j->unfolded = NULL;
                __atomic_store_n(&j->nunfolded, 0, __ATOMIC_RELEASE);
            }
            return NULL;
        }
        if (n > 0) {
            pthread_mutex_lock(&j->mu);
            j->queued -= n;
            pthread_mutex_unlock(&j->mu);
        }
        if (time_mono() >= next_prune) {
            j->ops->prune(j->s, j->retention);
            next_prune = time_mono() + interval;
        }
    }
}

/* journal_start: an event journaled but not folded when the last writer stopped */
static void add_unfolded(void *cls, struct event *ev)
{
    struct journal *j = cls;
    ev->next = NULL;
    *j->unfolded_tail = ev;
    j->unfolded_tail = &ev->next;
}

int journal_start(struct journal *j, journal_sink sink, void *cls)
{
    j->sink = sink;
    j->sink_cls = cls;
    j->unfolded_tail = &j->unfolded;
    j->folded = -1;
    j->fold_at = j->catchup_at = 0; /* a shared store's: the first fold catches up */
    if (j->exclusive && j->ops->entry_get != NULL) { /* a server folds: first what is behind */
        if (j->inv == NULL && (j->inv = inventory_new(INVENTORY_CACHE)) == NULL)
            return -1;
        if (j->ops->fold_take == NULL && j->ops->unfolded(j->s, add_unfolded, j) != 0)
            return -1;
        if (j->unfolded != NULL) {
            journal_sink keep = j->sink;
            j->sink = NULL; /* dispatched by the dispatcher's start, from the journal */
            project(j);
            j->sink = keep;
            if (j->unfolded != NULL)
                return -1;
        }
    }
    if (j->exclusive && j->ops->fold_take != NULL) { /* a shared store: the fold's thread */
        if (j->fs == NULL && (j->fs = j->ops->fold_store(j->s)) == NULL)
            return -1;
        j->fstop = 0;
        if (pthread_create(&j->fthread, NULL, fold_main, j) != 0)
            return -1;
        pthread_setname_np(j->fthread, "journal-fold");
        j->fstarted = 1;
    }
    if (j->ops->writer_start(j->s) != 0 || pthread_create(&j->thread, NULL, writer_main, j) != 0)
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
    j->ops->writer_stop(j->s);
    if (j->fstarted) { /* after the writer: its last events are folded */
        pthread_mutex_lock(&j->mu);
        j->fstop = 1;
        pthread_cond_signal(&j->fcv);
        pthread_mutex_unlock(&j->mu);
        pthread_join(j->fthread, NULL);
        j->fstarted = 0;
    }
}

void journal_append(struct journal *j, struct journal_req *r)
{
    struct journal_req *last = r;
    size_t n = 1;
    for (r->result = JOURNAL_PENDING; last->next; n++) {
        last = last->next;
        last->result = JOURNAL_PENDING;
    }
    pthread_mutex_lock(&j->mu);
    *j->reqs_tail = r;
    j->reqs_tail = &last->next;
    j->queued += n;
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
    r->next = NULL;
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

size_t journal_waiting(struct journal *j)
{
    return __atomic_load_n(&j->nunfolded, __ATOMIC_ACQUIRE);
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
