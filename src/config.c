/*
 * config.c -- struct config from the table the CLI built (DESIGN §8, §9).
 *
 * The CLI (lua/certhook/cli.lua) loads certhook.conf.lua and applies the flags; this unit
 * checks every value and turns it into C, so `serve` fails at start-up with a message that
 * names the setting -- never later. An unknown setting is an error. Each source is read by
 * its provider (providers/source.c), with the settings readers used here too.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include <lauxlib.h>

#include "base/base.h"
#include "intake/intake.h"
#include "journal/journal.h"
#include "providers/provider.h"
#include "server.h"

#define FAIL(...) do { snprintf(err, errlen, __VA_ARGS__); return -1; } while (0)

/* tls = { cert = FILE, key = FILE, ciphers = PRIORITIES, min_version = "1.2" }: HTTPS on the
 * webhook listener. */
static int read_tls(lua_State *L, int t, struct config *c, char *err, size_t errlen)
{
    static const char *const keys[] = {"cert", "key", "ciphers", "min_version", NULL};
    char *cert = NULL, *key = NULL, *ciphers = NULL, *min_version = NULL, msg[400];
    int sub, rc = -1;
    if (setting_table(L, t, "tls", &sub, "", err, errlen) != 0)
        return -1;
    if (sub == 0)
        return 0;
    if (setting_keys(L, sub, "tls", keys, err, errlen) == 0 &&
        setting_string(L, sub, "cert", &cert, "tls.", err, errlen) == 0 &&
        setting_string(L, sub, "key", &key, "tls.", err, errlen) == 0 &&
        setting_string(L, sub, "ciphers", &ciphers, "tls.", err, errlen) == 0 &&
        setting_string(L, sub, "min_version", &min_version, "tls.", err, errlen) == 0) {
        if (cert == NULL || key == NULL)
            snprintf(err, errlen, "tls needs both cert (the PEM certificate chain) and key "
                                  "(its PEM private key)");
        else if ((c->in.tls_priority = tls_priority(ciphers, min_version ? min_version : "1.2",
                                                    err, errlen)) != NULL &&
                 (c->in.tls = tls_load(cert, key, msg, sizeof msg)) != NULL)
            rc = 0;
        else if (c->in.tls_priority != NULL) /* else tls_priority said what is wrong */
            snprintf(err, errlen, "tls: %s", msg);
    }
    free(cert);
    free(key);
    free(ciphers);
    free(min_version);
    lua_pop(L, 1);
    return rc;
}


/* admin_token: the bearer token the admin listener requires; without one it must stay on a
 * loopback address. */
static int read_admin(lua_State *L, int t, struct config *c, char *err, size_t errlen)
{
    int type = lua_getfield(L, t, "admin_token");
    if (type != LUA_TNIL) {
        size_t n;
        const char *s = lua_tolstring(L, -1, &n);
        if (type != LUA_TSTRING || n < 16) {
            lua_pop(L, 1);
            FAIL("admin_token must be a string of at least 16 characters (a random one: "
                 "openssl rand -hex 32)");
        }
        secret_digest(s, n, c->in.admin_token);
        c->in.has_admin_token = 1;
    }
    lua_pop(L, 1);
    type = lua_getfield(L, t, "admin_read_token");
    if (type != LUA_TNIL) {
        size_t n;
        const char *s = lua_tolstring(L, -1, &n);
        if (type != LUA_TSTRING || n < 16) {
            lua_pop(L, 1);
            FAIL("admin_read_token must be a string of at least 16 characters (a random one: "
                 "openssl rand -hex 32)");
        }
        secret_digest(s, n, c->in.read_token);
        c->in.has_read_token = 1;
    }
    lua_pop(L, 1);
    if (c->in.has_read_token && !c->in.has_admin_token)
        FAIL("admin_read_token needs admin_token: without it the admin listener asks for no "
             "token, and a read-only one would restrict nothing");
    if (c->in.has_read_token &&
        memcmp(c->in.read_token, c->in.admin_token, sizeof c->in.read_token) == 0)
        FAIL("admin_read_token must differ from admin_token");
    if (!c->in.has_admin_token && !intake_loopback_host(c->in.admin, strlen(c->in.admin)))
        FAIL("admin %s is not a loopback address: the admin endpoints (reload, metrics) "
             "would be open to the network. Set admin_token (clients then send "
             "Authorization: Bearer <token>), or listen on 127.0.0.1",
             c->in.admin);
    return 0;
}

