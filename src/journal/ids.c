/*
 * ids.c -- the ids a journal holds, for exact duplicate detection without a B-tree on random
 * keys (DESIGN §10): a unique index on event ids touches a page of its own for every event
 * (the ids are random), which the write-ahead log then writes whole. Here, in memory, each
 * event is 8 bytes in an open-addressing table: 32 bits of its id's hash (which also place it)
 * and its seq, as an offset from the first one kept. A hash that matches is checked against the
 * id journaled under that seq, so two ids that collide are never taken for one. Made at open
 * from the journal, kept by its writer, bounded by journal.retention (pruned events leave it).
 * Used by store_sqlite.c.
 */
#include <stdlib.h>
#include <string.h>

#include "journal/store.h"

#define FIRST_CAP 1024 /* slots; a power of two */

struct slot_id {
    uint32_t h;   /* the hash */
    uint32_t off; /* seq - base + 1; 0: an empty slot */
};

struct ids {
    struct slot_id *t;
    size_t cap, n;
    int64_t base; /* the seq of offset 1 (the first one added) */
};

uint32_t ids_hash(const char *id)
{
    uint64_t h = 0xcbf29ce484222325u; /* FNV-1a, then a finalizer that spreads the bits */
    for (const unsigned char *p = (const unsigned char *)id; *p; p++)
        h = (h ^ *p) * 0x100000001b3u;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdu;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53u;
    h ^= h >> 33;
    return (uint32_t)h;
}

struct ids *ids_new(void)
{
    struct ids *s = calloc(1, sizeof *s);
    if (s == NULL || (s->t = calloc(FIRST_CAP, sizeof *s->t)) == NULL) {
        free(s);
        return NULL;
    }
    s->cap = FIRST_CAP;
    return s;
}

void ids_free(struct ids *s)
{
    if (s != NULL)
        free(s->t);
    free(s);
}

size_t ids_count(const struct ids *s)
{
    return s->n;
}

static int grow(struct ids *s)
{
    size_t cap = s->cap * 2;
    struct slot_id *t = calloc(cap, sizeof *t);
    if (t == NULL)
        return -1;
    for (size_t i = 0; i < s->cap; i++) {
        if (s->t[i].off == 0)
            continue;
        size_t k = s->t[i].h & (cap - 1);
        while (t[k].off != 0)
            k = (k + 1) & (cap - 1);
        t[k] = s->t[i];
    }
    free(s->t);
    s->t = t;
    s->cap = cap;
    return 0;
}

int ids_add(struct ids *s, uint32_t h, int64_t seq)
{
    if (s->n == 0 && s->base == 0)
        s->base = seq;
    if (seq < s->base || seq - s->base >= UINT32_MAX) /* not for this table: never happens */
        return -1;
    if ((s->n + 1) * 10 > s->cap * 7 && grow(s) != 0) /* at most 70% full */
        return -1;
    size_t k = h & (s->cap - 1);
    while (s->t[k].off != 0)
        k = (k + 1) & (s->cap - 1);
    s->t[k] = (struct slot_id){h, (uint32_t)(seq - s->base + 1)};
    s->n++;
    return 0;
}

int64_t ids_find(const struct ids *s, uint32_t h, int (*same)(void *cls, int64_t seq), void *cls)
{
    for (size_t k = h & (s->cap - 1); s->t[k].off != 0; k = (k + 1) & (s->cap - 1)) {
        int64_t seq = s->base + s->t[k].off - 1;
        if (s->t[k].h == h && same(cls, seq))
            return seq;
    }
    return 0;
}

void ids_remove(struct ids *s, uint32_t h, int64_t seq)
{
    size_t mask = s->cap - 1, hole = h & mask;
    if (seq < s->base || seq - s->base >= UINT32_MAX)
        return;
    uint32_t off = (uint32_t)(seq - s->base + 1);
    while (s->t[hole].off != 0 && !(s->t[hole].h == h && s->t[hole].off == off))
        hole = (hole + 1) & mask;
    if (s->t[hole].off == 0)
        return;
    /* backward shift: each slot after the hole that may sit there (its home is not between the
     * hole and it) moves into it, and leaves a hole of its own */
    for (size_t i = (hole + 1) & mask; s->t[i].off != 0; i = (i + 1) & mask) {
        size_t home = s->t[i].h & mask;
        if (((i - home) & mask) >= ((i - hole) & mask)) {
            s->t[hole] = s->t[i];
            hole = i;
        }
    }
    s->t[hole].off = 0;
    s->n--;
}
