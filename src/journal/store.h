/*
 * store.h -- what a journal store does, behind the engine-neutral journal (journal.h): one
 * struct of operations per engine, one file each (store_sqlite.c, store_pg.c); and the journal
 * itself. Private to src/journal.
 *
 * The writer thread (writer.c) uses the write operations, one transaction per batch: begin,
 * insert / state / delivery / settle / replayed for each request, commit or rollback; a store
 * may answer the requests (r->result) only at its commit. Reads and claims come one at a time
 * (journal.c holds rmu around each), from any other thread: the dispatcher's (scans, loads,
 * state reads, claims), a generation loading on the reload's thread (state reads), the
 * command line's, the admin listener's; status from any thread at any time. Operations a store leaves NULL are those of a
 * journal one server uses: no claims, no lease, no wake-ups, no copies.
 */
#ifndef CERTHOOK_STORE_H
#define CERTHOOK_STORE_H

#include <pthread.h>

#include "journal/journal.h"

struct store;

/* ---- inventory.c: the inventory fold, the same for every store ------------------------------- */

/* An inventory entry's fields, in the order its JSON lists them (the event's `previous`,
 * certhook.certs, certhook certs --json): S a string, J a JSON text (domains: a list), N a
 * number (NAN: none), B a flag (0: none), I an integer. The one list: the struct, its JSON
 * and the stores' columns come from it. */
#define ENTRY_FIELDS(S, J, N, B, I)                                                           \
    S(key) S(provider) S(source) S(hostname) S(certificate_id) S(name) S(scope) S(status)      \
    S(state) J(domains) S(issuer) S(serial_number) N(not_before) N(expires_at)                 \
    B(expires_at_approximate) S(last_event) S(last_type) N(last_occurred_at) I(repeats)        \
    N(warned_at) N(renewed_at) N(reached_at) N(first_seen) N(updated_at) S(previous_status)    \
    S(previous_state)

struct entry {
#define ENTRY_STR(f) char *f;
#define ENTRY_NUM(f) double f;
#define ENTRY_INT(f) int f;
    ENTRY_FIELDS(ENTRY_STR, ENTRY_STR, ENTRY_NUM, ENTRY_INT, ENTRY_INT)
#undef ENTRY_STR
#undef ENTRY_NUM
#undef ENTRY_INT
};
void entry_init(struct entry *e);  /* every field none */
void entry_clear(struct entry *e); /* frees its strings; every field none */
int entry_json(const struct entry *e, struct buf *out); /* its JSON object (fields that are set) */

/* ---- ids.c: the ids a journal holds, in memory, for exact duplicate detection --------------- */

struct ids;
struct ids *ids_new(void); /* NULL: out of memory */
void ids_free(struct ids *s);
uint32_t ids_hash(const char *id);
/* seq is at least the first one added, and less than 2^32 past it. 0, or -1: out of memory. */
int ids_add(struct ids *s, uint32_t h, int64_t seq);
/* The seq of an id hashing to h for which same(cls, seq) says it is the one (1), or 0. */
int64_t ids_find(const struct ids *s, uint32_t h, int (*same)(void *cls, int64_t seq), void *cls);
void ids_remove(struct ids *s, uint32_t h, int64_t seq);
size_t ids_count(const struct ids *s);

struct store_ops;
struct inventory;
/* A cache of at most cap entries (those changed and not yet written stay whatever the cap). */
struct inventory *inventory_new(size_t cap);
void inventory_free(struct inventory *inv);
/* Folds ev -- what it says of its certificates, ev->certs -- into the inventory, in log
 * order: sets ev->context (malloc'd; NULL: nothing to say) and marks the entries it changed.
 * Entries not cached are read through ops->entry_get. 0, or -1: the store could not be read or
 * out of memory (the inventory is then to be forgotten). */
int inventory_fold(struct inventory *inv, struct store *st, const struct store_ops *ops,
                   struct event *ev);
/* The keys of the entries ev's fold reads (those of its certificates), each handed to fn (not
 * NUL-terminated). 0. */
int inventory_keys(const struct event *ev, void (*fn)(void *cls, const char *key, size_t n),
                   void *cls);
/* Writes the changed entries through ops->entry_put (in the store's transaction). 0 or -1. */
int inventory_flush(struct inventory *inv, struct store *st, const struct store_ops *ops);
void inventory_committed(struct inventory *inv); /* they are written: their metrics set */
void inventory_forget(struct inventory *inv);    /* the transaction failed: drop every entry */

/* A delivery's last_error or traceback (col) in the upsert of its state, where row names the
 * row being updated ("" or "d."): that of its last failed attempt, kept while it is retried or
 * runs again; none once it succeeded, so that a done delivery never shows an old error. */
#define KEPT_ERROR(row, col) \
    "CASE WHEN excluded.status = 'done' THEN NULL ELSE coalesce(excluded." col ", " row col ") END"

