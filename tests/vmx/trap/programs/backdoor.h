/* The backdoor calls exactly as open-vm-tools issues them (register roles
 * from protocol.md section 1), as inline assembly. */
#ifndef TRAP_TEST_BACKDOOR_H
#define TRAP_TEST_BACKDOOR_H

#include <stdint.h>

#define BDOOR_MAGIC 0x564D5868u
#define BDOOR_PORT 0x5658
#define BDOORHB_PORT 0x5659
#define CMD_GETVERSION 10

struct regs {
    uint64_t ax, bx, cx, dx, si, di;
};

/* `in %dx,%eax` (ED) with all six registers loaded, like Backdoor_InOut. */
static inline void backdoor_in(struct regs *r)
{
    __asm__ __volatile__("inl %%dx, %%eax"
                         : "+a"(r->ax), "+b"(r->bx), "+c"(r->cx), "+d"(r->dx), "+S"(r->si), "+D"(r->di)
                         :
                         : "memory");
}

static inline void getversion(uint32_t *eax, uint32_t *ebx, uint32_t *ecx)
{
    struct regs r = {BDOOR_MAGIC, ~BDOOR_MAGIC, CMD_GETVERSION, BDOOR_PORT, 0, 0};
    backdoor_in(&r);
    *eax = (uint32_t)r.ax;
    *ebx = (uint32_t)r.bx;
    *ecx = (uint32_t)r.cx;
}

/* `cld; rep outsb`: RSI = source, RCX = count, cookies in EDI (and EBP). */
static inline void backdoor_hb_out(struct regs *r)
{
    __asm__ __volatile__("cld\n\trep outsb"
                         : "+a"(r->ax), "+b"(r->bx), "+c"(r->cx), "+d"(r->dx), "+S"(r->si), "+D"(r->di)
                         :
                         : "memory");
}

/* `cld; rep insb`: RDI = destination, RCX = count, cookie in ESI (and EBP). */
static inline void backdoor_hb_in(struct regs *r)
{
    __asm__ __volatile__("cld\n\trep insb"
                         : "+a"(r->ax), "+b"(r->bx), "+c"(r->cx), "+d"(r->dx), "+S"(r->si), "+D"(r->di)
                         :
                         : "memory");
}

static inline void cpuid(uint32_t leaf, uint32_t *a, uint32_t *b, uint32_t *c, uint32_t *d)
{
    __asm__ __volatile__("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "0"(leaf), "2"(0));
}

#endif
