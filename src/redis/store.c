/* The Redis store. Each attached thread owns one hiredis async connection
 * on its libevent loop; commands on it pipeline. Every operation is one
 * Lua script, sent by EVALSHA (EVAL when Redis answers NOSCRIPT), so a
 * read-check-write on a key is atomic and one round trip; complete (and
 * renewal, which writes the record with its later lease) and abort check
 * the owner's token in place before they write (fencing).
 *
 * hiredis 0.14 has no timeouts of its own, so each connection has one
 * timer, whose meaning follows its state: the connect deadline while
 * connecting, the deadline of the oldest command while up (replies come
 * in order, so the oldest is the first due), the backoff while down. A
 * command past its deadline takes its connection down with it: every
 * command in flight fails (hiredis calls each callback with no reply),
 * and a new connection follows. */
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fingerprint.h"
#include "internal.h"
#include "list.h"
#include "record.h"
#include "event.h"
#include "idem/redis.h"
#include "url.h"
#include "store_internal.h"

#define DEFAULT_TIMEOUT_MS 1000
#define BACKOFF_FIRST_MS 50
#define BACKOFF_MAX_MS 2000
#define PREFIX_MAX 256

_Static_assert(IDEM__RECORD_VERSION_OFF == 2 && IDEM__RECORD_STATE_OFF == 3 &&
                   IDEM__RECORD_TOKEN_OFF == 37 && IDEM__TOKEN_LEN == 16 &&
                   IDEM__RECORD_VERSION == 1 && IDEM__REC_INFLIGHT == 1 &&
                   IDEM__REC_UNKNOWN == 3 && IDEM__RECORD_TOKEN_OFF + 16 == 53,
               "the scripts below read records at these offsets");

/* -- Scripts ---------------------------------------------------------- */

/* KEYS[1] the key. begin: ARGV record, its ttl, the wall clock (Unix
 * ms), "1" to hold a lapsed lease as unknown (else take the key over), the
 * unknown record's ttl. The others: ARGV[1] the owner's token; complete:
 * record, ttl. OWNED holds when the key's record is a version 1 record in
 * flight under the token (bytes 38..53 in Lua's 1-based counting). A
 * lease is the record's second varint (created, then expires) from byte
 * 54 on. */
#define OWNED                                                                  \
    "local v = redis.call('GET', KEYS[1]) "                                    \
    "if not v or string.sub(v, 1, 2) ~= 'IK' or string.byte(v, 3) ~= 1 "       \
    "or string.byte(v, 4) ~= 1 or string.sub(v, 38, 53) ~= ARGV[1] then "      \
    "return 0 end "

enum script { SC_BEGIN, SC_COMPLETE, SC_ABORT, NSCRIPTS };

static const char *const scripts[NSCRIPTS] = {
    [SC_BEGIN] =
        "local v = redis.call('GET', KEYS[1]) "
        "if v then "
        "if #v < 56 or string.sub(v, 1, 2) ~= 'IK' or string.byte(v, 3) ~= 1 "
        "or string.byte(v, 4) ~= 1 then return v end "
        "local i, x, m, b = 54, 0, 1, 0 "
        "repeat b = string.byte(v, i) i = i + 1 until b < 128 "
        "repeat b = string.byte(v, i) i = i + 1 x = x + (b % 128) * m "
        "m = m * 128 until b < 128 "
        "if x > tonumber(ARGV[3]) then return v end "
        "if ARGV[4] == '1' then "
        "v = string.sub(v, 1, 3) .. '\\3' .. string.sub(v, 5) "
        "redis.call('SET', KEYS[1], v, 'PX', ARGV[5]) return v end "
        "end "
        "redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) "
        "return 1",
    [SC_COMPLETE] = OWNED "redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) "
                          "return 1",
    [SC_ABORT] = OWNED "redis.call('DEL', KEYS[1]) return 1",
};

/* -- Types ------------------------------------------------------------ */

/* Whether s is a Redis store (attach and detach apply to no other). */
static bool is_redis(const struct idem_store *s);

struct redis_store {
    struct idem_store base;
    struct idem_env env;
    struct idem__redis_addr addr;
    char *prefix;
    int64_t connect_timeout_ms, command_timeout_ms;
    char sha[NSCRIPTS][41]; /* SHA-1 of each script, hex */
    void (*log)(void *ud, bool trouble, const char *msg);
    void *log_ud;
    atomic_uint_fast64_t connections, connects, commands, errors, timeouts,
        pending;
    atomic_uint_fast64_t policy; /* IDEM_REDIS_POLICY_*, last seen */
};

