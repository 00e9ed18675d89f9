# jimbot-infra: the two commands a newcomer needs are `make run` and `make test`.
# Everything else is listed by `make help`. CMake does the real work underneath.

SANITIZE ?= 0
ifeq ($(SANITIZE),1)
BUILD ?= build-san
CMAKE_FLAGS += -DJB_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug
else
BUILD ?= build
endif
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
CTEST_FLAGS ?=
CONFIG ?= config/infrastructure.yaml
DATA_DIR ?= var

# Sanitizer runtime options for the tests: leaks are failures, UB aborts.
export ASAN_OPTIONS ?= detect_leaks=1:abort_on_error=0:strict_string_checks=1
export UBSAN_OPTIONS ?= print_stacktrace=1:halt_on_error=1

.PHONY: all build deps configure test run bench schema-check schema-baseline format lint fuzz clean help config-doc python-wheel

all: build

help:
	@echo "make run              install what is missing, build, start jimbotd in the foreground"
	@echo "make test             install what is missing, build, run every unit and integration test"
	@echo "make SANITIZE=1 test  the same under AddressSanitizer + UndefinedBehaviorSanitizer (build-san/)"
	@echo "make build            build only (binaries in $(BUILD)/bin)"
	@echo "make bench            build and run the benchmarks (bench/)"
	@echo "make schema-check     compare proto/ with the committed baseline; fail on breaking changes"
	@echo "make schema-baseline  accept today's schemas as the new baseline (on purpose only)"
	@echo "make format           clang-format every C source in place"
	@echo "make lint             cppcheck and the format check"
	@echo "make fuzz             build the libFuzzer harnesses with clang (build-fuzz/)"
	@echo "make config-doc       regenerate docs/configuration.md from the configuration table"
	@echo "make python-wheel     build the jimbot Python package as a wheel in $(BUILD)/dist/"
	@echo "make clean            remove build folders"

deps:
	@bash scripts/deps.sh

$(BUILD)/CMakeCache.txt:
	@cmake -S . -B $(BUILD) $(CMAKE_FLAGS) >/dev/null

configure: $(BUILD)/CMakeCache.txt

build: configure
	@cmake --build $(BUILD) -j $(JOBS)

test: deps build
	@$(MAKE) --no-print-directory schema-check
	@cd $(BUILD) && ctest --output-on-failure -j $(JOBS) $(CTEST_FLAGS)

run: deps build
	@mkdir -p $(DATA_DIR)
	exec $(BUILD)/bin/jimbotd -c $(CONFIG) --data-dir $(DATA_DIR)

bench: deps build
	@cmake --build $(BUILD) -j $(JOBS) --target benchmarks
	@bash bench/run.sh $(BUILD)
	@bash bench/compare.sh $(BUILD)

schema-check: build
	@$(BUILD)/bin/jimbot-schema-check proto/baseline.binpb $(BUILD)/proto/descriptor_set.binpb

schema-baseline: build
	@cp $(BUILD)/proto/descriptor_set.binpb proto/baseline.binpb
	@echo "proto/baseline.binpb updated: commit it with the schema change it accepts"

format:
	@find src include tests bench -name '*.[ch]' -o -name '*.cc' | xargs clang-format -i

lint:
	@find src include tests bench -name '*.[ch]' -o -name '*.cc' | xargs clang-format --dry-run -Werror
	@cd $(BUILD) 2>/dev/null && ctest -L lint --output-on-failure || (cmake -S . -B $(BUILD) >/dev/null && cd $(BUILD) && ctest -L lint --output-on-failure)

fuzz:
	@cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DJB_FUZZ=ON >/dev/null
	@cmake --build build-fuzz -j $(JOBS) --target fuzzers

config-doc: build
	@$(BUILD)/bin/jimbot-config-doc docs/configuration.md.in docs/configuration.md

python-wheel: build
	@bash scripts/python_wheel.sh $(BUILD)

clean:
	rm -rf build build-san build-fuzz
