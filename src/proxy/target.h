/* Request targets as idemproxy judges them (RFC 9112 §3.2): their form,
 * the origin-form the upstream gets, the authority of an absolute-form,
 * and whether a path is ambiguous (read one way here, another way by the
 * upstream). Pure functions over bytes: no sockets, no allocation. */
#ifndef IDEMPROXY_TARGET_H
#define IDEMPROXY_TARGET_H

#include <stdbool.h>
#include <stddef.h>

enum target_form {
    TARGET_ORIGIN,   /* "/path?query" */
    TARGET_ABSOLUTE, /* "http://authority/path?query" (or https) */
    TARGET_ASTERISK, /* "*", OPTIONS only */
};

/* A judged target, as offsets into the bytes it was judged from (raw).
 * The origin-form to forward is raw[path_off..len): the path, then the
 * query; with "/" in front when slash is set (an absolute-form whose path
 * is empty). An asterisk-form forwards "*" (path_off 0). */
struct target {
    enum target_form form;
    size_t path_off, path_len;           /* the path, without the query */
    size_t authority_off, authority_len; /* absolute-form only, else 0 */
    bool slash;
};

/* Judge raw[0..len), the target of a request whose method is OPTIONS or
 * not (CONNECT's authority-form is the caller's to refuse). Refused: a
 * form other than the three above; "*" for another method; a scheme other
 * than http or https; an empty authority, or one with userinfo or bytes
 * other than letters, digits and "-._~:[]"; a fragment; and an ambiguous
 * path: one whose raw or percent-decoded form has a "." or ".." segment
 * (also before a ";" parameter), an empty segment ("//"), a backslash, an
 * encoded "/" or "\", a NUL or other control byte, or a malformed
 * %-escape. 0 with *t_out set, or -1 with *why_out a static sentence
 * saying why (for a 400). */
int target_parse(const char *raw, size_t len, bool options,
                 struct target *t_out, const char **why_out);

/* Whether path[0..len), percent-decoded, starts with prefix[0..plen) (a
 * plain string, compared byte for byte). path must have passed
 * target_parse: a malformed escape there ends the match (false). */
bool target_has_prefix(const char *path, size_t len, const char *prefix,
                       size_t plen);

/* Whether s[0..len) is a host[:port] as target_parse accepts in an
 * authority: letters, digits and "-._~:[]" only. Empty is allowed (an
 * empty Host value is valid HTTP). */
bool target_authority_ok(const char *s, size_t len);

#endif
