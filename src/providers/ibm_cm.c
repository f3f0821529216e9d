/*
 * ibm_cm.c -- the IBM Cloud Certificate Manager provider (DESIGN §3-5, PROVIDERS.md §2,
 * seeds/004): callbacks signed as RS256 JWTs, and their payloads to the canonical event.
 *
 * The body is {"data": "<JWT>"} signed with the instance's key (jwt.c verifies it, and the
 * token's exp, nbf and iat within sources.<name>.leeway); an insecure source also takes the
 * bare payload. The payload is the JWT's claims: version 1 has no event_type and lists
 * expiring_certificates; versions 2-4 name event_type and list certificates; the v4
 * domain-validation shape names one certificateCRN, a domain and its DNS-01 challenge.
 * Types map through ibm_types.
 */
#define _DEFAULT_SOURCE /* scandir, alphasort */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <lauxlib.h>

#include "providers/fields.h"
#include "providers/provider.h"

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

/* IBM: the payload, each certificate, the domain validation challenge. */
static const struct field ibm_event_fields[] = {
    {"instance", "instance_crn", F_STR},
    {"dashboard_url", "certificate_manager_url", F_STR},
    {"expiry_date", "expiry_date", F_TIME},
};
static const struct field ibm_cert_fields[] = {
    {"id", "cert_crn", F_STR},
    {"name", "name", F_STR},
    {"domains", "domains", F_SPLIT},
    {"expires_at", "expires_on", F_TIME},
    {"previous_expires_at", "previous_expires_on", F_TIME},
    {"auto_renewed", "auto_renewed", F_BOOL},
};
static const struct field ibm_dv_fields[] = {
    {"method", "domain_validation_method", F_STR},
    {"domain", "domain", F_STR},
};
static const struct field ibm_challenge_fields[] = {
    {"txt_name", "txt_record_name", F_STR},
    {"txt_value", "txt_record_val", F_STR},
};

/* Fills the event at ev from the claims at raw: 0, or -1 with a message. */
static int fill(lua_State *L, int raw, int ev, char *err, size_t errlen)
{
    if (lua_type(L, raw) != LUA_TTABLE || lua_rawlen(L, raw) > 0) {
        snprintf(err, errlen,
                 "not a recognizable IBM Certificate Manager payload: expected a JSON object");
        return -1;
    }
    const char *et = fields_get_string(L, raw, "event_type");
    int certs = fields_get_table(L, raw, "certificates");
    int v1 = 0;
    if (!certs && (certs = fields_get_table(L, raw, "expiring_certificates")) != 0)
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
    fields_set_str(L, ev, "type", type);
    fields_set_str(L, ev, "provider_type", et);
    if (fields_get(L, raw, "version") == LUA_TNUMBER && lua_isinteger(L, -1)) {
        lua_setfield(L, ev, "payload_version");
    } else {
        lua_pop(L, 1);
        if (v1) {
            lua_pushinteger(L, 1);
            lua_setfield(L, ev, "payload_version");
        }
    }
    if (et == NULL || fields_has_suffix(et, "_reimport_required")) /* v1: imported certs only */
        fields_set_str(L, ev, "required_action", "reimport");
    else if (fields_has_suffix(et, "_renew_required"))
        fields_set_str(L, ev, "required_action", "renew");
    COPY(L, ev, raw, ibm_event_fields);

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
        COPY(L, c, item, ibm_cert_fields);
        if (fields_get_string(L, item, "additional_info") != NULL)
            lua_rawseti(L, errors, ++nerr);
        lua_rawseti(L, list, ++n);
        lua_settop(L, item - 1);
    }
    const char *dv_crn = fields_get_string(L, raw, "certificateCRN");
    const char *domain = fields_get_string(L, raw, "domain");
    if (dv_crn != NULL || domain != NULL) { /* v4 domain validation */
        lua_newtable(L);
        int c = lua_gettop(L);
        fields_set_str(L, c, "id", dv_crn);
        if (domain != NULL) {
            lua_createtable(L, 1, 0);
            lua_pushstring(L, domain);
            lua_rawseti(L, -2, 1);
            lua_setfield(L, c, "domains");
        }
        lua_rawseti(L, list, ++n);
        lua_newtable(L);
        int v = lua_gettop(L);
        COPY(L, v, raw, ibm_dv_fields);
        COPY(L, v, fields_get_table(L, raw, "challenge"), ibm_challenge_fields);
        lua_settop(L, v);
        lua_setfield(L, ev, "validation");
    }
    if (nerr > 0 && fields_push_joined(L, errors))
        lua_setfield(L, ev, "error");
    if (n > 0) {
        lua_rawgeti(L, list, 1);
        lua_setfield(L, ev, "certificate");
        lua_pushvalue(L, list);
        lua_setfield(L, ev, "certificates");
        if (domain != NULL) {
            fields_set_str(L, ev, "hostname", domain);
        } else {
            lua_rawgeti(L, list, 1);
            const char *h = fields_first_domain(L, lua_gettop(L));
            fields_set_str(L, ev, "hostname", h);
        }
    }
    return 0;
}

