/* inventory.c: the fold's previous_status and previous_state -- the status, the state before the
 * last event that changed each; the same status again, or none, leaves them; a new entry has
 * none. Against a store of no entries, whose writes are read back as JSON. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "journal/store.h"
#include "tap.h"

static struct buf written; /* the last entry written, as JSON */

static int get_none(struct store *s, const char *key, struct entry *e)
{
    (void)s, (void)key, (void)e;
    return 0;
}

static int put_json(struct store *s, const struct entry *e)
{
    (void)s;
    written.n = 0;
    return entry_json(e, &written);
}

static const struct store_ops ops = {.entry_get = get_none, .entry_put = put_json};

/* Folds an event of type saying of certificate "k" its status and state (NULL: not said);
 * returns the entry as written, "" when it could not be. */
static const char *fold(struct inventory *inv, const char *type, const char *status,
                        const char *state)
{
    static int n;
    char id[32];
    struct buf certs;
    buf_init(&certs);
    size_t fields = 1 + (status != NULL) + (state != NULL);
    pack_start(&certs);
    pack_table(&certs, 1, 0);
    pack_int(&certs, 1);
    pack_table(&certs, 0, (uint32_t)fields);
    pack_str(&certs, "key", 3), pack_str(&certs, "k", 1);
    if (status)
        pack_str(&certs, "status", 6), pack_str(&certs, status, strlen(status));
    if (state)
        pack_str(&certs, "state", 5), pack_str(&certs, state, strlen(state));
    pack_end(&certs);
    pack_end(&certs);
    snprintf(id, sizeof id, "e%d", ++n);
    struct event ev = {.id = id, .source = "src", .provider = "prov", .type = type,
                       .received_at = 1000 + n, .certs = certs.p, .certs_len = certs.n};
    int rc = inventory_fold(inv, NULL, &ops, &ev) | inventory_flush(inv, NULL, &ops);
    free(ev.context);
    buf_free(&certs);
    return rc == 0 && written.p ? written.p : "";
}

static int has(const char *json, const char *field, const char *value)
{
    char want[128];
    snprintf(want, sizeof want, "\"%s\":\"%s\"", field, value);
    return strstr(json, want) != NULL;
}

int main(void)
{
    struct inventory *inv = inventory_new(16);
    buf_init(&written);
    const char *e = fold(inv, "certificate.validation.failed", "pending_validation", "pending_validation");
    ok(has(e, "status", "pending_validation") && !strstr(e, "previous_status") &&
           !strstr(e, "previous_state"),
       "a new entry: no previous status or state (%s)", e);
    e = fold(inv, "certificate.validation.succeeded", "pending_issuance", "pending_issuance");
    ok(has(e, "status", "pending_issuance") && has(e, "previous_status", "pending_validation") &&
           has(e, "previous_state", "pending_validation"),
       "a status A then B: previous A (%s)", e);
    e = fold(inv, "certificate.validation.succeeded", "pending_issuance", "pending_issuance");
    ok(has(e, "previous_status", "pending_validation") && has(e, "previous_state", "pending_validation"),
       "then B again: previous still A (%s)", e);
    e = fold(inv, "certificate.expiration.upcoming", NULL, NULL);
    ok(has(e, "status", "pending_issuance") && has(e, "previous_status", "pending_validation"),
       "an event saying no status: both kept (%s)", e);
    e = fold(inv, "certificate.expiration.reached", NULL, "expired");
    ok(has(e, "status", "pending_issuance") && has(e, "previous_status", "pending_validation") &&
           has(e, "state", "expired") && has(e, "previous_state", "pending_issuance"),
       "a state changed alone: previous_state moves, previous_status stays (%s)", e);
    e = fold(inv, "certificate.deletion.succeeded", "active", NULL);
    ok(has(e, "status", "deleted") && has(e, "previous_status", "pending_issuance"),
       "deleted: the status before it is previous (%s)", e);
    inventory_free(inv);
    buf_free(&written);
    return done();
}
