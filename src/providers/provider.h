/*
 * provider.h -- what the provider layer offers: the providers (a table, registry.c), sources
 * (a provider configured under a name, source.c), a webhook request's authentication and its
 * normalization into canonical events (DESIGN §3-5), and the canonical event itself: built as
 * a Lua table, packed into bytes for the journal and unpacked for handlers (event.c), JSON
 * through lua-cjson. Secrets and JWTs (secret.c, jwt.c) are here because providers check them.
 *
 * Adding a provider: one file defining a `const struct provider`, one line in registry.c,
 * fixtures and tests. Nothing above this layer names a provider.
 */
#ifndef CERTHOOK_PROVIDER_H
#define CERTHOOK_PROVIDER_H

#include <lua.h>

#include "base/base.h"

/* ---- requests and providers ---------------------------------------------------------------- */

/* What a provider sees of a webhook request; intake fills it. The command line and the
 * journal's upgrade fill only method, body and received_at (use request_header, request_query:
 * they return NULL there). */
struct request {
    const char *method; /* "POST", "OPTIONS" */
    const char *(*header)(const struct request *r, const char *name); /* any case; NULL: absent */
    const char *(*query)(const struct request *r, const char *name);  /* URL argument; NULL */
    /* Calls fn for every header (query 0) or URL argument (query 1), in the order sent. */
    void (*each)(const struct request *r, int query,
                 void (*fn)(void *cls, const char *name, const char *value), void *cls);
    /* GETs url -- which the provider has checked is one it may reach -- over HTTPS with the
     * peer verified, within timeout seconds, into out (at most max bytes): 0 with the HTTP
     * status in *status, or -1 with err. It blocks the calling intake thread: providers cache
     * what they fetch. Set by whoever owns an HTTP client (intake); NULL: none, the provider
     * answers without what it would fetch. */
    int (*fetch)(const struct request *r, const char *url, double timeout, size_t max,
                 struct buf *out, long *status, char *err, size_t errlen);
    void *cls;            /* intake's */
    const char *body;     /* NULL while only the head is in */
    size_t body_len;
    double received_at;   /* time_now() when the head was in */
};

/* A reply a provider gives itself -- a subscription handshake -- instead of journaling. */
struct reply {
    unsigned status;     /* 0: none */
    struct buf body;     /* JSON text, or empty */
    const char *header, *value; /* one more header (static strings), or NULL */
};

struct source;
struct poller_def;
struct poll_ops;

/* A certificate status word of a provider and the canonical state it means (DESIGN §3). */
struct status_state {
    const char *status, *state;
};

struct provider {
    const char *name;                  /* sources say provider = "<name>" */
    int internal;                      /* certhook's own (the watchdog's): no source names it */
    const char *const *settings;       /* the source settings it reads, besides provider and
                                        * insecure; NULL-terminated */
    const char *const *content_types;  /* accepted besides application/json and +json; NULL */
    int cloudevents;                   /* takes CloudEvents: one in binary content mode (ce-*
                                        * headers, the data as the body) is normalized as its
                                        * structured form (source_normalize) */
    /* Reads its settings from the source table at t into s->priv and checks that s has
     * credentials unless s->insecure. 0, or -1 with a message naming the setting. */
    int (*configure)(lua_State *L, int t, struct source *s, char *err, size_t errlen);
    void (*release)(struct source *s); /* frees s->priv */
    /* The request's head is in, its body is not (and may never be read): 0 to read it; else a
     * status to refuse it with (401, 405...) and err saying why -- or, with r->status set, a
     * reply of its own (a handshake on OPTIONS). NULL: 0. */
    int (*head)(const struct source *s, const struct request *rq, struct reply *r, char *err,
                size_t errlen);
    /* The decoded body (JSON, fixed up: json_fixup) is at index body. Pushes an array of the
     * canonical events it holds (tables; at least one) and returns 0; or returns a status
     * (400 not recognizable, 401) with err; or sets r->status (a handshake) and returns 0
     * with nothing pushed. Each event carries its provider's facts and `raw`; the caller adds
     * id (when it has none), source, provider and received_at. */
    int (*normalize)(lua_State *L, int body, const struct source *s, const struct request *rq,
                     struct reply *r, char *err, size_t errlen);
    /* 1 when the decoded body at index body looks like this provider's (certhook normalize,
     * send and run without --provider). NULL: never. */
    int (*detect)(lua_State *L, int body);
    /* certhook send: the request a client of this provider makes to deliver the payload text
     * body..n to a source configured by the table at cfg (0: none in the config), given the
     * command line's options table at opts (secret, sign_key). Pushes the body to send (a
     * string) and sets the headers it needs in the table at hdr. 0, or -1 with err. NULL: the
     * payload as is. */
    int (*send)(lua_State *L, const char *body, size_t n, int cfg, int opts, int hdr, char *err,
                size_t errlen);
    /* certhook send --sample: pushes a valid payload (JSON text) of the canonical type, with a
     * fresh event id, as the provider sends it before send's signing; or, type NULL, an array
     * of the canonical types it has samples of. 0, or -1 with err (no sample of that type).
     * NULL: none. */
    int (*sample)(lua_State *L, const char *type, char *err, size_t errlen);
    /* Its certificate status words that are not a canonical state's name (any case), and the
     * state each means; {NULL} ends it. NULL: none. */
    const struct status_state *states;
    /* Its API as a poller asks it (DESIGN §6 "Pollers"); NULL: it cannot be polled. */
    const struct poll_ops *poll;
};

