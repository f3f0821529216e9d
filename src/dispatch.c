/*
 * dispatch.c -- the dispatcher: event queue, matching, handler coroutines (DESIGN §4, §9).
 *
 * Runs on the main thread and owns the handler generation (reload.c). The journal writer
 * hands it each committed batch (dispatch_enqueue); at start-up it first runs the events a
 * previous run accepted but never dispatched. For each event it decodes the journaled
 * payload, normalizes it (normalize.c) and runs every matching handler in its own coroutine
 * with a fresh copy of the event; a handler that raises is logged with its traceback and
 * never stops the loop. The results go back to the journal writer in one list per batch.
 */
#include <errno.h>
#include <poll.h>
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

#define RECOVER_CHUNK 256

struct dispatch {
    struct generation *gen;
    struct journal *j;
    int64_t recover_upto; /* events up to this seq were in the journal before we started */
    int efd;              /* eventfd: the queue went from empty to not empty */
    pthread_mutex_t mu;
    struct journal_event *head, **tail;
    size_t backlog;
};

struct dispatch *dispatch_new(struct generation *g, struct journal *j, int64_t recover_upto)
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
    d->recover_upto = recover_upto;
    d->tail = &d->head;
    pthread_mutex_init(&d->mu, NULL);
    return d;
}

