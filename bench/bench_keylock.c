/* keylock benchmark: ns per lock+unlock pair against a bare pthread mutex
 * measured in the same run, both before any thread exists (_st: glibc then
 * skips atomics) and with a second thread alive (_mt: the fair baseline,
 * STYLE §22); allocations per pair, counted; the footprint after 10M keys.
 * Prints "name value unit" lines; best of REPS runs per figure. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "idem/keylock.h"

#define REPS 5
#define OPS 4000000L
#define DISTINCT 10000000L
#define SHARED_KEYS 16

struct key16 {
    uint64_t n;
    uint64_t salt;
};

/* libc malloc, counting every allocation and resize. */
static atomic_long allocs;

static void *counting_alloc(void *ud, void *ptr, size_t size)
{
    (void)ud;
    if (size == 0) {
        free(ptr);
        return NULL;
    }
    atomic_fetch_add_explicit(&allocs, 1, memory_order_relaxed);
    return realloc(ptr, size);
}

static const struct idem_env counting_env = { .alloc = counting_alloc };

static struct idem_keylock *table(void)
{
    struct idem_keylock_opts o = { .env = &counting_env };
    struct idem_keylock *t = NULL;

    if (idem_keylock_new(&o, &t) != IDEM_OK) {
        fprintf(stderr, "bench_keylock: cannot create table\n");
        _exit(1);
    }
    return t;
}

static double ns_mutex(void)
{
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    uint64_t t0 = bench_now_ns();
    long i;

    for (i = 0; i < OPS; i++) {
        pthread_mutex_lock(&mu);
        pthread_mutex_unlock(&mu);
    }
    return (double)(bench_now_ns() - t0) / OPS;
}

static double ns_uncontended(struct idem_keylock *t)
{
    struct key16 k = { 42, 0x1d3 };
    uint64_t t0 = bench_now_ns();
    long i;

    for (i = 0; i < OPS; i++) {
        idem_keylock_lock(t, &k, sizeof(k));
        idem_keylock_unlock(t, &k, sizeof(k));
    }
    return (double)(bench_now_ns() - t0) / OPS;
}

static double ns_distinct(struct idem_keylock *t, uint64_t salt)
{
    struct key16 k = { 0, salt };
    uint64_t t0 = bench_now_ns();
    long i;

    for (i = 0; i < OPS; i++) {
        k.n = (uint64_t)i;
        idem_keylock_lock(t, &k, sizeof(k));
        idem_keylock_unlock(t, &k, sizeof(k));
    }
    return (double)(bench_now_ns() - t0) / OPS;
}

/* New keys again, with a salt the timed runs did not use. */
static double ns_distinct_fresh(struct idem_keylock *t)
{
    return ns_distinct(t, 0xfeed);
}

/* Allocations per pair over OPS pairs of fn. */
static double allocs_per_pair(double (*fn)(struct idem_keylock *),
                              struct idem_keylock *t)
{
    long before = atomic_load(&allocs);

    fn(t);
    return (double)(atomic_load(&allocs) - before) / OPS;
}

struct worker {
    struct idem_keylock *t;
    uint64_t salt;
    long from, to;
};

/* Lock+unlock keys (n % modulo) for n in [from, to); modulo 0: all new. */
static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct key16 k = { 0, w->salt };
    long i;

    for (i = w->from; i < w->to; i++) {
        k.n = (uint64_t)i;
        idem_keylock_lock(w->t, &k, sizeof(k));
        idem_keylock_unlock(w->t, &k, sizeof(k));
    }
    return NULL;
}

static void *shared_main(void *arg)
{
    struct worker *w = arg;
    struct key16 k = { 0, 7 };
    long i;

    for (i = w->from; i < w->to; i++) {
        k.n = (uint64_t)(i % SHARED_KEYS);
        idem_keylock_lock(w->t, &k, sizeof(k));
        idem_keylock_unlock(w->t, &k, sizeof(k));
    }
    return NULL;
}

