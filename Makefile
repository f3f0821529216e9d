# certhook -- build, test, run, install.
#
#   make            build the C module (build/certhook/core.so) and build/certhook-dev, a
#                   launcher that runs the CLI from this tree
#   make test       install missing Debian packages, build, run every test; the last line
#                   says "N passed, M failed"
#   make run        install missing Debian packages, build, serve examples/ with a demo secret
#                   (LISTEN=ADDR:PORT, ADMIN=ADDR:PORT: other addresses than 8080 and 9090)
#   make memcheck   serve sessions and CLI runs under valgrind: no memory error, no leak
#   make bench      intake and end-to-end benchmark (tests/bench/)
#   make install    install into PREFIX (LuaRocks passes LUADIR, LIBDIR, BINDIR instead)
#   SANITIZE=1      build with ASan + UBSan into build/san (make SANITIZE=1 test)
#
# LuaRocks (build.type = "make") passes the variables below; each has a default so a plain
# `make` works on Debian 12.

LUA          ?= lua5.4
LUA_VERSION  ?= 5.4
PREFIX       ?= /usr/local
LUA_INCDIR   ?= /usr/include/lua$(LUA_VERSION)
LUADIR       ?= $(PREFIX)/share/lua/$(LUA_VERSION)
LIBDIR       ?= $(PREFIX)/lib/lua/$(LUA_VERSION)
BINDIR       ?= $(PREFIX)/bin
CC           ?= cc
CFLAGS       ?= -O2 -g -fPIC
LIBFLAG      ?= -shared
PKG_CONFIG   ?= pkg-config
DEP_CFLAGS   ?= $(shell $(PKG_CONFIG) --cflags libmicrohttpd libcurl sqlite3 libpq libssl libcrypto gnutls 2>/dev/null)
DEP_LIBS     ?= $(shell $(PKG_CONFIG) --libs libmicrohttpd libcurl sqlite3 libpq libssl libcrypto gnutls 2>/dev/null || echo -lmicrohttpd -lcurl -lsqlite3 -lpq -lssl -lcrypto -lgnutls)

# systemd's sd_notify (Type=notify, watchdog) when libsystemd is there; optional.
SYSTEMD_CFLAGS ?= $(shell $(PKG_CONFIG) --exists libsystemd 2>/dev/null && echo -DHAVE_SYSTEMD)
SYSTEMD_LIBS   ?= $(shell $(PKG_CONFIG) --libs libsystemd 2>/dev/null)
override DEP_LIBS += $(SYSTEMD_LIBS)

WARN     = -Wall -Wextra -Wshadow -Wmissing-prototypes -Wstrict-prototypes
BUILD    = build
ifeq ($(SANITIZE),1)
BUILD    = build/san
SANFLAGS = -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
endif
GEN      = $(BUILD)/gen
ALL_CFLAGS = $(CFLAGS) -fPIC -std=gnu11 -D_GNU_SOURCE $(WARN) $(SANFLAGS) -Isrc -I$(GEN) -I$(LUA_INCDIR) $(DEP_CFLAGS) \
             $(SYSTEMD_CFLAGS) -MMD -MP
ALL_LIBS   = $(DEP_LIBS) -lpthread -lm

SRCS   = $(wildcard src/*.c src/*/*.c)
OBJS   = $(SRCS:src/%.c=$(BUILD)/obj/%.o)
MODULE = $(BUILD)/certhook/core.so
LAUNCH = $(BUILD)/certhook-dev
UNITS  = $(patsubst tests/unit/%.c,$(BUILD)/unit/%,$(wildcard tests/unit/test_*.c))
SINK   = $(BUILD)/sink
SQL_HEADERS = $(GEN)/sql_sqlite.h $(GEN)/sql_pg.h

# Debian packages: to build and run, and additionally to test.
RUN_DEBS  = gcc libc6-dev pkg-config lua5.4 liblua5.4-dev lua-cjson libmicrohttpd-dev \
            libcurl4-openssl-dev libsqlite3-dev libpq-dev libssl-dev libgnutls28-dev \
            libsystemd-dev openssl curl
