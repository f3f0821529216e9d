/*
 * store_pg.c -- the journal in PostgreSQL, shared by every server that names the database
 * (DESIGN §9, §10). The URI goes to libpq as it is, so multi-host failover
 * (target_session_attrs=read-write), sslmode, passfile and the PG* variables work as usual.
 *
 * The tables live in the schema certhook, made and migrated at open under an advisory lock
 * (two servers may start at once). Each connection belongs to one thread and is made again,
 * with a backoff, when it is lost: the writer's (batches, the lease, pruning), the reader's (the
 * dispatcher's reads and claims, the command line's), the admin listener's (counts) and the
 * listener's (LISTEN, on a thread of its own that wakes the dispatcher).
 *
 * Blocking libpq on the writer thread: the writer is the thread that waits for the database
 * anyway (a 2xx only after the commit). A batch goes in pipeline mode -- BEGIN, every statement,
 * COMMIT, one Sync -- so it costs one round trip whatever its size, and its events are sent in
 * one order (hostname, id) so that two servers' batches take row locks in the same order. Reads
 * are synchronous on their thread, like SQLite's.
 *
 * The commit a 202 waits for holds the batch's events and nothing else (with what each says of
 * its certificates, facts). The inventory, each event's context and the watermark (fold.upto)
 * are folded off it by writer.c with journal/inventory.c, as SQLite's, in a transaction of
 * their own (pg_fold_take ... pg_commit) by whichever server takes the fold's advisory lock,
 * for every server's events in seq order. Seqs are drawn in one order and committed in another
 * (two servers, two batches): a fold never passes a seq a batch in flight may hold -- each
 * batch holds, from before it draws its seqs to its commit, a shared advisory lock whose key
 * is the last seq drawn then (appending, fold_begin in sql/pg/0006_fold.sql). An event is
 * dispatched, or claimed by another server, only once folded.
 *
 * Claims: a server registers a row in nodes and renews its lease_until from the writer thread
 * (every lease/4); it holds (events.owner) the events it accepts and those it claims, until they
 * are finished. A server that claims first deletes the nodes whose lease ran out and frees their
 * events, then takes free ones with FOR UPDATE SKIP LOCKED. A server that finds its own row gone
 * lost its lease: the dispatcher drops what it held (the writer tells it) and it registers anew.
 * Delivery states are written only for events the server holds, and a retry loads its event only
 * if it still holds it, so a server that lost its lease cannot overwrite another's work. NOTIFY
 * (after the commit, never inside a batch) tells the others when work becomes claimable: a server
 * stopped, a replay was asked for. New events need none: the server that accepted them runs them.
 */
#include <endian.h>
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "journal/store.h"

#define SCHEMA_LOCK "7162375496571678571" /* pg_advisory_lock key of migrations ("certhook") */
#define BACKOFF_MIN 0.1                   /* seconds before a lost connection is made again, */
#define BACKOFF_MAX 2.0                   /* doubling up to this */
#define PRUNE_BATCH 1000 /* events deleted per transaction */
#define REPLAY_BATCH 100 /* replay requests taken at a time */
#define FOLD_MAX 10000   /* events folded at most in one transaction */
#define STR(x) STR_(x)
#define STR_(x) #x
#define CHANNEL "certhook" /* LISTEN / NOTIFY */

#define OPEN_DELIVERY "status <> 'done' AND status <> 'dead'"
#define EVENT_COLUMNS "e.seq, e.id, e.source, e.provider, e.type, e.provider_type, e.hostname, " \
                      "e.received_at, e.occurred_at, d.event, d.body, coalesce(c.context, d.context)"
/* what the inventory said when the event came: written by the fold (contexts), or with the
 * event by a journal of an earlier version (event_data.context) */
#define EVENT_FROM "events e JOIN event_data d ON d.seq = e.seq LEFT JOIN contexts c ON c.seq = e.seq"

/* The schema's migrations, in order: migration i takes certhook.meta's version i to i + 1.
 * Each is a file of src/journal/sql/pg/ (NNNN_<what>.sql), made C strings by the Makefile. */
static const char *const migrations[] = {
#include "sql_pg.h"
};

/* ---- the writer's statements (prepared on its connection) ---------------------------------------- */

/* A batch's events, deliveries and settles go as one statement each, whatever their number, with
 * arrays for parameters: the executor starts once per batch rather than once per row. */
static const struct statement {
    const char *name, *sql;
} writer_statements[] = {
    /* before the batch draws its seqs: its mark until the commit (appending in the schema) */
    {"appending", "SELECT appending()"},
    /* the batch's events (ids unique, in id order: the unique index's locks in one order on
     * every server) and their data, what each says of its certificates with it (facts: folded
     * off the path to the 202); the rows of those new (the others are duplicates) */
    {"events",
     "WITH v AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], "
     "$5::text[], $6::text[], $7::float8[], $8::float8[], $10::bytea[], $11::bytea[], "
     "$12::bytea[]) AS v(id, source, provider, type, provider_type, hostname, received_at, "
     "occurred_at, event, body, facts)), "
     "ins AS (INSERT INTO events (id, source, provider, type, provider_type, hostname, "
     "received_at, occurred_at, owner) SELECT id, source, provider, type, provider_type, "
     "hostname, received_at, occurred_at, $9::bigint FROM v ORDER BY id ON CONFLICT (id) DO "
     "NOTHING RETURNING seq, id), "
     "data AS (INSERT INTO event_data (seq, event, body, facts) SELECT ins.seq, v.event, "
     "v.body, v.facts FROM ins JOIN v ON v.id = ins.id) "
     "SELECT seq, id FROM ins"},
    /* the batch's delivery states (one per delivery: folded before), only for events this server
     * holds ($13) */
    {"deliveries",
     "INSERT INTO deliveries AS d (event_seq, handler, status, attempts, generation, first_at, "
     "started_at, duration, next_at, last_error, traceback, crashes) SELECT v.* FROM "
     "unnest($1::bigint[], $2::text[], $3::text[], $4::int[], $5::bigint[], $6::float8[], "
     "$7::float8[], $8::float8[], $9::float8[], $10::text[], $11::text[], $12::int[]) AS "
     "v(event_seq, handler, status, attempts, generation, first_at, started_at, duration, "
     "next_at, last_error, traceback, crashes) WHERE EXISTS (SELECT 1 FROM events e WHERE e.seq "
     "= v.event_seq AND e.owner = $13::bigint) ORDER BY v.event_seq, v.handler "
     "ON CONFLICT (event_seq, handler) DO UPDATE SET status = excluded.status, attempts = "
     "excluded.attempts, crashes = excluded.crashes, generation = coalesce(excluded.generation, "
     "d.generation), first_at = coalesce(d.first_at, excluded.first_at), started_at = "
     "coalesce(excluded.started_at, d.started_at), duration = coalesce(excluded.duration, "
     "d.duration), next_at = excluded.next_at, last_error = " KEPT_ERROR("d.", "last_error") ", "
     "traceback = " KEPT_ERROR("d.", "traceback")},
    /* the events' states from their deliveries; a finished one is held by nobody */
    {"settle",
     "UPDATE events e SET state = x.st, owner = CASE WHEN x.st = 2 THEN NULL ELSE e.owner END "
     "FROM (SELECT s.seq, CASE WHEN EXISTS (SELECT 1 FROM deliveries WHERE event_seq = s.seq AND "
     OPEN_DELIVERY ") THEN 1 ELSE 2 END AS st FROM unnest($1::bigint[]) AS s(seq)) x WHERE "
     "e.seq = x.seq AND e.owner = $2::bigint"},
    {"sset", "INSERT INTO state (key, value, expires_at) VALUES ($1::bytea, $2::bytea, "
             "$3::float8) ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = "
             "excluded.expires_at"},
    {"sdel", "DELETE FROM state WHERE key = $1::bytea"},
    /* one statement, so that servers incrementing the same key never lose one: an absent or
     * expired key counts from 0, a number grows (and loses its TTL), anything else stays as it
     * is and is returned as it is (refused) */
#define IS_NUMBER "encode(s.value, 'escape') ~ '^-?(0|[1-9][0-9]*)(\\.[0-9]+)?([eE][+-]?[0-9]+)?$'"
#define EXPIRED "s.expires_at IS NOT NULL AND s.expires_at <= $3::float8"
    {"sincr", "INSERT INTO state AS s (key, value, expires_at) VALUES ($1::bytea, "
              "convert_to(num($2::float8), 'UTF8'), NULL) ON CONFLICT (key) DO UPDATE SET value = "
              "CASE WHEN " EXPIRED " THEN excluded.value WHEN " IS_NUMBER " THEN "
              "convert_to(num(encode(s.value, 'escape')::float8 + $2::float8), 'UTF8') ELSE "
              "s.value END, expires_at = CASE WHEN " EXPIRED " OR " IS_NUMBER " THEN NULL ELSE "
              "s.expires_at END RETURNING value"},
    {"replayed", "DELETE FROM replays WHERE id <= $1::bigint AND claimed_by = $2::bigint"},
    /* certhook.once (once_claim in the schema) */
    {"oclaim", "SELECT * FROM once_claim($1::bytea, $2::float8, $3::float8)"},
    {"odone", "INSERT INTO once (key, results) VALUES ($1::bytea, $2::bytea) ON CONFLICT (key) "
              "DO UPDATE SET results = excluded.results, lease_until = NULL"},
    {"orelease", "DELETE FROM once WHERE key = $1::bytea AND results IS NULL"},
    /* the fold (pg_fold_take): its start (fold_begin in the schema), the events to fold (those
     * that say something of a certificate), what it wrote */
    {"fbegin", "SELECT folded, horizon FROM fold_begin()"},
    {"fevents", "SELECT e.seq, e.id, e.source, e.provider, e.type, e.received_at, "
                "e.occurred_at, d.facts FROM events e JOIN event_data d ON d.seq = e.seq WHERE "
                "e.seq > $1::bigint AND e.seq <= $2::bigint AND d.facts IS NOT NULL ORDER BY "
                "e.seq LIMIT " STR(FOLD_MAX)},
    {"fcontexts", "INSERT INTO contexts (seq, context) SELECT * FROM unnest($1::bigint[], "
                  "$2::text[]) ON CONFLICT (seq) DO UPDATE SET context = excluded.context"},
    {"folded", "UPDATE fold SET upto = $1::bigint WHERE upto < $1::bigint"},
    {"fupto", "SELECT upto FROM fold"},
    {"fread", "SELECT seq, context FROM contexts WHERE seq = ANY($1::bigint[])"},
};
#define N_WRITER_STATEMENTS (sizeof writer_statements / sizeof writer_statements[0])

/* Element types of array parameters: the catalog's fixed OIDs (pg_type.h, a server header). */
enum { OID_BYTEA = 17, OID_INT8 = 20, OID_INT4 = 23, OID_TEXT = 25, OID_FLOAT8 = 701 };

struct arr;

/* A connection, remade with a backoff when lost. */
struct pgc {
    PGconn *c;
    const char *name; /* for messages: "writer", ... */
    int loud;         /* logs when the database goes away and comes back */
    int down;         /* the last attempt failed */
    int prepared;     /* the writer's statements are prepared on this one */
    double retry_at, backoff;
    char why[300];
};

enum pend_kind { P_OTHER, P_EVENTS, P_SET, P_INCR, P_ONCE };

/* An insert of the batch, where it came in it, and its id as the database keeps it (valid
 * UTF-8: a copy in id_tmp when it had to be made so). */
struct queued {
    struct journal_req *r;
    size_t at;
    const char *id;
    char *id_tmp;
};

/* A delivery state of the batch, where it came in it. */
struct held {
    int64_t seq;
    const struct delivery_result *r; /* the writer keeps it until the batch is over */
    size_t at;
};

/* A statement of the batch sent, whose result is still to be read. */
struct pend {
    enum pend_kind kind;
    struct journal_req *r;
};

struct store {
    char *uri;
    double lease;
    int server;                  /* registered in nodes: holds a lease */
    struct pgc w, r, a, l;       /* writer, reader, admin, listener */
    pthread_mutex_t amu;         /* the admin connection */
    _Atomic int_least64_t id;    /* this server's row in nodes (0: none) */
    pthread_mutex_t addr_mu;     /* guards: */
    char *listen, *admin;        /* where it listens (journal_announce) */
    _Atomic double lease_until;  /* time_mono() until which its claims hold */
    int lost;                    /* the writer found its row gone: register anew */
    /* the batch (writer thread) */
    struct queued *evs;          /* inserts, sent by commit in id order */
    size_t nev, capev;
    struct pend *pend;
    size_t npend, cappend;
    struct held *dels;           /* delivery states, sent by commit */
    size_t ndel, capdel;
    int64_t *settles;            /* events whose state follows from their deliveries */
    size_t nsettle, capsettle;
    int in_pipeline, synced, commit_sent, transient;
    /* the fold's transaction (pg_fold_take to the commit): the contexts it wrote */
    int folding;
    struct arr *cseq, *ctext;
    size_t nctx;
    char *eget_sql, *eput_sql; /* the inventory's entries: read one, write one */
    struct store *fold;        /* the fold's thread's (pg_fold_store) */
    /* the entries the fold reads, in one statement, when its cache is cold (another server
     * folded since this one's last fold): pre's rows, and how far that fold went */
    PGresult *pre;
    int64_t fold_last, fold_upto;
    char *epre_sql;
    char error[300];
    /* ids of events whose batch was lost with the connection after its COMMIT went out: they
     * may be committed, held by this server, though the dispatcher never got them */
    char **unsure;
    size_t nunsure;
    /* the listener */
    pthread_t lthread;
    int lstarted, wakefd, stopfd;
};

/* ---- connections ----------------------------------------------------------------------------- */

static void quiet(void *arg, const char *message)
{
    (void)arg;
    log_msg(LOG_DEBUG, "postgresql: %.*s", (int)strcspn(message, "\n"), message);
}

/* Connects with keepalives and timeouts the URI may override (it comes after them). */
static PGconn *pg_connect(const char *uri)
{
    static const char *const keys[] = {"connect_timeout", "keepalives", "keepalives_idle",
                                       "keepalives_interval", "keepalives_count",
                                       "tcp_user_timeout", "application_name", "dbname", NULL};
    const char *vals[] = {"5", "1", "10", "5", "3", "15000", "certhook", uri, NULL};
    PGconn *c = PQconnectdbParams(keys, vals, 1);
    if (c != NULL && PQstatus(c) == CONNECTION_OK) {
        PQsetNoticeProcessor(c, quiet, NULL);
        PGresult *res = PQexec(c, "SET search_path TO certhook");
        PQclear(res);
    }
    return c;
}

static void copy_message(char *out, size_t n, const char *msg)
{
    snprintf(out, n, "%.*s", (int)strcspn(msg ? msg : "", "\n"), msg ? msg : "");
}

/* Makes p usable: 0, or -1 with why in err (the database unreachable: tried again after the
 * backoff). */
static int pgc_ready(struct store *s, struct pgc *p, char *err, size_t errlen)
{
    if (p->c != NULL && PQstatus(p->c) == CONNECTION_OK)
        return 0;
    double now = time_mono();
    if (p->c != NULL) {
        PQfinish(p->c);
        p->c = NULL;
    }
    if (now < p->retry_at) {
        snprintf(err, errlen, "the journal database is unavailable: %s", p->why);
        return -1;
    }
    p->c = pg_connect(s->uri);
    if (p->c == NULL || PQstatus(p->c) != CONNECTION_OK) {
        copy_message(p->why, sizeof p->why, p->c ? PQerrorMessage(p->c) : "out of memory");
        PQfinish(p->c);
        p->c = NULL;
        p->backoff = p->backoff > 0 ? fmin(p->backoff * 2, BACKOFF_MAX) : BACKOFF_MIN;
        p->retry_at = now + p->backoff;
        if (p->loud && !p->down)
            log_msg(LOG_WARN, "the journal database is unreachable (%s): %s; trying again",
                    p->name, p->why);
        p->down = 1;
        snprintf(err, errlen, "the journal database is unavailable: %s", p->why);
        return -1;
    }
    if (p->loud && p->down)
        log_msg(LOG_INFO, "the journal database is reachable again (%s)", p->name);
    p->down = 0;
    p->backoff = 0;
    p->prepared = 0;
    return 0;
}

