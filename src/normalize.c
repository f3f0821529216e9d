/*
 * normalize.c -- the canonical event (DESIGN §2-3): entry points and what every provider
 * normalizer shares.
 *
 * Input: the payload as lua-cjson decoded it (Cloudflare: the body; IBM: the JWT claims),
 * fixed up by normalize_fixup. normalize_push picks the provider's normalizer (cloudflare.c,
 * ibm_cm.c), which reads the payload and fills the event through the helpers below: absent
 * facts stay nil -- JSON nulls, empty strings and values of the wrong type are never copied.
 * normalize_body is the whole path from a request body to an event (JSON, JWT via auth.c,
 * normalization, id); intake.c and the CLI both use it. Dates go through api_time.c.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <openssl/evp.h>

#include "certhook.h"
#include "normalize.h"

const char *provider_name(enum provider p)
{
    switch (p) {
    case PROVIDER_CLOUDFLARE: return "cloudflare";
    case PROVIDER_IBM_CM: return "ibm-cm";
    default: return NULL;
    }
}

enum provider provider_parse(const char *s)
{
    if (strcmp(s, "cloudflare") == 0)
        return PROVIDER_CLOUDFLARE;
    if (strcmp(s, "ibm-cm") == 0)
        return PROVIDER_IBM_CM;
    return PROVIDER_NONE;
}

/* ---- helpers for the provider normalizers --------------------------------------------- */

int normalize_has_prefix(const char *s, const char *p)
{
    return strncmp(s, p, strlen(p)) == 0;
}

int normalize_has_suffix(const char *s, const char *x)
{
    size_t n = strlen(s), m = strlen(x);
    return n >= m && strcmp(s + n - m, x) == 0;
}

/* Pushes t[k], or nil when t (an absolute index; 0 = none) is not a table. Returns its type. */
int normalize_get(lua_State *L, int t, const char *k)
{
    if (t == 0 || lua_type(L, t) != LUA_TTABLE) {
        lua_pushnil(L);
        return LUA_TNIL;
    }
    return lua_getfield(L, t, k);
}

/* Pushes t[k] if it is a table and returns its absolute index; else pushes nothing, 0. */
int normalize_get_table(lua_State *L, int t, const char *k)
{
    if (normalize_get(L, t, k) == LUA_TTABLE)
        return lua_gettop(L);
    lua_pop(L, 1);
    return 0;
}

/* Pushes t[k] if it is a non-empty string and returns it; else pushes nothing, NULL. */
const char *normalize_get_string(lua_State *L, int t, const char *k)
{
    size_t n;
    if (normalize_get(L, t, k) == LUA_TSTRING) {
        const char *s = lua_tolstring(L, -1, &n);
        if (n > 0)
            return s;
    }
    lua_pop(L, 1);
    return NULL;
}

/* Epoch seconds from a provider timestamp at idx: an ISO 8601 string, or a number (epoch
 * milliseconds when >= 1e11, which as seconds would be past the year 5000). */
int normalize_epoch(lua_State *L, int idx, double *t)
{
    if (lua_type(L, idx) == LUA_TNUMBER) {
        double v = lua_tonumber(L, idx);
        if (!isfinite(v))
            return -1;
        *t = v >= 1e11 ? v / 1000 : v;
        return 0;
    }
    if (lua_type(L, idx) == LUA_TSTRING) {
        const char *s = lua_tostring(L, idx);
        char *end;
        double v = strtod(s, &end);
        if (*s >= '0' && *s <= '9' && *end == '\0' && isfinite(v)) {
            *t = v >= 1e11 ? v / 1000 : v;
            return 0;
        }
        return time_parse_iso8601(s, t);
    }
    return -1;
}

void normalize_set_str(lua_State *L, int ev, const char *key, const char *value)
{
    if (value != NULL && *value != '\0') {
        lua_pushstring(L, value);
        lua_setfield(L, ev, key);
    }
}

