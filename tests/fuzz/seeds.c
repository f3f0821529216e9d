/*
 * seeds.c -- writes the generated seed inputs of the fuzz targets (fuzz.mk runs it).
 *
 *   mkseeds OUT PRIVATE-KEY FIXTURES
 *
 * From the provider fixtures (FIXTURES/cloudflare, FIXTURES/ibm-cm) and the RSA key of
 * tests/fuzz/jwt-key.pem, it writes:
 *   OUT/jwt/        tokens: each IBM claims fixture signed (RS256, verifies with the public
 *                   half), the real IBM JWTs, and tokens that must be refused (alg none, HS256)
 *   OUT/normalize/  {"data": "<JWT>"} bodies of the signed tokens, and the regression input
 *                   of 345dc5d (generated: 2 MB)
 *   OUT/intake/     HTTP request streams: every fixture POSTed where it is accepted, and the
 *                   requests intake must refuse (no or wrong secret, wrong method, path or
 *                   content type, over the size limit), chunked, pipelined, HTTP/1.0
 * The output only depends on the inputs (PKCS#1 v1.5 signatures are deterministic).
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <lauxlib.h>

#include "lua/api.h"
#include "providers/provider.h"

#define SECRET "fuzz-secret"
#define JSON "Content-Type: application/json\r\n"
#define MAX_BODY 65536 /* limits.max_body of fuzz_intake.c */

static const char *out_dir, *key;
static lua_State *L;

static void die(const char *what, const char *why)
{
    fprintf(stderr, "mkseeds: %s: %s\n", what, why);
    exit(1);
}

static void put(const char *sub, const char *name, const void *p, size_t n)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", out_dir, sub);
    if (mkdir(path, 0755) != 0 && errno != EEXIST)
        die(path, strerror(errno));
    snprintf(path, sizeof path, "%s/%s/%s", out_dir, sub, name);
    FILE *f = fopen(path, "wb");
    if (f == NULL || fwrite(p, 1, n, f) != n || fclose(f) != 0)
        die(path, "cannot write");
}

static char *slurp(const char *path, size_t *n)
{
    struct buf b;
    char chunk[4096];
    size_t got;
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        die(path, strerror(errno));
    buf_init(&b);
    while ((got = fread(chunk, 1, sizeof chunk, f)) > 0)
        if (buf_add(&b, chunk, got) != 0)
            die(path, "out of memory");
    fclose(f);
    *n = b.n;
    return buf_take(&b);
}

/* A request with a Content-Length; extra: more header lines, each ending in CRLF. */
static void request(struct buf *b, const char *method, const char *path, const char *version,
                    const char *extra, const char *body, size_t n)
{
    buf_printf(b, "%s %s %s\r\nHost: 127.0.0.1\r\n%sContent-Length: %zu\r\n\r\n", method, path,
               version, extra, n);
    buf_add(b, body, n);
}

/* The same request with the body in two chunks. */
static void chunked(struct buf *b, const char *path, const char *extra, const char *body,
                    size_t n)
{
    size_t half = n / 2;
    buf_printf(b, "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%sTransfer-Encoding: chunked\r\n\r\n",
               path, extra);
    buf_printf(b, "%zx\r\n", half);
    buf_add(b, body, half);
    buf_printf(b, "\r\n%zx;ext=1\r\n", n - half);
    buf_add(b, body + half, n - half);
    buf_adds(b, "\r\n0\r\n\r\n");
}

static void put_buf(const char *sub, const char *name, const char *variant, struct buf *b)
{
    char file[512];
    snprintf(file, sizeof file, "%s.%s", name, variant);
    put(sub, file, b->p, b->n);
    b->n = 0;
}

/* The "data" member of a JSON object text, malloc'd; NULL if none. */
static char *data_member(const char *json, size_t n)
{
    char err[300], *s = NULL;
    if (json_decode(L, json, n, err, sizeof err) != 0)
        die("fixture", err);
    if (lua_istable(L, -1) && lua_getfield(L, -1, "data") == LUA_TSTRING)
        s = strdup(lua_tostring(L, -1));
    lua_settop(L, 0);
    return s;
}

static void ibm_fixture(const char *name, const char *body, size_t n)
{
    char err[300];
    struct buf b;
    buf_init(&b);
    request(&b, "POST", "/hooks/ibm", "HTTP/1.1", JSON, body, n);
    put_buf("intake", name, "ibm.http", &b);
    char *token = data_member(body, n);
    if (token != NULL) { /* a real JWT: signed by IBM, decode-only here */
        put("jwt", name, token, strlen(token));
        free(token);
        buf_free(&b);
        return;
    }
    token = jwt_sign(key, body, n, err, sizeof err);
    if (token == NULL)
        die(name, err);
    put("jwt", name, token, strlen(token));
    buf_printf(&b, "{\"data\":\"%s\"}", token);
    put("normalize", name, b.p, b.n);
    char *signed_body = buf_take(&b);
    size_t sn = strlen(signed_body);
    request(&b, "POST", "/hooks/ibmkey", "HTTP/1.1", JSON, signed_body, sn);
    put_buf("intake", name, "ibmkey.http", &b);
    request(&b, "POST", "/hooks/ibm", "HTTP/1.1", JSON, signed_body, sn);
    put_buf("intake", name, "ibm-jwt.http", &b);
    request(&b, "POST", "/hooks/ibmkey", "HTTP/1.1", JSON, body, n);
    put_buf("intake", name, "ibmkey-unsigned.http", &b);
    free(signed_body);
    free(token);
    buf_free(&b);
}

