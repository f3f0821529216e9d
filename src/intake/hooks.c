/*
 * hooks.c -- the webhook route (DESIGN §1, §9): POST /hooks/<source>.
 *
 * Everything that can be decided from the head is decided before the body is read: route,
 * method, the source's provider's own check (a secret header: struct provider's head),
 * limits, Content-Type. With the whole body the thread's private parser state normalizes it
 * once (source_normalize: JSON, authentication, the provider's events) and packs each event
 * (event_pack): what the journal keeps and every delivery unpacks. The request is suspended
 * and its events queued to the journal writer together -- one transaction -- which resumes it
 * after the commit: 202, 200 (duplicates) or 503. A provider may answer a handshake itself.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "dispatch/dispatch.h"
#include "intake/http.h"
#include "journal/journal.h"
#include "lua/api.h"
#include "providers/provider.h"

/* One event of a request: its journal request, and what the reply says of it. */
struct hook_event {
    struct journal_req r;
    char *id, *type;
};

/* A webhook request's state, from its head until libmicrohttpd completes it. */
struct hook {
    struct listener *l;
    const struct intake_config *cfg; /* the configuration it started with */
    struct MHD_Connection *conn;
    const struct source *src;
    struct buf body;
    const char *chunked;      /* a chunked body: where it begins in MHD's buffer; else NULL */
    int waiting;
    struct hook_event *evs;   /* the writer answers them together */
    size_t nevs, cap;
    atomic_size_t unanswered;
    double t0;                /* time_mono() when the head was in */
};

/* The source /hooks/<name> names, or NULL. */
static const struct source *source_named(const struct intake_config *cfg, const char *name)
{
    for (size_t i = 0; i < cfg->nsources; i++)
        if (strcmp(cfg->sources[i].name, name) == 0)
            return &cfg->sources[i];
    return NULL;
}

/* struct request's header and query lookups, on libmicrohttpd's connection. */
static const char *header_of(const struct request *rq, const char *name)
{
    return MHD_lookup_connection_value(rq->cls, MHD_HEADER_KIND, name);
}

static const char *query_of(const struct request *rq, const char *name)
{
    return MHD_lookup_connection_value(rq->cls, MHD_GET_ARGUMENT_KIND, name);
}

struct each {
    void (*fn)(void *cls, const char *name, const char *value);
    void *cls;
};

static enum MHD_Result each_value(void *cls, enum MHD_ValueKind kind, const char *key,
                                  const char *value)
{
    struct each *e = cls;
    (void)kind;
    if (key != NULL)
        e->fn(e->cls, key, value ? value : "");
    return MHD_YES;
}

static void each_of(const struct request *rq, int query,
                    void (*fn)(void *cls, const char *name, const char *value), void *cls)
{
    struct each e = {fn, cls};
    MHD_get_connection_values(rq->cls, query ? MHD_GET_ARGUMENT_KIND : MHD_HEADER_KIND,
                              each_value, &e);
}

/* struct request's fetch: a GET on the intake thread (providers cache what they fetch). */
static int fetch_of(const struct request *rq, const char *url, double timeout, size_t max,
                    struct buf *out, long *status, char *err, size_t errlen)
{
    (void)rq;
    return http_fetch(url, timeout, max, out, status, err, errlen);
}

static void request_of(struct request *rq, struct MHD_Connection *c, const char *method,
                       const struct buf *body)
{
    *rq = (struct request){.method = method, .header = header_of, .query = query_of,
                           .each = each_of, .fetch = fetch_of, .cls = c,
                           .body = body ? (body->p ? body->p : "") : NULL,
                           .body_len = body ? body->n : 0, .received_at = time_now()};
}

/* A reply a provider made itself (a handshake): its status, body and header. */
static enum MHD_Result provider_reply(struct MHD_Connection *c, struct reply *rp)
{
    enum MHD_Result rc = http_reply(c, rp->status, rp->body.p ? rp->body.p : "", rp->body.n,
                                    rp->header, rp->value);
    buf_free(&rp->body);
    return rc;
}

