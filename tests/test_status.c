/* status: every code has a distinct name and text; unknown codes are safe. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "idem/idem.h"

#define AS_VALUE(name, value, text) value,
static const int all_codes[] = { IDEM_STATUS_MAP(AS_VALUE) };
#undef AS_VALUE

static void test_names_and_texts_are_distinct(void **state)
{
    size_t n = sizeof(all_codes) / sizeof(all_codes[0]), i, j;

    (void)state;
    for (i = 0; i < n; i++) {
        assert_string_not_equal(idem_status_name(all_codes[i]), "UNKNOWN");
        assert_string_not_equal(idem_strerror(all_codes[i]), "unknown status");
        for (j = 0; j < i; j++) {
            assert_int_not_equal(all_codes[i], all_codes[j]);
            assert_string_not_equal(idem_strerror(all_codes[i]),
                                    idem_strerror(all_codes[j]));
        }
    }
}

static void test_ok_is_zero_errors_negative(void **state)
{
    size_t n = sizeof(all_codes) / sizeof(all_codes[0]), i;

    (void)state;
    assert_int_equal(IDEM_OK, 0);
    assert_string_equal(idem_status_name(IDEM_OK), "OK");
    assert_string_equal(idem_status_name(IDEM_ENOMEM), "ENOMEM");
    for (i = 1; i < n; i++)
        assert_true(all_codes[i] < 0);
}

static void test_unknown_codes(void **state)
{
    (void)state;
    assert_string_equal(idem_strerror(12345), "unknown status");
    assert_string_equal(idem_strerror(-99999), "unknown status");
    assert_string_equal(idem_status_name(7), "UNKNOWN");
}

static void test_version(void **state)
{
    (void)state;
    assert_string_equal(idem_version(), IDEM_VERSION_STRING);
}

static void test_default_env(void **state)
{
    const struct idem_env *env = idem_env_default();
    uint64_t a, b;
    void *p;

    (void)state;
    assert_non_null(env->now_ms);
    assert_non_null(env->wall_ms);
    assert_true(idem_env_wall_ms(NULL) > 1700000000000u); /* after 2023 */
    assert_non_null(env->alloc);
    a = idem_env_now_ms(NULL);
    b = idem_env_now_ms(env);
    assert_true(b >= a);
    p = env->alloc(env->ud, NULL, 16);
    assert_non_null(p);
    memset(p, 1, 16);
    p = env->alloc(env->ud, p, 64);
    assert_non_null(p);
    assert_null(env->alloc(env->ud, p, 0));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names_and_texts_are_distinct),
        cmocka_unit_test(test_ok_is_zero_errors_negative),
        cmocka_unit_test(test_unknown_codes),
        cmocka_unit_test(test_version),
        cmocka_unit_test(test_default_env),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
