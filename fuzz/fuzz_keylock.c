/* libFuzzer target: a byte string becomes a sequence of keylock calls on
 * 4 keys by 8 requests and this thread, some with an allocation failing,
 * each checked against a model of who holds and who waits in which order.
 * Any disagreement aborts. Built by `make fuzz`; the corpus replays in
 * `make test`. */
#include <stdbool.h>
#include <stdint.h>

#include "fuzz.h"
#include <stdlib.h>

#include "helpers.h"
#include "idem/keylock.h"

#define NREQ 8
#define NKEY 4
#define MAXW 3
#define THREAD (-2) /* model holder: this thread */
#define NOBODY (-1)

struct model {
    int holder[NKEY];
    int queue[NKEY][NREQ];
    int qlen[NKEY];
    int key_of[NREQ]; /* -1: idle */
    bool holding[NREQ];
    int expect_grant; /* request the next callback must name, or -1 */
    int granted;      /* callbacks seen for expect_grant */
};

static struct model m;
static struct idem_lock_req reqs[NREQ];
static const char *const keys[NKEY] = { "a", "b", "ab", "" };

static void grant_cb(struct idem_lock_req *req, int status)
{
    CHECK(status == IDEM_OK);
    CHECK(req == &reqs[m.expect_grant]);
    m.granted++;
}

static size_t klen(int k)
{
    return __builtin_strlen(keys[k]);
}

/* Whether creating an entry failed for want of memory. Only a call with
 * an allocation set to fail may: whether it allocates at all (inline slot
 * free, or the spare entry fits) depends on the table's random seed. */
static bool create_failed(bool fail, int rc)
{
    if (!fail)
        CHECK(rc != IDEM_ENOMEM);
    return rc == IDEM_ENOMEM;
}

/* The model's side of a release of key k: pass to the queue head, or
 * delete the entry. */
static void model_release(int k)
{
    int r;

    if (m.qlen[k] == 0) {
        m.holder[k] = NOBODY;
        return;
    }
    r = m.queue[k][0];
    for (int i = 1; i < m.qlen[k]; i++)
        m.queue[k][i - 1] = m.queue[k][i];
    m.qlen[k]--;
    m.holder[k] = r;
    m.holding[r] = true;
    m.expect_grant = r;
}

static void model_unqueue(int k, int r)
{
    int i = 0, j;

    while (m.queue[k][i] != r)
        i++;
    for (j = i + 1; j < m.qlen[k]; j++)
        m.queue[k][j - 1] = m.queue[k][j];
    m.qlen[k]--;
}

static void op_acquire(struct idem_keylock *t, int r, int k, bool fail)
{
    int rc = idem_keylock_acquire(t, &reqs[r], keys[k], klen(k));

    if (m.key_of[r] >= 0)
        CHECK(rc == IDEM_EINVAL);
    else if (m.holder[k] == NOBODY && create_failed(fail, rc))
        return;
    else if (m.holder[k] == NOBODY) {
        CHECK(rc == IDEM_OK);
        m.holder[k] = r;
        m.key_of[r] = k;
        m.holding[r] = true;
    } else if (m.qlen[k] >= MAXW)
        CHECK(rc == IDEM_EBUSY);
    else {
        CHECK(rc == IDEM_EINPROGRESS);
        m.queue[k][m.qlen[k]++] = r;
        m.key_of[r] = k;
    }
}

/* The model moves first: the callback it predicts runs inside the call. */
static void op_release(struct idem_keylock *t, int r)
{
    int k = m.key_of[r], rc;
    bool ok = k >= 0 && m.holding[r];

    m.expect_grant = -1;
    m.granted = 0;
    if (ok) {
        m.key_of[r] = -1;
        m.holding[r] = false;
        model_release(k);
    }
    rc = idem_keylock_release(t, &reqs[r]);
    CHECK(rc == (ok ? IDEM_OK : IDEM_EPERM));
    CHECK(m.granted == (m.expect_grant >= 0));
}