/* ---- pollers: a provider's API, asked on an interval ------------------------------------------ */

/* pollers.<name> = { provider = ..., interval =, timeout =, max_pages =, rate =, first_run =,
 * api =, <the provider's settings> } (poller_configure). */
struct poller_def {
    char *name;          /* its events' source is poll:<name> */
    char *source;        /* "poll:<name>" */
    const struct provider *provider;
    double interval;     /* seconds between two runs' starts */
    double timeout;      /* seconds a run may take */
    int max_pages;       /* pages a run reads at most */
    double rate;         /* requests per second at most (the provider's rate limit) */
    int first_run_events; /* first_run = "events": what the inventory never heard of is an
                          * event at the first run too (default "silent": quiet events) */
    char *api;           /* the API's base URL, without a trailing slash */
    void *priv;          /* the provider's settings */
};

/* One request of a run: GET url with these header lines ("Name: value"). */
#define POLL_MAX_HEADERS 4
struct poll_request {
    struct buf url;
    struct buf headers[POLL_MAX_HEADERS];
    size_t nheaders;
};

/* How a difference the poller found is told: the provider's own event (what its webhook would
 * have said) or only the inventory's (a quiet event: no handler runs). */
enum { POLL_QUIET = 0, POLL_EVENT = 1 };

/* A provider's side of a poller: it builds requests and parses what comes back; the I/O, the
 * diff against the inventory and the journal are the poller's (dispatch/poller.c). */
struct poll_ops {
    const char *api;                /* the default base URL */
    double rate;                    /* the default requests per second: within its limits */
    const char *const *settings;    /* its settings, NULL-terminated */
    /* Reads its settings from the table at t into p->priv; 0, or -1 with err naming one. */
    int (*configure)(lua_State *L, int t, struct poller_def *p, char *err, size_t errlen);
    void (*release)(struct poller_def *p);
    /* The request for page (1, 2, ...) into *rq (its bufs initialized). 0, or -1 with err. */
    int (*request)(const struct poller_def *p, int page, struct poll_request *rq, char *err,
                   size_t errlen);
    /* A page of the reply (the decoded, fixed-up JSON at body, HTTP status 2xx): pushes the
     * array of its observations and sets *more when another page follows. An observation is
     * {key = the inventory key its certificate has (event_certificate_key), hostname =,
     * status = the provider's word, expires_at = epoch or nil, item = what the API said}.
     * 0, or -1 with err (nothing pushed). An error reply (any status) is told by `error`. */
    int (*page)(lua_State *L, int body, const struct poller_def *p, int page, int *more,
                char *err, size_t errlen);
    /* The message of an error reply's decoded body at body (any status), pushed; 0: none. */
    int (*error)(lua_State *L, int body);
    /* The payload of a difference, as the provider's webhook carries it (its normalize reads
     * it): obs the observation (0: the certificate is gone from the API), entry the inventory's
     * entry (0: it has none), at the time now. Pushes it and returns POLL_EVENT when a webhook
     * would have told of it, POLL_QUIET when none would (the inventory learns quietly). */
    int (*change)(lua_State *L, const struct poller_def *p, int obs, int entry, double now);
};