static int add_days(lua_State *L, int t, struct watchdog_cfg *w, char *err, size_t errlen)
{
    lua_Integer n = (lua_Integer)lua_rawlen(L, t);
    if (n < 1 || n > WATCHDOG_MAX_BEFORE) {
        snprintf(err, errlen, "watchdog.before must list 1 to %d numbers of days before an "
                              "expiry, e.g. {30, 7, 1}", WATCHDOG_MAX_BEFORE);
        return -1;
    }
    w->nbefore = 0;
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, t, i);
        double d = lua_tonumber(L, -1);
        int ok = lua_type(L, -1) == LUA_TNUMBER && d > 0 && d <= 3650;
        lua_pop(L, 1);
        if (!ok) {
            snprintf(err, errlen, "watchdog.before[%lld] must be a number of days (more than 0)",
                     (long long)i);
            return -1;
        }
        w->before[w->nbefore++] = d;
    }
    return 0;
}

/* watchdog = { interval = 60, before = {30, 7, 1} }, or watchdog = false. */
static int read_watchdog(lua_State *L, int t, struct watchdog_cfg *w, char *err, size_t errlen)
{
    static const char *const keys[] = {"interval", "before", NULL};
    int sub, top = lua_gettop(L);
    if (lua_getfield(L, t, "watchdog") == LUA_TBOOLEAN && !lua_toboolean(L, -1)) {
        w->enabled = 0;
        lua_settop(L, top);
        return 0;
    }
    lua_settop(L, top);
    if (setting_table(L, t, "watchdog", &sub, "", err, errlen) ||
        (sub && setting_keys(L, sub, "watchdog", keys, err, errlen)))
        return -1;
    int rc = 0;
    if (sub) {
        int before;
        rc = setting_number(L, sub, "interval", 0.05, 86400, &w->interval, "watchdog.", err,
                            errlen) ||
             setting_table(L, sub, "before", &before, "watchdog.", err, errlen) ||
             (before && add_days(L, before, w, err, errlen));
    }
    lua_settop(L, top);
    return rc ? -1 : 0;
}

