/* No backdoor code of its own (its CPUID is left alone); loads bdlib late. */
#include <dlfcn.h>
#include <stdio.h>

int main(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    void *lib = dlopen(argv[1], RTLD_NOW);
    if (!lib) {
        fprintf(stderr, "%s\n", dlerror());
        return 3;
    }
    int (*check)(void) = (int (*)(void))dlsym(lib, "bd_check");
    int result = check ? check() : 4;
    printf("bd_check %d\n", result);
    return result;
}
