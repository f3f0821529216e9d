/*
 * fuzz_jwt.c -- libFuzzer target: JWT parsing and RS256 verification (providers/jwt.c).
 *
 * Each input is a token as IBM Certificate Manager puts it in {"data": "<JWT>"}. It is
 * decoded without verification (what an insecure source without keys does), verified with
 * the RSA key of tests/fuzz/jwt-key.pub.pem (FUZZ_PUBKEY; the seeds are signed with its
 * private half), and the input as a whole goes through jwt_base64url_decode. A reference
 * base64url decoder written here says what each of them must return.
 */
#include <string.h>

#include <lauxlib.h>

#include "lua/api.h"
#include "providers/provider.h"
#include "fuzz.h"

#ifndef FUZZ_PUBKEY
#error "FUZZ_PUBKEY (the path of tests/fuzz/jwt-key.pub.pem) must be defined"
#endif

static lua_State *L;
static struct jwt_keys *keys;

static void teardown(void)
{
    if (L != NULL)
        lua_close(L);
    L = NULL;
    jwt_keys_free(keys);
    keys = NULL;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char err[300];
    (void)argc, (void)argv;
    L = module_newstate(NULL, NULL, NULL, NULL, err, sizeof err);
    if (L == NULL || jwt_keys_add(&keys, FUZZ_PUBKEY, err, sizeof err) != 0) {
        fprintf(stderr, "fuzz_jwt: %s\n", err);
        exit(1);
    }
    atexit(teardown);
    return 0;
}

/* ---- reference: RFC 4648 §5 without padding; unused trailing bits are ignored ---------- */

static int sextet(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    return c == '-' ? 62 : c == '_' ? 63 : -1;
}

/* The decoded length of n characters, or -1 when no base64url text has that length. */
static long decoded_len(size_t n)
{
    return n % 4 == 1 ? -1 : (long)(n / 4 * 3 + (n % 4 ? n % 4 - 1 : 0));
}

/* Decodes s into a malloc'd buffer of decoded_len(n) bytes (at least 1); NULL if invalid. */
static unsigned char *ref_decode(const char *s, size_t n)
{
    long len = decoded_len(n);
    unsigned char *out = len < 0 ? NULL : malloc((size_t)len + 1);
    unsigned long acc = 0;
    size_t bits = 0, o = 0;
    for (size_t i = 0; out != NULL && i < n; i++) {
        int v = sextet((unsigned char)s[i]);
        if (v < 0) {
            free(out);
            return NULL;
        }
        acc = (acc << 6 | (unsigned long)v) & 0xffffff;
        if ((bits += 6) >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
        }
    }
    return out;
}

/* ---- the code under test ------------------------------------------------------------------- */

/* jwt_base64url_decode returns what the reference does and writes nothing past the decoded
 * bytes (a canary after them; the writes come from libcrypto, which ASan does not see). */
static void base64url(const char *s, size_t n)
{
    enum { CANARY = 0xa5, SPARE = 8 };
    long want = decoded_len(n);
    size_t cap = (want > 0 ? (size_t)want : 0) + SPARE, len = 0;
    unsigned char *out = malloc(cap), *ref = ref_decode(s, n);
    FUZZ_CHECK(out != NULL);
    memset(out, CANARY, cap);
    int rc = jwt_base64url_decode(s, n, out, &len);
    FUZZ_CHECK((rc == 0) == (ref != NULL));
    if (rc == 0) {
        FUZZ_CHECK((long)len == want && memcmp(out, ref, len) == 0);
        for (size_t i = len; i < cap; i++)
            FUZZ_CHECK(out[i] == CANARY);
    }
    free(out);
    free(ref);
}

/* The alg of the JSON header text h, as the verifier must read it: RS256 or nothing. */
static int header_is_rs256(const unsigned char *h, size_t n)
{
    char err[200];
    int ok = 0;
    if (json_decode(L, (const char *)h, n, err, sizeof err) != 0)
        return 0;
    if (lua_istable(L, -1) && lua_getfield(L, -1, "alg") == LUA_TSTRING)
        ok = strcmp(lua_tostring(L, -1), "RS256") == 0;
    lua_settop(L, 0);
    return ok;
}

static void jwt(const char *tok, size_t n)
{
    char err[300] = "", *claims = NULL, *verified = NULL;
    size_t clen = 0, vlen = 0;
    const char *d1 = memchr(tok, '.', n);
    const char *d2 = d1 ? memchr(d1 + 1, '.', n - (size_t)(d1 + 1 - tok)) : NULL;
    int shape = d2 != NULL && memchr(d2 + 1, '.', n - (size_t)(d2 + 1 - tok)) == NULL;
    unsigned char *hdr = NULL, *payload = NULL, *sig = NULL;
    if (shape) {
        hdr = ref_decode(tok, (size_t)(d1 - tok));
        payload = ref_decode(d1 + 1, (size_t)(d2 - d1 - 1));
        sig = ref_decode(d2 + 1, n - (size_t)(d2 + 1 - tok));
    }
    int decodes = hdr != NULL && payload != NULL && sig != NULL;

    int rc = jwt_verify(L, NULL, tok, n, &claims, &clen, err, sizeof err);
    FUZZ_CHECK(lua_gettop(L) == 0);
    FUZZ_CHECK((rc == 0) == decodes);
    if (rc == 0) {
        FUZZ_CHECK((long)clen == decoded_len((size_t)(d2 - d1 - 1)));
        FUZZ_CHECK(memcmp(claims, payload, clen) == 0 && claims[clen] == '\0');
    } else {
        FUZZ_CHECK(err[0] != '\0');
    }

    err[0] = '\0';
    int vrc = jwt_verify(L, keys, tok, n, &verified, &vlen, err, sizeof err);
    FUZZ_CHECK(lua_gettop(L) == 0);
    if (vrc == 0) { /* signed with our key: what decoding gave, and only ever RS256 */
        FUZZ_CHECK(rc == 0 && vlen == clen && memcmp(verified, claims, clen) == 0);
        FUZZ_CHECK(header_is_rs256(hdr, (size_t)decoded_len((size_t)(d1 - tok))));
    } else {
        FUZZ_CHECK(err[0] != '\0');
    }
    free(claims);
    free(verified);
    free(hdr);
    free(payload);
    free(sig);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (L == NULL)
        LLVMFuzzerInitialize(NULL, NULL);
    base64url((const char *)data, size);
    jwt((const char *)data, size);
    return 0;
}
