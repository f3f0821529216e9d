/*
 * metrics.c -- Prometheus metrics: every family certhook exports, its series, and the text
 * exposition format (GET /metrics, admin.c).
 *
 * The families are one table below (name, help, type, label names, buckets), so the full
 * list lives in one place. Threads update series through metrics_add/metrics_set/
 * metrics_observe with the label values; a series is created on first use. Values a scrape
 * reads from elsewhere (queue depths, process facts) are set by admin.c just before it renders.
 * The certificate inventory (hostnames with expiry and last status, fed by the journal
 * writer) is kept here too, bounded by metrics_inventory_cap.
 */
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"

static const double seconds_fast[] = {0.0005, 0.001, 0.002, 0.005, 0.01, 0.025,
                                      0.05,   0.1,   0.25,  0.5,   1,    2.5};
static const double seconds_slow[] = {0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5,
                                      1,     2.5,   5,    10,   30,  60};

#define BUCKETS(a) a, sizeof a / sizeof a[0]
#define MAX_LABELS 6 /* the inventory's certificate_status has six */

static const struct family {
    const char *name, *help, *type;
    const char *labels[MAX_LABELS + 1]; /* NULL-terminated */
    const double *buckets;
    size_t nbuckets;
} families[METRIC_COUNT] = {
    [M_INFO] = {"certhook_info", "certhook's version.", "gauge", {"version"}, NULL, 0},
    [M_EVENTS] = {"certhook_events_received_total",
                  "Webhook requests answered, by source, its provider, canonical type (empty "
                  "before the body is understood) and reply code.",
                  "counter", {"source", "provider", "type", "code"}, NULL, 0},
    [M_INTAKE_SECONDS] = {"certhook_intake_duration_seconds",
                          "Time from a webhook's headers to its reply, the durable commit "
                          "included.",
                          "histogram", {"code"}, BUCKETS(seconds_fast)},
    [M_CUT_OFF] = {"certhook_connections_cut_off_total",
                   "Connections closed for not sending a whole request within "
                   "limits.request_timeout.",
                   "counter", {NULL}, NULL, 0},
    [M_OVERLOADED] = {"certhook_requests_overloaded_total",
                      "Webhooks answered 503 because limits.max_backlog events were waiting "
                      "for handlers.",
                      "counter", {NULL}, NULL, 0},
    [M_PROVIDER_ERRORS] = {"certhook_provider_errors_total",
                           "Payloads a Lua provider failed on (raised, ran out of time or "
                           "memory, returned no event): journaled as unknown with error set.",
                           "counter", {"source", "provider"}, NULL, 0},
    [M_DELIVERIES] = {"certhook_deliveries_total",
                      "Handler attempts that ended, by handler and outcome (success, failure: "
                      "retried later, dead: out of attempts).",
                      "counter", {"handler", "outcome"}, NULL, 0},
    [M_HANDLER_SECONDS] = {"certhook_handler_duration_seconds",
                           "Wall-clock time of one handler attempt, waits included.",
                           "histogram", {"handler"}, BUCKETS(seconds_slow)},
    [M_HTTP] = {"certhook_http_requests_total",
                "certhook.http requests by outcome: the status class (2xx...) or the error "
                "code (timeout, connrefused, tls, ...).",
                "counter", {"outcome"}, NULL, 0},
    [M_READY] = {"certhook_ready",
                  "1 when the journal is writable and handlers are loaded (GET /readyz).",
                  "gauge", {NULL}, NULL, 0},
    [M_QUEUE] = {"certhook_queue_depth",
                 "Work waiting: journal (requests waiting for the commit), dispatch (accepted "
                 "events waiting for a handler).",
                 "gauge", {"queue"}, NULL, 0},
    [M_JOURNAL_DELIVERIES] = {"certhook_journal_deliveries",
                              "Deliveries in the journal by status.", "gauge", {"status"},
                              NULL, 0},
    [M_GENERATION] = {"certhook_handler_generation",
                      "The handler generation new deliveries run on.", "gauge", {NULL}, NULL,
                      0},
    [M_HANDLERS] = {"certhook_handlers", "Handlers (file:pattern) loaded.", "gauge", {NULL},
                    NULL, 0},
    [M_RELOADS] = {"certhook_reloads_total", "Reloads that swapped in a new generation.",
                   "counter", {NULL}, NULL, 0},
    [M_RELOAD_FAILURES] = {"certhook_reload_failures_total",
                           "Reloads that failed and changed nothing.", "counter", {NULL},
                           NULL, 0},
    [M_LAST_RELOAD_OK] = {"certhook_last_reload_success",
                          "Whether the last reload succeeded.", "gauge", {NULL}, NULL, 0},
    [M_STALLED] = {"certhook_dispatcher_stalled",
                   "1 when a handler has stalled the dispatcher (certhook exits to restart).",
                   "gauge", {NULL}, NULL, 0},
    [M_WAL_BYTES] = {"certhook_journal_wal_bytes", "Size of the journal's write-ahead log.",
                     "gauge", {NULL}, NULL, 0},
    [M_CHECKPOINT_BEHIND] = {"certhook_journal_checkpoint_behind_seconds",
                             "Seconds since the write-ahead log was last checkpointed whole "
                             "(a reader holding a snapshot keeps it from that).",
                             "gauge", {NULL}, NULL, 0},
    [M_COMMIT_SECONDS] = {"certhook_journal_commit_duration_seconds",
                          "Time of one journal transaction, begin to durable commit: ack (the "
                          "events a batch of 202s waits for) or fold (the inventory, contexts "
                          "and delivery states derived after it).",
                          "histogram", {"transaction"}, BUCKETS(seconds_fast)},
    [M_CERT_EXPIRY] = {"certhook_certificate_expiry_timestamp_seconds",
                       "When a certificate of the inventory expires, from the last event "
                       "that said so.",
                       "gauge", {"certificate", "hostname", "provider"}, NULL, 0},
    [M_CERT_STATUS] = {"certhook_certificate_status",
                       "The last known status of a certificate (the provider's word, and the "
                       "canonical state) and the type of the event that reported it (always 1).",
                       "gauge", {"certificate", "hostname", "provider", "status", "state", "type"},
                       NULL, 0},
    [M_CERT_UPDATED] = {"certhook_certificate_last_event_timestamp_seconds",
                        "When the last event about a certificate was received.",
                        "gauge", {"certificate", "hostname", "provider"}, NULL, 0},
    [M_CERTS] = {"certhook_certificates",
                 "Certificates with series of their own.", "gauge", {NULL}, NULL, 0},
    [M_CERTS_DROPPED] = {"certhook_certificates_left_out_total",
                         "Certificates left without series of their own: there were "
                         "metrics.max_certificates already.",
                         "counter", {NULL}, NULL, 0},
    [M_WATCHDOG] = {"certhook_watchdog_events_total",
                    "Events the expiry watchdog raised (journaled), by canonical type.",
                    "counter", {"type"}, NULL, 0},
    [M_POLLER_RUNS] = {"certhook_poller_runs_total",
                       "Runs of each poller, by result: ok, rate_limited (429), http_error "
                       "(another status), unreachable (no reply), bad_reply, timeout (the run's "
                       "bound), journal; elsewhere: another server of the journal ran it.",
                       "counter", {"poller", "result"}, NULL, 0},
    [M_POLLER_SUCCESS] = {"certhook_poller_last_success_timestamp_seconds",
                          "When each poller last finished a run that worked.",
                          "gauge", {"poller"}, NULL, 0},
    [M_POLLER_EVENTS] = {"certhook_poller_events_total",
                         "Events the pollers journaled for what no webhook told, by poller and "
                         "canonical type (certificate.observed: added quietly).",
                         "counter", {"poller", "type"}, NULL, 0},
    [M_RSS] = {"process_resident_memory_bytes", "Resident memory size in bytes.", "gauge",
               {NULL}, NULL, 0},
    [M_VSZ] = {"process_virtual_memory_bytes", "Virtual memory size in bytes.", "gauge",
               {NULL}, NULL, 0},
    [M_FDS] = {"process_open_fds", "Open file descriptors.", "gauge", {NULL}, NULL, 0},
    [M_MAX_FDS] = {"process_max_fds", "The file descriptor limit.", "gauge", {NULL}, NULL, 0},
    [M_CPU] = {"process_cpu_seconds_total", "User and system CPU time in seconds.", "counter",
               {NULL}, NULL, 0},
    [M_START] = {"process_start_time_seconds", "Start time since the epoch, in seconds.",
                 "gauge", {NULL}, NULL, 0},
    [M_UPTIME] = {"certhook_uptime_seconds", "Seconds since certhook started.", "gauge",
                  {NULL}, NULL, 0},
};