# postgresql-15: the tests start a PostgreSQL of their own (tests/helpers/pg.lua)
TEST_DEBS = $(RUN_DEBS) lua-busted lua-socket sqlite3 systemd procps faketime slowhttptest \
            postgresql-15 postgresql-client-15
# promtool (checks /metrics and the alert rules), and the browser the console's specs drive
# (tests/e2e/console_browser_spec.lua), without their recommended extras
TEST_LEAN_DEBS = prometheus chromium
# npm's playwright-core drives that chromium: installed into build/node (never committed)
PLAYWRIGHT_VERSION = 1.65.2
PLAYWRIGHT = build/node/node_modules/playwright-core/package.json

.PHONY: all test memcheck run bench install clean deps-run deps-test deps-bench deps-memcheck deps-npm unit

all: $(MODULE) $(LAUNCH)

$(BUILD)/obj/%.o: src/%.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c -o $@ $<

# The journal's schema: the migrations of each store, src/journal/sql/<store>/NNNN_<what>.sql,
# made a header of C strings, one per file in name order, that store_<store>.c includes as its
# migrations[]. (Made before any object is compiled; -MMD then tracks who includes them.)
$(OBJS): | $(SQL_HEADERS) $(GEN)/console.h
$(GEN)/sql_sqlite.h: $(sort $(wildcard src/journal/sql/sqlite/*.sql))
$(GEN)/sql_pg.h: $(sort $(wildcard src/journal/sql/pg/*.sql))
$(GEN)/sql_%.h: Makefile
	@mkdir -p $(dir $@)
	@{ echo '/* made by the Makefile from src/journal/sql/$*: do not edit */'; \
	   for f in $(filter %.sql,$^); do \
	     echo "/* $$f */"; sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/.*/"&\\n"/' "$$f"; echo ','; \
	   done; } >$@.tmp && mv $@.tmp $@

# The console's page (src/intake/console/: index.html, console.js, console.css), made C strings
# console_<file name, dots as _>[] that api.c serves.
CONSOLE = $(sort $(wildcard src/intake/console/*))
$(GEN)/console.h: $(CONSOLE) Makefile
	@mkdir -p $(dir $@)
	@{ echo '/* made by the Makefile from src/intake/console: do not edit */'; \
	   for f in $(CONSOLE); do \
	     echo "static const char console_$$(basename $$f | tr '.-' '__')[] ="; \
	     sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/.*/"&\\n"/' "$$f"; echo ';'; \
	   done; } >$@.tmp && mv $@.tmp $@

$(MODULE): $(OBJS)
	@mkdir -p $(dir $@)
	$(CC) $(LIBFLAG) $(SANFLAGS) -o $@ $(OBJS) $(ALL_LIBS)

# Runs the CLI from this tree (tests, make run); installed copies use LuaRocks' wrapper.
# A sanitizer build preloads libasan into the (uninstrumented) Lua interpreter.
ifeq ($(SANITIZE),1)
PRELOAD = export LD_PRELOAD="$(shell $(CC) -print-file-name=libasan.so) $$LD_PRELOAD" ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:$$ASAN_OPTIONS" UBSAN_OPTIONS="print_stacktrace=1:$$UBSAN_OPTIONS"
endif
$(LAUNCH): Makefile
	@mkdir -p $(dir $@)
	@{ echo '#!/bin/sh'; \
	   echo 'export LUA_PATH="$(CURDIR)/lua/?.lua;$(CURDIR)/lua/?/init.lua;;"'; \
	   echo 'export LUA_CPATH="$(CURDIR)/$(BUILD)/?.so;;"'; \
	   echo '$(PRELOAD)'; \
	   echo 'exec $(LUA) $(CURDIR)/lua/bin/certhook "$$@"'; } >$@
	@chmod +x $@

# The CLI under valgrind memcheck (make memcheck): every run writes valgrind.<pid>.log in the
# current directory and exits 99 on a memory error or a leak.
VALGRIND = $(BUILD)/certhook-valgrind
$(VALGRIND): Makefile
	@mkdir -p $(dir $@)
	@{ echo '#!/bin/sh'; \
	   echo 'export LUA_PATH="$(CURDIR)/lua/?.lua;$(CURDIR)/lua/?/init.lua;;"'; \
	   echo 'export LUA_CPATH="$(CURDIR)/$(BUILD)/?.so;;"'; \
	   echo 'exec valgrind --leak-check=full --show-leak-kinds=definite,indirect,possible --child-silent-after-fork=yes \'; \
	   echo '  --errors-for-leak-kinds=definite,indirect,possible --error-exitcode=99 \'; \
	   echo '  --log-file=valgrind.%p.log $(LUA) $(CURDIR)/lua/bin/certhook "$$@"'; } >$@
	@chmod +x $@

$(BUILD)/unit/%: tests/unit/%.c $(OBJS)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $< $(OBJS) $(ALL_LIBS) -llua$(LUA_VERSION)

# The HTTP server tests and benchmarks send certhook.http requests to.
$(SINK): tests/helpers/sink.c $(BUILD)/obj/base/buf.o
	$(CC) $(ALL_CFLAGS) -o $@ $< $(BUILD)/obj/base/buf.o $(DEP_LIBS) -lpthread

unit: $(UNITS) $(SINK)

test: deps-test all unit $(PLAYWRIGHT)
	@BUILD=$(BUILD) LUA=$(LUA) sh tests/run.sh

$(PLAYWRIGHT):
	@command -v npm >/dev/null || $(MAKE) --no-print-directory deps-npm
	npm install --prefix build/node --no-save --no-audit --no-fund --loglevel=error \
		playwright-core@$(PLAYWRIGHT_VERSION)

# Real serve sessions and CLI runs under valgrind: no memory error, no leak (CI runs it).
memcheck: deps-memcheck all unit $(VALGRIND)
	@BUILD=$(BUILD) LUA=$(LUA) sh tests/run.sh memcheck

# make run's addresses: webhooks, admin
LISTEN ?= 127.0.0.1:8080
ADMIN  ?= 127.0.0.1:9090

run: deps-run all
	@LISTEN=$(LISTEN) ADMIN=$(ADMIN) sh tests/demo.sh $(CURDIR)/$(LAUNCH)

# What a durable journal alone costs per event here (no HTTP, no Lua): make bench's part 4.
FLOOR = $(BUILD)/journal_floor
$(FLOOR): tests/bench/journal_floor.c
	$(CC) $(ALL_CFLAGS) -o $@ $< $(DEP_LIBS)

bench: deps-bench all $(SINK) $(FLOOR)
	@BUILD=$(BUILD) sh tests/bench/run.sh

install: $(MODULE)
	install -d $(DESTDIR)$(LIBDIR)/certhook $(DESTDIR)$(LUADIR)/certhook $(DESTDIR)$(BINDIR)
	install -m 0755 $(MODULE) $(DESTDIR)$(LIBDIR)/certhook/core.so
	install -m 0644 lua/certhook/*.lua $(DESTDIR)$(LUADIR)/certhook/
	sed '1s|.*|#!/usr/bin/env $(LUA)|' lua/bin/certhook >$(DESTDIR)$(BINDIR)/certhook
	chmod 0755 $(DESTDIR)$(BINDIR)/certhook

clean:
	rm -rf build

# Installs the Debian packages that are missing (as root, on Debian); quiet when none are.
# $(2): more apt-get flags.
define install_debs
	@missing=$$(for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		if [ "$$(id -u)" != 0 ]; then echo "run as root, or: sudo apt-get install -y" $$missing; exit 1; fi; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get -o DPkg::Lock::Timeout=300 update -qq && \
		apt-get -o DPkg::Lock::Timeout=300 install -y -qq $(2) $$missing >/dev/null || exit 1; \
	fi
endef

deps-run:
	$(call install_debs,$(RUN_DEBS))

deps-test:
	$(call install_debs,$(TEST_DEBS))
	$(call install_debs,$(TEST_LEAN_DEBS),--no-install-recommends)

deps-npm:
	$(call install_debs,nodejs npm)

deps-memcheck: deps-test
	$(call install_debs,valgrind)

deps-bench:
	$(call install_debs,$(TEST_DEBS) wrk)

# libFuzzer targets (make fuzz) and their regression replays, run by make test.
-include tests/fuzz/fuzz.mk

-include $(OBJS:.o=.d)
