/* idemproxy's metrics: lock-free counters every worker bumps, rendered as
 * Prometheus text (version 0.0.4) by the admin listener, together with the
 * engine's and the store's own figures and the process' resident memory. */
#ifndef IDEMPROXY_METRICS_H
#define IDEMPROXY_METRICS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "idem/engine.h"

/* Upstream latency histogram bounds, seconds (le); +Inf is implicit. */
#define METRICS_LATENCY_BUCKETS 12

enum metrics_result {
    METRICS_UPSTREAM_ERROR = 0, /* 502: connect or protocol failure */
    METRICS_UPSTREAM_TIMEOUT,   /* 504 */
    METRICS_CLIENT_ERROR,       /* 400/413/431 from the proxy itself */
    METRICS_CLIENT_GONE,        /* the client left before the response */
    METRICS_RESULTS,
};

struct metrics {
    atomic_uint_fast64_t results[METRICS_RESULTS];
    atomic_uint_fast64_t connections_accepted;
    atomic_int_fast64_t connections_open;
    atomic_uint_fast64_t upstream_connects;
    atomic_uint_fast64_t store_bypass; /* --store-failure open passes */
    atomic_uint_fast64_t latency_bucket[METRICS_LATENCY_BUCKETS + 1];
    atomic_uint_fast64_t latency_sum_us;
    atomic_uint_fast64_t latency_count;
};

extern struct metrics metrics;

/* One upstream round trip of us microseconds. */
void metrics_observe_upstream(uint64_t us);

/* Render everything as Prometheus text into a fresh malloc'd buffer
 * (*len_out bytes, NUL-terminated). NULL on allocation failure. Metric
 * names: idem_requests_total{outcome=...} (from the engine's outcome
 * counters, plus outcome="error" from results), idem_proxy_errors_total
 * {kind=...}, idem_store_entries, idem_store_bytes, idem_keys_in_flight,
 * idem_lock_entries, idem_store_evictions_total,
 * idem_store_expirations_total, idem_waiting_requests,
 * idem_upstream_latency_seconds (histogram),
 * idem_connections_open, idem_connections_total,
 * idem_process_resident_memory_bytes; also idem_completions_total
 * {result=...}, idem_wait_timeouts_total, idem_upstream_connects_total,
 * idem_store_bypass_total, idem_lease_renewals_total and, for the Redis
 * store, idem_redis_connections, idem_redis_connects_total,
 * idem_redis_commands_total, idem_redis_errors_total and
 * idem_redis_timeouts_total. */
char *metrics_render(struct idem_engine *const *engines, size_t n,
                     size_t *len_out);

#endif
