/*
 * config.c -- struct config from the table the CLI built (DESIGN §8).
 *
 * The CLI (lua/certhook/cli.lua) loads certhook.conf.lua and applies the flags; this unit
 * checks every value and turns it into C, so `serve` fails at start-up with a message that
 * names the setting -- never later. Sources are checked here: a known provider, a name
 * usable in a URL, and credentials (auth.c) unless `insecure = true`.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include <lauxlib.h>

#include "certhook.h"

#define FAIL(...) do { snprintf(err, errlen, __VA_ARGS__); return -1; } while (0)

/* Reads t[k] as a string (copied) into *out; keeps *out when absent. */
static int opt_string(lua_State *L, int t, const char *k, char **out, const char *path,
                      char *err, size_t errlen)
{
    int type = lua_getfield(L, t, k);
    if (type == LUA_TNIL) {
        lua_pop(L, 1);
        return 0;
    }
    if (type != LUA_TSTRING || lua_rawlen(L, -1) == 0)
        FAIL("%s%s must be a non-empty string", path, k);
    free(*out);
    *out = strdup(lua_tostring(L, -1));
    lua_pop(L, 1);
    return *out ? 0 : -1;
}

/* Reads t[k] as a number in [min, max] into *out; keeps *out when absent. */
static int opt_number(lua_State *L, int t, const char *k, double min, double max, double *out,
                      const char *path, char *err, size_t errlen)
{
    int type = lua_getfield(L, t, k);
    if (type != LUA_TNIL) {
        if (type != LUA_TNUMBER || lua_tonumber(L, -1) < min || lua_tonumber(L, -1) > max)
            FAIL("%s%s must be a number from %g to %g", path, k, min, max);
        *out = lua_tonumber(L, -1);
    }
    lua_pop(L, 1);
    return 0;
}

/* Pushes t[k] when it is a table (returns its index), nothing when absent (0); raises
 * nothing -- a wrong type is an error. */
static int opt_table(lua_State *L, int t, const char *k, int *idx, char *err, size_t errlen)
{
    int type = lua_getfield(L, t, k);
    *idx = 0;
    if (type == LUA_TNIL) {
        lua_pop(L, 1);
        return 0;
    }
    if (type != LUA_TTABLE)
        FAIL("%s must be a table", k);
    *idx = lua_gettop(L);
    return 0;
}

/* Calls fn for t[k] when it is a string, or for each string of the list t[k]. */
static int each_string(lua_State *L, int t, const char *k, const char *path,
                       int (*fn)(struct source *, const char *, char *, size_t),
                       struct source *s, char *err, size_t errlen)
{
    int type = lua_getfield(L, t, k), rc = 0;
    if (type == LUA_TSTRING && lua_rawlen(L, -1) > 0) {
        rc = fn(s, lua_tostring(L, -1), err, errlen);
    } else if (type == LUA_TTABLE && lua_rawlen(L, -1) > 0) {
        for (lua_Integer i = 1; rc == 0 && i <= (lua_Integer)lua_rawlen(L, -1); i++) {
            if (lua_rawgeti(L, -1, i) != LUA_TSTRING || lua_rawlen(L, -1) == 0)
                FAIL("%s%s[%lld] must be a non-empty string", path, k, (long long)i);
            rc = fn(s, lua_tostring(L, -1), err, errlen);
            lua_pop(L, 1);
        }
    } else if (type != LUA_TNIL) {
        FAIL("%s%s must be a non-empty string or a list of them", path, k);
    }
    lua_pop(L, 1);
    return rc;
}

static int add_secret(struct source *s, const char *secret, char *err, size_t errlen)
{
    unsigned char (*p)[32] = realloc(s->secrets, (s->nsecrets + 1) * sizeof *p);
    if (p == NULL)
        FAIL("out of memory");
    s->secrets = p;
    auth_digest(secret, strlen(secret), s->secrets[s->nsecrets++]);
    return 0;
}

