/*
 * base.h -- what the bottom layer offers every other: growable buffers and string helpers
 * (buf.c), structured logging (log.c), clocks and ISO 8601 (clock.c), the Prometheus metrics
 * registry (metrics.c), an epoll event loop (loop.c), the event record (event.c), the
 * byte format events are kept in (pack.c) and a Lua state's allocator (pool.c). No Lua state,
 * no SQL, no HTTP here.
 */
#ifndef CERTHOOK_BASE_H
#define CERTHOOK_BASE_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "certhook.h"

/* ---- buf.c: growable byte buffer, strings ----------------------------------------------- */

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
int glob_match(const char *pattern, const char *s); /* `*` matches any run of characters */
int hex_digit(char c);                              /* its value 0-15, or -1 */

/* ---- log.c: one JSON object (or, log.format = "text", one line for people) per line ----- */

enum { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

struct log_line {
    struct buf b;
    int level, text;
};

void log_set_level(int level);
void log_set_text(int on); /* log.format = "text" */
int log_level_parse(const char *s); /* -1 if unknown */
extern const char *const log_level_names[]; /* "debug", ... NULL */
int log_enabled(int level);
/* log_begin..log_end build and write one line (one write(2): lines never interleave); every
 * call is a no-op when the level is off. */
void log_begin(struct log_line *l, int level, const char *message);
void log_str(struct log_line *l, const char *key, const char *value); /* NULL value: skipped */
void log_num(struct log_line *l, const char *key, double value);
void log_json(struct log_line *l, const char *key, const char *json, size_t n);
void log_end(struct log_line *l);
void log_msg(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- clock.c ------------------------------------------------------------------------------- */

double time_now(void);  /* wall clock, epoch seconds: for timestamps only */
double time_mono(void); /* monotonic seconds: for every timer, deadline, retry and lease */
int time_parse_iso8601(const char *s, double *out); /* 0 / -1 */
size_t time_format_iso8601(double t, char out[40]); /* UTC, ms when t has a fraction */

/* ---- metrics.c: Prometheus families, series and the text format ---------------------------- */

enum metric {
    M_INFO, M_EVENTS, M_INTAKE_SECONDS, M_CUT_OFF, M_OVERLOADED, M_PROVIDER_ERRORS, M_DELIVERIES,
    M_HANDLER_SECONDS, M_HTTP,
    M_READY, M_QUEUE, M_JOURNAL_DELIVERIES, M_GENERATION, M_HANDLERS, M_RELOADS, M_RELOAD_FAILURES,
    M_LAST_RELOAD_OK, M_STALLED, M_WAL_BYTES, M_CHECKPOINT_BEHIND, M_COMMIT_SECONDS,
    M_CERT_EXPIRY, M_CERT_STATUS, M_CERT_UPDATED, M_CERTS, /* the inventory, in this order */
    M_CERTS_DROPPED, M_WATCHDOG, M_POLLER_RUNS, M_POLLER_SUCCESS, M_POLLER_EVENTS,
    M_RSS, M_VSZ, M_FDS, M_MAX_FDS, M_CPU, M_START, M_UPTIME,
    METRIC_COUNT
};

/* Thread-safe. The variable arguments are the family's label values (const char *, NULL
 * for an empty one), as many as it has labels. */
void metrics_add(enum metric m, double v, ...);     /* counters, gauges */
void metrics_set(enum metric m, double v, ...);     /* gauges; counters kept elsewhere */
void metrics_observe(enum metric m, double v, ...); /* histograms */
/* The inventory's series: certificate `key` (of hostname, from provider) as its entry is after
 * an event of canonical type at time `at` (status, state NULL, expires_at 0: unknown). A
 * certificate.deletion.succeeded removes it. Past the cap, new certificates are counted as
 * left out. */
void metrics_certificate(const char *key, const char *hostname, const char *provider,
                         const char *status, const char *state, const char *type,
                         double expires_at, double at);
void metrics_inventory_cap(size_t n);
void metrics_render(struct buf *b); /* appends the exposition text of every family */

/* ---- loop.c: an event loop ------------------------------------------------------------------ */

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
/* Waits up to timeout_ms (-1: no limit) and calls the callbacks of what is ready. 0 or more,
 * or -1 (errno). */
int loop_run_once(struct loop *l, int timeout_ms);

/* ---- event.c: the event record --------------------------------------------------------------- */

/* A record copying everything it is given (strings NULL when absent) into one block. */
struct event *event_new(const struct event *from);
void event_free(struct event *ev);
void event_free_list(struct event *ev); /* ev and every one after it */

/* ---- pool.c: a Lua state's allocator ------------------------------------------------------------ */

struct pool;
struct pool *pool_new(void); /* NULL: out of memory */
void pool_free(struct pool *p); /* after the state that allocates from it is closed */
/* A lua_Alloc with the pool as ud: small blocks by size class, reused; large ones malloc's. */
void *pool_alloc(void *ud, void *ptr, size_t osize, size_t nsize);

/* ---- pack.c: the byte format of a normalized event --------------------------------------------- */

/* A tree of values -- tables (string and integer keys), strings, integers, floats, booleans,
 * null -- as bytes: a version byte, then each value as a tag byte and its data. Strings are
 * their length and bytes (under 192 bytes, the length is in the tag); integers zigzag varints;
 * floats 8 bytes, little-endian. A table is two bytes that presize its copy, its key/value
 * pairs, an end tag; a table met again is a reference to the n-th table written (1-based), and
 * the first copy's tag says it is shared. The journal keeps events in it, so it only grows new
 * tags. */
enum pack_tag {
    PACK_END, PACK_FALSE, PACK_TRUE, PACK_INT, PACK_FLOAT, PACK_STR, PACK_TABLE, PACK_NULL,
    PACK_REF, PACK_SHARED,
    PACK_BODY, /* the body the event came in, decoded as JSON: raw, when it is the payload */
};
#define PACK_VERSION 1

int pack_start(struct buf *b); /* the version byte */
int pack_bool(struct buf *b, int v);
int pack_int(struct buf *b, int64_t v);
int pack_float(struct buf *b, double v);
int pack_str(struct buf *b, const char *s, size_t n);
int pack_null(struct buf *b);
int pack_body(struct buf *b);
/* A table of narr array and nhash other entries follows, key value key value ..., then
 * pack_end. Returns where its tag is (for pack_table_sizes, pack_share), or (size_t)-1. The
 * sizes only presize the table that is read back: they may be set once it is written. */
size_t pack_table(struct buf *b, uint32_t narr, uint32_t nhash);
void pack_table_sizes(struct buf *b, size_t at, uint32_t narr, uint32_t nhash);
int pack_end(struct buf *b);
int pack_ref(struct buf *b, uint32_t n); /* the n-th table written, again */
void pack_share(struct buf *b, size_t at); /* marks the table whose tag is at as shared */

/* Reading: one item at a time, in the order written. */
struct pack_item {
    enum pack_tag tag;
    int64_t i;        /* INT; TABLE, SHARED: narr; REF: n */
    double f;         /* FLOAT */
    const char *s;    /* STR */
    size_t n;         /* STR: bytes; TABLE, SHARED: nhash */
};
struct pack_reader {
    const unsigned char *p, *end;
};
/* Starts reading p..p+n: -1 unless it begins with a version this build reads. */
int pack_open(struct pack_reader *r, const void *p, size_t n);
int pack_next(struct pack_reader *r, struct pack_item *it); /* 0, or -1: malformed or done */
/* Past the rest of the value whose first item it is (a table's entries and end). 0, or -1. */
int pack_skip(struct pack_reader *r, const struct pack_item *it);
/* The next value, as JSON into out (a table whose keys are 1..n in order: an array; else an
 * object, integer keys as strings). 0, or -1: malformed, or a reference or the body. */
int pack_json(struct pack_reader *r, struct buf *out);
int buf_json_number(struct buf *b, double v); /* a JSON number (NaN, infinity: null) */

#endif