struct series {
    struct series *next;      /* in the family, in creation order */
    struct series *hnext;     /* in the hash chain */
    enum metric m;
    char *key;                /* the label values, each followed by a NUL */
    char *labels;             /* the rendered {k="v",...}, "" without labels */
    double value, sum;        /* value: counter/gauge; histogram: count */
    unsigned long *counts;    /* histogram: per bucket (not cumulative) */
};

#define NHASH 1024

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct series *hash[NHASH];
static struct series *first[METRIC_COUNT], **last[METRIC_COUNT];

/* ---- series ------------------------------------------------------------------------------ */

/* name="value", the value escaped as the text format wants (\\, \", \n) and made valid UTF-8:
 * a byte that is not is written as U+FFFD, or Prometheus refuses the whole page. */
static void add_label(struct buf *b, const char *name, const char *value)
{
    const char *v = value ? value : "";
    size_t n = strlen(v), len;
    unsigned cp;
    buf_printf(b, "%s%s=\"", b->n > 1 ? "," : "", name);
    for (size_t i = 0; i < n; i += len) {
        if ((len = buf_utf8_next(v + i, n - i, &cp)) == 0) {
            buf_adds(b, "\xef\xbf\xbd");
            len = 1;
        } else if (cp == '\\' || cp == '"') {
            buf_printf(b, "\\%c", (char)cp);
        } else if (cp == '\n') {
            buf_adds(b, "\\n");
        } else {
            buf_add(b, v + i, len);
        }
    }
    buf_adds(b, "\"");
}

