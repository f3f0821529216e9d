/*
 * dispatch.c -- the dispatcher: deliveries, retries, replays (DESIGN §4, §9).
 *
 * Runs on the main thread and owns the handler generation (reload.c). Work comes from the
 * journal writer (each committed batch, dispatch_enqueue), from the journal at start-up
 * (deliveries to retry, events never dispatched), from its retry heap, and from replay
 * requests the CLI leaves in the journal. Every matching handler of an event is one
 * delivery, run in its own coroutine with a fresh copy of the event: success is done; an
 * error is logged with its traceback and retried with exponential backoff and full jitter
 * until delivery.max_attempts, then dead. Delivery states go to the journal writer in one
 * list per round; the writer derives the event's state from them.
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

#include "certhook.h"

#define RECOVER_CHUNK 256 /* events read from the journal at a time */
#define ROUND 128         /* deliveries run before states are flushed and signals checked */
#define REPLAY_POLL 1.0   /* seconds between looks for replay requests */

/* A delivery waiting for its next attempt: the retry heap's entries. */
struct scheduled {
    int64_t seq;
    double next_at, first_at;
    int attempts; /* made so far */
    char handler[];
};

struct dispatch {
    struct generation *gen;
    struct journal *j;
    const struct delivery_cfg *cfg;
    int64_t recover_upto; /* events up to this seq were in the journal before we started */
    int efd;              /* eventfd: the queue went from empty to not empty */
    pthread_mutex_t mu;
    struct journal_event *head, **tail;
    size_t backlog;
    struct scheduled **heap; /* min-heap on next_at */
    size_t nheap, capheap;
    struct journal_done *out, **out_tail; /* delivery states not yet handed to the writer */
    int64_t replays_seen;
    double next_poll;
    unsigned short rng[3];
};

struct dispatch *dispatch_new(struct generation *g, struct journal *j,
                              const struct delivery_cfg *cfg, int64_t recover_upto)
{
    struct dispatch *d = calloc(1, sizeof *d);
    if (d == NULL)
        return NULL;
    d->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (d->efd < 0) {
        free(d);
        return NULL;
    }
    d->gen = g;
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

void dispatch_set_generation(struct dispatch *d, struct generation *g)
{
    d->gen = g;
}

void dispatch_free(struct dispatch *d)
{
    if (d == NULL)
        return;
    for (struct journal_event *ev = d->head, *next; ev; ev = next) {
        next = ev->next;
        journal_event_free(ev); /* still "new" in the journal: dispatched at the next start */
    }
    for (size_t i = 0; i < d->nheap; i++)
        free(d->heap[i]); /* "retrying" / "pending" in the journal */
    free(d->heap);
    for (struct journal_done *o = d->out, *next; o; o = next) {
        next = o->next;
        journal_done_free(o);
    }
    close(d->efd);
    pthread_mutex_destroy(&d->mu);
    free(d);
}

void dispatch_enqueue(void *cls, struct journal_event *list)
{
    struct dispatch *d = cls;
    struct journal_event *last = list;
    size_t n = 1;
    for (; last->next; last = last->next)
        n++;
    pthread_mutex_lock(&d->mu);
    int was_empty = d->head == NULL;
    *d->tail = list;
    d->tail = &last->next;
    d->backlog += n;
    pthread_mutex_unlock(&d->mu);
    if (was_empty) {
        uint64_t one = 1;
        if (write(d->efd, &one, sizeof one) < 0 && errno != EAGAIN)
            log_msg(LOG_ERROR, "dispatcher wake-up failed: %s", strerror(errno));
    }
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
                      double next_at, double first_at)
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
    s->seq = seq;
    s->next_at = next_at;
    s->first_at = first_at;
    s->attempts = attempts;
    memcpy(s->handler, handler, n);
    size_t i = d->nheap++;
    d->heap[i] = s;
    while (i > 0 && d->heap[(i - 1) / 2]->next_at > d->heap[i]->next_at) {
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
        if (l < d->nheap && d->heap[l]->next_at < d->heap[m]->next_at)
            m = l;
        if (r < d->nheap && d->heap[r]->next_at < d->heap[m]->next_at)
            m = r;
        if (m == i)
            break;
        heap_swap(d, i, m);
        i = m;
    }
    return top;
}

static int heap_has(struct dispatch *d, int64_t seq, const char *handler)
{
    for (size_t i = 0; i < d->nheap; i++)
        if (d->heap[i]->seq == seq && strcmp(d->heap[i]->handler, handler) == 0)
            return 1;
    return 0;
}