int config_from_lua(lua_State *L, int idx, struct config *c, char *err, size_t errlen)
{
    int t = lua_absindex(L, idx), top = lua_gettop(L), rc = -1, sub;
    double v;
    struct buf wrong; /* every source's error, not only the first one's */
    buf_init(&wrong);
    memset(c, 0, sizeof *c);
    c->in.listen = strdup("127.0.0.1:8080");
    c->in.admin = strdup("127.0.0.1:9090");
    c->handlers = strdup("./handlers");
    c->data = strdup("./certhook-data");
    c->in.max_body = 1048576;
    c->in.max_header = 8192;
    c->in.max_backlog = 10000;
    c->max_certificates = 10000;
    c->in.max_connections = 1024;
    c->in.max_connections_per_ip = 64;
    c->in.request_timeout = 10;
    c->busy_timeout = 5;
    c->retention = 30 * 86400;
    c->max_wal = 64 << 20;
    c->delivery = (struct delivery_cfg){.max_attempts = 10, .backoff = 5, .max_backoff = 3600,
                                        .timeout = 30, .shutdown_grace = 10, .concurrency = 256,
                                        .lease = 120,
                                        .memory_limit = 64 << 20};
    c->reload_timeout = 5;
    c->log_level = LOG_INFO;
    c->watchdog = (struct watchdog_cfg){.enabled = 1, .interval = 60, .before = {30, 7, 1},
                                        .nbefore = 3};
    if (!c->in.listen || !c->in.admin || !c->handlers || !c->data) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    if (setting_string(L, t, "listen", &c->in.listen, "", err, errlen) ||
        setting_string(L, t, "admin", &c->in.admin, "", err, errlen) ||
        setting_string(L, t, "handlers", &c->handlers, "", err, errlen) ||
        setting_string(L, t, "data", &c->data, "", err, errlen) ||
        setting_string(L, t, "lua_path", &c->lua_path, "", err, errlen) ||
        setting_string(L, t, "lua_cpath", &c->lua_cpath, "", err, errlen))
        goto done;

    static const char *const limits_keys[] = {"max_body", "max_connections",
        "max_connections_per_ip", "request_timeout", "max_header", "max_backlog", NULL};
    static const char *const delivery_keys[] = {"max_attempts", "backoff", "max_backoff",
        "timeout", "shutdown_grace", "concurrency", "per_host", "memory_limit", "lease", NULL};
    static const char *const journal_keys[] = {"busy_timeout", "retention", "max_wal", NULL};
    static const char *const log_keys[] = {"level", "format", NULL};
    static const char *const reload_keys[] = {"timeout", NULL};
    /* max_hostnames: its name before the inventory knew certificates, still read */
    static const char *const metrics_keys[] = {"max_certificates", "max_hostnames", NULL};
    if (setting_table(L, t, "limits", &sub, "", err, errlen) ||
        (sub && setting_keys(L, sub, "limits", limits_keys, err, errlen)))
        goto done;
    if (sub) {
        v = (double)c->in.max_body;
        if (setting_number(L, sub, "max_body", 1, 1 << 30, &v, "limits.", err, errlen))
            goto done;
        c->in.max_body = (size_t)v;
        v = c->in.max_connections;
        if (setting_number(L, sub, "max_connections", 1, 1000000, &v, "limits.", err, errlen))
            goto done;
        c->in.max_connections = (unsigned)v;
        v = c->in.max_connections_per_ip;
        if (setting_number(L, sub, "max_connections_per_ip", 0, 1000000, &v, "limits.", err, errlen))
            goto done;
        c->in.max_connections_per_ip = (unsigned)v;
        v = c->in.request_timeout;
        if (setting_number(L, sub, "request_timeout", 1, 86400, &v, "limits.", err, errlen))
            goto done;
        c->in.request_timeout = (unsigned)v;
        v = (double)c->in.max_header;
        if (setting_number(L, sub, "max_header", 1024, 1 << 20, &v, "limits.", err, errlen))
            goto done;
        c->in.max_header = (size_t)v;
        v = (double)c->in.max_backlog;
        if (setting_number(L, sub, "max_backlog", 1, 1e9, &v, "limits.", err, errlen))
            goto done;
        c->in.max_backlog = (size_t)v;
    }
    if (read_tls(L, t, c, err, errlen) != 0 || read_admin(L, t, c, err, errlen) != 0)
        goto done;
    if (setting_table(L, t, "metrics", &sub, "", err, errlen) ||
        (sub && setting_keys(L, sub, "metrics", metrics_keys, err, errlen)))
        goto done;
    if (sub) {
        v = (double)c->max_certificates;
        if (setting_number(L, sub, "max_hostnames", 0, 1e7, &v, "metrics.", err, errlen) ||
            setting_number(L, sub, "max_certificates", 0, 1e7, &v, "metrics.", err, errlen))
            goto done;
        c->max_certificates = (size_t)v;
    }
    v = (double)c->max_wal;
    if (setting_table(L, t, "journal", &sub, "", err, errlen) ||
        (sub && (setting_keys(L, sub, "journal", journal_keys, err, errlen) ||
                 setting_number(L, sub, "busy_timeout", 0, 3600, &c->busy_timeout, "journal.", err,
                            errlen) ||
                 setting_number(L, sub, "retention", 1, 100 * 365 * 86400.0, &c->retention,
                            "journal.", err, errlen) ||
                 setting_number(L, sub, "max_wal", 1 << 20, 1e12, &v, "journal.", err, errlen))))
        goto done;
    c->max_wal = (size_t)v;
    if (setting_table(L, t, "delivery", &sub, "", err, errlen) ||
        (sub && setting_keys(L, sub, "delivery", delivery_keys, err, errlen)))
        goto done;
    if (sub) {
        struct delivery_cfg *d = &c->delivery;
        v = d->max_attempts;
        if (setting_number(L, sub, "max_attempts", 1, 1000, &v, "delivery.", err, errlen) ||
            setting_number(L, sub, "backoff", 0.001, 86400, &d->backoff, "delivery.", err, errlen) ||
            setting_number(L, sub, "max_backoff", 0.001, 30 * 86400.0, &d->max_backoff, "delivery.",
                       err, errlen) ||
            setting_number(L, sub, "timeout", 0.001, 86400, &d->timeout, "delivery.", err, errlen) ||
            setting_number(L, sub, "shutdown_grace", 0, 3600, &d->shutdown_grace, "delivery.", err,
                       errlen) ||
            setting_number(L, sub, "lease", 0.1, 86400, &d->lease, "delivery.", err, errlen))
            goto done;
        d->max_attempts = (int)v;
        v = d->concurrency;
        if (setting_number(L, sub, "concurrency", 1, 100000, &v, "delivery.", err, errlen))
            goto done;
        d->concurrency = (unsigned)v;
        v = d->per_host;
        if (setting_number(L, sub, "per_host", 0, 100000, &v, "delivery.", err, errlen))
            goto done;
        d->per_host = (unsigned)v;
        v = (double)d->memory_limit;
        if (setting_number(L, sub, "memory_limit", 1 << 20, 1e12, &v, "delivery.", err, errlen))
            goto done;
        d->memory_limit = (size_t)v;
        if (d->max_backoff < d->backoff) {
            snprintf(err, errlen, "delivery.max_backoff must be at least delivery.backoff");
            goto done;
        }
        /* a server runs a delivery only while its lease holds for all of it (shared journals) */
        if (journal_is_database(c->data) && d->lease <= d->timeout) {
            snprintf(err, errlen, "delivery.lease (%g s) must be longer than delivery.timeout "
                                  "(%g s): a server starts a delivery only while its lease on "
                                  "the journal holds for the whole attempt", d->lease, d->timeout);
            goto done;
        }
    }
    if (setting_table(L, t, "reload", &sub, "", err, errlen) ||
        (sub && (setting_keys(L, sub, "reload", reload_keys, err, errlen) ||
                 setting_number(L, sub, "timeout", 0.001, 3600, &c->reload_timeout, "reload.",
                                err, errlen))))
        goto done;
    if (read_watchdog(L, t, &c->watchdog, err, errlen) != 0)
        goto done;
    for (size_t i = 0; i < c->watchdog.nbefore && i < 16; i++) /* the console's thresholds */
        c->in.watch_before[c->in.nwatch_before++] = c->watchdog.before[i];
    if (setting_table(L, t, "log", &sub, "", err, errlen) ||
        (sub && setting_keys(L, sub, "log", log_keys, err, errlen)))
        goto done;
    if (sub) {
        char *level = NULL;
        if (setting_string(L, sub, "level", &level, "log.", err, errlen))
            goto done;
        if (level != NULL && (c->log_level = log_level_parse(level)) < 0) {
            snprintf(err, errlen, "log.level must be debug, info, warn or error");
            free(level);
            goto done;
        }
        free(level);
        char *format = NULL;
        if (setting_string(L, sub, "format", &format, "log.", err, errlen))
            goto done;
        if (format != NULL && strcmp(format, "json") != 0 && strcmp(format, "text") != 0) {
            snprintf(err, errlen, "log.format must be json or text");
            free(format);
            goto done;
        }
        c->log_text = format != NULL && strcmp(format, "text") == 0;
        free(format);
    }

    if (setting_table(L, t, "pollers", &sub, "", err, errlen))
        goto done;
    if (sub) {
        lua_pushnil(L);
        while (lua_next(L, sub) != 0) { /* name, table */
            struct poller_def *p = realloc(c->pollers, (c->npollers + 1) * sizeof *p);
            if (p == NULL) {
                snprintf(err, errlen, "out of memory");
                goto done;
            }
            c->pollers = p;
            p = &c->pollers[c->npollers];
            if (lua_type(L, -2) != LUA_TSTRING) {
                snprintf(err, errlen, "poller names must be strings of letters, digits, '-', "
                                      "'_' or '.'");
                goto done;
            }
            int prc = poller_configure(L, lua_gettop(L), lua_tostring(L, -2), p, err, errlen);
            c->npollers++; /* released by config_free, whatever it holds */
            if (prc != 0)
                goto done;
            lua_settop(L, sub + 1); /* keep the key for lua_next */
        }
        lua_settop(L, sub - 1);
    }
    if (setting_table(L, t, "sources", &sub, "", err, errlen))
        goto done;
    if (!sub) {
        char names[200];
        snprintf(err, errlen,
                 "no sources configured: add sources = { <name> = { provider = \"<provider>\", "
                 "<its credentials> } } to the config file (providers: %s)",
                 provider_names(names, sizeof names, ", ", 0));
        goto done;
    }
    lua_pushnil(L);
    while (lua_next(L, sub) != 0) { /* name, table */
        struct source *s = realloc(c->sources, (c->nsources + 1) * sizeof *s);
        if (s == NULL) {
            snprintf(err, errlen, "out of memory");
            goto done;
        }
        c->sources = s;
        s = &c->sources[c->nsources];
        if (lua_type(L, -2) != LUA_TSTRING) {
            snprintf(err, errlen, "source names must be strings of letters, digits, '-', '_' "
                                  "or '.' (they are the path /hooks/<name>)");
            goto done;
        }
        if (source_configure(L, lua_gettop(L), lua_tostring(L, -2), s, err, errlen) != 0)
            buf_printf(&wrong, "%s%s", wrong.n > 0 ? "; " : "", err);
        c->nsources++; /* released by config_free, whatever it holds */
        lua_settop(L, sub + 1); /* keep the key for lua_next */
    }
    if (wrong.n > 0) {
        snprintf(err, errlen, "%s", wrong.p);
        goto done;
    }
    if (c->nsources == 0) {
        snprintf(err, errlen, "sources is empty: configure at least one source");
        goto done;
    }
    c->in.sources = c->sources;
    c->in.nsources = c->nsources;
    c->in.lua_path = c->lua_path;
    c->in.lua_cpath = c->lua_cpath;
    rc = 0;
done:
    buf_free(&wrong);
    lua_settop(L, top);
    if (rc != 0)
        config_free(c);
    return rc;
}

void config_free(struct config *c)
{
    free(c->in.listen);
    free(c->in.admin);
    free(c->handlers);
    free(c->data);
    free(c->lua_path);
    free(c->lua_cpath);
    tls_free(c->in.tls);
    free(c->in.tls_priority);
    for (size_t i = 0; i < c->nsources; i++)
        source_release(&c->sources[i]);
    free(c->sources);
    for (size_t i = 0; i < c->npollers; i++)
        poller_release(&c->pollers[i]);
    free(c->pollers);
    memset(c, 0, sizeof *c);
}
