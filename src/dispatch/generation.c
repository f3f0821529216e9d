/*
 * generation.c -- handler generations (DESIGN §5): build, validate, match and free; and the
 * watch that tells the dispatcher when to build a new one.
 *
 * A generation is one fresh Lua state (module.c) holding every *.lua file of the handlers
 * directory, loaded in name order, with dir/lib on its module path. Each file must compile,
 * run without raising and return a table of pattern -> function; anything else is an error
 * reported with file (and line where Lua knows it) -- at load time, never at the first
 * event. All files are checked so `certhook check` reports every broken one. A generation
 * is freed when its last reference goes: the dispatcher's while it is current, one per
 * delivery it runs. The watcher (inotify) tells the dispatcher when to build a new one.
 * Used by server.c, dispatch.c, cli.c (check, run).
 */
#define _DEFAULT_SOURCE /* scandir, alphasort */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <sys/inotify.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lauxlib.h>

#include "dispatch/dispatch.h"

static int is_handler_file(const struct dirent *d)
{
    size_t n = strlen(d->d_name);
    return d->d_name[0] != '.' && n > 4 && strcmp(d->d_name + n - 4, ".lua") == 0;
}

static int by_pattern(const void *a, const void *b)
{
    return strcmp(((const struct handler *)a)->pattern, ((const struct handler *)b)->pattern);
}

static int add_handler(struct generation *g, const char *file, const char *pattern, int ref)
{
    struct handler *h = realloc(g->h, (g->n + 1) * sizeof *h);
    if (h == NULL)
        return -1;
    g->h = h;
    h = &g->h[g->n];
    size_t nf = strlen(file), np = strlen(pattern);
    h->name = malloc(nf + np + 2);
    if (h->name == NULL)
        return -1;
    memcpy(h->name, file, nf);
    h->name[nf] = ':';
    memcpy(h->name + nf + 1, pattern, np + 1);
    h->pattern = h->name + nf + 1;
    h->ref = ref;
    g->n++;
    return 0;
}

/* Runs the compiled chunk at the top (popped) in a coroutine under the limits of ctx, so that
 * a loop or an allocation spree at a file's top level is stopped like a handler's. Pushes what
 * it returned, or nothing and returns -1 with the reason in errs. */
static int run_chunk(lua_State *L, struct delivery_ctx *ctx, const char *path, struct buf *errs)
{
    char *error, *tb, where[300];
    lua_State *co = lua_newthread(L); /* anchored on L's stack until the end */
    lua_insert(L, -2);
    lua_xmove(L, co, 1);
    enum run_status st = run_resume(L, co, 0, ctx, &error, &tb);
    if (st == RUN_DONE && lua_gettop(co) > 0) {
        lua_xmove(co, L, 1);
        lua_remove(L, -2); /* the coroutine */
        return 0;
    }
    if (st == RUN_DONE) {
        lua_pop(L, 1);
        lua_pushnil(L); /* returned nothing: said below */
        return 0;
    }
    run_where(co, where, sizeof where);
    if (ctx->killed == RUN_TIMEOUT)
        buf_printf(errs, "%s: loading took longer than reload.timeout (%g s) and was stopped "
                         "at %s\n", path, ctx->gen->load_timeout, where);
    else if (ctx->killed == RUN_MEMORY)
        buf_printf(errs, "%s: loading needed more memory than delivery.memory_limit (%zu bytes) "
                         "and was stopped at %s\n", path, ctx->gen->mem_limit, where);
    else if (st == RUN_WAITING)
        buf_printf(errs, "%s: the file waited on the network while loading (at %s): do that "
                         "in a handler\n", path, where);
    else
        buf_printf(errs, "%s\n", error);
    free(error);
    free(tb);
    lua_pop(L, 1);
    return -1;
}

/* Loads one file; on failure appends "path:line: message" to errs and returns -1. */
static int load_file(struct generation *g, const char *dir, const char *file,
                     struct delivery_ctx *ctx, struct buf *errs)
{
    lua_State *L = g->L;
    char path[4096];
    int top = lua_gettop(L), rc = -1;
    snprintf(path, sizeof path, "%s/%s", dir, file);
    if (luaL_loadfilex(L, path, "t") != LUA_OK) {
        buf_printf(errs, "%s\n", lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1)
                                                                 : "(error object is not a string)");
        goto done;
    }
    module_push_env(L);
    lua_setupvalue(L, -2, 1); /* a main chunk's first upvalue is _ENV */
    if (run_chunk(L, ctx, path, errs) != 0)
        goto done;
    if (!lua_istable(L, -1)) {
        buf_printf(errs,
                   "%s: must return a table that maps patterns to functions, got %s\n", path,
                   luaL_typename(L, -1));
        goto done;
    }
    int t = lua_gettop(L);
    size_t first = g->n;
    lua_pushnil(L);
    while (lua_next(L, t) != 0) { /* pattern, fn */
        if (lua_type(L, -2) != LUA_TSTRING || lua_rawlen(L, -2) == 0) {
            buf_printf(errs, "%s: keys must be event type patterns such as "
                             "\"certificate.*.failed\", got a %s key\n",
                       path, luaL_typename(L, -2));
            goto done;
        }
        if (lua_type(L, -1) != LUA_TFUNCTION) {
            buf_printf(errs, "%s: pattern \"%s\" must map to a function, got %s\n", path,
                       lua_tostring(L, -2), luaL_typename(L, -1));
            goto done;
        }
        int ref = luaL_ref(L, LUA_REGISTRYINDEX); /* pops fn */
        if (add_handler(g, file, lua_tostring(L, -1), ref) != 0) {
            luaL_unref(L, LUA_REGISTRYINDEX, ref);
            buf_printf(errs, "%s: out of memory\n", path);
            goto done;
        }
    }
    if (g->n > first)
        qsort(g->h + first, g->n - first, sizeof *g->h, by_pattern);
    g->nfiles++;
    rc = 0;
