/*
 * ibm_sm.c -- the IBM Cloud Secrets Manager provider (DESIGN §3-5, PROVIDERS.md §2.7):
 * Secrets Manager notifications as IBM Cloud Event Notifications delivers them to a webhook.
 *
 * Authentication: a secret in a header the Event Notifications webhook destination sends
 * (auth.c; default Authorization, "Bearer <secret>" or the secret itself). Shapes: the Secrets
 * Manager payload itself ({event_type, event_sub_type, secret_type, secrets: [...],
 * source_instance_*, source_service: "SecretsManager"}), or a CloudEvents 1.0 envelope with it
 * in data (binary content mode too: source.c makes it structured). One notification lists up to 100 secrets: it is one event with one certificate per
 * secret. Types map through sm_types; event_sub_type in_<N>_days gives days_to_expiry.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "providers/auth.h"
#include "providers/fields.h"
#include "providers/provider.h"

#define DEFAULT_HEADER "Authorization"
#define CE_PREFIX "com.ibm.cloud.secrets-manager."

static const struct {
    const char *event_type, *type;
} sm_types[] = {
    {"secret_created", "certificate.issuance.succeeded"},
    {"secret_creation_failed", "certificate.issuance.failed"},
    {"secret_rotated", "certificate.renewal.succeeded"},
    {"secret_rotation_failed", "certificate.renewal.failed"},
    {"secret_about_to_expire", "certificate.expiration.upcoming"},
    {"secret_expired", "certificate.expiration.reached"},
    {"secret_revoked", "certificate.revocation.succeeded"},
    {"secret_deleted", "certificate.deletion.succeeded"},
    {"secret_deletion_failed", "certificate.deletion.failed"},
    {"test_event", "notification.test"},
};

static const struct field sm_event_fields[] = {
    {"instance", "source_instance_crn", F_STR},
    {"dashboard_url", "source_instance_dashboard_url", F_STR},
};
static const struct field sm_cert_fields[] = {
    {"id", "secret_id", F_STR},
    {"crn", "secret_id", F_STR},
    {"name", "secret_name", F_STR},
    {"type", "secret_type", F_STR},
    {"domains", "domains", F_SPLIT},
    {"serial_number", "serial_number", F_STR},
    {"expires_at", "secret_expiration", F_TIME},
};

/* event.region and event.account from an instance CRN
 * crn:v1:bluemix:public:secrets-manager:<region>:a/<account>:<instance>:: */
static void crn_scopes(lua_State *L, int ev, const char *crn)
{
    const char *p = crn;
    for (int field = 0; p != NULL && *p; field++) {
        const char *end = strchr(p, ':');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        if (field == 5 && n > 0) {
            lua_pushlstring(L, p, n);
            lua_setfield(L, ev, "region");
        } else if (field == 6 && n > 2 && p[0] == 'a' && p[1] == '/') {
            lua_pushlstring(L, p + 2, n - 2);
            lua_setfield(L, ev, "account");
        }
        p = end ? end + 1 : NULL;
    }
}

/* N of "in_N_days" / "in_N_day", or -1. */
static long days_of(const char *sub)
{
    char *end;
    if (sub == NULL || strncmp(sub, "in_", 3) != 0 || sub[3] < '0' || sub[3] > '9')
        return -1;
    long n = strtol(sub + 3, &end, 10);
    return strcmp(end, "_days") == 0 || strcmp(end, "_day") == 0 ? n : -1;
}

