/*
 * journal.h -- the durable journal (DESIGN §1, §10), whatever keeps it: events as normalized
 * at intake (with their bodies and summaries), the deliveries of each, certhook.state's keys,
 * replay requests, the certificate inventory. One writer thread batches every write into one
 * transaction and one durable commit (writer.c); reads go to the store directly (journal.c).
 * The store is one file behind struct store_ops (store.h): SQLite (store_sqlite.c) for a data
 * directory. Nothing outside this folder speaks SQL.
 */
#ifndef CERTHOOK_JOURNAL_H
#define CERTHOOK_JOURNAL_H

#include "base/base.h"

struct journal;

enum journal_op {
    JOURNAL_APPEND,       /* ev: a new event */
    JOURNAL_STATE_SET,    /* key = value (JSON text), expires_at (0: never) */
    JOURNAL_STATE_DELETE, /* key */
    JOURNAL_STATE_INCR,   /* key += by; the new value in number */
    /* certhook.once: claim key until expires_at (wall clock) -- ACCEPTED: ours to run;
     * DUPLICATE: it ran to success already; REFUSED: another claim holds it (error: till when) */
    JOURNAL_ONCE_CLAIM,
    JOURNAL_ONCE_DONE,    /* key ran to success: its results (JSON text) in value */
    JOURNAL_ONCE_RELEASE, /* key did not run to success: the claim goes */
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
    struct event *ev;         /* APPEND: taken by the writer: handed to the sink once accepted */
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

/* Delivery states of one event (seq 0: none), and replay requests handled (replays_upto).
 * The writer takes ownership and frees it. */
struct journal_done {
    struct journal_done *next;
    int64_t seq, replays_upto;
    size_t n;
    struct delivery_result r[];
};
struct journal_done *journal_done_new(int64_t seq, size_t n);
void journal_done_free(struct journal_done *d);

typedef void (*journal_sink)(void *cls, struct event *list);

enum {
    JOURNAL_CREATE = 1,    /* make the data directory and the schema (else it must exist) */
    JOURNAL_READONLY = 2,  /* read only: no writer */
    JOURNAL_EXCLUSIVE = 4, /* the one server on it: a lock held until close (SQLite) */
};

struct journal_options {
    const char *where; /* the data directory */
    int flags;
    double busy_timeout; /* seconds to wait for a lock held by another process */
    double retention;    /* seconds finished events are kept */
    size_t max_wal;      /* bytes the write-ahead log may reach before it is cut back */
};

/* Opens the journal; its schema is brought to this version. NULL with err (naming the PID of
 * the server that holds it, for JOURNAL_EXCLUSIVE). */
int journal_open(struct journal **jp, const struct journal_options *o, char *err, size_t errlen);
void journal_close(struct journal *j);

/* Events an earlier certhook journaled with only their body: fn normalizes each (its summary
 * and body are in ev) into *packed; the journal keeps it. Returns how many, or -1 with err. */
int journal_upgrade(struct journal *j,
                    int (*fn)(void *cls, const struct event *ev, struct buf *packed, char *err,
                              size_t errlen),
                    void *cls, char *err, size_t errlen);

/* Appends the versions of the libraries the stores use ("SQLite ..."). */
void journal_versions(struct buf *b);

/* ---- writing (writer.c) ------------------------------------------------------------------- */

/* Starts the writer thread; accepted events go to sink (may be NULL), in commit order, a batch
 * per call. */
int journal_start(struct journal *j, journal_sink sink, void *cls);
void journal_stop(struct journal *j); /* writes what is queued, joins the writer */
/* Queues r and the requests chained after it (r->next: NULL for one alone), to be written in
 * one transaction. Thread-safe. */
void journal_append(struct journal *j, struct journal_req *r);
void journal_call(struct journal *j, struct journal_req *r);    /* append, wait for the commit */
/* Thread-safe, takes d. Delivery states that are all done (or running) ride in the writer's
 * next batch without a durable commit of their own: lost to a crash, they only mean the
 * handler runs again (at least once). Anything else is committed durably. */
void journal_finish(struct journal *j, struct journal_done *d);
int journal_healthy(struct journal *j, char *why, size_t n); /* 1 if the last write worked */

/* ---- reading (journal.c): the calling thread's connection, events handed over are theirs ---- */

int64_t journal_max_seq(struct journal *j);
/* Up to limit events with after < seq <= upto in state (0: never dispatched), in order. */
int journal_scan_events(struct journal *j, int state, int64_t after, int64_t upto, int limit,
                        void (*fn)(void *cls, struct event *ev), void *cls);
struct event *journal_load(struct journal *j, int64_t seq, const char *id);

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
/* certhook.state reads: get returns the JSON text in *out (malloc'd) or NULL when absent or
 * expired; keys calls fn for each live key with the prefix, in order. 0, or -1 with err. */
int journal_state_get(struct journal *j, const char *key, char **out, size_t *len, char *err,
                      size_t errlen);
int journal_state_keys(struct journal *j, const char *prefix, void (*fn)(void *, const char *),
                       void *cls, char *err, size_t errlen);
/* certhook.once: the results (JSON text) of key's run to success in *out (malloc'd), or NULL
 * when it did not run to success (yet). 0, or -1 with err. */
int journal_once_get(struct journal *j, const char *key, char **out, size_t *len, char *err,
                     size_t errlen);

/* The command line's view (certhook events / replay). */
struct journal_filter {
    const char *status, *type; /* NULL: any; type is a pattern (`*`) on type or provider_type */
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
 * handlers), or every dead delivery when event_id is NULL. *count: the deliveries of the event
 * / the dead ones now. 0, or -1 with err (no such event, journal locked, ...). */
int journal_request_replay(struct journal *j, const char *event_id, int *count, char *err,
                           size_t errlen);

/* The certificate inventory (certhook.certs, certhook certs): entries as JSON objects -- key,
 * provider, source, hostname, certificate_id, name, scope, status, domains, issuer,
 * serial_number, not_before, expires_at, last_event, last_type, last_occurred_at, repeats,
 * first_seen, updated_at. `find`: the one entry with that key, else certificate id, else the
 * newest of that hostname. Otherwise a list, soonest expiry first: those with the status (NULL:
 * all but deleted ones), expiring before `expiring_before` (0: any; those without an expiry
 * are left out then), up to limit. fn(cls, json) for each; 0, or -1 with err. */
struct journal_certs_query {
    const char *find, *status;
    double expiring_before;
    int limit;
};
int journal_certs(struct journal *j, const struct journal_certs_query *q,
                  void (*fn)(void *cls, const char *json), void *cls, char *err, size_t errlen);

/* For /metrics, from any thread. */
struct journal_status {
    size_t queued;        /* requests waiting for the writer */
    double deliveries[5]; /* by status, in delivery_status_names order (-1: unknown) */
    double wal_bytes;     /* the write-ahead log's size */
    double behind;        /* seconds since it was last checkpointed whole (0: it is) */
};
void journal_status(struct journal *j, struct journal_status *st);
/* Feeds the certificate inventory (metrics_certificate) the newest cap hostnames; before the
 * writer starts. Returns how many, or -1. */
int journal_load_inventory(struct journal *j, size_t cap);

#endif