/* ---- running handlers ------------------------------------------------------------------------ */

/* Pushes a deep copy of the table at src; memo maps tables already copied, so a table
 * reachable twice (event.certificate is event.certificates[1]) stays one table. */
static void deep_copy(lua_State *L, int src, int memo)
{
    luaL_checkstack(L, 6, "event nesting");
    lua_pushvalue(L, src);
    if (lua_rawget(L, memo) != LUA_TNIL)
        return;
    lua_pop(L, 1);
    lua_createtable(L, (int)lua_rawlen(L, src), 0);
    int dst = lua_gettop(L);
    lua_pushvalue(L, src);
    lua_pushvalue(L, dst);
    lua_rawset(L, memo);
    lua_pushnil(L);
    while (lua_next(L, src) != 0) { /* dst, key, value */
        if (lua_type(L, -1) == LUA_TTABLE) {
            deep_copy(L, lua_gettop(L), memo);
            lua_remove(L, -2);
        }
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, dst);
    }
}

/* error object, coroutine -> message, traceback. Run protected: __tostring may raise. */
static int describe_error(lua_State *L)
{
    lua_State *co = lua_tothread(L, 2);
    if (lua_type(L, 1) != LUA_TSTRING) {
        if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
            lua_replace(L, 1);
        else
            lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1)),
                lua_replace(L, 1);
    }
    lua_settop(L, 1);
    luaL_traceback(L, co, NULL, 0);
    return 2;
}

/* Runs handler h with the event at idx in a new coroutine: 0, or -1 with a malloc'd message
 * and traceback. Leaves the stack balanced. */
static int run_handler(lua_State *L, const struct handler *h, int idx, struct delivery_ctx *ctx,
                       char **error, char **traceback)
{
    int top = lua_gettop(L), nres, rc = 0;
    lua_State *co = lua_newthread(L); /* ..., co */
    *(struct delivery_ctx **)lua_getextraspace(co) = ctx;
    lua_rawgeti(co, LUA_REGISTRYINDEX, h->ref);
    lua_pushvalue(L, idx);
    lua_xmove(L, co, 1);
    int status = lua_resume(co, L, 1, &nres);
    *error = *traceback = NULL;
    if (status == LUA_OK) {
        lua_pop(co, nres);
    } else {
        const char *msg = "handler yielded outside the certhook API";
        const char *tb = NULL;
        if (status != LUA_YIELD) {
            lua_pushcfunction(L, describe_error);
            lua_xmove(co, L, 1); /* the error object */
            lua_pushthread(co);
            lua_xmove(co, L, 1);
            if (lua_pcall(L, 2, 2, 0) == LUA_OK) {
                msg = lua_tostring(L, -2);
                tb = lua_tostring(L, -1);
            } else {
                msg = "handler failed (its error could not be described)";
            }
        }
        *error = strdup(msg);
        *traceback = tb ? strdup(tb) : NULL;
        lua_resetthread(co); /* closes its to-be-closed variables */
        rc = -1;
    }
    lua_settop(L, top);
    return rc;
}

static int matches(const struct handler *h, const struct journal_event *ev)
{
    return normalize_glob(h->pattern, ev->type) ||
           (ev->provider_type && normalize_glob(h->pattern, ev->provider_type));
}

static const struct handler *find_handler(const struct generation *g, const char *name)
{
    for (size_t i = 0; i < g->n; i++)
        if (strcmp(g->h[i].name, name) == 0)
            return &g->h[i];
    return NULL;
}

/* Pushes the event handlers receive, built from the journaled payload; -1 if it cannot be
 * (logged; nothing pushed). */
static int push_event(lua_State *L, const struct journal_event *ev)
{
    char err[512];
    if (module_decode(L, ev->payload, ev->payload_len, err, sizeof err) != 0) {
        log_msg(LOG_ERROR, "event %s: journaled payload does not decode: %s", ev->id, err);
        return -1;
    }
    normalize_fixup(L, -1);
    if (normalize_push(L, ev->provider, -1, err, sizeof err) != 0) {
        lua_pop(L, 1);
        log_msg(LOG_ERROR, "event %s: journaled payload does not normalize: %s", ev->id, err);
        return -1;
    }
    lua_remove(L, -2);
    lua_pushstring(L, ev->id);
    lua_setfield(L, -2, "id");
    lua_pushstring(L, ev->source);
    lua_setfield(L, -2, "source");
    time_push_epoch(L, ev->received_at);
    lua_setfield(L, -2, "received_at");
    return 0;
}

