/* A hiredis async connection on a libevent loop, and sending on it:
 * hiredis's libevent adapter and send calls, less what hiredis 0.14 does
 * wrong when memory runs out (see redis_event.c). */
#ifndef IDEM_REDIS_EVENT_H
#define IDEM_REDIS_EVENT_H

#include <event2/event.h>
#include <hiredis/async.h>

#include "idem/env.h"

/* Drive ac from base; what this allocates comes from env (which must
 * outlive ac) and is freed with ac. REDIS_OK, or REDIS_ERR (out of
 * memory, or ac already attached): ac is then the caller's to free. */
int idem__redis_event_attach(redisAsyncContext *ac, struct event_base *base,
                             const struct idem_env *env);

/* redisAsyncFormattedCommand and redisAsyncCommand, less hiredis 0.14's
 * unchecked allocations (see redis_event.c). REDIS_OK: fn will be called
 * once, with the reply or with none (the connection went); REDIS_ERR: fn
 * will not be called. */
int idem__redis_send_formatted(redisAsyncContext *ac, redisCallbackFn *fn,
                               void *privdata, const char *cmd, size_t len);
int idem__redis_send_command(redisAsyncContext *ac, redisCallbackFn *fn,
                             void *privdata, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* The loop the calling thread's engine timers run on
 * (idem_store_redis_timers): base, or NULL for none. */
void idem__redis_timers_use(struct event_base *base);

#endif
