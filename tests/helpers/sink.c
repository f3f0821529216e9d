/*
 * sink.c -- the HTTP server the tests and benchmarks send certhook.http requests to.
 *
 *   sink [--port N] [--tls CERT.pem KEY.pem]     prints "listening PORT" once ready
 *
 * Any request gets, after ?delay=MS, status ?status=N (200) and either ?size=N bytes of 'x'
 * or a JSON echo of the request: {"method","path","query","headers":{lower-case},"body"}.
 * ?hang=1 never answers. GET /stats -> {"requests":N,"in_flight":N,"max_in_flight":N};
 * GET /requests -> the echoes of the last requests, oldest first. Paths under /cloudflare/
 * answer like the Cloudflare API ({"success":true,...,"result":<echo>}); under
 * /cloudflare-refuse/ with 400 and {"success":false,"errors":[...]}.
 * One thread per connection, so delays cost nothing but a sleeping thread.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <ctype.h>

#include <microhttpd.h>
#include <pthread.h>

#include "base/base.h"

static atomic_int requests, in_flight, max_in_flight;

#define KEEP 200
static pthread_mutex_t kept_mu = PTHREAD_MUTEX_INITIALIZER;
static char *kept[KEEP]; /* echoes of the last requests, a ring */
static unsigned nkept;

struct req {
    struct buf body;
};

static enum MHD_Result add_pair(void *cls, enum MHD_ValueKind kind, const char *key,
                                const char *value)
{
    struct buf *b = cls;
    char lower[256];
    size_t i;
    (void)kind;
    for (i = 0; key[i] && i < sizeof lower - 1; i++)
        lower[i] = (char)tolower((unsigned char)key[i]);
    lower[i] = '\0';
    buf_adds(b, b->p[b->n - 1] == '{' ? "" : ",");
    buf_json_str(b, lower, i);
    buf_adds(b, ":");
    buf_json_str(b, value ? value : "", value ? strlen(value) : 0);
    return MHD_YES;
}

static const char *arg(struct MHD_Connection *c, const char *name)
{
    return MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, name);
}

static void echo(struct buf *b, struct MHD_Connection *c, const char *url, const char *method,
                 struct req *r)
{
    buf_adds(b, "{\"method\":");
    buf_json_str(b, method, strlen(method));
    buf_adds(b, ",\"path\":");
    buf_json_str(b, url, strlen(url));
    buf_adds(b, ",\"query\":{");
    MHD_get_connection_values(c, MHD_GET_ARGUMENT_KIND, add_pair, b);
    buf_adds(b, "},\"headers\":{");
    MHD_get_connection_values(c, MHD_HEADER_KIND, add_pair, b);
    buf_adds(b, "},\"body\":");
    buf_json_str(b, r->body.p ? r->body.p : "", r->body.n);
    buf_adds(b, "}");
}

