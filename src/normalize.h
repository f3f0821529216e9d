/*
 * normalize.h -- what the provider normalizers (cloudflare.c, ibm_cm.c) share with
 * normalize.c. Private to those three files.
 *
 * Conventions: t, src, dst are absolute stack indices of tables; 0 means "none" (every
 * reader then yields nothing). Readers push the value they return; strings they return stay
 * valid while that value is on the stack.
 */
#ifndef NORMALIZE_H
#define NORMALIZE_H

#include <lua.h>

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* How a provider field becomes an event field. */
enum field_kind {
    F_STR,   /* a non-empty string */
    F_TIME,  /* ISO 8601, or epoch seconds / milliseconds -> epoch seconds */
    F_BOOL,  /* a boolean */
    F_TABLE, /* a table, shared with raw (the dispatcher copies the event per handler) */
    F_LIST,  /* an array -> its non-empty strings, if any */
    F_SPLIT, /* "a, b" -> {"a", "b"}, if any */
};

struct field {
    const char *to, *from;
    enum field_kind kind;
};

int normalize_has_prefix(const char *s, const char *p);
int normalize_has_suffix(const char *s, const char *x);
int normalize_get(lua_State *L, int t, const char *k);              /* pushes t[k]; its type */
int normalize_get_table(lua_State *L, int t, const char *k);        /* index, or 0 (no push) */
const char *normalize_get_string(lua_State *L, int t, const char *k); /* non-empty, or NULL */
int normalize_epoch(lua_State *L, int idx, double *t);              /* 0 / -1 */
void normalize_set_str(lua_State *L, int ev, const char *key, const char *value);
void normalize_copy_fields(lua_State *L, int dst, int src, const struct field *f, size_t n);
#define COPY(L, dst, src, fields) normalize_copy_fields(L, dst, src, fields, COUNT(fields))
/* Pushes the certificate the fields describe and returns its index; 0 when none is there. */
int normalize_push_certificate(lua_State *L, int src, const struct field *f, size_t n);
const char *normalize_first_domain(lua_State *L, int cert); /* pushes it, or nothing */
void normalize_set_certificate(lua_State *L, int ev);       /* ev.certificate(s) = top; pops */
int normalize_push_joined(lua_State *L, int idx);           /* "a; b", or 0 and nothing */

/* Fill the event at ev from the decoded payload at raw: 0, or -1 with a message. */
int cloudflare_normalize(lua_State *L, int raw, int ev, char *err, size_t errlen);
int ibm_cm_normalize(lua_State *L, int raw, int ev, char *err, size_t errlen);

#endif
