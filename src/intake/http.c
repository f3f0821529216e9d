/*
 * http.c -- the HTTP listeners (DESIGN §9) on libmicrohttpd, and what every request goes
 * through before its route (hooks.c, admin.c) sees it: connection limits, a deadline for the
 * whole request (a sweeper thread cuts off clients that trickle bytes), framing and NUL checks
 * of the head (RFC 9112 §6), replies. The configuration can change while requests run (a
 * reload): each request keeps the one it started with; a listener whose address changed is
 * replaced, the old one retired once the requests it holds are answered. Limits are read per
 * connection, so they change without restarting a listener.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gnutls/gnutls.h>

#include "intake/http.h"
#include "intake/tls.h"
#include "lua/api.h"

static __thread struct parser *thread_parser;

/* The calling thread's parser state, created on first use. */
lua_State *http_parser_state(struct intake *in, const struct intake_config *cfg)
{
    char err[256];
    if (thread_parser != NULL)
        return thread_parser->L;
    struct parser *p = calloc(1, sizeof *p);
    if (p == NULL || (p->pool = pool_new()) == NULL) {
        free(p);
        return NULL;
    }
    p->L = module_newstate(cfg->lua_path, cfg->lua_cpath, pool_alloc, p->pool, err, sizeof err);
    if (p->L == NULL) {
        log_msg(LOG_ERROR, "cannot create a parser state: %s", err);
        pool_free(p->pool);
        free(p);
        return NULL;
    }
    lua_gc(p->L, LUA_GCGEN, 0, 0);
    pthread_mutex_lock(&in->mu);
    p->next = in->parsers;
    in->parsers = p;
    pthread_mutex_unlock(&in->mu);
    thread_parser = p;
    return p->L;
}

/* ---- request deadlines ------------------------------------------------------------------- */

static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    struct listener *l = cls;
    struct intake *in = l->in;
    struct conn *k = *socket_context;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *info =
            MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (info == NULL || (k = calloc(1, sizeof *k)) == NULL)
            return;
        k->fd = fcntl(info->connect_fd, F_DUPFD_CLOEXEC, 0);
        if (k->fd < 0) { /* out of descriptors: untracked, MHD's idle timeout still holds */
            free(k);
            return;
        }
        k->c = c;
        k->l = l;
        pthread_mutex_lock(&in->cmu);
        k->deadline = time_mono() + atomic_load(&in->cfg)->request_timeout;
        k->next = in->conns.next;
        k->prev = &in->conns;
        k->next->prev = k;
        in->conns.next = k;
        pthread_mutex_unlock(&in->cmu);
        *socket_context = k;
    } else if (k != NULL) {
        pthread_mutex_lock(&in->cmu);
        k->prev->next = k->next;
        k->next->prev = k->prev;
        pthread_mutex_unlock(&in->cmu);
        close(k->fd);
        free(k);
        *socket_context = NULL;
    }
}

struct conn *http_conn_of(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return info ? info->socket_context : NULL;
}

/* The request on c is complete (ours == 1: no deadline while it is answered) or answered (the
 * next one must arrive within request_timeout). */
void http_set_deadline(struct intake *in, struct MHD_Connection *c, int ours)
{
    struct conn *k = http_conn_of(c);
    if (k == NULL)
        return;
    pthread_mutex_lock(&in->cmu);
    k->deadline = ours ? 0 : time_mono() + atomic_load(&in->cfg)->request_timeout;
    if (!ours)
        k->seen = 0;
    pthread_mutex_unlock(&in->cmu);
}

/* The access handler has the request on c from now on. */
static void set_seen(struct intake *in, struct MHD_Connection *c)
{
    struct conn *k = http_conn_of(c);
    if (k == NULL)
        return;
    pthread_mutex_lock(&in->cmu);
    k->seen = 1;
    pthread_mutex_unlock(&in->cmu);
}

