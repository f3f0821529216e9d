/*
 * ibm_cm.c -- IBM Cloud Certificate Manager payloads to the canonical event (DESIGN §3,
 * PROVIDERS.md §2, seeds/004).
 *
 * The payload is the JWT's claims (auth.c verified them). Version 1 has no event_type and
 * lists expiring_certificates; versions 2-4 name event_type and list certificates; the v4
 * domain-validation shape names one certificateCRN, a domain and its DNS-01 challenge.
 * Types map through ibm_types.
 */
#include <stdio.h>
#include <string.h>

#include <lauxlib.h>

#include "certhook.h"
#include "normalize.h"

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

/* Pushes cert.domains[1] of the table at cert if any; returns it or NULL (nothing pushed). */

int ibm_cm_normalize(lua_State *L, int raw, int ev, char *err, size_t errlen)
{
    if (lua_type(L, raw) != LUA_TTABLE || lua_rawlen(L, raw) > 0) {
        snprintf(err, errlen,
                 "not a recognizable IBM Certificate Manager payload: expected a JSON object");
        return -1;
    }
    const char *et = normalize_get_string(L, raw, "event_type");
    int certs = normalize_get_table(L, raw, "certificates");
    int v1 = 0;
    if (!certs && (certs = normalize_get_table(L, raw, "expiring_certificates")) != 0)
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
    normalize_set_str(L, ev, "type", type);
    normalize_set_str(L, ev, "provider_type", et);
    if (normalize_get(L, raw, "version") == LUA_TNUMBER && lua_isinteger(L, -1)) {
        lua_setfield(L, ev, "payload_version");
    } else {
        lua_pop(L, 1);
        if (v1) {
            lua_pushinteger(L, 1);
            lua_setfield(L, ev, "payload_version");
        }
    }
    if (et == NULL || normalize_has_suffix(et, "_reimport_required")) /* v1: imported certs only */
        normalize_set_str(L, ev, "required_action", "reimport");
    else if (normalize_has_suffix(et, "_renew_required"))
        normalize_set_str(L, ev, "required_action", "renew");
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
        if (normalize_get_string(L, item, "additional_info") != NULL)
            lua_rawseti(L, errors, ++nerr);
        lua_rawseti(L, list, ++n);
        lua_settop(L, item - 1);
    }
    const char *dv_crn = normalize_get_string(L, raw, "certificateCRN");
    const char *domain = normalize_get_string(L, raw, "domain");
    if (dv_crn != NULL || domain != NULL) { /* v4 domain validation */
        lua_newtable(L);
        int c = lua_gettop(L);
        normalize_set_str(L, c, "id", dv_crn);
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
        COPY(L, v, normalize_get_table(L, raw, "challenge"), ibm_challenge_fields);
        lua_settop(L, v);
        lua_setfield(L, ev, "validation");
    }
    if (nerr > 0 && normalize_push_joined(L, errors))
        lua_setfield(L, ev, "error");
    if (n > 0) {
        lua_rawgeti(L, list, 1);
        lua_setfield(L, ev, "certificate");
        lua_pushvalue(L, list);
        lua_setfield(L, ev, "certificates");
        if (domain != NULL) {
            normalize_set_str(L, ev, "hostname", domain);
        } else {
            lua_rawgeti(L, list, 1);
            const char *h = normalize_first_domain(L, lua_gettop(L));
            normalize_set_str(L, ev, "hostname", h);
        }
    }
    return 0;
}