void dispatch_free(struct dispatch *d)
{
    if (d == NULL)
        return;
    for (struct journal_event *ev = d->head, *next; ev; ev = next) {
        next = ev->next;
        journal_event_free(ev); /* still "new" in the journal: dispatched at the next start */
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

/* Runs handler h with the event at idx in a new coroutine. Returns 0, or -1 with a
 * malloc'd message in *error (and the traceback logged). Leaves the stack balanced. */
static int run_handler(lua_State *L, const struct handler *h, int idx, struct delivery_ctx *ctx,
                       char **error)
{
    int top = lua_gettop(L), nres, rc = 0;
    lua_State *co = lua_newthread(L); /* ..., co */
    *(struct delivery_ctx **)lua_getextraspace(co) = ctx;
    lua_rawgeti(co, LUA_REGISTRYINDEX, h->ref);
    lua_pushvalue(L, idx);
    lua_xmove(L, co, 1);
    int status = lua_resume(co, L, 1, &nres);
    *error = NULL;
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
        struct log_line l;
        log_begin(&l, LOG_ERROR, "handler failed");
        log_str(&l, "event", ctx->event_id);
        log_str(&l, "type", ctx->event_type);
        log_str(&l, "hostname", ctx->hostname);
        log_str(&l, "handler", h->name);
        log_num(&l, "generation", ctx->generation);
        log_str(&l, "error", msg);
        log_str(&l, "traceback", tb);
        log_end(&l);
        lua_resetthread(co); /* closes its to-be-closed variables */
        rc = -1;
    }
    lua_settop(L, top);
    return rc;
}

static int matches(const struct handler *h, const char *type, const char *ptype)
{
    return normalize_glob(h->pattern, type) || (ptype && normalize_glob(h->pattern, ptype));
}

int dispatch_event(struct generation *g, const struct journal_event *ev,
                   struct journal_done **donep)
{
    lua_State *L = g->L;
    int top = lua_gettop(L), failed = 0;
    char err[512];
    struct journal_done *done = NULL;
    size_t m = 0;

    for (size_t i = 0; i < g->n; i++)
        m += matches(&g->h[i], ev->type, ev->provider_type);
    if (donep != NULL) {
        *donep = done = calloc(1, sizeof *done + m * sizeof done->r[0]);
        if (done == NULL) {
            log_msg(LOG_ERROR, "out of memory dispatching %s", ev->id);
            return -1;
        }
        done->seq = ev->seq;
    }
    if (m == 0)
        return 0;
    if (module_decode(L, ev->payload, ev->payload_len, err, sizeof err) != 0) {
        log_msg(LOG_ERROR, "event %s: journaled payload does not decode: %s", ev->id, err);
        goto done;
    }
    normalize_fixup(L, -1);
    if (normalize_push(L, ev->provider, -1, err, sizeof err) != 0) {
        log_msg(LOG_ERROR, "event %s: journaled payload does not normalize: %s", ev->id, err);
        goto done;
    }
    int event = lua_gettop(L);
    lua_pushstring(L, ev->id);
    lua_setfield(L, event, "id");
    lua_pushstring(L, ev->source);
    lua_setfield(L, event, "source");
    time_push_epoch(L, ev->received_at);
    lua_setfield(L, event, "received_at");
    lua_newtable(L); /* memo for deep_copy */
    int memo = lua_gettop(L);

    struct delivery_ctx ctx = {ev->id, ev->type, ev->hostname, NULL, g->number};
    size_t k = 0;
    for (size_t i = 0; i < g->n; i++) {
        const struct handler *h = &g->h[i];
        if (!matches(h, ev->type, ev->provider_type))
            continue;
        int arg = event; /* the last handler gets the original: nobody else sees it */
        if (++k < m) {
            deep_copy(L, event, memo);
            arg = lua_gettop(L);
            lua_newtable(L);
            lua_replace(L, memo); /* a fresh memo for the next copy */
        }
        ctx.handler = h->name;
        double t0 = time_now(), m0 = time_mono();
        char *error;
        if (run_handler(L, h, arg, &ctx, &error) != 0)
            failed++;
        double dur = time_mono() - m0;
        if (done != NULL) {
            struct delivery_result *r = &done->r[done->n++];
            r->handler = strdup(h->name);
            r->status = error ? DELIVERY_DEAD : DELIVERY_DONE;
            r->attempts = 1;
            r->generation = g->number;
            r->started_at = t0;
            r->duration = dur;
            r->error = error;
        } else {
            free(error);
        }
        if (arg != event)
            lua_pop(L, 1);
    }
done:
    lua_settop(L, top);
    return failed;
}

/* ---- the loop -------------------------------------------------------------------------------- */

/* Dispatches a list of events, sends the results to the journal in one list and frees the
 * events. Returns how many there were. */
static size_t dispatch_list(struct dispatch *d, struct journal_event *list)
{
    struct journal_done *dones = NULL, **tail = &dones;
    size_t n = 0;
    for (struct journal_event *ev = list, *next; ev; ev = next) {
        next = ev->next;
        struct journal_done *done = NULL;
        dispatch_event(d->gen, ev, &done);
        if (done != NULL) {
            *tail = done;
            tail = &done->next;
        }
        journal_event_free(ev);
        n++;
    }
    if (dones != NULL)
        journal_finish(d->j, dones);
    return n;
}

static void collect(void *cls, struct journal_event *ev)
{
    struct journal_event ***tail = cls;
    **tail = ev;
    *tail = &ev->next;
}

/* Returns the stop signal if one is pending, else 0 (SIGHUP is logged and ignored). */
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

int dispatch_run(struct dispatch *d, int sigfd)
{
    int64_t after = 0;
    int sig, n;
    do { /* what an earlier run accepted but did not dispatch */
        struct journal_event *list = NULL, **tail = &list;
        n = journal_scan_pending(d->j, after, d->recover_upto, RECOVER_CHUNK, collect, &tail);
        if (n > 0 && after == 0)
            log_msg(LOG_INFO, "dispatching events accepted before the restart");
        for (struct journal_event *ev = list; ev; ev = ev->next)
            after = ev->seq;
        if (list != NULL)
            dispatch_list(d, list);
        if ((sig = check_signal(sigfd)) != 0)
            return sig;
    } while (n == RECOVER_CHUNK);

    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event e = {.events = EPOLLIN};
    e.data.fd = sigfd;
    epoll_ctl(ep, EPOLL_CTL_ADD, sigfd, &e);
    e.data.fd = d->efd;
    epoll_ctl(ep, EPOLL_CTL_ADD, d->efd, &e);
    for (;;) {
        struct epoll_event ready[2];
        int nr = epoll_wait(ep, ready, 2, -1);
        if (nr < 0 && errno != EINTR) {
            log_msg(LOG_ERROR, "epoll_wait: %s", strerror(errno));
            break;
        }
        for (int i = 0; i < nr; i++) {
            if (ready[i].data.fd == sigfd && (sig = check_signal(sigfd)) != 0) {
                close(ep);
                return sig;
            }
        }
        uint64_t count;
        if (read(d->efd, &count, sizeof count) < 0 && errno != EAGAIN)
            log_msg(LOG_ERROR, "eventfd read: %s", strerror(errno));
        for (;;) {
            pthread_mutex_lock(&d->mu);
            struct journal_event *list = d->head;
            d->head = NULL;
            d->tail = &d->head;
            pthread_mutex_unlock(&d->mu);
            if (list == NULL)
                break;
            size_t n_list = dispatch_list(d, list);
            pthread_mutex_lock(&d->mu);
            d->backlog -= n_list;
            pthread_mutex_unlock(&d->mu);
        }
    }
    close(ep);
    return SIGTERM;
}
