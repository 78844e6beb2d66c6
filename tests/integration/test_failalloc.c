/* Allocation-failure sweep over idemproxy's request path (issue 7). For
 * each allocation N of a window, a proxy of its own, with
 * tests/failalloc_shim.c preloaded to fail its Nth allocation, serves a
 * keyed POST (A), its replay (A') and a POST with a fresh key (R). Each
 * answer must be the upstream's 200, a 500/502/503 or a closed
 * connection; R must succeed when the failure came before it; the proxy
 * must exit 0 on SIGTERM leaving no more blocks live than a run without
 * a failure does.
 *
 * Windows: "cold" counts from the first connection (a fresh process: the
 * first request also pays for one-time initialisation); "warm" counts
 * from the second, after a warm-up request. A run with no failure first
 * counts the window's allocations (K). Windows of more than MAX_SITES are
 * swept at an even stride unless IDEM_FAILALLOC_ALL=1 (every site);
 * IDEM_FAILALLOC_ONLY=N sweeps site N alone (to reproduce a finding; set
 * "break failalloc_hit" in a debugger to see the site). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"

#define MAX_SITES 400       /* sites swept per window by default (~7 s) */
#define BATCH 10            /* proxies per cmocka test (harness: 16 slots) */
#define REQ_TIMEOUT_MS 3000 /* an answer slower than this is a hang */
#define ERR_TAIL 300        /* bytes of the proxy's stderr shown */

/* R must succeed when the failure came before it, R_MARGIN allocations
 * or more: a connection's close and the next one's accept may swap from
 * run to run, moving R's start by an allocation or two. */
#define R_MARGIN 4
#define ALL_ENV "IDEM_FAILALLOC_ALL"
#define ONLY_ENV "IDEM_FAILALLOC_ONLY"

/* Blocks live at exit beyond the run without failure. 0: the proxy frees
 * all it allocates, and what stays allocated for the whole process (in
 * libc and libevent) is the same whether an allocation failed or not. */
#define LIVE_SLACK 0

enum { CLOSED = -1, HUNG = -2 }; /* answers that are no response */

struct window {
    const char *name;
    unsigned long accepts; /* the shim counts from this connection on */
    bool warm_up;          /* a request before counting starts */
    unsigned long count;   /* K: allocations of a run without failure */
    unsigned long r_at;    /* allocations made before R's connection */
    long live;             /* blocks live at exit of that run */
    bool counted;          /* the run without failure passed */
};

static struct window windows[] = {
    { .name = "cold", .accepts = 1 },
    { .name = "warm", .accepts = 2, .warm_up = true },
};

#define NWINDOWS (sizeof(windows) / sizeof(windows[0]))

/* What a run saw: the three answers and the shim's report. */
struct run {
    struct h_resp a, a2, r;
    int sa, sa2, sr; /* status, CLOSED or HUNG */
    int exit_status;
    unsigned long counted, failed, marks[8];
    size_t nmarks;
    long live;
    bool reported;
    char err[4096]; /* the proxy's stderr, from its start */
};

/* A cmocka test: sites first, first + step, ... (n of them). */
struct batch {
    struct window *w;
    unsigned long first, step, n;
    char name[80];
};

static long now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

/* -- Processes --------------------------------------------------------- */

static struct h_proc *start_upstream(void)
{
    const char *argv[] = { DEMO_UPSTREAM_PATH, "--listen", "127.0.0.1:0",
                           NULL };

    return h_start(DEMO_UPSTREAM_PATH, argv);
}

/* idemproxy with the shim preloaded: one worker, so that the order of
 * allocations, and so N, is the same from run to run. The environment
 * is set for the child only: it inherits it at fork. */
