/* The Redis store: one server, a Cluster, or a primary named by Sentinels.
 * Each attached thread has its own connections (conn.c), one per node it
 * talks to, on its own loop; commands on a connection pipeline. Every
 * operation is one Lua script on one key, sent by EVALSHA (EVAL when Redis
 * answers NOSCRIPT), so a read-check-write on a key is atomic and one
 * round trip; complete (and renewal, which writes the record with its
 * later lease) and abort check the owner's token in place before they
 * write (fencing). Where a command goes, and what its answer means, is
 * route.c; with replicas set, a write is answered after a WAIT. */
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "event.h"
#include "fingerprint.h"
#include "idem/redis.h"
#include "internal.h"
#include "list.h"
#include "record.h"
#include "rstore.h"
#include "slots.h"
#include "store_internal.h"
#include "url.h"

#define DEFAULT_TIMEOUT_MS 1000
#define PREFIX_MAX 256
#define REPLICAS_MAX 16

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

static const char *const scripts[RS_NSCRIPTS] = {
    [RS_BEGIN] =
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
    [RS_COMPLETE] = OWNED "redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) "
                          "return 1",
    [RS_ABORT] = OWNED "redis.call('DEL', KEYS[1]) return 1",
};

/* -- Types ------------------------------------------------------------ */

typedef struct idem__rs_store redis_store;

/* Whether s is a Redis store (attach and detach apply to no other). */
static bool is_redis(const struct idem_store *s);

/* This thread's sides of stores (struct idem__rs_thread). */
static _Thread_local struct idem__list thread_list = { NULL, NULL };

/* thread_list, set up on the thread's first use. */
static struct idem__list *threads(void)
{
    if (!thread_list.next)
        idem__list_init(&thread_list);
    return &thread_list;
}

void idem__rs_say(redis_store *rs, bool trouble, const char *fmt, ...)
{
    char msg[320];
    va_list ap;

    if (!rs->log)
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    rs->log(rs->log_ud, trouble, msg);
}

static struct idem__rs_thread *thread_of(redis_store *rs)
{
    struct idem__list *n, *tmp;
    struct idem__rs_thread *t;

    idem__list_foreach_safe(n, tmp, threads())
    {
        t = idem__list_entry(n, struct idem__rs_thread, link);
        if (t->rs == rs)
            return t;
    }
    return NULL;
}

uint64_t idem__rs_now(const redis_store *rs)
{
    return rs->env.now_ms(rs->env.ud);
}

static void op_free(struct idem__rs_op *op)
{
    redis_store *rs = op->t->rs;

    if (op->cmd)
        redisFreeCommand(op->cmd);
    atomic_fetch_sub(&rs->pending, 1);
    idem__free(&rs->env, op);
}

void idem__rs_finish(struct idem__rs_op *op, int rc, struct idem__blob *blob)
{
    if (rc == IDEM_EIO || rc == IDEM_ENOMEM)
        atomic_fetch_add(&op->t->rs->errors, 1);
    op->done(op->ud, rc, rc == IDEM_EEXIST ? blob : NULL);
    op_free(op);
}

/* -- Answers ---------------------------------------------------------- */

/* A copy of a record Redis sent, for the engine to keep. */
struct rblob {
    redis_store *rs;
    char data[];
};

static void blob_free(void *ctx)
{
    struct rblob *b = ctx;

    idem__free(&b->rs->env, b);
}

