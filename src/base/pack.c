/*
 * pack.c -- the byte format a normalized event is kept in: written once at intake, stored by
 * the journal, read by whoever delivers it (base.h describes the format). No Lua here: the
 * provider layer (providers/event.c) walks Lua tables into it and builds them back from it.
 * Numbers are little-endian whatever the host, so a journal shared by several machines reads
 * the same everywhere.
 */
#include <endian.h>
#include <string.h>

#include "base/base.h"

static int put(struct buf *b, enum pack_tag tag, const void *p, size_t n)
{
    unsigned char t = (unsigned char)tag;
    return buf_add(b, &t, 1) != 0 || (n > 0 && buf_add(b, p, n) != 0) ? -1 : 0;
}

int pack_start(struct buf *b)
{
    unsigned char v = PACK_VERSION;
    return buf_add(b, &v, 1);
}

int pack_bool(struct buf *b, int v)
{
    return put(b, v ? PACK_TRUE : PACK_FALSE, NULL, 0);
}

int pack_int(struct buf *b, int64_t v)
{
    uint64_t le = htole64((uint64_t)v);
    return put(b, PACK_INT, &le, sizeof le);
}

int pack_float(struct buf *b, double v)
{
    uint64_t bits;
    memcpy(&bits, &v, sizeof bits);
    bits = htole64(bits);
    return put(b, PACK_FLOAT, &bits, sizeof bits);
}

int pack_str(struct buf *b, const char *s, size_t n)
{
    if (n > UINT32_MAX)
        return -1;
    uint32_t le = htole32((uint32_t)n);
    return put(b, PACK_STR, &le, sizeof le) != 0 || buf_add(b, s, n) != 0 ? -1 : 0;
}

int pack_null(struct buf *b)
{
    return put(b, PACK_NULL, NULL, 0);
}

size_t pack_table(struct buf *b, uint32_t narr, uint32_t nhash)
{
    size_t at = b->n;
    uint32_t sizes[2] = {htole32(narr), htole32(nhash)};
    return put(b, PACK_TABLE, sizes, sizeof sizes) == 0 ? at : (size_t)-1;
}

void pack_table_sizes(struct buf *b, size_t at, uint32_t narr, uint32_t nhash)
{
    uint32_t sizes[2] = {htole32(narr), htole32(nhash)};
    memcpy(b->p + at + 1, sizes, sizeof sizes);
}

int pack_end(struct buf *b)
{
    return put(b, PACK_END, NULL, 0);
}

int pack_ref(struct buf *b, uint32_t n)
{
    uint32_t le = htole32(n);
    return put(b, PACK_REF, &le, sizeof le);
}

void pack_share(struct buf *b, size_t at)
{
    b->p[at] = PACK_SHARED;
}

int pack_open(struct pack_reader *r, const void *p, size_t n)
{
    r->p = p;
    r->end = r->p + n;
    if (n == 0 || *r->p != PACK_VERSION)
        return -1;
    r->p++;
    return 0;
}

static int take(struct pack_reader *r, void *out, size_t n)
{
    if ((size_t)(r->end - r->p) < n)
        return -1;
    memcpy(out, r->p, n);
    r->p += n;
    return 0;
}

int pack_next(struct pack_reader *r, struct pack_item *it)
{
    unsigned char tag;
    uint32_t u32[2];
    uint64_t u64;
    if (take(r, &tag, 1) != 0)
        return -1;
    it->tag = (enum pack_tag)tag;
    switch (it->tag) {
    case PACK_END:
    case PACK_FALSE:
    case PACK_TRUE:
    case PACK_NULL:
        return 0;
    case PACK_INT:
        if (take(r, &u64, sizeof u64) != 0)
            return -1;
        it->i = (int64_t)le64toh(u64);
        return 0;
    case PACK_FLOAT:
        if (take(r, &u64, sizeof u64) != 0)
            return -1;
        u64 = le64toh(u64);
        memcpy(&it->f, &u64, sizeof it->f);
        return 0;
    case PACK_STR:
        if (take(r, u32, sizeof u32[0]) != 0)
            return -1;
        it->n = le32toh(u32[0]);
        if ((size_t)(r->end - r->p) < it->n)
            return -1;
        it->s = (const char *)r->p;
        r->p += it->n;
        return 0;
    case PACK_REF:
        if (take(r, u32, sizeof u32[0]) != 0)
            return -1;
        it->i = le32toh(u32[0]);
        return 0;
    case PACK_TABLE:
    case PACK_SHARED:
        if (take(r, u32, sizeof u32) != 0)
            return -1;
        it->i = le32toh(u32[0]);
        it->n = le32toh(u32[1]);
        return 0;
    }
    return -1;
}