/* Cuts off the connections past their deadline, four times a second. */
static void *sweep(void *cls)
{
    struct intake *in = cls;
    pthread_mutex_lock(&in->cmu);
    while (in->sweeping) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += 250000000;
        if (ts.tv_nsec >= 1000000000)
            ts.tv_sec++, ts.tv_nsec -= 1000000000;
        pthread_cond_timedwait(&in->stop, &in->cmu, &ts);
        double now = time_mono();
        unsigned long n = 0;
        for (struct conn *k = in->conns.next; k != &in->conns; k = k->next) {
            if (k->deadline > 0 && now > k->deadline) {
                shutdown(k->fd, SHUT_RDWR); /* MHD reads the end and closes it */
                k->deadline = 0;
                n++;
            }
        }
        if (n > 0) { /* logged without the lock: a blocked stderr must not block accepts */
            metrics_add(M_CUT_OFF, (double)n);
            pthread_mutex_unlock(&in->cmu);
            log_msg(LOG_INFO, "closed %lu connection%s that sent no whole request within "
                              "limits.request_timeout (%us)",
                    n, n == 1 ? "" : "s", atomic_load(&in->cfg)->request_timeout);
            pthread_mutex_lock(&in->cmu);
        }
    }
    pthread_mutex_unlock(&in->cmu);
    return NULL;
}

/* ---- replies ------------------------------------------------------------------------------ */

/* The status http_reply() queued during the current access-handler call (0: none): what hooks.c
 * counts. Each listener has its own thread. */
__thread unsigned http_replied;
/* Set before a reply whose request cannot be trusted to have ended where it says (framing):
 * the reply closes the connection. */
static __thread int reply_closes;

