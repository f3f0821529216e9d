/*
 * api_state.c -- certhook.state (DESIGN §7): keys and values in the journal, shared by every
 * handler, durable across restarts and reloads.
 *
 * Values are stored as JSON: nil (deletes), booleans, finite numbers, strings, and tables
 * JSON can hold -- 1..n keys (an array) or string keys (an object) -- checked before
 * encoding, so what a get returns is a copy of what was set. Writes go through the journal
 * writer (journal/writer.c) and return once committed -- inside a delivery the handler yields to the
 * dispatcher meanwhile; reads use the read connection, so a handler reads its own writes. The
 * state of `serve` uses the server's journal; that of `certhook run` opens the data
 * directory on first use.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "journal/journal.h"
#include "lua/api.h"
#include "providers/provider.h"

#define MAX_DEPTH 64
#define BOX "certhook.state.box"

static const char state_key = 's';

/* A write that waits for the journal writer: userdata on the coroutine's stack until the
 * writer has answered (its wait cannot be cancelled: the writer holds the request). */
struct state_write {
    struct journal_req r;
    struct delivery_ctx *ctx;
    struct wait wait;
};

struct state_ctx {
    struct journal *j;
    int owned;    /* opened here (certhook run): closed with the Lua state */
    int detached; /* the journal is closing: no more use of it */
    double busy_timeout;
    char dir[];
};

static int state_ctx_gc(lua_State *L)
{
    struct state_ctx *c = lua_touserdata(L, 1);
    if (c->owned) {
        journal_stop(c->j);
        journal_close(c->j);
        c->j = NULL;
        c->owned = 0;
    }
    return 0;
}

void state_attach(lua_State *L, struct journal *j, const char *dir, double busy_timeout)
{
    size_t n = dir ? strlen(dir) : 0;
    struct state_ctx *c = lua_newuserdatauv(L, sizeof *c + n + 1, 0);
    c->j = j;
    c->owned = 0;
    c->detached = 0;
    c->busy_timeout = busy_timeout;
    memcpy(c->dir, dir ? dir : "", n + 1);
    lua_createtable(L, 0, 2);
    lua_pushcfunction(L, state_ctx_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushliteral(L, "certhook.state.journal");
    lua_setfield(L, -2, "__name");
    lua_setmetatable(L, -2);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &state_key);
}

void state_detach(lua_State *L)
{
    lua_rawgetp(L, LUA_REGISTRYINDEX, &state_key);
    struct state_ctx *c = lua_touserdata(L, -1);
    lua_pop(L, 1);
    if (c != NULL && !c->owned) {
        c->j = NULL;
        c->detached = 1;
    }
}

/* The journal behind this state, opened on first use where needed; NULL with a message
 * pushed when it cannot be opened. Raises when the state has no journal at all. */
static struct journal *state_journal(lua_State *L)
{
    char err[600];
    lua_rawgetp(L, LUA_REGISTRYINDEX, &state_key);
    struct state_ctx *c = lua_touserdata(L, -1);
    lua_pop(L, 1);
    if (c == NULL)
        luaL_error(L, "certhook.state is available to handlers run by certhook serve or "
                      "certhook run");
    if (c->detached)
        luaL_error(L, "certhook.state: certhook is stopping, its journal is closed");
    if (c->j == NULL) {
        struct journal_options o = {c->dir, JOURNAL_CREATE, c->busy_timeout, 30 * 86400.0, 0, 0};
        if (journal_open(&c->j, &o, err, sizeof err) != 0 ||
            journal_start(c->j, NULL, NULL) != 0) {
            journal_close(c->j);
            c->j = NULL;
            lua_pushstring(L, err);
            return NULL;
        }
        c->owned = 1;
    }
    return c->j;
}

static int fail(lua_State *L, const char *msg, const char *code)
{
    lua_pushnil(L);
    lua_pushstring(L, msg);
    lua_pushstring(L, code);
    return 3;
}

