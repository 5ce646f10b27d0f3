/* One test program, many scenarios (argv[1]); each exits 0 on success and
 * prints what it saw.  Run under the trap engine by tests/vmx/trap. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/io.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include "backdoor.h"

static const char *self;

static int check_getversion(void)
{
    uint32_t a, b, c;
    getversion(&a, &b, &c);
    if (a != 6 || b != BDOOR_MAGIC || c != 2) {
        printf("bad GETVERSION %x %x %x\n", a, b, c);
        return 1;
    }
    return 0;
}

static int do_cpuid(void)
{
    uint32_t a, b, c, d;
    char sig[13] = {0};
    cpuid(1, &a, &b, &c, &d);
    printf("hypervisor bit %u\n", c >> 31);
    cpuid(0x40000000, &a, &b, &c, &d);
    memcpy(sig, &b, 4);
    memcpy(sig + 4, &c, 4);
    memcpy(sig + 8, &d, 4);
    printf("signature %s max %#x\n", sig, a);
    cpuid(0x40000010, &a, &b, &c, &d);
    printf("timing tsc %u bus %u ecx %#x edx %#x\n", a, b, c, d);
    cpuid(0x40000100, &a, &b, &c, &d);
    printf("leaf 0x40000100 %#x %#x %#x %#x\n", a, b, c, d);
    cpuid(0, &a, &b, &c, &d);
    memcpy(sig, &b, 4);
    memcpy(sig + 4, &d, 4);
    memcpy(sig + 8, &c, 4);
    printf("vendor %s\n", sig);
    return 0;
}

static int do_getversion(void)
{
    uint32_t a, b, c;
    getversion(&a, &b, &c);
    printf("GETVERSION eax=%u ebx=%#x ecx=%u\n", a, b, c);
    return check_getversion();
}

static int do_hb(void)
{
    static const char message[] = "hello, high bandwidth";
    char reply[64];
    size_t n = sizeof message - 1;
    struct regs out = {BDOOR_MAGIC, 1u << 16, n, BDOORHB_PORT | (3u << 16), (uint64_t)message, 0x1234};
    backdoor_hb_out(&out);
    if (out.cx != 0 || out.si != (uint64_t)message + n || (out.bx >> 16) != 1) {
        printf("bad rep outsb: cx=%lu si-delta=%ld status=%lu\n", (unsigned long)out.cx,
               (long)(out.si - (uint64_t)message), (unsigned long)(out.bx >> 16));
        return 1;
    }
    memset(reply, 0, sizeof reply);
    struct regs in = {BDOOR_MAGIC, 1u << 16, n, BDOORHB_PORT | (3u << 16), 0x5678, (uint64_t)reply};
    backdoor_hb_in(&in);
    if (in.cx != 0 || in.di != (uint64_t)reply + n || (in.bx >> 16) != 1 || memcmp(reply, message, n)) {
        printf("bad rep insb: cx=%lu status=%lu reply=%s\n", (unsigned long)in.cx, (unsigned long)(in.bx >> 16),
               reply);
        return 1;
    }
    /* An unreadable source buffer must come back as status 0, not a crash. */
    struct regs bad = {BDOOR_MAGIC, 1u << 16, 16, BDOORHB_PORT, 8, 0};
    backdoor_hb_out(&bad);
    if ((bad.bx >> 16) != 0) {
        printf("bad-pointer rep outsb reported success\n");
        return 1;
    }
    printf("echo %s\n", reply);
    return 0;
}

static void segv_handler(int sig, siginfo_t *info, void *context)
{
    (void)sig;
    (void)context;
    char line[64];
    int len = snprintf(line, sizeof line, "SIGSEGV code=%d addr=%p\n", info->si_code, info->si_addr);
    write(1, line, len);
    _exit(info->si_code == 0x80 ? 42 : (info->si_code == SEGV_MAPERR ? 43 : 1));
}

static void catch_segv(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = segv_handler;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGSEGV, &sa, NULL);
}

static int do_wrongmagic(void)
{
    catch_segv();
    struct regs r = {0x12345678, 0, CMD_GETVERSION, BDOOR_PORT, 0, 0};
    backdoor_in(&r);
    printf("wrong magic did not fault\n");
    return 1;
}

static int do_wrongport(void)
{
    catch_segv();
    struct regs r = {BDOOR_MAGIC, 0, CMD_GETVERSION, 0x80, 0, 0};
    backdoor_in(&r);
    return 1;
}

static int do_nullderef(void)
{
    catch_segv();
    volatile int *p = NULL;
    return *p;
}

static void ill_handler(int sig)
{
    (void)sig;
    write(1, "SIGILL\n", 7);
    _exit(44);
}

static int do_xenprobe(void)
{
    signal(SIGILL, ill_handler);
    /* Hostinfo_TouchXen: ud2; "xen"; cpuid */
    __asm__ __volatile__(".byte 0x0f, 0x0b, 0x78, 0x65, 0x6e, 0x0f, 0xa2" ::: "memory");
    return 1;
}

static void *hammer(void *arg)
{
    long failures = 0;
    for (int i = 0; i < 1000; i++)
        failures += check_getversion();
    (void)arg;
    return (void *)failures;
}

static int do_threads(void)
{
    pthread_t threads[8];
    long total = 0;
    for (int i = 0; i < 8; i++)
        pthread_create(&threads[i], NULL, hammer, NULL);
    for (int i = 0; i < 8; i++) {
        void *result;
        pthread_join(threads[i], &result);
        total += (long)result;
    }
    printf("threads done, %ld failures\n", total);
    return total != 0;
}

