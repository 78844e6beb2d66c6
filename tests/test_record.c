/* Record encoding: round trips, one encoding per record, and refusal of
 * every malformed input, truncation by truncation. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "record.h"

#define S(s) (s), (sizeof(s) - 1)

static const struct idem_header hdrs[] = {
    { S("Content-Type"), S("application/json") },
    { S("Set-Cookie"), S("a=1") },
    { S("Set-Cookie"), S("b=2") }, /* repeats keep their order */
    { S("X-Empty"), "", 0 },
};

static struct idem__record done_record(void)
{
    struct idem__record r = {
        .state = IDEM__REC_DONE,
        .created_ms = 1763900000000u,
        .expires_ms = 1763986400000u,
        .status = 201,
        .nheaders = 4,
        .headers = hdrs,
        .body = "{\"id\":42}",
        .body_len = 9,
    };
    memset(r.fingerprint, 0xab, sizeof(r.fingerprint));
    memset(r.token, 0x5c, sizeof(r.token));
    return r;
}

/* Encode r into a fresh heap buffer of exactly its size. */
static uint8_t *encode(const struct idem__record *r, size_t *len)
{
    size_t n = idem__record_size(r);
    uint8_t *buf;

    assert_true(n > 0);
    buf = malloc(n);
    assert_non_null(buf);
    assert_int_equal(idem__record_encode(r, buf, n, len), IDEM_OK);
    assert_int_equal(*len, n);
    return buf;
}

static void test_done_round_trip(void **state)
{
    struct idem__record r = done_record();
    struct idem__record_view v;
    struct idem__header_iter it;
    struct idem_header h;
    size_t len, i = 0;
    uint8_t *buf = encode(&r, &len);

    (void)state;
    assert_int_equal(idem__record_decode(buf, len, &v), IDEM_OK);
    assert_int_equal(v.rec.state, IDEM__REC_DONE);
    assert_memory_equal(v.rec.fingerprint, r.fingerprint, IDEM_FP_LEN);
    assert_memory_equal(v.rec.token, r.token, IDEM__TOKEN_LEN);
    assert_int_equal(v.rec.created_ms, r.created_ms);
    assert_int_equal(v.rec.expires_ms, r.expires_ms);
    assert_int_equal(v.rec.status, 201);
    assert_int_equal(v.rec.nheaders, 4);
    assert_int_equal(v.rec.body_len, 9);
    assert_memory_equal(v.rec.body, "{\"id\":42}", 9);
    /* the body is a view into the encoded bytes, not a copy */
    assert_ptr_equal(v.rec.body, buf + len - 9);
    idem__record_headers(&v, &it);
    while (idem__header_next(&it, &h)) {
        assert_true(i < 4);
        assert_int_equal(h.name_len, hdrs[i].name_len);
        assert_memory_equal(h.name, hdrs[i].name, h.name_len);
        assert_int_equal(h.value_len, hdrs[i].value_len);
        assert_memory_equal(h.value, hdrs[i].value, h.value_len);
        i++;
    }
    assert_int_equal(i, 4);
    free(buf);
}

static void test_inflight_round_trip(void **state)
{
    struct idem__record r = { .state = IDEM__REC_INFLIGHT,
                              .created_ms = 5,
                              .expires_ms = UINT64_MAX };
    struct idem__record_view v;
    size_t len;
    uint8_t *buf = encode(&r, &len);

    (void)state;
    assert_int_equal(idem__record_decode(buf, len, &v), IDEM_OK);
    assert_int_equal(v.rec.state, IDEM__REC_INFLIGHT);
    assert_int_equal(v.rec.expires_ms, UINT64_MAX);
    assert_int_equal(v.rec.status, 0);
    assert_null(v.rec.body);
    free(buf);
}

/* decode then encode gives back the very same bytes */
static void test_one_encoding_per_record(void **state)
{
    struct idem__record r = done_record();
    struct idem_header copy[4];
    struct idem__record_view v;
    struct idem__header_iter it;
    size_t len, len2, i = 0;
    uint8_t *buf = encode(&r, &len), *buf2;

    (void)state;
    assert_int_equal(idem__record_decode(buf, len, &v), IDEM_OK);
    idem__record_headers(&v, &it);
    while (idem__header_next(&it, &copy[i]))
        i++;
    v.rec.headers = copy;
    buf2 = encode(&v.rec, &len2);
    assert_int_equal(len, len2);
    assert_memory_equal(buf, buf2, len);
    free(buf);
    free(buf2);
}

