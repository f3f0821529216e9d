/*
 * fuzz_normalize.c -- libFuzzer target: request bodies through the providers (source.c,
 * cloudflare.c, ibm_cm.c, aws_acm.c, azure_keyvault.c, ibm_sm.c, digicert.c, lua_provider.c,
 * jwt.c's decoding, clock.c's timestamps, x509.c) and the event's encoding (event.c,
 * base/pack.c).
 *
 * Each input is a request body, as intake hands it to source_normalize, for a source of every
 * provider: a Cloudflare one, an insecure IBM one without keys (decode-only JWT, bare JSON), an
 * IBM one with the RSA key of tests/fuzz/jwt-key.pub.pem (FUZZ_PUBKEY), insecure AWS ACM (SNS
 * unverified), Azure Key Vault, IBM Secrets Manager and DigiCert ones, and a Lua provider
 * running examples/providers/alertmanager.lua (FUZZ_LUA_SCRIPT). Every event of an accepted
 * body is packed as the journal keeps it, and the event the dispatcher unpacks from it
 * (run_push_event) must be the same tree, raw included. Then the steps one by one: json_decode,
 * json_fixup, each provider's detect. Every step must leave the Lua stack as documented.
 */
#include <string.h>

#include <lauxlib.h>

#include "dispatch/dispatch.h"
#include "fuzz.h"
#include "lua/api.h"
#include "providers/provider.h"

#ifndef FUZZ_PUBKEY
#error "FUZZ_PUBKEY (the path of tests/fuzz/jwt-key.pub.pem) must be defined"
#endif
#ifndef FUZZ_LUA_SCRIPT
#error "FUZZ_LUA_SCRIPT (the path of examples/providers/alertmanager.lua) must be defined"
#endif

#define RECEIVED_AT 1700000000.25

static lua_State *L;
static unsigned long runs;
static struct source cf, ibm_open, ibm_keyed, acm, kv, sm, dc, lua;
static struct source *const sources[] = {&cf, &ibm_open, &ibm_keyed, &acm, &kv, &sm, &dc, &lua};

static void teardown(void)
{
    for (size_t i = 0; i < sizeof sources / sizeof sources[0]; i++)
        source_release(sources[i]);
    if (L != NULL)
        lua_close(L);
    L = NULL;
}

