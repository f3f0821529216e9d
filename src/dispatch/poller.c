/*
 * poller.c -- pollers (DESIGN §6 "Pollers"): now and then, a provider's API is asked for the
 * certificates it holds, and what differs from the inventory -- what no webhook told -- is
 * journaled as the event the provider's webhook would have been, with reconciled = true and
 * the source poll:<name>.
 *
 * The provider builds each page's request and parses the reply (its struct poll_ops: no I/O of
 * its own); the transfers go through the dispatcher's curl multi handle (api.h http_call), so
 * a run never blocks the dispatcher's thread. A run: the inventory is read once (journal_certs),
 * then page after page (at most max_pages) each observation is compared with its entry:
 *
 *   a status that differs, or a new expiry  the provider's event for that change (change op:
 *                                           what its webhook would have said), else a quiet one
 *   an entry without the expiry the API has a quiet event (the inventory learns it)
 *   a certificate the inventory never had   at the first run of a poller (ever: the journal
 *                                           keeps that it ran), a quiet event unless first_run
 *                                           = "events"; after it, as a change
 *   a certificate gone from the API         a deletion -- for those this poller saw in its
 *                                           previous complete run or first told of
 *
 * A quiet event is of the type certificate.observed: journaled and folded into the inventory
 * like any event, listed by the console, but no handler runs for it (generation_match).
 * Ids are stable -- poll:<name>:<key>:<status>:<expiry> -- so the journal keeps each change
 * once through restarts and any number of nodes. A run that fails (no reply, a 429 or 5xx, a
 * reply that does not parse, its timeout) ends; the next one comes after a backoff with jitter
 * that honours Retry-After (retry.c), logged once per cause, counted in metrics, shown by
 * /readyz. Nothing here waits for the journal: events are queued to the writer. On a shared
 * journal one server polls at a time: a run starts with a claim (certhook.once's, through the
 * writer) that the other servers' runs find held (their result: "elsewhere").
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <lauxlib.h>
#include <lualib.h>

#include "dispatch/dispatch.h"
#include "providers/provider.h"

#define POLL_MAX_REPLY (16 << 20)     /* bytes of one page */
#define POLL_FIRST_DELAY 0.5          /* seconds from the start (or a new poller) to its run */

struct poller {
    struct poller *next;
    struct pollers *ps;
    const struct poller_def *def; /* the configuration's: kept until exit (server.c) */
    struct source src;            /* poll:<name>, its provider: what normalizes its events */
    double next_at;               /* time_mono() of its next run */
    /* the run under way */
    int running, page, first, first_known, first_done, complete;
    double deadline, started;     /* time_mono() */
    double asked_at, next_ask;    /* time_mono(): the last request; the next one (0: none due) */
    struct http_call *call;
    int call_ended;
    struct poll_claim *claim;     /* a shared journal: the claim asked for before a run */
    int inv_ref, seen_ref;        /* this run's: key -> inventory entry; keys seen */
    int prev_ref;                 /* keys seen by the last complete run (LUA_NOREF: none) */
    size_t events;                /* journaled by this run */
    char cause[64];               /* of the failure last logged ("": none) */
    /* guarded by ps->mu: for /readyz */
    char result[24], error[300];
    double last_run_at, last_success_at; /* wall clock; 0: never */
    int failures;                 /* failed runs in a row */
    unsigned long runs;
};

struct pollers {
    struct journal *j;
    struct http_multi *http;
    lua_State *L;
    pthread_mutex_t mu; /* the list, each poller's status, the claims' answers */
    struct poller *list;
    unsigned short rng[3];
    int shared;                /* several servers share the journal: one polls at a time */
    void (*wake)(void *);      /* tells the dispatcher's loop, from the writer's thread */
    void *wake_cls;
};

