/*
 * dispatch.h -- what the dispatch layer offers: the dispatcher (dispatch.c: one thread, one
 * loop, every delivery of every accepted event), handler generations (generation.c: the
 * handler files loaded into a Lua state, and the watch that reloads them), running one handler
 * under limits it cannot switch off (run.c), the retry policy (retry.c) and the stall
 * detector with its record of what runs (stall.c).
 */
#ifndef CERTHOOK_DISPATCH_H
#define CERTHOOK_DISPATCH_H

#include <lua.h>

#include "base/base.h"
#include "journal/journal.h"
#include "lua/api.h"

/* ---- retry.c: the retry policy ---------------------------------------------------------------- */

#define RETRY_MAX_CRASHES 2 /* a delivery running when certhook died this often is dead */

/* Seconds until the next attempt of a delivery that has made `attempts` attempts (the failed one
 * included) and was running at `crashes` deaths of the process, or -1: it is dead. u: a random
 * number in [0, 1) for the jitter. Pure. */
double retry_delay(const struct delivery_cfg *cfg, int attempts, int crashes, double u);

#define POLL_BACKOFF 5.0             /* seconds before a poller's first retry */
#define POLL_MAX_RETRY_AFTER 86400.0 /* a provider's Retry-After is honoured up to a day */

/* Seconds until a poller runs again after `failures` failed runs in a row (1: the first),
 * given its interval and the Retry-After the provider sent (0: none). u: a random number in
 * [0, 1) for the jitter. Pure. */
double poll_retry_delay(double interval, int failures, double retry_after, double u);

/* ---- stall.c: what runs, for the next start and the stall detector ---------------------------- */

/* The delivery whose handler code was running (at a crash, or a stall); seq 0: a handler file
 * being loaded (handler names it), at the start or for a reload; seq -1: a generation being
 * closed (its finalizers run). */
struct stall_slot {
    int64_t seq;
    int attempts, pid;
    double first_at;
    char event_id[256], handler[512];
};

struct stall;
/* Maps dir/certhook.running, the slot (dir NULL: memory of this process only -- a journal in a
 * database, where the next start is maybe another server's). NULL with err. */
struct stall *stall_open(const char *dir, char *err, size_t errlen);
void stall_close(struct stall *st); /* a clean stop: the slot says nothing runs */
/* 1 and *out when the previous process died while handler code ran or a file loaded (the
 * delivery first); clears it. */
int stall_crashed(struct stall *st, struct stall_slot *out);
/* Handler code of this delivery starts / ended, on the dispatcher's thread (st NULL: no-op).
 * Memory writes only. */
void stall_begin(struct stall *st, int64_t seq, const char *event_id, const char *handler,
                 int attempts, double first_at);
void stall_end(struct stall *st);
/* A handler file starts / ended loading, on the thread that builds a generation. */
void stall_loading(struct stall *st, const char *file);
void stall_loaded(struct stall *st);
/* Starts the stall detector: on_stall runs on its thread when the same delivery has run for
 * longer than limit seconds, or the same file loaded for longer than load_limit. */
int stall_watch(struct stall *st, double limit, double load_limit,
                void (*on_stall)(void *cls, const struct stall_slot *what, double seconds),
                void *cls);
void stall_set_limit(struct stall *st, double limit, double load_limit);
void stall_unwatch(struct stall *st); /* stops the stall detector */

/* ---- generation.c: handler generations --------------------------------------------------------- */

struct handler {
    char *name;    /* "<file>:<pattern>", the delivery's identity */
    char *pattern;
    int ref;       /* the function, in the generation state's registry */
};

struct generation {
    lua_State *L;
    struct pool *pool;          /* L's memory */
    unsigned number;
    struct handler *h;
    size_t n;
    size_t nfiles;
    size_t mem_used, mem_limit; /* bytes the state holds; its bound (0: none) */
    double load_timeout;        /* seconds loading every file may take */
    int mem_over;               /* an allocation was refused for the bound since last look */
    int refs;                   /* the dispatcher's current one, and each delivery in flight */
};

