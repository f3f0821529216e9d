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

/* ---- the poller: GET /zones/{zone}/custom_hostnames (POLLERS.md §1a) ---------------------------- */

struct cf_poll {
    char *zone, *token;
    int per_page;
};

/* zone = "<zone id>", token = "<API token>" (Zone: SSL and Certificates Read), per_page = 5..50. */
static int poll_configure(lua_State *L, int t, struct poller_def *p, char *err, size_t errlen)
{
    char path[160];
    struct cf_poll *c = calloc(1, sizeof *c);
    if (c == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    p->priv = c;
    c->per_page = 50;
    double per_page = 50;
    snprintf(path, sizeof path, "pollers.%s.", p->name);
    if (setting_string(L, t, "zone", &c->zone, path, err, errlen) ||
        setting_string(L, t, "token", &c->token, path, err, errlen) ||
        setting_number(L, t, "per_page", 5, 50, &per_page, path, err, errlen))
        return -1;
    c->per_page = (int)per_page;
    if (c->zone == NULL || strspn(c->zone, "0123456789abcdefABCDEF") != strlen(c->zone)) {
        snprintf(err, errlen, "pollers.%s.zone must be the zone's id (32 hexadecimal digits, "
                              "the dashboard's Overview page shows it)", p->name);
        return -1;
    }
    if (c->token == NULL || strpbrk(c->token, "\r\n") != NULL) {
        snprintf(err, errlen, "pollers.%s.token must be an API token with the permission "
                              "Zone / SSL and Certificates / Read (e.g. token = "
                              "os.getenv(\"CF_API_TOKEN\"))", p->name);
        return -1;
    }
    return 0;
}

static void poll_release(struct poller_def *p)
{
    struct cf_poll *c = p->priv;
    if (c != NULL) {
        free(c->zone);
        free(c->token);
    }
    free(c);
    p->priv = NULL;
}

static int poll_request(const struct poller_def *p, int page, struct poll_request *rq, char *err,
                        size_t errlen)
{
    const struct cf_poll *c = p->priv;
    if (buf_printf(&rq->url, "%s/zones/%s/custom_hostnames?page=%d&per_page=%d", p->api,
                   c->zone, page, c->per_page) != 0 ||
        buf_printf(&rq->headers[0], "Authorization: Bearer %s", c->token) != 0 ||
        buf_adds(&rq->headers[1], "Accept: application/json") != 0) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    rq->nheaders = 2;
    return 0;
}

/* errors[].message of the envelope, joined. */
static int poll_error(lua_State *L, int body)
{
    int top = lua_gettop(L);
    int errs = lua_type(L, body) == LUA_TTABLE ? fields_get_table(L, body, "errors") : 0;
    lua_newtable(L);
    int out = lua_gettop(L), n = 0;
    for (lua_Integer i = 1; errs && lua_rawgeti(L, errs, i) == LUA_TTABLE; i++) {
        int e = lua_gettop(L);
        const char *m = fields_get_string(L, e, "message");
        if (m != NULL) {
            if (fields_get(L, e, "code") == LUA_TNUMBER)
                lua_pushfstring(L, "%s (code %d)", m, (int)lua_tointeger(L, -1));
            else
                lua_pushstring(L, m);
            lua_rawseti(L, out, ++n);
        }
        lua_settop(L, out);
    }
    lua_settop(L, out);
    if (n > 0 && fields_push_joined(L, out)) {
        lua_replace(L, top + 1);
        lua_settop(L, top + 1);
        return 1;
    }
    lua_settop(L, top);
    return 0;
}

/* One observation per custom hostname with a certificate (those without ssl have none). */
static int poll_page(lua_State *L, int body, const struct poller_def *p, int page, int *more,
                     char *err, size_t errlen)
{
    const struct cf_poll *c = p->priv;
    int top = lua_gettop(L);
    luaL_checkstack(L, 20, "poll");
    int result = lua_type(L, body) == LUA_TTABLE ? fields_get_table(L, body, "result") : 0;
    if (result == 0 || (fields_get(L, body, "success") == LUA_TBOOLEAN && !lua_toboolean(L, -1))) {
        lua_settop(L, top);
        snprintf(err, errlen, "not a page of custom hostnames: expected {\"success\": true, "
                              "\"result\": [...]}");
        return -1;
    }
    lua_newtable(L);
    int list = lua_gettop(L), n = 0, items = 0;
    for (lua_Integer i = 1; lua_rawgeti(L, result, i) != LUA_TNIL; i++, lua_settop(L, list)) {
        items++;
        int item = lua_gettop(L);
        int ssl = lua_type(L, item) == LUA_TTABLE ? fields_get_table(L, item, "ssl") : 0;
        const char *host = ssl ? fields_get_string(L, item, "hostname") : NULL;
        const char *status = host ? fields_get_string(L, ssl, "status") : NULL;
        if (status == NULL)
            continue;
        lua_pushnil(L);
        lua_setfield(L, ssl, "custom_key"); /* a private key is never journaled */
        lua_createtable(L, 0, 5);
        int obs = lua_gettop(L);
        event_certificate_key(L, "cloudflare", fields_get_string(L, ssl, "id"), host);
        lua_setfield(L, obs, "key");
        fields_set_str(L, obs, "hostname", host);
        fields_set_str(L, obs, "status", status);
        double t;
        fields_get(L, ssl, "expires_on");
        if (fields_epoch(L, -1, &t) == 0) {
            event_push_epoch(L, t);
            lua_setfield(L, obs, "expires_at");
        }
        lua_pushvalue(L, item);
        lua_setfield(L, obs, "item");
        lua_pushvalue(L, obs);
        lua_rawseti(L, list, ++n);
    }
    lua_settop(L, list);
    /* the last page: an empty one, one shorter than a page, or total_pages / total_count say
     * so (the API's own clients read only page and per_page: stop on an empty page) */
    int info = fields_get_table(L, body, "result_info");
    double per = c->per_page, total_pages = 0, total_count = 0;
    if (info && fields_get(L, info, "per_page") == LUA_TNUMBER && lua_tonumber(L, -1) > 0)
        per = lua_tonumber(L, -1);
    if (info && fields_get(L, info, "total_pages") == LUA_TNUMBER)
        total_pages = lua_tonumber(L, -1);
    if (info && fields_get(L, info, "total_count") == LUA_TNUMBER)
        total_count = lua_tonumber(L, -1);
    *more = items > 0 && items >= per && (total_pages <= 0 || page < total_pages) &&
            (total_count <= 0 || page * per < total_count);
    lua_settop(L, list);
    lua_replace(L, top + 1);
    lua_settop(L, top + 1);
    return 0;
}

/* The SSL for SaaS event a webhook would have told of a certificate going from the status
 * `from` (NULL: unknown) to `to`, by cf_types' transitions: NULL when none would. */
static const char *cf_change_rest(const char *from, const char *to, int new_expiry)
{
    char failed[64];
    const char *timed_out = strstr(to, "_timed_out");
    if (timed_out != NULL && timed_out[10] == '\0') { /* <phase>_timed_out: <phase>.failed */
        snprintf(failed, sizeof failed, "%.*s.failed", (int)(timed_out - to), to);
        for (size_t i = 0; i < COUNT(cf_types); i++)
            if (strcmp(cf_types[i].rest, failed) == 0)
                return cf_types[i].rest;
        return NULL;
    }
    int same = from != NULL && strcmp(from, to) == 0;
    if (same) /* the status stayed: a new expiry is a renewal deployed */
        return new_expiry && strcmp(to, "active") == 0 ? "renewal.succeeded" : NULL;
    const char *any = NULL;
    for (size_t i = 0; i < COUNT(cf_types); i++) {
        const char *f = cf_types[i].from, *t = cf_types[i].to;
        if (t == NULL || strcmp(t, to) != 0 || (f != NULL && strcmp(f, t) == 0))
            continue; /* another target, or a failure that stays where it was */
        if (from != NULL && f != NULL && strcmp(f, from) == 0)
            return cf_types[i].rest;
        if (any == NULL)
            any = cf_types[i].rest;
    }
    return any;
}

static int poll_change(lua_State *L, const struct poller_def *p, int obs, int entry, double now)
{
    const struct cf_poll *c = p->priv;
    char at[40];
    luaL_checkstack(L, 20, "poll");
    const char *rest = NULL;
    lua_createtable(L, 0, 2);
    int payload = lua_gettop(L);
    if (obs != 0) {
        const char *to = fields_get_string(L, obs, "status");
        const char *from = entry ? fields_get_string(L, entry, "status") : NULL;
        double x0 = 0, x1 = 0;
        int new_expiry = entry && fields_get(L, entry, "expires_at") == LUA_TNUMBER &&
                         fields_epoch(L, -1, &x0) == 0 &&
                         fields_get(L, obs, "expires_at") == LUA_TNUMBER &&
                         fields_epoch(L, -1, &x1) == 0 && x0 != x1;
        rest = cf_change_rest(from, to, new_expiry);
        lua_getfield(L, obs, "item");
    } else { /* gone from the API: deleted */
        rest = "deletion.succeeded";
        lua_createtable(L, 0, 3);
        int data = lua_gettop(L);
        fields_set_str(L, data, "hostname", fields_get_string(L, entry, "hostname"));
        lua_createtable(L, 0, 2);
        int ssl = lua_gettop(L);
        const char *id = fields_get_string(L, entry, "certificate_id");
        fields_set_str(L, ssl, "id", id);
        fields_set_str(L, ssl, "status", "deleted");
        lua_settop(L, ssl);
        lua_setfield(L, data, "ssl");
        lua_settop(L, data);
    }
    lua_setfield(L, payload, "data");
    lua_createtable(L, 0, 2);
    int meta = lua_gettop(L);
    lua_createtable(L, 0, 2);
    lua_pushfstring(L, "%s%s", cf_families[0], rest ? rest : "observed");
    lua_setfield(L, -2, "type");
    time_format_iso8601(now, at);
    lua_pushstring(L, at);
    lua_setfield(L, -2, "created_at");
    lua_setfield(L, meta, "event");
    lua_createtable(L, 0, 1);
    fields_set_str(L, lua_gettop(L), "id", c->zone);
    lua_setfield(L, meta, "zone");
    lua_setfield(L, payload, "metadata");
    lua_settop(L, payload); /* top + 1 */
    return rest != NULL ? POLL_EVENT : POLL_QUIET;
}

static const char *const poll_settings[] = {"zone", "token", "per_page", NULL};

static const struct poll_ops cf_poll_ops = {
    .api = "https://api.cloudflare.com/client/v4",
    .rate = 2, /* half of the 1,200 requests per 5 minutes an API token may make */
    .settings = poll_settings,
    .configure = poll_configure,
    .release = poll_release,
    .request = poll_request,
    .page = poll_page,
    .error = poll_error,
    .change = poll_change,
};

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
    .poll = &cf_poll_ops,
};
