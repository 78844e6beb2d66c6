/* idemproxy's configuration: command-line flags and the same keys in an
 * INI config file (--config FILE, read with libinih: "key = value", #
 * and ; comments, [route PREFIX] sections; flags given after --config
 * override it). One table drives parsing, --help and validation
 * (docs/idemproxy.md lists every key). */
#ifndef IDEMPROXY_CONFIG_H
#define IDEMPROXY_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "idem/engine.h"

enum log_format { LOG_TEXT = 0, LOG_JSON };
enum log_level { LOG_ERROR = 0, LOG_WARN, LOG_INFO, LOG_DEBUG };
/* What a request the store cannot serve gets. */
enum store_failure {
    STORE_FAIL_CLOSED = 0, /* 503 with problem+json */
    STORE_FAIL_OPEN,       /* forwarded without the guarantee, counted */
};

/* What a full memory store does for a new key. */
enum when_full {
    WHEN_FULL_REFUSE = 0, /* 503 + Retry-After; young records are kept */
    WHEN_FULL_EVICT,      /* evict completed records, however young */
};

/* A "host:port" address. host is an IPv4/IPv6 literal or a name
 * ("localhost"); IPv6 literals are written "[::1]:8080". */
struct addr {
    char host[256];
    uint16_t port;
};

/* One --upstream: "HOST:PORT", "http://HOST[:PORT]" (port 80),
 * "https://HOST[:PORT]" (port 443; TLS, recorded for the TLS driver) or
 * "unix:/PATH". */
struct upstream_url {
    struct addr addr; /* TCP: host and port; unix: empty */
    char path[108];   /* unix: the socket's path; TCP: "" */
    bool tls;         /* https:// */
};

/* A [route PREFIX] section: rules for the paths under PREFIX (the
 * longest matching prefix wins). Unset rules are the global ones. */
struct route {
    char *prefix;
    bool require_key; /* require-key: refuse requests without one */
    char **methods;   /* methods, or NULL: the global list */
    size_t nmethods;
    int64_t lifetime_ms;    /* lifetime, or 0: the global one */
    int conflict;           /* enum idem_conflict_mode, or -1: global */
    int64_t wait_ms;        /* wait:DURATION's bound */
    size_t max_stored_body; /* max-stored-body, or 0: the global one */
};

/* A --trusted-proxies entry: an IPv4 (as ::ffff:a.b.c.d) or IPv6 network. */
struct cidr {
    unsigned char addr[16];
    unsigned bits; /* 0..128 (IPv4 /n is 96 + n) */
};

