/*
 * lua_provider.c -- providers written in Lua (DESIGN §5): sources.<name> = { provider = "lua",
 * script = "x.lua", secret = ..., header = ... }. The script returns { name = "x", normalize =
 * function(body, request) ... end } and normalize returns an event (a table in the shape of
 * DESIGN §3) or a list of them.
 *
 * Each script runs in a Lua state of its own, one per intake thread (kept in that thread's
 * parser state, rebuilt when the configuration changes), with the standard libraries but
 * os.exit, os.execute, io.popen and package.loadlib, under a memory limit (its allocator) and
 * a time limit (a count hook). The decoded body and the request (method, headers, query) are
 * copied into it; the events are copied back -- shared tables stay shared, anything an event
 * cannot hold is an error. A script that raises, runs out of time or memory, or returns no
 * event does not lose the payload: it becomes one `unknown` event with `error` set, logged
 * and counted (certhook_provider_errors_total). Credentials (auth.c) are checked from the
 * head, as the built-in providers' are.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <lauxlib.h>
#include <lualib.h>

#include "providers/auth.h"
#include "providers/fields.h"
#include "providers/provider.h"

#define DEFAULT_HEADER "Authorization"
#define STATES "certhook.lua_provider.states" /* registry: source name -> its script state */
#define SCRIPT_STATE "certhook.lua_provider.state"
#define MAX_DEPTH 64
#define ERROR_MAX 600

/* A source's configuration. */
struct lp {
    struct auth auth;
    char *script;
    double timeout;       /* seconds normalize may run */
    double memory_limit;  /* bytes the script's state may hold */
    unsigned long serial; /* this configuration: script states made for another are rebuilt */
};

static atomic_ulong serials;

/* A script's Lua state and its limits: userdata in the parser state (its __gc closes S). */
struct script_state {
    lua_State *S;
    unsigned long serial;
    size_t used, limit;  /* bytes S holds; its limit while a call runs (0: none) */
    double deadline;     /* time_mono() past which the call is stopped; 0: none */
    int ref;             /* in S's registry: the script's table */
};

/* ---- the script's state ------------------------------------------------------------------------ */

static void *limited_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    struct script_state *ss = ud;
    size_t old = ptr != NULL ? osize : 0;
    if (nsize == 0) {
        free(ptr);
        ss->used -= old;
        return NULL;
    }
    if (ss->limit > 0 && nsize > old && ss->used + (nsize - old) > ss->limit)
        return NULL; /* Lua raises "not enough memory" */
    void *p = realloc(ptr, nsize);
    if (p != NULL)
        ss->used = ss->used - old + nsize;
    return p;
}

/* The count hook: past the deadline, every instruction raises, also inside pcall. */
static void on_count(lua_State *S, lua_Debug *ar)
{
    void *ud;
    (void)ar;
    lua_getallocf(S, &ud);
    struct script_state *ss = ud;
    if (ss->deadline > 0 && time_mono() > ss->deadline) {
        lua_sethook(S, on_count, LUA_MASKCOUNT, 1);
        luaL_error(S, "normalize ran longer than its time limit (the source's timeout)");
    }
}

static int forbidden(lua_State *S)
{
    return luaL_error(S, "%s is not available to Lua providers: they run inside intake",
                      lua_tostring(S, lua_upvalueindex(1)));
}

/* Runs protected in S: the standard libraries, less what would stop or block intake. */
static int open_libs(lua_State *S)
{
    static const char *const banned[][2] = {
        {"os", "exit"}, {"os", "execute"}, {"io", "popen"}, {"package", "loadlib"},
    };
    luaL_openlibs(S);
    for (size_t i = 0; i < COUNT(banned); i++) {
        lua_getglobal(S, banned[i][0]);
        lua_pushfstring(S, "%s.%s", banned[i][0], banned[i][1]);
        lua_pushcclosure(S, forbidden, 1);
        lua_setfield(S, -2, banned[i][1]);
        lua_pop(S, 1);
    }
    return 0;
}

/* Runs protected in S: loads and runs the script at path (upvalue-free: argument 1) and
 * checks what it returns; leaves that table. */