/* After a failed statement: whether the failure may pass by itself; a connection that is lost,
 * or that went to a server that can no longer write (shut down, read-only in a failover), is
 * dropped, to be made again after the backoff (libpq then looks for a writable host). */
static int pgc_failed(struct pgc *p, const PGresult *res)
{
    /* an error the server did not report (no SQLSTATE) is libpq's: the connection */
    const char *code = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    int lost = p->c == NULL || PQstatus(p->c) != CONNECTION_OK || code == NULL;
    int reconnect = lost || strncmp(code, "08", 2) == 0 || strncmp(code, "57P", 3) == 0 ||
                    strcmp(code, "25006") == 0;
    int transient = reconnect || strcmp(code, "40001") == 0 || strcmp(code, "40P01") == 0 ||
                    strcmp(code, "53300") == 0 || strcmp(code, "55P03") == 0;
    if (reconnect && p->c != NULL) {
        copy_message(p->why, sizeof p->why, res ? PQresultErrorMessage(res) : PQerrorMessage(p->c));
        PQfinish(p->c);
        p->c = NULL;
        p->backoff = p->backoff > 0 ? fmin(p->backoff * 2, BACKOFF_MAX) : BACKOFF_MIN;
        p->retry_at = time_mono() + (lost ? 0 : p->backoff);
        if (p->loud && !p->down)
            log_msg(LOG_WARN, "lost the journal database (%s): %s", p->name, p->why);
        p->down = 1;
    }
    return transient;
}

/* Runs a statement on p (not in a pipeline; without parameters, several may be given): the
 * result (PQclear it) when it worked, NULL with err when not. binary: results in binary
 * format. */
static PGresult *run(struct store *s, struct pgc *p, const char *sql, int n,
                     const char *const *vals, const int *lens, const int *fmts, int binary,
                     char *err, size_t errlen)
{
    if (pgc_ready(s, p, err, errlen) != 0)
        return NULL;
    PGresult *res = n == 0 && !binary ? PQexec(p->c, sql) /* may be several statements */
                                      : PQexecParams(p->c, sql, n, NULL, vals, lens, fmts, binary);
    ExecStatusType st = PQresultStatus(res);
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK)
        return res;
    copy_message(err, errlen, res ? PQresultErrorMessage(res) : PQerrorMessage(p->c));
    pgc_failed(p, res);
    PQclear(res);
    return NULL;
}

/* Like run, for statements whose result does not matter: 0 or -1. */
static int exec0(struct store *s, struct pgc *p, const char *sql, int n, const char *const *vals,
                 char *err, size_t errlen)
{
    PGresult *res = run(s, p, sql, n, vals, NULL, NULL, 0, err, errlen);
    PQclear(res);
    return res ? 0 : -1;
}

/* A string as a text parameter: PostgreSQL's text holds only valid UTF-8, while a handler's
 * name, error or traceback may hold any bytes. Returns s, or a copy in *tmp (free it) with
 * every invalid byte replaced by U+FFFD. */
static const char *utf8(const char *s, char **tmp)
{
    unsigned cp;
    size_t n, i = 0;
    *tmp = NULL;
    if (s == NULL)
        return NULL;
    n = strlen(s);
    for (size_t k; i < n && (k = buf_utf8_next(s + i, n - i, &cp)) > 0; i += k)
        ;
    if (i == n)
        return s;
    struct buf b;
    buf_init(&b);
    for (i = 0; i < n;) {
        size_t k = buf_utf8_next(s + i, n - i, &cp);
        buf_add(&b, k ? s + i : "\xef\xbf\xbd", k ? k : 3);
        i += k ? k : 1;
    }
    return *tmp = buf_take(&b);
}

/* Appends s as an element of a text[] parameter ("{a,b}"): quoted, escaped, valid UTF-8. */
static void add_element(struct buf *b, const char *s, int first)
{
    char *tmp;
    buf_adds(b, first ? "\"" : ",\"");
    for (const char *p = utf8(s, &tmp); *p; p++) {
        if (*p == '"' || *p == '\\')
            buf_add(b, "\\", 1);
        buf_add(b, p, 1);
    }
    buf_adds(b, "\"");
    free(tmp);
}

static void fmt_double(char *out, size_t n, double v)
{
    snprintf(out, n, "%.17g", v);
}

static void fmt_int(char *out, size_t n, int64_t v)
{
    snprintf(out, n, "%lld", (long long)v);
}

/* Binary-format result values: integers and floats are big-endian. */
static int64_t bin_int64(const PGresult *res, int row, int col)
{
    uint64_t v;
    if (PQgetisnull(res, row, col) || PQgetlength(res, row, col) != 8)
        return 0;
    memcpy(&v, PQgetvalue(res, row, col), 8);
    return (int64_t)be64toh(v);
}

static double bin_double(const PGresult *res, int row, int col)
{
    uint64_t v;
    double d;
    if (PQgetisnull(res, row, col) || PQgetlength(res, row, col) != 8)
        return 0;
    memcpy(&v, PQgetvalue(res, row, col), 8);
    v = be64toh(v);
    memcpy(&d, &v, 8);
    return d;
}

static const char *value(const PGresult *res, int row, int col) /* NULL for NULL */
{
    return PQgetisnull(res, row, col) ? NULL : PQgetvalue(res, row, col);
}

static double text_double(const PGresult *res, int row, int col) /* 0 for NULL */
{
    return PQgetisnull(res, row, col) ? 0 : strtod(PQgetvalue(res, row, col), NULL);
}

/* The event of a row of EVENT_COLUMNS, selected in binary format. */
static struct event *row_event(const PGresult *res, int row)
{
    struct event ev = {
        .seq = bin_int64(res, row, 0), .id = value(res, row, 1), .source = value(res, row, 2),
        .provider = value(res, row, 3), .type = value(res, row, 4),
        .provider_type = value(res, row, 5), .hostname = value(res, row, 6),
        .received_at = bin_double(res, row, 7), .occurred_at = bin_double(res, row, 8),
        .packed = value(res, row, 9), .packed_len = (size_t)PQgetlength(res, row, 9),
        .body = value(res, row, 10), .body_len = (size_t)PQgetlength(res, row, 10),
        .context = (char *)value(res, row, 11)};
    if (ev.packed == NULL)
        ev.packed_len = 0;
    return event_new(&ev);
}

/* ---- opening ------------------------------------------------------------------------------------- */

/* Brings the schema to the newest version, in one transaction, under an advisory lock: servers
 * that start together wait for the first one. */
static int migrate(struct store *s, char *err, size_t errlen)
{
    char msg[300];
    int n = (int)(sizeof migrations / sizeof migrations[0]), version = 0, rc = -1;
    if (exec0(s, &s->w, "SELECT pg_advisory_lock(" SCHEMA_LOCK ")", 0, NULL, msg, sizeof msg))
        goto fail;
    PGresult *res = run(s, &s->w, "SELECT to_regclass('certhook.meta') IS NULL", 0, NULL, NULL,
                        NULL, 0, msg, sizeof msg);
    int none = res && PQgetvalue(res, 0, 0)[0] == 't';
    PQclear(res);
    res = NULL;
    /* the first server makes the schema (that needs CREATE on the database; later, not) */
    if ((none && (exec0(s, &s->w, "CREATE SCHEMA IF NOT EXISTS certhook", 0, NULL, msg,
                        sizeof msg) ||
                  exec0(s, &s->w, "CREATE TABLE IF NOT EXISTS certhook.meta (version integer "
                                  "NOT NULL)", 0, NULL, msg, sizeof msg))) ||
        (res = run(s, &s->w, "SELECT version FROM certhook.meta", 0, NULL, NULL, NULL, 0, msg,
                   sizeof msg)) == NULL)
        goto unlock;
    int fresh = PQntuples(res) == 0;
    version = fresh ? 0 : atoi(PQgetvalue(res, 0, 0));
    PQclear(res);
    if (version > n) {
        snprintf(err, errlen, "the journal database is from a newer certhook (schema %d, this "
                              "one knows %d)", version, n);
        goto unlock_quiet;
    }
    if (version < n) {
        char sql[96];
        int ok = exec0(s, &s->w, "BEGIN", 0, NULL, msg, sizeof msg) == 0;
        for (int i = version; ok && i < n; i++)
            ok = exec0(s, &s->w, migrations[i], 0, NULL, msg, sizeof msg) == 0;
        snprintf(sql, sizeof sql, fresh ? "INSERT INTO certhook.meta VALUES (%d)"
                                        : "UPDATE certhook.meta SET version = %d", n);
        if (!ok || exec0(s, &s->w, sql, 0, NULL, msg, sizeof msg) ||
            exec0(s, &s->w, "COMMIT", 0, NULL, msg, sizeof msg)) {
            char ignored[100];
            exec0(s, &s->w, "ROLLBACK", 0, NULL, ignored, sizeof ignored);
            goto unlock;
        }
    }
    rc = 0;
unlock:
    if (rc != 0)
        snprintf(err, errlen, "cannot initialize the journal database: %s", msg);
unlock_quiet:
    exec0(s, &s->w, "SELECT pg_advisory_unlock(" SCHEMA_LOCK ")", 0, NULL, msg, sizeof msg);
    return rc;
fail:
    snprintf(err, errlen, "cannot initialize the journal database: %s", msg);
    return -1;
}

/* A journal opened read-only must exist and not be newer than this certhook. */
static int check_schema(struct store *s, char *err, size_t errlen)
{
    char msg[300];
    PGresult *res = run(s, &s->r, "SELECT to_regclass('certhook.meta') IS NOT NULL", 0, NULL,
                        NULL, NULL, 0, msg, sizeof msg);
    if (res == NULL) {
        snprintf(err, errlen, "cannot read the journal database: %s", msg);
        return -1;
    }
    int exists = PQgetvalue(res, 0, 0)[0] == 't';
    PQclear(res);
    if (!exists) {
        snprintf(err, errlen, "no certhook journal in that database (is --data right?)");
        return -1;
    }
    return 0;
}

/* Registers this server in nodes with a fresh lease (on the writer's connection). A server that
 * lost its lease (old: its former id) frees what it still held and tells the others. */
static int register_node(struct store *s, int64_t old, char *err, size_t errlen)
{
    char host[256] = "?", pid[24], lease[40], oldid[24];
    gethostname(host, sizeof host - 1);
    fmt_int(pid, sizeof pid, getpid());
    fmt_double(lease, sizeof lease, s->lease);
    pthread_mutex_lock(&s->addr_mu);
    const char *vals[] = {host, pid, lease, s->listen, s->admin};
    double t0 = time_mono();
    PGresult *res = run(s, &s->w, "INSERT INTO nodes (name, pid, lease_until, listen, admin) "
                                  "VALUES ($1, $2::int, now() + make_interval(secs => "
                                  "$3::float8), $4, $5) RETURNING id",
                        5, vals, NULL, NULL, 0, err, errlen);
    pthread_mutex_unlock(&s->addr_mu);
    if (res == NULL)
        return -1;
    int64_t id = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    atomic_store(&s->id, id);
    atomic_store(&s->lease_until, t0 + s->lease);
    if (old > 0) {
        char msg[300];
        fmt_int(oldid, sizeof oldid, old);
        const char *v[] = {oldid};
        if (exec0(s, &s->w, "UPDATE events SET owner = NULL WHERE owner = $1::bigint AND "
                            "state <> 2", 1, v, msg, sizeof msg) == 0)
            exec0(s, &s->w, "NOTIFY " CHANNEL, 0, NULL, msg, sizeof msg);
        log_msg(LOG_INFO, "registered again with the journal database as server %lld",
                (long long)id);
    }
    return 0;
}

static void *listen_main(void *arg);
static void pg_close(struct store *s);
static void fold_reset(struct store *s);

