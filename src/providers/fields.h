/*
 * fields.h -- what the provider normalizers share (fields.c); private to src/providers.
 *
 * Conventions: t, src, dst are absolute stack indices of tables; 0 means "none" (every
 * reader then yields nothing). Readers push the value they return; strings they return stay
 * valid while that value is on the stack.
 */
#ifndef CERTHOOK_FIELDS_H
#define CERTHOOK_FIELDS_H

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
    F_ID,    /* a non-empty string, or an integer as its decimal string */
};

struct field {
    const char *to, *from;
    enum field_kind kind;
};

int fields_has_prefix(const char *s, const char *p);
int fields_has_suffix(const char *s, const char *x);
int fields_get(lua_State *L, int t, const char *k);              /* pushes t[k]; its type */
int fields_get_table(lua_State *L, int t, const char *k);        /* index, or 0 (no push) */
const char *fields_get_string(lua_State *L, int t, const char *k); /* non-empty, or NULL */
int fields_epoch(lua_State *L, int idx, double *t);              /* 0 / -1 */
void fields_set_str(lua_State *L, int ev, const char *key, const char *value);
void fields_copy(lua_State *L, int dst, int src, const struct field *f, size_t n);
#define COPY(L, dst, src, fields) fields_copy(L, dst, src, fields, COUNT(fields))
/* Pushes the certificate the fields describe and returns its index; 0 when none is there. */
int fields_push_certificate(lua_State *L, int src, const struct field *f, size_t n);
const char *fields_first_domain(lua_State *L, int cert); /* pushes it, or nothing */
void fields_set_certificate(lua_State *L, int ev);       /* ev.certificate(s) = top; pops */
int fields_push_joined(lua_State *L, int idx);           /* "a; b", or 0 and nothing */

/* The normalize of a payload that is one event: pushes {event}, the event filled by
 * fill(L, raw, ev, err, errlen) (0, or -1 with err) and its raw the payload at raw. 0, or 400
 * with err and nothing pushed. */
typedef int (*fields_fill)(lua_State *L, int raw, int ev, char *err, size_t errlen);
int fields_one_event(lua_State *L, int raw, fields_fill fill, char *err, size_t errlen);

/* Samples (struct provider's sample): payload templates by canonical type. In a template,
 * {{id}} becomes a fresh random UUID, {{n}} a fresh random 9-digit number and {{time}} the
 * current time (RFC 3339, UTC), so that each sample is a new event. The samples' certificate
 * expires at the start of the UTC day SAMPLE_DAYS + 1 days from now -- SAMPLE_DAYS whole days
 * left all day, so that what samples say in days and in dates agrees -- or, in a sample of
 * certificate.expiration.reached, now: {{expires}} (RFC 3339), {{expires_epoch}} (seconds),
 * {{days}} (SAMPLE_DAYS). */
#define SAMPLE_DAYS 30
struct sample {
    const char *type, *body;
};
/* Pushes tmpl, placeholders filled, for a sample of the canonical type (NULL: none). */
void fields_push_filled(lua_State *L, const char *tmpl, const char *type);
/* The provider's sample op over a table of samples (the first of a type wins). */
int fields_sample(lua_State *L, const struct sample *s, size_t n, const char *type, char *err,
                  size_t errlen);
#define SAMPLE(L, samples, type, err, errlen) \
    fields_sample(L, samples, COUNT(samples), type, err, errlen)

/* Samples built from a provider's own parse tables (cloudflare.c, ibm_cm.c): a template of
 * what the sample says under the names events give it is filled and decoded, its parts put
 * into the payload under the provider's names (the field tables, read backwards), and the
 * payload encoded. */
void fields_push_decoded(lua_State *L, const char *tmpl, const char *type); /* filled; raises
                                                                             * if not JSON */
/* The inverse of fields_copy: dst[f.from] = src[f.to] for each field the table at src has
 * (src 0: none), as the provider sends it: an F_SPLIT array joined with ", ", any other value
 * as it is. */
void fields_put(lua_State *L, int dst, int src, const struct field *f, size_t n);
#define PUT(L, dst, src, fields) fields_put(L, dst, src, fields, COUNT(fields))
/* Replaces the payload table on top with its JSON text. 0, or -1 with err (popped). */
int fields_encode(lua_State *L, char *err, size_t errlen);
/* Appends type to the array at list unless it is there already (a sample op's list). */
void fields_add_type(lua_State *L, int list, const char *type);

#endif
