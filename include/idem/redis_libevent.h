/* libidem-redis's adapter for libevent: the struct idem_redis_loop of an
 * event_base, for idem_store_redis_attach(). */
#ifndef IDEM_REDIS_LIBEVENT_H
#define IDEM_REDIS_LIBEVENT_H

#include <event2/event.h>

#include "redis.h"

/* Fill *loop_out with base's loop. The base must outlive every store
 * attached through it (detach first). */
IDEM_API void idem_redis_libevent(struct event_base *base,
                                  struct idem_redis_loop *loop_out);

#endif
