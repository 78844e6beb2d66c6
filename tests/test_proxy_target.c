/* Request targets (src/proxy/target.c): the three forms accepted, every
 * ambiguous path refused, prefixes matched on the decoded path; and the
 * request reader's judgement of a whole head (http_reader_judge: Host,
 * CONNECT, the origin-form an absolute-form becomes) and of field names. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "http.h"
#include "target.h"

static int judge(const char *raw, bool options, struct target *t,
                 const char **why)
{
    return target_parse(raw, strlen(raw), options, t, why);
}

static void assert_accepted(const char *raw)
{
    const char *why = NULL;
    struct target t;

    if (judge(raw, false, &t, &why) != 0)
        fail_msg("%s refused: %s", raw, why);
}

static void assert_refused(const char *raw, const char *want)
{
    const char *why = NULL;
    struct target t;

    if (judge(raw, false, &t, &why) == 0)
        fail_msg("%s accepted", raw);
    assert_string_equal(why, want);
}

static void test_origin_form_accepted(void **state)
{
    static const char *const ok[] = {
        "/",     "/a",          "/a/b/",    "/a?x=/../..&y=//", "/a%20b",
        "/...",  "/a.b/.c/..d", "/a;v=1/b", "/a?q=%2f",         "/%41%62",
        "/a/b?", "/~user/%7e",  "/?x",
    };
    const char *why = NULL;
    struct target t;

    (void)state;
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
        assert_accepted(ok[i]);
    assert_int_equal(judge("/a/b?x=1", false, &t, &why), 0);
    assert_int_equal(t.form, TARGET_ORIGIN);
    assert_int_equal(t.path_off, 0);
    assert_int_equal(t.path_len, 4);
    assert_int_equal(t.authority_len, 0);
    assert_false(t.slash);
}

static void test_ambiguous_paths_refused(void **state)
{
    static const char *const bad[] = {
        "/x/../payments", "/./payments",   "/payments/.",  "/payments/..",
        "//payments",     "/a//b",         "/a\\b",        "/a%5cb",
        "/a%5Cb",         "/a%2fb",        "/a%2Fb",       "/%2e/payments",
        "/%2E%2E/x",      "/.%2e/x",       "/a/%2e",       "/a%00",
        "/a%0a",          "/a%7f",         "/a%",          "/a%2",
        "/a%g1",          "/..;/payments", "/;x/payments", "/.;a/b",
        "/a#b",           "/a?b#c",        "/pay\\ments",  "/a\tb",
    };

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_refused(bad[i], "the request target is ambiguous");
}

static void test_absolute_form(void **state)
{
    static const char raw[] = "http://example.com/payments/charge?x=1";
    const char *why = NULL;
    struct target t;

    (void)state;
    assert_int_equal(judge(raw, false, &t, &why), 0);
    assert_int_equal(t.form, TARGET_ABSOLUTE);
    assert_int_equal(t.authority_off, 7);
    assert_int_equal(t.authority_len, 11);
    assert_int_equal(t.path_off, 18);
    assert_int_equal(t.path_len, 16); /* "/payments/charge" */
    assert_false(t.slash);
    assert_int_equal(judge("HTTPS://h:8080", false, &t, &why), 0);
    assert_int_equal(t.authority_off, 8);
    assert_int_equal(t.authority_len, 6);
    assert_true(t.slash);
    assert_int_equal(t.path_len, 0);
    assert_int_equal(judge("http://[::1]:80?q", false, &t, &why), 0);
    assert_true(t.slash);
    assert_int_equal(t.path_off, 15); /* after "http://[::1]:80" */
    assert_refused("http://h/a/../payments", "the request target is ambiguous");
    assert_refused("http://h//payments", "the request target is ambiguous");
    assert_refused("http:///payments", "the request target has no host");
    assert_refused("http://?x", "the request target has no host");
    assert_refused("http://u:p@h/", "the request target's host is not valid");
    assert_refused("http://h%41/", "the request target's host is not valid");
    assert_refused("ftp://h/", "the request target is not valid");
    assert_refused("http:/h/x", "the request target is not valid");
    assert_refused("example.com/x", "the request target is not valid");
    assert_refused("h:443", "the request target is not valid");
}

static void test_asterisk_for_options_only(void **state)
{
    const char *why = NULL;
    struct target t;

    (void)state;
    assert_int_equal(judge("*", true, &t, &why), 0);
    assert_int_equal(t.form, TARGET_ASTERISK);
    assert_int_equal(t.path_len, 1);
    assert_refused("*", "the request target * is for OPTIONS only");
    assert_refused("*x", "the request target is not valid");
}

static bool has_prefix(const char *path, const char *prefix)
{
    return target_has_prefix(path, strlen(path), prefix, strlen(prefix));
}