static enum MHD_Result answer(struct MHD_Connection *c, const char *url, const char *method,
                              struct req *r)
{
    struct buf b;
    int status = arg(c, "status") ? atoi(arg(c, "status")) : 200;
    buf_init(&b);
    if (strcmp(url, "/stats") == 0) {
        buf_printf(&b, "{\"requests\":%d,\"in_flight\":%d,\"max_in_flight\":%d}",
                   atomic_load(&requests), atomic_load(&in_flight), atomic_load(&max_in_flight));
    } else if (strcmp(url, "/requests") == 0) {
        pthread_mutex_lock(&kept_mu);
        buf_adds(&b, "[");
        unsigned first = nkept > KEEP ? nkept - KEEP : 0;
        for (unsigned i = first; i < nkept; i++) {
            buf_adds(&b, i > first ? "," : "");
            buf_adds(&b, kept[i % KEEP]);
        }
        buf_adds(&b, "]");
        pthread_mutex_unlock(&kept_mu);
    } else if (arg(c, "size")) {
        long n = atol(arg(c, "size"));
        for (long i = 0; i < n; i++)
            buf_add(&b, "x", 1);
    } else if (strncmp(url, "/cloudflare/", 12) == 0) {
        buf_adds(&b, "{\"success\":true,\"errors\":[],\"messages\":[],\"result\":");
        echo(&b, c, url, method, r);
        buf_adds(&b, "}");
    } else if (strncmp(url, "/cloudflare-refuse/", 19) == 0) {
        status = 400;
        buf_adds(&b, "{\"success\":false,\"errors\":[{\"code\":1406,\"message\":\"refused\"}]}");
    } else {
        echo(&b, c, url, method, r);
    }
    struct MHD_Response *resp = MHD_create_response_from_buffer(b.n, b.p ? b.p : (char *)"",
                                                                MHD_RESPMEM_MUST_COPY);
    MHD_add_response_header(resp, "Content-Type",
                            arg(c, "size") ? "text/plain" : "application/json");
    MHD_add_response_header(resp, "X-Sink", "yes");
    enum MHD_Result rc = MHD_queue_response(c, (unsigned)status, resp);
    MHD_destroy_response(resp);
    buf_free(&b);
    return rc;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **req_cls)
{
    struct req *r = *req_cls;
    (void)cls, (void)version;
    if (r == NULL) {
        r = calloc(1, sizeof *r);
        *req_cls = r;
        return MHD_YES;
    }
    if (*upload_size) {
        buf_add(&r->body, upload, *upload_size);
        *upload_size = 0;
        return MHD_YES;
    }
    if (strcmp(url, "/stats") != 0 && strcmp(url, "/requests") != 0) {
        struct buf e;
        buf_init(&e);
        echo(&e, c, url, method, r);
        pthread_mutex_lock(&kept_mu);
        free(kept[nkept % KEEP]);
        kept[nkept++ % KEEP] = buf_take(&e);
        pthread_mutex_unlock(&kept_mu);
        atomic_fetch_add(&requests, 1);
        int now = atomic_fetch_add(&in_flight, 1) + 1;
        for (int m = atomic_load(&max_in_flight); now > m;)
            if (atomic_compare_exchange_weak(&max_in_flight, &m, now))
                break;
        if (arg(c, "hang"))
            sleep(3600);
        if (arg(c, "delay"))
            usleep((useconds_t)atoi(arg(c, "delay")) * 1000);
        atomic_fetch_sub(&in_flight, 1);
    }
    return answer(c, url, method, r);
}

static void on_done(void *cls, struct MHD_Connection *c, void **req_cls,
                    enum MHD_RequestTerminationCode toe)
{
    struct req *r = *req_cls;
    (void)cls, (void)c, (void)toe;
    if (r) {
        buf_free(&r->body);
        free(r);
    }
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    struct buf b;
    char chunk[4096];
    size_t n;
    buf_init(&b);
    if (f == NULL)
        return NULL;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        buf_add(&b, chunk, n);
    fclose(f);
    return buf_take(&b);
}

int main(int argc, char **argv)
{
    unsigned port = 0, flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD;
    char *cert = NULL, *key = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--port") == 0 && i + 1 < argc)
            port = (unsigned)atoi(argv[++i]);
        else if (strcmp(argv[i], "--tls") == 0 && i + 2 < argc)
            cert = slurp(argv[++i]), key = slurp(argv[++i]), flags |= MHD_USE_TLS;
    }
    signal(SIGPIPE, SIG_IGN);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct MHD_Daemon *d = MHD_start_daemon(
        flags, (uint16_t)port, NULL, NULL, on_request, NULL,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
        MHD_OPTION_NOTIFY_COMPLETED, on_done, NULL,
        MHD_OPTION_CONNECTION_LIMIT, 4000u,
        cert ? MHD_OPTION_HTTPS_MEM_CERT : MHD_OPTION_END, cert,
        MHD_OPTION_HTTPS_MEM_KEY, key, MHD_OPTION_END);
    if (d == NULL) {
        fprintf(stderr, "sink: cannot listen\n");
        return 1;
    }
    printf("listening %u\n", (unsigned)MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT)->port);
    fflush(stdout);
    pause();
    return 0;
}
