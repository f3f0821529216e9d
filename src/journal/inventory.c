/*
 * inventory.c -- the certificate inventory (DESIGN §6) folded from the log, the same for every
 * store: one event after another in log order, what each says of its certificates (ev->certs,
 * packed by providers/event.c) updates their entries, and the event gets its context -- what
 * the entry of its first certificate was (previous), whether the event is stale (it occurred
 * before the last one applied), how many of its type in a row (repeats). The entries live in a
 * cache (the hot ones stay: a certificate's DCV failures come every retry); one missing is read
 * through the store, and each changed one is written back once per projection (writer.c), in
 * the store's transaction. Used by writer.c; the stores read and write entries (store.h).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "journal/store.h"

#define BUCKETS 1024 /* a power of two; chains grow past it */

struct slot {
    struct slot *next;           /* in its bucket */
    struct slot *older, *newer;  /* recency: the least recent is evicted first */
    struct slot *next_dirty;
    int dirty;
    struct entry e;
};

struct inventory {
    struct slot *buckets[BUCKETS];
    struct slot *oldest, *newest;
    struct slot *dirty;          /* changed since the last flush */
    size_t n, cap;
};

static size_t hash(const char *s)
{
    size_t h = 1469598103934665603u;
    while (*s)
        h = (h ^ (unsigned char)*s++) * 1099511628211u;
    return h & (BUCKETS - 1);
}

void entry_init(struct entry *e)
{
#define NONE_N(f) e->f = NAN;
#define ZERO(f) e->f = 0;
#define NULL_S(f) e->f = NULL;
    ENTRY_FIELDS(NULL_S, NULL_S, NONE_N, ZERO, ZERO)
#undef NONE_N
#undef ZERO
#undef NULL_S
}

void entry_clear(struct entry *e)
{
#define FREE_S(f) free(e->f);
#define SKIP(f)
    ENTRY_FIELDS(FREE_S, FREE_S, SKIP, SKIP, SKIP)
#undef FREE_S
#undef SKIP
    entry_init(e);
}

/* ",\"name\":" (no comma first) */
static int json_key(struct buf *out, const char *key, size_t n, int *first)
{
    int rc = (*first ? 0 : buf_add(out, ",", 1)) | buf_add(out, "\"", 1) |
             buf_add(out, key, n) | buf_add(out, "\":", 2);
    *first = 0;
    return rc;
}

int entry_json(const struct entry *e, struct buf *out)
{
    int rc = buf_add(out, "{", 1), first = 1;
#define KEY(f) json_key(out, #f, sizeof #f - 1, &first)
#define J_S(f)                                                                                 \
    if (e->f != NULL)                                                                          \
        rc |= KEY(f) | buf_json_str(out, e->f, strlen(e->f));
#define J_J(f)                                                                                 \
    if (e->f != NULL)                                                                          \
        rc |= KEY(f) | buf_adds(out, e->f);
#define J_N(f)                                                                                 \
    if (!isnan(e->f))                                                                          \
        rc |= KEY(f) | buf_json_number(out, e->f);
#define J_B(f)                                                                                 \
    if (e->f)                                                                                  \
        rc |= KEY(f) | buf_add(out, "true", 4);
#define J_I(f) rc |= KEY(f) | buf_json_number(out, e->f);
    ENTRY_FIELDS(J_S, J_J, J_N, J_B, J_I)
#undef J_S
#undef J_J
#undef J_N
#undef J_B
#undef J_I
#undef KEY
    return rc | buf_add(out, "}", 1);
}

struct inventory *inventory_new(size_t cap)
{
    struct inventory *inv = calloc(1, sizeof *inv);
    if (inv != NULL)
        inv->cap = cap > 0 ? cap : 1;
    return inv;
}

static void unlink_recency(struct inventory *inv, struct slot *s)
{
    if (s->older)
        s->older->newer = s->newer;
    else
        inv->oldest = s->newer;
    if (s->newer)
        s->newer->older = s->older;
    else
        inv->newest = s->older;
    s->older = s->newer = NULL;
}

