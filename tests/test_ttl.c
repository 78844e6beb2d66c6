/* ttl: the timer wheel on its own, against a model: every node comes out
 * exactly once, never before its time and never later than the advance
 * that passes it; removal is immediate; budgets split work without
 * changing the result; empty time costs next to nothing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "internal.h"
#include "ttl.h"

#define DAY_MS (24u * 3600u * 1000u)

struct item {
    struct idem__ttl_node node;
    bool in;     /* in the model's wheel */
    int emitted; /* times handed out */
};

static uint64_t rng_state;

static uint64_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* Hand out what is due up to `to` with the given budget per call (0: no
 * limit), checking each node against the model. Returns the work used. */
static size_t advance_to(struct idem__ttl_wheel *w, uint64_t to,
                         size_t per_call, size_t *emitted)
{
    struct idem__ttl_node *due, *n;
    size_t used = 0, budget;
    bool done;

    do {
        budget = per_call ? per_call : SIZE_MAX;
        due = NULL;
        done = idem__ttl_advance(w, to, &budget, &due);
        used += (per_call ? per_call : SIZE_MAX) - budget;
        for (n = due; n; n = n->next) {
            struct item *it = IDEM_CONTAINER_OF(n, struct item, node);

            assert_true(it->in);
            assert_true(n->expires <= to);
            assert_false(idem__ttl_linked(n));
            it->in = false;
            it->emitted++;
            (*emitted)++;
        }
    } while (!done);
    return used;
}

/* After an advance to `to`, nothing due may remain and the counts agree. */
static void check_model(const struct idem__ttl_wheel *w, const struct item *it,
                        size_t n, uint64_t to)
{
    size_t i, in = 0;

    for (i = 0; i < n; i++) {
        assert_true(it[i].emitted <= 1);
        if (it[i].in) {
            in++;
            assert_true(it[i].node.expires > to);
            assert_true(idem__ttl_linked(&it[i].node));
        }
    }
    assert_int_equal(w->count, in);
    assert_int_equal(idem__ttl_walk_count(w), in);
}

static void test_insert_remove_counts(void **state)
{
    struct idem__ttl_wheel w;
    struct item it[3] = { 0 };
    size_t emitted = 0;

    (void)state;
    idem__ttl_init(&w, 1000);
    idem__ttl_insert(&w, &it[0].node, 1001);
    idem__ttl_insert(&w, &it[1].node, 1000 + DAY_MS);
    idem__ttl_insert(&w, &it[2].node, 5000);
    it[0].in = it[1].in = it[2].in = true;
    assert_int_equal(w.count, 3);
    assert_int_equal(idem__ttl_walk_count(&w), 3);
    idem__ttl_remove(&w, &it[1].node);
    it[1].in = false;
    assert_false(idem__ttl_linked(&it[1].node));
    idem__ttl_remove(&w, &it[1].node); /* harmless twice */
    assert_int_equal(w.count, 2);
    advance_to(&w, 1000 + 2 * DAY_MS, 0, &emitted);
    assert_int_equal(emitted, 2);
    assert_int_equal(it[1].emitted, 0);
    check_model(&w, it, 3, 1000 + 2 * DAY_MS);
    assert_int_equal(w.count, 0);
}

/* Random inserts, removals and advances from a start time near base. */
static void run_model(uint64_t base, uint64_t max_ttl, size_t per_call)
{
    enum { N = 3000 };
    struct item *it = calloc(N, sizeof(*it));
    struct idem__ttl_wheel w;
    uint64_t now = base;
    size_t emitted = 0, i, round;

    assert_non_null(it);
    idem__ttl_init(&w, now);
    for (round = 0; round < 40; round++) {
        for (i = 0; i < N; i++) {
            uint64_t r = rng() % 8;

            if (!it[i].in && !it[i].emitted && r < 2) {
                idem__ttl_insert(&w, &it[i].node, now + rng() % max_ttl);
                it[i].in = true;
            } else if (it[i].in && r == 2) {
                idem__ttl_remove(&w, &it[i].node);
                it[i].in = false;
            }
        }
        now += rng() % (max_ttl / 8 + 1);
        advance_to(&w, now, per_call, &emitted);
        check_model(&w, it, N, now);
    }
    now += max_ttl;
    advance_to(&w, now, per_call, &emitted);
    check_model(&w, it, N, now);
    assert_int_equal(w.count, 0);
    assert_true(emitted > N / 10);
    free(it);
}

static void test_model_small_times(void **state)
{
    (void)state;
    rng_state = 0x9E3779B97F4A7C15u;
    run_model(0, 200, 0);
    run_model(1000, 5000, 0);
}

static void test_model_across_digit_boundaries(void **state)
{
    (void)state;
    rng_state = 0x1234567u;
    run_model(((uint64_t)1 << 36) - 77, 100000, 0);
    run_model(((uint64_t)1 << 48) - 3, 300, 0);
    run_model(((uint64_t)1 << 62) - 1000, (uint64_t)1 << 40, 0);
}

