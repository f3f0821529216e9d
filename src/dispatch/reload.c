/*
 * reload.c -- reloads (DESIGN §5, §10): a new generation is built off the dispatcher's thread,
 * and swapped in on it.
 *
 * Deliveries on the current generation never wait for a reload: what to reload is prepared on
 * the dispatcher's thread (the configuration reread: quick), the handler files are loaded on
 * the reload's own thread into a new Lua state that nothing else sees (bounded by
 * reload.timeout: the limits hook, and the stall detector's load slot for what the hook cannot
 * stop), and the result is applied on the dispatcher's thread between two turns of its loop.
 * One build at a time: requests that arrive while one is being built (a saved file, SIGHUP,
 * `certhook reload`) are coalesced into the next one, which reads the files as they are then;
 * each request is answered by the first build that started after it. Every outcome is logged
 * the same way, whoever asked. What prepare/build/apply do is server.c's (struct reload_ops).
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dispatch/dispatch.h"

/* What asked for a reload, for the log line. */
enum { BY_FILES = 1, BY_SIGNAL = 2, BY_REQUEST = 4 };

struct reloader {
    const struct reload_ops *ops;
    void *cls;
    void (*wake)(void *cls); /* the dispatcher's loop: a build is done, a request came */
    void *wake_cls;
    pthread_t thread;
    int started;
    /* the dispatcher's thread only */
    int want, want_config, want_by; /* a reload to start once the current one is over */
    struct reload_wait *want_waits;
    int building, build_config, build_by;
    struct reload_wait *build_waits;
    double build_t0;
    pthread_mutex_t mu; /* guards what follows */
    pthread_cond_t cv;  /* the builder: a job or stop; a waiter: its answer */
    struct reload_built job;
    int job_given, job_done, job_rc, stop;
    char job_err[2048];
    struct reload_wait *asked; /* requests of other threads, not yet taken by the dispatcher */
    unsigned long reloads, failures;
    double last_at;
    char last_error[2048];
};

