/* idemproxy on a Redis primary named by Sentinels of its own (1 primary,
 * 1 replica, 3 Sentinels), under keyed load through two instances: the
 * primary SIGKILLed mid-load, the Sentinels promote the replica, the
 * proxies follow +switch-master; the dead node comes back as a replica.
 * With and without --redis-replicas 1; the figures are printed, and with
 * it no key may run twice. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cmocka.h>

#include "test_cluster_env.h"

#define SENTINELS 3
#define MASTER "idem-primary"

static struct test_redis data[2], sent[SENTINELS];
static char dirs[2 + SENTINELS][96], confs[SENTINELS][128];
static char replicaof[2][8];
static const char *replica_args[2][6];
static const char *const primary_args[] = { "--repl-diskless-sync-delay", "0",
                                            NULL };

/* Start data[i] as a replica of data[of]. */
static void start_replica(int i, int of)
{
    snprintf(replicaof[i], sizeof(replicaof[i]), "%u", data[of].port);
    replica_args[i][0] = "--replicaof";
    replica_args[i][1] = "127.0.0.1";
    replica_args[i][2] = replicaof[i];
    replica_args[i][3] = "--repl-diskless-sync-delay";
    replica_args[i][4] = "0";
    replica_args[i][5] = NULL;
    data[i].extra = replica_args[i];
    assert_int_equal(data[i].port ? test_redis_start_on(&data[i])
                                  : test_redis_start(&data[i]),
                     0);
}

static bool is_synced_replica(void *arg)
{
    const struct test_redis *r = arg;

    return cl_info_has(r, "replication", "role:slave") &&
           cl_info_has(r, "replication", "master_link_status:up");
}

/* The value of field name in a flat [name, value, ...] reply, or -1. */
static long field(const redisReply *rep, const char *name)
{
    size_t i;

    for (i = 0; rep && rep->type == REDIS_REPLY_ARRAY && i + 1 < rep->elements;
         i += 2)
        if (strcmp(rep->element[i]->str, name) == 0)
            return strtol(rep->element[i + 1]->str, NULL, 10);
    return -1;
}

/* Whether every Sentinel knows the replica and the two others. */
static bool sentinels_ready(void *arg)
{
    redisReply *rep;
    bool ok = true;
    int i;

    (void)arg;
    for (i = 0; i < SENTINELS && ok; i++) {
        rep = cl_cmd(&sent[i], "SENTINEL MASTER %s", MASTER);
        ok = field(rep, "num-slaves") == 1 &&
             field(rep, "num-other-sentinels") == SENTINELS - 1;
        if (rep)
            freeReplyObject(rep);
    }
    return ok;
}

static void start_sentinel(int i)
{
    FILE *f;

    snprintf(confs[i], sizeof(confs[i]), "%s/sentinel%d.conf", h_tmpdir(), i);
    f = fopen(confs[i], "w");
    assert_non_null(f);
    fprintf(f,
            "sentinel monitor %s 127.0.0.1 %u 2\n"
            "sentinel down-after-milliseconds %s 1000\n"
            "sentinel failover-timeout %s 5000\n",
            MASTER, data[0].port, MASTER, MASTER);
    fclose(f);
    sent[i] = (struct test_redis){
        .dir = cl_subdir(dirs[2 + i], sizeof(dirs[2 + i]), "sentinel", i),
        .conf = confs[i],
        .sentinel = true,
    };
    assert_int_equal(test_redis_start(&sent[i]), 0);
}

static void sentinels_start(void)
{
    int i;

    data[0] = (struct test_redis){ .dir = cl_subdir(dirs[0], sizeof(dirs[0]),
                                                    "data", 0),
                                   .extra = primary_args };
    assert_int_equal(test_redis_start(&data[0]), 0);
    data[1] = (struct test_redis){ .dir = cl_subdir(dirs[1], sizeof(dirs[1]),
                                                    "data", 1) };
    start_replica(1, 0);
    assert_true(cl_until(is_synced_replica, &data[1], 10000));
    for (i = 0; i < SENTINELS; i++)
        start_sentinel(i);
    assert_true(cl_until(sentinels_ready, NULL, 20000));
}

/* Whether the Sentinels name data[1] as the primary now. */
static bool switched(void *arg)
{
    redisReply *rep =
        cl_cmd(&sent[0], "SENTINEL GET-MASTER-ADDR-BY-NAME %s", MASTER);
    bool ok = rep && rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 &&
              strtol(rep->element[1]->str, NULL, 10) == data[1].port &&
              cl_info_has(&data[1], "replication", "role:master");

    (void)arg;
    if (rep)
        freeReplyObject(rep);
    return ok;
}

static int setup(void **state)
{
    memset(data, 0, sizeof(data));
    memset(sent, 0, sizeof(sent));
    return h_setup(state);
}

static int teardown(void **state)
{
    int i;

    for (i = 0; i < SENTINELS; i++)
        test_redis_stop(&sent[i]);
    test_redis_stop(&data[0]);
    test_redis_stop(&data[1]);
    cl_upstream_stop();
    return h_teardown(state);
}

