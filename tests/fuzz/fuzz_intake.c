/*
 * fuzz_intake.c -- libFuzzer target: raw HTTP request streams into the webhook listener
 * (src/intake over libmicrohttpd, then the providers and the journal).
 *
 * LLVMFuzzerInitialize starts the real pipeline on loopback: a configuration read by
 * config_from_lua, a journal in a temporary directory under /dev/shm, intake_start (no
 * dispatcher: the admin listener is never contacted). Each input is written on a fresh TCP
 * connection, which is then half-closed; the reply is read until the server closes the
 * connection or the time is up -- every socket operation has a deadline, so an input never
 * hangs the fuzzer. The journal's sink sees what was accepted: a request to the Cloudflare
 * source with a secret must never be accepted without it. When the journal has grown, the
 * whole pipeline is restarted on a fresh directory. Temporary directories are removed at exit,
 * and those of fuzzers that died are removed at the next start.
 *
 * Sources: cf (cloudflare, secret "fuzz-secret"), cfopen (cloudflare, insecure), ibm (ibm-cm,
 * insecure, no key) and ibmkey (ibm-cm with FUZZ_PUBKEY, tests/fuzz/jwt-key.pub.pem).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem */
#endif
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lualib.h>

#include "journal/journal.h"
#include "intake/intake.h"
#include "server.h"
#include "fuzz.h"

#ifndef FUZZ_PUBKEY
#error "FUZZ_PUBKEY (the path of tests/fuzz/jwt-key.pub.pem) must be defined"
#endif

#define TMP_PREFIX "certhook-fuzz."
#define SECRET "fuzz-secret"
#define IO_MS 1000               /* each of connect+write and read: at most this long */
#define SETTLE_MS 2              /* no reply for this long: the request stream is ended */
#define RESTART_BYTES (64 << 20) /* journal size that makes the pipeline restart */

static const char config_lua[] =
    "local data, key = ...\n"
    "return {\n"
    "  listen = '127.0.0.1:0', admin = '127.0.0.1:0', data = data, handlers = data,\n"
    "  limits = { max_body = 65536, max_connections = 256, request_timeout = 2 },\n"
    "  log = { level = 'error' },\n"
    "  sources = {\n"
    "    cf = { provider = 'cloudflare', secret = '" SECRET "' },\n"
    "    cfopen = { provider = 'cloudflare', insecure = true },\n"
    "    ibm = { provider = 'ibm-cm', insecure = true },\n"
    "    ibmkey = { provider = 'ibm-cm', public_key = key },\n"
    "  },\n"
    "}\n";

static struct {
    int up;
    char dir[128];
    struct config cfg;
    struct journal *j;
    struct intake *in;
    struct sockaddr_in addr;
    unsigned long inputs, restarts, status[6]; /* replies by class: none, 1xx .. 5xx */
    atomic_ulong accepted, accepted_cf;        /* events the journal committed */
} fz;

/* This input and the one before (a slow request may be journaled during the next input). */
static struct {
    uint8_t *p;
    size_t n;
} recent[2];

/* ---- the pipeline --------------------------------------------------------------------------- */

/* Journal sink (writer thread): notes what was accepted, then frees it. */
static void on_accepted(void *cls, struct event *list)
{
    (void)cls;
    while (list != NULL) {
        struct event *next = list->next;
        atomic_fetch_add(&fz.accepted, 1);
        if (strcmp(list->source, "cf") == 0)
            atomic_fetch_add(&fz.accepted_cf, 1);
        event_free(list);
        list = next;
    }
}

