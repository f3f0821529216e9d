/*
 * module.c -- luaopen_certhook_core, and the Lua states certhook creates.
 *
 * certhook.core is loaded by the CLI (lua/certhook/cli.lua) and by every handler state
 * (require "certhook"). It gathers the API areas (api_log.c, api_time.c, api_http.c) and the
 * entry points the CLI needs: serve (server.c), check (reload.c), normalize (normalize.c),
 * run (dispatch.c), jwt_sign (auth.c). Every state certhook creates (parser states in
 * intake.c, handler generations in reload.c) comes from module_newstate, with lua-cjson's
 * encode and decode registered for module_encode/module_decode.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <curl/curl.h>
#include <gnutls/gnutls.h>
#include <lauxlib.h>
#include <lualib.h>
#include <microhttpd.h>
#include <openssl/crypto.h>
#include <sqlite3.h>

#include "certhook.h"

static const char decode_key = 'd', encode_key = 'e', ctx_key = 'c';

/* Registers cjson.encode/decode for module_encode/decode. Raises if cjson is missing. */
static int register_cjson(lua_State *L)
{
    lua_getglobal(L, "require");
    lua_pushliteral(L, "cjson");
    lua_call(L, 1, 1);
    lua_getfield(L, -1, "decode");
    lua_rawsetp(L, LUA_REGISTRYINDEX, &decode_key);
    lua_getfield(L, -1, "encode");
    lua_rawsetp(L, LUA_REGISTRYINDEX, &encode_key);
    lua_pop(L, 1);
    return 0;
}

/* path, cpath -> sets up a state made by module_newstate (run protected) */
static int init_state(lua_State *L)
{
    luaL_openlibs(L);
    lua_getglobal(L, "package");
    for (int i = 1; i <= 2; i++) {
        if (!lua_isnil(L, i)) {
            lua_pushvalue(L, i);
            lua_setfield(L, -2, i == 1 ? "path" : "cpath");
        }
    }
    lua_getfield(L, -1, "preload");
    lua_pushcfunction(L, luaopen_certhook_core);
    lua_setfield(L, -2, "certhook.core");
    return register_cjson(L);
}

lua_State *module_newstate(const char *path, const char *cpath, lua_Alloc alloc, void *ud,
                           char *err, size_t errlen)
{
    lua_State *L = alloc ? lua_newstate(alloc, ud) : luaL_newstate();
    if (L == NULL) {
        snprintf(err, errlen, "cannot create a Lua state: out of memory");
        return NULL;
    }
    lua_pushcfunction(L, init_state);
    path ? (void)lua_pushstring(L, path) : lua_pushnil(L);
    cpath ? (void)lua_pushstring(L, cpath) : lua_pushnil(L);
    if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
        snprintf(err, errlen, "cannot set up a Lua state: %s", lua_tostring(L, -1));
        lua_close(L);
        return NULL;
    }
    return L;
}

/* A standard function handlers must not call: raises the message in its upvalue. */
static int forbidden(lua_State *L)
{
    return luaL_error(L, "%s", lua_tostring(L, lua_upvalueindex(1)));
}

static void forbid(lua_State *L, const char *lib, const char *name, const char *why)
{
    lua_getglobal(L, lib);
    lua_pushstring(L, why);
    lua_pushcclosure(L, forbidden, 1);
    lua_setfield(L, -2, name);
    lua_pop(L, 1);
}

/* Runs protected: what a handler state may not reach. */
static int sandbox(lua_State *L)
{
    forbid(L, "os", "exit",
           "os.exit is not available to handlers: return to succeed, raise an error to fail "
           "(the delivery is retried)");
    forbid(L, "os", "execute",
           "os.execute is not available to handlers: it would stop every other delivery while "
           "the program runs; use certhook.exec{argv = {...}}, which does not");
    forbid(L, "io", "popen",
           "io.popen is not available to handlers: it would stop every other delivery while "
           "the program runs; use certhook.exec{argv = {...}}, which does not");
    /* debug: only traceback -- the limits hook is certhook's, not the handler's */
    lua_getglobal(L, "debug");
    lua_createtable(L, 0, 1);
    lua_getfield(L, -2, "traceback");
    lua_setfield(L, -2, "traceback");
    lua_pushvalue(L, -1);
    lua_setglobal(L, "debug");
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_pushvalue(L, -2);
    lua_setfield(L, -2, "debug");
    return 0;
}

