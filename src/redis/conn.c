/* A thread's connection to one Redis node (or Sentinel): connect, set up
 * (AUTH, SELECT, SCRIPT LOAD), and remake with capped backoff when lost.
 *
 * hiredis 0.14 has no timeouts of its own, so each connection has one
 * timer, whose meaning follows its state: the connect deadline while
 * connecting, the deadline of the oldest command while up (replies come
 * in order, so the oldest is the first due), the backoff while down. A
 * command past its deadline takes its connection down with it: every
 * command in flight fails (hiredis calls each callback with no reply),
 * and a new connection follows. */
#include <stdio.h>
#include <string.h>

#include "event.h"
#include "internal.h"
#include "rstore.h"

#define BACKOFF_FIRST_MS 50
#define BACKOFF_MAX_MS 2000
#define HURRY_MS 100 /* wanted while down: attempts no closer than this */

/* The shared counter of connections up to host:port, or NULL (full). */
static struct idem__rs_node_stat *node_stat(struct idem__rs_store *rs,
                                            const char *host, int port)
{
    struct idem__rs_node_stat *st = NULL;
    char addr[sizeof(rs->nodes[0].addr)];
    size_t i;

    snprintf(addr, sizeof(addr), "%s:%d", host ? host : "unix", port);
    pthread_mutex_lock(&rs->nodes_lock);
    for (i = 0; i < rs->nnodes && !st; i++)
        if (strcmp(rs->nodes[i].addr, addr) == 0)
            st = &rs->nodes[i];
    if (!st && rs->nnodes < IDEM__RS_NODE_STATS) {
        st = &rs->nodes[rs->nnodes++];
        memcpy(st->addr, addr, sizeof(addr));
    }
    pthread_mutex_unlock(&rs->nodes_lock);
    return st;
}

struct idem__rs_op *idem__rs_oldest(const struct idem__rs_conn *c)
{
    struct idem__list *n = idem__list_first(&c->ops);

    return n ? idem__list_entry(n, struct idem__rs_op, link) : NULL;
}

static void set_timer(struct idem__rs_conn *c, int64_t ms)
{
    c->t->loop.add(c->t->loop.loop, c->timer, ms);
}

static void count_up(struct idem__rs_conn *c, int delta)
{
    struct idem__rs_store *rs = c->t->rs;

    if (c->kind != RK_DATA)
        return;
    if (delta > 0) {
        atomic_fetch_add(&rs->connections, 1);
        if (c->stat)
            atomic_fetch_add(&c->stat->up, 1);
    } else {
        atomic_fetch_sub(&rs->connections, 1);
        if (c->stat)
            atomic_fetch_sub(&c->stat->up, 1);
    }
}

void idem__rs_conn_arm(struct idem__rs_conn *c)
{
    struct idem__rs_op *op = idem__rs_oldest(c);
    uint64_t now;

    if (c->state != RC_UP)
        return; /* connect deadline or backoff: armed when entered */
    if (!op) {
        c->t->loop.del(c->t->loop.loop, c->timer);
        return;
    }
    now = idem__rs_now(c->t->rs);
    set_timer(c, op->deadline_ms > now ? (int64_t)(op->deadline_ms - now) : 0);
}

static void backoff(struct idem__rs_conn *c)
{
    c->state = RC_DOWN;
    set_timer(c, c->backoff_ms);
    c->backoff_ms =
        c->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : c->backoff_ms * 2;
}

/* The backoff paces attempts while nothing needs the link; a command
 * that finds it down because connecting failed (Redis away: said once,
 * then quiet) brings the next attempt forward: the backoff timer, due
 * now, makes it on the next loop pass. So once Redis is back, work
 * resumes within HURRY_MS of the first command, not after up to
 * BACKOFF_MAX_MS more of answers saying Redis is away, and a dead Redis
 * sees at most one attempt per HURRY_MS from each thread. Other failures
 * (a timeout, a refused AUTH) log each attempt: the backoff alone paces
 * those. */
void idem__rs_conn_hurry(struct idem__rs_conn *c)
{
    if (c->state == RC_DOWN && !c->ac && c->quiet &&
        idem__rs_now(c->t->rs) - c->tried_ms >= HURRY_MS)
        set_timer(c, 0);
}

/* Take the connection down now: hiredis fails every command in flight
 * (their callbacks run here, with no reply; inside a callback of hiredis,
 * once it returns), then frees it. */
void idem__rs_conn_drop(struct idem__rs_conn *c)
{
    redisAsyncContext *ac = c->ac;
    bool later = ac && (ac->c.flags & REDIS_IN_CALLBACK);

    if (c->state == RC_UP)
        count_up(c, -1);
    c->ac = NULL;
    c->state = RC_DOWN; /* so the callbacks below send nothing on ac */
    if (ac)
        redisAsyncFree(ac);
    if (!later)
        idem__rs_fail_orphans(c);
}

