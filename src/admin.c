/*
 * admin.c -- what the admin endpoints answer, without the HTTP (intake.c serves them):
 * GET /readyz (journal writable, handlers loaded) and GET /metrics (metrics.c's families,
 * with the values a scrape reads from elsewhere set first: reload status, queue depths,
 * deliveries by status from the journal, process facts from /proc).
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "certhook.h"

unsigned admin_readyz(struct journal *j, struct dispatch *d, struct buf *b)
{
    char why[200];
    struct dispatch_status st;
    dispatch_get_status(d, &st);
    int journal_ok = journal_healthy(j, why, sizeof why);
    int ok = journal_ok && st.generation > 0 && st.stalled[0] == '\0';
    buf_printf(b, "{\"status\":\"%s\",\"journal\":", ok ? "ready" : "not_ready");
    if (journal_ok)
        buf_adds(b, "\"ok\"");
    else
        buf_json_str(b, why, strlen(why));
    buf_printf(b, ",\"generation\":%u,\"handlers\":%zu,\"files\":%zu", st.generation,
               st.handlers, st.files);
    buf_printf(b, ",\"reloads\":%lu,\"reload_failures\":%lu,\"last_reload_error\":",
               st.reloads, st.reload_failures);
    if (st.last_error[0])
        buf_json_str(b, st.last_error, strlen(st.last_error));
    else
        buf_adds(b, "null");
    buf_adds(b, ",\"stalled\":");
    if (st.stalled[0])
        buf_json_str(b, st.stalled, strlen(st.stalled));
    else
        buf_adds(b, "null");
    buf_printf(b, ",\"backlog\":%zu}", st.backlog);
    return ok ? 200 : 503;
}

/* /proc/self/stat: CPU seconds, virtual and resident bytes, start time (epoch seconds). */
static void process_facts(void)
{
    char line[1024];
    FILE *f = fopen("/proc/self/stat", "r");
    size_t n = f ? fread(line, 1, sizeof line - 1, f) : 0;
    if (f)
        fclose(f);
    line[n] = '\0';
    const char *p = strrchr(line, ')'); /* after the command name, which may hold spaces */
    unsigned long utime, stime, vsize;
    unsigned long long start;
    long rss;
    if (p == NULL || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu %*d %*d "
                                   "%*d %*d %*d %*d %llu %lu %ld",
                            &utime, &stime, &start, &vsize, &rss) != 5)
        return;
    double hz = (double)sysconf(_SC_CLK_TCK), boot = 0;
    if ((f = fopen("/proc/stat", "r")) != NULL) {
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "btime %lf", &boot) == 1)
                break;
        fclose(f);
    }
    double started = boot + (double)start / hz;
    metrics_set(M_CPU, (double)(utime + stime) / hz);
    metrics_set(M_VSZ, (double)vsize);
    metrics_set(M_RSS, (double)rss * (double)sysconf(_SC_PAGESIZE));
    metrics_set(M_START, started);
    metrics_set(M_UPTIME, time_now() - started);
    DIR *dir = opendir("/proc/self/fd");
    double fds = 0;
    for (struct dirent *e; dir && (e = readdir(dir)) != NULL;)
        fds += e->d_name[0] != '.';
    if (dir)
        closedir(dir);
    metrics_set(M_FDS, fds - 1); /* not the one reading the directory */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
        metrics_set(M_MAX_FDS, (double)rl.rlim_cur);
}

void admin_render_metrics(struct journal *j, struct dispatch *d, struct buf *b)
{
    struct dispatch_status st;
    double counts[5];
    char why[200];
    dispatch_get_status(d, &st);
    metrics_set(M_INFO, 1, CERTHOOK_VERSION);
    metrics_set(M_READY, journal_healthy(j, why, sizeof why) && st.generation > 0 &&
                             st.stalled[0] == '\0');
    metrics_set(M_STALLED, st.stalled[0] != '\0');
    metrics_set(M_GENERATION, st.generation);
    metrics_set(M_HANDLERS, (double)st.handlers);
    metrics_set(M_RELOADS, (double)st.reloads);
    metrics_set(M_RELOAD_FAILURES, (double)st.reload_failures);
    metrics_set(M_LAST_RELOAD_OK, st.last_error[0] == '\0');
    double wal, behind;
    journal_wal_status(j, &wal, &behind);
    metrics_set(M_WAL_BYTES, wal);
    metrics_set(M_CHECKPOINT_BEHIND, behind);
    metrics_set(M_QUEUE, (double)journal_queued(j), "journal");
    metrics_set(M_QUEUE, (double)st.backlog, "dispatch");
    if (journal_count_deliveries(j, counts) == 0)
        for (int i = 0; i < 5; i++)
            metrics_set(M_JOURNAL_DELIVERIES, counts[i], delivery_status_names[i]);
    process_facts();
    metrics_render(b);
}
