/* Header names and lists, as HTTP compares them: names ignore ASCII case,
 * a list is comma-separated elements with optional spaces and tabs around
 * them (RFC 9110 5.6.1). Shared by the engine and idemproxy. */
#include <string.h>
#include <strings.h>

#include "idem/engine.h"
#include "internal.h"
#include "record.h"

/* c in lower case, for ASCII letters. */
static inline unsigned char lower(unsigned char c)
{
    return c >= 'A' && c <= 'Z' ? (unsigned char)(c | 0x20) : c;
}

/* One pass, no strlen: most calls (a header against a name it is not)
 * stop at the first byte. */
bool idem__name_is(const char *name, size_t len, const char *want)
{
    size_t i;

    if (!name)
        return false;
    for (i = 0; i < len; i++)
        if (!want[i] ||
            lower((unsigned char)name[i]) != lower((unsigned char)want[i]))
            return false;
    return want[len] == '\0';
}

/* The list element after *at in value[0..len), spaces and tabs trimmed,
 * as [*start, *end); false at the list's end. Empty elements are skipped
 * where they lead; a trailing one comes back empty. */
static bool next_element(const char *value, size_t len, size_t *at,
                         size_t *start, size_t *end)
{
    size_t i = *at;

    if (i >= len)
        return false;
    while (i < len && (value[i] == ' ' || value[i] == '\t' || value[i] == ','))
        i++;
    *start = i;
    while (i < len && value[i] != ',')
        i++;
    *end = i;
    while (*end > *start && (value[*end - 1] == ' ' || value[*end - 1] == '\t'))
        (*end)--;
    *at = i;
    return true;
}

static bool element_is(const char *value, size_t start, size_t end,
                       const char *token, size_t tlen)
{
    return end - start == tlen && strncasecmp(value + start, token, tlen) == 0;
}

bool idem__list_has(const char *value, size_t len, const char *token,
                    size_t tlen)
{
    size_t at = 0, start, end;

    while (next_element(value, len, &at, &start, &end))
        if (element_is(value, start, end, token, tlen))
            return true;
    return false;
}

bool idem__list_only(const char *value, size_t len, const char *token,
                     size_t tlen)
{
    size_t at = 0, start, end;

    while (next_element(value, len, &at, &start, &end))
        if (end > start && !element_is(value, start, end, token, tlen))
            return false;
    return true;
}

bool idem_header_is_hop_by_hop(const char *name, size_t len)
{
    /* by length first: most names match none, with no comparison */
    if (!name)
        return false;
    switch (len) {
    case 2:
        return IDEM__NAME_IS(name, len, "TE");
    case 7:
        return IDEM__NAME_IS(name, len, "Trailer") ||
               IDEM__NAME_IS(name, len, "Upgrade");
    case 10:
        return IDEM__NAME_IS(name, len, "Connection") ||
               IDEM__NAME_IS(name, len, "Keep-Alive");
    case 16:
        return IDEM__NAME_IS(name, len, "Proxy-Connection");
    case 17:
        return IDEM__NAME_IS(name, len, "Transfer-Encoding");
    default:
        return false;
    }
}

bool idem_header_name_is(const char *name, size_t len, const char *want)
{
    return want && idem__name_is(name, len, want);
}

bool idem_header_list_has(const char *value, size_t len, const char *token,
                          size_t tlen)
{
    return (value || !len) && (token || !tlen) &&
           idem__list_has(value, len, token, tlen);
}

bool idem_header_list_only(const char *value, size_t len, const char *token,
                           size_t tlen)
{
    return (value || !len) && (token || !tlen) &&
           idem__list_only(value, len, token, tlen);
}

bool idem_header_is_token(const char *s, size_t len)
{
    return (s || !len) && idem__is_token(s, len);
}
