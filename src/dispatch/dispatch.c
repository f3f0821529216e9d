/*
 * dispatch.c -- the dispatcher: deliveries in flight, retries, replays (DESIGN §4, §9).
 *
 * Runs on the main thread, owns the current handler generation (new ones are built by
 * reload.c on a thread of their own and swapped in between two turns) and one epoll loop that
 * drives everything that can wait: new events from the journal writer (dispatch_enqueue),
 * certhook.http transfers (a curl multi handle, api_http.c), certhook.state writes (the
 * journal writer answers through a completion list), the retry heap, replay requests left in
 * the journal by the CLI, and signals. Every matching handler of an event is one delivery:
 * a coroutine (run.c) that runs until it returns, fails, or yields to wait; up to
 * delivery.concurrency deliveries are in flight at once. A failure is retried with
 * exponential backoff and full jitter until delivery.max_attempts, then dead. Delivery
 * states go to the journal writer once per round: a delivery that finishes within the round
 * it started costs one write; one still waiting is written as running.
 *
 * A shared journal (journal.h): events this server accepted come from the writer as always;
 * those of servers that died or stopped are claimed (journal_claim) once a second, and at once
 * when the journal says another server made some claimable. Nothing starts unless this server's
 * lease holds for longer than delivery.timeout; a lease that was lost drops everything held
 * here (the journal has it: whoever claims it runs it).
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <lauxlib.h>

#include "dispatch/dispatch.h"

#define RECOVER_CHUNK 256  /* events read from the journal at a time */
#define ROUND 128          /* deliveries started before states are flushed */
#define REPLAY_POLL 1.0    /* seconds between looks for replay requests and claimable work */
#define LEASE_POLL 0.1     /* seconds between looks at a lease too short to start anything */
#define DEBOUNCE 0.1 /* seconds of quiet after a file change before reloading */
#define DEBOUNCE_MAX 1.0

/* An event shared by the deliveries it started; freed with the last of them. */
struct event_ref {
    struct event *ev;
    int refs;
};

/* One attempt of one delivery, from its start until it returns, fails or is stopped. */
struct delivery {
    struct delivery *prev, *next; /* the dispatcher's in-flight list */
    struct delivery *next_ready;  /* a wait ended: resume it */
    struct dispatch *d;
    struct generation *gen; /* the generation that started it, held until it ends */
    struct event_ref *ev;
    const struct handler *h;
    lua_State *co;
    int co_ref;
    struct delivery_ctx ctx;
    struct delivery_result r; /* its latest state */
    int dirty;                /* r not yet handed to the journal */
    double m0;
    struct wait *wait;        /* what it waits for through the API; NULL: nothing */
};

/* A delivery waiting for its next attempt: the retry heap's entries. */
struct scheduled {
    int64_t seq;
    double due;      /* time_mono() of the next attempt */
    double first_at; /* wall clock, as journaled */
    int attempts;    /* made so far */
    int crashes;     /* deaths of the process while it ran */
    char handler[];
};

struct dispatch {
    struct generation *gen;
    struct journal *j;
    const struct delivery_cfg *cfg;
    struct loop *loop;
    struct loop_fd wakefd, sigfd, watchfd; /* eventfd, signalfd, inotify */
    struct loop_fd journalfd;              /* the journal's wake-ups (-1: none) */
    int stop_sig, hup;                     /* what sigfd told */
    struct http_multi *http;
    struct pollers *pollers;       /* NULL until one is configured */
    double poll_next;              /* time_mono() when a poller has something due */
    pthread_mutex_t mu; /* guards head/tail/backlog and woken */
    struct event *head, **tail;
    size_t backlog;
    struct delivery *woken;        /* waits that ended on another thread; guarded by mu */
    int disowned;                  /* the journal took back what it handed over; guarded by mu */
    int claim_due;                 /* look for claimable work */
    struct delivery *ready;        /* waits that ended */
    struct delivery *active;       /* in flight */
    size_t nactive;
    struct scheduled **heap; /* min-heap on due */
    size_t nheap, capheap;
    int64_t recover_after, recover_upto; /* never-dispatched events still to read */
    struct event *recovered;
    struct journal_done *out, **out_tail; /* delivery states not yet handed to the writer */
    int64_t replays_seen;
    double next_poll;
    unsigned short rng[3];
    void (*on_stop)(void *);
    void *on_stop_cls;
    void (*on_tick)(void *);
    void *on_tick_cls;
    struct reloader *reloader;        /* NULL: reloads are not available */
    struct watch *watch;
    double reload_due, reload_latest; /* a file change waits for quiet, but not forever */
    struct dispatch_status status;    /* guarded by mu */
    struct stall *stall;              /* the slot: what runs now (NULL: none) */
    struct stall_slot crashed;      /* what ran when the previous process died */
    int has_crashed;
    int interrupted;                  /* deliveries found running at the start */
};

/* ---- setup ------------------------------------------------------------------------------------ */

static void wake(struct dispatch *d);

/* The loop's callbacks: the dispatcher was woken (new events, answers of the writer, reload
 * requests: the loop turn looks at all of them), a signal arrived, the handlers changed. */
static void on_wake(struct loop_fd *w, uint32_t events)
{
    uint64_t count;
    (void)events;
    if (read(w->fd, &count, sizeof count) < 0 && errno != EAGAIN)
        log_msg(LOG_ERROR, "eventfd read: %s", strerror(errno));
}

static void on_signal(struct loop_fd *w, uint32_t events)
{
    struct dispatch *d = (struct dispatch *)((char *)w - offsetof(struct dispatch, sigfd));
    struct signalfd_siginfo si;
    (void)events;
    while (read(w->fd, &si, sizeof si) == (ssize_t)sizeof si) {
        if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT)
            d->stop_sig = d->stop_sig ? d->stop_sig : (int)si.ssi_signo;
        else if (si.ssi_signo == SIGHUP)
            d->hup = 1;
    }
}

static void on_watch(struct loop_fd *w, uint32_t events)
{
    struct dispatch *d = (struct dispatch *)((char *)w - offsetof(struct dispatch, watchfd));
    (void)events;
    if (watch_changed(d->watch) && !d->stop_sig) {
        double at = time_mono();
        if (d->reload_due == 0)
            d->reload_latest = at + DEBOUNCE_MAX;
        d->reload_due = at + DEBOUNCE;
    }
}