static void on_timer(void *arg)
{
    struct idem__rs_conn *c = arg;
    struct idem__rs_op *op = idem__rs_oldest(c);

    if (c->state == RC_DOWN) {
        idem__rs_fail_orphans(c); /* of a connect that failed */
        idem__rs_conn_start(c);
        return;
    }
    if (c->state == RC_UP &&
        (c->kind == RK_SENTINEL ||
         (op && op->deadline_ms > idem__rs_now(c->t->rs)))) {
        idem__rs_conn_arm(c); /* woke early */
        return;
    }
    atomic_fetch_add(&c->t->rs->timeouts, 1);
    idem__rs_say(c->t->rs, true, "redis: %s timed out (%s:%d); reconnecting",
                 c->state == RC_UP ? "a command" : "the connection",
                 c->host ? c->host : "unix", c->port);
    idem__rs_conn_drop(c);
    backoff(c);
    idem__rs_lost(c);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct idem__rs_conn *c = ac->data;

    if (status != REDIS_OK) { /* hiredis frees ac after this */
        if (!c->quiet)
            idem__rs_say(c->t->rs, true, "redis: cannot connect to %s:%d: %s",
                         c->host ? c->host : "unix", c->port, ac->errstr);
        c->quiet = true;
        c->ac = NULL;
        backoff(c); /* the queued commands fail next, with no reply */
        idem__rs_lost(c);
        return;
    }
    c->state = RC_UP;
    c->was_up = true;
    count_up(c, 1);
    if (c->kind == RK_DATA)
        atomic_fetch_add(&c->t->rs->connects, 1);
    c->quiet = false;
    idem__rs_say(c->t->rs, false, "redis: connected to %s:%d",
                 c->host ? c->host : "unix", c->port);
    idem__rs_conn_arm(c);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct idem__rs_conn *c = ac->data;

    if (c->ac != ac) /* drop() or a failed connect: handled there */
        return;
    idem__rs_say(c->t->rs, true, "redis: connection lost (%s:%d)%s%s",
                 c->host ? c->host : "unix", c->port,
                 status == REDIS_OK ? "" : ": ",
                 status == REDIS_OK ? "" : ac->errstr);
    if (c->state == RC_UP)
        count_up(c, -1);
    c->ac = NULL;
    backoff(c);
    idem__rs_fail_orphans(c); /* hiredis has failed what it had */
    idem__rs_lost(c);
}

/* A reply to AUTH, SELECT or SCRIPT LOAD. */
static void on_setup(redisAsyncContext *ac, void *r, void *privdata)
{
    struct idem__rs_conn *c = privdata;
    redisReply *reply = r;

    if (reply && reply->type == REDIS_REPLY_ERROR) {
        idem__rs_say(c->t->rs, true, "redis: %s", reply->str);
        c->setup_left = -1;
        redisAsyncDisconnect(ac); /* and try again after a backoff */
    } else if (reply && c->setup_left > 0 && --c->setup_left == 0) {
        c->backoff_ms = BACKOFF_FIRST_MS; /* a working connection */
    }
}

/* The answer to CONFIG GET maxmemory-policy: anything but noeviction lets
 * Redis evict records under memory pressure, and a retry of an evicted
 * key runs again. Said when it changes (each connection asks). */
static void on_policy(redisAsyncContext *ac, void *r, void *privdata)
{
    struct idem__rs_conn *c = privdata;
    redisReply *reply = r, *v;
    uint64_t seen, was;

    (void)ac;
    if (!reply)
        return; /* the connection went down */
    v = reply->type == REDIS_REPLY_ARRAY && reply->elements == 2
            ? reply->element[1]
            : NULL;
    seen = !v || v->type != REDIS_REPLY_STRING ? IDEM_REDIS_POLICY_UNKNOWN
           : strcmp(v->str, "noeviction") == 0 ? IDEM_REDIS_POLICY_NOEVICTION
                                               : IDEM_REDIS_POLICY_EVICTS;
    was = atomic_exchange(&c->t->rs->policy, seen);
    if (seen == was)
        return;
    if (seen == IDEM_REDIS_POLICY_EVICTS)
        idem__rs_say(c->t->rs, true,
                     "redis: maxmemory-policy is %s: under memory pressure "
                     "Redis may evict idempotency records, and a retry of an "
                     "evicted key runs again; set it to noeviction",
                     v->str);
    else if (seen == IDEM_REDIS_POLICY_UNKNOWN)
        idem__rs_say(c->t->rs, false,
                     "redis: cannot read maxmemory-policy (%s); it must be "
                     "noeviction",
                     reply->type == REDIS_REPLY_ERROR ? reply->str
                                                      : "no answer");
}

/* Log in, pick the database and load the scripts: sent first, answered
 * before any command of ours. Then ask for the eviction policy. */
