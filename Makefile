# Two entry points for users: `make serve` and `make test`. Both install what is missing.
BUILD_DIR ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?= -DCMAKE_BUILD_TYPE=Release
BUILD_TARGETS ?= all

SANITIZE_DIR ?= build-sanitize
# What `make sanitize` runs (a ctest -R regex); the default is the whole suite.
SANITIZE_TESTS ?= .

.PHONY: deps configure build test serve clean sanitize thread-safety deb

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

# Clang's thread-safety analysis over the daemon's sources (GUARDED_BY and friends from
# common/thread_annotations.h), warnings as errors: clang -fsyntax-only with the main build's
# flags (scripts/thread-safety.sh), so it needs the main build's compile_commands.json only.
thread-safety: build
	BUILD_DIR=$(BUILD_DIR) JOBS=$(JOBS) ./scripts/thread-safety.sh

# The Debian package (CPack; cmake/packaging.cmake): $(BUILD_DIR)/spritediff_*.deb.
# deploy/verify-deb.sh installs it on a bare Debian 12 root and proves it.
deb: build
	cd $(BUILD_DIR) && cpack -G DEB

clean:
	rm -rf $(BUILD_DIR)
