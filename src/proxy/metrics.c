/* idemproxy's metrics: relaxed atomic counters bumped by the workers, and
 * the Prometheus text the admin listener serves. The families are a table
 * of offsets into one snapshot taken at render time. */
#include "metrics.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include "idem/idem.h"
#include "idem/redis.h"
#include "idem/store.h"

struct metrics metrics;

/* Upper bounds of the latency buckets, in microseconds and as printed. */
static const struct {
    uint64_t us;
    const char *le;
} buckets[METRICS_LATENCY_BUCKETS] = {
    { 500, "0.0005" },  { 1000, "0.001" },    { 2500, "0.0025" },
    { 5000, "0.005" },  { 10000, "0.01" },    { 25000, "0.025" },
    { 50000, "0.05" },  { 100000, "0.1" },    { 250000, "0.25" },
    { 500000, "0.5" },  { 1000000, "1" },     { 2500000, "2.5" },
    { 5000000, "5" },   { 10000000, "10" },   { 30000000, "30" },
    { 60000000, "60" }, { 120000000, "120" },
};

static size_t bucket_of(uint64_t us)
{
    size_t i = 0;

    while (i < METRICS_LATENCY_BUCKETS && us > buckets[i].us)
        i++;
    return i;
}

void metrics_observe_upstream(uint64_t us)
{
    size_t i = bucket_of(us);

    atomic_fetch_add_explicit(&metrics.latency_bucket[i], 1,
                              memory_order_relaxed);
    atomic_fetch_add_explicit(&metrics.latency_sum_us, us,
                              memory_order_relaxed);
    atomic_fetch_add_explicit(&metrics.latency_count, 1, memory_order_relaxed);
}

const char *metrics_outcome_name(int outcome)
{
    return outcome == METRICS_OUTCOME_ERROR
               ? "error"
               : idem_outcome_name((enum idem_outcome)outcome);
}

void metrics_observe_request(int outcome, unsigned status, uint64_t us)
{
    unsigned class = status >= 100 && status < 600 ? status / 100 - 1 : 4;

    if (outcome < 0 || outcome >= METRICS_OUTCOMES)
        outcome = METRICS_OUTCOME_ERROR;
    atomic_fetch_add_explicit(
        &metrics.request_bucket[outcome][class][bucket_of(us)], 1,
        memory_order_relaxed);
    atomic_fetch_add_explicit(&metrics.request_sum_us[outcome][class], us,
                              memory_order_relaxed);
}

/* -- A growing text buffer --------------------------------------------- */

struct text {
    char *p;
    size_t len, cap;
    bool failed;
};

