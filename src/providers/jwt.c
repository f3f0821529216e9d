/*
 * jwt.c -- RS256 JSON Web Tokens (IBM Certificate Manager, PROVIDERS.md §2.2): public keys,
 * verification, and signing for `certhook send`. Only RS256 verifies (never `none`, HS256 or
 * another alg); the alg is compared whole, NUL bytes included. OpenSSL libcrypto does the
 * cryptography; event.c's JSON decoder reads the header.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "providers/provider.h"

struct jwt_keys {
    EVP_PKEY **k;
    size_t n;
};

static BIO *open_pem(const char *pem_or_path)
{
    if (strncmp(pem_or_path, "-----BEGIN", 10) == 0)
        return BIO_new_mem_buf(pem_or_path, -1);
    return BIO_new_file(pem_or_path, "r");
}

static const char *what(const char *pem_or_path)
{
    return strncmp(pem_or_path, "-----BEGIN", 10) == 0 ? "inline PEM" : pem_or_path;
}

int jwt_keys_add(struct jwt_keys **keys, const char *pem_or_path, char *err, size_t errlen)
{
    int rc = -1;
    EVP_PKEY *k = NULL;
    BIO *bio = open_pem(pem_or_path);
    if (bio == NULL) {
        snprintf(err, errlen, "cannot read public key %s", what(pem_or_path));
        goto done;
    }
    k = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);
    if (k == NULL) { /* a certificate holding the key works too */
        BIO_reset(bio);
        X509 *x = PEM_read_bio_X509(bio, NULL, NULL, NULL);
        if (x != NULL) {
            k = X509_get_pubkey(x);
            X509_free(x);
        }
    }
    if (k == NULL) {
        snprintf(err, errlen,
                 "%s holds no PEM public key (expected -----BEGIN PUBLIC KEY----- or a "
                 "certificate)", what(pem_or_path));
        goto done;
    }
    if (EVP_PKEY_base_id(k) != EVP_PKEY_RSA || EVP_PKEY_get_bits(k) < 2048) {
        snprintf(err, errlen, "%s: RS256 needs an RSA key of at least 2048 bits",
                 what(pem_or_path));
        goto done;
    }
    if (*keys == NULL && (*keys = calloc(1, sizeof **keys)) == NULL)
        goto oom;
    EVP_PKEY **p = realloc((*keys)->k, ((*keys)->n + 1) * sizeof *p);
    if (p == NULL)
        goto oom;
    (*keys)->k = p;
    p[(*keys)->n++] = k;
    k = NULL;
    rc = 0;
    goto done;
oom:
    snprintf(err, errlen, "out of memory");
done:
    ERR_clear_error();
    EVP_PKEY_free(k);
    BIO_free(bio);
    return rc;
}

void jwt_keys_free(struct jwt_keys *keys)
{
    if (keys == NULL)
        return;
    for (size_t i = 0; i < keys->n; i++)
        EVP_PKEY_free(keys->k[i]);
    free(keys->k);
    free(keys);
}

/* ---- base64url (RFC 4648 §5, unpadded, as JWT uses it) ------------------------------------ */

/* Writes exactly *outlen bytes to out: EVP_DecodeBlock writes 3 per 4 characters, the padding
 * too (up to 2 bytes past the decoded ones), so it decodes into tmp, after the padded text. */
int jwt_base64url_decode(const char *in, size_t n, unsigned char *out, size_t *outlen)
{
    if (n % 4 == 1)
        return -1;
    size_t padded = (n + 3) / 4 * 4;
    char *tmp = malloc(padded + padded / 4 * 3 + 1);
    if (tmp == NULL)
        return -1;
    for (size_t i = 0; i < n; i++) {
        char c = in[i];
        if (c == '-')
            c = '+';
        else if (c == '_')
            c = '/';
        else if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))) {
            free(tmp);
            return -1;
        }
        tmp[i] = c;
    }
    memset(tmp + n, '=', padded - n);
    unsigned char *dec = (unsigned char *)tmp + padded;
    int len = padded ? EVP_DecodeBlock(dec, (const unsigned char *)tmp, (int)padded) : 0;
    if (len >= 0) {
        *outlen = (size_t)len - (padded - n); /* EVP_DecodeBlock counts padding as zero bytes */
        memcpy(out, dec, *outlen);
    }
    free(tmp);
    return len < 0 ? -1 : 0;
}

/* Appends the base64url form of in to b. */
static int base64url_encode(struct buf *b, const unsigned char *in, size_t n)
{
    size_t len = 4 * ((n + 2) / 3);
    unsigned char *tmp = malloc(len + 1);
    if (tmp == NULL)
        return -1;
    EVP_EncodeBlock(tmp, in, (int)n);
    while (len > 0 && tmp[len - 1] == '=')
        len--;
    for (size_t i = 0; i < len; i++)
        tmp[i] = tmp[i] == '+' ? '-' : tmp[i] == '/' ? '_' : tmp[i];
    int rc = buf_add(b, tmp, len);
    free(tmp);
    return rc;
}

