/* The primary as the Sentinels name it. A thread keeps one connection to
 * a Sentinel: on connect it asks SENTINEL get-master-addr-by-name, points
 * its data connection there, then subscribes to +switch-master to follow
 * failovers. When the data connection is lost or answers READONLY, the
 * Sentinel connection is remade, which asks again; a Sentinel lost or
 * not knowing the master sends us to the next one. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "event.h"
#include "internal.h"
#include "rstore.h"

#define ASK_MS 100 /* the Sentinels are asked at most this often */

/* The primary is host:port: connect there (or move there). */
static void set_master(struct idem__rs_thread *t, const char *host, int port)
{
    struct idem__rs_conn *c = t->main;

    if (!c) {
        t->main = idem__rs_conn_new(t, RK_DATA, host, port);
        idem__rs_tick_arm(t, 0);
        return;
    }
    if (c->port == port && c->host && strcmp(c->host, host) == 0)
        return;
    atomic_fetch_add(&t->rs->failovers, 1);
    idem__rs_say(t->rs, true,
                 "redis: sentinel: the primary of %s is now %s:%d (was "
                 "%s:%d)",
                 t->rs->addr.master, host, port, c->host, c->port);
    if (idem__rs_conn_move(c, host, port) != 0)
        return;              /* out of memory: the next ask tries again */
    idem__rs_tick_arm(t, 0); /* the parked commands go there */
}

/* "+switch-master" messages: "<name> <old ip> <old port> <ip> <port>". */
static void on_switch(redisAsyncContext *ac, void *r, void *privdata)
{
    struct idem__rs_thread *t = privdata;
    redisReply *reply = r;
    char name[129], host[256];
    int port;

    (void)ac;
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements != 3 ||
        reply->element[0]->type != REDIS_REPLY_STRING ||
        strcmp(reply->element[0]->str, "message") != 0 ||
        reply->element[2]->type != REDIS_REPLY_STRING)
        return;
    if (sscanf(reply->element[2]->str, "%128s %*s %*s %255s %d", name, host,
               &port) == 3 &&
        strcmp(name, t->rs->addr.master) == 0 && port > 0 && port < 65536)
        set_master(t, host, port);
}

static void on_master_addr(redisAsyncContext *ac, void *r, void *privdata)
{
    struct idem__rs_conn *c = privdata;
    redisReply *reply = r;
    char *end;
    long port;

    if (!reply)
        return; /* the connection went: the next Sentinel is asked */
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 2 &&
        reply->element[0]->type == REDIS_REPLY_STRING &&
        reply->element[1]->type == REDIS_REPLY_STRING) {
        port = strtol(reply->element[1]->str, &end, 10);
        if (*end == '\0' && port > 0 && port < 65536) {
            set_master(c->t, reply->element[0]->str, (int)port);
            /* hiredis keeps a subscription's callback apart from the
             * reply queue, so this send is not idem__redis_send_* */
            redisAsyncCommand(ac, on_switch, c->t, "SUBSCRIBE +switch-master");
            return;
        }
    }
    idem__rs_say(c->t->rs, true, "redis: sentinel %s:%d: no primary for %s",
                 c->host, c->port, c->t->rs->addr.master);
    redisAsyncDisconnect(ac);
}

int idem__rs_sentinel_setup(struct idem__rs_conn *c)
{
    return idem__redis_send_command(c->ac, on_master_addr, c,
                                    "SENTINEL get-master-addr-by-name %s",
                                    c->t->rs->addr.master) == REDIS_OK
               ? 0
               : -1;
}

void idem__rs_sentinel_lost(struct idem__rs_conn *c)
{
    struct idem__rs_thread *t = c->t;
    const struct idem__redis_hostport *next;
    char *host;

    t->sentinel_next = (t->sentinel_next + 1) % t->rs->addr.nseeds;
    next = &t->rs->addr.seeds[t->sentinel_next];
    host = idem__redis_strndup(&t->rs->env, next->host, strlen(next->host));
    if (!host)
        return; /* out of memory: the same one again */
    idem__free(&t->rs->env, c->host);
    c->host = host;
    c->port = next->port; /* the backoff timer connects there */
}

void idem__rs_sentinel_ask(struct idem__rs_thread *t)
{
    const struct idem__redis_hostport *s;
    uint64_t now = idem__rs_now(t->rs);

    if (t->asked_ms && now - t->asked_ms < ASK_MS) {
        t->want_ask = true; /* the tick asks */
        idem__rs_tick_arm(t, ASK_MS);
        return;
    }
    t->want_ask = false;
    t->asked_ms = now;
    if (!t->sentinel) {
        s = &t->rs->addr.seeds[t->sentinel_next];
        t->sentinel = idem__rs_conn_new(t, RK_SENTINEL, s->host, s->port);
        return;
    }
    if (t->sentinel->state == RC_DOWN)
        return; /* its backoff timer connects, and it asks then */
    idem__rs_conn_drop(t->sentinel);
    idem__rs_conn_start(t->sentinel);
}