static void test_prefix_on_decoded_path(void **state)
{
    (void)state;
    assert_true(has_prefix("/payments/charge", "/payments"));
    assert_true(has_prefix("/pay%6dents", "/payments"));
    assert_true(has_prefix("/%70%61%79ments/x", "/payments"));
    assert_true(has_prefix("/payments", "/payments"));
    assert_false(has_prefix("/pay", "/payments"));
    assert_false(has_prefix("/Payments", "/payments"));
    assert_false(has_prefix("/pay%6", "/payments"));
    assert_false(has_prefix("/other", "/payments"));
    assert_true(has_prefix("/anything", ""));
}

static void test_authority(void **state)
{
    (void)state;
    assert_true(target_authority_ok("example.com:8080", 16));
    assert_true(target_authority_ok("[::1]:80", 8));
    assert_true(target_authority_ok("a_b-c~d", 7));
    assert_true(target_authority_ok("", 0));
    assert_false(target_authority_ok("a b", 3));
    assert_false(target_authority_ok("u@h", 3));
    assert_false(target_authority_ok("h/x", 3));
    assert_false(target_authority_ok("a\0b", 3));
}

/* Every byte, alone and between two allowed ones, against the rule: a
 * letter, a digit, or one of "-._~:[]" (nothing else of userinfo, path,
 * query or fragment). */
static void test_authority_every_byte(void **state)
{
    static const char extra[] = "-._~:[]";
    char s[3] = { 'a', 0, '9' };
    int ch;

    (void)state;
    for (ch = 0; ch < 256; ch++) {
        bool want = (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') ||
                    (ch >= 'A' && ch <= 'Z') ||
                    (ch != 0 && memchr(extra, ch, sizeof(extra) - 1));

        s[1] = (char)ch;
        if (target_authority_ok(s + 1, 1) != want ||
            target_authority_ok(s, 3) != want)
            fail_msg("byte 0x%02x: want %d", ch, want);
    }
}

/* -- http_reader_judge and field names --------------------------------- */

static int on_headers_complete(llhttp_t *p)
{
    (void)p;
    return HPE_PAUSED;
}

static const llhttp_settings_t settings = {
    HTTP_READER_CALLBACKS,
    .on_headers_complete = on_headers_complete,
};

/* Read raw's head with a fresh reader r: llhttp's answer. */
static enum llhttp_errno read_head(struct http_reader *r, const char *raw)
{
    size_t used;

    http_reader_init(r, &settings, 4096, 16, NULL);
    return http_reader_execute(r, raw, strlen(raw), &used);
}

/* Judge raw's head: http_reader_judge's status; *origin gets the
 * origin-form (NUL-terminated, in a static buffer), *host the authority. */
static unsigned judge_head(const char *raw, const char **why, char **origin,
                           char **host)
{
    static char o[256], a[256];
    struct http_reader r;
    unsigned rc;

    assert_int_equal(read_head(&r, raw), HPE_PAUSED);
    rc = http_reader_judge(&r, why);
    snprintf(o, sizeof(o), "%.*s", (int)r.head.origin_len,
             r.head.bytes + r.head.origin_off);
    snprintf(a, sizeof(a), "%.*s", (int)r.head.authority_len,
             r.head.bytes + r.head.authority_off);
    *origin = o;
    *host = a;
    http_reader_deinit(&r);
    return rc;
}

static void test_judge_rewrites_absolute_form(void **state)
{
    const char *why = NULL;
    char *origin, *host;

    (void)state;
    assert_int_equal(judge_head("POST /a?b HTTP/1.1\r\nHost: x\r\n\r\n", &why,
                                &origin, &host),
                     0);
    assert_string_equal(origin, "/a?b");
    assert_string_equal(host, "");
    assert_int_equal(judge_head("POST http://Ex.com:81/p/c?x=1 HTTP/1.1\r\n"
                                "Host: other\r\n\r\n",
                                &why, &origin, &host),
                     0);
    assert_string_equal(origin, "/p/c?x=1");
    assert_string_equal(host, "Ex.com:81");
    assert_int_equal(judge_head("GET http://e.com?x=1 HTTP/1.1\r\n"
                                "Host: e.com\r\n\r\n",
                                &why, &origin, &host),
                     0);
    assert_string_equal(origin, "/?x=1");
    assert_string_equal(host, "e.com");
    assert_int_equal(judge_head("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", &why,
                                &origin, &host),
                     0);
    assert_string_equal(origin, "*");
}

static void assert_head_refused(const char *raw, const char *want)
{
    const char *why = NULL;
    char *origin, *host;

    assert_int_equal(judge_head(raw, &why, &origin, &host), 400);
    assert_string_equal(why, want);
}

static void test_judge_host(void **state)
{
    const char *why = NULL;
    char *origin, *host;

    (void)state;
    assert_head_refused("GET / HTTP/1.1\r\n\r\n",
                        "the request has no Host header");
    assert_head_refused("GET http://h/ HTTP/1.1\r\n\r\n",
                        "the request has no Host header");
    assert_head_refused("GET / HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n",
                        "the request has more than one Host header");
    assert_head_refused("GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
                        "the Host header is not valid");
    assert_head_refused("GET / HTTP/1.1\r\nHost: u@h\r\n\r\n",
                        "the Host header is not valid");
    assert_head_refused("CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n",
                        "CONNECT is not supported");
    assert_head_refused("GET * HTTP/1.1\r\nHost: h\r\n\r\n",
                        "the request target * is for OPTIONS only");
    assert_int_equal(judge_head("GET / HTTP/1.0\r\n\r\n", &why, &origin, &host),
                     0);
    assert_int_equal(judge_head("GET / HTTP/1.1\r\nHost: h:80 \t\r\n\r\n", &why,
                                &origin, &host),
                     0);
    assert_int_equal(
        judge_head("GET / HTTP/1.1\r\nHost:\r\n\r\n", &why, &origin, &host), 0);
}

static void test_field_name_not_a_token(void **state)
{
    static const char *const bad[] = {
        "GET / HTTP/1.1\r\nHost: x\r\nX-Foo : bar\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nIdempotency-Key : k\r\n\r\n",
        "GET / HTTP/1.1\r\nHost : x\r\n\r\n",
    };
    struct http_reader r;

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(read_head(&r, bad[i]), HPE_USER);
        assert_true(r.head.bad_name);
        assert_false(r.oom);
        assert_false(r.head.full);
        http_reader_deinit(&r);
    }
    assert_int_equal(
        read_head(&r, "GET / HTTP/1.1\r\nHost: x\r\nX-A!#$%&'*+.^_`|~1: v\r\n"
                      "\r\n"),
        HPE_PAUSED);
    assert_false(r.head.bad_name);
    http_reader_deinit(&r);
}

