/*
 * retry.c -- the retry policy (DESIGN §10) as a pure function: after an attempt that failed,
 * how long until the next one, or dead. Used by the dispatcher (dispatch.c) for failures and for
 * the attempt that was running when certhook died.
 */
#include <math.h>

#include "dispatch/dispatch.h"

double retry_delay(const struct delivery_cfg *cfg, int attempts, int crashes, double u)
{
    if (attempts >= cfg->max_attempts || crashes >= RETRY_MAX_CRASHES)
        return -1;
    /* exponential backoff, capped, with "equal jitter": at least half of it, so a retry never
     * comes at once (after a crash, new events flow first) and retries of many deliveries that
     * failed together spread out */
    double cap = cfg->backoff * pow(2, attempts > 0 ? attempts - 1 : 0);
    if (cap > cfg->max_backoff)
        cap = cfg->max_backoff;
    return cap * (0.5 + 0.5 * u);
}

double poll_retry_delay(double interval, int failures, double retry_after, double u)
{
    /* 5 s doubling with every failure in a row, never past the interval (the run would come
     * then anyway), with equal jitter; never sooner than the provider asked (Retry-After) */
    double cap = POLL_BACKOFF * pow(2, failures > 1 ? failures - 1 : 0);
    if (cap > interval)
        cap = interval;
    double d = cap * (0.5 + 0.5 * u);
    if (retry_after > POLL_MAX_RETRY_AFTER)
        retry_after = POLL_MAX_RETRY_AFTER;
    return d > retry_after ? d : retry_after;
}