/* Removes dir and the files in it (the journal's: no subdirectories). */
static void remove_dir(const char *dir)
{
    char path[512];
    DIR *d = opendir(dir);
    struct dirent *e;
    if (d == NULL)
        return;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

/* Removes the temporary directories of fuzzers that died (/dev/shm/certhook-fuzz.<pid>.*). */
static void sweep_stale(void)
{
    char path[512];
    DIR *d = opendir("/dev/shm");
    struct dirent *e;
    if (d == NULL)
        return;
    while ((e = readdir(d)) != NULL) {
        if (strncmp(e->d_name, TMP_PREFIX, strlen(TMP_PREFIX)) != 0)
            continue;
        long pid = strtol(e->d_name + strlen(TMP_PREFIX), NULL, 10);
        if (pid > 0 && kill((pid_t)pid, 0) != 0 && errno == ESRCH) {
            snprintf(path, sizeof path, "/dev/shm/%s", e->d_name);
            remove_dir(path);
        }
    }
    closedir(d);
}

static void fail(const char *what, const char *err)
{
    fprintf(stderr, "fuzz_intake: %s: %s\n", what, err);
    if (fz.dir[0])
        remove_dir(fz.dir);
    exit(1);
}

/* Reads the configuration with data in dir. */
static void load_config(const char *dir)
{
    char err[600];
    lua_State *L = luaL_newstate();
    if (L == NULL)
        fail("config", "out of memory");
    luaL_openlibs(L);
    if (luaL_loadstring(L, config_lua) != LUA_OK)
        fail("config", lua_tostring(L, -1));
    lua_pushstring(L, dir);
    lua_pushstring(L, FUZZ_PUBKEY);
    if (lua_pcall(L, 2, 1, 0) != LUA_OK)
        fail("config", lua_tostring(L, -1));
    if (config_from_lua(L, -1, &fz.cfg, err, sizeof err) != 0)
        fail("config_from_lua", err);
    lua_close(L);
    log_set_level(getenv("FUZZ_VERBOSE") ? LOG_DEBUG : fz.cfg.log_level);
}

static void start(void)
{
    char err[600], listen[128], admin[128];
    snprintf(fz.dir, sizeof fz.dir, "/dev/shm/" TMP_PREFIX "%ld.XXXXXX", (long)getpid());
    if (mkdtemp(fz.dir) == NULL)
        fail(fz.dir, strerror(errno));
    load_config(fz.dir);
    struct journal_options jo = {.where = fz.dir, .flags = JOURNAL_CREATE,
                                 .busy_timeout = fz.cfg.busy_timeout,
                                 .retention = fz.cfg.retention, .max_wal = fz.cfg.max_wal};
    if (journal_open(&fz.j, &jo, err, sizeof err) != 0)
        fail("journal_open", err);
    if (journal_start(fz.j, on_accepted, NULL) != 0)
        fail("journal_start", "cannot start the writer");
    if (intake_start(&fz.in, &fz.cfg.in, fz.j, NULL, err, sizeof err) != 0)
        fail("intake_start", err);
    intake_addresses(fz.in, listen, admin, sizeof listen);
    const char *colon = strrchr(listen, ':');
    memset(&fz.addr, 0, sizeof fz.addr);
    fz.addr.sin_family = AF_INET;
    fz.addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    fz.addr.sin_port = htons((uint16_t)atoi(colon ? colon + 1 : "0"));
    if (fz.addr.sin_port == 0)
        fail("intake_addresses", listen);
    fz.up = 1;
}

static void stop(void)
{
    if (!fz.up)
        return;
    intake_stop(fz.in);
    journal_stop(fz.j);
    journal_close(fz.j);
    config_free(&fz.cfg);
    remove_dir(fz.dir);
    fz.dir[0] = '\0';
    fz.up = 0;
}

static void at_exit(void)
{
    stop();
    for (int i = 0; i < 2; i++)
        free(recent[i].p);
    if (fz.inputs > 0)
        fprintf(stderr,
                "fuzz_intake: %lu inputs, %lu restarts; replies: none %lu, 1xx %lu, 2xx %lu, "
                "3xx %lu, 4xx %lu, 5xx %lu; events accepted %lu (cf %lu)\n",
                fz.inputs, fz.restarts, fz.status[0], fz.status[1], fz.status[2], fz.status[3],
                fz.status[4], fz.status[5], atomic_load(&fz.accepted),
                atomic_load(&fz.accepted_cf));
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    signal(SIGPIPE, SIG_IGN);
    sweep_stale();
    start();
    atexit(at_exit);
    return 0;
}

/* Restarts the pipeline on a fresh directory when the journal has grown past the limit. */
static void maybe_restart(void)
{
    static const char *const files[] = {"certhook.db", "certhook.db-wal"};
    char path[512];
    struct stat st;
    off_t total = 0;
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", fz.dir, files[i]);
        if (stat(path, &st) == 0)
            total += st.st_size;
    }
    if (total < RESTART_BYTES)
        return;
    stop();
    start();
    fz.restarts++;
}

/* ---- one exchange --------------------------------------------------------------------------- */

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits for events on fd for at most ms (and not past the deadline); the events that came. */
static short wait_fd(int fd, short events, long long ms, long long deadline)
{
    long long left = deadline - now_ms();
    if (left > ms)
        left = ms;
    if (left <= 0)
        return 0;
    struct pollfd p = {.fd = fd, .events = events};
    return poll(&p, 1, (int)left) > 0 ? p.revents : 0;
}

static int connect_to_intake(long long deadline)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), soerr = 0;
    socklen_t len = sizeof soerr;
    struct linger lg = {1, 0}; /* close with a reset: nothing lingers on either side */
    FUZZ_CHECK(fd >= 0);
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    if (connect(fd, (struct sockaddr *)&fz.addr, sizeof fz.addr) == 0)
        return fd;
    if (errno == EINPROGRESS && wait_fd(fd, POLLOUT, IO_MS, deadline) &&
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) == 0 && soerr == 0)
        return fd;
    close(fd);
    return -1;
}

/* Writes the request stream; stops early when the server answers (it will read no more),
 * closes or the time is up. */
