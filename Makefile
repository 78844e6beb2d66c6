# Thin wrapper over CMake. Build trees: build/ (release, gcc),
# build-asan/ (ASan+UBSan, clang), build-tsan/, build-valgrind/, build-fuzz/.
# `make help` lists the targets.

JOBS      ?= $(shell nproc)
PREFIX    ?= /usr/local
SOAK_KEYS ?= 10000000
FUZZ_SECS ?= 60
FUZZ_HTTP_SECS ?= 600
CTEST      = ctest --output-on-failure -j $(JOBS)
MAKEFLAGS += --no-print-directory

.PHONY: all build deps deps-run run test asan tsan valgrind bench soak fuzz install deb \
        lint clean help cluster

all: build

help:
	@echo "make            release build in build/"
	@echo "make run        install deps, build, start idemproxy on"
	@echo "                127.0.0.1:8080 before a demo upstream"
	@echo "make test       install deps, lint, build, run every test, then"
	@echo "                again under ASan+UBSan"
	@echo "make asan|tsan  sanitizer build and tests (tsan: threaded tests)"
	@echo "make cluster    Redis Cluster and Sentinel failovers under load"
	@echo "                (ctest -L cluster; part of make test too)"
	@echo "make valgrind   the tests under valgrind memcheck, zero leaks"
	@echo "make bench      build and run the benchmarks (figures only)"
	@echo "make soak       long leak proofs ($(SOAK_KEYS) keys), and memory"
	@echo "                through idemproxy, memory and Redis stores"
	@echo "                (build/soak/rss.png, rss-redis.png)"
	@echo "make fuzz       run each libFuzzer target $(FUZZ_SECS)s, fuzz_http"
	@echo "                $(FUZZ_HTTP_SECS)s (clang)"
	@echo "make install    install libidem (PREFIX=$(PREFIX))"
	@echo "make deb        Debian packages in build/deb/ (libidem0, -dev,"
	@echo "                libidem-redis0, -dev, idemproxy)"
	@echo "make lint       banned functions, format of the sources"

deps:
	@scripts/deps.sh

deps-run:
	@scripts/deps.sh run

# configure DIR [cmake args]: configure once, then reuse.
define configure
	@test -f $(1)/CMakeCache.txt || cmake -S . -B $(1) -DCMAKE_INSTALL_PREFIX=$(PREFIX) $(2) >/dev/null
endef

build:
	$(call configure,build,-DCMAKE_C_COMPILER=gcc)
	@cmake --build build -j $(JOBS)

run: deps-run build
	@scripts/run.sh

test: deps lint build
	cd build && $(CTEST) -LE soak
	$(MAKE) --no-print-directory asan

cluster: build
	cd build && $(CTEST) -L cluster

asan: build-asan
	cd build-asan && $(CTEST) -LE soak

build-asan: FORCE
	$(call configure,build-asan,-DCMAKE_C_COMPILER=clang -DIDEM_SANITIZE=asan -DCMAKE_BUILD_TYPE=Debug)
	@cmake --build build-asan -j $(JOBS)

tsan:
	$(call configure,build-tsan,-DCMAKE_C_COMPILER=clang -DIDEM_SANITIZE=tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo)
	@cmake --build build-tsan -j $(JOBS)
	cd build-tsan && $(CTEST) -L threads

valgrind:
	$(call configure,build-valgrind,-DCMAKE_C_COMPILER=gcc -DIDEM_VALGRIND=ON)
	@cmake --build build-valgrind -j $(JOBS)
	cd build-valgrind && $(CTEST) -LE soak

bench: build
	@scripts/deps.sh bench
	./build/bench/bench_keylock
	./build/bench/bench_engine
	./build/bench/bench_cache
	bench/bench_proxy.sh

soak: build
	@scripts/deps.sh bench
	./build/soak_keylock $(SOAK_KEYS)
	./build/soak_cache 100000
	./build/soak_engine $(SOAK_KEYS)
	SOAK_KEYS=$(SOAK_KEYS) tests/soak/soak_proxy.sh
	SOAK_KEYS=$(SOAK_KEYS) SOAK_STORE=redis tests/soak/soak_proxy.sh

fuzz:
	$(call configure,build-fuzz,-DCMAKE_C_COMPILER=clang -DIDEM_FUZZ=ON -DIDEM_SANITIZE=asan)
	@cmake --build build-fuzz -j $(JOBS)
	@for f in build-fuzz/fuzz_*; do \
	  name=$${f#build-fuzz/fuzz_}; mkdir -p build-fuzz/corpus/$$name; \
	  secs=$(FUZZ_SECS); [ $$name = http ] && secs=$(FUZZ_HTTP_SECS); \
	  echo "fuzz $$name: $${secs}s"; \
	  $$f -max_total_time=$$secs -print_final_stats=1 \
	    build-fuzz/corpus/$$name fuzz/corpus/$$name || exit 1; \
	done

# Debian packages from a copy of the tree (dpkg-buildpackage writes next
# to the source directory): build/deb/*.deb.
deb: deps
	@rm -rf build/deb && mkdir -p build/deb/src
	@git ls-files -z --cached --others --exclude-standard | \
	  xargs -0 tar -cf - | tar -xf - -C build/deb/src
	cd build/deb/src && dpkg-buildpackage -us -uc -b
	@rm -rf build/deb/src
	@ls build/deb/*.deb

install: build
	cmake --install build --prefix $(PREFIX)

lint:
	@scripts/lint.sh

clean:
	rm -rf build build-asan build-tsan build-valgrind build-fuzz

FORCE:
