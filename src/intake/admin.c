/*
 * admin.c -- the admin route (DESIGN §9), on its own listener: GET /healthz, GET /readyz
 * (journal writable, handlers loaded, dispatcher not stalled), GET /metrics (base/metrics.c's
 * families, with the values a scrape reads from elsewhere set first: reload status, queue
 * depths, deliveries by status from the journal, process facts from /proc), POST /reload.
 * Without admin_token it answers only loopback Host names; a POST from a web page never.
 * The console (api.c) is on it too: the page at / (no token: it asks for one) and /api/...
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <unistd.h>

#include "dispatch/dispatch.h"
#include "intake/http.h"
#include "journal/journal.h"
#include "providers/provider.h"

static unsigned readyz(struct journal *j, struct dispatch *d, struct buf *b)
{
    char why[200];
    struct dispatch_status st;
    dispatch_get_status(d, &st);
    int journal_ok = journal_healthy(j, why, sizeof why);
    int ok = journal_ok && st.generation > 0 && st.stalled[0] == '\0';
    buf_printf(b, "{\"status\":\"%s\",\"journal\":", ok ? "ready" : "not_ready");
    if (journal_ok)
        buf_adds(b, "\"ok\"");
    else
        buf_json_str(b, why, strlen(why));
    buf_printf(b, ",\"generation\":%u,\"handlers\":%zu,\"files\":%zu", st.generation,
               st.handlers, st.files);
    buf_printf(b, ",\"reloads\":%lu,\"reload_failures\":%lu,\"last_reload_error\":",
               st.reloads, st.reload_failures);
    if (st.last_error[0])
        buf_json_str(b, st.last_error, strlen(st.last_error));
    else
        buf_adds(b, "null");
    buf_adds(b, ",\"stalled\":");
    if (st.stalled[0])
        buf_json_str(b, st.stalled, strlen(st.stalled));
    else
        buf_adds(b, "null");
    buf_printf(b, ",\"backlog\":%zu,\"pollers\":", st.backlog);
    dispatch_pollers_json(d, b); /* a poller's failure never makes certhook unready */
    buf_adds(b, "}");
    return ok ? 200 : 503;
}

/* /proc/self/stat: CPU seconds, virtual and resident bytes, start time (epoch seconds). */
static void process_facts(void)
{
    char line[1024];
    FILE *f = fopen("/proc/self/stat", "r");
    size_t n = f ? fread(line, 1, sizeof line - 1, f) : 0;
    if (f)
        fclose(f);
    line[n] = '\0';
    const char *p = strrchr(line, ')'); /* after the command name, which may hold spaces */
    unsigned long utime, stime, vsize;
    unsigned long long start;
    long rss;
    if (p == NULL || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu %*d %*d "
                                   "%*d %*d %*d %*d %llu %lu %ld",
                            &utime, &stime, &start, &vsize, &rss) != 5)
        return;
    double hz = (double)sysconf(_SC_CLK_TCK), boot = 0;
    if ((f = fopen("/proc/stat", "r")) != NULL) {
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "btime %lf", &boot) == 1)
                break;
        fclose(f);
    }
    double started = boot + (double)start / hz;
    metrics_set(M_CPU, (double)(utime + stime) / hz);
    metrics_set(M_VSZ, (double)vsize);
    metrics_set(M_RSS, (double)rss * (double)sysconf(_SC_PAGESIZE));
    metrics_set(M_START, started);
    metrics_set(M_UPTIME, time_now() - started);
    DIR *dir = opendir("/proc/self/fd");
    double fds = 0;
    for (struct dirent *e; dir && (e = readdir(dir)) != NULL;)
        fds += e->d_name[0] != '.';
    if (dir)
        closedir(dir);
    metrics_set(M_FDS, fds - 1); /* not the one reading the directory */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
        metrics_set(M_MAX_FDS, (double)rl.rlim_cur);
}

static void render_metrics(struct journal *j, struct dispatch *d, struct buf *b)
{
    struct dispatch_status st;
    struct journal_status js;
    char why[200];
    dispatch_get_status(d, &st);
    journal_status(j, &js);
    metrics_set(M_INFO, 1, CERTHOOK_VERSION);
    metrics_set(M_READY, journal_healthy(j, why, sizeof why) && st.generation > 0 &&
                             st.stalled[0] == '\0');
    metrics_set(M_STALLED, st.stalled[0] != '\0');
    metrics_set(M_GENERATION, st.generation);
    metrics_set(M_HANDLERS, (double)st.handlers);
    metrics_set(M_RELOADS, (double)st.reloads);
    metrics_set(M_RELOAD_FAILURES, (double)st.reload_failures);
    metrics_set(M_LAST_RELOAD_OK, st.last_error[0] == '\0');
    metrics_set(M_WAL_BYTES, js.wal_bytes);
    metrics_set(M_CHECKPOINT_BEHIND, js.behind);
    metrics_set(M_QUEUE, (double)js.queued, "journal");
    metrics_set(M_QUEUE, (double)st.backlog, "dispatch");
    for (int i = 0; i < 5; i++)
        if (js.deliveries[i] >= 0)
            metrics_set(M_JOURNAL_DELIVERIES, js.deliveries[i], delivery_status_names[i]);
    process_facts();
    metrics_render(b);
}

/* ---- the route ---------------------------------------------------------------------------------- */

/* GET /readyz, GET /metrics. */
static enum MHD_Result admin_ready(struct listener *l, struct MHD_Connection *c, void **req_cls)
{
    struct intake *in = l->in;
    (void)req_cls;
    struct buf b;
    buf_init(&b);
    unsigned status = readyz(in->j, in->d, &b);
    enum MHD_Result rc = b.p ? http_reply(c, status, b.p, b.n, NULL, NULL) : MHD_NO;
    buf_free(&b);
    return rc;
}

static enum MHD_Result admin_metrics(struct listener *l, struct MHD_Connection *c,
                                     void **req_cls)
{
    struct intake *in = l->in;
    (void)req_cls;
    struct buf b;
    buf_init(&b);
    render_metrics(in->j, in->d, &b);
    struct MHD_Response *resp =
        b.p ? MHD_create_response_from_buffer(b.n, b.p, MHD_RESPMEM_MUST_COPY) : NULL;
    buf_free(&b);
    if (resp == NULL)
        return MHD_NO;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8");
    enum MHD_Result rc = MHD_queue_response(c, MHD_HTTP_OK, resp);
    MHD_destroy_response(resp);
    return rc;
}

/* POST /reload's request: suspended until the reload it asked for is over (the admin thread
 * goes on answering meanwhile: other requests, further reloads to coalesce). */
struct admin_reload {
    struct reload_wait w; /* first: the dispatcher answers through it */
    struct listener *l;
    struct MHD_Connection *c;
    int rc;
    unsigned generation;
    char err[2048];
};

/* The dispatcher's thread (or the caller's, when certhook is stopping). */
static void reloaded(struct reload_wait *w, int rc, unsigned generation, const char *err)
{
    struct admin_reload *a = (struct admin_reload *)w;
    a->rc = rc;
    a->generation = generation;
    snprintf(a->err, sizeof a->err, "%s", err);
    atomic_fetch_sub(&a->l->suspended, 1);
    MHD_resume_connection(a->c);
}

/* POST /reload: rereads the configuration and the handlers; answers once it is done. A failure
 * is logged by the reload itself ("reload failed"), as that of any other reload. */
