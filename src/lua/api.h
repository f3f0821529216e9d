/*
 * api.h -- what the Lua layer offers: the Lua states certhook makes (module.c) and the
 * certhook.* API that handlers call (DESIGN §7, one area per file: api_log.c, api_time.c,
 * api_http.c, api_exec.c, api_state.c). An API function that waits -- a transfer, a program,
 * a journal write -- learns how from the running handler's delivery_ctx, which whoever runs
 * the handler (the dispatcher) fills with its loop and callbacks: the API never names the
 * dispatcher.
 */
#ifndef CERTHOOK_API_H
#define CERTHOOK_API_H

#include <lua.h>

#include "base/base.h"

struct generation; /* the dispatcher's: opaque here */
struct journal;
struct loop;
struct http_multi;

/* Something a handler waits for through the API. */
struct wait {
    void (*cancel)(struct wait *w); /* the delivery was stopped first: give up waiting */
};

/* What a running handler knows about itself. Whoever runs it makes it the state's current
 * context for each resume (module_set_ctx), where the certhook.* API and the limits hook
 * find it, also in coroutines the handler creates. */
struct delivery_ctx {
    const char *event_id, *event_type, *hostname, *handler;
    unsigned generation;
    struct generation *gen;
    double deadline; /* time_mono() after which it is stopped; 0: never */
    int killed;      /* RUN_TIMEOUT, RUN_MEMORY, RUN_STOP (dispatch.h) when it must stop */
    int waiting;     /* set by wait(): the handler yields to wait for something */
    /* Inside the dispatcher (else NULL: the API waits synchronously): its loop, where an API
     * function registers what it waits on, and its transfers. wait(ctx, w) before the API
     * yields; wake(ctx) on the dispatcher's thread, wake_async(ctx) on any other, when what it
     * waited for is there (the handler is resumed). */
    struct loop *loop;
    struct http_multi *http;
    void (*wait)(struct delivery_ctx *ctx, struct wait *w);
    void (*wake)(struct delivery_ctx *ctx);
    void (*wake_async)(struct delivery_ctx *ctx);
};

/* ---- module.c: Lua states, require "certhook" ----------------------------------------------- */

/* A fresh state with the standard libraries, the given package paths, certhook.core (the
 * handler API) preloaded and lua-cjson registered (json_decode, json_encode). alloc NULL: the
 * default allocator. NULL with a message on failure. */
lua_State *module_newstate(const char *path, const char *cpath, lua_Alloc alloc, void *ud,
                           char *err, size_t errlen);
/* Takes from a handler state what handlers must not reach: os.exit, os.execute, io.popen and
 * package.loadlib raise (certhook.exec runs programs), debug offers only traceback; and makes
 * what handler files share read-only (the global table, the standard library, every module
 * loaded, certhook's included, the string metatable). 0, or -1 with err. */
int module_sandbox(lua_State *L, char *err, size_t errlen);
/* Pushes a fresh environment for one handler file: its globals its own (_G included), what
 * the files share read through. */
void module_push_env(lua_State *L);
/* Makes ctx (or NULL) the current delivery context of L's state. */
void module_set_ctx(lua_State *L, struct delivery_ctx *ctx);
struct delivery_ctx *module_ctx(lua_State *L);
int luaopen_certhook_core(lua_State *L); /* the handler API: certhook.log, .http, ... */

/* Appends the versions of the libraries of this layer ("Lua 5.4.x, libcurl ..."). */
void module_versions(struct buf *b);

/* The API areas: each pushes its table (exec: its function). */
int log_open(lua_State *L);
int time_open(lua_State *L);
int http_open(lua_State *L);
int exec_open(lua_State *L);
int state_open(lua_State *L);
int tls_open(lua_State *L);
int once_open(lua_State *L);  /* certhook.once's primitives, in api_state.c */
int certs_open(lua_State *L); /* certhook.certs, in api_state.c */

/* ---- api_state.c ------------------------------------------------------------------------------ */

