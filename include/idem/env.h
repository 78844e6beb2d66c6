/* The environment a libidem object runs in: its clock, its allocator and
 * the caller's timers. Injected so that tests can move time and fail the
 * Nth allocation, and so that the library knows no event loop; every
 * object copies the struct at creation, so the caller's copy may go
 * away. */
#ifndef IDEM_ENV_H
#define IDEM_ENV_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

struct idem_env {
    /* Milliseconds on a monotonic clock. NULL: CLOCK_MONOTONIC. */
    uint64_t (*now_ms)(void *ud);
    /* Milliseconds since the Unix epoch, for what outlives the process
     * (snapshots, records shared through Redis, leases). NULL:
     * CLOCK_REALTIME_COARSE (to the kernel's tick, a few ms at most). */
    uint64_t (*wall_ms)(void *ud);
    /* realloc(3) semantics: (NULL, n) allocates, (p, 0) frees and returns
     * NULL, otherwise resizes; returns NULL on failure. NULL: libc. */
    void *(*alloc)(void *ud, void *ptr, size_t size);
    /* Timers, on the calling thread's event loop (the library has none of
     * its own): run fn(arg) once, ms from now, on the thread that called
     * after; return a handle for cancel, or NULL if none can be had.
     * cancel: the timer never runs. The engine uses them to poll an
     * asynchronous store in wait mode. NULL: no timers (such waits end
     * in a conflict at once). */
    void *(*after)(void *ud, int64_t ms, void (*fn)(void *arg), void *arg);
    void (*cancel)(void *ud, void *timer);
    /* Passed to every hook. */
    void *ud;
};

/* The default environment: CLOCK_MONOTONIC and libc malloc. Thread-safe. */
IDEM_API const struct idem_env *idem_env_default(void);

/* Copy *src (NULL: the default) into *dst, filling unset clock and
 * allocator hooks with the default's, as every libidem object does with
 * the env it is given (a store of one's own, e.g. libidem-redis, can do
 * the same). The timer hooks stay as given. Thread-safe. */
IDEM_API void idem_env_resolve(const struct idem_env *src,
                               struct idem_env *dst);

/* The environment's clock, in milliseconds. env NULL: the default. */
IDEM_API uint64_t idem_env_now_ms(const struct idem_env *env);

/* The environment's wall clock, in Unix milliseconds. env NULL: the
 * default. */
IDEM_API uint64_t idem_env_wall_ms(const struct idem_env *env);

#endif