enum MHD_Result http_reply(struct MHD_Connection *c, unsigned status, const char *body, size_t n,
                           const char *header, const char *value)
{
    http_replied = status;
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(n, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (resp == NULL)
        return MHD_NO;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    if (header != NULL)
        MHD_add_response_header(resp, header, value);
    if (reply_closes)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    reply_closes = 0;
    enum MHD_Result rc = MHD_queue_response(c, status, resp);
    MHD_destroy_response(resp);
    return rc;
}

/* {"error": code, "message": msg} into b. */
static void error_body(struct buf *b, const char *code, const char *msg)
{
    buf_printf(b, "{\"error\":\"%s\",\"message\":", code);
    buf_json_str(b, msg, strlen(msg));
    buf_adds(b, "}");
}

void http_log_rejected(unsigned status, const char *source, const char *msg)
{
    struct log_line l;
    log_begin(&l, status >= 500 ? LOG_WARN : LOG_INFO, "request rejected");
    log_num(&l, "status", status);
    log_str(&l, "source", source);
    log_str(&l, "reason", msg);
    log_end(&l);
}

/* Also for the cases where libmicrohttpd would send a broken reply (answer_bad_length). */
void http_raw_reply(struct conn *k, unsigned status, const char *code, const char *msg)
{
    struct buf b, body;
    buf_init(&b);
    buf_init(&body);
    error_body(&body, code, msg);
    buf_printf(&b, "HTTP/1.1 %u %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                   "Connection: close\r\n\r\n", status, MHD_get_reason_phrase_for(status), body.n);
    buf_add(&b, body.p ? body.p : "", body.n);
    if (b.p != NULL) {
        const union MHD_ConnectionInfo *tls =
            k->l->tls ? MHD_get_connection_info(k->c, MHD_CONNECTION_INFO_GNUTLS_SESSION) : NULL;
        if (tls != NULL && tls->tls_session != NULL)
            (void)gnutls_record_send(tls->tls_session, b.p, b.n);
        else if (!k->l->tls)
            (void)send(k->fd, b.p, b.n, MSG_NOSIGNAL | MSG_DONTWAIT);
    }
    buf_free(&b);
    buf_free(&body);
    shutdown(k->fd, SHUT_RDWR);
}

enum MHD_Result http_reply_message(struct MHD_Connection *c, unsigned status, const char *code,
                                   const char *msg)
{
    struct buf b;
    buf_init(&b);
    error_body(&b, code, msg);
    enum MHD_Result rc = b.p ? http_reply(c, status, b.p, b.n, NULL, NULL) : MHD_NO;
    buf_free(&b);
    return rc;
}

enum MHD_Result http_reply_error(struct MHD_Connection *c, unsigned status, const char *code,
                                 const char *source, const char *header, const char *value,
                                 const char *fmt, ...)
{
    char msg[2400];
    struct buf b;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    buf_init(&b);
    error_body(&b, code, msg);
    enum MHD_Result rc = b.p ? http_reply(c, status, b.p, b.n, header, value) : MHD_NO;
    buf_free(&b);
    http_log_rejected(status, source, msg);
    return rc;
}

/* ---- the request head -------------------------------------------------------------------- */

/* What the headers say about the request's size and framing, and the strings libmicrohttpd
 * made of the request line and headers (to find bytes they do not show: see head_has_nul). */
struct head {
    size_t size;          /* request line and headers, as sent (near enough) */
    unsigned te, cl;      /* Transfer-Encoding and Content-Length headers */
    const char *te_value;
    const char **strs;    /* method, url, version, then each key and value */
    size_t nstrs, cap;
    int oom;              /* strs misses some: the NUL check refuses, it never misses one */
};

static void head_add(struct head *h, const char *s)
{
    if (s == NULL)
        return;
    if (h->nstrs == h->cap) {
        size_t cap = h->cap ? 2 * h->cap : 64;
        const char **p = realloc(h->strs, cap * sizeof *p);
        if (p == NULL) {
            h->oom = 1;
            return;
        }
        h->strs = p;
        h->cap = cap;
    }
    h->strs[h->nstrs++] = s;
}

static enum MHD_Result head_value(void *cls, enum MHD_ValueKind kind, const char *key,
                                  const char *value)
{
    struct head *h = cls;
    head_add(h, key);
    head_add(h, value);
    if (kind != MHD_HEADER_KIND)
        return MHD_YES;
    h->size += strlen(key) + (value ? strlen(value) : 0) + 4; /* "k: v\r\n" */
    if (strcasecmp(key, MHD_HTTP_HEADER_TRANSFER_ENCODING) == 0) {
        h->te++;
        h->te_value = value;
    } else if (strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH) == 0) {
        h->cl++;
    }
    return MHD_YES;
}

static int by_address(const void *a, const void *b)
{
    const char *x = *(const char *const *)a, *y = *(const char *const *)b;
    return (x > y) - (x < y);
}

/* Whether the request line or a header held a NUL byte. libmicrohttpd (0.9.75) makes C strings
 * of them and cuts each at its first NUL: "cf-webhook-auth: S3CRET\0junk" arrives as S3CRET,
 * "/hooks/cf\0.evil" as /hooks/cf. It splits the head in place, in one buffer that starts at
 * the method and holds header_size bytes, writing NULs over the separators (space, '?', ':',
 * CR, LF); so between the end of one of its strings and the start of the next only NULs and
 * blanks are there -- anything else is what a NUL hid. (Decoded %xx escapes leave no bytes
 * behind: see unescape.) A header folded over lines is moved out of the buffer: refused too. */
static int head_has_nul(struct MHD_Connection *c, const char *method, struct head *h)
{
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_REQUEST_HEADER_SIZE);
    if (info == NULL || h->nstrs == 0 || h->oom)
        return 1;
    const char *end = method + info->header_size;
    qsort(h->strs, h->nstrs, sizeof *h->strs, by_address);
    for (size_t i = 0; i < h->nstrs; i++) {
        const char *s = h->strs[i];
        if (s < method || s >= end) {
            if (*s != '\0')
                return 1; /* a folded value */
            continue;     /* MHD's own "" (no version) */
        }
        const char *next = i + 1 < h->nstrs && h->strs[i + 1] < end ? h->strs[i + 1] : end;
        for (const char *p = s + strlen(s); p < next; p++)
            if (*p != '\0' && *p != ' ' && *p != '\t' && *p != '\r' && *p != '\n')
                return 1;
    }
    return 0;
}

