/*
 * digicert.c -- the DigiCert CertCentral provider (DESIGN §3-5, PROVIDERS.md §3.5): its
 * webhook key and its {event, data} payloads to the canonical event.
 *
 * Authentication: the webhook's secret, sent verbatim in X-WEBHOOK-KEY (auth.c), checked from
 * the head. DigiCert gives no event id: the event's id is the hash of the body (source.c).
 * Certificate facts come from data.certificate_chain[1].pem when the webhook is set up to send
 * the chain (base/x509.c); otherwise the event names the order and certificate ids only.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "base/x509.h"
#include "providers/auth.h"
#include "providers/fields.h"
#include "providers/provider.h"

#define DEFAULT_HEADER "X-WEBHOOK-KEY"

static const struct {
    const char *event, *type;
} dc_types[] = {
    {"certificate_issued", "certificate.issuance.succeeded"},
    {"certificate_revoked", "certificate.revocation.succeeded"},
    {"order_rejected", "certificate.issuance.failed"},
    {"domain_validated", "certificate.validation.succeeded"},
    {"organization_validated", "certificate.validation.succeeded"},
    {"domain_expired", "certificate.validation.expired"},
    {"organization_expired", "certificate.validation.expired"},
    {"domain_revalidation_notice", "certificate.validation.required"},
    {"organization_revalidation_notice", "certificate.validation.required"},
};

static const struct field dc_cert_fields[] = {
    {"id", "certificate_id", F_ID},
    {"order_id", "order_id", F_ID},
};
static const struct field dc_validation_fields[] = {
    {"domain", "domain_name", F_STR},
    {"method", "validation_type", F_STR},
};

/* Adds to the certificate at cert what the leaf PEM (n bytes) says. */
static void leaf_facts(lua_State *L, int cert, const char *pem, size_t n)
{
    char err[200];
    struct x509_facts f;
    if (x509_facts_pem(pem, n, &f, err, sizeof err) != 0) {
        log_msg(LOG_DEBUG, "digicert: certificate_chain[1].pem: %s", err);
        return;
    }
    lua_createtable(L, (int)f.ndomains, 0);
    for (size_t i = 0; i < f.ndomains; i++) {
        lua_pushstring(L, f.domains[i]);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    lua_setfield(L, cert, "domains");
    fields_set_str(L, cert, "serial_number", f.serial_number);
    fields_set_str(L, cert, "issuer", f.issuer);
    event_push_epoch(L, f.not_before);
    lua_setfield(L, cert, "not_before");
    event_push_epoch(L, f.not_after);
    lua_setfield(L, cert, "expires_at");
    x509_facts_free(&f);
}

/* Fills the event at ev from the payload at raw: 0, or -1 with a message. */
static int fill(lua_State *L, int raw, int ev, char *err, size_t errlen)
{
    const char *name = lua_type(L, raw) == LUA_TTABLE && lua_rawlen(L, raw) == 0
                           ? fields_get_string(L, raw, "event")
                           : NULL;
    if (name == NULL) {
        snprintf(err, errlen, "not a recognizable DigiCert payload: expected a JSON object "
                              "{\"event\": \"certificate_issued\", \"data\": {...}}");
        return -1;
    }
    const char *type = "unknown";
    for (size_t i = 0; i < COUNT(dc_types); i++)
        if (strcmp(name, dc_types[i].event) == 0)
            type = dc_types[i].type;
    fields_set_str(L, ev, "type", type);
    fields_set_str(L, ev, "provider_type", name);
    lua_pushinteger(L, 1);
    lua_setfield(L, ev, "payload_version");

    int data = fields_get_table(L, raw, "data");
    int cert = fields_push_certificate(L, data, dc_cert_fields, COUNT(dc_cert_fields));
    int chain = fields_get_table(L, data, "certificate_chain");
    int leaf = chain && lua_rawgeti(L, chain, 1) == LUA_TTABLE ? lua_gettop(L) : 0;
    const char *pem = fields_get_string(L, leaf, "pem");
    if (pem != NULL) {
        if (!cert) {
            lua_newtable(L);
            cert = lua_gettop(L);
        }
        leaf_facts(L, cert, pem, lua_rawlen(L, -1));
        if (fields_get_string(L, leaf, "subject_common_name") != NULL)
            lua_setfield(L, cert, "name");
    }
    if (cert) {
        const char *host = fields_first_domain(L, cert);
        fields_set_str(L, ev, "hostname", host);
        lua_pushvalue(L, cert);
        fields_set_certificate(L, ev);
    }
    lua_newtable(L);
    int v = lua_gettop(L);
    COPY(L, v, data, dc_validation_fields);
    lua_pushnil(L);
    if (lua_next(L, v) != 0) { /* a domain or organization validation */
        lua_pop(L, 2);
        lua_pushvalue(L, v);
        lua_setfield(L, ev, "validation");
        if (!cert && fields_get_string(L, v, "domain") != NULL)
            lua_setfield(L, ev, "hostname");
    }
    return 0;
}

/* ---- the provider ------------------------------------------------------------------------------- */

static int configure(lua_State *L, int t, struct source *s, char *err, size_t errlen)
{
    return auth_source_configure(L, t, s, DEFAULT_HEADER, 0,
                                 "the webhook's secret key, which DigiCert sends in X-WEBHOOK-KEY",
                                 err, errlen);
}

static int normalize(lua_State *L, int body, const struct source *s, const struct request *rq,
                     struct reply *r, char *err, size_t errlen)
{
    (void)s, (void)rq, (void)r;
    return fields_one_event(L, body, fill, err, errlen);
}

static int detect(lua_State *L, int body)
{
    int top = lua_gettop(L);
    int found = lua_type(L, body) == LUA_TTABLE && fields_get_string(L, body, "event") &&
                fields_get_table(L, body, "data") &&
                fields_get(L, body, "specversion") == LUA_TNIL;
    lua_settop(L, top);
    return found;
}

static int send(lua_State *L, const char *body, size_t n, int cfg, int opts, int hdr, char *err,
                size_t errlen)
{
    (void)err, (void)errlen;
    auth_send(L, cfg, opts, hdr, DEFAULT_HEADER);
    lua_pushlstring(L, body, n);
    return 0;
}

static const struct sample samples[] = {
    {"certificate.issuance.succeeded",
     "{\"event\":\"certificate_issued\",\"data\":{\"order_id\":{{n}},\"certificate_id\":{{n}}}}"},
    {"certificate.revocation.succeeded",
     "{\"event\":\"certificate_revoked\",\"data\":{\"order_id\":{{n}},\"certificate_id\":{{n}}}}"},
    {"certificate.issuance.failed",
     "{\"event\":\"order_rejected\",\"data\":{\"order_id\":{{n}},\"certificate_id\":{{n}}}}"},
    {"certificate.validation.succeeded",
     "{\"event\":\"domain_validated\",\"data\":{\"domain_id\":{{n}},"
     "\"domain_name\":\"shop.example.com\"}}"},
    {"certificate.validation.expired",
     "{\"event\":\"domain_expired\",\"data\":{\"domain_id\":{{n}},"
     "\"domain_name\":\"shop.example.com\"}}"},
    {"certificate.validation.required",
     "{\"event\":\"domain_revalidation_notice\",\"data\":{\"domain_id\":{{n}},"
     "\"domain_name\":\"shop.example.com\"}}"},
};

static int sample(lua_State *L, const char *type, char *err, size_t errlen)
{
    return SAMPLE(L, samples, type, err, errlen);
}

static const char *const settings[] = {"secret", "header", NULL};

const struct provider digicert_provider = {
    .name = "digicert",
    .settings = settings,
    .configure = configure,
    .release = auth_source_release,
    .head = auth_source_head,
    .normalize = normalize,
    .detect = detect,
    .send = send,
    .sample = sample,
};