static void cloudflare_fixture(const char *name, const char *body, size_t n, int i)
{
    struct buf b;
    buf_init(&b);
    request(&b, "POST", "/hooks/cf", "HTTP/1.1", JSON "cf-webhook-auth: " SECRET "\r\n", body, n);
    put_buf("intake", name, "cf.http", &b);
    request(&b, "POST", "/hooks/cfopen", "HTTP/1.1", JSON, body, n);
    put_buf("intake", name, "cfopen.http", &b);
    if (i % 4 == 0) {
        chunked(&b, "/hooks/cf", JSON "cf-webhook-auth: " SECRET "\r\n", body, n);
        put_buf("intake", name, "cf-chunked.http", &b);
    }
    if (i % 4 == 1) { /* two requests on one connection */
        request(&b, "POST", "/hooks/cfopen", "HTTP/1.1", JSON, body, n);
        request(&b, "POST", "/hooks/cf", "HTTP/1.1", JSON "cf-webhook-auth: " SECRET "\r\n", body,
                n);
        put_buf("intake", name, "pipelined.http", &b);
    }
    buf_free(&b);
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Calls fn for every *.json of dir, in name order. */
static void each_fixture(const char *dir, void (*ibm)(const char *, const char *, size_t),
                         void (*cf)(const char *, const char *, size_t, int))
{
    char *names[512], path[4096];
    size_t count = 0;
    DIR *d = opendir(dir);
    struct dirent *e;
    if (d == NULL)
        die(dir, strerror(errno));
    while ((e = readdir(d)) != NULL && count < sizeof names / sizeof names[0]) {
        size_t len = strlen(e->d_name);
        if (len > 5 && strcmp(e->d_name + len - 5, ".json") == 0)
            names[count++] = strdup(e->d_name);
    }
    closedir(d);
    qsort(names, count, sizeof names[0], by_name);
    for (size_t i = 0; i < count; i++) {
        size_t n;
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        char *body = slurp(path, &n);
        if (ibm)
            ibm(names[i], body, n);
        else
            cf(names[i], body, n, (int)i);
        free(body);
        free(names[i]);
    }
}

/* Requests intake refuses, or takes with a twist, around one body. */
static void odd_requests(const char *body, size_t n)
{
    static const struct {
        const char *name, *method, *path, *version, *extra;
    } reqs[] = {
        {"no-secret", "POST", "/hooks/cf", "HTTP/1.1", JSON},
        {"wrong-secret", "POST", "/hooks/cf", "HTTP/1.1", JSON "cf-webhook-auth: fuzz-secreT\r\n"},
        {"get", "GET", "/hooks/cf", "HTTP/1.1", "cf-webhook-auth: " SECRET "\r\n"},
        {"put", "PUT", "/hooks/cfopen", "HTTP/1.1", JSON},
        {"unknown-source", "POST", "/hooks/nope", "HTTP/1.1", JSON},
        {"root", "POST", "/", "HTTP/1.1", JSON},
        {"hooks-prefix", "POST", "/hooks/", "HTTP/1.1", JSON},
        {"query", "POST", "/hooks/cfopen?x=1&y", "HTTP/1.1", JSON},
        {"text-plain", "POST", "/hooks/cfopen", "HTTP/1.1", "Content-Type: text/plain\r\n"},
        {"plus-json", "POST", "/hooks/cfopen", "HTTP/1.1",
         "Content-Type: application/cloudevents+json; charset=utf-8\r\n"},
        {"no-type", "POST", "/hooks/cfopen", "HTTP/1.1", ""},
        {"http10", "POST", "/hooks/cfopen", "HTTP/1.0", JSON},
        {"expect", "POST", "/hooks/cfopen", "HTTP/1.1", JSON "Expect: 100-continue\r\n"},
        {"keep-alive", "POST", "/hooks/cfopen", "HTTP/1.1", JSON "Connection: keep-alive\r\n"},
        {"close", "POST", "/hooks/cfopen", "HTTP/1.1", JSON "Connection: close\r\n"},
    };
    struct buf b;
    buf_init(&b);
    for (size_t i = 0; i < sizeof reqs / sizeof reqs[0]; i++) {
        request(&b, reqs[i].method, reqs[i].path, reqs[i].version, reqs[i].extra, body, n);
        put_buf("intake", "odd", reqs[i].name, &b);
    }
    /* bodies: invalid JSON, empty, a Content-Length over the limit, one that lies */
    request(&b, "POST", "/hooks/cfopen", "HTTP/1.1", JSON, "{\"text\": ", 9);
    put_buf("intake", "odd", "invalid-json", &b);
    request(&b, "POST", "/hooks/ibm", "HTTP/1.1", JSON, "", 0);
    put_buf("intake", "odd", "empty", &b);
    buf_printf(&b, "POST /hooks/cfopen HTTP/1.1\r\n" JSON "Content-Length: %d\r\n\r\n%.*s",
               MAX_BODY + 1, (int)n, body);
    put_buf("intake", "odd", "length-over-limit", &b);
    buf_printf(&b, "POST /hooks/cfopen HTTP/1.1\r\n" JSON "Content-Length: %zu\r\n\r\n%.*s",
               n + 100, (int)n, body);
    put_buf("intake", "odd", "length-lies", &b);
    /* a chunked body over the limit: only the reading finds out */
    char *big = malloc(MAX_BODY + 2);
    if (big == NULL)
        die("odd", "out of memory");
    memset(big, ' ', MAX_BODY + 2);
    big[0] = '{', big[MAX_BODY] = '}';
    chunked(&b, "/hooks/cfopen", JSON, big, MAX_BODY + 1);
    put_buf("intake", "odd", "chunked-over-limit", &b);
    free(big);
    buf_free(&b);
}

/* Tokens the verifier must refuse however well-formed they are. */
static void odd_tokens(const char *token)
{
    static const char *const tokens[][2] = {
        {"alg-none", "eyJhbGciOiJub25lIn0.eyJldmVudF90eXBlIjoiY2VydF9pc3N1ZWQifQ."},
        {"alg-hs256", "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJldmVudF90eXBlIjoiY2VydF9pc3N1"
                      "ZWQifQ.c2lnbmF0dXJl"},
        {"four-parts", "eyJhbGciOiJSUzI1NiJ9.e30.c2ln.c2ln"},
        {"empty-parts", ".."},
        {"padded", "eyJhbGciOiJSUzI1NiJ9.e30=.c2ln"},
    };
    for (size_t i = 0; i < sizeof tokens / sizeof tokens[0]; i++)
        put("jwt", tokens[i][0], tokens[i][1], strlen(tokens[i][1]));
    /* the signed token with its signature cut short */
    put("jwt", "short-signature", token, strlen(token) - 8);
}

static void ibm_first_token(void)
{
    char path[4096];
    size_t n;
    snprintf(path, sizeof path, "%s/jwt/v4.cert_issued.json", out_dir);
    char *token = slurp(path, &n);
    odd_tokens(token);
    free(token);
}

/* The regression of 345dc5d, too large to keep as a file: 520,000 validation errors, whose
 * messages (and separators) once went on the Lua stack all at once, past LUAI_MAXSTACK -- a
 * Lua panic. */
static void validation_errors_beyond_lua_stack(void)
{
    struct buf b;
    buf_init(&b);
    buf_adds(&b, "{\"metadata\":{\"event\":{\"type\":\"ssl.custom_hostname_certificate."
                 "validation.failed\"}},\"data\":{\"hostname\":\"h\",\"ssl\":{"
                 "\"validation_errors\":[");
    for (int i = 0; i < 520000; i++)
        buf_adds(&b, i ? ",\"a\"" : "\"a\"");
    buf_adds(&b, "]}}}");
    if (b.p == NULL)
        die("validation_errors_beyond_lua_stack", "out of memory");
    put("normalize", "validation-errors-beyond-lua-stack.json", b.p, b.n);
    buf_free(&b);
}

int main(int argc, char **argv)
{
    char err[300], dir[4096];
    size_t n;
    if (argc != 4) {
        fprintf(stderr, "usage: mkseeds OUT PRIVATE-KEY FIXTURES\n");
        return 2;
    }
    out_dir = argv[1];
    if (mkdir(out_dir, 0755) != 0 && errno != EEXIST)
        die(out_dir, strerror(errno));
    char *pem = slurp(argv[2], &n);
    key = pem;
    L = module_newstate(NULL, NULL, NULL, NULL, err, sizeof err);
    if (L == NULL)
        die("lua", err);
    snprintf(dir, sizeof dir, "%s/ibm-cm", argv[3]);
    each_fixture(dir, ibm_fixture, NULL);
    snprintf(dir, sizeof dir, "%s/cloudflare", argv[3]);
    each_fixture(dir, NULL, cloudflare_fixture);
    snprintf(dir, sizeof dir, "%s/cloudflare/ssl.custom_hostname_certificate.issuance.failed.json",
             argv[3]);
    char *body = slurp(dir, &n);
    odd_requests(body, n);
    free(body);
    ibm_first_token();
    validation_errors_beyond_lua_stack();
    lua_close(L);
    free(pem);
    return 0;
}