/* Another server made work claimable, or asked for a replay: look now. */
static void on_journal(struct loop_fd *w, uint32_t events)
{
    struct dispatch *d = (struct dispatch *)((char *)w - offsetof(struct dispatch, journalfd));
    (void)events;
    journal_wake_clear(d->j);
    d->next_poll = 0;
}

struct dispatch *dispatch_new(struct journal *j, const struct delivery_cfg *cfg,
                              int64_t recover_upto)
{
    struct dispatch *d = calloc(1, sizeof *d);
    if (d == NULL)
        return NULL;
    d->wakefd = (struct loop_fd){eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK), on_wake};
    d->sigfd.fd = d->watchfd.fd = d->journalfd.fd = -1;
    d->loop = loop_new();
    d->http = d->loop ? http_multi_new(d->loop, (long)cfg->per_host, cfg->concurrency) : NULL;
    if (d->wakefd.fd < 0 || d->http == NULL || loop_add(d->loop, &d->wakefd, EPOLLIN) != 0) {
        dispatch_free(d);
        return NULL;
    }
    d->j = j;
    d->cfg = cfg;
    d->recover_upto = recover_upto;
    d->tail = &d->head;
    d->out_tail = &d->out;
    uint64_t seed = (uint64_t)(time_now() * 1e6) ^ ((uint64_t)getpid() << 32);
    memcpy(d->rng, &seed, sizeof d->rng);
    pthread_mutex_init(&d->mu, NULL);
    return d;
}

/* Drops a reference to g; the last one closes its state, whose finalizers the limits hook
 * cannot stop (Lua runs them with hooks off): under the stall detector, seq -1 in the slot. */
static void drop_generation(struct dispatch *d, struct generation *g)
{
    if (g == NULL)
        return;
    if (g->refs > 1) {
        generation_release(g);
        return;
    }
    char what[64];
    snprintf(what, sizeof what, "generation %u", g->number);
    stall_begin(d->stall, -1, NULL, what, 0, 0);
    generation_release(g);
    stall_end(d->stall);
}

void dispatch_set_generation(struct dispatch *d, struct generation *g)
{
    struct generation *old = d->gen;
    d->gen = g; /* takes the caller's reference */
    pthread_mutex_lock(&d->mu);
    d->status.generation = g->number;
    d->status.handlers = g->n;
    d->status.files = g->nfiles;
    pthread_mutex_unlock(&d->mu);
    drop_generation(d, old); /* freed now, or when its last delivery ends */
}

void dispatch_set_config(struct dispatch *d, const struct delivery_cfg *cfg)
{
    d->cfg = cfg;
    http_multi_limits(d->http, (long)cfg->per_host, cfg->concurrency);
}

static void wake_cb(void *d);

void dispatch_set_pollers(struct dispatch *d, const struct poller_def *defs, size_t n)
{
    if (d->pollers == NULL && n > 0) {
        struct pollers *ps = pollers_new(d->j, d->http, wake_cb, d);
        if (ps == NULL) {
            log_msg(LOG_ERROR, "cannot start the pollers: out of memory");
            return;
        }
        pthread_mutex_lock(&d->mu);
        d->pollers = ps;
        pthread_mutex_unlock(&d->mu);
    }
    if (d->pollers != NULL)
        pollers_configure(d->pollers, defs, n);
    d->poll_next = 0;
}

void dispatch_pollers_json(struct dispatch *d, struct buf *b)
{
    pthread_mutex_lock(&d->mu);
    struct pollers *ps = d->pollers; /* set once, freed only with the dispatcher */
    pthread_mutex_unlock(&d->mu);
    pollers_json(ps, b);
}

static void wake_cb(void *d)
{
    wake(d);
}

int dispatch_on_reload(struct dispatch *d, const struct reload_ops *ops, void *cls)
{
    d->reloader = reload_new(ops, cls, wake_cb, d);
    return d->reloader ? 0 : -1;
}

int dispatch_watch(struct dispatch *d, const char *dir, char *err, size_t errlen)
{
    struct watch *w = watch_new(dir, err, errlen);
    if (w == NULL)
        return -1;
    if (d->watch) {
        loop_del(d->loop, &d->watchfd);
        watch_free(d->watch);
    }
    d->watch = w;
    d->watchfd = (struct loop_fd){watch_fd(w), on_watch};
    loop_add(d->loop, &d->watchfd, EPOLLIN);
    return 0;
}

void dispatch_load_failed(struct dispatch *d, const char *err)
{
    if (d->reloader)
        reload_failed(d->reloader, err);
}

void dispatch_set_stalled(struct dispatch *d, const char *what)
{
    pthread_mutex_lock(&d->mu);
    snprintf(d->status.stalled, sizeof d->status.stalled, "%s", what);
    pthread_mutex_unlock(&d->mu);
}

void dispatch_get_status(struct dispatch *d, struct dispatch_status *st)
{
    pthread_mutex_lock(&d->mu);
    *st = d->status;
    st->backlog = d->backlog;
    pthread_mutex_unlock(&d->mu);
    if (d->reloader)
        reload_status(d->reloader, st);
}

void dispatch_request_reload(struct dispatch *d, struct reload_wait *w)
{
    if (d->reloader == NULL)
        w->done(w, -1, 0, "reloading is not available");
    else
        reload_request(d->reloader, w);
}

void dispatch_on_tick(struct dispatch *d, void (*fn)(void *), void *cls)
{
    d->on_tick = fn;
    d->on_tick_cls = cls;
}

void dispatch_on_stop(struct dispatch *d, void (*fn)(void *), void *cls)
{
    d->on_stop = fn;
    d->on_stop_cls = cls;
}

void dispatch_free(struct dispatch *d)
{
    if (d == NULL)
        return;
    event_free_list(d->head);
    event_free_list(d->recovered);
    for (size_t i = 0; i < d->nheap; i++)
        free(d->heap[i]); /* "retrying" / "pending" in the journal */
    free(d->heap);
    for (struct journal_done *o = d->out, *next; o; o = next) {
        next = o->next;
        journal_done_free(o);
    }
    reload_free(d->reloader); /* before the generation: one being built may be applied */
    watch_free(d->watch);
    drop_generation(d, d->gen);
    pollers_free(d->pollers); /* its transfers first */
    http_multi_free(d->http);
    if (d->wakefd.fd >= 0)
        close(d->wakefd.fd);
    loop_free(d->loop);
    pthread_mutex_destroy(&d->mu);
    free(d);
}