static int pg_open(struct store **sp, const struct journal_options *o, char *err, size_t errlen)
{
    struct store *s = calloc(1, sizeof *s);
    *sp = NULL;
    if (s == NULL || (s->uri = strdup(o->where)) == NULL) {
        free(s);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    s->lease = o->lease > 0 ? o->lease : 120;
    s->w.name = "writer", s->r.name = "reader", s->a.name = "admin", s->l.name = "listener";
    s->w.loud = 1;
    s->wakefd = s->stopfd = -1;
    atomic_store(&s->lease_until, INFINITY);
    pthread_mutex_init(&s->amu, NULL);
    pthread_mutex_init(&s->addr_mu, NULL);
    char msg[300];
    if (pgc_ready(s, (o->flags & JOURNAL_READONLY) ? &s->r : &s->w, msg, sizeof msg) != 0) {
        snprintf(err, errlen, "cannot connect to the journal database: %s",
                 (o->flags & JOURNAL_READONLY) ? s->r.why : s->w.why);
        goto fail;
    }
    if (o->flags & JOURNAL_READONLY) {
        if (check_schema(s, err, errlen) != 0)
            goto fail;
        *sp = s;
        return 0;
    }
    if (migrate(s, err, errlen) != 0)
        goto fail;
    if (o->flags & JOURNAL_EXCLUSIVE) {
        if (register_node(s, 0, msg, sizeof msg) != 0) {
            snprintf(err, errlen, "cannot register with the journal database: %s", msg);
            goto fail;
        }
        s->server = 1;
        s->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        s->stopfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (s->wakefd < 0 || s->stopfd < 0 || pthread_create(&s->lthread, NULL, listen_main, s)) {
            snprintf(err, errlen, "cannot start the journal's listener: %s", strerror(errno));
            goto fail;
        }
        s->lstarted = 1;
        pthread_setname_np(s->lthread, "journal-listen");
    }
    *sp = s;
    return 0;
fail:
    pg_close(s);
    return -1;
}

/* Gives back what this server holds (a stop): the others claim it at once. */
static void release(struct store *s)
{
    char id[24], msg[300];
    fmt_int(id, sizeof id, atomic_load(&s->id));
    const char *v[] = {id};
    if (exec0(s, &s->w, "UPDATE events SET owner = NULL WHERE owner = $1::bigint AND state <> 2",
              1, v, msg, sizeof msg) == 0 &&
        exec0(s, &s->w, "DELETE FROM nodes WHERE id = $1::bigint", 1, v, msg, sizeof msg) == 0)
        exec0(s, &s->w, "NOTIFY " CHANNEL, 0, NULL, msg, sizeof msg);
    else
        log_msg(LOG_WARN, "could not give back this server's events (%s): the other servers "
                          "claim them when its lease runs out", msg);
}

static void pg_close(struct store *s)
{
    if (s == NULL)
        return;
    if (s->lstarted) {
        uint64_t one = 1;
        if (write(s->stopfd, &one, sizeof one) < 0)
            log_msg(LOG_ERROR, "cannot stop the journal's listener: %s", strerror(errno));
        pthread_join(s->lthread, NULL);
    }
    if (s->server)
        release(s);
    pg_close(s->fold);
    PQfinish(s->w.c);
    PQfinish(s->r.c);
    PQfinish(s->a.c);
    PQfinish(s->l.c);
    if (s->wakefd >= 0)
        close(s->wakefd);
    if (s->stopfd >= 0)
        close(s->stopfd);
    pthread_mutex_destroy(&s->amu);
    pthread_mutex_destroy(&s->addr_mu);
    free(s->listen);
    free(s->admin);
    for (size_t i = 0; i < s->nunsure; i++)
        free(s->unsure[i]);
    free(s->unsure);
    for (size_t i = 0; i < s->nev; i++)
        free(s->evs[i].id_tmp);
    free(s->evs);
    free(s->dels);
    free(s->settles);
    free(s->eget_sql);
    free(s->eput_sql);
    free(s->epre_sql);
    fold_reset(s);
    free(s->pend);
    free(s->uri);
    free(s);
}

/* ---- the listener: LISTEN on a connection of its own, a wake-up for the dispatcher ---------------- */

static void wake(struct store *s)
{
    uint64_t one = 1;
    if (write(s->wakefd, &one, sizeof one) < 0 && errno != EAGAIN)
        log_msg(LOG_ERROR, "journal wake-up failed: %s", strerror(errno));
}

static void *listen_main(void *arg)
{
    struct store *s = arg;
    char err[300];
    for (;;) {
        int sock = -1;
        if (s->l.c == NULL || PQstatus(s->l.c) != CONNECTION_OK) {
            if (pgc_ready(s, &s->l, err, sizeof err) == 0) {
                PGresult *res = PQexec(s->l.c, "LISTEN " CHANNEL);
                if (PQresultStatus(res) == PGRES_COMMAND_OK)
                    wake(s); /* what was said while it was away */
                else
                    pgc_failed(&s->l, res);
                PQclear(res);
            }
        }
        if (s->l.c != NULL && PQstatus(s->l.c) == CONNECTION_OK)
            sock = PQsocket(s->l.c);
        struct pollfd pf[2] = {{s->stopfd, POLLIN, 0}, {sock, POLLIN, 0}};
        double wait = sock >= 0 ? 10 : fmax(s->l.retry_at - time_mono(), 0.05);
        if (poll(pf, sock >= 0 ? 2 : 1, (int)(wait * 1000)) < 0 && errno != EINTR)
            break;
        if (pf[0].revents)
            break;
        if (sock < 0 || !pf[1].revents)
            continue;
        if (!PQconsumeInput(s->l.c)) {
            pgc_failed(&s->l, NULL);
            continue;
        }
        int any = 0;
        for (PGnotify *n; (n = PQnotifies(s->l.c)) != NULL; any = 1)
            PQfreemem(n);
        if (any)
            wake(s);
    }
    return NULL;
}

static int pg_wake_fd(struct store *s)
{
    return s->wakefd;
}

static void pg_wake_clear(struct store *s)
{
    uint64_t n;
    if (s->wakefd >= 0 && read(s->wakefd, &n, sizeof n) < 0 && errno != EAGAIN)
        log_msg(LOG_ERROR, "journal wake-up read failed: %s", strerror(errno));
}

/* ---- the writer: a batch is one pipeline, one transaction ---------------------------------------- */

static int pg_writer_start(struct store *s)
{
    (void)s;
    return 0;
}

static void pg_writer_stop(struct store *s)
{
    (void)s;
}

static int prepare_entries(struct store *s);
/* Prepares one statement on the writer's connection; on failure the store's error says why. */
static int prepare_one(struct store *s, const char *name, const char *sql)
{
    PGresult *res = PQprepare(s->w.c, name, sql, 0, NULL);
    int ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    if (!ok) {
        copy_message(s->error, sizeof s->error, PQresultErrorMessage(res));
        s->transient = pgc_failed(&s->w, res);
    }
    PQclear(res);
    return ok ? 0 : -1;
}


static int prepare_writer(struct store *s)
{
    /* a batch's statements are planned for its arrays and the tables as they are now (a plan
     * cached while the tables were empty would scan them whole) */
    PGresult *set = PQexec(s->w.c, "SET plan_cache_mode TO force_custom_plan");
    PQclear(set);
    for (size_t i = 0; i < N_WRITER_STATEMENTS; i++)
        if (prepare_one(s, writer_statements[i].name, writer_statements[i].sql) != 0)
            return -1;
    if (prepare_entries(s) != 0)
        return -1;
    s->w.prepared = 1;
    return 0;
}

/* Sends one statement of the batch (prepared when name is one of the writer's statements,
 * else sql text); the kind says what its result answers. */
static int send_query(struct store *s, const char *name, const char *sql, int n,
                      const char *const *vals, const int *lens, const int *fmts, int binary,
                      enum pend_kind kind, struct journal_req *r)
{
    if (s->npend == s->cappend) {
        size_t cap = s->cappend ? s->cappend * 2 : 64;
        struct pend *p = realloc(s->pend, cap * sizeof *p);
        if (p == NULL) {
            snprintf(s->error, sizeof s->error, "out of memory");
            return -1;
        }
        s->pend = p;
        s->cappend = cap;
    }
    int ok = name ? PQsendQueryPrepared(s->w.c, name, n, vals, lens, fmts, binary)
                  : PQsendQueryParams(s->w.c, sql, n, NULL, vals, lens, fmts, binary);
    if (!ok) {
        copy_message(s->error, sizeof s->error, PQerrorMessage(s->w.c));
        s->transient = pgc_failed(&s->w, NULL);
        return -1;
    }
    s->pend[s->npend++] = (struct pend){kind, r};
    return 0;
}

/* Events of a batch whose outcome is unknown (see unsure) are given back, so that whichever
 * server claims them runs those that were committed. 0, or -1 (tried again later). */
static int resolve_unsure(struct store *s)
{
    char me[24], msg[300];
    struct buf ids;
    buf_init(&ids);
    buf_adds(&ids, "{");
    for (size_t i = 0; i < s->nunsure; i++)
        add_element(&ids, s->unsure[i], i == 0);
    buf_adds(&ids, "}");
    fmt_int(me, sizeof me, atomic_load(&s->id));
    const char *v[] = {ids.p, me};
    int rc = exec0(s, &s->w, "UPDATE events SET owner = NULL WHERE id = ANY($1::text[]) AND "
                             "owner = $2::bigint AND state = 0", 2, v, msg, sizeof msg);
    buf_free(&ids);
    if (rc != 0)
        return -1;
    exec0(s, &s->w, "NOTIFY " CHANNEL, 0, NULL, msg, sizeof msg);
    for (size_t i = 0; i < s->nunsure; i++)
        free(s->unsure[i]);
    free(s->unsure);
    s->unsure = NULL;
    s->nunsure = 0;
    return 0;
}

/* The batch failed with its connection after its COMMIT went out (it executes as it arrives,
 * Sync or not): remember its events. */
static void remember_unsure(struct store *s)
{
    if (!s->commit_sent || s->w.c != NULL || s->nev == 0)
        return;
    char **p = realloc(s->unsure, (s->nunsure + s->nev) * sizeof *p);
    if (p == NULL)
        return;
    s->unsure = p;
    for (size_t i = 0; i < s->nev; i++)
        if ((p[s->nunsure] = strdup(s->evs[i].r->ev->id)) != NULL)
            s->nunsure++;
    log_msg(LOG_WARN, "the journal database went away while committing %zu events: those that "
                      "were committed after all are given back to be claimed when it returns",
            s->nev);
}

static int pg_begin(struct store *s, int durable)
{
    for (size_t i = 0; i < s->nev; i++)
        free(s->evs[i].id_tmp);
    s->npend = s->nev = s->ndel = s->nsettle = 0;
    s->transient = s->synced = s->commit_sent = 0;
    s->error[0] = '\0';
    if (s->lost) {
        snprintf(s->error, sizeof s->error, "this server lost its lease on the journal (it could "
                                            "not renew it in time) and registers again");
        s->transient = 1;
        return -1;
    }
    if (pgc_ready(s, &s->w, s->error, sizeof s->error) != 0) {
        s->transient = 1;
        return -1;
    }
    if (!s->w.prepared && prepare_writer(s) != 0)
        return -1;
    if (s->server && s->nunsure > 0 && resolve_unsure(s) != 0) {
        snprintf(s->error, sizeof s->error, "the journal database is unavailable");
        s->transient = 1;
        return -1;
    }
    if (!PQenterPipelineMode(s->w.c)) {
        copy_message(s->error, sizeof s->error, PQerrorMessage(s->w.c));
        return -1;
    }
    s->in_pipeline = 1;
    /* every batch is committed durably (synchronous_commit as the database has it), those of
     * delivery states alone too: PostgreSQL restarting while the servers run would lose an
     * asynchronous commit, and with it the only record that a server that lives on still
     * holds that work -- unlike SQLite's, whose next start reads everything back */
    (void)durable;
    return send_query(s, NULL, "BEGIN", 0, NULL, NULL, NULL, 0, P_OTHER, NULL);
}

static int pg_insert(struct store *s, struct journal_req *r)
{
    if (s->nev == s->capev) {
        size_t cap = s->capev ? s->capev * 2 : 64;
        struct queued *p = realloc(s->evs, cap * sizeof *p);
        if (p == NULL) {
            snprintf(s->error, sizeof s->error, "out of memory");
            return -1;
        }
        s->evs = p;
        s->capev = cap;
    }
    s->evs[s->nev] = (struct queued){r, s->nev, NULL, NULL};
    s->nev++;
    return 0;
}

static int pg_state(struct store *s, struct journal_req *r)
{
    char by[40], now[40], expires[40];
    const char *vals[3] = {r->key, NULL, NULL};
    int lens[3] = {(int)strlen(r->key), 0, 0}, fmts[3] = {1, 1, 0};
    switch (r->op) {
    case JOURNAL_STATE_DELETE:
        return send_query(s, "sdel", NULL, 1, vals, lens, fmts, 0, P_SET, r);
    case JOURNAL_ONCE_CLAIM:
        fmt_double(expires, sizeof expires, r->expires_at);
        fmt_double(now, sizeof now, time_now());
        vals[1] = expires, vals[2] = now;
        fmts[1] = 0;
        return send_query(s, "oclaim", NULL, 3, vals, lens, fmts, 0, P_ONCE, r);
    case JOURNAL_ONCE_DONE:
        vals[1] = r->value, lens[1] = (int)r->value_len;
        return send_query(s, "odone", NULL, 2, vals, lens, fmts, 0, P_SET, r);
    case JOURNAL_ONCE_RELEASE:
        return send_query(s, "orelease", NULL, 1, vals, lens, fmts, 0, P_SET, r);
    case JOURNAL_STATE_INCR:
        fmt_double(by, sizeof by, r->by);
        fmt_double(now, sizeof now, time_now());
        vals[1] = by, vals[2] = now;
        fmts[1] = 0;
        return send_query(s, "sincr", NULL, 3, vals, lens, fmts, 1, P_INCR, r);
    default:
        fmt_double(expires, sizeof expires, r->expires_at);
        vals[1] = r->value, lens[1] = (int)r->value_len;
        vals[2] = r->expires_at > 0 ? expires : NULL;
        return send_query(s, "sset", NULL, 3, vals, lens, fmts, 0, P_SET, r);
    }
}

/* A delivery state waits for the commit: the batch's go in one statement. */
static int pg_delivery(struct store *s, int64_t seq, const struct delivery_result *r)
{
    if (s->ndel == s->capdel) {
        size_t cap = s->capdel ? s->capdel * 2 : 64;
        struct held *p = realloc(s->dels, cap * sizeof *p);
        if (p == NULL) {
            snprintf(s->error, sizeof s->error, "out of memory");
            return -1;
        }
        s->dels = p;
        s->capdel = cap;
    }
    s->dels[s->ndel] = (struct held){seq, r, s->ndel};
    s->ndel++;
    return 0;
}

static int pg_settle(struct store *s, int64_t seq)
{
    if (s->nsettle == s->capsettle) {
        size_t cap = s->capsettle ? s->capsettle * 2 : 64;
        int64_t *p = realloc(s->settles, cap * sizeof *p);
        if (p == NULL) {
            snprintf(s->error, sizeof s->error, "out of memory");
            return -1;
        }
        s->settles = p;
        s->capsettle = cap;
    }
    s->settles[s->nsettle++] = seq;
    return 0;
}

static int pg_replayed(struct store *s, int64_t upto)
{
    char ids[24], owner[24];
    fmt_int(ids, sizeof ids, upto);
    fmt_int(owner, sizeof owner, atomic_load(&s->id));
    const char *vals[] = {ids, owner};
    return send_query(s, "replayed", NULL, 2, vals, NULL, NULL, 0, P_OTHER, NULL);
}

/* ---- array parameters ----------------------------------------------------------------------------- */

/* A one-dimensional array parameter in PostgreSQL's binary format (array_recv): dimensions,
 * whether it holds a NULL, the element type, its length and lower bound, then each element as
 * its length (-1: NULL) and bytes. libpq passes parameters as they are and has no builder. */
struct arr {
    struct buf b;
    uint32_t n;
    int nulls;
};

static void put32(struct buf *b, uint32_t v)
{
    v = htobe32(v);
    buf_add(b, &v, 4);
}

static void arr_init(struct arr *a, uint32_t oid)
{
    buf_init(&a->b);
    a->n = 0;
    a->nulls = 0;
    put32(&a->b, 1);   /* dimensions */
    put32(&a->b, 0);   /* has NULLs: set by arr_param */
    put32(&a->b, oid);
    put32(&a->b, 0);   /* length: set by arr_param */
    put32(&a->b, 1);   /* lower bound */
}

static void arr_add(struct arr *a, const void *p, size_t len) /* p NULL: a NULL */
{
    put32(&a->b, p ? (uint32_t)len : 0xffffffffu);
    if (p)
        buf_add(&a->b, p, len);
    a->nulls |= p == NULL;
    a->n++;
}

static void arr_text(struct arr *a, const char *s)
{
    arr_add(a, s, s ? strlen(s) : 0);
}

static void arr_int(struct arr *a, int64_t v, uint32_t oid)
{
    uint64_t x = htobe64((uint64_t)v);
    uint32_t y = htobe32((uint32_t)v);
    arr_add(a, oid == OID_INT8 ? (void *)&x : (void *)&y, oid == OID_INT8 ? 8 : 4);
}

static void arr_float(struct arr *a, double v, int null)
{
    uint64_t x;
    memcpy(&x, &v, 8);
    x = htobe64(x);
    arr_add(a, null ? NULL : &x, 8);
}

/* The parameter: value, length, format (binary). -1 when out of memory. */
static int arr_param(struct arr *a, const char **val, int *len, int *fmt)
{
    if (a->b.p == NULL)
        return -1;
    uint32_t nulls = htobe32((uint32_t)a->nulls), n = htobe32(a->n);
    memcpy(a->b.p + 4, &nulls, 4);
    memcpy(a->b.p + 12, &n, 4);
    *val = a->b.p;
    *len = (int)a->b.n;
    *fmt = 1;
    return 0;
}

static void arrs_free(struct arr *a, int n)
{
    for (int i = 0; i < n; i++)
        buf_free(&a[i].b);
}

/* ---- the batch's events, delivery states and settles ----------------------------------------------- */

static int by_id(const void *a, const void *b)
{
    const struct queued *x = a, *y = b;
    int c = strcmp(x->id, y->id);
    return c ? c : (x->at > y->at) - (x->at < y->at);
}

/* Sends the batch's new events as one statement, after the batch's mark (appending). Those
 * whose id came earlier in the batch are duplicates without asking. */
static int send_events(struct store *s)
{
    enum { ID, SOURCE, PROVIDER, TYPE, PTYPE, HOST, RECEIVED, OCCURRED, NARR };
    enum { EVENT = NARR + 1, BODY, FACTS, NPARAMS };
    static const uint32_t oids[NARR] = {OID_TEXT, OID_TEXT,   OID_TEXT,  OID_TEXT,
                                        OID_TEXT, OID_TEXT, OID_FLOAT8, OID_FLOAT8};
    struct arr a[NPARAMS];
    const char *vals[NPARAMS];
    int lens[NPARAMS], fmts[NPARAMS], rc = -1;
    char owner[24], *t[5];
    for (size_t i = 0; i < s->nev; i++)
        s->evs[i].id = utf8(s->evs[i].r->ev->id, &s->evs[i].id_tmp);
    qsort(s->evs, s->nev, sizeof s->evs[0], by_id);
    for (int k = 0; k < NARR; k++)
        arr_init(&a[k], oids[k]);
    arr_init(&a[NARR], OID_INT8); /* a place holder, not sent */
    arr_init(&a[EVENT], OID_BYTEA);
    arr_init(&a[BODY], OID_BYTEA);
    arr_init(&a[FACTS], OID_BYTEA);
    for (size_t i = 0; i < s->nev; i++) {
        struct journal_req *r = s->evs[i].r;
        const struct event *ev = r->ev;
        if (i > 0 && strcmp(s->evs[i].id, s->evs[i - 1].id) == 0) {
            r->result = JOURNAL_DUPLICATE;
            continue;
        }
        arr_text(&a[ID], s->evs[i].id);
        arr_text(&a[SOURCE], utf8(ev->source, &t[0]));
        arr_text(&a[PROVIDER], utf8(ev->provider, &t[1]));
        arr_text(&a[TYPE], utf8(ev->type, &t[2]));
        arr_text(&a[PTYPE], utf8(ev->provider_type, &t[3]));
        arr_text(&a[HOST], utf8(ev->hostname, &t[4]));
        arr_float(&a[RECEIVED], ev->received_at, 0);
        arr_float(&a[OCCURRED], ev->occurred_at, ev->occurred_at == 0);
        arr_add(&a[EVENT], ev->packed, ev->packed_len);
        arr_add(&a[BODY], ev->body ? ev->body : "", ev->body_len);
        arr_add(&a[FACTS], ev->certs, ev->certs_len);
        for (int k = 0; k < 5; k++)
            free(t[k]);
    }
    for (int k = 0; k < NPARAMS; k++)
        if (k != NARR && arr_param(&a[k], &vals[k], &lens[k], &fmts[k]) != 0) {
            snprintf(s->error, sizeof s->error, "out of memory");
            goto done;
        }
    int64_t id = atomic_load(&s->id);
    fmt_int(owner, sizeof owner, id);
    vals[NARR] = id > 0 ? owner : NULL, lens[NARR] = 0, fmts[NARR] = 0;
    rc = send_query(s, "appending", NULL, 0, NULL, NULL, NULL, 0, P_OTHER, NULL) == 0 &&
                 send_query(s, "events", NULL, NPARAMS, vals, lens, fmts, 0, P_EVENTS, NULL) == 0
             ? 0
             : -1;
done:
    arrs_free(a, NPARAMS);
    return rc;
}

static int by_delivery(const void *a, const void *b)
{
    const struct held *x = a, *y = b;
    int c = (x->seq > y->seq) - (x->seq < y->seq);
    if (c == 0)
        c = strcmp(x->r->handler, y->r->handler);
    return c ? c : (x->at > y->at) - (x->at < y->at);
}

/* Sends the batch's delivery states as one statement: states of one delivery (its start, then
 * its end) folded into one as the upsert applies them one after the other. */
static int send_deliveries(struct store *s)
{
    enum { SEQ, HANDLER, STATUS, ATTEMPTS, GEN, FIRST, STARTED, DURATION, NEXT, ERROR, TRACE,
           CRASHES, NARR };
    static const uint32_t oids[NARR] = {OID_INT8, OID_TEXT, OID_TEXT, OID_INT4, OID_INT8,
                                        OID_FLOAT8, OID_FLOAT8, OID_FLOAT8, OID_FLOAT8, OID_TEXT,
                                        OID_TEXT, OID_INT4};
    struct arr a[NARR];
    const char *vals[NARR + 1];
    int lens[NARR + 1], fmts[NARR + 1], rc = -1;
    char owner[24], *t[3];
    qsort(s->dels, s->ndel, sizeof s->dels[0], by_delivery);
    for (int k = 0; k < NARR; k++)
        arr_init(&a[k], oids[k]);
    for (size_t i = 0; i < s->ndel;) {
        /* the states of one delivery, i..k-1, folded: the last one's, with what it leaves out
         * taken from those before (first_at: the first one's) */
        size_t k = i + 1;
        while (k < s->ndel && s->dels[k].seq == s->dels[i].seq &&
               strcmp(s->dels[k].r->handler, s->dels[i].r->handler) == 0)
            k++;
        const struct delivery_result *last = s->dels[k - 1].r;
        unsigned gen = 0;
        double first = 0, started = 0, duration = 0;
        const char *error = NULL, *trace = NULL;
        for (size_t x = i; x < k; x++) {
            const struct delivery_result *r = s->dels[x].r;
            gen = r->generation ? r->generation : gen;
            first = first > 0 ? first : r->first_at;
            if (r->started_at > 0)
                started = r->started_at, duration = r->duration;
            error = r->error ? r->error : error;
            trace = r->traceback ? r->traceback : trace;
        }
        arr_int(&a[SEQ], s->dels[i].seq, OID_INT8);
        arr_text(&a[HANDLER], utf8(last->handler, &t[0]));
        arr_text(&a[STATUS], delivery_status_names[last->status]);
        arr_int(&a[ATTEMPTS], last->attempts, OID_INT4);
        if (gen)
            arr_int(&a[GEN], gen, OID_INT8);
        else
            arr_add(&a[GEN], NULL, 0);
        arr_float(&a[FIRST], first, first <= 0);
        arr_float(&a[STARTED], started, started <= 0);
        arr_float(&a[DURATION], duration, started <= 0);
        arr_float(&a[NEXT], last->next_at,
                  last->status != DELIVERY_RETRYING && last->status != DELIVERY_PENDING);
        arr_text(&a[ERROR], utf8(error, &t[1]));
        arr_text(&a[TRACE], utf8(trace, &t[2]));
        arr_int(&a[CRASHES], last->crashes, OID_INT4);
        for (int x = 0; x < 3; x++)
            free(t[x]);
        i = k;
    }
    for (int k = 0; k < NARR; k++)
        if (arr_param(&a[k], &vals[k], &lens[k], &fmts[k]) != 0) {
            snprintf(s->error, sizeof s->error, "out of memory");
            goto done;
        }
    fmt_int(owner, sizeof owner, atomic_load(&s->id));
    vals[NARR] = owner, lens[NARR] = 0, fmts[NARR] = 0;
    rc = send_query(s, "deliveries", NULL, NARR + 1, vals, lens, fmts, 0, P_OTHER, NULL);
done:
    arrs_free(a, NARR);
    return rc;
}

static int send_settles(struct store *s)
{
    struct arr a;
    const char *vals[2];
    int lens[2] = {0, 0}, fmts[2] = {0, 0}, rc = -1;
    char owner[24];
    arr_init(&a, OID_INT8);
    for (size_t i = 0; i < s->nsettle; i++)
        arr_int(&a, s->settles[i], OID_INT8);
    fmt_int(owner, sizeof owner, atomic_load(&s->id));
    vals[1] = owner;
    if (arr_param(&a, &vals[0], &lens[0], &fmts[0]) == 0)
        rc = send_query(s, "settle", NULL, 2, vals, lens, fmts, 0, P_OTHER, NULL);
    else
        snprintf(s->error, sizeof s->error, "out of memory");
    buf_free(&a.b);
    return rc;
}

/* ---- the fold: the inventory, the contexts and the watermark (writer.c) ---------------------------- */

/* The fold's transaction starts with plain statements (its reads: pg_fold_take, pg_entry_get),
 * and what it writes goes in a pipeline with its COMMIT (pg_commit), as a batch's. */

static void fold_reset(struct store *s)
{
    if (s->cseq != NULL)
        buf_free(&s->cseq->b);
    if (s->ctext != NULL)
        buf_free(&s->ctext->b);
    free(s->cseq);
    free(s->ctext);
    s->cseq = s->ctext = NULL;
    s->nctx = 0;
    PQclear(s->pre);
    s->pre = NULL;
}

/* From the first write of the fold on: the pipeline. */
static int fold_pipeline(struct store *s)
{
    if (s->in_pipeline)
        return 0;
    if (s->w.c == NULL || !PQenterPipelineMode(s->w.c)) {
        copy_message(s->error, sizeof s->error, s->w.c ? PQerrorMessage(s->w.c) : "lost");
        s->transient = pgc_failed(&s->w, NULL);
        return -1;
    }
    s->in_pipeline = 1;
    return 0;
}

/* One of the writer's statements, out of a pipeline: its result, or NULL (s->error). */
static PGresult *fold_query(struct store *s, const char *name, int n, const char *const *vals,
                            int binary)
{
    if (s->w.c == NULL) {
        snprintf(s->error, sizeof s->error, "the journal database is unavailable: %.200s", s->w.why);
        s->transient = 1;
        return NULL;
    }
    PGresult *res = PQexecPrepared(s->w.c, name, n, vals, NULL, NULL, binary);
    ExecStatusType st = PQresultStatus(res);
    if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK)
        return res;
    copy_message(s->error, sizeof s->error,
                 res ? PQresultErrorMessage(res) : PQerrorMessage(s->w.c));
    s->transient = pgc_failed(&s->w, res);
    PQclear(res);
    return NULL;
}

