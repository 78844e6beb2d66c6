/* cache, one thread, fake clock: every API contract and error, exact
 * expiry, memory coming back without reads, bounds held at every step,
 * CLOCK eviction and pins, foreach, get_or_compute, and a sweep that fails
 * each allocation in turn. Threads: test_cache_threads. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "cache_helpers.h"

#define K(s) (s), (sizeof(s) - 1)
#define DAY_MS (24 * 3600 * 1000LL)

/* Free c and check that nothing it allocated is left. */
static void free_cache(struct idem_cache *c)
{
    idem_cache_free(c);
    assert_int_equal(atomic_load(&te.live), 0);
}

/* The table (the one index) holds exactly n entries, timed of them with a
 * TTL, and the shards' counts agree. */
static void assert_indexes(struct idem_cache *c, size_t n, size_t timed)
{
    struct idem__cache_counts k = counts_of(c);

    assert_int_equal(k.table, n);
    assert_int_equal(k.timed, timed);
    assert_int_equal(stats_of(c).entries, n);
}

/* Nothing in any index, nothing charged, buckets at their minimum. */
static void assert_empty(struct idem_cache *c)
{
    struct idem__cache_counts k = counts_of(c);

    assert_indexes(c, 0, 0);
    assert_int_equal(k.pinned, 0);
    assert_int_equal(k.bytes, 0);
    assert_int_equal(k.buckets, stats_of(c).shards * IDEM__CACHE_MIN_BUCKETS);
    assert_int_equal(idem_cache_size(c), 0);
    assert_int_equal(idem_cache_bytes(c), 0);
}

/* get must find key with exactly this value. */
static void assert_absent(struct idem_cache *c, const char *key)
{
    struct idem_cache_value *v = NULL;

    assert_int_equal(idem_cache_get(c, key, strlen(key), &v), IDEM_ENOTFOUND);
    assert_null(v);
    assert_false(idem_cache_contains(c, key, strlen(key)));
}

static int set_str(struct idem_cache *c, const char *key, const char *value,
                   int64_t ttl_ms)
{
    return idem_cache_set(c, key, strlen(key), value, strlen(value), ttl_ms);
}

/* -- Lifecycle and arguments ----------------------------------------- */

static void test_new_defaults_and_bad_options(void **state)
{
    struct idem_cache_opts o = { .shards = 1025 };
    struct idem_cache *c = NULL;
    struct idem_cache_stats st;

    (void)state;
    assert_int_equal(idem_cache_new(NULL, NULL), IDEM_EINVAL);
    assert_int_equal(idem_cache_new(&o, &c), IDEM_EINVAL);
    assert_null(c);
    idem_cache_free(NULL);
    c = new_cache((struct idem_cache_opts){ 0 });
    st = stats_of(c);
    assert_int_equal(st.shards, 16);
    assert_int_equal(st.shard_max_bytes, (64u << 20) / 16);
    assert_int_equal(st.shard_max_entries, SIZE_MAX);
    assert_true(st.fixed_bytes > 16 * (sizeof(struct idem__cache_shard) +
                                       IDEM__CACHE_MIN_BUCKETS * 8));
    assert_empty(c);
    free_cache(c);
    /* small bounds take fewer shards, each with an even share */
    c = new_cache((struct idem_cache_opts){ .max_entries = 10 });
    assert_int_equal(stats_of(c).shards, 1);
    assert_int_equal(stats_of(c).shard_max_entries, 10);
    free_cache(c);
    c = new_cache((struct idem_cache_opts){
        .shards = 3, .max_bytes = 3u << 20, .max_entries = 1000 });
    st = stats_of(c);
    assert_int_equal(st.shards, 2);
    assert_int_equal(st.shard_max_bytes, (3u << 20) / 2);
    assert_int_equal(st.shard_max_entries, 500);
    free_cache(c);
}

static int never_compute(const void *key, size_t klen,
                         struct idem_cache_buf *out, void *ud)
{
    (void)key;
    (void)klen;
    (void)out;
    (void)ud;
    fail_msg("compute function called");
    return IDEM_EIO;
}

static int never_visit(const void *key, size_t klen, struct idem_cache_value *v,
                       void *ud)
{
    (void)key;
    (void)klen;
    (void)v;
    (void)ud;
    fail_msg("foreach callback called");
    return 1;
}

