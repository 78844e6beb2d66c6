/* What the Cluster and Sentinel failover tests share: an upstream that
 * counts executions per key (in this process), keyed load through two
 * idemproxy instances with retries as a client makes them, a second pass
 * that retries every key after the failover (a client whose answer was
 * lost), the figures, and small Redis administration helpers. Every
 * server is the test's own, on free loopback ports, under h_tmpdir(),
 * stopped by pid in the teardown. Header-only: each test file is one
 * program. */
#ifndef IDEM_TEST_CLUSTER_ENV_H
#define IDEM_TEST_CLUSTER_ENV_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "harness.h"
#include "redis_server.h"

#define CL_KEYS 8192    /* keys a run may use */
#define CL_CLIENTS 6    /* client threads */
#define CL_DELAY_MS 15  /* the upstream's work per request */
#define CL_RETRY_MS 50  /* a client's pause before a retry */
#define CL_KEY_MS 12000 /* a key's retries stop after this */
#define REDIS_CLI "/usr/bin/redis-cli"

static uint64_t cl_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* -- The upstream: executions per key ----------------------------------- */

struct cl_upstream {
    int fd;
    uint16_t port;
    pthread_t th;
    atomic_int count[CL_KEYS]; /* executions of POST /k/<i> */
};

static struct cl_upstream cl_up;

/* The length of the request's body, from its head h[0..n). */
static long cl_content_length(const char *h, size_t n)
{
    const char *p;

    for (p = h; p + 16 < h + n; p++)
        if (strncasecmp(p, "\r\nContent-Length:", 17) == 0)
            return strtol(p + 17, NULL, 10);
    return 0;
}

/* Read into buf until a whole request is there; its length, or 0 at EOF. */
static size_t cl_read_request(int fd, char *buf, size_t cap, size_t *have)
{
    char *end;
    size_t head;
    ssize_t n;
    long body;

    while (!(end = memmem(buf, *have, "\r\n\r\n", 4))) {
        if (*have == cap || (n = read(fd, buf + *have, cap - *have)) <= 0)
            return 0;
        *have += (size_t)n;
    }
    head = (size_t)(end + 4 - buf);
    body = cl_content_length(buf, head);
    if (body < 0 || head + (size_t)body > cap)
        return 0;
    while (*have < head + (size_t)body) {
        if ((n = read(fd, buf + *have, cap - *have)) <= 0)
            return 0;
        *have += (size_t)n;
    }
    return head + (size_t)body;
}

static void *cl_upstream_conn(void *arg)
{
    static const char ok[] = "HTTP/1.1 200 OK\r\nContent-Type: "
                             "application/json\r\nContent-Length: 2\r\n\r\n{}";
    int fd = (int)(intptr_t)arg, k;
    char buf[16384];
    size_t have = 0, len;

    while ((len = cl_read_request(fd, buf, sizeof(buf), &have))) {
        if (sscanf(buf, "POST /k/%d", &k) == 1 && k >= 0 && k < CL_KEYS)
            atomic_fetch_add(&cl_up.count[k], 1);
        test_redis_sleep_ms(CL_DELAY_MS);
        if (write(fd, ok, sizeof(ok) - 1) != (ssize_t)sizeof(ok) - 1)
            break;
        memmove(buf, buf + len, have - len);
        have -= len;
    }
    close(fd);
    return NULL;
}

static void *cl_upstream_accept(void *arg)
{
    pthread_t th;
    int fd;

    (void)arg;
    while ((fd = accept(cl_up.fd, NULL, NULL)) >= 0) {
        if (pthread_create(&th, NULL, cl_upstream_conn, (void *)(intptr_t)fd))
            close(fd);
        else
            pthread_detach(th);
    }
    return NULL;
}

