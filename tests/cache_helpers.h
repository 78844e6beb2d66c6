/* Shared by the cache tests: a cache on the fake env `te`, numbered keys,
 * and what the cache's indexes hold. Header-only; include it after
 * cmocka.h, once per test file. */
#ifndef IDEM_TEST_CACHE_HELPERS_H
#define IDEM_TEST_CACHE_HELPERS_H

#include <stdio.h>
#include <string.h>

#include "cache_internal.h"
#include "helpers.h"
#include "idem/cache.h"

#define T0 1000000u

static struct test_env te;

/* A cache with options o on `te`, reset to time T0. */
static inline struct idem_cache *new_cache(struct idem_cache_opts o)
{
    struct idem_cache *c = NULL;

    test_env_init(&te, T0);
    o.env = &te.env;
    assert_int_equal(idem_cache_new(&o, &c), IDEM_OK);
    assert_non_null(c);
    return c;
}

/* "<prefix><i>" in buf; returns its length. */
static inline size_t key_n(char *buf, size_t size, const char *prefix, long i)
{
    int len = snprintf(buf, size, "%s%ld", prefix, i);

    assert_true(len > 0 && (size_t)len < size);
    return (size_t)len;
}

/* Set keys <prefix>0 .. <prefix>n-1 to "v", key i with ttl + i * step. */
static inline void set_keys(struct idem_cache *c, const char *prefix, long n,
                            int64_t ttl, int64_t step)
{
    char key[40];
    long i;

    for (i = 0; i < n; i++)
        assert_int_equal(idem_cache_set(c, key,
                                        key_n(key, sizeof(key), prefix, i), "v",
                                        1, ttl + i * step),
                         IDEM_OK);
}

static inline struct idem_cache_stats stats_of(struct idem_cache *c)
{
    struct idem_cache_stats st;

    idem_cache_stats(c, &st);
    return st;
}

static inline struct idem__cache_counts counts_of(struct idem_cache *c)
{
    struct idem__cache_counts n;

    idem__cache_index_counts(c, &n);
    return n;
}

/* Key's value in c is value (a string). */
static inline void assert_cache_value(struct idem_cache *c, const char *key,
                                      const char *value)
{
    struct idem_cache_value *v = NULL;

    assert_int_equal(idem_cache_get(c, key, strlen(key), &v), IDEM_OK);
    assert_int_equal(idem_cache_value_len(v), strlen(value));
    assert_memory_equal(idem_cache_value_data(v), value, strlen(value));
    idem_cache_value_release(v);
}

#endif
