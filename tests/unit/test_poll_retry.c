/* poll_retry_delay: a poller's backoff after failed runs -- doubling, capped at the interval,
 * equal jitter, and never sooner than the provider's Retry-After. */
#include "dispatch/dispatch.h"
#include "tap.h"

static const struct {
    double interval;
    int failures;
    double retry_after, u, delay;
} cases[] = {
    {300, 1, 0, 0.0, 2.5},     /* half of 5 s at the least ... */
    {300, 1, 0, 0.999999, 5},  /* ... all of it at the most */
    {300, 2, 0, 0.0, 5},       /* doubling */
    {300, 3, 0, 0.5, 15},      /* 20 s, three quarters of it */
    {300, 10, 0, 0.0, 150},    /* 2560 s capped at the interval: half of it */
    {300, 10, 0, 1.0, 300},
    {1, 1, 0, 1.0, 1},         /* a short interval caps the first retry too */
    {300, 1, 30, 0.0, 30},     /* Retry-After longer than the backoff wins */
    {300, 5, 30, 1.0, 80},     /* the backoff longer than Retry-After wins */
    {300, 1, 1e9, 0.0, 86400}, /* Retry-After honoured up to a day */
    {300, 0, 0, 0.0, 2.5},     /* no failure counted: the first backoff */
};

int main(void)
{
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        double d = poll_retry_delay(cases[i].interval, cases[i].failures, cases[i].retry_after,
                                    cases[i].u);
        ok(d > cases[i].delay - 1e-4 && d < cases[i].delay + 1e-4,
           "interval %g, failures %d, retry-after %g, u %.2f -> %g (want %g)",
           cases[i].interval, cases[i].failures, cases[i].retry_after, cases[i].u, d,
           cases[i].delay);
    }
    int within = 1; /* whatever the random number: within [cap/2, cap] */
    for (int f = 1; f < 12; f++)
        for (double u = 0; u < 1; u += 0.01) {
            double cap = 5.0 * (1 << (f - 1)), d = poll_retry_delay(60, f, 0, u);
            cap = cap > 60 ? 60 : cap;
            within &= d >= cap / 2 && d <= cap;
        }
    ok(within, "delays stay within half the backoff and the backoff");
    return done();
}
