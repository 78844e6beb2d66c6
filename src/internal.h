/* Helpers shared by libidem's source files: allocation through the env,
 * invariant macros, small utilities. Never installed. */
#ifndef IDEM_INTERNAL_H
#define IDEM_INTERNAL_H

#include <assert.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "idem/env.h"

/* ALWAYS(x)/NEVER(x) wrap conditions believed always true/false that still
 * get a defensive branch in release builds (SQLite's convention). */
#ifdef NDEBUG
#define ALWAYS(x) (x)
#define NEVER(x) (x)
#else
#define ALWAYS(x) (assert(x), 1)
#define NEVER(x) (assert(!(x)), 0)
#endif

#define IDEM_CONTAINER_OF(p, type, member)                                     \
    ((type *)(void *)((char *)(p)-offsetof(type, member)))

#define IDEM_CACHELINE 64

/* Thread-local storage without a __tls_get_addr call in PIC code. Fine for
 * a few bytes even when the shared library is dlopen()ed: glibc keeps a
 * surplus of static TLS for exactly this. */
#if defined(__GNUC__)
#define IDEM_TLS_FAST __attribute__((tls_model("initial-exec")))
#else
#define IDEM_TLS_FAST
#endif

/* Where a hot path's shape matters (cache.c's get): keep a slow case out
 * of line, or a template's instances in. */
#if defined(__GNUC__)
#define IDEM_NOINLINE __attribute__((noinline))
#define IDEM_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define IDEM_NOINLINE
#define IDEM_ALWAYS_INLINE inline
#endif

/* Allocate n bytes through env, or NULL. */
static inline void *idem__alloc(const struct idem_env *env, size_t n)
{
    return env->alloc(env->ud, NULL, n);
}

/* Free p (NULL harmless) through env. */
static inline void idem__free(const struct idem_env *env, void *p)
{
    if (p)
        env->alloc(env->ud, p, 0);
}

/* Whether name (len bytes) is want, ignoring ASCII case: header names.
 * headers.c. */
bool idem__name_is(const char *name, size_t len, const char *want);

/* Whether name[0..len) is lit, a string literal, ignoring ASCII case:
 * the lengths first. */
#define IDEM__NAME_IS(name, len, lit)                                          \
    ((len) == sizeof(lit) - 1 &&                                               \
     (memcmp((name), "" lit, sizeof(lit) - 1) == 0 ||                          \
      idem__name_is((name), (len), "" lit)))

/* Whether a comma-separated header value holds token, ignoring ASCII case;
 * elements are trimmed of spaces and tabs. headers.c. */
bool idem__list_has(const char *value, size_t len, const char *token,
                    size_t tlen);

/* Whether every element of the list value[0..len) is token (an empty
 * list: true). */
bool idem__list_only(const char *value, size_t len, const char *token,
                     size_t tlen);

/* A random 64-bit seed for keyed hashing (getrandom, else clock bits). */
uint64_t idem__random_seed(void);

/* Smallest power of two >= x, for 1 <= x <= 2^31. */
static inline uint32_t idem__pow2_ceil(uint32_t x)
{
    uint32_t p = 1;

    while (p < x)
        p <<= 1;
    return p;
}

#endif