static void add(struct text *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void add(struct text *t, const char *fmt, ...)
{
    va_list ap;
    int n;

    while (!t->failed) {
        va_start(ap, fmt);
        n = vsnprintf(t->p + t->len, t->cap - t->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            t->failed = true;
        } else if ((size_t)n < t->cap - t->len) {
            t->len += (size_t)n;
            return;
        } else {
            char *grown = realloc(t->p, t->cap * 2 + (size_t)n);

            t->failed = !grown;
            t->p = grown ? grown : t->p;
            t->cap = grown ? t->cap * 2 + (size_t)n : t->cap;
        }
    }
}

/* -- What is rendered ------------------------------------------------- */

/* Every figure, read once per render. */
struct snap {
    struct idem_engine_stats e;
    struct idem_store_stats s;
    struct idem_store_redis_stats r; /* zeros for the memory store */
    uint64_t results[METRICS_RESULTS];
    uint64_t connections_open;
    uint64_t connections_accepted;
    uint64_t upstream_connects;
    uint64_t store_bypass;
    uint64_t client_bytes_in, client_bytes_out;
    uint64_t upstream_bytes_in, upstream_bytes_out;
};

struct family {
    const char *name;
    const char *type;
    const char *help;
};

/* One sample: its family, its labels ("" for none), its figure. */
struct sample {
    const struct family *f;
    const char *labels;
    size_t off;
};

static const struct family f_requests = {
    "idem_requests_total", "counter",
    "Requests by the engine's decision; error: refused by the proxy first"
};
static const struct family f_errors = {
    "idem_proxy_errors_total", "counter",
    "Requests that failed in the proxy, by kind"
};
static const struct family f_completions = {
    "idem_completions_total", "counter",
    "Responses to proceeding requests: stored, not stored, stale lease"
};
static const struct family f_wait_timeouts = {
    "idem_wait_timeouts_total", "counter",
    "Waits on a key in flight that ended in 409"
};
static const struct family f_entries = { "idem_store_entries", "gauge",
                                         "Records held, in flight or done" };
static const struct family f_bytes = { "idem_store_bytes", "gauge",
                                       "Bytes charged against max-memory" };
static const struct family f_in_flight = { "idem_keys_in_flight", "gauge",
                                           "Keys whose request is running" };
static const struct family f_locks = { "idem_lock_entries", "gauge",
                                       "Per-key lock entries (0 when idle)" };
static const struct family f_evictions = {
    "idem_store_evictions_total", "counter",
    "Completed records evicted for room"
};
static const struct family f_expirations = {
    "idem_store_expirations_total", "counter",
    "Records whose lifetime or lease ended"
};
static const struct family f_waiting = { "idem_waiting_requests", "gauge",
                                         "Requests waiting on a key now" };
static const struct family f_open = { "idem_connections_open", "gauge",
                                      "Client connections open" };
static const struct family f_accepted = { "idem_connections_total", "counter",
                                          "Client connections accepted" };
static const struct family f_connects = {
    "idem_upstream_connects_total", "counter",
    "Connections opened to the upstream"
};
static const struct family f_bytes_in = {
    "idem_received_bytes_total", "counter",
    "Bytes read, by peer: client or upstream"
};
static const struct family f_bytes_out = {
    "idem_sent_bytes_total", "counter",
    "Bytes written, by peer: client or upstream"
};
static const struct family f_bypass = {
    "idem_store_bypass_total", "counter",
    "Requests forwarded without the guarantee: store down, --store-failure "
    "open"
};
static const struct family f_renewals = { "idem_lease_renewals_total",
                                          "counter",
                                          "Leases extended for slow requests" };
static const struct family f_redis_up = { "idem_redis_connections", "gauge",
                                          "Redis connections up (one per "
                                          "worker when healthy)" };
static const struct family f_redis_connects = { "idem_redis_connects_total",
                                                "counter",
                                                "Redis connections made" };
static const struct family f_redis_commands = { "idem_redis_commands_total",
                                                "counter",
                                                "Redis commands sent" };
static const struct family f_redis_errors = {
    "idem_redis_errors_total", "counter",
    "Redis commands failed: error reply, lost connection or timeout"
};
static const struct family f_redis_timeouts = {
    "idem_redis_timeouts_total", "counter",
    "Redis commands or connects past --redis-timeout"
};

static const struct family f_redis_redirects = {
    "idem_redis_redirects_total", "counter",
    "Redis Cluster MOVED and ASK answers followed"
};
static const struct family f_redis_failovers = {
    "idem_redis_failovers_total", "counter",
    "Redis primaries replaced (Sentinel or Cluster), as each worker saw them"
};
static const struct family f_redis_wait_timeouts = {
    "idem_redis_wait_timeouts_total", "counter",
    "WAITs answered by fewer replicas than --redis-replicas"
};
static const struct family f_redis_refreshes = {
    "idem_redis_slot_map_refreshes_total", "counter",
    "Redis Cluster slot maps taken (CLUSTER SLOTS)"
};

static const struct family f_body_omitted = {
    "idem_stored_body_omitted_total", "counter",
    "Responses stored as status and headers only: body over "
    "--max-stored-body or larger than a record may be"
};

#define SNAP(f) offsetof(struct snap, f)

static const struct sample samples[] = {
    { &f_errors, "kind=\"upstream_error\"",
      SNAP(results[METRICS_UPSTREAM_ERROR]) },
    { &f_errors, "kind=\"upstream_timeout\"",
      SNAP(results[METRICS_UPSTREAM_TIMEOUT]) },
    { &f_errors, "kind=\"client_error\"", SNAP(results[METRICS_CLIENT_ERROR]) },
    { &f_errors, "kind=\"client_gone\"", SNAP(results[METRICS_CLIENT_GONE]) },
    { &f_completions, "result=\"stored\"", SNAP(e.stored) },
    { &f_completions, "result=\"not_stored\"", SNAP(e.not_stored) },
    { &f_completions, "result=\"stale\"", SNAP(e.stale) },
    { &f_completions, "result=\"unknown\"", SNAP(e.unknown) },
    { &f_body_omitted, "", SNAP(e.body_omitted) },
    { &f_wait_timeouts, "", SNAP(e.wait_timeouts) },
    { &f_entries, "", SNAP(s.records) },
    { &f_bytes, "", SNAP(s.bytes) },
    { &f_in_flight, "", SNAP(e.in_flight) },
    { &f_locks, "", SNAP(s.lock_entries) },
    { &f_evictions, "", SNAP(s.evicted) },
    { &f_expirations, "", SNAP(s.expired) },
    { &f_waiting, "", SNAP(e.waiting) },
    { &f_open, "", SNAP(connections_open) },
    { &f_accepted, "", SNAP(connections_accepted) },
    { &f_connects, "", SNAP(upstream_connects) },
    { &f_bytes_in, "peer=\"client\"", SNAP(client_bytes_in) },
    { &f_bytes_in, "peer=\"upstream\"", SNAP(upstream_bytes_in) },
    { &f_bytes_out, "peer=\"client\"", SNAP(client_bytes_out) },
    { &f_bytes_out, "peer=\"upstream\"", SNAP(upstream_bytes_out) },
    { &f_bypass, "", SNAP(store_bypass) },
    { &f_renewals, "", SNAP(e.renewed) },
    { &f_redis_up, "", SNAP(r.connections) },
    { &f_redis_connects, "", SNAP(r.connects) },
    { &f_redis_commands, "", SNAP(r.commands) },
    { &f_redis_errors, "", SNAP(r.errors) },
    { &f_redis_timeouts, "", SNAP(r.timeouts) },
    { &f_redis_redirects, "", SNAP(r.redirects) },
    { &f_redis_failovers, "", SNAP(r.failovers) },
    { &f_redis_wait_timeouts, "", SNAP(r.wait_timeouts) },
    { &f_redis_refreshes, "", SNAP(r.refreshes) },
};

#define NSAMPLES (sizeof(samples) / sizeof(samples[0]))

/* The engine's final outcomes (PENDING is a step, never counted). */
static const enum idem_outcome outcomes[] = {
    IDEM_OUTCOME_PASS,        IDEM_OUTCOME_PROCEED,  IDEM_OUTCOME_REPLAY,
    IDEM_OUTCOME_CONFLICT,    IDEM_OUTCOME_MISMATCH, IDEM_OUTCOME_INVALID,
    IDEM_OUTCOME_UNAVAILABLE, IDEM_OUTCOME_UNKNOWN,  IDEM_OUTCOME_FULL,
};

/* -- Rendering -------------------------------------------------------- */

static uint64_t load(atomic_uint_fast64_t *a)
{
    return atomic_load_explicit(a, memory_order_relaxed);
}

_Static_assert(sizeof(struct idem_engine_stats) % sizeof(uint64_t) == 0,
               "engine stats are uint64_t figures, summed as such");

/* The figures of every engine, summed (their store is one). */
static void sum_engines(struct idem_engine *const *engines, size_t n,
                        struct idem_engine_stats *sum)
{
    struct idem_engine_stats one;
    uint64_t *to = (uint64_t *)sum, *from = (uint64_t *)&one;
    size_t i, k;

    for (i = 0; i < n; i++) {
        idem_engine_stats(engines[i], &one);
        for (k = 0; k < sizeof(one) / sizeof(uint64_t); k++)
            to[k] += from[k];
    }
}

static void take_snap(struct idem_engine *const *engines, size_t n,
                      struct snap *s)
{
    struct idem_store *store = n ? idem_engine_store(engines[0]) : NULL;
    int_fast64_t open;
    int i;

    memset(s, 0, sizeof(*s));
    sum_engines(engines, n, &s->e);
    if (store)
        idem_store_stats(store, &s->s);
    idem_store_redis_stats(store, &s->r);
    for (i = 0; i < METRICS_RESULTS; i++)
        s->results[i] = load(&metrics.results[i]);
    open =
        atomic_load_explicit(&metrics.connections_open, memory_order_relaxed);
    s->connections_open = open > 0 ? (uint64_t)open : 0;
    s->connections_accepted = load(&metrics.connections_accepted);
    s->upstream_connects = load(&metrics.upstream_connects);
    s->store_bypass = load(&metrics.store_bypass);
    s->client_bytes_in = load(&metrics.client_bytes_in);
    s->client_bytes_out = load(&metrics.client_bytes_out);
    s->upstream_bytes_in = load(&metrics.upstream_bytes_in);
    s->upstream_bytes_out = load(&metrics.upstream_bytes_out);
}

static void family(struct text *t, const struct family *f)
{
    add(t, "# HELP %s %s.\n# TYPE %s %s\n", f->name, f->help, f->name, f->type);
}

static void render_requests(struct text *t, const struct snap *s)
{
    size_t i;

    family(t, &f_requests);
    for (i = 0; i < sizeof(outcomes) / sizeof(outcomes[0]); i++)
        add(t, "%s{outcome=\"%s\"} %" PRIu64 "\n", f_requests.name,
            idem_outcome_name(outcomes[i]), s->e.outcomes[outcomes[i]]);
    add(t, "%s{outcome=\"error\"} %" PRIu64 "\n", f_requests.name,
        s->results[METRICS_CLIENT_ERROR]);
}

static void render_samples(struct text *t, const struct snap *s)
{
    const struct family *last = NULL;
    uint64_t v;
    size_t i;

    for (i = 0; i < NSAMPLES; i++) {
        if (samples[i].f != last)
            family(t, samples[i].f);
        last = samples[i].f;
        memcpy(&v, (const char *)s + samples[i].off, sizeof(v));
        add(t, "%s%s%s%s %" PRIu64 "\n", last->name,
            *samples[i].labels ? "{" : "", samples[i].labels,
            *samples[i].labels ? "}" : "", v);
    }
}

/* One histogram series of family name: cumulative buckets (counts[i]
 * under le[i]), sum (microseconds, written in seconds) and count.
 * labels: its label set ("outcome=\"x\",..."), or "" for none. */
static void histogram_series(struct text *t, const char *name,
                             const char *labels, const char *const *le,
                             const uint64_t *counts, size_t n, uint64_t sum_us)
{
    const char *sep = *labels ? "," : "";
    uint64_t total = 0;
    size_t i;

    for (i = 0; i < n; i++) {
        total += counts[i];
        add(t, "%s_bucket{%s%sle=\"%s\"} %" PRIu64 "\n", name, labels, sep,
            le[i], total);
    }
    add(t, "%s_sum%s%s%s %" PRIu64 ".%06" PRIu64 "\n", name, *labels ? "{" : "",
        labels, *labels ? "}" : "", sum_us / 1000000, sum_us % 1000000);
    add(t, "%s_count%s%s%s %" PRIu64 "\n", name, *labels ? "{" : "", labels,
        *labels ? "}" : "", total);
}

/* A histogram from n per-bucket counts (the last one +Inf) with upper
 * bounds le, and the sum of what was observed in microseconds. Buckets
 * are cumulative; _count is their total, so it always equals the +Inf
 * bucket even while workers observe concurrently. */
static void histogram(struct text *t, const struct family *f,
                      const char *const *le, const uint64_t *counts, size_t n,
                      uint64_t sum_us)
{
    family(t, f);
    histogram_series(t, f->name, "", le, counts, n, sum_us);
}

static void render_latency(struct text *t)
{
    static const struct family f = { "idem_upstream_latency_seconds",
                                     "histogram",
                                     "Upstream round trips, seconds" };
    const char *le[METRICS_LATENCY_BUCKETS + 1];
    uint64_t counts[METRICS_LATENCY_BUCKETS + 1];
    size_t i;

    for (i = 0; i <= METRICS_LATENCY_BUCKETS; i++) {
        le[i] = i < METRICS_LATENCY_BUCKETS ? buckets[i].le : "+Inf";
        counts[i] = load(&metrics.latency_bucket[i]);
    }
    histogram(t, &f, le, counts, METRICS_LATENCY_BUCKETS + 1,
              load(&metrics.latency_sum_us));
}

/* The memory store's evictions by the age of what they took, and the
 * youngest taken (left out while there is none). */
static void render_eviction_ages(struct text *t, const struct snap *s)
{
    static const struct family f = {
        "idem_store_eviction_age_seconds", "histogram",
        "Ages of the records evicted for room (a retry of one runs again)"
    };
    static const struct family young = {
        "idem_store_youngest_eviction_age_seconds", "gauge",
        "Age of the youngest record evicted since start"
    };
    static const char *const le[] = { "60", "600", "3600", "86400", "+Inf" };

    _Static_assert(sizeof(le) / sizeof(le[0]) == IDEM_EVICT_AGE_BUCKETS,
                   "one bound per bucket of idem/store.h");

    histogram(t, &f, le, s->s.evicted_by_age, IDEM_EVICT_AGE_BUCKETS,
              s->s.evicted_age_ms_sum * 1000);
    if (s->s.youngest_evicted_ms == UINT64_MAX)
        return;
    family(t, &young);
    add(t, "%s %" PRIu64 ".%03" PRIu64 "\n", young.name,
        s->s.youngest_evicted_ms / 1000, s->s.youngest_evicted_ms % 1000);
}

/* Redis's maxmemory-policy: 1 may evict records, 0 noeviction, -1 not
 * known (no Redis, not asked yet, or CONFIG refused). */
static void render_redis_policy(struct text *t, const struct snap *s)
{
    static const struct family f = {
        "idem_redis_may_evict", "gauge",
        "Redis maxmemory-policy lets it evict records: 1 yes, 0 "
        "noeviction, -1 not known"
    };

    family(t, &f);
    add(t, "%s %d\n", f.name,
        s->r.policy == IDEM_REDIS_POLICY_EVICTS       ? 1
        : s->r.policy == IDEM_REDIS_POLICY_NOEVICTION ? 0
                                                      : -1);
}

/* The connections up to each Redis node (Cluster: one per node per
 * worker), labelled by its address. */
static void render_redis_nodes(struct text *t, struct idem_store *store)
{
    static const struct family f = { "idem_redis_node_connections", "gauge",
                                     "Redis connections up, per node" };
    struct idem_store_redis_node nodes[64];
    size_t n = 0, i;

    if (idem_store_redis_nodes(store, nodes, 64, &n) != IDEM_OK || n == 0)
        return;
    family(t, &f);
    for (i = 0; i < n && i < 64; i++)
        add(t, "%s{node=\"%s\"} %" PRIu64 "\n", f.name, nodes[i].addr,
            nodes[i].connections);
}

/* One outcome and status class of the request durations, if it ever
 * happened. */
static void render_duration_series(struct text *t, const char *name, int o,
                                   const char *class_name, int c)
{
    const char *le[METRICS_LATENCY_BUCKETS + 1];
    uint64_t counts[METRICS_LATENCY_BUCKETS + 1], total = 0;
    char labels[64];
    size_t i;

    for (i = 0; i <= METRICS_LATENCY_BUCKETS; i++) {
        le[i] = i < METRICS_LATENCY_BUCKETS ? buckets[i].le : "+Inf";
        counts[i] = load(&metrics.request_bucket[o][c][i]);
        total += counts[i];
    }
    if (total == 0)
        return;
    snprintf(labels, sizeof(labels), "outcome=\"%s\",class=\"%s\"",
             metrics_outcome_name(o), class_name);
    histogram_series(t, name, labels, le, counts, METRICS_LATENCY_BUCKETS + 1,
                     load(&metrics.request_sum_us[o][c]));
}

/* Client requests by outcome and status class; only the pairs seen. */
static void render_requests_duration(struct text *t)
{
    static const struct family f = {
        "idem_request_duration_seconds", "histogram",
        "Client requests from their first byte to their answer, by outcome "
        "and status class"
    };
    static const char *const classes[METRICS_CLASSES] = { "1xx", "2xx", "3xx",
                                                          "4xx", "5xx" };
    int o, c;

    family(t, &f);
    for (o = 0; o < METRICS_OUTCOMES; o++) {
        if (o == IDEM_OUTCOME_PENDING || o == 0)
            continue; /* a step, never an answer; 0 is no outcome */
        for (c = 0; c < METRICS_CLASSES; c++)
            render_duration_series(t, f.name, o, classes[c], c);
    }
}

/* What render_process shows; -1: not known. */
struct process_figures {
    int64_t cpu_us, open_fds, max_fds, start_s, rss, vsize;
};

/* The boot time (/proc/stat's btime), seconds since the epoch; -1. */
static int64_t boot_time(void)
{
    char line[256];
    long long bt = -1;
    FILE *f = fopen("/proc/stat", "re");

    if (!f)
        return -1;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "btime %lld", &bt) == 1)
            break;
    fclose(f);
    return bt;
}

