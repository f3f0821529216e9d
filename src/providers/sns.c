/*
 * sns.c -- Amazon SNS message signatures (sns.h) with OpenSSL libcrypto.
 *
 * SNS signs a canonical string of the message's fields with the key of a certificate it
 * publishes at SigningCertURL; a receiver checks that URL's host before fetching it, then the
 * signature (AWS SNS developer guide, "Verifying the signatures of Amazon SNS messages";
 * PROVIDERS.md §3.1). Every call leaves OpenSSL's error queue empty.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "base/x509.h"
#include "sns.h"


/* ---- URLs ------------------------------------------------------------------------------- */

static int is_lower_alnum(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

/* 1 if the n bytes at h are sns.<region>.amazonaws.com or sns.<region>.amazonaws.com.cn */
static int sns_host(const char *h, size_t n)
{
    static const char com[] = ".amazonaws.com", cn[] = ".amazonaws.com.cn";
    size_t suffix, region;
    if (n < 4 || memcmp(h, "sns.", 4) != 0)
        return 0;
    h += 4;
    n -= 4;
    if (n > sizeof cn - 1 && memcmp(h + n - (sizeof cn - 1), cn, sizeof cn - 1) == 0)
        suffix = sizeof cn - 1;
    else if (n > sizeof com - 1 && memcmp(h + n - (sizeof com - 1), com, sizeof com - 1) == 0)
        suffix = sizeof com - 1;
    else
        return 0;
    region = n - suffix;
    for (size_t i = 0; i < region; i++)
        if (!is_lower_alnum(h[i]) && h[i] != '-')
            return 0;
    return region > 0;
}

int sns_check_url(const char *url, int want_pem, char *err, size_t errlen)
{
    const char *host, *path, *p;
    size_t hostlen, pathlen;
    if (url == NULL) {
        snprintf(err, errlen, "no URL");
        return -1;
    }
    if (strncmp(url, "https://", 8) != 0) {
        snprintf(err, errlen, "not an https:// URL");
        return -1;
    }
    for (p = url; *p != '\0'; p++) {
        unsigned char c = (unsigned char)*p;
        if (c <= ' ' || c >= 0x7f || c == '\\' || c == '@' || c == '#') {
            snprintf(err, errlen, "the URL holds a character it may not (byte %zu)",
                     (size_t)(p - url));
            return -1;
        }
    }
    host = url + 8;
    hostlen = strcspn(host, "/?");
    path = host + hostlen;
    if (memchr(host, ':', hostlen) != NULL) {
        snprintf(err, errlen, "the URL names a port");
        return -1;
    }
    if (!sns_host(host, hostlen)) {
        snprintf(err, errlen, "%.*s is not sns.<region>.amazonaws.com",
                 (int)(hostlen > 200 ? 200 : hostlen), host);
        return -1;
    }
    if (*path != '/') {
        snprintf(err, errlen, "no path after the host");
        return -1;
    }
    if (!want_pem)
        return 0;
    pathlen = strlen(path);
    for (size_t i = 0; i < pathlen; i++) {
        int c = (unsigned char)path[i];
        if (!is_lower_alnum(c) && !(c >= 'A' && c <= 'Z') && c != '.' && c != '_' && c != '-' &&
            c != '/') {
            snprintf(err, errlen, "the certificate URL has a query or an unexpected character");
            return -1;
        }
    }
    if (strstr(path, "/..") != NULL || pathlen < 6 || strcmp(path + pathlen - 4, ".pem") != 0 ||
        path[pathlen - 5] == '/') {
        snprintf(err, errlen, "the certificate URL's path is not a .pem file");
        return -1;
    }
    return 0;
}

/* ---- the string to sign ----------------------------------------------------------------- */

/* The fields SNS signs, in this order (Subject only when present). */
static const char *const notification_fields[] = {"Message", "MessageId", "Subject", "Timestamp",
                                                  "TopicArn", "Type", NULL};
static const char *const confirmation_fields[] = {"Message", "MessageId", "SubscribeURL",
                                                  "Timestamp", "Token", "TopicArn", "Type", NULL};

static const char *field(const struct sns_message *m, const char *name)
{
    if (strcmp(name, "Message") == 0)
        return m->message;
    if (strcmp(name, "MessageId") == 0)
        return m->message_id;
    if (strcmp(name, "Subject") == 0)
        return m->subject;
    if (strcmp(name, "SubscribeURL") == 0)
        return m->subscribe_url;
    if (strcmp(name, "Timestamp") == 0)
        return m->timestamp;
    if (strcmp(name, "Token") == 0)
        return m->token;
    if (strcmp(name, "TopicArn") == 0)
        return m->topic_arn;
    return m->type;
}

char *sns_string_to_sign(const struct sns_message *m, size_t *len)
{
    const char *const *names;
    size_t total = 0, at = 0;
    char *s;
    if (m->type != NULL && strcmp(m->type, "Notification") == 0)
        names = notification_fields;
    else if (m->type != NULL && (strcmp(m->type, "SubscriptionConfirmation") == 0 ||
                                 strcmp(m->type, "UnsubscribeConfirmation") == 0))
        names = confirmation_fields;
    else
        return NULL;
    for (const char *const *k = names; *k != NULL; k++) {
        const char *v = field(m, *k);
        if (v == NULL && strcmp(*k, "Subject") != 0)
            return NULL;
        if (v != NULL)
            total += strlen(*k) + strlen(v) + 2;
    }
    if ((s = malloc(total + 1)) == NULL)
        return NULL;
    for (const char *const *k = names; *k != NULL; k++) {
        const char *v = field(m, *k);
        if (v != NULL)
            at += (size_t)sprintf(s + at, "%s\n%s\n", *k, v);
    }
    *len = at;
    return s;
}

/* ---- signatures ------------------------------------------------------------------------- */

static const EVP_MD *digest(const char *version)
{
    if (version != NULL && strcmp(version, "1") == 0)
        return EVP_sha1();
    if (version != NULL && strcmp(version, "2") == 0)
        return EVP_sha256();
    return NULL;
}

/* Decodes standard base64 with padding (no line breaks) into a malloc'd buffer. */
static unsigned char *base64_decode(const char *s, size_t *n)
{
    size_t len = strlen(s), pad = 0;
    unsigned char *out;
    int got;
    if (len == 0 || len % 4 != 0 || len > INT_MAX)
        return NULL;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        int alpha = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                    c == '+' || c == '/';
        if (c == '=' && i >= len - 2)
            pad++;
        else if (!alpha || pad > 0)
            return NULL;
    }
    if ((out = malloc(len / 4 * 3)) == NULL)
        return NULL;
    got = EVP_DecodeBlock(out, (const unsigned char *)s, (int)len);
    if (got < 0 || (size_t)got < pad) {
        free(out);
        return NULL;
    }
    *n = (size_t)got - pad;
    return out;
}

