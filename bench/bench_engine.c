/* Engine benchmark over the memory store: a new key through begin and
 * complete, a replay, and the fingerprint of a 1 KiB body. "name value
 * unit" lines; best of REPS runs. */
#include <stdio.h>
#include <string.h>

#include "bench.h"
#include "fingerprint.h"
#include "idem/engine.h"

#define REPS 5
#define OPS 200000L

struct req {
    struct idem_header h[3];
    struct idem_request r;
    char key[32];
};

static void req_init(struct req *q, const char *key)
{
    memset(q, 0, sizeof(*q));
    snprintf(q->key, sizeof(q->key), "%s", key);
    q->h[0] =
        (struct idem_header){ "Content-Type", 12, "application/json", 16 };
    q->h[1] = (struct idem_header){ "Authorization", 13, "Bearer bench", 12 };
    q->h[2] =
        (struct idem_header){ "Idempotency-Key", 15, q->key, strlen(q->key) };
    q->r = (struct idem_request){ .method = "POST",
                                  .method_len = 4,
                                  .target = "/orders",
                                  .target_len = 7,
                                  .headers = q->h,
                                  .nheaders = 3 };
}

/* One request through the engine; completes it if it proceeds. */
static enum idem_outcome one(struct idem_engine *e, struct req *q)
{
    static const char body[] = "{\"amount\":100,\"currency\":\"eur\"}";
    struct idem_response resp = { 201, q->h, 1, "{\"id\":1}", 8 };
    struct idem_decision d;
    struct idem_call *call;

    if (idem_call_new(e, &call) != IDEM_OK)
        return 0;
    idem_call_start(call, &q->r, &d);
    idem_call_body(call, body, sizeof(body) - 1);
    idem_call_decide(call, NULL, NULL, &d);
    if (d.outcome == IDEM_OUTCOME_PROCEED)
        idem_call_complete(call, &resp, NULL, NULL);
    idem_call_free(call);
    return d.outcome;
}

static double ns_new_keys(struct idem_engine *e, int rep)
{
    struct req q;
    char key[32];
    uint64_t t0 = bench_now_ns();
    long i;

    for (i = 0; i < OPS; i++) {
        snprintf(key, sizeof(key), "k-%d-%ld", rep, i);
        req_init(&q, key);
        one(e, &q);
    }
    return (double)(bench_now_ns() - t0) / OPS;
}

static double ns_replay(struct idem_engine *e)
{
    struct req q;
    uint64_t t0;
    long i;

    req_init(&q, "replayed");
    one(e, &q);
    t0 = bench_now_ns();
    for (i = 0; i < OPS; i++)
        one(e, &q);
    return (double)(bench_now_ns() - t0) / OPS;
}

static double ns_fingerprint(void)
{
    static char body[1024];
    struct idem__fp_input in = { "POST", 4,    "/orders", 7, "application/json",
                                 16,     NULL, 0 };
    uint8_t out[IDEM_FP_LEN];
    uint64_t t0 = bench_now_ns();
    long i;

    memset(body, 'x', sizeof(body));
    for (i = 0; i < OPS; i++)
        idem__fp_digest(&in, body, sizeof(body), out);
    return (double)(bench_now_ns() - t0) / OPS;
}

static double best(double a, double b)
{
    return a < b ? a : b;
}

int main(void)
{
    struct idem_engine_opts o = { .lifetime_ms = 600000 };
    struct idem_engine *e = NULL;
    double nk = 1e12, rp = 1e12, fp = 1e12;
    int r;

    if (idem_engine_new(&o, &e) != IDEM_OK) {
        fprintf(stderr, "bench_engine: cannot create the engine\n");
        return 1;
    }
    for (r = 0; r < REPS; r++) {
        nk = best(nk, ns_new_keys(e, r));
        rp = best(rp, ns_replay(e));
        fp = best(fp, ns_fingerprint());
    }
    bench_print("engine.begin_complete", nk, "ns/op");
    bench_print("engine.replay", rp, "ns/op");
    bench_print("engine.fingerprint_1KiB", fp, "ns/op");
    idem_engine_free(e);
    return 0;
}