/* ---- the provider ------------------------------------------------------------------------------- */

struct ibm {
    struct jwt_keys *keys; /* NULL: none configured */
    double leeway;         /* seconds of clock skew allowed for exp, nbf, iat */
    double max_age;        /* seconds a token may be old (iat); 0: any age */
};

struct key_adder {
    const struct source *s;
    struct ibm *ibm;
};

static int pem_file(const struct dirent *e)
{
    size_t n = strlen(e->d_name);
    return e->d_name[0] != '.' && n > 4 && strcmp(e->d_name + n - 4, ".pem") == 0;
}

/* A PEM file or text, or a directory: every *.pem in it (rotation: drop the new key in, take
 * the old one out, reload). */
static int add_key(void *cls, const char *pem_or_path, char *err, size_t errlen)
{
    struct key_adder *ka = cls;
    char msg[300], path[4096];
    struct stat st;
    struct dirent **names;
    if (strncmp(pem_or_path, "-----BEGIN", 10) != 0 && stat(pem_or_path, &st) == 0 &&
        S_ISDIR(st.st_mode)) {
        int n = scandir(pem_or_path, &names, pem_file, alphasort), rc = 0;
        if (n < 0) {
            snprintf(err, errlen, "sources.%s.public_key: cannot read directory %s",
                     ka->s->name, pem_or_path);
            return -1;
        }
        if (n == 0)
            snprintf(err, errlen, "sources.%s.public_key: no *.pem file in %s", ka->s->name,
                     pem_or_path), rc = -1;
        for (int i = 0; i < n; i++) {
            snprintf(path, sizeof path, "%s/%s", pem_or_path, names[i]->d_name);
            if (rc == 0)
                rc = add_key(cls, path, err, errlen);
            free(names[i]);
        }
        free(names);
        return rc;
    }
    if (jwt_keys_add(&ka->ibm->keys, pem_or_path, msg, sizeof msg) != 0) {
        snprintf(err, errlen, "sources.%s.public_key: %s", ka->s->name, msg);
        return -1;
    }
    return 0;
}

