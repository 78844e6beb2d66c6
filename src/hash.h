/* The seeded 64-bit key hash (XXH3) and how a hash picks a stripe. A random
 * seed per table keeps clients from choosing keys that collide. */
#ifndef IDEM_HASH_H
#define IDEM_HASH_H

#include <stddef.h>
#include <stdint.h>
/* Header-only use of libxxhash: short keys hash without a call. */
#define XXH_INLINE_ALL
#include <xxhash.h>

static inline uint64_t idem__hash(const void *key, size_t klen, uint64_t seed)
{
    return XXH3_64bits_withSeed(key, klen, seed);
}

/* Stripes take the top bits; bucket indexes inside a stripe take the low
 * bits, so the two choices stay independent. shift = 64 - log2(stripes). */
static inline size_t idem__stripe_of(uint64_t hash, unsigned shift)
{
    return shift >= 64 ? 0 : (size_t)(hash >> shift);
}

#endif
