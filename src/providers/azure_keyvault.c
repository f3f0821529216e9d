/*
 * azure_keyvault.c -- the Azure Key Vault provider (DESIGN §3-5, PROVIDERS.md §3.2): Key Vault
 * events as Azure Event Grid delivers them to a webhook.
 *
 * Authentication: a secret in the endpoint URL's `key` query parameter, or in a header (a
 * delivery property of the event subscription; auth.c), checked from the head. Shapes: the
 * Event Grid schema (a JSON array, one event per element) and CloudEvents 1.0 in structured
 * mode (one object, or an array: a batch) or binary mode (source.c makes it structured);
 * every element is its own event, all committed together. Handshakes, answered without journaling: Event Grid's
 * Microsoft.EventGrid.SubscriptionValidationEvent (200 {"validationResponse": code}) and the
 * CloudEvents abuse-protection OPTIONS request (200 with WebHook-Allowed-Origin). Certificate
 * events map through kv_types; key, secret and other events are accepted as unknown. The
 * published quirks are kept: "ObjectName " with a trailing space, a Version with a leading
 * space, NBF and EXP as numeric strings.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "providers/auth.h"
#include "providers/fields.h"
#include "providers/provider.h"

#define DEFAULT_HEADER "x-api-key"
#define VALIDATION_EVENT "Microsoft.EventGrid.SubscriptionValidationEvent"

static const struct {
    const char *provider_type, *type;
} kv_types[] = {
    {"Microsoft.KeyVault.CertificateNewVersionCreated", "certificate.issuance.succeeded"},
    {"Microsoft.KeyVault.CertificateNearExpiry", "certificate.expiration.upcoming"},
    {"Microsoft.KeyVault.CertificateExpired", "certificate.expiration.reached"},
};

static const struct field kv_cert_fields[] = {
    {"uri", "Id", F_STR},
    {"not_before", "NBF", F_TIME},
    {"expires_at", "EXP", F_TIME},
};

/* Pushes the string value of data[k], or of data["k "] (Azure's documented example has the
 * key with a trailing space), trimmed of spaces; NULL (nothing pushed) when neither is there. */
static const char *quirky_string(lua_State *L, int data, const char *k)
{
    char spaced[64];
    snprintf(spaced, sizeof spaced, "%s ", k);
    const char *s = fields_get_string(L, data, k);
    if (s == NULL && (s = fields_get_string(L, data, spaced)) == NULL)
        return NULL;
    size_t n = lua_rawlen(L, -1);
    while (n > 0 && *s == ' ')
        s++, n--;
    while (n > 0 && s[n - 1] == ' ')
        n--;
    lua_pop(L, 1); /* s stays valid: the string is still in data */
    if (n == 0)
        return NULL;
    lua_pushlstring(L, s, n);
    return lua_tostring(L, -1);
}

/* Fills the event at ev from one Event Grid or CloudEvents event at e: 0, or -1. */
static int fill(lua_State *L, int e, int ev, char *err, size_t errlen)
{
    int top = lua_gettop(L);
    if (lua_type(L, e) != LUA_TTABLE) {
        snprintf(err, errlen, "not a recognizable Azure Event Grid payload: an event is not a "
                              "JSON object");
        return -1;
    }
    int ce = fields_get_string(L, e, "specversion") != NULL;
    const char *ptype = fields_get_string(L, e, ce ? "type" : "eventType");
    if (ptype == NULL) {
        snprintf(err, errlen, "not a recognizable Azure Event Grid payload: an event has no "
                              "\"%s\"", ce ? "type" : "eventType");
        lua_settop(L, top);
        return -1;
    }
    const char *type = "unknown";
    for (size_t i = 0; i < COUNT(kv_types); i++)
        if (strcmp(ptype, kv_types[i].provider_type) == 0)
            type = kv_types[i].type;
    fields_set_str(L, ev, "type", type);
    fields_set_str(L, ev, "provider_type", ptype);
    lua_pushinteger(L, 1);
    lua_setfield(L, ev, "payload_version");
    if (fields_get_string(L, e, "id") != NULL) {
        lua_pushliteral(L, "azure-keyvault:");
        lua_insert(L, -2);
        lua_concat(L, 2);
        lua_setfield(L, ev, "id");
    }
    double t;
    fields_get(L, e, ce ? "time" : "eventTime");
    if (fields_epoch(L, -1, &t) == 0) {
        event_push_epoch(L, t);
        lua_setfield(L, ev, "occurred_at");
    }
    /* /subscriptions/<id>/resourceGroups/...: the subscription is the account */
    const char *topic = fields_get_string(L, e, ce ? "source" : "topic");
    if (topic != NULL && strncmp(topic, "/subscriptions/", 15) == 0) {
        const char *id = topic + 15, *end = strchr(id, '/');
        size_t n = end ? (size_t)(end - id) : strlen(id);
        if (n > 0 && id[0] != '{') { /* the documentation's "{subscription-id}" */
            lua_pushlstring(L, id, n);
            lua_setfield(L, ev, "account");
        }
    }
    int data = fields_get_table(L, e, "data");
    if (fields_get_string(L, data, "VaultName") != NULL)
        lua_setfield(L, ev, "instance");
    const char *otype = fields_get_string(L, data, "ObjectType");
    if ((otype != NULL && strcmp(otype, "Certificate") == 0) ||
        fields_has_prefix(ptype, "Microsoft.KeyVault.Certificate")) {
        int cert = fields_push_certificate(L, data, kv_cert_fields, COUNT(kv_cert_fields));
        if (!cert) {
            lua_newtable(L);
            cert = lua_gettop(L);
        }
        const char *name = quirky_string(L, data, "ObjectName");
        fields_set_str(L, cert, "name", name);
        fields_set_str(L, cert, "version", quirky_string(L, data, "Version"));
        /* the certificate, whatever its version: the URI without the version */
        const char *uri = fields_get_string(L, data, "Id");
        if (uri != NULL) {
            const char *slash = strrchr(uri, '/');
            const char *certs = strstr(uri, "/certificates/");
            if (certs != NULL && slash != NULL && slash > certs + 14)
                lua_pushlstring(L, uri, (size_t)(slash - uri));
            else
                lua_pushvalue(L, -1);
            lua_setfield(L, cert, "id");
        } else if (name != NULL) {
            fields_set_str(L, cert, "id", name);
        }
        lua_pushnil(L);
        if (lua_next(L, cert) != 0) {
            lua_pop(L, 2);
            lua_pushvalue(L, cert);
            fields_set_certificate(L, ev);
        }
    }
    lua_settop(L, top);
    return 0;
}

