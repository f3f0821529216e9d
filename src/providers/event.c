/*
 * event.c -- the canonical event (DESIGN §3) as Lua sees it and as bytes: JSON through
 * lua-cjson (registered per state by json_open), the fix-up every decoded payload gets, the
 * summary of an event, and the walk between an event table and base/pack.c's format.
 *
 * An event is packed once, at intake, raw included, and kept so by the journal; whoever
 * delivers it unpacks a plain table: no second parse, no second normalization, and pairs() and
 * json.encode see every field. A table met twice (event.certificate is certificates[1]) is
 * written once and referenced after, so the table read back shares what the original shared.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <openssl/evp.h>

#include "providers/provider.h"

#define MAX_DEPTH 64

static const char decode_key = 'd', encode_key = 'e';

/* ---- JSON ------------------------------------------------------------------------------------- */

void json_open(lua_State *L)
{
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &decode_key) != LUA_TNIL) {
        lua_pop(L, 1);
        return;
    }
    lua_pop(L, 1);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "cjson");
    lua_call(L, 1, 1);
    lua_getfield(L, -1, "decode");
    lua_rawsetp(L, LUA_REGISTRYINDEX, &decode_key);
    lua_getfield(L, -1, "encode");
    lua_rawsetp(L, LUA_REGISTRYINDEX, &encode_key);
    lua_pop(L, 1);
}

int json_decode(lua_State *L, const char *s, size_t n, char *err, size_t errlen)
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

const char *json_encode(lua_State *L, int idx, size_t *len)
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

static int has_nul(lua_State *L, int idx)
{
    size_t n;
    const char *s = lua_tolstring(L, idx, &n);
    return memchr(s, '\0', n) != NULL;
}

int json_fixup(lua_State *L, int idx)
{
    int nuls = 0;
    idx = lua_absindex(L, idx);
    if (lua_type(L, idx) != LUA_TTABLE)
        return lua_type(L, idx) == LUA_TSTRING && has_nul(L, idx);
    luaL_checkstack(L, 4, "JSON nesting");
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) { /* key, value */
        if (lua_type(L, -2) == LUA_TSTRING)
            nuls += has_nul(L, -2);
        switch (lua_type(L, -1)) {
        case LUA_TSTRING:
            nuls += has_nul(L, -1);
            break;
        case LUA_TLIGHTUSERDATA: /* cjson.null */
            if (lua_touserdata(L, -1) == NULL && lua_type(L, -2) == LUA_TSTRING) {
                lua_pushvalue(L, -2);
                lua_pushnil(L);
                lua_rawset(L, idx); /* clearing a field during traversal is allowed */
            }
            break;
        case LUA_TNUMBER:
            if (!lua_isinteger(L, -1)) {
                double v = lua_tonumber(L, -1);
                if (!isfinite(v)) { /* 1e309 decodes as inf: no JSON, no date, no handler */
                    lua_pushvalue(L, -2);
                    if (lua_type(L, -1) == LUA_TSTRING)
                        lua_pushnil(L); /* absent, as a JSON null member */
                    else
                        lua_pushlightuserdata(L, NULL); /* in an array: cjson.null */
                    lua_rawset(L, idx);
                } else if (v == floor(v) && fabs(v) < 9007199254740992.0) {
                    lua_pushvalue(L, -2);
                    lua_pushinteger(L, (lua_Integer)v);
                    lua_rawset(L, idx); /* assigning an existing field is allowed */
                }
            }
            break;
        case LUA_TTABLE:
            nuls += json_fixup(L, -1);
            break;
        }
        lua_pop(L, 1);
    }
    return nuls;
}

void event_push_epoch(lua_State *L, double t)
{
    if (t == floor(t) && fabs(t) < 9007199254740992.0)
        lua_pushinteger(L, (lua_Integer)t);
    else
        lua_pushnumber(L, t);
}

void event_hash_id(const char *source, const char *body, size_t n, struct buf *out)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_Digest(body, n, md, &len, EVP_sha256(), NULL);
    buf_printf(out, "%s:sha256:", source);
    for (unsigned int i = 0; i < len; i++)
        buf_printf(out, "%02x", md[i]);
}

