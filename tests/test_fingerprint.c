/* Fingerprints and scopes: the framing matches its specification, every
 * part counts, absent differs from empty, streaming equals one shot. */
#include <openssl/evp.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "fingerprint.h"

#define S(s) (s), (sizeof(s) - 1)

static struct idem__fp_input base(void)
{
    static const struct idem_header extra[] = {
        { S("X-Tenant"), S("t1") },
    };
    struct idem__fp_input in = {
        .method = "POST",
        .method_len = 4,
        .target = "/orders?x=1",
        .target_len = 11,
        .content_type = "application/json",
        .content_type_len = 16,
        .extra = extra,
        .nextra = 1,
    };
    return in;
}

static void digest(const struct idem__fp_input *in, const char *body,
                   uint8_t *out)
{
    assert_int_equal(idem__fp_digest(in, body, strlen(body), out), IDEM_OK);
}

static void frame(EVP_MD_CTX *ctx, const char *p, size_t len)
{
    unsigned char head[5] = { 1, (unsigned char)(len >> 24),
                              (unsigned char)(len >> 16),
                              (unsigned char)(len >> 8), (unsigned char)len };

    EVP_DigestUpdate(ctx, head, 5);
    EVP_DigestUpdate(ctx, p, len);
}

/* The encoding, written out independently of src/fingerprint.c. */
static void test_matches_specified_encoding(void **state)
{
    struct idem__fp_input in = base();
    uint8_t got[IDEM_FP_LEN], want[IDEM_FP_LEN];
    unsigned int n;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();

    (void)state;
    EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
    EVP_DigestUpdate(ctx, "idem-fingerprint/1", 19); /* with its NUL */
    frame(ctx, "POST", 4);
    frame(ctx, "/orders?x=1", 11);
    frame(ctx, "application/json", 16);
    frame(ctx, "x-tenant", 8); /* names are lower-cased */
    frame(ctx, "t1", 2);
    EVP_DigestUpdate(ctx, "{\"a\":1}", 7);
    EVP_DigestFinal_ex(ctx, want, &n);
    EVP_MD_CTX_free(ctx);
    digest(&in, "{\"a\":1}", got);
    assert_memory_equal(got, want, IDEM_FP_LEN);
}

static void test_every_part_counts(void **state)
{
    static const struct idem_header other[] = { { S("X-Tenant"), S("t2") } };
    static const struct idem_header absent[] = { { S("X-Tenant"), NULL, 0 } };
    static const struct idem_header empty[] = { { S("X-Tenant"), "", 0 } };
    struct idem__fp_input in;
    uint8_t ref[IDEM_FP_LEN], d[IDEM_FP_LEN];

    (void)state;
    in = base();
    digest(&in, "body", ref);
    digest(&in, "body", d);
    assert_memory_equal(ref, d, IDEM_FP_LEN);
    digest(&in, "body2", d);
    assert_memory_not_equal(ref, d, IDEM_FP_LEN);
    in.method = "PATCH", in.method_len = 5;
    digest(&in, "body", d);
    assert_memory_not_equal(ref, d, IDEM_FP_LEN);
    in = base(), in.target_len = 7; /* "/orders" without the query */
    digest(&in, "body", d);
    assert_memory_not_equal(ref, d, IDEM_FP_LEN);
    in = base(), in.content_type = NULL, in.content_type_len = 0;
    digest(&in, "body", ref);
    in.content_type = "";
    digest(&in, "body", d);
    assert_memory_not_equal(ref, d, IDEM_FP_LEN); /* absent != empty */
    in = base(), in.extra = other;
    digest(&in, "body", d);
    in.extra = absent;
    digest(&in, "body", ref);
    assert_memory_not_equal(ref, d, IDEM_FP_LEN);
    in.extra = empty;
    digest(&in, "body", d);
    assert_memory_not_equal(ref, d, IDEM_FP_LEN);
}

static void test_fields_do_not_run_together(void **state)
{
    struct idem__fp_input a = base(), b = base();
    uint8_t da[IDEM_FP_LEN], db[IDEM_FP_LEN];

    (void)state;
    a.target = "/ab", a.target_len = 3;
    b.target = "/a", b.target_len = 2;
    digest(&a, "c", da);
    digest(&b, "bc", db);
    assert_memory_not_equal(da, db, IDEM_FP_LEN);
}

static void test_header_names_are_case_insensitive(void **state)
{
    static const struct idem_header lower[] = { { S("x-tenant"), S("t1") } };
    struct idem__fp_input in = base();
    uint8_t a[IDEM_FP_LEN], b[IDEM_FP_LEN];

    (void)state;
    digest(&in, "", a);
    in.extra = lower;
    digest(&in, "", b);
    assert_memory_equal(a, b, IDEM_FP_LEN);
}

static void test_streaming_equals_one_shot(void **state)
{
    struct idem__fp_input in = base();
    const char body[] = "a body that arrives one byte at a time";
    uint8_t one[IDEM_FP_LEN], streamed[IDEM_FP_LEN];
    struct idem__fp fp = { .ctx = NULL };
    size_t i;

    (void)state;
    digest(&in, body, one);
    assert_int_equal(idem__fp_begin(&fp, &in), IDEM_OK);
    for (i = 0; i < strlen(body); i++)
        assert_int_equal(idem__fp_update(&fp, body + i, 1), IDEM_OK);
    assert_int_equal(idem__fp_update(&fp, NULL, 0), IDEM_OK);
    assert_int_equal(idem__fp_final(&fp, streamed), IDEM_OK);
    assert_memory_equal(one, streamed, IDEM_FP_LEN);
    /* finished: the context is gone */
    assert_null(fp.ctx);
    assert_int_equal(idem__fp_update(&fp, "x", 1), IDEM_EINVAL);
    assert_int_equal(idem__fp_final(&fp, streamed), IDEM_EINVAL);
    idem__fp_cancel(&fp);
}

