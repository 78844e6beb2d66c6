#!/bin/sh
# Install libidem and libidem-redis into a temporary prefix, then build and
# run a program against each through pkg-config, linked shared and static;
# check that libidem links no event loop and no hiredis, and that each
# library exports only idem_ symbols.
# Usage: install_test.sh BUILD_DIR CC
set -eu
build=$1
cc=$2
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

cmake --install "$build" --prefix "$dir/prefix" >/dev/null
cat >"$dir/app.c" <<'C'
#include <idem/idem.h>
#include <stdio.h>

int main(void)
{
    struct idem_engine *e = NULL;
    struct idem_keylock *k = NULL;
    struct idem_cache *c = NULL;
    int ok = idem_engine_new(NULL, &e) == IDEM_OK &&
             idem_keylock_new(NULL, &k) == IDEM_OK &&
             idem_cache_new(NULL, &c) == IDEM_OK;

    printf("libidem %s: %s\n", idem_version(), ok ? "ok" : "failed");
    idem_cache_free(c);
    idem_keylock_free(k);
    idem_engine_free(e);
    return ok ? 0 : 1;
}
C
PKG_CONFIG_PATH=$(dirname "$(find "$dir/prefix" -name libidem.pc)")
export PKG_CONFIG_PATH
# shellcheck disable=SC2046
"$cc" -std=c11 -Wall -Werror "$dir/app.c" -o "$dir/app_shared" \
    $(pkg-config --cflags --libs libidem)
LD_LIBRARY_PATH=$(pkg-config --variable=libdir libidem) "$dir/app_shared"
# shellcheck disable=SC2046
"$cc" -std=c11 -Wall -Werror "$dir/app.c" -o "$dir/app_static" \
    $(pkg-config --cflags libidem) "$(pkg-config --variable=libdir libidem)/libidem.a" \
    $(pkg-config --libs-only-l --static libidem | sed 's/-lidem//')
"$dir/app_static"
# only idem_ symbols are exported
if nm -D --defined-only "$(pkg-config --variable=libdir libidem)/libidem.so" |
    awk '$2 == "T" && $3 !~ /^idem_/' | grep .; then
    echo "install_test: libidem.so exports symbols outside idem_" >&2
    exit 1
fi
libdir=$(pkg-config --variable=libdir libidem)
# libidem itself: no event loop, no hiredis (issue 12: layers)
if ldd "$libdir/libidem.so" | grep -E 'libhiredis|libevent'; then
    echo "install_test: libidem.so links an event loop or hiredis" >&2
    exit 1
fi
case " $(pkg-config --cflags libidem) " in
*hiredis*) echo "install_test: libidem's cflags name hiredis" >&2; exit 1 ;;
esac
ldd "$libdir/libidem-redis.so" | grep -q libhiredis ||
    { echo "install_test: libidem-redis.so does not link hiredis" >&2; exit 1; }
if nm -D --defined-only "$libdir/libidem-redis.so" |
    awk '$2 == "T" && $3 !~ /^idem_/' | grep .; then
    echo "install_test: libidem-redis.so exports symbols outside idem_" >&2
    exit 1
fi
cat >"$dir/redis_app.c" <<'C'
#include <idem/redis_libevent.h>
#include <stdio.h>

int main(void)
{
    struct idem_store_redis_opts o = { .url = "redis://127.0.0.1:1" };
    struct idem_store *s = NULL;
    struct event_base *base = event_base_new();
    struct idem_redis_loop loop;
    int ok;

    idem_redis_libevent(base, &loop);
    ok = idem_store_redis_new(&o, &s) == IDEM_OK &&
         idem_store_redis_attach(s, &loop) == IDEM_OK;
    idem_store_redis_detach(s);
    idem_store_free(s);
    event_base_free(base);
    printf("libidem-redis: %s\n", ok ? "ok" : "failed");
    return ok ? 0 : 1;
}
C
# shellcheck disable=SC2046
"$cc" -std=c11 -Wall -Werror "$dir/redis_app.c" -o "$dir/redis_shared" \
    $(pkg-config --cflags --libs libidem-redis libevent_core)
LD_LIBRARY_PATH=$libdir "$dir/redis_shared"
# shellcheck disable=SC2046
"$cc" -std=c11 -Wall -Werror "$dir/redis_app.c" -o "$dir/redis_static" \
    $(pkg-config --cflags libidem-redis) "$libdir/libidem-redis.a" \
    "$libdir/libidem.a" \
    $(pkg-config --libs-only-l --static libidem-redis libevent_core |
      sed 's/-lidem-redis//; s/-lidem //')
"$dir/redis_static"