/* Decodes part of a JWT into a malloc'd NUL-terminated buffer. */
static unsigned char *decode_part(const char *s, size_t n, size_t *len)
{
    unsigned char *out = malloc(n / 4 * 3 + 4);
    if (out != NULL && jwt_base64url_decode(s, n, out, len) == 0) {
        out[*len] = '\0';
        return out;
    }
    free(out);
    return NULL;
}

/* 0 if the JWT header at hdr (JSON text) names alg RS256. */
static int header_is_rs256(lua_State *L, const unsigned char *hdr, size_t n, char *err,
                           size_t errlen)
{
    int rc = -1;
    int top = lua_gettop(L);
    if (json_decode(L, (const char *)hdr, n, err, errlen) != 0 || !lua_istable(L, -1)) {
        snprintf(err, errlen, "the JWT header is not a JSON object");
    } else if (lua_getfield(L, -1, "alg") != LUA_TSTRING) {
        snprintf(err, errlen, "the JWT header names no alg");
    } else if (lua_rawlen(L, -1) != 5 || memcmp(lua_tostring(L, -1), "RS256", 5) != 0) {
        snprintf(err, errlen, "JWT alg %.40s is refused: only RS256 is accepted",
                 lua_tostring(L, -1));
    } else {
        rc = 0;
    }
    lua_settop(L, top);
    return rc;
}

int jwt_verify(lua_State *L, const struct jwt_keys *keys, const char *token, size_t len,
                    char **claims, size_t *claims_len, char *err, size_t errlen)
{
    int rc = -1;
    unsigned char *hdr = NULL, *sig = NULL, *payload = NULL;
    size_t hlen, slen, plen;
    const char *d1 = memchr(token, '.', len);
    const char *d2 = d1 ? memchr(d1 + 1, '.', len - (size_t)(d1 + 1 - token)) : NULL;
    if (d2 == NULL || memchr(d2 + 1, '.', len - (size_t)(d2 + 1 - token)) != NULL) {
        snprintf(err, errlen, "\"data\" is not a JWT (expected header.payload.signature)");
        goto done;
    }
    hdr = decode_part(token, (size_t)(d1 - token), &hlen);
    payload = decode_part(d1 + 1, (size_t)(d2 - d1 - 1), &plen);
    sig = decode_part(d2 + 1, len - (size_t)(d2 + 1 - token), &slen);
    if (hdr == NULL || payload == NULL || sig == NULL) {
        snprintf(err, errlen, "the JWT is not valid base64url");
        goto done;
    }
    if (keys != NULL) {
        if (header_is_rs256(L, hdr, hlen, err, errlen) != 0)
            goto done;
        int ok = 0;
        for (size_t i = 0; i < keys->n && !ok; i++) {
            EVP_MD_CTX *ctx = EVP_MD_CTX_new();
            ok = ctx != NULL &&
                 EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, keys->k[i]) == 1 &&
                 EVP_DigestVerify(ctx, sig, slen, (const unsigned char *)token,
                                  (size_t)(d2 - token)) == 1;
            EVP_MD_CTX_free(ctx);
        }
        ERR_clear_error();
        if (!ok) {
            snprintf(err, errlen, "the JWT signature does not verify with the configured key");
            goto done;
        }
    }
    *claims = (char *)payload;
    *claims_len = plen;
    payload = NULL;
    rc = 0;
done:
    free(hdr);
    free(sig);
    free(payload);
    return rc;
}

char *jwt_sign(const char *pem_or_path, const char *claims, size_t n, char *err,
                    size_t errlen)
{
    static const char header[] = "{\"alg\":\"RS256\",\"typ\":\"JWT\"}";
    char *jwt = NULL;
    unsigned char *sig = NULL;
    size_t slen = 0;
    struct buf b;
    EVP_MD_CTX *ctx = NULL;
    EVP_PKEY *k = NULL;
    BIO *bio = open_pem(pem_or_path);

    buf_init(&b);
    if (bio == NULL || (k = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL)) == NULL ||
        EVP_PKEY_base_id(k) != EVP_PKEY_RSA) {
        snprintf(err, errlen, "%s holds no RSA private key in PEM form", what(pem_or_path));
        goto done;
    }
    if (base64url_encode(&b, (const unsigned char *)header, sizeof header - 1) != 0 ||
        buf_add(&b, ".", 1) != 0 || base64url_encode(&b, (const unsigned char *)claims, n) != 0)
        goto oom;
    ctx = EVP_MD_CTX_new();
    if (ctx == NULL || EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, k) != 1 ||
        EVP_DigestSign(ctx, NULL, &slen, (unsigned char *)b.p, b.n) != 1 ||
        (sig = malloc(slen)) == NULL ||
        EVP_DigestSign(ctx, sig, &slen, (unsigned char *)b.p, b.n) != 1) {
        snprintf(err, errlen, "signing failed");
        goto done;
    }
    if (buf_add(&b, ".", 1) != 0 || base64url_encode(&b, sig, slen) != 0)
        goto oom;
    jwt = buf_take(&b);
    goto done;
oom:
    snprintf(err, errlen, "out of memory");
done:
    ERR_clear_error();
    buf_free(&b);
    free(sig);
    EVP_MD_CTX_free(ctx);
    EVP_PKEY_free(k);
    BIO_free(bio);
    return jwt;
}
