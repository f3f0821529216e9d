/* tls.h -- the GnuTLS certificate callback of tls.c, for intake.c (the rest is in certhook.h). */
#ifndef CERTHOOK_TLS_H
#define CERTHOOK_TLS_H

#include <gnutls/abstract.h>

/* gnutls_certificate_retrieve_function2: presents the credentials of tls_use. */
int tls_retrieve(gnutls_session_t session, const gnutls_datum_t *req_ca_rdn, int nreqs,
                 const gnutls_pk_algorithm_t *pk_algos, int pk_algos_length,
                 gnutls_pcert_st **pcert, unsigned int *pcert_length, gnutls_privkey_t *privkey);

#endif