/* Pushes an array of the non-empty strings of the array at idx (0: none); returns how many. */
static int push_string_array(lua_State *L, int idx)
{
    int n = 0;
    lua_newtable(L);
    if (idx == 0)
        return 0;
    for (lua_Integer i = 1;; i++) {
        int t = lua_rawgeti(L, idx, i);
        if (t == LUA_TNIL) {
            lua_pop(L, 1);
            break;
        }
        if (t == LUA_TSTRING && lua_rawlen(L, -1) > 0)
            lua_rawseti(L, -2, ++n);
        else
            lua_pop(L, 1);
    }
    return n;
}

/* Pushes the trimmed, non-empty parts of a comma-separated list; returns how many. */
static int push_split(lua_State *L, const char *s)
{
    int n = 0;
    lua_newtable(L);
    while (s != NULL && *s) {
        const char *end = strchr(s, ',');
        const char *stop = end ? end : s + strlen(s);
        while (s < stop && (*s == ' ' || *s == '\t'))
            s++;
        const char *e = stop;
        while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
            e--;
        if (e > s) {
            lua_pushlstring(L, s, (size_t)(e - s));
            lua_rawseti(L, -2, ++n);
        }
        s = end ? end + 1 : NULL;
    }
    return n;
}

/* dst[f.to] = src[f.from], converted, for each field present with the right type (src 0:
 * none). Absent, null, empty or mistyped values are left out. */
void normalize_copy_fields(lua_State *L, int dst, int src, const struct field *f, size_t n)
{
    for (size_t i = 0; i < n; i++, f++) {
        int top = lua_gettop(L), type = normalize_get(L, src, f->from);
        double t;
        switch (f->kind) {
        case F_STR:
            if (type != LUA_TSTRING || lua_rawlen(L, -1) == 0)
                goto skip;
            break;
        case F_TIME:
            if (normalize_epoch(L, -1, &t) != 0)
                goto skip;
            time_push_epoch(L, t);
            break;
        case F_BOOL:
            if (type != LUA_TBOOLEAN)
                goto skip;
            break;
        case F_TABLE:
            if (type != LUA_TTABLE)
                goto skip;
            break;
        case F_LIST:
            if (push_string_array(L, type == LUA_TTABLE ? top + 1 : 0) == 0)
                goto skip;
            break;
        case F_SPLIT:
            if (push_split(L, type == LUA_TSTRING ? lua_tostring(L, -1) : NULL) == 0)
                goto skip;
            break;
        }
        lua_setfield(L, dst, f->to);
    skip:
        lua_settop(L, top);
    }
}

const char *normalize_first_domain(lua_State *L, int cert)
{
    if (lua_getfield(L, cert, "domains") == LUA_TTABLE) {
        lua_rawgeti(L, -1, 1);
        lua_remove(L, -2);
        if (lua_type(L, -1) == LUA_TSTRING)
            return lua_tostring(L, -1);
    }
    lua_pop(L, 1);
    return NULL;
}

/* Sets ev.certificates = {cert} and ev.certificate = cert; pops cert. */
void normalize_set_certificate(lua_State *L, int ev)
{
    lua_createtable(L, 1, 0);
    lua_pushvalue(L, -2);
    lua_rawseti(L, -2, 1);
    lua_setfield(L, ev, "certificates");
    lua_setfield(L, ev, "certificate");
}

/* Joins the strings of the array at idx with "; "; pushes the result and returns 1, or
 * pushes nothing and returns 0 when there is none. In a buffer, not on the stack: a payload
 * may list more strings than the Lua stack holds (a stack overflow here is a Lua panic). */
int normalize_push_joined(lua_State *L, int idx)
{
    luaL_Buffer b;
    idx = lua_absindex(L, idx);
    if (lua_rawgeti(L, idx, 1) != LUA_TSTRING) {
        lua_pop(L, 1);
        return 0;
    }
    lua_pop(L, 1);
    luaL_buffinit(L, &b);
    for (lua_Integer i = 1;; i++) { /* the stack is balanced between the buffer calls */
        if (lua_rawgeti(L, idx, i) != LUA_TSTRING) {
            lua_pop(L, 1);
            break;
        }
        luaL_addvalue(&b); /* pops the string */
        luaL_addlstring(&b, "; ", 2);
    }
    luaL_buffsub(&b, 2); /* the last "; " */
    luaL_pushresult(&b);
    return 1;
}