/* What a generation's state gets: package paths, the journal behind certhook.state (j, or the
 * one in data, opened on first use; neither: certhook.state raises), its limits. */
struct generation_env {
    const char *path, *cpath;
    struct journal *j;
    const char *data;
    double busy_timeout;
    size_t memory_limit; /* bytes; 0: none */
    double timeout;      /* seconds loading the files may take (reload.timeout) */
    struct stall *stall; /* told which file loads (NULL: nothing) */
};

/* Loads every *.lua of dir (sorted) into a fresh sandboxed state and validates what each
 * returns; modules in dir/lib can be required. On failure returns NULL and a malloc'd message
 * naming every broken file:line. The generation starts with one reference, its creator's. */
struct generation *generation_build(const char *dir, const struct generation_env *env,
                                    unsigned number, char **err);
void generation_hold(struct generation *g);
void generation_release(struct generation *g); /* the last reference frees it */
void generation_free(struct generation *g);
/* Its journal is about to close: the state API raises in it from now on (state_detach). */
void generation_detach(struct generation *g);
/* A quiet event's type: a poller's news for the inventory alone (poller.c). No pattern with a
 * wildcard matches it: only a handler for "certificate.observed" itself runs. */
#define QUIET_TYPE "certificate.observed"
/* The handlers of g that match an event of this type / provider type, in order: how many. */
size_t generation_match(const struct generation *g, const char *type, const char *provider_type,
                        const struct handler **out);

/* Watches a handlers directory for changes that need a reload: *.lua files appearing,
 * changing, going (atomic renames included), anything under dir/lib, and the directory
 * itself being replaced (a symlink switched by a deploy). */
struct watch;
struct watch *watch_new(const char *dir, char *err, size_t errlen);
int watch_fd(struct watch *w);
int watch_changed(struct watch *w); /* reads what is pending: 1 if it matters */
void watch_free(struct watch *w);

/* ---- reload.c: reloads, built off the dispatcher's thread ------------------------------------- */

/* What a reload makes before it is applied: the generation and, when the configuration was
 * reread, the new one (opaque here: server.c's). */
struct reload_built {
    struct generation *gen;
    void *config;
};

/* What a reload does (server.c): prepare on the dispatcher's thread (rereads the
 * configuration when with_config, checks what only a restart can change); build on the
 * reload's thread (the generation: nothing that serves is touched); apply on the dispatcher's
 * thread (swaps it all in; takes b whatever it returns); discard frees what was made but is
 * not applied. prepare and build: 0, or -1 with err (b freed). */
struct reload_ops {
    int (*prepare)(void *cls, int with_config, struct reload_built *b, char *err, size_t errlen);
    int (*build)(void *cls, struct reload_built *b, char *err, size_t errlen);
    int (*apply)(void *cls, struct reload_built *b, char *err, size_t errlen);
    void (*discard)(void *cls, struct reload_built *b);
};

struct reloader;
struct reload_wait;
struct dispatch_status;
/* Starts the reload's thread; wake(wake_cls) tells the dispatcher's loop (from any thread) that
 * a build is done or a request came. */
struct reloader *reload_new(const struct reload_ops *ops, void *cls, void (*wake)(void *),
                            void *wake_cls);
void reload_free(struct reloader *r); /* stops it first */
/* The dispatcher's thread: a reload is wanted (a file changed; SIGHUP: with the config). */
void reload_ask(struct reloader *r, int with_config, int by_signal);
/* The dispatcher's thread, every turn of its loop: applies a finished build, starts the next
 * wanted one; stopping: discards and answers instead. current: the generation running (for the
 * log). */
void reload_turn(struct reloader *r, int stopping, unsigned current);
/* Any other thread: asks for a reload (config included); w->done is called (on the
 * dispatcher's thread, or on this one when certhook is stopping) by the first one that started
 * after it. */