struct store_ops {
    const char *name;
    /* Opens (and with JOURNAL_CREATE makes) the store; migrates its schema. */
    int (*open)(struct store **sp, const struct journal_options *o, char *err, size_t errlen);
    void (*close)(struct store *s);

    /* ---- the writer's thread ---- */
    int (*writer_start)(struct store *s); /* before the first batch (a checkpointer, ...) */
    void (*writer_stop)(struct store *s); /* after the last */
    /* durable 0: the commit may be lost to a power cut (not to a crash of certhook) until the
     * next durable one */
    int (*begin)(struct store *s, int durable);
    /* r->ev, a new event: r->result ACCEPTED (ev->seq set; the inventory updated in the same
     * transaction) or DUPLICATE (its id was journaled before), set now or by commit. 0, or -1:
     * error */
    int (*insert)(struct store *s, struct journal_req *r);
    int (*state)(struct store *s, struct journal_req *r); /* STATE_* and ONCE_* requests: r->result
                                                            * set (or by commit); 0, or -1: error */
    int (*delivery)(struct store *s, int64_t seq, const struct delivery_result *r);
    int (*settle)(struct store *s, int64_t seq); /* the event's state from its deliveries */
    int (*replayed)(struct store *s, int64_t upto); /* replay requests up to upto are done */
    int (*commit)(struct store *s);
    void (*rollback)(struct store *s);
    const char *(*error)(struct store *s); /* why the last write operation failed */
    /* 1 when that failure may pass by itself (the database unreachable, restarting, read-only
     * in a failover): the writer keeps the batch's delivery states for a later one. */
    int (*transient)(struct store *s);
    void (*prune)(struct store *s, double retention); /* between batches, now and then */
    /* A shared store: keeps this server's lease, between batches; *next: seconds until it wants
     * to be called again. Returns 1 when the lease was lost (its events may be another
     * server's now): the writer tells the sink, and calls again to register anew. */
    int (*renew)(struct store *s, double *next);

    /* ---- the projections (writer.c), folded from the log off the path to the 202: after the
     * commit the requests wait for, in a transaction of their own (begin, these, commit). A
     * store that leaves them NULL keeps its inventory itself, in insert (ev->context set there),
     * and gets the delivery states in the same transaction as the requests (as does a shared
     * store: fold_take). ---- */
    int (*entry_get)(struct store *s, const char *key, struct entry *e); /* 1 found, 0, -1 */
    int (*entry_put)(struct store *s, const struct entry *e);
    int (*context)(struct store *s, int64_t seq, const char *context); /* seq's, as it came */
    int (*folded)(struct store *s, int64_t upto); /* the log is folded up to upto */
    /* The events journaled after the last fold (a crash between the two transactions), in log
     * order, each handed to fn (which takes it). Before the writer starts. 0, or -1. */
    int (*unfolded)(struct store *s, void (*fn)(void *cls, struct event *ev), void *cls);
    /* A shared store (several servers append to one log; its events are folded by whichever
     * holds the fold then) instead of begin and unfolded: starts the fold's transaction if no
     * other server folds now (1: then commit or rollback), *from the seq the log is folded up
     * to, *upto how far it may be folded now -- no batch still in flight can hold a seq up to
     * it -- and the events between them handed to fn in log order (every server's; only those
     * that say something of a certificate). 0: another server folds now, nothing begun, *from
     * and *upto how far the log is folded. -1: error, to roll back. */
    int (*fold_take)(struct store *s, int64_t *from, int64_t *upto,
                     void (*fn)(void *cls, struct event *ev), void *cls);
    /* Sets the context of each event of the list (folded, by any server) as it was written,
     * out of any transaction. 0, or -1. */
    int (*contexts)(struct store *s, struct event *list);
    /* The store the fold's thread uses (fold_take, the projections' operations, commit...):
     * another connection to the same journal, closed with s. NULL: out of memory. */
    struct store *(*fold_store)(struct store *s);