/* First call for a request: only the head is in. */
static enum MHD_Result on_head(struct listener *l, struct MHD_Connection *c, const char *url,
                               const char *method, const char *version, void **req_cls)
{
    struct intake *in = l->in;
    const struct intake_config *cfg = atomic_load(&in->cfg);
    const struct source *src = NULL;
    char err[600];
    size_t hsize;
    enum MHD_Result rc;
    MHD_set_connection_option(c, MHD_CONNECTION_OPTION_TIMEOUT, cfg->request_timeout);
    if (http_refuse_framing(in, c, url, method, version, &hsize, &rc))
        return rc;
    if (strncmp(url, "/hooks/", 7) == 0)
        src = source_named(cfg, url + 7);
    *req_cls = (void *)src; /* for the metrics of what is answered now */
    if (atomic_load(&in->closed))
        return http_reply_error(c, MHD_HTTP_SERVICE_UNAVAILABLE, "unavailable", NULL,
                                "Retry-After", "5", "certhook is shutting down; retry later");
    if (hsize > cfg->max_header)
        return http_reply_error(c, MHD_HTTP_REQUEST_HEADER_FIELDS_TOO_LARGE, "header_too_large",
                                src ? src->name : NULL, NULL, NULL,
                                "the request line and headers are %zu bytes; the limit is %zu "
                                "(limits.max_header)", hsize, cfg->max_header);
    if (src == NULL)
        return http_reply_error(c, MHD_HTTP_NOT_FOUND, "not_found", NULL, NULL, NULL,
                                "no webhook source at %.200s: webhooks are POSTed to "
                                "/hooks/<source> for a source named in the configuration",
                                url);
    int post = strcmp(method, MHD_HTTP_METHOD_POST) == 0;
    struct request rq;
    struct reply rp = {0};
    request_of(&rq, c, method, NULL);
    int status = src->provider->head ? src->provider->head(src, &rq, &rp, err, sizeof err) : 0;
    if (rp.status != 0)
        return provider_reply(c, &rp);
    buf_free(&rp.body);
    if (!post)
        return http_reply_error(c, MHD_HTTP_METHOD_NOT_ALLOWED, "method_not_allowed", src->name,
                                MHD_HTTP_HEADER_ALLOW, "POST", "%s is not allowed here; use POST",
                                method);
    if (status != 0)
        return http_reply_error(c, status, status == MHD_HTTP_UNAUTHORIZED ? "unauthorized"
                                                                            : "refused",
                                src->name, NULL, NULL, "%s", err);
    if (in->d != NULL && dispatch_backlog(in->d) + journal_waiting(in->j) >= cfg->max_backlog) {
        metrics_add(M_OVERLOADED, 1);
        return http_reply_error(c, MHD_HTTP_SERVICE_UNAVAILABLE, "overloaded", src->name,
                                "Retry-After", "30",
                                "%zu accepted events are waiting for handlers "
                                "(limits.max_backlog); retry later", cfg->max_backlog);
    }
    const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                                 MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl != NULL && strtoull(cl, NULL, 10) > cfg->max_body)
        return http_reply_error(c, MHD_HTTP_CONTENT_TOO_LARGE, "payload_too_large", src->name,
                                NULL, NULL,
                                "the body is %.20s bytes; the limit is %zu (limits.max_body)", cl,
                                cfg->max_body);
    const char *ct = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                                 MHD_HTTP_HEADER_CONTENT_TYPE);
    if (!source_accepts(src, ct))
        return http_reply_error(c, MHD_HTTP_UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type",
                                src->name, NULL, NULL,
                                "Content-Type must be application/json, not %.100s", ct);
    struct hook *h = calloc(1, sizeof *h);
    if (h == NULL)
        return MHD_NO;
    h->l = l;
    h->cfg = cfg;
    h->conn = c;
    h->src = src;
    if (MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_TRANSFER_ENCODING))
        h->chunked = http_body_start(c, method); /* the framing check let only chunked by */
    h->t0 = time_mono();
    buf_init(&h->body);
    *req_cls = h;
    atomic_fetch_add(&l->inflight, 1);
    return MHD_YES;
}

/* Writer thread: the journal has answered one of the request's events. Counted here, not when
 * the reply is queued: a client that hung up meanwhile gets no further access-handler call. */
static void on_journal_done(struct journal_req *jr)
{
    struct hook *h = jr->cls;
    if (atomic_fetch_sub(&h->unanswered, 1) != 1)
        return;
    atomic_fetch_sub(&h->l->suspended, 1);
    MHD_resume_connection(h->conn);
}

