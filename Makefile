# Two entry points for users: `make serve` and `make test`. Both install what is missing.
BUILD_DIR ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?= -DCMAKE_BUILD_TYPE=Release
BUILD_TARGETS ?= all

.PHONY: deps configure build test serve clean

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

clean:
	rm -rf $(BUILD_DIR)
