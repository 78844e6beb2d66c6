/* Where a command goes and what its answer means. A command goes to the
 * primary of its key: the one server, the primary the Sentinels named,
 * or the Cluster node of its slot. Answers that say it did not run there
 * send it on, within its deadline: MOVED (the map is updated, and
 * refreshed), ASK (ASKING first, the map kept), TRYAGAIN, CLUSTERDOWN,
 * LOADING, MASTERDOWN, READONLY (after a failover) and a connect that
 * never came up park it, to be sent again on the tick. A lost connection
 * after the command went out fails it: it may have run.
 *
 * With replicas set, a script that wrote is answered only once a WAIT on
 * its connection says that many replicas have it. One WAIT is in flight
 * per connection; the writes answered meanwhile wait for the next one. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "event.h"
#include "internal.h"
#include "rstore.h"
#include "slots.h"

#define TICK_MS 20     /* parked commands are tried again this often */
#define REFRESH_MS 100 /* the Cluster map is asked at most this often */
/* Redis checks a WAIT's timeout on its own timer (hz 10): it may answer
 * this much late, and we wait for it that much longer. */
#define WAIT_GRACE_MS 250

static bool error_is(const redisReply *reply, const char *code)
{
    size_t n = strlen(code);

    return reply && reply->type == REDIS_REPLY_ERROR && reply->str &&
           strncmp(reply->str, code, n) == 0 &&
           (reply->str[n] == ' ' || reply->str[n] == '\0');
}

static enum idem__redis_mode mode(const struct idem__rs_thread *t)
{
    return t->rs->addr.mode;
}

/* -- Parking ----------------------------------------------------------- */

void idem__rs_tick_arm(struct idem__rs_thread *t, int64_t ms)
{
    if (t->tick_armed)
        return;
    t->tick_armed = true;
    t->loop.add(t->loop.loop, t->tick, ms);
}

static void park(struct idem__rs_op *op)
{
    op->c = NULL;
    idem__list_push_back(&op->t->parked, &op->link);
    idem__rs_tick_arm(op->t, TICK_MS);
}

void idem__rs_want_refresh(struct idem__rs_thread *t)
{
    if (!t->slots)
        return;
    t->want_refresh = true;
    idem__rs_tick_arm(t, 0);
}

static struct idem__rs_conn *route(const struct idem__rs_op *op)
{
    if (op->ask)
        return op->ask;
    if (op->t->slots)
        return op->t->slots[op->slot];
    return op->t->main;
}

int idem__rs_dispatch(struct idem__rs_op *op)
{
    struct idem__rs_thread *t = op->t;
    struct idem__rs_conn *c = route(op);

    if (idem__rs_now(t->rs) >= op->deadline_ms)
        return -1;
    if (!c || !c->ac || c->state == RC_DOWN) {
        if (c)
            idem__rs_conn_hurry(c);
        if (mode(t) == IDEM__REDIS_SINGLE && !op->internal)
            return -1;
        if (!c)
            idem__rs_want_refresh(t);
        park(op);
        return 0;
    }
    if ((op->ask &&
         idem__redis_send_command(c->ac, NULL, NULL, "ASKING") != REDIS_OK) ||
        idem__redis_send_formatted(c->ac, idem__rs_on_reply, op, op->cmd,
                                   (size_t)op->cmdlen) != REDIS_OK)
        return -1;
    op->c = c;
    idem__list_push_back(&c->ops, &op->link);
    if (idem__rs_oldest(c) == op)
        idem__rs_conn_arm(c);
    return 0;
}

/* Send op again, or fail it. */
static void redispatch(struct idem__rs_op *op)
{
    if (idem__rs_dispatch(op) != 0)
        idem__rs_finish(op, IDEM_EIO, NULL);
}

/* -- WAIT -------------------------------------------------------------- */

static void wait_send(struct idem__rs_conn *c);

/* Answer the scripts on group, given the replicas a WAIT counted (n; -1:
 * no answer). */