static void wake(struct dispatch *d)
{
    uint64_t one = 1;
    if (write(d->wakefd.fd, &one, sizeof one) < 0 && errno != EAGAIN)
        log_msg(LOG_ERROR, "dispatcher wake-up failed: %s", strerror(errno));
}

void dispatch_enqueue(void *cls, struct event *list)
{
    struct dispatch *d = cls;
    if (list == NULL) { /* this server lost its lease: what the writer handed over is not ours */
        pthread_mutex_lock(&d->mu);
        event_free_list(d->head);
        d->head = NULL;
        d->tail = &d->head;
        d->backlog = 0;
        d->disowned = 1;
        pthread_mutex_unlock(&d->mu);
        wake(d);
        return;
    }
    struct event *last = list;
    size_t n = 1;
    for (; last->next; last = last->next)
        n++;
    pthread_mutex_lock(&d->mu);
    int was_empty = d->head == NULL;
    *d->tail = list;
    d->tail = &last->next;
    d->backlog += n;
    pthread_mutex_unlock(&d->mu);
    if (was_empty)
        wake(d);
}

size_t dispatch_backlog(struct dispatch *d)
{
    pthread_mutex_lock(&d->mu);
    size_t n = d->backlog;
    pthread_mutex_unlock(&d->mu);
    return n;
}

/* ---- the retry heap ---------------------------------------------------------------------------- */

static void heap_swap(struct dispatch *d, size_t a, size_t b)
{
    struct scheduled *t = d->heap[a];
    d->heap[a] = d->heap[b];
    d->heap[b] = t;
}

static void heap_push(struct dispatch *d, int64_t seq, const char *handler, int attempts,
                      int crashes, double due, double first_at)
{
    if (d->nheap == d->capheap) {
        size_t cap = d->capheap ? d->capheap * 2 : 64;
        struct scheduled **h = realloc(d->heap, cap * sizeof *h);
        if (h == NULL)
            goto oom;
        d->heap = h;
        d->capheap = cap;
    }
    size_t n = strlen(handler) + 1;
    struct scheduled *s = malloc(sizeof *s + n);
    if (s == NULL)
        goto oom;
    *s = (struct scheduled){seq, due, first_at, attempts, crashes};
    memcpy(s->handler, handler, n);
    size_t i = d->nheap++;
    d->heap[i] = s;
    while (i > 0 && d->heap[(i - 1) / 2]->due > d->heap[i]->due) {
        heap_swap(d, i, (i - 1) / 2);
        i = (i - 1) / 2;
    }
    return;
oom: /* the journal keeps it "retrying": it runs again at the next start */
    log_msg(LOG_ERROR, "out of memory scheduling %s of event #%lld", handler, (long long)seq);
}

static struct scheduled *heap_pop(struct dispatch *d)
{
    struct scheduled *top = d->heap[0];
    d->heap[0] = d->heap[--d->nheap];
    for (size_t i = 0;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < d->nheap && d->heap[l]->due < d->heap[m]->due)
            m = l;
        if (r < d->nheap && d->heap[r]->due < d->heap[m]->due)
            m = r;
        if (m == i)
            break;
        heap_swap(d, i, m);
        i = m;
    }
    return top;
}

/* A delivery of seq to handler is scheduled or in flight. */
static int busy_with(struct dispatch *d, int64_t seq, const char *handler)
{
    for (size_t i = 0; i < d->nheap; i++)
        if (d->heap[i]->seq == seq && strcmp(d->heap[i]->handler, handler) == 0)
            return 1;
    for (struct delivery *dl = d->active; dl; dl = dl->next)
        if (dl->ev->ev->seq == seq && strcmp(dl->h->name, handler) == 0)
            return 1;
    return 0;
}

/* ---- journal states ----------------------------------------------------------------------------- */

static void emit(struct dispatch *d, int64_t seq, const struct delivery_result *r)
{
    struct journal_done *done = journal_done_new(seq, r ? 1 : 0);
    if (done == NULL) {
        log_msg(LOG_ERROR, "out of memory recording a delivery of event #%lld", (long long)seq);
        return;
    }
    if (r) {
        done->n = 1;
        done->r[0] = *r;
        done->r[0].handler = strdup(r->handler);
        done->r[0].error = r->error ? strdup(r->error) : NULL;
        done->r[0].traceback = r->traceback ? strdup(r->traceback) : NULL;
    }
    *d->out_tail = done;
    d->out_tail = &done->next;
}

/* A delivery with no attempt left, whatever ended it: one line says so. */
static void log_dead(const char *event_id, const struct delivery_result *r)
{
    struct log_line l;
    log_begin(&l, LOG_ERROR, "delivery dead: it is not retried any more; after the fix, "
                             "certhook replay --dead (or replay EVENT --handler HANDLER) runs it "
                             "again");
    log_str(&l, "event", event_id);
    log_str(&l, "handler", r->handler);
    log_num(&l, "attempts", r->attempts);
    log_str(&l, "error", r->error);
    log_end(&l);
}

/* Hands the round's delivery states to the journal writer: those that ended, and "running"
 * for deliveries that started and still wait. */
static void flush(struct dispatch *d)
{
    for (struct delivery *dl = d->active; dl; dl = dl->next) {
        if (dl->dirty) {
            emit(d, dl->ev->ev->seq, &dl->r);
            dl->dirty = 0;
        }
    }
    if (d->out != NULL)
        journal_finish(d->j, d->out);
    d->out = NULL;
    d->out_tail = &d->out;
}

/* ---- deliveries ----------------------------------------------------------------------------------- */

static void event_release(struct event_ref *er)
{
    if (--er->refs == 0) {
        event_free(er->ev);
        free(er);
    }
}

static int slots_free(struct dispatch *d)
{
    /* a delivery whose transfer waits for its host (delivery.per_host) holds no slot, so a
     * slow host cannot starve the others */
    return d->nactive - http_multi_parked(d->http) < d->cfg->concurrency;
}

