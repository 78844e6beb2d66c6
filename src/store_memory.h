/* The memory store's insides, shared by store_memory.c and snapshot.c. */
#ifndef IDEM_STORE_MEMORY_H
#define IDEM_STORE_MEMORY_H

#include <stdatomic.h>
#include <stdbool.h>

#include "idem/cache.h"
#include "store_internal.h"

struct idem__memory_store {
    struct idem_store base;
    struct idem_env env;
    struct idem_cache *cache; /* records by store key */
    size_t max_record;        /* what one shard's share holds */
    int64_t min_retention_ms; /* younger records are never evicted */
    /* evictions by age (IDEM_EVICT_AGE_BOUNDS_MS), their sum, and the
     * youngest, counted by the cache's evict hook under a shard lock */
    atomic_uint_fast64_t evicted_by_age[IDEM_EVICT_AGE_BUCKETS];
    atomic_uint_fast64_t evicted_age_sum, youngest_evicted;
};

/* Whether s is a memory store (snapshots apply to no other). */
bool idem__store_is_memory(const struct idem_store *s);

#endif
