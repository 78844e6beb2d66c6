/* The default environment: CLOCK_MONOTONIC and the libc allocator. */
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

static uint64_t realtime_ms(void *ud)
{
    (void)ud;
    return clock_ms(CLOCK_REALTIME);
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

void idem__env_resolve(const struct idem_env *src, struct idem_env *dst)
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
