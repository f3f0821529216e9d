/* jwt.c and secret.c: base64url as JWTs use it, and the constant-time secret check. */
#include <string.h>

#include "providers/provider.h"
#include "tap.h"

static const struct {
    const char *in, *out; /* out NULL: must be refused */
} b64[] = {
    {"", ""},
    {"Zg", "f"},
    {"Zm8", "fo"},
    {"Zm9v", "foo"},
    {"eyJhbGciOiJSUzI1NiJ9", "{\"alg\":\"RS256\"}"},
    {"-_8", "\xfb\xff"},
    {"Zm9v=", NULL},  /* JWT parts are unpadded */
    {"Zm+v", NULL},   /* standard alphabet is not base64url */
    {"Zm/v", NULL},
    {"Z", NULL},      /* impossible length */
    {"Zm9 v", NULL},
};

int main(void)
{
    unsigned char out[64];
    for (size_t i = 0; i < sizeof b64 / sizeof b64[0]; i++) {
        size_t n = 0;
        int rc = jwt_base64url_decode(b64[i].in, strlen(b64[i].in), out, &n);
        if (b64[i].out == NULL)
            ok(rc != 0, "base64url refuses \"%s\"", b64[i].in);
        else
            ok(rc == 0 && n == strlen(b64[i].out) && memcmp(out, b64[i].out, n) == 0,
               "base64url \"%s\" decodes (%zu bytes)", b64[i].in, n);
    }

    struct secrets s = {0};
    secrets_add(&s, "old-secret");
    secrets_add(&s, "new-secret");
    ok(secrets_match(&s, "old-secret"), "the first secret is accepted");
    ok(secrets_match(&s, "new-secret"), "the second secret is accepted");
    ok(!secrets_match(&s, "new-secre"), "a prefix of a secret is refused");
    ok(!secrets_match(&s, "new-secret "), "a secret with a trailing space is refused");
    ok(!secrets_match(&s, ""), "an empty header is refused");
    ok(!secrets_match(&s, NULL), "a missing header is refused");
    secrets_free(&s);
    return done();
}
