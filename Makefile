# slipstream — build, test, demo, run, bench.
#
#   make            build/slipstream (release, C++20, -Werror)
#   make SAN=1      the same with ASan+UBSan, in build/san/
#   make SAN=thread the same with ThreadSanitizer, in build/tsan/
#   make test       install missing Debian packages, build, run every test
#   make test-san   the unit, fuzz smoke and integration tests with ASan+UBSan
#   make demo       the main job end to end on loopback
#   make run        the gateway on conf/slipstream.ini
#   make bench      the benchmark against the peers (scripts/bench)
#   make fuzz       every libFuzzer target, FUZZ_SECONDS (60) each (clang)
#   make fnlen      function and file size limits (scripts/fnlen.py, Universal Ctags)

CXX      ?= g++
SAN      ?= 0
ifeq ($(SAN),thread)
# ThreadSanitizer (issue 14): the front-end worker threads, the disk thread.
BUILD    := build/tsan
OPT      := -O1 -g -fno-omit-frame-pointer -fsanitize=thread -Wno-maybe-uninitialized -Wno-tsan
HARDEN   :=
else ifeq ($(SAN),1)
BUILD    := build/san
OPT      := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined,float-cast-overflow -fno-sanitize-recover=all -Wno-maybe-uninitialized
HARDEN   :=
else
BUILD    := build
OPT      := -O2 -g
# Debian's hardening build flags (dpkg-buildflags): fortified libc calls,
# stack protector, read-only relocations bound at start.
HARDEN   := -D_FORTIFY_SOURCE=2 -fstack-protector-strong -fstack-clash-protection -fcf-protection
HARDEN_LD := -Wl,-z,relro -Wl,-z,now
endif

# llhttp (Node.js's HTTP parser) is compiled from the C sources Debian's
# node-llhttp ships, in strict mode (scripts/deps.sh installs the package).
LLHTTP_DIR := /usr/share/llhttp
LLHTTP_INC := /usr/share/include
CXXFLAGS := -std=c++20 -Wall -Wextra -Werror -Wno-missing-field-initializers -pthread -I. -isystem $(LLHTTP_INC) -DLLHTTP_STRICT_MODE=1 $(OPT) $(HARDEN) $(EXTRA_CXXFLAGS)
CFLAGS_LLHTTP := -std=c11 -w -isystem $(LLHTTP_INC)/llhttp -DLLHTTP_STRICT_MODE=1 $(OPT) $(HARDEN)
LDFLAGS  := -pthread $(OPT) $(HARDEN_LD)
LIBS     := -levent_openssl -levent_pthreads -levent -lcurl -llmdb -lxxhash -lssl -lcrypto -lexpat -lcrypt