/* A shared journal: before a run, the poller's claim (certhook.once's) on
 * certhook:poller:<name>:run until 0.9 of its interval from now -- the others' runs in that
 * window find it held and leave it to this server; the claim runs out before this server's own
 * next run. The writer answers on its thread; the poller reads the answer on the dispatcher's. */
struct poll_claim {
    struct journal_req r;
    struct pollers *ps;
    struct poller *p;  /* NULL: the poller went first (the answer frees it); guarded by ps->mu */
    int answered;      /* guarded by ps->mu */
    char key[200];
};

/* An event on its way to the journal. */
struct poll_event {
    struct journal_req r;
    char name[128], type[64];
};

/* The journal's note that a poller has run (its first run is behind it). */
struct poll_note {
    struct journal_req r;
    char key[200], value[64];
};

struct pollers *pollers_new(struct journal *j, struct http_multi *http, void (*wake)(void *),
                            void *wake_cls)
{
    struct pollers *ps = calloc(1, sizeof *ps);
    if (ps == NULL || (ps->L = luaL_newstate()) == NULL) {
        free(ps);
        return NULL;
    }
    luaL_openlibs(ps->L);
    json_open(ps->L);
    ps->j = j;
    ps->http = http;
    ps->wake = wake;
    ps->wake_cls = wake_cls;
    ps->shared = isfinite(journal_lease(j));
    pthread_mutex_init(&ps->mu, NULL);
    unsigned seed = (unsigned)(time_mono() * 1e6);
    ps->rng[0] = (unsigned short)seed, ps->rng[1] = (unsigned short)(seed >> 16);
    ps->rng[2] = 0x330e;
    return ps;
}

static void unref(lua_State *L, int *ref)
{
    luaL_unref(L, LUA_REGISTRYINDEX, *ref);
    *ref = LUA_NOREF;
}

/* The run under way ends (its transfer stopped); what the poller keeps stays. */
static void end_run(struct poller *p)
{
    http_call_free(p->call);
    p->call = NULL;
    p->call_ended = 0;
    p->running = 0;
    unref(p->ps->L, &p->inv_ref);
    unref(p->ps->L, &p->seen_ref);
}

static void poller_free(struct poller *p)
{
    if (p->claim != NULL) { /* the answer frees it, or it came: free it here */
        struct poll_claim *c = p->claim;
        int answered = c->answered; /* under ps->mu: poller_free's callers hold it */
        c->p = NULL;
        if (answered)
            free(c);
        p->claim = NULL;
    }
    end_run(p);
    unref(p->ps->L, &p->prev_ref);
    free(p);
}

void pollers_free(struct pollers *ps)
{
    if (ps == NULL)
        return;
    pthread_mutex_lock(&ps->mu); /* the writer has stopped: every claim was answered */
    for (struct poller *p = ps->list, *next; p; p = next) {
        next = p->next;
        poller_free(p);
    }
    pthread_mutex_unlock(&ps->mu);
    lua_close(ps->L);
    pthread_mutex_destroy(&ps->mu);
    free(ps);
}

void pollers_configure(struct pollers *ps, const struct poller_def *defs, size_t n)
{
    double now = time_mono();
    pthread_mutex_lock(&ps->mu);
    for (struct poller **pp = &ps->list; *pp;) { /* those no longer configured go */
        struct poller *p = *pp;
        size_t i = 0;
        while (i < n && strcmp(defs[i].name, p->def->name) != 0)
            i++;
        if (i == n) {
            *pp = p->next;
            log_msg(LOG_INFO, "poller %s removed", p->def->name);
            poller_free(p);
            continue;
        }
        if (defs[i].interval < p->def->interval && !p->running) /* a shorter interval now */
            p->next_at = fmin(p->next_at, now + defs[i].interval);
        p->def = &defs[i]; /* the next run reads it */
        p->src = (struct source){.name = defs[i].source, .provider = defs[i].provider,
                                 .insecure = 1};
        pp = &p->next;
    }
    for (size_t i = 0; i < n; i++) {
        struct poller *p = ps->list;
        while (p && strcmp(p->def->name, defs[i].name) != 0)
            p = p->next;
        if (p != NULL || (p = calloc(1, sizeof *p)) == NULL)
            continue;
        p->ps = ps;
        p->def = &defs[i];
        p->src = (struct source){.name = defs[i].source, .provider = defs[i].provider,
                                 .insecure = 1};
        p->next_at = now + POLL_FIRST_DELAY;
        p->inv_ref = p->seen_ref = p->prev_ref = LUA_NOREF;
        snprintf(p->result, sizeof p->result, "pending");
        p->next = ps->list;
        ps->list = p;
    }
    pthread_mutex_unlock(&ps->mu);
}

