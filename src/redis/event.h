/* A hiredis async connection on the caller's loop (struct
 * idem_redis_loop), and sending on it: hiredis's adapter and send calls,
 * less what hiredis 0.14 does wrong when memory runs out (see event.c). */
#ifndef IDEM_REDIS_EVENT_H
#define IDEM_REDIS_EVENT_H

#include <hiredis/async.h>

#include "idem/env.h"
#include "idem/redis.h"

/* Drive ac from loop (which, like env, must outlive ac); what this
 * allocates is freed with ac. REDIS_OK, or REDIS_ERR (out of memory, or
 * ac already attached): ac is then the caller's to free. */
int idem__redis_event_attach(redisAsyncContext *ac,
                             const struct idem_redis_loop *loop,
                             const struct idem_env *env);

/* redisAsyncFormattedCommand and redisAsyncCommand, less hiredis 0.14's
 * unchecked allocations (see event.c). REDIS_OK: fn will be called
 * once, with the reply or with none (the connection went); REDIS_ERR: fn
 * will not be called. */
int idem__redis_send_formatted(redisAsyncContext *ac, redisCallbackFn *fn,
                               void *privdata, const char *cmd, size_t len);
int idem__redis_send_command(redisAsyncContext *ac, redisCallbackFn *fn,
                             void *privdata, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* The loop the calling thread's engine timers run on
 * (idem_store_redis_timers): loop, or NULL for none. */
void idem__redis_timers_use(const struct idem_redis_loop *loop);

#endif