static void test_bad_arguments(void **state)
{
    struct idem__fp_input in = base();
    struct idem__fp fp = { .ctx = NULL };
    uint8_t d[IDEM_FP_LEN];

    (void)state;
    assert_int_equal(idem__fp_begin(NULL, &in), IDEM_EINVAL);
    assert_int_equal(idem__fp_begin(&fp, NULL), IDEM_EINVAL);
    in.extra = NULL;
    assert_int_equal(idem__fp_begin(&fp, &in), IDEM_EINVAL);
    in = base(), in.method = NULL; /* length 4 without bytes */
    assert_int_equal(idem__fp_digest(&in, "", 0, d), IDEM_EINVAL);
    in = base();
    assert_int_equal(idem__fp_begin(&fp, &in), IDEM_OK);
    assert_int_equal(idem__fp_update(&fp, NULL, 3), IDEM_EINVAL);
    assert_int_equal(idem__fp_final(&fp, NULL), IDEM_EINVAL);
    idem__fp_cancel(&fp); /* frees it; a second cancel is harmless */
    idem__fp_cancel(&fp);
    idem__fp_cancel(NULL);
    assert_int_equal(idem__scope_digest(NULL, 0, NULL, 1, d), IDEM_EINVAL);
    assert_int_equal(idem__scope_digest(NULL, 0, NULL, 0, NULL), IDEM_EINVAL);
}

static void test_scopes(void **state)
{
    static const struct idem_header alice[] = { { S("Authorization"),
                                                  S("Bearer alice") } };
    static const struct idem_header bob[] = { { S("authorization"),
                                                S("Bearer bob") } };
    static const struct idem_header anon[] = { { S("Authorization"), NULL,
                                                 0 } };
    uint8_t a[IDEM__SCOPE_LEN], a2[IDEM__SCOPE_LEN], b[IDEM__SCOPE_LEN];
    uint8_t n[IDEM__SCOPE_LEN], r[IDEM__SCOPE_LEN];

    (void)state;
    assert_int_equal(idem__scope_digest(NULL, 0, alice, 1, a), IDEM_OK);
    assert_int_equal(idem__scope_digest(NULL, 0, alice, 1, a2), IDEM_OK);
    assert_memory_equal(a, a2, IDEM__SCOPE_LEN);
    assert_int_equal(idem__scope_digest(NULL, 0, bob, 1, b), IDEM_OK);
    assert_memory_not_equal(a, b, IDEM__SCOPE_LEN);
    assert_int_equal(idem__scope_digest(NULL, 0, anon, 1, n), IDEM_OK);
    assert_memory_not_equal(a, n, IDEM__SCOPE_LEN);
    assert_int_equal(idem__scope_digest(S("/payments"), alice, 1, r), IDEM_OK);
    assert_memory_not_equal(a, r, IDEM__SCOPE_LEN);
}

/* The thread's last scope is remembered: a hit must be what a fresh digest
 * gives, and only for exactly the same inputs. */
static void test_scope_memo_is_exact(void **state)
{
    static char big[700];
    static const struct idem_header empty[] = { { S("Authorization"), "", 0 } };
    static const struct idem_header absent[] = { { S("Authorization"), NULL,
                                                   0 } };
    struct idem_header alice = { S("Authorization"), S("Bearer alice") },
                       long_value = { S("Authorization"), big, sizeof(big) };
    uint8_t first[IDEM__SCOPE_LEN], again[IDEM__SCOPE_LEN],
        other[IDEM__SCOPE_LEN];

    (void)state;
    memset(big, 'v', sizeof(big));
    assert_int_equal(idem__scope_digest(NULL, 0, &alice, 1, first), IDEM_OK);
    assert_int_equal(idem__scope_digest(NULL, 0, empty, 1, other), IDEM_OK);
    assert_int_equal(idem__scope_digest(NULL, 0, absent, 1, again), IDEM_OK);
    assert_memory_not_equal(other, again, IDEM__SCOPE_LEN); /* "" vs none */
    assert_int_equal(idem__scope_digest(NULL, 0, &alice, 1, again), IDEM_OK);
    assert_memory_equal(first, again, IDEM__SCOPE_LEN);
    assert_int_equal(idem__scope_digest(S("/a"), &alice, 1, again), IDEM_OK);
    assert_memory_not_equal(first, again, IDEM__SCOPE_LEN);
    /* too long to remember: computed each time, the same each time */
    assert_int_equal(idem__scope_digest(NULL, 0, &long_value, 1, first),
                     IDEM_OK);
    assert_int_equal(idem__scope_digest(NULL, 0, &long_value, 1, again),
                     IDEM_OK);
    assert_memory_equal(first, again, IDEM__SCOPE_LEN);
    big[699] = 'w';
    assert_int_equal(idem__scope_digest(NULL, 0, &long_value, 1, again),
                     IDEM_OK);
    assert_memory_not_equal(first, again, IDEM__SCOPE_LEN);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matches_specified_encoding),
        cmocka_unit_test(test_every_part_counts),
        cmocka_unit_test(test_fields_do_not_run_together),
        cmocka_unit_test(test_header_names_are_case_insensitive),
        cmocka_unit_test(test_streaming_equals_one_shot),
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_scopes),
        cmocka_unit_test(test_scope_memo_is_exact),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