/* Raises unless the value at idx is one JSON can hold and give back as it was. The string
 * at path names where it is ("value", "value.hosts[2]"), for the message. */
static void check_value(lua_State *L, int idx, int depth, const char *fn, int path)
{
    int t = lua_type(L, idx);
    const char *where = lua_tostring(L, path);
    if (t == LUA_TNIL || t == LUA_TBOOLEAN || t == LUA_TSTRING)
        return;
    if (t == LUA_TNUMBER) {
        if (!isfinite(lua_tonumber(L, idx)))
            luaL_error(L, "%s: %s is not a finite number", fn, where);
        return;
    }
    if (t != LUA_TTABLE)
        luaL_error(L, "%s: %s is a %s, which cannot be stored (store nil, "
                      "booleans, numbers, strings and tables of them)", fn, where,
                   luaL_typename(L, idx));
    if (depth > MAX_DEPTH)
        luaL_error(L, "%s: %s nests deeper than %d (a cycle?)", fn, where, MAX_DEPTH);
    luaL_checkstack(L, 4, "state value nesting");
    idx = lua_absindex(L, idx);
    lua_Integer n = (lua_Integer)lua_rawlen(L, idx), ints = 0, strings = 0;
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) { /* key, value */
        if (lua_type(L, -2) == LUA_TSTRING) {
            strings++;
            lua_pushfstring(L, "%s.%s", where, lua_tostring(L, -2));
        } else if (lua_isinteger(L, -2) && lua_tointeger(L, -2) >= 1 &&
                   lua_tointeger(L, -2) <= n) {
            ints++;
            lua_pushfstring(L, "%s[%I]", where, lua_tointeger(L, -2));
        } else {
            luaL_error(L, "%s: %s has a key JSON cannot hold (a %s); use 1..n "
                          "keys for a list or string keys for a record", fn, where,
                       luaL_typename(L, -2));
        }
        check_value(L, -2, depth + 1, fn, lua_gettop(L)); /* key, value, path */
        lua_pop(L, 2);
    }
    if (ints > 0 && strings > 0)
        luaL_error(L, "%s: %s mixes list and record keys; JSON cannot hold that",
                   fn, where);
}

/* Encodes the value at idx as JSON (pushed; valid while on the stack), after checking it. */
static const char *encode(lua_State *L, int idx, const char *fn, size_t *len)
{
    idx = lua_absindex(L, idx);
    lua_pushliteral(L, "value");
    check_value(L, idx, 0, fn, lua_gettop(L));
    lua_pop(L, 1);
    const char *s = json_encode(L, idx, len);
    if (s == NULL)
        luaL_error(L, "%s: %s", fn, lua_tostring(L, -1));
    return s;
}

/* Pushes the decoded JSON text, or raises (it was stored by set, so it decodes). */
static void push_json(lua_State *L, const char *s, size_t n)
{
    char err[200];
    if (json_decode(L, s, n, err, sizeof err) != 0)
        luaL_error(L, "certhook.state: stored value does not decode: %s", err);
    if (lua_type(L, -1) == LUA_TNUMBER) /* whole numbers come back as integers */
        event_push_epoch(L, lua_tonumber(L, -1)), lua_remove(L, -2);
    else
        json_fixup(L, -1);
}

static const char *check_key(lua_State *L, int idx)
{
    size_t n;
    const char *key = luaL_checklstring(L, idx, &n);
    if (n == 0)
        luaL_argerror(L, idx, "the key must not be empty");
    return key;
}

/* Pushes a write's outcome: true (incr: the new value; a once claim: "claimed", "done", or
 * "held" and until when), or nil, message, "journal". Raises for an incr on a value that is
 * not a number. */
