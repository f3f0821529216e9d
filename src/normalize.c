/*
 * normalize.c -- provider/version detection and the canonical event (DESIGN §2-3).
 *
 * Input: the payload as lua-cjson decoded it (Cloudflare: the body; IBM: the JWT claims),
 * fixed up by normalize_fixup. Output: the event table handlers receive. Absent facts stay
 * nil: JSON nulls, empty strings and values of the wrong type are never copied. Shapes are
 * recognized by structure, types are mapped by the tables below; anything else from an
 * authenticated source is `unknown` with provider_type kept. Uses api_time.c for dates.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <openssl/evp.h>

#include "certhook.h"

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

/* ---- type tables ------------------------------------------------------------------------ */

/* Cloudflare ssl.<family>.<rest>: rest -> canonical; from/to: the certificate status
 * transition the SSL for SaaS docs define for the event (from == to: "remains in"). */
static const struct {
    const char *rest, *type, *from, *to;
} cf_types[] = {
    {"validation.succeeded", "certificate.validation.succeeded", "pending_validation", "pending_issuance"},
    {"validation.failed", "certificate.validation.failed", "pending_validation", "pending_validation"},
    {"issuance.succeeded", "certificate.issuance.succeeded", NULL, "pending_deployment"},
    {"issuance.failed", "certificate.issuance.failed", "pending_issuance", "pending_issuance"},
    {"deployment.succeeded", "certificate.deployment.succeeded", "pending_deployment", "active"},
    {"deployment.failed", "certificate.deployment.failed", "pending_deployment", "pending_deployment"},
    {"deletion.succeeded", "certificate.deletion.succeeded", "pending_deletion", "deleted"},
    {"deletion.failed", "certificate.deletion.failed", "pending_deletion", "pending_deletion"},
    {"renewal.succeeded", "certificate.renewal.succeeded", "active", "pending_deployment"},
    {"renewal.failed", "certificate.renewal.failed", "active", "pending_issuance"},
    {"renewal.upcoming_certificate_expiration_notification", "certificate.expiration.upcoming", NULL, NULL},
};

static const char *const cf_families[] = {
    "ssl.custom_hostname_certificate.", "ssl.certificate.", "ssl.dedicated_certificate.",
};

static const struct {
    const char *provider_type, *type;
} ibm_types[] = {
    {"cert_domain_validation_required", "certificate.validation.required"},
    {"cert_domain_validation_completed", "certificate.validation.succeeded"},
    {"cert_issued", "certificate.issuance.succeeded"},
    {"cert_order_failed", "certificate.issuance.failed"},
    {"cert_renewed", "certificate.renewal.succeeded"},
    {"cert_renew_failed", "certificate.renewal.failed"},
    {"cert_about_to_expire_renew_required", "certificate.expiration.upcoming"},
    {"cert_about_to_expire_reimport_required", "certificate.expiration.upcoming"},
    {"cert_expired_renew_required", "certificate.expiration.reached"},
    {"cert_expired_reimport_required", "certificate.expiration.reached"},
    {"cert_reimported", "certificate.import.succeeded"},
    {"cert_issued_not_downloaded", "certificate.download.pending"},
    {"cert_renewed_not_downloaded", "certificate.download.pending"},
    {"test_notification_channel", "notification.test"},
};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static int has_prefix(const char *s, const char *p)
{
    return strncmp(s, p, strlen(p)) == 0;
}

static int has_suffix(const char *s, const char *x)
{
    size_t n = strlen(s), m = strlen(x);
    return n >= m && strcmp(s + n - m, x) == 0;
}

/* ---- reading the decoded payload ------------------------------------------------------------- */

/* Pushes t[k], or nil when t (an absolute index; 0 = none) is not a table. Returns its type. */
static int get(lua_State *L, int t, const char *k)
{
    if (t == 0 || lua_type(L, t) != LUA_TTABLE) {
        lua_pushnil(L);
        return LUA_TNIL;
    }
    return lua_getfield(L, t, k);
}

/* Pushes t[k] if it is a table and returns its absolute index; else pushes nothing, 0. */
static int get_table(lua_State *L, int t, const char *k)
{
    if (get(L, t, k) == LUA_TTABLE)
        return lua_gettop(L);
    lua_pop(L, 1);
    return 0;
}