void pollers_json(struct pollers *ps, struct buf *b)
{
    buf_adds(b, "{");
    if (ps != NULL) {
        pthread_mutex_lock(&ps->mu);
        double now = time_mono();
        for (struct poller *p = ps->list; p; p = p->next) {
            const char *name = p->def->name;
            buf_printf(b, "%s", p == ps->list ? "" : ",");
            buf_json_str(b, name, strlen(name));
            buf_printf(b, ":{\"provider\":\"%s\",\"result\":\"%s\",\"error\":",
                       p->def->provider->name, p->result);
            if (p->error[0])
                buf_json_str(b, p->error, strlen(p->error));
            else
                buf_adds(b, "null");
            buf_adds(b, ",\"last_run_at\":");
            buf_json_number(b, p->last_run_at > 0 ? p->last_run_at : NAN);
            buf_adds(b, ",\"last_success_at\":");
            buf_json_number(b, p->last_success_at > 0 ? p->last_success_at : NAN);
            buf_printf(b, ",\"failures\":%d,\"runs\":%lu,\"running\":%s,\"next_run_in\":",
                       p->failures, p->runs, p->running ? "true" : "false");
            buf_printf(b, "%.1f", p->running ? 0 : fmax(0, p->next_at - now));
            buf_adds(b, "}");
        }
        pthread_mutex_unlock(&ps->mu);
    }
    buf_adds(b, "}");
}

/* ---- journaling ------------------------------------------------------------------------------ */

static void event_done(struct journal_req *r)
{
    struct poll_event *e = (struct poll_event *)r;
    if (r->result == JOURNAL_ACCEPTED)
        metrics_add(M_POLLER_EVENTS, 1, e->name, e->type);
    else if (r->result == JOURNAL_FAILED)
        log_msg(LOG_WARN, "poller %s: an event could not be journaled: %s (the next run tries "
                          "again)", e->name, r->error);
    free(e);
}

static void note_done(struct journal_req *r)
{
    free(r);
}

/* Number field k of the table at t, or NAN. */
static double num(lua_State *L, int t, const char *k)
{
    double v = lua_getfield(L, t, k) == LUA_TNUMBER ? lua_tonumber(L, -1) : NAN;
    lua_pop(L, 1);
    return v;
}

/* String field k of the table at t (pushed, valid while it is), or NULL with nil pushed. */
static const char *str(lua_State *L, int t, const char *k)
{
    return lua_getfield(L, t, k) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
}

/* Journals the difference between the observation at obs (0: gone from the API) and the
 * inventory entry at entry (0: none): the provider's event, or a quiet one (quiet, or when no
 * webhook would have told of it). */
