/*
 * registry.c -- the providers certhook knows: one line each. A provider is one file with its
 * authentication and normalization (struct provider, provider.h); what lists, finds or
 * detects providers -- configuration, the command line -- reads this table.
 */
#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>

#include "providers/provider.h"

extern const struct provider cloudflare_provider, ibm_cm_provider, aws_acm_provider,
    azure_keyvault_provider, ibm_sm_provider, digicert_provider, lua_provider, watchdog_provider;

/* detect asks them in this order; each recognizes its own payloads only (the fixtures of every
 * provider are checked against every detect: tests/spec/providers_spec.lua). */
const struct provider *const providers[] = {
    &cloudflare_provider,
    &ibm_cm_provider,
    &aws_acm_provider,
    &azure_keyvault_provider,
    &ibm_sm_provider,
    &digicert_provider,
    &lua_provider,
    &watchdog_provider, /* "certhook": the expiry watchdog's events */
    NULL,
};

const struct provider *provider_find(const char *name)
{
    for (const struct provider *const *p = providers; *p; p++)
        if (strcmp((*p)->name, name) == 0)
            return *p;
    return NULL;
}

const struct provider *provider_detect(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    for (const struct provider *const *p = providers; *p; p++)
        if ((*p)->detect != NULL && (*p)->detect(L, idx))
            return *p;
    return NULL;
}

const char *provider_names(char *buf, size_t n, const char *sep, int polled)
{
    size_t at = 0;
    buf[0] = '\0';
    for (const struct provider *const *p = providers; *p && at < n; p++) {
        if ((*p)->internal || (polled && (*p)->poll == NULL))
            continue;
        int w = snprintf(buf + at, n - at, "%s%s", at == 0 ? "" : sep, (*p)->name);
        at += w > 0 ? (size_t)w : 0;
    }
    return buf;
}

void provider_versions(struct buf *b)
{
    buf_adds(b, OpenSSL_version(OPENSSL_VERSION));
}