static enum MHD_Result admin_reload(struct listener *l, struct MHD_Connection *c, void **req_cls)
{
    struct admin_reload *a = *req_cls != (void *)l ? *req_cls : NULL;
    if (a == NULL) { /* asked now; the answer comes with the resumed request */
        if ((a = calloc(1, sizeof *a)) == NULL)
            return http_reply_error(c, MHD_HTTP_SERVICE_UNAVAILABLE, "unavailable", NULL,
                                    NULL, NULL, "out of memory");
        a->w.done = reloaded;
        a->l = l;
        a->c = c;
        *req_cls = a;
        atomic_fetch_add(&l->suspended, 1);
        MHD_suspend_connection(c); /* before asking: the answer may come at once */
        dispatch_request_reload(l->in->d, &a->w);
        return MHD_YES;
    }
    if (a->rc != 0)
        return http_reply_message(c, 422, "reload_failed", a->err);
    char body[96];
    int n = snprintf(body, sizeof body, "{\"status\":\"reloaded\",\"generation\":%u}",
                     a->generation);
    return http_reply(c, MHD_HTTP_OK, body, (size_t)n, NULL, NULL);
}

void admin_completed(struct listener *l, void **req_cls)
{
    (void)l;
    free(*req_cls); /* POST /reload's, the only admin request with a state */
    *req_cls = NULL;
}

/* Authorization: Bearer <token>: 2 admin_token, 1 admin_read_token (may look, not change), 0
 * neither. */
static int bearer_ok(const struct intake_config *cfg, struct MHD_Connection *c)
{
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                                MHD_HTTP_HEADER_AUTHORIZATION);
    if (h == NULL || strncasecmp(h, "Bearer ", 7) != 0)
        return 0;
    struct secrets token = {(unsigned char (*)[32])cfg->admin_token, 1};
    struct secrets reader = {(unsigned char (*)[32])cfg->read_token, 1};
    int admin = secrets_match(&token, h + 7);
    int read = cfg->has_read_token && secrets_match(&reader, h + 7);
    return admin ? 2 : read ? 1 : 0;
}

static int is_get(const char *method)
{
    return strcmp(method, MHD_HTTP_METHOD_GET) == 0 || strcmp(method, MHD_HTTP_METHOD_HEAD) == 0;
}

static enum MHD_Result unauthorized(struct MHD_Connection *c, const char *url)
{
    return http_reply_error(c, MHD_HTTP_UNAUTHORIZED, "unauthorized", NULL,
                            MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer realm=\"certhook\"",
                            "%.200s needs Authorization: Bearer <admin_token>", url);
}

static enum MHD_Result read_only(struct MHD_Connection *c, const char *method, const char *url)
{
    return http_reply_error(c, MHD_HTTP_FORBIDDEN, "forbidden", NULL, NULL, NULL,
                            "a %s to %.200s needs admin_token: admin_read_token may only look",
                            method, url);
}

/* Why the admin listener refuses a request whatever its path, or NULL. Against DNS rebinding
 * and cross-site requests: a web page the operator opens can make the browser send requests to
 * 127.0.0.1 under a name the page controls. Without admin_token only loopback Host names are
 * answered; a POST from another origin (Origin, Sec-Fetch-Site) never is. */
static const char *admin_refusal(const struct intake_config *cfg, struct MHD_Connection *c,
                                 const char *method, char *msg, size_t n)
{
    const char *host = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_HOST);
    if (!cfg->has_admin_token && host != NULL && !intake_loopback_host(host, strlen(host))) {
        snprintf(msg, n, "Host %.100s is not a loopback name: without admin_token the admin "
                         "listener answers only localhost, 127.0.0.1 and [::1]", host);
        return msg;
    }
    if (strcmp(method, MHD_HTTP_METHOD_GET) == 0 || strcmp(method, MHD_HTTP_METHOD_HEAD) == 0)
        return NULL;
    const char *origin = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Origin");
    const char *site = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Sec-Fetch-Site");
    if (origin != NULL) {
        size_t skip = strncasecmp(origin, "http://", 7) == 0    ? 7
                      : strncasecmp(origin, "https://", 8) == 0 ? 8
                                                                : 0;
        if (skip == 0 || !intake_loopback_host(origin + skip, strlen(origin + skip)))
            snprintf(msg, n, "a %s from the web page at %.100s: refused", method, origin);
        else
            origin = NULL;
    }
    if (origin == NULL && site != NULL && strcasecmp(site, "same-origin") != 0 &&
        strcasecmp(site, "none") != 0)
        snprintf(msg, n, "a %s from a %.20s web page: refused", method, site), origin = site;
    return origin != NULL ? msg : NULL;
}

