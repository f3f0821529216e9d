/*
 * api_http.c -- certhook.http (DESIGN §7) on libcurl.
 *
 * A request is userdata ("certhook.http.request") built from the Lua arguments (http_build),
 * transferred, and turned into a response table (push_response); its __gc and __close free
 * the transfer, so nothing leaks whatever raises. Inside a handler run by the dispatcher the
 * transfer goes to a curl multi handle whose sockets wait in the dispatcher's loop
 * (http_multi_*): the handler's coroutine yields and a continuation builds the response when
 * it is resumed, so hundreds of handlers wait on the network at once on one thread; the multi
 * also bounds the transfers to one host (delivery.per_host). Elsewhere (certhook run, plain
 * Lua) the transfer is synchronous. Redirects are off unless asked for, TLS peers are
 * verified, only http and https are allowed, the response is capped (16 MiB) and the timeout
 * defaults to 10 s. A 4xx or 5xx reply is a response; transport failures return nil, message,
 * code with a stable code (timeout, connrefused, resolve, tls, toolarge, busy, url, http).
 */
#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>

#include <curl/curl.h>
#include <lauxlib.h>

#include "lua/api.h"
#include "providers/provider.h"

#define REQUEST "certhook.http.request"
#define DEFAULT_TIMEOUT 10.0
#define DEFAULT_MAX_SIZE (16 * 1024 * 1024)

struct http_req {
    CURL *easy;
    struct curl_slist *headers, *more; /* more: another list an option points to */
    struct buf body, resp, resp_headers;
    size_t max_size;
    int too_large;
    CURLcode result;
    char *host; /* lower-case, for per-host limits */
    char errbuf[CURL_ERROR_SIZE];
    struct http_multi *m;     /* while it is in a multi handle */
    struct delivery_ctx *ctx; /* the delivery that waits for it */
    struct wait wait;
    void (*done)(void *cls);  /* or C code that waits for it (http_call) */
    void *done_cls;
};

/* The dispatcher's: transfers whose sockets wait in its loop, and how many run to each host. */
struct host {
    char *name;
    int inflight;
};

struct http_multi {
    CURLM *multi;
    struct loop *loop;
    double timer; /* when curl wants to be called (time_mono), or < 0 */
    int running;
    long per_host;  /* transfers in flight to one host before the others wait; 0: no bound */
    size_t waiting; /* of those, how many may wait before requests are refused */
    struct host *hosts;
    size_t nhosts;
};

static void host_done(struct http_multi *m, const char *name);

/* Takes the transfer out of its multi handle (if it is in one) and frees what it holds. Safe
 * twice: __gc and __close. */
static void req_close(struct http_req *r)
{
    if (r->m != NULL) {
        curl_multi_remove_handle(r->m->multi, r->easy);
        host_done(r->m, r->host);
        r->m = NULL;
    }
    if (r->easy)
        curl_easy_cleanup(r->easy);
    r->easy = NULL;
    curl_slist_free_all(r->headers);
    curl_slist_free_all(r->more);
    r->headers = r->more = NULL;
    buf_free(&r->body);
    buf_free(&r->resp);
    buf_free(&r->resp_headers);
    free(r->host);
    r->host = NULL;
}

static int req_gc(lua_State *L)
{
    req_close(luaL_checkudata(L, 1, REQUEST));
    return 0;
}

static size_t on_data(char *p, size_t size, size_t n, void *cls)
{
    struct http_req *r = cls;
    if (r->resp.n + n * size > r->max_size) {
        r->too_large = 1;
        return 0; /* aborts the transfer */
    }
    return buf_add(&r->resp, p, n * size) == 0 ? n * size : 0;
}

static size_t on_header(char *p, size_t size, size_t n, void *cls)
{
    struct http_req *r = cls;
    if (strncmp(p, "HTTP/", 5) == 0) /* a new response (after 100 Continue, a redirect) */
        r->resp_headers.n = 0;
    return buf_add(&r->resp_headers, p, n * size) == 0 ? n * size : 0;
}

static int add_header(struct http_req *r, const char *name, const char *value)
{
    struct buf b;
    buf_init(&b);
    buf_printf(&b, "%s: %s", name, value);
    struct curl_slist *l = b.p ? curl_slist_append(r->headers, b.p) : NULL;
    buf_free(&b);
    if (l == NULL)
        return -1;
    r->headers = l;
    return 0;
}