done:
    lua_settop(L, top);
    return rc;
}

/* The generation state's allocator (its pool's): counts what it holds and refuses past the
 * bound. */
static void *gen_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    struct generation *g = ud;
    size_t old = ptr ? osize : 0; /* without ptr, osize tells the kind of object */
    if (nsize == 0) {
        pool_alloc(g->pool, ptr, osize, 0);
        g->mem_used -= old;
        return NULL;
    }
    if (g->mem_limit && nsize > old && g->mem_used + (nsize - old) > g->mem_limit) {
        g->mem_over = 1;
        return NULL;
    }
    void *p = pool_alloc(g->pool, ptr, osize, nsize);
    if (p != NULL)
        g->mem_used = g->mem_used - old + nsize;
    return p;
}

struct generation *generation_build(const char *dir, const struct generation_env *env, unsigned number,
                                char **err)
{
    char msg[512];
    struct dirent **names = NULL;
    struct buf errs;
    struct stat st;
    struct generation *g = calloc(1, sizeof *g);
    int n = -1;

    buf_init(&errs);
    if (g == NULL) {
        buf_adds(&errs, "out of memory");
        goto fail;
    }
    g->number = number;
    if ((g->pool = pool_new()) == NULL) {
        buf_adds(&errs, "out of memory");
        goto fail;
    }
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        buf_printf(&errs, "handlers directory %s: %s", dir,
                   access(dir, F_OK) != 0 ? strerror(errno) : "not a directory");
        goto fail;
    }
    n = scandir(dir, &names, is_handler_file, alphasort);
    if (n < 0) {
        buf_printf(&errs, "handlers directory %s: %s", dir, strerror(errno));
        goto fail;
    }
    g->mem_limit = env->memory_limit;
    g->refs = 1;
    struct buf path;
    buf_init(&path);
    buf_printf(&path, "%s/lib/?.lua;%s/lib/?/init.lua;%s", dir, dir, env->path ? env->path : ";");
    g->L = module_newstate(path.p, env->cpath, gen_alloc, g, msg, sizeof msg);
    buf_free(&path);
    if (g->L == NULL || module_sandbox(g->L, msg, sizeof msg) != 0) {
        buf_adds(&errs, msg);
        goto fail;
    }
    run_limit(g->L);
    if (env->j != NULL || env->data != NULL)
        state_attach(g->L, env->j, env->data, env->busy_timeout);
    /* every file is loaded, to report all the broken ones -- within one reload.timeout */
    g->load_timeout = env->timeout;
    struct delivery_ctx ctx = {.gen = g, .deadline = time_mono() + env->timeout};
    for (int i = 0; i < n && !ctx.killed; i++) {
        ctx.handler = names[i]->d_name;
        stall_loading(env->stall, names[i]->d_name); /* until the end: a failed build closes */
        load_file(g, dir, names[i]->d_name, &ctx, &errs);
    }
    if (errs.n > 0) {
        errs.p[--errs.n] = '\0'; /* the last newline */
        goto fail;
    }
    for (int i = 0; i < n; i++)
        free(names[i]);
    free(names);
    lua_gc(g->L, LUA_GCINC, 0, 0, 0);
    stall_loaded(env->stall);
    *err = NULL;
    return g;
fail:
    for (int i = 0; i < n; i++)
        free(names[i]);
    free(names);
    generation_free(g); /* its finalizers run: still under the load slot */
    stall_loaded(env->stall);
    *err = buf_take(&errs);
    return NULL;
}

size_t generation_match(const struct generation *g, const char *type, const char *provider_type,
                        const struct handler **out)
{
    size_t n = 0;
    if (strcmp(type, QUIET_TYPE) == 0) { /* quiet: only a handler that names it runs */
        for (size_t i = 0; i < g->n; i++)
            if (strcmp(g->h[i].pattern, QUIET_TYPE) == 0)
                out[n++] = &g->h[i];
        return n;
    }
    for (size_t i = 0; i < g->n; i++)
        if (glob_match(g->h[i].pattern, type) ||
            (provider_type && glob_match(g->h[i].pattern, provider_type)))
            out[n++] = &g->h[i];
    return n;
}

void generation_hold(struct generation *g)
{
    g->refs++;
}

void generation_release(struct generation *g)
{
    if (g != NULL && --g->refs == 0)
        generation_free(g);
}

