/*
 * api.c -- the console on the admin listener (README "Console"): the page (one HTML, one
 * script, one stylesheet, src/intake/console/, made C strings by the Makefile), and the JSON
 * API it uses, for scripts too:
 *
 *   GET  /api/certificates     the inventory, soonest expiry first, with the tiles' counts
 *   GET  /api/events           newest first, each with its deliveries; a cursor for the next page
 *   GET  /api/events/{id}      the event, its context, its body, its deliveries, its replays
 *   POST /api/events/{id}/replay   [?handler=]
 *   POST /api/replay           the dead deliveries the filters match; dry_run=1: only how many
 *
 * admin.c decides who may ask (api_route); reads go through the journal's reader (journal.h),
 * on SQLite and PostgreSQL alike, bounded by a limit each; a replay is a request the server
 * picks up, journaled with who asked.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lua.h>

#include "intake/http.h"
#include "journal/journal.h"
#include "providers/provider.h"

#include "console.h"

#define DAY 86400.0
#define EVENTS_LIMIT 50       /* events a page lists unless asked */
#define EVENTS_MAX 500        /* and at most */
#define CERTS_LIMIT 100       /* certificates listed unless asked (the tiles count them all) */
#define CERTS_MAX 5000
#define REPLAY_MAX 10000      /* dead deliveries one POST /api/replay runs again at most */

/* ---- the page ------------------------------------------------------------------------------------ */

static const struct {
    const char *path, *type, *body;
    size_t n;
} assets[] = {
    {"/", "text/html; charset=utf-8", console_index_html, sizeof console_index_html - 1},
    {"/console.js", "text/javascript; charset=utf-8", console_console_js,
     sizeof console_console_js - 1},
    {"/console.css", "text/css; charset=utf-8", console_console_css,
     sizeof console_console_css - 1},
    {"/favicon.svg", "image/svg+xml", console_favicon_svg, sizeof console_favicon_svg - 1},
};

/* Headers every console answer carries: nothing from another origin, no framing, no sniffing,
 * no referrer. */
static void console_headers(struct MHD_Response *r, const char *type)
{
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    MHD_add_response_header(r, "Content-Security-Policy",
                            "default-src 'self'; base-uri 'none'; form-action 'none'; "
                            "frame-ancestors 'none'");
    MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(r, "Referrer-Policy", "no-referrer");
    MHD_add_response_header(r, "Cache-Control", "no-cache");
}

int api_asset(const char *url)
{
    for (size_t i = 0; i < sizeof assets / sizeof assets[0]; i++)
        if (strcmp(url, assets[i].path) == 0)
            return 1;
    return 0;
}

/* preload: the page may ask /api/certificates without a token (no admin_token): the HTML's
 * answer says so in a Link header, so the browser asks it while it still fetches the script
 * (console.js takes that answer first, whatever its view; README "Console"). */
enum MHD_Result api_serve_asset(struct MHD_Connection *c, const char *url, int preload)
{
    for (size_t i = 0; i < sizeof assets / sizeof assets[0]; i++) {
        if (strcmp(url, assets[i].path) != 0)
            continue;
        struct MHD_Response *r = MHD_create_response_from_buffer(
            assets[i].n, (void *)assets[i].body, MHD_RESPMEM_PERSISTENT);
        if (r == NULL)
            return MHD_NO;
        console_headers(r, assets[i].type);
        if (preload && i == 0)
            MHD_add_response_header(r, "Link",
                                    "</api/certificates>; rel=preload; as=fetch; crossorigin");
        http_replied = MHD_HTTP_OK;
        enum MHD_Result rc = MHD_queue_response(c, MHD_HTTP_OK, r);
        MHD_destroy_response(r);
        return rc;
    }
    return MHD_NO;
}

static enum MHD_Result json_reply(struct MHD_Connection *c, unsigned status, struct buf *b)
{
    if (b->p == NULL) {
        buf_free(b);
        return http_reply_error(c, MHD_HTTP_SERVICE_UNAVAILABLE, "unavailable", NULL, NULL,
                                NULL, "out of memory");
    }
    struct MHD_Response *r = MHD_create_response_from_buffer(b->n, b->p, MHD_RESPMEM_MUST_COPY);
    buf_free(b);
    if (r == NULL)
        return MHD_NO;
    console_headers(r, "application/json");
    http_replied = status;
    enum MHD_Result rc = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return rc;
}

