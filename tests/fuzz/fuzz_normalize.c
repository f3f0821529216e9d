/*
 * fuzz_normalize.c -- libFuzzer target: request bodies through normalize.c (cloudflare.c,
 * ibm_cm.c, auth.c's JWT decoding, api_time.c's timestamps).
 *
 * Each input is a request body, as intake hands it to normalize_body, for three sources: a
 * Cloudflare one, an insecure IBM one without keys (decode-only JWT, bare JSON) and an IBM
 * one with the RSA key of tests/fuzz/jwt-key.pub.pem (FUZZ_PUBKEY). An accepted body must
 * give the event the dispatcher rebuilds from the journaled payload (run_push_event). Then
 * the steps one by one: module_decode, normalize_fixup, normalize_detect and normalize_push
 * for both providers. The event intake hands to the dispatcher (pack.c) must unpack to the
 * same tree, raw included. Every step must leave the Lua stack as documented in certhook.h.
 */
#include <string.h>

#include <lauxlib.h>

#include "certhook.h"
#include "fuzz.h"

#ifndef FUZZ_PUBKEY
#error "FUZZ_PUBKEY (the path of tests/fuzz/jwt-key.pub.pem) must be defined"
#endif

#define RECEIVED_AT 1700000000.25

static lua_State *L;
static unsigned long runs;
static struct source cf = {.name = "cf", .provider = PROVIDER_CLOUDFLARE, .insecure = 1};
static struct source ibm_open = {.name = "ibm", .provider = PROVIDER_IBM_CM, .insecure = 1};
static struct source ibm_keyed = {.name = "ibm-keyed", .provider = PROVIDER_IBM_CM};

static void teardown(void)
{
    if (L != NULL)
        lua_close(L);
    L = NULL;
    auth_keys_free(ibm_keyed.keys);
    ibm_keyed.keys = NULL;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char err[300];
    (void)argc, (void)argv;
    log_set_level(LOG_ERROR + 1); /* run_push_event logs what it refuses */
    L = module_newstate(NULL, NULL, NULL, NULL, err, sizeof err);
    if (L == NULL || auth_keys_add(&ibm_keyed.keys, FUZZ_PUBKEY, err, sizeof err) != 0) {
        fprintf(stderr, "fuzz_normalize: %s\n", err);
        exit(1);
    }
    atexit(teardown);
    return 0;
}

/* The string field k of the table at idx, or NULL. */
static const char *field(int idx, const char *k)
{
    lua_getfield(L, idx, k);
    const char *s = lua_tostring(L, -1);
    lua_pop(L, 1); /* still referenced by the table */
    return s;
}