static void test_every_truncation_refused(void **state)
{
    struct idem__record r = done_record();
    struct idem__record_view v;
    size_t len, n;
    uint8_t *buf = encode(&r, &len), *longer;

    (void)state;
    for (n = 0; n < len; n++) {
        uint8_t *cut = malloc(n ? n : 1); /* exact size: ASan sees overreads */

        memcpy(cut, buf, n);
        assert_int_equal(idem__record_decode(cut, n, &v), IDEM_EINVAL);
        free(cut);
    }
    longer = malloc(len + 1);
    memcpy(longer, buf, len);
    longer[len] = 0;
    assert_int_equal(idem__record_decode(longer, len + 1, &v), IDEM_EINVAL);
    free(longer);
    free(buf);
}

/* Flip one byte of a valid encoding at offset off to value b. */
static int decode_patched(size_t off, uint8_t b)
{
    struct idem__record r = done_record();
    struct idem__record_view v;
    size_t len;
    uint8_t *buf = encode(&r, &len);
    int rc;

    buf[off] = b;
    rc = idem__record_decode(buf, len, &v);
    free(buf);
    return rc;
}

static void test_bad_bytes_refused(void **state)
{
    (void)state;
    assert_int_equal(decode_patched(0, 'X'), IDEM_EINVAL); /* magic */
    assert_int_equal(decode_patched(2, 2), IDEM_EINVAL);   /* version */
    assert_int_equal(decode_patched(3, 0), IDEM_EINVAL);   /* state */
    assert_int_equal(decode_patched(3, IDEM__REC_INFLIGHT), IDEM_EINVAL);
    assert_int_equal(decode_patched(3, 3), IDEM_EINVAL);
    assert_int_equal(decode_patched(4, 2), IDEM_EINVAL); /* unknown flag */
    /* body omitted, yet a body is there */
    assert_int_equal(decode_patched(4, IDEM__REC_BODY_OMITTED), IDEM_EINVAL);
}

static void test_body_omitted_flag(void **state)
{
    struct idem__record r = done_record();
    struct idem__record_view v;
    size_t len;
    uint8_t *buf;

    (void)state;
    r.flags = IDEM__REC_BODY_OMITTED;
    assert_int_equal(idem__record_size(&r), 0); /* with a body: refused */
    r.body = NULL, r.body_len = 0;
    buf = encode(&r, &len);
    assert_int_equal(idem__record_decode(buf, len, &v), IDEM_OK);
    assert_int_equal(v.rec.flags, IDEM__REC_BODY_OMITTED);
    assert_memory_equal(idem__record_token(buf, len), r.token, IDEM__TOKEN_LEN);
    assert_null(idem__record_token(buf, 10));
    free(buf);
}

static void test_crafted_inputs_refused(void **state)
{
    uint8_t buf[128];
    struct idem__record_view v;
    size_t n;

    (void)state;
    memset(buf, 0, sizeof(buf));
    buf[0] = 'I', buf[1] = 'K', buf[2] = 1, buf[3] = IDEM__REC_INFLIGHT;
    n = 53; /* after the fixed part */
    buf[n++] = 0, buf[n++] = 0, buf[n++] = 0, buf[n++] = 0, buf[n++] = 0;
    assert_int_equal(idem__record_decode(buf, n, &v), IDEM_OK);
    /* the same number with a padded varint: 0 as 0x80 0x00 */
    buf[53] = 0x80, buf[54] = 0x00;
    assert_int_equal(idem__record_decode(buf, n + 1, &v), IDEM_EINVAL);
    /* a varint longer than 64 bits */
    memset(buf + 53, 0xff, 10);
    buf[62] = 0x02;
    assert_int_equal(idem__record_decode(buf, 63 + 4, &v), IDEM_EINVAL);
    /* done, status 200, one header whose length runs past the end */
    n = 53;
    buf[3] = IDEM__REC_DONE;
    buf[n++] = 0, buf[n++] = 0, buf[n++] = 0xc8, buf[n++] = 0x01;
    buf[n++] = 1, buf[n++] = 0x7f, buf[n++] = 'a';
    assert_int_equal(idem__record_decode(buf, n, &v), IDEM_EINVAL);
    /* the same header made valid, then given a CR in its value */
    buf[58] = 1;
    n = 59, buf[n++] = 'a', buf[n++] = 2, buf[n++] = 'o', buf[n++] = 'k';
    buf[n++] = 0;
    assert_int_equal(idem__record_decode(buf, n, &v), IDEM_OK);
    buf[62] = '\r';
    assert_int_equal(idem__record_decode(buf, n, &v), IDEM_EINVAL);
    buf[62] = 'k', buf[59] = ':'; /* a colon in a header name */
    assert_int_equal(idem__record_decode(buf, n, &v), IDEM_EINVAL);
    assert_int_equal(idem__record_decode(NULL, 0, &v), IDEM_EINVAL);
    assert_int_equal(idem__record_decode(buf, n, NULL), IDEM_EINVAL);
}