int module_sandbox(lua_State *L, char *err, size_t errlen)
{
    lua_pushcfunction(L, sandbox);
    if (lua_pcall(L, 0, 0, 0) != LUA_OK) {
        snprintf(err, errlen, "cannot set up a handler state: %s", lua_tostring(L, -1));
        lua_pop(L, 1);
        return -1;
    }
    return 0;
}

void module_set_ctx(lua_State *L, struct delivery_ctx *ctx)
{
    lua_pushlightuserdata(L, ctx);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &ctx_key);
}

struct delivery_ctx *module_ctx(lua_State *L)
{
    lua_rawgetp(L, LUA_REGISTRYINDEX, &ctx_key);
    struct delivery_ctx *ctx = lua_touserdata(L, -1); /* NULL when unset */
    lua_pop(L, 1);
    return ctx;
}

int module_decode(lua_State *L, const char *s, size_t n, char *err, size_t errlen)
{
    lua_rawgetp(L, LUA_REGISTRYINDEX, &decode_key);
    lua_pushlstring(L, s, n);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
        snprintf(err, errlen, "%s", lua_tostring(L, -1));
        lua_pop(L, 1);
        return -1;
    }
    return 0;
}

const char *module_encode(lua_State *L, int idx, size_t *len)
{
    idx = lua_absindex(L, idx);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &encode_key);
    lua_pushvalue(L, idx);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK || lua_type(L, -1) != LUA_TSTRING) {
        if (lua_type(L, -1) != LUA_TSTRING) {
            lua_pop(L, 1);
            lua_pushliteral(L, "not encodable");
        }
        return NULL;
    }
    return lua_tolstring(L, -1, len);
}

/* ---- entry points for the CLI ------------------------------------------------------------- */

/* Copies package.path and package.cpath of L into *path / *cpath (malloc'd). */
static void package_paths(lua_State *L, char **path, char **cpath)
{
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "path");
    *path = lua_isstring(L, -1) ? strdup(lua_tostring(L, -1)) : NULL;
    lua_getfield(L, -2, "cpath");
    *cpath = lua_isstring(L, -1) ? strdup(lua_tostring(L, -1)) : NULL;
    lua_pop(L, 3);
}

static int fail(lua_State *L, const char *msg)
{
    lua_pushnil(L);
    lua_pushstring(L, msg);
    return 2;
}

/* The CLI's reload function: returns a fresh config table, or nil, message. */
struct loader {
    lua_State *L;
    int ref;
};

static int load_config(void *cls, struct config *c, char *err, size_t errlen)
{
    struct loader *ld = cls;
    lua_State *L = ld->L;
    int top = lua_gettop(L), rc = -1;
    lua_rawgeti(L, LUA_REGISTRYINDEX, ld->ref);
    if (lua_pcall(L, 0, 2, 0) != LUA_OK) {
        snprintf(err, errlen, "config: %s", lua_tostring(L, -1));
    } else if (!lua_istable(L, -2)) {
        snprintf(err, errlen, "%s", lua_isstring(L, -1) ? lua_tostring(L, -1) : "config: no table");
    } else if (config_from_lua(L, -2, c, err, errlen) == 0) {
        package_paths(L, &c->lua_path, &c->lua_cpath);
        rc = 0;
    }
    lua_settop(L, top);
    return rc;
}

/* config, reload -> true | nil, message. Blocks until SIGTERM/SIGINT. reload() returns the
 * configuration again (or nil, message) when the server rereads it (SIGHUP, POST /reload). */
