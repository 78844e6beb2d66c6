#!/bin/sh
# Install libidem into a temporary prefix, then build and run a program
# against it through pkg-config, linked shared and static.
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
