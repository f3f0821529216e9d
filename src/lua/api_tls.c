/*
 * api_tls.c -- certhook.tls.probe (DESIGN §7): the certificate a server actually serves.
 *
 * A probe is a certhook.http transfer that stops after the TLS handshake (CURLOPT_CONNECT_ONLY)
 * and asks libcurl for the chain the server sent (CURLOPT_CERTINFO), so it resolves, connects
 * and shakes hands without blocking, on the dispatcher's loop like any transfer, and yields
 * like certhook.http. The handshake accepts any certificate -- the point is to see what is
 * served -- and the chain is verified afterwards (base/x509.c) against the system's CAs or
 * ca_file, for the name sent as SNI: `verified` and `verify_error` say how that went.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <lauxlib.h>
#include <openssl/ssl.h>

#include "base/x509.h"
#include "lua/api.h"
#include "providers/provider.h"

#define MAX_CHAIN 16

/* What the probe learns while the connection is there (a userdata on the probe's stack). */
struct probe {
    void *easy;
    char protocol[16]; /* "TLSv1.3" */
};

/* OpenSSL, at the end of the handshake: the protocol it agreed on. (libcurl gives no
 * session once a CONNECT_ONLY transfer is over; its OpenSSL context is the transfer's own.) */
static void on_handshake(const SSL *ssl, int where, int ret)
{
    (void)ret;
    struct probe *p = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
    if ((where & SSL_CB_HANDSHAKE_DONE) && p != NULL)
        snprintf(p->protocol, sizeof p->protocol, "%s", SSL_get_version(ssl));
}

static CURLcode on_ssl_ctx(CURL *easy, void *ctx, void *cls)
{
    (void)easy;
    SSL_CTX_set_app_data(ctx, cls);
    SSL_CTX_set_info_callback(ctx, on_handshake);
    return CURLE_OK;
}

static void set_str(lua_State *L, const char *k, const char *v)
{
    if (v != NULL && v[0] != '\0') {
        lua_pushstring(L, v);
        lua_setfield(L, -2, k);
    }
}