/* The lower-case host of url, or NULL. */
static char *url_host(const char *url)
{
    char *host = NULL, *out = NULL;
    CURLU *u = curl_url();
    if (u && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK) {
        out = strdup(host);
        for (char *p = out; p && *p; p++)
            *p = (char)tolower((unsigned char)*p);
    }
    curl_free(host);
    curl_url_cleanup(u);
    return out;
}

/* Pushes a request built from the options table at idx. Raises on misuse (the userdata on
 * the stack frees what was built). */
/* certhook.http's defaults on a fresh transfer (zeroed). 0, or -1: out of memory. */
static int req_init(struct http_req *r)
{
    http_global_init();
    if ((r->easy = curl_easy_init()) == NULL)
        return -1;
    r->max_size = DEFAULT_MAX_SIZE;
    curl_easy_setopt(r->easy, CURLOPT_TIMEOUT_MS, (long)(DEFAULT_TIMEOUT * 1000));
    curl_easy_setopt(r->easy, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(r->easy, CURLOPT_SSL_VERIFYHOST, 2L);
    curl_easy_setopt(r->easy, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(r->easy, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(r->easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(r->easy, CURLOPT_USERAGENT, "certhook/" CERTHOOK_VERSION);
    curl_easy_setopt(r->easy, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(r->easy, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(r->easy, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(r->easy, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(r->easy, CURLOPT_ERRORBUFFER, r->errbuf);
    curl_easy_setopt(r->easy, CURLOPT_PRIVATE, r);
    return 0;
}

struct http_req *http_req_push(lua_State *L, void **easy)
{
    struct http_req *r = lua_newuserdatauv(L, sizeof *r, 0);
    memset(r, 0, sizeof *r);
    luaL_setmetatable(L, REQUEST);
    if (req_init(r) != 0)
        luaL_error(L, "certhook: out of memory");
    *easy = r->easy;
    return r;
}

struct http_req *http_req_check(lua_State *L, int idx)
{
    return luaL_checkudata(L, idx, REQUEST);
}

void http_req_keep_list(struct http_req *r, struct curl_slist *list)
{
    curl_slist_free_all(r->more);
    r->more = list;
}

static struct http_req *http_build(lua_State *L, int idx)
{
    const char *msg = NULL;
    double timeout = DEFAULT_TIMEOUT;
    int has_type = 0;
    void *easy;
    struct http_req *r = http_req_push(L, &easy);
    if (lua_getfield(L, idx, "url") != LUA_TSTRING) {
        msg = "certhook.http.request: url must be a string";
        goto misuse;
    }
    curl_easy_setopt(r->easy, CURLOPT_URL, lua_tostring(L, -1));
    r->host = url_host(lua_tostring(L, -1));
    if (lua_getfield(L, idx, "method") != LUA_TNIL) {
        if (lua_type(L, -1) != LUA_TSTRING) {
            msg = "certhook.http.request: method must be a string";
            goto misuse;
        }
        char m[16];
        size_t i;
        const char *s = lua_tostring(L, -1);
        for (i = 0; s[i] && i < sizeof m - 1; i++)
            m[i] = (char)toupper((unsigned char)s[i]);
        m[i] = '\0';
        curl_easy_setopt(r->easy, CURLOPT_CUSTOMREQUEST, m);
        if (strcmp(m, "HEAD") == 0)
            curl_easy_setopt(r->easy, CURLOPT_NOBODY, 1L);
    }
    if (lua_getfield(L, idx, "timeout") != LUA_TNIL) {
        if (!lua_isnumber(L, -1) || lua_tonumber(L, -1) <= 0) {
            msg = "certhook.http.request: timeout must be a positive number of seconds";
            goto misuse;
        }
        timeout = lua_tonumber(L, -1);
    }
    if (lua_getfield(L, idx, "max_size") != LUA_TNIL) {
        if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) <= 0) {
            msg = "certhook.http.request: max_size must be a positive integer";
            goto misuse;
        }
        r->max_size = (size_t)lua_tointeger(L, -1);
    }
    if (lua_getfield(L, idx, "redirects") != LUA_TNIL) {
        if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 0) {
            msg = "certhook.http.request: redirects must be a number of redirects to follow";
            goto misuse;
        }
        curl_easy_setopt(r->easy, CURLOPT_FOLLOWLOCATION, lua_tointeger(L, -1) > 0 ? 1L : 0L);
        curl_easy_setopt(r->easy, CURLOPT_MAXREDIRS, (long)lua_tointeger(L, -1));
    }
    if (lua_getfield(L, idx, "ca_file") != LUA_TNIL) {
        if (lua_type(L, -1) != LUA_TSTRING) {
            msg = "certhook.http.request: ca_file must be the path of a PEM file";
            goto misuse;
        }
        curl_easy_setopt(r->easy, CURLOPT_CAINFO, lua_tostring(L, -1));
    }
    if (lua_getfield(L, idx, "headers") != LUA_TNIL) {
        if (!lua_istable(L, -1)) {
            msg = "certhook.http.request: headers must be a table of name = value";
            goto misuse;
        }
        lua_pushnil(L);
        while (lua_next(L, -2) != 0) {
            if (lua_type(L, -2) != LUA_TSTRING || !lua_isstring(L, -1)) {
                msg = "certhook.http.request: headers must be a table of name = value";
                goto misuse;
            }
            const char *name = lua_tostring(L, -2);
            has_type |= strcasecmp(name, "content-type") == 0;
            if (add_header(r, name, lua_tostring(L, -1)) != 0) {
                msg = "certhook.http: out of memory";
                goto misuse;
            }
            lua_pop(L, 1);
        }
    }
    int json = lua_getfield(L, idx, "json") != LUA_TNIL;
    int body = lua_getfield(L, idx, "body") != LUA_TNIL;
    if (json && body) {
        msg = "certhook.http.request: give body or json, not both";
        goto misuse;
    }
    if (body) {
        if (!lua_isstring(L, -1)) {
            msg = "certhook.http.request: body must be a string (use json = for a table)";
            goto misuse;
        }
        size_t n;
        const char *s = lua_tolstring(L, -1, &n);
        buf_add(&r->body, s, n);
    } else if (json) {
        size_t n;
        const char *s = json_encode(L, -2, &n);
        if (s == NULL) {
            msg = "certhook.http.request: json value cannot be encoded";
            goto misuse;
        }
        buf_add(&r->body, s, n);
        if (!has_type)
            add_header(r, "Content-Type", "application/json");
    }
    if (body || json) {
        curl_easy_setopt(r->easy, CURLOPT_POSTFIELDS, r->body.p ? r->body.p : "");
        curl_easy_setopt(r->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->body.n);
    }
    curl_easy_setopt(r->easy, CURLOPT_HTTPHEADER, r->headers);
    curl_easy_setopt(r->easy, CURLOPT_TIMEOUT_MS, (long)(timeout * 1000));
    lua_settop(L, idx + 1); /* the options, the request */
    return r;
misuse:
    luaL_error(L, "%s", msg);
    return NULL;
}

static const char *error_code(CURLcode rc)
{
    switch (rc) {
    case CURLE_OPERATION_TIMEDOUT: return "timeout";
    case CURLE_COULDNT_CONNECT: return "connrefused";
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY: return "resolve";
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR: return "tls";
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL: return "url";
    case CURLE_TOO_MANY_REDIRECTS: return "redirects";
    default: return "http";
    }
}

/* Pushes the response table, or nil, message, code. Returns the number of values. */
static int push_response(lua_State *L, struct http_req *r)
{
    long status = 0;
    char outcome[8];
    if (r->too_large)
        metrics_add(M_HTTP, 1, "toolarge");
    else if (r->result != CURLE_OK)
        metrics_add(M_HTTP, 1, error_code(r->result));
    else if (curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status) == CURLE_OK) {
        snprintf(outcome, sizeof outcome, "%dxx", (int)(status / 100 % 10));
        metrics_add(M_HTTP, 1, outcome);
    }
    if (r->too_large) {
        lua_pushnil(L);
        lua_pushfstring(L, "response larger than %I bytes (max_size)", (lua_Integer)r->max_size);
        lua_pushliteral(L, "toolarge");
        return 3;
    }
    if (r->result != CURLE_OK) {
        lua_pushnil(L);
        lua_pushstring(L, r->errbuf[0] ? r->errbuf : curl_easy_strerror(r->result));
        lua_pushstring(L, error_code(r->result));
        return 3;
    }
    lua_createtable(L, 0, 4);
    lua_pushinteger(L, status);
    lua_setfield(L, -2, "status");
    lua_pushlstring(L, r->resp.p ? r->resp.p : "", r->resp.n);
    lua_setfield(L, -2, "body");
    lua_newtable(L); /* headers: lower-case names; repeated ones joined with ", " */
    int is_json = 0;
    char *line = r->resp_headers.p;
    for (char *next; line && *line; line = next) {
        next = strstr(line, "\r\n");
        if (next == NULL)
            break;
        *next = '\0';
        next += 2;
        char *colon = strchr(line, ':');
        if (colon == NULL)
            continue;
        for (char *p = line; p < colon; p++)
            *p = (char)tolower((unsigned char)*p);
        char *v = colon + 1;
        while (*v == ' ' || *v == '\t')
            v++;
        lua_pushlstring(L, line, (size_t)(colon - line));
        lua_pushvalue(L, -1);
        if (lua_rawget(L, -3) == LUA_TSTRING) {
            lua_pushliteral(L, ", ");
            lua_pushstring(L, v);
            lua_concat(L, 3);
        } else {
            lua_pop(L, 1);
            lua_pushstring(L, v);
        }
        if (colon - line == 12 && strncmp(line, "content-type", 12) == 0)
            is_json = strstr(v, "json") != NULL;
        lua_rawset(L, -3);
    }
    lua_setfield(L, -2, "headers");
    if (is_json && r->resp.n > 0) {
        char err[200];
        if (json_decode(L, r->resp.p, r->resp.n, err, sizeof err) == 0) {
            json_fixup(L, -1);
            lua_setfield(L, -2, "json");
        }
    }
    return 1;
}

/* The continuation of a request that yielded (the dispatcher resumed us after the transfer),
 * or the end of a synchronous one: the request is at index 2. */
static int request_done(lua_State *L, int status, lua_KContext k)
{
    struct http_req *r = luaL_checkudata(L, 2, REQUEST);
    (void)status, (void)k;
    int n = push_response(L, r);
    req_close(r);
    return n;
}

static int multi_add(struct http_multi *m, struct http_req *r);

int http_req_failed(struct http_req *r, const char **msg, const char **code)
{
    if (r->too_large) {
        *msg = "response too large (max_size)";
        *code = "toolarge";
        return -1;
    }
    if (r->result == CURLE_OK)
        return 0;
    *msg = r->errbuf[0] ? r->errbuf : curl_easy_strerror(r->result);
    *code = error_code(r->result);
    return -1;
}

void http_req_close(struct http_req *r)
{
    req_close(r);
}

/* The delivery was stopped while the transfer ran. */
static void on_cancel(struct wait *w)
{
    struct http_req *r = (struct http_req *)((char *)w - offsetof(struct http_req, wait));
    if (r->m != NULL) {
        curl_multi_remove_handle(r->m->multi, r->easy);
        host_done(r->m, r->host);
        r->m = NULL;
    }
    r->ctx = NULL;
}

/* {url=, method=, headers=, body=, json=, timeout=, max_size=, redirects=, ca_file=} ->
 * response | nil, msg, code */
int http_req_run(lua_State *L, struct http_req *r, lua_KFunction k)
{
    struct delivery_ctx *ctx = module_ctx(L);
    if (ctx != NULL && ctx->http != NULL && lua_isyieldable(L)) {
        if (multi_add(ctx->http, r) != 0) {
            metrics_add(M_HTTP, 1, "busy");
            lua_pushnil(L);
            lua_pushliteral(L, "too many requests are waiting (delivery.concurrency with "
                               "delivery.per_host); try again later");
            lua_pushliteral(L, "busy");
            return 3;
        }
        r->ctx = ctx;
        r->wait.cancel = on_cancel;
        ctx->wait(ctx, &r->wait);
        return lua_yieldk(L, 0, 0, k);
    }
    r->result = curl_easy_perform(r->easy);
    return k(L, LUA_OK, 0);
}

static int http_request(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    struct http_req *r = http_build(L, 1);
    return http_req_run(L, r, request_done);
}

/* Copies opts (or a new table) into a new table at the top. */
static void with_options(lua_State *L, int opts)
{
    lua_newtable(L);
    if (lua_istable(L, opts)) {
        lua_pushnil(L);
        while (lua_next(L, opts) != 0) {
            lua_pushvalue(L, -2);
            lua_insert(L, -2);
            lua_rawset(L, -4);
        }
    } else if (!lua_isnoneornil(L, opts)) {
        luaL_typeerror(L, opts, "table of options");
    }
}

/* url [, opts] -> response | nil, msg, code */
static int http_get(lua_State *L)
{
    luaL_checkstring(L, 1);
    lua_settop(L, 2);
    with_options(L, 2);
    lua_pushvalue(L, 1);
    lua_setfield(L, -2, "url");
    lua_replace(L, 1);
    lua_settop(L, 1);
    return http_request(L);
}

/* url, body (string, or table sent as JSON) [, opts] -> response | nil, msg, code */
static int http_post(lua_State *L)
{
    luaL_checkstring(L, 1);
    if (lua_type(L, 2) != LUA_TSTRING && !lua_istable(L, 2))
        luaL_typeerror(L, 2, "string or table");
    lua_settop(L, 3);
    with_options(L, 3);
    lua_pushvalue(L, 1);
    lua_setfield(L, -2, "url");
    lua_pushvalue(L, 2);
    lua_setfield(L, -2, lua_istable(L, 2) ? "json" : "body");
    lua_getfield(L, -1, "method");
    if (lua_isnil(L, -1)) {
        lua_pushliteral(L, "POST");
        lua_setfield(L, -3, "method");
    }
    lua_pop(L, 1);
    lua_replace(L, 1);
    lua_settop(L, 1);
    return http_request(L);
}

static const luaL_Reg http_funcs[] = {
    {"get", http_get},
    {"post", http_post},
    {"request", http_request},
    {NULL, NULL},
};

int http_open(lua_State *L)
{
    if (luaL_newmetatable(L, REQUEST)) {
        lua_pushcfunction(L, req_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, req_gc);
        lua_setfield(L, -2, "__close");
    }
    lua_pop(L, 1);
    luaL_newlib(L, http_funcs);
    return 1;
}

/* ---- a synchronous GET for the layers above (intake: a provider's fetch) ----------------------- */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;

static void curl_init(void)
{
    curl_global_init(CURL_GLOBAL_ALL);
}

void http_global_init(void)
{
    pthread_once(&curl_once, curl_init);
}

struct fetch {
    struct buf *out;
    size_t max;
    int too_large;
};

static size_t on_fetch_data(char *p, size_t size, size_t n, void *cls)
{
    struct fetch *f = cls;
    if (f->out->n + n * size > f->max) {
        f->too_large = 1;
        return 0;
    }
    return buf_add(f->out, p, n * size) == 0 ? n * size : 0;
}

int http_fetch(const char *url, double timeout, size_t max, struct buf *out, long *status,
               char *err, size_t errlen)
{
    char errbuf[CURL_ERROR_SIZE] = "";
    struct fetch f = {out, max, 0};
    http_global_init();
    CURL *easy = curl_easy_init();
    if (easy == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    curl_easy_setopt(easy, CURLOPT_URL, url);
    curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, (long)(timeout * 1000));
    curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, (long)(timeout * 1000));
    curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, 2L);
    curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "https");
    curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(easy, CURLOPT_USERAGENT, "certhook/" CERTHOOK_VERSION);
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, on_fetch_data);
    curl_easy_setopt(easy, CURLOPT_WRITEDATA, &f);
    curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, errbuf);
    CURLcode rc = curl_easy_perform(easy);
    curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, status);
    curl_easy_cleanup(easy);
    metrics_add(M_HTTP, 1, f.too_large ? "toolarge" : rc != CURLE_OK ? error_code(rc)
                           : *status >= 500 ? "5xx" : *status >= 400 ? "4xx"
                           : *status >= 300 ? "3xx" : "2xx");
    if (f.too_large) {
        snprintf(err, errlen, "the reply is larger than %zu bytes", max);
        return -1;
    }
    if (rc != CURLE_OK) {
        snprintf(err, errlen, "%s", errbuf[0] ? errbuf : curl_easy_strerror(rc));
        return -1;
    }
    return 0;
}

