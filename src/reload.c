/*
 * reload.c -- handler generations (DESIGN §4): build, validate and free.
 *
 * A generation is one fresh Lua state (module.c) holding every *.lua file of the handlers
 * directory, loaded in name order. Each file must compile, run without raising and return
 * a table of pattern -> function; anything else is an error reported with file (and line
 * where Lua knows it) -- at load time, never at the first event. All files are checked so
 * `certhook check` reports every broken one. Used by server.c, module.c (check, run).
 */
#define _DEFAULT_SOURCE /* scandir, alphasort */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lauxlib.h>

#include "certhook.h"

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

/* Loads one file; on failure appends "path:line: message" to errs and returns -1. */
static int load_file(struct generation *g, const char *dir, const char *file, struct buf *errs)
{
    lua_State *L = g->L;
    char path[4096];
    int top = lua_gettop(L), rc = -1;
    snprintf(path, sizeof path, "%s/%s", dir, file);
    if (luaL_loadfilex(L, path, "t") != LUA_OK || lua_pcall(L, 0, 1, 0) != LUA_OK) {
        buf_printf(errs, "%s\n", lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1)
                                                                 : "(error object is not a string)");
        goto done;
    }
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

/* The generation state's allocator: counts what it holds and refuses past the bound. */
static void *gen_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    struct generation *g = ud;
    size_t old = ptr ? osize : 0; /* without ptr, osize tells the kind of object */
    if (nsize == 0) {
        free(ptr);
        g->mem_used -= old;
        return NULL;
    }
    if (g->mem_limit && nsize > old && g->mem_used + (nsize - old) > g->mem_limit) {
        g->mem_over = 1;
        return NULL;
    }
    void *p = realloc(ptr, nsize);
    if (p != NULL)
        g->mem_used = g->mem_used - old + nsize;
    return p;
}

struct generation *reload_build(const char *dir, const struct reload_env *env, unsigned number,
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
    g->L = module_newstate(env->path, env->cpath, gen_alloc, g, msg, sizeof msg);
    if (g->L == NULL) {
        buf_adds(&errs, msg);
        goto fail;
    }
    if (env->j != NULL || env->data != NULL)
        state_attach(g->L, env->j, env->data, env->busy_timeout);
    for (int i = 0; i < n; i++)
        load_file(g, dir, names[i]->d_name, &errs);
    if (errs.n > 0) {
        errs.p[--errs.n] = '\0'; /* the last newline */
        goto fail;
    }
    for (int i = 0; i < n; i++)
        free(names[i]);
    free(names);
    lua_gc(g->L, LUA_GCINC, 0, 0, 0);
    *err = NULL;
    return g;
fail:
    for (int i = 0; i < n; i++)
        free(names[i]);
    free(names);
    reload_free(g);
    *err = buf_take(&errs);
    return NULL;
}

void reload_free(struct generation *g)
{
    if (g == NULL)
        return;
    for (size_t i = 0; i < g->n; i++)
        free(g->h[i].name);
    free(g->h);
    if (g->L != NULL)
        lua_close(g->L);
    free(g);
}