static int wait_child(pid_t pid)
{
    int status;
    if (waitpid(pid, &status, 0) != pid)
        return 100;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static int do_forkexec(void)
{
    int failures = check_getversion();
    pid_t pid = fork();
    if (pid == 0) {
        /* Until exec the child runs the parent's patched code. */
        if (check_getversion())
            _exit(3);
        execl(self, self, "getversion", (char *)NULL);
        _exit(127);
    }
    int status = wait_child(pid);
    printf("fork+exec child status %d\n", status);
    return failures || status;
}

static int do_vfork(void)
{
    pid_t pid = vfork();
    if (pid == 0) {
        execl(self, self, "getversion", (char *)NULL);
        _exit(127);
    }
    int status = wait_child(pid);
    printf("vfork child status %d\n", status);
    return status || check_getversion();
}

static void *exec_from_thread(void *arg)
{
    (void)arg;
    execl(self, self, "getversion", (char *)NULL);
    return NULL;
}

static void *idle(void *arg)
{
    (void)arg;
    for (;;)
        pause();
    return NULL;
}

static int do_threadexec(void)
{
    pthread_t a, b;
    pthread_create(&a, NULL, idle, NULL);
    pthread_create(&b, NULL, exec_from_thread, NULL);
    pthread_join(b, NULL);
    return 1;
}

static int status_field(const char *name, char *value, size_t size)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    size_t len = strlen(name);
    int found = 0;
    while (f && fgets(line, sizeof line, f)) {
        if (!strncmp(line, name, len) && line[len] == ':') {
            snprintf(value, size, "%s", line + len + 1 + strspn(line + len + 1, " \t"));
            value[strcspn(value, "\n")] = 0;
            found = 1;
        }
    }
    if (f)
        fclose(f);
    return found;
}

static int do_sandbox(void)
{
    char value[64];
    if (!status_field("Seccomp", value, sizeof value) || strcmp(value, "2")) {
        /* No filter: do not even try iopl. */
        printf("NO SECCOMP FILTER (%s)\n", value);
        return 3;
    }
    if (!status_field("NoNewPrivs", value, sizeof value) || strcmp(value, "1")) {
        printf("no_new_privs not set\n");
        return 3;
    }
    status_field("CapBnd", value, sizeof value);
    unsigned long long bounding = strtoull(value, NULL, 16);
    if (bounding & ((1ull << 16) | (1ull << 17) | (1ull << 22) | (1ull << 25))) {
        printf("capabilities still in the bounding set: %llx\n", bounding);
        return 3;
    }
    errno = 0;
    int fd = socket(40 /* AF_VSOCK */, SOCK_STREAM, 0);
    printf("socket(AF_VSOCK) = %d errno %d\n", fd, errno);
    if (fd >= 0 || errno != EAFNOSUPPORT)
        return 4;
    int pair[2];
    errno = 0;
    if (socketpair(40, SOCK_STREAM, 0, pair) == 0 || errno != EAFNOSUPPORT)
        return 4;
    errno = 0;
    long rc = syscall(SYS_iopl, 3);
    printf("iopl(3) = %ld errno %d\n", rc, errno);
    if (rc == 0) {
        /* Never touch a port: just report the failure of the sandbox. */
        syscall(SYS_iopl, 0);
        return 5;
    }
    if (errno != EPERM)
        return 6;
    errno = 0;
    rc = syscall(SYS_ioperm, BDOOR_PORT, 2, 1);
    printf("ioperm = %ld errno %d\n", rc, errno);
    if (rc == 0 || errno != EPERM)
        return 7;
    struct stat st;
    if (stat("/dev/vsock", &st) == 0 && st.st_rdev != makedev(1, 3)) {
        printf("/dev/vsock is not /dev/null\n");
        return 8;
    }
    printf("sandbox ok\n");
    return 0;
}

static void ignore(int sig)
{
    (void)sig;
}

static int do_sleep(int ignore_term)
{
    pid_t pid = fork();
    if (pid == 0) {
        signal(SIGTERM, SIG_IGN);
        for (;;)
            pause();
    }
    if (ignore_term)
        signal(SIGTERM, ignore);
    printf("child %d\n", pid);
    fflush(stdout);
    for (;;)
        pause();
    return 1;
}

static int do_stop(void)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        usleep(100000);
        kill(parent, SIGCONT);
        _exit(0);
    }
    raise(SIGSTOP);
    printf("continued\n");
    return wait_child(pid) || check_getversion();
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    self = argv[0];
    const char *mode = argc > 1 ? argv[1] : "getversion";
    if (!strcmp(mode, "cpuid"))
        return do_cpuid();
    if (!strcmp(mode, "getversion"))
        return do_getversion();
    if (!strcmp(mode, "hb"))
        return do_hb();
    if (!strcmp(mode, "wrongmagic"))
        return do_wrongmagic();
    if (!strcmp(mode, "wrongport"))
        return do_wrongport();
    if (!strcmp(mode, "nullderef"))
        return do_nullderef();
    if (!strcmp(mode, "sigusr1"))
        return raise(SIGUSR1), 1;
    if (!strcmp(mode, "xenprobe"))
        return do_xenprobe();
    if (!strcmp(mode, "threads"))
        return do_threads();
    if (!strcmp(mode, "forkexec"))
        return do_forkexec();
    if (!strcmp(mode, "vfork"))
        return do_vfork();
    if (!strcmp(mode, "threadexec"))
        return do_threadexec();
    if (!strcmp(mode, "sandbox"))
        return do_sandbox();
    if (!strcmp(mode, "sleep"))
        return do_sleep(0);
    if (!strcmp(mode, "sleep-ignoring-term"))
        return do_sleep(1);
    if (!strcmp(mode, "stop"))
        return do_stop();
    if (!strcmp(mode, "exit"))
        return atoi(argc > 2 ? argv[2] : "0");
    fprintf(stderr, "unknown mode %s\n", mode);
    return 2;
}
