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
    http_global_init();
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