/* The inventory's columns (ENTRY_FIELDS), their reading and their upsert, prepared on the
 * writer's connection. */
static void entry_column(struct buf *sel, struct buf *names, struct buf *params,
                         struct buf *set, const char *name, const char *cast, int *i)
{
    int first = (*i)++ == 0;
    buf_printf(sel, "%s%s%s", first ? "" : ", ", name, strcmp(cast, "::jsonb") ? "" : "::text");
    buf_printf(names, "%s%s", first ? "" : ", ", name);
    buf_printf(params, "%s$%d%s", first ? "" : ", ", *i, cast);
    if (!first)
        buf_printf(set, "%s%s = excluded.%s", set->n ? ", " : "", name, name);
}

static int prepare_entries(struct store *s)
{
    if (s->eget_sql == NULL) {
        struct buf sel, names, params, set, get, put;
        int i = 0;
        buf_init(&sel), buf_init(&names), buf_init(&params), buf_init(&set);
        buf_init(&get), buf_init(&put);
#define C_S(f) entry_column(&sel, &names, &params, &set, #f, "", &i);
#define C_J(f) entry_column(&sel, &names, &params, &set, #f, "::jsonb", &i);
#define C_N(f) entry_column(&sel, &names, &params, &set, #f, "::float8", &i);
#define C_B(f) entry_column(&sel, &names, &params, &set, #f, "::boolean", &i);
#define C_I(f) entry_column(&sel, &names, &params, &set, #f, "::integer", &i);
        ENTRY_FIELDS(C_S, C_J, C_N, C_B, C_I)
#undef C_S
#undef C_J
#undef C_N
#undef C_B
#undef C_I
        struct buf pre;
        buf_init(&pre);
        buf_printf(&pre, "SELECT %s FROM inventory WHERE key = ANY($1::text[])", sel.p);
        s->epre_sql = buf_take(&pre);
        buf_printf(&get, "SELECT %s FROM inventory WHERE key = $1", sel.p);
        buf_printf(&put, "INSERT INTO inventory (%s) VALUES (%s) ON CONFLICT (key) DO UPDATE "
                         "SET %s", names.p, params.p, set.p);
        buf_free(&sel), buf_free(&names), buf_free(&params), buf_free(&set);
        s->eget_sql = buf_take(&get);
        s->eput_sql = buf_take(&put);
        if (s->eget_sql == NULL || s->eput_sql == NULL || s->epre_sql == NULL) {
            snprintf(s->error, sizeof s->error, "out of memory");
            return -1;
        }
    }
    const char *names[] = {"eget", "eput", "epre"};
    const char *sqls[] = {s->eget_sql, s->eput_sql, s->epre_sql};
    for (int k = 0; k < 3; k++)
        if (prepare_one(s, names[k], sqls[k]) != 0)
            return -1;
    return 0;
}

/* store.h: a store for the fold's thread: a writer's connection of its own. */
static struct store *pg_fold_store(struct store *s)
{
    struct store *f = calloc(1, sizeof *f);
    if (f == NULL || (f->uri = strdup(s->uri)) == NULL) {
        free(f);
        return NULL;
    }
    f->lease = s->lease;
    f->w.name = "fold", f->r.name = "fold reader", f->a.name = "fold admin";
    f->l.name = "fold listener";
    f->w.loud = 1;
    f->wakefd = f->stopfd = -1;
    f->fold_last = -1;
    atomic_store(&f->lease_until, INFINITY);
    pthread_mutex_init(&f->amu, NULL);
    pthread_mutex_init(&f->addr_mu, NULL);
    s->fold = f;
    return f;
}

static void add_key(void *cls, const char *key, size_t n)
{
    struct arr *a = cls;
    char *k = strndup(key, n), *t = NULL;
    if (k != NULL)
        arr_text(a, utf8(k, &t));
    free(t);
    free(k);
}

/* The entries of the certificates of the events of res (fevents' rows) in one statement: the
 * fold's cache is cold. 0, or -1. */
static int prefetch(struct store *s, const PGresult *res, int n)
{
    struct arr a;
    const char *vals[1];
    int lens[1], fmts[1];
    arr_init(&a, OID_TEXT);
    for (int i = 0; i < n; i++) {
        struct event ev = {.certs = value(res, i, 7), .certs_len = (size_t)PQgetlength(res, i, 7)};
        inventory_keys(&ev, add_key, &a);
    }
    if (arr_param(&a, &vals[0], &lens[0], &fmts[0]) != 0) {
        buf_free(&a.b);
        snprintf(s->error, sizeof s->error, "out of memory");
        return -1;
    }
    PGresult *pre = PQexecPrepared(s->w.c, "epre", 1, vals, lens, fmts, 0);
    buf_free(&a.b);
    if (PQresultStatus(pre) != PGRES_TUPLES_OK) {
        copy_message(s->error, sizeof s->error,
                     pre ? PQresultErrorMessage(pre) : PQerrorMessage(s->w.c));
        s->transient = pgc_failed(&s->w, pre);
        PQclear(pre);
        return -1;
    }
    PQclear(s->pre);
    s->pre = pre;
    return 0;
}

/* store.h: the fold's transaction, if this server may fold now. */
static int pg_fold_take(struct store *s, int64_t *from, int64_t *upto,
                        void (*fn)(void *cls, struct event *ev), void *cls)
{
    char a[24], b[24];
    for (size_t i = 0; i < s->nev; i++)
        free(s->evs[i].id_tmp);
    s->npend = s->nev = s->ndel = s->nsettle = 0;
    s->transient = s->synced = s->commit_sent = 0;
    s->error[0] = '\0';
    fold_reset(s);
    if (pgc_ready(s, &s->w, s->error, sizeof s->error) != 0) {
        s->transient = 1;
        return -1;
    }
    if (!s->w.prepared && prepare_writer(s) != 0)
        return -1;
    s->folding = 1;
    PGresult *res = NULL;
    /* not forced to disk: a fold lost with the database is lost with its watermark, and made
     * again from the log; the next durable commit (a batch's) takes it to disk */
    if (exec0(s, &s->w, "BEGIN; SET LOCAL synchronous_commit TO off", 0, NULL, s->error,
              sizeof s->error) != 0 ||
        (res = fold_query(s, "fbegin", 0, NULL, 0)) == NULL)
        return -1;
    if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0)) { /* another server folds now */
        PQclear(res);
        s->folding = 0;
        if (exec0(s, &s->w, "ROLLBACK", 0, NULL, s->error, sizeof s->error) != 0 ||
            (res = fold_query(s, "fupto", 0, NULL, 0)) == NULL)
            return -1;
        *from = *upto = PQntuples(res) == 1 ? strtoll(PQgetvalue(res, 0, 0), NULL, 10) : 0;
        PQclear(res);
        return 0;
    }
    *from = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    int64_t h = PQgetisnull(res, 0, 1) ? *from : strtoll(PQgetvalue(res, 0, 1), NULL, 10);
    PQclear(res);
    if (h < *from)
        h = *from;
    if (h > *from) {
        fmt_int(a, sizeof a, *from);
        fmt_int(b, sizeof b, h);
        const char *v[] = {a, b};
        if ((res = fold_query(s, "fevents", 2, v, 1)) == NULL)
            return -1;
        int n = PQntuples(res);
        for (int i = 0; i < n; i++) {
            struct event ev = {
                .seq = bin_int64(res, i, 0), .id = value(res, i, 1), .source = value(res, i, 2),
                .provider = value(res, i, 3), .type = value(res, i, 4),
                .received_at = bin_double(res, i, 5), .occurred_at = bin_double(res, i, 6),
                .certs = value(res, i, 7), .certs_len = (size_t)PQgetlength(res, i, 7)};
            struct event *e = event_new(&ev);
            if (e == NULL) {
                PQclear(res);
                snprintf(s->error, sizeof s->error, "out of memory");
                return -1;
            }
            fn(cls, e);
        }
        if (n == FOLD_MAX) /* the rest at the next one */
            h = bin_int64(res, n - 1, 0);
        if (n > 0 && *from != s->fold_last && prefetch(s, res, n) != 0) {
            PQclear(res);
            return -1;
        }
        PQclear(res);
    }
    *upto = s->fold_upto = h;
    return 1;
}

