/*
 * source.c -- sources: a provider configured under a name (sources.<name> = {...}), read from
 * the configuration's Lua table with the settings readers below (config.c reads the rest of
 * the configuration with them too), and the whole path of a request body to finished
 * canonical events: JSON, the provider's authentication and normalization, then what every
 * event gets the same way -- id, source, provider, received_at, a hostname it can keep, the
 * expiry of its certificates where it is stated in days, and their canonical state.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <lauxlib.h>

#include "providers/provider.h"

#define FAIL(...) do { snprintf(err, errlen, __VA_ARGS__); return -1; } while (0)

/* ---- settings ------------------------------------------------------------------------------------ */

int setting_string(lua_State *L, int t, const char *k, char **out, const char *path, char *err,
                   size_t errlen)
{
    int type = lua_getfield(L, t, k);
    if (type == LUA_TNIL) {
        lua_pop(L, 1);
        return 0;
    }
    if (type != LUA_TSTRING || lua_rawlen(L, -1) == 0) {
        lua_pop(L, 1);
        FAIL("%s%s must be a non-empty string", path, k);
    }
    free(*out);
    *out = strdup(lua_tostring(L, -1));
    lua_pop(L, 1);
    if (*out == NULL)
        FAIL("out of memory");
    return 0;
}

int setting_number(lua_State *L, int t, const char *k, double min, double max, double *out,
                   const char *path, char *err, size_t errlen)
{
    int type = lua_getfield(L, t, k);
    double v = lua_tonumber(L, -1);
    lua_pop(L, 1);
    if (type == LUA_TNIL)
        return 0;
    if (type != LUA_TNUMBER || !(v >= min && v <= max))
        FAIL("%s%s must be a number from %g to %g", path, k, min, max);
    *out = v;
    return 0;
}

int setting_table(lua_State *L, int t, const char *k, int *idx, const char *path, char *err,
                  size_t errlen)
{
    int type = lua_getfield(L, t, k);
    *idx = 0;
    if (type == LUA_TNIL) {
        lua_pop(L, 1);
        return 0;
    }
    if (type != LUA_TTABLE) {
        lua_pop(L, 1);
        FAIL("%s%s must be a table", path, k);
    }
    *idx = lua_gettop(L);
    return 0;
}

int setting_strings(lua_State *L, int t, const char *k, const char *path,
                    int (*fn)(void *cls, const char *s, char *err, size_t errlen), void *cls,
                    char *err, size_t errlen)
{
    int top = lua_gettop(L), type = lua_getfield(L, t, k), rc = 0;
    if (type == LUA_TSTRING && lua_rawlen(L, -1) > 0) {
        rc = fn(cls, lua_tostring(L, -1), err, errlen);
    } else if (type == LUA_TTABLE && lua_rawlen(L, -1) > 0) {
        for (lua_Integer i = 1; rc == 0 && i <= (lua_Integer)lua_rawlen(L, top + 1); i++) {
            if (lua_rawgeti(L, top + 1, i) != LUA_TSTRING || lua_rawlen(L, -1) == 0) {
                snprintf(err, errlen, "%s%s[%lld] must be a non-empty string", path, k,
                         (long long)i);
                rc = -1;
                break;
            }
            rc = fn(cls, lua_tostring(L, -1), err, errlen);
            lua_pop(L, 1);
        }
    } else if (type != LUA_TNIL) {
        snprintf(err, errlen, "%s%s must be a non-empty string or a list of them", path, k);
        rc = -1;
    }
    lua_settop(L, top);
    return rc;
}

static int in_list(const char *const *list, const char *k)
{
    for (; list && *list; list++)
        if (strcmp(*list, k) == 0)
            return 1;
    return 0;
}

int setting_keys(lua_State *L, int t, const char *name, const char *const *keys, char *err,
                 size_t errlen)
{
    lua_pushnil(L);
    while (lua_next(L, t) != 0) { /* key, value */
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING || !in_list(keys, lua_tostring(L, -1))) {
            struct buf known;
            buf_init(&known);
            for (const char *const *p = keys; *p; p++)
                buf_printf(&known, "%s%s", p == keys ? "" : ", ", *p);
            if (lua_type(L, -1) == LUA_TSTRING)
                snprintf(err, errlen, "%s.%.60s is not a setting (those of %s are %s)", name,
                         lua_tostring(L, -1), name, known.p ? known.p : "");
            else
                snprintf(err, errlen, "%s has a key that is not a name (its settings are %s)",
                         name, known.p ? known.p : "");
            buf_free(&known);
            lua_pop(L, 1);
            return -1;
        }
    }
    return 0;
}

