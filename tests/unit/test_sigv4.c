/* providers/sigv4.c: the official AWS Signature Version 4 test suite (tests/fixtures/aws-sigv4:
 * each case's .req signed, its canonical request, string to sign and Authorization compared
 * byte for byte with .creq, .sts, .authz and the signed request .sreq), then an ACM request
 * (ListCertificates: JSON 1.1, X-Amz-Target, session token) against values botocore computes,
 * the path and query rules no vector covers, and the requests the signer refuses. */
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "providers/sigv4.h"
#include "tap.h"

#define SUITE "tests/fixtures/aws-sigv4"

/* The suite's credentials, region, service and time (botocore tests/unit/auth/test_sigv4.py). */
static const struct sigv4_credentials suite_creds = {
    "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", NULL};
static const time_t suite_time = 1440938160; /* 2015-08-30T12:36:00Z */

enum {
    TOKEN_IN_SREQ = 1,  /* the session token is the one the .sreq sends (the .req has none) */
    TOKEN_AFTER = 2,    /* the token is added after signing (post-sts-header-after): unsigned */
    SREQ_STALE = 4,     /* the .sreq's Authorization is not the .authz: not compared */
};

static const struct {
    const char *name;
    int flags;
} cases[] = {
    {"get-header-key-duplicate", 0},
    {"get-header-value-multiline", 0},
    {"get-header-value-order", 0},
    {"get-header-value-trim", 0},
    {"get-unreserved", 0},
    {"get-utf8", 0},
    {"get-vanilla", 0},
    {"get-vanilla-empty-query-key", 0},
    {"get-vanilla-query", 0},
    {"get-vanilla-query-order-encoded", 0},
    {"get-vanilla-query-order-key", 0},
    {"get-vanilla-query-order-key-case", 0},
    {"get-vanilla-query-order-value", 0},
    {"get-vanilla-query-unreserved", 0},
    {"get-vanilla-utf8-query", 0},
    /* The suite's .sreq here carries get-vanilla's signature (5fa00fa3...), not the one its
     * .creq, .sts and .authz agree on (07ec1639...): a slip in the suite; botocore's runner
     * never reads .sreq either. */
    {"get-vanilla-with-session-token", TOKEN_IN_SREQ | SREQ_STALE},
    {"normalize-path/get-relative", 0},
    {"normalize-path/get-relative-relative", 0},
    {"normalize-path/get-slash", 0},
    {"normalize-path/get-slash-dot-slash", 0},
    {"normalize-path/get-slash-pointless-dot", 0},
    {"normalize-path/get-slashes", 0},
    {"normalize-path/get-space", 0},
    {"normalize-path/get-special-character", 0},
    {"post-header-key-case", 0},
    {"post-header-key-sort", 0},
    {"post-header-value-case", 0},
    {"post-sts-token/post-sts-header-after", TOKEN_IN_SREQ | TOKEN_AFTER},
    {"post-sts-token/post-sts-header-before", 0},
    {"post-vanilla", 0},
    {"post-vanilla-empty-query-value", 0},
    {"post-vanilla-query", 0},
    {"post-x-www-form-urlencoded", 0},
    {"post-x-www-form-urlencoded-parameters", 0},
};
#define NCASES (sizeof cases / sizeof cases[0])

static char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    char *s = NULL;
    long len;
    if (f == NULL)
        return NULL;
    if (fseek(f, 0, SEEK_END) == 0 && (len = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0 &&
        (s = malloc((size_t)len + 1)) != NULL) {
        if (fread(s, 1, (size_t)len, f) != (size_t)len) {
            free(s);
            s = NULL;
        } else {
            s[len] = '\0';
            if (n != NULL)
                *n = (size_t)len;
        }
    }
    fclose(f);
    return s;
}

static char *file_of(const char *name, const char *ext)
{
    char path[512];
    const char *base = strrchr(name, '/');
    snprintf(path, sizeof path, SUITE "/%s/%s.%s", name, base ? base + 1 : name, ext);
    return slurp(path, NULL);
}

/* The value of the line "<prefix>..." in text, malloc'd; NULL if none. */
static char *line_value(const char *text, const char *prefix)
{
    size_t pn = strlen(prefix);
    for (const char *p = text; p != NULL && *p != '\0'; p = strchr(p, '\n'), p = p ? p + 1 : p)
        if (strncmp(p, prefix, pn) == 0)
            return strndup(p + pn, strcspn(p + pn, "\n"));
    return NULL;
}

