/* resolver: the upstream's addresses. A resolver thread looks up every
 * --upstream (getaddrinfo for names, never on a worker's loop) at start,
 * every --resolve-interval and when a worker says a connect failed, and
 * hands each changed set to the workers as an immutable, reference
 * counted struct upaddrs (through their wake, as a configuration
 * generation). When no upstream connect or response has been seen for a
 * resolve interval, it probes: a connect to each address until one
 * answers, so readiness (/readyz) reflects an idle upstream too. */
#ifndef IDEMPROXY_RESOLVER_H
#define IDEMPROXY_RESOLVER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "config.h"

struct upaddr {
    struct sockaddr_storage sa;
    socklen_t len;
};

/* One set of addresses: immutable, shared by the workers. */
struct upaddrs {
    atomic_uint refs;
    size_t n;
    struct upaddr a[]; /* in --upstream order, each name's in DNS order */
};

struct upaddrs *resolver_addrs_ref(struct upaddrs *s);
/* The last reference frees s. NULL is harmless. Thread-safe. */
void resolver_addrs_unref(struct upaddrs *s);

/* The last time (worker.h's worker_now_ms) an upstream connect or response
 * succeeded, or 0. Written by workers and the probe. */
extern atomic_int_fast64_t upstream_ok_ms;

struct resolver;
struct worker;

/* Look c's upstreams up now, on the calling thread (the main one, at
 * start): the first set (a name that does not resolve yet is left out,
 * and said), or NULL out of memory. */
struct upaddrs *resolve_first(const struct config *c);

/* Start the resolver thread for c's upstreams, first (may be NULL) the
 * set the workers[0..n) start with; it hands them the sets that
 * follow. NULL out of memory or if the thread cannot start. */
struct resolver *resolver_start(const struct config *c, struct upaddrs *first,
                                struct worker *workers, unsigned n);
/* A reload: resolve c's upstreams from now on (copied). */
void resolver_set(struct resolver *r, const struct config *c);
/* From any thread: look the names up again soon (a connect failed).
 * Cheap; at most one look-up a second follows. */
void resolver_poke(struct resolver *r);
/* Stop the thread and free r. NULL is harmless. */
void resolver_stop(struct resolver *r);

#endif
