/*
 * server.c -- `certhook serve`: the start-up and shutdown order of the units.
 *
 * Start: the journal (journal.c) and its writer, then the handlers (reload.c; they may use
 * certhook.state while loading), so an unwritable data directory or a broken handler fails
 * before anything listens; then the listeners (intake.c). The dispatcher (dispatch.c) runs
 * on this thread until SIGTERM or SIGINT. Stop: the dispatcher hands its delivery states to
 * the writer, the intake gate closes, the writer answers every request it holds, the
 * listeners stop, then the writer. What was not dispatched stays in the journal.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "certhook.h"

static void close_gate(void *in)
{
    intake_close_gate(in); /* stop accepting while the deliveries in flight finish */
}

int server_run(const struct config *c, char *err, size_t errlen)
{
    struct generation *gen = NULL;
    struct journal *j = NULL;
    struct dispatch *d = NULL;
    struct intake *in = NULL;
    char *msg = NULL;
    int rc = -1, sigfd = -1;
    sigset_t set, old;

    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, &old); /* threads started below inherit the mask */
    signal(SIGPIPE, SIG_IGN);
    sigfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    log_set_level(c->log_level);

    if (journal_open(&j, c->data, JOURNAL_CREATE, c->busy_timeout, c->retention, err,
                     errlen) != 0 ||
        journal_recover(j, err, errlen) != 0)
        goto done;
    d = dispatch_new(NULL, j, &c->delivery, journal_max_seq(j));
    if (sigfd < 0 || d == NULL || journal_start(j, dispatch_enqueue, d) != 0) {
        snprintf(err, errlen, "cannot start: out of resources");
        goto done;
    }
    struct reload_env env = {c->lua_path, c->lua_cpath, j, NULL, c->busy_timeout,
                             c->delivery.memory_limit};
    gen = reload_build(c->handlers, &env, 1, &msg);
    if (gen == NULL) {
        snprintf(err, errlen, "%s", msg);
        goto done;
    }
    dispatch_set_generation(d, gen);
    if (intake_start(&in, c, j, d, &gen, err, errlen) != 0)
        goto done;
    dispatch_on_stop(d, close_gate, in);

    char listen[300], admin[300];
    intake_addresses(in, listen, admin, sizeof listen);
    struct log_line l;
    log_begin(&l, LOG_INFO, "listening");
    log_str(&l, "listen", listen);
    log_str(&l, "admin", admin);
    log_str(&l, "handlers", c->handlers);
    log_num(&l, "handler_files", (double)gen->nfiles);
    log_num(&l, "generation", gen->number);
    log_str(&l, "data", c->data);
    log_str(&l, "version", CERTHOOK_VERSION);
    log_end(&l);

    dispatch_run(d, sigfd);
    rc = 0;
done:
    if (in != NULL) {
        intake_close_gate(in);
        intake_stop(in);
    }
    if (j != NULL)
        journal_stop(j);
    dispatch_free(d);
    journal_close(j);
    reload_free(gen);
    free(msg);
    if (rc == 0)
        log_msg(LOG_INFO, "stopped");
    if (sigfd >= 0)
        close(sigfd);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return rc;
}
