/* Test helpers: a fake clock, an allocator that fails on demand and counts
 * what is live, and resident-memory readings. Header-only; each test file
 * includes it once. */
#ifndef IDEM_TEST_HELPERS_H
#define IDEM_TEST_HELPERS_H

#include <malloc.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "idem/env.h"
#include "statm.h"

/* -- Fake clock and counting, failing allocator, as one env. ----------- */

struct test_env {
    struct idem_env env;
    atomic_uint_fast64_t now_ms;
    atomic_long allocs;   /* allocation attempts so far */
    atomic_long live;     /* blocks allocated and not yet freed */
    atomic_long fail_at;  /* fail the allocation with this index (0-based) */
    atomic_long failures; /* allocations refused */
};

static uint64_t test_now_ms(void *ud)
{
    return atomic_load(&((struct test_env *)ud)->now_ms);
}

/* The fake wall clock moves with the fake monotonic one. */
#define TEST_WALL_EPOCH_MS 1763900000000u

static uint64_t test_wall_ms(void *ud)
{
    return TEST_WALL_EPOCH_MS + test_now_ms(ud);
}

static void *test_alloc(void *ud, void *ptr, size_t size)
{
    struct test_env *te = ud;

    if (size == 0) {
        if (ptr)
            atomic_fetch_sub(&te->live, 1);
        free(ptr);
        return NULL;
    }
    if (atomic_fetch_add(&te->allocs, 1) == atomic_load(&te->fail_at)) {
        atomic_fetch_add(&te->failures, 1);
        return NULL;
    }
    if (!ptr)
        atomic_fetch_add(&te->live, 1);
    return realloc(ptr, size);
}

/* A fresh env at time start_ms that fails no allocation. */
static inline void test_env_init(struct test_env *te, uint64_t start_ms)
{
    atomic_init(&te->now_ms, start_ms);
    atomic_init(&te->allocs, 0);
    atomic_init(&te->live, 0);
    atomic_init(&te->fail_at, -1);
    atomic_init(&te->failures, 0);
    te->env = (struct idem_env){ .now_ms = test_now_ms,
                                 .wall_ms = test_wall_ms,
                                 .alloc = test_alloc,
                                 .ud = te };
}

/* Fail the allocation n allocations from now (0: the next one). */
static inline void test_env_fail_in(struct test_env *te, long n)
{
    atomic_store(&te->fail_at, atomic_load(&te->allocs) + n);
}

static inline void test_env_fail_never(struct test_env *te)
{
    atomic_store(&te->fail_at, -1);
}

static inline void test_clock_advance(struct test_env *te, uint64_t ms)
{
    atomic_fetch_add(&te->now_ms, ms);
}

/* Run run(n) for n = 0, 1, ... where run fails allocation n of a scenario
 * and returns the failures it saw, until a run sees none: every
 * allocation was failed once. Aborts past max runs. Returns the runs. */
static inline long test_alloc_sweep(long (*run)(long n), long max)
{
    long n;

    for (n = 0; run(n) > 0; n++) {
        if (n >= max) {
            fprintf(stderr, "allocation sweep: more than %ld runs\n", max);
            abort();
        }
    }
    return n;
}

/* A soak's size from argv[1] (default *n). 0, or 2 after a usage line. */
static inline int test_parse_count(int argc, char **argv, long *n, long min)
{
    char *end;

    if (argc < 2)
        return 0;
    *n = strtol(argv[1], &end, 10);
    if (*end || *n < min) {
        fprintf(stderr, "usage: %s [count >= %ld]\n", argv[0], min);
        return 2;
    }
    return 0;
}

/* -- Resident memory --------------------------------------------------- */

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define TEST_RSS_MEANINGFUL_BUILD 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define TEST_RSS_MEANINGFUL_BUILD 0
#endif
#endif
#ifndef TEST_RSS_MEANINGFUL_BUILD
#define TEST_RSS_MEANINGFUL_BUILD 1
#endif

/* False under sanitizers and valgrind, whose allocators keep freed memory
 * on purpose (quarantine): a resident-memory bound means nothing there. */
static inline bool test_rss_meaningful(void)
{
    return TEST_RSS_MEANINGFUL_BUILD && !getenv("IDEM_UNDER_VALGRIND");
}

/* Resident set size in bytes, from /proc/self/statm; 0 if unreadable. */
static inline size_t test_rss_bytes(void)
{
    return statm_resident_bytes(0);
}

/* Give freed heap back to the kernel, then read RSS. */
static inline size_t test_rss_after_trim(void)
{
    malloc_trim(0);
    return test_rss_bytes();
}

#endif