enum conn_state { C_DOWN, C_CONNECTING, C_UP };

struct rop;

/* One thread's connection. */
struct rconn {
    struct redis_store *rs;
    struct idem_redis_loop loop; /* the caller's, copied at attach */
    redisAsyncContext *ac;       /* NULL while down */
    enum conn_state state;
    void *timer; /* a loop timer */
    int64_t backoff_ms;
    int setup_left;        /* setup replies to come; all well: backoff resets */
    bool quiet;            /* a failed connect was logged: not again until up */
    bool told_moved;       /* a Cluster redirection was logged */
    struct idem__list ops; /* commands sent, oldest first (struct rop) */
    struct idem__list link; /* on thread_conns */
};

/* A command in flight. */
struct rop {
    struct rconn *c;
    struct idem__list link; /* on c->ops */
    enum script script;
    uint64_t deadline_ms;
    idem__store_done done;
    void *ud;
    char *cmd; /* the EVALSHA command as sent (hiredis-allocated) */
    int cmdlen;
    bool retried; /* sent again as EVAL */
};

/* This thread's connections (struct rconn), one per attached store. */
static _Thread_local struct idem__list thread_conns = { NULL, NULL };

/* thread_conns, set up on the thread's first use. */
static struct idem__list *conns(void)
{
    if (!thread_conns.next)
        idem__list_init(&thread_conns);
    return &thread_conns;
}

static void conn_start(struct rconn *c);
static void arm(struct rconn *c);

