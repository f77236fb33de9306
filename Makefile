# Two entry points for users: `make serve` and `make test`. Both install what is missing.
BUILD_DIR ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?= -DCMAKE_BUILD_TYPE=Release
BUILD_TARGETS ?= all

.PHONY: deps configure build test serve clean thread-safety

deps:
	./scripts/install-deps.sh

configure: deps
	@if [ ! -f $(BUILD_DIR)/CMakeCache.txt ]; then cmake -S . -B $(BUILD_DIR) $(CMAKE_FLAGS); fi

build: configure
	cmake --build $(BUILD_DIR) -j $(JOBS) --target $(BUILD_TARGETS)

test: build
	cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS)

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