/* Pushes t[k] if it is a non-empty string and returns it; else pushes nothing, NULL. */
static const char *get_string(lua_State *L, int t, const char *k)
{
    size_t n;
    if (get(L, t, k) == LUA_TSTRING) {
        const char *s = lua_tolstring(L, -1, &n);
        if (n > 0)
            return s;
    }
    lua_pop(L, 1);
    return NULL;
}

/* Epoch seconds from a provider timestamp at idx: an ISO 8601 string, or a number (epoch
 * milliseconds when >= 1e11, which as seconds would be past the year 5000). */
static int epoch_of(lua_State *L, int idx, double *t)
{
    if (lua_type(L, idx) == LUA_TNUMBER) {
        double v = lua_tonumber(L, idx);
        *t = v >= 1e11 ? v / 1000 : v;
        return 0;
    }
    if (lua_type(L, idx) == LUA_TSTRING) {
        const char *s = lua_tostring(L, idx);
        char *end;
        double v = strtod(s, &end);
        if (*s >= '0' && *s <= '9' && *end == '\0') {
            *t = v >= 1e11 ? v / 1000 : v;
            return 0;
        }
        return time_parse_iso8601(s, t);
    }
    return -1;
}

/* ---- writing the event ----------------------------------------------------------------------- */

static void set_str(lua_State *L, int ev, const char *key, const char *value)
{
    if (value != NULL && *value != '\0') {
        lua_pushstring(L, value);
        lua_setfield(L, ev, key);
    }
}

/* ev[key] = t[k] when that is a non-empty string */
static void copy_str(lua_State *L, int ev, const char *key, int t, const char *k)
{
    if (get_string(L, t, k) != NULL)
        lua_setfield(L, ev, key);
}

/* ev[key] = t[k] when that is a table (shared with raw; dispatch copies per handler) */
static void copy_table(lua_State *L, int ev, const char *key, int t, const char *k)
{
    if (get_table(L, t, k))
        lua_setfield(L, ev, key);
}

static void copy_bool(lua_State *L, int ev, const char *key, int t, const char *k)
{
    if (get(L, t, k) == LUA_TBOOLEAN)
        lua_setfield(L, ev, key);
    else
        lua_pop(L, 1);
}