/* Looking fields up by name: pieces of one name (as llhttp may give
 * them) make one field; a name is found whatever its case, whatever its
 * length (64 and past); a name no field has, of a length some field has
 * or none has, is not; and a reset head holds nothing. */
static void test_head_lookup(void **state)
{
    static const char long_name[] = "X-Long-Name-Of-Seventy-Bytes-"
                                    "Xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";
    struct http_head h;
    const char *v;
    size_t len;

    (void)state;
    assert_int_equal(strlen(long_name), 70);
    http_head_init(&h, 4096, 16);
    assert_int_equal(http_head_method(&h, "POST", 4), 0);
    assert_int_equal(http_head_target(&h, "/pay", 4), 0);
    assert_int_equal(http_head_field(&h, "Idem", 4), 0);
    assert_int_equal(http_head_field(&h, "potency-Key", 11), 0);
    assert_int_equal(http_head_value(&h, "k1", 2), 0);
    assert_int_equal(http_head_field(&h, long_name, 70), 0);
    assert_int_equal(http_head_value(&h, "long", 4), 0);
    assert_int_equal(http_head_field(&h, "Host", 4), 0);
    assert_int_equal(http_head_value(&h, "h", 1), 0);
    assert_int_equal(h.nfields, 3);
    v = http_head_get(&h, "IDEMPOTENCY-KEY", &len);
    assert_non_null(v);
    assert_memory_equal(v, "k1", len);
    v = http_head_get(&h, long_name, &len);
    assert_non_null(v);
    assert_memory_equal(v, "long", len);
    assert_non_null(http_head_get(&h, "host", &len));
    assert_null(http_head_get(&h, "Idem", &len));   /* a piece, not a name */
    assert_null(http_head_get(&h, "Date", &len));   /* Host's length */
    assert_null(http_head_get(&h, "Expect", &len)); /* 6: 70 % 64 */
    assert_null(http_head_get(&h, "X", &len));      /* no name of length 1 */
    assert_int_equal(http_head_count(&h, "host"), 1);
    assert_int_equal(http_head_count(&h, "Upgrade"), 0);
    http_head_reset(&h);
    assert_null(http_head_get(&h, "Host", &len));
    assert_int_equal(http_head_count(&h, "Host"), 0);
    http_head_deinit(&h);
}

static void test_date_is_imf_fixdate(void **state)
{
    const char *d = http_date();
    int day, year, h, m, s;
    char wd[4], mon[4];

    (void)state;
    assert_int_equal(strlen(d), 29);
    assert_int_equal(sscanf(d, "%3s, %2d %3s %4d %2d:%2d:%2d GMT", wd, &day,
                            mon, &year, &h, &m, &s),
                     7);
    assert_true(strstr("SunMonTueWedThuFriSat", wd) != NULL);
    assert_true(strstr("JanFebMarAprMayJunJulAugSepOctNovDec", mon) != NULL);
    assert_true(year >= 2024);
    assert_string_equal(d + 25, " GMT");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_origin_form_accepted),
        cmocka_unit_test(test_ambiguous_paths_refused),
        cmocka_unit_test(test_absolute_form),
        cmocka_unit_test(test_asterisk_for_options_only),
        cmocka_unit_test(test_prefix_on_decoded_path),
        cmocka_unit_test(test_authority),
        cmocka_unit_test(test_authority_every_byte),
        cmocka_unit_test(test_judge_rewrites_absolute_form),
        cmocka_unit_test(test_judge_host),
        cmocka_unit_test(test_field_name_not_a_token),
        cmocka_unit_test(test_head_lookup),
        cmocka_unit_test(test_date_is_imf_fixdate),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