static int configure(lua_State *L, int t, struct source *s, char *err, size_t errlen)
{
    char path[160];
    struct ibm *ibm = calloc(1, sizeof *ibm);
    if (ibm == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    s->priv = ibm;
    ibm->leeway = 300;
    snprintf(path, sizeof path, "sources.%s.", s->name);
    struct key_adder ka = {s, ibm};
    if (setting_strings(L, t, "public_key", path, add_key, &ka, err, errlen) != 0 ||
        setting_number(L, t, "leeway", 0, 1e9, &ibm->leeway, path, err, errlen) != 0 ||
        setting_number(L, t, "max_age", 0, 1e10, &ibm->max_age, path, err, errlen) != 0)
        return -1;
    if (ibm->keys == NULL && !s->insecure) {
        snprintf(err, errlen, "sources.%s has no credentials: set public_key (the PEM file "
                              "downloaded from Certificate Manager > Notifications), or "
                              "insecure = true to accept unsigned payloads", s->name);
        return -1;
    }
    return 0;
}

static void release(struct source *s)
{
    struct ibm *ibm = s->priv;
    if (ibm != NULL)
        jwt_keys_free(ibm->keys);
    free(ibm);
    s->priv = NULL;
}

static int is_jwt(const char *s)
{
    const char *dot = strchr(s, '.');
    return dot != NULL && strchr(dot + 1, '.') != NULL;
}

/* The JWT claims at idx are within their lifetime at now (RFC 7519 §4.1.4-6): not past exp,
 * not before nbf, not issued in the future, each give or take the leeway, and not older than
 * max_age when set. Absent claims are not checked. 0, or -1 with a message. */
static int check_times(lua_State *L, int idx, const struct source *src, double now, char *err,
                       size_t errlen)
{
    static const char *const names[] = {"exp", "nbf", "iat"};
    const struct ibm *ibm = src->priv;
    char when[40];
    for (int i = 0; i < 3; i++) {
        int type = fields_get(L, idx, names[i]);
        double t = lua_tonumber(L, -1);
        lua_pop(L, 1);
        if (type == LUA_TNIL)
            continue;
        if (type != LUA_TNUMBER || !isfinite(t)) {
            snprintf(err, errlen, "the JWT's %s is not a NumericDate", names[i]);
            return -1;
        }
        time_format_iso8601(t, when);
        if (i == 0 && now > t + ibm->leeway)
            snprintf(err, errlen, "the JWT expired at %s (exp; sources.%s.leeway is %g s)", when,
                     src->name, ibm->leeway);
        else if (i > 0 && t > now + ibm->leeway)
            snprintf(err, errlen, "the JWT is %s %s, in the future (%s; sources.%s.leeway is "
                     "%g s)", i == 1 ? "not valid before" : "issued at", when, names[i],
                     src->name, ibm->leeway);
        else if (i == 2 && ibm->max_age > 0 && now > t + ibm->max_age + ibm->leeway)
            snprintf(err, errlen, "the JWT was issued at %s, more than sources.%s.max_age (%g s) "
                     "ago (leeway %g s)", when, src->name, ibm->max_age, ibm->leeway);
        else
            continue;
        return -1;
    }
    return 0;
}

/* Pushes the claims of the JWT body at body -- verified with the source's keys (decoded only
 * for an insecure source without keys) and within their lifetime -- or, for an insecure
 * source, the bare payload itself. 0, or 400 / 401 with err (nothing pushed). */
static int claims(lua_State *L, int body, const struct source *s, double now, char *err,
                  size_t errlen)
{
    const struct ibm *ibm = s->priv;
    char msg[400], *text = NULL;
    size_t n;
    int top = lua_gettop(L);
    const char *jwt = lua_istable(L, body) ? fields_get_string(L, body, "data") : NULL;
    if (jwt == NULL || !is_jwt(jwt)) {
        lua_settop(L, top);
        if (!s->insecure) {
            snprintf(err, errlen, "source %s accepts only signed notifications: the body must "
                                  "be {\"data\": \"<JWT>\"} signed with the Certificate Manager "
                                  "instance key", s->name);
            return 401;
        }
        lua_pushvalue(L, body);
        return 0;
    }
    if (jwt_verify(L, ibm->keys, jwt, lua_rawlen(L, -1), &text, &n, err, errlen) != 0) {
        lua_settop(L, top);
        return 401;
    }
    lua_settop(L, top);
    int rc = json_decode(L, text, n, msg, sizeof msg);
    free(text);
    if (rc != 0) {
        snprintf(err, errlen, "the JWT payload is not JSON: %s", msg);
        return 400;
    }
    if (json_fixup(L, -1) != 0) {
        lua_settop(L, top);
        snprintf(err, errlen, "a string in the payload holds a NUL byte (\\u0000)");
        return 400;
    }
    if (ibm->keys != NULL && check_times(L, -1, s, now, err, errlen) != 0) {
        lua_settop(L, top);
        return 401;
    }
    return 0;
}

static int normalize(lua_State *L, int body, const struct source *s, const struct request *rq,
                     struct reply *r, char *err, size_t errlen)
{
    int top = lua_gettop(L);
    (void)r;
    int status = claims(L, body, s, rq->received_at, err, errlen);
    if (status != 0)
        return status;
    int raw = lua_gettop(L); /* the claims */
    if ((status = fields_one_event(L, raw, fill, err, errlen)) != 0) {
        lua_settop(L, top);
        return status;
    }
    lua_remove(L, raw);
    return 0;
}

static int detect(lua_State *L, int body)
{
    int top = lua_gettop(L), found = 0;
    if (lua_type(L, body) == LUA_TTABLE) {
        const char *data = fields_get_string(L, body, "data");
        found = data != NULL ? is_jwt(data)
                             : (fields_get_string(L, body, "event_type") != NULL ||
                                fields_get_string(L, body, "instance_crn") != NULL ||
                                fields_get_table(L, body, "expiring_certificates") != 0) &&
                                   /* Secrets Manager's payloads (ibm_sm.c) name themselves */
                                   fields_get_string(L, body, "source_service") == NULL;
    }
    lua_settop(L, top);
    return found;
}

/* Certificate Manager posts {"data": "<RS256 JWT of the payload>"}: with --sign-key, a bare
 * payload is signed so; a body that is already a token goes as it is. */
static int send(lua_State *L, const char *body, size_t n, int cfg, int opts, int hdr, char *err,
                size_t errlen)
{
    (void)cfg, (void)hdr;
    int top = lua_gettop(L);
    const char *key = fields_get_string(L, opts, "sign_key");
    if (key == NULL || (json_decode(L, body, n, err, errlen) == 0 &&
                        lua_type(L, -1) == LUA_TTABLE && fields_get_string(L, -1, "data") &&
                        is_jwt(lua_tostring(L, -1)))) {
        lua_settop(L, top);
        lua_pushlstring(L, body, n);
        return 0;
    }
    char *jwt = jwt_sign(key, body, n, err, errlen);
    lua_settop(L, top);
    if (jwt == NULL)
        return -1;
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    luaL_addstring(&b, "{\"data\":\"");
    luaL_addstring(&b, jwt);
    luaL_addstring(&b, "\"}");
    luaL_pushresult(&b);
    free(jwt);
    return 0;
}

/* ---- samples: version 4 payloads built from ibm_types and the field tables above ------------- */

/* The samples' instance: its CRN is this and "::", its certificates' this and ":certificate:<id>". */
#define IBM_SAMPLE_INSTANCE                                                                        \
    "crn:v1:bluemix:public:cloudcerts:us-south:a/30f0a21f77994b9eb414b37300e2ced1:"               \
    "91a17928-da3c-4465-9c4b-f1a6b4dce684"

/* What the samples say, under the names events give it (ibm_event_fields, ibm_cert_fields,
 * ibm_dv_fields, ibm_challenge_fields); fields the event type does not carry are dropped. A
 * new certificate each time: the payload has no id of its own, its hash is the event's. */
static const char ibm_sample[] =
    "{\"event\":{\"instance\":\"" IBM_SAMPLE_INSTANCE "::\",\"dashboard_url\":"
    "\"https://cloud.ibm.com/services/cloudcerts/crn%3Av1%3Abluemix%3Apublic%3Acloudcerts%3Aus-"
    "south%3Aa%2F30f0a21f77994b9eb414b37300e2ced1%3A91a17928-da3c-4465-9c4b-f1a6b4dce684%3A%3A\","
    "\"expiry_date\":{{expires_epoch}}000},\"certificate\":{\"id\":\"" IBM_SAMPLE_INSTANCE
    ":certificate:{{id}}\",\"name\":\"shop.example.com\",\"domains\":[\"shop.example.com\","
    "\"www.shop.example.com\"],\"expires_at\":{{expires_epoch}}000,\"previous_expires_at\":"
    "1861920000000,\"auto_renewed\":true},\"validation\":{\"method\":\"dns-01\",\"domain\":"
    "\"shop.example.com\"},\"challenge\":{\"txt_name\":\"_acme-challenge.shop.example.com\","
    "\"txt_value\":\"Xk2pQ9rT-{{n}}\"}}";

/* Drops t[k] from the table at t unless keep. */
static void keep_if(lua_State *L, int t, const char *k, int keep)
{
    if (!keep) {
        lua_pushnil(L);
        lua_setfield(L, t, k);
    }
}

/* Pushes the version 4 payload (PROVIDERS.md §2.4) of the event type et, as it is before
 * signing, from the description ibm_sample decoded at desc. */
static void push_v4(lua_State *L, const char *et, int desc)
{
    int event = fields_get_table(L, desc, "event");
    int cert = fields_get_table(L, desc, "certificate");
    keep_if(L, event, "expiry_date", fields_has_prefix(et, "cert_about_to_expire_"));
    keep_if(L, cert, "auto_renewed", fields_has_prefix(et, "cert_renew"));
    keep_if(L, cert, "previous_expires_at", strcmp(et, "cert_renewed_not_downloaded") == 0);
    lua_newtable(L);
    int p = lua_gettop(L);
    PUT(L, p, event, ibm_event_fields);
    fields_set_str(L, p, "event_type", et);
    if (fields_has_prefix(et, "cert_domain_validation_")) { /* one certificate, one domain */
        lua_getfield(L, cert, "id");
        lua_setfield(L, p, "certificateCRN");
        PUT(L, p, fields_get_table(L, desc, "validation"), ibm_dv_fields);
        lua_newtable(L);
        int challenge = lua_gettop(L);
        PUT(L, challenge, fields_get_table(L, desc, "challenge"), ibm_challenge_fields);
        lua_settop(L, challenge);
        lua_setfield(L, p, "challenge");
    } else {
        lua_createtable(L, 1, 0);
        lua_newtable(L);
        int c = lua_gettop(L);
        PUT(L, c, cert, ibm_cert_fields);
        if (fields_has_suffix(et, "_failed"))
            fields_set_str(L, c, "additional_info", "Domain validation failed: "
                           "_acme-challenge.shop.example.com TXT record not found");
        lua_rawseti(L, c - 1, 1);
        lua_setfield(L, p, "certificates");
    }
    lua_pushinteger(L, 4);
    lua_setfield(L, p, "version");
    lua_pushinteger(L, 4);
    lua_setfield(L, p, "latestVersion");
    lua_settop(L, p);
}

/* The first event type of ibm_types for each canonical type; send signs it with --sign-key. */
static int sample(lua_State *L, const char *type, char *err, size_t errlen)
{
    size_t i = 0;
    if (type == NULL) {
        lua_newtable(L);
        for (; i < COUNT(ibm_types); i++)
            fields_add_type(L, lua_gettop(L), ibm_types[i].type);
        return 0;
    }
    while (i < COUNT(ibm_types) && strcmp(ibm_types[i].type, type) != 0)
        i++;
    if (i == COUNT(ibm_types)) {
        snprintf(err, errlen, "no sample of %s", type);
        return -1;
    }
    luaL_checkstack(L, 40, "sample");
    fields_push_decoded(L, ibm_sample, type);
    int desc = lua_gettop(L);
    push_v4(L, ibm_types[i].provider_type, desc);
    lua_remove(L, desc);
    return fields_encode(L, err, errlen);
}

static const char *const settings[] = {"public_key", "leeway", "max_age", NULL};

const struct provider ibm_cm_provider = {
    .name = "ibm-cm",
    .settings = settings,
    .configure = configure,
    .release = release,
    .normalize = normalize,
    .detect = detect,
    .send = send,
    .sample = sample,
};
