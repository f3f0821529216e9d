/* retry_delay: the retry policy (DESIGN §10) -- backoff, cap, jitter bounds, dead. */
#include "dispatch/dispatch.h"
#include "tap.h"

static const struct delivery_cfg cfg = {.max_attempts = 5, .backoff = 2, .max_backoff = 10};

static const struct {
    int attempts, crashes;
    double u, delay; /* -1: dead */
} cases[] = {
    {1, 0, 0.0, 1},      /* half of backoff * 2^0 at the least ... */
    {1, 0, 0.999999, 2}, /* ... all of it at the most */
    {2, 0, 0.0, 2},
    {2, 0, 0.5, 3},
    {3, 0, 0.0, 4},
    {4, 0, 0.0, 5},   /* 16 capped at max_backoff 10: half of it */
    {4, 0, 1.0, 10},
    {5, 0, 0.3, -1},  /* max_attempts made */
    {9, 0, 0.3, -1},
    {1, 1, 0.0, 1},   /* one crash: retried like a failure */
    {1, 2, 0.0, -1},  /* running at two crashes: dead at once */
    {0, 0, 0.0, 1},   /* no attempt made (a replayed dead delivery): the first backoff */
};

int main(void)
{
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        double d = retry_delay(&cfg, cases[i].attempts, cases[i].crashes, cases[i].u);
        ok(d > cases[i].delay - 1e-4 && d < cases[i].delay + 1e-4,
           "attempts %d, crashes %d, u %.2f -> %g (want %g)", cases[i].attempts,
           cases[i].crashes, cases[i].u, d, cases[i].delay);
    }
    /* every delay stays within [cap/2, cap) whatever the random number */
    int within = 1;
    for (int a = 1; a < 5; a++)
        for (double u = 0; u < 1; u += 0.01) {
            double d = retry_delay(&cfg, a, 0, u), cap = 2.0 * (1 << (a - 1));
            cap = cap > 10 ? 10 : cap;
            within &= d >= cap / 2 && d <= cap;
        }
    ok(within, "delays stay within half the backoff and the backoff");
    return done();
}