/* Start the counting upstream on a free loopback port. */
static void cl_upstream_start(void)
{
    struct sockaddr_in sa = { .sin_family = AF_INET };
    socklen_t len = sizeof(sa);
    int i;

    for (i = 0; i < CL_KEYS; i++)
        atomic_store(&cl_up.count[i], 0);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cl_up.fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(cl_up.fd >= 0);
    assert_int_equal(bind(cl_up.fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(cl_up.fd, 128), 0);
    assert_int_equal(getsockname(cl_up.fd, (struct sockaddr *)&sa, &len), 0);
    cl_up.port = ntohs(sa.sin_port);
    assert_int_equal(pthread_create(&cl_up.th, NULL, cl_upstream_accept, NULL),
                     0);
}

/* Stop accepting (the connections end with the proxies). */
static void cl_upstream_stop(void)
{
    if (cl_up.fd <= 0)
        return;
    shutdown(cl_up.fd, SHUT_RDWR);
    pthread_join(cl_up.th, NULL);
    close(cl_up.fd);
    cl_up.fd = 0;
}

/* -- Keyed load ----------------------------------------------------------- */

enum cl_key_state { KEY_NONE, KEY_SENT, KEY_DONE, KEY_UNKNOWN };

struct cl_load {
    uint16_t ports[2];
    char nonce[24];
    atomic_int next; /* keys handed out */
    atomic_bool stop;
    bool retry_pass;  /* every key again, to its answer */
    int retry_pass_n; /* the keys the first pass handed out */
    atomic_int state[CL_KEYS];
    atomic_long answered, failed, conflicts, unknown, replays_new;
    atomic_ullong first_fail_ms, last_fail_ms;
    pthread_t th[CL_CLIENTS];
};

static struct cl_load cl_load;

/* POST /k/<k> with its key to proxy i: the status, or -1 (no answer). */
static int cl_post(int k, int i, bool *replayed)
{
    char target[32], key[64];
    struct h_req q = {
        .method = "POST", .target = target, .key = key, .body = "{\"n\":1}"
    };
    struct h_resp r;
    int status;

    snprintf(target, sizeof(target), "/k/%d", k);
    snprintf(key, sizeof(key), "cl-%s-%d", cl_load.nonce, k);
    if (h_exchange(cl_load.ports[i & 1], &q, &r) != 0)
        return -1;
    status = r.status;
    *replayed = h_header(&r, "Idempotent-Replayed") != NULL;
    h_resp_free(&r);
    return status;
}

static void cl_failed_now(void)
{
    unsigned long long now = cl_now_ms(), zero = 0;

    atomic_fetch_add(&cl_load.failed, 1);
    atomic_compare_exchange_strong(&cl_load.first_fail_ms, &zero, now);
    atomic_store(&cl_load.last_fail_ms, now);
}

/* Send key k until it has an answer (200, or 502: outcome unknown), its
 * time runs out, or the load stops. */
static void cl_drive_key(int k)
{
    uint64_t end = cl_now_ms() + CL_KEY_MS;
    bool replayed = false;
    int attempt, status;

    for (attempt = 0; cl_now_ms() < end; attempt++) {
        if (!cl_load.retry_pass && atomic_load(&cl_load.stop))
            return;
        status = cl_post(k, k + attempt, &replayed);
        if (status == 200 || status == 502) {
            atomic_store(&cl_load.state[k],
                         status == 200 ? KEY_DONE : KEY_UNKNOWN);
            atomic_fetch_add(
                status == 200 ? &cl_load.answered : &cl_load.unknown, 1);
            if (cl_load.retry_pass && status == 200 && !replayed)
                atomic_fetch_add(&cl_load.replays_new, 1);
            return;
        }
        if (status == 409)
            atomic_fetch_add(&cl_load.conflicts, 1);
        else if (!cl_load.retry_pass)
            cl_failed_now();
        test_redis_sleep_ms(CL_RETRY_MS);
    }
}

static void *cl_client(void *arg)
{
    int k;

    (void)arg;
    while (!atomic_load(&cl_load.stop) || cl_load.retry_pass) {
        k = atomic_fetch_add(&cl_load.next, 1);
        if (k >= CL_KEYS || (cl_load.retry_pass && k >= cl_load.retry_pass_n))
            break;
        if (!cl_load.retry_pass)
            atomic_store(&cl_load.state[k], KEY_SENT);
        cl_drive_key(k);
    }
    return NULL;
}

/* Start keyed load through the proxies on ports a and b. */
static void cl_load_start(uint16_t a, uint16_t b)
{
    int i;

    memset(&cl_load, 0, sizeof(cl_load));
    cl_load.ports[0] = a;
    cl_load.ports[1] = b;
    snprintf(cl_load.nonce, sizeof(cl_load.nonce), "%lx%llx",
             (unsigned long)getpid(), (unsigned long long)cl_now_ms());
    for (i = 0; i < CL_CLIENTS; i++)
        assert_int_equal(pthread_create(&cl_load.th[i], NULL, cl_client, NULL),
                         0);
}

static void cl_load_join(void)
{
    int i;

    for (i = 0; i < CL_CLIENTS; i++)
        pthread_join(cl_load.th[i], NULL);
}

/* Stop the load; the keys still unanswered stay KEY_SENT. */
static void cl_load_stop(void)
{
    atomic_store(&cl_load.stop, true);
    cl_load_join();
}

/* Send every key of the load again, as a client whose answer was lost
 * does, each to its answer: a replay, or 502 where the outcome is
 * unknown. A key whose record a failover lost runs again here. */
static void cl_retry_all(void)
{
    int i, n = atomic_load(&cl_load.next);

    cl_load.retry_pass_n = n < CL_KEYS ? n : CL_KEYS;
    cl_load.retry_pass = true;
    atomic_store(&cl_load.next, 0);
    for (i = 0; i < CL_CLIENTS; i++)
        assert_int_equal(pthread_create(&cl_load.th[i], NULL, cl_client, NULL),
                         0);
    cl_load_join();
}

/* The figures of a run. */
struct cl_figures {
    int keys;        /* keys sent */
    long executions; /* by the upstream, all keys */
    int doubles;     /* keys executed more than once */
    int unrun;       /* keys answered 200 and never executed (must be 0) */
    long failed;     /* answers other than 200/409/502, or none, first pass */
    long window_ms;  /* from the kill to the last failed answer */
    long unknown;    /* keys whose outcome was unknown (502) */
    int unanswered;  /* keys without an answer after the retry pass */
};

static struct cl_figures cl_figures(uint64_t kill_ms)
{
    struct cl_figures f = { .keys = cl_load.retry_pass_n };
    unsigned long long last = atomic_load(&cl_load.last_fail_ms);
    int k, n;

    for (k = 0; k < f.keys; k++) {
        n = atomic_load(&cl_up.count[k]);
        f.executions += n;
        f.doubles += n > 1;
        f.unrun += n == 0 && atomic_load(&cl_load.state[k]) == KEY_DONE;
        f.unanswered += atomic_load(&cl_load.state[k]) == KEY_SENT;
    }
    f.failed = atomic_load(&cl_load.failed);
    f.window_ms = last > kill_ms ? (long)(last - kill_ms) : 0;
    f.unknown = atomic_load(&cl_load.unknown);
    return f;
}

static void cl_print(const char *name, int replicas, const struct cl_figures *f)
{
    printf("%s replicas=%d keys=%d executions=%ld doubles=%d failed=%ld "
           "window_ms=%ld unknown=%ld unanswered=%d\n",
           name, replicas, f->keys, f->executions, f->doubles, f->failed,
           f->window_ms, f->unknown, f->unanswered);
    fflush(stdout);
}

/* What every run must show, replicas or not: each key answered, none
 * answered 200 without running. */
static void cl_assert_sane(const struct cl_figures *f)
{
    assert_true(f->keys > 50);
    assert_int_equal(f->unanswered, 0);
    assert_int_equal(f->unrun, 0);
    assert_true(f->executions >= f->keys - f->unknown);
}

/* -- Redis administration -------------------------------------------------- */

/* A command's reply from r (freeReplyObject it), or NULL. */
static redisReply *cl_cmd(const struct test_redis *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static redisReply *cl_cmd(const struct test_redis *r, const char *fmt, ...)
{
    redisContext *c = test_redis_client(r);
    redisReply *rep = NULL;
    va_list ap;

    if (!c)
        return NULL;
    va_start(ap, fmt);
    rep = redisvCommand(c, fmt, ap);
    va_end(ap);
    redisFree(c);
    return rep;
}

/* Whether r's INFO (section) holds the line want. */
static bool cl_info_has(const struct test_redis *r, const char *section,
                        const char *want)
{
    redisReply *rep = cl_cmd(r, "INFO %s", section);
    bool has = rep && rep->type == REDIS_REPLY_STRING &&
               strstr(rep->str, want) != NULL;

    if (rep)
        freeReplyObject(rep);
    return has;
}

/* Poll cond(arg) every 50 ms for up to ms; whether it held. */
static bool cl_until(bool (*cond)(void *arg), void *arg, long ms)
{
    uint64_t end = cl_now_ms() + (uint64_t)ms;

    while (!cond(arg)) {
        if (cl_now_ms() > end)
            return false;
        test_redis_sleep_ms(50);
    }
    return true;
}

/* A directory of its own under h_tmpdir(), into buf. */
static const char *cl_subdir(char *buf, size_t cap, const char *name, int i)
{
    snprintf(buf, cap, "%s/%s%d", h_tmpdir(), name, i);
    assert_int_equal(mkdir(buf, 0700), 0);
    return buf;
}

/* idemproxy in front of the counting upstream on store, with extra flags. */
static struct h_proc *cl_proxy(const char *store, const char *const *extra)
{
    const char *argv[32] = {
        IDEMPROXY_PATH, "--listen",  "127.0.0.1:0", "--admin-listen",
        "127.0.0.1:0",  "--workers", "2",           "--redis-timeout",
        "1s",           "--lease",   "3s",          "--log-level",
        "warn",         "--store",   store,         "--upstream",
    };
    char up[32];
    size_t n = 16;

    snprintf(up, sizeof(up), "127.0.0.1:%u", cl_up.port);
    argv[n++] = up;
    while (extra && *extra && n + 1 < 32)
        argv[n++] = *extra++;
    argv[n] = NULL;
    return h_start(IDEMPROXY_PATH, argv);
}

#endif
