/*
 * certhook.h -- shared structs and prototypes of the certhook core.
 *
 * Data flow and the unit that owns each step (one file each; a function
 * visible outside its file carries the file's prefix):
 *
 *   provider --POST--> intake.c     MHD thread(s): limits, route, auth.c, parse (cjson),
 *                                    normalize.c (cloudflare.c, ibm_cm.c) -> struct journal_event;
 *                                    suspends the request
 *                  --> journal.c    writer thread: one transaction + fsync per batch of requests,
 *                                    then resumes them (202/200/503) and hands the accepted
 *                                    events to the dispatcher in one list
 *                  --> dispatch.c   main thread: matches handlers of the current generation
 *                                    (reload.c), runs each in its own coroutine, sends the
 *                                    delivery results back to the journal writer
 *
 *   module.c   luaopen_certhook_core and the Lua states certhook creates (module_newstate)
 *   config.c   struct config from the table the CLI built      server.c  `serve`: start/stop order
 *   api_log.c  logging + certhook.log    api_time.c  clocks, ISO 8601 + certhook.time
 *   api_http.c certhook.http (libcurl)   buf.c       growable byte buffer, JSON string escaping
 *
 * Threads never share a lua_State: each intake thread has a private parser state, the
 * dispatcher owns the handler states. Everything that crosses threads is plain C below.
 */
#ifndef CERTHOOK_H
#define CERTHOOK_H

#include <stddef.h>
#include <stdint.h>

#include <lua.h>

#define CERTHOOK_VERSION "0.1.0"

struct journal;

/* ---- buf.c: growable byte buffer ---------------------------------------------------- */

struct buf {
    char *p;
    size_t n, cap;
};

void buf_init(struct buf *b);
void buf_free(struct buf *b);
int buf_add(struct buf *b, const void *s, size_t n); /* 0 / -1 (out of memory) */
int buf_adds(struct buf *b, const char *s);
int buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int buf_json_str(struct buf *b, const char *s, size_t n); /* appends "s" JSON-escaped */
char *buf_take(struct buf *b);                             /* NUL-terminated; caller frees */
/* The length of the UTF-8 sequence at s (n bytes left) and its code point in *cp; 0 when it is
 * not valid UTF-8 (overlong, a surrogate, cut short, a stray byte). */
size_t buf_utf8_next(const char *s, size_t n, unsigned *cp);

/* ---- api_log.c: one JSON object per line on stderr -------------------------------- */

struct delivery;    /* dispatch.c: a delivery in flight */
struct generation;

struct loop;

/* Something a handler waits for through the API (a program certhook.exec runs). */
struct wait {
    void (*cancel)(struct wait *w); /* the delivery was stopped first: give up waiting */
};

/* What a running handler knows about itself. The runner (run.c) makes it the state's current
 * context for each resume (module_set_ctx), where the certhook.* API and the limits hook
 * find it, also in coroutines the handler creates. */
struct delivery_ctx {
    const char *event_id, *event_type, *hostname, *handler;
    unsigned generation;
    struct generation *gen;
    double deadline;           /* time_mono() after which it is stopped; 0: never */
    int killed;                /* RUN_TIMEOUT, RUN_MEMORY, RUN_STOP when it must stop */
    int waiting;               /* set by the API when it yields to wait for something */
    struct delivery *delivery; /* serve: waits yield to the dispatcher; NULL: synchronous */
    /* Inside the dispatcher (else NULL: the API waits synchronously): its loop, where an API
     * function registers what it waits on; wait(ctx, w) before it yields, wake(ctx) when what
     * it waited for is there (the handler is resumed). */
    struct loop *loop;
    void (*wait)(struct delivery_ctx *ctx, struct wait *w);
    void (*wake)(struct delivery_ctx *ctx);
};
struct delivery_ctx *log_ctx(lua_State *L); /* the current context; NULL outside a handler */