/* Reads pollers.<name> (the table at t) into p: its provider (one with a poll side), interval,
 * timeout, first_run, api, and the provider's settings; an unknown setting is an error naming
 * it. 0, or -1 with err. */
int poller_configure(lua_State *L, int t, const char *name, struct poller_def *p, char *err,
                     size_t errlen);
void poller_release(struct poller_def *p);
void poll_request_free(struct poll_request *rq);
/* Pushes the inventory key of a certificate of provider: `<provider>:<id>`, or without an id
 * `<provider>:host:<hostname>` (the key event_pack gives it). */
void event_certificate_key(lua_State *L, const char *provider, const char *id,
                           const char *hostname);

/* A provider configured under a name: POST /hooks/<name>. */
struct source {
    char *name;
    const struct provider *provider;
    int insecure; /* accepts requests without credentials (insecure = true) */
    void *priv;   /* the provider's configuration */
    char *label;  /* the provider name its events carry when it is not provider->name (a Lua
                   * provider's own name); NULL: provider->name. Set by configure, freed here. */
};

/* ---- registry.c ------------------------------------------------------------------------------ */

extern const struct provider *const providers[]; /* every provider, NULL-terminated */
const struct provider *provider_find(const char *name); /* NULL if none */
/* The provider whose detect recognizes the decoded body at idx, or NULL. */
const struct provider *provider_detect(lua_State *L, int idx);
/* "cloudflare", "ibm-cm", ... joined by sep, for messages; polled: only those with a poll side. */
const char *provider_names(char *buf, size_t n, const char *sep, int polled);

/* Appends the versions of the libraries providers use ("OpenSSL ..."). */
void provider_versions(struct buf *b);

/* ---- source.c: sources, and reading settings from Lua tables --------------------------------- */

/* Reads the source table at t named name into s: its provider, insecure, and the provider's
 * settings; an unknown setting is an error naming it. 0, or -1 with err. */
int source_configure(lua_State *L, int t, const char *name, struct source *s, char *err,
                     size_t errlen);
void source_release(struct source *s);
/* The provider name the source's events carry (provider, metrics). */
const char *source_provider(const struct source *s);
/* The canonical states of a certificate (DESIGN §3), NULL-terminated. */
extern const char *const certificate_states[];
/* rq->header(rq, name) / rq->query(rq, name), NULL where the request has none. */
const char *request_header(const struct request *rq, const char *name);
const char *request_query(const struct request *rq, const char *name);
/* Whether a request of this Content-Type (NULL: none sent) may come to s: JSON, or a type its
 * provider lists. */
int source_accepts(const struct source *s, const char *content_type);
/* The whole request: parses the body, authenticates and normalizes it -- for a provider that
 * takes CloudEvents, a request in binary content mode as the structured event its ce-* headers,
 * Content-Type and body make. Pushes the decoded body
 * (for event_pack) and the array of finished events -- id (from the provider, else
 * "<source>:sha256:<hex of the body>", with ":<n>" for the n-th of several), source, provider,
 * received_at, the expiry of certificates stated in days, the state of each certificate --
 * and returns 0; or returns a status with err (nothing pushed), or 0 with
 * r->status set (a handshake; nothing pushed). */
int source_normalize(lua_State *L, const struct source *s, const struct request *rq,
                     struct reply *r, char *err, size_t errlen);

/* Settings: t[k] of the table at t, for the setting path..k (messages name it). Absent keeps
 * *out. 0, or -1 with err. */
int setting_string(lua_State *L, int t, const char *k, char **out, const char *path, char *err,
                   size_t errlen);
int setting_number(lua_State *L, int t, const char *k, double min, double max, double *out,
                   const char *path, char *err, size_t errlen);
int setting_table(lua_State *L, int t, const char *k, int *idx, const char *path, char *err,
                  size_t errlen); /* pushes it (*idx) when present, else *idx = 0 */