/* ---- the multi interface, driven by the dispatcher's loop ------------------------------------- */

/* A socket curl asked us to watch. */
struct http_sock {
    struct loop_fd w;
    struct http_multi *m;
};

static struct host *host_of(struct http_multi *m, const char *name, int create)
{
    name = name ? name : "";
    for (size_t i = 0; i < m->nhosts; i++)
        if (strcmp(m->hosts[i].name, name) == 0)
            return &m->hosts[i];
    if (!create)
        return NULL;
    struct host *h = realloc(m->hosts, (m->nhosts + 1) * sizeof *h);
    if (h == NULL)
        return NULL;
    m->hosts = h;
    h = &m->hosts[m->nhosts];
    if ((h->name = strdup(name)) == NULL)
        return NULL;
    h->inflight = 0;
    m->nhosts++;
    return h;
}

static void host_done(struct http_multi *m, const char *name)
{
    struct host *h = host_of(m, name, 0);
    if (h && --h->inflight == 0) { /* forget it: keeps the table to the busy hosts */
        free(h->name);
        *h = m->hosts[--m->nhosts];
    }
}

size_t http_multi_parked(struct http_multi *m)
{
    size_t n = 0;
    for (size_t i = 0; m->per_host && i < m->nhosts; i++)
        if (m->hosts[i].inflight > m->per_host)
            n += (size_t)(m->hosts[i].inflight - m->per_host);
    return n;
}

