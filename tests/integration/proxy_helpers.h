/* Helpers the proxy's integration tests share: a demo_upstream and an
 * idemproxy before it on ephemeral loopback ports, requests, and checks
 * of what came back. */
#ifndef IDEM_TEST_PROXY_HELPERS_H
#define IDEM_TEST_PROXY_HELPERS_H

#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"

#define ARGS_MAX 32
#define FLAGS(...) ((const char *const[]){ __VA_ARGS__, NULL })

static inline struct h_proc *upstream_on(const char *listen)
{
    const char *argv[] = { DEMO_UPSTREAM_PATH, "--listen", listen, NULL };

    return h_start(DEMO_UPSTREAM_PATH, argv);
}

/* idemproxy with its listener and admin on ports the kernel picks, started
 * through the command words pre (e.g. prlimit ...; NULL: none), with the
 * flags of flags and then of extra (either may be NULL). */
static inline struct h_proc *proxy_start(const char *const *pre,
                                         const char *const *flags,
                                         const char *const *extra)
{
    const char *argv[ARGS_MAX];
    size_t n = 0;

    while (pre && *pre && n + 1 < ARGS_MAX)
        argv[n++] = *pre++;
    argv[n++] = IDEMPROXY_PATH;
    argv[n++] = "--listen";
    argv[n++] = "127.0.0.1:0";
    argv[n++] = "--admin-listen";
    argv[n++] = "127.0.0.1:0";
    while (flags && *flags && n + 1 < ARGS_MAX)
        argv[n++] = *flags++;
    while (extra && *extra && n + 1 < ARGS_MAX)
        argv[n++] = *extra++;
    argv[n] = NULL;
    return h_start(argv[0], argv);
}

/* idemproxy in front of 127.0.0.1:up_port, with extra flags (or NULL). */
static inline struct h_proc *proxy(uint16_t up_port, const char *const *extra)
{
    char up[32];

    snprintf(up, sizeof(up), "127.0.0.1:%u", up_port);
    return proxy_start(NULL, FLAGS("--workers", "2", "--upstream", up), extra);
}

/* A fresh demo_upstream (*up) and idemproxy in front of it. */
static inline struct h_proc *pair(struct h_proc **up, const char *const *extra)
{
    *up = upstream_on("127.0.0.1:0");
    return proxy((*up)->http_port, extra);
}

/* POST body to target with key (NULL: none); fails the test on no
 * answer. */
static inline void post(struct h_proc *px, const char *target, const char *key,
                        const char *body, struct h_resp *r)
{
    struct h_req q = {
        .method = "POST", .target = target, .key = key, .body = body
    };

    assert_int_equal(h_exchange(px->http_port, &q, r), 0);
}

/* POST and return the status; the response is dropped. */
static inline int post_status(struct h_proc *px, const char *target,
                              const char *key, const char *body)
{
    struct h_resp r;
    int status;

    post(px, target, key, body, &r);
    status = r.status;
    h_resp_free(&r);
    return status;
}

static inline void assert_replayed(const struct h_resp *r, bool replayed)
{
    const char *v = h_header(r, "Idempotent-Replayed");

    if (replayed)
        assert_string_equal(v ? v : "(absent)", "true");
    else
        assert_null(v);
}

static inline void assert_problem(const struct h_resp *r, int status)
{
    const char *type = h_header(r, "Content-Type");

    assert_int_equal(r->status, status);
    assert_non_null(type);
    assert_int_equal(strncmp(type, "application/problem+json", 24), 0);
}

/* POST and check for a problem+json answer with status. */
static inline void post_problem(struct h_proc *px, const char *target,
                                const char *key, const char *body, int status)
{
    struct h_resp r;

    post(px, target, key, body, &r);
    assert_problem(&r, status);
    h_resp_free(&r);
}

/* POST n times: each executes anew (upstream executions first, first + 1,
 * ...) and answers status, never a replay. */
static inline void assert_executes_each_time(struct h_proc *px,
                                             const char *target,
                                             const char *key, int status,
                                             long first, int n)
{
    struct h_resp r;

    for (int i = 0; i < n; i++) {
        post(px, target, key, "x", &r);
        assert_int_equal(r.status, status);
        assert_replayed(&r, false);
        assert_int_equal(h_json_long(&r, "execution"), first + i);
        h_resp_free(&r);
    }
}

/* Open a connection and send a request on it, answer unread. */
static inline struct h_conn *send_only(struct h_proc *px, const struct h_req *q)
{
    struct h_conn *c = h_connect(px->http_port);
    size_t len;
    char *raw = h_build(q, &len);

    assert_non_null(c);
    assert_int_equal(h_send(c, raw, len), 0);
    free(raw);
    return c;
}

#endif
