/*
 * cli.c -- the command line's C functions (lua/certhook/cli.lua calls them):
 * luaopen_certhook_cli, loaded from the same shared object as certhook.core but never by a
 * handler state. serve (server.c), check and run (a handler generation, dispatch_event: the
 * same path as serve's deliveries), normalize (the provider's normalization and the event's
 * pack round trip: what handlers get), events, replay and migrate (the journal), servers (where
 * they listen), send, detect, providers, mode, versions.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lauxlib.h>

#include "dispatch/dispatch.h"
#include "intake/intake.h"
#include "journal/journal.h"
#include "lua/api.h"
#include "providers/provider.h"
#include "server.h"

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
        free(c->lua_path);
        free(c->lua_cpath);
        package_paths(L, &c->lua_path, &c->lua_cpath);
        c->in.lua_path = c->lua_path;
        c->in.lua_cpath = c->lua_cpath;
        rc = 0;
    }
    lua_settop(L, top);
    return rc;
}

/* config, reload -> true | nil, message. Blocks until SIGTERM/SIGINT. reload() returns the
 * configuration again (or nil, message) when the server rereads it (SIGHUP, POST /reload). */
static int cli_serve(lua_State *L)
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
    c->in.lua_path = c->lua_path;
    c->in.lua_cpath = c->lua_cpath;
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
 * journal in data on first use (none without data). The table at opts may give load_timeout
 * (reload.timeout) and memory_limit (delivery's), as serve uses them. NULL with *err on
 * failure. */
static struct generation *build(lua_State *L, const char *dir, const char *data, int opts,
                                char **err)
{
    char *path, *cpath;
    struct generation_env env = {NULL, NULL, NULL, data, 5, 64 << 20, 5, NULL};
    if (lua_istable(L, opts)) {
        if (lua_getfield(L, opts, "load_timeout") == LUA_TNUMBER && lua_tonumber(L, -1) > 0)
            env.timeout = lua_tonumber(L, -1);
        if (lua_getfield(L, opts, "memory_limit") == LUA_TNUMBER && lua_tonumber(L, -1) > 0)
            env.memory_limit = (size_t)lua_tonumber(L, -1);
        lua_pop(L, 2);
    }
    package_paths(L, &path, &cpath);
    env.path = path;
    env.cpath = cpath;
    struct generation *g = generation_build(dir, &env, 1, err);
    free(path);
    free(cpath);
    return g;
}

/* dir [, data [, {timeout=, memory_limit=}]] -> {files = n, handlers = {"file:pattern", ...}}
 * | nil, message */
static int cli_check(lua_State *L)
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
    generation_free(g);
    return 1;
}

/* A source for a payload the command line was given: the options table at idx names the
 * provider (else it is detected from the body), the source's name, and a public key; without
 * credentials it is insecure (decode only). 0, or -1 with a message pushed. */
static int options_source(lua_State *L, int idx, const char *body, size_t n, struct source *s)
{
    char err[600], names[200];
    const struct provider *p = NULL;
    const char *name = NULL;
    memset(s, 0, sizeof *s);
    if (lua_istable(L, idx) && lua_getfield(L, idx, "provider") == LUA_TSTRING &&
        (p = provider_find(lua_tostring(L, -1))) == NULL) {
        lua_pushfstring(L, "unknown provider %s (one of %s)", lua_tostring(L, -1),
                        provider_names(names, sizeof names, ", ", 0));
        return -1;
    }
    if (p == NULL) {
        if (json_decode(L, body, n, err, sizeof err) != 0) {
            lua_pushfstring(L, "invalid JSON: %s", err);
            return -1;
        }
        p = provider_detect(L, -1);
        if (p == NULL) {
            lua_pushfstring(L, "cannot tell which provider sent this payload; pass --provider "
                               "(one of %s)", provider_names(names, sizeof names, ", ", 0));
            return -1;
        }
    }
    if (lua_istable(L, idx) && lua_getfield(L, idx, "source") == LUA_TSTRING)
        name = lua_tostring(L, -1);
    lua_createtable(L, 0, 3); /* the source's settings */
    lua_pushstring(L, p->name);
    lua_setfield(L, -2, "provider");
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "insecure");
    /* credentials to verify with; a Lua provider's script and its limits */
    static const char *const keys[] = {"public_key", "script", "timeout", "memory_limit"};
    for (size_t i = 0; lua_istable(L, idx) && i < sizeof keys / sizeof keys[0]; i++) {
        if (lua_getfield(L, idx, keys[i]) != LUA_TNIL)
            lua_setfield(L, -2, keys[i]);
        else
            lua_pop(L, 1);
    }
    if (source_configure(L, -1, name ? name : p->name, s, err, sizeof err) != 0) {
        source_release(s);
        lua_pushstring(L, err);
        return -1;
    }
    return 0;
}