/* Pushes the certificate described by the fields of src; returns its index, or pushes
 * nothing and returns 0 when none of them is present. */
int normalize_push_certificate(lua_State *L, int src, const struct field *f, size_t n)
{
    lua_newtable(L);
    int c = lua_gettop(L);
    normalize_copy_fields(L, c, src, f, n);
    lua_pushnil(L);
    if (lua_next(L, c) == 0) {
        lua_pop(L, 1);
        return 0;
    }
    lua_settop(L, c);
    return c;
}

/* Whether s is a hostname certhook keeps: at most 253 bytes of dot-separated labels of 1 to 63
 * bytes (a final dot allowed), each made of ASCII letters, digits, '-' (not first or last),
 * '_' and '*', or non-ASCII characters in valid UTF-8 (internationalized names as sent). */
static int valid_hostname(const char *s, size_t n)
{
    size_t label = 0, len;
    unsigned cp;
    if (n == 0 || n > 253 || s[0] == '.')
        return 0;
    for (size_t i = 0; i < n; i += len) {
        if ((len = buf_utf8_next(s + i, n - i, &cp)) == 0)
            return 0;
        if (cp == '.') {
            if (label == 0 || s[i - 1] == '-')
                return 0;
            label = 0;
            continue;
        }
        if (!((cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || (cp >= '0' && cp <= '9') ||
              cp == '_' || cp == '*' || (cp == '-' && label > 0) || cp >= 0xa0))
            return 0;
        if ((label += len) > 63)
            return 0;
    }
    return label == 0 || s[n - 1] != '-';
}

/* ---- entry points ----------------------------------------------------------------------------- */

int normalize_push(lua_State *L, enum provider p, int raw, char *err, size_t errlen)
{
    raw = lua_absindex(L, raw);
    int top = lua_gettop(L);
    luaL_checkstack(L, 80, "normalize");
    lua_createtable(L, 0, 24);
    int ev = lua_gettop(L);
    int rc = -1;
    if (p == PROVIDER_CLOUDFLARE)
        rc = cloudflare_normalize(L, raw, ev, err, errlen);
    else if (p == PROVIDER_IBM_CM)
        rc = ibm_cm_normalize(L, raw, ev, err, errlen);
    else
        snprintf(err, errlen, "unknown provider");
    if (rc != 0) {
        lua_settop(L, top);
        return -1;
    }
    lua_settop(L, ev);
    size_t n;
    const char *host = lua_getfield(L, ev, "hostname") == LUA_TSTRING ? lua_tolstring(L, -1, &n)
                                                                        : NULL;
    if (host != NULL && !valid_hostname(host, n)) { /* raw keeps what was sent */
        lua_pushnil(L);
        lua_setfield(L, ev, "hostname");
    }
    lua_settop(L, ev);
    normalize_set_str(L, ev, "provider", provider_name(p));
    lua_pushvalue(L, raw);
    lua_setfield(L, ev, "raw");
    return 0;
}

/* 1 if the string at idx holds a NUL byte. */
static int has_nul(lua_State *L, int idx)
{
    size_t n;
    const char *s = lua_tolstring(L, idx, &n);
    return memchr(s, '\0', n) != NULL;
}

int normalize_fixup(lua_State *L, int idx)
{
    int nuls = 0;
    idx = lua_absindex(L, idx);
    if (lua_type(L, idx) != LUA_TTABLE)
        return lua_type(L, idx) == LUA_TSTRING && has_nul(L, idx);
    luaL_checkstack(L, 4, "JSON nesting");
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) { /* key, value */
        if (lua_type(L, -2) == LUA_TSTRING)
            nuls += has_nul(L, -2);
        switch (lua_type(L, -1)) {
        case LUA_TSTRING:
            nuls += has_nul(L, -1);
            break;
        case LUA_TLIGHTUSERDATA: /* cjson.null */
            if (lua_touserdata(L, -1) == NULL && lua_type(L, -2) == LUA_TSTRING) {
                lua_pushvalue(L, -2);
                lua_pushnil(L);
                lua_rawset(L, idx); /* clearing a field during traversal is allowed */
            }
            break;
        case LUA_TNUMBER:
            if (!lua_isinteger(L, -1)) {
                double v = lua_tonumber(L, -1);
                if (!isfinite(v)) { /* 1e309 decodes as inf: no JSON, no date, no handler */
                    lua_pushvalue(L, -2);
                    if (lua_type(L, -1) == LUA_TSTRING)
                        lua_pushnil(L); /* absent, as a JSON null member */
                    else
                        lua_pushlightuserdata(L, NULL); /* in an array: cjson.null */
                    lua_rawset(L, idx);
                } else if (v == floor(v) && fabs(v) < 9007199254740992.0) {
                    lua_pushvalue(L, -2);
                    lua_pushinteger(L, (lua_Integer)v);
                    lua_rawset(L, idx); /* assigning an existing field is allowed */
                }
            }
            break;
        case LUA_TTABLE:
            nuls += normalize_fixup(L, -1);
            break;
        }
        lua_pop(L, 1);
    }
    return nuls;
}