/* ---- packing ----------------------------------------------------------------------------------- */

/* The tables written so far: open addressing by address, with each one's number (1, 2, ...)
 * and where its tag is in the buffer. */
struct seen {
    const void *table;
    uint32_t number;
    size_t at;
};

struct packer {
    struct buf *b;
    int body; /* stack index of the decoded body, or 0 */
    struct seen *seen, small[64];
    size_t cap, n;
    uint32_t tables;
};

static struct seen *slot(struct seen *seen, size_t cap, const void *t)
{
    size_t i = (size_t)(((uintptr_t)t >> 4) * 0x9e3779b97f4a7c15u) % cap;
    while (seen[i].table != NULL && seen[i].table != t)
        i = (i + 1) % cap;
    return &seen[i];
}

/* Remembers table t, written at `at`, keeping the table at most half full. */
static int remember(struct packer *pk, const void *t, size_t at)
{
    if (2 * (pk->n + 1) > pk->cap) {
        size_t cap = 2 * pk->cap;
        struct seen *seen = calloc(cap, sizeof *seen);
        if (seen == NULL)
            return -1;
        for (size_t i = 0; i < pk->cap; i++)
            if (pk->seen[i].table != NULL)
                *slot(seen, cap, pk->seen[i].table) = pk->seen[i];
        if (pk->seen != pk->small)
            free(pk->seen);
        pk->seen = seen;
        pk->cap = cap;
    }
    *slot(pk->seen, pk->cap, t) = (struct seen){t, ++pk->tables, at};
    pk->n++;
    return 0;
}

/* Writes the value at idx: tables (no cycles, nesting up to MAX_DEPTH), strings, numbers,
 * booleans, cjson.null. -1 for anything else. */
static int pack_at(lua_State *L, int idx, struct packer *pk, int depth)
{
    struct buf *b = pk->b;
    switch (lua_type(L, idx)) {
    case LUA_TBOOLEAN:
        return pack_bool(b, lua_toboolean(L, idx));
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx))
            return pack_int(b, lua_tointeger(L, idx));
        return pack_float(b, lua_tonumber(L, idx));
    case LUA_TSTRING: {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        return pack_str(b, s, n);
    }
    case LUA_TLIGHTUSERDATA:
        return lua_touserdata(L, idx) == NULL ? pack_null(b) : -1;
    case LUA_TTABLE: {
        if (depth >= MAX_DEPTH || !lua_checkstack(L, 3))
            return -1;
        if (pk->body != 0 && lua_rawequal(L, idx, pk->body))
            return pack_body(b); /* raw: decoded again from the body, which is kept anyway */
        const void *t = lua_topointer(L, idx);
        struct seen *met = slot(pk->seen, pk->cap, t);
        if (met->table != NULL) {
            pack_share(b, met->at);
            return pack_ref(b, met->number);
        }
        lua_Unsigned narr = lua_rawlen(L, idx);
        size_t at = pack_table(b, (uint32_t)narr, 0), pairs = 0;
        if (at == (size_t)-1 || remember(pk, t, at) != 0)
            return -1;
        lua_pushnil(L);
        while (lua_next(L, idx) != 0) { /* key, value */
            int top = lua_gettop(L);
            if (pack_at(L, top - 1, pk, depth + 1) != 0 || pack_at(L, top, pk, depth + 1) != 0) {
                lua_pop(L, 2);
                return -1;
            }
            lua_pop(L, 1);
            pairs++;
        }
        pack_table_sizes(b, at, (uint32_t)narr, pairs > narr ? (uint32_t)(pairs - narr) : 0);
        return pack_end(b);
    }
    default:
        return -1;
    }
}

/* Pushes field f of the table at idx and returns it as a string (a number is turned into
 * one), or NULL when it is neither. */
static const char *field(lua_State *L, int idx, const char *f)
{
    int type = lua_getfield(L, idx, f);
    return type == LUA_TSTRING || type == LUA_TNUMBER ? lua_tostring(L, -1) : NULL;
}