/* Reads the head of the request on c. */
static void read_head(struct MHD_Connection *c, const char *url, const char *method,
                      const char *version, struct head *h)
{
    memset(h, 0, sizeof *h);
    h->size = strlen(method) + strlen(url) + 12;
    head_add(h, method);
    head_add(h, url);
    head_add(h, version);
    MHD_get_connection_values(c, MHD_HEADER_KIND | MHD_GET_ARGUMENT_KIND, head_value, h);
}

/* What is wrong with the framing of a request (RFC 9112 §6): a status and a message, or 0.
 * Such a request is answered and its connection closed: where its body ends is unknown. */
static unsigned bad_framing(struct MHD_Connection *c, const char *method, const char *version,
                            struct head *h, char *msg, size_t n)
{
    if (head_has_nul(c, method, h)) {
        snprintf(msg, n, "the request line or a header holds a NUL byte (or a header is "
                         "folded over lines)");
        return MHD_HTTP_BAD_REQUEST;
    }
    if (h->te > 0 && h->cl > 0) {
        snprintf(msg, n, "Content-Length with Transfer-Encoding: the body's end is ambiguous");
        return MHD_HTTP_BAD_REQUEST;
    }
    if (h->cl > 1) {
        snprintf(msg, n, "more than one Content-Length header");
        return MHD_HTTP_BAD_REQUEST;
    }
    if (h->te > 0 && strcmp(version, MHD_HTTP_VERSION_1_1) != 0) {
        snprintf(msg, n, "Transfer-Encoding in an %.20s request", version);
        return MHD_HTTP_BAD_REQUEST;
    }
    if (h->te > 1 || (h->te == 1 && strcasecmp(h->te_value, "chunked") != 0)) {
        snprintf(msg, n, "Transfer-Encoding %.60s is not supported: only chunked is",
                 h->te > 1 ? "given twice" : h->te_value);
        return MHD_HTTP_NOT_IMPLEMENTED;
    }
    return 0;
}

/* See answer_bad_length for why the request is marked seen. */
int http_refuse_framing(struct intake *in, struct MHD_Connection *c, const char *url,
                        const char *method, const char *version, size_t *size,
                        enum MHD_Result *rc)
{
    struct head h;
    char why[160];
    set_seen(in, c);
    read_head(c, url, method, version, &h);
    unsigned bad = bad_framing(c, method, version, &h, why, sizeof why);
    *size = h.size;
    free(h.strs);
    if (!bad)
        return 0;
    reply_closes = 1;
    *rc = http_reply_error(c, bad, bad == MHD_HTTP_NOT_IMPLEMENTED ? "not_implemented" : "bad_request",
                      NULL, NULL, NULL, "%s", why);
    return 1;
}

/* MHD_OPTION_UNESCAPE_CALLBACK: decodes %xx in place, as libmicrohttpd does, and clears the
 * bytes the string shrank by, so that head_has_nul sees nothing behind its end unless a
 * %00 put a NUL inside it. */
static size_t unescape(void *cls, struct MHD_Connection *c, char *s)
{
    (void)cls, (void)c;
    size_t n = strlen(s), m = MHD_http_unescape(s);
    memset(s + m, 0, n - m);
    return m;
}

/* ---- chunked bodies ------------------------------------------------------------------------- */

