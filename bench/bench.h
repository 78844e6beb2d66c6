/* Benchmark helpers: a monotonic nanosecond clock, resident memory, and
 * the one output format, "name value unit". Figures, never pass/fail. */
#ifndef IDEM_BENCH_H
#define IDEM_BENCH_H

#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#include "statm.h"

static inline uint64_t bench_now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Resident set size in bytes after returning free heap to the kernel. */
static inline size_t bench_rss_bytes(void)
{
    malloc_trim(0);
    return statm_resident_bytes(0);
}

static inline void bench_print(const char *name, double value, const char *unit)
{
    printf("%s %.6g %s\n", name, value, unit);
    fflush(stdout);
}

#endif
