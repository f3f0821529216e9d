/*
 * server.c -- `certhook serve`: the start-up and shutdown order of the units, and reloads.
 *
 * Start: the journal (journal.c) and its writer, then the handlers (reload.c; they may use
 * certhook.state while loading), so an unwritable data directory or a broken handler fails
 * before anything listens; then the listeners (intake.c). The dispatcher (dispatch.c) runs
 * on this thread until SIGTERM or SIGINT, and calls back here to reload: reread the
 * configuration (SIGHUP, POST /reload), build a new generation, and only when everything
 * is valid swap both in. Configurations are kept until exit: requests under way may still
 * use an earlier one. Stop: the dispatcher closes the intake gate and lets deliveries in flight
 * finish, the writer answers every request it holds, the listeners stop, then the writer.
 */
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <unistd.h>

#ifdef HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

#include "dispatch/dispatch.h"
#include "intake/intake.h"
#include "journal/journal.h"
#include "lua/api.h"
#include "providers/provider.h"
#include "server.h"

#define EXIT_STALLED 70 /* EX_SOFTWARE: the supervisor restarts it */

struct server {
    struct config *cfg;              /* current */
    struct config **configs;         /* every one used, freed at exit */
    size_t nconfigs;
    config_loader load;
    void *load_cls;
    struct journal *j;
    struct dispatch *d;
    struct intake *in;
    struct generation *gen;          /* the current one */
    struct stall *stall;             /* what runs: the slots and the stall detector */
    atomic_int closing;              /* the journal is closed; the handler states close */
    unsigned next_generation;
    struct watchdog *expiry;         /* the expiry watchdog (NULL: off) */
    double sd_watchdog, next_ping;   /* systemd's watchdog interval (0: none), next ping */
};

/* Tells systemd (Type=notify) how certhook is: READY=1, RELOADING=1, STOPPING=1, STATUS=...
 * A no-op when not started by systemd or built without libsystemd. */