static void test_bad_arguments_to_writes(void **state)
{
    struct idem_cache *c = new_cache((struct idem_cache_opts){ 0 });

    (void)state;
    assert_int_equal(idem_cache_set(NULL, K("k"), K("v"), 0), IDEM_EINVAL);
    assert_int_equal(idem_cache_set(c, NULL, 1, K("v"), 0), IDEM_EINVAL);
    assert_int_equal(idem_cache_set(c, K("k"), NULL, 1, 0), IDEM_EINVAL);
    assert_int_equal(idem_cache_set(c, K("k"), K("v"), -1), IDEM_EINVAL);
    assert_int_equal(idem_cache_set_nx(c, K("k"), K("v"), -5), IDEM_EINVAL);
    assert_int_equal(idem_cache_set_ex(c, K("k"), K("v"), 0, 4), IDEM_EINVAL);
    assert_int_equal(idem_cache_update(NULL, K("k"), K("v")), IDEM_EINVAL);
    assert_int_equal(idem_cache_update(c, NULL, 2, K("v")), IDEM_EINVAL);
    assert_int_equal(idem_cache_update_ttl(c, K("k"), -1), IDEM_EINVAL);
    assert_int_equal(idem_cache_update_ttl(NULL, K("k"), 1), IDEM_EINVAL);
    assert_int_equal(idem_cache_remove(NULL, K("k")), IDEM_EINVAL);
    assert_int_equal(idem_cache_remove(c, NULL, 1), IDEM_EINVAL);
    assert_int_equal(idem_cache_pin(NULL, K("k")), IDEM_EINVAL);
    assert_int_equal(idem_cache_unpin(c, NULL, 1), IDEM_EINVAL);
    assert_int_equal(idem_cache_tick(NULL), 0);
    idem_cache_clear(NULL);
    assert_empty(c);
    free_cache(c);
}

static void test_bad_arguments_to_reads(void **state)
{
    struct idem_cache *c = new_cache((struct idem_cache_opts){ 0 });
    struct idem_cache_value *v = NULL;
    int64_t ttl = 5;

    (void)state;
    assert_int_equal(idem_cache_get(NULL, K("k"), &v), IDEM_EINVAL);
    assert_int_equal(idem_cache_get(c, K("k"), NULL), IDEM_EINVAL);
    assert_int_equal(idem_cache_get(c, NULL, 1, &v), IDEM_EINVAL);
    assert_false(idem_cache_contains(NULL, K("k")));
    assert_false(idem_cache_contains(c, NULL, 1));
    assert_int_equal(idem_cache_ttl_left(c, K("k"), NULL), IDEM_EINVAL);
    assert_int_equal(idem_cache_ttl_left(NULL, K("k"), &ttl), IDEM_EINVAL);
    assert_int_equal(ttl, 5); /* out-params are written only on success */
    assert_int_equal(idem_cache_foreach(NULL, never_visit, NULL), IDEM_EINVAL);
    assert_int_equal(idem_cache_foreach(c, NULL, NULL), IDEM_EINVAL);
    assert_int_equal(idem_cache_get_or_compute(c, K("k"), NULL, NULL, 0, &v),
                     IDEM_EINVAL);
    assert_int_equal(
        idem_cache_get_or_compute(c, K("k"), never_compute, NULL, -1, &v),
        IDEM_EINVAL);
    assert_int_equal(
        idem_cache_get_or_compute(c, K("k"), never_compute, NULL, 0, NULL),
        IDEM_EINVAL);
    assert_int_equal(idem_cache_buf_append(NULL, "x", 1), IDEM_EINVAL);
    assert_null(v);
    assert_int_equal(idem_cache_size(NULL), 0);
    assert_int_equal(idem_cache_bytes(NULL), 0);
    idem_cache_stats(c, NULL);
    idem_cache_value_release(NULL);
    assert_empty(c);
    free_cache(c);
}

/* -- Values ---------------------------------------------------------- */

static void test_set_get_replace(void **state)
{
    struct idem_cache *c = new_cache((struct idem_cache_opts){ 0 });
    struct idem_cache_value *old = NULL, *again;
    struct idem_cache_stats st;

    (void)state;
    assert_int_equal(set_str(c, "a", "first", 0), IDEM_OK);
    assert_cache_value(c, "a", "first");
    assert_int_equal(idem_cache_get(c, K("a"), &old), IDEM_OK);
    assert_int_equal(set_str(c, "a", "second value", 0), IDEM_OK);
    assert_cache_value(c, "a", "second value");
    /* the old handle still shows the old bytes */
    assert_int_equal(idem_cache_value_len(old), 5);
    assert_memory_equal(idem_cache_value_data(old), "first", 5);
    again = idem_cache_value_ref(old);
    assert_ptr_equal(again, old);
    idem_cache_value_release(old);
    assert_memory_equal(idem_cache_value_data(again), "first", 5);
    idem_cache_value_release(again);
    assert_absent(c, "b");
    assert_indexes(c, 1, 0);
    assert_int_equal(idem_cache_bytes(c), IDEM_CACHE_ENTRY_OVERHEAD + 1 + 12);
    st = stats_of(c);
    assert_int_equal(st.sets, 2);
    assert_int_equal(st.hits, 3);
    assert_int_equal(st.misses, 1);
    free_cache(c);
}

