/*
 * module.c -- the Lua states certhook makes, and luaopen_certhook_core: the API handlers get
 * with require "certhook" (lua/certhook/init.lua over it): certhook.log, .time, .http, .exec,
 * .state (api_*.c). Every state comes from module_newstate, with lua-cjson registered for
 * json_decode / json_encode; a handler state is sandboxed (module_sandbox). The command line's
 * C functions are not here: they live in luaopen_certhook_cli (src/cli.c), which no handler
 * state loads.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <curl/curl.h>
#include <lauxlib.h>
#include <lualib.h>

#include "lua/api.h"
#include "providers/provider.h"

static const char ctx_key = 'c';

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
    json_open(L);
    return 0;
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

static int share_readonly(lua_State *L);

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
    forbid(L, "package", "loadlib",
           "package.loadlib is not available to handlers: require a module instead");
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
    lua_settop(L, 0);
    return share_readonly(L);
}

/* ---- what handler files share, read-only (DESIGN §5, §10) ------------------------------------- */

/* Every handler file of a generation runs in the same state: its globals are its own (an
 * environment per file, module_push_env), and everything they share -- the global table, the
 * standard library, package.loaded and every module in it (certhook's among them), the string
 * metatable -- is read-only to them, as Redis 7 makes its scripts' libraries: a table is seen
 * through a proxy (an empty table whose metatable reads from a copy of it, with its tables
 * proxied too, and refuses writes, naming the file and line that tried); getmetatable on a
 * string returns the proxy of its metatable, on certhook's userdata nothing. C code keeps the
 * real tables. */

static const char globals_key = 'g'; /* the registry's: the global table's contents */

/* __newindex of a proxy (upvalue: its name) */
static int readonly_write(lua_State *L)
{
    const char *key = lua_type(L, 2) == LUA_TSTRING ? lua_tostring(L, 2) : NULL;
    return luaL_error(L, "%s%s%s is read-only to handlers: every handler file shares it (keep a "
                         "local of your own instead)",
                      lua_tostring(L, lua_upvalueindex(1)), key ? "." : "", key ? key : "");
}

/* __newindex of the global table: a chunk run by load() or a module in lib/ that sets a global */
static int readonly_global(lua_State *L)
{
    return luaL_error(L, "assignment to the global %s: the global environment is read-only to "
                         "handlers (make it local; a module in lib/ returns what it offers)",
                      lua_type(L, 2) == LUA_TSTRING ? lua_tostring(L, 2) : "(not a name)");
}

/* The iterator of a proxy's pairs (upvalue: the copy it reads from). */
static int readonly_next(lua_State *L)
{
    lua_settop(L, 2);
    return lua_next(L, lua_upvalueindex(1)) ? 2 : (lua_pushnil(L), 1);
}

/* __pairs: the proxy's fields, without handing out the copy. */
static int readonly_pairs(lua_State *L)
{
    lua_getmetatable(L, 1);
    lua_getfield(L, -1, "__index");
    lua_pushcclosure(L, readonly_next, 1);
    lua_pushvalue(L, 1);
    lua_pushnil(L);
    return 3;
}

/* rawset, refusing proxies: a rawset on one would change what every file reads through it. */
static int readonly_rawset(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_checkany(L, 2);
    luaL_checkany(L, 3);
    if (lua_getmetatable(L, 1) && lua_getfield(L, -1, "__readonly") == LUA_TSTRING)
        return luaL_error(L, "%s is read-only to handlers: every handler file shares it (keep a "
                             "local of your own instead)", lua_tostring(L, -1));
    lua_settop(L, 3);
    lua_rawset(L, 1);
    return 1;
}

/* Sets the metatable of the proxy at top: reads from the table at copy, named name. */
static void readonly_meta(lua_State *L, int copy, const char *name, lua_CFunction write)
{
    lua_createtable(L, 0, 5);
    lua_pushvalue(L, copy);
    lua_setfield(L, -2, "__index");
    lua_pushstring(L, name);
    lua_pushcclosure(L, write, 1);
    lua_setfield(L, -2, "__newindex");
    lua_pushcfunction(L, readonly_pairs);
    lua_setfield(L, -2, "__pairs");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable"); /* getmetatable(proxy): false */
    lua_pushstring(L, name);
    lua_setfield(L, -2, "__readonly");
    lua_setmetatable(L, -2);
}

/* Pushes the proxy of the table at idx, named name (memo: table -> proxy, so each table has one
 * and cycles end). */
static void readonly_proxy(lua_State *L, int idx, int memo, const char *name)
{
    idx = lua_absindex(L, idx);
    luaL_checkstack(L, 8, "nested tables");
    lua_pushvalue(L, idx);
    if (lua_rawget(L, memo) != LUA_TNIL)
        return;
    lua_pop(L, 1);
    lua_newtable(L); /* the proxy */
    int proxy = lua_gettop(L);
    lua_pushvalue(L, idx);
    lua_pushvalue(L, proxy);
    lua_rawset(L, memo);
    lua_newtable(L); /* the copy it reads from */
    int copy = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) { /* key, value */
        if (lua_type(L, -1) == LUA_TTABLE) {
            lua_pushfstring(L, "%s.%s", name,
                            lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "?");
            readonly_proxy(L, -2, memo, lua_tostring(L, -1));
            lua_replace(L, -3);
            lua_pop(L, 1);
        }
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, copy);
    }
    lua_pushvalue(L, proxy);
    readonly_meta(L, copy, name, readonly_write);
    lua_settop(L, proxy);
}

