/* Idempotency-Key field values: an RFC 8941 sf-string ("abc", with \" and
 * \\ escapes) or, unless rules forbid it, a bare run of visible ASCII as
 * Stripe-style clients send. The key is what the string says, unescaped.
 * Each step answers NULL or the reason the value is refused. */
#include <stdbool.h>
#include <string.h>

#include "idem/engine.h"
#include "internal.h"

static bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

/* Append c to the key: visible ASCII only, at most max characters. */
static const char *key_put(char *out, size_t *n, size_t max, char c)
{
    if (c == ' ')
        return "the key contains a space";
    if ((unsigned char)c <= 0x20 || (unsigned char)c >= 0x7f)
        return "the key contains a character other than visible ASCII";
    if (*n == max)
        return "the key is too long";
    out[(*n)++] = c;
    return NULL;
}

/* p..end holds a whole sf-string, opening quote included. */
static const char *parse_sf_string(const char *p, const char *end, size_t max,
                                   char *out, size_t *n)
{
    const char *reason;

    for (p++; p < end; p++) {
        char c = *p;

        if (c == '"')
            return p + 1 == end ? NULL
                                : "unexpected characters after the quoted key";
        if (c == '\\') {
            if (++p == end || (*p != '"' && *p != '\\'))
                return "invalid escape in the quoted key";
            c = *p;
        }
        if ((reason = key_put(out, n, max, c)))
            return reason;
    }
    return "the quoted key has no closing quote";
}

static const char *parse_bare(const char *p, const char *end, size_t max,
                              char *out, size_t *n)
{
    const char *reason;

    for (; p < end; p++) {
        if (*p == ',')
            return "more than one key in the field";
        if (*p == '"' || *p == '\\')
            return "a quote or backslash in an unquoted key";
        if ((reason = key_put(out, n, max, *p)))
            return reason;
    }
    return NULL;
}

int idem_key_parse(const char *field, size_t flen,
                   const struct idem_key_rules *rules, char *key_out,
                   size_t *klen_out, const char **reason_out)
{
    size_t max = rules && rules->max_len ? rules->max_len : IDEM_KEY_MAX_LEN;
    const char *reason, *p, *end;
    size_t n = 0;

    if ((!field && flen) || !key_out || !klen_out || max > IDEM_KEY_MAX_CAP)
        return IDEM_EINVAL;
    p = field ? field : "";
    end = p + flen;
    while (p < end && is_ows(*p))
        p++;
    while (end > p && is_ows(end[-1]))
        end--;
    if (p == end)
        reason = "the key is empty";
    else if (*p == '"')
        reason = parse_sf_string(p, end, max, key_out, &n);
    else if (rules && rules->sf_string_only)
        reason = "the key must be a quoted string";
    else
        reason = parse_bare(p, end, max, key_out, &n);
    if (!reason && n == 0)
        reason = "the key is empty";
    if (reason) {
        if (reason_out)
            *reason_out = reason;
        return IDEM_EINVAL;
    }
    *klen_out = n;
    return IDEM_OK;
}
