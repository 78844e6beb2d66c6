/* keylock benchmark: ns per lock+unlock pair, against a bare pthread mutex
 * measured in the same run, and the table's footprint after 10M distinct
 * keys. Prints "name value unit" lines; best of REPS runs per figure. */
#include <pthread.h>
#include <stdint.h>
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

static struct idem_keylock *table(void)
{
    struct idem_keylock *t = NULL;

    if (idem_keylock_new(NULL, &t) != IDEM_OK) {
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

static double best(double a, double b)
{
    return a < b ? a : b;
}

int main(void)
{
    struct idem_keylock *t = table();
    double mutex = 1e9, unc = 1e9, dist = 1e9, cont = 1e9;
    struct idem_keylock_stats st;
    size_t rss0, rss1;
    int r;

    for (r = 0; r < REPS; r++) {
        mutex = best(mutex, ns_mutex());
        unc = best(unc, ns_uncontended(t));
        dist = best(dist, ns_distinct(t, (uint64_t)r));
        cont = best(cont, (double)two_threads(shared_main, t, OPS / 2) / OPS);
    }
    bench_print("keylock.uncontended", unc, "ns/op");
    bench_print("keylock.distinct", dist, "ns/op");
    bench_print("keylock.contended2", cont, "ns/op");
    bench_print("mutex.baseline", mutex, "ns/op");
    bench_print("keylock.uncontended_vs_mutex", unc / mutex, "ratio");

    two_threads(worker_main, t, DISTINCT / 200); /* warm both arenas */
    rss0 = bench_rss_bytes();
    two_threads(worker_main, t, DISTINCT / 2);
    rss1 = bench_rss_bytes();
    idem_keylock_stats(t, &st);
    bench_print("keylock.entries_after_10M", (double)st.entries, "entries");
    bench_print("keylock.rss_growth_10M",
                ((double)rss1 - (double)rss0) / (1024.0 * 1024.0), "MiB");
    idem_keylock_free(t);
    return 0;
}