static void answer_group(struct idem__rs_conn *c, struct idem__list *group,
                         long long n)
{
    struct idem__rs_store *rs = c->t->rs;
    struct idem__list *l;
    struct idem__rs_op *op;

    if (n >= 0 && n < rs->replicas) {
        atomic_fetch_add(&rs->wait_timeouts, 1);
        idem__rs_say(rs, true,
                     "redis: %s:%d: WAIT: %lld of %d replicas acknowledged; "
                     "failing the writes",
                     c->host ? c->host : "unix", c->port, n, rs->replicas);
    }
    while ((l = idem__list_first(group))) {
        op = idem__list_entry(l, struct idem__rs_op, link);
        idem__list_remove(l);
        if (n >= rs->replicas) {
            idem__rs_finish(op, IDEM_OK, NULL);
            continue;
        }
        if (op->script == RS_BEGIN)
            idem__rs_undo(op); /* never forwarded: leave no marker */
        idem__rs_finish(op, IDEM_EIO, NULL);
    }
}

/* The commands queued behind a WAIT waited for it, blocked: their
 * deadlines move out by what Redis may take to answer them now. */
static void grace(struct idem__rs_conn *c)
{
    uint64_t due = idem__rs_now(c->t->rs) + WAIT_GRACE_MS;
    struct idem__list *n;
    struct idem__rs_op *op;

    for (n = c->ops.next; n != &c->ops; n = n->next) {
        op = idem__list_entry(n, struct idem__rs_op, link);
        if (op->deadline_ms < due)
            op->deadline_ms = due;
    }
}

/* A WAIT's answer (NULL: none): each script it waited for is answered,
 * and the writes answered since get a WAIT of their own. */
static void wait_done(struct idem__rs_conn *c, struct idem__rs_op *w,
                      const redisReply *reply)
{
    long long n =
        reply && reply->type == REDIS_REPLY_INTEGER ? reply->integer : -1;

    c->wait_sent = false;
    grace(c);
    answer_group(c, &w->group, n);
    idem__free(&c->t->rs->env, w);
    if (!idem__list_empty(&c->waiting))
        wait_send(c);
}

/* The earliest deadline among ops on list l. */
static uint64_t earliest(const struct idem__list *l)
{
    const struct idem__list *n;
    uint64_t d = UINT64_MAX, x;

    for (n = l->next; n != l; n = n->next) {
        x = idem__list_entry(n, struct idem__rs_op, link)->deadline_ms;
        d = x < d ? x : d;
    }
    return d;
}

/* Send a WAIT for every write c has answered and not yet waited for. */
static void wait_send(struct idem__rs_conn *c)
{
    struct idem__rs_store *rs = c->t->rs;
    struct idem__rs_op *w = idem__alloc(&rs->env, sizeof(*w));
    uint64_t now = idem__rs_now(rs), due;
    long long ms;

    if (!w) {
        struct idem__list group;

        idem__list_init(&group);
        idem__list_splice_back(&group, &c->waiting);
        answer_group(c, &group, -1);
        return;
    }
    *w = (struct idem__rs_op){ .t = c->t, .c = c, .is_wait = true };
    idem__list_init(&w->link);
    idem__list_init(&w->group);
    idem__list_splice_back(&w->group, &c->waiting);
    due = earliest(&w->group);
    ms = due > now ? (long long)(due - now) * 3 / 4 : 1;
    w->deadline_ms = now + (uint64_t)(ms > 0 ? ms : 1) + WAIT_GRACE_MS;
    if (!c->ac || c->state != RC_UP ||
        idem__redis_send_command(c->ac, idem__rs_on_reply, w, "WAIT %d %lld",
                                 rs->replicas, ms > 0 ? ms : 1) != REDIS_OK) {
        wait_done(c, w, NULL); /* not sent: fails the group, frees w */
        return;
    }
    c->wait_sent = true;
    idem__list_push_back(&c->ops, &w->link);
    if (idem__rs_oldest(c) == w)
        idem__rs_conn_arm(c);
}

static void wait_add(struct idem__rs_conn *c, struct idem__rs_op *op)
{
    op->c = c;
    idem__list_push_back(&c->waiting, &op->link);
    if (!c->wait_sent)
        wait_send(c);
}

void idem__rs_fail_orphans(struct idem__rs_conn *c)
{
    struct idem__rs_op *op;
    struct idem__list *l;

    while ((op = idem__rs_oldest(c))) {
        idem__list_remove(&op->link);
        if (op->is_wait)
            wait_done(c, op, NULL);
        else
            idem__rs_finish(op, IDEM_EIO, NULL);
    }
    while ((l = idem__list_first(&c->waiting))) {
        idem__list_remove(l);
        idem__rs_finish(idem__list_entry(l, struct idem__rs_op, link), IDEM_EIO,
                        NULL);
    }
}

