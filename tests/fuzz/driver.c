/*
 * driver.c -- main() for a fuzz target built without libFuzzer: the replay test.
 *
 * Runs LLVMFuzzerInitialize (when the target has one), then LLVMFuzzerTestOneInput on every
 * file of the directories compiled in (FUZZ_DIRS: "dir:dir:..." -- the target's seeds and
 * tests/fuzz/regressions/<target>), one TAP line per directory. A finding aborts the run,
 * which the test harness counts as a failure; the file being replayed is named on stderr.
 * Files named on the command line (or directories) are replayed instead: that is how a
 * crash input is reproduced without libFuzzer.
 */
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz.h"

#ifndef FUZZ_TARGET
#error "FUZZ_TARGET (the target's name) must be defined"
#endif
#ifndef FUZZ_DIRS
#error "FUZZ_DIRS (the directories to replay, separated by ':') must be defined"
#endif

#pragma weak LLVMFuzzerInitialize

/* sanitizer runtime, when linked in (SANITIZE=1): runs before a report ends the process */
void __sanitizer_set_death_callback(void (*callback)(void));
#pragma weak __sanitizer_set_death_callback

static char current[4096]; /* the input being replayed */

static void say_current(void)
{
    static const char what[] = "\n# fuzz replay: the failing input is ";
    if (current[0] == '\0')
        return;
    if (write(2, what, sizeof what - 1) < 0 || write(2, current, strlen(current)) < 0 ||
        write(2, "\n", 1) < 0)
        return;
}

static void on_signal(int sig)
{
    say_current();
    signal(sig, SIG_DFL);
    raise(sig);
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Reads path into an exactly sized buffer (so a sanitizer sees any overread). */
static unsigned char *read_file(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    struct stat st;
    if (f == NULL || fstat(fileno(f), &st) != 0) {
        if (f != NULL)
            fclose(f);
        return NULL;
    }
    *n = (size_t)st.st_size;
    unsigned char *p = malloc(*n ? *n : 1);
    if (p != NULL && fread(p, 1, *n, f) != *n) {
        free(p);
        p = NULL;
    }
    fclose(f);
    return p;
}

/* Replays one file; -1 if it cannot be read. */
static int replay(const char *path)
{
    size_t n;
    unsigned char *data = read_file(path, &n);
    if (data == NULL) {
        fprintf(stderr, "# cannot read %s\n", path);
        return -1;
    }
    snprintf(current, sizeof current, "%s", path);
    LLVMFuzzerTestOneInput(data, n);
    current[0] = '\0';
    free(data);
    return 0;
}

/* Replays every regular file of dir whose name does not start with '.', in name order.
 * Returns how many, or -1 if the directory cannot be read. */
static int replay_dir(const char *dir)
{
    DIR *d = opendir(dir);
    char **names = NULL, path[4096];
    size_t n = 0, cap = 0;
    int count = 0;
    struct dirent *e;
    struct stat st;
    if (d == NULL)
        return -1;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            char **p = realloc(names, cap * sizeof *p);
            if (p == NULL)
                abort();
            names = p;
        }
        if ((names[n++] = strdup(e->d_name)) == NULL)
            abort();
    }
    closedir(d);
    if (n > 0)
        qsort(names, n, sizeof *names, by_name);
    for (size_t i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        if (stat(path, &st) == 0 && S_ISREG(st.st_mode) && count >= 0)
            count = replay(path) == 0 ? count + 1 : -1;
        free(names[i]);
    }
    free(names);
    return count;
}

int main(int argc, char **argv)
{
    static const char dirs[] = FUZZ_DIRS;
    int tests = 0, failed = 0;
    struct stat st;
    if (__sanitizer_set_death_callback != NULL)
        __sanitizer_set_death_callback(say_current);
    signal(SIGABRT, on_signal);
    signal(SIGSEGV, on_signal);
    signal(SIGBUS, on_signal);
    signal(SIGFPE, on_signal);
    signal(SIGILL, on_signal);
    if (LLVMFuzzerInitialize != NULL)
        LLVMFuzzerInitialize(&argc, &argv);

    if (argc > 1) { /* replay what the command line names */
        for (int i = 1; i < argc; i++) {
            int rc = stat(argv[i], &st) == 0 && S_ISDIR(st.st_mode) ? replay_dir(argv[i])
                                                                     : replay(argv[i]);
            printf("%sok %d - %s: %s\n", rc < 0 ? "not " : "", ++tests, FUZZ_TARGET, argv[i]);
            failed += rc < 0;
        }
    } else {
        for (const char *p = dirs; *p;) {
            size_t len = strcspn(p, ":");
            char dir[4096];
            snprintf(dir, sizeof dir, "%.*s", (int)len, p);
            int count = replay_dir(dir);
            if (count < 0)
                printf("not ok %d - %s: %s cannot be read\n", ++tests, FUZZ_TARGET, dir);
            else if (count == 0) /* replayed nothing: not a pass */
                printf("ok %d - %s: %s # SKIP no inputs yet\n", ++tests, FUZZ_TARGET, dir);
            else
                printf("ok %d - %s: %s (%d inputs)\n", ++tests, FUZZ_TARGET, dir, count);
            fflush(stdout);
            failed += count < 0;
            p += len + (p[len] == ':');
        }
    }
    printf("1..%d\n", tests);
    return failed != 0;
}