static struct h_proc *start_proxy(const struct window *w, uint16_t up,
                                  unsigned long n, const char *report)
{
    char upstream[32], at[24], accepts[24];
    const char *argv[] = {
        IDEMPROXY_PATH,   "--listen", "127.0.0.1:0", "--workers", "1",
        "--admin-listen", "off",      "--upstream",  upstream,    NULL
    };
    struct h_proc *px;

    snprintf(upstream, sizeof(upstream), "127.0.0.1:%u", up);
    snprintf(at, sizeof(at), "%lu", n);
    snprintf(accepts, sizeof(accepts), "%lu", w->accepts);
    setenv("LD_PRELOAD", FAILALLOC_SHIM_PATH, 1);
    setenv("IDEM_FAIL_ALLOC_AT", at, 1);
    setenv("IDEM_FAIL_ALLOC_ACCEPTS", accepts, 1);
    setenv("IDEM_FAIL_ALLOC_REPORT", report, 1);
    px = h_start(IDEMPROXY_PATH, argv);
    unsetenv("LD_PRELOAD");
    unsetenv("IDEM_FAIL_ALLOC_AT");
    unsetenv("IDEM_FAIL_ALLOC_ACCEPTS");
    unsetenv("IDEM_FAIL_ALLOC_REPORT");
    return px;
}

/* -- Requests ---------------------------------------------------------- */

/* Send q on a fresh connection and read the answer into *r: its status,
 * CLOSED if the proxy closed (or refused) the connection without a whole
 * response, HUNG if none came in REQ_TIMEOUT_MS. */
static int ask(uint16_t port, const struct h_req *q, struct h_resp *r)
{
    struct h_conn *c = h_connect(port);
    size_t len;
    char *raw = h_build(q, &len);
    long start = now_ms();
    int rc = -1;

    *r = (struct h_resp){ 0 };
    if (c) {
        h_set_timeout(c, REQ_TIMEOUT_MS);
        if (h_send(c, raw, len) == 0)
            rc = h_read(c, r, false);
        h_close(c);
    }
    free(raw);
    if (rc == 0)
        return r->status;
    return now_ms() - start >= REQ_TIMEOUT_MS ? HUNG : CLOSED;
}

static int post(uint16_t port, const char *target, const char *key,
                struct h_resp *r)
{
    struct h_req q = {
        .method = "POST", .target = target, .key = key, .body = "x"
    };

    return ask(port, &q, r);
}

/* The warm-up: a keyed POST whose upstream connection is not kept, so
 * that A opens one as in the cold window. */
static bool warm_up(uint16_t port, unsigned long n)
{
    char *key = h_format("w-%lu", n);
    struct h_resp r;
    bool ok = post(port, "/w?close=1", key, &r) == 200;

    h_resp_free(&r);
    free(key);
    return ok;
}

/* A, A' (the same key: a replay) and R (a fresh key). */
static void exercise(uint16_t port, unsigned long n, struct run *run)
{
    char *ka = h_format("a-%lu", n), *kr = h_format("r-%lu", n);

    run->sa = post(port, "/a", ka, &run->a);
    run->sa2 = post(port, "/a", ka, &run->a2);
    run->sr = post(port, "/r", kr, &run->r);
    free(ka);
    free(kr);
}

static void run_free(struct run *run)
{
    h_resp_free(&run->a);
    h_resp_free(&run->a2);
    h_resp_free(&run->r);
}

/* -- The shim's report ------------------------------------------------- */

/* Parse "counted=K failed=F live=L marks=M1,M2,..." into run. */
static void read_report(const char *path, struct run *run)
{
    FILE *f = fopen(path, "r");
    char marks[256] = "", *s = marks, *end;

    run->reported =
        f && fscanf(f, "counted=%lu failed=%lu live=%ld marks=%255s",
                    &run->counted, &run->failed, &run->live, marks) >= 3;
    if (f)
        fclose(f);
    for (run->nmarks = 0; run->nmarks < 8 && *s; s = end) {
        run->marks[run->nmarks++] = strtoul(s, &end, 10);
        if (*end != ',')
            break;
        end++;
    }
}

/* -- One run ----------------------------------------------------------- */

/* Run a proxy failing allocation n (0: none) through the window. False if
 * the warm-up failed (the run says nothing then). */
static bool run_window(const struct window *w, uint16_t up, unsigned long n,
                       struct run *run)
{
    char *report = h_format("%s/report-%s-%lu", h_tmpdir(), w->name, n);
    struct h_proc *px = start_proxy(w, up, n, report);
    bool warm = !w->warm_up || warm_up(px->http_port, n);