static int core_serve(lua_State *L)
{
    char err[2048];
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    struct config *c = calloc(1, sizeof *c);
    if (c == NULL)
        return fail(L, "out of memory");
    if (config_from_lua(L, 1, c, err, sizeof err) != 0) {
        free(c);
        return fail(L, err);
    }
    if (c->lua_path == NULL && c->lua_cpath == NULL)
        package_paths(L, &c->lua_path, &c->lua_cpath);
    lua_pushvalue(L, 2);
    struct loader ld = {L, luaL_ref(L, LUA_REGISTRYINDEX)};
    int rc = server_run(c, load_config, &ld, err, sizeof err); /* takes c */
    luaL_unref(L, LUA_REGISTRYINDEX, ld.ref);
    if (rc != 0)
        return fail(L, err);
    lua_pushboolean(L, 1);
    return 1;
}

/* Builds generation 1 of dir with this state's package paths; certhook.state opens the
 * journal in data on first use (none without data). The table at opts may give delivery's
 * timeout and memory_limit (as serve uses them). NULL with *err on failure. */
static struct generation *build(lua_State *L, const char *dir, const char *data, int opts,
                                char **err)
{
    char *path, *cpath;
    struct reload_env env = {NULL, NULL, NULL, data, 5, 64 << 20, 30, NULL};
    if (lua_istable(L, opts)) {
        if (lua_getfield(L, opts, "timeout") == LUA_TNUMBER && lua_tonumber(L, -1) > 0)
            env.timeout = lua_tonumber(L, -1);
        if (lua_getfield(L, opts, "memory_limit") == LUA_TNUMBER && lua_tonumber(L, -1) > 0)
            env.memory_limit = (size_t)lua_tonumber(L, -1);
        lua_pop(L, 2);
    }
    package_paths(L, &path, &cpath);
    env.path = path;
    env.cpath = cpath;
    struct generation *g = reload_build(dir, &env, 1, err);
    free(path);
    free(cpath);
    return g;
}

/* dir [, data [, {timeout=, memory_limit=}]] -> {files = n, handlers = {"file:pattern", ...}}
 * | nil, message */
static int core_check(lua_State *L)
{
    char *err;
    struct generation *g = build(L, luaL_checkstring(L, 1), luaL_optstring(L, 2, NULL), 3, &err);
    if (g == NULL) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        free(err);
        return 2;
    }
    lua_createtable(L, 0, 2);
    lua_pushinteger(L, (lua_Integer)g->nfiles);
    lua_setfield(L, -2, "files");
    lua_createtable(L, (int)g->n, 0);
    for (size_t i = 0; i < g->n; i++) {
        lua_pushstring(L, g->h[i].name);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    lua_setfield(L, -2, "handlers");
    reload_free(g);
    return 1;
}

/* Reads the options table at idx into a temporary source: provider (detected from the body
 * when absent), source name, public_key. Decode-only unless a key is given. Returns 0 or -1
 * with a message pushed. */
static int options_source(lua_State *L, int idx, const char *body, size_t n, struct source *s,
                          char *name, size_t namelen)
{
    char err[400];
    memset(s, 0, sizeof *s);
    s->insecure = 1;
    const char *p = NULL;
    if (lua_istable(L, idx)) {
        lua_getfield(L, idx, "provider");
        p = lua_tostring(L, -1);
        lua_pop(L, 1); /* still referenced by the options table */
    }
    if (p != NULL) {
        if ((s->provider = provider_parse(p)) == PROVIDER_NONE) {
            lua_pushfstring(L, "unknown provider %s (use cloudflare or ibm-cm)", p);
            return -1;
        }
    } else {
        if (module_decode(L, body, n, err, sizeof err) != 0) {
            lua_pushfstring(L, "invalid JSON: %s", err);
            return -1;
        }
        s->provider = normalize_detect(L, -1);
        lua_pop(L, 1);
        if (s->provider == PROVIDER_NONE) {
            lua_pushliteral(L, "cannot tell which provider sent this payload; pass --provider "
                               "cloudflare or --provider ibm-cm");
            return -1;
        }
    }
    snprintf(name, namelen, "%s", provider_name(s->provider));
    if (lua_istable(L, idx)) {
        if (lua_getfield(L, idx, "source") == LUA_TSTRING)
            snprintf(name, namelen, "%s", lua_tostring(L, -1));
        if (lua_getfield(L, idx, "public_key") == LUA_TSTRING &&
            auth_keys_add(&s->keys, lua_tostring(L, -1), err, sizeof err) != 0) {
            lua_pop(L, 2);
            lua_pushstring(L, err);
            return -1;
        }
        lua_pop(L, 2);
    }
    s->name = name;
    return 0;
}