static void fire(struct poller *p, int obs, int entry, int quiet)
{
    char err[300];
    lua_State *L = p->ps->L;
    const struct poller_def *def = p->def;
    int top = lua_gettop(L);
    double now = time_now();
    luaL_checkstack(L, 30, "poller");
    if (def->provider->poll->change(L, def, obs, entry, now) == POLL_QUIET)
        quiet = 1;
    size_t n;
    if (json_encode(L, -1, &n) == NULL) {
        lua_settop(L, top);
        return;
    }
    lua_replace(L, -2);
    const char *body = lua_tostring(L, -1);
    struct reply rp = {0};
    struct request rq = {.method = "POST", .body = body, .body_len = n, .received_at = now};
    if (source_normalize(L, &p->src, &rq, &rp, err, sizeof err) != 0 || rp.status != 0) {
        buf_free(&rp.body);
        log_msg(LOG_WARN, "poller %s: %s", def->name, err);
        lua_settop(L, top);
        return;
    }
    lua_rawgeti(L, -1, 1);
    int ev = lua_gettop(L);
    /* the id: one per certificate, status and expiry, whoever finds it */
    int src = obs ? obs : entry;
    const char *key = str(L, src, "key");
    const char *status = obs ? str(L, obs, "status") : (lua_pushliteral(L, "deleted"),
                                                        lua_tostring(L, -1));
    double x = num(L, src, "expires_at");
    char expiry[32] = "";
    if (!isnan(x))
        snprintf(expiry, sizeof expiry, "%.0f", x);
    lua_pushfstring(L, "poll:%s:%s:%s%s:%s", def->name, key ? key : "?", quiet ? "observed:" : "",
                    status ? status : "?", expiry);
    lua_setfield(L, ev, "id");
    lua_pushboolean(L, 1);
    lua_setfield(L, ev, "reconciled");
    if (quiet) {
        lua_pushliteral(L, QUIET_TYPE);
        lua_setfield(L, ev, "type");
        lua_pushliteral(L, "poll.observed");
        lua_setfield(L, ev, "provider_type");
    }
    lua_settop(L, ev);
    struct event summary;
    struct buf packed;
    buf_init(&packed);
    struct poll_event *e = calloc(1, sizeof *e);
    if (e != NULL && event_pack(L, ev, ev - 2, &summary, &packed, err, sizeof err) == 0) {
        summary.body = body;
        summary.body_len = n;
        snprintf(e->name, sizeof e->name, "%s", def->name);
        snprintf(e->type, sizeof e->type, "%s", summary.type);
        e->r.op = JOURNAL_APPEND;
        e->r.ev = event_new(&summary);
        e->r.done = event_done;
        if (e->r.ev != NULL) {
            log_msg(quiet ? LOG_DEBUG : LOG_INFO, "poller %s: %s for %s", def->name, summary.type,
                    summary.hostname ? summary.hostname : summary.id);
            journal_append(p->ps->j, &e->r);
            p->events++;
            e = NULL;
        }
    } else if (e != NULL) {
        log_msg(LOG_WARN, "poller %s: %s", def->name, err);
    }
    free(e);
    buf_free(&packed);
    lua_settop(L, top);
}

/* The observation at obs against the inventory. */
static void compare(struct poller *p, int obs)
{
    lua_State *L = p->ps->L;
    int top = lua_gettop(L);
    const char *key = str(L, obs, "key");
    const char *status = str(L, obs, "status");
    if (key == NULL || status == NULL) {
        lua_settop(L, top);
        return;
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, p->seen_ref);
    lua_pushvalue(L, top + 1);
    lua_pushboolean(L, 1);
    lua_rawset(L, -3);
    lua_rawgeti(L, LUA_REGISTRYINDEX, p->inv_ref);
    lua_pushvalue(L, top + 1);
    int entry = lua_rawget(L, -2) == LUA_TTABLE ? lua_gettop(L) : 0;
    double x1 = num(L, obs, "expires_at");
    if (entry == 0) {
        if (strcmp(status, "deleted") != 0)
            fire(p, obs, 0, p->first);
        lua_settop(L, top);
        return;
    }
    const char *was = str(L, entry, "status");
    double x0 = num(L, entry, "expires_at");
    /* an expiry known in days is right to a day */
    double slack = lua_getfield(L, entry, "expires_at_approximate") == LUA_TBOOLEAN &&
                           lua_toboolean(L, -1) ? 86400 : 1;
    if (was == NULL || strcmp(was, status) != 0 ||
        (!isnan(x0) && !isnan(x1) && fabs(x1 - x0) >= slack))
        fire(p, obs, entry, 0);
    else if (isnan(x0) && !isnan(x1)) /* the inventory learns the expiry */
        fire(p, obs, entry, 1);
    lua_settop(L, top);
}