static void test_model_large_ttls(void **state)
{
    (void)state;
    rng_state = 0xfeedfaceu;
    run_model(123456789, 30ull * DAY_MS, 0);
}

/* A budget of 1 or 7 splits the work; the result is the same. */
static void test_model_with_budgets(void **state)
{
    (void)state;
    rng_state = 0xabcdefu;
    run_model(5000, 100000, 1);
    run_model(((uint64_t)1 << 30) - 5, 10000, 7);
}

/* A day of empty time, or a day with 10,000 nodes spread over it, costs
 * work in proportion to the nodes and the levels, not to the millisecond. */
static void test_big_jump_is_cheap(void **state)
{
    enum { N = 10000 };
    struct item *it = calloc(N, sizeof(*it));
    struct idem__ttl_wheel w;
    size_t emitted = 0, used, i;

    (void)state;
    assert_non_null(it);
    idem__ttl_init(&w, 777);
    used = advance_to(&w, 777 + DAY_MS, 0, &emitted);
    assert_true(used <= 2);
    for (i = 0; i < N; i++) {
        idem__ttl_insert(&w, &it[i].node, w.now + 1 + i * (DAY_MS / N));
        it[i].in = true;
    }
    used = advance_to(&w, w.now + 2 * DAY_MS, 0, &emitted);
    assert_int_equal(emitted, N);
    /* each node falls at most once per level, plus one step per slot */
    assert_true(used <= (size_t)N * IDEM__TTL_LEVELS +
                            IDEM__TTL_LEVELS * IDEM__TTL_SLOTS);
    check_model(&w, it, N, w.now);
    free(it);
}

/* Nodes removed while their slot is half drained never come out. */
static void test_remove_during_partial_drain(void **state)
{
    enum { N = 100 };
    struct item it[N] = { 0 };
    struct idem__ttl_wheel w;
    struct idem__ttl_node *due = NULL, *n;
    size_t budget = 10, i, out = 0, emitted = 0;

    (void)state;
    idem__ttl_init(&w, 0);
    for (i = 0; i < N; i++) {
        idem__ttl_insert(&w, &it[i].node, 500); /* one slot */
        it[i].in = true;
    }
    assert_false(idem__ttl_advance(&w, 1000, &budget, &due));
    for (n = due; n; n = n->next, out++) {
        struct item *x = IDEM_CONTAINER_OF(n, struct item, node);

        x->in = false;
        x->emitted++;
    }
    assert_true(out < N);
    for (i = 0; i < N; i++) {
        if (it[i].in) {
            idem__ttl_remove(&w, &it[i].node);
            it[i].in = false;
        }
    }
    assert_int_equal(w.count, 0);
    advance_to(&w, 1000, 0, &emitted);
    assert_int_equal(emitted, 0);
    check_model(&w, it, N, 1000);
}

/* A time at or before the wheel's is due at the next advance, even one
 * that does not move time; a time of UINT64_MAX is never due. */
static void test_past_and_far_times(void **state)
{
    struct item it[3] = { 0 };
    struct idem__ttl_wheel w;
    size_t emitted = 0;

    (void)state;
    idem__ttl_init(&w, 10000);
    idem__ttl_insert(&w, &it[0].node, 5);
    idem__ttl_insert(&w, &it[1].node, 10000);
    idem__ttl_insert(&w, &it[2].node, UINT64_MAX);
    it[0].in = it[1].in = it[2].in = true;
    advance_to(&w, 10000, 0, &emitted);
    assert_int_equal(emitted, 2);
    advance_to(&w, (uint64_t)1 << 62, 0, &emitted);
    assert_int_equal(emitted, 2);
    assert_true(it[2].in);
    idem__ttl_remove(&w, &it[2].node);
    assert_int_equal(w.count, 0);
    assert_int_equal(idem__ttl_walk_count(&w), 0);
}

/* Time going back moves nothing: nodes keep waiting for their time. */
static void test_time_going_back(void **state)
{
    struct item it[1] = { 0 };
    struct idem__ttl_wheel w;
    size_t emitted = 0;

    (void)state;
    idem__ttl_init(&w, 1000);
    idem__ttl_insert(&w, &it[0].node, 1500);
    it[0].in = true;
    advance_to(&w, 900, 0, &emitted);
    assert_int_equal(emitted, 0);
    advance_to(&w, 1499, 0, &emitted);
    assert_int_equal(emitted, 0);
    advance_to(&w, 1500, 0, &emitted);
    assert_int_equal(emitted, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_insert_remove_counts),
        cmocka_unit_test(test_model_small_times),
        cmocka_unit_test(test_model_across_digit_boundaries),
        cmocka_unit_test(test_model_large_ttls),
        cmocka_unit_test(test_model_with_budgets),
        cmocka_unit_test(test_big_jump_is_cheap),
        cmocka_unit_test(test_remove_during_partial_drain),
        cmocka_unit_test(test_past_and_far_times),
        cmocka_unit_test(test_time_going_back),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
