/*
 * fields.c -- what the provider normalizers share (fields.h): reading a decoded payload
 * without tripping on absent, null, empty or mistyped values, copying fields by table
 * (struct field), dates in any form providers send them, the certificate table.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <openssl/rand.h>

#include "providers/fields.h"
#include "providers/provider.h"

int fields_has_prefix(const char *s, const char *p)
{
    return strncmp(s, p, strlen(p)) == 0;
}

int fields_has_suffix(const char *s, const char *x)
{
    size_t n = strlen(s), m = strlen(x);
    return n >= m && strcmp(s + n - m, x) == 0;
}

/* Pushes t[k], or nil when t (an absolute index; 0 = none) is not a table. Returns its type. */
int fields_get(lua_State *L, int t, const char *k)
{
    if (t == 0 || lua_type(L, t) != LUA_TTABLE) {
        lua_pushnil(L);
        return LUA_TNIL;
    }
    return lua_getfield(L, t, k);
}

/* Pushes t[k] if it is a table and returns its absolute index; else pushes nothing, 0. */
int fields_get_table(lua_State *L, int t, const char *k)
{
    if (fields_get(L, t, k) == LUA_TTABLE)
        return lua_gettop(L);
    lua_pop(L, 1);
    return 0;
}

/* Pushes t[k] if it is a non-empty string and returns it; else pushes nothing, NULL. */
const char *fields_get_string(lua_State *L, int t, const char *k)
{
    size_t n;
    if (fields_get(L, t, k) == LUA_TSTRING) {
        const char *s = lua_tolstring(L, -1, &n);
        if (n > 0)
            return s;
    }
    lua_pop(L, 1);
    return NULL;
}

/* Epoch seconds from a provider timestamp at idx: an ISO 8601 string, or a number (epoch
 * milliseconds when >= 1e11, which as seconds would be past the year 5000). */
int fields_epoch(lua_State *L, int idx, double *t)
{
    if (lua_type(L, idx) == LUA_TNUMBER) {
        double v = lua_tonumber(L, idx);
        if (!isfinite(v))
            return -1;
        *t = v >= 1e11 ? v / 1000 : v;
        return 0;
    }
    if (lua_type(L, idx) == LUA_TSTRING) {
        const char *s = lua_tostring(L, idx);
        char *end;
        double v = strtod(s, &end);
        if (*s >= '0' && *s <= '9' && *end == '\0' && isfinite(v)) {
            *t = v >= 1e11 ? v / 1000 : v;
            return 0;
        }
        return time_parse_iso8601(s, t);
    }
    return -1;
}

void fields_set_str(lua_State *L, int ev, const char *key, const char *value)
{
    if (value != NULL && *value != '\0') {
        lua_pushstring(L, value);
        lua_setfield(L, ev, key);
    }
}

/* Pushes an array of the non-empty strings of the array at idx (0: none); returns how many. */
static int push_string_array(lua_State *L, int idx)
{
    int n = 0;
    lua_newtable(L);
    if (idx == 0)
        return 0;
    for (lua_Integer i = 1;; i++) {
        int t = lua_rawgeti(L, idx, i);
        if (t == LUA_TNIL) {
            lua_pop(L, 1);
            break;
        }
        if (t == LUA_TSTRING && lua_rawlen(L, -1) > 0)
            lua_rawseti(L, -2, ++n);
        else
            lua_pop(L, 1);
    }
    return n;
}

/* Pushes the trimmed, non-empty parts of a comma-separated list; returns how many. */
static int push_split(lua_State *L, const char *s)
{
    int n = 0;
    lua_newtable(L);
    while (s != NULL && *s) {
        const char *end = strchr(s, ',');
        const char *stop = end ? end : s + strlen(s);
        while (s < stop && (*s == ' ' || *s == '\t'))
            s++;
        const char *e = stop;
        while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
            e--;
        if (e > s) {
            lua_pushlstring(L, s, (size_t)(e - s));
            lua_rawseti(L, -2, ++n);
        }
        s = end ? end + 1 : NULL;
    }
    return n;
}

/* dst[f.to] = src[f.from], converted, for each field present with the right type (src 0:
 * none). Absent, null, empty or mistyped values are left out. */
