/* The memory store's insides, shared by store_memory.c and snapshot.c. */
#ifndef IDEM_STORE_MEMORY_H
#define IDEM_STORE_MEMORY_H

#include <stdbool.h>

#include "idem/cache.h"
#include "idem/keylock.h"
#include "store_internal.h"

struct idem__memory_store {
    struct idem_store base;
    struct idem_env env;
    struct idem_cache *cache;   /* records by store key */
    struct idem_keylock *locks; /* one short critical section per op */
};

/* Whether s is a memory store (snapshots apply to no other). */
bool idem__store_is_memory(const struct idem_store *s);

#endif