static int pg_entry_get(struct store *s, const char *key, struct entry *e)
{
    char *t;
    int row = 0;
    PGresult *res = s->pre;
    if (res != NULL) { /* read before: absent if not there */
        for (row = 0; row < PQntuples(res) && strcmp(PQgetvalue(res, row, 0), key) != 0; row++)
            ;
        if (row == PQntuples(res))
            return 0;
    } else {
        const char *v[] = {utf8(key, &t)};
        res = fold_query(s, "eget", 1, v, 0);
        free(t);
        if (res == NULL)
            return -1;
        if (PQntuples(res) == 0) {
            PQclear(res);
            return 0;
        }
    }
    int i = 0, rc = 1;
#define R_S(f)                                                                                 \
    if (!PQgetisnull(res, row, i) && (e->f = strdup(PQgetvalue(res, row, i))) == NULL)           \
        rc = -1;                                                                               \
    i++;
#define R_N(f)                                                                                 \
    e->f = PQgetisnull(res, row, i) ? NAN : strtod(PQgetvalue(res, row, i), NULL);                 \
    i++;
#define R_B(f)                                                                                 \
    e->f = !PQgetisnull(res, row, i) && PQgetvalue(res, row, i)[0] == 't';                         \
    i++;
#define R_I(f)                                                                                 \
    e->f = PQgetisnull(res, row, i) ? 0 : atoi(PQgetvalue(res, row, i));                           \
    i++;
    ENTRY_FIELDS(R_S, R_S, R_N, R_B, R_I)
#undef R_S
#undef R_N
#undef R_B
#undef R_I
    if (res != s->pre)
        PQclear(res);
    if (rc < 0) {
        entry_clear(e);
        snprintf(s->error, sizeof s->error, "out of memory");
    }
    return rc;
}

#define ENTRY_COUNT(f) +1
enum { ENTRY_N = 0 ENTRY_FIELDS(ENTRY_COUNT, ENTRY_COUNT, ENTRY_COUNT, ENTRY_COUNT, ENTRY_COUNT) };
#undef ENTRY_COUNT

static int pg_entry_put(struct store *s, const struct entry *e)
{
    const char *v[ENTRY_N];
    char num[ENTRY_N][32], *tmp[ENTRY_N] = {0};
    int i = 0;
    if (fold_pipeline(s) != 0)
        return -1;
#define P_S(f)                                                                                 \
    v[i] = utf8(e->f, &tmp[i]);                                                                \
    i++;
#define P_J(f) /* jsonb has no room for a NUL */                                               \
    v[i] = e->f && strstr(e->f, "\\u0000") == NULL ? utf8(e->f, &tmp[i]) : NULL;             \
    i++;
#define P_N(f)                                                                                 \
    if (!isnan(e->f))                                                                          \
        fmt_double(num[i], sizeof num[i], e->f);                                               \
    v[i] = isnan(e->f) ? NULL : num[i];                                                        \
    i++;
#define P_B(f)                                                                                 \
    v[i] = e->f ? "true" : NULL;                                                               \
    i++;
#define P_I(f)                                                                                 \
    fmt_int(num[i], sizeof num[i], e->f);                                                      \
    v[i] = num[i];                                                                             \
    i++;
    ENTRY_FIELDS(P_S, P_J, P_N, P_B, P_I)
#undef P_S
#undef P_J
#undef P_N
#undef P_B
#undef P_I
    int rc = send_query(s, "eput", NULL, i, v, NULL, NULL, 0, P_OTHER, NULL);
    for (int k = 0; k < ENTRY_N; k++)
        free(tmp[k]);
    return rc;
}

/* The fold's contexts wait for its commit: one statement. */
static int pg_context(struct store *s, int64_t seq, const char *context)
{
    if (s->cseq == NULL) {
        s->cseq = malloc(sizeof *s->cseq);
        s->ctext = malloc(sizeof *s->ctext);
        if (s->cseq == NULL || s->ctext == NULL) {
            free(s->cseq), free(s->ctext);
            s->cseq = s->ctext = NULL;
            snprintf(s->error, sizeof s->error, "out of memory");
            return -1;
        }
        arr_init(s->cseq, OID_INT8);
        arr_init(s->ctext, OID_TEXT);
    }
    char *t;
    arr_int(s->cseq, seq, OID_INT8);
    arr_text(s->ctext, utf8(context, &t));
    free(t);
    s->nctx++;
    return 0;
}

static int send_contexts(struct store *s)
{
    const char *vals[2];
    int lens[2], fmts[2];
    if (s->nctx == 0)
        return 0;
    if (arr_param(s->cseq, &vals[0], &lens[0], &fmts[0]) != 0 ||
        arr_param(s->ctext, &vals[1], &lens[1], &fmts[1]) != 0) {
        snprintf(s->error, sizeof s->error, "out of memory");
        return -1;
    }
    return send_query(s, "fcontexts", NULL, 2, vals, lens, fmts, 0, P_OTHER, NULL);
}

static int pg_folded(struct store *s, int64_t upto)
{
    char u[24];
    fmt_int(u, sizeof u, upto);
    const char *v[] = {u};
    return fold_pipeline(s) == 0 ? send_query(s, "folded", NULL, 1, v, NULL, NULL, 0, P_OTHER,
                                              NULL)
                                 : -1;
}

/* store.h: the contexts another server's fold wrote for these events. */
static int pg_contexts(struct store *s, struct event *list)
{
    struct arr a;
    const char *vals[1];
    int lens[1], fmts[1];
    if (list == NULL)
        return 0;
    if (pgc_ready(s, &s->w, s->error, sizeof s->error) != 0) {
        s->transient = 1;
        return -1;
    }
    if (!s->w.prepared && prepare_writer(s) != 0)
        return -1;
    arr_init(&a, OID_INT8);
    for (struct event *ev = list; ev; ev = ev->next)
        arr_int(&a, ev->seq, OID_INT8);
    PGresult *res = NULL;
    if (arr_param(&a, &vals[0], &lens[0], &fmts[0]) == 0) {
        res = PQexecPrepared(s->w.c, "fread", 1, vals, lens, fmts, 0);
        if (PQresultStatus(res) != PGRES_TUPLES_OK) {
            copy_message(s->error, sizeof s->error,
                         res ? PQresultErrorMessage(res) : PQerrorMessage(s->w.c));
            s->transient = pgc_failed(&s->w, res);
            PQclear(res);
            res = NULL;
        }
    } else {
        snprintf(s->error, sizeof s->error, "out of memory");
    }
    buf_free(&a.b);
    if (res == NULL)
        return -1;
    for (int i = 0, n = PQntuples(res); i < n; i++) {
        int64_t seq = strtoll(PQgetvalue(res, i, 0), NULL, 10);
        for (struct event *ev = list; ev; ev = ev->next)
            if (ev->seq == seq) {
                free(ev->context);
                ev->context = strdup(PQgetvalue(res, i, 1));
                break;
            }
    }
    PQclear(res);
    return 0;
}

static int by_row_id(const void *a, const void *b, void *res)
{
    return strcmp(PQgetvalue(res, *(const int *)a, 1), PQgetvalue(res, *(const int *)b, 1));
}

/* The answers of the events statement: the rows of those inserted. */
static void events_inserted(struct store *s, const PGresult *res)
{
    int n = PQntuples(res), k = 0;
    int *rows = malloc(((size_t)n + 1) * sizeof *rows);
    for (int i = 0; rows && i < n; i++)
        rows[i] = i;
    if (rows) /* by id, as the events are: one merge */
        qsort_r(rows, (size_t)n, sizeof *rows, by_row_id, (void *)res);
    for (size_t i = 0; i < s->nev; i++) {
        struct journal_req *r = s->evs[i].r;
        if (r->result == JOURNAL_DUPLICATE) /* an earlier one of the batch */
            continue;
        while (rows && k < n && strcmp(PQgetvalue(res, rows[k], 1), s->evs[i].id) < 0)
            k++;
        if (rows && k < n && strcmp(PQgetvalue(res, rows[k], 1), s->evs[i].id) == 0) {
            r->result = JOURNAL_ACCEPTED;
            r->ev->seq = strtoll(PQgetvalue(res, rows[k], 0), NULL, 10);
        } else {
            r->result = rows ? JOURNAL_DUPLICATE : JOURNAL_FAILED;
        }
    }
    free(rows);
}

/* Reads the result of the next statement of the pipeline and what follows it (NULL). 0 when it
 * worked; else -1, with the first error kept. */
static int read_result(struct store *s, struct pend *p)
{
    PGresult *res = PQgetResult(s->w.c);
    ExecStatusType st = PQresultStatus(res);
    int rc = 0;
    if (res == NULL || (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)) {
        if (s->error[0] == '\0' || st == PGRES_FATAL_ERROR)
            copy_message(s->error, sizeof s->error,
                         res ? (st == PGRES_PIPELINE_ABORTED ? "the batch was aborted"
                                                             : PQresultErrorMessage(res))
                             : PQerrorMessage(s->w.c));
        if (st != PGRES_PIPELINE_ABORTED && !s->transient)
            s->transient = pgc_failed(&s->w, res);
        rc = -1;
    } else if (p->kind == P_EVENTS) {
        events_inserted(s, res);
    } else if (p->kind == P_SET) {
        p->r->result = JOURNAL_ACCEPTED;
    } else if (p->kind == P_ONCE) {
        static const enum journal_result results[] = {JOURNAL_ACCEPTED, JOURNAL_DUPLICATE,
                                                      JOURNAL_REFUSED};
        int v = PQntuples(res) == 1 ? atoi(PQgetvalue(res, 0, 0)) : 2;
        p->r->result = results[v >= 0 && v <= 2 ? v : 2];
        p->r->expires_at = text_double(res, 0, 1);
    } else if (p->kind == P_INCR) {
        struct journal_req *r = p->r;
        char *end;
        int n = PQntuples(res) == 1 ? PQgetlength(res, 0, 0) : 0;
        snprintf(r->number, sizeof r->number, "%.*s", n, n ? PQgetvalue(res, 0, 0) : "");
        double v = strtod(r->number, &end);
        (void)v;
        if (n > 0 && n < (int)sizeof r->number && end != r->number && *end == '\0') {
            r->result = JOURNAL_ACCEPTED;
        } else {
            snprintf(r->error, sizeof r->error, "the value of %.100s is not a number", r->key);
            r->result = JOURNAL_REFUSED;
        }
    }
    PQclear(res);
    if (s->w.c == NULL)
        return -1;
    while ((res = PQgetResult(s->w.c)) != NULL) /* the end of this statement's results */
        PQclear(res);
    return rc;
}

/* Reads what is left up to the Sync. */
static void drain(struct store *s)
{
    for (int nulls = 0; s->w.c != NULL && PQstatus(s->w.c) == CONNECTION_OK;) {
        PGresult *res = PQgetResult(s->w.c);
        if (res == NULL) {
            if (++nulls > (int)s->npend + 2)
                break;
            continue;
        }
        ExecStatusType st = PQresultStatus(res);
        PQclear(res);
        if (st == PGRES_PIPELINE_SYNC)
            break;
    }
}

/* For the tests only: while the file CERTHOOK_TEST_HOLD_APPEND names exists, a batch of events
 * waits after its events went out -- executed: their seqs drawn, not committed (a test sees
 * that another server's fold does not pass them: postgres_spec). Unset, as in production:
 * nothing. */
static int test_hold_append(struct store *s)
{
    const char *hold = getenv("CERTHOOK_TEST_HOLD_APPEND");
    if (hold == NULL || access(hold, F_OK) != 0)
        return 0;
    if (!PQsendFlushRequest(s->w.c) || PQflush(s->w.c) != 0) {
        copy_message(s->error, sizeof s->error, PQerrorMessage(s->w.c));
        return -1;
    }
    while (access(hold, F_OK) == 0)
        usleep(10000);
    return 0;
}

static int pg_commit(struct store *s)
{
    int ok = 1;
    int folding = s->folding;
    if (folding) {
        s->folding = 0;
        s->fold_last = -1; /* until this one is committed */
        ok = fold_pipeline(s) == 0 && send_contexts(s) == 0;
    }
    if (ok && s->nev > 0)
        ok = send_events(s) == 0 && test_hold_append(s) == 0;
    if (ok && s->ndel > 0)
        ok = send_deliveries(s) == 0;
    if (ok && s->nsettle > 0)
        ok = send_settles(s) == 0;
    if (ok)
        ok = send_query(s, NULL, "COMMIT", 0, NULL, NULL, NULL, 0, P_OTHER, NULL) == 0;
    if (!ok)
        return -1;
    s->commit_sent = 1; /* from here, a lost connection leaves the outcome unknown */
    if (!PQpipelineSync(s->w.c)) {
        copy_message(s->error, sizeof s->error, PQerrorMessage(s->w.c));
        s->transient = pgc_failed(&s->w, NULL);
        return -1;
    }
    s->synced = 1;
    for (size_t i = 0; i < s->npend && s->w.c != NULL; i++)
        if (read_result(s, &s->pend[i]) != 0)
            ok = 0;
    if (s->w.c == NULL)
        return -1;
    /* the Sync: a COMMIT that fails says so before it */
    for (PGresult *res; (res = PQgetResult(s->w.c)) != NULL;) {
        ExecStatusType st = PQresultStatus(res);
        if (st == PGRES_FATAL_ERROR) {
            copy_message(s->error, sizeof s->error, PQresultErrorMessage(res));
            s->transient = pgc_failed(&s->w, res);
            ok = 0;
        }
        PQclear(res);
        if (st == PGRES_PIPELINE_SYNC || s->w.c == NULL)
            break;
    }
    if (ok && s->w.c != NULL && PQtransactionStatus(s->w.c) != PQTRANS_IDLE) {
        snprintf(s->error, sizeof s->error, "the commit did not end the transaction");
        s->transient = pgc_failed(&s->w, NULL);
        ok = 0;
    }
    if (!ok || s->w.c == NULL)
        return -1;
    PQexitPipelineMode(s->w.c);
    s->in_pipeline = 0;
    if (folding) {
        fold_reset(s);
        s->fold_last = s->fold_upto;
    }
    return 0;
}

static void pg_rollback(struct store *s)
{
    fold_reset(s);
    if (s->folding)
        s->fold_last = -1;
    if (s->folding && !s->in_pipeline) { /* the fold's reads: a plain transaction */
        char msg[300];
        s->folding = 0;
        if (s->w.c != NULL && PQstatus(s->w.c) == CONNECTION_OK &&
            PQtransactionStatus(s->w.c) != PQTRANS_IDLE)
            exec0(s, &s->w, "ROLLBACK", 0, NULL, msg, sizeof msg);
        return;
    }
    s->folding = 0;
    if (!s->in_pipeline)
        return;
    s->in_pipeline = 0;
    if (s->w.c == NULL || PQstatus(s->w.c) != CONNECTION_OK) {
        pgc_failed(&s->w, NULL);
        if (s->server)
            remember_unsure(s);
        return;
    }
    if (!s->synced) { /* statements were sent: no commit for them */
        PQsendQueryParams(s->w.c, "ROLLBACK", 0, NULL, NULL, NULL, NULL, 0);
        PQpipelineSync(s->w.c);
        s->npend++;
        drain(s);
    }
    if (s->w.c != NULL && PQtransactionStatus(s->w.c) != PQTRANS_IDLE) {
        PQsendQueryParams(s->w.c, "ROLLBACK", 0, NULL, NULL, NULL, NULL, 0);
        PQpipelineSync(s->w.c);
        drain(s);
    }
    if (s->w.c == NULL || !PQexitPipelineMode(s->w.c)) {
        PQfinish(s->w.c); /* a connection in a state this code does not know: a fresh one */
        s->w.c = NULL;
    }
}

static const char *pg_error(struct store *s)
{
    return s->error;
}

static int pg_transient(struct store *s)
{
    return s->transient;
}

