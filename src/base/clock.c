/*
 * clock.c -- the clocks and ISO 8601 / RFC 3339 timestamps. Wall time is for timestamps only
 * (received_at, logs, what the journal shows people); every timer, deadline, retry and lease
 * follows the monotonic clock, so a clock set back or forward moves none of them. Providers
 * send RFC 3339 strings with or without fractions and offsets; events carry epoch seconds.
 */
#define _DEFAULT_SOURCE /* timegm */
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "base/base.h"

double time_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

double time_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Reads exactly n digits at *s into *v; advances *s. */
static int digits(const char **s, int n, int *v)
{
    *v = 0;
    for (int i = 0; i < n; i++) {
        if (!isdigit((unsigned char)(*s)[i]))
            return -1;
        *v = *v * 10 + ((*s)[i] - '0');
    }
    *s += n;
    return 0;
}

int time_parse_iso8601(const char *s, double *out)
{
    struct tm tm = {0};
    int y, mo, d, h = 0, mi = 0, sec = 0;
    double frac = 0;

    if (digits(&s, 4, &y) || *s++ != '-' || digits(&s, 2, &mo) || *s++ != '-' ||
        digits(&s, 2, &d))
        return -1;
    if (*s == 'T' || *s == 't' || *s == ' ') {
        s++;
        if (digits(&s, 2, &h) || *s++ != ':' || digits(&s, 2, &mi))
            return -1;
        if (*s == ':') {
            s++;
            if (digits(&s, 2, &sec))
                return -1;
            if (*s == '.' || *s == ',') {
                double scale = 0.1;
                s++;
                if (!isdigit((unsigned char)*s))
                    return -1;
                for (; isdigit((unsigned char)*s); s++, scale /= 10)
                    frac += (*s - '0') * scale;
            }
        }
    }
    int offset = 0;
    if (*s == 'Z' || *s == 'z') {
        s++;
    } else if (*s == '+' || *s == '-') {
        int sign = *s++ == '-' ? -1 : 1, oh, om = 0;
        if (digits(&s, 2, &oh))
            return -1;
        if (*s == ':')
            s++;
        if (isdigit((unsigned char)*s) && digits(&s, 2, &om))
            return -1;
        if (oh > 23 || om > 59)
            return -1;
        offset = sign * (oh * 3600 + om * 60);
    }
    if (*s != '\0' || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60)
        return -1;
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = d;
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = sec;
    time_t t = timegm(&tm);
    *out = (double)t - offset + frac;
    return 0;
}

size_t time_format_iso8601(double t, char out[40])
{
    struct tm tm;
    double whole = floor(t);
    time_t secs = (time_t)whole;
    int ms = (int)((t - whole) * 1000 + 0.5);
    if (ms == 1000) {
        secs++;
        ms = 0;
    }
    gmtime_r(&secs, &tm);
    size_t n = strftime(out, 40, "%Y-%m-%dT%H:%M:%S", &tm);
    if (t != whole)
        n += (size_t)snprintf(out + n, 40 - n, ".%03d", ms);
    out[n++] = 'Z';
    out[n] = '\0';
    return n;
}
