/*
 * auth.h -- private to src/providers: the credentials most providers take (auth.c). A shared
 * secret sent verbatim in a header (one or a list of them, for rotation), and HTTP Basic
 * (username, password): read from a source's settings secret, header, username, password;
 * checked in constant time (secret.c); and set on the requests `certhook send` makes.
 */
#ifndef CERTHOOK_AUTH_H
#define CERTHOOK_AUTH_H

#include <lua.h>

#include "providers/provider.h"

struct auth {
    struct secrets secrets; /* secret = "..." or {"old", "new"} */
    char *header;           /* where the secret comes (the setting header, else the default) */
    struct secrets basic;   /* "username:password" */
};

/* Reads secret, header and (when basic) username and password from the source table at t.
 * default_header: the provider's header for the secret. 0, or -1 with err naming the setting.
 * Checks nothing about whether any is set: auth_has. */
int auth_configure(lua_State *L, int t, const struct source *s, struct auth *a,
                   const char *default_header, int basic, char *err, size_t errlen);
void auth_free(struct auth *a);
int auth_has(const struct auth *a); /* 1 when a credential is configured */
/* 1 when rq carries one of the credentials: the secret in the header (for the Authorization
 * header, also as "Bearer <secret>"), or Basic credentials. */
int auth_check(const struct auth *a, const struct request *rq);
/* certhook send: sets in the headers table at hdr what a client sends -- the secret (--secret
 * in the options at opts, else the first of the source's at cfg; 0: none) in the source's
 * header (else default_header), or, without a secret, the source's Basic credentials. */
void auth_send(lua_State *L, int cfg, int opts, int hdr, const char *default_header);
/* 0 when rq carries one of a's credentials, or a has none; else 401, err saying what was
 * missing (the header, and Basic credentials when the source takes them). */
int auth_refuse(const struct auth *a, const struct request *rq, char *err, size_t errlen);

/* The provider ops of a source whose only credential is the secret in a header (or Basic when
 * basic): s->priv is its struct auth. Without a credential the source needs insecure = true;
 * the error then says where the provider sends the secret (hint). */
int auth_source_configure(lua_State *L, int t, struct source *s, const char *default_header,
                          int basic, const char *hint, char *err, size_t errlen);
void auth_source_release(struct source *s);
int auth_source_head(const struct source *s, const struct request *rq, struct reply *r,
                     char *err, size_t errlen);

#endif