static int same(const char *a, const char *b)
{
    return a == b || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

/* What every event has (DESIGN §2): a type, its provider, the raw payload. */
static void check_event(int ev, enum provider p)
{
    FUZZ_CHECK(lua_type(L, ev) == LUA_TTABLE);
    FUZZ_CHECK(field(ev, "type") != NULL && *field(ev, "type") != '\0');
    FUZZ_CHECK(same(field(ev, "provider"), provider_name(p)));
    FUZZ_CHECK(lua_getfield(L, ev, "raw") == LUA_TTABLE);
    lua_pop(L, 1);
}

/* 1 if the values at a and b are the same tree: same types (integer and float told apart),
 * same strings and numbers (NaN equal to NaN), same keys and values. */
static int same_value(int a, int b)
{
    a = lua_absindex(L, a), b = lua_absindex(L, b);
    int type = lua_type(L, a);
    if (type != lua_type(L, b))
        return 0;
    switch (type) {
    case LUA_TNUMBER:
        if (lua_isinteger(L, a) || lua_isinteger(L, b))
            return lua_isinteger(L, a) && lua_isinteger(L, b) &&
                   lua_tointeger(L, a) == lua_tointeger(L, b);
        return lua_tonumber(L, a) == lua_tonumber(L, b) ||
               (lua_tonumber(L, a) != lua_tonumber(L, a) &&
                lua_tonumber(L, b) != lua_tonumber(L, b));
    case LUA_TTABLE: {
        size_t na = 0, nb = 0;
        int ok = 1;
        luaL_checkstack(L, 4, "same_value");
        lua_pushnil(L);
        while (ok && lua_next(L, a) != 0) { /* key, value */
            lua_pushvalue(L, -2);
            lua_rawget(L, b);
            ok = same_value(-2, -1);
            lua_pop(L, 2);
            na++;
        }
        if (!ok) {
            lua_pop(L, 1);
            return 0;
        }
        lua_pushnil(L);
        while (lua_next(L, b) != 0) {
            lua_pop(L, 1);
            nb++;
        }
        return na == nb;
    }
    default:
        return lua_rawequal(L, a, b);
    }
}

/* The event the dispatcher builds from what the journal keeps must be the one intake made:
 * from the payload (events read back from the journal) and, as intake hands it over, packed
 * without raw (pack.c), raw then decoded from the payload on first use. */
static void check_redelivery(const struct source *src, int ev, const char *payload, size_t n)
{
    struct buf packed;
    struct journal_event *je = journal_event_new(src->provider, RECEIVED_AT, field(ev, "id"),
                                                 src->name, field(ev, "type"),
                                                 field(ev, "provider_type"),
                                                 field(ev, "hostname"), payload, n);
    FUZZ_CHECK(je != NULL);
    FUZZ_CHECK(run_push_event(L, je) == 0);
    int again = lua_gettop(L);
    FUZZ_CHECK(again == ev + 1);
    check_event(again, src->provider);
    static const char *const keys[] = {"id", "source", "type", "provider_type", "hostname"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        FUZZ_CHECK(same(field(ev, keys[i]), field(again, keys[i])));
    lua_settop(L, ev);

    buf_init(&packed);
    if (pack_value(L, ev, "raw", &packed) == 0) { /* -1: too deep; intake sends no packed */
        je->packed = packed.p;
        je->packed_len = packed.n;
        FUZZ_CHECK(run_push_event(L, je) == 0);
        FUZZ_CHECK(lua_gettop(L) == ev + 1);
        FUZZ_CHECK(lua_getfield(L, -1, "raw") == LUA_TTABLE); /* decoded now */
        lua_pop(L, 1);
        FUZZ_CHECK(same_value(ev, ev + 1));
        je->packed = NULL;
        lua_settop(L, ev);
    }
    buf_free(&packed);
    journal_event_free(je);
}

static void body(const struct source *src, const char *data, size_t size)
{
    char err[600] = "", *claims = (char *)"unset";
    size_t claims_len = 0;
    int status = normalize_body(L, src, data, size, RECEIVED_AT, &claims, &claims_len, err,
                                sizeof err);
    if (status != 0) {
        FUZZ_CHECK(status == 400 || status == 401);
        FUZZ_CHECK(lua_gettop(L) == 0);
        FUZZ_CHECK(claims == NULL && err[0] != '\0');
        return;
    }
    FUZZ_CHECK(lua_gettop(L) == 1);
    check_event(1, src->provider);
    FUZZ_CHECK(field(1, "id") != NULL && same(field(1, "source"), src->name));
    FUZZ_CHECK(lua_getfield(L, 1, "received_at") == LUA_TNUMBER);
    lua_pop(L, 1);
    if (src->provider == PROVIDER_CLOUDFLARE)
        FUZZ_CHECK(claims == NULL);
    if (claims != NULL)
        FUZZ_CHECK(claims[claims_len] == '\0');
    check_redelivery(src, 1, claims ? claims : data, claims ? claims_len : size);
    free(claims);
    lua_settop(L, 0);
}

/* The steps normalize_body is made of, called one by one as the CLI does. */
static void steps(const char *data, size_t size)
{
    char err[600];
    if (module_decode(L, data, size, err, sizeof err) != 0) {
        FUZZ_CHECK(lua_gettop(L) == 0);
        return;
    }
    FUZZ_CHECK(lua_gettop(L) == 1);
    normalize_fixup(L, 1);
    FUZZ_CHECK(lua_gettop(L) == 1);
    enum provider detected = normalize_detect(L, 1);
    FUZZ_CHECK(lua_gettop(L) == 1);
    FUZZ_CHECK(normalize_detect(L, -1) == detected);
    static const enum provider ps[] = {PROVIDER_CLOUDFLARE, PROVIDER_IBM_CM, PROVIDER_NONE};
    for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++) {
        err[0] = '\0';
        if (normalize_push(L, ps[i], -1, err, sizeof err) == 0) {
            FUZZ_CHECK(ps[i] != PROVIDER_NONE && lua_gettop(L) == 2);
            check_event(2, ps[i]);
            FUZZ_CHECK(lua_rawequal(L, 1, -1) == 0);
            lua_getfield(L, 2, "raw");
            FUZZ_CHECK(lua_rawequal(L, 1, -1));
        } else {
            FUZZ_CHECK(lua_gettop(L) == 1 && err[0] != '\0');
        }
        lua_settop(L, 1);
    }
    lua_settop(L, 0);
}

/* normalize_glob: "pattern\nstring" from the first bytes (it is quadratic at worst). */
static void glob(const char *data, size_t size)
{
    char p[256], s[256];
    size_t n = size < 255 ? size : 255;
    const char *nl = memchr(data, '\n', n);
    if (nl == NULL)
        return;
    snprintf(p, sizeof p, "%.*s", (int)(nl - data), data);
    snprintf(s, sizeof s, "%.*s", (int)(n - (size_t)(nl + 1 - data)), nl + 1);
    int m = normalize_glob(p, s);
    FUZZ_CHECK(m == 0 || m == 1);
    if (strchr(p, '*') == NULL) /* no wildcard: equality */
        FUZZ_CHECK(m == (strcmp(p, s) == 0));
    FUZZ_CHECK(normalize_glob("*", s) == 1 && normalize_glob(s, s) == 1);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (L == NULL)
        LLVMFuzzerInitialize(NULL, NULL);
    const char *text = (const char *)data;
    body(&cf, text, size);
    body(&ibm_open, text, size);
    body(&ibm_keyed, text, size);
    steps(text, size);
    glob(text, size);
    if (++runs % 4096 == 0)
        lua_gc(L, LUA_GCCOLLECT);
    return 0;
}