/* -- Answers ----------------------------------------------------------- */

/* The length of the bulk string at p ("$N\r\n" N bytes "\r\n"), or 0. */
static size_t bulk_len(const char *p, const char *end)
{
    char *nl;
    long n;

    if (p >= end || *p != '$')
        return 0;
    n = strtol(p + 1, &nl, 10);
    if (n < 0 || nl + 2 > end || nl[0] != '\r' || nl[1] != '\n')
        return 0;
    if ((size_t)(end - (nl + 2)) < (size_t)n + 2)
        return 0;
    return (size_t)(nl + 2 - p) + (size_t)n + 2;
}

/* Send op again on c as EVAL: its command with the script in the SHA's
 * place. 0, or -1 (then op fails). */
static int resend_eval(struct idem__rs_conn *c, struct idem__rs_op *op)
{
    const char *cmd = op->cmd, *end = op->cmd + op->cmdlen;
    const char *script = c->t->rs->scripts[op->script];
    const char *args = strstr(cmd, "\r\n");
    size_t a, b, slen = strlen(script), n;
    char *eval;
    int rc;

    if (!c->ac || !args)
        return -1;
    args += 2;
    a = bulk_len(args, end);
    b = a ? bulk_len(args + a, end) : 0;
    if (!b)
        return -1;
    n = (size_t)(args - cmd) + 32 + slen + (size_t)(end - (args + a + b));
    if (!(eval = idem__alloc(&c->t->rs->env, n)))
        return -1;
    rc = snprintf(eval, n, "%.*s$4\r\nEVAL\r\n$%zu\r\n%s\r\n",
                  (int)(args - cmd), cmd, slen, script);
    memcpy(eval + rc, args + a + b, (size_t)(end - (args + a + b)));
    rc += (int)(end - (args + a + b));
    op->retried = true;
    rc = idem__redis_send_formatted(c->ac, idem__rs_on_reply, op, eval,
                                    (size_t)rc);
    idem__free(&c->t->rs->env, eval);
    if (rc != REDIS_OK)
        return -1;
    op->c = c;
    idem__list_push_back(&c->ops, &op->link);
    return 0;
}

size_t idem__rs_cmd_key(const char *cmd, int cmdlen, const char **key_out)
{
    const char *end = cmd + cmdlen, *p = strstr(cmd, "\r\n"), *nl;
    size_t n;
    int i;

    if (!p)
        return 0;
    p += 2;
    for (i = 0; i < 3; i++) {
        if (!(n = bulk_len(p, end)))
            return 0;
        p += n;
    }
    if (!(n = bulk_len(p, end)) || !(nl = strstr(p, "\r\n")))
        return 0;
    *key_out = nl + 2;
    return n - (size_t)(nl + 2 - p) - 2;
}

/* Follow a MOVED or ASK for op, answered by c. true: op is on its way
 * (or answered); false: fail it. */
static bool follow(struct idem__rs_conn *c, struct idem__rs_op *op,
                   const struct idem__redis_redirect *rd)
{
    struct idem__rs_thread *t = c->t;
    struct idem__rs_conn *n;

    atomic_fetch_add(&t->rs->redirects, 1);
    if (++op->redirects > IDEM__RS_REDIRECTS)
        return false;
    n = idem__rs_node(t, rd->host[0] ? rd->host : c->host, rd->port);
    if (!n)
        return false;
    if (!(rd->ask ? t->told_ask : t->told_moved))
        idem__rs_say(t->rs, true,
                     "redis: cluster: slot %u %s %s:%d; following (said "
                     "once per worker)",
                     rd->slot, rd->ask ? "is moving to" : "moved to", n->host,
                     n->port);
    *(rd->ask ? &t->told_ask : &t->told_moved) = true;
    if (rd->ask) {
        op->ask = n;
    } else {
        op->ask = NULL;
        t->slots[rd->slot] = n;
        idem__rs_want_refresh(t); /* the map is out of date */
    }
    op->retried = false;
    redispatch(op);
    return true;
}

/* The server is a replica now (READONLY). */
static void readonly(struct idem__rs_conn *c)
{
    if (mode(c->t) == IDEM__REDIS_SINGLE) {
        idem__rs_say(c->t->rs, true,
                     "redis: the server is a read-only replica; "
                     "reconnecting");
        redisAsyncDisconnect(c->ac);
    } else {
        idem__rs_lost(c);
    }
}

