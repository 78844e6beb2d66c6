/* service.h, over libsystemd's sd_notify. */
#include "service.h"

#include <stdio.h>
#include <systemd/sd-daemon.h>
#include <time.h>

#include "log.h"

static void notify(const char *state)
{
    if (sd_notify(0, state) < 0)
        log_msg(LOG_WARN, "systemd: cannot notify %s", state);
}

void service_ready(const char *status)
{
    char msg[256];

    snprintf(msg, sizeof(msg), "READY=1\nSTATUS=%s", status);
    notify(msg);
}

void service_reloading(void)
{
    struct timespec ts;
    char msg[64];

    /* systemd 253 wants the time the reload began with RELOADING=1 */
    clock_gettime(CLOCK_MONOTONIC, &ts);
    snprintf(msg, sizeof(msg), "RELOADING=1\nMONOTONIC_USEC=%llu",
             (unsigned long long)ts.tv_sec * 1000000ull +
                 (unsigned long long)ts.tv_nsec / 1000u);
    notify(msg);
}

void service_stopping(void)
{
    notify("STOPPING=1\nSTATUS=finishing requests in flight");
}

uint64_t service_watchdog_ms(void)
{
    uint64_t us = 0;

    return sd_watchdog_enabled(0, &us) > 0 ? us / 1000 : 0;
}

void service_watchdog(bool alive)
{
    static bool said;

    if (alive) {
        notify("WATCHDOG=1");
        said = false;
    } else if (!said) {
        log_msg(LOG_ERROR, "a worker's loop has not turned for half the "
                           "watchdog period: not telling systemd all is "
                           "well");
        said = true;
    }
}