/* Runs the given handlers (all of them once) for ev and fills r[i] with what each attempt
 * did: DONE, or DEAD with the error (the caller decides about retries); r[i].attempts is
 * this attempt's number. Returns 0, or -1 when the event cannot be built. */
static int run_deliveries(struct generation *g, const struct journal_event *ev,
                          const struct handler **hs, size_t n, struct delivery_result *r)
{
    lua_State *L = g->L;
    int top = lua_gettop(L);
    if (push_event(L, ev) != 0)
        return -1;
    int event = lua_gettop(L);
    lua_newtable(L); /* memo for deep_copy */
    int memo = lua_gettop(L);
    struct delivery_ctx ctx = {ev->id, ev->type, ev->hostname, NULL, g->number};
    for (size_t i = 0; i < n; i++) {
        int arg = event; /* the last handler gets the original: nobody else sees it */
        if (i + 1 < n) {
            deep_copy(L, event, memo);
            arg = lua_gettop(L);
            lua_newtable(L);
            lua_replace(L, memo);
        }
        ctx.handler = hs[i]->name;
        r[i].started_at = time_now();
        double m0 = time_mono();
        int rc = run_handler(L, hs[i], arg, &ctx, &r[i].error, &r[i].traceback);
        r[i].duration = time_mono() - m0;
        r[i].status = rc == 0 ? DELIVERY_DONE : DELIVERY_DEAD;
        r[i].generation = g->number;
        if (rc != 0) {
            struct log_line l;
            log_begin(&l, LOG_ERROR, "handler failed");
            log_str(&l, "event", ev->id);
            log_str(&l, "type", ev->type);
            log_str(&l, "hostname", ev->hostname);
            log_str(&l, "handler", hs[i]->name);
            log_num(&l, "generation", g->number);
            log_num(&l, "attempt", r[i].attempts);
            log_str(&l, "error", r[i].error);
            log_str(&l, "traceback", r[i].traceback);
            log_end(&l);
        }
        if (arg != event)
            lua_pop(L, 1);
    }
    lua_settop(L, top);
    return 0;
}

