/* The default environment: CLOCK_MONOTONIC and the libc allocator; and,
 * for the cache, cheap bounds on that clock from CLOCK_MONOTONIC_COARSE. */
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/random.h>
#include <time.h>

#include "internal.h"

static uint64_t clock_ms(clockid_t id)
{
    struct timespec ts;

    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static uint64_t monotonic_ms(void *ud)
{
    (void)ud;
    return clock_ms(CLOCK_MONOTONIC);
}

/* Nanoseconds CLOCK_MONOTONIC may run ahead of CLOCK_MONOTONIC_COARSE:
 * the coarse clock's resolution (one tick). Read once. */
static uint64_t coarse_lag_ns(void)
{
    static atomic_uint_fast64_t lag;
    uint64_t v = atomic_load_explicit(&lag, memory_order_relaxed);
    struct timespec res;

    if (v)
        return v;
    v = 10000000u; /* 10 ms if the resolution cannot be read */
    if (clock_getres(CLOCK_MONOTONIC_COARSE, &res) == 0)
        v = (uint64_t)res.tv_sec * 1000000000u + (uint64_t)res.tv_nsec;
    atomic_store_explicit(&lag, v, memory_order_relaxed);
    return v;
}

/* Declared in cache_internal.h: when env's clock is the default one,
 * *lo_out <= now_ms() <= *hi_out for a now_ms() read at any moment of
 * this call, from the coarse clock (no serializing counter read). The
 * coarse clock is CLOCK_MONOTONIC as of the last tick, so it is at most
 * a tick behind; the bound allows two. False for any other clock. */
bool idem__env_now_bounds(const struct idem_env *env, uint64_t *lo_out,
                          uint64_t *hi_out);
bool idem__env_now_bounds(const struct idem_env *env, uint64_t *lo_out,
                          uint64_t *hi_out)
{
    struct timespec ts;
    uint64_t ns;

    if (env->now_ms != monotonic_ms)
        return false;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    *lo_out = ns / 1000000u;
    *hi_out = (ns + 2 * coarse_lag_ns()) / 1000000u + 1;
    return true;
}

/* Records and snapshots keep wall time to the millisecond, and leases are
 * judged in milliseconds: the kernel's tick (CLOCK_REALTIME_COARSE, a few
 * ns through the vDSO) is fine enough, at a fifth of the precise clock's
 * cost, read twice for each new key. */
static uint64_t realtime_ms(void *ud)
{
    (void)ud;
    return clock_ms(CLOCK_REALTIME_COARSE);
}

static void *libc_alloc(void *ud, void *ptr, size_t size)
{
    (void)ud;
    if (size == 0) {
        free(ptr);
        return NULL;
    }
    return realloc(ptr, size);
}

static const struct idem_env default_env = {
    .now_ms = monotonic_ms,
    .wall_ms = realtime_ms,
    .alloc = libc_alloc,
};

const struct idem_env *idem_env_default(void)
{
    return &default_env;
}

uint64_t idem_env_now_ms(const struct idem_env *env)
{
    if (!env || !env->now_ms)
        return monotonic_ms(NULL);
    return env->now_ms(env->ud);
}

uint64_t idem_env_wall_ms(const struct idem_env *env)
{
    if (!env || !env->wall_ms)
        return realtime_ms(NULL);
    return env->wall_ms(env->ud);
}

void idem_env_resolve(const struct idem_env *src, struct idem_env *dst)
{
    *dst = src ? *src : default_env;
    if (!dst->now_ms)
        dst->now_ms = monotonic_ms;
    if (!dst->wall_ms)
        dst->wall_ms = realtime_ms;
    if (!dst->alloc)
        dst->alloc = libc_alloc;
}

uint64_t idem__random_seed(void)
{
    uint64_t seed;
    struct timespec ts;

    if (getrandom(&seed, sizeof(seed), GRND_NONBLOCK) == sizeof(seed))
        return seed;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_nsec * 0x9E3779B97F4A7C15u ^ (uint64_t)ts.tv_sec;
}