/* The continuation: 1 host, 2 options, 3 sni, 4 the probe, 5 the transfer. */
static int probe_done(lua_State *L, int status, lua_KContext k)
{
    struct http_req *r = http_req_check(L, 5);
    struct probe *p = lua_touserdata(L, 4);
    struct curl_certinfo *ci = NULL;
    const char *msg, *code, *pem[MAX_CHAIN];
    size_t len[MAX_CHAIN], n = 0;
    char err[300], verr[300];
    (void)status, (void)k;
    if (http_req_failed(r, &msg, &code) != 0) {
        lua_pushnil(L);
        lua_pushstring(L, msg);
        lua_pushstring(L, code);
        http_req_close(r);
        return 3;
    }
    if (curl_easy_getinfo(p->easy, CURLINFO_CERTINFO, &ci) == CURLE_OK && ci != NULL)
        for (int i = 0; i < ci->num_of_certs && n < MAX_CHAIN; i++)
            for (struct curl_slist *s = ci->certinfo[i]; s; s = s->next)
                if (strncmp(s->data, "Cert:", 5) == 0) {
                    pem[n] = s->data + 5;
                    len[n] = strlen(pem[n]);
                    n++;
                    break;
                }
    struct x509_facts f;
    if (n == 0 || x509_facts_pem(pem[0], len[0], &f, err, sizeof err) != 0) {
        if (n == 0)
            snprintf(err, sizeof err, "the server sent no certificate");
        http_req_close(r);
        lua_pushnil(L);
        lua_pushstring(L, err);
        lua_pushliteral(L, "tls");
        return 3;
    }
    lua_getfield(L, 2, "ca_file");
    int verified = x509_verify_chain(pem, len, n, lua_tostring(L, 3), lua_tostring(L, -1), 0,
                                     verr, sizeof verr);
    lua_pop(L, 1);
    lua_createtable(L, 0, 12);
    set_str(L, "host", lua_tostring(L, 1));
    set_str(L, "sni", lua_tostring(L, 3));
    set_str(L, "subject", f.subject);
    set_str(L, "issuer", f.issuer);
    set_str(L, "serial_number", f.serial_number);
    set_str(L, "fingerprint_sha256", f.fingerprint_sha256);
    set_str(L, "protocol", p->protocol);
    event_push_epoch(L, f.not_before);
    lua_setfield(L, -2, "not_before");
    event_push_epoch(L, f.not_after);
    lua_setfield(L, -2, "not_after");
    lua_createtable(L, (int)f.ndomains, 0);
    for (size_t i = 0; i < f.ndomains; i++) {
        lua_pushstring(L, f.domains[i]);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    lua_setfield(L, -2, "domains");
    lua_pushinteger(L, (lua_Integer)n);
    lua_setfield(L, -2, "chain_length");
    lua_pushboolean(L, verified == 1);
    lua_setfield(L, -2, "verified");
    if (verified != 1)
        set_str(L, "verify_error", verr);
    x509_facts_free(&f);
    http_req_close(r);
    return 1;
}

/* host [, {port=443, sni=host, timeout=10, ca_file=}] -> facts | nil, message, code */
static int tls_probe(lua_State *L)
{
    const char *host = luaL_checkstring(L, 1);
    lua_settop(L, 2);
    if (lua_isnil(L, 2)) {
        lua_newtable(L);
        lua_replace(L, 2);
    }
    luaL_checktype(L, 2, LUA_TTABLE);
    if (host[0] == '\0' || strpbrk(host, "/?#@ \t\r\n") != NULL)
        luaL_argerror(L, 1, "a host name or an IP address");
    lua_Integer port = 443;
    double timeout = 10;
    if (lua_getfield(L, 2, "port") != LUA_TNIL &&
        (!lua_isinteger(L, -1) || (port = lua_tointeger(L, -1)) < 1 || port > 65535))
        luaL_error(L, "certhook.tls.probe: port must be an integer from 1 to 65535");
    if (lua_getfield(L, 2, "timeout") != LUA_TNIL &&
        (!lua_isnumber(L, -1) || (timeout = lua_tonumber(L, -1)) <= 0))
        luaL_error(L, "certhook.tls.probe: timeout must be a positive number of seconds");
    if (lua_getfield(L, 2, "ca_file") != LUA_TNIL && lua_type(L, -1) != LUA_TSTRING)
        luaL_error(L, "certhook.tls.probe: ca_file must be the path of a PEM file");
    if (lua_getfield(L, 2, "sni") == LUA_TNIL) {
        lua_pop(L, 1);
        lua_pushvalue(L, 1);
    } else if (lua_type(L, -1) != LUA_TSTRING || lua_tostring(L, -1)[0] == '\0' ||
               strpbrk(lua_tostring(L, -1), "/?#@:[] \t\r\n") != NULL) {
        luaL_error(L, "certhook.tls.probe: sni must be a host name");
    }
    lua_replace(L, 3);
    lua_settop(L, 3); /* host, options, sni */
    const char *sni = lua_tostring(L, 3);
    int literal6 = strchr(host, ':') != NULL;
    struct probe *p = lua_newuserdatauv(L, sizeof *p, 0);
    memset(p, 0, sizeof *p);
    struct http_req *r = http_req_push(L, &p->easy);
    char url[600], to[600];
    snprintf(url, sizeof url, "https://%s%s%s:%d/", strchr(sni, ':') ? "[" : "", sni,
             strchr(sni, ':') ? "]" : "", (int)port);
    curl_easy_setopt(p->easy, CURLOPT_URL, url);
    struct curl_slist *connect_to = NULL;
    if (strcmp(sni, host) != 0) { /* the name in SNI and the host connected to differ */
        snprintf(to, sizeof to, "%s:%d:%s%s%s:%d", sni, (int)port, literal6 ? "[" : "", host,
                 literal6 ? "]" : "", (int)port);
        connect_to = curl_slist_append(NULL, to);
        curl_easy_setopt(p->easy, CURLOPT_CONNECT_TO, connect_to);
    }
    curl_easy_setopt(p->easy, CURLOPT_CONNECT_ONLY, 1L);
    curl_easy_setopt(p->easy, CURLOPT_CERTINFO, 1L);
    curl_easy_setopt(p->easy, CURLOPT_SSL_VERIFYPEER, 0L); /* verified afterwards */
    curl_easy_setopt(p->easy, CURLOPT_SSL_VERIFYHOST, 0L);
    curl_easy_setopt(p->easy, CURLOPT_PROTOCOLS_STR, "https");
    curl_easy_setopt(p->easy, CURLOPT_TIMEOUT_MS, (long)(timeout * 1000));
    if (curl_version_info(CURLVERSION_NOW)->ssl_version != NULL &&
        strncmp(curl_version_info(CURLVERSION_NOW)->ssl_version, "OpenSSL", 7) == 0) {
        curl_easy_setopt(p->easy, CURLOPT_SSL_CTX_FUNCTION, on_ssl_ctx);
        curl_easy_setopt(p->easy, CURLOPT_SSL_CTX_DATA, p);
    }
    http_req_keep_list(r, connect_to);
    return http_req_run(L, r, probe_done);
}

static const luaL_Reg tls_funcs[] = {
    {"probe", tls_probe},
    {NULL, NULL},
};

int tls_open(lua_State *L)
{
    luaL_newlib(L, tls_funcs);
    return 1;
}