enum provider normalize_detect(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    enum provider p = PROVIDER_NONE;
    if (lua_type(L, idx) != LUA_TTABLE)
        return p;
    int top = lua_gettop(L);
    const char *data = normalize_get_string(L, idx, "data");
    const char *et = data ? NULL : normalize_get_string(L, idx, "event_type");
    if (data != NULL) {
        const char *dot = strchr(data, '.');
        if (dot != NULL && strchr(dot + 1, '.') != NULL)
            p = PROVIDER_IBM_CM; /* {"data": "<JWT>"} */
    } else if (et != NULL || normalize_get_string(L, idx, "instance_crn") ||
               normalize_get_table(L, idx, "expiring_certificates")) {
        p = PROVIDER_IBM_CM;
    } else if (normalize_get_table(L, idx, "metadata") || normalize_get_string(L, idx, "alert_type") ||
               normalize_get_string(L, idx, "text")) {
        p = PROVIDER_CLOUDFLARE;
    } else {
        int d = normalize_get_table(L, idx, "data");
        if (d && normalize_get_table(L, d, "metadata"))
            p = PROVIDER_CLOUDFLARE;
    }
    lua_settop(L, top);
    return p;
}

static int is_jwt(const char *s)
{
    const char *dot = strchr(s, '.');
    return dot != NULL && strchr(dot + 1, '.') != NULL;
}

/* The JWT claims at idx are within their lifetime at now (RFC 7519 §4.1.4-6): not past exp,
 * not before nbf, not issued in the future, each give or take src->leeway seconds, and not
 * older than src->max_age when set. Absent claims are not checked. 0, or -1 with a message. */
static int check_times(lua_State *L, int idx, const struct source *src, double now, char *err,
                       size_t errlen)
{
    static const char *const names[] = {"exp", "nbf", "iat"};
    char when[40];
    for (int i = 0; i < 3; i++) {
        int type = normalize_get(L, idx, names[i]);
        double t = lua_tonumber(L, -1);
        lua_pop(L, 1);
        if (type == LUA_TNIL)
            continue;
        if (type != LUA_TNUMBER || !isfinite(t)) {
            snprintf(err, errlen, "the JWT's %s is not a NumericDate", names[i]);
            return -1;
        }
        time_format_iso8601(t, when);
        if (i == 0 && now > t + src->leeway)
            snprintf(err, errlen, "the JWT expired at %s (exp; sources.%s.leeway is %g s)", when,
                     src->name, src->leeway);
        else if (i > 0 && t > now + src->leeway)
            snprintf(err, errlen, "the JWT is %s %s, in the future (%s; sources.%s.leeway is "
                     "%g s)", i == 1 ? "not valid before" : "issued at", when, names[i],
                     src->name, src->leeway);
        else if (i == 2 && src->max_age > 0 && now > t + src->max_age + src->leeway)
            snprintf(err, errlen, "the JWT was issued at %s, more than sources.%s.max_age (%g s) "
                     "ago (leeway %g s)", when, src->name, src->max_age, src->leeway);
        else
            continue;
        return -1;
    }
    return 0;
}

