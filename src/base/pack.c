/*
 * pack.c -- the byte format a normalized event is kept in: written once at intake, stored by
 * the journal, read by whoever delivers it (base.h describes the format). No Lua here: the
 * provider layer (providers/event.c) walks Lua tables into it and builds them back from it.
 * Numbers are little-endian whatever the host, so a journal shared by several machines reads
 * the same everywhere.
 */
#include <endian.h>
#include <stdio.h>
#include <string.h>

#include "base/base.h"

/* Small values take few bytes: strings under SHORT_MAX bytes are one tag byte (SHORT_STR + the
 * length) and their bytes; lengths, integers (zigzag) and references are varints (7 bits a
 * byte, low bits first); a table's sizes are one byte each (they only presize the copy). */
#define SHORT_STR 0x40
#define SHORT_MAX (0x100 - SHORT_STR)

static int put(struct buf *b, enum pack_tag tag, const void *p, size_t n)
{
    unsigned char t = (unsigned char)tag;
    return buf_add(b, &t, 1) != 0 || (n > 0 && buf_add(b, p, n) != 0) ? -1 : 0;
}

static int put_varint(struct buf *b, enum pack_tag tag, uint64_t v)
{
    unsigned char out[11];
    size_t n = 0;
    out[n++] = (unsigned char)tag;
    do {
        out[n] = (unsigned char)(v & 0x7f);
        v >>= 7;
        out[n++] |= v ? 0x80 : 0;
    } while (v);
    return buf_add(b, out, n);
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
    uint64_t u = (uint64_t)v;
    return put_varint(b, PACK_INT, (u << 1) ^ (v < 0 ? ~(uint64_t)0 : 0));
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
    if (n < SHORT_MAX)
        return put(b, (enum pack_tag)(SHORT_STR + n), s, n);
    return put_varint(b, PACK_STR, n) != 0 || buf_add(b, s, n) != 0 ? -1 : 0;
}

int pack_null(struct buf *b)
{
    return put(b, PACK_NULL, NULL, 0);
}

int pack_body(struct buf *b)
{
    return put(b, PACK_BODY, NULL, 0);
}

static void sizes(unsigned char out[2], uint32_t narr, uint32_t nhash)
{
    out[0] = (unsigned char)(narr < 0xff ? narr : 0xff);
    out[1] = (unsigned char)(nhash < 0xff ? nhash : 0xff);
}

size_t pack_table(struct buf *b, uint32_t narr, uint32_t nhash)
{
    size_t at = b->n;
    unsigned char sz[2];
    sizes(sz, narr, nhash);
    return put(b, PACK_TABLE, sz, sizeof sz) == 0 ? at : (size_t)-1;
}

void pack_table_sizes(struct buf *b, size_t at, uint32_t narr, uint32_t nhash)
{
    sizes((unsigned char *)b->p + at + 1, narr, nhash);
}

int pack_end(struct buf *b)
{
    return put(b, PACK_END, NULL, 0);
}

