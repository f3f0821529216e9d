/*
 * tls.c -- HTTPS on the webhook listener: the certificate and key, through libmicrohttpd's
 * GnuTLS support.
 *
 * The listener asks for its certificate on every handshake (MHD_OPTION_HTTPS_CERT_CALLBACK
 * -> tls_retrieve), and gets whatever tls_use made current: a reload (SIGHUP) that reads a
 * renewed certificate swaps it in without restarting the listener, and a certificate that
 * does not load or does not match its key fails the reload and changes nothing. Loaded
 * credentials are never freed while the server runs (they belong to a configuration, and
 * configurations live until exit), so a handshake never sees them go.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <gnutls/abstract.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#include "intake/intake.h"
#include "intake/tls.h"

#define MAX_CHAIN 16

struct tls_creds {
    gnutls_pcert_st chain[MAX_CHAIN];
    unsigned n;
    gnutls_privkey_t key;
};

/* Mozilla's "intermediate" profile in GnuTLS terms: forward-secret key exchange only (ECDHE,
 * DHE; no static RSA) and AEAD ciphers only (AES-GCM, ChaCha20-Poly1305; no CBC, no SHA-1
 * MACs). The versions are appended by tls_priority. */
const char tls_default_ciphers[] =
    "SECURE128:-KX-ALL:+ECDHE-ECDSA:+ECDHE-RSA:+DHE-RSA:-CIPHER-ALL:+AES-128-GCM:+AES-256-GCM:"
    "+CHACHA20-POLY1305:-MAC-ALL:+AEAD";

char *tls_priority(const char *ciphers, const char *min_version, char *err, size_t errlen)
{
    struct buf b;
    const char *at = NULL;
    gnutls_priority_t check;
    if (strcmp(min_version, "1.2") != 0 && strcmp(min_version, "1.3") != 0) {
        snprintf(err, errlen, "tls.min_version must be \"1.2\" or \"1.3\"");
        return NULL;
    }
    buf_init(&b);
    buf_printf(&b, "%s:-VERS-ALL:+VERS-TLS1.3%s", ciphers ? ciphers : tls_default_ciphers,
               strcmp(min_version, "1.2") == 0 ? ":+VERS-TLS1.2" : "");
    char *p = buf_take(&b);
    if (p == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    int rc = gnutls_priority_init(&check, p, &at);
    if (rc < 0) {
        snprintf(err, errlen, "tls.ciphers: GnuTLS does not take this priority string (%s, at "
                 "\"%.40s\"): see https://gnutls.org/manual/html_node/Priority-Strings.html",
                 gnutls_strerror(rc), at ? at : "?");
        free(p);
        return NULL;
    }
    gnutls_priority_deinit(check);
    return p;
}

static _Atomic(struct tls_creds *) current;

static int read_all(const char *path, gnutls_datum_t *out, char *err, size_t errlen)
{
    if (access(path, R_OK) != 0) {
        snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
        return -1;
    }
    int rc = gnutls_load_file(path, out);
    if (rc < 0)
        snprintf(err, errlen, "cannot read %s: %s", path, gnutls_strerror(rc));
    return rc < 0 ? -1 : 0;
}

struct tls_creds *tls_load(const char *cert, const char *key, char *err, size_t errlen)
{
    gnutls_datum_t c = {NULL, 0}, k = {NULL, 0};
    gnutls_certificate_credentials_t check = NULL;
    struct tls_creds *t = calloc(1, sizeof *t);
    int rc;
    if (t == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (read_all(cert, &c, err, errlen) != 0 || read_all(key, &k, err, errlen) != 0)
        goto fail;
    /* The library's own check that the key belongs to the certificate. */
    if ((rc = gnutls_certificate_allocate_credentials(&check)) < 0 ||
        (rc = gnutls_certificate_set_x509_key_mem2(check, &c, &k, GNUTLS_X509_FMT_PEM, NULL,
                                                   0)) < 0) {
        snprintf(err, errlen, "%s, %s: %s", cert, key, gnutls_strerror(rc));
        goto fail;
    }
    t->n = MAX_CHAIN;
    if ((rc = gnutls_pcert_list_import_x509_raw(t->chain, &t->n, &c, GNUTLS_X509_FMT_PEM, 0)) <
        0) {
        t->n = 0;
        snprintf(err, errlen, "%s: %s", cert, gnutls_strerror(rc));
        goto fail;
    }
    if ((rc = gnutls_privkey_init(&t->key)) < 0 ||
        (rc = gnutls_privkey_import_x509_raw(t->key, &k, GNUTLS_X509_FMT_PEM, NULL, 0)) < 0) {
        snprintf(err, errlen, "%s: %s", key, gnutls_strerror(rc));
        goto fail;
    }
    gnutls_certificate_free_credentials(check);
    gnutls_free(c.data);
    gnutls_memset(k.data, 0, k.size);
    gnutls_free(k.data);
    return t;
fail:
    if (check != NULL)
        gnutls_certificate_free_credentials(check);
    gnutls_free(c.data);
    if (k.data != NULL)
        gnutls_memset(k.data, 0, k.size);
    gnutls_free(k.data);
    tls_free(t);
    return NULL;
}

void tls_free(struct tls_creds *t)
{
    if (t == NULL)
        return;
    for (unsigned i = 0; i < t->n; i++)
        gnutls_pcert_deinit(&t->chain[i]);
    if (t->key != NULL)
        gnutls_privkey_deinit(t->key);
    free(t);
}

void tls_use(struct tls_creds *t)
{
    atomic_store(&current, t);
}

int tls_retrieve(gnutls_session_t session, const gnutls_datum_t *req_ca_rdn, int nreqs,
                 const gnutls_pk_algorithm_t *pk_algos, int pk_algos_length,
                 gnutls_pcert_st **pcert, unsigned int *pcert_length, gnutls_privkey_t *privkey)
{
    struct tls_creds *t = atomic_load(&current);
    (void)session, (void)req_ca_rdn, (void)nreqs, (void)pk_algos, (void)pk_algos_length;
    if (t == NULL)
        return -1;
    *pcert = t->chain;
    *pcert_length = t->n;
    *privkey = t->key;
    return 0;
}
