/*
 * certhook.h -- the value types every layer shares; nothing else.
 *
 * The layers, each a folder under src/ with one header for what it offers; calls go down
 * only (a lower layer reaches a higher one through callbacks it is given):
 *
 *   server.c config.c cli.c   start-up and shutdown, the configuration, the command line
 *   intake/    listeners, the webhook and admin routes, TLS (the only libmicrohttpd user)
 *   dispatch/  the loop, deliveries, retries, handler generations, the stall detector
 *   lua/       the Lua states certhook makes and the certhook.* API handlers call
 *   providers/ sources and providers: authentication, normalization, the event's encoding
 *   journal/   the durable journal: the batching writer over a store (the only SQL)
 *   base/      buffers, logging, clocks, metrics, the event record and its byte format
 */
#ifndef CERTHOOK_H
#define CERTHOOK_H

#include <stddef.h>
#include <stdint.h>

#define CERTHOOK_VERSION "0.2.0"

/* The string fields of an event's summary, in one list: the journal's columns, struct event,
 * the command line's rows and the inventory are all made from it. */
#define EVENT_STRINGS(X) X(id) X(source) X(provider) X(type) X(provider_type) X(hostname)

/* One accepted event, as the journal keeps it: the summary (for indexes, listings, routing),
 * the event as normalized at intake (packed: base/pack.c's format, decoded by everyone after
 * intake) and the body as it was received. One malloc'd block (event_new). */
struct event {
    struct event *next;
    int64_t seq; /* the journal's row; set when it is written */
    double received_at, occurred_at; /* occurred_at 0: the provider did not say */
#define EVENT_FIELD(f) const char *f;
    EVENT_STRINGS(EVENT_FIELD) /* NULL when absent (provider_type, hostname may be) */
#undef EVENT_FIELD
    const void *packed;
    size_t packed_len;
    const char *body;
    size_t body_len;
    /* What the certificate inventory learns from it: a list of tables in the pack format
     * (base.h), one per certificate (providers/event.c says what they hold), or NULL. */
    const char *certs;
    size_t certs_len;
    /* What the inventory said when the event was journaled -- {"stale":, "repeats":,
     * "previous": {the certificate's entry before it}} -- or NULL: none (stale false, repeats
     * 1). Set by the journal; malloc'd, freed with the event. */
    char *context;
};

enum delivery_status {
    DELIVERY_PENDING,
    DELIVERY_RUNNING,
    DELIVERY_RETRYING,
    DELIVERY_DONE,
    DELIVERY_DEAD,
};
extern const char *const delivery_status_names[]; /* "pending", ... as journaled (base/event.c) */

/* The latest state of one delivery, as the journal keeps it. */
struct delivery_result {
    char *handler; /* "<file>:<pattern>" */
    enum delivery_status status;
    int attempts;
    int crashes;         /* deaths of the process while its handler ran */
    unsigned generation; /* of the last attempt */
    double first_at, started_at, duration, next_at; /* next_at: RETRYING, PENDING */
    char *error, *traceback; /* of this attempt, when it failed; NULL otherwise */
};

/* delivery = {...} (DESIGN §9): how handlers run and are retried. Times in seconds. */
struct delivery_cfg {
    int max_attempts;
    double backoff, max_backoff, timeout, shutdown_grace;
    double lease; /* a shared journal: how long a server's hold on its work lasts unrenewed */
    unsigned concurrency, per_host; /* per_host: requests in flight to one host; 0: no bound */
    size_t memory_limit;            /* bytes a handler generation's Lua state may hold */
};

#endif
