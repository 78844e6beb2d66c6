/* idemproxy's metrics: lock-free counters every worker bumps, rendered as
 * Prometheus text (version 0.0.4) by the admin listener, together with the
 * engine's and the store's own figures and the process' resident memory. */
#ifndef IDEMPROXY_METRICS_H
#define IDEMPROXY_METRICS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "idem/engine.h"

/* Latency histogram bounds (upstream round trips, client requests),
 * 0.5 ms to 120 s: past the default --upstream-timeout; +Inf is
 * implicit. */
#define METRICS_LATENCY_BUCKETS 17

/* Request outcomes: the engine's (enum idem_outcome), and one more for a
 * request the proxy answered by itself (a refusal, an upstream failure). */
#define METRICS_OUTCOME_ERROR IDEM_OUTCOME_COUNT
#define METRICS_OUTCOMES (IDEM_OUTCOME_COUNT + 1)
/* Status classes 1xx..5xx. */
#define METRICS_CLASSES 5

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
    /* client requests, by outcome and status class */
    atomic_uint_fast64_t request_bucket[METRICS_OUTCOMES][METRICS_CLASSES]
                                       [METRICS_LATENCY_BUCKETS + 1];
    atomic_uint_fast64_t request_sum_us[METRICS_OUTCOMES][METRICS_CLASSES];
    /* bytes through the sockets */
    atomic_uint_fast64_t client_bytes_in, client_bytes_out;
    atomic_uint_fast64_t upstream_bytes_in, upstream_bytes_out;
};

extern struct metrics metrics;

/* One upstream round trip of us microseconds. */
void metrics_observe_upstream(uint64_t us);

/* One client request answered with status after us microseconds;
 * outcome: enum idem_outcome or METRICS_OUTCOME_ERROR. */
void metrics_observe_request(int outcome, unsigned status, uint64_t us);

/* The name of an outcome as the log and the metrics say it ("error" for
 * METRICS_OUTCOME_ERROR). */
const char *metrics_outcome_name(int outcome);

/* Bytes moved, counted where the sockets are. */
static inline void metrics_bytes(atomic_uint_fast64_t *counter, size_t n)
{
    atomic_fetch_add_explicit(counter, n, memory_order_relaxed);
}

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
 * idem_redis_commands_total, idem_redis_errors_total,
 * idem_redis_timeouts_total, idem_redis_redirects_total,
 * idem_redis_failovers_total, idem_redis_wait_timeouts_total,
 * idem_redis_slot_map_refreshes_total and idem_redis_node_connections. */
char *metrics_render(struct idem_engine *const *engines, size_t n,
                     size_t *len_out);

#endif
