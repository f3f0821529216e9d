/*
 * watchdog.c -- the expiry watchdog (DESIGN §6): now and then, the inventory's certificates
 * are looked at against the clock, and what is due becomes an event of the provider
 * `certhook` (providers/watchdog.c), journaled and delivered like any other:
 *
 *   certificate.expiration.upcoming  a threshold (watchdog.before, days before the expiry; and
 *                                    a third of the certificate's lifetime when its start is
 *                                    known) has passed and nobody -- neither a provider nor
 *                                    the watchdog -- warned since. Several passed at once (a
 *                                    clock that jumped, a certificate first heard of late):
 *                                    one warning, for the nearest.
 *   certificate.renewal.overdue      a threshold has passed after a warning, and nothing was
 *                                    renewed, issued or imported since: the warning escalates
 *                                    (once per certificate and expiry).
 *   certificate.expiration.reached   the expiry has passed, no certificate of the same
 *                                    hostname (or name) expires later, and nobody -- a
 *                                    provider -- said it was reached (a day before it or
 *                                    since: an expiry in days is right to a day).
 *
 * Ids are stable -- watchdog:<certificate>:<expiry>:<kind>[:<threshold days>] -- so the journal
 * keeps each finding once through restarts, reloads and any number of nodes; a set of the ids
 * fired by this process spares the writer the duplicates between two rounds. The rounds run
 * on the dispatcher's thread, from its loop: reads of the inventory and a few events queued
 * to the writer, never a wait.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#include "dispatch/dispatch.h"
#include "providers/provider.h"

#define MAX_FIRED 100000 /* ids remembered before the set starts over */

struct watchdog {
    struct journal *j;
    struct watchdog_cfg cfg;
    lua_State *L;        /* JSON, the findings as tables, the set of fired ids (registry) */
    struct source src;   /* "watchdog", provider certhook */
    double next;         /* time_mono() of the next round */
    int fired_ref;       /* the set of ids fired, in L's registry */
    size_t fired;        /* ids in the set */
};

/* A finding on its way to the journal. */
struct finding {
    struct journal_req r;
    char type[64];
};

struct watchdog *watchdog_new(struct journal *j, const struct watchdog_cfg *cfg, char *err,
                              size_t errlen)
{
    struct watchdog *w = calloc(1, sizeof *w);
    const struct provider *p = provider_find("certhook");
    if (w == NULL || p == NULL || (w->L = luaL_newstate()) == NULL) {
        snprintf(err, errlen, "watchdog: out of memory");
        free(w);
        return NULL;
    }
    luaL_openlibs(w->L);
    json_open(w->L);
    lua_newtable(w->L);
    w->fired_ref = luaL_ref(w->L, LUA_REGISTRYINDEX);
    w->j = j;
    w->cfg = *cfg;
    w->src = (struct source){.name = "watchdog", .provider = p, .insecure = 1};
    w->next = time_mono() + 1; /* the first round once the backlog had a moment */
    return w;
}

void watchdog_free(struct watchdog *w)
{
    if (w == NULL)
        return;
    lua_close(w->L);
    free(w);
}

void watchdog_set_config(struct watchdog *w, const struct watchdog_cfg *cfg)
{
    w->cfg = *cfg;
}

static void add_entry(void *cls, const char *json)
{
    lua_State *L = cls;
    lua_pushstring(L, json);
    lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
}

/* Number field k of the table at t, or 0 when absent. */
static double num(lua_State *L, int t, const char *k)
{
    double v = lua_getfield(L, t, k) == LUA_TNUMBER ? lua_tonumber(L, -1) : 0;
    lua_pop(L, 1);
    return v;
}

/* The name certificates that replace each other share: the hostname, else the name. Pushed. */
static void lineage(lua_State *L, int e)
{
    if (lua_getfield(L, e, "hostname") != LUA_TSTRING) {
        lua_pop(L, 1);
        if (lua_getfield(L, e, "name") != LUA_TSTRING) {
            lua_pop(L, 1);
            lua_getfield(L, e, "key");
        }
    }
}