static enum MHD_Result bad_request(struct MHD_Connection *c, const char *fmt, const char *what)
{
    return http_reply_error(c, MHD_HTTP_BAD_REQUEST, "bad_request", NULL, NULL, NULL, fmt, what);
}

static enum MHD_Result journal_error(struct MHD_Connection *c, const char *err)
{
    return http_reply_error(c, MHD_HTTP_SERVICE_UNAVAILABLE, "unavailable", NULL, NULL, NULL,
                            "the journal cannot be read: %s", err);
}

/* ---- query arguments ------------------------------------------------------------------------------ */

static const char *arg(struct MHD_Connection *c, const char *name)
{
    const char *v = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, name);
    return v && *v ? v : NULL;
}

/* The argument as a number in [min, max] into *out (kept when absent): 0, or -1 (bad). */
static int arg_number(struct MHD_Connection *c, const char *name, double min, double max,
                      double *out)
{
    const char *v = arg(c, name);
    if (v == NULL)
        return 0;
    char *end;
    errno = 0;
    double d = strtod(v, &end);
    if (errno || *end || end == v || !(d >= min && d <= max))
        return -1;
    *out = d;
    return 0;
}

/* A time: epoch seconds, or an ISO 8601 date (2026-12-07) or time (2026-12-07T10:00[:00][Z]). */
static int arg_time(struct MHD_Connection *c, const char *name, double *out)
{
    const char *v = arg(c, name);
    if (v == NULL)
        return 0;
    if (arg_number(c, name, 1, 1e11, out) == 0)
        return 0;
    struct tm tm = {0};
    int n = 0;
    if (sscanf(v, "%4d-%2d-%2d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &n) != 3)
        return -1;
    const char *p = v + n;
    if (*p == 'T' || *p == ' ') {
        int m = 0;
        if (sscanf(p + 1, "%2d:%2d%n", &tm.tm_hour, &tm.tm_min, &m) != 2)
            return -1;
        p += 1 + m;
        if (*p == ':' && sscanf(p + 1, "%2d%n", &tm.tm_sec, &m) == 1)
            p += 1 + m;
        if (*p == 'Z')
            p++;
    }
    if (*p != '\0' || tm.tm_mon < 1 || tm.tm_mon > 12 || tm.tm_mday < 1 || tm.tm_mday > 31)
        return -1;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    *out = (double)timegm(&tm);
    return 0;
}

static int known_status(const char *s)
{
    for (int i = 0; i < 5; i++)
        if (strcmp(s, delivery_status_names[i]) == 0)
            return 1;
    return 0;
}

/* ---- GET /api/events ---------------------------------------------------------------------------- */

struct listing {
    struct buf *b;
    int64_t last_seq; /* the event being written (0: none yet) */
    int events;
    const char *status, *handler; /* POST /api/replay: the dead deliveries it picks */
    int picked;
    struct pick {
        char *id, *handler;
    } *picks;
};

static void add_str(struct buf *b, const char *k, const char *v)
{
    buf_printf(b, ",\"%s\":", k);
    if (v)
        buf_json_str(b, v, strlen(v));
    else
        buf_adds(b, "null");
}

static void add_time(struct buf *b, const char *k, double t)
{
    buf_printf(b, ",\"%s\":", k);
    if (t > 0)
        buf_json_number(b, t);
    else
        buf_adds(b, "null");
}

static void add_delivery(struct buf *b, const struct journal_row *r, int traceback)
{
    buf_adds(b, "{\"handler\":");
    buf_json_str(b, r->handler, strlen(r->handler));
    add_str(b, "status", r->status);
    buf_printf(b, ",\"attempts\":%d", r->attempts);
    add_str(b, "error", r->error);
    if (traceback)
        add_str(b, "traceback", r->traceback);
    add_time(b, "next_at", r->next_at);
    add_time(b, "started_at", r->started_at);
    buf_printf(b, ",\"generation\":%d}", r->generation);
}

/* journal_list's rows, one per delivery, newest event first: an object per event. */
static void list_row(void *cls, const struct journal_row *r)
{
    struct listing *ls = cls;
    struct buf *b = ls->b;
    if (r->seq != ls->last_seq) {
        if (ls->last_seq != 0)
            buf_adds(b, "]}");
        buf_printf(b, "%s{\"seq\":%lld", ls->events++ ? "," : "", (long long)r->seq);
        add_str(b, "id", r->id);
        add_str(b, "source", r->source);
        add_str(b, "provider", r->provider);
        add_str(b, "type", r->type);
        add_str(b, "provider_type", r->provider_type);
        add_str(b, "hostname", r->hostname);
        add_time(b, "received_at", r->received_at);
        buf_printf(b, ",\"state\":%d,\"deliveries\":[", r->state);
        ls->last_seq = r->seq;
    } else if (r->handler) {
        buf_adds(b, ",");
    }
    if (r->handler)
        add_delivery(b, r, 0);
}

/* The filters of /api/events and /api/replay into f; NULL, or what is wrong. */
static const char *filters(struct MHD_Connection *c, struct journal_filter *f)
{
    f->status = arg(c, "status");
    f->type = arg(c, "type");
    f->provider = arg(c, "provider");
    if (f->status && !known_status(f->status))
        return "status must be pending, running, retrying, done or dead";
    if (arg_time(c, "since", &f->since) || arg_time(c, "until", &f->until))
        return "since and until must be epoch seconds or ISO 8601 dates/times (UTC)";
    return NULL;
}

static enum MHD_Result api_events(struct intake *in, struct MHD_Connection *c)
{
    struct journal_filter f = {.limit = EVENTS_LIMIT};
    double limit = EVENTS_LIMIT, cursor = 0;
    const char *why = filters(c, &f);
    if (why)
        return bad_request(c, "%s", why);
    if (arg_number(c, "limit", 1, EVENTS_MAX, &limit) || limit != floor(limit))
        return bad_request(c, "limit must be a whole number from 1 to %s", "500");
    if (arg_number(c, "cursor", 1, 9e15, &cursor) || cursor != floor(cursor))
        return bad_request(c, "cursor must be the next_cursor of a previous page%s", "");
    f.limit = (int)limit;
    f.before = (int64_t)cursor;
    struct buf b;
    struct listing ls = {&b, 0, 0, NULL, NULL, 0, NULL};
    char err[300];
    buf_init(&b);
    buf_adds(&b, "{\"events\":[");
    if (journal_list(in->j, &f, list_row, &ls, err, sizeof err) != 0) {
        buf_free(&b);
        return journal_error(c, err);
    }
    if (ls.last_seq != 0)
        buf_adds(&b, "]}");
    buf_adds(&b, "],\"next_cursor\":");
    if (ls.events == f.limit)
        buf_printf(&b, "%lld", (long long)ls.last_seq);
    else
        buf_adds(&b, "null");
    buf_printf(&b, ",\"now\":%.3f}", time_now());
    return json_reply(c, MHD_HTTP_OK, &b);
}

/* ---- GET /api/events/{id} ------------------------------------------------------------------------ */

struct detail {
    struct buf *b;
    int n;
};

static void detail_row(void *cls, const struct journal_row *r)
{
    struct detail *d = cls;
    if (r->handler == NULL)
        return;
    if (d->n++)
        buf_adds(d->b, ",");
    add_delivery(d->b, r, 1);
}

/* The canonical event as handlers see it (with its context), without raw (the body, apart). */
static void add_canonical(struct intake *in, const struct event *ev, struct buf *b)
{
    lua_State *L = http_parser_state(in, atomic_load(&in->cfg));
    buf_adds(b, ",\"event\":");
    if (L == NULL) {
        buf_adds(b, "null");
        return;
    }
    int top = lua_gettop(L);
    size_t n = 0;
    const char *s = NULL;
    if (event_unpack(L, ev->packed, ev->packed_len, ev->body, ev->body_len) == 0) {
        event_set_context(L, -1, ev->context);
        lua_pushnil(L);
        lua_setfield(L, -2, "raw");
        s = json_encode(L, -1, &n);
    }
    if (s)
        buf_add(b, s, n);
    else
        buf_adds(b, "null");
    lua_settop(L, top);
}

static void replay_record(void *cls, const struct journal_replay_record *r)
{
    struct detail *d = cls;
    buf_adds(d->b, d->n++ ? ",{\"at\":" : "{\"at\":");
    buf_json_number(d->b, r->at);
    add_str(d->b, "by", r->by);
    add_str(d->b, "handler", r->handler);
    buf_adds(d->b, "}");
}

static enum MHD_Result api_event(struct intake *in, struct MHD_Connection *c, const char *id)
{
    struct event *ev = journal_load(in->j, 0, id);
    if (ev == NULL)
        return http_reply_error(c, MHD_HTTP_NOT_FOUND, "not_found", NULL, NULL, NULL,
                                "no event with id %.200s in the journal", id);
    struct buf b;
    buf_init(&b);
    buf_printf(&b, "{\"seq\":%lld", (long long)ev->seq);
    add_str(&b, "id", ev->id);
    add_str(&b, "source", ev->source);
    add_str(&b, "provider", ev->provider);
    add_str(&b, "type", ev->type);
    add_str(&b, "provider_type", ev->provider_type);
    add_str(&b, "hostname", ev->hostname);
    add_time(&b, "received_at", ev->received_at);
    add_time(&b, "occurred_at", ev->occurred_at);
    add_canonical(in, ev, &b);
    buf_adds(&b, ",\"context\":");
    buf_adds(&b, ev->context ? ev->context : "null");
    buf_adds(&b, ",\"body\":");
    buf_json_str(&b, ev->body ? ev->body : "", ev->body ? ev->body_len : 0);
    buf_adds(&b, ",\"deliveries\":[");
    struct journal_filter f = {.id = ev->id, .limit = 1};
    struct detail d = {&b, 0};
    char err[300];
    int rc = journal_list(in->j, &f, detail_row, &d, err, sizeof err);
    buf_adds(&b, "],\"replays\":[");
    d.n = 0;
    if (rc == 0)
        rc = journal_replay_log(in->j, ev->id, 50, replay_record, &d, err, sizeof err);
    event_free(ev);
    if (rc != 0) {
        buf_free(&b);
        return journal_error(c, err);
    }
    buf_printf(&b, "],\"now\":%.3f}", time_now());
    return json_reply(c, MHD_HTTP_OK, &b);
}

/* ---- replays ------------------------------------------------------------------------------------- */

static enum MHD_Result api_replay_event(struct intake *in, struct MHD_Connection *c,
                                        const char *id, const char *who)
{
    char err[400];
    int count = 0;
    const char *handler = arg(c, "handler");
    struct event *ev = journal_load(in->j, 0, id);
    if (ev == NULL)
        return http_reply_error(c, MHD_HTTP_NOT_FOUND, "not_found", NULL, NULL, NULL,
                                "no event with id %.200s in the journal", id);
    event_free(ev);
    if (journal_request_replay(in->j, id, handler, who, &count, err, sizeof err) != 0) {
        if (handler && strstr(err, "has no delivery to"))
            return http_reply_error(c, MHD_HTTP_NOT_FOUND, "not_found", NULL, NULL, NULL, "%s",
                                    err);
        return http_reply_error(c, MHD_HTTP_SERVICE_UNAVAILABLE, "unavailable", NULL, NULL,
                                NULL, "%s", err);
    }
    log_msg(LOG_INFO, "replay requested: event %s%s%s, by %s", id, handler ? ", handler " : "",
            handler ? handler : "", who);
    struct buf b;
    buf_init(&b);
    buf_adds(&b, "{\"status\":\"requested\",\"event\":");
    buf_json_str(&b, id, strlen(id));
    add_str(&b, "handler", handler);
    buf_printf(&b, ",\"deliveries\":%d", count);
    add_str(&b, "by", who);
    buf_adds(&b, "}");
    return json_reply(c, MHD_HTTP_ACCEPTED, &b);
}

/* The dead deliveries of the listed events that POST /api/replay runs again. */
static void pick_row(void *cls, const struct journal_row *r)
{
    struct listing *ls = cls;
    if (r->handler == NULL || r->status == NULL || strcmp(r->status, "dead") != 0 ||
        (ls->handler && strcmp(ls->handler, r->handler) != 0) || ls->picked >= REPLAY_MAX)
        return;
    struct pick *p = realloc(ls->picks, (size_t)(ls->picked + 1) * sizeof *p);
    if (p == NULL)
        return;
    ls->picks = p;
    p[ls->picked].id = strdup(r->id);
    p[ls->picked].handler = strdup(r->handler);
    if (p[ls->picked].id && p[ls->picked].handler)
        ls->picked++;
    else
        free(p[ls->picked].id), free(p[ls->picked].handler);
}

static enum MHD_Result api_replay(struct intake *in, struct MHD_Connection *c, const char *who)
{
    struct journal_filter f = {.limit = REPLAY_MAX};
    const char *why = filters(c, &f);
    if (why)
        return bad_request(c, "%s", why);
    if (f.status && strcmp(f.status, "dead") != 0)
        return bad_request(c, "POST /api/replay runs dead deliveries again: status is dead or "
                              "absent, not %s", f.status);
    f.status = "dead";
    const char *dry = arg(c, "dry_run");
    if (dry && strcmp(dry, "1") != 0 && strcmp(dry, "true") != 0 && strcmp(dry, "0") != 0 &&
        strcmp(dry, "false") != 0)
        return bad_request(c, "dry_run must be 1, true, 0 or false, not %.40s", dry);
    int dry_run = dry && (dry[0] == '1' || dry[0] == 't');
    struct listing ls = {NULL, 0, 0, NULL, arg(c, "handler"), 0, NULL};
    char err[400];
    if (journal_list(in->j, &f, pick_row, &ls, err, sizeof err) != 0) {
        for (int i = 0; i < ls.picked; i++)
            free(ls.picks[i].id), free(ls.picks[i].handler);
        free(ls.picks);
        return journal_error(c, err);
    }
    int done = 0, failed = 0;
    err[0] = '\0';
    for (int i = 0; i < ls.picked; i++) {
        int count;
        if (!dry_run) {
            if (journal_request_replay(in->j, ls.picks[i].id, ls.picks[i].handler, who, &count,
                                       err, sizeof err) == 0)
                done++;
            else
                failed++;
        }
        free(ls.picks[i].id);
        free(ls.picks[i].handler);
    }
    free(ls.picks);
    if (!dry_run)
        log_msg(LOG_INFO, "replay requested: %d dead deliveries, by %s", done, who);
    struct buf b;
    buf_init(&b);
    if (dry_run)
        buf_printf(&b, "{\"dry_run\":true,\"deliveries\":%d}", ls.picked);
    else {
        buf_printf(&b, "{\"status\":\"requested\",\"deliveries\":%d,\"failed\":%d", done, failed);
        add_str(&b, "error", failed ? err : NULL);
        add_str(&b, "by", who);
        buf_adds(&b, "}");
    }
    return json_reply(c, dry_run ? MHD_HTTP_OK : MHD_HTTP_ACCEPTED, &b);
}

/* ---- GET /api/certificates ---------------------------------------------------------------------- */

/* The value of key in the flat JSON object s (an inventory entry): where it starts and its
 * length, or NULL. Values are skipped whole (strings with escapes, lists). */
static const char *json_field(const char *s, const char *key, size_t *len)
{
    size_t kn = strlen(key);
    const char *p = strchr(s, '{');
    if (p == NULL)
        return NULL;
    p++;
    for (;;) {
        while (*p == ' ' || *p == ',' || *p == '\n' || *p == '\t')
            p++;
        if (*p != '"')
            return NULL;
        const char *k = ++p;
        while (*p && *p != '"')
            p += *p == '\\' && p[1] ? 2 : 1;
        if (*p != '"')
            return NULL;
        int match = (size_t)(p - k) == kn && memcmp(k, key, kn) == 0;
        p++;
        while (*p == ' ' || *p == ':')
            p++;
        const char *v = p;
        int depth = 0;
        for (; *p; p++) {
            if (*p == '"') {
                for (p++; *p && *p != '"'; p++)
                    if (*p == '\\' && p[1])
                        p++;
                if (*p == '\0')
                    return NULL;
            } else if (*p == '[' || *p == '{') {
                depth++;
            } else if (*p == ']' || *p == '}') {
                if (depth == 0)
                    break;
                depth--;
            } else if (*p == ',' && depth == 0) {
                break;
            }
        }
        if (match) {
            *len = (size_t)(p - v);
            while (*len > 0 && (v[*len - 1] == ' ' || v[*len - 1] == '\n'))
                (*len)--;
            return v;
        }
        if (*p != ',')
            return NULL;
    }
}

static double field_number(const char *json, const char *key)
{
    size_t n;
    const char *v = json_field(json, key, &n);
    return v && n > 0 && v[0] != 'n' ? strtod(v, NULL) : 0;
}

static void copy_field(struct buf *b, const char *json, const char *key)
{
    size_t n;
    const char *v = json_field(json, key, &n);
    buf_printf(b, ",\"%s\":", key);
    if (v && n > 0)
        buf_add(b, v, n);
    else
        buf_adds(b, "null");
}

struct certs {
    struct buf *b;
    const struct intake_config *cfg;
    double now;
    const char *tile;   /* "expired", "overdue", "<days>" or NULL: the table's rows */
    double tile_days;
    int offset, limit;
    long total, matched, listed, expired, overdue, within[16];
};

/* The renewal is overdue as the watchdog says it (dispatch/watchdog.c): a threshold of
 * watchdog.before (or a third of the lifetime) passed after a warning, and nothing renewed the
 * certificate since; until it expires. */
static int is_overdue(const struct intake_config *cfg, const char *json, double x, double now)
{
    double warned = field_number(json, "warned_at"), renewed = field_number(json, "renewed_at");
    double nb = field_number(json, "not_before"), last = -1;
    if (x <= 0 || now >= x || warned <= 0 || renewed >= warned)
        return 0;
    for (size_t i = 0; i <= cfg->nwatch_before; i++) {
        double t = i < cfg->nwatch_before ? cfg->watch_before[i] * DAY
                   : nb > 0 && x > nb     ? (x - nb) / 3
                                          : -1;
        if (t >= 0 && now >= x - t && (last < 0 || t < last))
            last = t; /* the latest threshold passed */
    }
    return last >= 0 && warned < x - last;
}

static void cert_row(void *cls, const char *json)
{
    struct certs *cs = cls;
    double x = field_number(json, "expires_at");
    int expired = x > 0 && x <= cs->now, overdue = is_overdue(cs->cfg, json, x, cs->now);
    cs->total++;
    cs->expired += expired;
    cs->overdue += overdue;
    for (size_t i = 0; i < cs->cfg->nwatch_before; i++)
        cs->within[i] += !expired && x > 0 && x - cs->now <= cs->cfg->watch_before[i] * DAY;
    if (cs->tile) {
        int in = strcmp(cs->tile, "expired") == 0   ? expired
                 : strcmp(cs->tile, "overdue") == 0 ? overdue
                                                     : !expired && x > 0 &&
                                                           x - cs->now <= cs->tile_days * DAY;
        if (!in)
            return;
    }
    if (cs->matched++ < cs->offset || cs->listed >= cs->limit)
        return;
    struct buf *b = cs->b;
    buf_adds(b, cs->listed++ ? ",{\"names\":" : "{\"names\":");
    size_t n;
    const char *d = json_field(json, "domains", &n);
    int names = 0; /* the other names it covers: its domains but the hostname */
    for (size_t i = 0; d && i < n; i++)
        names += d[i] == '"';
    names /= 2;
    buf_printf(b, "%d", names > 1 ? names - 1 : 0);
    static const char *const fields[] = { /* what the table shows: the whole entry is certhook
                                           * certs --json's, or certhook.certs' */
        "key", "hostname", "name", "certificate_id", "provider", "status", "state", "expires_at",
        "expires_at_approximate", "last_type", "last_event", "last_occurred_at",
        "previous_status", "previous_state"};
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
        copy_field(b, json, fields[i]);
    buf_printf(b, ",\"overdue\":%s}", overdue ? "true" : "false");
}

static enum MHD_Result api_certificates(struct intake *in, struct MHD_Connection *c)
{
    const struct intake_config *cfg = atomic_load(&in->cfg);
    struct journal_certs_query q = {.status = arg(c, "status"), .provider = arg(c, "provider")};
    double limit = CERTS_LIMIT, offset = 0, days = 0;
    if (arg_number(c, "limit", 1, CERTS_MAX, &limit) || limit != floor(limit))
        return bad_request(c, "limit must be a whole number from 1 to %s", "5000");
    if (arg_number(c, "offset", 0, 1e9, &offset) || offset != floor(offset))
        return bad_request(c, "offset must be a whole number%s", "");
    const char *tile = arg(c, "tile");
    if (tile && strcmp(tile, "expired") != 0 && strcmp(tile, "overdue") != 0 &&
        (arg_number(c, "tile", 0.0001, 36500, &days) != 0))
        return bad_request(c, "tile must be expired, overdue or a number of days, not %.40s",
                           tile);
    struct buf b;
    struct certs cs = {.b = &b, .cfg = cfg, .now = time_now(), .tile = tile, .tile_days = days,
                       .offset = (int)offset, .limit = (int)limit};
    char err[300];
    buf_init(&b);
    buf_adds(&b, "{\"certificates\":[");
    if (journal_certs(in->j, &q, cert_row, &cs, err, sizeof err) != 0) {
        buf_free(&b);
        return journal_error(c, err);
    }
    buf_printf(&b, "],\"total\":%ld,\"matched\":%ld,\"offset\":%d,\"expired\":%ld,"
                   "\"overdue\":%ld,\"thresholds\":[",
               cs.total, cs.matched, cs.offset, cs.expired, cs.overdue);
    for (size_t i = 0; i < cfg->nwatch_before; i++) {
        buf_adds(&b, i ? "," : "");
        buf_json_number(&b, cfg->watch_before[i]);
    }
    buf_adds(&b, "],\"within\":[");
    for (size_t i = 0; i < cfg->nwatch_before; i++)
        buf_printf(&b, "%s%ld", i ? "," : "", cs.within[i]);
    buf_printf(&b, "],\"now\":%.3f}", cs.now);
    return json_reply(c, MHD_HTTP_OK, &b);
}

/* ---- the routes ------------------------------------------------------------------------------------ */

static enum MHD_Result method_not_allowed(struct MHD_Connection *c, const char *allow)
{
    return http_reply_error(c, MHD_HTTP_METHOD_NOT_ALLOWED, "method_not_allowed", NULL,
                            MHD_HTTP_HEADER_ALLOW, allow, "use %s", allow);
}

enum MHD_Result api_route(struct intake *in, struct MHD_Connection *c, const char *url,
                          const char *method, const char *who)
{
    int get = strcmp(method, MHD_HTTP_METHOD_GET) == 0 || strcmp(method, MHD_HTTP_METHOD_HEAD) == 0;
    int post = strcmp(method, MHD_HTTP_METHOD_POST) == 0;
    const char *rest = url + 4; /* after "/api" */
    if (strcmp(rest, "/certificates") == 0)
        return get ? api_certificates(in, c) : method_not_allowed(c, "GET");
    if (strcmp(rest, "/events") == 0)
        return get ? api_events(in, c) : method_not_allowed(c, "GET");
    if (strcmp(rest, "/replay") == 0)
        return post ? api_replay(in, c, who) : method_not_allowed(c, "POST");
    if (strncmp(rest, "/events/", 8) == 0 && rest[8] != '\0') {
        const char *id = rest + 8;
        size_t n = strlen(id);
        if (post && n > 7 && strcmp(id + n - 7, "/replay") == 0) {
            char *ev = strndup(id, n - 7);
            if (ev == NULL)
                return MHD_NO;
            enum MHD_Result rc = api_replay_event(in, c, ev, who);
            free(ev);
            return rc;
        }
        if (get)
            return api_event(in, c, id);
        return method_not_allowed(c, n > 7 && strcmp(id + n - 7, "/replay") == 0 ? "POST"
                                                                                   : "GET");
    }
    return http_reply_error(c, MHD_HTTP_NOT_FOUND, "not_found", NULL, NULL, NULL,
                            "no API endpoint at %.200s (/api/certificates, /api/events, "
                            "/api/events/{id}, POST /api/events/{id}/replay, POST /api/replay)",
                            url);
}