static int pem_file(const struct dirent *e)
{
    size_t n = strlen(e->d_name);
    return e->d_name[0] != '.' && n > 4 && strcmp(e->d_name + n - 4, ".pem") == 0;
}

/* A PEM file or text, or a directory: every *.pem in it (rotation: drop the new key in, take
 * the old one out, reload). */
static int add_key(struct source *s, const char *pem_or_path, char *err, size_t errlen)
{
    char msg[300], path[4096];
    struct stat st;
    struct dirent **names;
    if (strncmp(pem_or_path, "-----BEGIN", 10) != 0 && stat(pem_or_path, &st) == 0 &&
        S_ISDIR(st.st_mode)) {
        int n = scandir(pem_or_path, &names, pem_file, alphasort), rc = 0;
        if (n < 0)
            FAIL("sources.%s.public_key: cannot read directory %s", s->name, pem_or_path);
        if (n == 0)
            snprintf(err, errlen, "sources.%s.public_key: no *.pem file in %s", s->name,
                     pem_or_path), rc = -1;
        for (int i = 0; i < n; i++) {
            snprintf(path, sizeof path, "%s/%s", pem_or_path, names[i]->d_name);
            if (rc == 0)
                rc = add_key(s, path, err, errlen);
            free(names[i]);
        }
        free(names);
        return rc;
    }
    if (auth_keys_add(&s->keys, pem_or_path, msg, sizeof msg) != 0)
        FAIL("sources.%s.public_key: %s", s->name, msg);
    return 0;
}

static int valid_name(const char *s)
{
    if (*s == '\0')
        return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '-' || *s == '_' || *s == '.'))
            return 0;
    return 1;
}

static int in_list(const char *const *list, const char *k)
{
    for (; *list; list++)
        if (strcmp(*list, k) == 0)
            return 1;
    return 0;
}

/* Every key of the table at t (the setting `name`) is one of keys: else an error naming it. */
static int check_keys(lua_State *L, int t, const char *name, const char *const *keys, char *err,
                      size_t errlen)
{
    lua_pushnil(L);
    while (lua_next(L, t) != 0) { /* key, value */
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING || !in_list(keys, lua_tostring(L, -1))) {
            struct buf known;
            buf_init(&known);
            for (const char *const *p = keys; *p; p++)
                buf_printf(&known, "%s%s", p == keys ? "" : ", ", *p);
            if (lua_type(L, -1) == LUA_TSTRING)
                snprintf(err, errlen, "%s.%.60s is not a setting (those of %s are %s)", name,
                         lua_tostring(L, -1), name, known.p ? known.p : "");
            else
                snprintf(err, errlen, "%s has a key that is not a name (its settings are %s)",
                         name, known.p ? known.p : "");
            buf_free(&known);
            lua_pop(L, 1);
            return -1;
        }
    }
    return 0;
}

/* The settings a source table may hold, by provider: adding a provider's option is a word here. */
static const struct {
    enum provider provider;
    const char *const keys[8];
} source_keys[] = {
    {PROVIDER_CLOUDFLARE, {"provider", "insecure", "secret", NULL}},
    {PROVIDER_IBM_CM, {"provider", "insecure", "public_key", "leeway", "max_age", NULL}},
};

/* Every key of the source table at t is a setting of its provider. */
static int check_source_keys(lua_State *L, int t, const struct source *s, char *err,
                             size_t errlen)
{
    char name[160];
    snprintf(name, sizeof name, "sources.%s", s->name);
    for (size_t i = 0; i < sizeof source_keys / sizeof source_keys[0]; i++)
        if (source_keys[i].provider == s->provider)
            return check_keys(L, t, name, source_keys[i].keys, err, errlen);
    return 0;
}