/* ---- claims on a shared journal ------------------------------------------------------------ */

static void claim_done(struct journal_req *r)
{
    struct poll_claim *c = (struct poll_claim *)r;
    struct pollers *ps = c->ps;
    pthread_mutex_lock(&ps->mu);
    c->answered = 1;
    int orphan = c->p == NULL;
    pthread_mutex_unlock(&ps->mu);
    if (orphan)
        free(c);
    else if (ps->wake != NULL)
        ps->wake(ps->wake_cls);
}

static void release_done(struct journal_req *r)
{
    free(r);
}

/* Asks the journal for this run's claim. 0, or -1: out of memory (the run goes ahead). */
static int claim(struct poller *p)
{
    struct poll_claim *c = calloc(1, sizeof *c);
    if (c == NULL)
        return -1;
    c->ps = p->ps;
    c->p = p;
    snprintf(c->key, sizeof c->key, "certhook:poller:%s:run", p->def->name);
    c->r.op = JOURNAL_ONCE_CLAIM;
    c->r.key = c->key;
    c->r.expires_at = time_now() + 0.9 * p->def->interval;
    c->r.done = claim_done;
    p->claim = c;
    journal_append(p->ps->j, &c->r);
    return 0;
}

/* A run that failed gives its claim back: another server may try before it runs out. */
static void release(struct poller *p)
{
    struct poll_claim *c = calloc(1, sizeof *c);
    if (c == NULL)
        return;
    snprintf(c->key, sizeof c->key, "certhook:poller:%s:run", p->def->name);
    c->r.op = JOURNAL_ONCE_RELEASE;
    c->r.key = c->key;
    c->r.done = release_done;
    journal_append(p->ps->j, &c->r);
}

/* ---- a run --------------------------------------------------------------------------------- */

static void set_status(struct poller *p, const char *result, const char *error, int ok)
{
    pthread_mutex_lock(&p->ps->mu);
    snprintf(p->result, sizeof p->result, "%s", result);
    snprintf(p->error, sizeof p->error, "%s", error ? error : "");
    p->last_run_at = time_now();
    if (ok) {
        p->last_success_at = p->last_run_at;
        p->failures = 0;
    } else {
        p->failures++;
    }
    p->runs++;
    pthread_mutex_unlock(&p->ps->mu);
}

/* The run failed (result: its metrics label): logged once per cause, retried after a backoff
 * that honours the provider's Retry-After (seconds; 0: none). */
static void fail(struct poller *p, const char *result, const char *why, double retry_after)
{
    char cause[64]; /* the kind of failure, with its HTTP status: not the message's details */
    snprintf(cause, sizeof cause, "%s %.8s", result, strncmp(why, "HTTP ", 5) == 0 ? why : "");
    set_status(p, result, why, 0);
    metrics_add(M_POLLER_RUNS, 1, p->def->name, result);
    double delay = poll_retry_delay(p->def->interval, p->failures, retry_after,
                                    erand48(p->ps->rng));
    if (strcmp(cause, p->cause) != 0) {
        struct log_line l;
        log_begin(&l, LOG_WARN, "a poller's run failed; it runs again after a backoff (logged "
                                "once until the cause changes)");
        log_str(&l, "poller", p->def->name);
        log_str(&l, "result", result);
        log_str(&l, "error", why);
        log_num(&l, "retry_in", round(delay * 10) / 10);
        log_end(&l);
        snprintf(p->cause, sizeof p->cause, "%s", cause);
    }
    end_run(p);
    if (p->ps->shared)
        release(p);
    p->next_at = time_mono() + delay;
}

