/*
 * x509.c -- the facts of an X.509 certificate (x509.h) with OpenSSL libcrypto.
 *
 * Parses one certificate (PEM or DER) and copies out what handlers and the inventory use:
 * subject and issuer on one line, serial and SHA-256 fingerprint in lower-case hex, validity
 * in epoch seconds, DNS names. Nothing here keeps OpenSSL objects past a call, and every
 * call leaves OpenSSL's error queue empty, so the thread's next TLS or JWT check starts clean.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "x509.h"

static const char hexdigits[] = "0123456789abcdef";

static void hex(const unsigned char *p, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hexdigits[p[i] >> 4];
        out[2 * i + 1] = hexdigits[p[i] & 15];
    }
    out[2 * n] = '\0';
}

void x509_openssl_error(char *err, size_t errlen, const char *what)
{
    unsigned long e = ERR_peek_error();
    const char *reason = e != 0 ? ERR_reason_error_string(e) : NULL;
    if (reason != NULL)
        snprintf(err, errlen, "%s: %s", what, reason);
    else
        snprintf(err, errlen, "%s", what);
    ERR_clear_error();
}

/* The name on one line, most specific part first ("CN=a,O=b"), UTF-8 kept as is; cut at a
 * character boundary to fit out[cap]. */
static int name_line(const X509_NAME *name, char *out, size_t cap)
{
    BIO *bio = BIO_new(BIO_s_mem());
    char *p;
    long n;
    if (bio == NULL)
        return -1;
    if (X509_NAME_print_ex(bio, name, 0, XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB) < 0) {
        BIO_free(bio);
        return -1;
    }
    n = BIO_get_mem_data(bio, &p);
    if (n < 0)
        n = 0;
    if ((size_t)n >= cap) {
        n = (long)cap - 1;
        while (n > 0 && ((unsigned char)p[n] & 0xC0) == 0x80) /* p[n] continues a character */
            n--;
    }
    memcpy(out, p, (size_t)n);
    out[n] = '\0';
    BIO_free(bio);
    return 0;
}

static int epoch(const ASN1_TIME *t, double *out)
{
    struct tm tm;
    if (t == NULL || ASN1_TIME_to_tm(t, &tm) != 1)
        return -1;
    *out = (double)timegm(&tm);
    return 0;
}

static void serial_hex(const ASN1_INTEGER *serial, char *out, size_t cap)
{
    const unsigned char *p = ASN1_STRING_get0_data(serial);
    size_t n = (size_t)ASN1_STRING_length(serial);
    int neg = ASN1_STRING_type(serial) == V_ASN1_NEG_INTEGER;
    out[0] = '\0';
    if (n == 0) {
        snprintf(out, cap, "00");
        return;
    }
    if (2 * n + (size_t)neg + 1 > cap)
        return;
    if (neg)
        *out++ = '-';
    hex(p, n, out);
}

/* Appends a copy of the n bytes at s to f->domains; names holding a NUL byte (the old
 * "www.bank.com\0.evil.example" trick) are skipped, as are empty ones. */
static int add_domain(struct x509_facts *f, const unsigned char *s, int n)
{
    char **grown, *copy;
    if (n <= 0 || memchr(s, '\0', (size_t)n) != NULL)
        return 0;
    grown = realloc(f->domains, (f->ndomains + 1) * sizeof *grown);
    if (grown == NULL)
        return -1;
    f->domains = grown;
    if ((copy = malloc((size_t)n + 1)) == NULL)
        return -1;
    memcpy(copy, s, (size_t)n);
    copy[n] = '\0';
    f->domains[f->ndomains++] = copy;
    return 0;
}

static int domains(X509 *x, struct x509_facts *f)
{
    GENERAL_NAMES *names = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    int rc = 0;
    for (int i = 0; names != NULL && i < sk_GENERAL_NAME_num(names) && rc == 0; i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(names, i);
        if (g->type == GEN_DNS)
            rc = add_domain(f, ASN1_STRING_get0_data(g->d.dNSName),
                            ASN1_STRING_length(g->d.dNSName));
    }
    GENERAL_NAMES_free(names);
    if (rc == 0 && f->ndomains == 0) { /* no DNS name: the subject's (last) CN */
        const X509_NAME *subject = X509_get_subject_name(x);
        int at = -1, next;
        while ((next = X509_NAME_get_index_by_NID(subject, NID_commonName, at)) >= 0)
            at = next;
        if (at >= 0) {
            unsigned char *utf8 = NULL;
            const X509_NAME_ENTRY *cn = X509_NAME_get_entry(subject, at);
            int n = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(cn));
            if (n >= 0)
                rc = add_domain(f, utf8, n);
            OPENSSL_free(utf8);
        }
    }
    return rc;
}

/* Fills *out from x; on failure *out is zeroed. */
static int facts(X509 *x, struct x509_facts *out, char *err, size_t errlen)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (name_line(X509_get_subject_name(x), out->subject, sizeof out->subject) != 0 ||
        name_line(X509_get_issuer_name(x), out->issuer, sizeof out->issuer) != 0) {
        x509_openssl_error(err, errlen, "certificate names");
        goto fail;
    }
    serial_hex(X509_get0_serialNumber(x), out->serial_number, sizeof out->serial_number);
    if (X509_digest(x, EVP_sha256(), md, &mdlen) != 1 || mdlen != 32) {
        x509_openssl_error(err, errlen, "certificate fingerprint");
        goto fail;
    }
    hex(md, mdlen, out->fingerprint_sha256);
    if (epoch(X509_get0_notBefore(x), &out->not_before) != 0 ||
        epoch(X509_get0_notAfter(x), &out->not_after) != 0) {
        snprintf(err, errlen, "certificate validity: not a valid time");
        goto fail;
    }
    if (domains(x, out) != 0) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    ERR_clear_error();
    return 0;