static void copy_time(lua_State *L, int ev, const char *key, int t, const char *k)
{
    double v;
    get(L, t, k);
    if (epoch_of(L, -1, &v) == 0) {
        time_push_epoch(L, v);
        lua_setfield(L, ev, key);
    }
    lua_pop(L, 1);
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

/* Pushes the trimmed, non-empty parts of a comma-separated list. */
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

/* cert.domains = the string array at -1 when it has entries; pops it either way. */
static void set_domains(lua_State *L, int cert, int n)
{
    if (n > 0)
        lua_setfield(L, cert, "domains");
    else
        lua_pop(L, 1);
}

/* Pushes cert.domains[1] of the table at cert if any; returns it or NULL (nothing pushed). */
static const char *first_domain(lua_State *L, int cert)
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
static void set_certificate(lua_State *L, int ev)
{
    lua_createtable(L, 1, 0);
    lua_pushvalue(L, -2);
    lua_rawseti(L, -2, 1);
    lua_setfield(L, ev, "certificates");
    lua_setfield(L, ev, "certificate");
}

/* Joins the strings of the array at idx with "; "; pushes the result and returns 1, or
 * pushes nothing and returns 0 when there is none. */
static int push_joined(lua_State *L, int idx)
{
    int n = 0;
    for (lua_Integer i = 1;; i++) {
        luaL_checkstack(L, 3, "too many strings");
        if (lua_rawgeti(L, idx, i) != LUA_TSTRING) {
            lua_pop(L, 1);
            break;
        }
        if (n++ > 0) {
            lua_pushliteral(L, "; ");
            lua_insert(L, -2);
        }
    }
    if (n == 0)
        return 0;
    lua_concat(L, 2 * n - 1);
    return 1;
}

/* ---- Cloudflare ------------------------------------------------------------------------------ */

/* Pushes the certificate of a Cloudflare ssl object (SaaS data.ssl, or the certificate pack
 * that is `data` of Universal/Advanced SSL events). */
static void cf_certificate(lua_State *L, int s)
{
    lua_newtable(L);
    int c = lua_gettop(L);
    copy_str(L, c, "id", s, "id");
    copy_str(L, c, "status", s, "status");
    copy_str(L, c, "type", s, "type");
    copy_str(L, c, "method", s, "method");
    set_domains(L, c, push_string_array(L, get_table(L, s, "hosts")));
    lua_settop(L, c);
    copy_str(L, c, "issuer", s, "issuer");
    copy_str(L, c, "serial_number", s, "serial_number");
    copy_str(L, c, "signature", s, "signature");
    copy_time(L, c, "uploaded_at", s, "uploaded_on");
    copy_time(L, c, "expires_at", s, "expires_on");
    copy_str(L, c, "custom_csr_id", s, "custom_csr_id");
    copy_table(L, c, "settings", s, "settings");
}

/* Pushes the certificate of a flat alert's data (certificate_id, certificate_status,
 * hostnames "a, b") and returns its index, or pushes nothing and returns 0. */
static int cf_alert_certificate(lua_State *L, int d)
{
    lua_newtable(L);
    int c = lua_gettop(L);
    copy_str(L, c, "id", d, "certificate_id");
    copy_str(L, c, "status", d, "certificate_status");
    set_domains(L, c, push_split(L, get_string(L, d, "hostnames")));
    lua_settop(L, c);
    lua_pushnil(L);
    if (lua_next(L, c) == 0) {
        lua_pop(L, 1);
        return 0;
    }
    lua_settop(L, c);
    return c;
}

/* ev.validation from an ssl object: the method, the CNAME/TXT record to create (on the object
 * or its first validation record that has one) and the validation error messages; ev.error
 * joins those messages. */
static void cf_validation(lua_State *L, int ev, int s, const char *hostname)
{
    static const char *const rec_fields[] = {"cname", "cname_target", "txt_name", "txt_value"};
    int top = lua_gettop(L);
    lua_newtable(L);
    int v = lua_gettop(L);
    copy_str(L, v, "method", s, "method");
    int records = get_table(L, s, "validation_records");
    for (size_t i = 0; i < COUNT(rec_fields); i++) {
        if (get_string(L, s, rec_fields[i]) != NULL) {
            lua_setfield(L, v, rec_fields[i]);
            continue;
        }
        for (lua_Integer r = 1; records && lua_rawgeti(L, records, r) == LUA_TTABLE; r++) {
            int rec = lua_gettop(L);
            if (get_string(L, rec, rec_fields[i]) != NULL) {
                lua_setfield(L, v, rec_fields[i]);
                lua_pop(L, 1);
                break;
            }
            lua_pop(L, 1);
        }
        if (records)
            lua_settop(L, records);
    }
    lua_newtable(L);
    int errs = lua_gettop(L), nerr = 0;
    int list = get_table(L, s, "validation_errors");
    for (lua_Integer i = 1; list && lua_rawgeti(L, list, i) != LUA_TNIL; i++) {
        int item = lua_gettop(L);
        if (lua_type(L, item) == LUA_TSTRING && lua_rawlen(L, item) > 0)
            lua_pushvalue(L, item);
        else if (get_string(L, item, "message") == NULL)
            lua_pushnil(L);
        if (lua_isnil(L, -1))
            lua_pop(L, 1);
        else
            lua_rawseti(L, errs, ++nerr);
        lua_settop(L, item - 1);
    }
    lua_settop(L, errs);
    if (nerr > 0) {
        if (push_joined(L, errs))
            lua_setfield(L, ev, "error");
        lua_setfield(L, v, "errors");
    } else {
        lua_pop(L, 1);
    }
    lua_pushnil(L);
    if (lua_next(L, v) != 0) { /* anything known about the validation */
        lua_pop(L, 2);
        set_str(L, v, "domain", hostname);
        lua_pushvalue(L, v);
        lua_setfield(L, ev, "validation");
    }
    lua_settop(L, top);
}

/* ev.status = {from=, to=} for the SSL for SaaS events the docs define a transition for. */
static void cf_status(lua_State *L, int ev, const char *from, const char *to, int s)
{
    if (from == NULL && to == NULL)
        return;
    lua_createtable(L, 0, 2);
    set_str(L, lua_gettop(L), "from", from);
    if (get_string(L, s, "status") != NULL)
        lua_setfield(L, -2, "to");
    else
        set_str(L, lua_gettop(L), "to", to);
    lua_setfield(L, ev, "status");
}

static int cf_normalize(lua_State *L, int raw, int ev, char *err, size_t errlen)
{
    int obj = 0, env = 0; /* the SSL event object; the notification envelope around it */
    if (lua_type(L, raw) != LUA_TTABLE || lua_rawlen(L, raw) > 0) {
        snprintf(err, errlen, "not a recognizable Cloudflare payload: expected a JSON object");
        return -1;
    }
    if (get_table(L, raw, "metadata")) { /* {metadata, data}: the SSL event itself */
        obj = raw;
    } else {
        env = raw;
        int data = get_table(L, raw, "data");
        if (data && get_table(L, data, "metadata"))
            obj = data; /* the SSL event nested in the envelope */
        if (!obj && !get_string(L, raw, "alert_type") && !get_string(L, raw, "text")) {
            snprintf(err, errlen,
                     "not a recognizable Cloudflare payload: expected an SSL event "
                     "{\"metadata\": {\"event\": {\"type\": ...}}, \"data\": ...}, a notification "
                     "envelope with \"alert_type\", or the test message {\"text\": ...}");
            return -1;
        }
    }
    int meta = get_table(L, obj, "metadata");
    int mevent = get_table(L, meta, "event");
    const char *ptype = get_string(L, mevent, "type");
    if (ptype == NULL && env == 0) {
        snprintf(err, errlen, "metadata.event.type is missing or not a string");
        return -1;
    }
    int envdata = get_table(L, env, "data");
    if (ptype == NULL) { /* a flat alert: its own ssl.* event_type, else the alert type */
        ptype = get_string(L, envdata, "event_type");
        if (ptype != NULL && !has_prefix(ptype, "ssl.")) {
            lua_pop(L, 1);
            ptype = NULL;
        }
        if (ptype == NULL)
            ptype = get_string(L, env, "alert_type");
    }

    const char *type = "unknown", *from = NULL, *to = NULL;
    if (ptype != NULL && has_prefix(ptype, "ssl.")) {
        for (size_t f = 0; f < COUNT(cf_families); f++) {
            if (!has_prefix(ptype, cf_families[f]))
                continue;
            const char *rest = ptype + strlen(cf_families[f]);
            for (size_t i = 0; i < COUNT(cf_types); i++) {
                if (strcmp(rest, cf_types[i].rest) != 0)
                    continue;
                type = cf_types[i].type;
                if (f == 0) /* transitions are documented for SSL for SaaS only */
                    from = cf_types[i].from, to = cf_types[i].to;
            }
        }
    } else if (ptype != NULL && has_suffix(ptype, "_certificate_expiration_type")) {
        type = "certificate.expiration.upcoming";
    } else if (ptype == NULL && !obj && !envdata) {
        type = "notification.test"; /* {"text": "Hello World! ..."} */
    }
    set_str(L, ev, "type", type);
    set_str(L, ev, "provider_type", ptype);
    lua_pushinteger(L, 1);
    lua_setfield(L, ev, "payload_version");

    if (get_string(L, mevent, "id") != NULL) {
        lua_pushfstring(L, "cloudflare:%s", lua_tostring(L, -1));
        lua_setfield(L, ev, "id");
    }
    double t;
    get(L, mevent, "created_at");
    if (epoch_of(L, -1, &t) != 0)
        get(L, env, "ts");
    if (epoch_of(L, -1, &t) == 0) {
        time_push_epoch(L, t);
        lua_setfield(L, ev, "occurred_at");
    }
    int acct = get_table(L, meta, "account");
    if (get_string(L, acct, "id") || get_string(L, env, "account_id") ||
        get_string(L, envdata, "account_tag"))
        lua_setfield(L, ev, "account");
    int zone = get_table(L, meta, "zone");
    if (get_string(L, zone, "id") || get_string(L, envdata, "zone_tag"))
        lua_setfield(L, ev, "zone");

    const char *hostname = NULL; /* points into a string kept on the stack */
    int data = get_table(L, obj, "data");
    int ssl = get_table(L, data, "ssl");
    int certsrc = ssl ? ssl : data; /* where the certificate facts are */
    int cert = 0;
    if (ssl) { /* SSL for SaaS: data is the custom hostname, data.ssl its certificate */
        hostname = get_string(L, data, "hostname");
        set_str(L, ev, "hostname", hostname);
        copy_str(L, ev, "hostname_id", data, "id");
        copy_table(L, ev, "metadata", data, "custom_metadata");
        copy_str(L, ev, "origin_server", data, "custom_origin_server");
    }
    if (certsrc) { /* Universal/Advanced SSL: data is the certificate pack itself */
        cf_certificate(L, certsrc);
        cert = lua_gettop(L);
    } else if (envdata) {
        cert = cf_alert_certificate(L, envdata);
    }
    if (cert) {
        /* not for SSL for SaaS: a certificate without data.hostname is no longer the custom
         * hostname's (Cloudflare docs, Troubleshooting), so its hosts would mislead */
        if (!ssl && (hostname = first_domain(L, cert)) != NULL)
            set_str(L, ev, "hostname", hostname);
        lua_pushvalue(L, cert);
        set_certificate(L, ev);
    }
    if (certsrc) {
        cf_validation(L, ev, certsrc, hostname);
        cf_status(L, ev, from, to, certsrc);
    }
    return 0;
}

/* ---- IBM Cloud Certificate Manager ------------------------------------------------------------ */

static int ibm_normalize(lua_State *L, int raw, int ev, char *err, size_t errlen)
{
    if (lua_type(L, raw) != LUA_TTABLE || lua_rawlen(L, raw) > 0) {
        snprintf(err, errlen,
                 "not a recognizable IBM Certificate Manager payload: expected a JSON object");
        return -1;
    }
    const char *et = get_string(L, raw, "event_type");
    int certs = get_table(L, raw, "certificates");
    int v1 = 0;
    if (!certs && (certs = get_table(L, raw, "expiring_certificates")) != 0)
        v1 = et == NULL;
    if (et == NULL && !v1) {
        snprintf(err, errlen,
                 "not a recognizable IBM Certificate Manager payload: expected \"event_type\" "
                 "(versions 2-4) or \"expiring_certificates\" (version 1)");
        return -1;
    }
    const char *type = "certificate.expiration.upcoming"; /* every v1 payload */
    if (et != NULL) {
        type = "unknown";
        for (size_t i = 0; i < COUNT(ibm_types); i++)
            if (strcmp(et, ibm_types[i].provider_type) == 0)
                type = ibm_types[i].type;
    }
    set_str(L, ev, "type", type);
    set_str(L, ev, "provider_type", et);
    if (get(L, raw, "version") == LUA_TNUMBER && lua_isinteger(L, -1)) {
        lua_setfield(L, ev, "payload_version");
    } else {
        lua_pop(L, 1);
        if (v1) {
            lua_pushinteger(L, 1);
            lua_setfield(L, ev, "payload_version");
        }
    }
    if (et == NULL || has_suffix(et, "_reimport_required")) /* v1: imported certs only */
        set_str(L, ev, "required_action", "reimport");
    else if (has_suffix(et, "_renew_required"))
        set_str(L, ev, "required_action", "renew");
    copy_str(L, ev, "instance", raw, "instance_crn");
    copy_str(L, ev, "dashboard_url", raw, "certificate_manager_url");
    copy_time(L, ev, "expiry_date", raw, "expiry_date");

    lua_newtable(L);
    int list = lua_gettop(L), n = 0;
    lua_newtable(L);
    int errors = lua_gettop(L), nerr = 0;
    for (lua_Integer i = 1; certs && lua_rawgeti(L, certs, i) != LUA_TNIL; i++) {
        int item = lua_gettop(L);
        if (lua_type(L, item) != LUA_TTABLE) {
            lua_pop(L, 1);
            continue;
        }
        lua_newtable(L);
        int c = lua_gettop(L);
        copy_str(L, c, "id", item, "cert_crn");
        copy_str(L, c, "name", item, "name");
        set_domains(L, c, push_split(L, get_string(L, item, "domains")));
        lua_settop(L, c);
        copy_time(L, c, "expires_at", item, "expires_on");
        copy_time(L, c, "previous_expires_at", item, "previous_expires_on");
        copy_bool(L, c, "auto_renewed", item, "auto_renewed");
        if (get_string(L, item, "additional_info") != NULL)
            lua_rawseti(L, errors, ++nerr);
        lua_rawseti(L, list, ++n);
        lua_settop(L, item - 1);
    }
    const char *dv_crn = get_string(L, raw, "certificateCRN");
    const char *domain = get_string(L, raw, "domain");
    if (dv_crn != NULL || domain != NULL) { /* v4 domain validation */
        lua_newtable(L);
        int c = lua_gettop(L);
        set_str(L, c, "id", dv_crn);
        if (domain != NULL) {
            lua_createtable(L, 1, 0);
            lua_pushstring(L, domain);
            lua_rawseti(L, -2, 1);
            lua_setfield(L, c, "domains");
        }
        lua_rawseti(L, list, ++n);
        lua_newtable(L);
        int v = lua_gettop(L);
        copy_str(L, v, "method", raw, "domain_validation_method");
        set_str(L, v, "domain", domain);
        int ch = get_table(L, raw, "challenge");
        copy_str(L, v, "txt_name", ch, "txt_record_name");
        copy_str(L, v, "txt_value", ch, "txt_record_val");
        lua_settop(L, v);
        lua_setfield(L, ev, "validation");
    }
    if (nerr > 0 && push_joined(L, errors))
        lua_setfield(L, ev, "error");
    if (n > 0) {
        lua_rawgeti(L, list, 1);
        lua_setfield(L, ev, "certificate");
        lua_pushvalue(L, list);
        lua_setfield(L, ev, "certificates");
        if (domain != NULL) {
            set_str(L, ev, "hostname", domain);
        } else {
            lua_rawgeti(L, list, 1);
            const char *h = first_domain(L, lua_gettop(L));
            set_str(L, ev, "hostname", h);
        }
    }
    return 0;
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
        rc = cf_normalize(L, raw, ev, err, errlen);
    else if (p == PROVIDER_IBM_CM)
        rc = ibm_normalize(L, raw, ev, err, errlen);
    else
        snprintf(err, errlen, "unknown provider");
    if (rc != 0) {
        lua_settop(L, top);
        return -1;
    }
    lua_settop(L, ev);
    set_str(L, ev, "provider", provider_name(p));
    lua_pushvalue(L, raw);
    lua_setfield(L, ev, "raw");
    return 0;
}

void normalize_fixup(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    if (lua_type(L, idx) != LUA_TTABLE)
        return;
    luaL_checkstack(L, 4, "JSON nesting");
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) { /* key, value */
        switch (lua_type(L, -1)) {
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
                if (v == floor(v) && fabs(v) < 9007199254740992.0) {
                    lua_pushvalue(L, -2);
                    lua_pushinteger(L, (lua_Integer)v);
                    lua_rawset(L, idx); /* assigning an existing field is allowed */
                }
            }
            break;
        case LUA_TTABLE:
            normalize_fixup(L, -1);
            break;
        }
        lua_pop(L, 1);
    }
}

enum provider normalize_detect(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    enum provider p = PROVIDER_NONE;
    if (lua_type(L, idx) != LUA_TTABLE)
        return p;
    int top = lua_gettop(L);
    const char *data = get_string(L, idx, "data");
    const char *et = data ? NULL : get_string(L, idx, "event_type");
    if (data != NULL) {
        const char *dot = strchr(data, '.');
        if (dot != NULL && strchr(dot + 1, '.') != NULL)
            p = PROVIDER_IBM_CM; /* {"data": "<JWT>"} */
    } else if (et != NULL || get_string(L, idx, "instance_crn") ||
               get_table(L, idx, "expiring_certificates")) {
        p = PROVIDER_IBM_CM;
    } else if (get_table(L, idx, "metadata") || get_string(L, idx, "alert_type") ||
               get_string(L, idx, "text")) {
        p = PROVIDER_CLOUDFLARE;
    } else {
        int d = get_table(L, idx, "data");
        if (d && get_table(L, d, "metadata"))
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
        const char *jwt = lua_istable(L, -1) ? get_string(L, top + 1, "data") : NULL;
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
    normalize_fixup(L, -1);
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
