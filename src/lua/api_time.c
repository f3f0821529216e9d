/*
 * api_time.c -- certhook.time (DESIGN §7): iso8601([t]), now(), parse(s), on base/clock.c.
 */
#include <lauxlib.h>

#include "base/base.h"
#include "lua/api.h"
#include "providers/provider.h"

/* ---- certhook.time --------------------------------------------------------------------------- */

/* [t] -> "2022-02-09T00:03:28Z" (UTC; milliseconds when t has a fraction). t defaults to now. */
static int time_iso8601(lua_State *L)
{
    char out[40];
    double t = lua_isnoneornil(L, 1) ? time_now() : (double)luaL_checknumber(L, 1);
    lua_pushlstring(L, out, time_format_iso8601(t, out));
    return 1;
}

/* -> epoch seconds with sub-second precision */
static int time_lnow(lua_State *L)
{
    lua_pushnumber(L, time_now());
    return 1;
}

/* s -> epoch seconds, or nil, message, "invalid" */
static int time_parse(lua_State *L)
{
    const char *s = luaL_checkstring(L, 1);
    double t;
    if (time_parse_iso8601(s, &t) != 0) {
        lua_pushnil(L);
        lua_pushfstring(L, "not an ISO 8601 timestamp: %s", s);
        lua_pushliteral(L, "invalid");
        return 3;
    }
    event_push_epoch(L, t);
    return 1;
}

static const luaL_Reg time_funcs[] = {
    {"iso8601", time_iso8601},
    {"now", time_lnow},
    {"parse", time_parse},
    {NULL, NULL},
};

int time_open(lua_State *L)
{
    luaL_newlib(L, time_funcs);
    return 1;
}
