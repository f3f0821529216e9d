/* glob_match: handler patterns with `*` (DESIGN §4). */
#include "base/base.h"
#include "tap.h"

static const struct {
    const char *pattern, *s;
    int match;
} cases[] = {
    {"*", "certificate.validation.failed", 1},
    {"*", "", 1},
    {"certificate.validation.failed", "certificate.validation.failed", 1},
    {"certificate.validation.failed", "certificate.validation.failedx", 0},
    {"certificate.*.failed", "certificate.validation.failed", 1},
    {"certificate.*.failed", "certificate.issuance.failed", 1},
    {"certificate.*.failed", "certificate.issuance.succeeded", 0},
    {"certificate.*", "certificate.expiration.upcoming", 1},
    {"certificate.*", "notification.test", 0},
    {"*.failed", "certificate.deployment.failed", 1},
    {"*failed*", "x.failed.y", 1},
    {"ssl.custom_hostname_certificate.*", "ssl.custom_hostname_certificate.renewal.failed", 1},
    {"cert_*_required", "cert_about_to_expire_renew_required", 1},
    {"cert_*_required", "cert_issued", 0},
    {"**", "anything", 1},
    {"a*b*c", "aXbYc", 1},
    {"a*b*c", "aXbYd", 0},
    {"", "", 1},
    {"", "x", 0},
};

int main(void)
{
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        ok(glob_match(cases[i].pattern, cases[i].s) == cases[i].match, "%s %s %s",
           cases[i].pattern, cases[i].match ? "matches" : "does not match", cases[i].s);
    return done();
}