/* Fills the event at ev from the payload at raw: 0, or -1 with a message. */
static int fill(lua_State *L, int raw, int ev, char *err, size_t errlen)
{
    if (lua_type(L, raw) != LUA_TTABLE || lua_rawlen(L, raw) > 0) {
        snprintf(err, errlen, "not a recognizable IBM Secrets Manager payload: expected a JSON "
                              "object");
        return -1;
    }
    int p = raw;               /* the Secrets Manager payload */
    const char *ce_sub = NULL; /* the sub-type in a CloudEvents type ("...:in_30_days") */
    const char *et = NULL;
    if (fields_get_string(L, raw, "specversion") != NULL) { /* a CloudEvents envelope */
        p = fields_get_table(L, raw, "data");
        if (fields_get_string(L, raw, "id") != NULL) {
            lua_pushliteral(L, "ibm-sm:");
            lua_insert(L, -2);
            lua_concat(L, 2);
            lua_setfield(L, ev, "id");
        }
        double t;
        fields_get(L, raw, "time");
        if (fields_epoch(L, -1, &t) == 0) {
            event_push_epoch(L, t);
            lua_setfield(L, ev, "occurred_at");
        }
        const char *ce = fields_get_string(L, raw, "type");
        if (ce != NULL && fields_has_prefix(ce, CE_PREFIX)) {
            const char *name = ce + strlen(CE_PREFIX), *colon = strchr(name, ':');
            lua_pushlstring(L, name, colon ? (size_t)(colon - name) : strlen(name));
            et = lua_tostring(L, -1);
            ce_sub = colon ? colon + 1 : NULL;
        }
    }
    const char *own = fields_get_string(L, p, "event_type");
    if (own != NULL)
        et = own;
    if (et == NULL) {
        snprintf(err, errlen, "not a recognizable IBM Secrets Manager payload: expected "
                              "\"event_type\" (the Secrets Manager payload), or a CloudEvents "
                              "envelope with it in \"data\"");
        return -1;
    }
    const char *type = "unknown";
    for (size_t i = 0; i < COUNT(sm_types); i++)
        if (strcmp(et, sm_types[i].event_type) == 0)
            type = sm_types[i].type;
    fields_set_str(L, ev, "type", type);
    fields_set_str(L, ev, "provider_type", et);
    lua_pushinteger(L, 1);
    lua_setfield(L, ev, "payload_version");
    const char *sub = fields_get_string(L, p, "event_sub_type");
    long days = days_of(sub ? sub : ce_sub);
    if (days >= 0) {
        lua_pushinteger(L, days);
        lua_setfield(L, ev, "days_to_expiry");
    }
    COPY(L, ev, p, sm_event_fields);
    const char *crn = fields_get_string(L, p, "source_instance_crn");
    if (crn != NULL)
        crn_scopes(L, ev, crn);

    const char *secret_type = fields_get_string(L, p, "secret_type");
    int secrets = fields_get_table(L, p, "secrets");
    lua_newtable(L);
    int list = lua_gettop(L), n = 0;
    lua_newtable(L);
    int errors = lua_gettop(L), nerr = 0;
    if (fields_get_string(L, p, "failure_reason") != NULL)
        lua_rawseti(L, errors, ++nerr);
    double first_time = -1;
    for (lua_Integer i = 1; secrets && lua_rawgeti(L, secrets, i) != LUA_TNIL; i++) {
        int item = lua_gettop(L);
        if (lua_type(L, item) != LUA_TTABLE) {
            lua_pop(L, 1);
            continue;
        }
        lua_newtable(L);
        int c = lua_gettop(L);
        COPY(L, c, item, sm_cert_fields);
        if (secret_type != NULL && lua_getfield(L, c, "type") == LUA_TNIL)
            fields_set_str(L, c, "type", secret_type);
        if (fields_get_string(L, item, "failure_reason") != NULL)
            lua_rawseti(L, errors, ++nerr);
        double t;
        fields_get(L, item, "event_time");
        if (first_time < 0 && fields_epoch(L, -1, &t) == 0)
            first_time = t;
        lua_settop(L, c);
        lua_rawseti(L, list, ++n);
        lua_settop(L, item - 1);
    }
    if (first_time >= 0 && lua_getfield(L, ev, "occurred_at") == LUA_TNIL) {
        event_push_epoch(L, first_time);
        lua_setfield(L, ev, "occurred_at");
    }
    if (nerr > 0 && fields_push_joined(L, errors))
        lua_setfield(L, ev, "error");
    if (n > 0) {
        lua_rawgeti(L, list, 1);
        lua_setfield(L, ev, "certificate");
        lua_pushvalue(L, list);
        lua_setfield(L, ev, "certificates");
        lua_rawgeti(L, list, 1);
        fields_set_str(L, ev, "hostname", fields_first_domain(L, lua_gettop(L)));
    }
    return 0;
}

/* ---- the provider ------------------------------------------------------------------------------- */

static int configure(lua_State *L, int t, struct source *s, char *err, size_t errlen)
{
    return auth_source_configure(L, t, s, DEFAULT_HEADER, 0,
                                 "the value the Event Notifications webhook destination sends "
                                 "in its " DEFAULT_HEADER " header", err, errlen);
}

static int normalize(lua_State *L, int body, const struct source *s, const struct request *rq,
                     struct reply *r, char *err, size_t errlen)
{
    (void)s, (void)rq, (void)r;
    return fields_one_event(L, body, fill, err, errlen);
}

