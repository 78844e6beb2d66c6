/* idemproxy on a Redis Cluster of its own (3 primaries, 3 replicas, made
 * by redis-cli --cluster create), under keyed load through two
 * instances: a primary SIGKILLed mid-load (its replica promoted, the dead
 * node restarted as a replica), with and without --redis-replicas 1; and
 * slots resharded during load (MOVED and ASK followed). Each run prints
 * its figures; with --redis-replicas 1 no key may run twice. */
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

#define NODES 6
#define RESHARD_SLOTS 2000

static struct test_redis nodes[NODES];
static char dirs[NODES][96];
static char bus_ports[NODES][8];
static const char *cluster_args[NODES][11];

/* Node i's cluster flags; its bus port is a free one of its own (the
 * default, port + 10000, may not exist). */
static const char *const *node_args(int i)
{
    const char *const args[] = { "--cluster-enabled",
                                 "yes",
                                 "--cluster-config-file",
                                 "nodes.conf",
                                 "--cluster-node-timeout",
                                 "1000",
                                 "--cluster-port",
                                 bus_ports[i],
                                 "--repl-diskless-sync-delay",
                                 "0",
                                 NULL };

    snprintf(bus_ports[i], sizeof(bus_ports[i]), "%u", test_free_port());
    memcpy(cluster_args[i], args, sizeof(args));
    return cluster_args[i];
}

static bool cluster_ok(void *arg)
{
    redisReply *rep;
    bool ok = true;
    int i;

    (void)arg;
    for (i = 0; i < NODES && ok; i++) {
        if (!nodes[i].pid)
            continue;
        rep = cl_cmd(&nodes[i], "CLUSTER INFO");
        ok = rep && rep->type == REDIS_REPLY_STRING &&
             strstr(rep->str, "cluster_state:ok") &&
             strstr(rep->str, "cluster_known_nodes:6");
        if (rep)
            freeReplyObject(rep);
        /* a replica that never synced cannot take over */
        ok = ok &&
             (cl_info_has(&nodes[i], "replication", "role:master") ||
              cl_info_has(&nodes[i], "replication", "master_link_status:up"));
    }
    return ok;
}

static void cluster_start(void)
{
    const char *argv[16] = { REDIS_CLI, "--cluster", "create" };
    char addr[NODES][32], err[4096];
    int i, n = 3;

    for (i = 0; i < NODES; i++) {
        nodes[i] =
            (struct test_redis){ .dir = cl_subdir(dirs[i], sizeof(dirs[i]),
                                                  "node", i),
                                 .extra = node_args(i) };
        assert_int_equal(test_redis_start(&nodes[i]), 0);
        snprintf(addr[i], sizeof(addr[i]), "127.0.0.1:%u", nodes[i].port);
        argv[n++] = addr[i];
    }
    argv[n++] = "--cluster-replicas";
    argv[n++] = "1";
    argv[n++] = "--cluster-yes";
    argv[n] = NULL;
    if (h_run(REDIS_CLI, argv, err, sizeof(err)) != 0)
        fail_msg("redis-cli --cluster create: %s", err);
    assert_true(cl_until(cluster_ok, NULL, 20000));
}

/* The index of a node whose role is r ("master", "slave"), from k on. */
static int node_with_role(const char *role, int k)
{
    redisReply *rep;
    int i, found = -1;

    for (i = k; i < NODES && found < 0; i++) {
        if (!nodes[i].pid || !(rep = cl_cmd(&nodes[i], "ROLE")))
            continue;
        if (rep->type == REDIS_REPLY_ARRAY && rep->elements > 0 &&
            strcmp(rep->element[0]->str, role) == 0)
            found = i;
        freeReplyObject(rep);
    }
    return found;
}

/* Whether a node still up serves no slots from port *arg and the cluster
 * is ok again. */
static bool failed_over(void *arg)
{
    int port = *(int *)arg, i, j;
    redisReply *rep;
    bool ok = false;

    for (i = 0; i < NODES && !nodes[i].pid; i++)
        ;
    if (i == NODES || !cluster_ok(NULL) ||
        !(rep = cl_cmd(&nodes[i], "CLUSTER SLOTS")))
        return false;
    ok = rep->type == REDIS_REPLY_ARRAY && rep->elements > 0;
    for (j = 0; ok && j < (int)rep->elements; j++)
        ok = rep->element[j]->element[2]->element[1]->integer != port;

    freeReplyObject(rep);
    return ok;
}

static bool is_synced_replica(void *arg)
{
    const struct test_redis *r = arg;

    return cl_info_has(r, "replication", "role:slave") &&
           cl_info_has(r, "replication", "master_link_status:up");
}

static int setup(void **state)
{
    memset(nodes, 0, sizeof(nodes));
    return h_setup(state);
}

static int teardown(void **state)
{
    int i;

    for (i = 0; i < NODES; i++)
        test_redis_stop(&nodes[i]);
    cl_upstream_stop();
    return h_teardown(state);
}