/* Copies field k of the table at from into the table at to, when it is a string (a
 * non-empty one), a number or true. */
static void copy_fact(lua_State *L, int to, int from, const char *k, const char *as)
{
    int t = lua_getfield(L, from, k);
    if ((t == LUA_TSTRING && lua_rawlen(L, -1) > 0) || t == LUA_TNUMBER ||
        (t == LUA_TBOOLEAN && lua_toboolean(L, -1)))
        lua_setfield(L, to, as ? as : k);
    else
        lua_pop(L, 1);
}

/* What the certificate inventory learns from the finished event at idx, pushed as a string
 * holding a list of tables in the pack format (base.h), one per certificate (or nothing;
 * returns 0 then): for each certificate of a certificate.* event
 * -- or for its hostname when it names no certificate -- its key (`<provider>:<certificate
 * id>`, `<provider>:host:<hostname>` without one; the watchdog's events give the key of the
 * entry they are about), certificate_id, hostname, name, scope
 * (account, zone, instance, region), status (the transition's target, else the
 * certificate's), state, domains, issuer, serial_number, not_before, expires_at and
 * expires_at_approximate. */
static int certificate_facts(lua_State *L, int idx)
{
    int top = lua_gettop(L);
    const char *type = field(L, idx, "type"), *provider = field(L, idx, "provider");
    if (type == NULL || provider == NULL || strncmp(type, "certificate.", 12) != 0 ||
        !lua_checkstack(L, 12)) {
        lua_settop(L, top);
        return 0;
    }
    int list = (lua_newtable(L), lua_gettop(L));
    int certs = lua_getfield(L, idx, "certificates") == LUA_TTABLE ? lua_gettop(L) : 0;
    lua_Integer n = certs ? (lua_Integer)lua_rawlen(L, certs) : 0, made = 0;
    for (lua_Integer i = 1; i <= (n > 0 ? n : 1); i++) {
        int c = 0;
        if (n > 0) {
            if (lua_rawgeti(L, certs, i) != LUA_TTABLE) {
                lua_pop(L, 1);
                continue;
            }
            c = lua_gettop(L);
        }
        lua_newtable(L);
        int f = lua_gettop(L);
        const char *id = NULL;
        if (c) {
            static const char *const ids[] = {"id", "arn", "uri"};
            for (size_t k = 0; k < sizeof ids / sizeof ids[0] && id == NULL; k++)
                id = field(L, c, ids[k]);
            static const char *const copied[] = {"name",         "status",
                                                 "state",        "domains",
                                                 "issuer",       "serial_number",
                                                 "not_before",   "expires_at",
                                                 "expires_at_approximate"};
            for (size_t k = 0; k < sizeof copied / sizeof copied[0]; k++) {
                if (strcmp(copied[k], "domains") == 0) {
                    if (lua_getfield(L, c, "domains") == LUA_TTABLE && lua_rawlen(L, -1) > 0)
                        lua_setfield(L, f, "domains");
                    else
                        lua_pop(L, 1);
                } else {
                    copy_fact(L, f, c, copied[k], NULL);
                }
            }
        }
        if (id != NULL) {
            lua_pushstring(L, id);
            lua_setfield(L, f, "certificate_id");
        }
        if (i == 1) { /* what the event says of its (first) certificate */
            copy_fact(L, f, idx, "hostname", NULL);
            if (lua_getfield(L, idx, "status") == LUA_TTABLE)
                copy_fact(L, f, lua_gettop(L), "to", "status");
            lua_pop(L, 1);
        } else if (lua_getfield(L, f, "domains") == LUA_TTABLE) {
            lua_rawgeti(L, -1, 1);
            lua_setfield(L, f, "hostname");
        }
        lua_settop(L, f);
        const char *host = field(L, f, "hostname");
        lua_pop(L, 1);
        lua_pushnil(L);
        const char *key = c ? (lua_pop(L, 1), field(L, c, "key")) : NULL; /* the watchdog's */
        if (key == NULL && id == NULL && host == NULL) { /* nothing to know it by */
            lua_settop(L, certs ? certs : list);
            continue;
        }
        if (key == NULL) {
            lua_pop(L, 1);
            event_certificate_key(L, provider, id, host);
        }
        lua_setfield(L, f, "key");
        luaL_Buffer scope;
        luaL_buffinit(L, &scope);
        static const char *const scopes[] = {"account", "zone", "instance", "region"};
        int parts = 0;
        for (size_t k = 0; k < sizeof scopes / sizeof scopes[0]; k++) {
            const char *v = field(L, idx, scopes[k]);
            lua_pop(L, 1); /* the string stays alive in the event table */
            if (v != NULL) {
                if (parts++)
                    luaL_addchar(&scope, '/');
                luaL_addstring(&scope, v);
            }
        }
        luaL_pushresult(&scope);
        if (parts)
            lua_setfield(L, f, "scope");
        else
            lua_pop(L, 1);
        lua_rawseti(L, list, ++made);
        lua_settop(L, certs ? certs : list);
    }
    lua_settop(L, list);
    if (made == 0) {
        lua_settop(L, top);
        return 0;
    }
    struct buf b;
    buf_init(&b);
    struct packer pk = {.b = &b, .cap = sizeof pk.small / sizeof pk.small[0]};
    pk.seen = memset(pk.small, 0, sizeof pk.small);
    int rc = pack_start(&b) == 0 && pack_at(L, list, &pk, 0) == 0 ? 0 : -1;
    if (pk.seen != pk.small)
        free(pk.seen);
    if (rc == 0)
        lua_pushlstring(L, b.p, b.n);
    buf_free(&b);
    if (rc != 0) {
        lua_settop(L, top);
        return 0;
    }
    lua_remove(L, list);
    return 1;
}

