/*
 * secret.c -- shared secrets (Cloudflare's cf-webhook-auth, other providers' header secrets,
 * the admin token). Only the SHA-256 of each configured secret is kept, and digests are
 * compared with CRYPTO_memcmp, every one of them, so neither a secret's content nor its length
 * leaks through timing. The digest is GnuTLS's (libmicrohttpd's TLS library, initialized at
 * load): OpenSSL 3's EVP_Digest fetches SHA-256 from its provider on every call, and its first
 * call initializes the library, which makes ~3 MiB of it resident in a process that may need
 * OpenSSL for nothing else.
 */
#include <stdlib.h>
#include <string.h>

#include <gnutls/crypto.h>
#include <openssl/crypto.h>

#include "providers/provider.h"

void secret_digest(const char *s, size_t n, unsigned char out[32])
{
    gnutls_hash_fast(GNUTLS_DIG_SHA256, s, n, out);
}

int secrets_add(struct secrets *s, const char *secret)
{
    unsigned char (*p)[32] = realloc(s->digest, (s->n + 1) * sizeof *p);
    if (p == NULL)
        return -1;
    s->digest = p;
    secret_digest(secret, strlen(secret), s->digest[s->n++]);
    return 0;
}

void secrets_free(struct secrets *s)
{
    free(s->digest);
    s->digest = NULL;
    s->n = 0;
}

int secrets_match(const struct secrets *s, const char *given)
{
    unsigned char d[32];
    int ok = 0;
    if (given == NULL)
        return 0;
    secret_digest(given, strlen(given), d);
    for (size_t i = 0; i < s->n; i++) /* every one, whichever matches */
        ok |= CRYPTO_memcmp(d, s->digest[i], sizeof d) == 0;
    return ok;
}