/* Normalizes body as the source s receives it at time now and pushes the events as handlers
 * get them: packed as the journal keeps them, and unpacked. Returns how many, or -1 with a
 * message and the status pushed. With evs, also fills a record of each (malloc'd). */
static int normalize(lua_State *L, const struct source *s, const char *body, size_t n, double now,
                     struct event ***evs)
{
    char err[600];
    struct reply rp = {0};
    struct request rq = {.method = "POST", .body = body, .body_len = n, .received_at = now};
    int status = source_normalize(L, s, &rq, &rp, err, sizeof err);
    if (rp.status != 0) {
        lua_pushfstring(L, "the provider answers this itself (a handshake): %s",
                        rp.body.p ? rp.body.p : "");
        lua_pushinteger(L, rp.status);
        buf_free(&rp.body);
        return -1;
    }
    if (status != 0) {
        lua_pushstring(L, err);
        lua_pushinteger(L, status);
        return -1;
    }
    int list = lua_gettop(L);
    lua_Integer count = (lua_Integer)lua_rawlen(L, list);
    struct buf packed;
    buf_init(&packed);
    lua_createtable(L, (int)count, 0);
    if (evs != NULL)
        *evs = calloc((size_t)count + 1, sizeof **evs);
    for (lua_Integer i = 1; i <= count; i++) {
        struct event ev;
        lua_rawgeti(L, list, i);
        packed.n = 0;
        if (event_pack(L, lua_gettop(L), list - 1, &ev, &packed, err, sizeof err) != 0 ||
            event_unpack(L, packed.p, packed.n, body, n) != 0 ||
            event_set_context(L, -1, NULL) != 0) { /* as the first event of its certificate */
            buf_free(&packed);
            lua_pushstring(L, err);
            lua_pushinteger(L, 400);
            return -1;
        }
        ev.body = body;
        ev.body_len = n;
        if (evs != NULL && *evs != NULL)
            (*evs)[i - 1] = event_new(&ev);
        lua_rawseti(L, list + 1, i);
        lua_settop(L, list + 1);
    }
    buf_free(&packed);
    lua_remove(L, list);
    lua_remove(L, list - 1); /* the decoded body */
    return (int)count;
}

/* body [, {provider=, source=, public_key=, script=, timeout=, memory_limit=}] -> {event, ...} |
 * nil, message, status */
static int cli_normalize(lua_State *L)
{
    size_t n;
    struct source s;
    const char *body = luaL_checklstring(L, 1, &n);
    lua_settop(L, 2);
    if (options_source(L, 2, body, n, &s) != 0) {
        lua_pushnil(L);
        lua_insert(L, -2);
        return 2;
    }
    lua_settop(L, 2);
    int count = normalize(L, &s, body, n, time_now(), NULL);
    source_release(&s);
    if (count < 0) {
        lua_pushnil(L);
        lua_insert(L, -3);
        return 3;
    }
    return 1;
}

/* dir, body [, options] -> {events = {{event = id, type =, results = {{handler=, ok=, error=,
 * duration=}...}}...}} | nil, message. Runs the matching handlers once, here, on the event
 * as serve's handlers get it; options.data is where certhook.state keeps its values. */
