/* cache benchmark: 1M entries of 16-byte keys and 64-byte values (TTL 1 h)
 * set, read, missed and removed, one thread and two; the same gets on a
 * plain open-addressing table over the same keys (the baseline, STYLE
 * §22), once more reading the coarse clock per hit as a table with
 * expiry must (the baseline's terms for entries with a TTL), and the
 * cache's gets again on entries with no TTL (a get then reads no clock:
 * the plain baseline's terms); resident bytes per entry beyond key and
 * value; the gcache reproduction's resident growth; and what is left after
 * sustained unique keys with TTL 1 s expire. Prints "name value unit"
 * lines; best of REPS runs per speed. Sets twice: cache.set_cold on a
 * fresh heap (the first run, paying the kernel's first touch of each
 * page), cache.set on a heap that keeps its memory between runs (the
 * later ones). */
#include <limits.h>
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "bench.h"
#include "idem/cache.h"

#define REPS 3
#define ENTRIES 1000000L
#define STRIDE 7919L /* coprime with ENTRIES: a permutation of the keys */
#define TTL_MS (3600 * 1000)
#define SEED_ITERS 100000L
#define SUSTAINED_SECONDS 15
#define SUSTAINED_PER_MS 100 /* 100,000 keys per second */

struct key16 {
    uint64_t n;
    uint64_t salt;
};

static const unsigned char value64[64];

static void die(const char *what)
{
    fprintf(stderr, "bench_cache: %s\n", what);
    exit(1);
}

static struct idem_cache *cache(const struct idem_env *env)
{
    struct idem_cache_opts o = { .max_bytes = (size_t)1 << 30, .env = env };
    struct idem_cache *c = NULL;

    if (idem_cache_new(&o, &c) != IDEM_OK)
        die("cannot create cache");
    return c;
}

static double ops_per_s(long ops, uint64_t t0)
{
    return (double)ops * 1e9 / (double)(bench_now_ns() - t0);
}

static double best(double a, double b)
{
    return a > b ? a : b;
}

static double run_sets(struct idem_cache *c, int64_t ttl_ms)
{
    struct key16 k = { 0, 1 };
    uint64_t t0 = bench_now_ns();
    long i;

    for (i = 0; i < ENTRIES; i++) {
        k.n = (uint64_t)i;
        if (idem_cache_set(c, &k, sizeof(k), value64, sizeof(value64),
                           ttl_ms) != IDEM_OK)
            die("set failed");
    }
    return ops_per_s(ENTRIES, t0);
}

/* Get every key once in a scrambled order; salt 1 hits, others miss. */
static double run_gets(struct idem_cache *c, uint64_t salt, long offset)
{
    struct key16 k = { 0, salt };
    struct idem_cache_value *v;
    uint64_t t0 = bench_now_ns();
    long i, found = 0;

    for (i = 0; i < ENTRIES; i++) {
        k.n = (uint64_t)((i * STRIDE + offset) % ENTRIES);
        if (idem_cache_get(c, &k, sizeof(k), &v) == IDEM_OK) {
            found++;
            idem_cache_value_release(v);
        }
    }
    if (found != (salt == 1 ? ENTRIES : 0))
        die("unexpected get results");
    return ops_per_s(ENTRIES, t0);
}

static double run_removes(struct idem_cache *c)
{
    struct key16 k = { 0, 1 };
    uint64_t t0 = bench_now_ns();
    long i;

    for (i = 0; i < ENTRIES; i++) {
        k.n = (uint64_t)((i * STRIDE) % ENTRIES);
        if (idem_cache_remove(c, &k, sizeof(k)) != IDEM_OK)
            die("remove failed");
    }
    return ops_per_s(ENTRIES, t0);
}

struct reader {
    struct idem_cache *c;
    long offset;
};

static void *reader_main(void *arg)
{
    struct reader *r = arg;

    run_gets(r->c, 1, r->offset);
    return NULL;
}

