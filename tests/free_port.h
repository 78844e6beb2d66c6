/* A loopback port for a test's server: header-only, shared by the unit
 * tests' redis-server (tests/redis_server.h) and the integration harness. */
#ifndef IDEM_TEST_FREE_PORT_H
#define IDEM_TEST_FREE_PORT_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define TEST_PORT_LOW 10000u

/* The lowest port the kernel gives outgoing connections (32768 unless
 * the machine says otherwise). */
static inline unsigned test_ephemeral_low(void)
{
    FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");
    unsigned low = 32768;

    if (f) {
        if (fscanf(f, "%u", &low) != 1)
            low = 32768;
        fclose(f);
    }
    return low;
}

/* Whether port p on 127.0.0.1 can be bound now. */
static inline int test_port_bindable(uint16_t p)
{
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(p) };
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int ok;

    if (fd < 0)
        return 0;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ok = bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
    close(fd);
    return ok;
}

/* A port on 127.0.0.1 that was free a moment ago (bound, then closed);
 * 0 if none could be had. Picked below the ephemeral range: a port the
 * kernel hands out (bind to port 0 does) can be taken meanwhile as the
 * local port of any outgoing connection, ours included (a client
 * reconnecting to a server that is restarting on its port can even
 * connect to itself). Random, so parallel tests seldom pick alike. */
static inline uint16_t test_free_port(void)
{
    struct timespec ts;
    unsigned low = test_ephemeral_low(), span, tries;
    uint64_t x;

    if (low <= TEST_PORT_LOW + 1000)
        return 0;
    span = low - TEST_PORT_LOW;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    x = ((uint64_t)getpid() << 32) ^ (uint64_t)ts.tv_nsec ^
        ((uint64_t)ts.tv_sec << 20);
    x |= 1; /* xorshift never leaves 0 */
    for (tries = 0; tries < 200; tries++) {
        uint16_t p;

        x ^= x << 13; /* xorshift64 */
        x ^= x >> 7;
        x ^= x << 17;
        p = (uint16_t)(TEST_PORT_LOW + x % span);
        if (test_port_bindable(p))
            return p;
    }
    return 0;
}

#endif
