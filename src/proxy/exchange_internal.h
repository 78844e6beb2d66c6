/* exchange_internal.h: what the exchange's files call of each other:
 * exchange.c (the request side), exchange_response.c (the upstream side)
 * and exchange_tunnel.c (after a 101). A name says where it lives: ex_
 * exchange.c, ex_resp_ exchange_response.c, ex_tunnel_ exchange_tunnel.c.
 * Not used outside exchange*.c. */
#ifndef IDEMPROXY_EXCHANGE_INTERNAL_H
#define IDEMPROXY_EXCHANGE_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "buf.h"
#include "exchange.h"

/* The monotonic clock, in microseconds. */
static inline uint64_t ex_now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* Arm ex's timer t to fire in ms milliseconds, or (ms < 0) stop it. */
static inline void ex_set_timer(struct exchange *ex, enum ex_timer t,
                                int64_t ms)
{
    ex->io->timer(ex, t, ms);
}

/* -- The request side (exchange.c) -------------------------------------- */

/* The request is answered: its duration into the metrics, its log line. */
void ex_log_request(struct exchange *ex, int outcome, unsigned status);

/* Answer with a problem+json refusal or error, then end the request. */
void ex_refuse(struct exchange *ex, unsigned status, const char *detail,
               int outcome);

/* The request is answered: reset for the next, or close. */
void ex_finish_request(struct exchange *ex);

/* Feed the client's buffered bytes to the parser while requests are read. */
void ex_parse(struct exchange *ex);

/* -- The upstream side (exchange_response.c) ---------------------------- */

/* Send the request upstream: 0, or -1 (nothing was sent). */
int ex_resp_forward(struct exchange *ex);

/* Let the upstream connection go (to the pool when reusable). */
void ex_resp_release_upstream(struct exchange *ex, bool reusable);

/* Stop (pause) or resume reading the upstream as the client falls behind. */
void ex_resp_pause_upstream(struct exchange *ex, bool pause);

/* The upstream's status line and fields for the client. false: no memory. */
bool ex_resp_put_head(struct buf *o, const struct exchange *ex);

/* The upstream failed; maybe_run: the request may have reached it. */
void ex_resp_upstream_failed(struct exchange *ex, unsigned status,
                             bool maybe_run);

/* No answer in time to a request that proceeded: 504, then wait late. */
void ex_resp_wait_late(struct exchange *ex);

/* -- The tunnel (exchange_tunnel.c) ------------------------------------- */

/* The upstream's 101 came (at, n: what followed its head): tunnel. */
void ex_tunnel_start(struct exchange *ex, const char *at, size_t n);

/* The upstream's bytes for the client. */
void ex_tunnel_to_client(struct exchange *ex, const char *p, size_t n);

/* The client's bytes for the upstream. */
void ex_tunnel_to_upstream(struct exchange *ex, const char *p, size_t n);

/* Close both sides now (a bound passed, or out of memory). */
void ex_tunnel_end(struct exchange *ex);

/* The upstream closed the tunnel: drain to the client, then close. */
void ex_tunnel_closed(struct exchange *ex);

#endif