/* The attempt ended (error NULL: it succeeded). Decides done / retrying / dead, records it
 * and frees the delivery. */
static void finish(struct dispatch *d, struct delivery *dl, char *error, char *traceback)
{
    struct delivery_result *r = &dl->r;
    lua_State *L = dl->gen->L;
    r->duration = time_mono() - dl->m0;
    r->error = error;
    r->traceback = traceback;
    if (dl->wait) { /* stopped while it waited: a transfer, a program */
        dl->wait->cancel(dl->wait);
        dl->wait = NULL;
    }
    if (dl->ctx.killed != RUN_STOP)
        metrics_observe(M_HANDLER_SECONDS, r->duration, r->handler);
    if (dl->ctx.killed == RUN_STOP) { /* not a failed attempt: runs again at the next start */
        r->status = DELIVERY_PENDING;
        r->attempts--;
        r->next_at = time_now();
        free(r->error);
        free(r->traceback);
        r->error = r->traceback = NULL;
    } else if (error == NULL) {
        r->status = DELIVERY_DONE;
        metrics_add(M_DELIVERIES, 1, r->handler, "success");
    } else {
        double delay = retry_delay(d->cfg, r->attempts, r->crashes, erand48(d->rng));
        run_log_failure(&dl->ctx, r->attempts, error, traceback, delay);
        r->status = delay < 0 ? DELIVERY_DEAD : DELIVERY_RETRYING;
        if (delay < 0) {
            log_dead(dl->ctx.event_id, r);
        } else {
            r->next_at = time_now() + delay; /* journaled: for people and the next start */
            heap_push(d, dl->ev->ev->seq, r->handler, r->attempts, r->crashes,
                      time_mono() + delay, r->first_at);
        }
        metrics_add(M_DELIVERIES, 1, r->handler,
                    r->status == DELIVERY_DEAD ? "dead" : "failure");
    }
    emit(d, dl->ev->ev->seq, r);
    stall_begin(d->stall, dl->ev->ev->seq, dl->ctx.event_id, r->handler, r->attempts, r->first_at);
    run_free(L, dl->co, dl->co_ref); /* runs its __close handlers */
    stall_end(d->stall);
    if (dl->ctx.killed == RUN_MEMORY)
        lua_gc(L, LUA_GCCOLLECT); /* give the memory back to the others at once */
    if (dl->prev)
        dl->prev->next = dl->next;
    else
        d->active = dl->next;
    if (dl->next)
        dl->next->prev = dl->prev;
    d->nactive--;
    free(r->handler);
    free(r->error);
    free(r->traceback);
    event_release(dl->ev);
    drop_generation(d, dl->gen); /* may close an old generation: after everything that used it */
    free(dl);
}

/* Resumes a delivery (nargs values on its coroutine) and handles what it did. */
static void step(struct dispatch *d, struct delivery *dl, int nargs)
{
    char *error, *traceback;
    stall_begin(d->stall, dl->ev->ev->seq, dl->ctx.event_id, dl->r.handler, dl->r.attempts,
                  dl->r.first_at);
    enum run_status st = run_resume(dl->gen->L, dl->co, nargs, &dl->ctx, &error, &traceback);
    stall_end(d->stall);
    if (st == RUN_DONE)
        finish(d, dl, NULL, NULL);
    else if (st == RUN_FAILED)
        finish(d, dl, error, traceback);
}

/* The ctx of a delivery waits for w (certhook.exec) / w is over: resume it. */
static void delivery_wait(struct delivery_ctx *ctx, struct wait *w)
{
    struct delivery *dl = (struct delivery *)((char *)ctx - offsetof(struct delivery, ctx));
    dl->wait = w;
    ctx->waiting = 1;
}

static void delivery_wake(struct delivery_ctx *ctx)
{
    struct delivery *dl = (struct delivery *)((char *)ctx - offsetof(struct delivery, ctx));
    dl->wait = NULL;
    dl->next_ready = dl->d->ready;
    dl->d->ready = dl;
}

/* From another thread (the journal writer, for certhook.state). */
static void delivery_wake_async(struct delivery_ctx *ctx)
{
    struct delivery *dl = (struct delivery *)((char *)ctx - offsetof(struct delivery, ctx));
    struct dispatch *d = dl->d;
    pthread_mutex_lock(&d->mu);
    dl->next_ready = d->woken;
    d->woken = dl;
    pthread_mutex_unlock(&d->mu);
    wake(d);
}

/* Starts one attempt of handler h with the event value at idx of the generation's state;
 * prior: its earlier attempts (NULL: none). */
static void start(struct dispatch *d, struct event_ref *er, const struct handler *h, int idx,
                  const struct scheduled *prior)
{
    struct event *ev = er->ev;
    struct delivery *dl = calloc(1, sizeof *dl);
    if (dl == NULL || (dl->r.handler = strdup(h->name)) == NULL) {
        free(dl);
        log_msg(LOG_ERROR, "out of memory starting %s for %s", h->name, ev->id);
        return;
    }
    er->refs++;
    dl->d = d;
    dl->gen = d->gen;
    generation_hold(dl->gen);
    dl->ev = er;
    dl->h = h;
    dl->m0 = time_mono();
    dl->r.status = DELIVERY_RUNNING;
    dl->r.attempts = (prior ? prior->attempts : 0) + 1;
    dl->r.crashes = prior ? prior->crashes : 0;
    dl->r.generation = d->gen->number;
    dl->r.started_at = time_now();
    dl->r.first_at = prior && prior->first_at > 0 ? prior->first_at : dl->r.started_at;
    dl->dirty = 1;
    dl->ctx = (struct delivery_ctx){.event_id = ev->id, .event_type = ev->type,
                                    .hostname = ev->hostname, .handler = h->name,
                                    .generation = d->gen->number, .gen = d->gen,
                                    .deadline = dl->m0 + d->cfg->timeout, .loop = d->loop,
                                    .http = d->http, .wait = delivery_wait,
                                    .wake = delivery_wake, .wake_async = delivery_wake_async};
    dl->co = run_new(d->gen->L, h, idx, &dl->co_ref);
    dl->next = d->active;
    if (d->active)
        d->active->prev = dl;
    d->active = dl;
    d->nactive++;
    step(d, dl, 1);
}

