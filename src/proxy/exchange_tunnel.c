/* exchange_tunnel.c: the exchange after a 101 to an upgrade request. The
 * upstream's 101 goes to the client, then bytes go raw both ways as they
 * come (backpressure as for bodies), under an idle and a total bound,
 * until either side ends it. */
#include "exchange.h"

#include "exchange_internal.h"

/* Close both sides now (a bound passed, or out of memory). */
void ex_tunnel_end(struct exchange *ex)
{
    ex_resp_release_upstream(ex, false);
    ex_set_timer(ex, EX_TIMER_CLIENT, -1);
    ex_set_timer(ex, EX_TIMER_UPSTREAM, -1);
    ex->phase = EX_DONE;
}

/* Bytes for one side of the tunnel. A side that falls EX_HIGH behind
 * stops the other being read (the driver's drained calls resume it);
 * every byte either way restarts the idle bound. */
static void tunnel_add(struct exchange *ex, struct buf *o, bool *pause,
                       const char *p, size_t n)
{
    if (n == 0)
        return;
    if (buf_add(o, p, n) != 0) {
        ex_tunnel_end(ex);
        return;
    }
    if (buf_len(o) > EX_HIGH)
        *pause = true;
    ex_set_timer(ex, EX_TIMER_CLIENT, ex->ctx->cfg->tunnel_idle_ms);
}

void ex_tunnel_to_client(struct exchange *ex, const char *p, size_t n)
{
    tunnel_add(ex, &ex->client_out, &ex->up_paused, p, n);
}

void ex_tunnel_to_upstream(struct exchange *ex, const char *p, size_t n)
{
    tunnel_add(ex, &ex->up_out, &ex->in_paused, p, n);
}

/* The 101 for the client: the upstream's head with its Upgrade and
 * Connection: upgrade (hop-by-hop, so put back). false: out of memory. */
static bool put_switch(struct exchange *ex)
{
    struct buf *o = &ex->client_out;
    size_t len = 0;
    const char *up = http_head_get(&ex->resp.head, "Upgrade", &len);

    if (!up)
        up = http_head_get(&ex->rd.head, "Upgrade", &len);
    return ex_resp_put_head(o, ex) && buf_addl(o, "Upgrade: ") == 0 &&
           buf_add(o, up ? up : "", up ? len : 0) == 0 &&
           buf_addl(o, "\r\nConnection: upgrade\r\n\r\n") == 0;
}

/* The upstream switched protocols: relay its 101, then bytes both ways
 * as they come (at: what came after the head), under the idle and total
 * bounds. The request is over for the engine: never keyed, never
 * stored. What the client sent after its request goes up first. */
void ex_tunnel_start(struct exchange *ex, const char *at, size_t n)
{
    const struct config *cfg = ex->ctx->cfg;

    ex->status_sent = 101;
    ex->response = EX_RESP_ANSWERED;
    ex->up = EX_UP_BODY;
    ex->t_upstream_us = ex_now_us() - ex->t_start_us;
    idem_call_free(ex->call);
    ex->call = NULL;
    ex_set_timer(ex, EX_TIMER_RENEW, -1);
    if (ex->client_gone || !put_switch(ex)) {
        ex_tunnel_end(ex);
        return;
    }
    ex_log_request(ex, (int)ex->decision.outcome, 101);
    ex->phase = EX_TUNNEL;
    ex_set_timer(ex, EX_TIMER_UPSTREAM, cfg->tunnel_max_ms);
    ex_set_timer(ex, EX_TIMER_CLIENT, cfg->tunnel_idle_ms);
    if (buf_len(&ex->in)) {
        ex_tunnel_to_upstream(ex, buf_bytes(&ex->in), buf_len(&ex->in));
        buf_clear(&ex->in);
    }
    if (ex->phase == EX_TUNNEL)
        ex_tunnel_to_client(ex, at, n);
}

/* The upstream closed the tunnel: the client gets what is queued, then
 * the connection closes. */
void ex_tunnel_closed(struct exchange *ex)
{
    ex_resp_release_upstream(ex, false);
    ex_set_timer(ex, EX_TIMER_UPSTREAM, -1);
    ex->close_after = true;
    ex->phase = ex->client_gone ? EX_DONE : EX_DRAINING;
}
