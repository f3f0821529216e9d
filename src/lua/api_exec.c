/*
 * api_exec.c -- certhook.exec (DESIGN §7): run a program without stopping other deliveries.
 *
 * certhook.exec{argv = {...}, stdin =, env =, timeout =, max_output =} -> {status, signal,
 * stdout, stderr} | nil, message, code. The program starts with posix_spawnp in a process
 * group of its own, with stdin, stdout and stderr on pipes and no other descriptor of ours.
 * Inside a delivery run by the dispatcher the handler yields while the pipes, the process (a
 * pidfd) and its timer (a timerfd) wait in the dispatcher's loop (loop.c); elsewhere (certhook
 * run, loading a handler file) this waits with poll(2). At the timeout, or when the output
 * passes max_output, the whole process group is killed. The process is userdata
 * ("certhook.exec.process") whose __gc and __close kill and reap it: nothing leaks when the
 * handler is stopped or raises.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <lauxlib.h>

#include "lua/api.h"

#define PROCESS "certhook.exec.process"
#define DEFAULT_TIMEOUT 30.0
#define DEFAULT_MAX_OUTPUT (16 * 1024 * 1024)

extern char **environ;

enum { F_IN, F_OUT, F_ERR, F_PID, F_TIMER, F_COUNT };

struct proc;

struct proc_fd {
    struct loop_fd w; /* fd -1: closed */
    struct proc *p;
};

struct proc {
    pid_t pid;    /* 0: not started, or reaped */
    int status;   /* waitpid's, once exited */
    int exited, timed_out, too_large;
    double timeout;
    size_t max_output;
    struct proc_fd f[F_COUNT];
    struct buf in, out, err;
    size_t in_off;
    struct loop *loop; /* where f[] wait; NULL when not added */
    struct delivery_ctx *ctx;
    struct wait wait;
};

static void close_fd(struct proc *p, int i)
{
    if (p->f[i].w.fd < 0)
        return;
    if (p->loop != NULL)
        loop_del(p->loop, &p->f[i].w);
    close(p->f[i].w.fd);
    p->f[i].w.fd = -1;
}

static void kill_group(struct proc *p)
{
    if (p->pid > 0 && !p->exited)
        kill(-p->pid, SIGKILL); /* its own process group: what it started goes too */
}

/* Closes everything and reaps the process (killed first if it still runs). Safe twice. */
static void proc_release(struct proc *p)
{
    for (int i = 0; i < F_COUNT; i++)
        close_fd(p, i);
    p->loop = NULL;
    if (p->pid > 0 && !p->exited) {
        kill_group(p);
        while (waitpid(p->pid, &p->status, 0) < 0 && errno == EINTR)
            ;
        p->exited = 1;
    }
    p->pid = 0;
    buf_free(&p->in);
    buf_free(&p->out);
    buf_free(&p->err);
}

static void drain(struct proc *p, int i)
{
    struct buf *b = i == F_OUT ? &p->out : &p->err;
    char chunk[16384];
    for (;;) {
        ssize_t n = read(p->f[i].w.fd, chunk, sizeof chunk);
        if (n > 0) {
            if (b->n + (size_t)n > p->max_output || buf_add(b, chunk, (size_t)n) != 0) {
                p->too_large = 1;
                kill_group(p);
                close_fd(p, i);
                return;
            }
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        close_fd(p, i); /* end of file, or an error */
        return;
    }
}

/* Descriptor i is ready: moves the data, notes the exit or the timeout. */
static void proc_io(struct proc *p, int i, uint32_t events)
{
    switch (i) {
    case F_IN:
        while (p->in_off < p->in.n) {
            ssize_t n = write(p->f[F_IN].w.fd, p->in.p + p->in_off, p->in.n - p->in_off);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0 && errno == EAGAIN)
                return;
            if (n < 0)
                break; /* the program closed its stdin: it does not want the rest */
            p->in_off += (size_t)n;
        }
        close_fd(p, F_IN);
        break;
    case F_OUT:
    case F_ERR:
        drain(p, i);
        break;
    case F_PID:
        if (waitpid(p->pid, &p->status, WNOHANG) == p->pid) {
            p->exited = 1;
            /* what it wrote is in the pipes; a child it left behind keeps them open */
            for (int k = F_OUT; k <= F_ERR; k++)
                if (p->f[k].w.fd >= 0) {
                    drain(p, k);
                    close_fd(p, k);
                }
            for (int k = 0; k < F_COUNT; k++)
                close_fd(p, k);
        }
        break;
    case F_TIMER:
        p->timed_out = 1;
        kill_group(p);
        close_fd(p, F_TIMER);
        break;
    }
    (void)events;
}