enum { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

struct log_line {
    struct buf b;
    int level, text;
};

void log_set_level(int level);
void log_set_text(int on); /* log.format = "text" */
int log_level_parse(const char *s); /* -1 if unknown */
int log_enabled(int level);
/* log_begin..log_end build and write one line; every call is a no-op when the level is off. */
void log_begin(struct log_line *l, int level, const char *message);
void log_str(struct log_line *l, const char *key, const char *value); /* NULL value: skipped */
void log_num(struct log_line *l, const char *key, double value);
void log_json(struct log_line *l, const char *key, const char *json, size_t n);
void log_end(struct log_line *l);
void log_msg(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int log_open(lua_State *L); /* pushes the certhook.log table */

/* ---- metrics.c: Prometheus families, series and the text format ------------------------ */

enum metric {
    M_INFO, M_EVENTS, M_INTAKE_SECONDS, M_CUT_OFF, M_OVERLOADED, M_DELIVERIES, M_HANDLER_SECONDS, M_HTTP,
    M_READY, M_QUEUE, M_JOURNAL_DELIVERIES, M_GENERATION, M_HANDLERS, M_RELOADS, M_RELOAD_FAILURES,
    M_LAST_RELOAD_OK, M_STALLED, M_WAL_BYTES, M_CHECKPOINT_BEHIND,
    M_CERT_EXPIRY, M_CERT_STATUS, M_CERT_UPDATED, M_CERTS, /* the inventory, in this order */
    M_CERTS_DROPPED,
    M_RSS, M_VSZ, M_FDS, M_MAX_FDS, M_CPU, M_START, M_UPTIME,
    METRIC_COUNT
};

/* Thread-safe. The variable arguments are the family's label values (const char *, NULL
 * for an empty one), as many as it has labels. */
void metrics_add(enum metric m, double v, ...);     /* counters, gauges */
void metrics_set(enum metric m, double v, ...);     /* gauges; counters kept elsewhere */
void metrics_observe(enum metric m, double v, ...); /* histograms */
/* The inventory: hostname's certificate as the event of canonical type at time `at` told it
 * (status, expires_at: NULL / 0 when the event did not say: the last known value stays). A
 * certificate.deletion.succeeded removes the hostname. Past the cap, new hostnames are
 * counted as dropped. */
void metrics_certificate(const char *hostname, const char *type, const char *status,
                         double expires_at, double at);
void metrics_inventory_cap(size_t n);
int metrics_inventory_room(const char *hostname); /* 1: known, or under the cap */
void metrics_render(struct buf *b); /* appends the exposition text of every family */

/* ---- api_time.c ---------------------------------------------------------------------- */

double time_now(void);  /* wall clock, epoch seconds */
double time_mono(void); /* monotonic seconds */
int time_parse_iso8601(const char *s, double *out);  /* 0 / -1 */
size_t time_format_iso8601(double t, char out[40]); /* UTC, ms when t has a fraction */
void time_push_epoch(lua_State *L, double t);        /* integer when whole */
int time_open(lua_State *L);                         /* pushes the certhook.time table */

/* ---- api_state.c ---------------------------------------------------------------------- */

/* Gives the certhook.state of L a journal: j (not owned), or the journal in dir, opened on
 * first use and closed with L. */
void state_attach(lua_State *L, struct journal *j, const char *dir, double busy_timeout);
int state_open(lua_State *L); /* pushes the certhook.state table */

/* ---- loop.c: the dispatcher's event loop ----------------------------------------------- */

/* A file descriptor waited on, and what to call when it is ready (EPOLLIN, EPOLLOUT, ...). The
 * owner keeps it alive while it is added. */
struct loop_fd {
    int fd;
    void (*ready)(struct loop_fd *w, uint32_t events);
};
struct loop;
struct loop *loop_new(void);
void loop_free(struct loop *l);
int loop_add(struct loop *l, struct loop_fd *w, uint32_t events); /* 0 / -1 (errno) */
int loop_mod(struct loop *l, struct loop_fd *w, uint32_t events);
void loop_del(struct loop *l, struct loop_fd *w); /* before closing w->fd; safe in a callback */
/* Waits up to timeout_ms (-1: no limit) and calls the callbacks of what is ready. */
int loop_run_once(struct loop *l, int timeout_ms);

/* ---- api_http.c ---------------------------------------------------------------------- */

int http_open(lua_State *L); /* pushes the certhook.http table */
int exec_open(lua_State *L); /* pushes certhook.exec (api_exec.c) */

/* The transfer of one certhook.http call, and a curl multi handle whose sockets wait in the
 * dispatcher's loop. */
struct http_req;
struct http_multi;
void http_req_free(struct http_req *r);
const char *http_req_host(const struct http_req *r); /* lower-case; NULL if none */
struct http_multi *http_multi_new(struct loop *loop, long per_host);
void http_multi_free(struct http_multi *m);
int http_multi_add(struct http_multi *m, struct http_req *r,
                   void (*done)(struct http_req *, void *), void *cls);
void http_multi_cancel(struct http_multi *m, struct http_req *r); /* done is not called */
void http_multi_timeout(struct http_multi *m); /* call when time_mono() >= http_multi_next */
double http_multi_next(struct http_multi *m);  /* time_mono() of curl's timer, or < 0 */

/* ---- providers and sources ----------------------------------------------------------- */

enum provider { PROVIDER_NONE = 0, PROVIDER_CLOUDFLARE, PROVIDER_IBM_CM };

const char *provider_name(enum provider p);
enum provider provider_parse(const char *s); /* PROVIDER_NONE if unknown */

struct auth_keys; /* auth.c: loaded public keys */

struct source {
    char *name; /* the path segment: POST /hooks/<name> */
    enum provider provider;
    int insecure;                     /* accept without credentials */
    unsigned char (*secrets)[32];     /* Cloudflare: SHA-256 of each accepted secret */
    size_t nsecrets;
    struct auth_keys *keys;           /* IBM: RS256 public keys; NULL if none */
    int check_times;                  /* IBM: check exp, nbf, iat (configured sources) */
    double leeway;                    /* IBM: seconds of clock skew allowed for them */
    double max_age;                   /* IBM: seconds a token may be old (iat); 0: any age */
};

/* ---- config.c --------------------------------------------------------------------------- */

/* delivery = {...}: how handlers are retried (DESIGN §8, §9). Times in seconds. */
struct delivery_cfg {
    int max_attempts;
    double backoff, max_backoff, timeout, shutdown_grace;
    unsigned concurrency, per_host; /* per_host: requests in flight to one host; 0: no bound */
    size_t memory_limit;            /* bytes a handler generation's Lua state may hold */
};

/* ---- retry.c: the retry policy ------------------------------------------------------------ */

#define RETRY_MAX_CRASHES 2 /* a delivery running when certhook died this often is dead */

/* Seconds until the next attempt of a delivery that has made `attempts` attempts (the failed one
 * included) and was running at `crashes` deaths of the process, or -1: it is dead. u: a random
 * number in [0, 1) for the jitter. Pure. */
double retry_delay(const struct delivery_cfg *cfg, int attempts, int crashes, double u);

struct tls_creds; /* tls.c */

struct config {
    char *listen, *admin, *handlers, *data;
    struct source *sources;
    size_t nsources;
    struct tls_creds *tls;       /* the webhook listener's certificate and key; NULL: HTTP */
    char *tls_priority;          /* its GnuTLS priority string (tls_priority) */
    unsigned char admin_token[32]; /* SHA-256 of the admin bearer token, when has_admin_token */
    int has_admin_token;
    size_t max_body, max_header;   /* bytes */
    size_t max_backlog;            /* accepted events waiting for a handler before 503 */
    size_t max_hostnames;          /* the certificate inventory's cap (metrics) */
    int log_text;                  /* log.format = "text" */
    unsigned max_connections, request_timeout; /* request_timeout: seconds */
    unsigned max_connections_per_ip; /* from one client address; 0: no bound */
    struct delivery_cfg delivery;
    double busy_timeout;       /* journal: seconds to wait for a locked database */
    double retention;          /* journal: seconds finished events are kept */
    size_t max_wal;            /* journal: bytes the WAL may reach before it is truncated */
    int log_level;
    char *lua_path, *lua_cpath; /* package paths of every state certhook creates */
};

/* Reads the config table at idx (as built by the CLI). 0, or -1 with a message in err. */
int config_from_lua(lua_State *L, int idx, struct config *c, char *err, size_t errlen);
void config_free(struct config *c);
const struct source *config_source(const struct config *c, const char *name, size_t len);
/* Whether host[:port] (n bytes; [v6]:port) names this machine's loopback: localhost,
 * 127.0.0.0/8, [::1]. */
int config_loopback_host(const char *s, size_t n);

/* ---- tls.c: the webhook listener's certificate ------------------------------------------- */

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
/* tls.h: tls_retrieve, the GnuTLS certificate callback presenting them (intake.c). */

/* ---- auth.c ------------------------------------------------------------------------------ */

void auth_digest(const char *s, size_t n, unsigned char out[32]); /* SHA-256 */
int auth_secret_ok(const struct source *s, const char *header);   /* 1 if it matches a secret */
/* 1 if the SHA-256 of given matches one of n digests; constant time in what it compares. */
int auth_digest_match(const char *given, const unsigned char (*digests)[32], size_t n);
/* Adds the RSA public key of a PEM file (or PEM text) to *keys, creating the set. 0 / -1. */
int auth_keys_add(struct auth_keys **keys, const char *pem_or_path, char *err, size_t errlen);
void auth_keys_free(struct auth_keys *k);
/* Verifies an RS256 JWT against keys (NULL: decode only, no verification). Uses the JSON
 * decoder of L to read the header; leaves the stack as it found it. On success returns the
 * payload (the claims JSON) in *claims, malloc'd, caller frees. */
int auth_jwt_verify(lua_State *L, const struct auth_keys *keys, const char *token, size_t len,
                    char **claims, size_t *claims_len, char *err, size_t errlen);
/* Signs claims with an RSA private key (PEM text or file): returns a malloc'd JWT. */
char *auth_jwt_sign(const char *pem_or_path, const char *claims, size_t n, char *err,
                    size_t errlen);
int auth_base64url_decode(const char *in, size_t n, unsigned char *out, size_t *outlen);

/* ---- normalize.c ---------------------------------------------------------------------- */

/* Rewrites a cjson-decoded value at idx in place, as Lua code expects it: JSON null members
 * of objects are dropped (absent = nil), numbers too large for a double (inf) are dropped like
 * nulls, whole floats become integers. Returns how many keys and strings hold a NUL byte. */
int normalize_fixup(lua_State *L, int idx);
/* Pushes the canonical event for the decoded payload at raw (already fixed up; becomes
 * event.raw). Sets `id` only when the payload carries a provider id. Returns 0, or -1 with
 * a message a person can act on (nothing pushed). */
int normalize_push(lua_State *L, enum provider p, int raw, char *err, size_t errlen);
/* Guesses the provider of a decoded body: a {"data": "<JWT>"} body or IBM claims, or a
 * Cloudflare shape. PROVIDER_NONE if neither. */
enum provider normalize_detect(lua_State *L, int idx);
/* Parses a request body received by src and pushes its event: JSON (lua-cjson), for IBM the
 * JWT (verified with src->keys; decode-only for an insecure source without keys; bare JSON
 * only when insecure), normalization, id, source and received_at. When the payload came from
 * a JWT, *claims is its JSON (malloc'd, caller frees) -- what the journal keeps instead of the
 * body. Returns 0, or 400 / 401 with a message a person can act on (nothing pushed). */
int normalize_body(lua_State *L, const struct source *src, const char *body, size_t n,
                   double received_at, char **claims, size_t *claims_len, char *err,
                   size_t errlen);
/* The id of an event whose payload carries none: "<source>:sha256:<hex of body>". */
void normalize_hash_id(const char *source, const char *body, size_t n, struct buf *out);
int normalize_glob(const char *pattern, const char *s); /* `*` matches any run of chars */

/* ---- pack.c: a Lua value tree as bytes, to cross from one state to another ----------- */

/* Appends the value at idx (tables of strings, numbers, booleans, cjson.null; no cycles,
 * nesting up to 64) to out, without the key skip of the outer table (NULL: all of it). 0, or
 * -1 for anything else. */
int pack_value(lua_State *L, int idx, const char *skip, struct buf *out);
/* Pushes the value packed in p..p+n; -1 (nothing pushed) if the bytes are not one. */
int unpack_value(lua_State *L, const void *p, size_t n);

/* ---- module.c ----------------------------------------------------------------------------- */

/* A fresh state with the standard libraries, the given package paths, certhook.core
 * preloaded and cjson's encode/decode registered for module_decode/module_encode.
 * NULL with a message on failure. */
lua_State *module_newstate(const char *path, const char *cpath, lua_Alloc alloc, void *ud,
                           char *err, size_t errlen);
/* Takes from a handler state what handlers must not reach: os.exit, os.execute and io.popen
 * raise (certhook.exec runs programs), debug offers only traceback. 0, or -1 with err. */
int module_sandbox(lua_State *L, char *err, size_t errlen);
/* Makes ctx (or NULL) the current delivery context of L's state. */
void module_set_ctx(lua_State *L, struct delivery_ctx *ctx);
struct delivery_ctx *module_ctx(lua_State *L);
/* Pushes the decoded JSON text (not fixed up) or returns -1 with cjson's message. */
int module_decode(lua_State *L, const char *s, size_t n, char *err, size_t errlen);
/* Encodes the value at idx; returns a pointer valid while the pushed string stays on the
 * stack, or NULL with the error message pushed instead. Pushes exactly one value. */
const char *module_encode(lua_State *L, int idx, size_t *len);
int luaopen_certhook_core(lua_State *L);

/* ---- journal.c ---------------------------------------------------------------------------- */

/* One accepted event, as journaled. One malloc'd block; the strings live inside it. */
struct journal_event {
    struct journal_event *next;
    int64_t seq; /* journal row, set by the writer */
    double received_at;
    enum provider provider;
    const char *id, *source, *type, *provider_type, *hostname; /* the last two may be NULL */
    const char *payload; /* the JSON the normalizer runs on (IBM: the JWT claims) */
    size_t payload_len;
    double expires_at;     /* of its certificate, for the inventory; 0: not said */
    char cert_status[48];  /* the certificate status it reports; "": not said */
    void *packed;          /* the normalized event (pack.c) from intake, malloc'd; NULL: the
                            * dispatcher normalizes the payload (events read back from the
                            * journal) */
    size_t packed_len;
};

struct journal_event *journal_event_new(enum provider p, double received_at, const char *id,
                                        const char *source, const char *type,
                                        const char *provider_type, const char *hostname,
                                        const char *payload, size_t payload_len);
void journal_event_free(struct journal_event *ev);

enum journal_op {
    JOURNAL_APPEND,       /* ev: a new event */
    JOURNAL_STATE_SET,    /* key = value (JSON text), expires_at (0: never) */
    JOURNAL_STATE_DELETE, /* key */
    JOURNAL_STATE_INCR,   /* key += by; the new value in number */
};

enum journal_result {
    JOURNAL_PENDING,
    JOURNAL_ACCEPTED,  /* committed */
    JOURNAL_DUPLICATE, /* APPEND: the id was journaled before */
    JOURNAL_REFUSED,   /* this request cannot be done (error says why); the batch went on */
    JOURNAL_FAILED,    /* the batch could not be written (error says why); nothing of it was */
};

/* A request to the writer; the caller owns it (intake embeds it in its request). */
struct journal_req {
    struct journal_req *next;
    enum journal_op op;
    struct journal_event *ev; /* APPEND: ownership passes to the dispatcher when ACCEPTED */
    const char *key;          /* STATE_*: borrowed until done runs */
    const char *value;        /* STATE_SET: JSON text, borrowed */
    size_t value_len;
    double expires_at, by;
    enum journal_result result;
    char error[200];  /* REFUSED, FAILED: why */
    char number[48];  /* STATE_INCR: the new value, as JSON */
    void (*done)(struct journal_req *); /* called on the writer thread after the commit */
    void *cls;
};

enum delivery_status { DELIVERY_PENDING, DELIVERY_RUNNING, DELIVERY_RETRYING, DELIVERY_DONE,
                       DELIVERY_DEAD };
extern const char *const delivery_status_names[]; /* "pending", ... as journaled */

/* The latest state of one delivery, as the journal keeps it. */
struct delivery_result {
    char *handler; /* "<file>:<pattern>" */
    enum delivery_status status;
    int attempts;
    int crashes;              /* deaths of the process while it ran (running.c) */
    unsigned generation;      /* of the last attempt */
    double first_at, started_at, duration, next_at; /* next_at: RETRYING, PENDING */
    char *error, *traceback;  /* of this attempt, when it failed; NULL otherwise */
};

/* Delivery states of one event (seq 0: none), and replay requests handled (replays_upto).
 * The writer takes ownership and frees it. */
struct journal_done {
    struct journal_done *next;
    int64_t seq, replays_upto;
    size_t n;
    struct delivery_result r[];
};

typedef void (*journal_sink)(void *cls, struct journal_event *list);

enum { JOURNAL_CREATE = 1, JOURNAL_READONLY = 2 };

/* Opens dir/certhook.db: JOURNAL_CREATE makes the directory and schema (else the journal must
 * exist); JOURNAL_READONLY opens only a read connection (no writer). */
int journal_open(struct journal **jp, const char *dir, int flags, double busy_timeout,
                 double retention, char *err, size_t errlen);
void journal_close(struct journal *j);
/* Starts the writer thread; accepted events go to sink (may be NULL), in commit order, a
 * batch per call. */
int journal_start(struct journal *j, journal_sink sink, void *cls);
void journal_stop(struct journal *j); /* writes what is queued, joins the writer */
void journal_append(struct journal *j, struct journal_req *r);  /* thread-safe */
void journal_call(struct journal *j, struct journal_req *r);    /* append, wait for the commit */
void journal_finish(struct journal *j, struct journal_done *d); /* thread-safe, takes d */
int journal_healthy(struct journal *j, char *why, size_t n);   /* 1 if the last write worked */
void journal_done_free(struct journal_done *d);
struct journal_done *journal_done_new(int64_t seq, size_t n);

/* Reads on the read connection; main thread only. Events handed to fn are theirs to free. */
int64_t journal_max_seq(struct journal *j);
/* Up to limit events with after < seq <= upto in state (0: never dispatched), in order. */
int journal_scan_events(struct journal *j, int state, int64_t after, int64_t upto, int limit,
                        void (*fn)(void *cls, struct journal_event *ev), void *cls);
struct journal_event *journal_load(struct journal *j, int64_t seq, const char *id);
/* A delivery as journaled, for the dispatcher's start and replays. */
struct journal_delivery {
    int64_t seq;
    const char *handler;
    enum delivery_status status;
    int attempts, crashes;
    double next_at, first_at; /* wall clock */
};
/* Deliveries in a status (NULL: those not final -- pending, running, retrying): fn for each.
 * Returns how many, or -1. */
int journal_scan_deliveries(struct journal *j, const char *status,
                            void (*fn)(void *cls, const struct journal_delivery *row), void *cls);
/* Replay requests after id: fn(cls, id, event_id or NULL, dead). Returns how many, or -1. */
int journal_scan_replays(struct journal *j, int64_t after,
                         void (*fn)(void *cls, int64_t id, const char *event_id, int dead),
                         void *cls);
/* certhook.state reads. get pushes nothing; it returns the JSON text in *out (malloc'd) or
 * NULL when absent or expired. keys calls fn for each live key with the prefix, in order. */
int journal_state_get(struct journal *j, const char *key, char **out, size_t *len, char *err,
                      size_t errlen);
int journal_state_keys(struct journal *j, const char *prefix, void (*fn)(void *, const char *),
                       void *cls, char *err, size_t errlen);

/* The WAL's bound (journal.max_wal, bytes): past it, checkpoints cut it back. Before start. */
void journal_set_max_wal(struct journal *j, size_t bytes);
/* For /metrics: the WAL's size, and seconds since it was last checkpointed whole (0: it is). */
void journal_wal_status(struct journal *j, double *bytes, double *behind);
/* For /metrics, from any thread: requests waiting for the writer; deliveries by status (in
 * delivery_status_names order; read on a connection of their own). */
size_t journal_queued(struct journal *j);
int journal_count_deliveries(struct journal *j, double counts[5]);
/* Feeds the certificate inventory (metrics_certificate) the newest cap hostnames; before the
 * writer starts. Returns how many, or -1. */
int journal_load_inventory(struct journal *j, size_t cap);

/* The command line's view (certhook events / replay). */
struct journal_filter {
    const char *status, *type; /* NULL: any; type is a glob (`*`) on type or provider_type */
    int limit;
};
struct journal_row { /* one event with one of its deliveries (handler NULL when none) */
    int64_t seq;
    const char *id, *source, *type, *provider_type, *hostname, *handler, *status, *error;
    double received_at, next_at, started_at;
    int state, attempts, generation;
};
int journal_list(struct journal *j, const struct journal_filter *f,
                 void (*fn)(void *cls, const struct journal_row *row), void *cls, char *err,
                 size_t errlen);
/* Queues a replay for the server: the event event_id (its deliveries run again on the current
 * handlers), or every dead delivery when event_id is NULL. *count: the deliveries of the
 * event / the dead ones now. 0, or -1 with err (no such event, journal locked, ...). */
int journal_request_replay(struct journal *j, const char *event_id, int *count, char *err,
                           size_t errlen);

/* ---- running.c: one server per data directory; what runs when it dies or stalls ----------- */

/* The delivery whose handler code was running (at a crash, or a stall). */
struct running_slot {
    int64_t seq;
    int attempts, pid;
    double first_at;
    char event_id[256], handler[512];
};

struct running;
/* Takes the data directory's lock and maps its slot: NULL with err naming the PID of the
 * server that holds it. */
struct running *running_open(const char *dir, char *err, size_t errlen);
void running_close(struct running *r); /* a clean stop: the slot says nothing runs */
/* 1 and *out when the previous process died while a delivery's handler code ran; clears it. */
int running_crashed(struct running *r, struct running_slot *out);
/* Handler code of this delivery starts / ended (r NULL: no-op). Memory writes only. */
void running_begin(struct running *r, int64_t seq, const char *event_id, const char *handler,
                   int attempts, double first_at);
void running_end(struct running *r);
/* Starts the stall detector: on_stall runs on its thread when the same code has run for longer
 * than limit seconds. */
int running_watch(struct running *r, double limit,
                  void (*on_stall)(void *cls, const struct running_slot *what, double seconds),
                  void *cls);
void running_set_limit(struct running *r, double limit);
void running_unwatch(struct running *r); /* stops the stall detector */

/* ---- reload.c: handler generations --------------------------------------------------------- */

struct handler {
    char *name;    /* "<file>:<pattern>", the delivery's identity */
    char *pattern;
    int ref;       /* the function, in the generation state's registry */
};

struct generation {
    lua_State *L;
    unsigned number;
    struct handler *h;
    size_t n;
    size_t nfiles;
    size_t mem_used, mem_limit; /* bytes the state holds; its bound (0: none) */
    double load_timeout;        /* seconds loading every file may take */
    int mem_over;               /* an allocation was refused for the bound since last look */
    int refs;                   /* the dispatcher's current one, and each delivery in flight */
};

/* What a generation's state gets: package paths, and the journal behind certhook.state (j,
 * or the one in data, opened on first use; neither: certhook.state raises). */
struct reload_env {
    const char *path, *cpath;
    struct journal *j;
    const char *data;
    double busy_timeout;
    size_t memory_limit; /* bytes; 0: none */
    double timeout;      /* seconds loading the files may take (delivery.timeout) */
    struct running *run; /* told which file loads (NULL: nothing) */
};

/* Loads every *.lua of dir (sorted) into a fresh state and validates what each returns;
 * modules in dir/lib can be required. On failure returns NULL and a malloc'd message naming
 * every broken file:line. The generation starts with one reference, its creator's. */
struct generation *reload_build(const char *dir, const struct reload_env *env, unsigned number,
                                char **err);
void reload_hold(struct generation *g);
void reload_release(struct generation *g); /* the last reference frees it */
void reload_free(struct generation *g);

/* Watches a handlers directory for changes that need a reload: *.lua files appearing,
 * changing, going (atomic renames included), anything under dir/lib, and the directory
 * itself being replaced (a symlink switched by a deploy). */
struct watch;
struct watch *reload_watch(const char *dir, char *err, size_t errlen);
int reload_watch_fd(struct watch *w);
int reload_watch_changed(struct watch *w); /* reads what is pending: 1 if it matters */
void reload_watch_free(struct watch *w);

/* ---- run.c: running one handler ------------------------------------------------------------ */

enum { RUN_TIMEOUT = 1, RUN_MEMORY, RUN_STOP }; /* delivery_ctx.killed */
enum run_status { RUN_DONE, RUN_FAILED, RUN_WAITING };

/* Pushes the event handlers receive, built from the journaled payload; -1 when it cannot be
 * (logged; nothing pushed). */
int run_push_event(lua_State *L, const struct journal_event *ev);
/* The stack index of what delivery i of n gets of the event table at index event: the event
 * itself for the last one, a deep copy (pushed) for the others, so that no handler sees what
 * another one changed. */
int run_event_arg(lua_State *L, int event, size_t i, size_t n);
/* Sets the limits hook on L (a generation state's main thread; coroutines inherit it): the
 * current context's deadline and memory bound stop the user code running. */
void run_limit(lua_State *L);
/* "file:line" of the innermost Lua function on co's stack, into buf. */
const char *run_where(lua_State *co, char *buf, size_t n);
/* A new coroutine calling handler h with the value at idx, anchored in the registry (*ref),
 * with the limits hook set. */
lua_State *run_new(lua_State *L, const struct handler *h, int idx, int *ref);
/* Resumes co (nargs values on its stack) as ctx: RUN_DONE, what it returned left on co's stack;
 * RUN_WAITING when it yielded to wait through the API; RUN_FAILED with a malloc'd message and
 * traceback (also when it was killed, saying why). */
enum run_status run_resume(lua_State *L, lua_State *co, int nargs, struct delivery_ctx *ctx,
                           char **error, char **traceback);
void run_free(lua_State *L, lua_State *co, int ref); /* closes it and drops the anchor */
char *run_stopped(const struct delivery_ctx *ctx);   /* why a killed one stopped (malloc'd) */
void run_log_failure(const struct delivery_ctx *ctx, int attempt, const char *error,
                     const char *traceback);
/* Runs handlers hs for ev once each, synchronously (certhook run): fills r[i] (attempts set by
 * the caller). Returns 0, or -1 when the event cannot be built. */
int run_sync(struct generation *g, const struct journal_event *ev, const struct handler **hs,
             size_t n, double timeout, struct delivery_result *r);

/* ---- dispatch.c -------------------------------------------------------------------------- */

struct dispatch;

/* recover_upto: the journal's last seq before intake started (journal_max_seq). */
struct dispatch *dispatch_new(struct generation *g, struct journal *j,
                              const struct delivery_cfg *cfg, int64_t recover_upto);
void dispatch_free(struct dispatch *d); /* does not free the generation */
/* Where it tells which delivery's handler code runs (NULL: nowhere), and what ran when the
 * previous process died (NULL: nothing): dispatch_run counts that attempt. Before dispatch_run. */
void dispatch_set_running(struct dispatch *d, struct running *run,
                          const struct running_slot *crashed);
/* Makes g current, taking the caller's reference; the previous one is released (it closes
 * when its last delivery ends). */
void dispatch_set_generation(struct dispatch *d, struct generation *g);
/* fn(cls) runs after every turn of the loop -- at least once a second while it serves
 * (server.c pings systemd's watchdog). */
void dispatch_on_tick(struct dispatch *d, void (*fn)(void *), void *cls);
/* fn(cls) runs once, when a stop signal arrives (server.c closes the intake gate). */
void dispatch_on_stop(struct dispatch *d, void (*fn)(void *), void *cls);
/* fn does a reload (server.c): a new generation (and, with_config, the config reread), swapped
 * in with dispatch_set_generation; 0 and the generation's number, or -1 with a message. The
 * dispatcher runs it on SIGHUP (with config), when the watched directory changed (handlers
 * only) and for dispatch_request_reload (with config). */
void dispatch_on_reload(struct dispatch *d,
                        int (*fn)(void *cls, int with_config, unsigned *generation, char *err,
                                  size_t errlen),
                        void *cls);
void dispatch_set_config(struct dispatch *d, const struct delivery_cfg *cfg);
int dispatch_watch(struct dispatch *d, const char *dir, char *err, size_t errlen);
/* From another thread: reload (config included) and wait for the outcome. 0, or -1 with err. */
int dispatch_request_reload(struct dispatch *d, unsigned *generation, char *err, size_t errlen);

struct dispatch_status {
    unsigned generation; /* 0 until handlers are loaded */
    size_t handlers, files;
    unsigned long reloads, reload_failures;
    double last_reload_at;
    char last_error[2048]; /* of the last reload, when it failed */
    char stalled[512];     /* what stalled the dispatcher ("": nothing) */
    size_t backlog;
};
void dispatch_get_status(struct dispatch *d, struct dispatch_status *st);
/* The handlers did not load at the start (err says why): counted and shown like a failed
 * reload. */
void dispatch_load_failed(struct dispatch *d, const char *err);
/* From the stall detector's thread: the dispatcher is stuck in what (for /readyz, /metrics). */
void dispatch_set_stalled(struct dispatch *d, const char *what);
void dispatch_enqueue(void *d, struct journal_event *list); /* a journal_sink; thread-safe */
/* Resumes what the journal holds (deliveries to retry, events never dispatched), then runs
 * the loop until a signal from sigfd asks to stop; the delivery states are handed to the
 * journal writer before it returns the signal number. */
int dispatch_run(struct dispatch *d, int sigfd);
/* Runs the handlers matching ev once, on the calling thread, without retries (certhook run).
 * Fills *done (caller frees with journal_done_free). Returns how many failed, or -1. */
int dispatch_event(struct generation *g, const struct journal_event *ev, double timeout,
                   struct journal_done **done);
size_t dispatch_backlog(struct dispatch *d);
/* For the API, inside a delivery: wait for a transfer (0; -1 when too many wait: busy) or for
 * the journal request the delivery holds (dispatch_journal_req), then resume the handler. */
int dispatch_http_start(struct delivery *dl, struct http_req *r);
struct journal_req *dispatch_journal_req(struct delivery *dl);
void dispatch_journal_start(struct delivery *dl);

/* ---- intake.c ------------------------------------------------------------------------------ */

struct intake;

int intake_start(struct intake **ip, const struct config *c, struct journal *j,
                 struct dispatch *d, char *err, size_t errlen);
/* Applies a new configuration: new requests use c (which must outlive them); a listener
 * whose address changed is replaced. 0, or -1 with err and nothing changed. */
int intake_reconfigure(struct intake *in, const struct config *c, char *err, size_t errlen);
void intake_close_gate(struct intake *in);           /* new requests get 503 from now on */
void intake_stop(struct intake *in);                 /* waits for requests in flight */
void intake_addresses(struct intake *in, char *listen, char *admin, size_t n);

/* ---- admin.c: the admin endpoints' answers (intake.c serves them) -------------------------- */

unsigned admin_readyz(struct journal *j, struct dispatch *d, struct buf *out); /* status */
void admin_render_metrics(struct journal *j, struct dispatch *d, struct buf *out);

/* ---- server.c ------------------------------------------------------------------------------ */

/* Rereads the configuration file into c (for a reload): 0, or -1 with err. */
typedef int (*config_loader)(void *cls, struct config *c, char *err, size_t errlen);
/* Serves until a stop signal; takes c (heap-allocated). 0 after a clean stop. */
int server_run(struct config *c, config_loader load, void *load_cls, char *err, size_t errlen);

#endif