void event_certificate_key(lua_State *L, const char *provider, const char *id,
                           const char *hostname)
{
    lua_pushfstring(L, id ? "%s:%s" : "%s:host:%s", provider, id ? id : hostname);
}

int event_pack(lua_State *L, int idx, int body, struct event *ev, struct buf *out, char *err,
               size_t errlen)
{
    idx = lua_absindex(L, idx);
    body = body != 0 ? lua_absindex(L, body) : 0;
    memset(ev, 0, sizeof *ev);
    /* the summary's strings stay on the stack, above idx, until the caller's settop */
#define SUMMARY(f) ev->f = field(L, idx, #f);
    EVENT_STRINGS(SUMMARY)
#undef SUMMARY
    if (ev->id == NULL || ev->source == NULL || ev->provider == NULL || ev->type == NULL) {
        snprintf(err, errlen, "an event needs id, source, provider and type");
        return -1;
    }
    lua_getfield(L, idx, "received_at");
    ev->received_at = lua_tonumber(L, -1);
    lua_getfield(L, idx, "occurred_at");
    ev->occurred_at = lua_tonumber(L, -1);
    lua_pop(L, 2);
    if (certificate_facts(L, idx))
        ev->certs = lua_tolstring(L, -1, &ev->certs_len);

    struct packer pk = {.b = out, .body = body, .cap = sizeof pk.small / sizeof pk.small[0]};
    pk.seen = memset(pk.small, 0, sizeof pk.small);
    int rc = pack_start(out) == 0 && pack_at(L, idx, &pk, 0) == 0 ? 0 : -1;
    if (pk.seen != pk.small)
        free(pk.seen);
    if (rc != 0)
        snprintf(err, errlen, "the event holds a value that cannot be kept (a function, a "
                              "cycle, or nesting deeper than %d)", MAX_DEPTH);
    ev->packed = out->p;
    ev->packed_len = out->n;
    return rc;
}

/* ---- unpacking ---------------------------------------------------------------------------------- */

struct unpacker {
    struct pack_reader r;
    const char *body; /* for PACK_BODY */
    size_t body_len;
    int shared;       /* stack index: the shared tables by number (nil until there is one) */
    lua_Integer made; /* tables made so far */
};