/* libmicrohttpd (0.9.75) reads a chunk-size line itself and hands over the chunk's data as it
 * arrives, without the size: a chunk that declares more than max_body would be waited for until
 * request_timeout. Its read buffer begins where the head ended (header_size bytes after the
 * method: see head_has_nul) and holds the stream's unprocessed bytes in order; each read is
 * processed from the buffer's start, a chunk's data handed over in one call right after its
 * size line. So data that does not start at the buffer's start has its size line in front of
 * it. Data at the start continues a chunk, or its line came alone in an earlier read and is
 * gone: then only the data is counted, as it comes. */
const char *http_body_start(struct MHD_Connection *c, const char *method)
{
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_REQUEST_HEADER_SIZE);
    return info != NULL ? method + info->header_size : NULL;
}

int http_chunk_size(const char *body, const char *upload, uint64_t *size)
{
    if (body == NULL || upload <= body || upload[-1] != '\n')
        return 0;
    const char *line = upload - 1; /* "<hex>[;extension]\r\n", after the previous line's \n */
    while (line > body && line[-1] != '\n')
        line--;
    uint64_t n = 0;
    int d;
    const char *p = line;
    for (; (d = hex_digit(*p)) >= 0; p++)
        n = n > UINT64_MAX >> 4 ? UINT64_MAX : n << 4 | (uint64_t)d;
    if (p == line)
        return 0;
    *size = n;
    return 1;
}

/* ---- listeners ---------------------------------------------------------------------------------- */

/* MHD's messages: while a listener starts, why it cannot; once it runs, mostly what clients
 * did (hung up, sent headers too big), which is debug detail -- except running out of
 * descriptors or memory to accept with. */
/* libmicrohttpd 0.9.75 answers a malformed or huge Content-Length itself, before the access
 * handler is called, with its status line and headers written twice (parse_connection_headers'
 * caller overwrites the state its error reply set). It says so in a message first, on the
 * thread that runs the connection: that connection is the one of this listener whose head is
 * complete (MHD tells its size) and which the access handler has not seen. It gets a clean
 * reply here and is shut down, so MHD's broken one never goes out. */
static void answer_bad_length(struct listener *l, const char *msg)
{
    struct intake *in = l->in;
    struct conn *found = NULL;
    int n = 0;
    pthread_mutex_lock(&in->cmu);
    for (struct conn *k = in->conns.next; k != &in->conns; k = k->next)
        if (k->l == l && !k->seen &&
            MHD_get_connection_info(k->c, MHD_CONNECTION_INFO_REQUEST_HEADER_SIZE) != NULL)
            found = k, n++;
    if (n == 1) { /* else unsure which: MHD's reply goes out */
        int huge = strstr(msg, "Too large") != NULL;
        http_raw_reply(found, huge ? MHD_HTTP_CONTENT_TOO_LARGE : MHD_HTTP_BAD_REQUEST,
                  huge ? "payload_too_large" : "bad_request",
                  huge ? "Content-Length is too large" : "Content-Length is not a number");
        found->seen = 1;
    }
    pthread_mutex_unlock(&in->cmu);
    if (n == 1)
        http_log_rejected(strstr(msg, "Too large") ? 413 : 400, NULL, msg);
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    struct listener *l = cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    msg[strcspn(msg, "\n")] = '\0';
    if (!atomic_load(&l->running)) { /* said in listen_on's error, not logged on its own */
        const char *why = strstr(msg, "port 0: "); /* MHD names port 0: we pass the address */
        snprintf(l->why, sizeof l->why, "%.200s", why ? why + 8 : msg);
        return;
    }
    if (strstr(msg, "Content-Length' header. Closing connection.") != NULL) {
        answer_bad_length(l, msg);
        return;
    }
    log_msg(strstr(msg, "accept") || strstr(msg, "memory") ? LOG_WARN : LOG_DEBUG, "http: %s",
            msg);
}

