# tests/fuzz/fuzz.mk -- libFuzzer targets and their replay tests; the Makefile includes it.
#
#   make unit      also builds $(BUILD)/unit/test_fuzz_<target>: the target linked with
#                  tests/fuzz/driver.c, replaying its seeds and tests/fuzz/regressions/<target>
#                  (tests/run.sh runs them with the other unit tests)
#   make fuzz      builds the targets with clang, libFuzzer, ASan and UBSan into build/fuzz and
#                  runs each for FUZZ_TIME seconds, one after the other; the corpus is kept in
#                  build/fuzz/corpus/<target>, findings go to build/fuzz/artifacts/<target>/
#   FUZZ_TIME=60   seconds per target
#   FUZZ_TARGETS   the targets to run (default: all of them)
#   FUZZ_FLAGS     more libFuzzer flags, e.g. FUZZ_FLAGS=-seed=1
#   make fuzz-ci   what CI runs: every target for FUZZ_CI_TIME seconds (30), one TAP line each
#                  and the closing "N passed, M failed"
#
# Targets: normalize (request bodies through src/providers and the event's encoding), jwt
# (providers/jwt.c: JWT decoding and RS256 verification), intake (HTTP request streams into
# the webhook listener).

FUZZ_NAMES   = normalize jwt intake
FUZZ_TARGETS ?= $(FUZZ_NAMES)
FUZZ_TIME    ?= 60
FUZZ_FLAGS   ?=
FUZZ_CC      ?= clang
FUZZ_DIR      = build/fuzz
FUZZ_KEY      = tests/fuzz/jwt-key.pem
FUZZ_DEFS     = -DFUZZ_PUBKEY='"$(CURDIR)/tests/fuzz/jwt-key.pub.pem"' \
                -DFUZZ_LUA_SCRIPT='"$(CURDIR)/examples/providers/alertmanager.lua"'
