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