/* {a="x",b="y"} of the family's labels and their values. */
static char *render_labels(enum metric m, const char *const *vals, int n)
{
    struct buf b;
    buf_init(&b);
    if (n == 0)
        return strdup("");
    buf_adds(&b, "{");
    for (int i = 0; i < n; i++)
        add_label(&b, families[m].labels[i], vals[i]);
    buf_adds(&b, "}");
    return buf_take(&b);
}

/* The values of a series as one string: each followed by a NUL. */
static char *join_values(const char *const *vals, int n)
{
    size_t len = 0;
    for (int i = 0; i < n; i++)
        len += strlen(vals[i]) + 1;
    char *key = malloc(len + 1), *p = key;
    for (int i = 0; key != NULL && i < n; i++)
        p = stpcpy(p, vals[i]) + 1;
    return key;
}

static int same_values(const char *key, const char *const *vals, int n)
{
    for (int i = 0; i < n; i++, key += strlen(key) + 1)
        if (strcmp(key, vals[i]) != 0)
            return 0;
    return 1;
}

/* The series of m with these label values, created when new: the lookup hashes the values
 * as they are and allocates nothing, as it runs for every request and delivery. Under mu;
 * NULL when out of memory. */
static struct series *find(enum metric m, va_list ap)
{
    const char *vals[MAX_LABELS];
    int n = 0;
    unsigned h = 2166136261u ^ (unsigned)m;
    for (; n < MAX_LABELS && families[m].labels[n]; n++) {
        const char *v = va_arg(ap, const char *);
        vals[n] = v ? v : "";
        for (const char *p = vals[n];; p++) {
            h = (h ^ (unsigned char)*p) * 16777619u;
            if (*p == '\0')
                break;
        }
    }
    h %= NHASH;
    for (struct series *s = hash[h]; s; s = s->hnext)
        if (s->m == m && same_values(s->key, vals, n))
            return s;
    struct series *s = calloc(1, sizeof *s);
    if (s == NULL || (s->key = join_values(vals, n)) == NULL ||
        (s->labels = render_labels(m, vals, n)) == NULL ||
        (families[m].nbuckets &&
         (s->counts = calloc(families[m].nbuckets + 1, sizeof *s->counts)) == NULL)) {
        if (s) {
            free(s->key);
            free(s->labels);
        }
        free(s);
        return NULL;
    }
    s->m = m;
    s->hnext = hash[h];
    hash[h] = s;
    if (last[m] == NULL)
        last[m] = &first[m];
    *last[m] = s;
    last[m] = &s->next;
    return s;
}