/* A Secrets Manager payload, bare or in a CloudEvents envelope. */
static int detect(lua_State *L, int body)
{
    int top = lua_gettop(L), found = 0;
    if (lua_type(L, body) == LUA_TTABLE) {
        const char *svc = fields_get_string(L, body, "source_service");
        const char *ce = fields_get_string(L, body, "type");
        int data = fields_get_string(L, body, "specversion") ? fields_get_table(L, body, "data")
                                                              : 0;
        const char *inner = fields_get_string(L, data, "source_service");
        found = (svc != NULL && strcmp(svc, "SecretsManager") == 0) ||
                (inner != NULL && strcmp(inner, "SecretsManager") == 0) ||
                (data != 0 && ce != NULL && fields_has_prefix(ce, CE_PREFIX));
    }
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

/* A notification of one public certificate in a CloudEvents envelope: %s are the event type,
 * the CloudEvents type's sub-type suffix, the payload's event_sub_type member, the secret's
 * failure_reason member. */
#define SM_SAMPLE(et, ce_sub, sub, failure)                                                     \
    "{\"specversion\":\"1.0\",\"id\":\"{{id}}\",\"source\":\"crn:v1:bluemix:public:secrets-"   \
    "manager:us-south:a/a6cc9f5f21f34323a4175c1117638b40:f1d9a3c8-5b2e-4e7a-9c61-3d8b2a7e4f10"  \
    "::\",\"type\":\"com.ibm.cloud.secrets-manager." et ce_sub "\",\"time\":\"{{time}}\","     \
    "\"datacontenttype\":\"application/json\",\"data\":{\"event_type\":\"" et "\"," sub        \
    "\"secret_type\":\"public_cert\",\"secrets\":[{\"domains\":\"shop.example.com, "           \
    "www.shop.example.com\",\"event_time\":\"{{time}}\",\"event_triggered_by\":"               \
    "\"SecretsManager\"," failure "\"secret_expiration\":\"{{expires}}\","                      \
    "\"secret_group_id\":\"default\",\"secret_id\":\"crn:v1:bluemix:public:secrets-manager:"   \
    "us-south:a/a6cc9f5f21f34323a4175c1117638b40:f1d9a3c8-5b2e-4e7a-9c61-3d8b2a7e4f10:secret:" \
    "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0\",\"secret_name\":\"shop-example-com\","             \
    "\"serial_number\":\"4e:11:0d:7a\"}],\"source_instance_crn\":\"crn:v1:bluemix:public:"      \
    "secrets-manager:us-south:a/a6cc9f5f21f34323a4175c1117638b40:f1d9a3c8-5b2e-4e7a-9c61-"     \
    "3d8b2a7e4f10::\",\"source_service\":\"SecretsManager\"}}"
#define FAILURE "\"failure_reason\":\"DNS challenge failed: no TXT record\","

static const struct sample samples[] = {
    {"certificate.issuance.succeeded", SM_SAMPLE("secret_created", "", "", "")},
    {"certificate.issuance.failed", SM_SAMPLE("secret_creation_failed", "", "", FAILURE)},
    {"certificate.renewal.succeeded", SM_SAMPLE("secret_rotated", "", "", "")},
    {"certificate.renewal.failed", SM_SAMPLE("secret_rotation_failed", "", "", FAILURE)},
    {"certificate.expiration.upcoming",
     SM_SAMPLE("secret_about_to_expire", ":in_{{days}}_days",
               "\"event_sub_type\":\"in_{{days}}_days\",", "")},
    {"certificate.expiration.reached", SM_SAMPLE("secret_expired", "", "", "")},
    {"certificate.revocation.succeeded", SM_SAMPLE("secret_revoked", "", "", "")},
    {"certificate.deletion.succeeded", SM_SAMPLE("secret_deleted", "", "", "")},
    {"certificate.deletion.failed", SM_SAMPLE("secret_deletion_failed", "", "", FAILURE)},
    {"notification.test",
     "{\"specversion\":\"1.0\",\"id\":\"{{id}}\",\"source\":\"crn:v1:bluemix:public:secrets-"
     "manager:us-south:a/a6cc9f5f21f34323a4175c1117638b40:f1d9a3c8-5b2e-4e7a-9c61-3d8b2a7e4f10::"
     "\",\"type\":\"com.ibm.cloud.secrets-manager.test_event\",\"time\":\"{{time}}\",\"data\":"
     "{\"event_type\":\"test_event\",\"source_service\":\"SecretsManager\"}}"},
};

static int sample(lua_State *L, const char *type, char *err, size_t errlen)
{
    return SAMPLE(L, samples, type, err, errlen);
}

static const char *const settings[] = {"secret", "header", NULL};

const struct provider ibm_sm_provider = {
    .name = "ibm-sm",
    .settings = settings,
    .cloudevents = 1,
    .configure = configure,
    .release = auth_source_release,
    .head = auth_source_head,
    .normalize = normalize,
    .detect = detect,
    .send = send,
    .sample = sample,
};