static void op_cancel(struct idem_keylock *t, int r)
{
    int rc = idem_keylock_cancel(t, &reqs[r]);

    if (m.key_of[r] < 0)
        CHECK(rc == IDEM_ENOTFOUND);
    else if (m.holding[r])
        CHECK(rc == IDEM_EALREADY);
    else {
        CHECK(rc == IDEM_OK);
        model_unqueue(m.key_of[r], r);
        m.key_of[r] = -1;
    }
}

static void op_thread(struct idem_keylock *t, int k, bool unlock, bool fail)
{
    int rc;

    m.expect_grant = -1;
    m.granted = 0;
    if (unlock) {
        bool ok = m.holder[k] == THREAD;

        if (ok)
            model_release(k);
        rc = idem_keylock_unlock(t, keys[k], klen(k));
        CHECK(rc == (ok ? IDEM_OK : IDEM_EPERM));
        CHECK(m.granted == (m.expect_grant >= 0));
        return;
    }
    rc = idem_keylock_trylock(t, keys[k], klen(k));
    if (m.holder[k] != NOBODY)
        CHECK(rc == IDEM_EBUSY);
    else if (create_failed(fail, rc))
        return;
    else {
        CHECK(rc == IDEM_OK);
        m.holder[k] = THREAD;
    }
}

static void check_counts(struct idem_keylock *t)
{
    struct idem_keylock_stats st;
    uint64_t held = 0, waiting = 0;

    for (int k = 0; k < NKEY; k++) {
        held += m.holder[k] != NOBODY;
        waiting += (uint64_t)m.qlen[k];
    }
    idem_keylock_stats(t, &st);
    CHECK(st.entries == held && idem_keylock_count(t) == held);
    CHECK(st.waiters == waiting);
    CHECK(st.created - st.freed == st.entries);
}

/* Drain: cancel every waiter, release every holder; the table empties. */
static void drain(struct idem_keylock *t)
{
    for (int r = 0; r < NREQ; r++)
        if (m.key_of[r] >= 0 && !m.holding[r])
            op_cancel(t, r);
    for (int k = 0; k < NKEY; k++) {
        if (m.holder[k] == THREAD)
            op_thread(t, k, true, false);
        else if (m.holder[k] >= 0)
            op_release(t, m.holder[k]);
    }
    check_counts(t);
    CHECK(idem_keylock_count(t) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct test_env te;
    struct idem_keylock_opts o = { .stripes = 1, .max_waiters = MAXW };
    struct idem_keylock *t = NULL;
    size_t i;

    test_env_init(&te, 0);
    o.env = &te.env;
    if (idem_keylock_new(&o, &t) != IDEM_OK)
        return 0;
    for (i = 0; i < NKEY; i++)
        m.holder[i] = NOBODY, m.qlen[i] = 0;
    for (i = 0; i < NREQ; i++) {
        m.key_of[i] = -1;
        m.holding[i] = false;
        idem_lock_req_init(&reqs[i], grant_cb, NULL);
    }
    /* Each op is a byte: bits 0-2 the call, 3-5 the request, 6-7 both
     * set = fail the next allocation; calls that name a key take it from
     * the following byte. */
    for (i = 0; i < size; i++) {
        uint8_t op = data[i] & 7;
        int r = (data[i] >> 3) & 7, k = 0;
        bool fail = (data[i] & 0xC0) == 0xC0;

        if (op == 0 || op == 3 || op == 4 || op == 5 || op == 7) {
            if (++i == size)
                break;
            k = data[i] & 3;
        }
        if (fail)
            test_env_fail_in(&te, 0);
        switch (op) {
        case 0:
        case 5:
            op_acquire(t, r, k, fail);
            break;
        case 1:
        case 6:
            op_release(t, r);
            break;
        case 2:
            op_cancel(t, r);
            break;
        case 3:
        case 7:
            op_thread(t, k, false, fail);
            break;
        default:
            op_thread(t, k, true, false);
            break;
        }
        test_env_fail_never(&te);
        check_counts(t);
    }
    drain(t);
    idem_keylock_free(t);
    CHECK(atomic_load(&te.live) == 0);
    return 0;
}