int pack_ref(struct buf *b, uint32_t n)
{
    return put_varint(b, PACK_REF, n);
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

static int take_varint(struct pack_reader *r, uint64_t *v)
{
    *v = 0;
    for (int shift = 0; shift < 64 && r->p < r->end; shift += 7) {
        unsigned char c = *r->p++;
        *v |= (uint64_t)(c & 0x7f) << shift;
        if (!(c & 0x80))
            return 0;
    }
    return -1;
}

int pack_next(struct pack_reader *r, struct pack_item *it)
{
    unsigned char tag, sz[2];
    uint64_t u64;
    if (take(r, &tag, 1) != 0)
        return -1;
    if (tag >= SHORT_STR) {
        it->tag = PACK_STR;
        it->n = tag - SHORT_STR;
        goto bytes;
    }
    it->tag = (enum pack_tag)tag;
    switch (it->tag) {
    case PACK_END:
    case PACK_FALSE:
    case PACK_TRUE:
    case PACK_NULL:
    case PACK_BODY:
        return 0;
    case PACK_INT:
        if (take_varint(r, &u64) != 0)
            return -1;
        it->i = (int64_t)((u64 >> 1) ^ (~(u64 & 1) + 1));
        return 0;
    case PACK_FLOAT:
        if (take(r, &u64, sizeof u64) != 0)
            return -1;
        u64 = le64toh(u64);
        memcpy(&it->f, &u64, sizeof it->f);
        return 0;
    case PACK_STR:
        if (take_varint(r, &u64) != 0)
            return -1;
        it->n = (size_t)u64;
        goto bytes;
    case PACK_REF:
        if (take_varint(r, &u64) != 0 || u64 > INT32_MAX)
            return -1;
        it->i = (int64_t)u64;
        return 0;
    case PACK_TABLE:
    case PACK_SHARED:
        if (take(r, sz, sizeof sz) != 0)
            return -1;
        it->i = sz[0];
        it->n = sz[1];
        return 0;
    }
    return -1;
bytes:
    if ((size_t)(r->end - r->p) < it->n)
        return -1;
    it->s = (const char *)r->p;
    r->p += it->n;
    return 0;
}

/* ---- as JSON ------------------------------------------------------------------------------------ */

/* A number as JSON: a whole one without a fraction, others with the digits that read back the
 * same double. */
int buf_json_number(struct buf *b, double v)
{
    char s[32];
    if (v != v || v - v != 0) /* NaN, infinities: JSON has none */
        return buf_adds(b, "null");
    if (v > -9007199254740992.0 && v < 9007199254740992.0 && v == (double)(int64_t)v) {
        int64_t i = (int64_t)v; /* digits by hand: this is most of a fold's text */
        uint64_t u = i < 0 ? -(uint64_t)i : (uint64_t)i;
        char *p = s + sizeof s;
        do
            *--p = (char)('0' + u % 10);
        while ((u /= 10) != 0);
        if (i < 0)
            *--p = '-';
        return buf_add(b, p, (size_t)(s + sizeof s - p));
    }
    int n = snprintf(s, sizeof s, "%.17g", v);
    return buf_add(b, s, (size_t)n);
}

/* The value whose first item is it, as JSON into out. Depth-bounded: 0, or -1 (malformed, a
 * reference or the body: not for JSON). */
static int json_value(struct pack_reader *r, const struct pack_item *it, struct buf *out,
                      int depth)
{
    struct pack_item k, v;
    switch (it->tag) {
    case PACK_FALSE:
        return buf_adds(out, "false");
    case PACK_TRUE:
        return buf_adds(out, "true");
    case PACK_NULL:
        return buf_adds(out, "null");
    case PACK_INT:
        return buf_printf(out, "%lld", (long long)it->i);
    case PACK_FLOAT:
        return buf_json_number(out, it->f);
    case PACK_STR:
        return buf_json_str(out, it->s, it->n);
    case PACK_TABLE:
    case PACK_SHARED:
        break;
    default:
        return -1;
    }
    if (depth > 64)
        return -1;
    /* an array when its keys are 1..n in order (as the packer writes a list), else an object */
    struct pack_reader peek = *r;
    int array = 1;
    for (int64_t n = 1;; n++) {
        if (pack_next(&peek, &k) != 0)
            return -1;
        if (k.tag == PACK_END)
            break;
        if (k.tag != PACK_INT || k.i != n || pack_next(&peek, &v) != 0 ||
            pack_skip(&peek, &v) != 0) {
            array = 0;
            break;
        }
    }
    if (buf_adds(out, array ? "[" : "{") != 0)
        return -1;
    for (int first = 1;; first = 0) {
        if (pack_next(r, &k) != 0)
            return -1;
        if (k.tag == PACK_END)
            break;
        if (!first && buf_adds(out, ",") != 0)
            return -1;
        if (!array) {
            char num[32];
            if (k.tag == PACK_STR) {
                if (buf_json_str(out, k.s, k.n) != 0)
                    return -1;
            } else if (k.tag == PACK_INT) {
                snprintf(num, sizeof num, "\"%lld\"", (long long)k.i);
                if (buf_adds(out, num) != 0)
                    return -1;
            } else {
                return -1;
            }
            if (buf_adds(out, ":") != 0)
                return -1;
        }
        if (pack_next(r, &v) != 0 || json_value(r, &v, out, depth + 1) != 0)
            return -1;
    }
    return buf_adds(out, array ? "]" : "}");
}

int pack_json(struct pack_reader *r, struct buf *out)
{
    struct pack_item it;
    return pack_next(r, &it) == 0 ? json_value(r, &it, out, 0) : -1;
}

int pack_skip(struct pack_reader *r, const struct pack_item *it)
{
    struct pack_item k;
    if (it->tag != PACK_TABLE && it->tag != PACK_SHARED)
        return 0;
    for (int depth = 1; depth > 0;) {
        if (pack_next(r, &k) != 0)
            return -1;
        if (k.tag == PACK_END)
            depth--;
        else if (k.tag == PACK_TABLE || k.tag == PACK_SHARED)
            depth++;
    }
    return 0;
}