void generation_detach(struct generation *g)
{
    state_detach(g->L);
}

void generation_free(struct generation *g)
{
    if (g == NULL)
        return;
    for (size_t i = 0; i < g->n; i++)
        free(g->h[i].name);
    free(g->h);
    if (g->L != NULL)
        lua_close(g->L);
    pool_free(g->pool);
    free(g);
}

/* ---- the watcher ------------------------------------------------------------------------------ */

#define DIR_EVENTS (IN_CREATE | IN_DELETE | IN_MOVED_TO | IN_MOVED_FROM | IN_CLOSE_WRITE | \
                    IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF)

struct watch {
    int fd;
    int dir, parent; /* watch descriptors */
    int *lib;        /* dir/lib and its subdirectories */
    size_t nlib;
    char *name;      /* the handlers directory's entry in its parent */
    char *path;
};

static void watch_lib(struct watch *w, const char *path)
{
    DIR *dp = opendir(path);
    if (dp == NULL)
        return;
    int wd = inotify_add_watch(w->fd, path, DIR_EVENTS | IN_MODIFY);
    int *p = wd >= 0 ? realloc(w->lib, (w->nlib + 1) * sizeof *p) : NULL;
    if (p != NULL) {
        w->lib = p;
        w->lib[w->nlib++] = wd;
    }
    struct dirent *de;
    while ((de = readdir(dp)) != NULL) {
        char sub[PATH_MAX];
        if (de->d_name[0] == '.' || de->d_type != DT_DIR)
            continue;
        snprintf(sub, sizeof sub, "%s/%s", path, de->d_name);
        watch_lib(w, sub);
    }
    closedir(dp);
}

/* (Re)adds the watches under the directory: it may have been replaced or grown subdirs. */
static int watch_tree(struct watch *w)
{
    char lib[PATH_MAX];
    if (w->dir >= 0)
        inotify_rm_watch(w->fd, w->dir);
    for (size_t i = 0; i < w->nlib; i++)
        inotify_rm_watch(w->fd, w->lib[i]);
    w->nlib = 0;
    w->dir = inotify_add_watch(w->fd, w->path, DIR_EVENTS);
    snprintf(lib, sizeof lib, "%s/lib", w->path);
    watch_lib(w, lib);
    return w->dir >= 0 ? 0 : -1;
}

struct watch *watch_new(const char *dir, char *err, size_t errlen)
{
    char parent[PATH_MAX];
    struct watch *w = calloc(1, sizeof *w);
    if (w == NULL)
        return NULL;
    w->dir = w->parent = -1;
    w->fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    w->path = strdup(dir);
    snprintf(parent, sizeof parent, "%s", dir);
    size_t n = strlen(parent);
    while (n > 1 && parent[n - 1] == '/')
        parent[--n] = '\0';
    char *slash = strrchr(parent, '/');
    w->name = strdup(slash ? slash + 1 : parent);
    if (slash == parent)
        parent[1] = '\0';
    else if (slash)
        *slash = '\0';
    else
        snprintf(parent, sizeof parent, ".");
    if (w->fd < 0 || w->path == NULL || w->name == NULL || watch_tree(w) != 0) {
        snprintf(err, errlen, "cannot watch %s for changes: %s", dir, strerror(errno));
        watch_free(w);
        return NULL;
    }
    w->parent = inotify_add_watch(w->fd, parent, IN_CREATE | IN_MOVED_TO | IN_DELETE);
    return w;
}

int watch_fd(struct watch *w)
{
    return w->fd;
}

/* A name that can change what the handlers are: *.lua, not editors' hidden or backup files. */
static int matters(const char *name)
{
    size_t n = strlen(name);
    return name[0] != '.' && n > 4 && strcmp(name + n - 4, ".lua") == 0;
}

int watch_changed(struct watch *w)
{
    char events[8192] __attribute__((aligned(__alignof__(struct inotify_event))));
    int changed = 0, retree = 0;
    ssize_t n;
    while ((n = read(w->fd, events, sizeof events)) > 0) {
        for (char *p = events; p < events + n;) {
            struct inotify_event *e = (struct inotify_event *)p;
            p += sizeof *e + e->len;
            const char *name = e->len ? e->name : "";
            if (e->wd == w->parent) {
                if (strcmp(name, w->name) == 0)
                    changed = retree = 1; /* the directory was replaced */
            } else if (e->mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED)) {
                if (e->wd == w->dir)
                    changed = retree = 1;
            } else if (e->wd == w->dir) {
                if (matters(name))
                    changed = 1;
                else if (strcmp(name, "lib") == 0)
                    changed = retree = 1;
            } else { /* under lib/ */
                if (e->mask & IN_ISDIR)
                    retree = 1;
                if (matters(name) || (e->mask & IN_ISDIR))
                    changed = 1;
            }
        }
    }
    if (retree)
        watch_tree(w);
    return changed;
}

void watch_free(struct watch *w)
{
    if (w == NULL)
        return;
    if (w->fd >= 0)
        close(w->fd);
    free(w->lib);
    free(w->name);
    free(w->path);
    free(w);
}