/* body [, {provider=, source=, public_key=}] -> event, payload | nil, message, status */
static int core_normalize(lua_State *L)
{
    char err[600], name[128];
    size_t n, clen;
    char *claims;
    struct source s;
    const char *body = luaL_checklstring(L, 1, &n);
    lua_settop(L, 2);
    if (options_source(L, 2, body, n, &s, name, sizeof name) != 0) {
        lua_pushnil(L);
        lua_insert(L, -2);
        return 2;
    }
    int status = normalize_body(L, &s, body, n, time_now(), &claims, &clen, err, sizeof err);
    auth_keys_free(s.keys);
    if (status != 0) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        lua_pushinteger(L, status);
        free(claims);
        return 3;
    }
    if (claims != NULL)
        lua_pushlstring(L, claims, clen);
    else
        lua_pushvalue(L, 1);
    free(claims);
    return 2;
}

/* dir, body [, options] -> {event = id, type =, results = {{handler=, ok=, error=,
 * duration=}...}} | nil, message. Runs the matching handlers once, here; options.data is
 * where certhook.state keeps its values. */
static int core_run(lua_State *L)
{
    char *err;
    const char *dir = luaL_checkstring(L, 1);
    luaL_checkstring(L, 2);
    lua_settop(L, 3);
    lua_pushcfunction(L, core_normalize);
    lua_pushvalue(L, 2);
    lua_pushvalue(L, 3);
    lua_call(L, 2, 2); /* event, payload | nil, message */
    if (lua_isnil(L, -2))
        return 2;
    int event = lua_gettop(L) - 1;
    const char *data = NULL;
    if (lua_istable(L, 3) && lua_getfield(L, 3, "data") == LUA_TSTRING)
        data = lua_tostring(L, -1); /* anchored in the options table */
    if (lua_istable(L, 3))
        lua_pop(L, 1);
    struct generation *g = build(L, dir, data, 3, &err);
    if (g == NULL) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        free(err);
        return 2;
    }
    const char *f[5];
    static const char *const names[] = {"id", "source", "type", "provider_type", "hostname"};
    for (int i = 0; i < 5; i++) {
        lua_getfield(L, event, names[i]);
        f[i] = lua_tostring(L, -1);
    }
    lua_getfield(L, event, "provider");
    size_t plen;
    const char *payload = lua_tolstring(L, event + 1, &plen);
    struct journal_event *ev = journal_event_new(provider_parse(lua_tostring(L, -1)), time_now(),
                                                 f[0], f[1], f[2], f[3], f[4], payload, plen);
    struct journal_done *done = NULL;
    double timeout = 30;
    if (lua_istable(L, 3) && lua_getfield(L, 3, "timeout") == LUA_TNUMBER)
        timeout = lua_tonumber(L, -1);
    if (ev != NULL)
        dispatch_event(g, ev, timeout, &done);
    lua_createtable(L, 0, 3);
    lua_pushstring(L, f[0]);
    lua_setfield(L, -2, "event");
    lua_pushstring(L, f[2]);
    lua_setfield(L, -2, "type");
    lua_createtable(L, done ? (int)done->n : 0, 0);
    for (size_t i = 0; done && i < done->n; i++) {
        const struct delivery_result *r = &done->r[i];
        lua_createtable(L, 0, 4);
        lua_pushstring(L, r->handler);
        lua_setfield(L, -2, "handler");
        lua_pushboolean(L, r->status == DELIVERY_DONE);
        lua_setfield(L, -2, "ok");
        if (r->error) {
            lua_pushstring(L, r->error);
            lua_setfield(L, -2, "error");
        }
        lua_pushnumber(L, r->duration);
        lua_setfield(L, -2, "duration");
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    lua_setfield(L, -2, "results");
    journal_done_free(done);
    journal_event_free(ev);
    reload_free(g);
    return 1;
}