    /* ---- reads ---- */
    int64_t (*max_seq)(struct store *s);
    int (*scan_events)(struct store *s, int state, int64_t after, int64_t upto, int limit,
                       void (*fn)(void *cls, struct event *ev), void *cls);
    struct event *(*load)(struct store *s, int64_t seq, const char *id);
    int (*scan_deliveries)(struct store *s, const char *status, int64_t seq,
                           void (*fn)(void *cls, const struct journal_delivery *row), void *cls);
    int (*scan_replays)(struct store *s, int64_t after,
                        void (*fn)(void *cls, const struct journal_replay *r), void *cls);
    int (*state_get)(struct store *s, const char *key, char **out, size_t *len, char *err,
                     size_t errlen);
    int (*state_keys)(struct store *s, const char *prefix, void (*fn)(void *, const char *),
                      void *cls, char *err, size_t errlen);
    int (*once_get)(struct store *s, const char *key, char **out, size_t *len, char *err,
                    size_t errlen);
    int (*certs)(struct store *s, const struct journal_certs_query *q,
                 void (*fn)(void *cls, const char *json), void *cls, char *err, size_t errlen);
    int (*list)(struct store *s, const struct journal_filter *f,
                void (*fn)(void *cls, const struct journal_row *row), void *cls, char *err,
                size_t errlen);
    int (*request_replay)(struct store *s, const char *event_id, const char *handler,
                          const char *who, int *count, char *err, size_t errlen);
    int (*replay_log)(struct store *s, const char *event_id, int limit,
                      void (*fn)(void *cls, const struct journal_replay_record *r), void *cls,
                      char *err, size_t errlen);
    void (*status)(struct store *s, struct journal_status *st); /* any thread */
    int (*load_inventory)(struct store *s, size_t cap);
    const char *(*directory)(struct store *s); /* journal_directory */
    int (*announce)(struct store *s, const struct journal_server *me, char *err, size_t errlen);
    int (*servers)(struct store *s, void (*fn)(void *cls, const struct journal_server *srv),
                   void *cls, char *err, size_t errlen);

    /* ---- claims (shared stores; journal.h says what each does) ---- */
    int (*claim)(struct store *s, int limit,
                 void (*on_delivery)(void *cls, const struct journal_delivery *row),
                 void (*on_event)(void *cls, struct event *ev), void *cls);
    double (*lease)(struct store *s);
    int (*wake_fd)(struct store *s);
    void (*wake_clear)(struct store *s);

    /* ---- copies: export from one store, import into another (journal_copy) ---- */
    int (*export)(struct store *s, int (*fn)(void *cls, const struct journal_record *rec),
                  void *cls, char *err, size_t errlen);
    int (*import_begin)(struct store *s, char *err, size_t errlen); /* refuses a non-empty one */
    int (*import)(struct store *s, const struct journal_record *rec, char *err, size_t errlen);
    int (*import_end)(struct store *s, int ok, char *err, size_t errlen); /* commit / roll back */
    /* Events without their packed form: fn gives it, the store keeps it. */
    int (*upgrade)(struct store *s,
                   int (*fn)(void *cls, const struct event *ev, struct buf *packed, char *err,
                             size_t errlen),
                   void *cls, char *err, size_t errlen);
};

extern const struct store_ops store_sqlite, store_pg;
void store_sqlite_version(struct buf *b); /* "SQLite 3.40.1" */
void store_pg_version(struct buf *b);     /* "libpq 15.18" */

/* The journal: a store and the writer's queue (writer.c), shared by journal.c and writer.c. */
struct journal {
    const struct store_ops *ops;
    struct store *s;
    double retention;
    pthread_t thread;
    int started, stop;
    double hold_until;  /* time_mono() before which kept delivery states wait (a failure) */
    char last_why[200]; /* the writer's last failure logged, when; how many since, unlogged */
    double logged_at;
    unsigned long unlogged;
    pthread_mutex_t rmu; /* one read operation at a time (journal.c) */
    pthread_mutex_t mu;  /* guards what follows */
    pthread_cond_t cv;  /* on the monotonic clock */
    struct journal_req *reqs, **reqs_tail;
    struct journal_done *dones, **dones_tail;
    size_t queued;      /* requests waiting for the writer */
    int healthy;        /* the last batch was written */
    char why[200];      /* why it was not */
    journal_sink sink;
    void *sink_cls;
    /* the writer's thread: the inventory, when the journal folds it (store ops entry_get...),
     * and the accepted events not yet folded, in log order (a projection that failed) */
    struct inventory *inv;
    struct event *unfolded, **unfolded_tail;
    size_t nunfolded; /* atomic: journal_waiting reads it from other threads */
    double unfolded_since; /* time_mono() of the oldest unfolded */
    struct journal_done *pdones, **pdones_tail; /* delivery states for the next fold */
    int exclusive; /* a server's journal (JOURNAL_EXCLUSIVE): it folds what it journals */
    /* a shared store's (ops->fold_take): how far this server's last fold went (its cache holds
     * until another server's), when to try again (another server folds, or a batch in flight
     * holds the horizon back) and to fold what others left (a server that died) */
    int64_t folded;
    double fold_at, catchup_at;
    struct store *fs;      /* the fold's store: its thread's (fthread), woken by fcv */
    pthread_t fthread;
    pthread_cond_t fcv;    /* under mu, on the monotonic clock */
    int fstarted, fstop;
    /* a server's replay requests (journal_request_replay): a connection of their own, opened
     * on first use as the command line's would be (never the writer's), under smu */
    pthread_mutex_t smu;
    struct store *side;
    char *where;
    double busy_timeout;
};

#endif
