/*
 * server.h -- the top of certhook: the configuration (config.c), `serve` (server.c: the
 * start-up and shutdown order of the layers, reloads) and the command line's C functions
 * (cli.c: luaopen_certhook_cli, which no handler state loads).
 */
#ifndef CERTHOOK_SERVER_H
#define CERTHOOK_SERVER_H

#include <lua.h>

#include "certhook.h"
#include "dispatch/dispatch.h"
#include "intake/intake.h"

struct source;

struct config {
    struct intake_config in;  /* listen, admin, tls, limits, the sources (below) */
    struct source *sources;   /* owned; in.sources points at them */
    size_t nsources;
    char *handlers, *data;
    size_t max_certificates;  /* certificates with metrics series of their own */
    int log_level, log_text;  /* log.format = "text" */
    struct delivery_cfg delivery;
    double reload_timeout;    /* reload.timeout: seconds loading the handler files may take */
    struct watchdog_cfg watchdog;
    struct poller_def *pollers; /* owned */
    size_t npollers;
    double busy_timeout;      /* journal: seconds to wait for a locked database */
    double retention;         /* journal: seconds finished events are kept */
    size_t max_wal;           /* journal: bytes the WAL may reach before it is truncated */
    char *lua_path, *lua_cpath; /* package paths of every state certhook creates */
};

/* Reads the config table at idx (as the CLI built it). 0, or -1 with a message in err. */
int config_from_lua(lua_State *L, int idx, struct config *c, char *err, size_t errlen);
void config_free(struct config *c);

/* Rereads the configuration file into c (for a reload): 0, or -1 with err. */
typedef int (*config_loader)(void *cls, struct config *c, char *err, size_t errlen);
/* Serves until a stop signal; takes c (heap-allocated). 0 after a clean stop. */
int server_run(struct config *c, config_loader load, void *load_cls, char *err, size_t errlen);
/* Events an earlier certhook journaled with only their body: normalized now (journal_upgrade),
 * by their provider. Returns how many, or -1 with err. */
int server_upgrade_journal(struct journal *j, char *err, size_t errlen);

int luaopen_certhook_cli(lua_State *L);

#endif