static int cli_run(lua_State *L)
{
    char *err;
    size_t n;
    struct source s;
    struct event **evs = NULL;
    const char *dir = luaL_checkstring(L, 1);
    const char *body = luaL_checklstring(L, 2, &n);
    lua_settop(L, 3);
    if (options_source(L, 3, body, n, &s) != 0) {
        lua_pushnil(L);
        lua_insert(L, -2);
        return 2;
    }
    lua_settop(L, 3);
    int count = normalize(L, &s, body, n, time_now(), &evs);
    source_release(&s);
    if (count < 0) {
        lua_pop(L, 1); /* the status */
        lua_pushnil(L);
        lua_insert(L, -2);
        for (size_t i = 0; evs && evs[i]; i++)
            event_free(evs[i]);
        free(evs);
        return 2;
    }
    lua_pop(L, 1);
    const char *data = NULL;
    if (lua_istable(L, 3) && lua_getfield(L, 3, "data") == LUA_TSTRING)
        data = lua_tostring(L, -1); /* anchored in the options table */
    struct generation *g = evs ? build(L, dir, data, 3, &err) : NULL;
    if (g == NULL) {
        lua_pushnil(L);
        lua_pushstring(L, evs ? err : "out of memory");
        if (evs)
            free(err);
        for (size_t i = 0; evs && evs[i]; i++)
            event_free(evs[i]);
        free(evs);
        return 2;
    }
    double timeout = 30;
    if (lua_istable(L, 3) && lua_getfield(L, 3, "timeout") == LUA_TNUMBER)
        timeout = lua_tonumber(L, -1);
    lua_createtable(L, 0, 1);
    lua_createtable(L, count, 0);
    for (int i = 0; i < count; i++) {
        struct journal_done *done = NULL;
        const struct event *ev = evs[i];
        if (ev != NULL)
            dispatch_event(g, ev, timeout, &done);
        lua_createtable(L, 0, 3);
        lua_pushstring(L, ev ? ev->id : "?");
        lua_setfield(L, -2, "event");
        lua_pushstring(L, ev ? ev->type : "?");
        lua_setfield(L, -2, "type");
        lua_createtable(L, done ? (int)done->n : 0, 0);
        for (size_t k = 0; done && k < done->n; k++) {
            const struct delivery_result *r = &done->r[k];
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
            lua_rawseti(L, -2, (lua_Integer)k + 1);
        }
        lua_setfield(L, -2, "results");
        lua_rawseti(L, -2, i + 1);
        journal_done_free(done);
    }
    lua_setfield(L, -2, "events");
    for (int i = 0; i < count; i++)
        event_free(evs[i]);
    free(evs);
    generation_free(g);
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
        event_push_epoch(L, r->received_at);
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
        event_push_epoch(L, r->next_at);
        lua_setfield(L, -2, "next_at");
    }
    if (r->started_at > 0) {
        event_push_epoch(L, r->started_at);
        lua_setfield(L, -2, "last_attempt_at");
    }
    if (r->generation > 0) {
        lua_pushinteger(L, r->generation);
        lua_setfield(L, -2, "generation");
    }
    lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
    lua_pop(L, 2);
}

/* data, {status=, type=, id=, limit=} -> {event...} | nil, message */
static int cli_events(lua_State *L)
{
    char err[600];
    struct journal *j;
    const char *data = luaL_checkstring(L, 1);
    struct journal_filter f = {.limit = 50};
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_getfield(L, 2, "status");
    f.status = lua_tostring(L, -1);
    lua_getfield(L, 2, "type");
    f.type = lua_tostring(L, -1);
    lua_getfield(L, 2, "id");
    f.id = lua_tostring(L, -1);
    lua_getfield(L, 2, "limit");
    f.limit = (int)luaL_optinteger(L, -1, 50);
    struct journal_options o = {data, JOURNAL_READONLY, 5, 0, 0, 0};
    if (journal_open(&j, &o, err, sizeof err) != 0)
        return fail(L, err);
    lua_newtable(L);
    int rc = journal_list(j, &f, push_row, L, err, sizeof err);
    journal_close(j);
    return rc == 0 ? 1 : fail(L, err);
}

static void push_entry(void *cls, const char *json)
{
    lua_State *L = cls;
    lua_pushstring(L, json);
    lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
}

/* data, {expiring_within = seconds, status =, state =, limit =} -> {entry JSON, ...} | nil,
 * message: the certificate inventory, soonest expiry first. */
static int cli_certs(lua_State *L)
{
    char err[600];
    struct journal *j;
    const char *data = luaL_checkstring(L, 1);
    struct journal_certs_query q = {0};
    luaL_checktype(L, 2, LUA_TTABLE);
    if (lua_getfield(L, 2, "expiring_within") == LUA_TNUMBER)
        q.expiring_before = time_now() + lua_tonumber(L, -1);
    lua_getfield(L, 2, "status");
    q.status = lua_tostring(L, -1);
    lua_getfield(L, 2, "state");
    q.state = lua_tostring(L, -1);
    lua_getfield(L, 2, "limit");
    q.limit = (int)luaL_optinteger(L, -1, 0);
    struct journal_options o = {.where = data, .flags = JOURNAL_READONLY, .busy_timeout = 5};
    if (journal_open(&j, &o, err, sizeof err) != 0)
        return fail(L, err);
    lua_newtable(L);
    int rc = journal_certs(j, &q, push_entry, L, err, sizeof err);
    journal_close(j);
    return rc == 0 ? 1 : fail(L, err);
}

/* data, event_id | nil (every dead delivery) [, handler] -> count | nil, message
 * (journal_request_replay) */