/* Loop callback (inside a delivery). */
static void on_ready(struct loop_fd *w, uint32_t events)
{
    struct proc_fd *pf = (struct proc_fd *)w;
    struct proc *p = pf->p;
    proc_io(p, (int)(pf - p->f), events);
    if (p->exited) {
        struct delivery_ctx *ctx = p->ctx;
        p->ctx = NULL;
        p->loop = NULL;
        ctx->wake(ctx);
    }
}

/* The delivery was stopped while it waited: the program goes too. */
static void on_cancel(struct wait *w)
{
    struct proc *p = (struct proc *)((char *)w - offsetof(struct proc, wait));
    kill_group(p);
    for (int i = 0; i < F_COUNT; i++)
        close_fd(p, i);
    p->loop = NULL;
    p->ctx = NULL;
}

static int proc_gc(lua_State *L)
{
    proc_release(luaL_checkudata(L, 1, PROCESS));
    return 0;
}

static int pidfd_open(pid_t pid)
{
    return (int)syscall(SYS_pidfd_open, pid, 0);
}

/* Starts argv with envp (NULL: certhook's environment). 0, or -1 with errno. */
static int proc_spawn(struct proc *p, char *const argv[], char *const envp[], int with_stdin)
{
    int in[2] = {-1, -1}, out[2] = {-1, -1}, err[2] = {-1, -1}, rc = -1, e = 0;
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    sigset_t none, all;
    posix_spawn_file_actions_init(&fa);
    posix_spawnattr_init(&attr);
    if ((with_stdin && pipe2(in, O_CLOEXEC) != 0) || pipe2(out, O_CLOEXEC) != 0 ||
        pipe2(err, O_CLOEXEC) != 0) {
        e = errno;
        goto done;
    }
    if (with_stdin)
        posix_spawn_file_actions_adddup2(&fa, in[0], 0);
    else
        posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    posix_spawn_file_actions_adddup2(&fa, err[1], 2);
    posix_spawn_file_actions_addclosefrom_np(&fa, 3); /* sockets, the journal, ... stay ours */
    /* the server blocks its stop signals in every thread and ignores SIGPIPE: not the child */
    sigemptyset(&none);
    sigfillset(&all);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &all);
    posix_spawnattr_setpgroup(&attr, 0);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF |
                                        POSIX_SPAWN_SETPGROUP);
    e = posix_spawnp(&p->pid, argv[0], &fa, &attr, argv, envp ? envp : environ);
    if (e != 0) {
        p->pid = 0;
        goto done;
    }
    p->f[F_PID].w.fd = pidfd_open(p->pid);
    if (p->f[F_PID].w.fd < 0) {
        e = errno;
        kill_group(p);
        waitpid(p->pid, NULL, 0);
        p->pid = 0;
        goto done;
    }
    if (with_stdin) {
        p->f[F_IN].w.fd = in[1];
        in[1] = -1;
    }
    p->f[F_OUT].w.fd = out[0];
    p->f[F_ERR].w.fd = err[0];
    out[0] = err[0] = -1;
    for (int i = F_IN; i <= F_ERR; i++)
        if (p->f[i].w.fd >= 0)
            fcntl(p->f[i].w.fd, F_SETFL, O_NONBLOCK);
    rc = 0;
done:
    for (int i = 0; i < 2; i++) {
        if (in[i] >= 0)
            close(in[i]);
        if (out[i] >= 0)
            close(out[i]);
        if (err[i] >= 0)
            close(err[i]);
    }
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    errno = e;
    return rc;
}

/* Waits here (no dispatcher loop): poll until it exits, killing it at the timeout. */
static void proc_wait_sync(struct proc *p)
{
    double deadline = time_mono() + p->timeout;
    while (!p->exited) {
        struct pollfd fds[F_COUNT];
        int which[F_COUNT], n = 0;
        for (int i = F_IN; i <= F_PID; i++) {
            if (p->f[i].w.fd < 0)
                continue;
            fds[n] = (struct pollfd){p->f[i].w.fd, i == F_IN ? POLLOUT : POLLIN, 0};
            which[n++] = i;
        }
        double left = deadline - time_mono();
        int ms = p->timed_out ? -1 : left <= 0 ? 0 : (int)ceil(left * 1000);
        int r = poll(fds, (nfds_t)n, ms);
        if (r < 0 && errno != EINTR)
            break;
        for (int k = 0; k < n && r > 0; k++)
            if (fds[k].revents)
                proc_io(p, which[k], (uint32_t)fds[k].revents);
        if (!p->exited && !p->timed_out && time_mono() >= deadline)
            proc_io(p, F_TIMER, 0);
    }
}

