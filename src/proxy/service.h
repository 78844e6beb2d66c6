/* service: telling systemd (Type=notify) what idemproxy is doing: ready,
 * reloading, stopping, and the watchdog's keep-alive. Without
 * $NOTIFY_SOCKET (not under systemd) every call does nothing. */
#ifndef IDEMPROXY_SERVICE_H
#define IDEMPROXY_SERVICE_H

#include <stdbool.h>
#include <stdint.h>

/* Started: every worker runs. status: a line for `systemctl status`. */
void service_ready(const char *status);
/* SIGHUP: re-reading; service_ready() again when done. */
void service_reloading(void);
/* SIGTERM or SIGINT: finishing requests in flight. */
void service_stopping(void);

/* The watchdog's period in milliseconds (WatchdogSec=), 0 if off. */
uint64_t service_watchdog_ms(void);
/* Keep-alive: called every half period while every worker's loop has
 * turned recently (alive). */
void service_watchdog(bool alive);

#endif