static int write_result(lua_State *L, struct journal_req *r)
{
    if (r->op == JOURNAL_ONCE_CLAIM && r->result != JOURNAL_FAILED) {
        lua_pushstring(L, r->result == JOURNAL_ACCEPTED    ? "claimed"
                          : r->result == JOURNAL_DUPLICATE ? "done"
                                                           : "held");
        event_push_epoch(L, r->expires_at);
        return 2;
    }
    if (r->result == JOURNAL_REFUSED)
        return luaL_error(L, "certhook.state.incr: %s", r->error);
    if (r->result != JOURNAL_ACCEPTED)
        return fail(L, r->error, "journal");
    if (r->op == JOURNAL_STATE_INCR)
        push_json(L, r->number, strlen(r->number));
    else
        lua_pushboolean(L, 1);
    return 1;
}

/* The continuation of a write that yielded: the dispatcher resumed us after the commit. The
 * write is the top value left on the stack (k: its index). */
static int write_done(lua_State *L, int status, lua_KContext k)
{
    struct state_write *w = lua_touserdata(L, (int)k);
    (void)status;
    return write_result(L, &w->r);
}

/* Writer thread: the write is committed. */
static void written(struct journal_req *r)
{
    struct state_write *w = r->cls;
    w->ctx->wake_async(w->ctx);
}

/* Runs a write: inside a delivery of the dispatcher the handler yields until the writer has
 * committed it (other handlers run meanwhile); elsewhere this waits. The strings r points to
 * stay on this coroutine's stack until then. */
static int write(lua_State *L, struct journal *j, struct journal_req *r)
{
    struct delivery_ctx *ctx = module_ctx(L);
    if (ctx != NULL && ctx->loop != NULL && lua_isyieldable(L)) {
        struct state_write *w = lua_newuserdatauv(L, sizeof *w, 0);
        w->r = *r;
        w->r.done = written;
        w->r.cls = w;
        w->ctx = ctx;
        w->wait.cancel = NULL;
        ctx->wait(ctx, &w->wait);
        journal_append(j, &w->r);
        return lua_yieldk(L, 0, lua_gettop(L), write_done);
    }
    journal_call(j, r);
    return write_result(L, r);
}

/* A malloc'd string owned by userdata until it is a Lua string: what a raise cannot leak. */
static int box_gc(lua_State *L)
{
    char **p = luaL_checkudata(L, 1, BOX);
    free(*p);
    *p = NULL;
    return 0;
}

/* Pushes the JSON value get finds for the key at index 1, decoded, or nil; nil, message,
 * "journal" when the journal cannot be read. Returns the number of values. */
static int read_json(lua_State *L, int (*get)(struct journal *j, const char *key, char **out,
                                               size_t *len, char *err, size_t errlen))
{
    char err[300];
    size_t n;
    const char *key = check_key(L, 1);
    struct journal *j = state_journal(L);
    if (j == NULL)
        return fail(L, lua_tostring(L, -1), "journal");
    char **json = lua_newuserdatauv(L, sizeof *json, 0);
    *json = NULL;
    luaL_setmetatable(L, BOX);
    if (get(j, key, json, &n, err, sizeof err) != 0)
        return fail(L, err, "journal");
    if (*json == NULL) {
        lua_pushnil(L);
        return 1;
    }
    lua_pushlstring(L, *json, n); /* anchored: push_json may raise */
    free(*json);
    *json = NULL;
    push_json(L, lua_tostring(L, -1), n);
    return 1;
}

/* key -> value | nil; nil, message, "journal" when the journal cannot be read */
static int state_get(lua_State *L)
{
    return read_json(L, journal_state_get);
}

/* key, value [, ttl_seconds] -> true | nil, message, "journal". value nil deletes. */
static int state_set(lua_State *L)
{
    const char *key = check_key(L, 1);
    luaL_checkany(L, 2);
    double ttl = luaL_optnumber(L, 3, 0);
    luaL_argcheck(L, ttl >= 0 && isfinite(ttl), 3, "the TTL must be a number of seconds");
    lua_settop(L, 3);
    struct journal_req r = {.op = JOURNAL_STATE_DELETE, .key = key};
    if (!lua_isnil(L, 2)) {
        r.op = JOURNAL_STATE_SET;
        /* stays on the stack until written */
        r.value = encode(L, 2, "certhook.state.set", &r.value_len);
        r.expires_at = ttl > 0 ? time_now() + ttl : 0;
    }
    struct journal *j = state_journal(L);
    return j ? write(L, j, &r) : fail(L, lua_tostring(L, -1), "journal");
}