/* An error reply for op from c. true: handled (op sent on, parked or
 * answered); false: op fails. */
static bool mind_error(struct idem__rs_conn *c, struct idem__rs_op *op,
                       const redisReply *reply)
{
    struct idem__redis_redirect rd;
    bool single = mode(c->t) == IDEM__REDIS_SINGLE;

    if (error_is(reply, "NOSCRIPT") && !op->retried)
        return resend_eval(c, op) == 0;
    if (error_is(reply, "READONLY"))
        readonly(c);
    if (idem__redis_redirect_parse(reply->str, (size_t)reply->len, &rd)) {
        if (c->t->slots)
            return follow(c, op, &rd);
        if (!c->told_moved)
            idem__rs_say(c->t->rs, true,
                         "redis: a Cluster redirection (%s): use "
                         "redis-cluster:// in --store",
                         reply->str);
        c->told_moved = true;
        return false;
    }
    if (single ||
        !(error_is(reply, "READONLY") || error_is(reply, "TRYAGAIN") ||
          error_is(reply, "CLUSTERDOWN") || error_is(reply, "LOADING") ||
          error_is(reply, "MASTERDOWN")))
        return false;
    if (error_is(reply, "CLUSTERDOWN"))
        idem__rs_want_refresh(c->t);
    park(op); /* it did not run: send it again on the tick */
    return true;
}

void idem__rs_on_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    struct idem__rs_op *op = privdata;
    struct idem__rs_conn *c = op->c;
    struct idem__blob blob = { NULL, 0, NULL, NULL };
    redisReply *reply = r;
    int rc;

    idem__list_remove(&op->link);
    op->c = NULL;
    if (op->is_wait) {
        wait_done(c, op, reply);
        idem__rs_conn_arm(c);
        return;
    }
    if (!reply && mode(c->t) != IDEM__REDIS_SINGLE &&
        !(ac->c.flags & REDIS_CONNECTED)) {
        park(op); /* its connection never came up: it never ran */
        return;
    }
    if (reply && reply->type == REDIS_REPLY_ERROR && mind_error(c, op, reply)) {
        idem__rs_conn_arm(c);
        return;
    }
    rc = idem__rs_judge(op, reply, &blob);
    idem__rs_conn_arm(c);
    if (rc == IDEM_OK && op->needs_wait && reply) {
        wait_add(c, op);
        return;
    }
    idem__rs_finish(op, rc, rc == IDEM_EEXIST ? &blob : NULL);
}

/* -- Where to go -------------------------------------------------------- */

void idem__rs_lost(struct idem__rs_conn *c)
{
    struct idem__rs_thread *t = c->t;

    if (c->kind == RK_SENTINEL) {
        idem__rs_sentinel_lost(c);
        return;
    }
    if (mode(t) == IDEM__REDIS_CLUSTER)
        idem__rs_want_refresh(t);
    else if (mode(t) == IDEM__REDIS_SENTINEL && c == t->main)
        idem__rs_sentinel_ask(t);
}

/* Mark each node that is a primary in t's map. */
static void mark_primaries(struct idem__rs_thread *t, bool *marks)
{
    struct idem__list *n;
    size_t i = 0, s;

    for (n = t->nodes.next; n != &t->nodes; n = n->next, i++) {
        marks[i] = false;
        for (s = 0; s < IDEM__REDIS_SLOTS && !marks[i]; s++)
            marks[i] =
                t->slots[s] == idem__list_entry(n, struct idem__rs_conn, link);
    }
}

/* Count the failovers a new map shows: primaries that are no more. */
static void count_failovers(struct idem__rs_thread *t, const bool *before,
                            size_t nbefore)
{
    bool after[256];
    struct idem__list *n;
    size_t i = 0;

    mark_primaries(t, after);
    for (n = t->nodes.next; n != &t->nodes && i < nbefore; n = n->next, i++) {
        struct idem__rs_conn *c =
            idem__list_entry(n, struct idem__rs_conn, link);

        if (before[i] && !after[i]) {
            atomic_fetch_add(&t->rs->failovers, 1);
            idem__rs_say(t->rs, true,
                         "redis: cluster: %s:%d serves no slots any more "
                         "(a failover)",
                         c->host, c->port);
        }
    }
}

