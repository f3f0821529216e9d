/*
 * loop.c -- an event loop: an epoll set whose members are file descriptors with a callback
 * each (struct loop_fd). The dispatcher waits in loop_run_once; certhook.http's curl multi
 * handle and certhook.exec's pipes, processes and timers register their descriptors in it, so
 * one thread waits on all of them at once.
 */
#include <errno.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "base/base.h"

#define BATCH 64

struct loop {
    int epfd;
    struct epoll_event ready[BATCH]; /* the batch being handed out */
    int nready, at;
};

struct loop *loop_new(void)
{
    struct loop *l = calloc(1, sizeof *l);
    if (l == NULL)
        return NULL;
    l->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (l->epfd < 0) {
        free(l);
        return NULL;
    }
    return l;
}

void loop_free(struct loop *l)
{
    if (l == NULL)
        return;
    close(l->epfd);
    free(l);
}

static int ctl(struct loop *l, int op, struct loop_fd *w, uint32_t events)
{
    struct epoll_event e = {.events = events, .data.ptr = w};
    return epoll_ctl(l->epfd, op, w->fd, &e);
}

int loop_add(struct loop *l, struct loop_fd *w, uint32_t events)
{
    return ctl(l, EPOLL_CTL_ADD, w, events);
}

int loop_mod(struct loop *l, struct loop_fd *w, uint32_t events)
{
    return ctl(l, EPOLL_CTL_MOD, w, events);
}

void loop_del(struct loop *l, struct loop_fd *w)
{
    if (w->fd >= 0)
        epoll_ctl(l->epfd, EPOLL_CTL_DEL, w->fd, NULL);
    /* a callback earlier in this batch may remove (and free) a member still to come */
    for (int i = l->at; i < l->nready; i++)
        if (l->ready[i].data.ptr == w)
            l->ready[i].data.ptr = NULL;
}

int loop_run_once(struct loop *l, int timeout_ms)
{
    int n = epoll_wait(l->epfd, l->ready, BATCH, timeout_ms);
    if (n < 0)
        return errno == EINTR ? 0 : -1;
    l->nready = n;
    for (l->at = 0; l->at < n;) {
        struct epoll_event *e = &l->ready[l->at++];
        struct loop_fd *w = e->data.ptr;
        if (w != NULL)
            w->ready(w, e->events);
    }
    l->nready = l->at = 0;
    return n;
}