static void send_all(int fd, const uint8_t *data, size_t size, long long deadline)
{
    size_t off = 0;
    while (off < size) {
        ssize_t n = send(fd, data + off, size - off, MSG_NOSIGNAL);
        if (n > 0)
            off += (size_t)n;
        else if (n < 0 && errno == EINTR)
            continue;
        else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) &&
                 wait_fd(fd, POLLOUT | POLLIN, IO_MS, deadline) == POLLOUT)
            continue;
        else
            return;
    }
}

/* 1 when r holds whole replies only (interim 1xx ones and a final one with its body). */
static int reply_complete(const char *r, size_t n)
{
    for (;;) {
        const char *end = memmem(r, n, "\r\n\r\n", 4);
        if (end == NULL || n < 12)
            return 0;
        size_t head = (size_t)(end + 4 - r), body = 0;
        int interim = r[9] == '1';
        for (const char *h = r; h < end; h++) {
            h = memchr(h, '\n', (size_t)(end - h));
            if (h == NULL)
                break;
            if (end - h > 16 && strncasecmp(h + 1, "Content-Length:", 15) == 0)
                body = strtoul(h + 16, NULL, 10);
        }
        if (n < head + body)
            return 0;
        if (!interim)
            return 1;
        r += head, n -= head;
    }
}

/* Reads the reply until the server closes the connection or the time is up; keeps its first
 * bytes in out. The request stream is ended (SHUT_WR) once a whole reply is in, or when
 * nothing came for SETTLE_MS -- not with the data: libmicrohttpd stops reading a socket at a
 * short read, so an end that arrives together with the data goes unseen until the connection
 * times out. */
static size_t read_reply(int fd, char *out, size_t cap, long long deadline)
{
    char chunk[16384];
    size_t got = 0;
    int ended = 0;
    for (;;) {
        if (!ended && got > 0 && got < cap && reply_complete(out, got)) {
            shutdown(fd, SHUT_WR);
            ended = 1;
        }
        if (wait_fd(fd, POLLIN, ended ? IO_MS : SETTLE_MS, deadline) == 0) {
            if (ended || now_ms() >= deadline)
                return got; /* the time is up */
            shutdown(fd, SHUT_WR);
            ended = 1;
            continue;
        }
        ssize_t n = recv(fd, chunk, sizeof chunk, 0);
        if (n > 0) {
            size_t keep = got < cap ? ((size_t)n < cap - got ? (size_t)n : cap - got) : 0;
            memcpy(out + got, chunk, keep);
            got += keep;
        } else if (n == 0 || (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK)) {
            return got;
        }
    }
}

/* What a reply may be: HTTP, never 500 (a request the access handler left unanswered). */
static void check_reply(const char *r, size_t n)
{
    if (n == 0) {
        fz.status[0]++;
        return;
    }
    FUZZ_CHECK(n >= 12 && memcmp(r, "HTTP/1.", 7) == 0);
    int status = atoi(r + 9);
    FUZZ_CHECK(status >= 100 && status <= 599);
    FUZZ_CHECK(status != 500);
    fz.status[status / 100]++;
    if (status == 202)
        FUZZ_CHECK(memmem(r, n, "{\"id\":", 6) != NULL);
}

static int recent_contain(const char *s)
{
    for (int i = 0; i < 2; i++)
        if (recent[i].p != NULL && memmem(recent[i].p, recent[i].n, s, strlen(s)) != NULL)
            return 1;
    return 0;
}

static void remember(const uint8_t *data, size_t size)
{
    free(recent[1].p);
    recent[1] = recent[0];
    recent[0].p = malloc(size ? size : 1);
    recent[0].n = size;
    FUZZ_CHECK(recent[0].p != NULL);
    memcpy(recent[0].p, data, size);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char reply[8192];
    if (!fz.up)
        LLVMFuzzerInitialize(NULL, NULL);
    remember(data, size);
    unsigned long cf_before = atomic_load(&fz.accepted_cf);
    long long start = now_ms(), deadline = start + IO_MS;
    int fd = connect_to_intake(deadline);
    FUZZ_CHECK(fd >= 0); /* intake stopped listening */
    send_all(fd, data, size, deadline);
    size_t n = read_reply(fd, reply, sizeof reply, now_ms() + IO_MS);
    close(fd);
    if (getenv("FUZZ_VERBOSE"))
        fprintf(stderr, "fuzz_intake: %zu bytes in, %zu out in %lld ms: %.12s\n", size, n,
                now_ms() - start, n ? reply : "");
    check_reply(reply, n);
    /* cf has a secret: an event from it means the secret was sent */
    if (atomic_load(&fz.accepted_cf) != cf_before)
        FUZZ_CHECK(recent_contain(SECRET));
    if (++fz.inputs % 1024 == 0)
        maybe_restart();
    return 0;
}