static void push_newest(struct inventory *inv, struct slot *s)
{
    s->older = inv->newest;
    s->newer = NULL;
    if (inv->newest)
        inv->newest->newer = s;
    else
        inv->oldest = s;
    inv->newest = s;
}

static void drop(struct inventory *inv, struct slot *s)
{
    struct slot **p = &inv->buckets[hash(s->e.key)];
    while (*p != s)
        p = &(*p)->next;
    *p = s->next;
    unlink_recency(inv, s);
    entry_clear(&s->e);
    free(s);
    inv->n--;
}

void inventory_forget(struct inventory *inv)
{
    for (size_t i = 0; i < BUCKETS; i++) {
        for (struct slot *s = inv->buckets[i], *next; s; s = next) {
            next = s->next;
            entry_clear(&s->e);
            free(s);
        }
        inv->buckets[i] = NULL;
    }
    inv->oldest = inv->newest = inv->dirty = NULL;
    inv->n = 0;
}

void inventory_free(struct inventory *inv)
{
    if (inv == NULL)
        return;
    inventory_forget(inv);
    free(inv);
}

/* The slot of key: cached, read through the store, or new (s->e.key NULL: no entry yet).
 * NULL: the store could not be read, or out of memory. */
static struct slot *slot_of(struct inventory *inv, struct store *st, const struct store_ops *ops,
                            const char *key)
{
    size_t h = hash(key);
    for (struct slot *s = inv->buckets[h]; s; s = s->next) {
        if (strcmp(s->e.key, key) == 0) {
            unlink_recency(inv, s);
            push_newest(inv, s);
            return s;
        }
    }
    struct slot *s = calloc(1, sizeof *s);
    if (s == NULL)
        return NULL;
    entry_init(&s->e);
    int found = ops->entry_get(st, key, &s->e);
    if (found < 0 || (found == 0 && (s->e.key = strdup(key)) == NULL)) {
        entry_clear(&s->e);
        free(s);
        return NULL;
    }
    s->e.repeats = found ? s->e.repeats : 0; /* 0: a new entry */
    s->next = inv->buckets[h];
    inv->buckets[h] = s;
    push_newest(inv, s);
    inv->n++;
    for (struct slot *old = inv->oldest; inv->n > inv->cap && old && old != s;) {
        struct slot *newer = old->newer;
        if (!old->dirty)
            drop(inv, old);
        old = newer;
    }
    return s;
}

/* ---- reading a fact --------------------------------------------------------------------------- */

/* A fact of the list, read into place: strings point into the packed bytes (len each). */
struct fact {
    const char *key, *hostname, *certificate_id, *name, *scope, *status, *state, *issuer,
        *serial_number;
    size_t key_n, hostname_n, certificate_id_n, name_n, scope_n, status_n, state_n, issuer_n,
        serial_number_n;
    double not_before, expires_at;
    int approximate;
    struct buf domains; /* JSON text, or empty */
};