static void say(struct redis_store *rs, bool trouble, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void say(struct redis_store *rs, bool trouble, const char *fmt, ...)
{
    char msg[256];
    va_list ap;

    if (!rs->log)
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    rs->log(rs->log_ud, trouble, msg);
}

static struct rconn *thread_conn(struct redis_store *rs)
{
    struct idem__list *n, *tmp;
    struct rconn *c;

    idem__list_foreach_safe(n, tmp, conns())
    {
        c = idem__list_entry(n, struct rconn, link);
        if (c->rs == rs)
            return c;
    }
    return NULL;
}

/* The oldest command in flight on c, or NULL. */
static struct rop *oldest(const struct rconn *c)
{
    struct idem__list *n = idem__list_first(&c->ops);

    return n ? idem__list_entry(n, struct rop, link) : NULL;
}

static uint64_t now_ms(const struct redis_store *rs)
{
    return rs->env.now_ms(rs->env.ud);
}

/* -- The command queue ------------------------------------------------ */

static void queue_push(struct rconn *c, struct rop *op)
{
    idem__list_push_back(&c->ops, &op->link);
}

/* Take op off c's queue (the oldest, since replies come in order);
 * harmless if it is not on it. */
static void queue_remove(struct rconn *c, struct rop *op)
{
    (void)c;
    idem__list_remove(&op->link);
}

static void op_free(struct rop *op)
{
    struct redis_store *rs = op->c->rs;

    if (op->cmd)
        redisFreeCommand(op->cmd);
    atomic_fetch_sub(&rs->pending, 1);
    idem__free(&rs->env, op);
}

/* -- Answers ---------------------------------------------------------- */

/* A copy of a record Redis sent, for the engine to keep. */
struct rblob {
    struct redis_store *rs;
    char data[];
};

static void blob_free(void *ctx)
{
    struct rblob *b = ctx;

    idem__free(&b->rs->env, b);
}

/* What reply means for op's script. */
static int judge(struct rop *op, const redisReply *reply,
                 struct idem__blob *blob)
{
    if (!reply)
        return IDEM_EIO; /* the connection went down */
    if (reply->type == REDIS_REPLY_INTEGER && reply->integer == 1)
        return IDEM_OK;
    if (reply->type == REDIS_REPLY_INTEGER && reply->integer == 0 &&
        op->script != SC_BEGIN)
        return IDEM_ESTALE;
    if (reply->type == REDIS_REPLY_STRING && op->script == SC_BEGIN) {
        struct redis_store *rs = op->c->rs;
        struct rblob *b =
            idem__alloc(&rs->env, sizeof(*b) + (size_t)reply->len);

        if (!b)
            return IDEM_ENOMEM;
        b->rs = rs;
        memcpy(b->data, reply->str, (size_t)reply->len);
        *blob =
            (struct idem__blob){ b->data, (size_t)reply->len, blob_free, b };
        return IDEM_EEXIST;
    }
    return IDEM_EIO;
}

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

static void on_reply(redisAsyncContext *ac, void *r, void *privdata);

/* Send op again as EVAL: its command with the script in the SHA's place.
 * 0, or -1 (then op fails). */
static int resend_eval(struct rconn *c, struct rop *op)
{
    const char *cmd = op->cmd, *end = op->cmd + op->cmdlen;
    const char *script = scripts[op->script];
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
    if (!(eval = idem__alloc(&c->rs->env, n)))
        return -1;
    rc = snprintf(eval, n, "%.*s$4\r\nEVAL\r\n$%zu\r\n%s\r\n",
                  (int)(args - cmd), cmd, slen, script);
    memcpy(eval + rc, args + a + b, (size_t)(end - (args + a + b)));
    rc += (int)(end - (args + a + b));
    op->retried = true;
    rc = idem__redis_send_formatted(c->ac, on_reply, op, eval, (size_t)rc);
    idem__free(&c->rs->env, eval);
    if (rc != REDIS_OK)
        return -1;
    queue_push(c, op);
    return 0;
}

static bool error_is(const redisReply *reply, const char *code)
{
    size_t n = strlen(code);

    return reply && reply->type == REDIS_REPLY_ERROR && reply->str &&
           strncmp(reply->str, code, n) == 0 &&
           (reply->str[n] == ' ' || reply->str[n] == '\0');
}

/* Errors that say where we are connected is wrong. READONLY: a replica
 * (after a failover, the address may lead to the new primary now):
 * reconnect. MOVED or ASK: a Cluster node, which we do not follow. */
static void mind_error(struct rconn *c, redisAsyncContext *ac,
                       const redisReply *reply)
{
    if (error_is(reply, "READONLY")) {
        say(c->rs, true,
            "redis: the server is a read-only replica; "
            "reconnecting");
        redisAsyncDisconnect(ac);
    } else if ((error_is(reply, "MOVED") || error_is(reply, "ASK")) &&
               !c->told_moved) {
        c->told_moved = true;
        say(c->rs, true,
            "redis: a Cluster redirection (%s): point --store "
            "at a primary or a cluster-aware proxy",
            reply->str);
    }
}

static void on_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    struct rop *op = privdata;
    struct rconn *c = op->c;
    struct idem__blob blob = { NULL, 0, NULL, NULL };
    redisReply *reply = r;
    int rc;

    queue_remove(c, op);
    mind_error(c, ac, reply);
    if (error_is(reply, "NOSCRIPT") && !op->retried && resend_eval(c, op) == 0)
        return;
    rc = judge(op, reply, &blob);
    if (rc == IDEM_EIO || rc == IDEM_ENOMEM)
        atomic_fetch_add(&c->rs->errors, 1);
    arm(c);
    op->done(op->ud, rc, rc == IDEM_EEXIST ? &blob : NULL);
    op_free(op);
}

/* -- Sending ---------------------------------------------------------- */

/* "<prefix>:{<hex scope>:<key>}" into buf (cap bytes). Its length, or 0. */
static size_t redis_key(const struct redis_store *rs, const uint8_t *skey,
                        size_t klen, char *buf, size_t cap)
{
    static const char hex[] = "0123456789abcdef";
    size_t plen = strlen(rs->prefix), n, i;

    if (klen < IDEM__SCOPE_LEN)
        return 0;
    n = plen + 2 + 2 * IDEM__SCOPE_LEN + 1 + (klen - IDEM__SCOPE_LEN) + 1;
    if (n > cap)
        return 0;
    memcpy(buf, rs->prefix, plen);
    buf += plen;
    *buf++ = ':';
    *buf++ = '{';
    for (i = 0; i < IDEM__SCOPE_LEN; i++) {
        *buf++ = hex[skey[i] >> 4];
        *buf++ = hex[skey[i] & 15];
    }
    *buf++ = ':';
    memcpy(buf, skey + IDEM__SCOPE_LEN, klen - IDEM__SCOPE_LEN);
    buf[klen - IDEM__SCOPE_LEN] = '}';
    return n;
}

/* Run script on key with args: IDEM_EINPROGRESS (done comes later) or a
 * failure now (the thread has no connection up, out of memory). */