/* ---- sources ------------------------------------------------------------------------------------- */

static int valid_name(const char *s)
{
    if (*s == '\0')
        return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '-' || *s == '_' || *s == '.'))
            return 0;
    return 1;
}

int source_configure(lua_State *L, int t, const char *name, struct source *s, char *err,
                     size_t errlen)
{
    char path[160], names[200];
    const char *keys[16] = {"provider", "insecure"};
    int top = lua_gettop(L);
    memset(s, 0, sizeof *s);
    t = lua_absindex(L, t);
    if (!valid_name(name))
        FAIL("source names must be strings of letters, digits, '-', '_' or '.' (they are the "
             "path /hooks/<name>)");
    if ((s->name = strdup(name)) == NULL)
        FAIL("out of memory");
    snprintf(path, sizeof path, "sources.%s", name);
    if (lua_type(L, t) != LUA_TTABLE)
        FAIL("%s must be a table", path);
    if (lua_getfield(L, t, "provider") != LUA_TSTRING ||
        (s->provider = provider_find(lua_tostring(L, -1))) == NULL) {
        lua_settop(L, top);
        FAIL("%s.provider must be one of %s", path, provider_names(names, sizeof names, ", ", 0));
    }
    lua_pop(L, 1);
    size_t n = 2;
    for (const char *const *k = s->provider->settings; k && *k && n < 15; k++)
        keys[n++] = *k;
    keys[n] = NULL;
    if (setting_keys(L, t, path, keys, err, errlen) != 0)
        return -1;
    /* Only the boolean true opens a source: os.getenv("X") gives the string "false" */
    int type = lua_getfield(L, t, "insecure");
    s->insecure = type == LUA_TBOOLEAN && lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (type != LUA_TNIL && !s->insecure)
        FAIL("%s.insecure must be true (the boolean), or left out: it accepts requests "
             "without credentials", path);
    int rc = s->provider->configure(L, t, s, err, errlen);
    lua_settop(L, top);
    return rc;
}

void source_release(struct source *s)
{
    if (s->provider != NULL && s->provider->release != NULL)
        s->provider->release(s);
    free(s->name);
    free(s->label);
    memset(s, 0, sizeof *s);
}

/* ---- pollers ------------------------------------------------------------------------------------ */

