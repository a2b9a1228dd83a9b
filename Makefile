# slipstream — build, test, demo, run, bench.
#
#   make            build/slipstream (release, C++20, -Werror)
#   make SAN=1      the same with ASan+UBSan, in build/san/
#   make test       install missing Debian packages, build, run every test
#   make demo       the main job end to end on loopback
#   make run        the gateway on conf/slipstream.ini
#   make bench      the benchmark against the peers (scripts/bench)
#   make fnlen      function and file size limits (scripts/fnlen.py, Universal Ctags)

CXX      ?= g++
SAN      ?= 0
ifeq ($(SAN),1)
BUILD    := build/san
OPT      := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined -Wno-maybe-uninitialized
else
BUILD    := build
OPT      := -O2 -g
endif

CXXFLAGS := -std=c++20 -Wall -Wextra -Werror -Wno-missing-field-initializers -pthread -I. $(OPT) $(EXTRA_CXXFLAGS)
LDFLAGS  := -pthread $(OPT)
LIBS     := -levent_openssl -levent_pthreads -levent -lcurl -llmdb -lxxhash -linih -lssl -lcrypto

MODULES  := conf policy store proxy proxy/sources proxy/fetch src
LIB_SRCS := $(filter-out src/main.cc,$(foreach m,$(MODULES),$(wildcard $(m)/*.cc)))
LIB_OBJS := $(LIB_SRCS:%.cc=$(BUILD)/obj/%.o)
MAIN_OBJ := $(BUILD)/obj/src/main.o
UT_SRCS  := $(wildcard tests/unit/*.cc)
UT_OBJS  := $(UT_SRCS:%.cc=$(BUILD)/obj/%.o)

BIN      := $(BUILD)/slipstream
UNIT     := $(BUILD)/unit_tests
RELAY    := $(BUILD)/ratelimit_relay

.PHONY: all deps test unit integration demo run bench clean format fnlen
all: $(BIN)

deps:
	@scripts/deps.sh

$(BUILD)/obj/%.o: %.cc
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) -MMD -MP -c $< -o $@

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

# The README's test command: set-up, build, unit tests, integration tests.
test: deps
	@$(MAKE) --no-print-directory -j$$(nproc) all $(UNIT)
	@$(MAKE) --no-print-directory unit integration

unit: $(UNIT)
	$(UNIT)

integration: $(BIN)
	python3 tests/integration/run.py --bin $(BIN)

demo: deps
	@$(MAKE) --no-print-directory -j$$(nproc) all
	@scripts/demo.sh $(BIN)

run: deps
	@$(MAKE) --no-print-directory -j$$(nproc) all
	$(BIN) run -c conf/slipstream.ini

bench:
	@scripts/deps.sh bench
	@$(MAKE) --no-print-directory -j$$(nproc) all $(RELAY)
	python3 scripts/bench/bench.py --bin $(BIN) --relay $(RELAY)

fnlen:
	python3 scripts/fnlen.py

format:
	clang-format -i $(foreach m,$(MODULES) tests/unit,$(wildcard $(m)/*.cc $(m)/*.h))

clean:
	rm -rf build

-include $(LIB_OBJS:.o=.d) $(MAIN_OBJ:.o=.d) $(UT_OBJS:.o=.d)