/* "redis-cluster://" and the first three nodes. */
static void store_url(char *buf, size_t cap)
{
    snprintf(buf, cap, "redis-cluster://127.0.0.1:%u,127.0.0.1:%u,127.0.0.1:%u",
             nodes[0].port, nodes[1].port, nodes[2].port);
}

/* Load; SIGKILL a primary; its replica takes over; the dead node comes
 * back as a replica; load on; every key retried. */
static struct cl_figures failover_run(int replicas)
{
    const char *const with[] = { "--redis-replicas", "1", NULL };
    struct h_proc *px[2];
    char store[128];
    uint64_t kill_ms;
    int victim, port;

    cluster_start();
    cl_upstream_start();
    store_url(store, sizeof(store));
    px[0] = cl_proxy(store, replicas ? with : NULL);
    px[1] = cl_proxy(store, replicas ? with : NULL);
    cl_load_start(px[0]->http_port, px[1]->http_port);
    test_redis_sleep_ms(2000);
    victim = node_with_role("master", 0);
    assert_true(victim >= 0);
    port = nodes[victim].port;
    kill_ms = cl_now_ms();
    test_redis_kill(&nodes[victim]);
    assert_true(cl_until(failed_over, &port, 20000));
    printf("cluster: failed over in %llu ms\n",
           (unsigned long long)(cl_now_ms() - kill_ms));
    assert_int_equal(test_redis_start_on(&nodes[victim]), 0);
    assert_true(cl_until(is_synced_replica, &nodes[victim], 20000));
    printf("cluster: the dead primary is a synced replica after %llu ms\n",
           (unsigned long long)(cl_now_ms() - kill_ms));
    test_redis_sleep_ms(1500);
    cl_load_stop();
    cl_retry_all();
    return cl_figures(kill_ms);
}

static void test_cluster_failover_without_wait(void **state)
{
    struct cl_figures f;

    (void)state;
    f = failover_run(0);
    cl_print("cluster.failover", 0, &f);
    cl_assert_sane(&f); /* doubles are possible here: measured, not asserted */
}

static void test_cluster_failover_with_wait(void **state)
{
    struct cl_figures f;

    (void)state;
    f = failover_run(1);
    cl_print("cluster.failover", 1, &f);
    cl_assert_sane(&f);
    assert_int_equal(f.doubles, 0);
}

/* The id of node i (CLUSTER MYID) into buf. */
static void node_id(int i, char *buf, size_t cap)
{
    redisReply *rep = cl_cmd(&nodes[i], "CLUSTER MYID");

    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_STRING);
    snprintf(buf, cap, "%s", rep->str);
    freeReplyObject(rep);
}

/* Slots move between primaries during load: MOVED and ASK are followed,
 * nothing fails, nothing runs twice. */
static void test_cluster_reshard_during_load(void **state)
{
    struct h_proc *px[2];
    char store[128], from[64], to[64], err[8192], *cmd;
    struct cl_figures f;
    uint64_t start;
    int a, b, rc;
    bool moved;

    (void)state;
    cluster_start();
    cl_upstream_start();
    store_url(store, sizeof(store));
    px[0] = cl_proxy(store, NULL);
    px[1] = cl_proxy(store, NULL);
    a = node_with_role("master", 0);
    b = node_with_role("master", a + 1);
    assert_true(a >= 0 && b >= 0);
    node_id(a, from, sizeof(from));
    node_id(b, to, sizeof(to));
    /* through sh, so that redis-cli's report (on stdout) shows on failure */
    cmd = h_format("exec " REDIS_CLI " --cluster reshard 127.0.0.1:%u "
                   "--cluster-from %s --cluster-to %s --cluster-slots %d "
                   "--cluster-yes >&2",
                   nodes[a].port, from, to, RESHARD_SLOTS);
    cl_load_start(px[0]->http_port, px[1]->http_port);
    test_redis_sleep_ms(1500);
    start = cl_now_ms();
    rc = h_run("/bin/sh", (const char *const[]){ "sh", "-c", cmd, NULL }, err,
               sizeof(err));
    free(cmd);
    if (rc != 0)
        fail_msg("redis-cli --cluster reshard (%d): %s", rc,
                 strlen(err) > 600 ? err + strlen(err) - 600 : err);
    printf("cluster: %d slots moved in %llu ms\n", RESHARD_SLOTS,
           (unsigned long long)(cl_now_ms() - start));
    test_redis_sleep_ms(1000);
    cl_load_stop();
    cl_retry_all();
    f = cl_figures(start);
    cl_print("cluster.reshard", 0, &f);
    cl_assert_sane(&f);
    assert_int_equal(f.doubles, 0);
    assert_int_equal(f.failed, 0);
    /* and the proxies did follow the slots (said once per worker) */
    h_stderr(px[0], err, sizeof(err));
    moved = strstr(err, "redis: cluster: slot ") != NULL;
    h_stderr(px[1], err, sizeof(err));
    moved = moved || strstr(err, "redis: cluster: slot ") != NULL;
    assert_true(moved);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_cluster_failover_without_wait,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_cluster_failover_with_wait, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cluster_reshard_during_load, setup,
                                        teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