void metrics_add(enum metric m, double v, ...)
{
    va_list ap;
    va_start(ap, v);
    pthread_mutex_lock(&mu);
    struct series *s = find(m, ap);
    if (s)
        s->value += v;
    pthread_mutex_unlock(&mu);
    va_end(ap);
}

void metrics_set(enum metric m, double v, ...)
{
    va_list ap;
    va_start(ap, v);
    pthread_mutex_lock(&mu);
    struct series *s = find(m, ap);
    if (s)
        s->value = v;
    pthread_mutex_unlock(&mu);
    va_end(ap);
}

void metrics_observe(enum metric m, double v, ...)
{
    va_list ap;
    va_start(ap, v);
    pthread_mutex_lock(&mu);
    struct series *s = find(m, ap);
    if (s) {
        size_t i = 0;
        while (i < families[m].nbuckets && v > families[m].buckets[i])
            i++;
        s->counts[i]++;
        s->value++;
        s->sum += v;
    }
    pthread_mutex_unlock(&mu);
    va_end(ap);
}

/* ---- the certificate inventory ------------------------------------------------------------ */

struct cert {
    struct cert *next;
    char *key, *hostname, *provider, *status, *state, *type;
    double expires_at, updated_at; /* expires_at 0: unknown */
};

static struct cert *certs;
static size_t ncerts;
static size_t cap = 10000;

void metrics_inventory_cap(size_t n)
{
    pthread_mutex_lock(&mu);
    cap = n;
    pthread_mutex_unlock(&mu);
}

static int set_str(char **p, const char *s)
{
    if (s == NULL)
        return 0; /* kept: a later event that does not say keeps what an earlier one said */
    char *c = strdup(s);
    if (c == NULL)
        return -1;
    free(*p);
    *p = c;
    return 0;
}

static void cert_free(struct cert *c)
{
    free(c->key);
    free(c->hostname);
    free(c->provider);
    free(c->status);
    free(c->state);
    free(c->type);
    free(c);
}

void metrics_certificate(const char *key, const char *hostname, const char *provider,
                         const char *status, const char *state, const char *type,
                         double expires_at, double at)
{
    int dropped = 0;
    pthread_mutex_lock(&mu);
    struct cert **pc = &certs, *c;
    while ((c = *pc) != NULL && strcmp(c->key, key) != 0)
        pc = &c->next;
    if (type != NULL && strcmp(type, "certificate.deletion.succeeded") == 0) {
        if (c != NULL) { /* gone: nothing left to alert on */
            *pc = c->next;
            cert_free(c);
            ncerts--;
        }
    } else if (c == NULL && ncerts >= cap) {
        dropped = 1;
    } else {
        if (c == NULL) {
            c = calloc(1, sizeof *c);
            if (c == NULL || (c->key = strdup(key)) == NULL) {
                free(c);
                pthread_mutex_unlock(&mu);
                return;
            }
            c->next = certs;
            certs = c;
            ncerts++;
        }
        set_str(&c->hostname, hostname);
        set_str(&c->provider, provider);
        set_str(&c->status, status);
        set_str(&c->state, state);
        set_str(&c->type, type);
        if (expires_at > 0)
            c->expires_at = expires_at;
        c->updated_at = at;
    }
    pthread_mutex_unlock(&mu);
    if (dropped)
        metrics_add(M_CERTS_DROPPED, 1);
}

/* ---- exposition ----------------------------------------------------------------------------- */

static void number(struct buf *b, double v)
{
    if (isinf(v))
        buf_adds(b, v > 0 ? "+Inf" : "-Inf");
    else if (v == floor(v) && fabs(v) < 1e15)
        buf_printf(b, "%.0f", v);
    else
        for (int digits = 6; digits <= 17; digits++) { /* the shortest text that reads back */
            char s[40];
            snprintf(s, sizeof s, "%.*g", digits, v);
            if (strtod(s, NULL) == v || digits == 17) {
                buf_adds(b, s);
                break;
            }
        }
}

static void header(struct buf *b, enum metric m)
{
    buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", families[m].name, families[m].help,
               families[m].name, families[m].type);
}