static int run(struct idem_store *s, enum script script, const void *skey,
               size_t klen, int nargs, const char **args, const size_t *lens,
               idem__store_done done, void *ud)
{
    struct redis_store *rs = (struct redis_store *)s;
    struct rconn *c = thread_conn(rs);
    char key[PREFIX_MAX + 2 + 2 * IDEM__SCOPE_LEN + 2 + IDEM_KEY_MAX_CAP];
    const char *argv[10] = { "EVALSHA", rs->sha[script], "1", key };
    size_t argl[10] = { 7, 40, 1, 0 };
    struct rop *op;
    int i;

    if (!c || !c->ac || c->state == C_DOWN || !done) {
        atomic_fetch_add(&rs->errors, 1);
        return IDEM_EIO;
    }
    if (!(argl[3] = redis_key(rs, skey, klen, key, sizeof(key))))
        return IDEM_EINVAL;
    for (i = 0; i < nargs; i++) {
        argv[4 + i] = args[i];
        argl[4 + i] = lens[i];
    }
    if (!(op = idem__alloc(&rs->env, sizeof(*op))))
        return IDEM_ENOMEM;
    *op = (struct rop){ .c = c, .script = script, .done = done, .ud = ud };
    idem__list_init(&op->link);
    atomic_fetch_add(&rs->pending, 1);
    op->cmdlen = redisFormatCommandArgv(&op->cmd, 4 + nargs, argv, argl);
    if (op->cmdlen < 0 ||
        idem__redis_send_formatted(c->ac, on_reply, op, op->cmd,
                                   (size_t)op->cmdlen) != REDIS_OK) {
        if (op->cmdlen < 0)
            op->cmd = NULL;
        op_free(op);
        atomic_fetch_add(&rs->errors, 1);
        return IDEM_EIO;
    }
    atomic_fetch_add(&rs->commands, 1);
    op->deadline_ms = now_ms(rs) + (uint64_t)rs->command_timeout_ms;
    queue_push(c, op);
    if (oldest(c) == op)
        arm(c);
    return IDEM_EINPROGRESS;
}

static int rs_begin(struct idem_store *s, const void *key, size_t klen,
                    const void *rec, size_t rlen,
                    const struct idem__begin_args *a,
                    struct idem__blob *existing_out, idem__store_done done,
                    void *ud)
{
    char ttl[24], wall[24], uttl[24];
    const char *args[5] = { rec, ttl, wall, a->hold ? "1" : "0", uttl };
    size_t lens[5] = { rlen, 0, 0, 1, 0 };

    (void)existing_out;
    lens[1] = (size_t)snprintf(ttl, sizeof(ttl), "%lld", (long long)a->ttl_ms);
    lens[2] = (size_t)snprintf(wall, sizeof(wall), "%llu",
                               (unsigned long long)a->wall_ms);
    lens[4] = (size_t)snprintf(uttl, sizeof(uttl), "%lld",
                               (long long)a->unknown_ttl_ms);
    return run(s, SC_BEGIN, key, klen, 5, args, lens, done, ud);
}

static int rs_complete(struct idem_store *s, const void *key, size_t klen,
                       const uint8_t *token, const void *rec, size_t rlen,
                       int64_t ttl_ms, idem__store_done done, void *ud)
{
    char ms[24];
    const char *args[3] = { (const char *)token, rec, ms };
    size_t lens[3] = { IDEM__TOKEN_LEN, rlen, 0 };

    lens[2] = (size_t)snprintf(ms, sizeof(ms), "%lld", (long long)ttl_ms);
    return run(s, SC_COMPLETE, key, klen, 3, args, lens, done, ud);
}

static int rs_abort(struct idem_store *s, const void *key, size_t klen,
                    const uint8_t *token, idem__store_done done, void *ud)
{
    const char *args[1] = { (const char *)token };
    size_t lens[1] = { IDEM__TOKEN_LEN };

    return run(s, SC_ABORT, key, klen, 1, args, lens, done, ud);
}

/* Redis keeps strings of up to 512 MiB (proto-max-bulk-len). */
static size_t rs_max_record(struct idem_store *s)
{
    (void)s;
    return (size_t)512 << 20;
}

/* -- The connection --------------------------------------------------- */

static void set_timer(struct rconn *c, int64_t ms)
{
    c->loop.add(c->loop.loop, c->timer, ms);
}

