/*
 * journal.h -- the durable journal (DESIGN §1, §10), whatever keeps it: events as normalized
 * at intake (with their bodies and summaries), the deliveries of each, certhook.state's keys,
 * replay requests, the certificate inventory. One writer thread batches every write into one
 * transaction and one durable commit (writer.c); reads go to the store directly (journal.c).
 * The store is one file behind struct store_ops (store.h): SQLite (store_sqlite.c) for a data
 * directory, PostgreSQL (store_pg.c) for a postgresql:// URI, which several servers share.
 * Nothing outside this folder speaks SQL.
 *
 * A shared journal: every server journals what it accepts and dispatches it itself; it holds
 * (claims) those events under a lease it renews. When a server dies its lease runs out, and
 * another server claims its events (journal_claim) and runs what they still need; a server
 * that stops gives its events back at once. On a journal only one server uses, claims are
 * no-ops: that server holds everything, and reads it back at its start.
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
    JOURNAL_EXCLUSIVE = 4, /* a server: SQLite holds a lock until close (one server per data
                            * directory); a shared store registers it and keeps its lease */
};

struct journal_options {
    const char *where; /* the data directory, or a postgresql:// URI */
    int flags;
    double busy_timeout; /* seconds to wait for a lock held by another process */
    double retention;    /* seconds finished events are kept */
    size_t max_wal;      /* bytes the write-ahead log may reach before it is cut back */
    double lease;        /* seconds a server's claims last unrenewed (shared; 0: 120) */
};

/* Whether where names a database (a postgresql:// or postgres:// URI) rather than a data
 * directory. */
int journal_is_database(const char *where);
/* The data directory of the journal, for the files that belong with it (the dispatcher's
 * slot); NULL for a database. */
const char *journal_directory(struct journal *j);

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
 * per call. A shared journal that lost this server's lease (it could not renew it in time, and
 * another server may have claimed its events) calls sink with NULL: the events handed over
 * before are no longer this server's to dispatch. */
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
/* Accepted events not yet handed to the sink (waiting for their fold). Thread-safe. */
size_t journal_waiting(struct journal *j);

/* ---- reading (journal.c): the calling thread's connection, events handed over are theirs ---- */
/* On a shared journal, scans and loads by seq see the events this server holds. */

int64_t journal_max_seq(struct journal *j);
/* Up to limit events with after < seq <= upto in state (0: never dispatched), in order. */
int journal_scan_events(struct journal *j, int state, int64_t after, int64_t upto, int limit,
                        void (*fn)(void *cls, struct event *ev), void *cls);
/* The event seq (one this server holds), or the event id (any). NULL: none. */
struct event *journal_load(struct journal *j, int64_t seq, const char *id);

/* A delivery as journaled, for the dispatcher's start and replays. */
struct journal_delivery {
    int64_t seq;
    const char *handler;
    enum delivery_status status;
    int attempts, crashes;
    double next_at, first_at; /* wall clock */
};
/* Deliveries in a status (NULL: those not final -- pending, running, retrying) of the event seq
 * (0: of every event): fn for each. Returns how many, or -1. */
int journal_scan_deliveries(struct journal *j, const char *status, int64_t seq,
                            void (*fn)(void *cls, const struct journal_delivery *row), void *cls);
/* A replay request (journal_request_replay): every dead delivery (dead), or those of the event
 * event_id -- the delivery to handler, or with handler NULL the ones that did not succeed. */
struct journal_replay {
    int64_t id;
    const char *event_id, *handler;
    int dead;
};
/* Replay requests after id: fn for each. Returns how many, or -1. A shared journal hands each
 * request to one server: the one that holds its event, or takes it (a finished one); the next
 * journal_finish with replays_upto marks them done. */
int journal_scan_replays(struct journal *j, int64_t after,
                         void (*fn)(void *cls, const struct journal_replay *r), void *cls);

/* ---- where servers listen (journal.c): for the command line on this machine ---- */

/* A server of the journal: its process and where it listens ("http://127.0.0.1:8080",
 * "https://0.0.0.0:8443"; admin "http://127.0.0.1:9090"). */
struct journal_server {
    long pid;
    const char *listen, *admin;
};
/* Records where this server (JOURNAL_EXCLUSIVE) listens, replacing what it recorded before: in
 * the data directory (certhook.listening, removed when the server closes the journal), or in
 * its row of the database's servers (gone with it). 0, or -1 with err. */
int journal_announce(struct journal *j, const struct journal_server *me, char *err,
                     size_t errlen);
/* The servers of this journal on this machine that recorded where they listen, newest first:
 * fn for each. One killed may still be there: its pid tells. Returns how many, or -1 with err. */
int journal_servers(struct journal *j, void (*fn)(void *cls, const struct journal_server *srv),
                    void *cls, char *err, size_t errlen);

/* ---- claims (journal.c): which server runs what, when several share the journal ---- */

/* Claims for this server up to limit open events no live server holds -- those of a server
 * whose lease ran out, or that stopped -- and hands over what they need: on_delivery for each
 * of their deliveries not final (running: its attempt was interrupted), on_event for each
 * event never dispatched (taken). Returns how many events, or -1. 0 on a journal one server
 * uses (it holds everything). */
int journal_claim(struct journal *j, int limit,
                  void (*on_delivery)(void *cls, const struct journal_delivery *row),
                  void (*on_event)(void *cls, struct event *ev), void *cls);
/* Seconds this server's claims still hold (time_mono), INFINITY on a journal one server uses.
 * Start nothing that could outlast it. Any thread. */
