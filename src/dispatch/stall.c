/*
 * stall.c -- what the dispatcher runs, told to whoever must know when it stops (DESIGN §10).
 *
 * - The slots: dir/certhook.running, one page mapped shared, holds two: which delivery's handler
 *   code the dispatcher runs right now, and which handler file a generation being built loads
 *   (on the reload's own thread, or at the start). They are written to memory only (no
 *   syscall); the kernel keeps the page when the process dies -- kill -9, a crash in a C
 *   module, the stall exit below -- so the next start knows which delivery was running then
 *   (stall_crashed) and counts it, or which file was loading and does not load it blindly.
 * - The stall detector: a thread that looks twice a second; when a slot has said the same
 *   thing for longer than its limit (delivery.timeout or reload.timeout, plus a grace: the
 *   limits hook stops Lua code at its deadline, so only code the hook cannot reach -- a __gc
 *   finalizer, a C function -- gets there), it calls on_stall, which makes the process exit.
 * Used by server.c (open, crashed, watch) and dispatch.c / generation.c (begin, end).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "dispatch/dispatch.h"

#define SLOT_MAGIC 0x63687231u /* "chr1" */
#define LOOK 0.5               /* seconds between the stall detector's looks */

/* A slot of the mapped page. Fields are written before `active` is set (release), read after it
 * (acquire). */
struct slot {
    uint32_t magic;
    _Atomic uint32_t active;
    int64_t seq;
    int32_t attempts;
    int32_t pid;
    double first_at;
    _Atomic uint64_t since_ns; /* CLOCK_MONOTONIC of the start of what runs now */
    char event_id[256];
    char handler[512];
};

enum { RUNS, LOADS, NSLOTS }; /* the dispatcher's handler code; a handler file loading */

struct stall {
    int slot_fd;
    struct slot *slot; /* NSLOTS of them, in one page */
    pthread_t thread;
    int watching, stop;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    double limit[NSLOTS];
    void (*on_stall)(void *cls, const struct stall_slot *what, double seconds);
    void *cls;
};

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void copy_out(const struct slot *s, struct stall_slot *out)
{
    out->seq = s->seq;
    out->attempts = s->attempts;
    out->first_at = s->first_at;
    out->pid = s->pid;
    snprintf(out->event_id, sizeof out->event_id, "%.*s", (int)sizeof s->event_id, s->event_id);
    snprintf(out->handler, sizeof out->handler, "%.*s", (int)sizeof s->handler, s->handler);
}

