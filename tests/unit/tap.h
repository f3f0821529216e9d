/* tap.h -- a minimal TAP producer for the C unit tests: ok(cond, fmt, ...), done(). */
#ifndef TAP_H
#define TAP_H
#include <stdarg.h>
#include <stdio.h>

static int tap_n, tap_failed;

__attribute__((format(printf, 2, 3))) static void ok(int cond, const char *fmt, ...)
{
    va_list ap;
    printf("%sok %d - ", cond ? "" : "not ", ++tap_n);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    tap_failed += !cond;
}

static int done(void)
{
    printf("1..%d\n", tap_n);
    return tap_failed != 0;
}
#endif