static int load_script(lua_State *S)
{
    const char *path = lua_tostring(S, 1);
    if (luaL_loadfilex(S, path, "t") != LUA_OK)
        return lua_error(S);
    lua_call(S, 0, 1);
    if (!lua_istable(S, -1))
        return luaL_error(S, "%s must return a table { name = \"...\", normalize = "
                             "function(body, request) ... end }", path);
    if (lua_getfield(S, -1, "normalize") != LUA_TFUNCTION)
        return luaL_error(S, "%s: normalize must be a function(body, request)", path);
    if (lua_getfield(S, -2, "name") != LUA_TSTRING)
        return luaL_error(S, "%s: name must be a string (the provider name its events carry)",
                          path);
    const char *name = lua_tostring(S, -1);
    size_t n = lua_rawlen(S, -1);
    if (n == 0 || n > 64 || strspn(name, "abcdefghijklmnopqrstuvwxyz0123456789_.-") != n)
        return luaL_error(S, "%s: name must be 1 to 64 lower-case letters, digits, '_', '.' "
                             "or '-'", path);
    if (provider_find(name) != NULL)
        return luaL_error(S, "%s: name %s is a built-in provider's", path, name);
    lua_pop(S, 2);
    return 1;
}

/* A message of the error value at the top of S (never calls __tostring: the script's). */
static const char *error_text(lua_State *S)
{
    if (lua_type(S, -1) == LUA_TSTRING)
        return lua_tostring(S, -1);
    return lua_pushfstring(S, "(an error object of type %s)", luaL_typename(S, -1));
}

/* Closes the script's state: its finalizers run under the count hook too (a second). */
static void state_close(struct script_state *ss)
{
    if (ss->S == NULL)
        return;
    ss->limit = 0;
    ss->deadline = time_mono() + 1;
    lua_sethook(ss->S, on_count, LUA_MASKCOUNT, 1000);
    lua_close(ss->S);
    ss->S = NULL;
}

/* Makes ss's state for the script at path under limit bytes: 0, or -1 with err. */
static int state_open(struct script_state *ss, const char *path, double limit,
                      double timeout, char *err, size_t errlen)
{
    ss->limit = (size_t)limit;
    ss->S = lua_newstate(limited_alloc, ss);
    if (ss->S == NULL) {
        snprintf(err, errlen, "cannot create a Lua state: out of memory");
        return -1;
    }
    lua_State *S = ss->S;
    ss->deadline = time_mono() + timeout;
    lua_sethook(S, on_count, LUA_MASKCOUNT, 1000);
    lua_pushcfunction(S, open_libs);
    int rc = lua_pcall(S, 0, 0, 0);
    if (rc == LUA_OK) {
        lua_pushcfunction(S, load_script);
        lua_pushstring(S, path);
        rc = lua_pcall(S, 1, 1, 0);
    }
    lua_sethook(S, NULL, 0, 0);
    ss->deadline = 0;
    ss->limit = 0;
    if (rc != LUA_OK) {
        snprintf(err, errlen, "%s", error_text(S));
        state_close(ss);
        return -1;
    }
    ss->ref = luaL_ref(S, LUA_REGISTRYINDEX);
    return 0;
}

static int state_gc(lua_State *L)
{
    state_close(luaL_checkudata(L, 1, SCRIPT_STATE));
    return 0;
}

/* The script state of source s in the parser state L, made (again) when missing or made for
 * another configuration. NULL with err when the script does not load. */
