/* Shared by the libFuzzer targets: the entry point's prototype and CHECK,
 * which aborts (libFuzzer and the corpus replay both report an abort). */
#ifndef IDEM_FUZZ_H
#define IDEM_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#define CHECK(c)                                                               \
    do {                                                                       \
        if (!(c))                                                              \
            abort();                                                           \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#endif