/* A .req parsed: "METHOD target HTTP/1.1", header lines (a line starting with a space or tab
 * continues the one before: joined with a space), a blank line, the body. Host, X-Amz-Date and
 * X-Amz-Security-Token are taken out of the headers: the signer adds them. */
struct parsed {
    char *text; /* the .req, cut in place */
    char *method, *path, *query, *host, *date, *token, *body;
    size_t body_len, n;
    struct sigv4_header h[16];
    char *joined[16]; /* continued values, malloc'd */
};

static int parse_req(char *text, size_t len, struct parsed *r)
{
    memset(r, 0, sizeof *r);
    r->text = text;
    char *end = strstr(text, "\n\n");
    if (end != NULL) {
        *end = '\0';
        r->body = end + 2;
        r->body_len = len - (size_t)(r->body - text);
    }
    char *line = strtok(text, "\n");
    char *sp = line ? strchr(line, ' ') : NULL, *proto = line ? strstr(line, " HTTP/") : NULL;
    if (sp == NULL || proto == NULL || proto < sp)
        return -1;
    *sp = *proto = '\0';
    r->method = line;
    r->path = sp + 1;
    if ((r->query = strchr(r->path, '?')) != NULL)
        *r->query++ = '\0';
    while ((line = strtok(NULL, "\n")) != NULL) {
        if ((line[0] == ' ' || line[0] == '\t') && r->n > 0) {
            struct sigv4_header *last = &r->h[r->n - 1];
            char *j = malloc(strlen(last->value) + strlen(line) + 2);
            if (j == NULL)
                return -1;
            sprintf(j, "%s %s", last->value, line);
            free(r->joined[r->n - 1]);
            last->value = r->joined[r->n - 1] = j;
            continue;
        }
        char *colon = strchr(line, ':');
        if (colon == NULL || r->n == sizeof r->h / sizeof r->h[0])
            return -1;
        *colon = '\0';
        if (strcasecmp(line, "Host") == 0)
            r->host = colon + 1;
        else if (strcasecmp(line, "X-Amz-Date") == 0)
            r->date = colon + 1;
        else if (strcasecmp(line, "X-Amz-Security-Token") == 0)
            r->token = colon + 1;
        else
            r->h[r->n++] = (struct sigv4_header){line, colon + 1};
    }
    return 0;
}

static void parsed_free(struct parsed *r)
{
    for (size_t i = 0; i < sizeof r->joined / sizeof r->joined[0]; i++)
        free(r->joined[i]);
    free(r->text);
}

static int same(const char *what, const char *name, const char *want, const char *got)
{
    int eq = want != NULL && got != NULL && strcmp(want, got) == 0;
    ok(eq, "%s: %s", name, what);
    if (!eq)
        printf("# expected:\n%s\n# got:\n%s\n", want ? want : "(none)", got ? got : "(none)");
    return eq;
}

static void run_case(const char *name, int flags)
{
    char path[512];
    size_t len = 0;
    const char *base = strrchr(name, '/');
    snprintf(path, sizeof path, SUITE "/%s/%s.req", name, base ? base + 1 : name);
    char *text = slurp(path, &len), *creq = file_of(name, "creq"), *sts = file_of(name, "sts"),
         *authz = file_of(name, "authz"), *sreq = file_of(name, "sreq"), *sreq_token = NULL,
         *sreq_authz = NULL, err[256] = "";
    struct parsed r;
    struct sigv4_signed out;
    memset(&out, 0, sizeof out);
    if (text == NULL || creq == NULL || sts == NULL || authz == NULL || sreq == NULL ||
        parse_req(text, len, &r) != 0) {
        ok(0, "%s: the vector's files are there and its .req parses", name);
        if (text != NULL && creq != NULL && sts != NULL && authz != NULL && sreq != NULL)
            parsed_free(&r);
        else
            free(text);
        goto done;
    }
    sreq_token = line_value(sreq, "X-Amz-Security-Token:");
    sreq_authz = line_value(sreq, "Authorization: ");
    struct sigv4_credentials c = suite_creds;
    c.session_token = r.token;
    if (c.session_token == NULL && (flags & TOKEN_IN_SREQ) && !(flags & TOKEN_AFTER))
        c.session_token = sreq_token;
    struct sigv4_request rq = {r.method, r.host, r.path, r.query, r.h, r.n, r.body, r.body_len, 0};
    int rc = sigv4_sign(&rq, "us-east-1", "service", &c, suite_time, &out, err, sizeof err);
    ok(rc == 0, "%s: signs (%s)", name, rc ? err : "ok");
    same("X-Amz-Date", name, r.date, out.date);
    same("canonical request (.creq)", name, creq, out.canonical_request.p);
    same("string to sign (.sts)", name, sts, out.string_to_sign.p);
    same("Authorization (.authz)", name, authz, out.authorization.p);
    if (flags & SREQ_STALE)
        ok(sreq_authz != NULL && strcmp(sreq_authz, authz) != 0,
           "%s: the suite's .sreq carries another request's Authorization (see cases[])", name);
    else
        same("Authorization sent (.sreq)", name, sreq_authz, out.authorization.p);
    if (flags & TOKEN_AFTER) /* the .sreq adds the token the signature does not cover */
        ok(sreq_token != NULL && strstr(out.authorization.p ? out.authorization.p : "",
                                        "x-amz-security-token") == NULL,
           "%s: X-Amz-Security-Token sent, not signed", name);
    parsed_free(&r);
done:
    sigv4_signed_free(&out);
    free(creq);
    free(sts);
    free(authz);
    free(sreq);
    free(sreq_token);
    free(sreq_authz);
}