int poller_configure(lua_State *L, int t, const char *name, struct poller_def *p, char *err,
                     size_t errlen)
{
    char path[160], names[200];
    const char *keys[24] = {"provider", "interval", "timeout", "max_pages", "rate", "first_run",
                            "api"};
    int top = lua_gettop(L);
    memset(p, 0, sizeof *p);
    t = lua_absindex(L, t);
    if (!valid_name(name))
        FAIL("poller names must be strings of letters, digits, '-', '_' or '.' (their events' "
             "source is poll:<name>)");
    snprintf(path, sizeof path, "pollers.%s", name);
    if ((p->name = strdup(name)) == NULL || (p->source = malloc(strlen(name) + 6)) == NULL)
        FAIL("out of memory");
    sprintf(p->source, "poll:%s", name);
    if (lua_type(L, t) != LUA_TTABLE)
        FAIL("%s must be a table", path);
    if (lua_getfield(L, t, "provider") != LUA_TSTRING ||
        (p->provider = provider_find(lua_tostring(L, -1))) == NULL ||
        p->provider->poll == NULL) {
        p->provider = NULL;
        lua_settop(L, top);
        FAIL("%s.provider must be one of %s (the providers that can be polled)", path,
             provider_names(names, sizeof names, ", ", 1));
    }
    lua_pop(L, 1);
    const struct poll_ops *ops = p->provider->poll;
    size_t n = 7;
    for (const char *const *k = ops->settings; k && *k && n < 23; k++)
        keys[n++] = *k;
    keys[n] = NULL;
    if (setting_keys(L, t, path, keys, err, errlen) != 0)
        return -1;
    snprintf(path, sizeof path, "pollers.%s.", name);
    p->interval = 300;
    p->timeout = 0;
    p->rate = ops->rate;
    char *first_run = NULL;
    double max_pages = 100;
    if (setting_number(L, t, "interval", 0.05, 7 * 86400, &p->interval, path, err, errlen) ||
        setting_number(L, t, "max_pages", 1, 1e6, &max_pages, path, err, errlen) ||
        setting_number(L, t, "rate", 0.001, 1000, &p->rate, path, err, errlen) ||
        setting_number(L, t, "timeout", 0.05, 86400, &p->timeout, path, err, errlen) ||
        setting_string(L, t, "first_run", &first_run, path, err, errlen) ||
        setting_string(L, t, "api", &p->api, path, err, errlen)) {
        free(first_run);
        return -1;
    }
    p->max_pages = (int)max_pages;
    if (p->timeout == 0) /* a run never outlasts its interval, and gets at least a minute */
        p->timeout = p->interval > 60 ? p->interval : 60;
    if (first_run != NULL && strcmp(first_run, "silent") != 0 && strcmp(first_run, "events") != 0) {
        free(first_run);
        FAIL("%sfirst_run must be \"silent\" (what the inventory never heard of is added "
             "quietly at the first run) or \"events\"", path);
    }
    p->first_run_events = first_run != NULL && strcmp(first_run, "events") == 0;
    free(first_run);
    if (p->api == NULL && (p->api = strdup(ops->api)) == NULL)
        FAIL("out of memory");
    if (strncmp(p->api, "https://", 8) != 0 && strncmp(p->api, "http://", 7) != 0)
        FAIL("%sapi must be an http:// or https:// URL (the API's base, e.g. %s)", path,
             ops->api);
    for (size_t k = strlen(p->api); k > 0 && p->api[k - 1] == '/'; k--)
        p->api[k - 1] = '\0';
    int rc = ops->configure(L, t, p, err, errlen);
    lua_settop(L, top);
    return rc;
}

void poller_release(struct poller_def *p)
{
    if (p->provider != NULL && p->provider->poll->release != NULL)
        p->provider->poll->release(p);
    free(p->name);
    free(p->source);
    free(p->api);
    memset(p, 0, sizeof *p);
}

void poll_request_free(struct poll_request *rq)
{
    buf_free(&rq->url);
    for (size_t i = 0; i < POLL_MAX_HEADERS; i++)
        buf_free(&rq->headers[i]);
    rq->nheaders = 0;
}

const char *source_provider(const struct source *s)
{
    return s->label != NULL ? s->label : s->provider->name;
}

const char *request_header(const struct request *rq, const char *name)
{
    return rq->header != NULL ? rq->header(rq, name) : NULL;
}

const char *request_query(const struct request *rq, const char *name)
{
    return rq->query != NULL ? rq->query(rq, name) : NULL;
}

/* The media type of ct (no parameters, no spaces) is want: n bytes. */
static int media_type_is(const char *ct, size_t n, const char *want)
{
    return strlen(want) == n && strncasecmp(ct, want, n) == 0;
}