static size_t count_nodes(const struct idem__rs_thread *t)
{
    const struct idem__list *n;
    size_t i = 0;

    for (n = t->nodes.next; n != &t->nodes; n = n->next)
        i++;
    return i;
}

/* Point t's slots at the primaries of ranges[0..n). */
static void apply_map(struct idem__rs_thread *t,
                      const struct idem__redis_range *ranges, size_t n)
{
    bool before[256];
    size_t nbefore = count_nodes(t), i, s;
    struct idem__rs_conn *c;

    if (nbefore <= 256)
        mark_primaries(t, before);
    for (i = 0; i < n; i++) {
        if (!(c = idem__rs_node(t, ranges[i].host, ranges[i].port))) {
            t->want_refresh = true; /* out of memory: again later */
            continue;
        }
        for (s = ranges[i].start; s <= ranges[i].end; s++)
            t->slots[s] = c;
    }
    if (nbefore <= 256 && count_nodes(t) <= 256)
        count_failovers(t, before, nbefore);
    atomic_fetch_add(&t->rs->refreshes, 1);
}

static void on_slots(redisAsyncContext *ac, void *r, void *privdata)
{
    struct idem__rs_thread *t = privdata;
    struct idem__redis_range *ranges;
    size_t n;

    (void)ac;
    t->refreshing = false;
    if (!r || idem__redis_slots_parse(&t->rs->env, r, &ranges, &n) != IDEM_OK) {
        t->want_refresh = true;
        idem__rs_tick_arm(t, TICK_MS);
        return;
    }
    apply_map(t, ranges, n);
    idem__free(&t->rs->env, ranges);
    if (!idem__list_empty(&t->parked) || t->want_refresh)
        idem__rs_tick_arm(t, 0);
}

/* Ask a node that is up for the map (each time the next one); with none
 * up, make sure the seeds are being connected to. */
static void send_refresh(struct idem__rs_thread *t)
{
    struct idem__list *n, *tmp;
    struct idem__rs_conn *c;
    size_t i;

    idem__list_foreach_safe(n, tmp, &t->nodes)
    {
        c = idem__list_entry(n, struct idem__rs_conn, link);
        if (c->state != RC_UP || !c->ac)
            continue;
        idem__list_remove(n); /* the next refresh asks another */
        idem__list_push_back(&t->nodes, n);
        if (idem__redis_send_command(c->ac, on_slots, t, "CLUSTER SLOTS") !=
            REDIS_OK)
            return;
        t->refreshing = true;
        t->want_refresh = false;
        t->refreshed_ms = idem__rs_now(t->rs);
        return;
    }
    for (i = 0; i < t->rs->addr.nseeds; i++)
        idem__rs_node(t, t->rs->addr.seeds[i].host, t->rs->addr.seeds[i].port);
}

void idem__rs_on_tick(void *arg)
{
    struct idem__rs_thread *t = arg;
    uint64_t now = idem__rs_now(t->rs);
    struct idem__list todo, *l;

    t->tick_armed = false;
    if (t->want_ask)
        idem__rs_sentinel_ask(t);
    if (t->refreshing &&
        now - t->refreshed_ms > (uint64_t)t->rs->command_timeout_ms)
        t->refreshing = false; /* no answer: ask again */
    if (t->want_refresh && !t->refreshing &&
        now - t->refreshed_ms >= REFRESH_MS)
        send_refresh(t);
    idem__list_init(&todo);
    idem__list_splice_back(&todo, &t->parked);
    while ((l = idem__list_first(&todo))) {
        idem__list_remove(l);
        redispatch(idem__list_entry(l, struct idem__rs_op, link));
    }
    if (!idem__list_empty(&t->parked) || t->want_refresh || t->want_ask)
        idem__rs_tick_arm(t, TICK_MS);
}

bool idem__rs_busy(const struct idem__rs_thread *t)
{
    const struct idem__list *n;
    const struct idem__rs_conn *c;

    if (!idem__list_empty(&t->parked))
        return true;
    for (n = t->nodes.next; n != &t->nodes; n = n->next) {
        c = idem__list_entry(n, struct idem__rs_conn, link);
        if (!idem__list_empty(&c->ops) || !idem__list_empty(&c->waiting))
            return true;
    }
    return false;
}
