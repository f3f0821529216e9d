/*
 * event.c -- the event record (struct event, certhook.h): one malloc'd block holding the
 * summary's strings, the packed event and the body, so that it crosses threads (intake ->
 * journal writer -> dispatcher) as one pointer and is freed with one free().
 */
#include <stdlib.h>
#include <string.h>

#include "base/base.h"

const char *const delivery_status_names[] = {"pending", "running", "retrying", "done", "dead"};

struct event *event_new(const struct event *from)
{
    size_t total = sizeof(struct event) + from->packed_len + from->body_len + 1 +
                   from->certs_len + 1;
#define LEN(f) total += from->f ? strlen(from->f) + 1 : 0;
    EVENT_STRINGS(LEN)
#undef LEN
    struct event *ev = malloc(total);
    if (ev == NULL)
        return NULL;
    *ev = *from;
    ev->next = NULL;
    ev->context = NULL;
    if (from->context != NULL && (ev->context = strdup(from->context)) == NULL) {
        free(ev);
        return NULL;
    }
    char *at = (char *)(ev + 1);
    if (from->packed_len > 0)
        memcpy(at, from->packed, from->packed_len);
    ev->packed = at;
    at += from->packed_len;
    if (from->body_len > 0)
        memcpy(at, from->body, from->body_len);
    at[from->body_len] = '\0';
    ev->body = at;
    at += from->body_len + 1;
    ev->certs = NULL;
    if (from->certs != NULL) {
        memcpy(at, from->certs, from->certs_len);
        at[from->certs_len] = '\0';
        ev->certs = at;
    }
    at += from->certs_len + 1;
#define COPY(f)                                     \
    if (from->f != NULL) {                          \
        size_t n = strlen(from->f) + 1;             \
        ev->f = memcpy(at, from->f, n);             \
        at += n;                                    \
    }
    EVENT_STRINGS(COPY)
#undef COPY
    return ev;
}

void event_free(struct event *ev)
{
    if (ev != NULL)
        free(ev->context);
    free(ev);
}

void event_free_list(struct event *ev)
{
    for (struct event *next; ev; ev = next) {
        next = ev->next;
        event_free(ev);
    }
}