static int cli_replay(lua_State *L)
{
    char err[600];
    struct journal *j;
    int count;
    const char *data = luaL_checkstring(L, 1), *id = luaL_optstring(L, 2, NULL);
    const char *handler = luaL_optstring(L, 3, NULL);
    struct journal_options o = {data, 0, 5, 0, 0, 0};
    if (journal_open(&j, &o, err, sizeof err) != 0)
        return fail(L, err);
    int rc = journal_request_replay(j, id, handler, "local", &count, err, sizeof err);
    journal_close(j);
    if (rc != 0)
        return fail(L, err);
    lua_pushinteger(L, count);
    return 1;
}

static void push_server(void *cls, const struct journal_server *srv)
{
    lua_State *L = cls;
    lua_createtable(L, 0, 4);
    lua_pushinteger(L, srv->pid);
    lua_setfield(L, -2, "pid");
    lua_pushstring(L, srv->listen);
    lua_setfield(L, -2, "listen");
    lua_pushstring(L, srv->admin);
    lua_setfield(L, -2, "admin");
    lua_pushboolean(L, kill((pid_t)srv->pid, 0) == 0 || errno == EPERM);
    lua_setfield(L, -2, "alive");
    lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
}

/* data -> {{pid=, listen=, admin=, alive=}, ...} | nil, message: the servers of the journal on
 * this machine and where they listen, newest first (journal_servers); alive: their process is
 * there. None for a data directory that does not exist (no server ran on it). */
static int cli_servers(lua_State *L)
{
    char err[600];
    struct journal *j;
    const char *data = luaL_checkstring(L, 1);
    struct journal_options o = {.where = data, .flags = JOURNAL_READONLY, .busy_timeout = 5};
    lua_newtable(L);
    if (!journal_is_database(data) && access(data, F_OK) != 0)
        return 1;
    if (journal_open(&j, &o, err, sizeof err) != 0)
        return fail(L, err);
    int n = journal_servers(j, push_server, L, err, sizeof err);
    journal_close(j);
    return n >= 0 ? 1 : fail(L, err);
}

/* from (a data directory), to (a database URI) -> {events=, deliveries=, state=,
 * certificates=, replays=, once=, replay_log=} | nil, message. The data directory's lock is
 * taken (no server may run on it), its events of earlier releases are upgraded first, as serve
 * would. */
static int cli_migrate(lua_State *L)
{
    char err[600];
    long counts[JR_KINDS];
    struct journal *from = NULL, *to = NULL;
    const char *src = luaL_checkstring(L, 1), *dst = luaL_checkstring(L, 2);
    struct journal_options fo = {src, JOURNAL_EXCLUSIVE, 5, 0, 0, 0};
    struct journal_options to_o = {dst, JOURNAL_CREATE, 5, 0, 0, 0};
    if (journal_is_database(src) || !journal_is_database(dst))
        return fail(L, "migrate copies a data directory (--from DIR) into a PostgreSQL database "
                       "(--to postgresql://...)");
    int rc = -1;
    if (journal_open(&from, &fo, err, sizeof err) == 0 &&
        server_upgrade_journal(from, err, sizeof err) >= 0 &&
        journal_open(&to, &to_o, err, sizeof err) == 0 &&
        journal_copy(from, to, counts, err, sizeof err) == 0)
        rc = 0;
    journal_close(to);
    journal_close(from);
    if (rc != 0)
        return fail(L, err);
    static const char *const names[JR_KINDS] = {"events", "deliveries", "state", "certificates",
                                                "replays", "once", "replay_log"};
    lua_createtable(L, 0, JR_KINDS);
    for (int i = 0; i < JR_KINDS; i++) {
        lua_pushinteger(L, counts[i]);
        lua_setfield(L, -2, names[i]);
    }
    return 1;
}

/* provider, body, source | nil, {secret=, sign_key=} -> body, headers | nil, message: the
 * request certhook send makes, as the provider's client would (its signature, its header). */
static int cli_send(lua_State *L)
{
    char err[300];
    size_t n;
    const char *name = luaL_checkstring(L, 1), *body = luaL_checklstring(L, 2, &n);
    luaL_checktype(L, 4, LUA_TTABLE);
    const struct provider *p = provider_find(name);
    if (p == NULL)
        return luaL_error(L, "unknown provider %s", name);
    int cfg = lua_type(L, 3) == LUA_TTABLE ? 3 : 0;
    lua_settop(L, 4);
    lua_createtable(L, 0, 2);
    lua_pushliteral(L, "application/json");
    lua_setfield(L, 5, "Content-Type");
    if (p->send == NULL)
        lua_pushvalue(L, 2);
    else if (p->send(L, body, n, cfg, 4, 5, err, sizeof err) != 0)
        return fail(L, err);
    lua_insert(L, 5);
    return 2;
}