    *run = (struct run){ .sa = CLOSED, .sa2 = CLOSED, .sr = CLOSED };
    if (warm)
        exercise(px->http_port, n, run);
    run->exit_status = h_stop(px);
    h_stderr(px, run->err, sizeof(run->err));
    read_report(report, run);
    unlink(report);
    free(report);
    return warm;
}

static const char *answer(int status, char *buf, size_t cap)
{
    if (status == CLOSED)
        return "closed";
    if (status == HUNG)
        return "hung";
    snprintf(buf, cap, "%d", status);
    return buf;
}

static bool allowed(int status)
{
    return status == 200 || status == 500 || status == 502 || status == 503 ||
           status == CLOSED;
}

static bool same_header(const struct h_resp *a, const struct h_resp *b,
                        const char *name)
{
    const char *va = h_header(a, name), *vb = h_header(b, name);

    return va && vb && strcmp(va, vb) == 0;
}

/* A replayed answer must be the stored response whole: A's body and
 * Content-Type when A got it, else at least the upstream's JSON. */
static bool replay_intact(const struct run *run)
{
    const char *v = h_header(&run->a2, "Idempotent-Replayed");

    if (run->sa2 != 200 || !v || strcmp(v, "true") != 0)
        return true;
    if (run->sa == 200)
        return strcmp(run->a2.body, run->a.body) == 0 &&
               same_header(&run->a, &run->a2, "Content-Type");
    return h_json_long(&run->a2, "execution") > 0 &&
           h_header(&run->a2, "Content-Type") != NULL;
}

/* What is wrong with run, failing allocation n of w, into why; false if
 * nothing. A run may count one allocation fewer than K (libevent grows
 * its change list when two connections' events share a loop turn): then
 * the last site goes unfailed, and that is not the proxy's fault. */
static bool judge(const struct window *w, unsigned long n,
                  const struct run *run, char *why, size_t cap)
{
    if (run->exit_status != 0)
        snprintf(why, cap, "exit status %d after SIGTERM", run->exit_status);
    else if (!allowed(run->sa) || !allowed(run->sa2) || !allowed(run->sr))
        snprintf(why, cap, "an answer outside 200/500/502/503/closed");
    else if (!replay_intact(run))
        snprintf(why, cap, "A' replayed a response that is not A's");
    else if (n + R_MARGIN <= w->r_at && run->sr != 200)
        snprintf(why, cap, "R failed: the proxy did not recover");
    else if (!run->reported || (run->failed != 1 && run->counted >= n))
        snprintf(why, cap, "allocation %lu was not failed (%lu counted)", n,
                 run->counted);
    else if (run->live > w->live + LIVE_SLACK)
        snprintf(why, cap, "%ld blocks live at exit, %ld without failure",
                 run->live, w->live);
    else
        return false;
    return true;
}

/* Print what is wrong with run; true if something is. */
static bool report_problem(const struct window *w, unsigned long n,
                           const struct run *run)
{
    char why[160], b1[16], b2[16], b3[16];
    size_t len = strlen(run->err);

    if (!judge(w, n, run, why, sizeof(why)))
        return false;
    print_error("%s N=%lu: %s (A=%s A'=%s R=%s); idemproxy's stderr ends:\n"
                "%s\n",
                w->name, n, why, answer(run->sa, b1, sizeof(b1)),
                answer(run->sa2, b2, sizeof(b2)),
                answer(run->sr, b3, sizeof(b3)),
                run->err + (len > ERR_TAIL ? len - ERR_TAIL : 0));
    return true;
}

/* -- Tests ------------------------------------------------------------- */

/* The run without failure: every answer right, and the window's size. */
static void count_window(struct window *w)
{
    struct h_proc *up = start_upstream();
    struct run run;

    assert_true(run_window(w, up->http_port, 0, &run));
    assert_int_equal(run.exit_status, 0);
    assert_int_equal(run.sa, 200);
    assert_int_equal(run.sa2, 200);
    assert_non_null(h_header(&run.a2, "Idempotent-Replayed"));
    assert_int_equal(run.sr, 200);
    assert_true(run.reported);
    assert_int_equal(run.nmarks, 3); /* A, A', R */
    w->count = run.counted;
    w->r_at = run.marks[2];
    w->live = run.live;
    w->counted = true;
    print_message("%s window: %lu allocations (R from %lu), %ld live at "
                  "exit\n",
                  w->name, w->count, w->r_at, w->live);
    run_free(&run);
}