static int matches(const struct handler *h, const struct event *ev)
{
    return generation_match(&(struct generation){.h = (struct handler *)h, .n = 1}, ev->type,
                            ev->provider_type, &h) == 1;
}

/* Starts attempts of the given handlers for ev; prior: the earlier attempts of a retry (n is
 * 1 then), NULL for a new event. Takes ev. */
static void start_event(struct dispatch *d, struct event *ev, const struct handler **hs,
                        size_t n, const struct scheduled *prior)
{
    lua_State *L = d->gen->L;
    int top = lua_gettop(L);
    struct event_ref *er = malloc(sizeof *er);
    if (er == NULL) {
        event_free(ev);
        return;
    }
    er->ev = ev;
    er->refs = 1; /* ours, until every delivery started */
    if (n == 0) {
        emit(d, ev->seq, NULL); /* nothing matches: the event is finished */
    } else if (run_push_event(L, ev) == 0) {
        int event = lua_gettop(L);
        for (size_t i = 0; i < n; i++) {
            int arg = run_event_arg(L, event, i, n);
            start(d, er, hs[i], arg, prior);
            lua_settop(L, event);
        }
    } else {
        emit(d, ev->seq, NULL); /* logged; it cannot be dispatched, retrying would not help */
    }
    lua_settop(L, top);
    event_release(er);
}

/* Handler names (a replay's: those not to run). */
struct names {
    char **v;
    size_t n;
};

static void add_name(void *cls, const struct journal_delivery *row)
{
    struct names *ns = cls;
    char **v = realloc(ns->v, (ns->n + 1) * sizeof *v);
    if (v != NULL && (v[ns->n] = strdup(row->handler)) != NULL)
        ns->n++;
    if (v != NULL)
        ns->v = v;
}

static int has_name(const struct names *ns, const char *name)
{
    for (size_t i = 0; i < ns->n; i++)
        if (strcmp(ns->v[i], name) == 0)
            return 1;
    return 0;
}

enum { FRESH, RECOVERED, REPLAYED }; /* how an event comes to dispatch_fresh */

/* Whether handler h should start on ev, which comes `how`. One read back from the journal or
 * replayed may have deliveries scheduled or in flight already; one read back may also be that
 * of the delivery that ran when the previous process died, decided at the start (retrying or
 * dead) though its event still reads as never dispatched. A replay runs only the handler it
 * names (only), else none of those that succeeded (done). */
static int should_start(struct dispatch *d, const struct handler *h, const struct event *ev,
                        int how, const char *only, const struct names *done)
{
    if (!matches(h, ev) || (only && strcmp(h->name, only) != 0) ||
        (done && has_name(done, h->name)))
        return 0;
    if (how == RECOVERED && d->crashed.seq == ev->seq && strcmp(d->crashed.handler, h->name) == 0)
        return 0;
    return how == FRESH || !busy_with(d, ev->seq, h->name);
}

/* An event: every handler that should start on it (should_start) starts now. Takes ev;
 * returns how many started. */
static size_t dispatch_fresh(struct dispatch *d, struct event *ev, int how, const char *only,
                             const struct names *done)
{
    struct generation *g = d->gen;
    const struct handler **hs = malloc((g->n + 1) * sizeof *hs);
    size_t n = 0;
    if (hs == NULL) {
        event_free(ev);
        return 0;
    }
    for (size_t i = 0; i < g->n; i++)
        if (should_start(d, &g->h[i], ev, how, only, done))
            hs[n++] = &g->h[i];
    start_event(d, ev, hs, n, NULL);
    free(hs);
    return n;
}

static const struct handler *find_handler(const struct generation *g, const char *name)
{
    for (size_t i = 0; i < g->n; i++)
        if (strcmp(g->h[i].name, name) == 0)
            return &g->h[i];
    return NULL;
}

/* A delivery from the heap whose time has come. */
static void dispatch_due(struct dispatch *d, struct scheduled *s)
{
    struct event *ev = journal_load(d->j, s->seq, NULL);
    const struct handler *h = find_handler(d->gen, s->handler);
    if (ev == NULL) {
        log_msg(LOG_WARN, "event #%lld of a scheduled delivery is gone from the journal",
                (long long)s->seq);
    } else if (h == NULL) { /* its file or pattern is gone from the handlers */
        struct delivery_result r = {.handler = s->handler, .status = DELIVERY_DEAD,
                                    .attempts = s->attempts, .crashes = s->crashes,
                                    .error = "the handler is no longer loaded"};
        emit(d, s->seq, &r);
        log_dead(ev->id, &r);
        event_free(ev);
    } else {
        start_event(d, ev, &h, 1, s);
    }
    free(s);
}

/* ---- waits (for the API) ----------------------------------------------------------------------- */

/* Resumes the deliveries whose waits ended; those killed meanwhile finish instead. */
static void resume_ready(struct dispatch *d)
{
    pthread_mutex_lock(&d->mu);
    struct delivery *woken = d->woken;
    d->woken = NULL;
    pthread_mutex_unlock(&d->mu);
    for (struct delivery *dl = woken, *next; dl; dl = next) {
        next = dl->next_ready;
        dl->wait = NULL;
        dl->next_ready = d->ready;
        d->ready = dl;
    }
    while (d->ready) {
        struct delivery *dl = d->ready;
        d->ready = dl->next_ready;
        if (dl->ctx.killed) /* stopped while it waited for what cannot be cancelled */
            finish(d, dl, run_stopped(&dl->ctx), NULL);
        else
            step(d, dl, 0);
    }
}

/* Stops deliveries past their deadline (waiting ones: those running are stopped by the hook)
 * or all of them (why = RUN_STOP). Returns the earliest deadline still to come, or 0. */
static double enforce(struct dispatch *d, int why)
{
    double now = time_mono(), next = 0;
    for (struct delivery *dl = d->active, *n; dl; dl = n) {
        n = dl->next;
        if (why == 0 && dl->ctx.deadline > now) {
            if (next == 0 || dl->ctx.deadline < next)
                next = dl->ctx.deadline;
            continue;
        }
        if (!dl->ctx.killed)
            dl->ctx.killed = why ? why : RUN_TIMEOUT;
        if (dl->wait && dl->wait->cancel == NULL)
            continue; /* the journal writer holds its request: finishes when it answers */
        finish(d, dl, run_stopped(&dl->ctx), NULL);
    }
    return next;
}