static struct cl_figures failover_run(int replicas)
{
    const char *const with[] = { "--redis-replicas", "1", NULL };
    struct h_proc *px[2];
    char store[160];
    uint64_t kill_ms;

    sentinels_start();
    cl_upstream_start();
    snprintf(store, sizeof(store),
             "redis-sentinel://127.0.0.1:%u,127.0.0.1:%u,127.0.0.1:%u/%s",
             sent[0].port, sent[1].port, sent[2].port, MASTER);
    px[0] = cl_proxy(store, replicas ? with : NULL);
    px[1] = cl_proxy(store, replicas ? with : NULL);
    cl_load_start(px[0]->http_port, px[1]->http_port);
    test_redis_sleep_ms(2000);
    kill_ms = cl_now_ms();
    test_redis_kill(&data[0]);
    assert_true(cl_until(switched, NULL, 20000));
    printf("sentinel: failed over in %llu ms\n",
           (unsigned long long)(cl_now_ms() - kill_ms));
    start_replica(0, 1); /* the dead primary, back as a replica */
    assert_true(cl_until(is_synced_replica, &data[0], 20000));
    printf("sentinel: the dead primary is a synced replica after %llu ms\n",
           (unsigned long long)(cl_now_ms() - kill_ms));
    test_redis_sleep_ms(1500);
    cl_load_stop();
    cl_retry_all();
    return cl_figures(kill_ms);
}

static void test_sentinel_failover_without_wait(void **state)
{
    struct cl_figures f;

    (void)state;
    f = failover_run(0);
    cl_print("sentinel.failover", 0, &f);
    cl_assert_sane(&f); /* doubles are possible here: measured, not asserted */
}

static void test_sentinel_failover_with_wait(void **state)
{
    struct cl_figures f;

    (void)state;
    f = failover_run(1);
    cl_print("sentinel.failover", 1, &f);
    cl_assert_sane(&f);
    assert_int_equal(f.doubles, 0);
}

/* POST /k/<k> with key to px: the status, or -1. */
static int post_key(const struct h_proc *px, int k, const char *key)
{
    char target[32];
    struct h_req q = {
        .method = "POST", .target = target, .key = key, .body = "{}"
    };
    struct h_resp r;
    int status;

    snprintf(target, sizeof(target), "/k/%d", k);
    if (h_exchange(px->http_port, &q, &r) != 0)
        return -1;
    status = r.status;
    h_resp_free(&r);
    return status;
}

/* --redis-replicas 1 with the replica stopped: a begin's WAIT times out,
 * the request gets 503 and never reaches the upstream, and its marker is
 * taken back, so the retry once the replica is back runs (once). */
static void test_stalled_replica_fails_the_begin(void **state)
{
    const char *const with[] = { "--redis-replicas", "1", NULL };
    struct h_proc *px;
    char store[64];
    int i, status = 0;

    (void)state;
    data[0] = (struct test_redis){ .dir = cl_subdir(dirs[0], sizeof(dirs[0]),
                                                    "data", 0),
                                   .extra = primary_args };
    assert_int_equal(test_redis_start(&data[0]), 0);
    data[1] = (struct test_redis){ .dir = cl_subdir(dirs[1], sizeof(dirs[1]),
                                                    "data", 1) };
    start_replica(1, 0);
    assert_true(cl_until(is_synced_replica, &data[1], 10000));
    cl_upstream_start();
    snprintf(store, sizeof(store), "redis://127.0.0.1:%u", data[0].port);
    px = cl_proxy(store, with);
    for (i = 0; i < 50 && status != 200; i++) { /* until connected */
        status = post_key(px, 1, "w-1");
        if (status != 200)
            test_redis_sleep_ms(50);
    }
    assert_int_equal(status, 200);
    assert_int_equal(atomic_load(&cl_up.count[1]), 1);
    test_redis_sleep_ms(300); /* its complete, and that WAIT, are done */
    kill(data[1].pid, SIGSTOP);
    assert_int_equal(post_key(px, 2, "w-2"), 503);
    assert_int_equal(atomic_load(&cl_up.count[2]), 0);
    kill(data[1].pid, SIGCONT);
    assert_true(cl_until(is_synced_replica, &data[1], 10000));
    for (i = 0, status = 0; i < 50 && status != 200; i++) {
        status = post_key(px, 2, "w-2");
        if (status != 200 && status != 503) {
            char err[4096];

            h_stderr(px, err, sizeof(err));
            fail_msg("status %d; idemproxy said:\n%s", status, err);
        }
        if (status != 200)
            test_redis_sleep_ms(50);
    }
    assert_int_equal(status, 200);
    assert_int_equal(atomic_load(&cl_up.count[2]), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_sentinel_failover_without_wait,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_sentinel_failover_with_wait, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_stalled_replica_fails_the_begin,
                                        setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