struct config {
    struct addr listen; /* --listen, default 127.0.0.1:8080 */
    /* --upstream, required, repeatable: the addresses are used in turn */
    struct upstream_url *upstreams;
    size_t nupstreams;
    int64_t resolve_interval_ms; /* --resolve-interval, default 5s */
    struct addr admin;           /* --admin-listen, default 127.0.0.1:9090 */
    bool admin_enabled;          /* false with --admin-listen off */
    unsigned workers;            /* --workers, default: online cores */
    char *store;                 /* --store, "memory" or a Redis URL */
    char *redis_prefix;          /* --redis-prefix, default "idem" */
    int64_t redis_timeout_ms;    /* --redis-timeout, default 1s */
    unsigned redis_replicas;     /* --redis-replicas, default 0 (no WAIT) */
    enum store_failure store_failure; /* --store-failure closed|open */
    int64_t lifetime_ms;              /* --lifetime, default 24h */
    int64_t lease_ms;                 /* --lease, default 60s */
    /* --unknown-outcome hold|release: a request that may have run with no
     * usable answer keeps its key (502 to retries) or frees it */
    enum idem_unknown_policy unknown_outcome;
    size_t max_memory;        /* --max-memory, default 64M */
    int64_t min_retention_ms; /* --min-retention, default 10m (at most
                                 the lifetime) */
    enum when_full when_full; /* --when-full refuse|evict */
    size_t max_body;          /* --max-body, default 1M (413 past it) */
    size_t max_stored_body;   /* --max-stored-body, default 1M */
    size_t max_header_bytes;  /* --max-header-bytes, default 16K (431) */
    unsigned max_headers;     /* --max-headers, default 100 (431) */
    enum idem_conflict_mode conflict; /* --conflict reject|wait:DURATION */
    int64_t wait_ms;                  /* the DURATION of wait:, default 10s */
    char **methods;                   /* --methods POST,PATCH */
    size_t nmethods;
    char *key_header;     /* --key-header, default Idempotency-Key */
    char *alt_key_header; /* --alt-key-header, default none */
    char **scope_headers; /* --scope-headers Authorization ("" none) */
    size_t nscope_headers;
    char **require_key; /* --require-key PREFIX, repeatable */
    size_t nrequire_key;
    /* the [route PREFIX] sections, and a route per --require-key
     * prefix that has none */
    struct route *routes;
    size_t nroutes;
    struct cidr *trusted; /* --trusted-proxies CIDR,... */
    size_t ntrusted;
    char *snapshot;              /* --snapshot FILE, default none */
    int64_t client_timeout_ms;   /* --client-timeout, default 60s: headers
                                    and body must arrive within it */
    int64_t upstream_timeout_ms; /* --upstream-timeout, default 60s: 504 */
    int64_t connect_timeout_ms;  /* --connect-timeout, default 5s: 502 */
    int64_t shutdown_timeout_ms; /* --shutdown-timeout, default 30s */
    unsigned upstream_idle;      /* --upstream-idle, idle keep-alive
                                    connections kept per worker, 64 */
    unsigned h2_max_streams;     /* --h2-max-streams, concurrent streams
                                    per HTTP/2 connection, 128; 0: no h2c */
    unsigned h2_max_resets;      /* --h2-max-resets, client stream resets
                                    a second per connection, 100 */
    enum log_level log_level;    /* --log-level error|warn|info|debug */
    enum log_format log_format;  /* --log-format text|json */
    char *log_file;              /* --log-file FILE, default stderr */
    bool log_keys;               /* --log-keys: keys in clear (default: a
                                    digest prefix) */
    /* TLS (tls.h). The listener speaks TLS when tls_cert is set. */
    char *tls_cert; /* --tls-cert FILE: chain, PEM; re-read on SIGHUP */
    char *tls_key;  /* --tls-key FILE: its key, PEM */
    /* The upstream speaks TLS: an https:// --upstream, or --upstream-tls.
     * upstream_sni: the name sent and verified (--upstream-sni), default
     * the first upstream's host. */
    bool upstream_tls;
    char *upstream_sni;
    char *upstream_ca;   /* --upstream-ca FILE, default the system's CAs */
    char *upstream_cert; /* --upstream-cert FILE: a client certificate */
    char *upstream_key;  /* --upstream-key FILE: its key */
    /* Upgraded connections (101), relayed both ways: closed after
     * --tunnel-idle without a byte either way, and at the latest after
     * --tunnel-max. */
    int64_t tunnel_idle_ms;
    int64_t tunnel_max_ms;
};

/* Whether c keeps records in memory (--store memory), not in Redis. */
static inline bool config_store_is_memory(const struct config *c)
{
    return strcmp(c->store, "memory") == 0;
}

/* The route whose prefix is the longest one path[0..len) starts with
 * (percent-decoded, see target_has_prefix), or NULL. */
const struct route *config_route(const struct config *c, const char *path,
                                 size_t len);

/* The route whose prefix is exactly prefix, or NULL. */
const struct route *config_route_at(const struct config *c, const char *prefix);

/* Whether the peer address (16 bytes, IPv4 as ::ffff:a.b.c.d) is in one of
 * the --trusted-proxies networks. */
bool config_trusted(const struct config *c, const unsigned char addr[16]);

/* Parse argv (after argv[0]) into *c, starting from the defaults (a
 * reload parses the same argv again: the config file is read afresh).
 * Returns 0 to run; 1 if --help or --version printed to out (exit 0);
 * 2 after writing a one-line "idemproxy: ..." message to err (exit 2). */
int config_parse(struct config *c, int argc, char **argv, FILE *out, FILE *err);

/* Print the manual page of section 1 (idemproxy) or 5 (idemproxy.conf)
 * in roff, from the option table that drives --help and the parser. */
void config_print_man(FILE *out, int section);

/* Free what config_parse allocated. */
void config_free(struct config *c);

/* Parse "30s", "500ms", "2m", "1h", "1d" (a bare number is seconds) into
 * milliseconds. 0 on success, -1 if malformed or out of range. */
int config_duration_ms(const char *s, int64_t *ms_out);

/* Parse "64M", "512K", "1G", "1000" (bytes) into bytes. 0 or -1. */
int config_size(const char *s, size_t *bytes_out);

/* Parse "host:port" ("[v6]:port"); port 0..65535. 0 or -1. */
int config_addr(const char *s, struct addr *a);

/* Parse an --upstream value (struct upstream_url's forms). 0 or -1. */
int config_upstream(const char *s, struct upstream_url *u);

/* Parse "10.0.0.0/8", "::1/128", or an address alone (all its bits). 0
 * or -1. */
int config_cidr(const char *s, struct cidr *c);

#endif
