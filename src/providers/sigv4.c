/*
 * sigv4.c -- AWS Signature Version 4 (sigv4.h): the canonical request (method, normalized and
 * encoded path, sorted query, canonical headers, signed header names, payload hash), the string
 * to sign over its hash and the date's credential scope, and the signature with the key derived
 * from the secret, date, region and service. SHA-256 and HMAC-SHA256 come from GnuTLS, as the
 * digests of secret.c. Steps as in the AWS General Reference "Create a signed AWS API request".
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <gnutls/crypto.h>

#include "providers/sigv4.h"

#define ALGORITHM "AWS4-HMAC-SHA256"

static void hex(const unsigned char *p, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[p[i] >> 4];
        out[2 * i + 1] = digits[p[i] & 15];
    }
    out[2 * n] = '\0';
}

static int sha256_hex(const void *p, size_t n, char out[65])
{
    unsigned char d[32];
    if (gnutls_hash_fast(GNUTLS_DIG_SHA256, n ? p : "", n, d) != 0)
        return -1;
    hex(d, sizeof d, out);
    return 0;
}

static int unreserved(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '.' || c == '_' || c == '~';
}

/* Appends s..n URI-encoded: unreserved bytes as they are, every other byte %XX. */
static int encode(struct buf *b, const char *s, size_t n)
{
    static const char digits[] = "0123456789ABCDEF";
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char e[3] = {'%', digits[c >> 4], digits[c & 15]};
        if (unreserved(c) ? buf_add(b, s + i, 1) : buf_add(b, e, 3))
            return -1;
    }
    return 0;
}

/* Appends s..n percent-decoded and then encoded: "%41" and "A" sign alike. A '%' not
 * followed by two hex digits is a byte of its own (encoded %25). */
static int reencode(struct buf *b, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '%' && i + 2 < n && hex_digit(s[i + 1]) >= 0 && hex_digit(s[i + 2]) >= 0) {
            c = (char)(hex_digit(s[i + 1]) * 16 + hex_digit(s[i + 2]));
            i += 2;
        }
        if (encode(b, &c, 1) != 0)
            return -1;
    }
    return 0;
}

/* The canonical URI: "." and empty segments dropped, ".." dropping the segment before, each
 * segment encoded; it ends in '/' when the path does. As aws-c-auth and botocore do it (so
 * "/a/b/.." is "/a", where RFC 3986's remove_dot_segments would keep the slash). */
static int canonical_uri(struct buf *b, const char *path)
{
    if (path == NULL || path[0] == '\0')
        path = "/";
    size_t len = strlen(path), count = 0;
    struct seg {
        const char *p;
        size_t n;
    } *segs = malloc((len / 2 + 2) * sizeof *segs); /* segments are non-empty: at most this */
    if (segs == NULL)
        return -1;
    for (const char *p = path; *p != '\0';) {
        size_t n = strcspn(p, "/");
        if (n == 2 && p[0] == '.' && p[1] == '.') {
            if (count > 0)
                count--;
        } else if (n > 0 && !(n == 1 && p[0] == '.')) {
            segs[count].p = p;
            segs[count++].n = n;
        }
        p += n + (p[n] == '/');
    }
    int rc = 0;
    for (size_t i = 0; i < count && rc == 0; i++)
        rc = buf_add(b, "/", 1) || encode(b, segs[i].p, segs[i].n);
    if (rc == 0 && (count == 0 || path[len - 1] == '/'))
        rc = buf_add(b, "/", 1);
    free(segs);
    return rc ? -1 : 0;
}

struct pair {
    char *name, *value; /* query: both encoded; headers: the name lowercase, the value as given */
    size_t order;       /* headers: the position given */
};

static int query_cmp(const void *a, const void *b) /* by name, then value */
{
    const struct pair *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    return c ? c : strcmp(x->value, y->value);
}

static int header_cmp(const void *a, const void *b) /* by name, then as given */
{
    const struct pair *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    return c ? c : (x->order > y->order) - (x->order < y->order);
}

static void pairs_free(struct pair *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(v[i].name);
        free(v[i].value);
    }
    free(v);
}

/* The canonical query string: name=value pairs, both encoded, sorted by name then value. */
static int canonical_query(struct buf *b, const char *query)
{
    size_t n = 0, cap = 1;
    int rc = -1;
    if (query == NULL || query[0] == '\0')
        return 0;
    for (const char *p = query; *p != '\0'; p++)
        cap += *p == '&';
    struct pair *v = calloc(cap, sizeof *v);
    if (v == NULL)
        return -1;
    for (const char *p = query; *p != '\0';) {
        size_t len = strcspn(p, "&");
        if (len > 0) {
            const char *eq = memchr(p, '=', len);
            size_t kn = eq ? (size_t)(eq - p) : len;
            struct buf k, val;
            buf_init(&k);
            buf_init(&val);
            /* an empty name or value is "" (buf_add of nothing allocates) */
            if (buf_add(&k, "", 0) || reencode(&k, p, kn) || buf_add(&val, "", 0) ||
                (eq && reencode(&val, eq + 1, len - kn - 1))) {
                buf_free(&k);
                buf_free(&val);
                goto done;
            }
            v[n].name = k.p;
            v[n].value = val.p;
            n++;
        }
        p += len + (p[len] == '&');
    }
    qsort(v, n, sizeof *v, query_cmp);
    for (size_t i = 0; i < n; i++)
        if ((i > 0 && buf_add(b, "&", 1)) || buf_adds(b, v[i].name) || buf_add(b, "=", 1) ||
            buf_adds(b, v[i].value))
            goto done;
    rc = 0;
done:
    pairs_free(v, n);
    return rc;
}