static void test_keys_and_values_are_bytes(void **state)
{
    struct idem_cache *c = new_cache((struct idem_cache_opts){ 0 });
    const char nul[] = { 'a', '\0', 'b' };
    struct idem_cache_value *v;

    (void)state;
    assert_int_equal(idem_cache_set(c, "a", 1, nul, 3, 0), IDEM_OK);
    assert_int_equal(idem_cache_set(c, nul, 3, "x", 1, 0), IDEM_OK);
    assert_int_equal(idem_cache_set(c, nul, 2, NULL, 0, 0), IDEM_OK);
    assert_int_equal(idem_cache_set(c, NULL, 0, "empty", 5, 0), IDEM_OK);
    assert_int_equal(idem_cache_size(c), 4);
    assert_int_equal(idem_cache_get(c, "a", 1, &v), IDEM_OK);
    assert_int_equal(idem_cache_value_len(v), 3);
    assert_memory_equal(idem_cache_value_data(v), nul, 3);
    idem_cache_value_release(v);
    assert_int_equal(idem_cache_get(c, nul, 2, &v), IDEM_OK);
    assert_int_equal(idem_cache_value_len(v), 0);
    idem_cache_value_release(v);
    assert_int_equal(idem_cache_get(c, "", 0, &v), IDEM_OK);
    assert_int_equal(idem_cache_value_len(v), 5);
    idem_cache_value_release(v);
    assert_int_equal(idem_cache_remove(c, nul, 3), IDEM_OK);
    assert_int_equal(idem_cache_remove(c, nul, 3), IDEM_ENOTFOUND);
    assert_true(idem_cache_contains(c, "a", 1));
    assert_int_equal(idem_cache_size(c), 3);
    free_cache(c);
}

/* A handle outlives remove, clear and the cache itself; from removal on
 * its bytes are no longer charged. */
static void test_handle_outlives_entry_and_cache(void **state)
{
    struct idem_cache *c = new_cache((struct idem_cache_opts){ 0 });
    struct idem_cache_value *v1, *v2, *v3;

    (void)state;
    assert_int_equal(set_str(c, "k1", "one", 0), IDEM_OK);
    assert_int_equal(set_str(c, "k2", "two", 0), IDEM_OK);
    assert_int_equal(set_str(c, "k3", "three", 0), IDEM_OK);
    assert_int_equal(idem_cache_get(c, K("k1"), &v1), IDEM_OK);
    assert_int_equal(idem_cache_get(c, K("k2"), &v2), IDEM_OK);
    assert_int_equal(idem_cache_get(c, K("k3"), &v3), IDEM_OK);
    assert_int_equal(idem_cache_remove(c, K("k1")), IDEM_OK);
    assert_int_equal(idem_cache_bytes(c), 2 * IDEM_CACHE_ENTRY_OVERHEAD + 12);
    assert_memory_equal(idem_cache_value_data(v1), "one", 3);
    idem_cache_clear(c);
    assert_empty(c);
    assert_memory_equal(idem_cache_value_data(v2), "two", 3);
    assert_int_equal(set_str(c, "k3", "again", 0), IDEM_OK);
    idem_cache_free(c);
    assert_true(atomic_load(&te.live) > 0); /* the three values, a home */
    assert_memory_equal(idem_cache_value_data(v3), "three", 5);
    idem_cache_value_release(v1);
    idem_cache_value_release(v3);
    assert_memory_equal(idem_cache_value_data(v2), "two", 3);
    idem_cache_value_release(v2);
    assert_int_equal(atomic_load(&te.live), 0);
}

static void test_set_nx(void **state)
{
    struct idem_cache *c = new_cache((struct idem_cache_opts){ 0 });

    (void)state;
    assert_int_equal(idem_cache_set_nx(c, K("k"), K("1"), 1000), IDEM_OK);
    assert_int_equal(idem_cache_set_nx(c, K("k"), K("2"), 1000), IDEM_EEXIST);
    assert_cache_value(c, "k", "1");
    test_clock_advance(&te, 1000); /* expired counts as absent */
    assert_int_equal(idem_cache_set_nx(c, K("k"), K("3"), 0), IDEM_OK);
    assert_cache_value(c, "k", "3");
    assert_int_equal(stats_of(c).expired, 1);
    assert_indexes(c, 1, 0);
    free_cache(c);
}

static void test_update_keeps_ttl(void **state)
{
    struct idem_cache *c = new_cache((struct idem_cache_opts){ 0 });
    int64_t left;

    (void)state;
    assert_int_equal(idem_cache_update(c, K("k"), K("x")), IDEM_ENOTFOUND);
    assert_int_equal(set_str(c, "k", "old", 1000), IDEM_OK);
    test_clock_advance(&te, 400);
    assert_int_equal(idem_cache_update(c, K("k"), K("newer")), IDEM_OK);
    assert_cache_value(c, "k", "newer");
    assert_int_equal(idem_cache_ttl_left(c, K("k"), &left), IDEM_OK);
    assert_int_equal(left, 600);
    assert_indexes(c, 1, 1);
    test_clock_advance(&te, 600);
    assert_int_equal(idem_cache_update(c, K("k"), K("late")), IDEM_ENOTFOUND);
    assert_empty(c);
    free_cache(c);
}