static void on_call_done(void *cls)
{
    struct poller *p = cls;
    p->call_ended = 1;
}

/* Asks for the run's current page. 0, or -1 (the run failed). */
static int ask(struct poller *p)
{
    char err[300];
    struct poll_request rq;
    memset(&rq, 0, sizeof rq);
    const char *headers[POLL_MAX_HEADERS];
    double left = p->deadline - time_mono();
    p->asked_at = time_mono();
    p->next_ask = 0;
    int rc = p->def->provider->poll->request(p->def, p->page, &rq, err, sizeof err);
    for (size_t i = 0; rc == 0 && i < rq.nheaders; i++)
        headers[i] = rq.headers[i].p;
    if (rc == 0 && rq.url.p != NULL &&
        (p->call = http_call_start(p->ps->http, rq.url.p, headers, rq.nheaders,
                                   left > 0.01 ? left : 0.01, POLL_MAX_REPLY, on_call_done, p,
                                   err, sizeof err)) != NULL) {
        poll_request_free(&rq);
        return 0;
    }
    poll_request_free(&rq);
    fail(p, "unreachable", err, 0);
    return -1;
}

/* journal_certs' fn: the entry (JSON) into the table at the top, by key. */
static void add_entry(void *cls, const char *json)
{
    char err[200];
    lua_State *L = cls;
    if (json_decode(L, json, strlen(json), err, sizeof err) != 0)
        return;
    if (!lua_istable(L, -1)) {
        lua_pop(L, 1);
        return;
    }
    json_fixup(L, -1);
    if (lua_getfield(L, -1, "key") != LUA_TSTRING) {
        lua_pop(L, 2);
        return;
    }
    lua_insert(L, -2);
    lua_rawset(L, -3);
}

static void run(struct poller *p)
{
    char err[300];
    lua_State *L = p->ps->L;
    const struct poller_def *def = p->def;
    int top = lua_gettop(L);
    if (!p->first_known) { /* whether it ever ran to the end: the journal keeps that */
        char key[200], *v = NULL;
        size_t n;
        snprintf(key, sizeof key, "certhook:poller:%s", def->name);
        if (journal_state_get(p->ps->j, key, &v, &n, err, sizeof err) != 0) {
            p->running = 1;
            fail(p, "journal", err, 0);
            return;
        }
        p->first_known = 1;
        p->first_done = v != NULL;
        free(v);
    }
    p->first = !p->first_done && !def->first_run_events;
    lua_newtable(L);
    struct journal_certs_query q = {.provider = def->provider->name};
    if (journal_certs(p->ps->j, &q, add_entry, L, err, sizeof err) != 0) {
        lua_settop(L, top);
        p->running = 1;
        fail(p, "journal", err, 0);
        return;
    }
    p->inv_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_newtable(L);
    p->seen_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_settop(L, top);
    p->running = 1;
    p->complete = 0;
    p->page = 1;
    p->events = 0;
    p->started = time_mono();
    p->deadline = p->started + def->timeout;
    if (p->ps->shared) /* never past its claim: then another server may run */
        p->deadline = fmin(p->deadline, p->started + 0.9 * def->interval);
    pthread_mutex_lock(&p->ps->mu);
    p->next_at = p->started + def->interval; /* from start to start */
    pthread_mutex_unlock(&p->ps->mu);
    ask(p);
}

/* Certificates this poller knew that the API no longer lists: deleted. Those it saw in its
 * previous complete run, and those whose entry it made. */