void reload_request(struct reloader *r, struct reload_wait *w);
/* The handlers did not load at the start: counted and shown like a failed reload. */
void reload_failed(struct reloader *r, const char *err);
void reload_status(struct reloader *r, struct dispatch_status *st); /* the reload fields */
/* Waits for a build under way (bounded by reload.timeout), discards it, answers every request.
 * current: the generation running. */
void reload_stop(struct reloader *r, unsigned current);

/* ---- run.c: running one handler ---------------------------------------------------------------- */

enum { RUN_TIMEOUT = 1, RUN_MEMORY, RUN_STOP }; /* delivery_ctx.killed */
enum run_status { RUN_DONE, RUN_FAILED, RUN_WAITING };

/* Pushes the event handlers receive, unpacked from ev; -1 when it cannot be (logged; nothing
 * pushed). */
int run_push_event(lua_State *L, const struct event *ev);
/* The stack index of what delivery i of n gets of the event table at index event: the event
 * itself for the last one, a deep copy (pushed) for the others, so that no handler sees what
 * another one changed. */
int run_event_arg(lua_State *L, int event, size_t i, size_t n);
/* Sets the limits hook on L (a generation state's main thread; coroutines inherit it): the
 * current context's deadline and memory bound stop the user code running. */
void run_limit(lua_State *L);
/* "file:line" of the innermost Lua function on co's stack, into buf. */
const char *run_where(lua_State *co, char *buf, size_t n);
/* A new coroutine calling handler h with the value at idx, anchored in the registry (*ref). */
lua_State *run_new(lua_State *L, const struct handler *h, int idx, int *ref);
/* Resumes co (nargs values on its stack) as ctx: RUN_DONE, what it returned left on co's stack;
 * RUN_WAITING when it yielded to wait through the API; RUN_FAILED with a malloc'd message and
 * traceback (also when it was killed, saying why). */
enum run_status run_resume(lua_State *L, lua_State *co, int nargs, struct delivery_ctx *ctx,
                           char **error, char **traceback);
void run_free(lua_State *L, lua_State *co, int ref); /* closes it and drops the anchor */
char *run_stopped(const struct delivery_ctx *ctx);   /* why a killed one stopped (malloc'd) */
/* Logs a failed attempt ("handler failed"): when it is retried (retry_in >= 0, seconds) with
 * retry_in and next_attempt_at, when it was the last one (retry_in < 0) with "dead": true;
 * retry_in NAN: neither (certhook run: nothing is retried). */
void run_log_failure(const struct delivery_ctx *ctx, int attempt, const char *error,
                     const char *traceback, double retry_in);

/* ---- watchdog.c: the expiry watchdog ----------------------------------------------------------- */

#define WATCHDOG_MAX_BEFORE 16

/* watchdog = {...} (DESIGN §6, §9). */
struct watchdog_cfg {
    int enabled;        /* watchdog = false: no rounds */
    double interval;    /* seconds between rounds */
    double before[WATCHDOG_MAX_BEFORE]; /* days before an expiry that warn */
    size_t nbefore;
};

struct watchdog;
struct watchdog *watchdog_new(struct journal *j, const struct watchdog_cfg *cfg, char *err,
                              size_t errlen);
void watchdog_free(struct watchdog *w);
void watchdog_set_config(struct watchdog *w, const struct watchdog_cfg *cfg);
/* One round at wall-clock time now: the findings due are queued to the journal. How many were
 * found (some may be ones the journal has already), or -1 (logged). */
int watchdog_round(struct watchdog *w, double now);
/* A round when the interval has passed (monotonic); for the dispatcher's loop. w NULL: none. */
void watchdog_tick(struct watchdog *w);

/* ---- poller.c: pollers (DESIGN §6) ------------------------------------------------------------ */

struct poller_def;
struct pollers;
/* Pollers on the dispatcher's thread: the journal they read and write, the transfers of its
 * loop; wake(wake_cls) tells that loop, from the journal writer's thread, that a claim was
 * answered (a shared journal: one server polls at a time). NULL: out of memory. */