/* Gives the certhook.state of L a journal: j (not owned), or the journal in dir, opened on
 * first use and closed with L. */
void state_attach(lua_State *L, struct journal *j, const char *dir, double busy_timeout);
/* The journal given to state_attach is about to close: certhook.state, certhook.once and
 * certhook.certs raise in L from now on. */
void state_detach(lua_State *L);

/* ---- api_http.c: the dispatcher's transfers, and a GET for the layers above --------------------- */

void http_global_init(void); /* libcurl's, once per process, before the first transfer (not at
                             * start: OpenSSL's init makes ~2 MiB resident) */
/* GETs an https URL synchronously -- the peer verified, no redirects, at most max bytes into
 * out, within timeout seconds -- for the layers above (intake fetches for providers). 0 with
 * the HTTP status in *status, or -1 with err. */
int http_fetch(const char *url, double timeout, size_t max, struct buf *out, long *status,
               char *err, size_t errlen);

/* ---- api_http.c: transfers, for certhook.http and certhook.tls ------------------------------- */

struct http_req;
/* Pushes a new transfer (userdata: __gc and __close free it, whatever raises) with
 * certhook.http's defaults -- a 10 s timeout, TLS peers verified, http and https only -- and
 * returns it, with its curl handle in *easy for more options. */
struct http_req *http_req_push(lua_State *L, void **easy);
struct http_req *http_req_check(lua_State *L, int idx); /* raises unless idx holds one */
struct curl_slist;
void http_req_keep_list(struct http_req *r, struct curl_slist *list); /* freed with r */
/* Runs the transfer r (on the stack): in a handler run by the dispatcher the coroutine yields
 * while it runs and k continues it; elsewhere it runs synchronously, then k. Returns what k
 * returns (or nil, message, "busy" when too many wait for their host). */
int http_req_run(lua_State *L, struct http_req *r, lua_KFunction k);
/* 0 if the transfer worked, else -1 with the message and a stable code (timeout, tls...). */
int http_req_failed(struct http_req *r, const char **msg, const char **code);
void http_req_close(struct http_req *r); /* frees it now (also safe later, by __gc) */

/* The dispatcher's: */

/* A curl multi handle whose sockets wait in loop. per_host bounds the transfers in flight to
 * one host (0: no bound); past it a transfer waits without holding a slot of the dispatcher's
 * concurrency, of which at most `waiting` may wait before a request is refused (busy). */
struct http_multi *http_multi_new(struct loop *loop, long per_host, size_t waiting);
void http_multi_free(struct http_multi *m);
void http_multi_limits(struct http_multi *m, long per_host, size_t waiting);
void http_multi_timeout(struct http_multi *m); /* call when time_mono() >= http_multi_next */
double http_multi_next(struct http_multi *m);  /* time_mono() of curl's timer, or < 0 */
size_t http_multi_parked(struct http_multi *m); /* transfers waiting past per_host */

/* A GET for C code on the dispatcher's thread (pollers), in its multi handle m: url with the
 * header lines ("Name: value"), within timeout seconds, at most max bytes of reply. done(cls)
 * runs on the dispatcher's thread, from its loop, when it has ended (not if it is freed first).
 * NULL with err. */
struct http_call;
struct http_call *http_call_start(struct http_multi *m, const char *url,
                                  const char *const *headers, size_t nheaders, double timeout,
                                  size_t max, void (*done)(void *cls), void *cls, char *err,
                                  size_t errlen);
/* An ended transfer: 0 with the HTTP status and the body (valid until it is freed), or -1 with
 * why it failed (connection, timeout, too large). */
int http_call_result(struct http_call *c, long *status, const char **body, size_t *n,
                     const char **msg);
/* The reply's header name (any case) into out: 0, or -1 when it has none. */
int http_call_header(struct http_call *c, const char *name, char *out, size_t n);
void http_call_free(struct http_call *c); /* stops it if it runs */

#endif