/* Reads the source table at -1 named by the string at -2. */
static int read_source(lua_State *L, struct source *s, char *err, size_t errlen)
{
    char path[160];
    int t = lua_gettop(L);
    if (lua_type(L, t - 1) != LUA_TSTRING || !valid_name(lua_tostring(L, t - 1)))
        FAIL("source names must be strings of letters, digits, '-', '_' or '.' (they are "
             "the path /hooks/<name>)");
    s->name = strdup(lua_tostring(L, t - 1));
    if (s->name == NULL)
        FAIL("out of memory");
    snprintf(path, sizeof path, "sources.%s.", s->name);
    if (lua_type(L, t) != LUA_TTABLE)
        FAIL("sources.%s must be a table", s->name);
    if (lua_getfield(L, t, "provider") != LUA_TSTRING ||
        (s->provider = provider_parse(lua_tostring(L, -1))) == PROVIDER_NONE)
        FAIL("%sprovider must be \"cloudflare\" or \"ibm-cm\"", path);
    lua_pop(L, 1);
    if (check_source_keys(L, t, s, err, errlen) != 0)
        return -1;
    /* Only the boolean true opens a source: os.getenv("X") gives the string "false" */
    int type = lua_getfield(L, t, "insecure");
    s->insecure = type == LUA_TBOOLEAN && lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (type != LUA_TNIL && !s->insecure)
        FAIL("%sinsecure must be true (the boolean), or left out: it accepts requests "
             "without credentials", path);
    if (s->provider == PROVIDER_CLOUDFLARE) {
        if (each_string(L, t, "secret", path, add_secret, s, err, errlen) != 0)
            return -1;
        if (s->nsecrets == 0 && !s->insecure)
            FAIL("sources.%s has no credentials: set secret (the value Cloudflare sends in "
                 "cf-webhook-auth), or insecure = true to accept unauthenticated requests",
                 s->name);
    } else {
        s->check_times = 1;
        s->leeway = 300;
        if (each_string(L, t, "public_key", path, add_key, s, err, errlen) != 0 ||
            opt_number(L, t, "leeway", 0, 1e9, &s->leeway, path, err, errlen) != 0 ||
            opt_number(L, t, "max_age", 0, 1e10, &s->max_age, path, err, errlen) != 0)
            return -1;
        if (s->keys == NULL && !s->insecure)
            FAIL("sources.%s has no credentials: set public_key (the PEM file downloaded "
                 "from Certificate Manager > Notifications), or insecure = true to accept "
                 "unsigned payloads", s->name);
    }
    return 0;
}

/* tls = { cert = FILE, key = FILE, ciphers = PRIORITIES, min_version = "1.2" }: HTTPS on the
 * webhook listener. */
static int read_tls(lua_State *L, int t, struct config *c, char *err, size_t errlen)
{
    static const char *const keys[] = {"cert", "key", "ciphers", "min_version", NULL};
    char *cert = NULL, *key = NULL, *ciphers = NULL, *min_version = NULL, msg[400];
    int sub, rc = -1;
    if (opt_table(L, t, "tls", &sub, err, errlen) != 0)
        return -1;
    if (sub == 0)
        return 0;
    if (check_keys(L, sub, "tls", keys, err, errlen) == 0 &&
        opt_string(L, sub, "cert", &cert, "tls.", err, errlen) == 0 &&
        opt_string(L, sub, "key", &key, "tls.", err, errlen) == 0 &&
        opt_string(L, sub, "ciphers", &ciphers, "tls.", err, errlen) == 0 &&
        opt_string(L, sub, "min_version", &min_version, "tls.", err, errlen) == 0) {
        if (cert == NULL || key == NULL)
            snprintf(err, errlen, "tls needs both cert (the PEM certificate chain) and key "
                                  "(its PEM private key)");
        else if ((c->tls_priority = tls_priority(ciphers, min_version ? min_version : "1.2", err,
                                                 errlen)) != NULL &&
                 (c->tls = tls_load(cert, key, msg, sizeof msg)) != NULL)
            rc = 0;
        else if (c->tls_priority != NULL) /* else tls_priority said what is wrong */
            snprintf(err, errlen, "tls: %s", msg);
    }
    free(cert);
    free(key);
    free(ciphers);
    free(min_version);
    lua_pop(L, 1);
    return rc;
}