static int by_days_desc(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* What is due for the entry at e at time now: "upcoming" (with *threshold, days), "overdue",
 * "reached", or NULL. latest: the table lineage -> the latest expiry known. */
static const char *due(lua_State *L, int e, int latest, const struct watchdog_cfg *cfg,
                       double now, double *threshold)
{
    double x = num(L, e, "expires_at"), nb = num(L, e, "not_before");
    double warned = num(L, e, "warned_at"), renewed = num(L, e, "renewed_at");
    if (x <= 0)
        return NULL;
    if (now >= x) {
        if (num(L, e, "reached_at") >= x - 86400) /* said already */
            return NULL;
        lineage(L, e);
        lua_rawget(L, latest);
        double newest = lua_isnumber(L, -1) ? lua_tonumber(L, -1) : 0;
        lua_pop(L, 1);
        return newest > x ? NULL : "reached";
    }
    double t[WATCHDOG_MAX_BEFORE + 1]; /* thresholds, seconds before the expiry */
    size_t n = 0, crossed = 0;
    for (size_t i = 0; i < cfg->nbefore; i++)
        t[n++] = cfg->before[i] * 86400;
    if (nb > 0 && x > nb)
        t[n++] = (x - nb) / 3;
    qsort(t, n, sizeof t[0], by_days_desc);
    double first = 0, last = 0;
    for (size_t i = 0; i < n; i++)
        if (now >= x - t[i]) {
            if (crossed++ == 0)
                first = t[i];
            last = t[i];
        }
    if (crossed == 0 || warned >= x - last) /* nothing passed, or warned in this window */
        return NULL;
    if (warned >= x - first) /* warned at an earlier threshold: renewed since? */
        return renewed >= warned ? NULL : "overdue";
    *threshold = round(last / 86400 * 1e4) / 1e4;
    return "upcoming";
}

static void finding_done(struct journal_req *r)
{
    struct finding *f = (struct finding *)r;
    if (r->result == JOURNAL_ACCEPTED)
        metrics_add(M_WATCHDOG, 1, f->type);
    else if (r->result == JOURNAL_FAILED)
        log_msg(LOG_WARN, "the watchdog's finding could not be journaled: %s (the next round "
                          "tries again)", r->error);
    free(f);
}

/* The event of a finding (the body at the top of the stack, a JSON string), queued to the
 * journal unless this process fired its id already. Pops the body. */
static void fire(struct watchdog *w, double now)
{
    char err[300];
    lua_State *L = w->L;
    size_t n;
    const char *body = lua_tolstring(L, -1, &n);
    struct reply rp = {0};
    struct request rq = {.method = "POST", .body = body, .body_len = n, .received_at = now};
    int top = lua_gettop(L);
    if (source_normalize(L, &w->src, &rq, &rp, err, sizeof err) != 0 || rp.status != 0) {
        buf_free(&rp.body);
        log_msg(LOG_WARN, "watchdog: %s", err);
        lua_settop(L, top - 1);
        return;
    }
    lua_rawgeti(L, -1, 1);
    int ev = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, w->fired_ref);
    lua_getfield(L, ev, "id");
    lua_pushvalue(L, -1);
    if (lua_rawget(L, -3) != LUA_TNIL) { /* fired already */
        lua_settop(L, top - 1);
        return;
    }
    lua_pop(L, 1);
    if (w->fired >= MAX_FIRED) { /* start over: the journal still knows them */
        lua_newtable(L);
        lua_replace(L, -3);
        lua_pushvalue(L, -2);
        lua_rawseti(L, LUA_REGISTRYINDEX, w->fired_ref);
        w->fired = 0;
    }
    lua_pushboolean(L, 1);
    lua_rawset(L, -3);
    w->fired++;
    lua_settop(L, ev);
    struct event summary;
    struct buf packed;
    buf_init(&packed);
    struct finding *f = calloc(1, sizeof *f);
    if (f != NULL && event_pack(L, ev, ev - 2, &summary, &packed, err, sizeof err) == 0) {
        summary.body = body;
        summary.body_len = n;
        snprintf(f->type, sizeof f->type, "%s", summary.type);
        f->r.op = JOURNAL_APPEND;
        f->r.ev = event_new(&summary);
        f->r.done = finding_done;
        if (f->r.ev != NULL) {
            log_msg(LOG_INFO, "watchdog: %s for %s", summary.type,
                    summary.hostname ? summary.hostname : summary.id);
            journal_append(w->j, &f->r);
            f = NULL;
        }
    }
    free(f);
    buf_free(&packed);
    lua_settop(L, top - 1);
}

int watchdog_round(struct watchdog *w, double now)
{
    char err[300];
    lua_State *L = w->L;
    int top = lua_gettop(L), fired = 0;
    struct journal_certs_query q = {0};
    lua_newtable(L);
    int list = lua_gettop(L);
    if (journal_certs(w->j, &q, add_entry, L, err, sizeof err) != 0) {
        log_msg(LOG_WARN, "watchdog: cannot read the inventory: %s", err);
        lua_settop(L, top);
        return -1;
    }
    lua_Integer n = (lua_Integer)lua_rawlen(L, list);
    lua_newtable(L); /* lineage -> the latest expiry */
    int latest = lua_gettop(L);
    for (lua_Integer i = 1; i <= n; i++) {
        size_t len;
        lua_rawgeti(L, list, i);
        const char *json = lua_tolstring(L, -1, &len);
        if (json_decode(L, json, len, err, sizeof err) != 0 || !lua_istable(L, -1)) {
            lua_settop(L, latest);
            continue;
        }
        json_fixup(L, -1);
        lua_replace(L, -2);
        lua_pushvalue(L, -1);
        lua_rawseti(L, list, i);
        int e = lua_gettop(L);
        double x = num(L, e, "expires_at");
        lineage(L, e);
        lua_pushvalue(L, -1);
        lua_rawget(L, latest);
        if (x > 0 && (!lua_isnumber(L, -1) || lua_tonumber(L, -1) < x)) {
            lua_pop(L, 1);
            lua_pushnumber(L, x);
            lua_rawset(L, latest);
        }
        lua_settop(L, latest);
    }
    for (lua_Integer i = 1; i <= n; i++) {
        double threshold = -1;
        if (lua_rawgeti(L, list, i) != LUA_TTABLE) {
            lua_settop(L, latest);
            continue;
        }
        int e = lua_gettop(L);
        const char *kind = due(L, e, latest, &w->cfg, now, &threshold);
        if (kind != NULL) {
            lua_createtable(L, 0, 4);
            lua_pushstring(L, kind);
            lua_setfield(L, -2, "watchdog");
            if (threshold >= 0) {
                lua_pushnumber(L, threshold);
                lua_setfield(L, -2, "threshold_days");
            }
            event_push_epoch(L, now);
            lua_setfield(L, -2, "fired_at");
            lua_pushvalue(L, e);
            lua_setfield(L, -2, "certificate");
            size_t len;
            if (json_encode(L, lua_gettop(L), &len) != NULL) {
                fire(w, now);
                fired++;
            } else {
                lua_pop(L, 1);
            }
        }
        lua_settop(L, latest);
    }
    lua_settop(L, top);
    return fired;
}

void watchdog_tick(struct watchdog *w)
{
    if (w == NULL || !w->cfg.enabled || time_mono() < w->next)
        return;
    w->next = time_mono() + w->cfg.interval;
    watchdog_round(w, time_now());
}