/* -- Expiry ---------------------------------------------------------- */

static void test_expiry_is_exact(void **state)
{
    struct idem_cache *c = new_cache((struct idem_cache_opts){ 0 });
    int64_t left = -7;

    (void)state;
    assert_int_equal(set_str(c, "k", "v", 1000), IDEM_OK);
    assert_int_equal(set_str(c, "forever", "v", 0), IDEM_OK);
    assert_int_equal(idem_cache_ttl_left(c, K("forever"), &left), IDEM_OK);
    assert_int_equal(left, 0);
    test_clock_advance(&te, 999);
    assert_int_equal(idem_cache_ttl_left(c, K("k"), &left), IDEM_OK);
    assert_int_equal(left, 1);
    assert_true(idem_cache_contains(c, K("k")));
    test_clock_advance(&te, 1); /* now == expires: gone */
    assert_false(idem_cache_contains(c, K("k")));
    /* the access reclaimed it from every index */
    assert_indexes(c, 1, 0);
    assert_int_equal(stats_of(c).expired, 1);
    assert_int_equal(idem_cache_ttl_left(c, K("k"), &left), IDEM_ENOTFOUND);
    assert_int_equal(idem_cache_remove(c, K("k")), IDEM_ENOTFOUND);
    assert_int_equal(idem_cache_pin(c, K("k")), IDEM_ENOTFOUND);
    free_cache(c);
}

/* Each read kind reclaims what it finds expired. */
static void test_reads_reclaim_expired(void **state)
{
    struct idem_cache *c = new_cache((struct idem_cache_opts){ 0 });
    struct idem_cache_value *v;
    int64_t left;

    (void)state;
    assert_int_equal(set_str(c, "a", "1", 10), IDEM_OK);
    assert_int_equal(set_str(c, "b", "2", 10), IDEM_OK);
    assert_int_equal(set_str(c, "c", "3", 10), IDEM_OK);
    test_clock_advance(&te, 10);
    assert_int_equal(idem_cache_get(c, K("a"), &v), IDEM_ENOTFOUND);
    assert_indexes(c, 2, 2);
    assert_false(idem_cache_contains(c, K("b")));
    assert_indexes(c, 1, 1);
    assert_int_equal(idem_cache_ttl_left(c, K("c"), &left), IDEM_ENOTFOUND);
    assert_indexes(c, 0, 0);
    assert_int_equal(stats_of(c).expired, 3);
    assert_empty(c);
    free_cache(c);
}

static void test_update_ttl(void **state)
{
    struct idem_cache *c = new_cache((struct idem_cache_opts){ 0 });
    int64_t left;

    (void)state;
    assert_int_equal(idem_cache_update_ttl(c, K("k"), 5), IDEM_ENOTFOUND);
    assert_int_equal(set_str(c, "k", "v", 100), IDEM_OK);
    assert_int_equal(idem_cache_update_ttl(c, K("k"), 5000), IDEM_OK);
    assert_indexes(c, 1, 1);
    test_clock_advance(&te, 4999);
    assert_int_equal(idem_cache_ttl_left(c, K("k"), &left), IDEM_OK);
    assert_int_equal(left, 1);
    assert_int_equal(idem_cache_update_ttl(c, K("k"), 0), IDEM_OK);
    assert_indexes(c, 1, 0); /* no expiry any more */
    test_clock_advance(&te, DAY_MS);
    assert_int_equal(idem_cache_tick(c), 0);
    assert_cache_value(c, "k", "v");
    assert_int_equal(idem_cache_update_ttl(c, K("k"), 1), IDEM_OK);
    assert_indexes(c, 1, 1);
    test_clock_advance(&te, 1);
    assert_int_equal(idem_cache_update_ttl(c, K("k"), 10), IDEM_ENOTFOUND);
    assert_empty(c);
    free_cache(c);
}

/* A day later, with no read at all, a tick leaves nothing anywhere. */
static void test_tick_reclaims_without_reads(void **state)
{
    struct idem_cache *c = new_cache((struct idem_cache_opts){ 0 });
    int n = 5000;

    (void)state;
    set_keys(c, "key-", n, 1, 700); /* spread over 3.5 million ms */
    assert_indexes(c, (size_t)n, (size_t)n);
    test_clock_advance(&te, DAY_MS);
    assert_int_equal(idem_cache_tick(c), n);
    assert_indexes(c, 0, 0);
    assert_int_equal(counts_of(c).bytes, 0);
    assert_int_equal(stats_of(c).expired, n);
    assert_empty(c);
    free_cache(c);
}

/* Writes alone (other keys, no expiry) reclaim expired entries, a
 * bounded amount each. */