static void gone(struct poller *p)
{
    lua_State *L = p->ps->L;
    int top = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, p->inv_ref);
    int inv = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, p->seen_ref);
    int seen = lua_gettop(L);
    if (p->prev_ref != LUA_NOREF)
        lua_rawgeti(L, LUA_REGISTRYINDEX, p->prev_ref);
    else
        lua_newtable(L);
    int prev = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, inv) != 0) { /* key, entry */
        int entry = lua_gettop(L);
        lua_pushvalue(L, entry - 1);
        int listed = lua_rawget(L, seen) != LUA_TNIL;
        lua_pushvalue(L, entry - 1);
        int known = lua_rawget(L, prev) != LUA_TNIL;
        const char *source = str(L, entry, "source");
        known |= source != NULL && strcmp(source, p->def->source) == 0;
        const char *status = str(L, entry, "status");
        if (!listed && known && lua_istable(L, entry) &&
            (status == NULL || strcmp(status, "deleted") != 0))
            fire(p, 0, entry, 0);
        lua_settop(L, entry - 1);
    }
    lua_settop(L, top);
}

/* The run has read every page (complete), or max_pages of them. */
static void finish(struct poller *p, int complete)
{
    lua_State *L = p->ps->L;
    const struct poller_def *def = p->def;
    if (complete) {
        gone(p);
        unref(L, &p->prev_ref);
        p->prev_ref = p->seen_ref;
        p->seen_ref = LUA_NOREF;
    }
    if (complete && !p->first_done) { /* its first run is behind it, for every node */
        struct poll_note *note = calloc(1, sizeof *note);
        if (note != NULL) {
            snprintf(note->key, sizeof note->key, "certhook:poller:%s", def->name);
            snprintf(note->value, sizeof note->value, "{\"first_run_at\":%.0f}", time_now());
            note->r.op = JOURNAL_STATE_SET;
            note->r.key = note->key;
            note->r.value = note->value;
            note->r.value_len = strlen(note->value);
            note->r.done = note_done;
            journal_append(p->ps->j, &note->r);
        }
        p->first_done = 1;
    }
    if (p->cause[0])
        log_msg(LOG_INFO, "poller %s: runs work again", def->name);
    p->cause[0] = '\0';
    if (p->events > 0)
        log_msg(LOG_INFO, "poller %s: %zu differences with the inventory journaled (%d pages)",
                def->name, p->events, p->page);
    set_status(p, "ok", complete ? NULL : "stopped at the page limit", 1);
    metrics_add(M_POLLER_RUNS, 1, def->name, "ok");
    metrics_set(M_POLLER_SUCCESS, time_now(), def->name);
    end_run(p);
}

/* Retry-After: seconds, or an HTTP date. 0: none. */
static double retry_after(struct http_call *c)
{
    char v[100];
    if (http_call_header(c, "Retry-After", v, sizeof v) != 0)
        return 0;
    char *end;
    double s = strtod(v, &end);
    if (end != v && *end == '\0' && s >= 0)
        return s;
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    if (strptime(v, "%a, %d %b %Y %H:%M:%S GMT", &tm) != NULL) {
        double at = (double)timegm(&tm) - time_now();
        return at > 0 ? at : 0;
    }
    return 0;
}

