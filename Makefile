# Two entry points for users: `make serve` and `make test`. Both install what is missing.
BUILD_DIR ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?= -DCMAKE_BUILD_TYPE=Release
BUILD_TARGETS ?= all

SANITIZE_DIR ?= build-sanitize
# What `make sanitize` runs (a ctest -R regex); the default is the whole suite.
SANITIZE_TESTS ?= .

.PHONY: deps configure build test serve clean sanitize thread-safety

deps:
	./scripts/install-deps.sh

configure: deps
	@if [ ! -f $(BUILD_DIR)/CMakeCache.txt ]; then cmake -S . -B $(BUILD_DIR) $(CMAKE_FLAGS); fi

build: configure
	cmake --build $(BUILD_DIR) -j $(JOBS) --target $(BUILD_TARGETS)

test: build
	cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS)

# ASan + UBSan in a separate build dir. Leak checking is off: libtorch keeps global allocations
# for the life of the process. UBSan stops at the first finding (-fno-sanitize-recover).
sanitize: deps
	@if [ ! -f $(SANITIZE_DIR)/CMakeCache.txt ]; then \
	  cmake -S . -B $(SANITIZE_DIR) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSPRITEDIFF_SANITIZE=ON; fi
	cmake --build $(SANITIZE_DIR) -j $(JOBS)
	cd $(SANITIZE_DIR) && ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:detect_odr_violation=0 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure -j $(JOBS) -R '$(SANITIZE_TESTS)'

serve: build
	./$(BUILD_DIR)/bin/spritediffd serve

# Clang's thread-safety analysis over the daemon's library (GUARDED_BY and friends from
# common/thread_annotations.h): a separate build directory, clang++, warnings as errors.
TSA_BUILD_DIR ?= build-thread-safety
thread-safety: deps
	@if [ ! -f $(TSA_BUILD_DIR)/CMakeCache.txt ]; then \
	  cmake -S . -B $(TSA_BUILD_DIR) -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER=clang++ \
	    -DCMAKE_CXX_FLAGS="-Wthread-safety -Werror=thread-safety"; fi
	cmake --build $(TSA_BUILD_DIR) -j $(JOBS) --target spritediff_server

clean:
	rm -rf $(BUILD_DIR)