fail:
    ERR_clear_error();
    x509_facts_free(out);
    return -1;
}

int x509_facts_pem(const char *pem, size_t n, struct x509_facts *out, char *err, size_t errlen)
{
    BIO *bio = NULL;
    X509 *x = NULL;
    int rc = -1;
    memset(out, 0, sizeof *out);
    if (n > INT_MAX) {
        snprintf(err, errlen, "PEM text too long");
        return -1;
    }
    if ((bio = BIO_new_mem_buf(pem, (int)n)) == NULL) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    if ((x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) == NULL) {
        x509_openssl_error(err, errlen, "no PEM certificate");
        goto done;
    }
    rc = facts(x, out, err, errlen);
done:
    X509_free(x);
    BIO_free(bio);
    ERR_clear_error();
    return rc;
}

int x509_facts_der(const unsigned char *der, size_t n, struct x509_facts *out, char *err,
                   size_t errlen)
{
    const unsigned char *p = der;
    X509 *x;
    int rc;
    memset(out, 0, sizeof *out);
    if (n > LONG_MAX) {
        snprintf(err, errlen, "DER certificate too long");
        return -1;
    }
    if ((x = d2i_X509(NULL, &p, (long)n)) == NULL) {
        x509_openssl_error(err, errlen, "not a DER certificate");
        return -1;
    }
    if (p != der + n) {
        snprintf(err, errlen, "%zu bytes after the DER certificate", (size_t)(der + n - p));
        X509_free(x);
        ERR_clear_error();
        return -1;
    }
    rc = facts(x, out, err, errlen);
    X509_free(x);
    return rc;
}

void x509_facts_free(struct x509_facts *f)
{
    for (size_t i = 0; i < f->ndomains; i++)
        free(f->domains[i]);
    free(f->domains);
    memset(f, 0, sizeof *f);
}

/* The certificate of a PEM text, or NULL. */
static X509 *read_pem(const char *pem, size_t n)
{
    if (n > INT_MAX)
        return NULL;
    BIO *bio = BIO_new_mem_buf(pem, (int)n);
    X509 *x = bio ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);
    return x;
}

int x509_verify_chain(const char *const *pem, const size_t *len, size_t n, const char *host,
                      const char *ca_file, double at, char *err, size_t errlen)
{
    X509 *leaf = NULL;
    STACK_OF(X509) *untrusted = sk_X509_new_null();
    X509_STORE *store = X509_STORE_new();
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    int rc = -1;
    if (n == 0 || untrusted == NULL || store == NULL || ctx == NULL) {
        snprintf(err, errlen, n == 0 ? "no certificate" : "out of memory");
        goto done;
    }
    if ((leaf = read_pem(pem[0], len[0])) == NULL) {
        x509_openssl_error(err, errlen, "the server's certificate does not parse");
        goto done;
    }
    for (size_t i = 1; i < n; i++) {
        X509 *x = read_pem(pem[i], len[i]);
        if (x == NULL || !sk_X509_push(untrusted, x)) {
            X509_free(x);
            x509_openssl_error(err, errlen, "a certificate of the chain does not parse");
            goto done;
        }
    }
    if ((ca_file ? X509_STORE_load_file(store, ca_file) : X509_STORE_set_default_paths(store)) != 1) {
        x509_openssl_error(err, errlen, ca_file ? "cannot read ca_file" : "cannot read the system's CAs");
        goto done;
    }
    if (X509_STORE_CTX_init(ctx, store, leaf, untrusted) != 1) {
        x509_openssl_error(err, errlen, "verification");
        goto done;
    }
    X509_VERIFY_PARAM *vp = X509_STORE_CTX_get0_param(ctx);
    if (at > 0)
        X509_VERIFY_PARAM_set_time(vp, (time_t)at);
    X509_VERIFY_PARAM_set_purpose(vp, X509_PURPOSE_SSL_SERVER);
    if (host != NULL && (X509_VERIFY_PARAM_set1_ip_asc(vp, host) != 1 &&
                         X509_VERIFY_PARAM_set1_host(vp, host, 0) != 1)) {
        snprintf(err, errlen, "not a host name: %s", host);
        goto done;
    }
    ERR_clear_error();
    if (X509_verify_cert(ctx) == 1) {
        rc = 1;
    } else {
        int e = X509_STORE_CTX_get_error(ctx);
        snprintf(err, errlen, "%s", e == X509_V_ERR_HOSTNAME_MISMATCH || e == X509_V_ERR_IP_ADDRESS_MISMATCH
                                        ? "the certificate is not valid for the host name"
                                        : X509_verify_cert_error_string(e));
        rc = 0;
    }
done:
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(store);
    sk_X509_pop_free(untrusted, X509_free);
    X509_free(leaf);
    ERR_clear_error();
    return rc;
}