/* host, host:port or [v6]:port: localhost, 127.0.0.0/8 or ::1 (certhook.h). */
int config_loopback_host(const char *s, size_t n)
{
    char host[64];
    unsigned char a[16];
    const char *h = s, *port = NULL;
    size_t hn = n;
    if (n > 0 && s[0] == '[') { /* [v6] or [v6]:port */
        const char *close = memchr(s, ']', n);
        if (close == NULL)
            return 0;
        h = s + 1;
        hn = (size_t)(close - h);
        if (close + 1 < s + n) {
            if (close[1] != ':')
                return 0;
            port = close + 2;
        }
    } else {
        const char *colon = memrchr(s, ':', n);
        if (colon != NULL)
            hn = (size_t)(colon - s), port = colon + 1;
    }
    if (port != NULL) { /* 1 to 5 digits */
        size_t pn = (size_t)(s + n - port);
        if (pn == 0 || pn > 5 || strspn(port, "0123456789") < pn)
            return 0;
    }
    if (hn == 0 || hn >= sizeof host)
        return 0;
    memcpy(host, h, hn);
    host[hn] = '\0';
    if (strcasecmp(host, "localhost") == 0)
        return 1;
    if (inet_pton(AF_INET, host, a) == 1)
        return a[0] == 127;
    static const unsigned char v6_loopback[16] = {[15] = 1};
    return inet_pton(AF_INET6, host, a) == 1 && memcmp(a, v6_loopback, 16) == 0;
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
        auth_digest(s, n, c->admin_token);
        c->has_admin_token = 1;
    }
    lua_pop(L, 1);
    if (!c->has_admin_token && !config_loopback_host(c->admin, strlen(c->admin)))
        FAIL("admin %s is not a loopback address: the admin endpoints (reload, metrics) "
             "would be open to the network. Set admin_token (clients then send "
             "Authorization: Bearer <token>), or listen on 127.0.0.1",
             c->admin);
    return 0;
}