/* "host:port", "[v6]:port" or ":port" -> address. */
static int parse_address(const char *s, struct sockaddr_storage *out, char *err, size_t errlen)
{
    char host[256];
    const char *colon = strrchr(s, ':');
    if (colon == NULL || colon[1] == '\0') {
        snprintf(err, errlen, "%s: expected HOST:PORT", s);
        return -1;
    }
    size_t hn = (size_t)(colon - s);
    if (hn >= 2 && s[0] == '[' && s[hn - 1] == ']')
        s++, hn -= 2;
    snprintf(host, sizeof host, "%.*s", (int)hn, s);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV}, *ai;
    int rc = getaddrinfo(host[0] && strcmp(host, "*") != 0 ? host : NULL, colon + 1, &hints, &ai);
    if (rc != 0) {
        snprintf(err, errlen, "%s: %s", s, gai_strerror(rc));
        return -1;
    }
    memcpy(out, ai->ai_addr, ai->ai_addrlen);
    freeaddrinfo(ai);
    return 0;
}

/* Connections a listener may hold at most, whatever limits.max_connections says later: what
 * the file descriptor limit allows (two each: the socket and its dup, struct conn), raised to
 * the hard limit first. */
static unsigned connection_ceiling(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return 256;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > 262144)
        return 65536;
    return rl.rlim_cur > 256 ? (unsigned)(rl.rlim_cur - 128) / 2 : 64;
}