static int on_socket(CURL *easy, curl_socket_t fd, int what, void *cls, void *sockp);
static int on_timer(CURLM *multi, long ms, void *cls);

/* libcurl's multi handle, made with the first transfer: libcurl's global init (OpenSSL's) makes
 * about 2 MiB of library pages resident, which a process whose handlers send no request never
 * needs. */
static int multi_ready(struct http_multi *m)
{
    if (m->multi != NULL)
        return 0;
    http_global_init();
    if ((m->multi = curl_multi_init()) == NULL)
        return -1;
    curl_multi_setopt(m->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(m->multi, CURLMOPT_SOCKETDATA, m);
    curl_multi_setopt(m->multi, CURLMOPT_TIMERFUNCTION, on_timer);
    curl_multi_setopt(m->multi, CURLMOPT_TIMERDATA, m);
    http_multi_limits(m, m->per_host, m->waiting);
    return 0;
}

/* Adds the transfer: 0, or -1 when too many wait for their host already (busy). */
static int multi_add(struct http_multi *m, struct http_req *r)
{
    struct host *h = host_of(m, r->host, 1);
    if (h == NULL || multi_ready(m) != 0)
        return -1;
    if (m->per_host && h->inflight >= m->per_host && http_multi_parked(m) >= m->waiting)
        return -1;
    if (curl_multi_add_handle(m->multi, r->easy) != CURLM_OK)
        return -1;
    h->inflight++;
    r->m = m;
    return 0;
}

/* Reports finished transfers: the delivery waiting for each is resumed. */
static void reap(struct http_multi *m)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(m->multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        struct http_req *r = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&r);
        r->result = msg->data.result;
        curl_multi_remove_handle(m->multi, r->easy);
        host_done(m, r->host);
        r->m = NULL;
        struct delivery_ctx *ctx = r->ctx;
        r->ctx = NULL;
        if (ctx != NULL)
            ctx->wake(ctx);
        else if (r->done != NULL)
            r->done(r->done_cls);
    }
}