/* Appends value trimmed, its runs of spaces and tabs made one space. */
static int trimall(struct buf *b, const char *s)
{
    int space = 0, any = 0;
    for (; *s != '\0'; s++) {
        if (*s == ' ' || *s == '\t') {
            space = any;
            continue;
        }
        if ((space && buf_add(b, " ", 1)) || buf_add(b, s, 1))
            return -1;
        space = 0;
        any = 1;
    }
    return 0;
}

static int is_token(const char *s) /* an HTTP header name (RFC 9110 token) */
{
    if (*s == '\0')
        return 0;
    for (; *s != '\0'; s++)
        if ((unsigned char)*s <= ' ' || (unsigned char)*s >= 127 ||
            strchr("\"(),/:;<=>?@[\\]{}", *s))
            return 0;
    return 1;
}

static int one_line(const char *s)
{
    return strpbrk(s, "\r\n") == NULL;
}

/* Canonical headers ("name:value\n" each, sorted) into b and the signed names into names. */
static int canonical_headers(struct buf *b, struct buf *names, const struct sigv4_request *rq,
                             const struct sigv4_header *extra, size_t n_extra, char *err,
                             size_t errlen)
{
    static const char *const own[] = {"host", "x-amz-date", "x-amz-security-token",
                                      "x-amz-content-sha256", "authorization"};
    size_t total = rq->n_headers + n_extra, n = 0;
    int rc = -1;
    struct pair *v = calloc(total ? total : 1, sizeof *v);
    if (v == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < total; i++) {
        const struct sigv4_header *h =
            i < rq->n_headers ? &rq->headers[i] : &extra[i - rq->n_headers];
        if (h->name == NULL || h->value == NULL || !is_token(h->name) || !one_line(h->value)) {
            snprintf(err, errlen, "header %zu: %s", i + 1,
                     h->name == NULL || !is_token(h->name) ? "not a header name"
                                                           : "no value, or CR or LF in it");
            goto done;
        }
        for (size_t j = 0; i < rq->n_headers && j < sizeof own / sizeof own[0]; j++)
            if (strcasecmp(h->name, own[j]) == 0) {
                snprintf(err, errlen, "header %s: the signer sets it", h->name);
                goto done;
            }
        if ((v[n].name = strdup(h->name)) == NULL) {
            snprintf(err, errlen, "out of memory");
            goto done;
        }
        for (char *p = v[n].name; *p != '\0'; p++)
            if (*p >= 'A' && *p <= 'Z')
                *p = (char)(*p - 'A' + 'a');
        v[n].value = (char *)h->value; /* borrowed: cleared before pairs_free */
        v[n].order = i;
        n++;
    }
    qsort(v, n, sizeof *v, header_cmp);
    for (size_t i = 0; i < n; i++) {
        int same = i > 0 && strcmp(v[i].name, v[i - 1].name) == 0;
        int bad = same ? buf_add(b, ",", 1)
                       : (i > 0 && (buf_add(b, "\n", 1) || buf_add(names, ";", 1))) ||
                             buf_adds(b, v[i].name) || buf_add(b, ":", 1) ||
                             buf_adds(names, v[i].name);
        if (bad || trimall(b, v[i].value)) {
            snprintf(err, errlen, "out of memory");
            goto done;
        }
    }
    if (buf_add(b, "\n", 1)) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    rc = 0;
done:
    for (size_t i = 0; i < n; i++)
        v[i].value = NULL;
    pairs_free(v, n);
    return rc;
}

/* A credential-scope part or key id: printable, no space, '/' or ','. */
static int plain(const char *s)
{
    if (s == NULL || *s == '\0')
        return 0;
    for (; *s != '\0'; s++)
        if ((unsigned char)*s <= ' ' || (unsigned char)*s >= 127 || *s == '/' || *s == ',')
            return 0;
    return 1;
}

static int hmac(const void *key, size_t keylen, const char *msg, size_t n, unsigned char out[32])
{
    return gnutls_hmac_fast(GNUTLS_MAC_SHA256, key, keylen, msg, n, out) == 0 ? 0 : -1;
}

/* The signature of sts: kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" secret, day), region),
 * service), "aws4_request"), hex(HMAC(kSigning, sts)). */