static void push_row(void *cls, const struct journal_row *r)
{
    lua_State *L = cls;
    /* events: {seq, id, ..., deliveries = {...}}, newest first; rows come grouped by event */
    lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
    int fresh = 1;
    if (n > 0) {
        lua_rawgeti(L, -1, n);
        lua_getfield(L, -1, "seq");
        fresh = lua_tointeger(L, -1) != r->seq;
        lua_pop(L, 2);
    }
    if (fresh) {
        lua_createtable(L, 0, 10);
        lua_pushinteger(L, r->seq);
        lua_setfield(L, -2, "seq");
        static const char *const names[] = {"id", "source", "type", "provider_type", "hostname"};
        const char *vals[] = {r->id, r->source, r->type, r->provider_type, r->hostname};
        for (int i = 0; i < 5; i++) {
            if (vals[i]) {
                lua_pushstring(L, vals[i]);
                lua_setfield(L, -2, names[i]);
            }
        }
        time_push_epoch(L, r->received_at);
        lua_setfield(L, -2, "received_at");
        static const char *const states[] = {"new", "dispatching", "finished", "replay"};
        lua_pushstring(L, r->state >= 0 && r->state <= 3 ? states[r->state] : "?");
        lua_setfield(L, -2, "state");
        lua_newtable(L);
        lua_setfield(L, -2, "deliveries");
        lua_rawseti(L, -2, ++n);
    }
    if (r->handler == NULL)
        return;
    lua_rawgeti(L, -1, n);
    lua_getfield(L, -1, "deliveries");
    lua_createtable(L, 0, 7);
    lua_pushstring(L, r->handler);
    lua_setfield(L, -2, "handler");
    lua_pushstring(L, r->status);
    lua_setfield(L, -2, "status");
    lua_pushinteger(L, r->attempts);
    lua_setfield(L, -2, "attempts");
    if (r->error) {
        lua_pushstring(L, r->error);
        lua_setfield(L, -2, "last_error");
    }
    if (r->next_at > 0) {
        time_push_epoch(L, r->next_at);
        lua_setfield(L, -2, "next_at");
    }
    if (r->started_at > 0) {
        time_push_epoch(L, r->started_at);
        lua_setfield(L, -2, "last_attempt_at");
    }
    if (r->generation > 0) {
        lua_pushinteger(L, r->generation);
        lua_setfield(L, -2, "generation");
    }
    lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
    lua_pop(L, 2);
}

/* data, {status=, type=, limit=} -> {event...} | nil, message */
static int core_events(lua_State *L)
{
    char err[600];
    struct journal *j;
    const char *data = luaL_checkstring(L, 1);
    struct journal_filter f = {NULL, NULL, 50};
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_getfield(L, 2, "status");
    f.status = lua_tostring(L, -1);
    lua_getfield(L, 2, "type");
    f.type = lua_tostring(L, -1);
    lua_getfield(L, 2, "limit");
    f.limit = (int)luaL_optinteger(L, -1, 50);
    if (journal_open(&j, data, JOURNAL_READONLY, 5, 0, err, sizeof err) != 0)
        return fail(L, err);
    lua_newtable(L);
    int rc = journal_list(j, &f, push_row, L, err, sizeof err);
    journal_close(j);
    return rc == 0 ? 1 : fail(L, err);
}