/* ---- replays ------------------------------------------------------------------------------------- */

static void requeue_dead(void *cls, const struct journal_delivery *row)
{
    struct dispatch *d = cls;
    struct delivery_result r = {.handler = (char *)row->handler, .status = DELIVERY_PENDING,
                                .next_at = time_now(), .first_at = row->first_at};
    emit(d, row->seq, &r);
    heap_push(d, row->seq, row->handler, 0, 0, time_mono(), row->first_at);
}

struct replay_round {
    struct dispatch *d;
    int64_t upto;
    int dead;
};

/* A replay request (journal_request_replay says what each runs). */
static void on_replay(void *cls, const struct journal_replay *r)
{
    struct replay_round *rr = cls;
    struct names done = {NULL, 0};
    rr->upto = r->id;
    if (r->dead) {
        rr->dead = 1; /* once per round, however many asked */
        return;
    }
    struct event *ev = journal_load(rr->d->j, 0, r->event_id);
    if (ev == NULL) {
        log_msg(LOG_WARN, "replay of %s: no such event in the journal", r->event_id);
        return;
    }
    if (r->handler == NULL)
        journal_scan_deliveries(rr->d->j, "done", ev->seq, add_name, &done);
    size_t n = dispatch_fresh(rr->d, ev, REPLAYED, r->handler, r->handler ? NULL : &done);
    struct log_line l;
    log_begin(&l, LOG_INFO, r->handler && n == 0 ? "replay: that handler is not loaded, or its "
                                                   "delivery is scheduled or running already"
                                                 : "replaying");
    log_str(&l, "event", r->event_id);
    log_str(&l, "handler", r->handler);
    log_num(&l, "deliveries", (double)n);
    log_end(&l);
    for (size_t i = 0; i < done.n; i++)
        free(done.v[i]);
    free(done.v);
}

static void poll_replays(struct dispatch *d)
{
    struct replay_round rr = {d, 0, 0};
    if (journal_scan_replays(d->j, d->replays_seen, on_replay, &rr) <= 0)
        return;
    if (rr.dead) {
        int n = journal_scan_deliveries(d->j, "dead", 0, requeue_dead, d);
        log_msg(LOG_INFO, "replaying %d dead deliveries", n < 0 ? 0 : n);
    }
    struct journal_done *done = journal_done_new(0, 0);
    if (done) {
        done->replays_upto = rr.upto;
        *d->out_tail = done;
        d->out_tail = &done->next;
    }
    if (rr.upto > d->replays_seen) /* a shared journal may hand over an older one */
        d->replays_seen = rr.upto;
}

/* ---- the loop ------------------------------------------------------------------------------------ */

/* A delivery whose attempt certhook did not see end: it was running when the process died
 * (crash_here: its handler code was, by the slot), or waiting. The attempt counts; it is
 * retried after its backoff -- new events go first -- or dead. */
static void recover_interrupted(struct dispatch *d, const struct journal_delivery *row,
                                int crash_here)
{
    int crashes = row->crashes + crash_here;
    double delay = retry_delay(d->cfg, row->attempts, crashes, erand48(d->rng));
    struct delivery_result r = {
        .handler = (char *)row->handler, .status = delay < 0 ? DELIVERY_DEAD : DELIVERY_RETRYING,
        .attempts = row->attempts, .crashes = crashes, .first_at = row->first_at,
        .next_at = delay < 0 ? 0 : time_now() + delay,
        .error = crash_here ? "the attempt was running when certhook died (a crash, kill -9, or a "
                              "handler that stalled the dispatcher)"
                            : "the attempt was interrupted: certhook stopped without finishing it"};
    emit(d, row->seq, &r);
    if (delay >= 0) {
        heap_push(d, row->seq, row->handler, row->attempts, crashes, time_mono() + delay,
                  row->first_at);
    } else if (!crash_here) {
        struct event *ev = journal_load(d->j, row->seq, NULL);
        log_dead(ev ? ev->id : NULL, &r);
        event_free(ev);
    }
    if (!crash_here)
        return;
    struct log_line l;
    if (delay < 0 && crashes >= RETRY_MAX_CRASHES)
        log_begin(&l, LOG_ERROR, "this delivery was running when certhook died, again: it is dead "
                                 "now, so that it cannot take certhook down once more; fix the "
                                 "handler and replay the event");
    else
        log_begin(&l, LOG_WARN, delay < 0 ? "this delivery was running when certhook died; its "
                                            "last attempt: it is dead"
                                          : "this delivery was running when certhook died; the "
                                            "attempt counts, and it is retried after its backoff");
    log_str(&l, "event", d->crashed.event_id);
    log_str(&l, "handler", row->handler);
    log_num(&l, "attempt", row->attempts);
    log_num(&l, "crashes", crashes);
    log_num(&l, "pid", d->crashed.pid);
    if (delay >= 0)
        log_num(&l, "retry_in", round(delay * 1000) / 1000);
    log_end(&l);
    if (delay < 0)
        log_dead(d->crashed.event_id, &r);
}

/* A delivery the journal holds open at the start. */
static void schedule_loaded(void *cls, const struct journal_delivery *row)
{
    struct dispatch *d = cls;
    int crash_here = d->has_crashed && row->seq == d->crashed.seq &&
                     strcmp(row->handler, d->crashed.handler) == 0;
    if (crash_here || row->status == DELIVERY_RUNNING) {
        struct journal_delivery r = *row;
        if (crash_here) {
            d->has_crashed = 0;
            if (d->crashed.attempts > r.attempts) /* its attempt started in the round it died */
                r.attempts = d->crashed.attempts;
        }
        recover_interrupted(d, &r, crash_here);
        d->interrupted += !crash_here;
        return;
    }
    /* next_at is wall-clock time: the clock may have been set while certhook was down, so the
     * wait is bounded by the longest backoff */
    double wait = row->next_at > 0 ? fmin(row->next_at - time_now(), d->cfg->max_backoff) : 0;
    heap_push(d, row->seq, row->handler, row->attempts, row->crashes,
              time_mono() + fmax(wait, 0), row->first_at);
}