FUZZ_FIXTURES = $(wildcard tests/fixtures/*/*.json)

# ---- generated seeds and the replay tests (the project's compiler and flags) ----------------

FUZZ_RDIR    = $(BUILD)/fuzz-replay
FUZZ_SEEDS   = $(FUZZ_RDIR)/seeds
FUZZ_REPLAYS = $(FUZZ_NAMES:%=$(BUILD)/unit/test_fuzz_%)

# The inputs of each target: its seeds, then the findings saved from earlier runs.
FUZZ_SEEDDIRS_normalize = tests/fixtures/cloudflare tests/fixtures/ibm-cm tests/fixtures/aws-acm \
                          tests/fixtures/azure-keyvault tests/fixtures/ibm-sm tests/fixtures/digicert \
                          tests/fixtures/alertmanager $(FUZZ_SEEDS)/normalize
FUZZ_SEEDDIRS_jwt       = $(FUZZ_SEEDS)/jwt
FUZZ_SEEDDIRS_intake    = $(FUZZ_SEEDS)/intake
fuzz_empty       =
fuzz_space       = $(fuzz_empty) $(fuzz_empty)
fuzz_replay_dirs = $(subst $(fuzz_space),:,$(addprefix $(CURDIR)/,$(FUZZ_SEEDDIRS_$(1)) \
                   tests/fuzz/regressions/$(1)))

unit: $(FUZZ_REPLAYS)

$(FUZZ_NAMES:%=$(FUZZ_RDIR)/fuzz_%.o) $(FUZZ_RDIR)/seeds.o: $(FUZZ_RDIR)/%.o: tests/fuzz/%.c \
		tests/fuzz/fuzz.mk
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -Isrc $(FUZZ_DEFS) -c -o $@ $<

$(FUZZ_NAMES:%=$(FUZZ_RDIR)/driver_%.o): $(FUZZ_RDIR)/driver_%.o: tests/fuzz/driver.c \
		tests/fuzz/fuzz.mk
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -DFUZZ_TARGET='"$*"' -DFUZZ_DIRS='"$(call fuzz_replay_dirs,$*)"' \
		-c -o $@ $<

$(FUZZ_RDIR)/mkseeds: $(FUZZ_RDIR)/seeds.o $(OBJS)
	$(CC) $(ALL_CFLAGS) -o $@ $^ $(DEP_LIBS) -llua$(LUA_VERSION) -lpthread -lm

$(FUZZ_RDIR)/seeds.stamp: $(FUZZ_RDIR)/mkseeds $(FUZZ_KEY) $(FUZZ_FIXTURES)
	rm -rf $(FUZZ_SEEDS)
	$(FUZZ_RDIR)/mkseeds $(FUZZ_SEEDS) $(FUZZ_KEY) tests/fixtures
	@touch $@

$(FUZZ_REPLAYS): $(BUILD)/unit/test_fuzz_%: $(FUZZ_RDIR)/fuzz_%.o $(FUZZ_RDIR)/driver_%.o \
		$(OBJS) $(FUZZ_RDIR)/seeds.stamp
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $(filter %.o,$^) $(DEP_LIBS) -llua$(LUA_VERSION) -lpthread -lm

# ---- libFuzzer (make fuzz) ---------------------------------------------------------------------

FUZZ_SAN    = -fsanitize=address,undefined -fno-sanitize-recover=undefined
FUZZ_CFLAGS = -g -O1 -fno-omit-frame-pointer -std=gnu11 -D_GNU_SOURCE $(WARN) -Isrc -I$(GEN) -I$(LUA_INCDIR) $(DEP_CFLAGS) \
              -fsanitize=fuzzer-no-link $(FUZZ_SAN) -MMD -MP
FUZZ_OBJS   = $(SRCS:src/%.c=$(FUZZ_DIR)/obj/%.o)
FUZZ_BINS   = $(FUZZ_NAMES:%=$(FUZZ_DIR)/fuzz_%)

# libFuzzer flags of each target (-max_len: larger bodies than the seeds, not whole megabytes)
FUZZ_OPTS_normalize = -max_len=16384 -dict=tests/fuzz/normalize.dict
FUZZ_OPTS_jwt       = -max_len=4096 -dict=tests/fuzz/jwt.dict
FUZZ_OPTS_intake    = -max_len=16384 -dict=tests/fuzz/intake.dict

FUZZ_CI_TIME ?= 30

.PHONY: fuzz fuzz-ci fuzz-build deps-fuzz

$(FUZZ_OBJS): | $(SQL_HEADERS)
$(FUZZ_OBJS): $(FUZZ_DIR)/obj/%.o: src/%.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -c -o $@ $<

$(FUZZ_NAMES:%=$(FUZZ_DIR)/obj/fuzz_%.o): $(FUZZ_DIR)/obj/%.o: tests/fuzz/%.c tests/fuzz/fuzz.mk
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -Isrc $(FUZZ_DEFS) -c -o $@ $<

$(FUZZ_BINS): $(FUZZ_DIR)/fuzz_%: $(FUZZ_DIR)/obj/fuzz_%.o $(FUZZ_OBJS)
	$(FUZZ_CC) -fsanitize=fuzzer $(FUZZ_SAN) -o $@ $^ $(DEP_LIBS) -llua$(LUA_VERSION) \
		-lpthread -lm

deps-fuzz:
	$(call install_debs,clang libclang-rt-14-dev)

fuzz-build: deps-fuzz
	@$(MAKE) --no-print-directory $(FUZZ_BINS) $(FUZZ_RDIR)/seeds.stamp

# Runs the targets one after the other (tests/fuzz/run.sh); fails, naming the inputs, when
# one of them found something.
fuzz: fuzz-build
	@failed=; \
	$(foreach t,$(FUZZ_TARGETS),FUZZ_DIR=$(FUZZ_DIR) sh tests/fuzz/run.sh $(t) $(FUZZ_TIME) \
		"$(FUZZ_OPTS_$(t)) $(FUZZ_FLAGS)" $(FUZZ_SEEDDIRS_$(t)) || failed="$$failed $(t)";) \
	if [ -n "$$failed" ]; then echo "fuzz: findings in:$$failed"; exit 1; fi

fuzz-ci: fuzz-build
	@passed=0; failed=0; \
	$(foreach t,$(FUZZ_NAMES),if FUZZ_DIR=$(FUZZ_DIR) sh tests/fuzz/run.sh $(t) $(FUZZ_CI_TIME) \
		"$(FUZZ_OPTS_$(t))" $(FUZZ_SEEDDIRS_$(t)); then echo "ok - fuzz $(t), $(FUZZ_CI_TIME) s"; \
		passed=$$((passed + 1)); else echo "not ok - fuzz $(t)"; failed=$$((failed + 1)); fi;) \
	echo "$$passed passed, $$failed failed"; [ $$failed -eq 0 ]

-include $(wildcard $(FUZZ_RDIR)/*.d $(FUZZ_DIR)/obj/*.d)