static void test_writes_reclaim_expired(void **state)
{
    struct idem_cache *c = new_cache((struct idem_cache_opts){ .shards = 4 });
    int n = 2000;

    (void)state;
    set_keys(c, "timed-", n, 1000, 0);
    test_clock_advance(&te, 2000);
    set_keys(c, "plain-", n, 0, 0);
    assert_int_equal(stats_of(c).expired, n);
    assert_indexes(c, (size_t)n, 0);
    free_cache(c);
}

/* -- Bounds and eviction --------------------------------------------- */

/* How many of keys c, d, e, f are present. */
static int present_cdef(struct idem_cache *c)
{
    return idem_cache_contains(c, K("c")) + idem_cache_contains(c, K("d")) +
           idem_cache_contains(c, K("e")) + idem_cache_contains(c, K("f"));
}

/* CLOCK over the table's slots: the hand's order is the hash order, so
 * which unvisited entry goes is not fixed, but a visited one always gets a
 * second chance. */
static void test_max_entries_clock(void **state)
{
    struct idem_cache *c =
        new_cache((struct idem_cache_opts){ .max_entries = 4 });

    (void)state;
    assert_int_equal(set_str(c, "a", "1", 0), IDEM_OK);
    assert_int_equal(set_str(c, "b", "2", 0), IDEM_OK);
    assert_int_equal(set_str(c, "c", "3", 0), IDEM_OK);
    assert_int_equal(set_str(c, "d", "4", 0), IDEM_OK);
    assert_cache_value(c, "a", "1"); /* visited: a and b get a second chance */
    assert_cache_value(c, "b", "2");
    assert_int_equal(set_str(c, "e", "5", 0), IDEM_OK);
    assert_true(idem_cache_contains(c, K("a")));
    assert_true(idem_cache_contains(c, K("b")));
    assert_int_equal(present_cdef(c), 2); /* c or d went, e came */
    assert_cache_value(c, "a", "1");      /* visited again */
    assert_cache_value(c, "b", "2");
    assert_int_equal(set_str(c, "f", "6", 0), IDEM_OK);
    assert_cache_value(c, "a", "1");
    assert_cache_value(c, "b", "2");
    assert_cache_value(c, "f", "6");
    assert_int_equal(present_cdef(c), 2);
    assert_int_equal(stats_of(c).evicted, 2);
    assert_indexes(c, 4, 0);
    /* replacing a key in a full cache evicts nothing */
    assert_int_equal(set_str(c, "f", "66", 0), IDEM_OK);
    assert_int_equal(stats_of(c).evicted, 2);
    free_cache(c);
}

/* Eviction spreads its removals over the table: after a bounded cache has
 * taken many times its size in new keys, a probe for a new key runs as
 * far as uniform hashing makes it (a few slots; evicting in slot order
 * measured hundreds). */
static void test_eviction_keeps_probes_short(void **state)
{
    struct idem_cache *c = new_cache(
        (struct idem_cache_opts){ .max_entries = 20000, .shards = 1 });
    double miss, worst = 0;
    char key[40];
    long i;

    (void)state;
    for (i = 0; i < 400000; i++) {
        assert_int_equal(
            idem_cache_set(c, key, key_n(key, sizeof(key), "k", i), "v", 1, 0),
            IDEM_OK);
        if (i % 5000 == 4999) {
            miss = idem__table_mean_miss(&c->shards[0].table);
            worst = miss > worst ? miss : worst;
        }
    }
    assert_int_equal(stats_of(c).entries, 20000);
    print_message("a new key's probe: at worst %.1f slots on\n", worst);
    assert_true(worst < 16.0);
    free_cache(c);
}

/* An expired entry taken by the eviction hand counts as expired. */
static void test_expired_victim_counts_as_expired(void **state)
{
    struct idem_cache *c =
        new_cache((struct idem_cache_opts){ .max_entries = 2 });

    (void)state;
    assert_int_equal(set_str(c, "a", "1", 0), IDEM_OK);
    assert_int_equal(set_str(c, "b", "2", 0), IDEM_OK);
    assert_int_equal(idem_cache_update_ttl(c, K("a"), 5), IDEM_OK);
    test_clock_advance(&te, 5);
    assert_int_equal(set_str(c, "c", "3", 0), IDEM_OK);
    assert_int_equal(stats_of(c).expired, 1);
    assert_int_equal(stats_of(c).evicted, 0);
    assert_indexes(c, 2, 0);
    free_cache(c);
}

