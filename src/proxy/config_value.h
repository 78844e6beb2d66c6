/* config_value: the syntax of option values, shared by the parser
 * (config.c) and its tests: numbers with units, host:port addresses,
 * upstream URLs, CIDR blocks, HTTP tokens and lists of them. The public
 * parsers are declared in config.h; this header has what config.c's
 * value kinds also use. */
#ifndef IDEMPROXY_CONFIG_VALUE_H
#define IDEMPROXY_CONFIG_VALUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"

/* A number's suffix and what it multiplies by; a table ends with a NULL
 * suffix. */
struct unit {
    const char *suffix;
    uint64_t scale;
};

extern const struct unit config_plain_units[];    /* none */
extern const struct unit config_duration_units[]; /* ms s m h d: to ms */
extern const struct unit config_size_units[];     /* K M G: bytes */

/* Digits, then one of units' suffixes; the product at most max, into
 * *out. 0, -1 if malformed, -2 if too large. */
int config_scaled(const char *s, const struct unit *units, uint64_t max,
                  uint64_t *out);

/* Whether s[0..n) is an IPv6 address; a host name or IPv4 literal
 * (letters, digits, '.', '-', '_', short enough for struct addr); an
 * HTTP token; s is visible ASCII (no control byte, no space). */
bool config_is_ipv6(const char *s, size_t n);
bool config_is_hostname(const char *s, size_t n);
bool config_is_token(const char *s, size_t n);
bool config_is_visible(const char *s);

/* Split v at commas into fresh tokens (an all-blank v is an empty list;
 * the array is never NULL on success). 0, -1 if an item is not a token,
 * -2 out of memory. config_free_list frees n items and the array. */
int config_split_list(const char *v, char ***items_out, size_t *n_out);
void config_free_list(char **items, size_t n);

#endif