/* Every .req in the suite's folder is a case above: a vector added to the folder runs. */
static int unlisted;
static int each_req(const char *fpath, const struct stat *sb, int type, struct FTW *ftw)
{
    (void)sb;
    (void)ftw;
    size_t n = strlen(fpath);
    if (type != FTW_F || n < 4 || strcmp(fpath + n - 4, ".req") != 0)
        return 0;
    const char *rel = fpath + strlen(SUITE) + 1;
    for (size_t i = 0; i < NCASES; i++) {
        size_t k = strlen(cases[i].name);
        if (strncmp(rel, cases[i].name, k) == 0 && rel[k] == '/')
            return 0;
    }
    printf("# not in cases[]: %s\n", rel);
    unlisted++;
    return 0;
}

/* ---- an ACM request --------------------------------------------------------------------- */

static const char acm_body[] =
    "{\"CertificateStatuses\":[\"PENDING_VALIDATION\",\"ISSUED\"],\"Includes\":{\"keyTypes\":"
    "[\"RSA_1024\",\"RSA_2048\",\"RSA_3072\",\"RSA_4096\",\"EC_prime256v1\",\"EC_secp384r1\","
    "\"EC_secp521r1\"]},\"MaxItems\":100}";
static const struct sigv4_header acm_headers[] = {
    {"Content-Type", "application/x-amz-json-1.1"},
    {"X-Amz-Target", "CertificateManager.ListCertificates"},
};
static const char acm_token[] =
    "IQoJb3JpZ2luX2VjEXAMPLE//////////wEaCXVzLWVhc3QtMSJHMEUCIQDEXAMPLE+token/with=padding==";
static const time_t acm_time = 1796673600; /* 2026-12-07T20:00:00Z */
#define BODY_SHA256 "c7a7fc07b0e0dd47c31f63d632e2e19717bd752a558da40fa4903930fe1f7fa0"

static int acm_sign(const char *token, time_t t, int content_sha256, struct sigv4_signed *out)
{
    char err[256];
    struct sigv4_request rq = {"POST", "acm.us-east-1.amazonaws.com", "/", NULL, acm_headers, 2,
                               acm_body, strlen(acm_body), content_sha256};
    struct sigv4_credentials c = suite_creds;
    c.session_token = token;
    int rc = sigv4_sign(&rq, "us-east-1", "acm", &c, t, out, err, sizeof err);
    if (rc != 0)
        printf("# %s\n", err);
    return rc;
}

/* The expected values: botocore 1.43.11's SigV4Auth.add_auth on the same request (Credentials
 * with and without the token, service "acm", datetime frozen at 2026-12-07T20:00:00Z), and the
 * same from a dozen lines of Python hashlib/hmac following the AWS steps. */