static void test_pins(void **state)
{
    struct idem_cache *c =
        new_cache((struct idem_cache_opts){ .max_entries = 2 });
    int i;

    (void)state;
    assert_int_equal(idem_cache_pin(c, K("a")), IDEM_ENOTFOUND);
    assert_int_equal(idem_cache_set_ex(c, K("a"), K("1"), 0, IDEM_CACHE_PIN),
                     IDEM_OK);
    assert_int_equal(set_str(c, "b", "2", 0), IDEM_OK);
    assert_int_equal(idem_cache_pin(c, K("b")), IDEM_OK);
    assert_int_equal(counts_of(c).pinned, 2);
    assert_int_equal(stats_of(c).pinned, 2);
    /* all pinned: a new key cannot get in, and nothing changes */
    assert_int_equal(set_str(c, "c", "3", 0), IDEM_EBUSY);
    assert_absent(c, "c");
    assert_indexes(c, 2, 0);
    /* pins carry over a replace and an update */
    assert_int_equal(set_str(c, "b", "22", 0), IDEM_OK);
    assert_int_equal(idem_cache_update(c, K("b"), K("222")), IDEM_OK);
    assert_int_equal(idem_cache_unpin(c, K("b")), IDEM_OK);
    assert_int_equal(idem_cache_unpin(c, K("b")), IDEM_EPERM);
    assert_int_equal(set_str(c, "c", "3", 0), IDEM_OK); /* evicts b */
    assert_absent(c, "b");
    assert_cache_value(c, "a", "1");
    assert_int_equal(stats_of(c).evicted, 1);
    for (i = 1; i < UINT16_MAX; i++)
        assert_int_equal(idem_cache_pin(c, K("a")), IDEM_OK);
    assert_int_equal(idem_cache_pin(c, K("a")), IDEM_EBUSY);
    assert_int_equal(idem_cache_set_ex(c, K("a"), K("x"), 0, IDEM_CACHE_PIN),
                     IDEM_EBUSY);
    for (i = 0; i < UINT16_MAX; i++)
        assert_int_equal(idem_cache_unpin(c, K("a")), IDEM_OK);
    assert_int_equal(counts_of(c).pinned, 0);
    /* clear takes pinned entries too */
    assert_int_equal(idem_cache_pin(c, K("c")), IDEM_OK);
    idem_cache_clear(c);
    assert_empty(c);
    free_cache(c);
}

static void test_too_big(void **state)
{
    struct idem_cache *c =
        new_cache((struct idem_cache_opts){ .max_bytes = 1000 });
    char big[1000] = { 0 };
    size_t fit = 1000 - IDEM_CACHE_ENTRY_OVERHEAD - 1;

    (void)state;
    assert_int_equal(idem_cache_set(c, K("k"), big, fit + 1, 0), IDEM_E2BIG);
    assert_int_equal(idem_cache_set(c, K("k"), big, fit, 0), IDEM_OK);
    assert_int_equal(idem_cache_bytes(c), 1000);
    assert_int_equal(idem_cache_update(c, K("k"), big, fit + 1), IDEM_E2BIG);
    assert_int_equal(set_str(c, "j", "x", 0), IDEM_OK); /* evicts k */
    assert_absent(c, "k");
    free_cache(c);
}

/* Random keys and sizes against a byte bound: after every set the bytes
 * charged, summed over shards, stay within max_bytes. */
static void test_bytes_never_exceed_max(void **state)
{
    static char value[3000];
    struct idem_cache *c = new_cache(
        (struct idem_cache_opts){ .max_bytes = 4u << 20, .shards = 4 });
    uint64_t x = 88172645463325252u;
    char key[32];
    int i;

    (void)state;
    for (i = 0; i < 40000; i++) {
        int len;

        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        len = snprintf(key, sizeof(key), "k%llu",
                       (unsigned long long)(x % 20000));
        assert_int_equal(idem_cache_set(c, key, (size_t)len, value,
                                        (size_t)(x >> 40) % sizeof(value),
                                        (int64_t)(x % 3) * 1000),
                         IDEM_OK);
        assert_true(stats_of(c).bytes <= 4u << 20);
        if (i % 1000 == 0) {
            test_clock_advance(&te, 700);
            assert_true(idem_cache_bytes(c) <= 4u << 20);
        }
    }
    assert_true(stats_of(c).evicted > 0);
    assert_indexes(c, stats_of(c).entries, counts_of(c).timed);
    free_cache(c);
}

static void test_table_grows_and_shrinks(void **state)
{
    struct idem_cache *c = new_cache((struct idem_cache_opts){ .shards = 1 });
    char key[32];
    int i, n = 20000;

    (void)state;
    set_keys(c, "key-", n, 0, 0);
    assert_true(counts_of(c).buckets >= (size_t)n);
    assert_true(idem_cache_bytes(c) >
                (size_t)n * (IDEM_CACHE_ENTRY_OVERHEAD + sizeof(void *)));
    for (i = 0; i < n; i++) {
        assert_int_equal(
            idem_cache_remove(c, key, key_n(key, sizeof(key), "key-", i)),
            IDEM_OK);
        if (i == 4 * n / 5) /* shrunk twice, from 49,152 slots */
            assert_true(counts_of(c).buckets < (size_t)n);
    }
    assert_int_equal(stats_of(c).removes, n);
    assert_empty(c);
    free_cache(c);
}

/* -- foreach --------------------------------------------------------- */

struct walk {
    struct idem_cache *c;
    int seen;
    int stop_after;
    size_t value_bytes;
};