void dispatch_set_stall(struct dispatch *d, struct stall *st, const struct stall_slot *crashed)
{
    d->stall = st;
    d->has_crashed = crashed != NULL && crashed->seq > 0;
    if (d->has_crashed)
        d->crashed = *crashed;
}

static void collect(void *cls, struct event *ev)
{
    struct event ***tail = cls;
    **tail = ev;
    *tail = &ev->next;
}

/* Work claimed from the journal (another server's): deliveries as at a start, events never
 * dispatched after those read back. */
struct claim {
    struct dispatch *d;
    struct event **tail;
    int deliveries;
};

static void claimed_delivery(void *cls, const struct journal_delivery *row)
{
    struct claim *c = cls;
    c->deliveries++;
    schedule_loaded(c->d, row);
}

static void claimed_event(void *cls, struct event *ev)
{
    struct claim *c = cls;
    *c->tail = ev;
    c->tail = &ev->next;
}

static void claim(struct dispatch *d)
{
    struct claim c = {d, &d->recovered, 0};
    while (*c.tail)
        c.tail = &(*c.tail)->next;
    int n = journal_claim(d->j, RECOVER_CHUNK, claimed_delivery, claimed_event, &c);
    d->claim_due = n == RECOVER_CHUNK; /* there may be more */
    if (n > 0)
        log_msg(LOG_INFO, "claimed %d events another server held (it stopped, or its lease ran "
                          "out): %d deliveries to finish", n, c.deliveries);
}

/* This server's lease was lost: nothing it held is its own any more (whoever claims it runs it,
 * this server too). The retries and the events read back go; what runs now ends on its own (it
 * started while the lease held for longer than it may run), and its states are written only
 * where this server still holds the event. */
static void drop_held(struct dispatch *d)
{
    log_msg(LOG_WARN, "dropping %zu scheduled deliveries held under the lost lease: the journal "
                      "keeps them for whichever server claims them", d->nheap);
    for (size_t i = 0; i < d->nheap; i++)
        free(d->heap[i]);
    d->nheap = 0;
    event_free_list(d->recovered);
    d->recovered = NULL;
    d->recover_upto = 0;
    d->claim_due = 1;
}

/* The next event to dispatch: never-dispatched ones from before the start first (read from
 * the journal a chunk at a time; *again = 1), then those claimed, then those the writer handed
 * over. NULL if none. */
static struct event *next_event(struct dispatch *d, int *again)
{
    if (d->recovered == NULL && d->recover_after < d->recover_upto) {
        struct event **tail = &d->recovered;
        int n = journal_scan_events(d->j, 0, d->recover_after, d->recover_upto, RECOVER_CHUNK,
                                    collect, &tail);
        if (n > 0 && d->recover_after == 0)
            log_msg(LOG_INFO, "dispatching events accepted before the restart");
        if (n < RECOVER_CHUNK)
            d->recover_upto = 0; /* no more */
        for (struct event *ev = d->recovered; ev; ev = ev->next)
            d->recover_after = ev->seq;
    }
    if (d->recovered == NULL && d->claim_due)
        claim(d);
    struct event *ev = d->recovered;
    *again = ev != NULL;
    if (ev != NULL) {
        d->recovered = ev->next;
        ev->next = NULL;
        return ev;
    }
    pthread_mutex_lock(&d->mu);
    ev = d->head;
    if (ev != NULL) {
        d->head = ev->next;
        if (d->head == NULL)
            d->tail = &d->head;
        d->backlog--;
        ev->next = NULL;
    }
    pthread_mutex_unlock(&d->mu);
    return ev;
}

/* Starts what is due, while slots are free: retries, then new events. Returns 1 if work
 * remains that could start now (more slots would take it). */
static int start_work(struct dispatch *d)
{
    int started = 0;
    if (d->gen == NULL) { /* no handler set loaded yet: the journal keeps what arrives */
        pthread_mutex_lock(&d->mu);
        struct event *list = d->head;
        d->head = NULL;
        d->tail = &d->head;
        d->backlog = 0;
        pthread_mutex_unlock(&d->mu);
        for (struct event *ev = list; ev; ev = ev->next)
            if (ev->seq > d->recover_upto)
                d->recover_upto = ev->seq; /* read back once handlers are loaded */
        event_free_list(list);
        return 0;
    }
    while (slots_free(d) && started < ROUND) {
        if (d->nheap > 0 && d->heap[0]->due <= time_mono()) {
            dispatch_due(d, heap_pop(d));
        } else {
            int again;
            struct event *ev = next_event(d, &again);
            if (ev == NULL)
                return 0;
            dispatch_fresh(d, ev, again ? RECOVERED : FRESH, NULL, NULL);
        }
        started++;
    }
    return 1;
}