/* The reload's thread: builds what it is given, one job at a time. */
static void *builder_main(void *arg)
{
    struct reloader *r = arg;
    pthread_mutex_lock(&r->mu);
    for (;;) {
        while (!r->stop && !r->job_given)
            pthread_cond_wait(&r->cv, &r->mu);
        if (!r->job_given)
            break;
        struct reload_built job = r->job;
        pthread_mutex_unlock(&r->mu);
        char err[2048] = "";
        int rc = r->ops->build(r->cls, &job, err, sizeof err);
        pthread_mutex_lock(&r->mu);
        r->job = job;
        r->job_rc = rc;
        snprintf(r->job_err, sizeof r->job_err, "%s", err);
        r->job_given = 0;
        r->job_done = 1;
        r->wake(r->wake_cls);
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

struct reloader *reload_new(const struct reload_ops *ops, void *cls, void (*wake)(void *),
                            void *wake_cls)
{
    struct reloader *r = calloc(1, sizeof *r);
    if (r == NULL)
        return NULL;
    r->ops = ops;
    r->cls = cls;
    r->wake = wake;
    r->wake_cls = wake_cls;
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    if (pthread_create(&r->thread, NULL, builder_main, r) != 0) {
        reload_free(r);
        return NULL;
    }
    pthread_setname_np(r->thread, "reload");
    r->started = 1;
    return r;
}

/* Answers waits. */
static void answer(struct reload_wait *w, int rc, unsigned generation, const char *err)
{
    for (struct reload_wait *next; w; w = next) {
        next = w->next; /* w may be gone once it is answered */
        w->done(w, rc, generation, err);
    }
}

/* What asked, for the log: "a handler file changed", "SIGHUP", "POST /reload" (coalesced ones
 * joined by ", "). */
static void by_names(int by, char *out, size_t n)
{
    static const char *const names[] = {"a handler file changed", "SIGHUP", "POST /reload"};
    size_t at = 0;
    out[0] = '\0';
    for (int i = 0; i < 3; i++)
        if (by & (1 << i) && at < n)
            at += (size_t)snprintf(out + at, n - at, "%s%s", at ? ", " : "", names[i]);
}

/* The outcome of one reload: counted, logged (one shape, whoever asked), its waits answered. */
static void finish(struct reloader *r, int rc, const struct generation *g, const char *err,
                   unsigned current)
{
    char by[80];
    by_names(r->build_by, by, sizeof by);
    struct log_line l;
    log_begin(&l, rc == 0 ? LOG_INFO : LOG_ERROR, rc == 0 ? "reloaded" : "reload failed");
    if (rc == 0) {
        log_num(&l, "generation", g->number);
        log_num(&l, "handlers", (double)g->n);
        log_num(&l, "handler_files", (double)g->nfiles);
    } else {
        log_str(&l, "error", err);
        log_num(&l, "generation", current); /* still running */
    }
    log_str(&l, "config", r->build_config ? "reread" : "kept");
    log_str(&l, "by", by);
    log_num(&l, "ms", round((time_mono() - r->build_t0) * 1e6) / 1e3);
    log_end(&l);
    pthread_mutex_lock(&r->mu);
    if (rc == 0) {
        r->reloads++;
        r->last_error[0] = '\0';
    } else {
        r->failures++;
        snprintf(r->last_error, sizeof r->last_error, "%s", err);
    }
    r->last_at = time_now();
    pthread_mutex_unlock(&r->mu);
    answer(r->build_waits, rc, rc == 0 ? g->number : 0, err);
    r->build_waits = NULL;
    r->building = 0;
}

void reload_ask(struct reloader *r, int with_config, int by_signal)
{
    r->want = 1;
    r->want_config |= with_config;
    r->want_by |= by_signal ? BY_SIGNAL : BY_FILES;
}

void reload_turn(struct reloader *r, int stopping, unsigned current)
{
    pthread_mutex_lock(&r->mu);
    struct reload_wait *asked = r->asked;
    r->asked = NULL;
    int done = r->job_done;
    r->job_done = 0;
    pthread_mutex_unlock(&r->mu);
    if (asked != NULL) {
        struct reload_wait **tail = &asked;
        while (*tail)
            tail = &(*tail)->next;
        *tail = r->want_waits;
        r->want_waits = asked;
        r->want = 1;
        r->want_config = 1; /* POST /reload rereads the configuration */
        r->want_by |= BY_REQUEST;
    }
    if (done) { /* on this thread from here: the builder waits for its next job */
        char err[2048];
        snprintf(err, sizeof err, "%s", r->job_err);
        struct reload_built b = r->job;
        int rc = r->job_rc;
        if (rc == 0 && stopping) {
            snprintf(err, sizeof err, "certhook is stopping");
            rc = -1;
        }
        if (rc == 0) {
            struct generation *g = b.gen;
            rc = r->ops->apply(r->cls, &b, err, sizeof err); /* takes b */
            finish(r, rc, g, err, current);
        } else {
            r->ops->discard(r->cls, &b);
            finish(r, rc, NULL, err, current);
        }
    }
    if (stopping && r->want) {
        answer(r->want_waits, -1, 0, "certhook is stopping");
        r->want_waits = NULL;
        r->want = 0;
    }
    if (r->want && !r->building) {
        struct reload_built b = {0};
        char err[2048] = "";
        r->building = 1;
        r->build_config = r->want_config;
        r->build_by = r->want_by;
        r->build_waits = r->want_waits;
        r->build_t0 = time_mono();
        r->want = r->want_config = r->want_by = 0;
        r->want_waits = NULL;
        if (r->ops->prepare(r->cls, r->build_config, &b, err, sizeof err) != 0) {
            r->ops->discard(r->cls, &b);
            finish(r, -1, NULL, err, current);
        } else {
            pthread_mutex_lock(&r->mu);
            r->job = b;
            r->job_given = 1;
            pthread_cond_broadcast(&r->cv);
            pthread_mutex_unlock(&r->mu);
        }
    }
}

void reload_request(struct reloader *r, struct reload_wait *w)
{
    pthread_mutex_lock(&r->mu);
    int stopped = r->stop;
    if (!stopped) {
        w->next = r->asked;
        r->asked = w;
        r->wake(r->wake_cls);
    }
    pthread_mutex_unlock(&r->mu);
    if (stopped)
        w->done(w, -1, 0, "certhook is stopping");
}

void reload_failed(struct reloader *r, const char *err)
{
    pthread_mutex_lock(&r->mu);
    r->failures++;
    r->last_at = time_now();
    snprintf(r->last_error, sizeof r->last_error, "%s", err);
    pthread_mutex_unlock(&r->mu);
}

void reload_status(struct reloader *r, struct dispatch_status *st)
{
    pthread_mutex_lock(&r->mu);
    st->reloads = r->reloads;
    st->reload_failures = r->failures;
    st->last_reload_at = r->last_at;
    snprintf(st->last_error, sizeof st->last_error, "%s", r->last_error);
    pthread_mutex_unlock(&r->mu);
}

void reload_stop(struct reloader *r, unsigned current)
{
    if (r == NULL || !r->started)
        return;
    pthread_mutex_lock(&r->mu);
    r->stop = 1;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    pthread_join(r->thread, NULL); /* a build under way ends within reload.timeout */
    r->started = 0;
    reload_turn(r, 1, current); /* what it built is discarded, every request answered */
}

void reload_free(struct reloader *r)
{
    if (r == NULL)
        return;
    reload_stop(r, 0);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    free(r);
}