static void test_acm(void)
{
    struct sigv4_signed a, b;
    const char *creq =
        "POST\n/\n\n"
        "content-type:application/x-amz-json-1.1\n"
        "host:acm.us-east-1.amazonaws.com\n"
        "x-amz-date:20261207T200000Z\n"
        "x-amz-security-token:IQoJb3JpZ2luX2VjEXAMPLE//////////wEaCXVzLWVhc3QtMSJHMEUCIQDEXAMPLE"
        "+token/with=padding==\n"
        "x-amz-target:CertificateManager.ListCertificates\n\n"
        "content-type;host;x-amz-date;x-amz-security-token;x-amz-target\n"
        BODY_SHA256;

    ok(acm_sign(acm_token, acm_time, 0, &a) == 0,
       "ACM ListCertificates with a session token: signs");
    same("X-Amz-Date", "ACM", "20261207T200000Z", a.date);
    same("payload SHA-256", "ACM", BODY_SHA256, a.content_sha256);
    same("canonical request, token signed", "ACM", creq, a.canonical_request.p);
    same("string to sign", "ACM",
         "AWS4-HMAC-SHA256\n20261207T200000Z\n20261207/us-east-1/acm/aws4_request\n"
         "28bb40d2edb16ae7bee6d097d202aded97a3b8d5bb2587d743108b9f7112e8c2",
         a.string_to_sign.p);
    same("Authorization (as botocore's)", "ACM",
         "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261207/us-east-1/acm/aws4_request, "
         "SignedHeaders=content-type;host;x-amz-date;x-amz-security-token;x-amz-target, "
         "Signature=b16062b60be553c9762a1b2280d3d0bfbab295646b05ac63b1f7e17d1d27b141",
         a.authorization.p);

    ok(acm_sign(acm_token, acm_time, 0, &b) == 0 && a.authorization.p && b.authorization.p &&
           strcmp(a.authorization.p, b.authorization.p) == 0 &&
           strcmp(a.canonical_request.p, b.canonical_request.p) == 0,
       "ACM: signing the same request again gives the same bytes");
    sigv4_signed_free(&b);

    ok(acm_sign(acm_token, acm_time + 1, 0, &b) == 0 && strcmp(b.date, "20261207T200001Z") == 0 &&
           strcmp(a.authorization.p, b.authorization.p) != 0,
       "ACM: a second later, another X-Amz-Date and signature");
    sigv4_signed_free(&b);

    ok(acm_sign(NULL, acm_time, 0, &b) == 0, "ACM without a session token: signs");
    same("Authorization without a token (as botocore's)", "ACM",
         "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261207/us-east-1/acm/aws4_request, "
         "SignedHeaders=content-type;host;x-amz-date;x-amz-target, "
         "Signature=336c798de560a7588d1dc16aaf97935ea3d98e63cb27cbed203eb1c349dc2942",
         b.authorization.p);
    sigv4_signed_free(&b);

    ok(acm_sign(acm_token, acm_time, 1, &b) == 0, "ACM with X-Amz-Content-Sha256: signs");
    ok(b.canonical_request.p != NULL &&
           strstr(b.canonical_request.p, "\nx-amz-content-sha256:" BODY_SHA256 "\n") &&
           strstr(b.canonical_request.p,
                  "\ncontent-type;host;x-amz-content-sha256;x-amz-date;x-amz-security-token;"
                  "x-amz-target\n"),
       "ACM: X-Amz-Content-Sha256 is a canonical and a signed header when asked");
    same("Authorization with X-Amz-Content-Sha256 (Python hashlib/hmac)", "ACM",
         "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261207/us-east-1/acm/aws4_request, "
         "SignedHeaders=content-type;host;x-amz-content-sha256;x-amz-date;x-amz-security-token;"
         "x-amz-target, Signature=3eaffc18e8788d2641adc05f05da82d15c0af65a819e7524b2d331041dfc710d",
         b.authorization.p);
    sigv4_signed_free(&b);
    sigv4_signed_free(&a);
}

/* ---- path and query rules no vector pins ------------------------------------------------ */

static const struct {
    const char *path, *query, *uri, *canonical_query;
} rules[] = {
    /* a path sent percent-encoded is encoded again (every service but S3) */
    {"/%E1%88%B4", NULL, "/%25E1%2588%25B4", ""},
    /* a last "." or ".." leaves no slash (aws-c-auth's and botocore's rule, not RFC 3986's) */
    {"/a/b/..", NULL, "/a", ""},
    {"/a/./b/.", NULL, "/a/b", ""},
    {"/a/b/../", NULL, "/a/", ""},
    {"/../../a", NULL, "/a", ""},          /* ".." above the root stays at the root */
    {"", NULL, "/", ""},
    {NULL, "", "/", ""},
    {"a//b", NULL, "/a/b", ""},
    {"/", "b=2&a=1&a=0", "/", "a=0&a=1&b=2"},
    {"/", "q=a+b&r=%41%2b&s=%zz&t", "/", "q=a%2Bb&r=A%2B&s=%25zz&t="},
    {"/", "&&x=1&&", "/", "x=1"},
    {"/", "k=v=w&%20=%7e", "/", "%20=~&k=v%3Dw"},
};

