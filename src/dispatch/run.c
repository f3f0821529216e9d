/*
 * run.c -- running one handler: its coroutine, the event it gets, the limits that stop it.
 *
 * Used by the dispatcher (dispatch.c: deliveries that may wait, and `certhook run`'s, all
 * synchronous). Each handler call gets its own coroutine and its own copy of the event, as
 * the journal keeps it (unpacked: a plain table). A count hook stops a handler past its
 * deadline (delivery.timeout) or after its state refused memory (delivery.memory_limit):
 * it yields the coroutine when it can -- a pcall in the handler cannot catch a yield -- and
 * raises only inside C calls that cannot yield, until a yieldable point is reached.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "dispatch/dispatch.h"
#include "providers/provider.h"

#define HOOK_COUNT 10000 /* VM instructions between looks at the clock */
#define GUARD 1.0        /* seconds for user code run after the handler: __tostring, __close */

int run_push_event(lua_State *L, const struct event *ev)
{
    if (event_unpack(L, ev->packed, ev->packed_len, ev->body, ev->body_len) == 0) {
        if (event_set_context(L, -1, ev->context) == 0)
            return 0;
        lua_pop(L, 1);
    }
    log_msg(LOG_ERROR, "event %s: its journaled form does not decode", ev->id);
    return -1;
}

/* Pushes a deep copy of the table at src; memo (a table) keeps shared subtables shared. */
static void run_copy(lua_State *L, int src, int memo)
{
    luaL_checkstack(L, 6, "event nesting");
    lua_pushvalue(L, src);
    if (lua_rawget(L, memo) != LUA_TNIL)
        return;
    lua_pop(L, 1);
    lua_createtable(L, (int)lua_rawlen(L, src), 0);
    int dst = lua_gettop(L);
    lua_pushvalue(L, src);
    lua_pushvalue(L, dst);
    lua_rawset(L, memo);
    lua_pushnil(L);
    while (lua_next(L, src) != 0) { /* dst, key, value */
        if (lua_type(L, -1) == LUA_TTABLE) {
            run_copy(L, lua_gettop(L), memo);
            lua_remove(L, -2);
        }
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, dst);
    }
}

int run_event_arg(lua_State *L, int event, size_t i, size_t n)
{
    if (i + 1 == n)
        return event; /* the last delivery gets the original: nobody else sees it */
    lua_newtable(L); /* the memo of this copy */
    run_copy(L, event, lua_gettop(L));
    lua_remove(L, -2);
    return lua_gettop(L);
}

static const char *kill_reason(const struct delivery_ctx *ctx, char *buf, size_t n)
{
    switch (ctx->killed) {
    case RUN_TIMEOUT:
        snprintf(buf, n, "the handler ran past its deadline (delivery.timeout) and was stopped");
        break;
    case RUN_MEMORY:
        snprintf(buf, n, "the handler needed more memory than delivery.memory_limit (%zu bytes) "
                         "and was stopped", ctx->gen ? ctx->gen->mem_limit : 0);
        break;
    default:
        snprintf(buf, n, "the handler was stopped by the shutdown");
    }
    return buf;
}

char *run_stopped(const struct delivery_ctx *ctx)
{
    char why[200];
    return strdup(kill_reason(ctx, why, sizeof why));
}

/* Every HOOK_COUNT instructions of any coroutine of the state: stop the current delivery if
 * it must stop. */
static void limits_hook(lua_State *L, lua_Debug *ar)
{
    struct delivery_ctx *ctx = module_ctx(L);
    (void)ar;
    if (ctx == NULL)
        return;
    if (ctx->gen && ctx->gen->mem_over) {
        ctx->gen->mem_over = 0;
        ctx->killed = RUN_MEMORY;
    }
    if (!ctx->killed && ctx->deadline > 0 && time_mono() > ctx->deadline)
        ctx->killed = RUN_TIMEOUT;
    if (!ctx->killed)
        return;
    if (lua_isyieldable(L)) {
        lua_yield(L, 0); /* to the runner, whatever pcall is in between */
        return;
    }
    char why[200];
    luaL_error(L, "%s", kill_reason(ctx, why, sizeof why));
}

void run_limit(lua_State *L)
{
    lua_sethook(L, limits_hook, LUA_MASKCOUNT, HOOK_COUNT);
}

/* Calls fn (protected) with a short budget of its own: for user code that runs after the
 * handler itself -- an error object's __tostring, __close of its to-be-closed variables. */
static int guarded(lua_State *L, lua_CFunction fn, int nargs, int nres,
                   const struct delivery_ctx *ctx)
{
    struct delivery_ctx guard = {.deadline = time_mono() + GUARD, .gen = ctx ? ctx->gen : NULL};
    struct delivery_ctx *was = module_ctx(L);
    lua_pushcfunction(L, fn);
    lua_insert(L, -nargs - 1);
    module_set_ctx(L, &guard);
    int rc = lua_pcall(L, nargs, nres, 0);
    module_set_ctx(L, was);
    return rc;
}

