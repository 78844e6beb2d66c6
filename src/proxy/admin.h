/* admin: the admin listener, GET /healthz and GET /metrics, one request
 * per connection, on the main thread, apart from client traffic. */
#ifndef IDEMPROXY_ADMIN_H
#define IDEMPROXY_ADMIN_H

#include <event2/event.h>

#include "gen.h"

struct admin;

/* Serve /healthz and /metrics (the figures of every engine in es) on fd,
 * in base (the main thread's). NULL if out of memory. */
struct admin *admin_listen(struct event_base *base, int fd, struct engines *es);
/* Close the listener (not the connections it serves). NULL is fine. */
void admin_close(struct admin *a);

#endif