int sns_verify(const struct sns_message *m, const char *cert_pem, size_t n, char *err,
               size_t errlen)
{
    const EVP_MD *md = digest(m->signature_version);
    char *tbs = NULL;
    unsigned char *sig = NULL;
    size_t tbslen = 0, siglen = 0;
    BIO *bio = NULL;
    X509 *cert = NULL;
    EVP_PKEY *key;
    EVP_MD_CTX *ctx = NULL;
    int rc = -1;
    if (md == NULL) {
        snprintf(err, errlen, "SignatureVersion is not \"1\" or \"2\"");
        goto done;
    }
    if ((tbs = sns_string_to_sign(m, &tbslen)) == NULL) {
        snprintf(err, errlen, "not a signed SNS message: unknown Type or a signed field missing");
        goto done;
    }
    if (m->signature == NULL || (sig = base64_decode(m->signature, &siglen)) == NULL) {
        snprintf(err, errlen, "Signature is not base64");
        goto done;
    }
    if (n > INT_MAX || (bio = BIO_new_mem_buf(cert_pem, (int)n)) == NULL) {
        snprintf(err, errlen, "cannot read the signing certificate");
        goto done;
    }
    if ((cert = PEM_read_bio_X509(bio, NULL, NULL, NULL)) == NULL) {
        x509_openssl_error(err, errlen, "the signing certificate is not a PEM certificate");
        goto done;
    }
    if ((key = X509_get0_pubkey(cert)) == NULL || EVP_PKEY_get_base_id(key) != EVP_PKEY_RSA) {
        snprintf(err, errlen, "the signing certificate has no RSA key");
        goto done;
    }
    if ((ctx = EVP_MD_CTX_new()) == NULL || EVP_DigestVerifyInit(ctx, NULL, md, NULL, key) != 1) {
        x509_openssl_error(err, errlen, "cannot verify");
        goto done;
    }
    if (EVP_DigestVerify(ctx, sig, siglen, (const unsigned char *)tbs, tbslen) != 1) {
        snprintf(err, errlen, "the signature does not verify");
        goto done;
    }
    rc = 0;
done:
    EVP_MD_CTX_free(ctx);
    X509_free(cert);
    BIO_free(bio);
    free(sig);
    free(tbs);
    ERR_clear_error();
    return rc;
}

