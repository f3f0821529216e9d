/*
 * http.h -- the inside of the intake layer, shared by http.c (listeners, connections, request
 * deadlines, replies, framing), hooks.c (the webhook route), admin.c (the admin route)
 * and api.c (the console and its API on the admin listener). Private to src/intake; these four
 * files are the only ones that include microhttpd.h.
 */
#ifndef CERTHOOK_HTTP_H
#define CERTHOOK_HTTP_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include <lua.h>
#include <microhttpd.h>

#include "intake/intake.h"

struct parser {
    struct parser *next;
    lua_State *L;
    struct pool *pool; /* L's memory */
};

struct listener {
    struct listener *next; /* in the retired list */
    struct intake *in;
    struct MHD_Daemon *daemon;
    char *addr;
    int hooks;           /* the webhook listener (else admin) */
    int tls;             /* HTTPS */
    atomic_int running;  /* started: MHD's messages are about clients from now on */
    char why[256];       /* MHD's last message while it started */
    atomic_int inflight;  /* requests with state, until MHD completes them */
    atomic_int suspended; /* of those, waiting for the journal */
};

/* A connection, for the request deadline: a client that has not sent a whole request within
 * limits.request_timeout of connecting (or of its previous reply) is cut off -- MHD's own
 * timeout only counts silence, which a client trickling bytes never lets happen. */
struct conn {
    struct conn *prev, *next;
    int fd;          /* a dup of the socket: shutdown() through it never hits a reused fd */
    double deadline; /* time_mono(); 0 while the request is ours (complete, being answered) */
    struct MHD_Connection *c;
    struct listener *l;
    int seen;        /* the access handler has the current request (answer_bad_length) */
};

struct intake {
    _Atomic(const struct intake_config *) cfg;
    struct journal *j;
    struct dispatch *d;
    struct listener *hooks, *admin;
    struct listener *retired; /* admin listeners replaced by a reload, stopped later */
    pthread_mutex_t mu;
    struct parser *parsers; /* one per intake thread; closed in intake_stop */
    atomic_int closed;
    pthread_mutex_t cmu; /* guards conns and the deadlines */
    pthread_cond_t stop;
    struct conn conns;   /* list head */
    pthread_t sweeper;
    int sweeping;        /* the sweeper runs; cleared (under cmu) to stop it */
};

/* ---- http.c ---------------------------------------------------------------------------------- */

/* The calling thread's parser state, created on first use (NULL: out of memory, logged). */
lua_State *http_parser_state(struct intake *in, const struct intake_config *cfg);
struct conn *http_conn_of(struct MHD_Connection *c);
/* The request on c is complete (ours == 1: no deadline while it is answered) or answered (the
 * next one must arrive within request_timeout). */
void http_set_deadline(struct intake *in, struct MHD_Connection *c, int ours);
/* The first access-handler call of a request, on either listener: the request is the
 * handler's from now on, and one whose framing is wrong is answered and its connection
 * closed. Returns 1 when it answered (*rc), else 0 and the head's size. */
int http_refuse_framing(struct intake *in, struct MHD_Connection *c, const char *url,
                        const char *method, const char *version, size_t *size,
                        enum MHD_Result *rc);
/* Where the body of the request on c begins in libmicrohttpd's read buffer, its method being
 * `method` (the first access-handler call's): NULL if unknown. */
const char *http_body_start(struct MHD_Connection *c, const char *method);
/* The size declared by the chunk-size line in front of upload, the data of an access-handler
 * call on a chunked request whose body begins at body: 1 with *size (saturated), or 0 when the
 * line is not in front of it (see http.c). */
int http_chunk_size(const char *body, const char *upload, uint64_t *size);
/* The status the last reply of this thread's current access-handler call queued (0: none). */
extern __thread unsigned http_replied;
enum MHD_Result http_reply(struct MHD_Connection *c, unsigned status, const char *body, size_t n,
                           const char *header, const char *value);
/* {"error": code, "message": msg}, not logged: what was refused is logged where it was decided
 * (a failed reload). */
enum MHD_Result http_reply_message(struct MHD_Connection *c, unsigned status, const char *code,
                                   const char *msg);
/* {"error": code, "message": ...}; rejected requests are logged with the reason. */
enum MHD_Result http_reply_error(struct MHD_Connection *c, unsigned status, const char *code,
                                 const char *source, const char *header, const char *value,
                                 const char *fmt, ...) __attribute__((format(printf, 7, 8)));
/* Writes a whole error reply on k's socket past libmicrohttpd and shuts it down (a reply MHD
 * cannot queue: in the middle of a body). Only on the thread that runs k's connection. */
void http_raw_reply(struct conn *k, unsigned status, const char *code, const char *msg);
void http_log_rejected(unsigned status, const char *source, const char *msg);

/* ---- hooks.c: POST /hooks/<source> ---------------------------------------------------------------- */

enum MHD_Result hooks_access(void *cls, struct MHD_Connection *c, const char *url,
                             const char *method, const char *version, const char *upload,
                             size_t *upload_size, void **req_cls);
/* MHD_OPTION_NOTIFY_COMPLETED of both listeners: frees a webhook request's state. */
void hooks_completed(void *cls, struct MHD_Connection *c, void **req_cls,
                     enum MHD_RequestTerminationCode toe);
/* A new connection: refused past limits.max_connections. */
enum MHD_Result hooks_accept(void *cls, const struct sockaddr *addr, socklen_t len);

/* ---- admin.c: /healthz, /readyz, /metrics, POST /reload ------------------------------------------- */

enum MHD_Result admin_access(void *cls, struct MHD_Connection *c, const char *url,
                             const char *method, const char *version, const char *upload,
                             size_t *upload_size, void **req_cls);
/* From hooks_completed: frees an admin request's state (*req_cls, not the listener). */
void admin_completed(struct listener *l, void **req_cls);

/* ---- api.c: the console (/, /console.js, /console.css) and its API (/api/...) ----------------- */

int api_asset(const char *url); /* whether url is one of the page's files */
enum MHD_Result api_serve_asset(struct MHD_Connection *c, const char *url, int preload);
/* A request to /api/... that admin.c let through; who: the name of the token it carried
 * ("admin"), or "local" (no token configured). */
enum MHD_Result api_route(struct intake *in, struct MHD_Connection *c, const char *url,
                          const char *method, const char *who);

#endif