static void on_ready(struct loop_fd *w, uint32_t events)
{
    struct http_sock *s = (struct http_sock *)w;
    struct http_multi *m = s->m;
    int mask = (events & EPOLLIN ? CURL_CSELECT_IN : 0) | (events & EPOLLOUT ? CURL_CSELECT_OUT : 0) |
               (events & (EPOLLERR | EPOLLHUP) ? CURL_CSELECT_ERR : 0);
    curl_multi_socket_action(m->multi, w->fd, mask, &m->running); /* may free s */
    reap(m);
}

/* curl: watch socket fd for `what` (CURL_POLL_*), or stop watching it. */
static int on_socket(CURL *easy, curl_socket_t fd, int what, void *cls, void *sockp)
{
    struct http_multi *m = cls;
    struct http_sock *s = sockp;
    (void)easy;
    if (what == CURL_POLL_REMOVE) {
        if (s != NULL) {
            loop_del(m->loop, &s->w);
            curl_multi_assign(m->multi, fd, NULL);
            free(s);
        }
        return 0;
    }
    uint32_t events = (what & CURL_POLL_IN ? EPOLLIN : 0) | (what & CURL_POLL_OUT ? EPOLLOUT : 0);
    if (s != NULL)
        return loop_mod(m->loop, &s->w, events) == 0 ? 0 : -1;
    if ((s = malloc(sizeof *s)) == NULL)
        return -1;
    *s = (struct http_sock){{fd, on_ready}, m};
    if (loop_add(m->loop, &s->w, events) != 0) {
        free(s);
        return -1;
    }
    curl_multi_assign(m->multi, fd, s);
    return 0;
}