static int send_setup(struct idem__rs_conn *c)
{
    struct idem__rs_store *rs = c->t->rs;
    int rc = REDIS_OK, i;

    c->setup_left =
        RS_NSCRIPTS + (rs->addr.password != NULL) + (rs->addr.db != 0);
    if (rs->addr.password && rs->addr.user)
        rc = idem__redis_send_command(c->ac, on_setup, c, "AUTH %s %s",
                                      rs->addr.user, rs->addr.password);
    else if (rs->addr.password)
        rc = idem__redis_send_command(c->ac, on_setup, c, "AUTH %s",
                                      rs->addr.password);
    if (rc == REDIS_OK && rs->addr.db)
        rc = idem__redis_send_command(c->ac, on_setup, c, "SELECT %d",
                                      rs->addr.db);
    for (i = 0; rc == REDIS_OK && i < RS_NSCRIPTS; i++)
        rc = idem__redis_send_command(c->ac, on_setup, c, "SCRIPT LOAD %s",
                                      rs->scripts[i]);
    if (rc == REDIS_OK)
        rc = idem__redis_send_command(c->ac, on_policy, c,
                                      "CONFIG GET maxmemory-policy");
    return rc == REDIS_OK ? 0 : -1;
}

void idem__rs_conn_start(struct idem__rs_conn *c)
{
    struct idem__rs_store *rs = c->t->rs;
    redisAsyncContext *ac = c->host ? redisAsyncConnect(c->host, c->port)
                                    : redisAsyncConnectUnix(rs->addr.path);

    c->was_up = false;
    c->tried_ms = idem__rs_now(rs);
    if (!ac || ac->err) {
        if (!c->quiet)
            idem__rs_say(rs, true, "redis: cannot connect: %s",
                         ac ? ac->errstr : "no memory");
        c->quiet = true;
        if (ac)
            redisAsyncFree(ac);
        backoff(c);
        return;
    }
    ac->data = c;
    if (idem__redis_event_attach(ac, &c->t->loop, &rs->env) != REDIS_OK) {
        redisAsyncFree(ac);
        backoff(c);
        return;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    c->ac = ac;
    c->state = RC_CONNECTING;
    set_timer(c, rs->connect_timeout_ms);
    if ((c->kind == RK_DATA ? send_setup(c) : idem__rs_sentinel_setup(c)) !=
        0) {
        idem__rs_conn_drop(c);
        backoff(c);
    }
}

struct idem__rs_conn *idem__rs_conn_new(struct idem__rs_thread *t,
                                        enum idem__rs_kind kind,
                                        const char *host, int port)
{
    struct idem__rs_store *rs = t->rs;
    struct idem__rs_conn *c = idem__alloc(&rs->env, sizeof(*c));

    if (!c)
        return NULL;
    *c = (struct idem__rs_conn){
        .t = t, .kind = kind, .port = port, .backoff_ms = BACKOFF_FIRST_MS
    };
    if ((host &&
         !(c->host = idem__redis_strndup(&rs->env, host, strlen(host)))) ||
        !(c->timer = t->loop.timer_new(t->loop.loop, on_timer, c))) {
        idem__free(&rs->env, c->host);
        idem__free(&rs->env, c);
        return NULL;
    }
    idem__list_init(&c->ops);
    idem__list_init(&c->waiting);
    idem__list_init(&c->link);
    if (kind == RK_DATA) {
        c->stat = node_stat(rs, host, port);
        idem__list_push_back(&t->nodes, &c->link);
    }
    idem__rs_conn_start(c);
    return c;
}

struct idem__rs_conn *idem__rs_node(struct idem__rs_thread *t, const char *host,
                                    int port)
{
    struct idem__list *n, *tmp;
    struct idem__rs_conn *c;

    idem__list_foreach_safe(n, tmp, &t->nodes)
    {
        c = idem__list_entry(n, struct idem__rs_conn, link);
        if (c->port == port && c->host && host && strcmp(c->host, host) == 0)
            return c;
    }
    return idem__rs_conn_new(t, RK_DATA, host, port);
}

int idem__rs_conn_move(struct idem__rs_conn *c, const char *host, int port)
{
    struct idem__rs_store *rs = c->t->rs;
    char *h = idem__redis_strndup(&rs->env, host, strlen(host));

    if (!h)
        return -1;
    idem__rs_conn_drop(c);
    idem__free(&rs->env, c->host);
    c->host = h;
    c->port = port;
    c->quiet = false;
    c->backoff_ms = BACKOFF_FIRST_MS;
    if (c->kind == RK_DATA)
        c->stat = node_stat(rs, host, port);
    idem__rs_conn_start(c);
    return 0;
}

void idem__rs_conn_free(struct idem__rs_conn *c)
{
    struct idem__rs_store *rs = c->t->rs;

    idem__rs_conn_drop(c);
    c->t->loop.free(c->t->loop.loop, c->timer);
    idem__list_remove(&c->link);
    idem__free(&rs->env, c->host);
    idem__free(&rs->env, c);
}