/* data, event_id | nil (every dead delivery) -> count | nil, message */
static int core_replay(lua_State *L)
{
    char err[600];
    struct journal *j;
    int count;
    const char *data = luaL_checkstring(L, 1), *id = luaL_optstring(L, 2, NULL);
    if (journal_open(&j, data, 0, 5, 0, err, sizeof err) != 0)
        return fail(L, err);
    int rc = journal_request_replay(j, id, &count, err, sizeof err);
    journal_close(j);
    if (rc != 0)
        return fail(L, err);
    lua_pushinteger(L, count);
    return 1;
}

/* pem_or_path, claims -> jwt | nil, message */
static int core_jwt_sign(lua_State *L)
{
    char err[300];
    size_t n;
    const char *pem = luaL_checkstring(L, 1), *claims = luaL_checklstring(L, 2, &n);
    char *jwt = auth_jwt_sign(pem, claims, n, err, sizeof err);
    if (jwt == NULL)
        return fail(L, err);
    lua_pushstring(L, jwt);
    free(jwt);
    return 1;
}

/* body -> "cloudflare" | "ibm-cm" | nil */
static int core_detect(lua_State *L)
{
    char err[300];
    size_t n;
    const char *body = luaL_checklstring(L, 1, &n);
    if (module_decode(L, body, n, err, sizeof err) != 0)
        return fail(L, err);
    const char *p = provider_name(normalize_detect(L, -1));
    lua_pushstring(L, p);
    return 1;
}

/* path -> permission bits (e.g. 0644) | nil, message: the CLI refuses a world-readable config
 * that holds secrets. */
static int core_mode(lua_State *L)
{
    struct stat st;
    const char *path = luaL_checkstring(L, 1);
    if (stat(path, &st) != 0)
        return fail(L, strerror(errno));
    lua_pushinteger(L, st.st_mode & 07777);
    return 1;
}

/* -> "certhook 0.1.0 (Lua 5.4.4, libmicrohttpd 0.9.75, ...)" */
static int core_versions(lua_State *L)
{
    curl_version_info_data *cv = curl_version_info(CURLVERSION_NOW);
    lua_pushfstring(L, "certhook %s (%s, libmicrohttpd %s, libcurl %s, SQLite %s, %s, GnuTLS %s)",
                    CERTHOOK_VERSION, LUA_RELEASE, MHD_get_version(), cv->version,
                    sqlite3_libversion(), OpenSSL_version(OPENSSL_VERSION),
                    gnutls_check_version(NULL));
    return 1;
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;

static void curl_init(void)
{
    curl_global_init(CURL_GLOBAL_ALL);
}

static const luaL_Reg core_funcs[] = {
    {"check", core_check},
    {"detect", core_detect},
    {"events", core_events},
    {"jwt_sign", core_jwt_sign},
    {"mode", core_mode},
    {"normalize", core_normalize},
    {"replay", core_replay},
    {"run", core_run},
    {"serve", core_serve},
    {"versions", core_versions},
    {NULL, NULL},
};

/* The API areas, in the order require "certhook" exposes them. */
static const struct {
    const char *name;
    int (*open)(lua_State *L);
} areas[] = {
    {"exec", exec_open},
    {"http", http_open},
    {"log", log_open},
    {"state", state_open},
    {"time", time_open},
};

int luaopen_certhook_core(lua_State *L)
{
    pthread_once(&curl_once, curl_init);
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &decode_key) == LUA_TNIL)
        register_cjson(L);
    lua_pop(L, 1);
    luaL_newlib(L, core_funcs);
    for (size_t i = 0; i < sizeof areas / sizeof areas[0]; i++) {
        areas[i].open(L);
        lua_setfield(L, -2, areas[i].name);
    }
    lua_pushliteral(L, CERTHOOK_VERSION);
    lua_setfield(L, -2, "version");
    return 1;
}