struct stall *stall_open(const char *dir, char *err, size_t errlen)
{
    char path[4096];
    struct stall *r = calloc(1, sizeof *r);
    if (r == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    r->slot_fd = -1;
    pthread_mutex_init(&r->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&r->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (dir == NULL) { /* no data directory (a database): the slot lives as long as we do */
        r->slot = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        snprintf(path, sizeof path, "the dispatcher's slot");
    } else {
        snprintf(path, sizeof path, "%s/certhook.running", dir);
        r->slot_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        if (r->slot_fd < 0 || ftruncate(r->slot_fd, 4096) != 0) {
            snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
            goto fail;
        }
        r->slot = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, r->slot_fd, 0);
    }
    if (r->slot == MAP_FAILED) {
        r->slot = NULL;
        snprintf(err, errlen, "cannot map %s: %s", path, strerror(errno));
        goto fail;
    }
    return r;
fail:
    stall_close(r);
    return NULL;
}

_Static_assert(NSLOTS * sizeof(struct slot) <= 4096, "the slots fit in one page");

int stall_crashed(struct stall *r, struct stall_slot *out)
{
    int crashed = 0;
    for (int i = 0; i < NSLOTS; i++) { /* the dispatcher's first: its delivery counts */
        struct slot *s = &r->slot[i];
        if (!crashed && s->magic == SLOT_MAGIC &&
            atomic_load_explicit(&s->active, memory_order_acquire)) {
            copy_out(s, out);
            crashed = 1;
        }
        memset(s, 0, sizeof *s); /* a fresh start for this process */
        s->magic = SLOT_MAGIC;
        s->pid = (int32_t)getpid();
    }
    return crashed;
}

static void slot_begin(struct slot *s, int64_t seq, const char *event_id, const char *handler,
                       int attempts, double first_at)
{
    atomic_store_explicit(&s->active, 0, memory_order_relaxed);
    s->seq = seq;
    s->attempts = attempts;
    s->first_at = first_at;
    snprintf(s->event_id, sizeof s->event_id, "%s", event_id ? event_id : "");
    snprintf(s->handler, sizeof s->handler, "%s", handler ? handler : "");
    atomic_store_explicit(&s->since_ns, mono_ns(), memory_order_relaxed);
    atomic_store_explicit(&s->active, 1, memory_order_release);
}

void stall_begin(struct stall *r, int64_t seq, const char *event_id, const char *handler,
                 int attempts, double first_at)
{
    if (r != NULL)
        slot_begin(&r->slot[RUNS], seq, event_id, handler, attempts, first_at);
}

void stall_end(struct stall *r)
{
    if (r != NULL)
        atomic_store_explicit(&r->slot[RUNS].active, 0, memory_order_release);
}

void stall_loading(struct stall *r, const char *file)
{
    if (r != NULL)
        slot_begin(&r->slot[LOADS], 0, NULL, file, 0, 0);
}

void stall_loaded(struct stall *r)
{
    if (r != NULL)
        atomic_store_explicit(&r->slot[LOADS].active, 0, memory_order_release);
}

static void *watch_main(void *arg)
{
    struct stall *r = arg;
    uint64_t seen_since[NSLOTS] = {0};
    pthread_mutex_lock(&r->mu);
    while (!r->stop) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += (long)(LOOK * 1e9);
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&r->cv, &r->mu, &ts);
        if (r->stop)
            break;
        for (int i = 0; i < NSLOTS && !r->stop; i++) {
            struct slot *s = &r->slot[i];
            if (!atomic_load_explicit(&s->active, memory_order_acquire))
                continue;
            uint64_t since = atomic_load_explicit(&s->since_ns, memory_order_relaxed);
            double busy = (double)(mono_ns() - since) / 1e9;
            if (busy <= r->limit[i] || since == seen_since[i])
                continue;
            seen_since[i] = since; /* once per stall (on_stall normally does not return) */
            struct stall_slot what;
            copy_out(s, &what);
            pthread_mutex_unlock(&r->mu);
            r->on_stall(r->cls, &what, busy);
            pthread_mutex_lock(&r->mu);
        }
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

int stall_watch(struct stall *r, double limit, double load_limit,
                void (*on_stall)(void *cls, const struct stall_slot *what, double seconds),
                void *cls)
{
    r->limit[RUNS] = limit;
    r->limit[LOADS] = load_limit;
    r->on_stall = on_stall;
    r->cls = cls;
    r->stop = 0;
    if (pthread_create(&r->thread, NULL, watch_main, r) != 0)
        return -1;
    pthread_setname_np(r->thread, "stall-detector");
    r->watching = 1;
    return 0;
}

void stall_set_limit(struct stall *r, double limit, double load_limit)
{
    pthread_mutex_lock(&r->mu);
    r->limit[RUNS] = limit;
    r->limit[LOADS] = load_limit;
    pthread_mutex_unlock(&r->mu);
}

void stall_unwatch(struct stall *r)
{
    if (r == NULL || !r->watching)
        return;
    pthread_mutex_lock(&r->mu);
    r->stop = 1;
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
    pthread_join(r->thread, NULL);
    r->watching = 0;
}

void stall_close(struct stall *r)
{
    if (r == NULL)
        return;
    stall_unwatch(r);
    if (r->slot != NULL) {
        for (int i = 0; i < NSLOTS; i++) /* a clean stop: nothing was running */
            atomic_store(&r->slot[i].active, 0);
        munmap(r->slot, 4096);
    }
    if (r->slot_fd >= 0)
        close(r->slot_fd);
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->mu);
    free(r);
}
