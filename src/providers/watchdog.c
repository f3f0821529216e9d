/*
 * watchdog.c -- the provider `certhook`: the events the expiry watchdog (dispatch/watchdog.c)
 * raises about certificates of the inventory (DESIGN §6). The watchdog writes what it found --
 * {"watchdog": "upcoming" | "overdue" | "reached", "threshold_days": t, "fired_at": now,
 * "certificate": the inventory entry} -- and this file makes the event of it, as any provider
 * makes one of its payload: journaled, deduplicated by its stable id, delivered.
 *
 * No source can name it: only the watchdog speaks for it.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <lauxlib.h>

#include "providers/fields.h"
#include "providers/provider.h"

static const struct {
    const char *kind, *type;
} kinds[] = {
    {"upcoming", "certificate.expiration.upcoming"},
    {"overdue", "certificate.renewal.overdue"},
    {"reached", "certificate.expiration.reached"},
};

static int configure(lua_State *L, int t, struct source *s, char *err, size_t errlen)
{
    (void)L, (void)t;
    snprintf(err, errlen, "sources.%s: the provider certhook is the expiry watchdog's (the "
                          "watchdog setting); no source can use it", s->name);
    return -1;
}

/* The entry's facts a certificate table of an event holds: key, id, name, status, state,
 * domains, issuer, serial_number, not_before, expires_at (approximate or not), and the provider
 * that told of it. */
static int certificate(lua_State *L, int entry)
{
    static const struct field f[] = {
        {"key", "key", F_STR},
        {"id", "certificate_id", F_STR},
        {"name", "name", F_STR},
        {"status", "status", F_STR},
        {"state", "state", F_STR},
        {"domains", "domains", F_LIST},
        {"issuer", "issuer", F_STR},
        {"serial_number", "serial_number", F_STR},
        {"not_before", "not_before", F_TIME},
        {"expires_at", "expires_at", F_TIME},
        {"expires_at_approximate", "expires_at_approximate", F_BOOL},
        {"provider", "provider", F_STR},
    };
    return fields_push_certificate(L, entry, f, COUNT(f));
}

static int normalize(lua_State *L, int body, const struct source *s, const struct request *rq,
                     struct reply *r, char *err, size_t errlen)
{
    (void)s, (void)rq, (void)r;
    int top = lua_gettop(L);
    luaL_checkstack(L, 20, "watchdog");
    const char *kind = fields_get_string(L, body, "watchdog");
    int entry = fields_get_table(L, body, "certificate");
    const char *type = NULL;
    for (size_t i = 0; kind && i < sizeof kinds / sizeof kinds[0]; i++)
        if (strcmp(kinds[i].kind, kind) == 0)
            type = kinds[i].type;
    double expires_at = 0, fired_at = 0;
    const char *key = entry ? fields_get_string(L, entry, "key") : NULL;
    if (type == NULL || key == NULL ||
        fields_get(L, entry, "expires_at") != LUA_TNUMBER ||
        fields_epoch(L, -1, &expires_at) != 0 || fields_get(L, body, "fired_at") != LUA_TNUMBER ||
        fields_epoch(L, -1, &fired_at) != 0) {
        lua_settop(L, top);
        snprintf(err, errlen, "not a watchdog finding: {watchdog = upcoming|overdue|reached, "
                              "certificate = {key, expires_at}, fired_at}");
        return 400;
    }
    lua_createtable(L, 1, 0);
    lua_createtable(L, 0, 16);
    int ev = lua_gettop(L);
    char id[1024];
    double threshold = 0;
    int has_threshold = fields_get(L, body, "threshold_days") == LUA_TNUMBER &&
                        fields_epoch(L, -1, &threshold) == 0;
    if (has_threshold)
        snprintf(id, sizeof id, "watchdog:%s:%.0f:%s:%g", key, expires_at, kind, threshold);
    else
        snprintf(id, sizeof id, "watchdog:%s:%.0f:%s", key, expires_at, kind);
    fields_set_str(L, ev, "id", id);
    fields_set_str(L, ev, "type", type);
    lua_pushfstring(L, "watchdog.%s", kind);
    lua_setfield(L, ev, "provider_type");
    lua_pushinteger(L, 1);
    lua_setfield(L, ev, "payload_version");
    event_push_epoch(L, fired_at);
    lua_setfield(L, ev, "occurred_at");
    if (has_threshold) {
        lua_pushnumber(L, threshold);
        lua_setfield(L, ev, "threshold_days");
    }
    lua_pushinteger(L, (lua_Integer)floor((expires_at - fired_at) / 86400));
    lua_setfield(L, ev, "days_to_expiry");
    lua_pushvalue(L, entry);
    const char *host = fields_get_string(L, entry, "hostname");
    if (host != NULL)
        fields_set_str(L, ev, "hostname", host);
    lua_settop(L, ev);
    if (certificate(L, entry) != 0)
        fields_set_certificate(L, ev);
    lua_settop(L, ev);
    lua_pushvalue(L, body);
    lua_setfield(L, ev, "raw");
    lua_rawseti(L, ev - 1, 1);
    lua_replace(L, top + 1); /* the list, where the caller wants it */
    lua_settop(L, top + 1);
    return 0;
}

static int detect(lua_State *L, int body)
{
    int top = lua_gettop(L);
    int found = lua_type(L, body) == LUA_TTABLE && fields_get_string(L, body, "watchdog") &&
                fields_get_table(L, body, "certificate");
    lua_settop(L, top);
    return found;
}

const struct provider watchdog_provider = {
    .name = "certhook",
    .internal = 1,
    .configure = configure,
    .normalize = normalize,
    .detect = detect,
};