struct pollers *pollers_new(struct journal *j, struct http_multi *http, void (*wake)(void *),
                            void *wake_cls);
void pollers_free(struct pollers *ps); /* stops the runs under way; after journal_stop */
/* The pollers configured now (defs[0..n), kept by the caller until pollers_free): new ones run
 * soon, those gone stop, the others take their new settings at their next run. */
void pollers_configure(struct pollers *ps, const struct poller_def *defs, size_t n);
/* Starts the runs that are due, carries on those whose transfer ended (stopping: starts none).
 * Returns the time_mono() of the next thing due, or INFINITY. */
double pollers_turn(struct pollers *ps, int stopping);
/* Any thread: each poller's last result, a JSON object by name (for /readyz). */
void pollers_json(struct pollers *ps, struct buf *b);

/* ---- dispatch.c -------------------------------------------------------------------------------- */

struct dispatch;

/* recover_upto: the journal's last seq before intake started (journal_max_seq). */
struct dispatch *dispatch_new(struct journal *j, const struct delivery_cfg *cfg,
                              int64_t recover_upto);
void dispatch_free(struct dispatch *d); /* releases its generation */
/* Where it tells which delivery's handler code runs (NULL: nowhere), and what ran when the
 * previous process died (NULL: nothing): dispatch_run counts that attempt. Before dispatch_run. */
void dispatch_set_stall(struct dispatch *d, struct stall *st, const struct stall_slot *crashed);
/* Makes g current, taking the caller's reference; the previous one is released (it closes
 * when its last delivery ends). */
void dispatch_set_generation(struct dispatch *d, struct generation *g);
/* fn(cls) runs after every turn of the loop -- at least once a second while it serves
 * (server.c pings systemd's watchdog). */
void dispatch_on_tick(struct dispatch *d, void (*fn)(void *), void *cls);
/* fn(cls) runs once, when a stop signal arrives (server.c closes the intake gate). */
void dispatch_on_stop(struct dispatch *d, void (*fn)(void *), void *cls);
/* How to reload (server.c; reload.c says when each runs; apply swaps the generation in with
 * dispatch_set_generation): on SIGHUP (with config), when the watched directory changed
 * (handlers only) and for dispatch_request_reload (with config). 0, or -1: out of resources. */
int dispatch_on_reload(struct dispatch *d, const struct reload_ops *ops, void *cls);
void dispatch_set_config(struct dispatch *d, const struct delivery_cfg *cfg);
/* The dispatcher's thread (or before dispatch_run): the pollers configured (pollers_configure). */
void dispatch_set_pollers(struct dispatch *d, const struct poller_def *defs, size_t n);
void dispatch_pollers_json(struct dispatch *d, struct buf *b); /* any thread */
int dispatch_watch(struct dispatch *d, const char *dir, char *err, size_t errlen);
/* A reload asked for by another thread: done(w, 0, generation, "") once the new generation is
 * live, or done(w, -1, 0, why). w stays the caller's; it must live until done is called. */
struct reload_wait {
    struct reload_wait *next; /* the reloader's */
    void (*done)(struct reload_wait *w, int rc, unsigned generation, const char *err);
};
/* From another thread: reload (config included); w says the outcome, from another thread. */
void dispatch_request_reload(struct dispatch *d, struct reload_wait *w);

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
void dispatch_enqueue(void *d, struct event *list); /* a journal_sink; thread-safe */
size_t dispatch_backlog(struct dispatch *d);
/* Resumes what the journal holds (deliveries to retry, events never dispatched), then runs
 * the loop until a signal from sigfd asks to stop; the delivery states are handed to the
 * journal writer before it returns the signal number. */
int dispatch_run(struct dispatch *d, int sigfd);
/* Runs the handlers matching ev once, on the calling thread, without retries (certhook run):
 * the same event, unpacked the same way, as serve's handlers get. Fills *done (caller frees
 * with journal_done_free). Returns how many failed, or -1. */
int dispatch_event(struct generation *g, const struct event *ev, double timeout,
                   struct journal_done **done);

#endif
