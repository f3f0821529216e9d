/*
 * auth.c -- a shared secret in a header, or HTTP Basic (auth.h): what AWS EventBridge API
 * destinations, Azure Event Grid, IBM Event Notifications, DigiCert and Lua providers' senders
 * put in their requests. Only digests are kept and compared (secret.c); Basic credentials are
 * decoded with OpenSSL's base64 and compared as "username:password".
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <lauxlib.h>
#include <openssl/evp.h>

#include "providers/auth.h"
#include "providers/fields.h"

static int add_secret(void *cls, const char *secret, char *err, size_t errlen)
{
    if (secrets_add(cls, secret) != 0) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

int auth_configure(lua_State *L, int t, const struct source *s, struct auth *a,
                   const char *default_header, int basic, char *err, size_t errlen)
{
    char path[160];
    char *user = NULL, *pass = NULL;
    int rc = -1;
    memset(a, 0, sizeof *a);
    snprintf(path, sizeof path, "sources.%s.", s->name);
    if (setting_strings(L, t, "secret", path, add_secret, &a->secrets, err, errlen) != 0 ||
        setting_string(L, t, "header", &a->header, path, err, errlen) != 0)
        return -1;
    if (a->header == NULL && (a->header = strdup(default_header)) == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (!basic)
        return 0;
    if (setting_string(L, t, "username", &user, path, err, errlen) != 0 ||
        setting_string(L, t, "password", &pass, path, err, errlen) != 0)
        goto done;
    if ((user == NULL) != (pass == NULL)) {
        snprintf(err, errlen, "%s%s is set without %s: HTTP Basic needs both", path,
                 user ? "username" : "password", user ? "password" : "username");
        goto done;
    }
    if (user != NULL && strchr(user, ':') != NULL) {
        snprintf(err, errlen, "%susername may not hold ':' (HTTP Basic)", path);
        goto done;
    }
    if (user != NULL) {
        struct buf b;
        buf_init(&b);
        buf_printf(&b, "%s:%s", user, pass);
        int added = b.p != NULL && secrets_add(&a->basic, b.p) == 0;
        if (b.p != NULL)
            memset(b.p, 0, b.n);
        buf_free(&b);
        if (!added) {
            snprintf(err, errlen, "out of memory");
            goto done;
        }
    }
    rc = 0;
done:
    if (pass != NULL)
        memset(pass, 0, strlen(pass));
    free(user);
    free(pass);
    return rc;
}

void auth_free(struct auth *a)
{
    secrets_free(&a->secrets);
    secrets_free(&a->basic);
    free(a->header);
    a->header = NULL;
}

int auth_has(const struct auth *a)
{
    return a->secrets.n > 0 || a->basic.n > 0;
}

/* 1 when "Basic <base64 of user:pass>" holds one of the configured pairs. */
static int basic_match(const struct secrets *basic, const char *value)
{
    unsigned char out[768];
    size_t n, pad = 0;
    if (basic->n == 0 || value == NULL || strncasecmp(value, "Basic ", 6) != 0)
        return 0;
    value += 6;
    while (*value == ' ')
        value++;
    n = strlen(value);
    if (n == 0 || n % 4 != 0 || n / 4 * 3 >= sizeof out)
        return 0;
    for (size_t i = n; i > 0 && value[i - 1] == '='; i--)
        pad++;
    int got = EVP_DecodeBlock(out, (const unsigned char *)value, (int)n);
    if (got < 0 || (size_t)got < pad)
        return 0;
    out[got - (int)pad] = '\0';
    if (memchr(out, '\0', (size_t)got - pad) != NULL) /* no NUL inside */
        return 0;
    int ok = secrets_match(basic, (const char *)out);
    memset(out, 0, sizeof out);
    return ok;
}

int auth_check(const struct auth *a, const struct request *rq)
{
    int ok = 0;
    if (a->secrets.n > 0) {
        const char *v = request_header(rq, a->header);
        ok |= secrets_match(&a->secrets, v);
        if (v != NULL && strcasecmp(a->header, "authorization") == 0 &&
            strncasecmp(v, "Bearer ", 7) == 0)
            ok |= secrets_match(&a->secrets, v + 7);
    }
    if (a->basic.n > 0)
        ok |= basic_match(&a->basic, request_header(rq, "authorization"));
    return ok;
}

int auth_refuse(const struct auth *a, const struct request *rq, char *err, size_t errlen)
{
    if (!auth_has(a) || auth_check(a, rq))
        return 0;
    snprintf(err, errlen, "missing or wrong %s header%s", a->header,
             a->basic.n > 0 ? " or Basic credentials" : "");
    return 401;
}

int auth_source_configure(lua_State *L, int t, struct source *s, const char *default_header,
                          int basic, const char *hint, char *err, size_t errlen)
{
    struct auth *a = calloc(1, sizeof *a);
    if (a == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    s->priv = a;
    if (auth_configure(L, t, s, a, default_header, basic, err, errlen) != 0)
        return -1;
    if (!auth_has(a) && !s->insecure) {
        snprintf(err, errlen, "sources.%s has no credentials: set secret (%s), or insecure = "
                              "true to accept unauthenticated requests", s->name, hint);
        return -1;
    }
    return 0;
}

void auth_source_release(struct source *s)
{
    if (s->priv != NULL)
        auth_free(s->priv);
    free(s->priv);
    s->priv = NULL;
}

int auth_source_head(const struct source *s, const struct request *rq, struct reply *r,
                     char *err, size_t errlen)
{
    (void)r;
    return auth_refuse(s->priv, rq, err, errlen);
}

void auth_send(lua_State *L, int cfg, int opts, int hdr, const char *default_header)
{
    int top = lua_gettop(L);
    const char *secret = fields_get_string(L, opts, "secret");
    if (secret == NULL && cfg != 0) {
        lua_getfield(L, cfg, "secret");
        if (lua_type(L, -1) == LUA_TTABLE)
            lua_rawgeti(L, -1, 1);
        secret = lua_tostring(L, -1);
    }
    const char *header = fields_get_string(L, cfg, "header");
    if (header == NULL)
        header = default_header;
    if (secret != NULL) {
        lua_pushstring(L, secret);
        lua_setfield(L, hdr, header);
    } else {
        const char *user = fields_get_string(L, cfg, "username");
        const char *pass = fields_get_string(L, cfg, "password");
        if (user != NULL && pass != NULL) {
            size_t n;
            luaL_Buffer b;
            const char *plain = lua_pushfstring(L, "%s:%s", user, pass);
            n = lua_rawlen(L, -1);
            if (n < INT_MAX / 2) {
                char *p = luaL_buffinitsize(L, &b, 6 + (n + 2) / 3 * 4 + 1);
                memcpy(p, "Basic ", 6);
                int w = EVP_EncodeBlock((unsigned char *)p + 6, (const unsigned char *)plain,
                                        (int)n);
                luaL_pushresultsize(&b, 6 + (size_t)w);
                lua_setfield(L, hdr, "Authorization");
            }
        }
    }
    lua_settop(L, top);
}
