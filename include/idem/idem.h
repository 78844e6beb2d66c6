/* libidem: leak-free idempotency for HTTP APIs. The umbrella header. */
#ifndef IDEM_IDEM_H
#define IDEM_IDEM_H

#define IDEM_VERSION_MAJOR 0
#define IDEM_VERSION_MINOR 1
#define IDEM_VERSION_PATCH 0
#define IDEM_VERSION_STRING "0.1.0"

#include "status.h"
#include "env.h"
#include "keylock.h"
#include "cache.h"
#include "engine.h"
#include "store.h"

/* The library's version string, which may differ from the header's when an
 * application runs against a newer shared library. */
IDEM_API const char *idem_version(void);

#endif