static struct listener *listen_on(struct intake *in, const struct intake_config *cfg, const char *addr,
                                  int hooks, char *err, size_t errlen)
{
    struct sockaddr_storage sa;
    if (parse_address(addr, &sa, err, errlen) != 0)
        return NULL;
    struct listener *l = calloc(1, sizeof *l);
    if (l == NULL || (l->addr = strdup(addr)) == NULL) {
        free(l);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    l->in = in;
    l->hooks = hooks;
    l->tls = hooks && cfg->tls != NULL;
    unsigned flags = MHD_USE_AUTO_INTERNAL_THREAD | MHD_USE_ERROR_LOG;
    if (sa.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    flags |= MHD_ALLOW_SUSPEND_RESUME; /* a webhook waits for its commit, POST /reload for it */
    if (l->tls)
        flags |= MHD_USE_TLS;
    /* A connection's memory pool holds its request line and headers and the read buffer:
     * room for limits.max_header (checked in on_headers) and 4 KiB more (the body streams
     * through it); far bigger headers get MHD's own 431. MHD clears the pool for every request,
     * and each connection keeps one, so it is kept that small. The size is fixed when the
     * listener starts. */
    gnutls_certificate_retrieve_function2 *cert_cb = tls_retrieve;
    struct MHD_OptionItem tls_options[] = {
        {MHD_OPTION_HTTPS_CERT_CALLBACK, 0, NULL},
        {MHD_OPTION_HTTPS_PRIORITIES, 0, cfg->tls_priority},
        {MHD_OPTION_END, 0, NULL},
    };
    memcpy(&tls_options[0].ptr_value, &cert_cb, sizeof cert_cb); /* a function as a pointer */
    l->daemon = MHD_start_daemon(
        flags, 0, hooks ? hooks_accept : NULL, l, hooks ? hooks_access : admin_access, l,
        MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, l, /* first, or MHD logs on its own */
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)cfg->request_timeout,
        MHD_OPTION_CONNECTION_LIMIT, hooks ? connection_ceiling() : 64u,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, hooks ? cfg->max_connections_per_ip : 0u,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, cfg->max_header + 4096,
        MHD_OPTION_NOTIFY_COMPLETED, hooks_completed, l,
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, l,
        MHD_OPTION_UNESCAPE_CALLBACK, unescape, NULL,
        MHD_OPTION_ARRAY, l->tls ? tls_options : tls_options + 2,
        MHD_OPTION_END);
    if (l->daemon == NULL) {
        snprintf(err, errlen, "cannot listen on %s: %s", addr,
                 l->why[0] ? l->why : "in use, or not an address of this host");
        free(l->addr);
        free(l);
        return NULL;
    }
    atomic_store(&l->running, 1);
    return l;
}

/* Stops accepting connections on a listener; closes its socket, freeing the address. */
static void quiesce(struct listener *l)
{
    MHD_socket fd = MHD_quiesce_daemon(l->daemon);
    if (fd != MHD_INVALID_SOCKET)
        close(fd);
}

/* Stops a listener: no new connections, the requests waiting for the journal answered, the
 * others given a moment to send their replies. Not from its own thread. */
static void retire(struct listener *l)
{
    if (l == NULL)
        return;
    quiesce(l);
    for (int i = 0; atomic_load(&l->suspended) > 0 || (atomic_load(&l->inflight) > 0 && i < 100);
         i++)
        usleep(10000); /* suspended requests must be resumed before MHD stops */
    MHD_stop_daemon(l->daemon);
    free(l->addr);
    free(l);
}

static void retire_retired(struct intake *in)
{
    for (struct listener *l = in->retired, *next; l; l = next) {
        next = l->next;
        MHD_stop_daemon(l->daemon); /* quiesced already */
        free(l->addr);
        free(l);
    }
    in->retired = NULL;
}

int intake_start(struct intake **ip, const struct intake_config *c, struct journal *j,
                 struct dispatch *d, char *err, size_t errlen)
{
    struct intake *in = calloc(1, sizeof *in);
    *ip = NULL;
    if (in == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    atomic_store(&in->cfg, c);
    in->j = j;
    in->d = d;
    pthread_mutex_init(&in->mu, NULL);
    pthread_mutex_init(&in->cmu, NULL);
    pthread_condattr_t ca; /* the sweeper's waits follow the monotonic clock */
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&in->stop, &ca);
    pthread_condattr_destroy(&ca);
    in->conns.next = in->conns.prev = &in->conns;
    tls_use(c->tls);
    in->sweeping = 1; /* before the thread starts: it stops as soon as it sees it clear */
    if (pthread_create(&in->sweeper, NULL, sweep, in) != 0)
        in->sweeping = 0;
    else
        pthread_setname_np(in->sweeper, "conn-sweeper");
    if (!in->sweeping) {
        snprintf(err, errlen, "cannot start a thread");
        intake_stop(in);
        return -1;
    }
    in->hooks = listen_on(in, c, c->listen, 1, err, errlen);
    if (in->hooks == NULL || (in->admin = listen_on(in, c, c->admin, 0, err, errlen)) == NULL) {
        intake_stop(in);
        return -1;
    }
    *ip = in;
    return 0;
}

int intake_reconfigure(struct intake *in, const struct intake_config *c, char *err, size_t errlen)
{
    const struct intake_config *old = atomic_load(&in->cfg);
    struct listener *hooks = NULL, *admin = NULL;
    if (strcmp(c->listen, old->listen) == 0 && (c->tls != NULL) != in->hooks->tls) {
        snprintf(err, errlen, "tls was %s: turning HTTPS on or off needs a restart (or a new "
                              "listen address)", c->tls ? "added" : "removed");
        return -1;
    }
    if (strcmp(c->listen, old->listen) != 0 &&
        (hooks = listen_on(in, c, c->listen, 1, err, errlen)) == NULL)
        return -1;
    if (strcmp(c->admin, old->admin) != 0 &&
        (admin = listen_on(in, c, c->admin, 0, err, errlen)) == NULL) {
        retire(hooks);
        return -1;
    }
    if (hooks == NULL && c->max_connections_per_ip != old->max_connections_per_ip)
        log_msg(LOG_WARN, "limits.max_connections_per_ip changed: it takes effect at the next "
                          "restart (or with a new listen address)");
    if (hooks == NULL && c->tls != NULL && old->tls_priority != NULL &&
        strcmp(c->tls_priority, old->tls_priority) != 0)
        log_msg(LOG_WARN, "tls.ciphers or tls.min_version changed: they take effect at the next "
                          "restart (or with a new listen address)");
    atomic_store(&in->cfg, c); /* requests under way keep the configuration they started with */
    if (c->tls != NULL)
        tls_use(c->tls); /* new handshakes present the certificate just read */
    retire_retired(in);
    if (hooks) {
        struct listener *was = in->hooks;
        in->hooks = hooks;
        retire(was);
    }
    if (admin) { /* a POST /reload waiting on its thread may be what runs this reload: the old
                  * admin listener stops accepting now and stops at the next reload or exit */
        struct listener *was = in->admin;
        in->admin = admin;
        quiesce(was);
        was->next = in->retired;
        in->retired = was;
    }
    return 0;
}

void intake_addresses(struct intake *in, char *listen, char *admin, size_t n)
{
    struct listener *ls[] = {in->hooks, in->admin};
    char *out[] = {listen, admin};
    for (int i = 0; i < 2; i++) {
        const union MHD_DaemonInfo *info =
            MHD_get_daemon_info(ls[i]->daemon, MHD_DAEMON_INFO_BIND_PORT);
        const char *colon = strrchr(ls[i]->addr, ':');
        snprintf(out[i], n, "%.*s:%u", (int)(colon - ls[i]->addr), ls[i]->addr,
                 info ? (unsigned)info->port : 0u);
    }
}

void intake_close_gate(struct intake *in)
{
    atomic_store(&in->closed, 1);
}

void intake_stop(struct intake *in)
{
    if (in == NULL)
        return;
    atomic_store(&in->closed, 1);
    retire(in->hooks);
    retire(in->admin);
    retire_retired(in);
    if (in->sweeping) {
        pthread_mutex_lock(&in->cmu);
        in->sweeping = 0;
        pthread_cond_signal(&in->stop);
        pthread_mutex_unlock(&in->cmu);
        pthread_join(in->sweeper, NULL);
    }
    pthread_cond_destroy(&in->stop);
    pthread_mutex_destroy(&in->cmu);
    for (struct parser *p = in->parsers, *next; p; p = next) {
        next = p->next;
        lua_close(p->L);
        pool_free(p->pool);
        free(p);
    }
    pthread_mutex_destroy(&in->mu);
    free(in);
}


/* host, host:port or [v6]:port: localhost, 127.0.0.0/8 or ::1 (intake.h). */
int intake_loopback_host(const char *s, size_t n)
{
    char host[64];
    unsigned char a[16];
    const char *h = s, *port = NULL;
    size_t hn = n;
    if (n > 0 && s[0] == '[') { /* [v6] or [v6]:port */
        const char *close = memchr(s, ']', n);
        if (close == NULL)
            return 0;
        h = s + 1;
        hn = (size_t)(close - h);
        if (close + 1 < s + n) {
            if (close[1] != ':')
                return 0;
            port = close + 2;
        }
    } else {
        const char *colon = memrchr(s, ':', n);
        if (colon != NULL)
            hn = (size_t)(colon - s), port = colon + 1;
    }
    if (port != NULL) { /* 1 to 5 digits */
        size_t pn = (size_t)(s + n - port);
        if (pn == 0 || pn > 5 || strspn(port, "0123456789") < pn)
            return 0;
    }
    if (hn == 0 || hn >= sizeof host)
        return 0;
    memcpy(host, h, hn);
    host[hn] = '\0';
    if (strcasecmp(host, "localhost") == 0)
        return 1;
    if (inet_pton(AF_INET, host, a) == 1)
        return a[0] == 127;
    static const unsigned char v6_loopback[16] = {[15] = 1};
    return inet_pton(AF_INET6, host, a) == 1 && memcmp(a, v6_loopback, 16) == 0;
}

void intake_versions(struct buf *b)
{
    buf_printf(b, "libmicrohttpd %s, GnuTLS %s", MHD_get_version(), gnutls_check_version(NULL));
}