int dispatch_event(struct generation *g, const struct journal_event *ev,
                   struct journal_done **donep)
{
    const struct handler **hs = calloc(g->n + 1, sizeof *hs);
    size_t n = 0;
    int failed = 0;
    for (size_t i = 0; hs && i < g->n; i++)
        if (matches(&g->h[i], ev))
            hs[n++] = &g->h[i];
    struct journal_done *done = hs ? journal_done_new(ev->seq, n) : NULL;
    *donep = done;
    for (size_t i = 0; done && i < n; i++)
        done->r[i].attempts = 1;
    if (done == NULL || (n > 0 && run_deliveries(g, ev, hs, n, done->r) != 0)) {
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

/* ---- the serve loop ------------------------------------------------------------------------------ */

static void emit(struct dispatch *d, struct journal_done *done)
{
    *d->out_tail = done;
    d->out_tail = &done->next;
}

static void flush(struct dispatch *d)
{
    if (d->out != NULL)
        journal_finish(d->j, d->out);
    d->out = NULL;
    d->out_tail = &d->out;
}

/* After an attempt: retry with exponential backoff and full jitter, or dead. */
static void settle(struct dispatch *d, int64_t seq, struct delivery_result *r)
{
    if (r->status == DELIVERY_DONE || r->attempts >= d->cfg->max_attempts)
        return;
    double cap = d->cfg->backoff * pow(2, r->attempts - 1);
    if (cap > d->cfg->max_backoff)
        cap = d->cfg->max_backoff;
    r->status = DELIVERY_RETRYING;
    r->next_at = time_now() + erand48(d->rng) * cap;
    heap_push(d, seq, r->handler, r->attempts, r->next_at, r->first_at);
}

/* Runs handlers hs (with the attempts each made before) for ev and emits their states. */
static void deliver(struct dispatch *d, const struct journal_event *ev,
                    const struct handler **hs, const int *before, const double *first_at,
                    size_t n)
{
    struct journal_done *done = journal_done_new(ev->seq, n);
    if (done == NULL) {
        log_msg(LOG_ERROR, "out of memory dispatching %s", ev->id);
        return;
    }
    for (size_t i = 0; i < n; i++)
        done->r[i].attempts = before[i] + 1;
    if (n > 0 && run_deliveries(d->gen, ev, hs, n, done->r) != 0) {
        journal_done_free(done); /* logged; the journal keeps what it had */
        return;
    }
    done->n = n;
    for (size_t i = 0; i < n; i++) {
        struct delivery_result *r = &done->r[i];
        r->handler = strdup(hs[i]->name);
        r->first_at = first_at && first_at[i] > 0 ? first_at[i] : r->started_at;
        settle(d, ev->seq, r);
    }
    emit(d, done);
}

/* A new (or replayed) event: every matching handler not already scheduled runs now. */
static void dispatch_fresh(struct dispatch *d, const struct journal_event *ev, int replay)
{
    struct generation *g = d->gen;
    const struct handler **hs = malloc((g->n + 1) * sizeof *hs);
    int *before = calloc(g->n + 1, sizeof *before);
    size_t n = 0;
    for (size_t i = 0; hs && before && i < g->n; i++)
        if (matches(&g->h[i], ev) && !(replay && heap_has(d, ev->seq, g->h[i].name)))
            hs[n++] = &g->h[i];
    if (hs && before)
        deliver(d, ev, hs, before, NULL, n);
    free(hs);
    free(before);
}

/* A delivery from the heap whose time has come. */
static void dispatch_due(struct dispatch *d, struct scheduled *s)
{
    struct journal_event *ev = journal_load(d->j, s->seq, NULL);
    const struct handler *h = find_handler(d->gen, s->handler);
    if (ev == NULL) {
        log_msg(LOG_WARN, "event #%lld of a scheduled delivery is gone from the journal",
                (long long)s->seq);
    } else if (h == NULL) { /* its file or pattern is gone from the handlers */
        struct journal_done *done = journal_done_new(s->seq, 1);
        if (done) {
            done->n = 1;
            done->r[0] = (struct delivery_result){
                .handler = strdup(s->handler), .status = DELIVERY_DEAD, .attempts = s->attempts,
                .error = strdup("the handler is no longer loaded")};
            emit(d, done);
        }
        log_msg(LOG_WARN, "%s of %s is dead: the handler is no longer loaded", s->handler, ev->id);
    } else {
        deliver(d, ev, &h, &s->attempts, &s->first_at, 1);
    }
    journal_event_free(ev);
    free(s);
}

static void schedule_loaded(void *cls, int64_t seq, const char *handler, int attempts,
                            double next_at, double first_at)
{
    struct dispatch *d = cls;
    heap_push(d, seq, handler, attempts, next_at > 0 ? next_at : time_now(), first_at);
}

/* Every dead delivery: pending again, attempts from zero, run now. */
static void requeue_dead(void *cls, int64_t seq, const char *handler, int attempts,
                         double next_at, double first_at)
{
    struct dispatch *d = cls;
    (void)attempts, (void)next_at;
    struct journal_done *done = journal_done_new(seq, 1);
    if (done == NULL)
        return;
    double now = time_now();
    done->n = 1;
    done->r[0] = (struct delivery_result){.handler = strdup(handler), .status = DELIVERY_PENDING,
                                          .next_at = now, .first_at = first_at};
    emit(d, done);
    heap_push(d, seq, handler, 0, now, first_at);
}

struct replay_round {
    struct dispatch *d;
    int64_t upto;
    int dead;
};

static void on_replay(void *cls, int64_t id, const char *event_id, int dead)
{
    struct replay_round *rr = cls;
    rr->upto = id;
    if (dead) {
        rr->dead = 1; /* once per round, however many asked */
        return;
    }
    struct journal_event *ev = journal_load(rr->d->j, 0, event_id);
    if (ev == NULL) {
        log_msg(LOG_WARN, "replay of %s: no such event in the journal", event_id);
        return;
    }
    log_msg(LOG_INFO, "replaying %s", event_id);
    dispatch_fresh(rr->d, ev, 1);
    journal_event_free(ev);
}

static void poll_replays(struct dispatch *d)
{
    struct replay_round rr = {d, 0, 0};
    if (journal_scan_replays(d->j, d->replays_seen, on_replay, &rr) <= 0)
        return;
    if (rr.dead) {
        int n = journal_scan_deliveries(d->j, "dead", requeue_dead, d);
        log_msg(LOG_INFO, "replaying %d dead deliveries", n < 0 ? 0 : n);
    }
    struct journal_done *done = journal_done_new(0, 0);
    if (done) {
        done->replays_upto = rr.upto;
        emit(d, done);
    }
    d->replays_seen = rr.upto;
}

/* The pending stop signal, else 0 (SIGHUP is logged and ignored). */
static int check_signal(int sigfd)
{
    struct signalfd_siginfo si;
    while (read(sigfd, &si, sizeof si) == (ssize_t)sizeof si) {
        if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT)
            return (int)si.ssi_signo;
        log_msg(LOG_INFO, "signal %u ignored", si.ssi_signo);
    }
    return 0;
}

static void collect(void *cls, struct journal_event *ev)
{
    struct journal_event ***tail = cls;
    **tail = ev;
    *tail = &ev->next;
}

/* Dispatches a list of events, flushing and checking for a stop every ROUND. Frees the
 * events; returns the stop signal (the rest of the list is freed undispatched) or 0. */
static int dispatch_list(struct dispatch *d, struct journal_event *list, int sigfd, size_t *n)
{
    int sig = 0, i = 0;
    *n = 0;
    for (struct journal_event *ev = list, *next; ev; ev = next) {
        next = ev->next;
        if (!sig)
            dispatch_fresh(d, ev, 0);
        journal_event_free(ev);
        (*n)++;
        if (!sig && ++i % ROUND == 0) {
            flush(d);
            sig = check_signal(sigfd);
        }
    }
    flush(d);
    return sig;
}

/* What the journal holds from before: deliveries to resume, events never dispatched. */
static int recover(struct dispatch *d, int sigfd)
{
    int64_t after = 0;
    int n, sig;
    size_t count;
    n = journal_scan_deliveries(d->j, NULL, schedule_loaded, d);
    if (n > 0)
        log_msg(LOG_INFO, "%d deliveries to retry from before the restart", n);
    do {
        struct journal_event *list = NULL, **tail = &list;
        n = journal_scan_events(d->j, 0, after, d->recover_upto, RECOVER_CHUNK, collect, &tail);
        if (n > 0 && after == 0)
            log_msg(LOG_INFO, "dispatching events accepted before the restart");
        for (struct journal_event *ev = list; ev; ev = ev->next)
            after = ev->seq;
        if ((sig = dispatch_list(d, list, sigfd, &count)) != 0)
            return sig;
    } while (n == RECOVER_CHUNK);
    return check_signal(sigfd);
}

int dispatch_run(struct dispatch *d, int sigfd)
{
    int sig = recover(d, sigfd);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event e = {.events = EPOLLIN};
    e.data.fd = sigfd;
    epoll_ctl(ep, EPOLL_CTL_ADD, sigfd, &e);
    e.data.fd = d->efd;
    epoll_ctl(ep, EPOLL_CTL_ADD, d->efd, &e);
    while (!sig) {
        double now = time_now(), wake = d->next_poll;
        if (d->nheap > 0 && d->heap[0]->next_at < wake)
            wake = d->heap[0]->next_at;
        int timeout = wake <= now ? 0 : (int)ceil((wake - now) * 1000);
        struct epoll_event ready[2];
        int nr = epoll_wait(ep, ready, 2, timeout);
        if (nr < 0 && errno != EINTR) {
            log_msg(LOG_ERROR, "epoll_wait: %s", strerror(errno));
            sig = SIGTERM;
            break;
        }
        if ((sig = check_signal(sigfd)) != 0)
            break;
        uint64_t count;
        if (read(d->efd, &count, sizeof count) < 0 && errno != EAGAIN)
            log_msg(LOG_ERROR, "eventfd read: %s", strerror(errno));
        for (;;) { /* new events */
            pthread_mutex_lock(&d->mu);
            struct journal_event *list = d->head;
            d->head = NULL;
            d->tail = &d->head;
            pthread_mutex_unlock(&d->mu);
            if (list == NULL)
                break;
            size_t n;
            sig = dispatch_list(d, list, sigfd, &n);
            pthread_mutex_lock(&d->mu);
            d->backlog -= n;
            pthread_mutex_unlock(&d->mu);
            if (sig)
                break;
        }
        for (int i = 0; !sig && d->nheap > 0 && d->heap[0]->next_at <= time_now(); i++) {
            dispatch_due(d, heap_pop(d)); /* retries whose time has come */
            if (i % ROUND == ROUND - 1) {
                flush(d);
                sig = check_signal(sigfd);
            }
        }
        if (!sig && time_now() >= d->next_poll) {
            poll_replays(d);
            d->next_poll = time_now() + REPLAY_POLL;
        }
        flush(d);
    }
    flush(d);
    close(ep);
    return sig;
}