/* ---- the provider ------------------------------------------------------------------------------- */

static int configure(lua_State *L, int t, struct source *s, char *err, size_t errlen)
{
    return auth_source_configure(L, t, s, DEFAULT_HEADER, 0,
                                 "sent as the key query parameter of the endpoint URL, "
                                 "...?key=<secret>, or in the " DEFAULT_HEADER " header",
                                 err, errlen);
}

static int authentic(const struct source *s, const struct request *rq)
{
    const struct auth *a = s->priv;
    return !auth_has(a) || secrets_match(&a->secrets, request_query(rq, "key")) ||
           auth_check(a, rq);
}

/* The CloudEvents webhook abuse protection (CloudEvents HTTP webhook spec §4): an OPTIONS
 * request naming its origin is granted it. */
static int head(const struct source *s, const struct request *rq, struct reply *r, char *err,
                size_t errlen)
{
    const char *origin = request_header(rq, "WebHook-Request-Origin");
    int ok = authentic(s, rq);
    if (!ok)
        snprintf(err, errlen, "missing or wrong key query parameter or %s header",
                 ((const struct auth *)s->priv)->header);
    if (strcmp(rq->method, "OPTIONS") != 0 || origin == NULL)
        return ok ? 0 : 401;
    r->status = ok ? 200 : 401;
    buf_adds(&r->body, ok ? "{\"status\":\"allowed\"}"
                          : "{\"error\":\"unauthorized\",\"message\":\"missing or wrong key\"}");
    if (ok) { /* a static string: the origin itself is not kept past the request */
        r->header = "WebHook-Allowed-Origin";
        r->value = "*";
    }
    return 0;
}

/* The Event Grid validation handshake: r is the reply when the events at list hold one. */
static int validation(lua_State *L, int list, struct reply *r)
{
    for (lua_Integer i = 1; lua_rawgeti(L, list, i) == LUA_TTABLE; i++) {
        int e = lua_gettop(L);
        const char *et = fields_get_string(L, e, "eventType");
        if (et != NULL && strcmp(et, VALIDATION_EVENT) == 0) {
            const char *code = fields_get_string(L, fields_get_table(L, e, "data"),
                                                 "validationCode");
            r->status = code ? 200 : 400;
            if (code != NULL) {
                buf_adds(&r->body, "{\"validationResponse\":");
                buf_json_str(&r->body, code, lua_rawlen(L, -1));
                buf_adds(&r->body, "}");
                log_msg(LOG_INFO, "azure-keyvault: answered the Event Grid subscription "
                                  "validation");
            } else {
                buf_adds(&r->body, "{\"error\":\"bad_request\",\"message\":\"the subscription "
                                   "validation event has no data.validationCode\"}");
            }
            lua_settop(L, list);
            return 1;
        }
        lua_settop(L, list);
    }
    lua_settop(L, list);
    return 0;
}

