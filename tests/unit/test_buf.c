/* buf.c: JSON string escaping used for replies and log lines. */
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "tap.h"

static const struct {
    const char *in, *out;
} cases[] = {
    {"plain", "\"plain\""},
    {"a\"b", "\"a\\\"b\""},
    {"back\\slash", "\"back\\\\slash\""},
    {"line\nbreak\ttab\r", "\"line\\nbreak\\ttab\\r\""},
    {"\x01\x1f", "\"\\u0001\\u001f\""},
    {"caf\xc3\xa9 /", "\"caf\xc3\xa9 /\""},
    {"", "\"\""},
};

int main(void)
{
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct buf b;
        buf_init(&b);
        buf_json_str(&b, cases[i].in, strlen(cases[i].in));
        ok(b.p && strcmp(b.p, cases[i].out) == 0, "escapes %s as %s", cases[i].out,
           b.p ? b.p : "(null)");
        buf_free(&b);
    }
    struct buf b;
    buf_init(&b);
    for (int i = 0; i < 1000; i++)
        buf_printf(&b, "%d,", i);
    ok(b.n == strlen(b.p) && strncmp(b.p, "0,1,2,", 6) == 0 && b.p[b.n - 1] == ',',
       "grows across many appends (%zu bytes)", b.n);
    char *s = buf_take(&b);
    ok(s != NULL && b.p == NULL && b.n == 0, "buf_take hands over the text");
    free(s);
    return done();
}