int normalize_body(lua_State *L, const struct source *src, const char *body, size_t n,
                   double received_at, char **claims, size_t *claims_len, char *err,
                   size_t errlen)
{
    char msg[400];
    int top = lua_gettop(L);
    *claims = NULL;
    *claims_len = 0;
    if (module_decode(L, body, n, msg, sizeof msg) != 0) {
        snprintf(err, errlen, "invalid JSON: %s", msg);
        return 400;
    }
    if (src->provider == PROVIDER_IBM_CM) {
        const char *jwt = lua_istable(L, -1) ? normalize_get_string(L, top + 1, "data") : NULL;
        if (jwt != NULL && is_jwt(jwt)) {
            if (src->keys == NULL && !src->insecure) {
                snprintf(err, errlen, "source %s has no public key", src->name);
                goto unauthorized;
            }
            if (auth_jwt_verify(L, src->keys, jwt, lua_rawlen(L, -1), claims, claims_len, err,
                                errlen) != 0)
                goto unauthorized;
            lua_settop(L, top);
            if (module_decode(L, *claims, *claims_len, msg, sizeof msg) != 0) {
                snprintf(err, errlen, "the JWT payload is not JSON: %s", msg);
                goto bad;
            }
            if (src->check_times && check_times(L, -1, src, received_at, err, errlen) != 0)
                goto unauthorized;
        } else if (!src->insecure) {
            snprintf(err, errlen,
                     "source %s accepts only signed notifications: the body must be "
                     "{\"data\": \"<JWT>\"} signed with the Certificate Manager instance key",
                     src->name);
            goto unauthorized;
        } else {
            lua_settop(L, top + 1);
        }
    }
    if (normalize_fixup(L, -1) != 0) { /* the journal and C code would cut such strings short */
        snprintf(err, errlen, "a string in the payload holds a NUL byte (\\u0000)");
        goto bad;
    }
    if (normalize_push(L, src->provider, -1, err, errlen) != 0)
        goto bad;
    lua_remove(L, -2); /* the raw payload: it is event.raw now */
    if (lua_getfield(L, -1, "id") == LUA_TNIL) {
        struct buf id;
        buf_init(&id);
        normalize_hash_id(src->name, body, n, &id);
        lua_pushlstring(L, id.p, id.n);
        lua_setfield(L, -3, "id");
        buf_free(&id);
    }
    lua_pop(L, 1);
    lua_pushstring(L, src->name);
    lua_setfield(L, -2, "source");
    time_push_epoch(L, received_at);
    lua_setfield(L, -2, "received_at");
    return 0;
unauthorized:
    lua_settop(L, top);
    free(*claims);
    *claims = NULL;
    return 401;
bad:
    lua_settop(L, top);
    free(*claims);
    *claims = NULL;
    return 400;
}

void normalize_hash_id(const char *source, const char *body, size_t n, struct buf *out)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_Digest(body, n, md, &len, EVP_sha256(), NULL);
    buf_printf(out, "%s:sha256:", source);
    for (unsigned int i = 0; i < len; i++)
        buf_printf(out, "%02x", md[i]);
}

int normalize_glob(const char *p, const char *s)
{
    const char *star = NULL, *resume = NULL;
    while (*s) {
        if (*p == '*') {
            star = ++p;
            resume = s;
        } else if (*p == *s) {
            p++, s++;
        } else if (star) {
            p = star;
            s = ++resume;
        } else {
            return 0;
        }
    }
    while (*p == '*')
        p++;
    return *p == '\0';
}