/* The transfer of the current page has ended. */
static void reply(struct poller *p)
{
    char err[300], why[400];
    lua_State *L = p->ps->L;
    const struct poll_ops *ops = p->def->provider->poll;
    long status = 0;
    const char *body, *msg;
    size_t n;
    int top = lua_gettop(L), more = 0;
    p->call_ended = 0;
    if (http_call_result(p->call, &status, &body, &n, &msg) != 0) {
        snprintf(why, sizeof why, "%s", msg);
        fail(p, time_mono() >= p->deadline ? "timeout" : "unreachable", why, 0);
        return;
    }
    int decoded = json_decode(L, body, n, err, sizeof err) == 0;
    if (decoded)
        json_fixup(L, -1);
    if (status < 200 || status > 299) {
        const char *detail = decoded && ops->error(L, top + 1) ? lua_tostring(L, -1) : NULL;
        snprintf(why, sizeof why, "HTTP %ld%s%s", status, detail ? ": " : "",
                 detail ? detail : "");
        lua_settop(L, top);
        fail(p, status == 429 ? "rate_limited" : "http_error", why,
             status == 429 || status >= 500 ? retry_after(p->call) : 0);
        return;
    }
    if (!decoded || ops->page(L, top + 1, p->def, p->page, &more, err, sizeof err) != 0) {
        snprintf(why, sizeof why, "page %d: %s", p->page, decoded ? err : "not JSON");
        lua_settop(L, top);
        fail(p, "bad_reply", why, 0);
        return;
    }
    http_call_free(p->call);
    p->call = NULL;
    int list = lua_gettop(L);
    for (lua_Integer i = 1; lua_rawgeti(L, list, i) == LUA_TTABLE; i++) {
        compare(p, lua_gettop(L));
        lua_settop(L, list);
    }
    lua_settop(L, top);
    if (!more) {
        finish(p, 1);
    } else if (p->page >= p->def->max_pages) {
        log_msg(LOG_WARN, "poller %s: stopped at max_pages (%d); certificates past them are not "
                          "compared, and none is taken for gone", p->def->name, p->def->max_pages);
        finish(p, 0);
    } else { /* the next page, within the rate */
        p->page++;
        p->next_ask = fmax(time_mono(), p->asked_at + 1 / p->def->rate);
    }
}

/* The journal's answer to the claim c: run (unless stopping), or leave the run to the server
 * that holds it. */
static void claimed(struct poller *p, struct poll_claim *c, int stopping)
{
    enum journal_result result = c->r.result;
    char error[sizeof c->r.error];
    snprintf(error, sizeof error, "%s", c->r.error);
    p->claim = NULL;
    free(c);
    if (result == JOURNAL_ACCEPTED && stopping) {
        release(p);
    } else if (result == JOURNAL_ACCEPTED) {
        run(p);
    } else if (result == JOURNAL_REFUSED || result == JOURNAL_DUPLICATE) {
        pthread_mutex_lock(&p->ps->mu);
        snprintf(p->result, sizeof p->result, "elsewhere");
        p->error[0] = '\0';
        p->runs++;
        pthread_mutex_unlock(&p->ps->mu);
        metrics_add(M_POLLER_RUNS, 1, p->def->name, "elsewhere");
    } else {
        p->running = 1;
        fail(p, "journal", error[0] ? error : "the journal did not answer the claim", 0);
    }
}

double pollers_turn(struct pollers *ps, int stopping)
{
    double next = INFINITY;
    if (ps == NULL)
        return next;
    for (struct poller *p = ps->list; p; p = p->next) {
        double now = time_mono();
        if (p->running && p->call_ended) {
            reply(p);
        } else if (p->running && now >= p->deadline) {
            char why[100];
            snprintf(why, sizeof why, "the run took longer than its timeout (%g s)",
                     p->def->timeout);
            fail(p, "timeout", why, 0);
        } else if (p->running && p->call == NULL && p->next_ask > 0 && now >= p->next_ask) {
            ask(p);
        } else if (p->claim != NULL) {
            pthread_mutex_lock(&ps->mu);
            struct poll_claim *c = p->claim->answered ? p->claim : NULL;
            pthread_mutex_unlock(&ps->mu);
            if (c != NULL)
                claimed(p, c, stopping);
        } else if (!p->running && !stopping && now >= p->next_at) {
            if (!ps->shared || claim(p) != 0)
                run(p);
            else
                p->next_at = now + p->def->interval; /* from start to start */
        }
        if (p->claim != NULL)
            continue; /* the writer's answer wakes the loop */
        if (p->running)
            next = fmin(next, p->call_ended ? now
                              : p->call == NULL && p->next_ask > 0 ? fmin(p->next_ask, p->deadline)
                                                                 : p->deadline);
        else if (!stopping)
            next = fmin(next, p->next_at);
    }
    return next;
}
