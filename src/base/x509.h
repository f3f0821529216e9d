/*
 * x509.h -- the facts of an X.509 certificate: names, serial, fingerprint, validity, DNS names.
 *
 * Pure functions over OpenSSL libcrypto; no Lua, no I/O. Providers use them on certificates
 * that payloads carry (DigiCert's certificate_chain, SNS signing certificates), the TLS probe
 * on the certificate a server presents.
 */
#ifndef CERTHOOK_BASE_X509_H
#define CERTHOOK_BASE_X509_H

#include <stddef.h>

/* Writes why OpenSSL failed (its first queued reason, else `what` alone) into err and empties
 * OpenSSL's error queue. */
void x509_openssl_error(char *err, size_t errlen, const char *what);

struct x509_facts {
    char subject[256], issuer[256]; /* one line, RFC 2253 order: "CN=example.com,O=Example" */
    char serial_number[80];         /* hex, lower-case, no colons; "-" first when negative */
    char fingerprint_sha256[65];    /* hex, lower-case, of the DER encoding */
    double not_before, not_after;   /* epoch seconds */
    char **domains;                 /* the DNS subjectAltNames, else the subject CN; malloc'd */
    size_t ndomains;
};

/* The facts of the first certificate in a PEM text of n bytes (other PEM blocks before it,
 * a key for instance, are skipped; CRLF line ends are fine). Returns 0 and fills *out, which
 * the caller releases with x509_facts_free; or -1 with a message in err, and *out zeroed (no
 * need to free it). A subject or issuer longer than 255 bytes is cut at a character boundary;
 * a serial number of more than 39 bytes (RFC 5280 allows 20) is left empty. */
int x509_facts_pem(const char *pem, size_t n, struct x509_facts *out, char *err, size_t errlen);

/* The same from one DER-encoded certificate of exactly n bytes (trailing bytes are refused). */
int x509_facts_der(const unsigned char *der, size_t n, struct x509_facts *out, char *err,
                   size_t errlen);

/* Frees f->domains and zeroes *f; safe on a zeroed struct and to call twice. */
void x509_facts_free(struct x509_facts *f);

/* Whether the chain a server presented (n PEM certificates, the leaf first, as pem[i] of
 * len[i] bytes) verifies at time `at` (epoch seconds; 0: now) against the trusted CAs --
 * ca_file (PEM), else the system's -- and its leaf is valid for host (a name or an IP
 * address; NULL: not checked). 1: verified; 0: not, with the reason in err; -1: the chain
 * could not be read (err says why). */
int x509_verify_chain(const char *const *pem, const size_t *len, size_t n, const char *host,
                      const char *ca_file, double at, char *err, size_t errlen);

#endif
