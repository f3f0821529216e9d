/*
 * aws_acm.c -- the AWS Certificate Manager provider (DESIGN §3-5, PROVIDERS.md §3.1): ACM and
 * AWS Health events from Amazon EventBridge, delivered by an EventBridge API destination (the
 * event is the body) or through an SNS topic's HTTPS subscription (the event is the message).
 *
 * Authentication. API destinations: the connection's API key in a header (auth.c; default
 * x-api-key) or HTTP Basic, checked from the head. SNS (sources.<name>.sns): the message's
 * signature (SignatureVersion 1 and 2, sns.c) with the certificate at its SigningCertURL --
 * which must be https://sns.<region>.amazonaws.com/...pem -- fetched through the request's
 * fetch (intake's HTTP client) and cached per source, or read from sns.signing_cert; topics
 * outside sns.topic_arns are refused. SubscriptionConfirmation is confirmed by a GET of its
 * SubscribeURL (same host rule) when sns.confirm is true, else logged with the URL to open;
 * UnsubscribeConfirmation is logged. Neither is journaled. An event that came through SNS has
 * the inner event's id and raw, so one event sent both ways is one event.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "base/x509.h"
#include "providers/auth.h"
#include "providers/fields.h"
#include "providers/provider.h"
#include "providers/sns.h"

#define DEFAULT_HEADER "x-api-key"
#define FETCH_TIMEOUT 5.0        /* seconds a signing certificate or confirmation GET may take */
#define FETCH_MAX (64 * 1024)    /* bytes of a signing certificate */
#define FETCH_RETRY 30.0         /* seconds before a failed fetch of a URL is tried again */
#define CACHE_MAX 16             /* signing certificates kept per source */

/* ---- ACM and AWS Health events ------------------------------------------------------------------ */

static const struct {
    const char *detail_type, *action, *type, *status;
} acm_types[] = {
    {"ACM Certificate Available", "ISSUANCE", "certificate.issuance.succeeded", "ISSUED"},
    {"ACM Certificate Available", "RENEWAL", "certificate.renewal.succeeded", "ISSUED"},
    {"ACM Certificate Available", "IMPORT", "certificate.import.succeeded", "ISSUED"},
    {"ACM Certificate Available", "REIMPORT", "certificate.import.succeeded", "ISSUED"},
    {"ACM Certificate Approaching Expiration", NULL, "certificate.expiration.upcoming", NULL},
    {"ACM Certificate Expired", NULL, "certificate.expiration.reached", "EXPIRED"},
    {"ACM Certificate Renewal Action Required", NULL, "certificate.renewal.failed", NULL},
    {"ACM Certificate Revoked", NULL, "certificate.revocation.succeeded", "REVOKED"},
};

/* ACM's certificate statuses (PENDING_VALIDATION, ISSUED, INACTIVE, EXPIRED,
 * VALIDATION_TIMED_OUT, REVOKED, FAILED) that are not a canonical state's name; INACTIVE (not in
 * use) says nothing of one. */
static const struct status_state acm_states[] = {
    {"ISSUED", "active"},
    {"VALIDATION_TIMED_OUT", "failed"},
    {NULL, NULL},
};

/* AWS Health event codes of service ACM (DESIGN §4; the state change has no canonical type). */
static const struct {
    const char *code, *type;
} health_types[] = {
    {"AWS_ACM_RENEWAL_FAILURE", "certificate.renewal.failed"},
    {"CAA_CHECK_FAILURE", "certificate.renewal.failed"},
};

static const struct field acm_event_fields[] = {
    {"account", "account", F_STR},
    {"region", "region", F_STR},
    {"occurred_at", "time", F_TIME},
};
static const struct field acm_cert_fields[] = {
    {"name", "CommonName", F_STR},
    {"type", "CertificateType", F_STR},
    {"method", "DomainValidationMethod", F_STR},
    {"expires_at", "CertificateExpirationDate", F_TIME},
};

/* A CommonName that is a DNS name (ACM's may be any text: "My Awesome Service"). */
static int dns_like(const char *s)
{
    return s != NULL && *s != '\0' && strpbrk(s, " \t/:@") == NULL;
}

/* Appends the string s to the array at list unless it is there already. */
static void add_unique(lua_State *L, int list, const char *s)
{
    lua_Integer n = (lua_Integer)lua_rawlen(L, list);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, list, i);
        int same = strcmp(lua_tostring(L, -1), s) == 0;
        lua_pop(L, 1);
        if (same)
            return;
    }
    lua_pushstring(L, s);
    lua_rawseti(L, list, n + 1);
}