/* Between batches: finished events received before the retention go with their deliveries,
 * a chunk per transaction (servers prune side by side: SKIP LOCKED), the replays asked before
 * the retention (replay_log: by age, README "journal.retention"), and expired state. */
static void pg_prune(struct store *s, double retention)
{
    char cutoff[40], now[40], msg[300];
    int64_t n = 0, chunk;
    fmt_double(cutoff, sizeof cutoff, time_now() - retention);
    fmt_double(now, sizeof now, time_now());
    const char *v[] = {cutoff};
    PGresult *res = run(s, &s->w, "SELECT coalesce((SELECT seq FROM events WHERE received_at >= "
                                  "$1::float8 ORDER BY seq LIMIT 1), (SELECT max(seq) + 1 FROM "
                                  "events), 0)",
                        1, v, NULL, NULL, 0, msg, sizeof msg);
    if (res == NULL)
        goto fail;
    char seq[24];
    snprintf(seq, sizeof seq, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    const char *v2[] = {seq};
    do {
        res = run(s, &s->w,
                  "WITH doomed AS (SELECT seq FROM events WHERE seq < $1::bigint AND state = 2 "
                  "ORDER BY seq LIMIT " STR(PRUNE_BATCH) " FOR UPDATE SKIP LOCKED), "
                  "d1 AS (DELETE FROM deliveries WHERE event_seq IN (SELECT seq FROM doomed)), "
                  "d2 AS (DELETE FROM event_data WHERE seq IN (SELECT seq FROM doomed)), "
                  "d3 AS (DELETE FROM contexts WHERE seq IN (SELECT seq FROM doomed)) "
                  "DELETE FROM events WHERE seq IN (SELECT seq FROM doomed)",
                  1, v2, NULL, NULL, 0, msg, sizeof msg);
        if (res == NULL)
            goto fail;
        chunk = strtoll(PQcmdTuples(res), NULL, 10);
        n += chunk;
        PQclear(res);
    } while (chunk == PRUNE_BATCH);
    const char *v3[] = {now};
    if (exec0(s, &s->w, "DELETE FROM replay_log WHERE requested_at < $1::float8", 1, v, msg,
              sizeof msg) != 0 ||
        exec0(s, &s->w, "DELETE FROM state WHERE expires_at < $1::float8", 1, v3, msg,
              sizeof msg) != 0)
        goto fail;
    if (n > 0)
        log_msg(LOG_INFO, "pruned %lld finished events older than the retention", (long long)n);
    return;
fail:
    log_msg(LOG_WARN, "journal pruning failed: %s", msg);
}

/* The lease, on the writer's thread between batches (journal.h, store.h). */
static int pg_renew(struct store *s, double *next)
{
    char id[24], lease[40], msg[300];
    *next = s->lease / 4;
    if (!s->server) {
        *next = 3600;
        return 0;
    }
    if (s->lost) {
        if (register_node(s, atomic_load(&s->id), msg, sizeof msg) != 0) {
            *next = fmin(*next, 0.5);
            return 0;
        }
        s->lost = 0;
        return 0;
    }
    fmt_int(id, sizeof id, atomic_load(&s->id));
    fmt_double(lease, sizeof lease, s->lease);
    const char *v[] = {id, lease};
    double t0 = time_mono();
    PGresult *res = run(s, &s->w, "UPDATE nodes SET lease_until = now() + make_interval(secs => "
                                  "$2::float8) WHERE id = $1::bigint",
                        2, v, NULL, NULL, 0, msg, sizeof msg);
    if (res == NULL) { /* the database is away: the lease runs out here first */
        *next = fmin(*next, 0.5);
        return 0;
    }
    int held = strcmp(PQcmdTuples(res), "1") == 0;
    PQclear(res);
    if (held) {
        atomic_store(&s->lease_until, t0 + s->lease);
        return 0;
    }
    atomic_store(&s->lease_until, 0.0);
    s->lost = 1;
    *next = 0;
    log_msg(LOG_WARN, "this server's lease on the journal ran out (the database was out of reach "
                      "for longer than delivery.lease) and its events may be other servers' now: "
                      "it drops them and registers again");
    return 1;
}

static double pg_lease(struct store *s)
{
    return s->server ? atomic_load(&s->lease_until) - time_mono() : INFINITY;
}

/* ---- reads (the reader's connection) -------------------------------------------------------------- */

static void read_failed(const char *what, const char *msg)
{
    log_msg(LOG_ERROR, "journal read failed (%s): %s", what, msg);
}

static int64_t pg_max_seq(struct store *s)
{
    char msg[300];
    PGresult *res = run(s, &s->r, "SELECT coalesce(max(seq), 0) FROM events", 0, NULL, NULL,
                        NULL, 0, msg, sizeof msg);
    int64_t seq = res ? strtoll(PQgetvalue(res, 0, 0), NULL, 10) : 0;
    PQclear(res);
    return seq;
}

static int pg_scan_events(struct store *s, int state, int64_t after, int64_t upto, int limit,
                          void (*fn)(void *cls, struct event *ev), void *cls)
{
    char st[16], a[24], u[24], l[16], me[24], msg[300];
    fmt_int(st, sizeof st, state);
    fmt_int(a, sizeof a, after);
    fmt_int(u, sizeof u, upto);
    fmt_int(l, sizeof l, limit);
    fmt_int(me, sizeof me, atomic_load(&s->id));
    const char *v[] = {st, a, u, l, me};
    PGresult *res = run(s, &s->r, "SELECT " EVENT_COLUMNS " FROM " EVENT_FROM " WHERE e.state = "
                                  "$1::int AND e.seq > $2::bigint AND e.seq <= $3::bigint AND "
                                  "e.owner = $5::bigint ORDER BY e.seq LIMIT $4::int",
                        5, v, NULL, NULL, 1, msg, sizeof msg);
    if (res == NULL) {
        read_failed("events", msg);
        return -1;
    }
    int n = PQntuples(res);
    for (int i = 0; i < n; i++) {
        struct event *ev = row_event(res, i);
        if (ev != NULL)
            fn(cls, ev);
    }
    PQclear(res);
    return n;
}

static struct event *pg_load(struct store *s, int64_t seq, const char *id)
{
    char seqs[24], me[24], msg[300], *t;
    fmt_int(seqs, sizeof seqs, seq);
    fmt_int(me, sizeof me, atomic_load(&s->id));
    const char *v[] = {id ? utf8(id, &t) : seqs, me};
    PGresult *res = id ? run(s, &s->r, "SELECT " EVENT_COLUMNS " FROM " EVENT_FROM
                                       " WHERE e.id = $1", 1, v, NULL, NULL, 1, msg, sizeof msg)
                       : run(s, &s->r, "SELECT " EVENT_COLUMNS " FROM " EVENT_FROM " WHERE e.seq "
                                       "= $1::bigint AND e.owner = $2::bigint",
                             2, v, NULL, NULL, 1, msg, sizeof msg);
    if (id)
        free(t);
    if (res == NULL)
        read_failed("event", msg);
    struct event *ev = res && PQntuples(res) == 1 ? row_event(res, 0) : NULL;
    PQclear(res);
    return ev;
}

static enum delivery_status status_of(const char *name)
{
    for (int i = 0; i < 5; i++)
        if (name && strcmp(name, delivery_status_names[i]) == 0)
            return (enum delivery_status)i;
    return DELIVERY_PENDING;
}

/* Rows of (event_seq, handler, status, attempts, crashes, next_at, first_at): fn for each. */
static void each_delivery(const PGresult *res,
                          void (*fn)(void *cls, const struct journal_delivery *row), void *cls)
{
    for (int i = 0; i < PQntuples(res); i++) {
        struct journal_delivery row = {
            .seq = strtoll(PQgetvalue(res, i, 0), NULL, 10), .handler = PQgetvalue(res, i, 1),
            .status = status_of(PQgetvalue(res, i, 2)), .attempts = atoi(PQgetvalue(res, i, 3)),
            .crashes = atoi(PQgetvalue(res, i, 4)), .next_at = text_double(res, i, 5),
            .first_at = text_double(res, i, 6)};
        fn(cls, &row);
    }
}

static int pg_scan_deliveries(struct store *s, const char *status, int64_t seq,
                              void (*fn)(void *cls, const struct journal_delivery *row), void *cls)
{
    char me[24], of[24], msg[300];
    fmt_int(me, sizeof me, atomic_load(&s->id));
    fmt_int(of, sizeof of, seq);
    const char *v[] = {me, of, status};
    PGresult *res = run(s, &s->r,
                        status ? "SELECT d.event_seq, d.handler, d.status, d.attempts, d.crashes, "
                                 "d.next_at, d.first_at FROM deliveries d JOIN events e ON e.seq "
                                 "= d.event_seq WHERE e.owner = $1::bigint AND ($2::bigint = 0 OR "
                                 "e.seq = $2::bigint) AND d.status = $3"
                               : "SELECT d.event_seq, d.handler, d.status, d.attempts, d.crashes, "
                                 "d.next_at, d.first_at FROM deliveries d JOIN events e ON e.seq "
                                 "= d.event_seq WHERE e.owner = $1::bigint AND ($2::bigint = 0 OR "
                                 "e.seq = $2::bigint) AND d." OPEN_DELIVERY,
                        status ? 3 : 2, v, NULL, NULL, 0, msg, sizeof msg);
    if (res == NULL) {
        read_failed("deliveries", msg);
        return -1;
    }
    int n = PQntuples(res);
    each_delivery(res, fn, cls);
    PQclear(res);
    return n;
}

/* An array parameter ("{1,2,3}") of the seqs in column col of res whose state column (scol,
 * -1: any) is / is not zero. */
static char *seq_array(const PGresult *res, int col, int scol, int zero)
{
    struct buf b;
    buf_init(&b);
    buf_adds(&b, "{");
    for (int i = 0, n = 0; i < PQntuples(res); i++) {
        if (scol >= 0 && (atoi(PQgetvalue(res, i, scol)) == 0) != zero)
            continue;
        if (n++ > 0)
            buf_adds(&b, ",");
        buf_adds(&b, PQgetvalue(res, i, col));
    }
    buf_adds(&b, "}");
    return buf_take(&b);
}

static void rollback_reader(struct store *s)
{
    char ignored[300];
    if (s->r.c != NULL && PQtransactionStatus(s->r.c) != PQTRANS_IDLE)
        exec0(s, &s->r, "ROLLBACK", 0, NULL, ignored, sizeof ignored);
}

/* Claims (journal.h): in one transaction on the reader's connection -- this server still
 * registered; the servers whose lease ran out deleted and their events freed; free events
 * taken, what they need read; those with nothing left to run finished. */
static int pg_claim(struct store *s, int limit,
                    void (*on_delivery)(void *cls, const struct journal_delivery *row),
                    void (*on_event)(void *cls, struct event *ev), void *cls)
{
    char me[24], lim[16], msg[300];
    PGresult *res = NULL, *dels = NULL, *evs = NULL;
    char *all = NULL, *fresh = NULL, *others = NULL;
    int n = -1;
    if (!s->server || pg_lease(s) <= 0)
        return 0;
    fmt_int(me, sizeof me, atomic_load(&s->id));
    fmt_int(lim, sizeof lim, limit);
    const char *v[] = {me, lim};
    if (exec0(s, &s->r, "BEGIN", 0, NULL, msg, sizeof msg) != 0)
        goto done;
    if ((res = run(s, &s->r, "SELECT 1 FROM nodes WHERE id = $1::bigint AND lease_until > now() "
                             "FOR SHARE", 1, v, NULL, NULL, 0, msg, sizeof msg)) == NULL)
        goto done;
    if (PQntuples(res) == 0) { /* not registered: the writer registers again first */
        n = 0;
        goto done;
    }
    PQclear(res);
    if ((res = run(s, &s->r, "DELETE FROM nodes WHERE lease_until < now() RETURNING id, name, "
                             "pid", 0, NULL, NULL, NULL, 0, msg, sizeof msg)) == NULL)
        goto done;
    for (int i = 0; i < PQntuples(res); i++) {
        PGresult *freed;
        const char *vd[] = {PQgetvalue(res, i, 0)};
        if ((freed = run(s, &s->r, "UPDATE events SET owner = NULL WHERE owner = $1::bigint AND "
                                   "state <> 2", 1, vd, NULL, NULL, 0, msg, sizeof msg)) == NULL)
            goto done;
        log_msg(LOG_WARN, "the lease of server %s (%s, pid %s) ran out: its %s unfinished events "
                          "are claimed by the others", PQgetvalue(res, i, 0),
                PQgetvalue(res, i, 1), PQgetvalue(res, i, 2), PQcmdTuples(freed));
        PQclear(freed);
    }
    PQclear(res);
    /* (only events folded: their contexts written) */
    if ((res = run(s, &s->r, "WITH c AS (SELECT seq FROM events WHERE owner IS NULL AND state <> "
                             "2 AND seq <= (SELECT upto FROM fold) ORDER BY seq LIMIT $2::int "
                             "FOR UPDATE SKIP LOCKED) UPDATE events e SET owner = $1::bigint "
                             "FROM c WHERE e.seq = c.seq RETURNING e.seq, e.state",
                   2, v, NULL, NULL, 0, msg, sizeof msg)) == NULL)
        goto done;
    n = PQntuples(res);
    if (n == 0)
        goto commit;
    all = seq_array(res, 0, -1, 0);
    fresh = seq_array(res, 0, 1, 1);
    others = seq_array(res, 0, 1, 0);
    const char *va[] = {all}, *vf[] = {fresh}, *vo[] = {others};
    n = -1;
    if ((dels = run(s, &s->r, "SELECT event_seq, handler, status, attempts, crashes, next_at, "
                              "first_at FROM deliveries WHERE event_seq = ANY($1::bigint[]) AND "
                              OPEN_DELIVERY " ORDER BY event_seq, handler",
                    1, va, NULL, NULL, 0, msg, sizeof msg)) == NULL ||
        (evs = run(s, &s->r, "SELECT " EVENT_COLUMNS " FROM " EVENT_FROM " WHERE e.seq = "
                             "ANY($1::bigint[]) ORDER BY e.seq",
                   1, vf, NULL, NULL, 1, msg, sizeof msg)) == NULL ||
        exec0(s, &s->r, "UPDATE events e SET state = 2, owner = NULL WHERE e.seq = "
                        "ANY($1::bigint[]) AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE "
                        "d.event_seq = e.seq AND d." OPEN_DELIVERY ")",
              1, vo, msg, sizeof msg) != 0)
        goto done;
    n = PQntuples(res);
commit:
    if (exec0(s, &s->r, "COMMIT", 0, NULL, msg, sizeof msg) != 0) {
        n = -1;
        goto done;
    }
    if (dels != NULL)
        each_delivery(dels, on_delivery, cls);
    for (int i = 0; evs != NULL && i < PQntuples(evs); i++) {
        struct event *ev = row_event(evs, i);
        if (ev != NULL)
            on_event(cls, ev);
    }
done:
    if (n < 0) {
        read_failed("claims", msg);
        rollback_reader(s);
    } else if (n == 0) {
        rollback_reader(s);
    }
    PQclear(res);
    PQclear(dels);
    PQclear(evs);
    free(all);
    free(fresh);
    free(others);
    return n;
}

/* Replay requests for this server (journal.h): those of events it holds, or finished ones it
 * takes; those whose event is held by another server are left to it. */
static int pg_scan_replays(struct store *s, int64_t after,
                           void (*fn)(void *cls, const struct journal_replay *r), void *cls)
{
    char me[24], aft[24], msg[300];
    PGresult *res = NULL, *took = NULL, *rows = NULL;
    struct buf ids, events;
    int n = -1;
    buf_init(&ids);
    buf_init(&events);
    if (!s->server || pg_lease(s) <= 0)
        return 0;
    fmt_int(me, sizeof me, atomic_load(&s->id));
    fmt_int(aft, sizeof aft, after);
    const char *v[] = {me, aft};
    if (exec0(s, &s->r, "BEGIN", 0, NULL, msg, sizeof msg) != 0 ||
        (res = run(s, &s->r,
                   "SELECT r.id, r.event_id, r.dead FROM replays r WHERE (r.claimed_by IS NULL OR "
                   "(r.claimed_by = $1::bigint AND r.id > $2::bigint) OR NOT EXISTS (SELECT 1 FROM "
                   "nodes n WHERE n.id = r.claimed_by)) AND NOT EXISTS (SELECT 1 FROM events e "
                   "WHERE e.id = r.event_id AND NOT ((e.state = 2 AND e.owner IS NULL) OR e.owner "
                   "= $1::bigint)) ORDER BY r.id LIMIT " STR(REPLAY_BATCH) " FOR UPDATE SKIP LOCKED",
                   2, v, NULL, NULL, 0, msg, sizeof msg)) == NULL)
        goto done;
    if (PQntuples(res) == 0) {
        n = 0;
        goto done;
    }
    /* take their events: the ones another server took meanwhile are left for it */
    buf_adds(&events, "{");
    for (int i = 0, k = 0; i < PQntuples(res); i++)
        if (!PQgetisnull(res, i, 1))
            add_element(&events, PQgetvalue(res, i, 1), k++ == 0);
    buf_adds(&events, "}");
    const char *ve[] = {me, events.p};
    if ((took = run(s, &s->r, "UPDATE events SET owner = $1::bigint, state = CASE WHEN state = 2 "
                              "THEN 1 ELSE state END WHERE id = ANY($2::text[]) AND ((state = 2 "
                              "AND owner IS NULL) OR owner = $1::bigint) RETURNING id",
                    2, ve, NULL, NULL, 0, msg, sizeof msg)) == NULL)
        goto done;
    buf_adds(&ids, "{");
    for (int i = 0, k = 0; i < PQntuples(res); i++) {
        int ok = PQgetisnull(res, i, 1);
        for (int t = 0; !ok && t < PQntuples(took); t++)
            ok = strcmp(PQgetvalue(took, t, 0), PQgetvalue(res, i, 1)) == 0;
        if (!ok) {
            /* its event is gone: done with it all the same (the dispatcher says so) */
            char *t;
            const char *vx[] = {utf8(PQgetvalue(res, i, 1), &t)};
            PGresult *x = run(s, &s->r, "SELECT 1 FROM events WHERE id = $1", 1, vx, NULL, NULL,
                              0, msg, sizeof msg);
            free(t);
            if (x == NULL)
                goto done;
            ok = PQntuples(x) == 0;
            PQclear(x);
        }
        if (ok) {
            buf_adds(&ids, k++ ? "," : "");
            buf_adds(&ids, PQgetvalue(res, i, 0));
        }
    }
    buf_adds(&ids, "}");
    const char *vi[] = {me, ids.p};
    if ((rows = run(s, &s->r, "UPDATE replays SET claimed_by = $1::bigint WHERE id = "
                              "ANY($2::bigint[]) RETURNING id, event_id, dead, handler",
                    2, vi, NULL, NULL, 0, msg, sizeof msg)) == NULL ||
        exec0(s, &s->r, "COMMIT", 0, NULL, msg, sizeof msg) != 0)
        goto done;
    n = PQntuples(rows);
    int64_t *order = malloc(((size_t)n + 1) * sizeof *order); /* by id, as the dispatcher reads */
    for (int i = 0; order && i < n; i++)
        order[i] = (int64_t)i;
    for (int i = 1; order && i < n; i++)
        for (int k = i; k > 0 && strtoll(PQgetvalue(rows, (int)order[k - 1], 0), NULL, 10) >
                                     strtoll(PQgetvalue(rows, (int)order[k], 0), NULL, 10); k--) {
            int64_t t = order[k];
            order[k] = order[k - 1];
            order[k - 1] = t;
        }
    for (int i = 0; order && i < n; i++) {
        int r = (int)order[i];
        struct journal_replay rp = {strtoll(PQgetvalue(rows, r, 0), NULL, 10), value(rows, r, 1),
                                    value(rows, r, 3), PQgetvalue(rows, r, 2)[0] == 't'};
        fn(cls, &rp);
    }
    free(order);
done:
    if (n < 0)
        read_failed("replays", msg);
    if (n <= 0)
        rollback_reader(s);
    PQclear(res);
    PQclear(took);
    PQclear(rows);
    buf_free(&ids);
    buf_free(&events);
    return n;
}

/* The first column of the one row sql selects ($1: key as bytes, $2: now) into *out,
 * malloc'd; NULL when there is none. 0, or -1 with err. */
static int read_text(struct store *s, const char *sql, const char *key, char **out, size_t *len,
                     char *err, size_t errlen)
{
    char now[40];
    fmt_double(now, sizeof now, time_now());
    const char *v[] = {key, now};
    int lens[] = {(int)strlen(key), 0}, fmts[] = {1, 0};
    *out = NULL;
    PGresult *res = run(s, &s->r, sql, strstr(sql, "$2") ? 2 : 1, v, lens, fmts, 1, err, errlen);
    if (res == NULL)
        return -1;
    int rc = 0;
    if (PQntuples(res) == 1) {
        *len = (size_t)PQgetlength(res, 0, 0);
        if ((*out = malloc(*len + 1)) != NULL) {
            memcpy(*out, PQgetvalue(res, 0, 0), *len);
            (*out)[*len] = '\0';
        } else {
            snprintf(err, errlen, "out of memory");
            rc = -1;
        }
    }
    PQclear(res);
    return rc;
}

static int pg_state_get(struct store *s, const char *key, char **out, size_t *len, char *err,
                        size_t errlen)
{
    return read_text(s, "SELECT value FROM state WHERE key = $1::bytea AND (expires_at IS NULL "
                        "OR expires_at > $2::float8)", key, out, len, err, errlen);
}

static int pg_once_get(struct store *s, const char *key, char **out, size_t *len, char *err,
                       size_t errlen)
{
    return read_text(s, "SELECT results FROM once WHERE key = $1::bytea AND results IS NOT NULL",
                     key, out, len, err, errlen);
}

static int pg_certs(struct store *s, const struct journal_certs_query *q,
                    void (*fn)(void *cls, const char *json), void *cls, char *err, size_t errlen)
{
    char before[40], limit[24], *t[4] = {0};
    fmt_double(before, sizeof before, q->expiring_before);
    fmt_int(limit, sizeof limit, q->limit);
    const char *sql =
        q->find ? "SELECT to_jsonb(i)::text FROM inventory i WHERE key = $1 OR certificate_id "
                  "= $1 OR hostname = $1 ORDER BY key = $1 DESC, certificate_id IS NOT DISTINCT "
                  "FROM $1 DESC, updated_at DESC LIMIT 1"
                : "SELECT to_jsonb(i)::text FROM inventory i WHERE CASE WHEN $1::text IS NULL "
                  "THEN status IS DISTINCT FROM 'deleted' AND state IS DISTINCT FROM 'deleted' "
                  "ELSE lower(status) = lower($1) OR state = lower($1) END AND ($4::text IS NULL "
                  "OR state = $4) AND ($5::text IS NULL OR provider = $5) AND ($2::float8 IS NULL OR expires_at < $2::float8) ORDER BY "
                  "expires_at IS NULL, expires_at, hostname, key LIMIT $3::bigint";
    const char *v[] = {q->find ? utf8(q->find, &t[0]) : utf8(q->status, &t[1]),
                       q->expiring_before > 0 ? before : NULL, q->limit > 0 ? limit : NULL,
                       utf8(q->state, &t[2]), utf8(q->provider, &t[3])};
    PGresult *res = run(s, &s->r, sql, q->find ? 1 : 5, v, NULL, NULL, 0, err, errlen);
    for (int i = 0; i < 4; i++)
        free(t[i]);
    if (res == NULL)
        return -1;
    for (int i = 0, n = PQntuples(res); i < n; i++)
        fn(cls, PQgetvalue(res, i, 0));
    PQclear(res);
    return 0;
}

static int pg_state_keys(struct store *s, const char *prefix, void (*fn)(void *, const char *),
                         void *cls, char *err, size_t errlen)
{
    char now[40];
    fmt_double(now, sizeof now, time_now());
    const char *v[] = {prefix, now};
    int lens[] = {(int)strlen(prefix), 0}, fmts[] = {1, 0};
    PGresult *res = run(s, &s->r, "SELECT key FROM state WHERE substring(key FROM 1 FOR "
                                  "length($1::bytea)) = $1::bytea AND (expires_at IS NULL OR "
                                  "expires_at > $2::float8) ORDER BY key",
                        2, v, lens, fmts, 1, err, errlen);
    if (res == NULL)
        return -1;
    for (int i = 0; i < PQntuples(res); i++)
        fn(cls, PQgetvalue(res, i, 0)); /* libpq ends every value with a NUL */
    PQclear(res);
    return 0;
}

/* ---- the command line's view ----------------------------------------------------------------------- */

/* A type pattern (`*` wildcards) as a LIKE pattern. */
static char *like_pattern(const char *glob)
{
    struct buf b;
    buf_init(&b);
    for (const char *p = glob; *p; p++) {
        if (*p == '*')
            buf_adds(&b, "%");
        else if (*p == '%' || *p == '_' || *p == '\\')
            buf_add(&b, "\\", 1), buf_add(&b, p, 1);
        else
            buf_add(&b, p, 1);
    }
    buf_add(&b, "", 0);
    return buf_take(&b);
}

static int pg_list(struct store *s, const struct journal_filter *f,
                   void (*fn)(void *cls, const struct journal_row *row), void *cls, char *err,
                   size_t errlen)
{
    char limit[16], *type = f->type ? like_pattern(f->type) : NULL;
    fmt_int(limit, sizeof limit, f->limit);
    char *id_tmp;
    char before[24], since[40], until[40], *prov_tmp;
    fmt_int(before, sizeof before, f->before);
    fmt_double(since, sizeof since, f->since);
    fmt_double(until, sizeof until, f->until);
    const char *v[] = {type, f->status, limit, utf8(f->id, &id_tmp), utf8(f->provider, &prov_tmp),
                       f->before > 0 ? before : NULL, f->since > 0 ? since : NULL,
                       f->until > 0 ? until : NULL};
    PGresult *res = run(s, &s->r,
                        "WITH picked AS (SELECT seq FROM events e WHERE ($1::text IS NULL OR type "
                        "LIKE $1 OR provider_type LIKE $1) AND ($2::text IS NULL OR EXISTS "
                        "(SELECT 1 FROM deliveries d WHERE d.event_seq = e.seq AND d.status = "
                        "$2)) AND ($4::text IS NULL OR id = $4) AND ($5::text IS NULL OR provider = $5) "
                        "AND ($6::bigint IS NULL OR seq < $6::bigint) AND ($7::float8 IS NULL OR "
                        "received_at >= $7::float8) AND ($8::float8 IS NULL OR received_at < "
                        "$8::float8) ORDER BY seq DESC LIMIT $3::int) "
                        "SELECT e.seq, e.id, e.source, e.type, e.provider_type, e.hostname, "
                        "e.received_at, e.state, d.handler, d.status, d.attempts, d.last_error, "
                        "d.next_at, d.started_at, d.generation, e.provider, d.traceback FROM "
                        "picked JOIN events e ON e.seq = picked.seq LEFT JOIN deliveries d ON "
                        "d.event_seq = e.seq ORDER BY e.seq DESC, d.handler COLLATE \"C\"",
                        8, v, NULL, NULL, 0, err, errlen);
    free(type);
    free(id_tmp);
    free(prov_tmp);
    if (res == NULL)
        return -1;
    for (int i = 0; i < PQntuples(res); i++) {
        struct journal_row r = {
            .seq = strtoll(PQgetvalue(res, i, 0), NULL, 10), .id = value(res, i, 1),
            .source = value(res, i, 2), .type = value(res, i, 3),
            .provider_type = value(res, i, 4), .hostname = value(res, i, 5),
            .received_at = text_double(res, i, 6), .state = atoi(PQgetvalue(res, i, 7)),
            .handler = value(res, i, 8), .status = value(res, i, 9),
            .attempts = atoi(PQgetvalue(res, i, 10)), .error = value(res, i, 11),
            .next_at = text_double(res, i, 12), .started_at = text_double(res, i, 13),
            .generation = atoi(PQgetvalue(res, i, 14)), .provider = value(res, i, 15),
            .traceback = value(res, i, 16)};
        fn(cls, &r);
    }
    PQclear(res);
    return 0;
}

/* Queues a replay (journal.h). A request for the dead ones is one per event that has one, so
 * that each goes to the server that holds that event; NOTIFY says there is work. */
static int pg_request_replay(struct store *s, const char *event_id, const char *handler,
                             const char *who, int *count, char *err, size_t errlen)
{
    char now[40], msg[300], *t = NULL, *th = NULL, *tw = NULL;
    PGresult *res = NULL;
    *count = 0;
    fmt_double(now, sizeof now, time_now());
    const char *v[] = {event_id ? utf8(event_id, &t) : now, now, utf8(handler, &th),
                       utf8(who, &tw)};
    const char *vd[] = {now, v[3]};
    const char *which[] = {v[0], v[2]};
    int rc = -1;
    if (exec0(s, &s->w, "BEGIN", 0, NULL, msg, sizeof msg) != 0)
        goto fail;
    res = run(s, &s->w, event_id ? "SELECT (SELECT count(*) FROM deliveries WHERE event_seq = "
                                   "e.seq AND CASE WHEN $2::text IS NULL THEN status = 'dead' "
                                   "ELSE handler = $2 END) FROM events e WHERE e.id = $1"
                                 : "SELECT count(*) FROM deliveries WHERE status = 'dead'",
              event_id ? 2 : 0, which, NULL, NULL, 0, msg, sizeof msg);
    if (res == NULL)
        goto fail;
    if (PQntuples(res) == 0) {
        snprintf(err, errlen, "no event with id %s in the journal", event_id);
        goto done;
    }
    *count = atoi(PQgetvalue(res, 0, 0));
    if (handler && *count == 0) {
        snprintf(err, errlen, "event %s has no delivery to %s", event_id, handler);
        goto done;
    }
    if (exec0(s, &s->w, event_id ? "INSERT INTO replays (event_id, dead, requested_at, handler) "
                                   "VALUES ($1, false, $2::float8, $3)"
                                 : "INSERT INTO replays (event_id, dead, requested_at) SELECT "
                                   "e.id, true, $1::float8 FROM events e WHERE EXISTS (SELECT 1 "
                                   "FROM deliveries d WHERE d.event_seq = e.seq AND d.status = "
                                   "'dead') ORDER BY e.seq",
              event_id ? 3 : 1, v, msg, sizeof msg) != 0 ||
        /* the record of it, kept (replays is the queue: a request goes once handled) */
        exec0(s, &s->w, event_id ? "INSERT INTO replay_log (event_id, dead, requested_at, "
                                   "handler, requested_by) VALUES ($1, false, $2::float8, $3, $4)"
                                 : "INSERT INTO replay_log (dead, requested_at, requested_by) "
                                   "VALUES (true, $1::float8, $2)",
              event_id ? 4 : 2, event_id ? v : vd, msg, sizeof msg) != 0 ||
        exec0(s, &s->w, "COMMIT", 0, NULL, msg, sizeof msg) != 0)
        goto fail;
    exec0(s, &s->w, "NOTIFY " CHANNEL, 0, NULL, msg, sizeof msg);
    rc = 0;
    goto done;
fail:
    snprintf(err, errlen, "cannot write to the journal: %s", msg);
done:
    if (rc != 0 && s->w.c != NULL && PQtransactionStatus(s->w.c) != PQTRANS_IDLE)
        exec0(s, &s->w, "ROLLBACK", 0, NULL, msg, sizeof msg);
    PQclear(res);
    free(t);
    free(th);
    free(tw);
    return rc;
}

static int pg_replay_log(struct store *s, const char *event_id, int limit,
                         void (*fn)(void *cls, const struct journal_replay_record *r), void *cls,
                         char *err, size_t errlen)
{
    char lim[16], *t;
    fmt_int(lim, sizeof lim, limit);
    const char *v[] = {utf8(event_id, &t), lim};
    PGresult *res = run(s, &s->r, "SELECT event_id, handler, dead, requested_at, requested_by "
                                  "FROM replay_log WHERE $1::text IS NULL OR event_id = $1 ORDER "
                                  "BY id DESC LIMIT $2::int",
                        2, v, NULL, NULL, 0, err, errlen);
    free(t);
    if (res == NULL)
        return -1;
    for (int i = 0; i < PQntuples(res); i++) {
        struct journal_replay_record r = {value(res, i, 0), value(res, i, 1), value(res, i, 4),
                                          PQgetvalue(res, i, 2)[0] == 't', text_double(res, i, 3)};
        fn(cls, &r);
    }
    PQclear(res);
    return 0;
}

/* ---- /metrics, the inventory ------------------------------------------------------------------------ */

/* Deliveries by status, on the admin thread's connection: the open and dead ones by their
 * indexes, the done ones as all (a count PostgreSQL can take from the primary key's index) less
 * those, in the statement's one snapshot. */
static void pg_status(struct store *s, struct journal_status *st)
{
    char msg[300];
    for (int i = 0; i < 5; i++)
        st->deliveries[i] = -1;
    pthread_mutex_lock(&s->amu);
    PGresult *res = run(s, &s->a, "SELECT status, count(*) FROM deliveries WHERE " OPEN_DELIVERY
                                  " GROUP BY status UNION ALL SELECT 'dead', count(*) FROM "
                                  "deliveries WHERE status = 'dead' UNION ALL SELECT 'done', "
                                  "count(*) FROM deliveries",
                        0, NULL, NULL, NULL, 0, msg, sizeof msg);
    pthread_mutex_unlock(&s->amu);
    if (res == NULL)
        return;
    double done = 0;
    for (int i = 0; i < 5; i++)
        st->deliveries[i] = 0;
    for (int i = 0; i < PQntuples(res); i++) {
        enum delivery_status k = status_of(PQgetvalue(res, i, 0));
        double n = strtod(PQgetvalue(res, i, 1), NULL);
        if (k == DELIVERY_DONE) {
            done += n;
        } else {
            st->deliveries[k] = n;
            done -= n;
        }
    }
    st->deliveries[DELIVERY_DONE] = done;
    PQclear(res);
}

static int pg_load_inventory(struct store *s, size_t cap)
{
    char n[24], msg[300];
    metrics_inventory_cap(cap);
    fmt_int(n, sizeof n, (int64_t)cap);
    const char *v[] = {n};
    PGresult *res = run(s, &s->r, "SELECT key, hostname, provider, status, state, last_type, "
                                  "expires_at, updated_at FROM inventory WHERE status IS DISTINCT "
                                  "FROM 'deleted' ORDER BY updated_at DESC LIMIT $1::bigint",
                        1, v, NULL, NULL, 0, msg, sizeof msg);
    if (res == NULL)
        return -1;
    int rows = PQntuples(res);
    for (int i = 0; i < rows; i++)
        metrics_certificate(PQgetvalue(res, i, 0), PQgetvalue(res, i, 1), PQgetvalue(res, i, 2),
                            value(res, i, 3), value(res, i, 4), value(res, i, 5),
                            text_double(res, i, 6), text_double(res, i, 7));
    PQclear(res);
    return rows;
}

static int pg_upgrade(struct store *s,
                      int (*fn)(void *cls, const struct event *ev, struct buf *packed, char *err,
                                size_t errlen),
                      void *cls, char *err, size_t errlen)
{
    (void)s, (void)fn, (void)cls, (void)err, (void)errlen;
    return 0; /* this store only ever kept events packed */
}

/* ---- certhook migrate: rows of another journal, in one transaction ------------------------------- */

static int pg_import_begin(struct store *s, char *err, size_t errlen)
{
    char msg[300];
    PGresult *res = NULL;
    if (exec0(s, &s->w, "BEGIN", 0, NULL, msg, sizeof msg) != 0 ||
        (res = run(s, &s->w, "SELECT EXISTS (SELECT 1 FROM events)", 0, NULL, NULL, NULL, 0, msg,
                   sizeof msg)) == NULL) {
        snprintf(err, errlen, "cannot write to the journal database: %s", msg);
        return -1;
    }
    int used = PQgetvalue(res, 0, 0)[0] == 't';
    PQclear(res);
    if (used) {
        exec0(s, &s->w, "ROLLBACK", 0, NULL, msg, sizeof msg);
        snprintf(err, errlen, "the journal database already holds events: migrate into an empty "
                              "one (a new database)");
        return -1;
    }
    return 0;
}

static int pg_import(struct store *s, const struct journal_record *rec, char *err, size_t errlen)
{
    char a[24], b[40], c[40], d[40], e[40], f[16], g[24], h[16], msg[300];
    char *t[8] = {0};
    int rc = -1;
    switch (rec->kind) {
    case JR_EVENT: {
        const struct event *ev = rec->ev;
        fmt_int(a, sizeof a, ev->seq);
        fmt_double(b, sizeof b, ev->received_at);
        fmt_double(c, sizeof c, ev->occurred_at);
        fmt_int(f, sizeof f, rec->state == 3 ? 1 : rec->state);
        const char *v[] = {a, utf8(ev->id, &t[0]), utf8(ev->source, &t[1]),
                           utf8(ev->provider, &t[2]), utf8(ev->type, &t[3]),
                           utf8(ev->provider_type, &t[4]), utf8(ev->hostname, &t[5]), b,
                           ev->occurred_at != 0 ? c : NULL, f,
                           ev->packed ? (const char *)ev->packed : NULL, ev->body ? ev->body : "",
                           utf8(ev->context, &t[6])};
        int lens[13] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, (int)ev->packed_len, (int)ev->body_len, 0};
        int fmts[13] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0};
        PGresult *res = run(s, &s->w,
                            "WITH ins AS (INSERT INTO events (seq, id, source, provider, type, "
                            "provider_type, hostname, received_at, occurred_at, state) VALUES "
                            "($1::bigint, $2, $3, $4, $5, $6, $7, $8::float8, $9::float8, "
                            "$10::int) RETURNING seq) INSERT INTO event_data (seq, event, body, "
                            "context) SELECT seq, $11::bytea, $12::bytea, $13 FROM ins",
                            13, v, lens, fmts, 0, msg, sizeof msg);
        rc = res ? 0 : -1;
        PQclear(res);
        break;
    }
    case JR_DELIVERY: {
        const struct delivery_result *r = rec->d;
        fmt_int(a, sizeof a, rec->seq);
        fmt_int(f, sizeof f, r->attempts);
        fmt_int(g, sizeof g, r->generation);
        fmt_double(b, sizeof b, r->first_at);
        fmt_double(c, sizeof c, r->started_at);
        fmt_double(d, sizeof d, r->duration);
        fmt_double(e, sizeof e, r->next_at);
        fmt_int(h, sizeof h, r->crashes);
        const char *v[] = {a, utf8(r->handler, &t[0]), delivery_status_names[r->status], f,
                           r->generation ? g : NULL, r->first_at ? b : NULL,
                           r->started_at ? c : NULL, r->started_at ? d : NULL,
                           r->next_at ? e : NULL, utf8(r->error, &t[1]),
                           utf8(r->traceback, &t[2]), h};
        rc = exec0(s, &s->w, "INSERT INTO deliveries (event_seq, handler, status, attempts, "
                             "generation, first_at, started_at, duration, next_at, last_error, "
                             "traceback, crashes) VALUES ($1::bigint, $2, $3, $4::int, $5::bigint, "
                             "$6::float8, $7::float8, $8::float8, $9::float8, $10, $11, $12::int)",
                   12, v, msg, sizeof msg);
        break;
    }
    case JR_STATE: {
        fmt_double(b, sizeof b, rec->expires_at);
        const char *v[] = {rec->key, rec->value, rec->expires_at > 0 ? b : NULL};
        int lens[] = {(int)rec->key_len, (int)rec->value_len, 0}, fmts[] = {1, 1, 0};
        PGresult *res = run(s, &s->w, "INSERT INTO state (key, value, expires_at) VALUES "
                                      "($1::bytea, $2::bytea, $3::float8)",
                            3, v, lens, fmts, 0, msg, sizeof msg);
        rc = res ? 0 : -1;
        PQclear(res);
        break;
    }
    case JR_CERTIFICATE: { /* an inventory entry, as JSON */
        const char *v[] = {utf8(rec->value, &t[0])};
        rc = exec0(s, &s->w, "INSERT INTO inventory SELECT * FROM jsonb_populate_record(NULL::"
                             "inventory, $1::jsonb)", 1, v, msg, sizeof msg);
        break;
    }
    case JR_ONCE: {
        fmt_double(b, sizeof b, rec->at);
        const char *v[] = {rec->key, rec->value, rec->at > 0 ? b : NULL};
        int lens[] = {(int)rec->key_len, (int)rec->value_len, 0}, fmts[] = {1, 1, 0};
        PGresult *res = run(s, &s->w, "INSERT INTO once (key, results, lease_until) VALUES "
                                      "($1::bytea, $2::bytea, $3::float8)",
                            3, v, lens, fmts, 0, msg, sizeof msg);
        rc = res ? 0 : -1;
        PQclear(res);
        break;
    }
    case JR_REPLAY: {
        /* a request for every dead delivery becomes one per event that has one (see
         * pg_request_replay) */
        fmt_int(a, sizeof a, rec->seq);
        fmt_double(b, sizeof b, rec->at);
        const char *v[] = {a, utf8(rec->event_id, &t[0]), rec->dead ? "true" : "false", b,
                           utf8(rec->key, &t[1])};
        const char *vd[] = {b};
        rc = rec->event_id == NULL && rec->dead
                 ? exec0(s, &s->w, "INSERT INTO replays (event_id, dead, requested_at) SELECT "
                                   "e.id, true, $1::float8 FROM events e WHERE EXISTS (SELECT 1 "
                                   "FROM deliveries d WHERE d.event_seq = e.seq AND d.status = "
                                   "'dead') ORDER BY e.seq", 1, vd, msg, sizeof msg)
                 : exec0(s, &s->w, "INSERT INTO replays (id, event_id, dead, requested_at, "
                                   "handler) VALUES ($1::bigint, $2, $3::boolean, $4::float8, $5)",
                         5, v, msg, sizeof msg);
        break;
    }
    case JR_REPLAY_LOG: {
        fmt_int(a, sizeof a, rec->seq);
        fmt_double(b, sizeof b, rec->at);
        const char *v[] = {a, utf8(rec->event_id, &t[0]), utf8(rec->key, &t[1]),
                           rec->dead ? "true" : "false", b, utf8(rec->value, &t[2])};
        rc = exec0(s, &s->w, "INSERT INTO replay_log (id, event_id, handler, dead, requested_at, "
                             "requested_by) VALUES ($1::bigint, $2, $3, $4::boolean, $5::float8, "
                             "$6)", 6, v, msg, sizeof msg);
        break;
    }
    default:
        snprintf(msg, sizeof msg, "unknown record");
    }
    for (int i = 0; i < 8; i++)
        free(t[i]);
    if (rc != 0)
        snprintf(err, errlen, "cannot write to the journal database: %s", msg);
    return rc;
}

