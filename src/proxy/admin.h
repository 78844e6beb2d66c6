/* admin: the admin listener, /healthz (liveness), /readyz (the store and
 * the upstream reachable) and /metrics, GET or HEAD, one request per
 * connection, on the main thread, apart from client traffic. */
#ifndef IDEMPROXY_ADMIN_H
#define IDEMPROXY_ADMIN_H

#include <event2/event.h>

#include "gen.h"

struct admin;

/* Serve the admin endpoints on fd, in base (the main thread's): /metrics
 * with the figures of every engine in es, /readyz with store's and the
 * running configuration's (*cfg, read at each request: a reload changes
 * it). NULL if out of memory. */
struct admin *admin_listen(struct event_base *base, int fd, struct engines *es,
                           struct idem_store *store,
                           const struct config *const *cfg);
/* Close the listener (not the connections it serves). NULL is fine. */
void admin_close(struct admin *a);

#endif
