/* A redis-server of a test's own: started on a free loopback port with no
 * persistence, stopped by its pid (and killed if the test dies). Header-only,
 * for unit and integration tests alike. Failures to start fail the running
 * cmocka test. */
#ifndef IDEM_TEST_REDIS_SERVER_H
#define IDEM_TEST_REDIS_SERVER_H

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "free_port.h"

#define TEST_REDIS_BIN "/usr/bin/redis-server"

struct test_redis {
    pid_t pid; /* 0 when stopped */
    uint16_t port;
    const char *unix_path; /* set: listen there only (port 0) */
    /* Optional, for clusters and Sentinels: the working directory (NULL:
     * /tmp), a config file given first (NULL: none), run as a Sentinel
     * (conf required), and more arguments (NULL-terminated, or NULL). */
    const char *dir;
    const char *conf;
    bool sentinel;
    const char *const *extra;
};

#define TEST_REDIS_ARGS 48

static inline void test_redis_sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* A synchronous client to r (for checks and administration), or NULL. */
static inline redisContext *test_redis_client(const struct test_redis *r)
{
    struct timeval tv = { 1, 0 };
    redisContext *c = r->unix_path
                          ? redisConnectUnixWithTimeout(r->unix_path, tv)
                          : redisConnectWithTimeout("127.0.0.1", r->port, tv);

    if (c && c->err) {
        redisFree(c);
        return NULL;
    }
    if (c)
        redisSetTimeout(c, tv);
    return c;
}

/* Whether r answers PING. */
static inline int test_redis_ping(const struct test_redis *r)
{
    redisContext *c = test_redis_client(r);
    redisReply *rep = c ? redisCommand(c, "PING") : NULL;
    int ok = rep && rep->type == REDIS_REPLY_STATUS;

    if (rep)
        freeReplyObject(rep);
    if (c)
        redisFree(c);
    return ok;
}

/* The arguments for r listening on port, into argv[0..TEST_REDIS_ARGS). */
static inline void test_redis_argv(const struct test_redis *r, const char *port,
                                   const char **argv)
{
    const char *const common[] = { "--port",     port,
                                   "--bind",     "127.0.0.1",
                                   "--dir",      r->dir ? r->dir : "/tmp",
                                   "--loglevel", "warning" };
    const char *const data[] = { "--save", "", "--appendonly", "no" };
    size_t n = 0, i;

    argv[n++] = "redis-server";
    if (r->conf)
        argv[n++] = r->conf;
    if (r->sentinel)
        argv[n++] = "--sentinel";
    for (i = 0; i < sizeof(common) / sizeof(common[0]); i++)
        argv[n++] = common[i];
    for (i = 0; !r->sentinel && i < sizeof(data) / sizeof(data[0]); i++)
        argv[n++] = data[i];
    if (r->unix_path) {
        argv[n++] = "--unixsocket";
        argv[n++] = r->unix_path;
    }
    for (i = 0; r->extra && r->extra[i] && n + 1 < TEST_REDIS_ARGS; i++)
        argv[n++] = r->extra[i];
    argv[n] = NULL;
}

/* Start redis-server on r->port (0: a free one), or on r->unix_path
 * alone. 0, or -1 if it did not answer within 5 s. */
static inline int test_redis_start_on(struct test_redis *r)
{
    char port[8];
    const char *argv[TEST_REDIS_ARGS];
    int i, status, null;

    if (!r->port && !r->unix_path)
        r->port = test_free_port();
    snprintf(port, sizeof(port), "%u", r->unix_path ? 0 : r->port);
    test_redis_argv(r, port, argv);
    r->pid = fork();
    if (r->pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* it dies with the test */
        null = open("/dev/null", O_RDWR);
        dup2(null, STDIN_FILENO);
        dup2(null, STDOUT_FILENO);
        execv(TEST_REDIS_BIN, (char *const *)argv);
        _exit(127);
    }
    if (r->pid < 0)
        return -1;
    for (i = 0; i < 500; i++) {
        if (test_redis_ping(r))
            return 0;
        if (waitpid(r->pid, &status, WNOHANG) == r->pid) {
            r->pid = 0;
            return -1;
        }
        test_redis_sleep_ms(10);
    }
    return -1;
}

/* SIGKILL and reap: a crash, as a failover test wants it. */
static inline void test_redis_kill(struct test_redis *r)
{
    int status;

    if (r->pid <= 0)
        return;
    kill(r->pid, SIGKILL);
    waitpid(r->pid, &status, 0);
    r->pid = 0;
}

/* SIGTERM (SIGKILL after 5 s) and reap. */
static inline void test_redis_stop(struct test_redis *r)
{
    int i, status;

    if (r->pid <= 0)
        return;
    kill(r->pid, SIGCONT);
    kill(r->pid, SIGTERM);
    for (i = 0; i < 500; i++) {
        if (waitpid(r->pid, &status, WNOHANG) == r->pid) {
            r->pid = 0;
            return;
        }
        test_redis_sleep_ms(10);
    }
    kill(r->pid, SIGKILL);
    waitpid(r->pid, &status, 0);
    r->pid = 0;
}

/* Start on a free port, retrying if another process took it first. */
static inline int test_redis_start(struct test_redis *r)
{
    int tries;

    for (tries = 0; tries < 5; tries++) {
        r->port = 0;
        if (test_redis_start_on(r) == 0)
            return 0;
        test_redis_stop(r);
    }
    return -1;
}

/* Run a command on r, expecting any non-error reply. 0 or -1. */
static inline int test_redis_cmd(const struct test_redis *r, const char *cmd)
{
    redisContext *c = test_redis_client(r);
    redisReply *rep = c ? redisCommand(c, cmd) : NULL;
    int ok = rep && rep->type != REDIS_REPLY_ERROR;

    if (rep)
        freeReplyObject(rep);
    if (c)
        redisFree(c);
    return ok ? 0 : -1;
}

#endif