/* key -> true | nil, message, "journal" */
static int state_delete(lua_State *L)
{
    struct journal_req r = {.op = JOURNAL_STATE_DELETE, .key = check_key(L, 1)};
    struct journal *j = state_journal(L);
    return j ? write(L, j, &r) : fail(L, lua_tostring(L, -1), "journal");
}

/* key [, by] -> new value | nil, message, "journal". Raises if the value is not a number. */
static int state_incr(lua_State *L)
{
    struct journal_req r = {.op = JOURNAL_STATE_INCR, .key = check_key(L, 1)};
    r.by = luaL_optnumber(L, 2, 1);
    luaL_argcheck(L, isfinite(r.by), 2, "must be a finite number");
    struct journal *j = state_journal(L);
    return j ? write(L, j, &r) : fail(L, lua_tostring(L, -1), "journal");
}

static void add_key(void *cls, const char *key)
{
    lua_State *L = cls;
    lua_pushstring(L, key);
    lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
}

/* [prefix] -> {key, ...} sorted | nil, message, "journal" */
static int state_keys(lua_State *L)
{
    char err[300];
    const char *prefix = luaL_optstring(L, 1, "");
    struct journal *j = state_journal(L);
    if (j == NULL)
        return fail(L, lua_tostring(L, -1), "journal");
    lua_newtable(L);
    if (journal_state_keys(j, prefix, add_key, L, err, sizeof err) != 0)
        return fail(L, err, "journal");
    return 1;
}

/* ---- certhook.once's primitives (lua/certhook/init.lua builds once from them) ---------------- */

/* key -> true, results | false | nil, message, "journal" */
static int once_get(lua_State *L)
{
    lua_settop(L, 1);
    int n = read_json(L, journal_once_get);
    if (n != 1)
        return n;
    lua_pushboolean(L, !lua_isnil(L, -1));
    lua_insert(L, -2);
    return 2;
}

/* key -> "claimed" | "done" | "held", until | nil, message, "journal". The claim lasts as long
 * as the running delivery may (its deadline) and a minute more; outside one, five minutes. */
static int once_claim(lua_State *L)
{
    struct journal_req r = {.op = JOURNAL_ONCE_CLAIM, .key = check_key(L, 1)};
    struct delivery_ctx *ctx = module_ctx(L);
    double left = ctx != NULL && ctx->deadline > 0 ? ctx->deadline - time_mono() : 240;
    r.expires_at = time_now() + (left > 0 ? left : 0) + 60;
    struct journal *j = state_journal(L);
    return j ? write(L, j, &r) : fail(L, lua_tostring(L, -1), "journal");
}

/* key, results -> true | nil, message, "journal". Raises when results cannot be stored. */
static int once_done(lua_State *L)
{
    struct journal_req r = {.op = JOURNAL_ONCE_DONE, .key = check_key(L, 1)};
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_settop(L, 2);
    r.value = encode(L, 2, "certhook.once: the results of fn", &r.value_len);
    struct journal *j = state_journal(L);
    return j ? write(L, j, &r) : fail(L, lua_tostring(L, -1), "journal");
}

/* key -> true | nil, message, "journal" */
static int once_release(lua_State *L)
{
    struct journal_req r = {.op = JOURNAL_ONCE_RELEASE, .key = check_key(L, 1)};
    struct journal *j = state_journal(L);
    return j ? write(L, j, &r) : fail(L, lua_tostring(L, -1), "journal");
}

static const luaL_Reg once_funcs[] = {
    {"claim", once_claim},
    {"done", once_done},
    {"get", once_get},
    {"release", once_release},
    {NULL, NULL},
};