static int pg_import_end(struct store *s, int ok, char *err, size_t errlen)
{
    char msg[300];
    if (ok &&
        (exec0(s, &s->w, "SELECT setval(pg_get_serial_sequence('events', 'seq'), coalesce(max(seq), "
                         "0) + 1, false) FROM events", 0, NULL, msg, sizeof msg) ||
         exec0(s, &s->w, "SELECT setval(pg_get_serial_sequence('replays', 'id'), coalesce(max(id), "
                         "0) + 1, false) FROM replays", 0, NULL, msg, sizeof msg) ||
         exec0(s, &s->w, "SELECT setval(pg_get_serial_sequence('replay_log', 'id'), "
                         "coalesce(max(id), 0) + 1, false) FROM replay_log", 0, NULL, msg,
               sizeof msg) ||
         /* the events come with their contexts, the inventory with them: folded */
         exec0(s, &s->w, "UPDATE fold SET upto = (SELECT coalesce(max(seq), 0) FROM events)", 0,
               NULL, msg, sizeof msg) ||
         exec0(s, &s->w, "COMMIT", 0, NULL, msg, sizeof msg))) {
        snprintf(err, errlen, "cannot write to the journal database: %s", msg);
        ok = 0;
    }
    if (!ok && s->w.c != NULL && PQtransactionStatus(s->w.c) != PQTRANS_IDLE)
        exec0(s, &s->w, "ROLLBACK", 0, NULL, msg, sizeof msg);
    return ok ? 0 : -1;
}