MODULES  := conf policy store proxy proxy/sources proxy/fetch src
LIB_SRCS := $(filter-out src/main.cc,$(foreach m,$(MODULES),$(wildcard $(m)/*.cc)))
# Sources made at build time: the version (from VERSION, the one place it is
# written) and the status page (src/status_page.html as a string literal).
VERSION  := $(shell cat VERSION)
GEN_SRCS := $(BUILD)/gen/version.cc $(BUILD)/gen/status_page.cc
LIB_OBJS := $(LIB_SRCS:%.cc=$(BUILD)/obj/%.o) $(GEN_SRCS:%.cc=$(BUILD)/obj/%.o) \
            $(BUILD)/obj/llhttp/llhttp.o $(BUILD)/obj/llhttp/api.o $(BUILD)/obj/llhttp/http.o
MAIN_OBJ := $(BUILD)/obj/src/main.o
UT_SRCS  := $(wildcard tests/unit/*.cc)
UT_OBJS  := $(UT_SRCS:%.cc=$(BUILD)/obj/%.o)

BIN      := $(BUILD)/slipstream
UNIT     := $(BUILD)/unit_tests
RELAY    := $(BUILD)/ratelimit_relay
BENCH_TABLES := main player https peers fast rss

.PHONY: all deps test test-san unit integration demo run bench $(addprefix bench-,$(BENCH_TABLES)) clean format fuzz fuzz-build fuzz-smoke deb fnlen
all: $(BIN)

deps:
	@scripts/deps.sh

$(BUILD)/obj/%.o: %.cc
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/gen/version.cc: VERSION
	@mkdir -p $(dir $@)
	printf '#include "src/version.h"\nconst char* slip::version() { return "%s"; }\n' "$(VERSION)" > $@

$(BUILD)/gen/status_page.cc: src/status_page.html
	@mkdir -p $(dir $@)
	{ printf '#include "src/status_page.h"\nstd::string_view slip::statusPage() {\n  return R"slip_html('; \
	  cat $<; printf ')slip_html";\n}\n'; } > $@

$(BUILD)/obj/llhttp/%.o: $(LLHTTP_DIR)/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_LLHTTP) -c $< -o $@

$(BUILD)/libslip.a: $(LIB_OBJS)
	@rm -f $@
	ar rcs $@ $^

$(BIN): $(MAIN_OBJ) $(BUILD)/libslip.a
	$(CXX) $(LDFLAGS) -o $@ $^ $(LIBS)

$(UNIT): $(UT_OBJS) $(BUILD)/libslip.a
	$(CXX) $(LDFLAGS) -o $@ $^ $(LIBS)

$(RELAY): scripts/bench/ratelimit_relay.cc
	@mkdir -p $(dir $@)
	$(CXX) -std=c++20 -O2 -Wall -Wextra -Werror -pthread -o $@ $<

# The README's test command: set-up, build, unit tests, fuzz smoke,
# integration tests.
test: deps
	@$(MAKE) --no-print-directory -j$$(nproc) all $(UNIT) fuzz-build
	@$(MAKE) --no-print-directory unit fuzz-smoke integration

unit: $(UNIT)
	$(UNIT)

# The same tests with AddressSanitizer and UndefinedBehaviorSanitizer
# (float-cast-overflow included, every report fatal, leaks too): the unit
# tests and the integration suite against build/san/, and the fuzz smoke
# (its targets are always sanitized). The integration runner fails the test
# during which any sanitized process wrote a report (SAN_LOGS, log_path);
# RSS bounds scale for ASan (SLIP_SANITIZER, harness.rss_limit).
SAN_LOGS := build/san/reports
ASAN_OPTS := halt_on_error=1:detect_leaks=1:quarantine_size_mb=16
UBSAN_OPTS := halt_on_error=1:print_stacktrace=1
SAN_OPTS := ASAN_OPTIONS=$(ASAN_OPTS) UBSAN_OPTIONS=$(UBSAN_OPTS)
test-san: deps
	@$(MAKE) --no-print-directory SAN=1 -j$$(nproc) build/san/slipstream build/san/unit_tests
	@$(MAKE) --no-print-directory -j$$(nproc) fuzz-build
	$(SAN_OPTS) build/san/unit_tests
	@$(MAKE) --no-print-directory fuzz-smoke
	@rm -rf $(SAN_LOGS) && mkdir -p $(SAN_LOGS)
	ASAN_OPTIONS=$(ASAN_OPTS):log_path=$(CURDIR)/$(SAN_LOGS)/asan \
	  UBSAN_OPTIONS=$(UBSAN_OPTS):log_path=$(CURDIR)/$(SAN_LOGS)/ubsan \
	  SLIP_SAN_LOG_DIR=$(CURDIR)/$(SAN_LOGS) SLIP_SANITIZER=1 python3 tests/integration/run.py --bin build/san/slipstream

integration: $(BIN)
	python3 tests/integration/run.py --bin $(BIN)

demo: deps
	@$(MAKE) --no-print-directory -j$$(nproc) all
	@scripts/demo.sh $(BIN)

run: deps
	@$(MAKE) --no-print-directory -j$$(nproc) all
	$(BIN) run -c conf/slipstream.ini

# make bench [TABLES=main,player,https,peers,fast,rss] [BENCH_ARGS="--quick ..."]; or make bench-TABLE
bench:
	@scripts/deps.sh bench
	@$(MAKE) --no-print-directory -j$$(nproc) all $(RELAY)
	python3 scripts/bench/bench.py --bin $(BIN) --relay $(RELAY) $(if $(TABLES),--tables $(TABLES)) $(BENCH_ARGS)

$(addprefix bench-,$(BENCH_TABLES)):
	@$(MAKE) --no-print-directory bench TABLES=$(@:bench-%=%)

# ---------------------------------------------------------------- fuzzing
# libFuzzer targets (tests/fuzz/<name>_fuzz.cc → build/fuzz/bin/<name>), built
# with clang, ASan and UBSan (float-cast-overflow included, every report
# fatal) over the pure modules they exercise. Seeds: tests/fuzz/corpus/<name>/;
# learnt corpus and findings stay in build/fuzz/ (scripts/fuzz.sh).
FUZZ_CXX      ?= clang++
FUZZ_CC       ?= clang
FUZZ_SECONDS  ?= 60
FUZZ_SMOKE_SECONDS ?= 3
FUZZ_DIR      := build/fuzz
FUZZ_SAN      := -fsanitize=address,undefined,float-cast-overflow -fno-sanitize-recover=all
FUZZ_CXXFLAGS := -std=c++20 -Wall -Wextra -Werror -Wno-missing-field-initializers -pthread -I. \
                 -isystem $(LLHTTP_INC) -DLLHTTP_STRICT_MODE=1 \
                 -O1 -g -fno-omit-frame-pointer $(FUZZ_SAN)
# The pure modules, the sources' reply parsers (they need only conf, policy
# and the header-only nlohmann JSON), and the front end's parsers of client
# bytes: HTTP requests (with llhttp, built by clang too), WebDAV PROPFIND
# bodies (libexpat), Basic credentials, the admin API's JSON bodies.
FUZZ_LIB_SRCS := $(wildcard conf/*.cc policy/*.cc) proxy/sources/replies.cc \
                 src/http_parser.cc src/webdav.cc src/auth.cc src/admin_body.cc
FUZZ_LIB_OBJS := $(FUZZ_LIB_SRCS:%.cc=$(FUZZ_DIR)/obj/%.o) \
                 $(addprefix $(FUZZ_DIR)/obj/llhttp/,llhttp.o api.o http.o)
FUZZ_SRCS     := $(wildcard tests/fuzz/*_fuzz.cc)
FUZZ_BINS     := $(FUZZ_SRCS:tests/fuzz/%_fuzz.cc=$(FUZZ_DIR)/bin/%)
FUZZ_LIBS     := -lssl -lcrypto -lcrypt -lexpat -levent_pthreads -levent

$(FUZZ_DIR)/obj/%.o: %.cc
	@mkdir -p $(dir $@)
	$(FUZZ_CXX) $(FUZZ_CXXFLAGS) -fsanitize=fuzzer-no-link -MMD -MP -c $< -o $@

$(FUZZ_DIR)/obj/llhttp/%.o: $(LLHTTP_DIR)/%.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) -std=c11 -w -isystem $(LLHTTP_INC)/llhttp -DLLHTTP_STRICT_MODE=1 -O1 -g \
	  -fno-omit-frame-pointer $(FUZZ_SAN) -fsanitize=fuzzer-no-link -c $< -o $@

$(FUZZ_DIR)/bin/%: $(FUZZ_DIR)/obj/tests/fuzz/%_fuzz.o $(FUZZ_LIB_OBJS)
	@mkdir -p $(dir $@)
	$(FUZZ_CXX) $(FUZZ_CXXFLAGS) -fsanitize=fuzzer -o $@ $^ $(FUZZ_LIBS)

# The targets' objects are intermediate files of the rule above: keep them.
.SECONDARY: $(FUZZ_SRCS:%.cc=$(FUZZ_DIR)/obj/%.o) $(FUZZ_LIB_OBJS)

fuzz-build: $(FUZZ_BINS)

# make fuzz [FUZZ_SECONDS=300] [FUZZ_TARGETS="range path"]
fuzz: deps
	@$(MAKE) --no-print-directory -j$$(nproc) fuzz-build
	scripts/fuzz.sh $(FUZZ_SECONDS) $(FUZZ_DIR)/bin $(FUZZ_TARGETS)

# A few seconds per target, in `make test`: fails on any finding.
fuzz-smoke: fuzz-build
	scripts/fuzz.sh $(FUZZ_SMOKE_SECONDS) $(FUZZ_DIR)/bin $(FUZZ_TARGETS)
# The Debian package: build/slipstream_<version>_<arch>.deb (scripts/deb.sh).
deb: deps
	@$(MAKE) --no-print-directory -j$$(nproc) all
	scripts/deb.sh $(BIN) $(VERSION)

fnlen:
	python3 scripts/fnlen.py

format:
	clang-format -i $(foreach m,$(MODULES) tests/unit tests/fuzz,$(wildcard $(m)/*.cc $(m)/*.h))

clean:
	rm -rf build

-include $(LIB_OBJS:.o=.d) $(MAIN_OBJ:.o=.d) $(UT_OBJS:.o=.d) $(FUZZ_LIB_OBJS:.o=.d)
-include $(FUZZ_SRCS:%.cc=$(FUZZ_DIR)/obj/%.d)