/* Wall time of two threads running fn over [0, per_thread) each. */
static uint64_t two_threads(void *(*fn)(void *), struct idem_keylock *t,
                            long per_thread)
{
    struct worker w[2];
    pthread_t th[2];
    uint64_t t0 = bench_now_ns();
    int i;

    for (i = 0; i < 2; i++) {
        w[i] = (struct worker){ t, (uint64_t)i + 100, 0, per_thread };
        pthread_create(&th[i], NULL, fn, &w[i]);
    }
    for (i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    return bench_now_ns() - t0;
}

/* A second thread that sleeps on a condition until told to end: while it
 * lives the process is multi-threaded and glibc's mutex uses atomics. */
struct sleeper {
    pthread_mutex_t mu;
    pthread_cond_t cond;
    int done;
    pthread_t th;
};

static void *sleeper_main(void *arg)
{
    struct sleeper *s = arg;

    pthread_mutex_lock(&s->mu);
    while (!s->done)
        pthread_cond_wait(&s->cond, &s->mu);
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

static void sleeper_start(struct sleeper *s)
{
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cond, NULL);
    s->done = 0;
    if (pthread_create(&s->th, NULL, sleeper_main, s) != 0) {
        fprintf(stderr, "bench_keylock: cannot create a thread\n");
        _exit(1);
    }
}

static void sleeper_stop(struct sleeper *s)
{
    pthread_mutex_lock(&s->mu);
    s->done = 1;
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->th, NULL);
}

static double best(double a, double b)
{
    return a < b ? a : b;
}

/* The pair against the mutex, best of REPS, in the process as it is now. */
static void pair_vs_mutex(struct idem_keylock *t, double *unc, double *mutex)
{
    int r;

    *unc = *mutex = 1e9;
    for (r = 0; r < REPS; r++) {
        *mutex = best(*mutex, ns_mutex());
        *unc = best(*unc, ns_uncontended(t));
    }
}

static void footprint(struct idem_keylock *t)
{
    struct idem_keylock_stats st;
    size_t rss0, rss1;

    two_threads(worker_main, t, DISTINCT / 200); /* warm both arenas */
    rss0 = bench_rss_bytes();
    two_threads(worker_main, t, DISTINCT / 2);
    rss1 = bench_rss_bytes();
    idem_keylock_stats(t, &st);
    bench_print("keylock.entries_after_10M", (double)st.entries, "entries");
    bench_print("keylock.rss_growth_10M",
                ((double)rss1 - (double)rss0) / (1024.0 * 1024.0), "MiB");
}

int main(void)
{
    struct idem_keylock *t = table();
    double unc_st, mutex_st, unc, mutex, dist = 1e9, cont = 1e9, nalloc;
    struct sleeper sl;
    int r;

    pair_vs_mutex(t, &unc_st, &mutex_st); /* no thread has existed yet */
    sleeper_start(&sl);
    pair_vs_mutex(t, &unc, &mutex);
    nalloc = allocs_per_pair(ns_uncontended, t);
    for (r = 0; r < REPS; r++) {
        dist = best(dist, ns_distinct(t, (uint64_t)r));
        cont = best(cont, (double)two_threads(shared_main, t, OPS / 2) / OPS);
    }
    bench_print("keylock.uncontended", unc, "ns/op");
    bench_print("keylock.distinct", dist, "ns/op");
    bench_print("keylock.contended2", cont, "ns/op");
    bench_print("mutex.baseline", mutex, "ns/op");
    bench_print("keylock.uncontended_st", unc_st, "ns/op");
    bench_print("mutex.baseline_st", mutex_st, "ns/op");
    bench_print("keylock.uncontended_vs_mutex_st", unc_st / mutex_st, "ratio");
    bench_print("keylock.uncontended_vs_mutex_mt", unc / mutex, "ratio");
    bench_print("keylock.uncontended.allocs", nalloc, "allocs/op");
    bench_print("keylock.distinct.allocs",
                allocs_per_pair(ns_distinct_fresh, t), "allocs/op");
    footprint(t);
    sleeper_stop(&sl);
    idem_keylock_free(t);
    return 0;
}
