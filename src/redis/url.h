/* Where a Redis store connects, from its URL (src/redis_url.c). */
#ifndef IDEM_REDIS_URL_H
#define IDEM_REDIS_URL_H

#include "idem/env.h"

struct idem__redis_addr {
    char *host; /* TCP: a name or address ([v6] without brackets) */
    int port;
    char *path; /* or a Unix socket's path */
    char *user; /* ACL user, or NULL */
    char *password;
    int db;
};

/* Parse url into *a (strings from env). IDEM_OK; IDEM_EINVAL (not a Redis
 * URL we take; *a is empty); IDEM_ENOMEM. */
int idem__redis_url_parse(const struct idem_env *env, const char *url,
                          struct idem__redis_addr *a);

/* Free a's strings; a is empty after. */
void idem__redis_addr_free(const struct idem_env *env,
                           struct idem__redis_addr *a);

#endif