/* Point the timer at what the state waits for. */
static void arm(struct rconn *c)
{
    uint64_t now;

    if (c->state != C_UP)
        return; /* connect deadline or backoff: armed when entered */
    if (!oldest(c)) {
        c->loop.del(c->loop.loop, c->timer);
        return;
    }
    now = now_ms(c->rs);
    set_timer(c, oldest(c)->deadline_ms > now
                     ? (int64_t)(oldest(c)->deadline_ms - now)
                     : 0);
}

static void backoff(struct rconn *c)
{
    c->state = C_DOWN;
    set_timer(c, c->backoff_ms);
    c->backoff_ms =
        c->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : c->backoff_ms * 2;
}

/* Fail what is still queued on c once hiredis has called back every
 * command of c's last connection: what is left, hiredis never had (it
 * would wait for ever, and time out every new connection). */
static void fail_orphans(struct rconn *c)
{
    struct rop *op;

    while ((op = oldest(c))) {
        queue_remove(c, op);
        atomic_fetch_add(&c->rs->errors, 1);
        op->done(op->ud, IDEM_EIO, NULL);
        op_free(op);
    }
}

/* Take the connection down now: hiredis fails every command in flight
 * (their callbacks run here, with no reply; inside a callback of hiredis,
 * once it returns), then frees it. */
static void drop(struct rconn *c)
{
    redisAsyncContext *ac = c->ac;
    bool later = ac && (ac->c.flags & REDIS_IN_CALLBACK);

    if (c->state == C_UP)
        atomic_fetch_sub(&c->rs->connections, 1);
    c->ac = NULL;
    c->state = C_DOWN; /* so the callbacks below send nothing on ac */
    if (ac)
        redisAsyncFree(ac);
    if (!later)
        fail_orphans(c);
}

static void on_timer(void *arg)
{
    struct rconn *c = arg;

    if (c->state == C_DOWN) {
        fail_orphans(c); /* of a connect that failed */
        conn_start(c);
        return;
    }
    if (c->state == C_UP && oldest(c) &&
        oldest(c)->deadline_ms > now_ms(c->rs)) {
        arm(c); /* woke early */
        return;
    }
    atomic_fetch_add(&c->rs->timeouts, 1);
    say(c->rs, true, "redis: %s timed out; reconnecting",
        c->state == C_UP ? "a command" : "the connection");
    drop(c);
    backoff(c);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct rconn *c = ac->data;

    if (status != REDIS_OK) { /* hiredis frees ac after this */
        if (!c->quiet)
            say(c->rs, true, "redis: cannot connect: %s", ac->errstr);
        c->quiet = true;
        c->ac = NULL;
        backoff(c); /* the queued commands fail next, with no reply */
        return;
    }
    c->state = C_UP;
    atomic_fetch_add(&c->rs->connections, 1);
    atomic_fetch_add(&c->rs->connects, 1);
    c->quiet = false;
    say(c->rs, false, "redis: connected");
    arm(c);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct rconn *c = ac->data;

    if (!c->ac) /* drop() or a failed connect: handled there */
        return;
    say(c->rs, true, "redis: connection lost%s%s; reconnecting",
        status == REDIS_OK ? "" : ": ", status == REDIS_OK ? "" : ac->errstr);
    if (c->state == C_UP)
        atomic_fetch_sub(&c->rs->connections, 1);
    c->ac = NULL;
    backoff(c);
    fail_orphans(c); /* hiredis has failed what it had */
}