/* Pushes the value whose first item is it (one value on success; nothing on failure). */
static int unpack_at(lua_State *L, struct unpacker *u, const struct pack_item *it, int depth)
{
    if (!lua_checkstack(L, 3))
        return -1;
    switch (it->tag) {
    case PACK_FALSE:
    case PACK_TRUE:
        lua_pushboolean(L, it->tag == PACK_TRUE);
        return 0;
    case PACK_NULL:
        lua_pushlightuserdata(L, NULL);
        return 0;
    case PACK_INT:
        lua_pushinteger(L, (lua_Integer)it->i);
        return 0;
    case PACK_FLOAT:
        lua_pushnumber(L, it->f);
        return 0;
    case PACK_STR:
        lua_pushlstring(L, it->s, it->n);
        return 0;
    case PACK_BODY: {
        char err[200];
        if (u->body == NULL || json_decode(L, u->body, u->body_len, err, sizeof err) != 0)
            return -1;
        json_fixup(L, -1); /* as at intake: the same tree */
        return 0;
    }
    case PACK_REF:
        if (!lua_istable(L, u->shared))
            return -1;
        if (lua_rawgeti(L, u->shared, it->i) != LUA_TTABLE) {
            lua_pop(L, 1);
            return -1;
        }
        return 0;
    case PACK_TABLE:
    case PACK_SHARED: {
        if (depth >= MAX_DEPTH)
            return -1;
        lua_createtable(L, (int)(it->i < 4096 ? it->i : 0), (int)(it->n < 4096 ? it->n : 0));
        u->made++;
        if (it->tag == PACK_SHARED) {
            if (!lua_istable(L, u->shared)) {
                lua_newtable(L);
                lua_replace(L, u->shared);
            }
            lua_pushvalue(L, -1);
            lua_rawseti(L, u->shared, u->made);
        }
        for (;;) {
            struct pack_item k, v;
            if (pack_next(&u->r, &k) != 0)
                goto bad;
            if (k.tag == PACK_END)
                return 0;
            if (unpack_at(L, u, &k, depth + 1) != 0)
                goto bad;
            if (pack_next(&u->r, &v) != 0 || v.tag == PACK_END || lua_isnil(L, -1) ||
                unpack_at(L, u, &v, depth + 1) != 0) {
                lua_pop(L, 1);
                goto bad;
            }
            lua_rawset(L, -3);
        }
    bad:
        lua_pop(L, 1);
        return -1;
    }
    case PACK_END:
        break;
    }
    return -1;
}

int event_set_context(lua_State *L, int idx, const char *context)
{
    char err[200];
    idx = lua_absindex(L, idx);
    lua_pushboolean(L, 0);
    lua_setfield(L, idx, "stale");
    lua_pushinteger(L, 1);
    lua_setfield(L, idx, "repeats");
    if (context == NULL)
        return 0;
    if (json_decode(L, context, strlen(context), err, sizeof err) != 0)
        return -1;
    if (lua_type(L, -1) != LUA_TTABLE) {
        lua_pop(L, 1);
        return -1;
    }
    json_fixup(L, -1);
    static const char *const keys[] = {"stale", "repeats", "previous"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if (lua_getfield(L, -1, keys[i]) != LUA_TNIL)
            lua_setfield(L, idx, keys[i]);
        else
            lua_pop(L, 1);
    lua_pop(L, 1);
    return 0;
}

int event_unpack(lua_State *L, const void *p, size_t n, const char *body, size_t body_len)
{
    struct pack_item it;
    if (!lua_checkstack(L, 2))
        return -1;
    lua_pushnil(L); /* becomes the table of the shared tables when there is one */
    struct unpacker u = {.shared = lua_gettop(L), .body = body, .body_len = body_len};
    if (pack_open(&u.r, p, n) != 0 || pack_next(&u.r, &it) != 0 ||
        (it.tag != PACK_TABLE && it.tag != PACK_SHARED) || unpack_at(L, &u, &it, 0) != 0) {
        lua_settop(L, u.shared - 1);
        return -1;
    }
    lua_remove(L, u.shared);
    if (u.r.p != u.r.end) {
        lua_pop(L, 1);
        return -1;
    }
    return 0;
}