/* Two threads each get every key once; total gets per second. */
static double run_gets_2threads(struct idem_cache *c)
{
    struct reader r[2] = { { c, 0 }, { c, ENTRIES / 2 } };
    pthread_t th[2];
    uint64_t t0 = bench_now_ns();
    int i;

    for (i = 0; i < 2; i++)
        pthread_create(&th[i], NULL, reader_main, &r[i]);
    for (i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    return ops_per_s(2 * ENTRIES, t0);
}

/* -- Baseline: a plain open-addressing table, same keys ------------- */

/* A record as the cache keeps one: key and value in one allocation, and
 * the time it expires (for the clocked loop; 88 bytes are the same
 * 96-byte malloc chunk as 80). */
struct rec {
    struct key16 k;
    unsigned char value[64];
    uint64_t expires_ms;
};

/* Linear probing, load 1/2, the full hash stored beside the pointer: no
 * locks, no references, no expiry, no eviction. */
struct plain {
    uint64_t mask;
    struct plain_slot {
        uint64_t hash;
        struct rec *rec;
    } * slots;
};

/* CLOCK_MONOTONIC_COARSE in ms, as the cache's get reads it. */
static uint64_t coarse_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static uint64_t key_hash(const struct key16 *k)
{
    return XXH3_64bits_withSeed(k, sizeof(*k), 12345);
}

static void plain_fill(struct plain *t)
{
    struct key16 k = { 0, 1 };
    long i;

    t->mask = ((uint64_t)2 << 20) - 1; /* 2M slots for 1M keys */
    t->slots = calloc(t->mask + 1, sizeof(*t->slots));
    if (!t->slots)
        die("out of memory");
    for (i = 0; i < ENTRIES; i++) {
        struct rec *r = malloc(sizeof(*r));
        uint64_t h, j;

        if (!r)
            die("out of memory");
        k.n = (uint64_t)i;
        r->k = k;
        memset(r->value, 0, sizeof(r->value));
        r->expires_ms = coarse_ms() + TTL_MS;
        h = key_hash(&k);
        for (j = h & t->mask; t->slots[j].rec; j = (j + 1) & t->mask)
            ;
        t->slots[j] = (struct plain_slot){ h, r };
    }
}

static inline __attribute__((always_inline)) const struct rec *
plain_get(const struct plain *t, const struct key16 *k)
{
    uint64_t h = key_hash(k), j;

    for (j = h & t->mask; t->slots[j].rec; j = (j + 1) & t->mask)
        if (t->slots[j].hash == h &&
            memcmp(&t->slots[j].rec->k, k, sizeof(*k)) == 0)
            return t->slots[j].rec;
    return NULL;
}

/* The hit loop of run_gets on the plain table. clocked: as a table
 * with expiry would, read the coarse clock for each hit and count it
 * only if the record is live (what the cache's get does for an entry
 * with a TTL). Inlined into each caller, so that the plain loop has no
 * test of clocked. */
static inline __attribute__((always_inline)) double
plain_gets(const struct plain *t, bool clocked)
{
    struct key16 k = { 0, 1 };
    uint64_t t0 = bench_now_ns();
    long i, found = 0;

    for (i = 0; i < ENTRIES; i++) {
        const struct rec *r;

        k.n = (uint64_t)((i * STRIDE) % ENTRIES);
        r = plain_get(t, &k);
        if (clocked)
            found += r && r->expires_ms > coarse_ms();
        else
            found += r && r->value[0] == 0;
    }
    if (found != ENTRIES)
        die("unexpected plain table results");
    return ops_per_s(ENTRIES, t0);
}

static double run_plain_gets(const struct plain *t)
{
    return plain_gets(t, false);
}

static double run_plain_gets_clocked(const struct plain *t)
{
    return plain_gets(t, true);
}

static void plain_free(struct plain *t)
{
    uint64_t j;

    for (j = 0; j <= t->mask; j++)
        free(t->slots[j].rec);
    free(t->slots);
}

/* -- gcache's reproduction: set(unique key, 1 MiB, 30 min), remove ---- */

static void set_remove_1mib(struct idem_cache *c, const void *mib, long from,
                            long to)
{
    struct key16 k = { 0, 2 };
    long i;

    for (i = from; i < to; i++) {
        k.n = (uint64_t)i;
        if (idem_cache_set(c, &k, sizeof(k), mib, 1u << 20, 30 * 60 * 1000) !=
                IDEM_OK ||
            idem_cache_remove(c, &k, sizeof(k)) != IDEM_OK)
            die("seed reproduction failed");
    }
}

static double seed_repro_mib(void)
{
    struct idem_cache *c = cache(NULL);
    void *mib = calloc(1, 1u << 20);
    size_t rss0, rss1;

    if (!mib)
        die("out of memory");
    set_remove_1mib(c, mib, 0, SEED_ITERS / 100);
    rss0 = bench_rss_bytes();
    set_remove_1mib(c, mib, SEED_ITERS / 100, SEED_ITERS);
    rss1 = bench_rss_bytes();
    idem_cache_free(c);
    free(mib);
    return ((double)rss1 - (double)rss0) / (1024.0 * 1024.0);
}

/* -- Sustained unique keys, TTL 1 s, on a fake clock ------------------ */

static atomic_uint_fast64_t fake_ms;

static uint64_t fake_now(void *ud)
{
    (void)ud;
    return atomic_load(&fake_ms);
}

/* SUSTAINED_SECONDS of unique keys with a tick each second, as a server's
 * timer would; then the clock passes the last expiry and the timer fires
 * once more. Returns the entries still held. */
static double sustained_left(void)
{
    struct idem_env env = { .now_ms = fake_now };
    struct idem_cache_stats st;
    struct idem_cache *c;
    struct key16 k = { 0, 3 };
    long ms, i;

    atomic_store(&fake_ms, 1000000);
    c = cache(&env);
    for (ms = 0; ms < SUSTAINED_SECONDS * 1000L; ms++) {
        for (i = 0; i < SUSTAINED_PER_MS; i++, k.n++)
            if (idem_cache_set(c, &k, sizeof(k), value64, sizeof(value64),
                               1000) != IDEM_OK)
                die("sustained set failed");
        atomic_fetch_add(&fake_ms, 1);
        if (ms % 1000 == 999)
            idem_cache_tick(c);
    }
    atomic_fetch_add(&fake_ms, 2000);
    idem_cache_tick(c);
    idem_cache_stats(c, &st);
    idem_cache_free(c);
    return (double)st.entries;
}

int main(void)
{
    double set = 0, set_cold = 0, hit = 0, miss = 0, rm = 0, hit2 = 0;
    double overhead = 0, plain = 0, hit_no_ttl = 0, plain_clocked = 0;
    struct plain pt;
    size_t rss0;
    int r;

    for (r = 0; r <= REPS; r++) {
        struct idem_cache *c = cache(NULL);

        rss0 = bench_rss_bytes();
        if (r == 0) {
            /* a fresh heap: every page the entries and the table take is
             * touched for the first time (the kernel's page faults, here
             * a third of the time); and what the entries really cost */
            set_cold = run_sets(c, TTL_MS);
            overhead = ((double)bench_rss_bytes() - (double)rss0) / ENTRIES -
                       sizeof(struct key16) - sizeof(value64);
        } else {
            set = best(set, run_sets(c, TTL_MS));
        }
        hit = best(hit, run_gets(c, 1, 0));
        miss = best(miss, run_gets(c, 9, 0));
        hit2 = best(hit2, run_gets_2threads(c));
        rm = best(rm, run_removes(c));
        idem_cache_free(c);
        c = cache(NULL);
        run_sets(c, 0);
        hit_no_ttl = best(hit_no_ttl, run_gets(c, 1, 0));
        idem_cache_free(c);
        plain_fill(&pt);
        plain = best(plain, run_plain_gets(&pt));
        plain_clocked = best(plain_clocked, run_plain_gets_clocked(&pt));
        plain_free(&pt);
        /* from here on the heap keeps what it was given, so later runs
         * measure the cache on memory a server past its warm-up holds */
        mallopt(M_TRIM_THRESHOLD, INT_MAX);
        mallopt(M_MMAP_THRESHOLD, 32 << 20);
    }
    bench_print("cache.set", set, "ops/s");
    bench_print("cache.set_cold", set_cold, "ops/s");
    bench_print("cache.get_hit", hit, "ops/s");
    bench_print("cache.get_miss", miss, "ops/s");
    bench_print("cache.remove", rm, "ops/s");
    bench_print("cache.get_hit_2threads", hit2, "ops/s");
    bench_print("cache.get_hit_2threads_ratio", hit2 / hit, "x");
    bench_print("cache.baseline_get_hit", plain, "ops/s");
    bench_print("cache.get_vs_baseline", plain / hit, "x");
    bench_print("cache.baseline_get_hit_clocked", plain_clocked, "ops/s");
    bench_print("cache.get_vs_baseline_clocked", plain_clocked / hit, "x");
    bench_print("cache.get_hit_no_ttl", hit_no_ttl, "ops/s");
    bench_print("cache.get_vs_baseline_no_ttl", plain / hit_no_ttl, "x");
    bench_print("cache.overhead", overhead, "bytes/entry");
    bench_print("cache.seed_repro_rss_growth", seed_repro_mib(), "MiB");
    bench_print("cache.sustained_entries_after_expiry", sustained_left(),
                "entries");
    return 0;
}