static const struct {
    const char *path, *method;
    enum MHD_Result (*fn)(struct listener *, struct MHD_Connection *, void **req_cls);
} admin_routes[] = {
    {"/healthz", MHD_HTTP_METHOD_GET, NULL},
    {"/readyz", MHD_HTTP_METHOD_GET, admin_ready},
    {"/metrics", MHD_HTTP_METHOD_GET, admin_metrics},
    {"/reload", MHD_HTTP_METHOD_POST, admin_reload},
};

enum MHD_Result admin_access(void *cls, struct MHD_Connection *c, const char *url,
                                const char *method, const char *version, const char *upload,
                                size_t *upload_size, void **req_cls)
{
    struct listener *l = cls;
    const struct intake_config *cfg = atomic_load(&l->in->cfg);
    (void)upload;
    if (*req_cls == NULL) { /* answer once the request is complete: keeps the connection */
        size_t size;
        enum MHD_Result rc;
        if (http_refuse_framing(l->in, c, url, method, version, &size, &rc))
            return rc;
        *req_cls = l;
        return MHD_YES;
    }
    if (*upload_size != 0) { /* a body nobody asked for: discard it */
        *upload_size = 0;
        return MHD_YES;
    }
    http_set_deadline(l->in, c, 1);
    char why[320];
    if (admin_refusal(cfg, c, method, why, sizeof why) != NULL)
        return http_reply_error(c, MHD_HTTP_FORBIDDEN, "forbidden", NULL, NULL, NULL, "%s", why);
    if (api_asset(url)) /* the page: no data in it, it asks for the token */
        return is_get(method) ? api_serve_asset(c, url, !cfg->has_admin_token)
                              : http_reply_error(c, MHD_HTTP_METHOD_NOT_ALLOWED,
                                                 "method_not_allowed", NULL, MHD_HTTP_HEADER_ALLOW,
                                                 "GET", "use GET");
    if (strncmp(url, "/api/", 5) == 0 || strcmp(url, "/api") == 0) {
        int level = cfg->has_admin_token ? bearer_ok(cfg, c) : 2;
        if (level == 0)
            return unauthorized(c, url);
        if (level == 1 && !is_get(method))
            return read_only(c, method, url);
        return api_route(l->in, c, url, method, cfg->has_admin_token ? "admin" : "local");
    }
    for (size_t i = 0; i < sizeof admin_routes / sizeof admin_routes[0]; i++) {
        if (strcmp(url, admin_routes[i].path) != 0)
            continue;
        int level = cfg->has_admin_token && admin_routes[i].fn != NULL ? bearer_ok(cfg, c) : 2;
        if (level == 0)
            return unauthorized(c, url);
        if (level == 1 && !is_get(admin_routes[i].method))
            return read_only(c, method, url);
        if (strcmp(method, admin_routes[i].method) != 0 &&
            !(strcmp(method, MHD_HTTP_METHOD_HEAD) == 0 &&
              strcmp(admin_routes[i].method, MHD_HTTP_METHOD_GET) == 0))
            return http_reply_error(c, MHD_HTTP_METHOD_NOT_ALLOWED, "method_not_allowed", NULL,
                               MHD_HTTP_HEADER_ALLOW, admin_routes[i].method, "use %s",
                               admin_routes[i].method);
        if (admin_routes[i].fn == NULL)
            return http_reply(c, MHD_HTTP_OK, "{\"status\":\"ok\"}", 15, NULL, NULL);
        return admin_routes[i].fn(l, c, req_cls);
    }
    return http_reply_error(c, MHD_HTTP_NOT_FOUND, "not_found", NULL, NULL, NULL,
                       "no admin endpoint at %.200s (/, /healthz, /readyz, /metrics, POST /reload, "
                       "/api/...)",
                       url);
}

