/* libFuzzer target: the record decoder. Whatever it accepts must walk
 * cleanly and encode back to the very same bytes; it must never read
 * outside the input (ASan watches). Disagreement aborts. */
#include <stdint.h>

#include "fuzz.h"
#include <stdlib.h>
#include <string.h>

#include "record.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct idem_header hdrs[IDEM__RECORD_MAX_HEADERS];
    struct idem__record_view v;
    struct idem__header_iter it;
    size_t n = 0, len = 0;
    uint8_t *buf;

    if (idem__record_decode(data, size, &v) != IDEM_OK)
        return 0;
    idem__record_headers(&v, &it);
    while (idem__header_next(&it, &hdrs[n])) {
        n++;
        CHECK(n <= v.rec.nheaders);
    }
    CHECK(n == v.rec.nheaders);
    v.rec.headers = hdrs;
    CHECK(idem__record_size(&v.rec) == size);
    buf = malloc(size);
    CHECK(buf != NULL);
    CHECK(idem__record_encode(&v.rec, buf, size, &len) == IDEM_OK);
    CHECK(len == size && memcmp(buf, data, size) == 0);
    free(buf);
    return 0;
}