int config_from_lua(lua_State *L, int idx, struct config *c, char *err, size_t errlen)
{
    int t = lua_absindex(L, idx), top = lua_gettop(L), rc = -1, sub;
    double v;
    memset(c, 0, sizeof *c);
    c->listen = strdup("127.0.0.1:8080");
    c->admin = strdup("127.0.0.1:9090");
    c->handlers = strdup("./handlers");
    c->data = strdup("./certhook-data");
    c->max_body = 1048576;
    c->max_header = 8192;
    c->max_backlog = 10000;
    c->max_hostnames = 10000;
    c->max_connections = 1024;
    c->max_connections_per_ip = 64;
    c->request_timeout = 10;
    c->busy_timeout = 5;
    c->retention = 30 * 86400;
    c->max_wal = 64 << 20;
    c->delivery = (struct delivery_cfg){.max_attempts = 10, .backoff = 5, .max_backoff = 3600,
                                        .timeout = 30, .shutdown_grace = 10, .concurrency = 256,
                                        .memory_limit = 64 << 20};
    c->log_level = LOG_INFO;
    if (!c->listen || !c->admin || !c->handlers || !c->data) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    if (opt_string(L, t, "listen", &c->listen, "", err, errlen) ||
        opt_string(L, t, "admin", &c->admin, "", err, errlen) ||
        opt_string(L, t, "handlers", &c->handlers, "", err, errlen) ||
        opt_string(L, t, "data", &c->data, "", err, errlen) ||
        opt_string(L, t, "lua_path", &c->lua_path, "", err, errlen) ||
        opt_string(L, t, "lua_cpath", &c->lua_cpath, "", err, errlen))
        goto done;

    static const char *const limits_keys[] = {"max_body", "max_connections",
        "max_connections_per_ip", "request_timeout", "max_header", "max_backlog", NULL};
    static const char *const delivery_keys[] = {"max_attempts", "backoff", "max_backoff",
        "timeout", "shutdown_grace", "concurrency", "per_host", "memory_limit", NULL};
    static const char *const journal_keys[] = {"busy_timeout", "retention", "max_wal", NULL};
    static const char *const log_keys[] = {"level", "format", NULL};
    static const char *const metrics_keys[] = {"max_hostnames", NULL};
    if (opt_table(L, t, "limits", &sub, err, errlen) ||
        (sub && check_keys(L, sub, "limits", limits_keys, err, errlen)))
        goto done;
    if (sub) {
        v = (double)c->max_body;
        if (opt_number(L, sub, "max_body", 1, 1 << 30, &v, "limits.", err, errlen))
            goto done;
        c->max_body = (size_t)v;
        v = c->max_connections;
        if (opt_number(L, sub, "max_connections", 1, 1000000, &v, "limits.", err, errlen))
            goto done;
        c->max_connections = (unsigned)v;
        v = c->max_connections_per_ip;
        if (opt_number(L, sub, "max_connections_per_ip", 0, 1000000, &v, "limits.", err, errlen))
            goto done;
        c->max_connections_per_ip = (unsigned)v;
        v = c->request_timeout;
        if (opt_number(L, sub, "request_timeout", 1, 86400, &v, "limits.", err, errlen))
            goto done;
        c->request_timeout = (unsigned)v;
        v = (double)c->max_header;
        if (opt_number(L, sub, "max_header", 1024, 1 << 20, &v, "limits.", err, errlen))
            goto done;
        c->max_header = (size_t)v;
        v = (double)c->max_backlog;
        if (opt_number(L, sub, "max_backlog", 1, 1e9, &v, "limits.", err, errlen))
            goto done;
        c->max_backlog = (size_t)v;
    }
    if (read_tls(L, t, c, err, errlen) != 0 || read_admin(L, t, c, err, errlen) != 0)
        goto done;
    if (opt_table(L, t, "metrics", &sub, err, errlen) ||
        (sub && check_keys(L, sub, "metrics", metrics_keys, err, errlen)))
        goto done;
    if (sub) {
        v = (double)c->max_hostnames;
        if (opt_number(L, sub, "max_hostnames", 0, 1e7, &v, "metrics.", err, errlen))
            goto done;
        c->max_hostnames = (size_t)v;
    }
    v = (double)c->max_wal;
    if (opt_table(L, t, "journal", &sub, err, errlen) ||
        (sub && (check_keys(L, sub, "journal", journal_keys, err, errlen) ||
                 opt_number(L, sub, "busy_timeout", 0, 3600, &c->busy_timeout, "journal.", err,
                            errlen) ||
                 opt_number(L, sub, "retention", 1, 100 * 365 * 86400.0, &c->retention,
                            "journal.", err, errlen) ||
                 opt_number(L, sub, "max_wal", 1 << 20, 1e12, &v, "journal.", err, errlen))))
        goto done;
    c->max_wal = (size_t)v;
    if (opt_table(L, t, "delivery", &sub, err, errlen) ||
        (sub && check_keys(L, sub, "delivery", delivery_keys, err, errlen)))
        goto done;
    if (sub) {
        struct delivery_cfg *d = &c->delivery;
        v = d->max_attempts;
        if (opt_number(L, sub, "max_attempts", 1, 1000, &v, "delivery.", err, errlen) ||
            opt_number(L, sub, "backoff", 0.001, 86400, &d->backoff, "delivery.", err, errlen) ||
            opt_number(L, sub, "max_backoff", 0.001, 30 * 86400.0, &d->max_backoff, "delivery.",
                       err, errlen) ||
            opt_number(L, sub, "timeout", 0.001, 86400, &d->timeout, "delivery.", err, errlen) ||
            opt_number(L, sub, "shutdown_grace", 0, 3600, &d->shutdown_grace, "delivery.", err,
                       errlen))
            goto done;
        d->max_attempts = (int)v;
        v = d->concurrency;
        if (opt_number(L, sub, "concurrency", 1, 100000, &v, "delivery.", err, errlen))
            goto done;
        d->concurrency = (unsigned)v;
        v = d->per_host;
        if (opt_number(L, sub, "per_host", 0, 100000, &v, "delivery.", err, errlen))
            goto done;
        d->per_host = (unsigned)v;
        v = (double)d->memory_limit;
        if (opt_number(L, sub, "memory_limit", 1 << 20, 1e12, &v, "delivery.", err, errlen))
            goto done;
        d->memory_limit = (size_t)v;
        if (d->max_backoff < d->backoff) {
            snprintf(err, errlen, "delivery.max_backoff must be at least delivery.backoff");
            goto done;
        }
    }
    if (opt_table(L, t, "log", &sub, err, errlen) ||
        (sub && check_keys(L, sub, "log", log_keys, err, errlen)))
        goto done;
    if (sub) {
        char *level = NULL;
        if (opt_string(L, sub, "level", &level, "log.", err, errlen))
            goto done;
        if (level != NULL && (c->log_level = log_level_parse(level)) < 0) {
            snprintf(err, errlen, "log.level must be debug, info, warn or error");
            free(level);
            goto done;
        }
        free(level);
        char *format = NULL;
        if (opt_string(L, sub, "format", &format, "log.", err, errlen))
            goto done;
        if (format != NULL && strcmp(format, "json") != 0 && strcmp(format, "text") != 0) {
            snprintf(err, errlen, "log.format must be json or text");
            free(format);
            goto done;
        }
        c->log_text = format != NULL && strcmp(format, "text") == 0;
        free(format);
    }

    if (opt_table(L, t, "sources", &sub, err, errlen))
        goto done;
    if (!sub) {
        snprintf(err, errlen,
                 "no sources configured: add sources = { cloudflare = { provider = "
                 "\"cloudflare\", secret = ... } } to the config file");
        goto done;
    }
    lua_pushnil(L);
    while (lua_next(L, sub) != 0) {
        struct source *s = realloc(c->sources, (c->nsources + 1) * sizeof *s);
        if (s == NULL) {
            snprintf(err, errlen, "out of memory");
            goto done;
        }
        c->sources = s;
        s = &c->sources[c->nsources++];
        memset(s, 0, sizeof *s);
        if (read_source(L, s, err, errlen) != 0)
            goto done;
        lua_settop(L, sub + 1); /* keep the key for lua_next */
    }
    if (c->nsources == 0) {
        snprintf(err, errlen, "sources is empty: configure at least one source");
        goto done;
    }
    rc = 0;
done:
    lua_settop(L, top);
    if (rc != 0)
        config_free(c);
    return rc;
}

void config_free(struct config *c)
{
    free(c->listen);
    free(c->admin);
    free(c->handlers);
    free(c->data);
    free(c->lua_path);
    free(c->lua_cpath);
    tls_free(c->tls);
    free(c->tls_priority);
    for (size_t i = 0; i < c->nsources; i++) {
        free(c->sources[i].name);
        free(c->sources[i].secrets);
        auth_keys_free(c->sources[i].keys);
    }
    free(c->sources);
    memset(c, 0, sizeof *c);
}

const struct source *config_source(const struct config *c, const char *name, size_t len)
{
    for (size_t i = 0; i < c->nsources; i++)
        if (strlen(c->sources[i].name) == len && memcmp(c->sources[i].name, name, len) == 0)
            return &c->sources[i];
    return NULL;
}
