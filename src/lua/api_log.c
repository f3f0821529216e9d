/*
 * api_log.c -- certhook.log (DESIGN §7): debug, info, warn, error(message [, fields]) write one
 * log line (base/log.c) with the fields as JSON and, inside a handler, the running delivery's
 * event id, type, hostname, handler and generation (from its delivery_ctx).
 */
#include <lauxlib.h>

#include "base/base.h"
#include "lua/api.h"
#include "providers/provider.h"

/* ---- certhook.log ------------------------------------------------------------------------ */

/* message [, fields] -> nothing. Raises on a non-string message or non-table fields. */
static int log_at(lua_State *L, int level)
{
    size_t n;
    const char *msg = luaL_checklstring(L, 1, &n);
    if (!lua_isnoneornil(L, 2))
        luaL_checktype(L, 2, LUA_TTABLE);
    if (!log_enabled(level))
        return 0;
    struct log_line l;
    log_begin(&l, level, msg);
    struct delivery_ctx *ctx = module_ctx(L);
    if (ctx != NULL) {
        log_str(&l, "event", ctx->event_id);
        log_str(&l, "type", ctx->event_type);
        log_str(&l, "hostname", ctx->hostname);
        log_str(&l, "handler", ctx->handler);
        log_num(&l, "generation", ctx->generation);
    }
    if (lua_istable(L, 2)) {
        size_t len;
        const char *json = json_encode(L, 2, &len); /* msg, fields, json|err */
        if (json != NULL)
            log_json(&l, "fields", json, len);
        else
            log_str(&l, "fields_error", lua_tostring(L, -1));
        lua_pop(L, 1);
    }
    log_end(&l);
    return 0;
}

static int log_debug(lua_State *L) { return log_at(L, LOG_DEBUG); }
static int log_info(lua_State *L) { return log_at(L, LOG_INFO); }
static int log_warn(lua_State *L) { return log_at(L, LOG_WARN); }
static int log_error(lua_State *L) { return log_at(L, LOG_ERROR); }

static const luaL_Reg log_funcs[] = {
    {"debug", log_debug},
    {"error", log_error},
    {"info", log_info},
    {"warn", log_warn},
    {NULL, NULL},
};

int log_open(lua_State *L)
{
    luaL_newlib(L, log_funcs);
    return 1;
}
