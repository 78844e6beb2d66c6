/* Request targets; see target.h. A path is refused rather than
 * normalised: whatever idemproxy made of "/a/../b" or "/a%2fb", some
 * upstream reads it otherwise, and a --require-key route is then one
 * encoding away. */
#include <string.h>
#include <strings.h>

#include "target.h"

#define AMBIGUOUS "the request target is ambiguous"
#define NOT_VALID "the request target is not valid"

static int hex_value(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* The byte at p[i] percent-decoded into *ch_out: how many bytes it took
 * (1, or 3 for an escape), or 0 for a malformed escape. */
static size_t decode_at(const char *p, size_t len, size_t i,
                        unsigned char *ch_out)
{
    int hi, lo;

    if (p[i] != '%') {
        *ch_out = (unsigned char)p[i];
        return 1;
    }
    if (len - i < 3 || (hi = hex_value(p[i + 1])) < 0 ||
        (lo = hex_value(p[i + 2])) < 0)
        return 0;
    *ch_out = (unsigned char)(hi << 4 | lo);
    return 3;
}

static bool is_control(unsigned char ch)
{
    return ch < 0x20 || ch == 0x7f;
}

/* Whether seg[0..n), one segment of a path (between slashes), is plain:
 * no malformed escape, no backslash or control byte and no encoded "/",
 * raw or decoded; and its name (the decoded bytes before its first raw
 * ";") neither "." nor "..", and empty only in the last segment. */
static bool segment_ok(const char *seg, size_t n, bool last)
{
    size_t i = 0, step, name = 0, dots = 0;
    bool in_name = true;
    unsigned char ch;

    while (i < n) {
        if (seg[i] == ';')
            in_name = false;
        step = decode_at(seg, n, i, &ch);
        if (step == 0 || ch == '/' || ch == '\\' || is_control(ch))
            return false;
        if (in_name) {
            name++;
            dots += ch == '.';
        }
        i += step;
    }
    if (name == 0)
        return last;
    return !(dots == name && name <= 2);
}

/* Whether p[0..n) is an unambiguous absolute path ("/" then segments);
 * empty is allowed (an absolute-form's empty path, forwarded as "/"). */
static bool path_ok(const char *p, size_t n)
{
    size_t i, start = 1;

    if (n == 0)
        return true;
    if (p[0] != '/')
        return false;
    for (i = 1; i <= n; i++) {
        if (i < n && p[i] != '/')
            continue;
        if (!segment_ok(p + start, i - start, i == n))
            return false;
        start = i + 1;
    }
    return true;
}

/* A letter, a digit or one of "-._~:[]". */
static bool authority_byte(unsigned char ch)
{
    switch (ch) {
    case '-':
    case '.':
    case '_':
    case '~':
    case ':':
    case '[':
    case ']':
        return true;
    default:
        return (ch >= '0' && ch <= '9') ||
               ((ch | 0x20) >= 'a' && (ch | 0x20) <= 'z');
    }
}

bool target_authority_ok(const char *s, size_t len)
{
    size_t i;

    for (i = 0; i < len; i++)
        if (!authority_byte((unsigned char)s[i]))
            return false;
    return true;
}

/* The length of raw's "http://" or "https://" (any case), or 0. */
static size_t scheme_len(const char *raw, size_t len)
{
    if (len >= 7 && strncasecmp(raw, "http://", 7) == 0)
        return 7;
    if (len >= 8 && strncasecmp(raw, "https://", 8) == 0)
        return 8;
    return 0;
}

/* Read raw as an absolute-form into *t (all but path_len). NULL, or why
 * it is refused. */
static const char *absolute(const char *raw, size_t len, struct target *t)
{
    size_t i = scheme_len(raw, len), start = i;

    if (i == 0)
        return NOT_VALID;
    while (i < len && raw[i] != '/' && raw[i] != '?')
        i++;
    t->form = TARGET_ABSOLUTE;
    t->authority_off = start;
    t->authority_len = i - start;
    t->path_off = i;
    t->slash = i == len || raw[i] == '?';
    if (i == start)
        return "the request target has no host";
    if (!target_authority_ok(raw + start, i - start))
        return "the request target's host is not valid"; /* userinfo too */
    return NULL;
}

int target_parse(const char *raw, size_t len, bool options,
                 struct target *t_out, const char **why_out)
{
    struct target t = { .form = TARGET_ORIGIN };
    const char *why = NULL, *query;

    if (len == 1 && raw[0] == '*')
        t.form = TARGET_ASTERISK;
    else if (memchr(raw, '#', len))
        why = AMBIGUOUS; /* a fragment never belongs in a request */
    else if (len == 0 || raw[0] != '/')
        why = absolute(raw, len, &t);
    if (t.form == TARGET_ASTERISK && !options)
        why = "the request target * is for OPTIONS only";
    query = memchr(raw + t.path_off, '?', len - t.path_off);
    t.path_len = (query ? (size_t)(query - raw) : len) - t.path_off;
    if (!why && t.form != TARGET_ASTERISK &&
        !path_ok(raw + t.path_off, t.path_len))
        why = AMBIGUOUS;
    if (why) {
        *why_out = why;
        return -1;
    }
    *t_out = t;
    return 0;
}

bool target_has_prefix(const char *path, size_t len, const char *prefix,
                       size_t plen)
{
    size_t i = 0, j, step;
    unsigned char ch;

    for (j = 0; j < plen; j++) {
        if (i == len)
            return false;
        step = decode_at(path, len, i, &ch);
        if (step == 0 || ch != (unsigned char)prefix[j])
            return false;
        i += step;
    }
    return true;
}