static char *dup_n(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (p != NULL) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

/* Reads the fact table whose first item is it; 0, or -1 when it does not read. */
static int read_fact(struct pack_reader *r, const struct pack_item *it, struct fact *f)
{
    struct pack_item k, v;
    if (it->tag != PACK_TABLE && it->tag != PACK_SHARED)
        return -1;
    for (;;) {
        if (pack_next(r, &k) != 0)
            return -1;
        if (k.tag == PACK_END)
            return 0;
        if (k.tag != PACK_STR)
            return -1;
        if (k.n == 7 && memcmp(k.s, "domains", 7) == 0) {
            f->domains.n = 0;
            if (pack_json(r, &f->domains) != 0)
                return -1;
            continue;
        }
        if (pack_next(r, &v) != 0)
            return -1;
#define STR_FIELD(name)                                                                        \
    if (k.n == sizeof #name - 1 && memcmp(k.s, #name, k.n) == 0 && v.tag == PACK_STR) {       \
        f->name = v.s;                                                                         \
        f->name##_n = v.n;                                                                     \
        continue;                                                                              \
    }
        STR_FIELD(key)
        STR_FIELD(hostname)
        STR_FIELD(certificate_id)
        STR_FIELD(name)
        STR_FIELD(scope)
        STR_FIELD(status)
        STR_FIELD(state)
        STR_FIELD(issuer)
        STR_FIELD(serial_number)
#undef STR_FIELD
        double num = v.tag == PACK_INT ? (double)v.i : v.tag == PACK_FLOAT ? v.f : NAN;
        if (k.n == 10 && memcmp(k.s, "not_before", 10) == 0)
            f->not_before = num;
        else if (k.n == 10 && memcmp(k.s, "expires_at", 10) == 0)
            f->expires_at = num;
        else if (k.n == 22 && memcmp(k.s, "expires_at_approximate", 22) == 0)
            f->approximate = v.tag == PACK_TRUE;
        else if (pack_skip(r, &v) != 0)
            return -1;
    }
}

/* ---- the fold ---------------------------------------------------------------------------------- */

static int set_str(char **to, const char *s, size_t n)
{
    if (s == NULL)
        return 0; /* coalesce: the entry keeps what it knew */
    char *p = dup_n(s, n);
    if (p == NULL)
        return -1;
    free(*to);
    *to = p;
    return 0;
}

static int set_cstr(char **to, const char *s)
{
    return s ? set_str(to, s, strlen(s)) : 0;
}

/* set_str, and what *to was goes to *previous when s changes it (a value, not none, before:
 * the entry's previous_status, previous_state); the same value leaves *previous as it is. */
static int set_changed(char **to, char **previous, const char *s, size_t n)
{
    if (s != NULL && *to != NULL && (strlen(*to) != n || memcmp(*to, s, n) != 0)) {
        free(*previous);
        *previous = *to;
        *to = NULL;
    }
    return set_str(to, s, n);
}

/* ev's fact f applied to the entry e (new: e->repeats 0), as its (repeats)-th of the type in a
 * row. */
static int apply(struct entry *e, const struct event *ev, const struct fact *f, int repeats)
{
    const char *t = ev->type;
    double r = ev->received_at;
    int rc = 0, is_new = e->repeats == 0;
    if (is_new) {
        rc |= set_cstr(&e->provider, ev->provider);
        rc |= set_cstr(&e->source, ev->source);
        e->first_seen = r;
    }
    rc |= set_str(&e->hostname, f->hostname, f->hostname_n);
    rc |= set_str(&e->certificate_id, f->certificate_id, f->certificate_id_n);
    rc |= set_str(&e->name, f->name, f->name_n);
    rc |= set_str(&e->scope, f->scope, f->scope_n);
    if (strcmp(t, "certificate.deletion.succeeded") == 0)
        rc |= set_changed(&e->status, &e->previous_status, "deleted", 7);
    else
        rc |= set_changed(&e->status, &e->previous_status, f->status, f->status_n);
    rc |= set_changed(&e->state, &e->previous_state, f->state, f->state_n);
    if (f->domains.n > 0)
        rc |= set_str(&e->domains, f->domains.p, f->domains.n);
    rc |= set_str(&e->issuer, f->issuer, f->issuer_n);
    rc |= set_str(&e->serial_number, f->serial_number, f->serial_number_n);
    if (!isnan(f->not_before))
        e->not_before = f->not_before;
    if (!isnan(f->expires_at)) { /* whether it is approximate goes with the expiry */
        e->expires_at = f->expires_at;
        e->expires_at_approximate = f->approximate;
    }
    rc |= set_cstr(&e->last_event, ev->id);
    rc |= set_cstr(&e->last_type, t);
    if (ev->occurred_at > 0)
        e->last_occurred_at = ev->occurred_at;
    e->repeats = repeats;
    if (strcmp(t, "certificate.expiration.upcoming") == 0)
        e->warned_at = r;
    if (strcmp(t, "certificate.renewal.succeeded") == 0 ||
        strcmp(t, "certificate.issuance.succeeded") == 0 ||
        strcmp(t, "certificate.import.succeeded") == 0)
        e->renewed_at = r;
    if (strcmp(t, "certificate.expiration.reached") == 0)
        e->reached_at = r;
    e->updated_at = r;
    return rc ? -1 : 0;
}

int inventory_fold(struct inventory *inv, struct store *st, const struct store_ops *ops,
                   struct event *ev)
{
    struct pack_reader r;
    struct pack_item it, k;
    struct buf ctx;
    int rc = 0, first = 1;
    free(ev->context);
    ev->context = NULL;
    if (ev->certs == NULL || pack_open(&r, ev->certs, ev->certs_len) != 0 ||
        pack_next(&r, &it) != 0 || (it.tag != PACK_TABLE && it.tag != PACK_SHARED))
        return 0; /* nothing to learn */
    buf_init(&ctx);
    double at = ev->occurred_at;
    for (;;) {
        if (pack_next(&r, &k) != 0 || k.tag == PACK_END || pack_next(&r, &it) != 0)
            break;
        struct fact f = {.not_before = NAN, .expires_at = NAN};
        buf_init(&f.domains);
        if (read_fact(&r, &it, &f) != 0 || f.key == NULL) {
            buf_free(&f.domains);
            break; /* not a fact this build writes: the rest is not read either */
        }
        char *key = dup_n(f.key, f.key_n);
        struct slot *s = key ? slot_of(inv, st, ops, key) : NULL;
        free(key);
        if (s == NULL) {
            buf_free(&f.domains);
            rc = -1;
            break;
        }
        struct entry *e = &s->e;
        int found = e->repeats > 0;
        int stale = found && at > 0 && !isnan(e->last_occurred_at) && at < e->last_occurred_at;
        int repeats = found && e->last_type && strcmp(e->last_type, ev->type) == 0
                          ? e->repeats + 1
                          : 1;
        if (first) {
            rc |= buf_printf(&ctx, "{\"stale\":%s,\"repeats\":%d", stale ? "true" : "false",
                             repeats);
            if (found)
                rc |= buf_adds(&ctx, ",\"previous\":") | entry_json(e, &ctx);
            rc |= buf_adds(&ctx, "}");
            first = 0;
        }
        if (!stale) {
            rc |= apply(e, ev, &f, repeats);
            if (!s->dirty) {
                s->dirty = 1;
                s->next_dirty = inv->dirty;
                inv->dirty = s;
            }
        }
        buf_free(&f.domains);
        if (rc != 0)
            break;
    }
    if (rc != 0) {
        buf_free(&ctx);
        return -1;
    }
    ev->context = ctx.p; /* NULL: no fact */
    return 0;
}

int inventory_keys(const struct event *ev, void (*fn)(void *cls, const char *key, size_t n),
                   void *cls)
{
    struct pack_reader r;
    struct pack_item it, k;
    if (ev->certs == NULL || pack_open(&r, ev->certs, ev->certs_len) != 0 ||
        pack_next(&r, &it) != 0 || (it.tag != PACK_TABLE && it.tag != PACK_SHARED))
        return 0;
    for (;;) {
        if (pack_next(&r, &k) != 0 || k.tag == PACK_END || pack_next(&r, &it) != 0)
            break;
        struct fact f = {.not_before = NAN, .expires_at = NAN};
        buf_init(&f.domains);
        int ok = read_fact(&r, &it, &f) == 0 && f.key != NULL;
        if (ok)
            fn(cls, f.key, f.key_n);
        buf_free(&f.domains);
        if (!ok)
            break;
    }
    return 0;
}

int inventory_flush(struct inventory *inv, struct store *st, const struct store_ops *ops)
{
    for (struct slot *s = inv->dirty; s; s = s->next_dirty)
        if (ops->entry_put(st, &s->e) != 0)
            return -1;
    return 0;
}

void inventory_committed(struct inventory *inv)
{
    struct slot *first = NULL; /* in the order they first changed (the list is the reverse) */
    for (struct slot *s = inv->dirty, *next; s; s = next) {
        next = s->next_dirty;
        s->next_dirty = first;
        first = s;
    }
    for (struct slot *s = first, *next; s; s = next) {
        next = s->next_dirty;
        const struct entry *e = &s->e; /* labelled as the entry, whoever told of it now */
        metrics_certificate(e->key, e->hostname ? e->hostname : "", e->provider, e->status,
                            e->state, e->last_type, isnan(e->expires_at) ? 0 : e->expires_at,
                            e->updated_at);
        s->dirty = 0;
        s->next_dirty = NULL;
    }
    inv->dirty = NULL;
}