static int walk_cb(const void *key, size_t klen, struct idem_cache_value *v,
                   void *ud)
{
    struct walk *w = ud;

    w->seen++;
    w->value_bytes += idem_cache_value_len(v);
    /* the callback may write to the cache, even remove what it sees */
    assert_int_equal(idem_cache_remove(w->c, key, klen), IDEM_OK);
    return w->seen == w->stop_after ? 42 : 0;
}

static void test_foreach(void **state)
{
    struct idem_cache *c = new_cache((struct idem_cache_opts){ .shards = 4 });
    struct walk w = { .c = c };

    (void)state;
    set_keys(c, "short", 10, 5, 0);
    set_keys(c, "k", 90, 0, 0);
    test_clock_advance(&te, 5); /* 10 expired ones are not visited */
    w.stop_after = 30;
    assert_int_equal(idem_cache_foreach(c, walk_cb, &w), 42);
    assert_int_equal(w.seen, 30);
    w.stop_after = -1;
    assert_int_equal(idem_cache_foreach(c, walk_cb, &w), IDEM_OK);
    assert_int_equal(w.seen, 90);
    assert_int_equal(w.value_bytes, 90);
    idem_cache_tick(c);
    assert_int_equal(stats_of(c).expired, 10);
    assert_empty(c);
    free_cache(c);
}

/* -- get_or_compute -------------------------------------------------- */

struct compute {
    int calls;
    int rc;        /* what fn returns */
    size_t pieces; /* appends of "abc" */
    struct idem_cache *c;
};

static int compute_fn(const void *key, size_t klen, struct idem_cache_buf *out,
                      void *ud)
{
    struct compute *x = ud;
    struct idem_cache_value *v = NULL;
    size_t i;

    x->calls++;
    if (x->c) /* the same key from inside fn would wait for itself */
        assert_int_equal(
            idem_cache_get_or_compute(x->c, key, klen, compute_fn, x, 0, &v),
            IDEM_EDEADLK);
    for (i = 0; i < x->pieces; i++)
        if (idem_cache_buf_append(out, "abc", 3) != IDEM_OK)
            break;
    return x->rc;
}

static void test_get_or_compute(void **state)
{
    struct idem_cache *c = new_cache((struct idem_cache_opts){ 0 });
    struct compute x = { .pieces = 100 };
    struct idem_cache_value *v = NULL;
    int64_t left;

    (void)state;
    assert_int_equal(
        idem_cache_get_or_compute(c, K("k"), compute_fn, &x, 1000, &v),
        IDEM_OK);
    assert_int_equal(idem_cache_value_len(v), 300);
    assert_memory_equal((const char *)idem_cache_value_data(v) + 297, "abc", 3);
    idem_cache_value_release(v);
    assert_int_equal(
        idem_cache_get_or_compute(c, K("k"), compute_fn, &x, 1000, &v),
        IDEM_OK);
    idem_cache_value_release(v);
    assert_int_equal(x.calls, 1);
    assert_int_equal(idem_cache_ttl_left(c, K("k"), &left), IDEM_OK);
    assert_int_equal(left, 1000);
    assert_int_equal(idem_cache_bytes(c), IDEM_CACHE_ENTRY_OVERHEAD + 1 + 300);
    assert_int_equal(stats_of(c).computes, 1);
    /* an empty value is a value */
    x.pieces = 0;
    assert_int_equal(
        idem_cache_get_or_compute(c, K("e"), compute_fn, &x, 0, &v), IDEM_OK);
    assert_int_equal(idem_cache_value_len(v), 0);
    idem_cache_value_release(v);
    assert_indexes(c, 2, 1);
    free_cache(c);
}

static void test_get_or_compute_failures(void **state)
{
    struct idem_cache *c =
        new_cache((struct idem_cache_opts){ .max_bytes = 1000 });
    struct compute x = { .pieces = 2, .rc = IDEM_EIO };
    struct idem_cache_value *v = NULL;

    (void)state;
    assert_int_equal(
        idem_cache_get_or_compute(c, K("k"), compute_fn, &x, 0, &v), IDEM_EIO);
    assert_null(v);
    assert_empty(c);
    /* too big: the append fails, and so does fn whatever it returns */
    x = (struct compute){ .pieces = 400, .rc = IDEM_OK };
    assert_int_equal(
        idem_cache_get_or_compute(c, K("k"), compute_fn, &x, 0, &v),
        IDEM_E2BIG);
    assert_null(v);
    assert_empty(c);
    /* fn asking for its own key */
    x = (struct compute){ .pieces = 1, .c = c };
    assert_int_equal(
        idem_cache_get_or_compute(c, K("k"), compute_fn, &x, 0, &v), IDEM_OK);
    idem_cache_value_release(v);
    assert_int_equal(x.calls, 1);
    assert_int_equal(stats_of(c).computes, 3);
    free_cache(c);
}