/* The whole body is in: normalize, pack, queue to the journal and suspend. */
static enum MHD_Result on_body(struct listener *l, struct hook *h)
{
    char err[600];
    struct request rq;
    struct reply rp = {0};
    lua_State *L = http_parser_state(l->in, h->cfg);
    if (L == NULL)
        return http_reply_error(h->conn, MHD_HTTP_SERVICE_UNAVAILABLE, "unavailable",
                                h->src->name, "Retry-After", "5", "out of memory");
    request_of(&rq, h->conn, MHD_HTTP_METHOD_POST, &h->body);
    int status = source_normalize(L, h->src, &rq, &rp, err, sizeof err);
    if (rp.status != 0)
        return provider_reply(h->conn, &rp);
    if (status == MHD_HTTP_SERVICE_UNAVAILABLE) /* what the provider needed is not there yet */
        return http_reply_error(h->conn, status, "unavailable", h->src->name, "Retry-After",
                                "30", "%s", err);
    if (status != 0)
        return http_reply_error(h->conn, status, status == MHD_HTTP_UNAUTHORIZED ? "unauthorized"
                                                                                 : "bad_request",
                                h->src->name, NULL, NULL, "%s", err);
    int list = lua_gettop(L);
    size_t n = (size_t)lua_rawlen(L, list);
    struct buf packed;
    buf_init(&packed);
    h->evs = calloc(n, sizeof *h->evs);
    h->cap = h->evs ? n : 0;
    for (size_t i = 0; h->evs != NULL && i < n; i++) {
        struct event ev;
        struct hook_event *he = &h->evs[i];
        lua_rawgeti(L, list, (lua_Integer)i + 1);
        packed.n = 0;
        if (event_pack(L, lua_gettop(L), list - 1, &ev, &packed, err, sizeof err) != 0) {
            buf_free(&packed);
            lua_settop(L, 0);
            return http_reply_error(h->conn, MHD_HTTP_BAD_REQUEST, "bad_request", h->src->name,
                                    NULL, NULL, "%s", err);
        }
        ev.body = rq.body; /* the body as received, with each of its events */
        ev.body_len = rq.body_len;
        he->id = strdup(ev.id);
        he->type = strdup(ev.type);
        he->r.ev = event_new(&ev);
        lua_settop(L, list);
        if (he->id == NULL || he->type == NULL || he->r.ev == NULL)
            break;
        he->r.op = JOURNAL_APPEND;
        he->r.done = on_journal_done;
        he->r.cls = h;
        he->r.next = i + 1 < n ? &h->evs[i + 1].r : NULL;
        h->nevs++;
    }
    buf_free(&packed);
    lua_settop(L, 0);
    if (h->nevs < n)
        return http_reply_error(h->conn, MHD_HTTP_SERVICE_UNAVAILABLE, "unavailable",
                                h->src->name, "Retry-After", "5", "out of memory");
    atomic_store(&h->unanswered, n);
    h->waiting = 1;
    atomic_fetch_add(&l->suspended, 1);
    MHD_suspend_connection(h->conn); /* before queueing: the writer may resume at once */
    journal_append(l->in->j, &h->evs[0].r);
    return MHD_YES;
}

/* Resumed by the writer: answer with what the commit did. One event: {"id", "type"} (202) or
 * {"id", "duplicate": true} (200); several: {"events": [{"id", "type", "duplicate"}...]}, 202
 * unless every one was a duplicate. */
static enum MHD_Result on_journaled(struct hook *h)
{
    struct buf b;
    enum MHD_Result rc;
    size_t fresh = 0;
    h->waiting = 0;
    for (size_t i = 0; i < h->nevs; i++)
        if (h->evs[i].r.result == JOURNAL_FAILED)
            return http_reply_error(h->conn, MHD_HTTP_SERVICE_UNAVAILABLE, "unavailable",
                                    h->src->name, "Retry-After", "5",
                                    "the journal could not be written (%s); nothing was stored, "
                                    "retry later", h->evs[i].r.error);
    buf_init(&b);
    if (h->nevs > 1)
        buf_adds(&b, "{\"events\":[");
    for (size_t i = 0; i < h->nevs; i++) {
        const struct hook_event *he = &h->evs[i];
        int dup = he->r.result == JOURNAL_DUPLICATE;
        fresh += !dup;
        buf_adds(&b, i > 0 ? ",{\"id\":" : "{\"id\":");
        buf_json_str(&b, he->id, strlen(he->id));
        if (h->nevs > 1 || !dup) {
            buf_adds(&b, ",\"type\":");
            buf_json_str(&b, he->type, strlen(he->type));
        }
        if (dup)
            buf_adds(&b, ",\"duplicate\":true}");
        else
            buf_adds(&b, h->nevs > 1 ? ",\"duplicate\":false}" : "}");
    }
    if (h->nevs > 1)
        buf_adds(&b, "]}");
    rc = b.p ? http_reply(h->conn, fresh > 0 ? MHD_HTTP_ACCEPTED : MHD_HTTP_OK, b.p, b.n, NULL,
                          NULL)
             : MHD_NO;
    buf_free(&b);
    return rc;
}