static struct script_state *state_of(lua_State *L, const struct source *s, char *err,
                                     size_t errlen)
{
    const struct lp *lp = s->priv;
    int top = lua_gettop(L);
    luaL_getsubtable(L, LUA_REGISTRYINDEX, STATES); /* this parser state's script states */
    int states = lua_gettop(L);
    if (lua_getfield(L, states, s->name) == LUA_TUSERDATA) {
        struct script_state *ss = luaL_checkudata(L, -1, SCRIPT_STATE);
        if (ss->serial == lp->serial && ss->S != NULL) {
            lua_settop(L, top);
            return ss; /* anchored in the registry */
        }
        state_close(ss); /* another configuration's: closed now, not at a later collection */
    }
    lua_settop(L, states);
    struct script_state *ss = lua_newuserdatauv(L, sizeof *ss, 0);
    memset(ss, 0, sizeof *ss);
    if (luaL_newmetatable(L, SCRIPT_STATE)) {
        lua_pushcfunction(L, state_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    ss->serial = lp->serial;
    if (state_open(ss, lp->script, lp->memory_limit, lp->timeout, err, errlen) != 0) {
        lua_settop(L, top);
        return NULL;
    }
    lua_setfield(L, states, s->name);
    lua_settop(L, top);
    return ss;
}

/* ---- copying values between states --------------------------------------------------------------- */

/* Pushes onto `to` a copy of the value at idx of `from`: tables (string and number keys),
 * strings, numbers, booleans, JSON null. `seen` (an index of `to`) maps tables of `from`
 * (light userdata of their address) to their copies, so that shared tables stay shared and
 * cycles end. 0, or -1 (nothing pushed) with err. Allocation failures in `to` raise there. */
static int copy_value(lua_State *from, int idx, lua_State *to, int seen, int depth, char *err,
                      size_t errlen)
{
    idx = lua_absindex(from, idx);
    switch (lua_type(from, idx)) {
    case LUA_TNIL:
        lua_pushnil(to);
        return 0;
    case LUA_TBOOLEAN:
        lua_pushboolean(to, lua_toboolean(from, idx));
        return 0;
    case LUA_TNUMBER:
        if (lua_isinteger(from, idx))
            lua_pushinteger(to, lua_tointeger(from, idx));
        else
            lua_pushnumber(to, lua_tonumber(from, idx));
        return 0;
    case LUA_TSTRING: {
        size_t n;
        const char *p = lua_tolstring(from, idx, &n);
        lua_pushlstring(to, p, n);
        return 0;
    }
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(from, idx) == NULL) { /* cjson.null */
            lua_pushlightuserdata(to, NULL);
            return 0;
        }
        break;
    case LUA_TTABLE: {
        const void *t = lua_topointer(from, idx);
        lua_pushlightuserdata(to, (void *)t);
        if (lua_rawget(to, seen) == LUA_TTABLE)
            return 0;
        lua_pop(to, 1);
        if (depth >= MAX_DEPTH || !lua_checkstack(from, 3) || !lua_checkstack(to, 4)) {
            snprintf(err, errlen, "a table nested more than %d deep", MAX_DEPTH);
            return -1;
        }
        lua_newtable(to);
        lua_pushlightuserdata(to, (void *)t);
        lua_pushvalue(to, -2);
        lua_rawset(to, seen);
        lua_pushnil(from);
        while (lua_next(from, idx) != 0) { /* key, value */
            int kt = lua_type(from, -2);
            if (kt != LUA_TSTRING && kt != LUA_TNUMBER) {
                lua_pop(from, 2);
                lua_pop(to, 1);
                snprintf(err, errlen, "a table has a key of type %s", lua_typename(from, kt));
                return -1;
            }
            if (copy_value(from, -2, to, seen, depth + 1, err, errlen) != 0) {
                lua_pop(from, 2);
                lua_pop(to, 1);
                return -1;
            }
            if (copy_value(from, -1, to, seen, depth + 1, err, errlen) != 0) {
                lua_pop(from, 2);
                lua_pop(to, 2);
                return -1;
            }
            lua_rawset(to, -3);
            lua_pop(from, 1);
        }
        return 0;
    }
    default:
        break;
    }
    snprintf(err, errlen, "a value of type %s", luaL_typename(from, idx));
    return -1;
}

/* ---- running normalize --------------------------------------------------------------------------- */

/* The request's headers and URL arguments, collected before the script's state is entered (a
 * memory error there must not unwind through intake's iteration): "name\0value\0" each. */
struct pairs {
    struct buf b;
    const struct auth *auth; /* headers: names in lower case, its credentials' left out */
    int failed;
};

static void collect(void *cls, const char *name, const char *value)
{
    struct pairs *p = cls;
    size_t at = p->b.n, n = strlen(name);
    if (p->auth != NULL &&
        ((p->auth->secrets.n > 0 && strcasecmp(name, p->auth->header) == 0) ||
         (p->auth->basic.n > 0 && strcasecmp(name, "authorization") == 0)))
        return;
    if (buf_add(&p->b, name, n + 1) != 0 || buf_add(&p->b, value, strlen(value) + 1) != 0) {
        p->failed = 1;
        return;
    }
    for (char *c = p->b.p + at; p->auth != NULL && c < p->b.p + at + n; c++)
        if (*c >= 'A' && *c <= 'Z')
            *c = (char)(*c + 32);
}

struct call {
    lua_State *L;          /* the parser state */
    int body;              /* its index of the decoded body */
    const char *method;
    struct pairs headers, query;
    char err[ERROR_MAX];
};

/* Pushes a table of the pairs (runs in S, protected). */
static void push_pairs(lua_State *S, const struct pairs *p)
{
    lua_newtable(S);
    for (size_t at = 0; p->b.p != NULL && at < p->b.n;) {
        const char *name = p->b.p + at, *value = name + strlen(name) + 1;
        lua_pushstring(S, value);
        lua_setfield(S, -2, name);
        at = (size_t)(value + strlen(value) + 1 - p->b.p);
    }
}

/* Runs protected in S: copies the body and the request in, calls normalize; leaves its result. */
static int call_normalize(lua_State *S)
{
    struct call *c = lua_touserdata(S, 1);
    struct script_state *ss = lua_touserdata(S, 2);
    lua_settop(S, 0);
    lua_rawgeti(S, LUA_REGISTRYINDEX, ss->ref);
    lua_getfield(S, 1, "normalize");
    lua_newtable(S); /* the tables copied so far */
    int top = lua_gettop(c->L);
    if (copy_value(c->L, c->body, S, 3, 0, c->err, sizeof c->err) != 0) {
        lua_settop(c->L, top);
        return luaL_error(S, "the body: %s", c->err);
    }
    lua_remove(S, 3);
    lua_createtable(S, 0, 3); /* request */
    lua_pushstring(S, c->method ? c->method : "POST");
    lua_setfield(S, -2, "method");
    push_pairs(S, &c->headers);
    lua_setfield(S, -2, "headers");
    push_pairs(S, &c->query);
    lua_setfield(S, -2, "query");
    lua_call(S, 2, 1);
    return 1;
}

static int is_canonical(const char *t)
{
    if (strcmp(t, "notification.test") == 0 || strcmp(t, "unknown") == 0)
        return 1;
    if (strncmp(t, "certificate.", 12) != 0)
        return 0;
    const char *phase = t + 12, *dot = strchr(phase, '.');
    size_t n = strlen(t);
    return dot != NULL && dot > phase && dot[1] != '\0' && strchr(dot + 1, '.') == NULL &&
           strspn(t, "abcdefghijklmnopqrstuvwxyz_.") == n;
}

/* Fixes up the copied event at ev: its type canonical (another goes to provider_type), raw the
 * body, no fields certhook sets itself. */
static void tidy(lua_State *L, int ev, int body)
{
    static const char *const ours[] = {"source", "provider", "received_at", "previous", "stale",
                                       "repeats"};
    int top = lua_gettop(L);
    const char *type = lua_getfield(L, ev, "type") == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    if (type == NULL || !is_canonical(type)) {
        if (type != NULL && lua_getfield(L, ev, "provider_type") == LUA_TNIL) {
            lua_pushstring(L, type);
            lua_setfield(L, ev, "provider_type");
        }
        lua_pushliteral(L, "unknown");
        lua_setfield(L, ev, "type");
    }
    if (lua_getfield(L, ev, "id") != LUA_TSTRING || lua_rawlen(L, -1) == 0) {
        lua_pushnil(L);
        lua_setfield(L, ev, "id"); /* source.c gives it the body's hash */
    }
    for (size_t i = 0; i < COUNT(ours); i++) {
        lua_pushnil(L);
        lua_setfield(L, ev, ours[i]);
    }
    lua_pushvalue(L, body);
    lua_setfield(L, ev, "raw");
    lua_settop(L, top);
}

/* Copies normalize's result (an event or a list of them, at the top of S) to the list at out
 * in L. Raw access only: the script's metamethods do not run here. 0, or -1 with err. */
static int take_events(lua_State *S, lua_State *L, int out, int body, char *err, size_t errlen)
{
    int r = lua_gettop(S);
    if (lua_type(S, r) != LUA_TTABLE) {
        snprintf(err, errlen, "normalize returned %s, not an event or a list of events",
                 luaL_typename(S, r));
        return -1;
    }
    lua_pushnil(S);
    int empty = lua_next(S, r) == 0;
    lua_settop(S, r);
    /* a list: its first element is a table (an event has no field [1] that is a table) */
    int list = lua_rawgeti(S, r, 1) == LUA_TTABLE;
    lua_settop(S, r);
    lua_Integer n = list ? (lua_Integer)lua_rawlen(S, r) : 1;
    if (empty) {
        snprintf(err, errlen, "normalize returned no event");
        return -1;
    }
    lua_newtable(L);
    int seen = lua_gettop(L);
    for (lua_Integer i = 1; i <= n; i++) {
        if (list && lua_rawgeti(S, r, i) != LUA_TTABLE) {
            snprintf(err, errlen, "normalize returned a list whose element %lld is not a table",
                     (long long)i);
            return -1;
        }
        char why[200];
        if (copy_value(S, list ? -1 : r, L, seen, 0, why, sizeof why) != 0) {
            snprintf(err, errlen, "normalize returned what an event cannot hold: %s", why);
            return -1;
        }
        tidy(L, lua_gettop(L), body);
        lua_rawseti(L, out, i);
        lua_settop(S, r);
    }
    lua_settop(L, seen - 1);
    return 0;
}

/* ---- the provider ------------------------------------------------------------------------------- */

static int configure(lua_State *L, int t, struct source *s, char *err, size_t errlen)
{
    char path[160], msg[ERROR_MAX];
    struct lp *lp = calloc(1, sizeof *lp);
    if (lp == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    s->priv = lp;
    lp->timeout = 1;
    lp->memory_limit = 32 << 20;
    lp->serial = atomic_fetch_add(&serials, 1) + 1;
    snprintf(path, sizeof path, "sources.%s.", s->name);
    if (auth_configure(L, t, s, &lp->auth, DEFAULT_HEADER, 1, err, errlen) != 0 ||
        setting_string(L, t, "script", &lp->script, path, err, errlen) != 0 ||
        setting_number(L, t, "timeout", 0.001, 60, &lp->timeout, path, err, errlen) != 0 ||
        setting_number(L, t, "memory_limit", 1 << 20, 1 << 30, &lp->memory_limit, path, err,
                       errlen) != 0)
        return -1;
    if (lp->script == NULL) {
        snprintf(err, errlen, "%sscript is missing: the path of the Lua file that returns "
                              "{ name = \"...\", normalize = function(body, request) ... end }",
                 path);
        return -1;
    }
    if (!auth_has(&lp->auth) && !s->insecure) {
        snprintf(err, errlen, "sources.%s has no credentials: set secret (sent in the %s "
                              "header) or username and password (Basic), or insecure = true to "
                              "accept unauthenticated requests", s->name, lp->auth.header);
        return -1;
    }
    /* loaded once now: a script that does not load stops the configuration, not a request */
    struct script_state ss = {0};
    if (state_open(&ss, lp->script, lp->memory_limit, lp->timeout, msg, sizeof msg) != 0) {
        snprintf(err, errlen, "%sscript: %s", path, msg);
        return -1;
    }
    lua_rawgeti(ss.S, LUA_REGISTRYINDEX, ss.ref);
    lua_getfield(ss.S, -1, "name");
    s->label = strdup(lua_tostring(ss.S, -1));
    state_close(&ss);
    if (s->label == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

static void release(struct source *s)
{
    struct lp *lp = s->priv;
    if (lp == NULL)
        return;
    auth_free(&lp->auth);
    free(lp->script);
    free(lp);
    s->priv = NULL;
}

static int head(const struct source *s, const struct request *rq, struct reply *r, char *err,
                size_t errlen)
{
    const struct lp *lp = s->priv;
    (void)r;
    return auth_refuse(&lp->auth, rq, err, errlen);
}

/* The payload as one unknown event with why the script failed: logged and counted. */
static void failed(lua_State *L, int out, int body, const struct source *s, const char *why)
{
    struct log_line l;
    log_begin(&l, LOG_WARN, "a Lua provider failed: the payload is journaled as unknown");
    log_str(&l, "source", s->name);
    log_str(&l, "provider", source_provider(s));
    log_str(&l, "error", why);
    log_end(&l);
    metrics_add(M_PROVIDER_ERRORS, 1, s->name, source_provider(s));
    lua_settop(L, out);
    lua_createtable(L, 0, 4);
    lua_pushliteral(L, "unknown");
    lua_setfield(L, -2, "type");
    lua_pushfstring(L, "%s: %s", source_provider(s), why);
    lua_setfield(L, -2, "error");
    lua_pushinteger(L, 1);
    lua_setfield(L, -2, "payload_version");
    lua_pushvalue(L, body);
    lua_setfield(L, -2, "raw");
    lua_rawseti(L, out, 1);
    for (lua_Integer i = 2; lua_rawgeti(L, out, i) != LUA_TNIL; i++) { /* a partial copy */
        lua_pop(L, 1);
        lua_pushnil(L);
        lua_rawseti(L, out, i);
    }
    lua_settop(L, out);
}

static int normalize(lua_State *L, int body, const struct source *s, const struct request *rq,
                     struct reply *r, char *err, size_t errlen)
{
    const struct lp *lp = s->priv;
    char why[ERROR_MAX];
    (void)r, (void)err, (void)errlen;
    luaL_checkstack(L, 20, "normalize");
    lua_newtable(L);
    int out = lua_gettop(L);
    struct script_state *ss = state_of(L, s, why, sizeof why);
    if (ss == NULL) {
        failed(L, out, body, s, why);
        return 0;
    }
    lua_State *S = ss->S;
    struct call c = {.L = L, .body = body, .method = rq->method};
    buf_init(&c.headers.b);
    buf_init(&c.query.b);
    c.headers.auth = &lp->auth;
    if (rq->each != NULL) {
        rq->each(rq, 0, collect, &c.headers);
        rq->each(rq, 1, collect, &c.query);
    }
    if (c.headers.failed || c.query.failed) {
        buf_free(&c.headers.b);
        buf_free(&c.query.b);
        failed(L, out, body, s, "out of memory");
        return 0;
    }
    ss->limit = (size_t)lp->memory_limit;
    ss->deadline = time_mono() + lp->timeout;
    lua_sethook(S, on_count, LUA_MASKCOUNT, 1000);
    lua_pushcfunction(S, call_normalize);
    lua_pushlightuserdata(S, &c);
    lua_pushlightuserdata(S, ss);
    int rc = lua_pcall(S, 2, 1, 0);
    lua_sethook(S, NULL, 0, 0);
    ss->deadline = 0;
    ss->limit = 0; /* S allocates outside a pcall from here on: it must not fail */
    if (rc != LUA_OK) {
        snprintf(why, sizeof why, "%s", error_text(S));
        lua_settop(S, 0);
        failed(L, out, body, s, why);
    } else if (take_events(S, L, out, body, why, sizeof why) != 0) {
        failed(L, out, body, s, why);
    }
    lua_settop(S, 0);
    lua_settop(L, out);
    buf_free(&c.headers.b);
    buf_free(&c.query.b);
    return 0;
}

static int send(lua_State *L, const char *body, size_t n, int cfg, int opts, int hdr, char *err,
                size_t errlen)
{
    (void)err, (void)errlen;
    auth_send(L, cfg, opts, hdr, DEFAULT_HEADER);
    lua_pushlstring(L, body, n);
    return 0;
}

static const char *const settings[] = {"script", "secret", "header", "username", "password",
                                       "timeout", "memory_limit", NULL};

const struct provider lua_provider = {
    .name = "lua",
    .settings = settings,
    .configure = configure,
    .release = release,
    .head = head,
    .normalize = normalize,
    .send = send,
};
