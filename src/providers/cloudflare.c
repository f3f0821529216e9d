/*
 * cloudflare.c -- the Cloudflare provider (DESIGN §3-5, PROVIDERS.md §1): its secret and its
 * payloads to the canonical event.
 *
 * Authentication: the destination's shared secret, sent verbatim in cf-webhook-auth, checked
 * from the head before any of the body is read. Shapes, recognized by structure: the SSL event
 * itself ({metadata, data}: SSL for SaaS custom hostnames, Universal and Advanced
 * certificates), the generic notification envelope (name, text, data, ts, alert_type, ...)
 * with that event nested in data or a flat alert in it, and the destination test message
 * {"text": ...}. Types map through cf_types.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "providers/auth.h"
#include "providers/fields.h"
#include "providers/provider.h"

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

/* The ssl.status words (POLLERS.md: initializing, pending_validation, ...) that are not a
 * canonical state's name, and the state each means; pending_deletion, pending_cleanup,
 * deactivating, inactive, backup_issued and deletion_timed_out say nothing of one. */
static const struct status_state cf_states[] = {
    {"initializing", "pending_validation"},
    {"staging_deployment", "pending_deployment"},
    {"staging_active", "pending_deployment"}, /* served on the staging network only */
    {"holding_deployment", "pending_deployment"},
    {"pending_expiration", "active"},
    {"initializing_timed_out", "failed"},
    {"validation_timed_out", "failed"},
    {"issuance_timed_out", "failed"},
    {"deployment_timed_out", "failed"},
    {NULL, NULL},
};

/* The suffix of the alert types that announce a certificate's expiration (PROVIDERS.md §1.4). */
#define CF_EXPIRATION_ALERT "_certificate_expiration_type"

static const char *const cf_families[] = {
    "ssl.custom_hostname_certificate.", "ssl.certificate.", "ssl.dedicated_certificate.",
};

/* Cloudflare: the certificate of an ssl object (SaaS data.ssl, or the certificate pack that
 * is `data` of Universal/Advanced SSL events), of a flat alert, and the custom hostname. */
static const struct field cf_cert_fields[] = {
    {"id", "id", F_STR},
    {"status", "status", F_STR},
    {"type", "type", F_STR},
    {"method", "method", F_STR},
    {"domains", "hosts", F_LIST},
    {"issuer", "issuer", F_STR},
    {"serial_number", "serial_number", F_STR},
    {"signature", "signature", F_STR},
    {"uploaded_at", "uploaded_on", F_TIME},
    {"expires_at", "expires_on", F_TIME},
    {"custom_csr_id", "custom_csr_id", F_STR},
    {"settings", "settings", F_TABLE},
};
static const struct field cf_alert_cert_fields[] = {
    {"id", "certificate_id", F_STR},
    {"status", "certificate_status", F_STR},
    {"domains", "hostnames", F_SPLIT},
};
static const struct field cf_hostname_fields[] = {
    {"hostname_id", "id", F_STR},
    {"metadata", "custom_metadata", F_TABLE},
    {"origin_server", "custom_origin_server", F_STR},
};

/* ev.validation from an ssl object: the method, the CNAME/TXT record to create (on the object
 * or its first validation record that has one) and the validation error messages; ev.error
 * joins those messages. */