/* certhook_events_received_total and the intake latency of one webhook reply. */
static void count_reply(const struct source *src, const char *type, unsigned status,
                        double seconds)
{
    char code[12];
    snprintf(code, sizeof code, "%u", status);
    metrics_add(M_EVENTS, 1, src ? src->name : "", src ? source_provider(src) : "",
                type ? type : "", code);
    metrics_observe(M_INTAKE_SECONDS, seconds, code);
}

enum MHD_Result hooks_access(void *cls, struct MHD_Connection *c, const char *url,
                             const char *method, const char *version, const char *upload,
                             size_t *upload_size, void **req_cls)
{
    struct listener *l = cls;
    struct hook *h = *req_cls;
    enum MHD_Result rc;
    http_replied = 0;
    if (h == NULL) {
        rc = on_head(l, c, url, method, version, req_cls);
        if (http_replied) {
            count_reply(*req_cls, NULL, http_replied, 0);
            *req_cls = NULL;
        }
        return rc;
    }
    if (*upload_size != 0) {
        size_t room = h->cfg->max_body - h->body.n;
        uint64_t declared;
        int chunk = http_chunk_size(h->chunked, upload, &declared) && declared > room;
        if (*upload_size > room || chunk) {
            /* A chunked body past the limit, or a chunk whose size line says it will be:
             * answered now, not after its last chunk (MHD queues no reply in the middle of a
             * body), and the connection closed. */
            struct conn *k = http_conn_of(c);
            char msg[160];
            if (chunk)
                snprintf(msg, sizeof msg, "a chunk of %llu bytes would take the body over the "
                         "limit of %zu bytes (limits.max_body)", (unsigned long long)declared,
                         h->cfg->max_body);
            else
                snprintf(msg, sizeof msg, "the body is over the limit of %zu bytes "
                         "(limits.max_body)", h->cfg->max_body);
            if (k != NULL)
                http_raw_reply(k, MHD_HTTP_CONTENT_TOO_LARGE, "payload_too_large", msg);
            http_log_rejected(MHD_HTTP_CONTENT_TOO_LARGE, h->src->name, msg);
            count_reply(h->src, NULL, MHD_HTTP_CONTENT_TOO_LARGE, time_mono() - h->t0);
            return MHD_NO;
        }
        if (buf_add(&h->body, upload, *upload_size) != 0)
            return MHD_NO;
        *upload_size = 0;
        return MHD_YES;
    }
    if (h->waiting) {
        rc = on_journaled(h);
    } else {
        http_set_deadline(l->in, c, 1);
        rc = on_body(l, h);
    }
    if (http_replied)
        count_reply(h->src, h->nevs > 0 ? h->evs[0].type : NULL, http_replied,
                    time_mono() - h->t0);
    return rc;
}

void hooks_completed(void *cls, struct MHD_Connection *c, void **req_cls,
                     enum MHD_RequestTerminationCode toe)
{
    struct listener *l = cls;
    struct hook *h = *req_cls;
    (void)toe;
    http_set_deadline(l->in, c, 0);
    if (h == NULL || h == (void *)l)
        return;
    if (!l->hooks) {
        admin_completed(l, req_cls);
        return;
    }
    buf_free(&h->body);
    for (size_t i = 0; i < h->cap; i++) {
        event_free(h->evs[i].r.ev);
        free(h->evs[i].id);
        free(h->evs[i].type);
    }
    free(h->evs);
    free(h);
    *req_cls = NULL;
    atomic_fetch_sub(&l->inflight, 1);
}

enum MHD_Result hooks_accept(void *cls, const struct sockaddr *addr, socklen_t len)
{
    struct listener *l = cls;
    (void)addr, (void)len;
    const union MHD_DaemonInfo *info =
        l->daemon ? MHD_get_daemon_info(l->daemon, MHD_DAEMON_INFO_CURRENT_CONNECTIONS) : NULL;
    const struct intake_config *cfg = atomic_load(&l->in->cfg);
    return info == NULL || info->num_connections < cfg->max_connections ? MHD_YES : MHD_NO;
}