/* -- Allocation failure ---------------------------------------------- */

static int sweep_compute(const void *key, size_t klen,
                         struct idem_cache_buf *out, void *ud)
{
    static const char chunk[100];
    int i, rc = IDEM_OK;

    (void)key;
    (void)klen;
    (void)ud;
    for (i = 0; i < 5 && rc == IDEM_OK; i++) /* grows the buffer */
        rc = idem_cache_buf_append(out, chunk, sizeof(chunk));
    return rc;
}

static int sweep_visit(const void *key, size_t klen, struct idem_cache_value *v,
                       void *ud)
{
    (void)key;
    (void)klen;
    (void)v;
    (*(int *)ud)++;
    return 0;
}

static bool ok_or_nomem(int rc)
{
    return rc == IDEM_OK || rc == IDEM_ENOMEM;
}

/* Sets that grow the tables, updates, computes, a foreach, removes that
 * shrink them. Every answer is IDEM_OK or IDEM_ENOMEM and the counts
 * always agree with what succeeded. */
static void failing_scenario(struct idem_cache *c)
{
    struct idem_cache_value *v;
    char key[16];
    int i, rc, held = 0, seen = 0, computed = 0;

    for (i = 0; i < 80; i++) {
        size_t len = key_n(key, sizeof(key), "k", i);

        rc = idem_cache_set(c, key, len, key, len, 1000);
        assert_true(ok_or_nomem(rc));
        held += rc == IDEM_OK;
        assert_int_equal(stats_of(c).entries, held);
    }
    rc = idem_cache_update(c, K("k1"), K("updated"));
    assert_true(ok_or_nomem(rc) || rc == IDEM_ENOTFOUND);
    rc =
        idem_cache_get_or_compute(c, K("computed"), sweep_compute, NULL, 0, &v);
    assert_true(ok_or_nomem(rc));
    if (rc == IDEM_OK) {
        assert_int_equal(idem_cache_value_len(v), 500);
        idem_cache_value_release(v);
        computed = 1;
    }
    rc = idem_cache_foreach(c, sweep_visit, &seen);
    assert_true(ok_or_nomem(rc));
    assert_true(seen <= held + computed);
    assert_int_equal(idem_cache_size(c), held + computed);
    for (i = 0; i < 60; i++) {
        rc = idem_cache_remove(c, key, key_n(key, sizeof(key), "k", i));
        assert_true(rc == IDEM_OK || rc == IDEM_ENOTFOUND);
        held -= rc == IDEM_OK;
    }
    test_clock_advance(&te, 1000);
    idem_cache_tick(c);
    assert_indexes(c, (size_t)computed, 0);
}

/* One run with allocation n failing; returns the failures it saw. */
static long failing_run(long n)
{
    struct idem_cache_opts o = { .shards = 2, .env = &te.env };
    struct idem_cache *c = NULL;
    int rc;

    test_env_init(&te, T0);
    test_env_fail_in(&te, n);
    rc = idem_cache_new(&o, &c);
    if (rc != IDEM_OK) {
        assert_int_equal(rc, IDEM_ENOMEM);
        assert_null(c);
        assert_int_equal(atomic_load(&te.live), 0);
        return atomic_load(&te.failures);
    }
    failing_scenario(c);
    free_cache(c);
    return atomic_load(&te.failures);
}

static void test_allocation_failure_sweep(void **state)
{
    long n;

    (void)state;
    n = test_alloc_sweep(failing_run, 100000);
    assert_true(n > 100); /* the sweep reached every set's allocation */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_new_defaults_and_bad_options),
        cmocka_unit_test(test_bad_arguments_to_writes),
        cmocka_unit_test(test_bad_arguments_to_reads),
        cmocka_unit_test(test_set_get_replace),
        cmocka_unit_test(test_keys_and_values_are_bytes),
        cmocka_unit_test(test_handle_outlives_entry_and_cache),
        cmocka_unit_test(test_set_nx),
        cmocka_unit_test(test_update_keeps_ttl),
        cmocka_unit_test(test_expiry_is_exact),
        cmocka_unit_test(test_reads_reclaim_expired),
        cmocka_unit_test(test_update_ttl),
        cmocka_unit_test(test_tick_reclaims_without_reads),
        cmocka_unit_test(test_writes_reclaim_expired),
        cmocka_unit_test(test_max_entries_clock),
        cmocka_unit_test(test_eviction_keeps_probes_short),
        cmocka_unit_test(test_expired_victim_counts_as_expired),
        cmocka_unit_test(test_pins),
        cmocka_unit_test(test_too_big),
        cmocka_unit_test(test_bytes_never_exceed_max),
        cmocka_unit_test(test_table_grows_and_shrinks),
        cmocka_unit_test(test_foreach),
        cmocka_unit_test(test_get_or_compute),
        cmocka_unit_test(test_get_or_compute_failures),
        cmocka_unit_test(test_allocation_failure_sweep),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