int idem__rs_judge(struct idem__rs_op *op, const redisReply *reply,
                   struct idem__blob *blob)
{
    if (!reply)
        return IDEM_EIO; /* the connection went down */
    if (reply->type == REDIS_REPLY_INTEGER && reply->integer == 1)
        return IDEM_OK;
    if (reply->type == REDIS_REPLY_INTEGER && reply->integer == 0 &&
        op->script != RS_BEGIN)
        return IDEM_ESTALE;
    if (reply->type == REDIS_REPLY_STRING && op->script == RS_BEGIN) {
        redis_store *rs = op->t->rs;
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

/* -- Sending ---------------------------------------------------------- */

/* "<prefix>:{<hex scope>:<key>}" into buf (cap bytes). Its length, or 0. */
static size_t redis_key(const redis_store *rs, const uint8_t *skey, size_t klen,
                        char *buf, size_t cap)
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

static void undone(void *ud, int rc, struct idem__blob *existing)
{
    (void)ud;
    (void)rc;
    (void)existing;
}

/* A command for script on key (klen bytes) with args, formatted, with its
 * deadline: sent by the caller. NULL if out of memory. */
static struct idem__rs_op *op_new(struct idem__rs_thread *t,
                                  enum idem__rs_script script, const char *key,
                                  size_t klen, int nargs, const char **args,
                                  const size_t *lens)
{
    redis_store *rs = t->rs;
    const char *argv[10] = { "EVALSHA", rs->sha[script], "1", key };
    size_t argl[10] = { 7, 40, 1, klen };
    struct idem__rs_op *op;
    int i;

    for (i = 0; i < nargs; i++) {
        argv[4 + i] = args[i];
        argl[4 + i] = lens[i];
    }
    if (!(op = idem__alloc(&rs->env, sizeof(*op))))
        return NULL;
    *op = (struct idem__rs_op){ .t = t,
                                .script = script,
                                .slot = idem__redis_keyslot(key, klen) };
    idem__list_init(&op->link);
    idem__list_init(&op->group);
    op->cmdlen = redisFormatCommandArgv(&op->cmd, 4 + nargs, argv, argl);
    if (op->cmdlen < 0) {
        idem__free(&rs->env, op);
        return NULL;
    }
    atomic_fetch_add(&rs->pending, 1);
    op->deadline_ms = idem__rs_now(rs) + (uint64_t)rs->command_timeout_ms;
    return op;
}

void idem__rs_undo(struct idem__rs_op *begin)
{
    const char *key, *args[1] = { (const char *)begin->token };
    size_t klen = idem__rs_cmd_key(begin->cmd, begin->cmdlen, &key);
    size_t lens[1] = { IDEM__TOKEN_LEN };
    struct idem__rs_op *op =
        klen ? op_new(begin->t, RS_ABORT, key, klen, 1, args, lens) : NULL;

    if (!op)
        return; /* the marker stays until its lease ends */
    op->done = undone;
    op->internal = true; /* parked while there is no connection */
    op->deadline_ms += (uint64_t)begin->t->rs->command_timeout_ms * 2;
    if (idem__rs_dispatch(op) != 0)
        op_free(op);
}

/* Run script on key with args: IDEM_EINPROGRESS (done comes later) or a
 * failure now (the thread has no connection up, out of memory). */
static int run(struct idem_store *s, enum idem__rs_script script,
               const void *skey, size_t klen, int nargs, const char **args,
               const size_t *lens, const uint8_t *token, idem__store_done done,
               void *ud)
{
    redis_store *rs = (redis_store *)s;
    struct idem__rs_thread *t = thread_of(rs);
    char key[PREFIX_MAX + 2 + 2 * IDEM__SCOPE_LEN + 2 + IDEM_KEY_MAX_CAP];
    size_t kl;
    struct idem__rs_op *op;

    if (!t || !done ||
        (rs->addr.mode == IDEM__REDIS_SINGLE &&
         (!t->main->ac || t->main->state == RC_DOWN))) {
        if (t)
            idem__rs_conn_hurry(t->main);
        atomic_fetch_add(&rs->errors, 1);
        return IDEM_EIO;
    }
    if (!(kl = redis_key(rs, skey, klen, key, sizeof(key))))
        return IDEM_EINVAL;
    if (!(op = op_new(t, script, key, kl, nargs, args, lens)))
        return IDEM_ENOMEM;
    op->done = done;
    op->ud = ud;
    op->needs_wait = rs->replicas > 0 && script != RS_ABORT;
    if (token)
        memcpy(op->token, token, IDEM__TOKEN_LEN);
    if (idem__rs_dispatch(op) != 0) {
        op_free(op);
        atomic_fetch_add(&rs->errors, 1);
        return IDEM_EIO;
    }
    atomic_fetch_add(&rs->commands, 1);
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
    if (rlen < IDEM__RECORD_TOKEN_OFF + IDEM__TOKEN_LEN)
        return IDEM_EINVAL;
    lens[1] = (size_t)snprintf(ttl, sizeof(ttl), "%lld", (long long)a->ttl_ms);
    lens[2] = (size_t)snprintf(wall, sizeof(wall), "%llu",
                               (unsigned long long)a->wall_ms);
    lens[4] = (size_t)snprintf(uttl, sizeof(uttl), "%lld",
                               (long long)a->unknown_ttl_ms);
    return run(s, RS_BEGIN, key, klen, 5, args, lens,
               (const uint8_t *)rec + IDEM__RECORD_TOKEN_OFF, done, ud);
}

static int rs_complete(struct idem_store *s, const void *key, size_t klen,
                       const uint8_t *token, const void *rec, size_t rlen,
                       int64_t ttl_ms, idem__store_done done, void *ud)
{
    char ms[24];
    const char *args[3] = { (const char *)token, rec, ms };
    size_t lens[3] = { IDEM__TOKEN_LEN, rlen, 0 };

    lens[2] = (size_t)snprintf(ms, sizeof(ms), "%lld", (long long)ttl_ms);
    return run(s, RS_COMPLETE, key, klen, 3, args, lens, NULL, done, ud);
}

static int rs_abort(struct idem_store *s, const void *key, size_t klen,
                    const uint8_t *token, idem__store_done done, void *ud)
{
    const char *args[1] = { (const char *)token };
    size_t lens[1] = { IDEM__TOKEN_LEN };

    return run(s, RS_ABORT, key, klen, 1, args, lens, NULL, done, ud);
}

/* Redis keeps strings of up to 512 MiB (proto-max-bulk-len). */
static size_t rs_max_record(struct idem_store *s)
{
    (void)s;
    return (size_t)512 << 20;
}

/* -- Attaching -------------------------------------------------------- */

static bool loop_ok(const struct idem_redis_loop *l)
{
    return l && l->watch_new && l->timer_new && l->add && l->del && l->free &&
           l->run_once;
}

static void thread_free(struct idem__rs_thread *t)
{
    redis_store *rs = t->rs;
    struct idem__list *n;

    if (t->sentinel)
        idem__rs_conn_free(t->sentinel);
    while ((n = idem__list_first(&t->nodes)))
        idem__rs_conn_free(idem__list_entry(n, struct idem__rs_conn, link));
    while ((n = idem__list_first(&t->parked))) {
        idem__list_remove(n);
        idem__rs_finish(idem__list_entry(n, struct idem__rs_op, link), IDEM_EIO,
                        NULL);
    }
    if (t->tick)
        t->loop.free(t->loop.loop, t->tick);
    idem__free(&rs->env, t->slots);
    idem__free(&rs->env, t);
}

/* Make t's first connections: the server, the Cluster's seeds, or a
 * Sentinel. IDEM_OK or IDEM_ENOMEM. */
static int thread_start(struct idem__rs_thread *t)
{
    redis_store *rs = t->rs;
    size_t i, n = IDEM__REDIS_SLOTS * sizeof(*t->slots);

    switch (rs->addr.mode) {
    case IDEM__REDIS_SINGLE:
        t->main = idem__rs_conn_new(t, RK_DATA, rs->addr.host, rs->addr.port);
        return t->main ? IDEM_OK : IDEM_ENOMEM;
    case IDEM__REDIS_CLUSTER:
        if (!(t->slots = idem__alloc(&rs->env, n)))
            return IDEM_ENOMEM;
        memset(t->slots, 0, n);
        for (i = 0; i < rs->addr.nseeds; i++)
            if (!idem__rs_node(t, rs->addr.seeds[i].host,
                               rs->addr.seeds[i].port))
                return IDEM_ENOMEM;
        idem__rs_want_refresh(t);
        return IDEM_OK;
    case IDEM__REDIS_SENTINEL:
        idem__rs_sentinel_ask(t);
        return t->sentinel ? IDEM_OK : IDEM_ENOMEM;
    }
    return IDEM_EINVAL;
}

int idem_store_redis_attach(struct idem_store *s,
                            const struct idem_redis_loop *loop)
{
    redis_store *rs = (redis_store *)s;
    struct idem__rs_thread *t;
    int rc;

    if (!is_redis(s) || !loop_ok(loop) || thread_of(rs))
        return IDEM_EINVAL;
    if (!(t = idem__alloc(&rs->env, sizeof(*t))))
        return IDEM_ENOMEM;
    *t = (struct idem__rs_thread){ .rs = rs, .loop = *loop };
    idem__list_init(&t->nodes);
    idem__list_init(&t->parked);
    idem__list_init(&t->link);
    if (!(t->tick = t->loop.timer_new(t->loop.loop, idem__rs_on_tick, t))) {
        thread_free(t);
        return IDEM_ENOMEM;
    }
    if ((rc = thread_start(t)) != IDEM_OK) {
        thread_free(t);
        return rc;
    }
    idem__list_push_front(threads(), &t->link);
    idem__redis_timers_use(&t->loop);
    return IDEM_OK;
}

void idem_store_redis_detach(struct idem_store *s)
{
    redis_store *rs = (redis_store *)s;
    struct idem__rs_thread *t = is_redis(s) ? thread_of(rs) : NULL;

    if (!t)
        return;
    /* let the commands in flight finish; their deadlines bound the wait */
    while (idem__rs_busy(t))
        t->loop.run_once(t->loop.loop);
    idem__list_remove(&t->link);
    thread_free(t);
    idem__redis_timers_use(idem__list_empty(threads())
                               ? NULL
                               : &idem__list_entry(idem__list_first(threads()),
                                                   struct idem__rs_thread, link)
                                      ->loop);
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
    redis_store *rs = (redis_store *)s;

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
        .redirects = atomic_load(&rs->redirects),
        .failovers = atomic_load(&rs->failovers),
        .wait_timeouts = atomic_load(&rs->wait_timeouts),
        .refreshes = atomic_load(&rs->refreshes),
    };
    return IDEM_OK;
}

int idem_store_redis_nodes(struct idem_store *s,
                           struct idem_store_redis_node *out, size_t cap,
                           size_t *n_out)
{
    redis_store *rs = (redis_store *)s;
    size_t i, n;

    if (!is_redis(s) || (!out && cap) || !n_out)
        return IDEM_EINVAL;
    pthread_mutex_lock(&rs->nodes_lock);
    n = rs->nnodes;
    for (i = 0; i < n && i < cap; i++) {
        memcpy(out[i].addr, rs->nodes[i].addr, sizeof(out[i].addr));
        out[i].connections = atomic_load(&rs->nodes[i].up);
    }
    pthread_mutex_unlock(&rs->nodes_lock);
    *n_out = n;
    return IDEM_OK;
}

static void rs_free(struct idem_store *s)
{
    redis_store *rs = (redis_store *)s;

    idem__redis_addr_free(&rs->env, &rs->addr);
    idem__free(&rs->env, rs->prefix);
    pthread_mutex_destroy(&rs->nodes_lock);
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

static int hash_scripts(redis_store *rs)
{
    static const char hex[] = "0123456789abcdef";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen, i;
    int s;

    for (s = 0; s < RS_NSCRIPTS; s++) {
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

static bool opts_ok(const struct idem_store_redis_opts *o)
{
    return o && o->url && o->connect_timeout_ms >= 0 &&
           o->command_timeout_ms >= 0 && o->replicas >= 0 &&
           o->replicas <= REPLICAS_MAX &&
           prefix_ok(o->prefix ? o->prefix : "idem");
}

static int64_t or_default(int64_t ms)
{
    return ms ? ms : DEFAULT_TIMEOUT_MS;
}

int idem_store_redis_new(const struct idem_store_redis_opts *opts,
                         struct idem_store **store_out)
{
    const char *prefix;
    redis_store *rs;
    struct idem_env env;
    int rc;

    if (!opts_ok(opts) || !store_out)
        return IDEM_EINVAL;
    prefix = opts->prefix ? opts->prefix : "idem";
    idem_env_resolve(opts->env, &env);
    if (!(rs = idem__alloc(&env, sizeof(*rs))))
        return IDEM_ENOMEM;
    *rs = (redis_store){
        .base.ops = &redis_ops,
        .env = env,
        .connect_timeout_ms = or_default(opts->connect_timeout_ms),
        .command_timeout_ms = or_default(opts->command_timeout_ms),
        .replicas = opts->replicas,
        .scripts = scripts,
        .log = opts->log,
        .log_ud = opts->log_ud,
    };
    pthread_mutex_init(&rs->nodes_lock, NULL);
    rc = idem__redis_url_parse(&rs->env, opts->url, &rs->addr);
    if (rc == IDEM_OK)
        rc =
            (rs->prefix = idem__redis_strndup(&rs->env, prefix, strlen(prefix)))
                ? IDEM_OK
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