lua_State *run_new(lua_State *L, const struct handler *h, int idx, int *ref)
{
    idx = lua_absindex(L, idx);
    lua_State *co = lua_newthread(L);
    *ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_sethook(co, limits_hook, LUA_MASKCOUNT, HOOK_COUNT);
    lua_rawgeti(co, LUA_REGISTRYINDEX, h->ref);
    lua_pushvalue(L, idx);
    lua_xmove(L, co, 1);
    return co;
}

/* coroutine -> closes its to-be-closed variables (they run user code) */
static int reset_thread(lua_State *L)
{
    lua_resetthread(lua_tothread(L, 1));
    return 0;
}

void run_free(lua_State *L, lua_State *co, int ref)
{
    if (co != NULL && lua_status(co) != LUA_OK) {
        lua_pushthread(co);
        lua_xmove(co, L, 1);
        if (guarded(L, reset_thread, 1, 0, NULL) != LUA_OK)
            lua_pop(L, 1);
    }
    luaL_unref(L, LUA_REGISTRYINDEX, ref);
}

const char *run_where(lua_State *co, char *buf, size_t n)
{
    lua_Debug ar;
    for (int level = 0; lua_getstack(co, level, &ar); level++) {
        if (lua_getinfo(co, "Sl", &ar) && ar.currentline > 0) {
            snprintf(buf, n, "%s:%d", ar.short_src, ar.currentline);
            return buf;
        }
    }
    snprintf(buf, n, "?");
    return buf;
}

/* error object, coroutine -> message, traceback. Run protected: __tostring may raise. */
static int describe_error(lua_State *L)
{
    lua_State *co = lua_tothread(L, 2);
    if (lua_type(L, 1) != LUA_TSTRING) {
        if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
            lua_replace(L, 1);
        else
            lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1)),
                lua_replace(L, 1);
    }
    lua_settop(L, 1);
    luaL_traceback(L, co, NULL, 0);
    return 2;
}

enum run_status run_resume(lua_State *L, lua_State *co, int nargs, struct delivery_ctx *ctx,
                           char **error, char **traceback)
{
    int nres, top = lua_gettop(L);
    (void)nres;
    char why[200];
    ctx->waiting = 0;
    module_set_ctx(L, ctx);
    int status = lua_resume(co, L, nargs, &nres);
    module_set_ctx(L, NULL);
    if (ctx->gen && ctx->gen->mem_over) { /* refused memory: this delivery asked for it */
        ctx->gen->mem_over = 0;
        if (status != LUA_OK)
            ctx->killed = RUN_MEMORY;
    }
    *error = *traceback = NULL;
    if (status == LUA_OK) /* what it returned stays on co's stack */
        return RUN_DONE;
    if (status == LUA_YIELD && !ctx->killed && ctx->waiting)
        return RUN_WAITING;
    const char *msg = "the handler yielded outside the certhook API";
    const char *tb = NULL;
    if (ctx->killed) {
        msg = kill_reason(ctx, why, sizeof why);
    } else if (status != LUA_YIELD) {
        lua_xmove(co, L, 1); /* the error object */
        lua_pushthread(co);
        lua_xmove(co, L, 1);
        if (guarded(L, describe_error, 2, 2, ctx) == LUA_OK) {
            msg = lua_tostring(L, -2);
            tb = lua_tostring(L, -1);
        } else {
            msg = "the handler failed (its error could not be described)";
        }
    }
    *error = strdup(msg);
    *traceback = tb ? strdup(tb) : NULL;
    lua_settop(L, top);
    return RUN_FAILED;
}

void run_log_failure(const struct delivery_ctx *ctx, int attempt, const char *error,
                     const char *traceback, double retry_in)
{
    struct log_line l;
    char at[40];
    log_begin(&l, LOG_ERROR, "handler failed");
    log_str(&l, "event", ctx->event_id);
    log_str(&l, "type", ctx->event_type);
    log_str(&l, "hostname", ctx->hostname);
    log_str(&l, "handler", ctx->handler);
    log_num(&l, "generation", ctx->generation);
    log_num(&l, "attempt", attempt);
    if (retry_in >= 0) {
        time_format_iso8601(time_now() + retry_in, at);
        log_num(&l, "retry_in", round(retry_in * 1000) / 1000);
        log_str(&l, "next_attempt_at", at);
    } else if (retry_in < 0) {
        log_json(&l, "dead", "true", 4);
    }
    log_str(&l, "error", error);
    log_str(&l, "traceback", traceback);
    log_end(&l);
}
