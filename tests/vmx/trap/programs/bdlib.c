/* A shared library with backdoor code, loaded with dlopen by dlmain.c: its
 * CPUID sites must be patched when it is mapped (the r_brk hook). */
#include <string.h>

#include "backdoor.h"

int bd_check(void)
{
    uint32_t a, b, c, d, eax, ebx, ecx;
    char sig[13] = {0};
    cpuid(0x40000000, &a, &b, &c, &d);
    memcpy(sig, &b, 4);
    memcpy(sig + 4, &c, 4);
    memcpy(sig + 8, &d, 4);
    if (strcmp(sig, "VMwareVMware"))
        return 1;
    getversion(&eax, &ebx, &ecx);
    return eax == 6 && ebx == BDOOR_MAGIC ? 0 : 2;
}
