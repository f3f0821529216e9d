/*
 * pack.c -- a Lua value tree as bytes and back: how the event intake normalized crosses from
 * its thread's parser state to the dispatcher's handler state without being parsed and
 * normalized a second time.
 *
 * Only what an event holds: tables (keys: strings and integers), strings, integers, floats,
 * booleans and cjson's null (a NULL light userdata). The bytes live in memory for the
 * dispatcher only -- never written anywhere -- so the format is this build's own: a tag byte,
 * then fixed-width native numbers or a length and bytes; a table is its sizes and its pairs
 * followed by an end tag. A table met again (the event's certificate is also certificates[1])
 * is a reference to the n-th table written, whose tag then says it is shared, so the copy
 * shares what the original shared and unpacking keeps only those few tables aside.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "certhook.h"

enum { T_END, T_FALSE, T_TRUE, T_INT, T_FLOAT, T_STR, T_TABLE, T_NULL, T_REF, T_SHARED };

#define MAX_DEPTH 64

static int put(struct buf *b, int tag, const void *p, size_t n)
{
    unsigned char t = (unsigned char)tag;
    return buf_add(b, &t, 1) != 0 || (n > 0 && buf_add(b, p, n) != 0) ? -1 : 0;
}

/* The tables written so far: open addressing by address, with each one's number (1, 2, ...)
 * and where its tag byte is in the buffer. */
struct seen {
    const void *table;
    uint32_t number;
    size_t at;
};

struct packer {
    struct buf *b;
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

static int pack_at(lua_State *L, int idx, struct packer *pk, int depth, const char *skip)
{
    struct buf *b = pk->b;
    switch (lua_type(L, idx)) {
    case LUA_TBOOLEAN:
        return put(b, lua_toboolean(L, idx) ? T_TRUE : T_FALSE, NULL, 0);
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx)) {
            lua_Integer i = lua_tointeger(L, idx);
            return put(b, T_INT, &i, sizeof i);
        } else {
            lua_Number d = lua_tonumber(L, idx);
            return put(b, T_FLOAT, &d, sizeof d);
        }
    case LUA_TSTRING: {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        uint32_t len = (uint32_t)n;
        return n > UINT32_MAX || put(b, T_STR, &len, sizeof len) != 0 || buf_add(b, s, n) != 0
                   ? -1
                   : 0;
    }
    case LUA_TLIGHTUSERDATA:
        return lua_touserdata(L, idx) == NULL ? put(b, T_NULL, NULL, 0) : -1;
    case LUA_TTABLE: {
        if (depth >= MAX_DEPTH || !lua_checkstack(L, 3))
            return -1;
        const void *t = lua_topointer(L, idx);
        struct seen *met = slot(pk->seen, pk->cap, t);
        if (met->table != NULL) {
            b->p[met->at] = T_SHARED;
            return put(b, T_REF, &met->number, sizeof met->number);
        }
        if (remember(pk, t, b->n) != 0)
            return -1;
        uint32_t sizes[2] = {(uint32_t)lua_rawlen(L, idx), 0}; /* array part, the others */
        if (put(b, T_TABLE, sizes, sizeof sizes) != 0)
            return -1;
        size_t at = b->n - sizeof sizes, pairs = 0;
        lua_pushnil(L);
        while (lua_next(L, idx) != 0) { /* key, value */
            int top = lua_gettop(L);
            if (skip != NULL && lua_type(L, top - 1) == LUA_TSTRING &&
                strcmp(lua_tostring(L, top - 1), skip) == 0) {
                lua_pop(L, 1);
                continue;
            }
            if (pack_at(L, top - 1, pk, depth + 1, NULL) != 0 ||
                pack_at(L, top, pk, depth + 1, NULL) != 0) {
                lua_pop(L, 2);
                return -1;
            }
            lua_pop(L, 1);
            pairs++;
        }
        if (sizes[0] > pairs) /* a skipped key was in the array part: no presizing */
            sizes[0] = 0;
        sizes[1] = pairs > sizes[0] ? (uint32_t)(pairs - sizes[0]) : 0; /* presizes the copy */
        memcpy(b->p + at, sizes, sizeof sizes);
        return put(b, T_END, NULL, 0);
    }
    default:
        return -1;
    }
}