/* ---- where servers listen: their rows in nodes ----------------------------------------------------- */

/* On the reader's connection (the dispatcher's thread); kept for a registration anew. */
static int pg_announce(struct store *s, const struct journal_server *me, char *err,
                       size_t errlen)
{
    char id[24], *listen = strdup(me->listen), *admin = strdup(me->admin);
    if (listen == NULL || admin == NULL) {
        free(listen);
        free(admin);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    pthread_mutex_lock(&s->addr_mu);
    free(s->listen);
    free(s->admin);
    s->listen = listen, s->admin = admin;
    pthread_mutex_unlock(&s->addr_mu);
    fmt_int(id, sizeof id, atomic_load(&s->id));
    const char *v[] = {id, listen, admin};
    return exec0(s, &s->r, "UPDATE nodes SET listen = $2, admin = $3 WHERE id = $1::bigint", 3,
                 v, err, errlen);
}

/* Servers on this machine (by host name) whose lease holds. */
static int pg_servers(struct store *s, void (*fn)(void *cls, const struct journal_server *srv),
                      void *cls, char *err, size_t errlen)
{
    char host[256] = "?";
    gethostname(host, sizeof host - 1);
    const char *v[] = {host};
    PGresult *res = run(s, &s->r, "SELECT pid, listen, admin FROM nodes WHERE name = $1 AND "
                                  "listen IS NOT NULL AND lease_until > now() ORDER BY "
                                  "started_at DESC, id DESC", 1, v, NULL, NULL, 0, err, errlen);
    if (res == NULL)
        return -1;
    int n = PQntuples(res);
    for (int i = 0; i < n; i++) {
        struct journal_server srv = {atol(PQgetvalue(res, i, 0)), PQgetvalue(res, i, 1),
                                     PQgetvalue(res, i, 2)};
        fn(cls, &srv);
    }
    PQclear(res);
    return n;
}

void store_pg_version(struct buf *b)
{
    int v = PQlibVersion();
    buf_printf(b, "libpq %d.%d", v / 10000, v % 100);
}

const struct store_ops store_pg = {
    .name = "postgresql",
    .open = pg_open,
    .close = pg_close,
    .writer_start = pg_writer_start,
    .writer_stop = pg_writer_stop,
    .begin = pg_begin,
    .insert = pg_insert,
    .state = pg_state,
    .delivery = pg_delivery,
    .settle = pg_settle,
    .replayed = pg_replayed,
    .commit = pg_commit,
    .rollback = pg_rollback,
    .error = pg_error,
    .transient = pg_transient,
    .prune = pg_prune,
    .renew = pg_renew,
    .entry_get = pg_entry_get,
    .entry_put = pg_entry_put,
    .context = pg_context,
    .folded = pg_folded,
    .fold_take = pg_fold_take,
    .contexts = pg_contexts,
    .fold_store = pg_fold_store,
    .max_seq = pg_max_seq,
    .scan_events = pg_scan_events,
    .load = pg_load,
    .scan_deliveries = pg_scan_deliveries,
    .scan_replays = pg_scan_replays,
    .state_get = pg_state_get,
    .once_get = pg_once_get,
    .certs = pg_certs,
    .state_keys = pg_state_keys,
    .list = pg_list,
    .request_replay = pg_request_replay,
    .replay_log = pg_replay_log,
    .status = pg_status,
    .load_inventory = pg_load_inventory,
    .upgrade = pg_upgrade,
    .claim = pg_claim,
    .lease = pg_lease,
    .wake_fd = pg_wake_fd,
    .wake_clear = pg_wake_clear,
    .announce = pg_announce,
    .servers = pg_servers,
    .import_begin = pg_import_begin,
    .import = pg_import,
    .import_end = pg_import_end,
};