/* The certificate ARNs an event names: resources, and a Health event's affected entities. */
static void push_arns(lua_State *L, int e, int detail)
{
    lua_newtable(L);
    int arns = lua_gettop(L);
    int res = fields_get_table(L, e, "resources");
    for (lua_Integer i = 1; res && lua_rawgeti(L, res, i) != LUA_TNIL; i++) {
        if (lua_type(L, -1) == LUA_TSTRING && fields_has_prefix(lua_tostring(L, -1), "arn:aws"))
            add_unique(L, arns, lua_tostring(L, -1));
        lua_pop(L, 1);
    }
    int ents = fields_get_table(L, detail, "affectedEntities");
    for (lua_Integer i = 1; ents && lua_rawgeti(L, ents, i) != LUA_TNIL; i++) {
        const char *v = fields_get_string(L, lua_gettop(L), "entityValue");
        if (v != NULL && fields_has_prefix(v, "arn:aws"))
            add_unique(L, arns, v);
        lua_settop(L, ents);
    }
    lua_settop(L, arns);
}

/* Fills the event at ev from the EventBridge event at e: 0, or -1 with a message. */
static int fill(lua_State *L, int e, int ev, char *err, size_t errlen)
{
    if (lua_type(L, e) != LUA_TTABLE || lua_rawlen(L, e) > 0) {
        snprintf(err, errlen, "not a recognizable AWS event: expected a JSON object");
        return -1;
    }
    const char *source = fields_get_string(L, e, "source");
    const char *dtype = fields_get_string(L, e, "detail-type");
    int detail = fields_get_table(L, e, "detail");
    if (source == NULL && dtype == NULL) {
        snprintf(err, errlen, "not a recognizable AWS EventBridge event: expected \"source\" "
                              "(aws.acm, aws.health) and \"detail-type\"");
        return -1;
    }
    const char *type = "unknown", *status = NULL, *ptype = dtype;
    int health = 0;
    if (source != NULL && strcmp(source, "aws.acm") == 0 && dtype != NULL) {
        const char *action = fields_get_string(L, detail, "Action");
        for (size_t i = 0; i < COUNT(acm_types); i++) {
            if (strcmp(dtype, acm_types[i].detail_type) != 0 ||
                (acm_types[i].action != NULL &&
                 (action == NULL || strcmp(action, acm_types[i].action) != 0)))
                continue;
            type = acm_types[i].type;
            status = acm_types[i].status;
            break;
        }
    } else if (source != NULL && strcmp(source, "aws.health") == 0) {
        const char *service = fields_get_string(L, detail, "service");
        const char *code = fields_get_string(L, detail, "eventTypeCode");
        health = service != NULL && strcmp(service, "ACM") == 0;
        if (code != NULL)
            ptype = code;
        for (size_t i = 0; health && code && i < COUNT(health_types); i++)
            if (strcmp(code, health_types[i].code) == 0)
                type = health_types[i].type;
    }
    fields_set_str(L, ev, "type", type);
    fields_set_str(L, ev, "provider_type", ptype);
    lua_pushinteger(L, 1);
    lua_setfield(L, ev, "payload_version");
    if (fields_get_string(L, e, "id") != NULL) {
        lua_pushliteral(L, "aws-acm:");
        lua_insert(L, -2);
        lua_concat(L, 2);
        lua_setfield(L, ev, "id");
    }
    COPY(L, ev, e, acm_event_fields);
    if (fields_get(L, detail, "DaysToExpiry") == LUA_TNUMBER)
        lua_setfield(L, ev, "days_to_expiry");
    if (strcmp(type, "certificate.renewal.failed") == 0 && !health) {
        const char *why = fields_get_string(L, detail, "RenewalStatusReason");
        fields_set_str(L, ev, "error", why);
        fields_set_str(L, ev, "required_action",
                       why && strcmp(why, "PENDING_DOMAIN_VALIDATION") == 0 ? "validate"
                                                                            : "renew");
    } else if (health && strcmp(type, "unknown") != 0) {
        int descs = fields_get_table(L, detail, "eventDescription");
        if (descs && lua_rawgeti(L, descs, 1) == LUA_TTABLE &&
            fields_get_string(L, lua_gettop(L), "latestDescription") != NULL)
            lua_setfield(L, ev, "error");
    }

    push_arns(L, e, health ? detail : 0);
    int arns = lua_gettop(L);
    lua_Integer narns = (lua_Integer)lua_rawlen(L, arns);
    if (source == NULL || (strcmp(source, "aws.acm") != 0 && !health))
        return 0; /* another service's event: no certificate to speak of */
    lua_createtable(L, narns > 0 ? (int)narns : 1, 0);
    int list = lua_gettop(L);
    for (lua_Integer i = 1; i <= (narns > 0 ? narns : 1); i++) {
        lua_newtable(L);
        int c = lua_gettop(L);
        if (lua_rawgeti(L, arns, i) == LUA_TSTRING) {
            lua_pushvalue(L, -1);
            lua_setfield(L, c, "id");
            lua_setfield(L, c, "arn");
        } else {
            lua_pop(L, 1);
        }
        if (i == 1 && !health) { /* the detail describes the first (ACM names one) */
            COPY(L, c, detail, acm_cert_fields);
            fields_set_str(L, c, "status", status);
            lua_newtable(L);
            int domains = lua_gettop(L);
            const char *cn = fields_get_string(L, detail, "CommonName");
            if (dns_like(cn))
                add_unique(L, domains, cn);
            const char *san = fields_get_string(L, detail, "FirstSubjectAlternativeName");
            if (dns_like(san))
                add_unique(L, domains, san);
            if (lua_rawlen(L, domains) > 0) {
                lua_pushvalue(L, domains);
                lua_setfield(L, c, "domains");
                lua_rawgeti(L, domains, 1);
                lua_setfield(L, ev, "hostname");
            }
            lua_settop(L, c);
        }
        lua_pushnil(L);
        if (lua_next(L, c) != 0) {
            lua_pop(L, 2);
            lua_rawseti(L, list, (lua_Integer)lua_rawlen(L, list) + 1);
        } else {
            lua_pop(L, 1);
        }
    }
    if (lua_rawlen(L, list) > 0) {
        lua_rawgeti(L, list, 1);
        lua_setfield(L, ev, "certificate");
        lua_setfield(L, ev, "certificates");
    }
    return 0;
}

