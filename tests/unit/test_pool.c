/* base/pool.c: a Lua state's allocator keeps a block's bytes across every resize (within a
 * class, between classes, to and from malloc's sizes), reuses freed blocks, and runs a state. */
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#include "base/base.h"
#include "tap.h"

static void fill(unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)(seed + i * 7);
}

static int same(const unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != (unsigned char)(seed + i * 7))
            return 0;
    return 1;
}

int main(void)
{
    static const size_t sizes[][2] = {
        {1, 16}, {16, 17}, {24, 8}, {100, 500}, {500, 512}, {512, 513}, {600, 40},
        {4000, 9000}, {9000, 100}, {33, 33},
    };
    struct pool *p = pool_new();
    ok(p != NULL, "pool_new");
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t from = sizes[i][0], to = sizes[i][1];
        unsigned char *b = pool_alloc(p, NULL, 5 /* a type tag, not a size */, from);
        fill(b, from, (unsigned)i);
        b = pool_alloc(p, b, from, to);
        ok(b != NULL && same(b, from < to ? from : to, (unsigned)i),
           "%zu -> %zu bytes keeps the block's bytes", from, to);
        ok(pool_alloc(p, b, to, 0) == NULL, "free of %zu bytes", to);
    }
    void *a = pool_alloc(p, NULL, 0, 40);
    pool_alloc(p, a, 40, 0);
    void *again = pool_alloc(p, NULL, 0, 48);
#ifndef __SANITIZE_ADDRESS__ /* there every block is malloc's */
    ok(again == a, "a freed block is reused for its class");
#endif
    pool_alloc(p, again, 48, 0);
    void *blocks[5000];
    for (size_t i = 0; i < 5000; i++) { /* more than a slab holds */
        blocks[i] = pool_alloc(p, NULL, 0, 64);
        fill(blocks[i], 64, (unsigned)i);
    }
    int intact = 1;
    for (size_t i = 0; i < 5000; i++)
        intact &= same(blocks[i], 64, (unsigned)i);
    ok(intact, "5000 live blocks across slabs stay distinct");
    for (size_t i = 0; i < 5000; i++)
        pool_alloc(p, blocks[i], 64, 0);
    pool_free(p);

    p = pool_new();
    lua_State *L = lua_newstate(pool_alloc, p);
    luaL_openlibs(L);
    const char *code = "local t = {} for i = 1, 20000 do t[i % 100 + 1] = { i, tostring(i), "
                       "('x'):rep(i % 700) } end collectgarbage() local n = 0 "
                       "for _, v in ipairs(t) do n = n + v[1] + #v[3] end return n";
    int rc = luaL_dostring(L, code);
    ok(rc == LUA_OK && lua_tointeger(L, -1) > 0, "a Lua state runs on the pool (%s)",
       rc == LUA_OK ? "ok" : lua_tostring(L, -1));
    lua_close(L);
    pool_free(p);
    return done();
}