/* A reply to AUTH, SELECT or SCRIPT LOAD. */
static void on_setup(redisAsyncContext *ac, void *r, void *privdata)
{
    struct rconn *c = privdata;
    redisReply *reply = r;

    if (reply && reply->type == REDIS_REPLY_ERROR) {
        say(c->rs, true, "redis: %s", reply->str);
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
    struct rconn *c = privdata;
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
    was = atomic_exchange(&c->rs->policy, seen);
    if (seen == was)
        return;
    if (seen == IDEM_REDIS_POLICY_EVICTS)
        say(c->rs, true,
            "redis: maxmemory-policy is %s: under memory pressure Redis may "
            "evict idempotency records, and a retry of an evicted key runs "
            "again; set it to noeviction",
            v->str);
    else if (seen == IDEM_REDIS_POLICY_UNKNOWN)
        say(c->rs, false,
            "redis: cannot read maxmemory-policy (%s); it must be noeviction",
            reply->type == REDIS_REPLY_ERROR ? reply->str : "no answer");
}

/* Log in, pick the database and load the scripts: sent first, answered
 * before any command of ours. Then ask for the eviction policy. */
static int send_setup(struct rconn *c)
{
    struct redis_store *rs = c->rs;
    int rc = REDIS_OK, i;

    c->setup_left = NSCRIPTS + (rs->addr.password != NULL) + (rs->addr.db != 0);
    if (rs->addr.password && rs->addr.user)
        rc = idem__redis_send_command(c->ac, on_setup, c, "AUTH %s %s",
                                      rs->addr.user, rs->addr.password);
    else if (rs->addr.password)
        rc = idem__redis_send_command(c->ac, on_setup, c, "AUTH %s",
                                      rs->addr.password);
    if (rc == REDIS_OK && rs->addr.db)
        rc = idem__redis_send_command(c->ac, on_setup, c, "SELECT %d",
                                      rs->addr.db);
    for (i = 0; rc == REDIS_OK && i < NSCRIPTS; i++)
        rc = idem__redis_send_command(c->ac, on_setup, c, "SCRIPT LOAD %s",
                                      scripts[i]);
    if (rc == REDIS_OK)
        rc = idem__redis_send_command(c->ac, on_policy, c,
                                      "CONFIG GET maxmemory-policy");
    return rc == REDIS_OK ? 0 : -1;
}

static void conn_start(struct rconn *c)
{
    struct redis_store *rs = c->rs;
    redisAsyncContext *ac =
        rs->addr.path ? redisAsyncConnectUnix(rs->addr.path)
                      : redisAsyncConnect(rs->addr.host, rs->addr.port);

    if (!ac || ac->err) {
        if (!c->quiet)
            say(rs, true, "redis: cannot connect: %s",
                ac ? ac->errstr : "no memory");
        c->quiet = true;
        if (ac)
            redisAsyncFree(ac);
        backoff(c);
        return;
    }
    ac->data = c;
    if (idem__redis_event_attach(ac, &c->loop, &rs->env) != REDIS_OK) {
        redisAsyncFree(ac);
        backoff(c);
        return;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    c->ac = ac;
    c->state = C_CONNECTING;
    set_timer(c, rs->connect_timeout_ms);
    if (send_setup(c) != 0) {
        drop(c);
        backoff(c);
    }
}

static bool loop_ok(const struct idem_redis_loop *l)
{
    return l && l->watch_new && l->timer_new && l->add && l->del && l->free &&
           l->run_once;
}

int idem_store_redis_attach(struct idem_store *s,
                            const struct idem_redis_loop *loop)
{
    struct redis_store *rs = (struct redis_store *)s;
    struct rconn *c;

    if (!is_redis(s) || !loop_ok(loop) || thread_conn(rs))
        return IDEM_EINVAL;
    if (!(c = idem__alloc(&rs->env, sizeof(*c))))
        return IDEM_ENOMEM;
    *c = (struct rconn){ .rs = rs,
                         .loop = *loop,
                         .backoff_ms = BACKOFF_FIRST_MS };
    if (!(c->timer = c->loop.timer_new(c->loop.loop, on_timer, c))) {
        idem__free(&rs->env, c);
        return IDEM_ENOMEM;
    }
    idem__list_init(&c->ops);
    idem__list_push_front(conns(), &c->link);
    idem__redis_timers_use(&c->loop);
    conn_start(c);
    return IDEM_OK;
}

void idem_store_redis_detach(struct idem_store *s)
{
    struct redis_store *rs = (struct redis_store *)s;
    struct rconn *c = is_redis(s) ? thread_conn(rs) : NULL;

    if (!c)
        return;
    /* let the commands in flight finish; the timer bounds the wait */
    while (oldest(c) && c->ac && c->state != C_DOWN)
        c->loop.run_once(c->loop.loop);
    drop(c);
    c->loop.free(c->loop.loop, c->timer);
    idem__list_remove(&c->link);
    idem__redis_timers_use(
        idem__list_empty(conns())
            ? NULL
            : &idem__list_entry(idem__list_first(conns()), struct rconn, link)
                   ->loop);
    idem__free(&rs->env, c);
}

/* -- The store -------------------------------------------------------- */

static void rs_tick(struct idem_store *s)
{
    (void)s; /* Redis expires keys itself */
}

static void rs_stats(struct idem_store *s, struct idem_store_stats *out)
{
    (void)s; /* records live in Redis: nothing of them is counted here */
    *out = (struct idem_store_stats){ .youngest_evicted_ms = UINT64_MAX };
}

int idem_store_redis_stats(struct idem_store *s,
                           struct idem_store_redis_stats *out)
{
    struct redis_store *rs = (struct redis_store *)s;

    if (!out)
        return IDEM_EINVAL;
    *out = (struct idem_store_redis_stats){ 0 };
    if (!is_redis(s))
        return IDEM_EINVAL;
    *out = (struct idem_store_redis_stats){
        .connections = atomic_load(&rs->connections),
        .connects = atomic_load(&rs->connects),
        .commands = atomic_load(&rs->commands),
        .errors = atomic_load(&rs->errors),
        .timeouts = atomic_load(&rs->timeouts),
        .pending = atomic_load(&rs->pending),
        .policy = atomic_load(&rs->policy),
    };
    return IDEM_OK;
}

static void rs_free(struct idem_store *s)
{
    struct redis_store *rs = (struct redis_store *)s;

    idem__redis_addr_free(&rs->env, &rs->addr);
    idem__free(&rs->env, rs->prefix);
    idem__free(&rs->env, rs);
}

static const struct idem__store_ops redis_ops = {
    .begin = rs_begin,
    .complete = rs_complete,
    .abort = rs_abort,
    .max_record = rs_max_record,
    .tick = rs_tick,
    .stats = rs_stats,
    .free = rs_free,
    .async = true,
};

static bool is_redis(const struct idem_store *s)
{
    return s && s->ops == &redis_ops;
}

/* -- Options ---------------------------------------------------------- */

static char *copy_string(const struct idem_env *env, const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = idem__alloc(env, n);

    return d ? memcpy(d, s, n) : NULL;
}

static bool prefix_ok(const char *p)
{
    size_t n = strlen(p), i;

    if (n == 0 || n > PREFIX_MAX)
        return false;
    for (i = 0; i < n; i++)
        if (p[i] <= ' ' || p[i] > '~' || p[i] == '{' || p[i] == '}')
            return false;
    return true;
}

static int hash_scripts(struct redis_store *rs)
{
    static const char hex[] = "0123456789abcdef";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen, i;
    int s;

    for (s = 0; s < NSCRIPTS; s++) {
        if (!EVP_Digest(scripts[s], strlen(scripts[s]), md, &mdlen, EVP_sha1(),
                        NULL) ||
            mdlen != 20)
            return IDEM_ENOMEM;
        for (i = 0; i < 20; i++) {
            rs->sha[s][2 * i] = hex[md[i] >> 4];
            rs->sha[s][2 * i + 1] = hex[md[i] & 15];
        }
        rs->sha[s][40] = '\0';
    }
    return IDEM_OK;
}

int idem_store_redis_new(const struct idem_store_redis_opts *opts,
                         struct idem_store **store_out)
{
    struct redis_store *rs;
    struct idem_env env;
    const char *prefix;
    int rc;

    if (!opts || !opts->url || !store_out || opts->connect_timeout_ms < 0 ||
        opts->command_timeout_ms < 0)
        return IDEM_EINVAL;
    prefix = opts->prefix ? opts->prefix : "idem";
    if (!prefix_ok(prefix))
        return IDEM_EINVAL;
    idem_env_resolve(opts->env, &env);
    if (!(rs = idem__alloc(&env, sizeof(*rs))))
        return IDEM_ENOMEM;
    *rs = (struct redis_store){
        .base.ops = &redis_ops,
        .env = env,
        .connect_timeout_ms = opts->connect_timeout_ms
                                  ? opts->connect_timeout_ms
                                  : DEFAULT_TIMEOUT_MS,
        .command_timeout_ms = opts->command_timeout_ms
                                  ? opts->command_timeout_ms
                                  : DEFAULT_TIMEOUT_MS,
        .log = opts->log,
        .log_ud = opts->log_ud,
    };
    rc = idem__redis_url_parse(&rs->env, opts->url, &rs->addr);
    if (rc == IDEM_OK)
        rc = (rs->prefix = copy_string(&rs->env, prefix)) ? IDEM_OK
                                                          : IDEM_ENOMEM;
    if (rc == IDEM_OK)
        rc = hash_scripts(rs);
    if (rc != IDEM_OK) {
        rs_free(&rs->base);
        return rc;
    }
    *store_out = &rs->base;
    return IDEM_OK;
}