/* The outcome, pushed: {status, signal, stdout, stderr}, or nil, message, code. */
static int exec_result(lua_State *L, struct proc *p)
{
    if (p->timed_out) {
        lua_pushnil(L);
        lua_pushfstring(L, "the program ran longer than its timeout (%f s) and was killed",
                        p->timeout);
        lua_pushliteral(L, "timeout");
        return 3;
    }
    if (p->too_large) {
        lua_pushnil(L);
        lua_pushfstring(L, "the program wrote more than max_output (%I bytes) and was killed",
                        (lua_Integer)p->max_output);
        lua_pushliteral(L, "toolarge");
        return 3;
    }
    lua_createtable(L, 0, 4);
    if (WIFEXITED(p->status)) {
        lua_pushinteger(L, WEXITSTATUS(p->status));
    } else {
        lua_pushinteger(L, WTERMSIG(p->status));
        lua_setfield(L, -2, "signal");
        lua_pushinteger(L, 128 + WTERMSIG(p->status)); /* as a shell says it */
    }
    lua_setfield(L, -2, "status");
    lua_pushlstring(L, p->out.p ? p->out.p : "", p->out.n);
    lua_setfield(L, -2, "stdout");
    lua_pushlstring(L, p->err.p ? p->err.p : "", p->err.n);
    lua_setfield(L, -2, "stderr");
    return 1;
}

/* The continuation after the dispatcher resumed us: the process is at index 2. */
static int exec_done(lua_State *L, int status, lua_KContext k)
{
    struct proc *p = luaL_checkudata(L, 2, PROCESS);
    (void)status, (void)k;
    int n = exec_result(L, p);
    proc_release(p); /* reaped; the output is in Lua strings now */
    return n;
}

/* Reads opts.argv into a NULL-terminated array of the strings (kept alive by opts). Raises. */
static const char **check_argv(lua_State *L, struct buf *b)
{
    if (lua_getfield(L, 1, "argv") != LUA_TTABLE || lua_rawlen(L, -1) == 0)
        luaL_error(L, "certhook.exec: argv must be a list of strings: the program and its "
                      "arguments, e.g. {\"nginx\", \"-s\", \"reload\"}");
    lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
    for (lua_Integer i = 1; i <= n; i++) {
        size_t len;
        if (lua_rawgeti(L, -1, i) != LUA_TSTRING)
            luaL_error(L, "certhook.exec: argv[%I] must be a string", i);
        const char *s = lua_tolstring(L, -1, &len);
        if (strlen(s) != len)
            luaL_error(L, "certhook.exec: argv[%I] holds a NUL byte", i);
        lua_pop(L, 1); /* the table anchors it */
        buf_add(b, &s, sizeof s);
    }
    const char *end = NULL;
    if (buf_add(b, &end, sizeof end) != 0)
        luaL_error(L, "certhook.exec: out of memory");
    lua_pop(L, 1);
    return (const char **)b->p;
}

/* opts.env {NAME = value} -> "NAME=value" strings, NULL-terminated; NULL when absent.
 * Leaves one value on the stack, which anchors the strings. */
static const char **check_env(lua_State *L, struct buf *strs)
{
    if (lua_getfield(L, 1, "env") == LUA_TNIL)
        return NULL;
    if (!lua_istable(L, -1))
        luaL_error(L, "certhook.exec: env must be a table of NAME = value");
    int t = lua_gettop(L);
    lua_newtable(L); /* the "NAME=value" strings, anchored here */
    lua_Integer n = 0;
    lua_pushnil(L);
    while (lua_next(L, t) != 0) {
        if (lua_type(L, -2) != LUA_TSTRING || !lua_isstring(L, -1))
            luaL_error(L, "certhook.exec: env must be a table of NAME = value");
        lua_pushfstring(L, "%s=%s", lua_tostring(L, -2), lua_tostring(L, -1));
        lua_rawseti(L, t + 1, ++n);
        lua_pop(L, 1);
    }
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, t + 1, i);
        const char *s = lua_tostring(L, -1);
        lua_pop(L, 1);
        buf_add(strs, &s, sizeof s);
    }
    const char *end = NULL;
    if (buf_add(strs, &end, sizeof end) != 0)
        luaL_error(L, "certhook.exec: out of memory");
    lua_remove(L, t); /* the strings' table stays */
    return (const char **)strs->p;
}