char *sns_sign(const struct sns_message *m, const char *key_pem_or_path, int version, char *err,
               size_t errlen)
{
    const EVP_MD *md = digest(version == 1 ? "1" : version == 2 ? "2" : NULL);
    char *tbs = NULL, *b64 = NULL;
    unsigned char *sig = NULL;
    size_t tbslen = 0, siglen = 0;
    BIO *bio = NULL;
    EVP_PKEY *key = NULL;
    EVP_MD_CTX *ctx = NULL;
    if (md == NULL) {
        snprintf(err, errlen, "the signature version must be 1 or 2");
        goto done;
    }
    if ((tbs = sns_string_to_sign(m, &tbslen)) == NULL) {
        snprintf(err, errlen, "not a signable SNS message: unknown Type or a signed field missing");
        goto done;
    }
    if (strstr(key_pem_or_path, "-----BEGIN") != NULL)
        bio = BIO_new_mem_buf(key_pem_or_path, -1);
    else
        bio = BIO_new_file(key_pem_or_path, "r");
    if (bio == NULL) {
        x509_openssl_error(err, errlen, "cannot read the signing key");
        goto done;
    }
    if ((key = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL)) == NULL) {
        x509_openssl_error(err, errlen, "no PEM private key");
        goto done;
    }
    if (EVP_PKEY_get_base_id(key) != EVP_PKEY_RSA) {
        snprintf(err, errlen, "the signing key is not an RSA key");
        goto done;
    }
    if ((ctx = EVP_MD_CTX_new()) == NULL || EVP_DigestSignInit(ctx, NULL, md, NULL, key) != 1 ||
        EVP_DigestSign(ctx, NULL, &siglen, (const unsigned char *)tbs, tbslen) != 1 ||
        (sig = malloc(siglen)) == NULL ||
        EVP_DigestSign(ctx, sig, &siglen, (const unsigned char *)tbs, tbslen) != 1 ||
        siglen > INT_MAX / 2) {
        x509_openssl_error(err, errlen, "cannot sign");
        goto done;
    }
    if ((b64 = malloc((siglen + 2) / 3 * 4 + 1)) == NULL) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    EVP_EncodeBlock((unsigned char *)b64, sig, (int)siglen);
done:
    EVP_MD_CTX_free(ctx);
    EVP_PKEY_free(key);
    BIO_free(bio);
    free(sig);
    free(tbs);
    ERR_clear_error();
    return b64;
}