/* Configures s from the Lua table constructor in settings. */
static void configure(struct source *s, const char *name, const char *settings)
{
    char err[300];
    if (luaL_dostring(L, settings) != LUA_OK ||
        source_configure(L, -1, name, s, err, sizeof err) != 0) {
        fprintf(stderr, "fuzz_normalize: %s: %s\n", name,
                lua_isstring(L, -1) ? lua_tostring(L, -1) : err);
        exit(1);
    }
    lua_settop(L, 0);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char err[300];
    (void)argc, (void)argv;
    log_set_level(LOG_ERROR + 1); /* run_push_event logs what it refuses */
    L = module_newstate(NULL, NULL, NULL, NULL, err, sizeof err);
    if (L == NULL) {
        fprintf(stderr, "fuzz_normalize: %s\n", err);
        exit(1);
    }
    configure(&cf, "cf", "return { provider = 'cloudflare', insecure = true }");
    configure(&ibm_open, "ibm", "return { provider = 'ibm-cm', insecure = true }");
    configure(&ibm_keyed, "ibm-keyed", "return { provider = 'ibm-cm', public_key = '" FUZZ_PUBKEY "' }");
    configure(&acm, "acm", "return { provider = 'aws-acm', insecure = true }");
    configure(&kv, "kv", "return { provider = 'azure-keyvault', insecure = true }");
    configure(&sm, "sm", "return { provider = 'ibm-sm', insecure = true }");
    configure(&dc, "dc", "return { provider = 'digicert', insecure = true }");
    configure(&lua, "am", "return { provider = 'lua', insecure = true, script = '" FUZZ_LUA_SCRIPT "' }");
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

/* What every finished event has (DESIGN §3): an id, its source and provider, a type, when it
 * was received, the raw payload (a Lua provider's: the body, whatever JSON it is). */
static void check_event(int ev, const struct source *src)
{
    FUZZ_CHECK(lua_type(L, ev) == LUA_TTABLE);
    FUZZ_CHECK(field(ev, "type") != NULL && *field(ev, "type") != '\0');
    FUZZ_CHECK(field(ev, "id") != NULL && same(field(ev, "source"), src->name));
    FUZZ_CHECK(same(field(ev, "provider"), source_provider(src)));
    FUZZ_CHECK(lua_getfield(L, ev, "received_at") == LUA_TNUMBER);
    FUZZ_CHECK(lua_getfield(L, ev, "raw") == LUA_TTABLE || src == &lua);
    lua_pop(L, 2);
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

/* The event the dispatcher unpacks from what the journal keeps must be the one intake made,
 * raw included. */
static void check_redelivery(int ev, int decoded, const char *body, size_t n)
{
    char err[300];
    struct buf packed;
    struct event summary;
    int top = lua_gettop(L);
    buf_init(&packed);
    if (event_pack(L, ev, decoded, &summary, &packed, err, sizeof err) != 0) { /* too deep */
        buf_free(&packed);
        lua_settop(L, top);
        return;
    }
    summary.body = body;
    summary.body_len = n;
    struct event *rec = event_new(&summary);
    FUZZ_CHECK(rec != NULL);
    lua_settop(L, top);
    FUZZ_CHECK(run_push_event(L, rec) == 0);
    FUZZ_CHECK(lua_gettop(L) == top + 1);
#define SAME(f) FUZZ_CHECK(same(rec->f, field(-1, #f)));
    EVENT_STRINGS(SAME)
#undef SAME
    FUZZ_CHECK(event_set_context(L, ev, NULL) == 0); /* what a first event of its certificate gets */
    FUZZ_CHECK(same_value(ev, -1));
    lua_settop(L, top);
    event_free(rec);
    buf_free(&packed);
}

static void body(const struct source *src, const char *data, size_t size)
{
    char err[600] = "";
    struct reply rp = {0};
    struct request rq = {.method = "POST", .body = data, .body_len = size,
                         .received_at = RECEIVED_AT};
    int status = source_normalize(L, src, &rq, &rp, err, sizeof err);
    buf_free(&rp.body);
    if (status == 0 && rp.status != 0) { /* a handshake the provider answers itself */
        FUZZ_CHECK(rp.status >= 200 && rp.status < 500);
        FUZZ_CHECK(lua_gettop(L) == 0);
        return;
    }
    if (status != 0) {
        FUZZ_CHECK(status == 400 || status == 401);
        FUZZ_CHECK(lua_gettop(L) == 0);
        FUZZ_CHECK(err[0] != '\0');
        return;
    }
    FUZZ_CHECK(lua_gettop(L) == 2 && lua_rawlen(L, 2) > 0); /* the decoded body, the events */
    for (lua_Integer i = 1; i <= (lua_Integer)lua_rawlen(L, 2); i++) {
        FUZZ_CHECK(lua_rawgeti(L, 2, i) == LUA_TTABLE);
        check_event(3, src);
        check_redelivery(3, 1, data, size);
        lua_settop(L, 2);
    }
    lua_settop(L, 0);
}

/* The steps source_normalize is made of that the command line also uses. */
static void steps(const char *data, size_t size)
{
    char err[600];
    if (json_decode(L, data, size, err, sizeof err) != 0) {
        FUZZ_CHECK(lua_gettop(L) == 0);
        return;
    }
    FUZZ_CHECK(lua_gettop(L) == 1);
    json_fixup(L, 1);
    FUZZ_CHECK(lua_gettop(L) == 1);
    const struct provider *detected = provider_detect(L, 1);
    FUZZ_CHECK(lua_gettop(L) == 1);
    FUZZ_CHECK(provider_detect(L, -1) == detected);
    lua_settop(L, 0);
}

/* glob_match: "pattern\nstring" from the first bytes (it is quadratic at worst). */
static void glob(const char *data, size_t size)
{
    char p[256], s[256];
    size_t n = size < 255 ? size : 255;
    const char *nl = memchr(data, '\n', n);
    if (nl == NULL)
        return;
    snprintf(p, sizeof p, "%.*s", (int)(nl - data), data);
    snprintf(s, sizeof s, "%.*s", (int)(n - (size_t)(nl + 1 - data)), nl + 1);
    int m = glob_match(p, s);
    FUZZ_CHECK(m == 0 || m == 1);
    if (strchr(p, '*') == NULL) /* no wildcard: equality */
        FUZZ_CHECK(m == (strcmp(p, s) == 0));
    FUZZ_CHECK(glob_match("*", s) == 1 && glob_match(s, s) == 1);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (L == NULL)
        LLVMFuzzerInitialize(NULL, NULL);
    const char *text = (const char *)data;
    for (size_t i = 0; i < sizeof sources / sizeof sources[0]; i++)
        body(sources[i], text, size);
    steps(text, size);
    glob(text, size);
    if (++runs % 4096 == 0)
        lua_gc(L, LUA_GCCOLLECT);
    return 0;
}