static void test_rules(void)
{
    for (size_t i = 0; i < sizeof rules / sizeof rules[0]; i++) {
        struct sigv4_request rq = {"GET", "example.amazonaws.com", rules[i].path, rules[i].query,
                                   NULL, 0, NULL, 0, 0};
        struct sigv4_signed out;
        char err[256], want[256];
        snprintf(want, sizeof want, "GET\n%s\n%s\nhost:", rules[i].uri, rules[i].canonical_query);
        int rc = sigv4_sign(&rq, "us-east-1", "service", &suite_creds, suite_time, &out, err,
                            sizeof err);
        ok(rc == 0 && strncmp(out.canonical_request.p, want, strlen(want)) == 0,
           "path \"%s\" query \"%s\": canonical URI \"%s\", query \"%s\"",
           rules[i].path ? rules[i].path : "(null)", rules[i].query ? rules[i].query : "(null)",
           rules[i].uri, rules[i].canonical_query);
        if (rc == 0 && strncmp(out.canonical_request.p, want, strlen(want)) != 0)
            printf("# got:\n%s\n", out.canonical_request.p);
        sigv4_signed_free(&out);
    }
}

/* ---- refusals ---------------------------------------------------------------------------- */

static void test_refusals(void)
{
    static const struct sigv4_header host[] = {{"Host", "evil.example"}},
                                     date[] = {{"x-amz-date", "20000101T000000Z"}},
                                     authz[] = {{"Authorization", "x"}},
                                     crlf[] = {{"My-Header", "a\r\nInjected: b"}},
                                     badname[] = {{"My Header", "a"}},
                                     noname[] = {{"", "a"}};
/* a request (method, host, path, headers, n, payload_len), then the rest of sigv4_sign's
 * arguments (region, service, access key, secret key, session token, time) */
#define RQ(m, h, path, hd, n, len) {m, h, path, NULL, hd, n, NULL, len, 0}
#define GOOD RQ("GET", "h", "/", NULL, 0, 0)
#define ARGS "us-east-1", "acm", "AK", "SK", NULL, 0
    static const struct {
        const char *what;
        struct sigv4_request rq;
        const char *region, *service, *access_key, *secret_key, *token;
        time_t t;
    } bad[] = {
        {"a Host header", RQ("GET", "h", "/", host, 1, 0), ARGS},
        {"an X-Amz-Date header", RQ("GET", "h", "/", date, 1, 0), ARGS},
        {"an Authorization header", RQ("GET", "h", "/", authz, 1, 0), ARGS},
        {"CR LF in a header value", RQ("GET", "h", "/", crlf, 1, 0), ARGS},
        {"a space in a header name", RQ("GET", "h", "/", badname, 1, 0), ARGS},
        {"an empty header name", RQ("GET", "h", "/", noname, 1, 0), ARGS},
        {"no method", RQ(NULL, "h", "/", NULL, 0, 0), ARGS},
        {"no host", RQ("GET", NULL, "/", NULL, 0, 0), ARGS},
        {"LF in the path", RQ("GET", "h", "/a\nb", NULL, 0, 0), ARGS},
        {"a payload length without a payload", RQ("GET", "h", "/", NULL, 0, 3), ARGS},
        {"no region", GOOD, "", "acm", "AK", "SK", NULL, 0},
        {"a '/' in the service", GOOD, "us-east-1", "a/b", "AK", "SK", NULL, 0},
        {"no access key", GOOD, "us-east-1", "acm", NULL, "SK", NULL, 0},
        {"no secret key", GOOD, "us-east-1", "acm", "AK", "", NULL, 0},
        {"LF in the session token", GOOD, "us-east-1", "acm", "AK", "SK", "a\nb", 0},
        {"an empty session token", GOOD, "us-east-1", "acm", "AK", "SK", "", 0},
        {"a year past 9999", GOOD, "us-east-1", "acm", "AK", "SK", NULL, 253402300800},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct sigv4_credentials c = {bad[i].access_key, bad[i].secret_key, bad[i].token};
        struct sigv4_signed out;
        char err[256] = "";
        int rc = sigv4_sign(&bad[i].rq, bad[i].region, bad[i].service, &c, bad[i].t, &out, err,
                            sizeof err);
        ok(rc == -1 && err[0] != '\0' && out.authorization.p == NULL, "refused: %s (%s)",
           bad[i].what, err);
        sigv4_signed_free(&out);
    }
}

int main(void)
{
    for (size_t i = 0; i < NCASES; i++)
        run_case(cases[i].name, cases[i].flags);
    ok(nftw(SUITE, each_req, 8, FTW_PHYS) == 0 && unlisted == 0,
       "every .req in " SUITE " is a case (%d not)", unlisted);
    test_acm();
    test_rules();
    test_refusals();
    return done();
}