static int normalize(lua_State *L, int body, const struct source *s, const struct request *rq,
                     struct reply *r, char *err, size_t errlen)
{
    (void)s, (void)rq;
    int top = lua_gettop(L), list = body;
    luaL_checkstack(L, 40, "normalize");
    int single = lua_type(L, body) == LUA_TTABLE && lua_rawlen(L, body) == 0 &&
                 fields_get_string(L, body, "specversion") != NULL;
    lua_settop(L, top);
    if (single) { /* one CloudEvent */
        lua_createtable(L, 1, 0);
        lua_pushvalue(L, body);
        lua_rawseti(L, -2, 1);
        list = lua_gettop(L);
    } else if (lua_type(L, body) != LUA_TTABLE || lua_rawlen(L, body) == 0) {
        lua_settop(L, top);
        snprintf(err, errlen, "not a recognizable Azure Event Grid payload: expected a JSON array "
                              "of events (Event Grid schema, or a CloudEvents batch) or one "
                              "CloudEvents object");
        return 400;
    }
    if (validation(L, list, r)) {
        lua_settop(L, top);
        return 0;
    }
    lua_Integer n = (lua_Integer)lua_rawlen(L, list);
    lua_createtable(L, (int)n, 0);
    int out = lua_gettop(L);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, list, i);
        lua_createtable(L, 0, 12);
        int ev = lua_gettop(L);
        if (fill(L, ev - 1, ev, err, errlen) != 0) {
            lua_settop(L, top);
            return 400;
        }
        lua_pushvalue(L, ev - 1); /* raw: the event as Azure sent it */
        lua_setfield(L, ev, "raw");
        lua_rawseti(L, out, i);
        lua_settop(L, out);
    }
    if (list != body)
        lua_remove(L, list);
    return 0;
}

static int detect(lua_State *L, int body)
{
    int top = lua_gettop(L), found = 0, e = body;
    if (lua_type(L, body) == LUA_TTABLE && lua_rawlen(L, body) > 0 &&
        lua_rawgeti(L, body, 1) == LUA_TTABLE)
        e = lua_gettop(L);
    if (lua_type(L, e) == LUA_TTABLE) {
        const char *t = fields_get_string(L, e, "eventType");
        if (t == NULL && fields_get_string(L, e, "specversion") != NULL)
            t = fields_get_string(L, e, "type");
        found = t != NULL && (fields_has_prefix(t, "Microsoft.KeyVault.") ||
                              strcmp(t, VALIDATION_EVENT) == 0);
    }
    lua_settop(L, top);
    return found;
}

/* Event Grid calls the endpoint URL with the key in it, or sends the header: certhook send
 * sends the header. A CloudEvents body goes as application/cloudevents(-batch)+json. */
static int send(lua_State *L, const char *body, size_t n, int cfg, int opts, int hdr, char *err,
                size_t errlen)
{
    int top = lua_gettop(L);
    auth_send(L, cfg, opts, hdr, DEFAULT_HEADER);
    if (json_decode(L, body, n, err, errlen) == 0 && lua_type(L, -1) == LUA_TTABLE) {
        int t = lua_gettop(L), ce;
        if (lua_rawlen(L, t) > 0) {
            ce = lua_rawgeti(L, t, 1) == LUA_TTABLE &&
                 fields_get_string(L, lua_gettop(L), "specversion") != NULL;
            if (ce) {
                lua_pushliteral(L, "application/cloudevents-batch+json");
                lua_setfield(L, hdr, "Content-Type");
            }
        } else if (fields_get_string(L, t, "specversion") != NULL) {
            lua_pushliteral(L, "application/cloudevents+json");
            lua_setfield(L, hdr, "Content-Type");
        }
    }
    lua_settop(L, top);
    lua_pushlstring(L, body, n);
    return 0;
}

/* One certificate event in the Event Grid schema; %s: the event type. */
#define KV_SAMPLE(et)                                                                             \
    "[{\"id\":\"{{id}}\",\"topic\":\"/subscriptions/4a570962-701a-475e-bf5b-8dc76ec748ff/"         \
    "resourceGroups/rg-certs/providers/Microsoft.KeyVault/vaults/certhook-kv\",\"subject\":"       \
    "\"shop-example-com\",\"eventType\":\"Microsoft.KeyVault." et "\",\"data\":{\"Id\":"         \
    "\"https://certhook-kv.vault.azure.net/certificates/shop-example-com/"                         \
    "89e4274cf92540479770a1178cce17ff\",\"VaultName\":\"certhook-kv\",\"ObjectType\":"            \
    "\"Certificate\",\"ObjectName\":\"shop-example-com\",\"Version\":"                            \
    "\"89e4274cf92540479770a1178cce17ff\",\"NBF\":1745695048,\"EXP\":{{expires_epoch}}},"         \
    "\"dataVersion\":\"1\",\"metadataVersion\":\"1\",\"eventTime\":\"{{time}}\"}]"

static const struct sample samples[] = {
    {"certificate.issuance.succeeded", KV_SAMPLE("CertificateNewVersionCreated")},
    {"certificate.expiration.upcoming", KV_SAMPLE("CertificateNearExpiry")},
    {"certificate.expiration.reached", KV_SAMPLE("CertificateExpired")},
};

static int sample(lua_State *L, const char *type, char *err, size_t errlen)
{
    return SAMPLE(L, samples, type, err, errlen);
}

static const char *const settings[] = {"secret", "header", NULL};
static const char *const content_types[] = {"application/cloudevents+json",
                                            "application/cloudevents-batch+json", NULL};

const struct provider azure_keyvault_provider = {
    .name = "azure-keyvault",
    .settings = settings,
    .content_types = content_types,
    .cloudevents = 1,
    .configure = configure,
    .release = auth_source_release,
    .head = head,
    .normalize = normalize,
    .detect = detect,
    .send = send,
    .sample = sample,
};