static int on_timer(CURLM *multi, long ms, void *cls)
{
    struct http_multi *m = cls;
    (void)multi;
    m->timer = ms < 0 ? -1 : time_mono() + (double)ms / 1000;
    return 0;
}

struct http_multi *http_multi_new(struct loop *loop, long per_host, size_t waiting)
{
    struct http_multi *m = calloc(1, sizeof *m);
    if (m == NULL)
        return NULL;
    m->loop = loop;
    m->timer = -1;
    http_multi_limits(m, per_host, waiting);
    return m;
}

void http_multi_limits(struct http_multi *m, long per_host, size_t waiting)
{
    m->per_host = per_host;
    m->waiting = waiting;
    if (m->multi != NULL)
        curl_multi_setopt(m->multi, CURLMOPT_MAX_HOST_CONNECTIONS, per_host > 0 ? per_host : 0L);
}

void http_multi_free(struct http_multi *m)
{
    if (m == NULL)
        return;
    if (m->multi != NULL)
        curl_multi_cleanup(m->multi); /* tells on_socket to remove each socket */
    for (size_t i = 0; i < m->nhosts; i++)
        free(m->hosts[i].name);
    free(m->hosts);
    free(m);
}

void http_multi_timeout(struct http_multi *m)
{
    if (m->timer < 0 || time_mono() < m->timer)
        return;
    m->timer = -1;
    curl_multi_socket_action(m->multi, CURL_SOCKET_TIMEOUT, 0, &m->running);
    reap(m);
}