/* A string or a list of strings: fn(cls, s, err, errlen) for each. */
int setting_strings(lua_State *L, int t, const char *k, const char *path,
                    int (*fn)(void *cls, const char *s, char *err, size_t errlen), void *cls,
                    char *err, size_t errlen);
/* Every key of the table at t (the setting `name`) is one of keys, else an error naming it. */
int setting_keys(lua_State *L, int t, const char *name, const char *const *keys, char *err,
                 size_t errlen);

/* ---- event.c: the canonical event, JSON -------------------------------------------------------- */

/* Registers lua-cjson in L for json_decode and json_encode (raises if cjson is missing). */
void json_open(lua_State *L);
/* Pushes the decoded JSON text (as cjson gives it) or returns -1 with cjson's message. */
int json_decode(lua_State *L, const char *s, size_t n, char *err, size_t errlen);
/* Encodes the value at idx; returns a pointer valid while the pushed string stays on the
 * stack, or NULL with the error message pushed instead. Pushes exactly one value. */
const char *json_encode(lua_State *L, int idx, size_t *len);
/* Rewrites a decoded value at idx in place as Lua code expects it: JSON null members of
 * objects are dropped (absent = nil), numbers too large for a double are dropped like nulls,
 * whole floats become integers. Returns how many keys and strings hold a NUL byte. */
int json_fixup(lua_State *L, int idx);
void event_push_epoch(lua_State *L, double t); /* an integer when whole */
/* The summary of the finished event table at idx into *ev (its strings point into the table:
 * valid while it is on the stack) and the whole event, raw included, packed into out: where
 * it holds the decoded body at index body (source_normalize's; 0: none) -- its raw, usually --
 * only a mark is kept, and unpacking decodes the body again. 0, or -1 with err (a value an
 * event cannot hold). */
int event_pack(lua_State *L, int idx, int body, struct event *ev, struct buf *out, char *err,
               size_t errlen);
/* Pushes the event table packed in p..p+n, with the body it came in (for raw), a plain table;
 * -1 (nothing pushed) if it is not one. */
int event_unpack(lua_State *L, const void *p, size_t n, const char *body, size_t body_len);
/* Adds to the event table at idx what the inventory said when it was journaled (the JSON of
 * struct event's context; NULL: nothing): stale, repeats, previous. 0, or -1 if it does not
 * decode. */
int event_set_context(lua_State *L, int idx, const char *context);
/* "<source>:sha256:<hex of body>", the id of an event whose provider gives none. */
void event_hash_id(const char *source, const char *body, size_t n, struct buf *out);

/* ---- secret.c: shared secrets, compared in constant time -------------------------------------- */

struct secrets {
    unsigned char (*digest)[32]; /* SHA-256 of each: neither content nor length leaks */
    size_t n;
};
int secrets_add(struct secrets *s, const char *secret); /* 0 / -1 (out of memory) */
void secrets_free(struct secrets *s);
/* 1 if given (NUL-free, NULL: no) is one of the secrets; constant time in what it compares. */
int secrets_match(const struct secrets *s, const char *given);
void secret_digest(const char *s, size_t n, unsigned char out[32]); /* SHA-256 */

/* ---- jwt.c: RS256 JSON Web Tokens (IBM Certificate Manager) ------------------------------------ */

struct jwt_keys;
/* Adds the RSA public key of a PEM file (or PEM text) to *keys, creating the set. 0 / -1. */
int jwt_keys_add(struct jwt_keys **keys, const char *pem_or_path, char *err, size_t errlen);
void jwt_keys_free(struct jwt_keys *k);
/* Verifies an RS256 JWT against keys (NULL: decode only, no verification), reading its header
 * with L's JSON decoder; the stack is left as it was. On success *claims is the payload (the
 * claims' JSON text), malloc'd: the caller frees it. 0, or -1 with err. */
int jwt_verify(lua_State *L, const struct jwt_keys *keys, const char *token, size_t len,
               char **claims, size_t *claims_len, char *err, size_t errlen);
/* Signs claims with an RSA private key (PEM text or file): a malloc'd JWT, or NULL with err. */
char *jwt_sign(const char *pem_or_path, const char *claims, size_t n, char *err, size_t errlen);
int jwt_base64url_decode(const char *in, size_t n, unsigned char *out, size_t *outlen);

#endif