void fields_copy(lua_State *L, int dst, int src, const struct field *f, size_t n)
{
    for (size_t i = 0; i < n; i++, f++) {
        int top = lua_gettop(L), type = fields_get(L, src, f->from);
        double t;
        switch (f->kind) {
        case F_STR:
            if (type != LUA_TSTRING || lua_rawlen(L, -1) == 0)
                goto skip;
            break;
        case F_TIME:
            if (fields_epoch(L, -1, &t) != 0)
                goto skip;
            event_push_epoch(L, t);
            break;
        case F_BOOL:
            if (type != LUA_TBOOLEAN)
                goto skip;
            break;
        case F_TABLE:
            if (type != LUA_TTABLE)
                goto skip;
            break;
        case F_LIST:
            if (push_string_array(L, type == LUA_TTABLE ? top + 1 : 0) == 0)
                goto skip;
            break;
        case F_SPLIT:
            if (push_split(L, type == LUA_TSTRING ? lua_tostring(L, -1) : NULL) == 0)
                goto skip;
            break;
        case F_ID:
            if (type == LUA_TNUMBER && lua_isinteger(L, -1))
                lua_pushfstring(L, "%I", (LUA_INTEGER)lua_tointeger(L, -1));
            else if (type != LUA_TSTRING || lua_rawlen(L, -1) == 0)
                goto skip;
            break;
        }
        lua_setfield(L, dst, f->to);
    skip:
        lua_settop(L, top);
    }
}

const char *fields_first_domain(lua_State *L, int cert)
{
    if (lua_getfield(L, cert, "domains") == LUA_TTABLE) {
        lua_rawgeti(L, -1, 1);
        lua_remove(L, -2);
        if (lua_type(L, -1) == LUA_TSTRING)
            return lua_tostring(L, -1);
    }
    lua_pop(L, 1);
    return NULL;
}

/* Sets ev.certificates = {cert} and ev.certificate = cert; pops cert. */
void fields_set_certificate(lua_State *L, int ev)
{
    lua_createtable(L, 1, 0);
    lua_pushvalue(L, -2);
    lua_rawseti(L, -2, 1);
    lua_setfield(L, ev, "certificates");
    lua_setfield(L, ev, "certificate");
}

/* Joins the strings of the array at idx with "; "; pushes the result and returns 1, or
 * pushes nothing and returns 0 when there is none. In a buffer, not on the stack: a payload
 * may list more strings than the Lua stack holds (a stack overflow here is a Lua panic). */
int fields_push_joined(lua_State *L, int idx)
{
    luaL_Buffer b;
    idx = lua_absindex(L, idx);
    if (lua_rawgeti(L, idx, 1) != LUA_TSTRING) {
        lua_pop(L, 1);
        return 0;
    }
    lua_pop(L, 1);
    luaL_buffinit(L, &b);
    for (lua_Integer i = 1;; i++) { /* the stack is balanced between the buffer calls */
        if (lua_rawgeti(L, idx, i) != LUA_TSTRING) {
            lua_pop(L, 1);
            break;
        }
        luaL_addvalue(&b); /* pops the string */
        luaL_addlstring(&b, "; ", 2);
    }
    luaL_buffsub(&b, 2); /* the last "; " */
    luaL_pushresult(&b);
    return 1;
}

/* Pushes the certificate described by the fields of src; returns its index, or pushes
 * nothing and returns 0 when none of them is present. */
int fields_push_certificate(lua_State *L, int src, const struct field *f, size_t n)
{
    lua_newtable(L);
    int c = lua_gettop(L);
    fields_copy(L, c, src, f, n);
    lua_pushnil(L);
    if (lua_next(L, c) == 0) {
        lua_pop(L, 1);
        return 0;
    }
    lua_settop(L, c);
    return c;
}

/* ---- samples ----------------------------------------------------------------------------------- */