static void test_count(void **state)
{
    count_window(*state);
}

static void test_sweep(void **state)
{
    const struct batch *b = *state;
    struct h_proc *up = start_upstream();
    unsigned long i, n, bad = 0;
    struct run run;

    for (i = 0; i < b->n; i++) {
        n = b->first + i * b->step;
        if (!run_window(b->w, up->http_port, n, &run))
            fail_msg("%s N=%lu: the warm-up request failed", b->w->name, n);
        bad += report_problem(b->w, n, &run);
        run_free(&run);
    }
    if (bad)
        fail_msg("%lu of %lu failed allocations went wrong", bad, b->n);
}

/* -- Running ----------------------------------------------------------- */

/* The stride for w: 1, or what keeps it within MAX_SITES. */
static unsigned long stride(const struct window *w)
{
    const char *all = getenv(ALL_ENV);

    if ((all && strcmp(all, "1") == 0) || w->count <= MAX_SITES)
        return 1;
    return (w->count + MAX_SITES - 1) / MAX_SITES;
}

/* Append w's batches to tests[*n...]. */
static void add_batches(struct window *w, struct CMUnitTest *tests,
                        struct batch *batches, size_t *n)
{
    unsigned long step = stride(w), sites = (w->count + step - 1) / step, i;
    unsigned long first = 1;
    const char *only = getenv(ONLY_ENV);
    struct batch *b;

    if (only && *only) { /* one site, if the window has it */
        first = strtoul(only, NULL, 10);
        step = 1;
        sites = first >= 1 && first <= w->count;
    }
    if (step > 1)
        print_message("%s window: every %luth of %lu allocations (%s=1: "
                      "all)\n",
                      w->name, step, w->count, ALL_ENV);
    for (i = 0; i < sites; i += BATCH, (*n)++) {
        b = &batches[*n];
        *b = (struct batch){ .w = w, .first = first + i * step, .step = step };
        b->n = sites - i < BATCH ? sites - i : BATCH;
        snprintf(b->name, sizeof(b->name), "%s N=%lu..%lu", w->name, b->first,
                 b->first + (b->n - 1) * step);
        tests[*n] =
            (struct CMUnitTest){ b->name, test_sweep, h_setup, h_teardown, b };
    }
}

/* The sweep's tests, one per BATCH sites of each counted window. */
static int run_sweep(void)
{
    size_t cap = 0, n = 0, i;
    struct CMUnitTest *tests;
    struct batch *batches;
    int failed;

    for (i = 0; i < NWINDOWS; i++)
        if (windows[i].counted)
            cap += (windows[i].count + BATCH - 1) / BATCH;
    tests = calloc(cap ? cap : 1, sizeof(*tests));
    batches = calloc(cap ? cap : 1, sizeof(*batches));
    if (!tests || !batches)
        abort(); /* a test program out of memory has nothing to report */
    for (i = 0; i < NWINDOWS; i++)
        if (windows[i].counted)
            add_batches(&windows[i], tests, batches, &n);
    failed = _cmocka_run_group_tests("failalloc sweep", tests, n, NULL, NULL);
    free(tests);
    free(batches);
    return failed;
}

int main(void)
{
    const struct CMUnitTest counts[] = {
        { "count cold", test_count, h_setup, h_teardown, &windows[0] },
        { "count warm", test_count, h_setup, h_teardown, &windows[1] },
    };
    const char *valgrind = getenv("IDEM_UNDER_VALGRIND");
    int failed;

    /* valgrind (and a proxy wrapper) replace malloc: the shim would
     * fight them */
    if ((valgrind && strcmp(valgrind, "1") == 0) || h_proxy_wrapped()) {
        print_message("test_failalloc: skipped under valgrind\n");
        return 0;
    }
    failed =
        cmocka_run_group_tests_name("failalloc windows", counts, NULL, NULL);
    return failed + run_sweep();
}