int pack_value(lua_State *L, int idx, const char *skip, struct buf *out)
{
    struct packer pk = {.b = out, .cap = sizeof pk.small / sizeof pk.small[0]};
    pk.seen = memset(pk.small, 0, sizeof pk.small);
    int rc = pack_at(L, lua_absindex(L, idx), &pk, 0, skip);
    if (pk.seen != pk.small)
        free(pk.seen);
    return rc;
}

struct reader {
    const unsigned char *p, *end;
    int shared;       /* stack index: the shared tables by number (nil until there is one) */
    lua_Integer made; /* tables made so far */
};

static int take(struct reader *r, void *out, size_t n)
{
    if ((size_t)(r->end - r->p) < n)
        return -1;
    memcpy(out, r->p, n);
    r->p += n;
    return 0;
}

/* Pushes the value at r (one value on success; nothing on failure). */
static int unpack_at(lua_State *L, struct reader *r, int depth)
{
    unsigned char tag;
    if (take(r, &tag, 1) != 0 || !lua_checkstack(L, 3))
        return -1;
    switch (tag) {
    case T_FALSE:
    case T_TRUE:
        lua_pushboolean(L, tag == T_TRUE);
        return 0;
    case T_NULL:
        lua_pushlightuserdata(L, NULL);
        return 0;
    case T_INT: {
        lua_Integer i;
        if (take(r, &i, sizeof i) != 0)
            return -1;
        lua_pushinteger(L, i);
        return 0;
    }
    case T_FLOAT: {
        lua_Number d;
        if (take(r, &d, sizeof d) != 0)
            return -1;
        lua_pushnumber(L, d);
        return 0;
    }
    case T_STR: {
        uint32_t n;
        if (take(r, &n, sizeof n) != 0 || (size_t)(r->end - r->p) < n)
            return -1;
        lua_pushlstring(L, (const char *)r->p, n);
        r->p += n;
        return 0;
    }
    case T_REF: {
        uint32_t ref;
        if (take(r, &ref, sizeof ref) != 0 || !lua_istable(L, r->shared))
            return -1;
        if (lua_rawgeti(L, r->shared, ref) != LUA_TTABLE) {
            lua_pop(L, 1);
            return -1;
        }
        return 0;
    }
    case T_TABLE:
    case T_SHARED: {
        uint32_t sizes[2];
        if (depth >= MAX_DEPTH || take(r, sizes, sizeof sizes) != 0)
            return -1;
        lua_createtable(L, (int)(sizes[0] < 4096 ? sizes[0] : 0),
                        (int)(sizes[1] < 4096 ? sizes[1] : 0));
        r->made++;
        if (tag == T_SHARED) {
            if (!lua_istable(L, r->shared)) {
                lua_newtable(L);
                lua_replace(L, r->shared);
            }
            lua_pushvalue(L, -1);
            lua_rawseti(L, r->shared, r->made);
        }
        for (;;) {
            if (r->p < r->end && *r->p == T_END) {
                r->p++;
                return 0;
            }
            if (unpack_at(L, r, depth + 1) != 0) {
                lua_pop(L, 1);
                return -1;
            }
            if (unpack_at(L, r, depth + 1) != 0) {
                lua_pop(L, 2);
                return -1;
            }
            lua_rawset(L, -3);
        }
    }
    default:
        return -1;
    }
}

int unpack_value(lua_State *L, const void *p, size_t n)
{
    if (!lua_checkstack(L, 2))
        return -1;
    lua_pushnil(L); /* becomes the table of the shared tables when there is one */
    struct reader r = {p, (const unsigned char *)p + n, lua_gettop(L), 0};
    if (unpack_at(L, &r, 0) != 0) {
        lua_pop(L, 1);
        return -1;
    }
    lua_remove(L, r.shared);
    if (r.p != r.end) {
        lua_pop(L, 1);
        return -1;
    }
    return 0;
}