/* provider, type -> the JSON text of a sample payload of that canonical type | nil, message;
 * provider -> {type, ...}, the types it has samples of */
static int cli_sample(lua_State *L)
{
    char err[300];
    const char *name = luaL_checkstring(L, 1), *type = luaL_optstring(L, 2, NULL);
    const struct provider *p = provider_find(name);
    if (p == NULL)
        return luaL_error(L, "unknown provider %s", name);
    lua_settop(L, 2);
    if (p->sample == NULL) {
        if (type == NULL) {
            lua_newtable(L);
            return 1;
        }
        lua_pushnil(L);
        lua_pushfstring(L, "provider %s has no samples", name);
        return 2;
    }
    if (p->sample(L, type, err, sizeof err) != 0)
        return fail(L, err);
    return 1;
}

/* body -> the name of the provider whose payload it looks like | nil */
static int cli_detect(lua_State *L)
{
    char err[300];
    size_t n;
    const char *body = luaL_checklstring(L, 1, &n);
    if (json_decode(L, body, n, err, sizeof err) != 0)
        return fail(L, err);
    const struct provider *p = provider_detect(L, -1);
    if (p == NULL)
        return 0;
    lua_pushstring(L, p->name);
    return 1;
}

/* -> {name = {settings = {...}, samples = bool}, ...}: what the command line offers and checks. */
static int cli_providers(lua_State *L)
{
    lua_newtable(L);
    for (const struct provider *const *p = providers; *p; p++) {
        if ((*p)->internal)
            continue;
        lua_createtable(L, 0, 2);
        lua_pushboolean(L, (*p)->sample != NULL);
        lua_setfield(L, -2, "samples");
        lua_newtable(L);
        for (int i = 0; (*p)->settings && (*p)->settings[i]; i++) {
            lua_pushstring(L, (*p)->settings[i]);
            lua_rawseti(L, -2, i + 1);
        }
        lua_setfield(L, -2, "settings");
        lua_setfield(L, -2, (*p)->name);
    }
    return 1;
}

/* path -> permission bits (e.g. 0644) | nil, message: the CLI refuses a world-readable config
 * that holds secrets. */
static int cli_mode(lua_State *L)
{
    struct stat st;
    const char *path = luaL_checkstring(L, 1);
    if (stat(path, &st) != 0)
        return fail(L, strerror(errno));
    lua_pushinteger(L, st.st_mode & 07777);
    return 1;
}

/* -> "certhook 0.2.0 (Lua 5.4.4, libcurl ..., OpenSSL ..., SQLite ..., libmicrohttpd ...,
 * GnuTLS ...)": each layer names the libraries it uses. */
static int cli_versions(lua_State *L)
{
    struct buf b;
    buf_init(&b);
    buf_printf(&b, "certhook %s (", CERTHOOK_VERSION);
    module_versions(&b);
    buf_adds(&b, ", ");
    provider_versions(&b);
    buf_adds(&b, ", ");
    journal_versions(&b);
    buf_adds(&b, ", ");
    intake_versions(&b);
    buf_adds(&b, ")");
    lua_pushlstring(L, b.p ? b.p : "", b.n);
    buf_free(&b);
    return 1;
}

static const luaL_Reg cli_funcs[] = {
    {"certs", cli_certs},
    {"check", cli_check},
    {"detect", cli_detect},
    {"events", cli_events},
    {"migrate", cli_migrate},
    {"mode", cli_mode},
    {"normalize", cli_normalize},
    {"providers", cli_providers},
    {"replay", cli_replay},
    {"run", cli_run},
    {"sample", cli_sample},
    {"send", cli_send},
    {"serve", cli_serve},
    {"servers", cli_servers},
    {"versions", cli_versions},
    {NULL, NULL},
};

int luaopen_certhook_cli(lua_State *L)
{
    luaL_requiref(L, "certhook.core", luaopen_certhook_core, 0); /* curl, cjson */
    lua_pop(L, 1);
    luaL_newlib(L, cli_funcs);
    lua_newtable(L); /* states: the canonical states of a certificate */
    for (int i = 0; certificate_states[i]; i++) {
        lua_pushstring(L, certificate_states[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "states");
    return 1;
}
