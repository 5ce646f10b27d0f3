/* Cost of trapped instructions, measured inside the tracee:
 *   bench in N | cpuid N | hb N SIZE   -> prints "<microseconds per op>" */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backdoor.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    if (argc < 3)
        return 2;
    long n = atol(argv[2]);
    size_t size = argc > 3 ? (size_t)atol(argv[3]) : 4096;
    char *buffer = calloc(1, size);
    uint32_t a, b, c, d;
    double start = now();
    for (long i = 0; i < n; i++) {
        if (!strcmp(argv[1], "in")) {
            getversion(&a, &b, &c);
            if (a != 6)
                return 1;
        } else if (!strcmp(argv[1], "cpuid")) {
            cpuid(0x40000000, &a, &b, &c, &d);
        } else if (!strcmp(argv[1], "hb")) {
            struct regs r = {BDOOR_MAGIC, 1u << 16, size, BDOORHB_PORT, (uint64_t)buffer, 0};
            backdoor_hb_out(&r);
        } else {
            return 2;
        }
    }
    printf("%.2f\n", (now() - start) / n * 1e6);
    return 0;
}
