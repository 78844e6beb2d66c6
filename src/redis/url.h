/* Where a Redis store connects, from its URL (src/redis/url.c). */
#ifndef IDEM_REDIS_URL_H
#define IDEM_REDIS_URL_H

#include <stddef.h>

#include "idem/env.h"

/* What the URL names: one server, a Cluster, or Sentinels and a master. */
enum idem__redis_mode {
    IDEM__REDIS_SINGLE,   /* redis:// or unix:// */
    IDEM__REDIS_CLUSTER,  /* redis-cluster://h:p[,h:p...] */
    IDEM__REDIS_SENTINEL, /* redis-sentinel://h:p[,h:p...]/MASTER */
};

/* A host (a name or address, [v6] without brackets) and its port. */
struct idem__redis_hostport {
    char *host;
    int port;
};

struct idem__redis_addr {
    enum idem__redis_mode mode;
    char *host; /* SINGLE over TCP */
    int port;
    char *path; /* or a Unix socket's path */
    char *user; /* ACL user, or NULL */
    char *password;
    int db;
    /* CLUSTER: seed nodes; SENTINEL: the Sentinels. */
    struct idem__redis_hostport *seeds;
    size_t nseeds;
    char *master; /* SENTINEL: the master's name */
};

/* Parse url into *a (strings from env). IDEM_OK; IDEM_EINVAL (not a Redis
 * URL we take; *a is empty); IDEM_ENOMEM. */
int idem__redis_url_parse(const struct idem_env *env, const char *url,
                          struct idem__redis_addr *a);

/* Free a's strings; a is empty after. */
void idem__redis_addr_free(const struct idem_env *env,
                           struct idem__redis_addr *a);

/* A copy of n bytes of s, NUL-terminated, from env; or NULL. */
char *idem__redis_strndup(const struct idem_env *env, const char *s, size_t n);

#endif