/* Pushes the template with its placeholders filled (fields.h). */
void fields_push_filled(lua_State *L, const char *tmpl, const char *type)
{
    unsigned char r[16];
    char uuid[37], n[16], now[40], date[40], epoch[24], days[16];
    if (RAND_bytes(r, sizeof r) != 1) /* not for secrecy: any bytes make a new id */
        for (size_t i = 0; i < sizeof r; i++)
            r[i] = (unsigned char)(rand() & 0xff);
    r[6] = (unsigned char)((r[6] & 0x0f) | 0x40);
    r[8] = (unsigned char)((r[8] & 0x3f) | 0x80);
    snprintf(uuid, sizeof uuid,
             "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", r[0], r[1],
             r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12], r[13], r[14],
             r[15]);
    snprintf(n, sizeof n, "%u", 100000000u + ((unsigned)r[0] << 16 | (unsigned)r[1] << 8 |
                                              r[2]) % 900000000u);
    long long t = (long long)time_now(), expires = (t / 86400 + SAMPLE_DAYS + 1) * 86400;
    if (type != NULL && strcmp(type, "certificate.expiration.reached") == 0)
        expires = t;
    time_format_iso8601((double)t, now);
    time_format_iso8601((double)expires, date);
    snprintf(epoch, sizeof epoch, "%lld", expires);
    snprintf(days, sizeof days, "%d", expires > t ? SAMPLE_DAYS : 0);
    int top = lua_gettop(L);
    luaL_gsub(L, tmpl, "{{id}}", uuid);
    luaL_gsub(L, lua_tostring(L, -1), "{{n}}", n);
    luaL_gsub(L, lua_tostring(L, -1), "{{time}}", now);
    luaL_gsub(L, lua_tostring(L, -1), "{{expires}}", date);
    luaL_gsub(L, lua_tostring(L, -1), "{{expires_epoch}}", epoch);
    luaL_gsub(L, lua_tostring(L, -1), "{{days}}", days);
    lua_replace(L, top + 1);
    lua_settop(L, top + 1);
}

int fields_sample(lua_State *L, const struct sample *s, size_t n, const char *type, char *err,
                  size_t errlen)
{
    if (type == NULL) {
        lua_newtable(L);
        for (size_t i = 0; i < n; i++)
            fields_add_type(L, lua_gettop(L), s[i].type);
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        if (strcmp(s[i].type, type) == 0) {
            fields_push_filled(L, s[i].body, type);
            return 0;
        }
    }
    snprintf(err, errlen, "no sample of %s", type);
    return -1;
}

void fields_add_type(lua_State *L, int list, const char *type)
{
    lua_Integer n = (lua_Integer)lua_rawlen(L, list);
    for (lua_Integer i = 1; i <= n; i++) {
        int same = lua_rawgeti(L, list, i) == LUA_TSTRING && strcmp(lua_tostring(L, -1), type) == 0;
        lua_pop(L, 1);
        if (same)
            return;
    }
    lua_pushstring(L, type);
    lua_rawseti(L, list, n + 1);
}

void fields_push_decoded(lua_State *L, const char *tmpl, const char *type)
{
    char err[200];
    fields_push_filled(L, tmpl, type);
    if (json_decode(L, lua_tostring(L, -1), lua_rawlen(L, -1), err, sizeof err) != 0)
        luaL_error(L, "sample template: %s", err); /* a bug: templates are constants */
    lua_remove(L, -2);
}

void fields_put(lua_State *L, int dst, int src, const struct field *f, size_t n)
{
    for (size_t i = 0; i < n; i++, f++) {
        if (fields_get(L, src, f->to) == LUA_TNIL) {
            lua_pop(L, 1);
            continue;
        }
        if (f->kind == F_SPLIT && lua_type(L, -1) == LUA_TTABLE) { /* {"a", "b"} -> "a, b" */
            luaL_Buffer b;
            int list = lua_gettop(L);
            lua_Integer k = 1;
            luaL_buffinit(L, &b);
            for (; lua_rawgeti(L, list, k) == LUA_TSTRING; k++) { /* balanced between calls */
                luaL_addvalue(&b);
                luaL_addlstring(&b, ", ", 2);
            }
            lua_pop(L, 1); /* what ended the list */
            if (k > 1)
                luaL_buffsub(&b, 2);
            luaL_pushresult(&b);
            lua_remove(L, list);
        }
        lua_setfield(L, dst, f->from);
    }
}

int fields_encode(lua_State *L, char *err, size_t errlen)
{
    if (json_encode(L, -1, NULL) == NULL) {
        snprintf(err, errlen, "cannot encode the sample: %s", lua_tostring(L, -1));
        lua_pop(L, 2);
        return -1;
    }
    lua_remove(L, -2);
    return 0;
}

int fields_one_event(lua_State *L, int raw, fields_fill fill, char *err, size_t errlen)
{
    luaL_checkstack(L, 80, "normalize");
    lua_createtable(L, 1, 0);
    lua_createtable(L, 0, 24);
    int ev = lua_gettop(L);
    if (fill(L, raw, ev, err, errlen) != 0) {
        lua_settop(L, ev - 2);
        return 400;
    }
    lua_settop(L, ev);
    lua_pushvalue(L, raw);
    lua_setfield(L, ev, "raw");
    lua_rawseti(L, ev - 1, 1);
    return 0;
}