double http_multi_next(struct http_multi *m)
{
    return m->timer;
}

/* ---- transfers for C code on the dispatcher's thread (pollers) ------------------------------- */

struct http_call {
    struct http_req r;
};

struct http_call *http_call_start(struct http_multi *m, const char *url,
                                  const char *const *headers, size_t nheaders, double timeout,
                                  size_t max, void (*done)(void *cls), void *cls, char *err,
                                  size_t errlen)
{
    struct http_call *c = calloc(1, sizeof *c);
    if (c == NULL || req_init(&c->r) != 0) {
        free(c);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    struct http_req *r = &c->r;
    r->max_size = max;
    r->done = done;
    r->done_cls = cls;
    r->host = url_host(url);
    curl_easy_setopt(r->easy, CURLOPT_URL, url);
    curl_easy_setopt(r->easy, CURLOPT_TIMEOUT_MS, (long)(timeout * 1000));
    for (size_t i = 0; i < nheaders; i++) {
        struct curl_slist *l = curl_slist_append(r->headers, headers[i]);
        if (l == NULL) {
            http_call_free(c);
            snprintf(err, errlen, "out of memory");
            return NULL;
        }
        r->headers = l;
    }
    curl_easy_setopt(r->easy, CURLOPT_HTTPHEADER, r->headers);
    if (multi_add(m, r) != 0) {
        http_call_free(c);
        snprintf(err, errlen, "too many transfers wait for their host (delivery.per_host)");
        return NULL;
    }
    return c;
}

int http_call_result(struct http_call *c, long *status, const char **body, size_t *n,
                     const char **msg)
{
    const char *code;
    struct http_req *r = &c->r;
    if (r->m != NULL) {
        *msg = "still running";
        return -1;
    }
    if (http_req_failed(r, msg, &code) != 0)
        return -1;
    *status = 0;
    curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, status);
    *body = r->resp.p ? r->resp.p : "";
    *n = r->resp.n;
    return 0;
}

int http_call_header(struct http_call *c, const char *name, char *out, size_t n)
{
    size_t len = strlen(name);
    const char *p = c->r.resp_headers.p, *end = p ? p + c->r.resp_headers.n : NULL;
    for (; p && p < end;) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (eol == NULL)
            eol = end;
        if ((size_t)(eol - p) > len && p[len] == ':' && strncasecmp(p, name, len) == 0) {
            const char *v = p + len + 1;
            while (v < eol && (*v == ' ' || *v == '\t'))
                v++;
            size_t vn = (size_t)(eol - v);
            while (vn > 0 && (v[vn - 1] == '\r' || v[vn - 1] == ' '))
                vn--;
            snprintf(out, n, "%.*s", (int)vn, v);
            return 0;
        }
        p = eol + 1;
    }
    return -1;
}

void http_call_free(struct http_call *c)
{
    if (c == NULL)
        return;
    req_close(&c->r);
    free(c);
}
