/*
 * sigv4.h -- AWS Signature Version 4 (header form): what the aws-acm poller puts on each
 * request to the ACM API. Lua-free and I/O-free; SHA-256 and HMAC are GnuTLS's (secret.c).
 * Tested against the official test suite (tests/fixtures/aws-sigv4, tests/unit/test_sigv4.c).
 *
 * Not for Amazon S3: S3 wants its path neither normalized nor encoded twice.
 */
#ifndef CERTHOOK_PROVIDERS_SIGV4_H
#define CERTHOOK_PROVIDERS_SIGV4_H

#include <stddef.h>
#include <time.h>

#include "base/base.h"

struct sigv4_header {
    const char *name, *value;
};

/* The request to sign; every string is borrowed. */
struct sigv4_request {
    const char *method; /* "POST" */
    /* The Host header's value: "acm.us-east-1.amazonaws.com", or "127.0.0.1:8081" -- with the
     * port when it is not the scheme's default, as an HTTP client sends it. Signed. */
    const char *host;
    /* The path as it goes on the request line ("/"; NULL or "": "/"). Dot segments are removed,
     * empty segments dropped and each segment's bytes URI-encoded (RFC 3986 unreserved kept;
     * so a path sent percent-encoded is encoded twice, as AWS wants for all but S3). */
    const char *path;
    /* What follows '?' on the request line (NULL: nothing): pairs split on '&' and '=', each
     * name and value percent-decoded ('+' is a plus, not a space), re-encoded, sorted. */
    const char *query;
    /* The other headers the request sends, all of them signed: names of any case, values
     * trimmed and runs of spaces and tabs made one space; a name given twice signs as one
     * header with its values joined by ',' in the order given. Neither Host, X-Amz-Date,
     * X-Amz-Security-Token, X-Amz-Content-Sha256 nor Authorization: the signer adds those. */
    const struct sigv4_header *headers;
    size_t n_headers;
    const void *payload; /* the body (NULL with payload_len 0: none) */
    size_t payload_len;
    /* 1: also sign and send X-Amz-Content-Sha256 (S3 and a few services want it; ACM not). */
    int content_sha256;
};

struct sigv4_credentials {
    const char *access_key, *secret_key;
    const char *session_token; /* temporary credentials' token; NULL: none */
};

/* What to send besides rq->headers, and how it was reached. */
struct sigv4_signed {
    char date[17];           /* X-Amz-Date: "20150830T123600Z" */
    char content_sha256[65]; /* hex SHA-256 of the payload (X-Amz-Content-Sha256 when asked) */
    struct buf authorization; /* the Authorization header's value */
    /* The canonical request and the string to sign: for tests, and for the log when AWS
     * answers SignatureDoesNotMatch (its message quotes what it expected). */
    struct buf canonical_request, string_to_sign;
};

/* Signs rq at time t for region and service ("us-east-1", "acm") with the credentials c.
 * The request then carries rq->headers, Host, X-Amz-Date: out->date, X-Amz-Security-Token:
 * c->session_token when there is one (signed), X-Amz-Content-Sha256: out->content_sha256 when
 * rq->content_sha256, and Authorization: out->authorization.p. 0; or -1 with err (a missing
 * or malformed field, a header the signer adds, CR or LF in a value, no memory). out is set up
 * whatever it returns: release it with sigv4_signed_free. */
int sigv4_sign(const struct sigv4_request *rq, const char *region, const char *service,
               const struct sigv4_credentials *c, time_t t, struct sigv4_signed *out, char *err,
               size_t errlen);
void sigv4_signed_free(struct sigv4_signed *s);

#endif
