/* base/pack.c and providers/event.c: an event packed at intake (as the journal keeps it) is
 * unpacked by the dispatcher's state intact. */
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#include "providers/provider.h"
#include "tap.h"

/* Lua that builds a value, and what its JSON (sorted keys, via a small encoder) must be. */
#define EVENT "id = 'cloudflare:x', source = 's', provider = 'cloudflare', type = 't', "
static const char *const values[] = {
    "return { " EVENT "n = 3, f = 1.5, big = 2^53, neg = -7, t = true, no = false,"
    "  list = { 1, 'two', { three = 3 } }, empty = {}, nested = { a = { b = { c = 'deep' } } },"
    "  nul = { 1, NULL, 3 }, bin = 'a\\0b', [7] = 'seven', min = math.mininteger,"
    "  max = math.maxinteger, i1 = 63, i2 = -64, i3 = 64, i4 = 300, [191] = ('s'):rep(191),"
    "  long = ('l'):rep(192), longer = ('x'):rep(70000), many = (function() local t = {}"
    "  for i = 1, 300 do t[i] = i; t['k' .. i] = -i end return t end)() }",
    "return { " EVENT "value = 'just a string' }",
    "return { " EVENT "value = 42, raw = { big = 1 } }",
};

static int pack_value(lua_State *L, int idx, struct buf *b)
{
    char err[200];
    struct event ev;
    int top = lua_gettop(L), rc = event_pack(L, idx, 0, &ev, b, err, sizeof err);
    lua_settop(L, top);
    return rc;
}

/* Serializes a value canonically (sorted keys) in Lua, to compare two trees. */
static const char canon[] =
    "local function c(v) local t = type(v) "
    "  if t ~= 'table' then return t .. ':' .. (v == NULL and 'null' or tostring(v)) end "
    "  local ks = {} for k in pairs(v) do ks[#ks + 1] = k end "
    "  table.sort(ks, function(a, b) return tostring(a) < tostring(b) end) "
    "  local out = {} for _, k in ipairs(ks) do out[#out + 1] = c(k) .. '=' .. c(v[k]) end "
    "  return '{' .. table.concat(out, ',') .. '}' end "
    "return c(...)";

static const char *canonical(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    luaL_loadstring(L, canon);
    lua_pushvalue(L, idx);
    lua_call(L, 1, 1);
    return lua_tostring(L, -1);
}

static lua_State *state(void)
{
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    lua_pushlightuserdata(L, NULL);
    lua_setglobal(L, "NULL");
    return L;
}

int main(void)
{
    lua_State *A = state(), *B = state();
    for (size_t i = 0; i < sizeof values / sizeof values[0]; i++) {
        struct buf b;
        buf_init(&b);
        (void)luaL_dostring(A, values[i]);
        ok(pack_value(A, -1, &b) == 0, "packs value %zu", i);
        ok(event_unpack(B, b.p, b.n, NULL, 0) == 0, "unpacks value %zu", i);
        const char *want = canonical(A, 1), *got = canonical(B, 1);
        ok(strcmp(want, got) == 0, "value %zu is the same: %s", i, got);
        for (size_t cut = 0; cut < b.n; cut += 7) /* truncated bytes are refused, not read past */
            if (event_unpack(B, b.p, cut, NULL, 0) == 0) {
                ok(0, "a truncated value %zu (%zu of %zu bytes) is refused", i, cut, b.n);
                break;
            }
        lua_settop(A, 0);
        lua_settop(B, 0);
        buf_free(&b);
    }
    struct buf b;
    buf_init(&b);
    (void)luaL_dostring(A, "return { " EVENT "f = function() end }");
    ok(pack_value(A, -1, &b) != 0, "a function is refused");
    buf_free(&b);
    (void)luaL_dostring(A, "local t = { " EVENT "} local c = t for i = 1, 100 do c.x = {} c = c.x end "
                           "return t");
    ok(pack_value(A, -1, &b) != 0, "nesting past 64 is refused");
    buf_free(&b);
    (void)luaL_dostring(A, "local c = { id = 'c1' } local t = { " EVENT "certificate = c, "
                           "certificates = { c } } t.self = t return t");
    ok(pack_value(A, -1, &b) == 0 && event_unpack(B, b.p, b.n, NULL, 0) == 0,
       "packs a table met twice, and one that holds itself");
    lua_setglobal(B, "t");
    (void)luaL_dostring(B, "return t.certificate == t.certificates[1] and t.self == t"
                           " and t.certificate.id == 'c1'");
    ok(lua_toboolean(B, -1), "what was shared is shared in the copy");
    lua_settop(A, 0);
    lua_settop(B, 0);
    buf_free(&b);
    /* raw that is the decoded body is kept as a mark and decoded again from the body */
    static const char body[] = "{\"a\":{\"b\":[1,2.5,\"c\",null]},\"gone\":null,\"n\":1e400}";
    char err[200];
    json_open(A);
    json_open(B);
    ok(json_decode(A, body, sizeof body - 1, err, sizeof err) == 0 && json_fixup(A, -1) == 0,
       "decodes the body");
    (void)luaL_dostring(A, "return { " EVENT "}");
    lua_pushvalue(A, 1);
    lua_setfield(A, 2, "raw");
    struct event ev;
    int packed = event_pack(A, 2, 1, &ev, &b, err, sizeof err);
    ok(packed == 0 && b.n < 64, "raw that is the body takes one byte (%zu in all)", b.n);
    ok(event_unpack(B, b.p, b.n, NULL, 0) != 0 && lua_gettop(B) == 0,
       "without the body it does not unpack");
    ok(event_unpack(B, b.p, b.n, body, sizeof body - 1) == 0, "with the body it does");
    lua_getfield(B, -1, "raw");
    lua_settop(A, 1);
    const char *want = canonical(A, 1), *got = canonical(B, -1);
    ok(strcmp(want, got) == 0, "raw is the body, fixed up as at intake: %s / %s", want, got);
    lua_settop(A, 0);
    lua_settop(B, 0);
    buf_free(&b);
    ok(event_unpack(B, "\x01\x08\x01\x00\x00\x00", 6, NULL, 0) != 0 && lua_gettop(B) == 0,
       "a reference to a table not yet made is refused");
    ok(event_unpack(B, "\x01\x20", 2, NULL, 0) != 0 && lua_gettop(B) == 0, "an unknown tag is refused");
    ok(event_unpack(B, "\x02\x06\0\0\0", 5, NULL, 0) != 0 && lua_gettop(B) == 0,
       "a format version this build does not know is refused");
    lua_close(A);
    lua_close(B);
    return done();
}