/* Every byte, at every place of names and values 1 to 9 bytes long (the
 * checks take four bytes at a time, then the rest): a name takes the
 * RFC 9110 tchar only, a value all but NUL, LF and CR. */
static void test_every_byte_classified(void **state)
{
    static const char tchar[] = "!#$%&'*+-.^_`|~0123456789"
                                "abcdefghijklmnopqrstuvwxyz"
                                "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    char name[9], value[9];
    size_t len, at;
    int c;

    (void)state;
    for (c = 0; c < 256; c++) {
        bool is_tchar = c != 0 && strchr(tchar, c) != NULL;
        bool value_ok = c != 0 && c != '\n' && c != '\r';

        for (len = 1; len <= sizeof(name); len++)
            for (at = 0; at < len; at++) {
                struct idem_header h = { name, len, value, len };

                memset(name, 'a', sizeof(name));
                memset(value, 'v', sizeof(value));
                name[at] = (char)c;
                assert_int_equal(idem__is_token(name, len), is_tchar);
                assert_int_equal(idem__record_header_ok(&h), is_tchar);
                memset(name, 'a', sizeof(name));
                value[at] = (char)c;
                assert_int_equal(idem__record_header_ok(&h), value_ok);
            }
    }
}

static void test_unencodable_records(void **state)
{
    static const struct idem_header bad_name[] = { { S("Bad Name"), S("v") } };
    static const struct idem_header bad_value[] = { { S("X"), S("a\r\nb") } };
    struct idem__record r;
    uint8_t buf[256];
    size_t len;

    (void)state;
    r = done_record(), r.status = 99;
    assert_int_equal(idem__record_size(&r), 0);
    r.status = 1000;
    assert_int_equal(idem__record_size(&r), 0);
    r = done_record(), r.headers = bad_name, r.nheaders = 1;
    assert_int_equal(idem__record_size(&r), 0);
    r.headers = bad_value;
    assert_int_equal(idem__record_size(&r), 0);
    r = done_record(), r.nheaders = IDEM__RECORD_MAX_HEADERS + 1;
    assert_int_equal(idem__record_size(&r), 0);
    r = done_record(), r.body = NULL;
    assert_int_equal(idem__record_size(&r), 0);
    r = (struct idem__record){ .state = IDEM__REC_INFLIGHT,
                               .body = "x",
                               .body_len = 1 };
    assert_int_equal(idem__record_size(&r), 0);
    r.state = 7, r.body = NULL, r.body_len = 0;
    assert_int_equal(idem__record_size(&r), 0);
    assert_int_equal(idem__record_size(NULL), 0);
    r = done_record();
    assert_int_equal(
        idem__record_encode(&r, buf, idem__record_size(&r) - 1, &len),
        IDEM_EINVAL);
    assert_int_equal(idem__record_encode(&r, buf, sizeof(buf), NULL),
                     IDEM_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_done_round_trip),
        cmocka_unit_test(test_inflight_round_trip),
        cmocka_unit_test(test_one_encoding_per_record),
        cmocka_unit_test(test_every_truncation_refused),
        cmocka_unit_test(test_bad_bytes_refused),
        cmocka_unit_test(test_body_omitted_flag),
        cmocka_unit_test(test_crafted_inputs_refused),
        cmocka_unit_test(test_unencodable_records),
        cmocka_unit_test(test_every_byte_classified),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