double journal_lease(struct journal *j);
/* A descriptor that becomes readable when another server made work claimable (it stopped, a
 * replay was asked for): a hint to claim and poll now (journal_wake_clear). -1: none. */
int journal_wake_fd(struct journal *j);
void journal_wake_clear(struct journal *j);

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
    const char *id;            /* NULL: any; else that event alone */
    int limit;
    const char *provider;      /* NULL: any; else events of that provider */
    int64_t before;            /* 0: any; else events with seq < before (a cursor) */
    double since, until;       /* 0: any; else received_at >= since, received_at < until */
};
struct journal_row { /* one event with one of its deliveries (handler NULL when none) */
    int64_t seq;
    const char *id, *source, *type, *provider_type, *hostname, *handler, *status, *error;
    const char *provider, *traceback;
    double received_at, next_at, started_at;
    int state, attempts, generation;
};
int journal_list(struct journal *j, const struct journal_filter *f,
                 void (*fn)(void *cls, const struct journal_row *row), void *cls, char *err,
                 size_t errlen);
/* Queues a replay for the server: of the event event_id, or of every dead delivery when
 * event_id is NULL; `who` asked for it (a token's name, "local"; NULL: not said), journaled
 * with it. From a server's own journal (JOURNAL_EXCLUSIVE: the admin listener) it goes through
 * a connection of its own, as the command line's would, never the writer's. An event's replay runs its delivery to handler again, whatever its status;
 * with handler NULL, those of its deliveries that did not succeed and the handlers that match it
 * now but never ran for it (DESIGN §10: one that succeeded is not re-run unless named).
 * Deliveries scheduled or in flight keep their course. *count: the deliveries that run again,
 * as the journal is now (handler: 1; an event: its dead ones; every dead one). 0, or -1 with err
 * (no such event, no such delivery of it, journal locked, ...). */
int journal_request_replay(struct journal *j, const char *event_id, const char *handler,
                           const char *who, int *count, char *err, size_t errlen);

/* The replays asked for (journal_request_replay), kept: of the event event_id (NULL: of any, and
 * those of every dead delivery), newest first, up to limit: fn for each. 0, or -1 with err. */
struct journal_replay_record {
    const char *event_id, *handler, *by; /* event_id NULL: every dead delivery; by NULL: unsaid */
    int dead;
    double at;
};
int journal_replay_log(struct journal *j, const char *event_id, int limit,
                       void (*fn)(void *cls, const struct journal_replay_record *r), void *cls,
                       char *err, size_t errlen);

/* The certificate inventory (certhook.certs, certhook certs): entries as JSON objects -- key,
 * provider, source, hostname, certificate_id, name, scope, status, state, domains, issuer,
 * serial_number, not_before, expires_at, expires_at_approximate (true or null), last_event,
 * last_type, last_occurred_at, repeats, warned_at, renewed_at, reached_at, first_seen,
 * updated_at, previous_status, previous_state (state: NULL in entries an earlier certhook kept,
 * until their next event; previous_*: the status, the state before the last event that changed
 * each, NULL until one did). `find`:
 * the one entry with that key, else certificate id, else the newest of that hostname. Otherwise
 * a list, soonest expiry first: those whose status is `status` in any case, or whose state is
 * (NULL: all but deleted ones), in the state `state` (NULL: any), expiring before
 * `expiring_before` (0: any; those without an expiry are left out then), up to limit.
 * fn(cls, json) for each; 0, or -1 with err. */
struct journal_certs_query {
    const char *find, *status, *state;
    const char *provider; /* NULL: any */
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
/* ---- copying (journal.c): certhook migrate -------------------------------------------------- */

enum journal_record_kind {
    JR_EVENT, JR_DELIVERY, JR_STATE, JR_CERTIFICATE, JR_REPLAY, JR_ONCE, JR_REPLAY_LOG, JR_KINDS
};
/* One row of a journal, as copied: only the fields of its kind are set. */
struct journal_record {
    enum journal_record_kind kind;
    const struct event *ev;        /* EVENT: with seq, its packed form and body */
    int state;                     /* EVENT: 0 never dispatched, 1 dispatching, 2 finished */
    int64_t seq;                   /* DELIVERY: its event; REPLAY, REPLAY_LOG: its id */
    const struct delivery_result *d; /* DELIVERY */
    const char *key, *value;       /* STATE: key, JSON text; CERTIFICATE: -, the inventory entry
                                    * as JSON (journal_certs); ONCE: key, results (NULL: claimed);
                                    * REPLAY, REPLAY_LOG: the handler (NULL: all of the
                                    * event's that did not succeed); REPLAY_LOG: value, who */
    size_t key_len, value_len;
    const char *status, *event_id; /* CERTIFICATE: status; REPLAY, REPLAY_LOG: the event
                                    * (NULL: every dead delivery) */
    double expires_at, at;         /* STATE: 0 never; REPLAY, REPLAY_LOG: requested_at; ONCE:
                                    * the claim's lease_until (0: none) */
    int dead;                      /* REPLAY, REPLAY_LOG */
};
/* Copies every event, delivery, state key, certificate, replay request and record of a replay
 * asked (replay_log) of from into to --
 * a journal that holds no event yet -- in one transaction of to; counts[kind]: how many. 0, or
 * -1 with err (nothing of it was written). */
int journal_copy(struct journal *from, struct journal *to, long counts[JR_KINDS], char *err,
                 size_t errlen);

/* Feeds the certificate inventory (metrics_certificate) the newest cap hostnames; before the
 * writer starts. Returns how many, or -1. */
int journal_load_inventory(struct journal *j, size_t cap);

#endif