int source_accepts(const struct source *s, const char *ct)
{
    if (ct == NULL)
        return 1;
    size_t n = strcspn(ct, ";");
    while (n > 0 && (ct[n - 1] == ' ' || ct[n - 1] == '\t'))
        n--;
    while (n > 0 && (*ct == ' ' || *ct == '\t'))
        ct++, n--;
    if (media_type_is(ct, n, "application/json") || media_type_is(ct, n, "text/json") ||
        (n > 17 && strncasecmp(ct, "application/", 12) == 0 &&
         strncasecmp(ct + n - 5, "+json", 5) == 0))
        return 1;
    for (const char *const *t = s->provider->content_types; t && *t; t++)
        if (media_type_is(ct, n, *t))
            return 1;
    return 0;
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

/* An expiry stated in days, or as a day (DESIGN §3): an event with IBM's expiry_date and no
 * count of days gets days_to_expiry (whole days from when it occurred, or was received, to that
 * day); each certificate of an event with either and without expires_at of its own gets one --
 * expiry_date, else that time plus the days -- and expires_at_approximate = true: it is right
 * to a day. */
static void expiry(lua_State *L, int ev, double received_at)
{
    int top = lua_gettop(L);
    double at = lua_getfield(L, ev, "occurred_at") == LUA_TNUMBER ? lua_tonumber(L, -1)
                                                                   : received_at;
    int has_day = lua_getfield(L, ev, "expiry_date") == LUA_TNUMBER;
    double day = lua_tonumber(L, -1);
    int has_days = lua_getfield(L, ev, "days_to_expiry") == LUA_TNUMBER;
    double days = lua_tonumber(L, -1);
    if (!has_days && has_day && fabs(day - at) < 1e15) {
        lua_pushinteger(L, (lua_Integer)round((day - at) / 86400));
        lua_setfield(L, ev, "days_to_expiry");
    }
    if ((has_day || has_days) && isfinite(days) &&
        lua_getfield(L, ev, "certificates") == LUA_TTABLE) {
        int certs = lua_gettop(L);
        for (lua_Integer i = 1; lua_rawgeti(L, certs, i) != LUA_TNIL; i++) {
            int c = lua_gettop(L);
            if (lua_type(L, c) == LUA_TTABLE && lua_getfield(L, c, "expires_at") == LUA_TNIL) {
                event_push_epoch(L, has_day ? day : at + days * 86400);
                lua_setfield(L, c, "expires_at");
                lua_pushboolean(L, 1);
                lua_setfield(L, c, "expires_at_approximate");
            }
            lua_settop(L, certs);
        }
    }
    lua_settop(L, top);
}

const char *const certificate_states[] = {
    "pending_validation", "pending_issuance", "pending_deployment", "active",
    "expired",            "revoked",          "deleted",            "failed",
    NULL,
};

/* The state an event's canonical type says its certificates are in; `decisive`: whatever
 * their status says (a status copied from the inventory may be older than the event). */
static const struct {
    const char *type, *state;
    int decisive;
} type_states[] = {
    {"certificate.deletion.succeeded", "deleted", 1},
    {"certificate.expiration.reached", "expired", 1},
    {"certificate.revocation.succeeded", "revoked", 1},
    {"certificate.validation.required", "pending_validation", 0},
    {"certificate.validation.failed", "pending_validation", 0}, /* it is tried again */
    {"certificate.validation.succeeded", "pending_issuance", 0},
    {"certificate.issuance.succeeded", "active", 0},
    {"certificate.issuance.failed", "failed", 0},
    {"certificate.deployment.succeeded", "active", 0},
    {"certificate.deployment.failed", "failed", 0},
    {"certificate.renewal.succeeded", "active", 0},
    {"certificate.import.succeeded", "active", 0},
};

/* The canonical state a status word means: a state's own name (any case), else what the
 * provider's table says (p NULL: none); NULL when neither. */
static const char *state_of(const struct provider *p, const char *status)
{
    for (const char *const *s = certificate_states; status && *s; s++)
        if (strcasecmp(*s, status) == 0)
            return *s;
    for (const struct status_state *w = p ? p->states : NULL; status && w && w->status; w++)
        if (strcasecmp(w->status, status) == 0)
            return w->state;
    return NULL;
}

/* certificate.state of each certificate of the event at ev (DESIGN §3), in this order: what a
 * decisive type says; a canonical state the certificate has already (a Lua provider's, the
 * watchdog's copy of the inventory's); what its status means to the provider p -- the
 * certificate's status, else for the first one the event's status.to, which the inventory
 * keeps as its status; what the type says. None of them: no state (the inventory keeps the
 * one it knew). */
static void certificate_state(lua_State *L, int ev, const struct provider *p)
{
    int top = lua_gettop(L), decisive = 0;
    const char *type = lua_getfield(L, ev, "type") == LUA_TSTRING ? lua_tostring(L, -1) : "";
    const char *by_type = NULL, *to = NULL;
    for (size_t i = 0; i < sizeof type_states / sizeof type_states[0]; i++)
        if (strcmp(type, type_states[i].type) == 0)
            by_type = type_states[i].state, decisive = type_states[i].decisive;
    if (lua_getfield(L, ev, "status") == LUA_TTABLE && lua_getfield(L, -1, "to") == LUA_TSTRING)
        to = lua_tostring(L, -1);
    if (lua_getfield(L, ev, "certificates") != LUA_TTABLE) {
        lua_settop(L, top);
        return;
    }
    int certs = lua_gettop(L);
    for (lua_Integer i = 1; lua_rawgeti(L, certs, i) != LUA_TNIL; i++) {
        int c = lua_gettop(L);
        if (lua_type(L, c) == LUA_TTABLE) {
            const char *state = decisive ? by_type : NULL;
            if (state == NULL && lua_getfield(L, c, "state") == LUA_TSTRING)
                state = state_of(NULL, lua_tostring(L, -1));
            if (state == NULL)
                state = state_of(p, lua_getfield(L, c, "status") == LUA_TSTRING
                                        ? lua_tostring(L, -1)
                                        : i == 1 ? to : NULL);
            if (state == NULL)
                state = by_type;
            lua_pushstring(L, state); /* NULL: nil */
            lua_setfield(L, c, "state");
        }
        lua_settop(L, certs);
    }
    lua_settop(L, top);
}

/* What every event of the request gets the same way: the event at ev is the i-th of n. */
static void finish(lua_State *L, int ev, const struct source *s, const struct request *rq,
                   lua_Integer i, lua_Integer n)
{
    size_t len;
    int top = lua_gettop(L);
    if (lua_getfield(L, ev, "id") != LUA_TSTRING) {
        struct buf id;
        buf_init(&id);
        event_hash_id(s->name, rq->body, rq->body_len, &id);
        if (n > 1)
            buf_printf(&id, ":%lld", (long long)i);
        lua_pushlstring(L, id.p ? id.p : "", id.n);
        lua_setfield(L, ev, "id");
        buf_free(&id);
    }
    const char *host = lua_getfield(L, ev, "hostname") == LUA_TSTRING
                           ? lua_tolstring(L, -1, &len)
                           : NULL;
    if (host != NULL && !valid_hostname(host, len)) { /* raw keeps what was sent */
        lua_pushnil(L);
        lua_setfield(L, ev, "hostname");
    }
    lua_pushstring(L, s->name);
    lua_setfield(L, ev, "source");
    lua_pushstring(L, source_provider(s));
    lua_setfield(L, ev, "provider");
    event_push_epoch(L, rq->received_at);
    lua_setfield(L, ev, "received_at");
    expiry(L, ev, rq->received_at);
    certificate_state(L, ev, s->provider);
    lua_settop(L, top);
}

/* ---- CloudEvents in binary content mode (CloudEvents HTTP protocol binding 1.0 §3.1) ---------- */

/* The ce-* headers of a request, "attribute\0value\0" each: the attribute in lower case, the
 * value percent-decoded (§3.1.3.2). Collected before the Lua table is made: a memory error
 * there must not unwind through intake's iteration. */
struct ce_headers {
    struct buf b;
    int n, failed;
};

static void add_byte(struct ce_headers *h, int c)
{
    char ch = (char)c;
    h->failed |= buf_add(&h->b, &ch, 1) != 0;
}

static void collect_ce(void *cls, const char *name, const char *value)
{
    struct ce_headers *h = cls;
    if (strncasecmp(name, "ce-", 3) != 0 || name[3] == '\0')
        return;
    h->n++;
    for (const char *c = name + 3; *c; c++)
        add_byte(h, *c >= 'A' && *c <= 'Z' ? *c + 32 : *c);
    add_byte(h, '\0');
    for (const char *c = value; *c; c++) {
        int hi = *c == '%' ? hex_digit(c[1]) : -1, lo = hi >= 0 ? hex_digit(c[2]) : -1;
        if (lo >= 0 && (hi | lo) != 0) { /* %00 stays as sent: C strings end at NUL */
            add_byte(h, hi << 4 | lo);
            c += 2;
        } else {
            add_byte(h, *c);
        }
    }
    add_byte(h, '\0');
}

/* When rq is a CloudEvent in binary content mode -- ce-* headers, and neither an event format's
 * Content-Type (application/cloudevents..., structured mode) nor a body that is itself a
 * structured event (sent as application/json) -- pushes its structured form, the decoded body
 * at data its data, and sets *event to its index. 0 (also when it is not one: *event unset),
 * or a status with err and nothing pushed. */
static int push_binary_event(lua_State *L, int data, const struct request *rq, int *event,
                             char *err, size_t errlen)
{
    static const char *const required[] = {"specversion", "id", "source", "type"};
    const char *ct = request_header(rq, "Content-Type");
    if (rq->each == NULL || (ct != NULL && strncasecmp(ct, "application/cloudevents", 23) == 0))
        return 0;
    int structured = 0;
    if (lua_type(L, data) == LUA_TTABLE) {
        structured = lua_getfield(L, data, "specversion") == LUA_TSTRING;
        lua_pop(L, 1);
    }
    struct ce_headers h = {.n = 0};
    buf_init(&h.b);
    if (!structured)
        rq->each(rq, 0, collect_ce, &h);
    if (h.n == 0 || h.failed) {
        buf_free(&h.b);
        if (h.failed)
            snprintf(err, errlen, "out of memory");
        return h.failed ? 503 : 0;
    }
    lua_createtable(L, 0, h.n + 2);
    int t = lua_gettop(L);
    for (size_t at = 0; at < h.b.n;) {
        const char *name = h.b.p + at, *value = name + strlen(name) + 1;
        lua_pushstring(L, value);
        lua_setfield(L, t, name);
        at = (size_t)(value + strlen(value) + 1 - h.b.p);
    }
    buf_free(&h.b);
    struct buf missing;
    buf_init(&missing);
    for (size_t i = 0; i < sizeof required / sizeof required[0]; i++) {
        if (lua_getfield(L, t, required[i]) != LUA_TSTRING || lua_rawlen(L, -1) == 0)
            buf_printf(&missing, "%sce-%s", missing.n ? ", " : "", required[i]);
        lua_pop(L, 1);
    }
    if (missing.n > 0) {
        snprintf(err, errlen, "a CloudEvent in binary content mode (ce-* headers) needs the "
                              "headers ce-specversion, ce-id, ce-source and ce-type; this one "
                              "lacks %s", missing.p);
        buf_free(&missing);
        lua_settop(L, t - 1);
        return 400;
    }
    if (ct != NULL) {
        lua_pushstring(L, ct);
        lua_setfield(L, t, "datacontenttype");
    }
    lua_pushvalue(L, data);
    lua_setfield(L, t, "data");
    *event = t;
    return 0;
}

/* ---- the whole request --------------------------------------------------------------------------- */

int source_normalize(lua_State *L, const struct source *s, const struct request *rq,
                     struct reply *r, char *err, size_t errlen)
{
    char msg[400];
    int top = lua_gettop(L);
    r->status = 0;
    if (json_decode(L, rq->body ? rq->body : "", rq->body_len, msg, sizeof msg) != 0) {
        snprintf(err, errlen, "invalid JSON: %s", msg);
        return 400;
    }
    if (json_fixup(L, -1) != 0) { /* the journal and C code would cut such strings short */
        lua_settop(L, top);
        snprintf(err, errlen, "a string in the payload holds a NUL byte (\\u0000)");
        return 400;
    }
    int body = lua_gettop(L), in = body, status = 0;
    if (s->provider->cloudevents)
        status = push_binary_event(L, body, rq, &in, err, errlen);
    if (status == 0)
        status = s->provider->normalize(L, in, s, rq, r, err, errlen);
    if (status != 0 || r->status != 0) {
        lua_settop(L, top);
        return status;
    }
    if (in != body) /* events keep the structured form as raw; its data is the body */
        lua_remove(L, in);
    int list = lua_gettop(L);
    lua_Integer n = (lua_Integer)lua_rawlen(L, list);
    if (!lua_istable(L, list) || n == 0) {
        lua_settop(L, top);
        snprintf(err, errlen, "the payload holds no event");
        return 400;
    }
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, list, i);
        finish(L, lua_gettop(L), s, rq, i, n);
        lua_pop(L, 1);
    }
    return 0;
}