/* {argv = {...}, stdin =, env =, timeout =, max_output =} -> result | nil, message, code */
static int exec_run(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    size_t in_len = 0;
    const char *in = NULL;
    if (lua_getfield(L, 1, "stdin") != LUA_TNIL) {
        if (lua_type(L, -1) != LUA_TSTRING)
            luaL_error(L, "certhook.exec: stdin must be a string");
        in = lua_tolstring(L, -1, &in_len);
    }
    lua_pop(L, 1);
    double timeout = DEFAULT_TIMEOUT;
    if (lua_getfield(L, 1, "timeout") != LUA_TNIL) {
        if (!lua_isnumber(L, -1) || !(lua_tonumber(L, -1) > 0))
            luaL_error(L, "certhook.exec: timeout must be a positive number of seconds");
        timeout = lua_tonumber(L, -1);
    }
    lua_Integer max_output = DEFAULT_MAX_OUTPUT;
    if (lua_getfield(L, 1, "max_output") != LUA_TNIL) {
        if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) <= 0)
            luaL_error(L, "certhook.exec: max_output must be a positive number of bytes");
        max_output = lua_tointeger(L, -1);
    }
    lua_settop(L, 1);

    /* the process first: from here on, whatever happens, __gc reaps it */
    struct proc *p = lua_newuserdatauv(L, sizeof *p, 0);
    memset(p, 0, sizeof *p);
    for (int i = 0; i < F_COUNT; i++)
        p->f[i] = (struct proc_fd){{-1, on_ready}, p};
    p->timeout = timeout;
    p->max_output = (size_t)max_output;
    p->wait.cancel = on_cancel;
    luaL_setmetatable(L, PROCESS);
    if (in != NULL && in_len > 0 && buf_add(&p->in, in, in_len) != 0)
        luaL_error(L, "certhook.exec: out of memory");

    /* the pointer arrays are in the process's buffers (freed by __gc if a check raises) */
    struct buf *argv = &p->out, *envp = &p->err;
    const char **av = check_argv(L, argv);
    const char **ev = check_env(L, envp);
    int rc = proc_spawn(p, (char *const *)av, (char *const *)ev, in != NULL);
    int e = errno;
    const char *prog = av[0]; /* anchored by opts.argv */
    argv->n = envp->n = 0;     /* from here on they collect the output */
    if (rc != 0) {
        lua_pushnil(L);
        lua_pushfstring(L, "cannot run %s: %s", prog, strerror(e));
        lua_pushliteral(L, "spawn");
        return 3;
    }
    lua_settop(L, 2); /* opts, process */

    struct delivery_ctx *ctx = module_ctx(L);
    if (ctx != NULL && ctx->loop != NULL && lua_isyieldable(L)) {
        struct itimerspec its = {.it_value = {(time_t)timeout,
                                              (long)((timeout - floor(timeout)) * 1e9)}};
        p->f[F_TIMER].w.fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
        if (p->f[F_TIMER].w.fd < 0 || timerfd_settime(p->f[F_TIMER].w.fd, 0, &its, NULL) != 0)
            return luaL_error(L, "certhook.exec: cannot make a timer: %s", strerror(errno));
        p->loop = ctx->loop;
        for (int i = 0; i < F_COUNT; i++) {
            if (p->f[i].w.fd >= 0 &&
                loop_add(p->loop, &p->f[i].w, i == F_IN ? EPOLLOUT : EPOLLIN) != 0) {
                proc_release(p);
                return luaL_error(L, "certhook.exec: cannot wait: %s", strerror(errno));
            }
        }
        p->ctx = ctx;
        ctx->wait(ctx, &p->wait);
        return lua_yieldk(L, 0, 0, exec_done);
    }
    proc_wait_sync(p);
    return exec_done(L, LUA_OK, 0);
}

int exec_open(lua_State *L)
{
    if (luaL_newmetatable(L, PROCESS)) {
        lua_pushcfunction(L, proc_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, proc_gc);
        lua_setfield(L, -2, "__close");
    }
    lua_pop(L, 1);
    lua_pushcfunction(L, exec_run);
    return 1;
}
