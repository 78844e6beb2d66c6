/* Idempotency-Key parsing: sf-strings, bare values, every refusal. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "idem/engine.h"

static char key[IDEM_KEY_MAX_CAP];
static size_t klen;
static const char *reason;

static int parse(const char *field, const struct idem_key_rules *rules)
{
    reason = NULL;
    klen = 0;
    return idem_key_parse(field, strlen(field), rules, key, &klen, &reason);
}

static void expect_key(const char *field, const char *want)
{
    assert_int_equal(parse(field, NULL), IDEM_OK);
    assert_int_equal(klen, strlen(want));
    assert_memory_equal(key, want, klen);
}

static void expect_refused(const char *field,
                           const struct idem_key_rules *rules,
                           const char *want_reason)
{
    assert_int_equal(parse(field, rules), IDEM_EINVAL);
    assert_non_null(reason);
    assert_string_equal(reason, want_reason);
}

static void test_sf_strings(void **state)
{
    (void)state;
    expect_key("\"abc\"", "abc");
    expect_key("\"a\\\"b\\\\c\"", "a\"b\\c");
    expect_key(" \t\"8e03978e-40d5\" \t", "8e03978e-40d5");
    expect_key("\"!#$%&'()*+,-./:;<=>?@[]^_`{|}~\"",
               "!#$%&'()*+,-./:;<=>?@[]^_`{|}~");
}

static void test_bare_values(void **state)
{
    (void)state;
    expect_key("8e03978e-40d5-43e8-bc93-6894a57f9324",
               "8e03978e-40d5-43e8-bc93-6894a57f9324");
    expect_key("  order:42/x  ", "order:42/x");
    expect_key("a", "a");
}

static void test_refusals(void **state)
{
    (void)state;
    expect_refused("", NULL, "the key is empty");
    expect_refused(" \t ", NULL, "the key is empty");
    expect_refused("\"\"", NULL, "the key is empty");
    expect_refused("\"abc", NULL, "the quoted key has no closing quote");
    expect_refused("\"abc\\\"", NULL, "the quoted key has no closing quote");
    expect_refused("\"abc\";x=1", NULL,
                   "unexpected characters after the quoted key");
    expect_refused("\"abc\" \"d\"", NULL,
                   "unexpected characters after the quoted key");
    expect_refused("\"a\\nb\"", NULL, "invalid escape in the quoted key");
    expect_refused("\"a b\"", NULL, "the key contains a space");
    expect_refused("a b", NULL, "the key contains a space");
    expect_refused("a\x01"
                   "b",
                   NULL,
                   "the key contains a character other than visible ASCII");
    expect_refused("\"a\x7f\"", NULL,
                   "the key contains a character other than visible ASCII");
    expect_refused("caf\xc3\xa9", NULL,
                   "the key contains a character other than visible ASCII");
    expect_refused("a,b", NULL, "more than one key in the field");
    expect_refused("a\"b", NULL, "a quote or backslash in an unquoted key");
    expect_refused("a\\b", NULL, "a quote or backslash in an unquoted key");
}

static void test_reason_never_echoes_input(void **state)
{
    (void)state;
    assert_int_equal(parse("\"<script>alert(1)</script> \"", NULL),
                     IDEM_EINVAL);
    assert_null(strstr(reason, "script"));
}

static void test_length_bounds(void **state)
{
    struct idem_key_rules eight = { .max_len = 8 };
    char field[IDEM_KEY_MAX_LEN + 3];

    (void)state;
    memset(field, 'k', IDEM_KEY_MAX_LEN);
    field[IDEM_KEY_MAX_LEN] = '\0';
    assert_int_equal(parse(field, NULL), IDEM_OK);
    assert_int_equal(klen, IDEM_KEY_MAX_LEN);
    field[IDEM_KEY_MAX_LEN] = 'k';
    field[IDEM_KEY_MAX_LEN + 1] = '\0';
    expect_refused(field, NULL, "the key is too long");

    assert_int_equal(parse("12345678", &eight), IDEM_OK);
    expect_refused("123456789", &eight, "the key is too long");
    /* escapes count once: \" is one character of the key */
    assert_int_equal(parse("\"1234567\\\"\"", &eight), IDEM_OK);
    assert_int_equal(klen, 8);
    expect_refused("\"12345678\\\\\"", &eight, "the key is too long");
}

static void test_sf_string_only(void **state)
{
    struct idem_key_rules strict = { .sf_string_only = true };

    (void)state;
    expect_refused("abc", &strict, "the key must be a quoted string");
    assert_int_equal(parse("\"abc\"", &strict), IDEM_OK);
    assert_memory_equal(key, "abc", 3);
}

static void test_bad_arguments(void **state)
{
    struct idem_key_rules huge = { .max_len = IDEM_KEY_MAX_CAP + 1 };

    (void)state;
    reason = NULL;
    assert_int_equal(idem_key_parse(NULL, 3, NULL, key, &klen, &reason),
                     IDEM_EINVAL);
    assert_int_equal(idem_key_parse("a", 1, NULL, NULL, &klen, NULL),
                     IDEM_EINVAL);
    assert_int_equal(idem_key_parse("a", 1, NULL, key, NULL, NULL),
                     IDEM_EINVAL);
    assert_int_equal(idem_key_parse("a", 1, &huge, key, &klen, NULL),
                     IDEM_EINVAL);
    assert_int_equal(idem_key_parse(NULL, 0, NULL, key, &klen, &reason),
                     IDEM_EINVAL);
    assert_string_equal(reason, "the key is empty");
    /* reason_out may be NULL */
    assert_int_equal(idem_key_parse("", 0, NULL, key, &klen, NULL),
                     IDEM_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sf_strings),
        cmocka_unit_test(test_bare_values),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_reason_never_echoes_input),
        cmocka_unit_test(test_length_bounds),
        cmocka_unit_test(test_sf_string_only),
        cmocka_unit_test(test_bad_arguments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