int dispatch_run(struct dispatch *d, int sigfd)
{
    int sig = 0;
    double grace_until = 0;
    d->sigfd = (struct loop_fd){sigfd, on_signal};
    loop_add(d->loop, &d->sigfd, EPOLLIN);
    d->journalfd = (struct loop_fd){journal_wake_fd(d->j), on_journal};
    if (d->journalfd.fd >= 0)
        loop_add(d->loop, &d->journalfd, EPOLLIN);
    int n = journal_scan_deliveries(d->j, NULL, 0, schedule_loaded, d);
    if (d->has_crashed) { /* it died in the round that started it: never journaled */
        struct journal_delivery row = {.seq = d->crashed.seq, .handler = d->crashed.handler,
                                       .status = DELIVERY_RUNNING,
                                       .attempts = d->crashed.attempts,
                                       .first_at = d->crashed.first_at};
        d->has_crashed = 0;
        recover_interrupted(d, &row, 1);
    }
    if (d->interrupted > 0)
        log_msg(LOG_INFO, "%d deliveries interrupted by the last stop count an attempt and run "
                          "again after their backoff", d->interrupted);
    if (n > 0)
        log_msg(LOG_INFO, "%d deliveries to retry from before the restart", n);
    for (int more = 1, held_back = 0;;) {
        double now = time_mono(), wake_at = now + 3600, t;
        if (!sig) {
            wake_at = fmin(wake_at, d->next_poll);
            if (held_back)
                wake_at = fmin(wake_at, now + LEASE_POLL);
            if (d->nheap > 0)
                wake_at = fmin(wake_at, d->heap[0]->due);
        } else {
            wake_at = fmin(wake_at, grace_until);
        }
        if ((t = http_multi_next(d->http)) >= 0)
            wake_at = fmin(wake_at, t);
        if (d->reload_due > 0)
            wake_at = fmin(wake_at, fmin(d->reload_due, d->reload_latest));
        if (d->pollers != NULL)
            wake_at = fmin(wake_at, d->poll_next);
        if ((t = enforce(d, 0)) > 0)
            wake_at = fmin(wake_at, t);
        int timeout = more && !sig && slots_free(d) ? 0
                      : wake_at <= now         ? 0
                                               : (int)ceil((wake_at - now) * 1000);
        if (loop_run_once(d->loop, timeout) < 0) {
            log_msg(LOG_ERROR, "epoll_wait: %s", strerror(errno));
            d->stop_sig = d->stop_sig ? d->stop_sig : SIGTERM;
        }
        if (d->stop_sig && !sig) {
            sig = d->stop_sig;
            grace_until = time_mono() + d->cfg->shutdown_grace;
            log_msg(LOG_INFO, "stopping on %s: %zu deliveries in flight, %.0f s to finish",
                    strsignal(sig), d->nactive, d->cfg->shutdown_grace);
            if (d->on_stop)
                d->on_stop(d->on_stop_cls);
        }
        http_multi_timeout(d->http);
        resume_ready(d);
        if (d->pollers != NULL) /* a run's transfer ended, or one is due */
            d->poll_next = pollers_turn(d->pollers, sig != 0);
        int changed = d->reload_due > 0 && time_mono() >= fmin(d->reload_due, d->reload_latest);
        if (changed)
            d->reload_due = 0;
        if (d->reloader) { /* a reload is built on its own thread: nothing here waits for it */
            if (d->hup)
                reload_ask(d->reloader, 1, 1); /* SIGHUP rereads the config */
            if (changed)
                reload_ask(d->reloader, 0, 0);
            reload_turn(d->reloader, sig != 0, d->gen ? d->gen->number : 0);
        }
        d->hup = 0;
        if (!sig) {
            /* the lease first: a new one is only given once what the lost one held is dropped */
            double lease = journal_lease(d->j);
            pthread_mutex_lock(&d->mu);
            int disowned = d->disowned;
            d->disowned = 0;
            pthread_mutex_unlock(&d->mu);
            if (disowned)
                drop_held(d);
            held_back = lease <= d->cfg->timeout; /* an attempt could outlast it */
            more = 0;
            if (!held_back && time_mono() >= d->next_poll) {
                poll_replays(d);
                d->claim_due = 1;
                d->next_poll = time_mono() + REPLAY_POLL;
            }
            if (!held_back)
                more = start_work(d);
        } else if (d->nactive > 0 && time_mono() >= grace_until) {
            log_msg(LOG_WARN, "shutdown grace over: %zu deliveries will run again at the next "
                              "start", d->nactive);
            enforce(d, RUN_STOP);
        }
        flush(d);
        if (d->on_tick)
            d->on_tick(d->on_tick_cls);
        if (sig && d->nactive == 0)
            break;
    }
    reload_stop(d->reloader, d->gen ? d->gen->number : 0); /* within reload.timeout */
    loop_del(d->loop, &d->sigfd);
    if (d->journalfd.fd >= 0)
        loop_del(d->loop, &d->journalfd);
    return sig;
}

/* Runs handlers hs for ev once each, synchronously: fills r[i] (attempts set by the caller).
 * Returns 0, or -1 when the event cannot be built. */
static int run_sync(struct generation *g, const struct event *ev, const struct handler **hs,
                    size_t n, double timeout, struct delivery_result *r)
{
    lua_State *L = g->L;
    int top = lua_gettop(L);
    if (run_push_event(L, ev) != 0)
        return -1;
    int event = lua_gettop(L);
    for (size_t i = 0; i < n; i++) {
        int arg = run_event_arg(L, event, i, n);
        struct delivery_ctx ctx = {.event_id = ev->id, .event_type = ev->type,
                                   .hostname = ev->hostname, .handler = hs[i]->name,
                                   .generation = g->number, .gen = g,
                                   .deadline = timeout > 0 ? time_mono() + timeout : 0};
        int ref;
        lua_State *co = run_new(L, hs[i], arg, &ref);
        r[i].started_at = time_now();
        double m0 = time_mono();
        enum run_status st = run_resume(L, co, 1, &ctx, &r[i].error, &r[i].traceback);
        r[i].duration = time_mono() - m0;
        r[i].status = st == RUN_DONE ? DELIVERY_DONE : DELIVERY_DEAD;
        r[i].generation = g->number;
        if (st != RUN_DONE)
            run_log_failure(&ctx, r[i].attempts, r[i].error, r[i].traceback, NAN);
        run_free(L, co, ref);
        lua_settop(L, event);
    }
    lua_settop(L, top);
    return 0;
}

/* ---- certhook run ------------------------------------------------------------------------------ */

int dispatch_event(struct generation *g, const struct event *ev, double timeout,
                   struct journal_done **donep)
{
    const struct handler **hs = calloc(g->n + 1, sizeof *hs);
    size_t n = hs ? generation_match(g, ev->type, ev->provider_type, hs) : 0;
    int failed = 0;
    struct journal_done *done = hs ? journal_done_new(ev->seq, n) : NULL;
    *donep = done;
    for (size_t i = 0; done && i < n; i++)
        done->r[i].attempts = 1;
    if (done == NULL || (n > 0 && run_sync(g, ev, hs, n, timeout, done->r) != 0)) {
        free(hs);
        return -1;
    }
    done->n = n;
    for (size_t i = 0; i < n; i++) {
        done->r[i].handler = strdup(hs[i]->name);
        done->r[i].first_at = done->r[i].started_at;
        failed += done->r[i].status != DELIVERY_DONE;
    }
    free(hs);
    return failed;
}
