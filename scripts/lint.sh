#!/bin/sh
# Source checks that need no build: banned functions, format
# (clang-format), trailing white space, and public headers that compile on
# their own. Prints each problem; exits 1 if there was any.
set -u
cd "$(dirname "$0")/.." || exit 2
status=0
sources=$(git ls-files --cached --others --exclude-standard '*.c' '*.h' 2>/dev/null || find src include tests bench fuzz examples -name '*.[ch]')

# Unbounded or state-hiding libc calls: use snprintf, memcpy with a length,
# strtol with end checks, strtok_r.
banned='\b(strcpy|strcat|sprintf|vsprintf|gets|strtok|atoi|atol|atoll)[[:space:]]*\('
if grep -nE "$banned" $sources; then
    echo "lint: banned function (see above)" >&2
    status=1
fi

if grep -nE '[[:space:]]+$' $sources; then
    echo "lint: trailing white space (see above)" >&2
    status=1
fi

for f in $sources; do
    if ! clang-format --dry-run -Werror "$f" 2>/dev/null; then
        echo "lint: $f is not clang-formatted (clang-format -i $f)" >&2
        status=1
    fi
done

# idemproxy is a user of libidem like any other: from the library it
# includes only the public idem/*.h headers (STYLE 21).
if grep -nE '^#include "' src/proxy/*.c src/proxy/*.h |
    grep -vE '"(idem/[a-z_]+\.h|[a-z0-9_]+\.h)"' ||
    grep -nE '^#include "([a-z0-9_]+)\.h"' src/proxy/*.c src/proxy/*.h |
    grep -vE '"(admin|buf|config|config_internal|config_value|conn|exchange|exchange_internal|forward|gen|h2|h2_internal|http|log|metrics|net|resolver|service|target|tls|upstream|worker)\.h"'; then
    echo "lint: src/proxy includes a library header that is not idem/*.h" >&2
    status=1
fi

for h in include/idem/*.h; do
    if ! printf '#include "%s"\n' "${h#include/}" |
        cc -std=c11 -Wall -Wextra -Werror -Iinclude -fsyntax-only -x c -; then
        echo "lint: $h does not compile on its own" >&2
        status=1
    fi
done
exit $status
