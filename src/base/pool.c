/*
 * pool.c -- the allocator of one Lua state (lua_Alloc's contract; no Lua here): blocks up to
 * POOL_MAX bytes come by size class from slabs and go back to their class's free list, so a
 * state that makes and drops the same small objects for every event (the tables and strings of
 * a decoded body, an unpacked event) reuses them without malloc's bookkeeping; larger blocks are
 * malloc's. Lua passes the old size with every free and resize, so blocks carry no header. The
 * slabs are freed with the pool, after its state is closed. One state, one thread at a time.
 */
#include <stdlib.h>
#include <string.h>

#include "base/base.h"

#define STEP 16
#define POOL_MAX 512
#define NCLASS (POOL_MAX / STEP)
#define SLAB (64 * 1024)

struct slab {
    struct slab *next;
    max_align_t align[]; /* the blocks */
};

struct pool {
    void *free[NCLASS]; /* each free block's first word: the next one */
    struct slab *slabs;
    char *cur;          /* the unused rest of the newest slab */
    size_t left;
};

struct pool *pool_new(void)
{
    return calloc(1, sizeof(struct pool));
}

void pool_free(struct pool *p)
{
    if (p == NULL)
        return;
    for (struct slab *s = p->slabs, *next; s; s = next) {
        next = s->next;
        free(s);
    }
    free(p);
}

static size_t class_of(size_t n)
{
    return (n + STEP - 1) / STEP - 1;
}

static void *take(struct pool *p, size_t n)
{
    if (n > POOL_MAX)
        return malloc(n);
    size_t c = class_of(n), size = (c + 1) * STEP;
    void *b = p->free[c];
    if (b != NULL) {
        memcpy(&p->free[c], b, sizeof b);
        return b;
    }
    if (p->left < size) {
        struct slab *s = malloc(SLAB);
        if (s == NULL)
            return NULL;
        s->next = p->slabs;
        p->slabs = s;
        p->cur = (char *)s->align;
        p->left = SLAB - offsetof(struct slab, align);
    }
    b = p->cur;
    p->cur += size;
    p->left -= size;
    return b;
}

static void give(struct pool *p, void *b, size_t n)
{
    if (n > POOL_MAX) {
        free(b);
        return;
    }
    size_t c = class_of(n);
    memcpy(b, &p->free[c], sizeof b);
    p->free[c] = b;
}

void *pool_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    struct pool *p = ud;
#ifdef __SANITIZE_ADDRESS__ /* every block malloc's: AddressSanitizer sees each misuse */
    (void)p, (void)osize;
    if (nsize == 0) {
        free(ptr);
        return NULL;
    }
    return realloc(ptr, nsize);
#endif
    size_t old = ptr != NULL ? osize : 0; /* without ptr, osize tells the kind of object */
    if (nsize == 0) {
        if (ptr != NULL)
            give(p, ptr, old);
        return NULL;
    }
    if (ptr != NULL) {
        if (old > POOL_MAX && nsize > POOL_MAX)
            return realloc(ptr, nsize);
        if (old <= POOL_MAX && nsize <= POOL_MAX && class_of(old) == class_of(nsize))
            return ptr;
    }
    void *b = take(p, nsize);
    if (b == NULL)
        return nsize <= old ? ptr : NULL; /* a shrink may keep the bigger block */
    if (ptr != NULL) {
        memcpy(b, ptr, old < nsize ? old : nsize);
        give(p, ptr, old);
    }
    return b;
}