/* The start time from /proc/self/stat's 22nd field (clock ticks after
 * boot); -1. */
static int64_t start_time(void)
{
    char buf[1024], *p;
    unsigned long long ticks;
    int64_t bt = boot_time();
    long hz = sysconf(_SC_CLK_TCK);
    size_t n;
    int field;
    FILE *f = fopen("/proc/self/stat", "re");

    if (!f)
        return -1;
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    p = strrchr(buf, ')'); /* the command may hold spaces */
    if (!p || bt < 0 || hz <= 0)
        return -1;
    for (field = 2; field < 22 && p; field++)
        p = strchr(p + 1, ' ');
    if (!p || sscanf(p, " %llu", &ticks) != 1)
        return -1;
    return bt + (int64_t)(ticks / (unsigned long long)hz);
}

static void metrics_process(struct process_figures *p)
{
    struct rusage ru;
    struct rlimit rl;
    struct dirent *d;
    unsigned long size, resident;
    DIR *dir = opendir("/proc/self/fd");
    FILE *f = fopen("/proc/self/statm", "re");
    int64_t page = sysconf(_SC_PAGESIZE);

    p->cpu_us =
        getrusage(RUSAGE_SELF, &ru) == 0
            ? (int64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000 +
                  ru.ru_utime.tv_usec + ru.ru_stime.tv_usec
            : -1;
    p->open_fds = -1;
    if (dir) {
        p->open_fds = -1; /* the directory's own descriptor */
        while ((d = readdir(dir)))
            p->open_fds += d->d_name[0] != '.';
        closedir(dir);
    }
    p->max_fds =
        getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY
            ? (int64_t)rl.rlim_cur
            : -1;
    p->start_s = start_time();
    p->rss = p->vsize = -1;
    if (f && fscanf(f, "%lu %lu", &size, &resident) == 2 && page > 0) {
        p->rss = (int64_t)resident * page;
        p->vsize = (int64_t)size * page;
    }
    if (f)
        fclose(f);
}

/* A process gauge's family and value, if the value is known (>= 0). */
static void gauge_known(struct text *t, const struct family *f, int64_t v)
{
    if (v < 0)
        return;
    family(t, f);
    add(t, "%s %" PRId64 "\n", f->name, v);
}

/* idem_build_info, and the process_* family every Prometheus client
 * exports (from /proc/self, getrusage and getrlimit); a figure that
 * cannot be read is left out. */
static void render_process(struct text *t)
{
    static const struct family f_build = { "idem_build_info", "gauge",
                                           "The running idemproxy's version "
                                           "(always 1)" };
    static const struct family f_cpu = { "process_cpu_seconds_total", "counter",
                                         "User and system CPU time spent" };
    static const struct family f_fds = { "process_open_fds", "gauge",
                                         "Open file descriptors" };
    static const struct family f_max = { "process_max_fds", "gauge",
                                         "Limit of open file descriptors" };
    static const struct family f_start = {
        "process_start_time_seconds", "gauge",
        "Start time since the Unix epoch, seconds"
    };
    static const struct family f_rss = { "process_resident_memory_bytes",
                                         "gauge", "Resident memory size" };
    static const struct family f_virt = { "process_virtual_memory_bytes",
                                          "gauge", "Virtual memory size" };
    struct process_figures p;

    family(t, &f_build);
    add(t, "%s{version=\"%s\",libidem=\"%s\"} 1\n", f_build.name,
        IDEM_VERSION_STRING, idem_version());
    metrics_process(&p);
    if (p.cpu_us >= 0) {
        family(t, &f_cpu);
        add(t, "%s %" PRId64 ".%06" PRId64 "\n", f_cpu.name, p.cpu_us / 1000000,
            p.cpu_us % 1000000);
    }
    gauge_known(t, &f_fds, p.open_fds);
    gauge_known(t, &f_max, p.max_fds);
    gauge_known(t, &f_start, p.start_s);
    gauge_known(t, &f_rss, p.rss);
    gauge_known(t, &f_virt, p.vsize); /* known with rss */
}

char *metrics_render(struct idem_engine *const *engines, size_t n,
                     size_t *len_out)
{
    struct text t = { .cap = 4096 };
    struct snap s;

    t.p = malloc(t.cap);
    if (!t.p)
        return NULL;
    take_snap(engines, n, &s);
    render_requests(&t, &s);
    render_samples(&t, &s);
    render_latency(&t);
    render_requests_duration(&t);
    render_eviction_ages(&t, &s);
    render_redis_policy(&t, &s);
    render_redis_nodes(&t, n ? idem_engine_store(engines[0]) : NULL);
    render_process(&t);
    if (t.failed) {
        free(t.p);
        return NULL;
    }
    *len_out = t.len;
    return t.p;
}