int once_open(lua_State *L)
{
    luaL_newlib(L, once_funcs);
    return 1;
}

/* ---- certhook.certs: the certificate inventory ------------------------------------------------ */

/* Appends the entry (JSON text) to the table on top, as a string: decoded after the read. */
static void add_entry(void *cls, const char *json)
{
    lua_State *L = cls;
    lua_pushstring(L, json);
    lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
}

/* Runs q, leaving the entries decoded in a table on top. 0, or -1 with a message pushed. */
static int certs_query(lua_State *L, const struct journal_certs_query *q)
{
    char err[300];
    struct journal *j = state_journal(L);
    if (j == NULL)
        return -1;
    lua_newtable(L);
    if (journal_certs(j, q, add_entry, L, err, sizeof err) != 0) {
        lua_pushstring(L, err);
        return -1;
    }
    for (lua_Integer i = 1; i <= (lua_Integer)lua_rawlen(L, -1); i++) {
        lua_rawgeti(L, -1, i);
        push_json(L, lua_tostring(L, -1), lua_rawlen(L, -1));
        lua_remove(L, -2);
        lua_rawseti(L, -2, i);
    }
    return 0;
}

/* key, certificate id or hostname -> entry | nil | nil, message, "journal" */
static int certs_get(lua_State *L)
{
    struct journal_certs_query q = {.find = check_key(L, 1), .limit = 1};
    if (certs_query(L, &q) != 0)
        return fail(L, lua_tostring(L, -1), "journal");
    lua_rawgeti(L, -1, 1);
    return 1;
}

/* [{expiring_within = seconds, status =, state =, limit =}] -> {entry...} soonest expiry
 * first | nil, message, "journal" */
static int certs_list(lua_State *L)
{
    struct journal_certs_query q = {0};
    if (!lua_isnoneornil(L, 1)) {
        luaL_checktype(L, 1, LUA_TTABLE);
        if (lua_getfield(L, 1, "expiring_within") != LUA_TNIL) {
            luaL_argcheck(L, lua_isnumber(L, -1), 1, "expiring_within must be seconds");
            q.expiring_before = time_now() + lua_tonumber(L, -1);
        }
        if (lua_getfield(L, 1, "status") != LUA_TNIL) {
            luaL_argcheck(L, lua_type(L, -1) == LUA_TSTRING, 1, "status must be a string");
            q.status = lua_tostring(L, -1);
        }
        if (lua_getfield(L, 1, "state") != LUA_TNIL) {
            const char *const *s = certificate_states;
            while (*s && (lua_type(L, -1) != LUA_TSTRING || strcmp(*s, lua_tostring(L, -1)) != 0))
                s++;
            luaL_argcheck(L, *s != NULL, 1, "state must be a certificate's state (active, "
                                            "expired, pending_validation, ...)");
            q.state = *s;
        }
        if (lua_getfield(L, 1, "limit") != LUA_TNIL) {
            luaL_argcheck(L, lua_isinteger(L, -1) && lua_tointeger(L, -1) > 0, 1,
                          "limit must be a positive integer");
            q.limit = (int)lua_tointeger(L, -1);
        }
    }
    if (certs_query(L, &q) != 0)
        return fail(L, lua_tostring(L, -1), "journal");
    return 1;
}

static const luaL_Reg certs_funcs[] = {
    {"get", certs_get},
    {"list", certs_list},
    {NULL, NULL},
};

int certs_open(lua_State *L)
{
    luaL_newlib(L, certs_funcs);
    return 1;
}

static const luaL_Reg state_funcs[] = {
    {"delete", state_delete},
    {"get", state_get},
    {"incr", state_incr},
    {"keys", state_keys},
    {"set", state_set},
    {NULL, NULL},
};

int state_open(lua_State *L)
{
    if (luaL_newmetatable(L, BOX)) {
        lua_pushcfunction(L, box_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    luaL_newlib(L, state_funcs);
    return 1;
}