/* ---- the source's configuration ----------------------------------------------------------------- */

struct cached_cert {
    char *url;
    char *pem;        /* NULL: the fetch failed, at failed_at (time_mono), with status */
    size_t n;
    double failed_at;
    int status;
};

struct acm {
    struct auth auth;
    int sns;                  /* sources.<name>.sns is set: SNS messages are verified */
    char *signing_cert;       /* sns.signing_cert's PEM text, or NULL: fetch it */
    size_t signing_cert_len;
    char **topics;            /* sns.topic_arns; none: any topic */
    size_t ntopics;
    int confirm;              /* sns.confirm */
    pthread_mutex_t mu;       /* the cache: intake threads share the source */
    struct cached_cert cache[CACHE_MAX];
    size_t ncache;
    double last_fetch;        /* time_mono() of the last fetch of a URL not in the cache */
};

static int add_topic(void *cls, const char *arn, char *err, size_t errlen)
{
    struct acm *acm = cls;
    char **t = realloc(acm->topics, (acm->ntopics + 1) * sizeof *t);
    if (t == NULL || (t[acm->ntopics] = strdup(arn)) == NULL) {
        if (t != NULL)
            acm->topics = t;
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    acm->topics = t;
    acm->ntopics++;
    return 0;
}

/* Reads the file at path whole into *out (malloc'd, NUL-terminated). 0 / -1. */
static int read_file(const char *path, char **out, size_t *n)
{
    struct buf b;
    char chunk[4096];
    size_t got;
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return -1;
    buf_init(&b);
    while ((got = fread(chunk, 1, sizeof chunk, f)) > 0 && b.n < 1 << 20)
        if (buf_add(&b, chunk, got) != 0)
            break;
    int bad = ferror(f);
    fclose(f);
    if (bad || b.p == NULL) {
        buf_free(&b);
        return -1;
    }
    *n = b.n;
    *out = buf_take(&b);
    return 0;
}

static const char *const sns_keys[] = {"signing_cert", "topic_arns", "confirm", NULL};

static int configure(lua_State *L, int t, struct source *s, char *err, size_t errlen)
{
    char path[160];
    int sns;
    struct acm *acm = calloc(1, sizeof *acm);
    if (acm == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    pthread_mutex_init(&acm->mu, NULL);
    s->priv = acm;
    if (auth_configure(L, t, s, &acm->auth, DEFAULT_HEADER, 1, err, errlen) != 0)
        return -1;
    snprintf(path, sizeof path, "sources.%s.", s->name);
    if (setting_table(L, t, "sns", &sns, path, err, errlen) != 0)
        return -1;
    if (sns) {
        char *file = NULL, errs[300];
        snprintf(path, sizeof path, "sources.%s.sns", s->name);
        if (setting_keys(L, sns, path, sns_keys, err, errlen) != 0)
            return -1;
        snprintf(path, sizeof path, "sources.%s.sns.", s->name);
        acm->sns = 1;
        if (setting_string(L, sns, "signing_cert", &file, path, err, errlen) != 0 ||
            setting_strings(L, sns, "topic_arns", path, add_topic, acm, err, errlen) != 0) {
            free(file);
            return -1;
        }
        if (file != NULL) {
            struct x509_facts f;
            int rc = read_file(file, &acm->signing_cert, &acm->signing_cert_len);
            if (rc != 0)
                snprintf(err, errlen, "%ssigning_cert: cannot read %s", path, file);
            else if (x509_facts_pem(acm->signing_cert, acm->signing_cert_len, &f, errs,
                                    sizeof errs) != 0)
                snprintf(err, errlen, "%ssigning_cert: %s: %s", path, file, errs), rc = -1;
            else
                x509_facts_free(&f);
            free(file);
            if (rc != 0)
                return -1;
        }
        int type = lua_getfield(L, sns, "confirm");
        acm->confirm = lua_toboolean(L, -1);
        lua_pop(L, 1);
        if (type != LUA_TNIL && type != LUA_TBOOLEAN) {
            snprintf(err, errlen, "%sconfirm must be true or false", path);
            return -1;
        }
    }
    if (!auth_has(&acm->auth) && !acm->sns && !s->insecure) {
        snprintf(err, errlen, "sources.%s has no credentials: set secret (the API key of the "
                              "EventBridge connection, sent in the %s header) or username and "
                              "password (Basic), or sns = {...} for an SNS subscription, or "
                              "insecure = true to accept unauthenticated requests", s->name,
                 acm->auth.header);
        return -1;
    }
    return 0;
}

static void release(struct source *s)
{
    struct acm *acm = s->priv;
    if (acm == NULL)
        return;
    auth_free(&acm->auth);
    free(acm->signing_cert);
    for (size_t i = 0; i < acm->ntopics; i++)
        free(acm->topics[i]);
    free(acm->topics);
    for (size_t i = 0; i < acm->ncache; i++) {
        free(acm->cache[i].url);
        free(acm->cache[i].pem);
    }
    pthread_mutex_destroy(&acm->mu);
    free(acm);
    s->priv = NULL;
}

/* ---- SNS ---------------------------------------------------------------------------------------- */

/* The cache entry of url, or NULL. Under acm->mu. */
static struct cached_cert *cached(struct acm *acm, const char *url)
{
    for (size_t i = 0; i < acm->ncache; i++)
        if (strcmp(acm->cache[i].url, url) == 0)
            return &acm->cache[i];
    return NULL;
}

/* Records what fetching url gave: the certificate (status 0), or a failure status. A full
 * cache gives up the oldest failure's slot; failures are kept so that a URL that does not
 * serve a certificate is not fetched again for FETCH_RETRY seconds. Under acm->mu. */
static void remember(struct acm *acm, const char *url, const struct buf *pem, int status)
{
    struct cached_cert *c = cached(acm, url);
    if (c == NULL && acm->ncache < CACHE_MAX) {
        c = &acm->cache[acm->ncache];
        memset(c, 0, sizeof *c);
        if ((c->url = strdup(url)) == NULL)
            return;
        acm->ncache++;
    }
    for (size_t i = 0; c == NULL && i < acm->ncache; i++) /* the oldest failure */
        if (acm->cache[i].pem == NULL && (c == NULL || acm->cache[i].failed_at < c->failed_at))
            c = &acm->cache[i];
    if (c == NULL || c->pem != NULL)
        return;
    if (strcmp(c->url, url) != 0) {
        char *copy = strdup(url);
        if (copy == NULL)
            return;
        free(c->url);
        c->url = copy;
    }
    c->failed_at = time_mono();
    c->status = status;
    if (status == 0 && (c->pem = malloc(pem->n)) != NULL) {
        memcpy(c->pem, pem->p, pem->n);
        c->n = pem->n;
    }
}

/* The signing certificate at url into pem: sns.signing_cert, the cache, or a fetch. 0, or
 * 401 (the URL serves no valid certificate: the message is forged) or 503 (it could not be
 * fetched now) with err. */
static int signing_cert(struct acm *acm, const struct request *rq, const char *url,
                        struct buf *pem, char *err, size_t errlen)
{
    char why[300];
    if (acm->signing_cert != NULL)
        return buf_add(pem, acm->signing_cert, acm->signing_cert_len) == 0 ? 0 : 503;
    pthread_mutex_lock(&acm->mu);
    const struct cached_cert *c = cached(acm, url);
    double now = time_mono();
    int rc = -1; /* -1: fetch it */
    if (c != NULL && c->pem != NULL)
        rc = buf_add(pem, c->pem, c->n) == 0 ? 0 : 503;
    else if (c != NULL && now - c->failed_at < FETCH_RETRY)
        rc = c->status;
    else if (now - acm->last_fetch < 1) /* one fetch of a new URL a second, at most */
        rc = 503;
    if (rc == -1)
        acm->last_fetch = now;
    pthread_mutex_unlock(&acm->mu);
    if (rc > 0)
        snprintf(err, errlen, "the SNS signing certificate %s %s; retry later", url,
                 c != NULL ? "could not be fetched a moment ago"
                           : "is not fetched yet: another fetch runs");
    if (rc != -1)
        return rc;
    if (rq->fetch == NULL) {
        snprintf(err, errlen, "the SNS signing certificate %s cannot be fetched here: set "
                              "sns.signing_cert", url);
        return 503;
    }
    long status = 0;
    struct x509_facts f;
    if (rq->fetch(rq, url, FETCH_TIMEOUT, FETCH_MAX, pem, &status, why, sizeof why) != 0) {
        snprintf(err, errlen, "cannot fetch the SNS signing certificate %s: %s", url, why);
        rc = 503;
    } else if (status != 200) {
        snprintf(err, errlen, "the SNS signing certificate URL %s answered %ld", url, status);
        rc = 401;
    } else if (x509_facts_pem(pem->p ? pem->p : "", pem->n, &f, why, sizeof why) != 0) {
        snprintf(err, errlen, "%s is no certificate: %s", url, why);
        rc = 401;
    } else {
        double t = time_now();
        rc = t < f.not_before || t > f.not_after ? 401 : 0;
        if (rc != 0)
            snprintf(err, errlen, "the SNS signing certificate %s is not valid now", url);
        x509_facts_free(&f);
    }
    pthread_mutex_lock(&acm->mu);
    remember(acm, url, pem, rc);
    pthread_mutex_unlock(&acm->mu);
    if (rc == 0)
        log_msg(LOG_INFO, "aws-acm: fetched the SNS signing certificate %s", url);
    else
        pem->n = 0;
    return rc;
}

/* The SNS message fields of the body at t (strings or NULL; they stay valid in the body). */
static void sns_fields(lua_State *L, int t, struct sns_message *m)
{
    static const char *const names[] = {"Type", "Message", "MessageId", "Subject", "Timestamp",
                                        "TopicArn", "SubscribeURL", "Token", "SignatureVersion",
                                        "Signature", "SigningCertURL"};
    const char **out[] = {&m->type, &m->message, &m->message_id, &m->subject, &m->timestamp,
                          &m->topic_arn, &m->subscribe_url, &m->token, &m->signature_version,
                          &m->signature, &m->signing_cert_url};
    for (size_t i = 0; i < COUNT(names); i++) {
        lua_getfield(L, t, names[i]);
        *out[i] = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
        lua_pop(L, 1); /* the string stays in the table */
    }
}

static int is_sns(lua_State *L, int body)
{
    int top = lua_gettop(L);
    const char *type = lua_type(L, body) == LUA_TTABLE ? fields_get_string(L, body, "Type") : NULL;
    int yes = type != NULL && fields_get_string(L, body, "TopicArn") != NULL &&
              (strcmp(type, "Notification") == 0 || strcmp(type, "SubscriptionConfirmation") == 0 ||
               strcmp(type, "UnsubscribeConfirmation") == 0);
    lua_settop(L, top);
    return yes;
}

/* Checks the SNS message m: its topic, its certificate URL and signature. 0, or a status. */
static int sns_authenticate(const struct source *s, const struct request *rq,
                            const struct sns_message *m, char *err, size_t errlen)
{
    struct acm *acm = s->priv;
    char why[300];
    if (!acm->sns) {
        if (s->insecure)
            return 0;
        snprintf(err, errlen, "source %s takes no SNS messages: set sources.%s.sns = { "
                              "topic_arns = {...} } to verify and accept them", s->name, s->name);
        return 401;
    }
    int allowed = acm->ntopics == 0;
    for (size_t i = 0; i < acm->ntopics && m->topic_arn; i++)
        allowed |= strcmp(acm->topics[i], m->topic_arn) == 0;
    if (!allowed) {
        snprintf(err, errlen, "the SNS topic %.200s is not in sources.%s.sns.topic_arns",
                 m->topic_arn ? m->topic_arn : "(none)", s->name);
        return 401;
    }
    if (sns_check_url(m->signing_cert_url, 1, why, sizeof why) != 0) {
        snprintf(err, errlen, "SigningCertURL refused: %s", why);
        return 401;
    }
    struct buf pem;
    buf_init(&pem);
    int rc = signing_cert(acm, rq, m->signing_cert_url, &pem, err, errlen);
    if (rc == 0 && sns_verify(m, pem.p ? pem.p : "", pem.n, why, sizeof why) != 0) {
        snprintf(err, errlen, "the SNS message's signature: %s", why);
        rc = 401;
    }
    buf_free(&pem);
    return rc;
}

/* A subscription's confirmation or its end: logged, confirmed when configured; r is the
 * reply. 0, or a status with err. */
static int sns_subscription(const struct source *s, const struct request *rq,
                            const struct sns_message *m, struct reply *r, char *err,
                            size_t errlen)
{
    const struct acm *acm = s->priv;
    char why[300];
    struct log_line l;
    if (strcmp(m->type, "UnsubscribeConfirmation") == 0) {
        log_begin(&l, LOG_WARN, "aws-acm: the SNS subscription was deleted");
        log_str(&l, "source", s->name);
        log_str(&l, "topic_arn", m->topic_arn);
        log_str(&l, "resubscribe_url", m->subscribe_url);
        log_end(&l);
        r->status = 200;
        buf_adds(&r->body, "{\"status\":\"unsubscribed\"}");
        return 0;
    }
    if (sns_check_url(m->subscribe_url, 0, why, sizeof why) != 0) {
        snprintf(err, errlen, "SubscribeURL refused: %s", why);
        return 401;
    }
    if (!acm->confirm || rq->fetch == NULL) {
        log_begin(&l, LOG_WARN, "aws-acm: an SNS subscription waits for confirmation: open "
                                "subscribe_url, or set sns.confirm = true");
        log_str(&l, "source", s->name);
        log_str(&l, "topic_arn", m->topic_arn);
        log_str(&l, "subscribe_url", m->subscribe_url);
        log_end(&l);
        r->status = 200;
        buf_adds(&r->body, "{\"status\":\"pending\",\"message\":\"the subscription is not "
                           "confirmed: its SubscribeURL is in certhook's log\"}");
        return 0;
    }
    struct buf out;
    long status = 0;
    buf_init(&out);
    int got = rq->fetch(rq, m->subscribe_url, FETCH_TIMEOUT, FETCH_MAX, &out, &status, why,
                        sizeof why);
    buf_free(&out);
    if (got != 0 || status != 200) {
        if (got == 0)
            snprintf(why, sizeof why, "status %ld", status);
        snprintf(err, errlen, "confirming the SNS subscription to %.200s failed: %s",
                 m->topic_arn, why);
        return 503;
    }
    log_begin(&l, LOG_INFO, "aws-acm: confirmed the SNS subscription");
    log_str(&l, "source", s->name);
    log_str(&l, "topic_arn", m->topic_arn);
    log_end(&l);
    r->status = 200;
    buf_adds(&r->body, "{\"status\":\"confirmed\"}");
    return 0;
}

/* ---- the provider ------------------------------------------------------------------------------- */

static int head(const struct source *s, const struct request *rq, struct reply *r, char *err,
                size_t errlen)
{
    const struct acm *acm = s->priv;
    (void)r;
    if (request_header(rq, "x-amz-sns-message-type") != NULL)
        return 0; /* an SNS message: its signature is checked with the body */
    if (auth_refuse(&acm->auth, rq, err, errlen) != 0)
        return 401;
    if (!auth_has(&acm->auth) && !s->insecure) {
        snprintf(err, errlen, "source %s takes SNS messages only (sources.%s.sns); set secret "
                              "for an EventBridge API destination", s->name, s->name);
        return 401;
    }
    return 0;
}

/* Pushes the events of the EventBridge event(s) at e -- an object, or an array (a batch) --
 * each with raw = its event, onto the list at list. 0, or 400 with err. */
static int add_events(lua_State *L, int e, int list, char *err, size_t errlen)
{
    int top = lua_gettop(L);
    lua_Integer n = lua_type(L, e) == LUA_TTABLE ? (lua_Integer)lua_rawlen(L, e) : 0;
    for (lua_Integer i = n > 0 ? 1 : 0; i <= n; i++) {
        int one = e;
        if (n > 0) {
            lua_rawgeti(L, e, i);
            one = lua_gettop(L);
        }
        lua_createtable(L, 0, 16);
        int ev = lua_gettop(L);
        if (fill(L, one, ev, err, errlen) != 0) {
            lua_settop(L, top);
            return 400;
        }
        lua_settop(L, ev);
        lua_pushvalue(L, one);
        lua_setfield(L, ev, "raw");
        lua_rawseti(L, list, (lua_Integer)lua_rawlen(L, list) + 1);
        lua_settop(L, top);
    }
    return 0;
}

static int normalize(lua_State *L, int body, const struct source *s, const struct request *rq,
                     struct reply *r, char *err, size_t errlen)
{
    const struct acm *acm = s->priv;
    char msg[400];
    int top = lua_gettop(L);
    luaL_checkstack(L, 60, "normalize");
    lua_newtable(L);
    int list = lua_gettop(L);
    if (!is_sns(L, body)) {
        /* head checked the credentials unless the request said it was an SNS message */
        if ((auth_has(&acm->auth) && !auth_check(&acm->auth, rq)) ||
            (!auth_has(&acm->auth) && !s->insecure)) {
            lua_settop(L, top);
            snprintf(err, errlen, "missing or wrong %s header or Basic credentials (an SNS "
                                  "message needs Type, TopicArn and a signature)",
                     acm->auth.header);
            return 401;
        }
        int rc = add_events(L, body, list, err, errlen);
        if (rc != 0)
            lua_settop(L, top);
        return rc;
    }
    struct sns_message m;
    sns_fields(L, body, &m);
    int rc = sns_authenticate(s, rq, &m, err, errlen);
    if (rc != 0) {
        lua_settop(L, top);
        return rc;
    }
    if (strcmp(m.type, "Notification") != 0) {
        rc = sns_subscription(s, rq, &m, r, err, errlen);
        lua_settop(L, top);
        return rc;
    }
    /* the event is the message, as JSON; anything else is an unknown event */
    int inner = 0;
    if (m.message != NULL && json_decode(L, m.message, strlen(m.message), msg, sizeof msg) == 0)
        inner = lua_type(L, -1) == LUA_TTABLE && json_fixup(L, -1) == 0 ? lua_gettop(L) : 0;
    if (inner && add_events(L, inner, list, err, errlen) == 0) {
        double t;
        lua_settop(L, list);
        lua_rawgeti(L, list, 1);
        if (lua_getfield(L, -1, "occurred_at") == LUA_TNIL && m.timestamp != NULL &&
            time_parse_iso8601(m.timestamp, &t) == 0) {
            event_push_epoch(L, t);
            lua_setfield(L, -3, "occurred_at");
        }
        lua_settop(L, list);
        return 0;
    }
    /* raw: the message when it is a JSON object, else the SNS envelope */
    int raw = inner ? inner : body;
    lua_newtable(L);
    lua_replace(L, list); /* what add_events may have added is not kept */
    lua_createtable(L, 0, 8);
    fields_set_str(L, lua_gettop(L), "type", "unknown");
    fields_set_str(L, lua_gettop(L), "provider_type", m.subject);
    lua_pushinteger(L, 1);
    lua_setfield(L, -2, "payload_version");
    double t;
    if (m.timestamp != NULL && time_parse_iso8601(m.timestamp, &t) == 0) {
        event_push_epoch(L, t);
        lua_setfield(L, -2, "occurred_at");
    }
    lua_pushvalue(L, raw);
    lua_setfield(L, -2, "raw");
    lua_rawseti(L, list, 1);
    lua_settop(L, list);
    return 0;
}

static int detect(lua_State *L, int body)
{
    int top = lua_gettop(L), e = body, found = 0;
    if (is_sns(L, body))
        return 1;
    if (lua_type(L, body) == LUA_TTABLE && lua_rawlen(L, body) > 0 &&
        lua_rawgeti(L, body, 1) == LUA_TTABLE)
        e = lua_gettop(L);
    const char *src = lua_type(L, e) == LUA_TTABLE ? fields_get_string(L, e, "source") : NULL;
    if (src != NULL && fields_get_string(L, e, "detail-type") != NULL) {
        const char *svc = fields_get_string(L, fields_get_table(L, e, "detail"), "service");
        found = strcmp(src, "aws.acm") == 0 ||
                (strcmp(src, "aws.health") == 0 && svc != NULL && strcmp(svc, "ACM") == 0);
    }
    lua_settop(L, top);
    return found;
}

/* certhook send. With --sign-key: an SNS message signed with that RSA key (an EventBridge
 * event is wrapped into a Notification of the source's first topic; an SNS message is signed
 * again), as SNS posts it, text/plain. Otherwise: the event, with the API key or Basic
 * credentials an API destination connection sends. */
static int send(lua_State *L, const char *body, size_t n, int cfg, int opts, int hdr, char *err,
                size_t errlen)
{
    char ts[40], url[200], region[64] = "us-east-1";
    int top = lua_gettop(L);
    const char *key = fields_get_string(L, opts, "sign_key");
    if (key == NULL) {
        lua_settop(L, top);
        auth_send(L, cfg, opts, hdr, DEFAULT_HEADER);
        lua_pushlstring(L, body, n);
        return 0;
    }
    if (json_decode(L, body, n, err, errlen) != 0)
        return -1;
    int t = lua_gettop(L);
    if (!is_sns(L, t)) { /* wrap it */
        const char *topic = "arn:aws:sns:us-east-1:123456789012:certhook";
        int sns = fields_get_table(L, cfg, "sns");
        int type = fields_get(L, sns, "topic_arns");
        if (type == LUA_TTABLE)
            lua_rawgeti(L, -1, 1);
        if (lua_type(L, -1) == LUA_TSTRING)
            topic = lua_tostring(L, -1);
        /* arn:aws:sns:<region>:<account>:<name> */
        const char *r = strncmp(topic, "arn:aws", 7) == 0 ? strchr(topic + 7, ':') : NULL;
        r = r ? strchr(r + 1, ':') : NULL;
        if (r != NULL && strchr(r + 1, ':') != NULL) {
            size_t rn = (size_t)(strchr(r + 1, ':') - (r + 1));
            if (rn > 0 && rn < sizeof region)
                snprintf(region, sizeof region, "%.*s", (int)rn, r + 1);
        }
        lua_newtable(L);
        int w = lua_gettop(L);
        fields_set_str(L, w, "Type", "Notification");
        fields_push_filled(L, "{{id}}", NULL);
        lua_setfield(L, w, "MessageId");
        fields_set_str(L, w, "TopicArn", topic);
        lua_pushlstring(L, body, n);
        lua_setfield(L, w, "Message");
        time_format_iso8601(time_now(), ts);
        fields_set_str(L, w, "Timestamp", ts);
        fields_set_str(L, w, "SignatureVersion", "2");
        snprintf(url, sizeof url, "https://sns.%s.amazonaws.com/SimpleNotificationService-"
                                  "certhook.pem", region);
        fields_set_str(L, w, "SigningCertURL", url);
        t = w;
    }
    struct sns_message m;
    sns_fields(L, t, &m);
    int version = m.signature_version && strcmp(m.signature_version, "1") == 0 ? 1 : 2;
    char *sig = sns_sign(&m, key, version, err, errlen);
    if (sig == NULL) {
        lua_settop(L, top);
        return -1;
    }
    lua_pushstring(L, sig);
    free(sig);
    lua_setfield(L, t, "Signature");
    lua_pushstring(L, version == 1 ? "1" : "2");
    lua_setfield(L, t, "SignatureVersion");
    lua_pushliteral(L, "text/plain; charset=UTF-8");
    lua_setfield(L, hdr, "Content-Type");
    fields_set_str(L, hdr, "x-amz-sns-message-type", m.type);
    fields_set_str(L, hdr, "x-amz-sns-message-id", m.message_id);
    fields_set_str(L, hdr, "x-amz-sns-topic-arn", m.topic_arn);
    size_t len;
    const char *text = json_encode(L, t, &len);
    if (text == NULL) {
        snprintf(err, errlen, "cannot encode the SNS message: %s", lua_tostring(L, -1));
        lua_settop(L, top);
        return -1;
    }
    lua_replace(L, top + 1);
    lua_settop(L, top + 1);
    return 0;
}

/* An ACM event; %s: detail-type, then the detail's members. */
#define ACM_SAMPLE(dtype, detail)                                                                 \
    "{\"version\":\"0\",\"id\":\"{{id}}\",\"detail-type\":\"" dtype "\",\"source\":\"aws.acm\","  \
    "\"account\":\"123456789012\",\"time\":\"{{time}}\",\"region\":\"us-east-1\",\"resources\":"  \
    "[\"arn:aws:acm:us-east-1:123456789012:certificate/61f50cd4-45b9-4259-b049-d0a53682fa4b\"],"   \
    "\"detail\":{" detail "\"CommonName\":\"shop.example.com\",\"FirstSubjectAlternativeName\":"  \
    "\"www.shop.example.com\",\"ValidityInDays\":198,\"CertificateKeyPairOrigin\":"               \
    "\"AWS_MANAGED\"}}"
#define AVAILABLE(action, ctype)                                                                  \
    "\"Action\":\"" action "\",\"CertificateType\":\"" ctype "\",\"DomainValidationMethod\":"      \
    "\"DNS\",\"CertificateCreatedDate\":\"{{time}}\",\"CertificateExpirationDate\":"              \
    "\"{{expires}}\",\"DaysToExpiry\":{{days}},\"InUse\":true,\"Exported\":false,"

static const struct sample samples[] = {
    {"certificate.issuance.succeeded",
     ACM_SAMPLE("ACM Certificate Available", AVAILABLE("ISSUANCE", "AMAZON_ISSUED"))},
    {"certificate.renewal.succeeded",
     ACM_SAMPLE("ACM Certificate Available", AVAILABLE("RENEWAL", "AMAZON_ISSUED"))},
    {"certificate.import.succeeded",
     ACM_SAMPLE("ACM Certificate Available", AVAILABLE("IMPORT", "IMPORTED"))},
    {"certificate.expiration.upcoming",
     ACM_SAMPLE("ACM Certificate Approaching Expiration", "\"DaysToExpiry\":{{days}},")},
    {"certificate.expiration.reached",
     ACM_SAMPLE("ACM Certificate Expired",
                "\"CertificateType\":\"AMAZON_ISSUED\",\"DomainValidationMethod\":\"DNS\","
                "\"CertificateExpirationDate\":\"{{expires}}\",\"InUse\":true,\"Exported\":false,")},
    {"certificate.renewal.failed",
     ACM_SAMPLE("ACM Certificate Renewal Action Required",
                "\"CertificateType\":\"AMAZON_ISSUED\",\"DomainValidationMethod\":\"DNS\","
                "\"RenewalStatusReason\":\"PENDING_DOMAIN_VALIDATION\",\"DaysToExpiry\":{{days}},"
                "\"CertificateExpirationDate\":\"{{expires}}\",\"InUse\":true,"
                "\"Exported\":false,")},
    {"certificate.revocation.succeeded",
     ACM_SAMPLE("ACM Certificate Revoked",
                "\"CertificateType\":\"AMAZON_ISSUED\",\"CertificateExpirationDate\":"
                "\"{{expires}}\",\"Exportable\":true,")},
};

static int sample(lua_State *L, const char *type, char *err, size_t errlen)
{
    return SAMPLE(L, samples, type, err, errlen);
}

static const char *const settings[] = {"secret", "header", "username", "password", "sns", NULL};
static const char *const content_types[] = {"text/plain", NULL}; /* what SNS posts */

const struct provider aws_acm_provider = {
    .name = "aws-acm",
    .settings = settings,
    .content_types = content_types,
    .configure = configure,
    .release = release,
    .head = head,
    .normalize = normalize,
    .detect = detect,
    .send = send,
    .sample = sample,
    .states = acm_states,
};