/* Runs protected, last in sandbox: makes what the files share read-only. */
static int share_readonly(lua_State *L)
{
    lua_getglobal(L, "require"); /* loaded now, so that it is shared read-only */
    lua_pushliteral(L, "certhook");
    lua_call(L, 1, 0);
    lua_newtable(L);
    int memo = lua_gettop(L);
    lua_pushglobaltable(L);
    int g = lua_gettop(L);
    lua_pushvalue(L, g);
    lua_pushvalue(L, g);
    lua_rawset(L, memo); /* the global table becomes its own proxy, below */
    /* package.loaded: the same table require uses, each module in it replaced by its proxy */
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    int loaded = lua_gettop(L);
    lua_newtable(L);
    lua_pushvalue(L, loaded);
    lua_pushvalue(L, -2);
    lua_rawset(L, memo);
    readonly_meta(L, loaded, "package.loaded", readonly_write);
    lua_pop(L, 1);
    /* in name order: a table two modules share is named after the first ("certhook.log", not
     * "certhook.core.log") */
    lua_newtable(L);
    int names = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, loaded) != 0) {
        lua_pop(L, 1);
        if (lua_type(L, -1) == LUA_TSTRING) {
            lua_pushvalue(L, -1);
            lua_rawseti(L, names, (lua_Integer)lua_rawlen(L, names) + 1);
        }
    }
    lua_getglobal(L, "table");
    lua_getfield(L, -1, "sort");
    lua_pushvalue(L, names);
    lua_call(L, 1, 0);
    lua_pop(L, 1);
    for (lua_Integer i = 1; lua_rawgeti(L, names, i) == LUA_TSTRING; i++) { /* name */
        if (lua_rawget(L, loaded) == LUA_TTABLE) {
            lua_rawgeti(L, names, i);
            readonly_proxy(L, -2, memo, lua_tostring(L, -1)); /* module, name, proxy */
            lua_rawset(L, loaded); /* an existing key */
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 2); /* nil, names */
    /* the global table: its contents move to a copy (tables proxied), itself a proxy of it */
    lua_newtable(L);
    int copy = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, g) != 0) {
        if (lua_type(L, -1) == LUA_TTABLE)
            readonly_proxy(L, -1, memo, lua_tostring(L, -2)), lua_remove(L, -2);
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, copy);
    }
    lua_pushcfunction(L, readonly_rawset);
    lua_setfield(L, copy, "rawset");
    for (;;) { /* emptied: every read goes through the metatable, every write is refused */
        lua_pushnil(L);
        if (lua_next(L, g) == 0)
            break;
        lua_pop(L, 1);
        lua_pushnil(L);
        lua_rawset(L, g);
    }
    lua_pushvalue(L, g);
    readonly_meta(L, copy, "_G", readonly_global);
    lua_pop(L, 1);
    lua_pushvalue(L, copy);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &globals_key);
    /* getmetatable("") gives the proxy of the string metatable; a userdata's, nothing */
    lua_pushliteral(L, "");
    lua_getmetatable(L, -1);
    readonly_proxy(L, -1, memo, "the string metatable");
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 2);
    lua_pushnil(L);
    while (lua_next(L, LUA_REGISTRYINDEX) != 0) { /* luaL_newmetatable's: registry[name] */
        if (lua_type(L, -2) == LUA_TSTRING && lua_type(L, -1) == LUA_TTABLE) {
            lua_getfield(L, -1, "__name"); /* key, mt, name */
            if (lua_rawequal(L, -1, -3)) {
                lua_pushboolean(L, 0);
                lua_setfield(L, -3, "__metatable");
            }
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    return 0;
}

void module_push_env(lua_State *L)
{
    lua_newtable(L);
    lua_createtable(L, 0, 2);
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &globals_key) == LUA_TNIL) {
        lua_pop(L, 1);
        lua_pushglobaltable(L); /* not sandboxed (certhook run's tests): the global table */
    }
    lua_setfield(L, -2, "__index");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_setmetatable(L, -2);
    lua_pushvalue(L, -1);
    lua_setfield(L, -2, "_G");
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

void module_versions(struct buf *b)
{
    buf_printf(b, "%s, libcurl %s", LUA_RELEASE, curl_version_info(CURLVERSION_NOW)->version);
}

/* The API areas, in the order require "certhook" exposes them. */
static const struct {
    const char *name;
    int (*open)(lua_State *L);
} areas[] = {
    {"certs", certs_open},
    {"exec", exec_open},
    {"http", http_open},
    {"log", log_open},
    {"once", once_open},
    {"state", state_open},
    {"time", time_open},
    {"tls", tls_open},
};

int luaopen_certhook_core(lua_State *L)
{
    json_open(L);
    lua_createtable(L, 0, 8);
    for (size_t i = 0; i < sizeof areas / sizeof areas[0]; i++) {
        areas[i].open(L);
        lua_setfield(L, -2, areas[i].name);
    }
    lua_pushliteral(L, CERTHOOK_VERSION);
    lua_setfield(L, -2, "version");
    return 1;
}