static int signature(const char *secret, const char *day, const char *region,
                     const char *service, const struct buf *sts, char out[65])
{
    unsigned char k[32], sig[32];
    size_t sn = strlen(secret);
    char *first = malloc(sn + 4);
    int rc = -1;
    if (first == NULL)
        return -1;
    memcpy(first, "AWS4", 4);
    memcpy(first + 4, secret, sn);
    if (hmac(first, sn + 4, day, strlen(day), k) == 0 &&
        hmac(k, sizeof k, region, strlen(region), k) == 0 &&
        hmac(k, sizeof k, service, strlen(service), k) == 0 &&
        hmac(k, sizeof k, "aws4_request", 12, k) == 0 &&
        hmac(k, sizeof k, sts->p, sts->n, sig) == 0) {
        hex(sig, sizeof sig, out);
        rc = 0;
    }
    explicit_bzero(first, sn + 4);
    explicit_bzero(k, sizeof k);
    free(first);
    return rc;
}

void sigv4_signed_free(struct sigv4_signed *s)
{
    buf_free(&s->authorization);
    buf_free(&s->canonical_request);
    buf_free(&s->string_to_sign);
}

int sigv4_sign(const struct sigv4_request *rq, const char *region, const char *service,
               const struct sigv4_credentials *c, time_t t, struct sigv4_signed *out, char *err,
               size_t errlen)
{
    struct buf names, *cr = &out->canonical_request, *sts = &out->string_to_sign;
    struct sigv4_header extra[4]; /* the headers the signer adds */
    size_t n_extra = 0;
    struct tm tm;
    char day[9], creq_hash[65], sig[65];
    int rc = -1;

    memset(out, 0, sizeof *out);
    buf_init(&out->authorization);
    buf_init(cr);
    buf_init(sts);
    buf_init(&names);
    if (rq->method == NULL || !is_token(rq->method) || rq->host == NULL || rq->host[0] == '\0' ||
        !one_line(rq->host) || (rq->path != NULL && !one_line(rq->path)) ||
        (rq->query != NULL && !one_line(rq->query)) || (rq->n_headers > 0 && rq->headers == NULL) ||
        (rq->payload == NULL && rq->payload_len > 0)) {
        snprintf(err, errlen, "the request has no method or host, or a malformed part");
        return -1;
    }
    if (!plain(region) || !plain(service) || c == NULL || !plain(c->access_key) ||
        c->secret_key == NULL || c->secret_key[0] == '\0' ||
        (c->session_token != NULL &&
         (c->session_token[0] == '\0' || !one_line(c->session_token)))) {
        snprintf(err, errlen, "no region, service or credentials, or a malformed one");
        return -1;
    }
    if (gmtime_r(&t, &tm) == NULL ||
        strftime(out->date, sizeof out->date, "%Y%m%dT%H%M%SZ", &tm) != 16) {
        snprintf(err, errlen, "time %lld cannot be an X-Amz-Date", (long long)t);
        return -1;
    }
    memcpy(day, out->date, 8);
    day[8] = '\0';
    if (sha256_hex(rq->payload, rq->payload_len, out->content_sha256) != 0) {
        snprintf(err, errlen, "SHA-256 failed");
        return -1;
    }

    extra[n_extra++] = (struct sigv4_header){"host", rq->host};
    extra[n_extra++] = (struct sigv4_header){"x-amz-date", out->date};
    if (c->session_token != NULL)
        extra[n_extra++] = (struct sigv4_header){"x-amz-security-token", c->session_token};
    if (rq->content_sha256)
        extra[n_extra++] = (struct sigv4_header){"x-amz-content-sha256", out->content_sha256};

    if (buf_adds(cr, rq->method) || buf_add(cr, "\n", 1) || canonical_uri(cr, rq->path) ||
        buf_add(cr, "\n", 1) || canonical_query(cr, rq->query) || buf_add(cr, "\n", 1)) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    if (canonical_headers(cr, &names, rq, extra, n_extra, err, errlen) != 0)
        goto done;
    if (buf_add(cr, "\n", 1) || buf_add(cr, names.p, names.n) || buf_add(cr, "\n", 1) ||
        buf_adds(cr, out->content_sha256)) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    if (sha256_hex(cr->p, cr->n, creq_hash) != 0) {
        snprintf(err, errlen, "SHA-256 failed");
        goto done;
    }
    if (buf_printf(sts, ALGORITHM "\n%s\n%s/%s/%s/aws4_request\n%s", out->date, day, region,
                   service, creq_hash) != 0) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    if (signature(c->secret_key, day, region, service, sts, sig) != 0) {
        snprintf(err, errlen, "HMAC-SHA256 failed, or out of memory");
        goto done;
    }
    if (buf_printf(&out->authorization,
                   ALGORITHM " Credential=%s/%s/%s/%s/aws4_request, SignedHeaders=%s, Signature=%s",
                   c->access_key, day, region, service, names.p, sig) != 0) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    rc = 0;
done:
    buf_free(&names);
    return rc;
}