static void cf_validation(lua_State *L, int ev, int s, const char *hostname)
{
    static const char *const rec_fields[] = {"cname", "cname_target", "txt_name", "txt_value"};
    int top = lua_gettop(L);
    lua_newtable(L);
    int v = lua_gettop(L);
    if (fields_get_string(L, s, "method") != NULL)
        lua_setfield(L, v, "method");
    int records = fields_get_table(L, s, "validation_records");
    for (size_t i = 0; i < COUNT(rec_fields); i++) {
        if (fields_get_string(L, s, rec_fields[i]) != NULL) {
            lua_setfield(L, v, rec_fields[i]);
            continue;
        }
        for (lua_Integer r = 1; records && lua_rawgeti(L, records, r) == LUA_TTABLE; r++) {
            int rec = lua_gettop(L);
            if (fields_get_string(L, rec, rec_fields[i]) != NULL) {
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
    int list = fields_get_table(L, s, "validation_errors");
    for (lua_Integer i = 1; list && lua_rawgeti(L, list, i) != LUA_TNIL; i++) {
        int item = lua_gettop(L);
        if (lua_type(L, item) == LUA_TSTRING && lua_rawlen(L, item) > 0)
            lua_pushvalue(L, item);
        else if (fields_get_string(L, item, "message") == NULL)
            lua_pushnil(L);
        if (lua_isnil(L, -1))
            lua_pop(L, 1);
        else
            lua_rawseti(L, errs, ++nerr);
        lua_settop(L, item - 1);
    }
    lua_settop(L, errs);
    if (nerr > 0) {
        if (fields_push_joined(L, errs))
            lua_setfield(L, ev, "error");
        lua_setfield(L, v, "errors");
    } else {
        lua_pop(L, 1);
    }
    lua_pushnil(L);
    if (lua_next(L, v) != 0) { /* anything known about the validation */
        lua_pop(L, 2);
        fields_set_str(L, v, "domain", hostname);
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
    fields_set_str(L, lua_gettop(L), "from", from);
    if (fields_get_string(L, s, "status") != NULL)
        lua_setfield(L, -2, "to");
    else
        fields_set_str(L, lua_gettop(L), "to", to);
    lua_setfield(L, ev, "status");
}

/* Fills the event at ev from the payload at raw: 0, or -1 with a message. */
static int fill(lua_State *L, int raw, int ev, char *err, size_t errlen)
{
    int obj = 0, env = 0; /* the SSL event object; the notification envelope around it */
    if (lua_type(L, raw) != LUA_TTABLE || lua_rawlen(L, raw) > 0) {
        snprintf(err, errlen, "not a recognizable Cloudflare payload: expected a JSON object");
        return -1;
    }
    if (fields_get_table(L, raw, "metadata")) { /* {metadata, data}: the SSL event itself */
        obj = raw;
    } else {
        env = raw;
        int data = fields_get_table(L, raw, "data");
        if (data && fields_get_table(L, data, "metadata"))
            obj = data; /* the SSL event nested in the envelope */
        if (!obj && !fields_get_string(L, raw, "alert_type") && !fields_get_string(L, raw, "text")) {
            snprintf(err, errlen,
                     "not a recognizable Cloudflare payload: expected an SSL event "
                     "{\"metadata\": {\"event\": {\"type\": ...}}, \"data\": ...}, a notification "
                     "envelope with \"alert_type\", or the test message {\"text\": ...}");
            return -1;
        }
    }
    int meta = fields_get_table(L, obj, "metadata");
    int mevent = fields_get_table(L, meta, "event");
    const char *ptype = fields_get_string(L, mevent, "type");
    if (ptype == NULL && env == 0) {
        snprintf(err, errlen, "metadata.event.type is missing or not a string");
        return -1;
    }
    int envdata = fields_get_table(L, env, "data");
    if (ptype == NULL) { /* a flat alert: its own ssl.* event_type, else the alert type */
        ptype = fields_get_string(L, envdata, "event_type");
        if (ptype != NULL && !fields_has_prefix(ptype, "ssl.")) {
            lua_pop(L, 1);
            ptype = NULL;
        }
        if (ptype == NULL)
            ptype = fields_get_string(L, env, "alert_type");
    }

    const char *type = "unknown", *from = NULL, *to = NULL;
    if (ptype != NULL && fields_has_prefix(ptype, "ssl.")) {
        for (size_t f = 0; f < COUNT(cf_families); f++) {
            if (!fields_has_prefix(ptype, cf_families[f]))
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
    } else if (ptype != NULL && fields_has_suffix(ptype, CF_EXPIRATION_ALERT)) {
        type = "certificate.expiration.upcoming";
    } else if (ptype == NULL && !obj && !envdata) {
        type = "notification.test"; /* {"text": "Hello World! ..."} */
    }
    fields_set_str(L, ev, "type", type);
    fields_set_str(L, ev, "provider_type", ptype);
    lua_pushinteger(L, 1);
    lua_setfield(L, ev, "payload_version");

    if (fields_get_string(L, mevent, "id") != NULL) {
        lua_pushliteral(L, "cloudflare:"); /* not %s: the id may hold a NUL (intake refuses) */
        lua_insert(L, -2);
        lua_concat(L, 2);
        lua_setfield(L, ev, "id");
    }
    double t;
    fields_get(L, mevent, "created_at");
    if (fields_epoch(L, -1, &t) != 0)
        fields_get(L, env, "ts");
    if (fields_epoch(L, -1, &t) == 0) {
        event_push_epoch(L, t);
        lua_setfield(L, ev, "occurred_at");
    }
    int acct = fields_get_table(L, meta, "account");
    if (fields_get_string(L, acct, "id") || fields_get_string(L, env, "account_id") ||
        fields_get_string(L, envdata, "account_tag"))
        lua_setfield(L, ev, "account");
    int zone = fields_get_table(L, meta, "zone");
    if (fields_get_string(L, zone, "id") || fields_get_string(L, envdata, "zone_tag"))
        lua_setfield(L, ev, "zone");

    const char *hostname = NULL; /* points into a string kept on the stack */
    int data = fields_get_table(L, obj, "data");
    int ssl = fields_get_table(L, data, "ssl");
    int certsrc = ssl ? ssl : data; /* where the certificate facts are */
    int cert = 0;
    if (ssl) { /* SSL for SaaS: data is the custom hostname, data.ssl its certificate */
        hostname = fields_get_string(L, data, "hostname");
        fields_set_str(L, ev, "hostname", hostname);
        COPY(L, ev, data, cf_hostname_fields);
    }
    if (certsrc) /* Universal/Advanced SSL: data is the certificate pack itself */
        cert = fields_push_certificate(L, certsrc, cf_cert_fields, COUNT(cf_cert_fields));
    else if (envdata) /* flat alert */
        cert = fields_push_certificate(L, envdata, cf_alert_cert_fields, COUNT(cf_alert_cert_fields));
    if (fields_get(L, envdata, "days_til_expiration") == LUA_TNUMBER) /* expiration alerts */
        lua_setfield(L, ev, "days_to_expiry");
    else
        lua_pop(L, 1);
    if (cert) {
        /* not for SSL for SaaS: a certificate without data.hostname is no longer the custom
         * hostname's (Cloudflare docs, Troubleshooting), so its hosts would mislead */
        if (!ssl && (hostname = fields_first_domain(L, cert)) != NULL)
            fields_set_str(L, ev, "hostname", hostname);
        lua_pushvalue(L, cert);
        fields_set_certificate(L, ev);
    }
    if (certsrc) {
        cf_validation(L, ev, certsrc, hostname);
        cf_status(L, ev, from, to, certsrc);
    }
    return 0;
}

/* ---- the provider ------------------------------------------------------------------------------- */

static int add_secret(void *cls, const char *secret, char *err, size_t errlen)
{
    if (secrets_add(cls, secret) != 0) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

/* secret = "..." or {"old", "new"}: the values Cloudflare may send in cf-webhook-auth. */
static int configure(lua_State *L, int t, struct source *s, char *err, size_t errlen)
{
    char path[160];
    struct secrets *secrets = calloc(1, sizeof *secrets);
    if (secrets == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    s->priv = secrets;
    snprintf(path, sizeof path, "sources.%s.", s->name);
    if (setting_strings(L, t, "secret", path, add_secret, secrets, err, errlen) != 0)
        return -1;
    if (secrets->n == 0 && !s->insecure) {
        snprintf(err, errlen, "sources.%s has no credentials: set secret (the value Cloudflare "
                              "sends in cf-webhook-auth), or insecure = true to accept "
                              "unauthenticated requests", s->name);
        return -1;
    }
    return 0;
}

static void release(struct source *s)
{
    if (s->priv != NULL)
        secrets_free(s->priv);
    free(s->priv);
    s->priv = NULL;
}

static int head(const struct source *s, const struct request *rq, struct reply *r, char *err,
                size_t errlen)
{
    const struct secrets *secrets = s->priv;
    (void)r;
    if (secrets->n > 0 && !secrets_match(secrets, rq->header(rq, "cf-webhook-auth"))) {
        snprintf(err, errlen, "missing or wrong cf-webhook-auth header");
        return 401;
    }
    return 0;
}

static int normalize(lua_State *L, int body, const struct source *s, const struct request *rq,
                     struct reply *r, char *err, size_t errlen)
{
    (void)s, (void)rq, (void)r;
    return fields_one_event(L, body, fill, err, errlen);
}

static int detect(lua_State *L, int body)
{
    int top = lua_gettop(L), d;
    int found = lua_type(L, body) == LUA_TTABLE &&
                (fields_get_table(L, body, "metadata") || fields_get_string(L, body, "alert_type") ||
                 ((d = fields_get_table(L, body, "data")) && fields_get_table(L, d, "metadata")) ||
                 (fields_get_string(L, body, "text") && !fields_get_string(L, body, "event_type")));
    lua_settop(L, top);
    return found;
}

/* Cloudflare sends the configured secret in cf-webhook-auth: --secret, else the source's (the
 * first of a list). */
static int send(lua_State *L, const char *body, size_t n, int cfg, int opts, int hdr, char *err,
                size_t errlen)
{
    (void)err, (void)errlen;
    auth_send(L, cfg, opts, hdr, "cf-webhook-auth");
    lua_pushlstring(L, body, n);
    return 0;
}

/* ---- samples: built from cf_types and the field tables above ----------------------------------- */

#define CF_ACCOUNT "9035f53656c247e895c5a6939ae8a0e0"
#define CF_ZONE "023e105f4ecef8ad9ca31a8372d0c353"

/* What the samples say, under the names events give it: the custom hostname (cf_hostname_fields),
 * its certificate (cf_cert_fields; `issued`: the facts it has once issued), the certificate of
 * the expiration alert (cf_alert_cert_fields). */
static const char cf_sample[] =
    "{\"hostname\":{\"hostname_id\":\"0d89c70d-ad9f-4843-b99f-6cc0252067e9\",\"metadata\":"
    "{\"customer\":\"shop\"},\"origin_server\":\"origin.shop.example.com\"},\"certificate\":"
    "{\"id\":\"7e7b8deba8538af625850b7b2530034c\",\"type\":\"dv\",\"method\":\"txt\",\"settings\":"
    "{\"min_tls_version\":\"1.2\",\"http2\":\"on\"}},\"issued\":{\"domains\":[\"shop.example.com\"],"
    "\"issuer\":\"GoogleTrustServices\",\"serial_number\":\"{{n}}\",\"signature\":"
    "\"ECDSAWithSHA256\",\"uploaded_at\":\"{{time}}\",\"expires_at\":\"{{expires}}\","
    "\"custom_csr_id\":\"7b163417-1d2b-4c84-a38a-2fb7a0cd7752\"},\"alert_certificate\":{\"id\":"
    "\"4ec9c1a4-9d32-4bb5-a1c4-0c1e0e2a7b91\",\"status\":\"active\",\"domains\":[\"shop.example.com\"]}}";

/* An SSL for SaaS event (PROVIDERS.md §1.6) without its type, custom hostname and certificate. */
static const char cf_saas[] =
    "{\"metadata\":{\"event\":{\"id\":\"{{id}}\",\"created_at\":\"{{time}}\"},\"account\":"
    "{\"id\":\"" CF_ACCOUNT "\"},\"zone\":{\"id\":\"" CF_ZONE "\"}},\"data\":{\"hostname\":"
    "\"shop.example.com\"}}";
/* What a certificate pending validation or issuance has instead of facts; and when that fails. */
static const char cf_pending[] =
    "{\"validation_records\":[{\"txt_name\":\"_acme-challenge.shop.example.com\",\"txt_value\":"
    "\"ca3-64ce913ebfe74edeb2e8813e3928e359\"}]}";
static const char cf_pending_failed[] =
    "{\"validation_records\":[{\"txt_name\":\"_acme-challenge.shop.example.com\",\"txt_value\":"
    "\"ca3-64ce913ebfe74edeb2e8813e3928e359\"}],\"validation_errors\":[{\"message\":"
    "\"caa_error: shop.example.com\"}]}";
/* A certificate expiration alert in the notification envelope (PROVIDERS.md §1.3), without its
 * ts and certificate. */
static const char cf_alert[] =
    "{\"name\":\"Certificate expiration\",\"text\":\"Certificate expires in {{days}} days\","
    "\"account_id\":\"" CF_ACCOUNT "\",\"policy_id\":\"749b911ea5d04344a58e45edd099b328\","
    "\"policy_name\":\"Certificate expiration\",\"alert_type\":\"hostname_aop_custom"
    CF_EXPIRATION_ALERT "\",\"alert_correlation_id\":\"{{id}}\",\"alert_event\":"
    "\"ALERT_STATE_EVENT_START\",\"data\":{\"account_name\":\"Example\",\"account_tag\":\""
    CF_ACCOUNT "\",\"days_til_expiration\":{{days}},\"zone_name\":\"shop.example.com\",\"zone_tag\":\""
    CF_ZONE "\"}}";
/* The destination test message (PROVIDERS.md §1.3) with two members of the envelope, ts (set
 * when sent) and alert_correlation_id, so that each sample is a new event (its id is the hash of
 * the body). */
static const char cf_test[] =
    "{\"text\":\"Hello World! This is a test message sent from https://cloudflare.com. If you "
    "can see this, your webhook is configured properly.\",\"alert_correlation_id\":\"{{id}}\"}";

/* Pushes the SSL for SaaS event of cf_types[i] (cf_sample decoded is at desc). */
static void saas_sample(lua_State *L, size_t i, int desc)
{
    const char *to = cf_types[i].to, *rest = cf_types[i].rest;
    int pending = to != NULL && (strcmp(to, "pending_validation") == 0 ||
                                 strcmp(to, "pending_issuance") == 0);
    fields_push_decoded(L, cf_saas, NULL);
    int p = lua_gettop(L);
    int data = fields_get_table(L, p, "data");
    PUT(L, data, fields_get_table(L, desc, "hostname"), cf_hostname_fields);
    if (pending)
        fields_push_decoded(L, fields_has_suffix(rest, ".failed") ? cf_pending_failed : cf_pending,
                            NULL);
    else
        lua_newtable(L);
    int ssl = lua_gettop(L);
    PUT(L, ssl, fields_get_table(L, desc, "certificate"), cf_cert_fields);
    if (!pending)
        PUT(L, ssl, fields_get_table(L, desc, "issued"), cf_cert_fields);
    fields_set_str(L, ssl, "status", to ? to : "active");
    lua_pushvalue(L, ssl);
    lua_setfield(L, data, "ssl");
    int event = fields_get_table(L, fields_get_table(L, p, "metadata"), "event");
    lua_pushfstring(L, "%s%s", cf_families[0], rest); /* ssl.custom_hostname_certificate. */
    lua_setfield(L, event, "type");
    lua_settop(L, p);
}

/* Samples of every type of cf_types -- SSL for SaaS events but for the expiration, a
 * certificate alert -- and the test message. */
static int sample(lua_State *L, const char *type, char *err, size_t errlen)
{
    static const char *const test = "notification.test", *const expiring =
        "certificate.expiration.upcoming";
    size_t i = 0;
    if (type == NULL) {
        lua_newtable(L);
        for (; i < COUNT(cf_types); i++)
            fields_add_type(L, lua_gettop(L), cf_types[i].type);
        fields_add_type(L, lua_gettop(L), test);
        return 0;
    }
    while (i < COUNT(cf_types) && strcmp(cf_types[i].type, type) != 0)
        i++;
    if (i == COUNT(cf_types) && strcmp(type, test) != 0) {
        snprintf(err, errlen, "no sample of %s", type);
        return -1;
    }
    luaL_checkstack(L, 40, "sample");
    fields_push_decoded(L, cf_sample, type);
    int desc = lua_gettop(L);
    if (strcmp(type, test) == 0 || strcmp(type, expiring) == 0) {
        int alert = strcmp(type, expiring) == 0;
        fields_push_decoded(L, alert ? cf_alert : cf_test, type);
        lua_pushinteger(L, (lua_Integer)time_now());
        lua_setfield(L, -2, "ts");
        if (alert)
            PUT(L, fields_get_table(L, desc + 1, "data"),
                fields_get_table(L, desc, "alert_certificate"), cf_alert_cert_fields);
        lua_settop(L, desc + 1);
    } else {
        saas_sample(L, i, desc);
    }
    lua_remove(L, desc);
    return fields_encode(L, err, errlen);
}

static const char *const settings[] = {"secret", NULL};

const struct provider cloudflare_provider = {
    .name = "cloudflare",
    .settings = settings,
    .configure = configure,
    .release = release,
    .head = head,
    .normalize = normalize,
    .detect = detect,
    .send = send,
    .sample = sample,
    .states = cf_states,
};