static void notify(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void notify(const char *fmt, ...)
{
#ifdef HAVE_SYSTEMD
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    sd_notify(0, msg);
#else
    (void)fmt;
#endif
}

/* After each turn of the dispatcher's loop: systemd's watchdog is pinged, and the expiry
 * watchdog makes its rounds. */
static void tick(void *cls)
{
    struct server *s = cls;
    double now = time_mono();
    if (s->sd_watchdog > 0 && now >= s->next_ping) {
        notify("WATCHDOG=1");
        s->next_ping = now + s->sd_watchdog / 2;
    }
    watchdog_tick(s->expiry);
}

/* How long past delivery.timeout the slot may say the same before the process is stalled: the
 * limits hook stops handler code at its deadline; error conversion and __close get a second
 * each after it. */
#define STALL_GRACE 5.0
#define CLOSE_GRACE 2.0 /* seconds the handler states' finalizers get at the stop */

/* Stall detector's thread: the dispatcher has run the same code for too long -- a handler's
 * finalizer that loops, a C function that never returns. The process cannot get the thread
 * back, so it exits (the supervisor restarts it); the slot tells the next start which
 * delivery it was. */
static void on_stall(void *cls, const struct stall_slot *what, double seconds)
{
    struct server *s = cls;
    struct log_line l;
    if (atomic_load(&s->closing)) { /* the stop: the journal is closed, nothing can be lost */
        log_begin(&l, LOG_WARN, "a finalizer left by a handler did not finish while the handler "
                                "states closed: exiting without them");
        log_str(&l, "closing", what->handler);
        log_num(&l, "seconds", round(seconds * 10) / 10);
        log_end(&l);
        log_msg(LOG_INFO, "stopped");
        stall_end(s->stall); /* a clean stop: the next start finds nothing running */
        _exit(0);
    }
    log_begin(&l, LOG_ERROR,
              what->seq > 0    ? "a handler has stalled the dispatcher: exiting so that certhook "
                                 "restarts; the attempt counts"
              : what->seq == 0 ? "loading a handler file has stalled: exiting so that certhook "
                                 "restarts without it"
                               : "a finalizer left by a handler has stalled the dispatcher while "
                                 "an old generation closed: exiting so that certhook restarts");
    log_str(&l, "event", what->seq > 0 ? what->event_id : NULL);
    log_str(&l, what->seq > 0 ? "handler" : what->seq == 0 ? "file" : "closing", what->handler);
    if (what->seq > 0)
        log_num(&l, "attempt", what->attempts);
    log_num(&l, "seconds", round(seconds * 10) / 10);
    log_end(&l);
    dispatch_set_stalled(s->d, what->handler);
    notify("STATUS=stalled: restarting");
    if (s->in != NULL)
        intake_close_gate(s->in); /* 503 from now on: the requests under way are answered */
    struct journal_status js;
    for (int i = 0; i < 200 && (journal_status(s->j, &js), js.queued > 0); i++)
        usleep(10000);
    usleep(100000);
    _exit(EXIT_STALLED);
}

static int keep_config(struct server *s, struct config *c)
{
    struct config **p = realloc(s->configs, (s->nconfigs + 1) * sizeof *p);
    if (p == NULL)
        return -1;
    s->configs = p;
    p[s->nconfigs++] = c;
    return 0;
}

static void close_gate(void *in)
{
    notify("STOPPING=1");
    intake_close_gate(in); /* stop accepting while the deliveries in flight finish */
}

/* Settings a running server cannot take: those need a restart. */
static int restart_only(const struct config *a, const struct config *b, char *err, size_t errlen)
{
    if (strcmp(a->data, b->data) != 0) {
        snprintf(err, errlen, "data changed from %s to %s: that needs a restart", a->data,
                 b->data);
        return -1;
    }
    if (journal_is_database(a->data) && b->delivery.timeout >= a->delivery.lease) {
        snprintf(err, errlen, "delivery.timeout (%g) must stay shorter than the delivery.lease "
                              "this server runs with (%g): change both with a restart",
                 b->delivery.timeout, a->delivery.lease);
        return -1;
    }
    if (a->busy_timeout != b->busy_timeout || a->retention != b->retention ||
        a->delivery.lease != b->delivery.lease)
        log_msg(LOG_WARN, "journal settings changed: they take effect at the next restart");
    return 0;
}

/* Records where this server listens (listen, admin: its addresses, n bytes each), for the
 * command line on this machine (certhook send, reload): at the start, and after a reload that
 * may have moved a listener. A failure costs only that. */
static void announce(struct server *s, char *listen, char *admin, size_t n)
{
    char err[300], l[320], a[320];
    intake_addresses(s->in, listen, admin, n);
    snprintf(l, sizeof l, "%s://%s", s->cfg->in.tls ? "https" : "http", listen);
    snprintf(a, sizeof a, "http://%s", admin);
    struct journal_server me = {(long)getpid(), l, a};
    if (journal_announce(s->j, &me, err, sizeof err) != 0)
        log_msg(LOG_WARN, "%s: certhook send and reload cannot find this server", err);
}


/* ---- reloads (dispatch/reload.c says on which thread each step runs) -------------------------- */

static const char *ready_status(int ok)
{
    return ok ? "serving" : "serving; the last reload failed";
}

/* The dispatcher's thread: the configuration reread (with_config) and checked. */
static int reload_prepare(void *cls, int with_config, struct reload_built *b, char *err,
                          size_t errlen)
{
    struct server *s = cls;
    notify("RELOADING=1");
    if (!with_config)
        return 0;
    struct config *fresh = calloc(1, sizeof *fresh);
    if (fresh == NULL || s->load(s->load_cls, fresh, err, errlen) != 0) {
        free(fresh);
        return -1;
    }
    if (restart_only(s->cfg, fresh, err, errlen) != 0 || keep_config(s, fresh) != 0) {
        config_free(fresh);
        free(fresh);
        return -1;
    }
    b->config = fresh; /* kept from here on, used or not: requests under way may hold it */
    return 0;
}

/* The reload's thread: the generation, in a state nothing else sees. s->cfg and
 * s->next_generation change only in reload_apply, which never runs at the same time. */
static int reload_build(void *cls, struct reload_built *b, char *err, size_t errlen)
{
    struct server *s = cls;
    const struct config *c = b->config ? b->config : s->cfg;
    char *msg = NULL;
    struct generation_env env = {c->lua_path, c->lua_cpath, s->j, NULL, c->busy_timeout,
                                 c->delivery.memory_limit, c->reload_timeout, s->stall};
    b->gen = generation_build(c->handlers, &env, s->next_generation, &msg);
    if (b->gen == NULL) {
        snprintf(err, errlen, "%s", msg);
        free(msg);
        return -1;
    }
    return 0;
}

/* The dispatcher's thread: everything swapped in at once, or nothing. */
static int reload_apply(void *cls, struct reload_built *b, char *err, size_t errlen)
{
    struct server *s = cls;
    struct config *fresh = b->config;
    struct generation *g = b->gen;
    if (fresh != NULL) {
        if (intake_reconfigure(s->in, &fresh->in, err, errlen) != 0 ||
            (strcmp(fresh->handlers, s->cfg->handlers) != 0 &&
             dispatch_watch(s->d, fresh->handlers, err, errlen) != 0)) {
            generation_free(g);
            notify("READY=1\nSTATUS=%s", ready_status(0));
            return -1;
        }
        log_set_level(fresh->log_level);
        log_set_text(fresh->log_text);
        metrics_inventory_cap(fresh->max_certificates);
        dispatch_set_config(s->d, &fresh->delivery);
        if (s->expiry != NULL)
            watchdog_set_config(s->expiry, &fresh->watchdog);
        dispatch_set_pollers(s->d, fresh->pollers, fresh->npollers);
        stall_set_limit(s->stall, fresh->delivery.timeout + STALL_GRACE,
                        fresh->reload_timeout + STALL_GRACE);
        s->cfg = fresh;
        char listen[300], admin[300];
        announce(s, listen, admin, sizeof listen);
    }
    s->next_generation++;
    s->gen = g;
    dispatch_set_generation(s->d, g); /* the previous one closes when its deliveries end */
    notify("READY=1\nSTATUS=%s", ready_status(1));
    return 0;
}

static void reload_discard(void *cls, struct reload_built *b)
{
    (void)cls;
    generation_free(b->gen);
    notify("READY=1\nSTATUS=%s", ready_status(0));
}

static const struct reload_ops reload_ops = {reload_prepare, reload_build, reload_apply,
                                             reload_discard};

/* ---- journals of earlier versions ---------------------------------------------------------- */

/* An event journaled with only its body (the provider's payload; IBM's: the JWT claims):
 * normalized by its provider as an insecure source would (the body was authenticated when it
 * was accepted), keeping the id, source and time it was accepted with. One that no longer
 * normalizes keeps its summary and says why in `error`. */
static int upgrade_one(void *cls, const struct event *old, struct buf *packed, char *err,
                       size_t errlen)
{
    lua_State *L = cls;
    char why[600];
    struct source s;
    struct reply rp = {0};
    struct request rq = {.method = "POST", .body = old->body, .body_len = old->body_len,
                         .received_at = old->received_at};
    int top = lua_gettop(L), ev = 0, body = 0;
    const struct provider *p = provider_find(old->provider);
    if (p != NULL) {
        lua_createtable(L, 0, 2);
        lua_pushstring(L, p->name);
        lua_setfield(L, -2, "provider");
        lua_pushboolean(L, 1);
        lua_setfield(L, -2, "insecure");
        if (source_configure(L, -1, old->source, &s, why, sizeof why) == 0 &&
            source_normalize(L, &s, &rq, &rp, why, sizeof why) == 0 && rp.status == 0 &&
            lua_rawgeti(L, -1, 1) == LUA_TTABLE)
            ev = lua_gettop(L), body = ev - 2;
        source_release(&s);
        buf_free(&rp.body);
    } else {
        snprintf(why, sizeof why, "unknown provider %s", old->provider);
    }
    if (ev == 0) {
        lua_createtable(L, 0, 8);
        ev = lua_gettop(L);
#define SUMMARY(f)                     \
    if (old->f != NULL) {              \
        lua_pushstring(L, old->f);     \
        lua_setfield(L, ev, #f);       \
    }
        EVENT_STRINGS(SUMMARY)
#undef SUMMARY
        lua_pushfstring(L, "journaled by an earlier certhook; it no longer normalizes: %s", why);
        lua_setfield(L, ev, "error");
    }
    lua_pushstring(L, old->id); /* as accepted: the id deduplicated by, the source, the time */
    lua_setfield(L, ev, "id");
    lua_pushstring(L, old->source);
    lua_setfield(L, ev, "source");
    event_push_epoch(L, old->received_at);
    lua_setfield(L, ev, "received_at");
    struct event summary;
    int rc = event_pack(L, ev, body, &summary, packed, err, errlen);
    lua_settop(L, top);
    return rc;
}

int server_upgrade_journal(struct journal *j, char *err, size_t errlen)
{
    char msg[300];
    lua_State *L = module_newstate(NULL, NULL, NULL, NULL, msg, sizeof msg);
    if (L == NULL) {
        snprintf(err, errlen, "%s", msg);
        return -1;
    }
    int n = journal_upgrade(j, upgrade_one, L, err, errlen);
    lua_close(L);
    if (n > 0)
        log_msg(LOG_INFO, "%d events journaled by an earlier certhook were normalized and kept "
                          "as the journal keeps events now", n);
    return n;
}

int server_run(struct config *c, config_loader load, void *load_cls, char *err, size_t errlen)
{
    struct server s = {.cfg = c, .load = load, .load_cls = load_cls, .next_generation = 2};
    char *msg = NULL;
    int rc = -1, sigfd = -1;
    sigset_t set, old;

    /* No core dump (its memory holds the secrets) and no ptrace by the same user, unless asked */
    const char *dumps = getenv("CERTHOOK_ALLOW_CORE_DUMPS");
    if (dumps == NULL || strcmp(dumps, "1") != 0)
        prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, &old); /* threads started below inherit the mask */
    signal(SIGPIPE, SIG_IGN);
    pthread_setname_np(pthread_self(), "certhook"); /* the dispatcher; ps -L, top -H, perf */
    sigfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    log_set_level(c->log_level);
    log_set_text(c->log_text);

    if (keep_config(&s, c) != 0) {
        config_free(c);
        free(c);
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    struct stall_slot crashed;
    int died;
    struct journal_options jo = {c->data, JOURNAL_CREATE | JOURNAL_EXCLUSIVE, c->busy_timeout,
                                 c->retention, c->max_wal, c->delivery.lease};
    if (journal_open(&s.j, &jo, err, errlen) != 0 ||
        (s.stall = stall_open(journal_directory(s.j), err, errlen)) == NULL ||
        server_upgrade_journal(s.j, err, errlen) < 0)
        goto done;
    died = stall_crashed(s.stall, &crashed) && crashed.seq >= 0; /* -1: a state was closing */
    if (journal_load_inventory(s.j, c->max_certificates) < 0)
        log_msg(LOG_WARN, "cannot read the certificate inventory; it starts empty");
    s.d = dispatch_new(s.j, &c->delivery, journal_max_seq(s.j));
    if (sigfd < 0 || s.d == NULL || journal_start(s.j, dispatch_enqueue, s.d) != 0 ||
        stall_watch(s.stall, c->delivery.timeout + STALL_GRACE, c->reload_timeout + STALL_GRACE,
                    on_stall, &s) != 0) {
        snprintf(err, errlen, "cannot start: out of resources");
        goto done;
    }
    dispatch_set_stall(s.d, s.stall, died ? &crashed : NULL);
    if (dispatch_on_reload(s.d, &reload_ops, &s) != 0) {
        snprintf(err, errlen, "cannot start: out of resources");
        goto done;
    }
    /* A handler set that does not load never costs the webhooks: intake runs, the events wait
     * in the journal, and the first reload that works (a fixed file is noticed) delivers them. */
    if (died && crashed.seq == 0) {
        snprintf(err, errlen, "certhook died while loading %s/%s (it stalled or crashed): the "
                              "handlers are loaded again when a file changes, or by a reload",
                 c->handlers, crashed.handler);
    } else {
        struct generation_env env = {c->lua_path, c->lua_cpath, s.j, NULL, c->busy_timeout,
                                     c->delivery.memory_limit, c->reload_timeout, s.stall};
        s.gen = generation_build(c->handlers, &env, 1, &msg);
        if (s.gen == NULL)
            snprintf(err, errlen, "%s", msg);
    }
    if (s.gen != NULL) {
        dispatch_set_generation(s.d, s.gen);
    } else {
        s.next_generation = 1;
        struct log_line l;
        log_begin(&l, LOG_ERROR, "the handlers did not load: webhooks are accepted and journaled, "
                                 "deliveries wait until the handlers load");
        log_str(&l, "error", err);
        log_end(&l);
        dispatch_load_failed(s.d, err);
        err[0] = '\0';
    }
    if (dispatch_watch(s.d, c->handlers, err, errlen) != 0 ||
        intake_start(&s.in, &c->in, s.j, s.d, err, errlen) != 0)
        goto done;
    dispatch_on_stop(s.d, close_gate, s.in);
#ifdef HAVE_SYSTEMD
    uint64_t usec;
    if (sd_watchdog_enabled(0, &usec) > 0)
        s.sd_watchdog = (double)usec / 1e6;
#endif
    char why[300];
    if ((s.expiry = watchdog_new(s.j, &c->watchdog, why, sizeof why)) == NULL)
        log_msg(LOG_WARN, "%s: no expiry watchdog", why);
    dispatch_on_tick(s.d, tick, &s);
    dispatch_set_pollers(s.d, c->pollers, c->npollers);

    char listen[300], admin[300];
    announce(&s, listen, admin, sizeof listen);
    struct log_line l;
    log_begin(&l, LOG_INFO, "listening");
    log_str(&l, "listen", listen);
    log_str(&l, "scheme", c->in.tls ? "https" : "http");
    log_str(&l, "admin", admin);
    log_str(&l, "handlers", c->handlers);
    log_num(&l, "handler_files", s.gen ? (double)s.gen->nfiles : 0);
    log_num(&l, "generation", s.gen ? s.gen->number : 0);
    log_str(&l, "data", c->data);
    log_str(&l, "version", CERTHOOK_VERSION);
    log_end(&l);
    notify("READY=1\nSTATUS=serving on %s, admin %s", listen, admin);

    dispatch_run(s.d, sigfd);
    rc = 0;
done:
    if (s.in != NULL) {
        intake_close_gate(s.in);
        intake_stop(s.in);
    }
    /* The journal is closed first: every request answered, every delivery state written. Then
     * the handler states close, whose finalizers no hook can stop: under the stall detector,
     * which ends the process (cleanly: nothing is left to lose) if they do not finish. */
    if (s.j != NULL)
        journal_stop(s.j);
    if (s.gen != NULL)
        generation_detach(s.gen); /* certhook.state raises in what runs from here */
    watchdog_free(s.expiry);
    journal_close(s.j);
    if (s.stall != NULL)
        stall_set_limit(s.stall, CLOSE_GRACE, CLOSE_GRACE);
    atomic_store(&s.closing, 1);
    dispatch_free(s.d); /* releases the current generation */
    if (s.d == NULL)
        generation_release(s.gen);
    stall_close(s.stall);
    free(msg);
    for (size_t i = 0; i < s.nconfigs; i++) {
        config_free(s.configs[i]);
        free(s.configs[i]);
    }
    free(s.configs);
    if (rc == 0)
        log_msg(LOG_INFO, "stopped");
    if (sigfd >= 0)
        close(sigfd);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return rc;
}
