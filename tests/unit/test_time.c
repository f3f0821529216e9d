/* time_parse_iso8601 / time_format_iso8601: the timestamp formats providers send. */
#include <math.h>
#include <string.h>

#include "base/base.h"
#include "tap.h"

static const struct {
    const char *s;
    double t; /* NAN: must be refused */
} cases[] = {
    {"2022-02-09T00:03:28.385080Z", 1644365008.38508},
    {"2022-11-21T12:00:00Z", 1669032000},
    {"2021-07-03T12:00:00.000Z", 1625313600},
    {"2021-06-10T00:00:00+00:00", 1623283200},
    {"2021-06-10T02:00:00+02:00", 1623283200},
    {"2021-06-09T19:00:00-0500", 1623283200},
    {"2021-06-10 00:00:00Z", 1623283200},
    {"2021-06-10", 1623283200},
    {"1970-01-01T00:00:00Z", 0},
    {"2021-13-10T00:00:00Z", NAN},
    {"2021-06-10T25:00:00Z", NAN},
    {"2021-06-10T00:00:00Zjunk", NAN},
    {"yesterday", NAN},
    {"", NAN},
    {"2021-06-10T00:00:00.Z", NAN},
};

int main(void)
{
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        double t = -1;
        int rc = time_parse_iso8601(cases[i].s, &t);
        if (isnan(cases[i].t))
            ok(rc != 0, "refuses \"%s\"", cases[i].s);
        else
            ok(rc == 0 && fabs(t - cases[i].t) < 1e-6, "\"%s\" is %.6f (got %.6f)", cases[i].s,
               cases[i].t, t);
    }
    char out[40];
    time_format_iso8601(1644365008, out);
    ok(strcmp(out, "2022-02-09T00:03:28Z") == 0, "whole seconds format without fraction: %s", out);
    time_format_iso8601(1644365008.385, out);
    ok(strcmp(out, "2022-02-09T00:03:28.385Z") == 0, "fractions format as milliseconds: %s", out);
    time_format_iso8601(1644365008.9999, out);
    ok(strcmp(out, "2022-02-09T00:03:29.000Z") == 0, "rounding carries into the second: %s", out);
    return done();
}
