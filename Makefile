# Front door. `make run` and `make test` are the README's two commands; the rest are for
# developers. The build itself is CMake (build/ release, build-asan/ sanitizers, build-fuzz/ clang).
JOBS    ?= $(shell nproc)
CONFIG  ?= examples/quickstart.yaml
PYTHON  ?= $(shell for p in /usr/bin/python3 python3; do $$p -c 'import pytest' 2>/dev/null && { echo $$p; break; }; done)
FUZZ_SECONDS ?= 20

.PHONY: all setup build run test test-unit test-integration test-asan test-tsan test-browser fuzz fuzz-smoke bench soak soak-asan format format-check clean install package test-deploy

all: build

setup:
	@scripts/setup

build/Makefile: CMakeLists.txt
	cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null

build: setup build/Makefile
	cmake --build build -j $(JOBS)

run: build
	./build/sluice run -c $(CONFIG)

test: build
	$(MAKE) --no-print-directory test-unit test-integration

test-unit:
	cd build && ctest --output-on-failure -j $(JOBS)

test-integration:
	SLUICE_BIN=$(CURDIR)/build/sluice $(PYTHON) -m pytest -q tests/integration

build-asan/Makefile: CMakeLists.txt
	CC=clang cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DSLUICE_SANITIZE=ON >/dev/null

# The whole suite again with AddressSanitizer + UBSan (unit and integration).
test-asan: setup build-asan/Makefile
	cmake --build build-asan -j $(JOBS)
	cd build-asan && ctest --output-on-failure -j $(JOBS)
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  SLUICE_BIN=$(CURDIR)/build-asan/sluice SLUICE_SANITIZED=1 $(PYTHON) -m pytest -q tests/integration

build-tsan/Makefile: CMakeLists.txt
	CC=clang cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSLUICE_TESTS=OFF \
	  -DCMAKE_C_FLAGS="-fsanitize=thread -g" -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=thread" >/dev/null

# The integration suite against a ThreadSanitizer build: workers, reloads and drain race-checked.
test-tsan: setup build-tsan/Makefile
	cmake --build build-tsan -j $(JOBS) --target sluice
	TSAN_OPTIONS="halt_on_error=1 exitcode=66 suppressions=$(CURDIR)/tests/tsan.supp" SLUICE_BIN=$(CURDIR)/build-tsan/sluice SLUICE_SANITIZED=1 \
	  $(PYTHON) -m pytest -q tests/integration

# The admin dashboard in headless chromium (tests/browser; screenshots in tests/browser/out/).
# Installs chromium and playwright-core first (scripts/setup --browser): not part of `make test`.
test-browser: build
	@scripts/setup --browser
	SLUICE_BIN=$(CURDIR)/build/sluice $(PYTHON) tests/browser/run_dashboard.py

build-fuzz/Makefile: CMakeLists.txt
	CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Debug -DSLUICE_FUZZ=ON >/dev/null

# Each fuzz target for FUZZ_SECONDS over its committed corpus (new inputs go to a scratch dir).
fuzz: setup build-fuzz/Makefile
	cmake --build build-fuzz -j $(JOBS)
	scripts/fuzz $(FUZZ_SECONDS)

fuzz-smoke:
	$(MAKE) --no-print-directory fuzz FUZZ_SECONDS=10

bench: build
	bench/compare

# A long mixed load (SOAK_SECONDS, default 600) watching RSS, descriptors and every answer;
# soak-asan runs it on the ASan+UBSan build. Results under out/soak/.
SOAK_SECONDS ?= 600
soak: build
	$(PYTHON) tests/soak/soak.py --seconds $(SOAK_SECONDS) --bin $(CURDIR)/build/sluice

soak-asan: setup build-asan/Makefile
	cmake --build build-asan -j $(JOBS) --target sluice
	SLUICE_SANITIZED=1 ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:quarantine_size_mb=32 \
	  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 $(PYTHON) tests/soak/soak.py --seconds $(SOAK_SECONDS) --bin $(CURDIR)/build-asan/sluice --rss-bound-mb 64

format:
	clang-format -i $$(git ls-files 'src/*.[ch]' 'tests/*.[ch]')

format-check:
	clang-format --dry-run --Werror $$(git ls-files 'src/*.[ch]' 'tests/*.[ch]')

# make install [PREFIX=/usr/local] [DESTDIR=/tmp/stage]: the binary, sluice(1) generated from
# `sluice help`, the systemd unit, docs and examples, and PREFIX/etc/sluice/sluice.yaml (/etc for
# PREFIX=/usr) unless one exists. make package: the .deb (cpack -G DEB) in build-pkg/.
PREFIX  ?= /usr/local
DESTDIR ?=
install: build
	cmake -S . -B build -DCMAKE_INSTALL_PREFIX=$(PREFIX) >/dev/null
	cmake --build build -j $(JOBS) --target sluice sluice_manpage
	DESTDIR=$(DESTDIR) cmake --install build --prefix $(PREFIX) --component sluice

package: setup
	cmake -S . -B build-pkg -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_INSTALL_PREFIX=/usr -DSLUICE_TESTS=OFF >/dev/null
	cmake --build build-pkg -j $(JOBS) --target sluice sluice_manpage
	cd build-pkg && cpack -G DEB

# Packaging and deployment files: make install into a temp root, the man page, the systemd unit,
# the .deb, the Kubernetes manifests (OpenAPI schemas) and the Dockerfile lint (tests/deploy).
test-deploy: setup
	tests/deploy/test_deploy.sh

clean:
	rm -rf build build-asan build-tsan build-fuzz
