/* libFuzzer target: Idempotency-Key parsing. Any accepted key is 1..max
 * visible ASCII characters, and quoting it as an sf-string parses back to
 * the same key. Disagreement aborts. */
#include <stdint.h>

#include "fuzz.h"
#include <stdlib.h>
#include <string.h>

#include "idem/engine.h"

/* Quote key as an sf-string into out (room for 2 * klen + 2). */
static size_t quote(const char *key, size_t klen, char *out)
{
    size_t i, n = 0;

    out[n++] = '"';
    for (i = 0; i < klen; i++) {
        if (key[i] == '"' || key[i] == '\\')
            out[n++] = '\\';
        out[n++] = key[i];
    }
    out[n++] = '"';
    return n;
}

static void check_rules(const uint8_t *data, size_t size,
                        const struct idem_key_rules *rules)
{
    char key[IDEM_KEY_MAX_CAP], again[IDEM_KEY_MAX_CAP];
    char quoted[2 * IDEM_KEY_MAX_CAP + 2];
    size_t klen = 0, klen2 = 0, max, i;
    const char *reason = NULL;
    int rc;

    max = rules->max_len ? rules->max_len : IDEM_KEY_MAX_LEN;
    rc = idem_key_parse((const char *)data, size, rules, key, &klen, &reason);
    if (rc != IDEM_OK) {
        CHECK(rc == IDEM_EINVAL && reason && *reason);
        return;
    }
    CHECK(klen >= 1 && klen <= max);
    for (i = 0; i < klen; i++)
        CHECK(key[i] > 0x20 && key[i] < 0x7f);
    rc = idem_key_parse(quoted, quote(key, klen, quoted), rules, again, &klen2,
                        &reason);
    CHECK(rc == IDEM_OK && klen2 == klen && memcmp(key, again, klen) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct idem_key_rules loose = { 0 }, strict = { .sf_string_only = true };
    struct idem_key_rules small = { .max_len = 8 };

    check_rules(data, size, &loose);
    check_rules(data, size, &strict);
    check_rules(data, size, &small);
    return 0;
}
