/*
 * intake.h -- what the intake layer offers: the HTTP listeners (DESIGN §9) -- the webhook
 * route (hooks.c) and the admin route (admin.c) on libmicrohttpd (http.c, the only file that
 * includes it besides them) -- and HTTPS for the webhook listener (tls.c).
 */
#ifndef CERTHOOK_INTAKE_H
#define CERTHOOK_INTAKE_H

#include "base/base.h"

struct dispatch;
struct journal;
struct source;
struct tls_creds;

/* What the listeners are told by the configuration (config.c fills it). */
struct intake_config {
    char *listen, *admin;
    struct tls_creds *tls;         /* the webhook listener's certificate and key; NULL: HTTP */
    char *tls_priority;            /* its GnuTLS priority string (tls_priority) */
    unsigned char admin_token[32]; /* SHA-256 of the admin bearer token, when has_admin_token */
    int has_admin_token;
    unsigned char read_token[32];  /* admin_read_token's: may look (GET), not change */
    int has_read_token;
    double watch_before[16];       /* watchdog.before (days), for the console's bars */
    size_t nwatch_before;
    size_t max_body, max_header;   /* bytes */
    size_t max_backlog;            /* accepted events waiting for a handler before 503 */
    unsigned max_connections, request_timeout; /* request_timeout: seconds */
    unsigned max_connections_per_ip; /* from one client address; 0: no bound */
    const struct source *sources;
    size_t nsources;
    const char *lua_path, *lua_cpath; /* of the parser states */
};

struct intake;

int intake_start(struct intake **ip, const struct intake_config *c, struct journal *j,
                 struct dispatch *d, char *err, size_t errlen);
/* Applies a new configuration: new requests use c (which must outlive them); a listener
 * whose address changed is replaced. 0, or -1 with err and nothing changed. */
int intake_reconfigure(struct intake *in, const struct intake_config *c, char *err,
                       size_t errlen);
void intake_close_gate(struct intake *in); /* new requests get 503 from now on */
void intake_stop(struct intake *in);       /* waits for requests in flight */
void intake_addresses(struct intake *in, char *listen, char *admin, size_t n);
/* Whether host[:port] (n bytes; [v6]:port) names this machine's loopback: localhost,
 * 127.0.0.0/8, [::1]. */
int intake_loopback_host(const char *s, size_t n);

/* Appends the versions of the libraries intake uses ("libmicrohttpd ..., GnuTLS ..."). */
void intake_versions(struct buf *b);

/* ---- tls.c ------------------------------------------------------------------------------------ */

/* Reads a PEM certificate chain and its private key. NULL with a message on failure. */
struct tls_creds *tls_load(const char *cert, const char *key, char *err, size_t errlen);
void tls_free(struct tls_creds *t);
/* Makes t the credentials new handshakes present (a reload swaps them; t must outlive the
 * handshakes that use it -- configurations live until exit). */
void tls_use(struct tls_creds *t);
/* The GnuTLS priority string of tls = { ciphers = ..., min_version = "1.2" | "1.3" }: ciphers
 * (a priority string; NULL: tls_default_ciphers, Mozilla's intermediate profile) with the TLS
 * versions from min_version on. Checked by GnuTLS; malloc'd, or NULL with a message. */
char *tls_priority(const char *ciphers, const char *min_version, char *err, size_t errlen);
extern const char tls_default_ciphers[];

#endif