/* A histogram series: cumulative _bucket lines with le added to its labels, _sum, _count. */
static void histogram(struct buf *b, const struct series *s)
{
    const struct family *f = &families[s->m];
    size_t inner = strlen(s->labels) > 2 ? strlen(s->labels) - 2 : 0; /* without the braces */
    unsigned long cum = 0;
    for (size_t i = 0; i <= f->nbuckets; i++) {
        cum += s->counts[i];
        buf_printf(b, "%s_bucket{%.*s%sle=\"", f->name, (int)inner, s->labels + 1,
                   inner ? "," : "");
        if (i < f->nbuckets)
            number(b, f->buckets[i]);
        else
            buf_adds(b, "+Inf");
        buf_printf(b, "\"} %lu\n", cum);
    }
    buf_printf(b, "%s_sum%s ", f->name, s->labels);
    number(b, s->sum);
    buf_printf(b, "\n%s_count%s ", f->name, s->labels);
    number(b, s->value);
    buf_adds(b, "\n");
}

static void inventory(struct buf *b)
{
    struct buf l;
    header(b, M_CERTS);
    buf_printf(b, "%s %zu\n", families[M_CERTS].name, ncerts);
    for (enum metric m = M_CERT_EXPIRY; m <= M_CERT_UPDATED; m++) {
        header(b, m);
        for (const struct cert *c = certs; c; c = c->next) {
            if (m == M_CERT_EXPIRY && c->expires_at <= 0)
                continue;
            buf_init(&l);
            buf_adds(&l, "{");
            add_label(&l, "certificate", c->key);
            add_label(&l, "hostname", c->hostname ? c->hostname : "");
            add_label(&l, "provider", c->provider ? c->provider : "");
            if (m == M_CERT_STATUS) {
                add_label(&l, "status", c->status ? c->status : "");
                add_label(&l, "state", c->state ? c->state : "");
                add_label(&l, "type", c->type ? c->type : "");
            }
            buf_adds(&l, "}");
            buf_printf(b, "%s%.*s ", families[m].name, (int)l.n, l.p ? l.p : "");
            number(b, m == M_CERT_EXPIRY ? c->expires_at : m == M_CERT_STATUS ? 1 : c->updated_at);
            buf_adds(b, "\n");
            buf_free(&l);
        }
    }
}

void metrics_render(struct buf *b)
{
    pthread_mutex_lock(&mu);
    for (enum metric m = 0; m < METRIC_COUNT; m++) {
        if (m >= M_CERT_EXPIRY && m <= M_CERTS) {
            if (m == M_CERT_EXPIRY)
                inventory(b);
            continue;
        }
        if (first[m] == NULL && families[m].labels[0] != NULL)
            continue; /* no series yet: a labelled family shows up with its first one */
        header(b, m);
        if (first[m] == NULL) { /* unlabelled: 0 until something happens */
            if (families[m].nbuckets) {
                struct series z = {.m = m, .labels = ""};
                unsigned long zeros[32] = {0};
                z.counts = zeros;
                histogram(b, &z);
            } else {
                buf_printf(b, "%s 0\n", families[m].name);
            }
            continue;
        }
        for (const struct series *s = first[m]; s; s = s->next) {
            if (families[m].nbuckets) {
                histogram(b, s);
                continue;
            }
            buf_printf(b, "%s%s ", families[m].name, s->labels);
            number(b, s->value);
            buf_adds(b, "\n");
        }
    }
    pthread_mutex_unlock(&mu);
}

/* When the module is unloaded (lua_close of the interpreter's state dlcloses it) or the
 * process exits: every thread that counted is gone by then. */
__attribute__((destructor)) static void metrics_unload(void)
{
    for (int m = 0; m < METRIC_COUNT; m++) {
        for (struct series *s = first[m], *next; s; s = next) {
            next = s->next;
            free(s->key);
            free(s->labels);
            free(s->counts);
            free(s);
        }
        first[m] = NULL;
        last[m] = NULL;
    }
    memset(hash, 0, sizeof hash);
    for (struct cert *c = certs, *next; c; c = next) {
        next = c->next;
        cert_free(c);
    }
    certs = NULL;
    ncerts = 0;
}
