/* forward: the request as it goes upstream, written by an exchange into
 * its up_out: the request line (the judged origin-form), the client's
 * headers minus hop-by-hop ones and those the proxy writes itself, the
 * forwarding headers (docs/idemproxy.md, "Forwarding headers": trusted
 * peers' chains extended, others' replaced; RFC 7239 Forwarded), the
 * request's X-Request-ID, the framing, an Upgrade kept, and a buffered
 * body. */
#ifndef IDEMPROXY_FORWARD_H
#define IDEMPROXY_FORWARD_H

#include "exchange.h"

/* Parse ex->client into ex->peer_*, once per connection. */
void forward_peer_init(struct exchange *ex);

/* Queue ex's request on its up_out: 0, or -1 out of memory (up_out then
 * holds a part). */
int forward_write_request(struct exchange *ex);

/* The request's ID: the client's X-Request-ID if it is 1..
 * EX_REQUEST_ID_MAX visible ASCII characters, else a fresh one (32 hex
 * digits: the thread's random 64 bits, then a count), chosen once per
 * request. */
const char *forward_request_id(struct exchange *ex);

#endif
