/* Stores keep idempotency records for the engine. A store is an ops table
 * behind an opaque handle; this header declares the memory store (the
 * Redis store is libidem-redis: idem/redis.h). The records are opaque
 * bytes to the caller (src/record.h encodes them). */
#ifndef IDEM_STORE_H
#define IDEM_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "env.h"
#include "status.h"

struct idem_store;

struct idem_store_memory_opts {
    /* Bytes of records held at most; past it the least valuable completed
     * records are evicted (never one in flight), each counted. 0: 64 MiB. */
    size_t max_memory;
    /* Cache shards (see idem_cache_opts). 0: the cache's default. */
    unsigned shards;
    /* The largest record (key, response head and stored body) the store
     * must be able to hold: fewer shards are used while one shard's share
     * of max_memory could not hold two such records. 0: no such bound.
     * idem_store_max_record() says what the store holds. */
    size_t max_record;
    /* A completed (or outcome unknown) record younger than this is never
     * evicted for room: when only such records (and ones in flight) are
     * left, a new key's begin answers IDEM_ENOSPC and the engine decides
     * FULL (503) rather than forget a young promise. 0: any completed
     * record may be evicted, the least valuable first. */
    int64_t min_retention_ms;
    const struct idem_env *env; /* copied. NULL: idem_env_default() */
};

/* Ages that evictions are counted by: under 1 min, 10 min, 1 h, 24 h. */
#define IDEM_EVICT_AGE_BUCKETS 5
#define IDEM_EVICT_AGE_BOUNDS_MS                                               \
    {                                                                          \
        60000, 600000, 3600000, 86400000                                       \
    }

struct idem_store_stats {
    uint64_t records;   /* records held, in flight or completed */
    uint64_t bytes;     /* bytes charged against max_memory */
    uint64_t in_flight; /* records in flight (pinned) */
    uint64_t evicted;   /* completed records evicted for room */
    /* those by age when evicted: below each of IDEM_EVICT_AGE_BOUNDS_MS,
     * then older; and the sum of their ages in ms */
    uint64_t evicted_by_age[IDEM_EVICT_AGE_BUCKETS];
    uint64_t evicted_age_ms_sum;
    /* the age in ms of the youngest record evicted so far; UINT64_MAX:
     * none */
    uint64_t youngest_evicted_ms;
    uint64_t expired; /* records whose lifetime or lease ended */
    /* per-key lock entries now: always 0 (the memory store takes none;
     * each operation is atomic under its cache shard's lock) */
    uint64_t lock_entries;
};

struct idem_snapshot_stats {
    uint64_t loaded;  /* records taken in */
    uint64_t expired; /* records skipped: their lifetime had ended */
    uint64_t saved;   /* records written */
    /* live records not loaded because they did not all fit (the load
     * answered IDEM_E2BIG and took none) */
    uint64_t refused;
};

/* An in-memory store: records in a TTL cache; each operation is one or
 * two cache steps (get-or-insert, replace-if), each atomic under the key's
 * shard lock. IDEM_OK, IDEM_EINVAL, IDEM_ENOMEM. */
IDEM_API int idem_store_memory_new(const struct idem_store_memory_opts *opts,
                                   struct idem_store **store_out);

/* Free any store; a Redis store must be detached on every thread first.
 * NULL is harmless. */
IDEM_API void idem_store_free(struct idem_store *s);

/* The largest record, in bytes with its key, that s can hold (SIZE_MAX
 * for no bound of its own; 0 for NULL). The engine stores a response
 * whose record would be larger as status and headers only. */
IDEM_API size_t idem_store_max_record(struct idem_store *s);

IDEM_API void idem_store_stats(struct idem_store *s,
                               struct idem_store_stats *stats_out);

/* Write every completed record of a memory store to path, atomically: a
 * temporary file beside it, fsync, rename, fsync of the directory. Records
 * keep their absolute expiry (wall clock). IDEM_OK; IDEM_EIO (errno tells
 * why; path is untouched); IDEM_EINVAL; IDEM_ENOMEM. stats_out may be
 * NULL. */
IDEM_API int idem_store_memory_save(struct idem_store *s, const char *path,
                                    struct idem_snapshot_stats *stats_out);

/* Load a snapshot into an empty memory store, skipping records whose time
 * is up. All or nothing: the file is checked whole before anything is
 * loaded (a truncated or corrupt snapshot answers IDEM_EIO and loads
 * nothing), and if the live records do not all fit in max_memory the load
 * is undone and answers IDEM_E2BIG (stats_out->refused says how many).
 * IDEM_ENOTFOUND if path does not exist. IDEM_OK, IDEM_EINVAL,
 * IDEM_ENOMEM (undone as well). Saved records are completed ones and
 * "outcome unknown" ones, never one in flight. */
IDEM_API int idem_store_memory_load(struct idem_store *s, const char *path,
                                    struct idem_snapshot_stats *stats_out);

#endif
