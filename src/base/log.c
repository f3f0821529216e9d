/*
 * log.c -- structured logging: one JSON object per line on stderr, or with log.format = "text"
 * `time LEVEL message key=value ...` for people. A line is built with log_begin, log_str,
 * log_num, log_json and written by log_end with one write(2), so lines from different threads
 * never interleave. Uses buf.c and clock.c.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/base.h"

/* Set at start-up and by reloads; a line being built when they change may mix formats at
 * worst, which the single write keeps whole. */
static int min_level = LOG_INFO;
static int text;
const char *const log_level_names[] = {"debug", "info", "warn", "error", NULL};
static const char *const level_words[] = {"DEBUG", "INFO ", "WARN ", "ERROR"};

void log_set_level(int level)
{
    min_level = level;
}

void log_set_text(int on)
{
    text = on;
}

/* A value in the text format: bare when it is one plain word, else a JSON string. */
static void text_value(struct buf *b, const char *s, size_t n)
{
    int plain = n > 0;
    for (size_t i = 0; i < n && plain; i++)
        plain = (unsigned char)s[i] > ' ' && s[i] != '"' && s[i] != '=' && s[i] != '\\';
    if (plain)
        buf_add(b, s, n);
    else
        buf_json_str(b, s, n);
}

int log_level_parse(const char *s)
{
    for (int i = 0; log_level_names[i]; i++)
        if (strcmp(s, log_level_names[i]) == 0)
            return i;
    return -1;
}

int log_enabled(int level)
{
    return level >= min_level;
}

void log_begin(struct log_line *l, int level, const char *message)
{
    char ts[40];
    buf_init(&l->b);
    l->level = level;
    if (!log_enabled(level))
        return;
    time_format_iso8601(time_now(), ts);
    l->text = text;
    if (l->text) {
        buf_printf(&l->b, "%s %s %s", ts, level_words[level], message);
        return;
    }
    buf_printf(&l->b, "{\"time\":\"%s\",\"level\":\"%s\",\"message\":", ts, log_level_names[level]);
    buf_json_str(&l->b, message, strlen(message));
}

void log_str(struct log_line *l, const char *key, const char *value)
{
    if (!log_enabled(l->level) || value == NULL)
        return;
    if (l->text) {
        buf_printf(&l->b, " %s=", key);
        text_value(&l->b, value, strlen(value));
        return;
    }
    buf_printf(&l->b, ",\"%s\":", key);
    buf_json_str(&l->b, value, strlen(value));
}

void log_num(struct log_line *l, const char *key, double value)
{
    char s[40];
    if (!log_enabled(l->level))
        return;
    for (int digits = 15; digits <= 17; digits++) { /* the shortest that reads back the same */
        snprintf(s, sizeof s, "%.*g", digits, value);
        if (strtod(s, NULL) == value)
            break;
    }
    buf_printf(&l->b, l->text ? " %s=%s" : ",\"%s\":%s", key, s);
}

void log_json(struct log_line *l, const char *key, const char *json, size_t n)
{
    if (!log_enabled(l->level))
        return;
    buf_printf(&l->b, l->text ? " %s=" : ",\"%s\":", key);
    buf_add(&l->b, json, n);
}

void log_end(struct log_line *l)
{
    if (log_enabled(l->level) && buf_add(&l->b, l->text ? "\n" : "}\n", l->text ? 1 : 2) == 0) {
        ssize_t off = 0, w;
        while ((size_t)off < l->b.n && (w = write(2, l->b.p + off, l->b.n - (size_t)off)) > 0)
            off += w;
    }
    buf_free(&l->b);
}

void log_msg(int level, const char *fmt, ...)
{
    char msg[1024];
    struct log_line l;
    if (!log_enabled(level))
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    log_begin(&l, level, msg);
    log_end(&l);
}
