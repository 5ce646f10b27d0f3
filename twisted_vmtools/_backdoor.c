/*
 * twisted_vmtools._backdoor: the VMware backdoor instructions, and CPUID.
 *
 * The register loading mirrors what the guest tools' own backdoor code
 * does (protocol.md 1.2-1.4): every register comes from a struct in
 * memory, the trapping instruction runs, every register goes back to the
 * struct.  A VMX (or the trap engine standing in for one) may therefore
 * read and write any of them.
 *
 * Safety: the instructions are only executed when CPUID reports the
 * "VMwareVMware" hypervisor signature.  Anywhere else an `in` from user
 * mode raises #GP (SIGSEGV, the interpreter dies) and `vmmcall` on KVM is a
 * real hypercall, so every entry point checks first and raises OSError;
 * vmcall/vmmcall also need CPUID leaf 0x40000010 to advertise them.
 * Nothing here calls iopl() or ioperm(): the VMware hypervisor intercepts
 * the backdoor port before the privilege check, and nobody else may see it.
 *
 * The GIL is kept held across the instruction.  Natively a backdoor call
 * costs microseconds and a message takes a burst of them (one per 4 bytes
 * on the low-bandwidth path); dropping and re-taking a contended GIL can
 * cost a whole switch interval (5 ms) per call, far more than the call.
 * Under the ptrace trap engine a call costs ~25-100 us, still short.
 *
 * `exchange` makes a whole message-channel exchange (the five calls of a
 * TCLO poll or an RPCI call) back to back, as vmtoolsd's message code does,
 * and hands anything off the plain path back to the Python state machine at
 * the call where it happened.  The register values and status bits come from
 * Python (codecs/message.py declares them); only the order of the calls is
 * here.
 *
 * On anything but x86-64 Linux the module builds, and every instruction
 * entry point raises OSError.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__)
#define BACKDOOR_SUPPORTED 1
#include <cpuid.h>
#else
#define BACKDOOR_SUPPORTED 0
#endif

enum { MODE_PORT = 0, MODE_VMCALL = 1, MODE_VMMCALL = 2 };

#define BDOOR_MAGIC 0x564D5868u /* "VMXh": EAX of every backdoor call */

/* Same layout as open-vm-tools' Backdoor_proto_hb: the asm indexes it. */
typedef struct {
    uint64_t ax, bx, cx, dx, si, di, bp;
} Regs;

#if BACKDOOR_SUPPORTED

/*
 * One macro per instruction so each asm block contains exactly the
 * reference sequence.  The red zone below RSP may hold the compiler's
 * locals (the caller is a leaf as far as it knows), so step over it before
 * pushing anything.  RBX and RBP are saved by hand: RBP cannot be named as
 * a clobber when the frame pointer is in use.
 */
#define LB_ASM(insn)                                                         \
    __asm__ __volatile__(                                                    \
        "lea -128(%%rsp), %%rsp\n\t"                                         \
        "push %%rbx\n\t"                                                     \
        "push %%rax\n\t"                                                     \
        "mov 40(%%rax), %%rdi\n\t"                                           \
        "mov 32(%%rax), %%rsi\n\t"                                           \
        "mov 24(%%rax), %%rdx\n\t"                                           \
        "mov 16(%%rax), %%rcx\n\t"                                           \
        "mov 8(%%rax), %%rbx\n\t"                                            \
        "mov 0(%%rax), %%rax\n\t"                                            \
        insn "\n\t"                                                          \
        "xchg %%rax, (%%rsp)\n\t"                                            \
        "mov %%rdi, 40(%%rax)\n\t"                                           \
        "mov %%rsi, 32(%%rax)\n\t"                                           \
        "mov %%rdx, 24(%%rax)\n\t"                                           \
        "mov %%rcx, 16(%%rax)\n\t"                                           \
        "mov %%rbx, 8(%%rax)\n\t"                                            \
        "popq 0(%%rax)\n\t"                                                  \
        "pop %%rbx\n\t"                                                      \
        "lea 128(%%rsp), %%rsp\n\t"                                          \
        : "+a"(r)                                                            \
        :                                                                    \
        : "rcx", "rdx", "rsi", "rdi", "memory", "cc")

#define HB_ASM(insn)                                                         \
    __asm__ __volatile__(                                                    \
        "lea -128(%%rsp), %%rsp\n\t"                                         \
        "push %%rbx\n\t"                                                     \
        "push %%rbp\n\t"                                                     \
        "push %%rax\n\t"                                                     \
        "mov 48(%%rax), %%rbp\n\t"                                           \
        "mov 40(%%rax), %%rdi\n\t"                                           \
        "mov 32(%%rax), %%rsi\n\t"                                           \
        "mov 24(%%rax), %%rdx\n\t"                                           \
        "mov 16(%%rax), %%rcx\n\t"                                           \
        "mov 8(%%rax), %%rbx\n\t"                                            \
        "mov 0(%%rax), %%rax\n\t"                                            \
        insn "\n\t"                                                          \
        "xchg %%rax, (%%rsp)\n\t"                                            \
        "mov %%rbp, 48(%%rax)\n\t"                                           \
        "mov %%rdi, 40(%%rax)\n\t"                                           \
        "mov %%rsi, 32(%%rax)\n\t"                                           \
        "mov %%rdx, 24(%%rax)\n\t"                                           \
        "mov %%rcx, 16(%%rax)\n\t"                                           \
        "mov %%rbx, 8(%%rax)\n\t"                                            \
        "popq 0(%%rax)\n\t"                                                  \
        "pop %%rbp\n\t"                                                      \
        "pop %%rbx\n\t"                                                      \
        "lea 128(%%rsp), %%rsp\n\t"                                          \
        : "+a"(r)                                                            \
        :                                                                    \
        : "rcx", "rdx", "rsi", "rdi", "memory", "cc")

#define INSN_IN ".byte 0xed"                     /* in eax, dx */
#define INSN_VMCALL ".byte 0x0f, 0x01, 0xc1"
#define INSN_VMMCALL ".byte 0x0f, 0x01, 0xd9"
#define INSN_HB_OUT "cld\n\t.byte 0xf3, 0x6e"    /* rep outsb */
#define INSN_HB_IN "cld\n\t.byte 0xf3, 0x6c"     /* rep insb */

static __attribute__((noinline)) void exec_lb(Regs *r, int mode)
{
    if (mode == MODE_VMCALL)
        LB_ASM(INSN_VMCALL);
    else if (mode == MODE_VMMCALL)
        LB_ASM(INSN_VMMCALL);
    else
        LB_ASM(INSN_IN);
}

static __attribute__((noinline)) void exec_hb_out(Regs *r, int mode)
{
    if (mode == MODE_VMCALL)
        HB_ASM(INSN_VMCALL);
    else if (mode == MODE_VMMCALL)
        HB_ASM(INSN_VMMCALL);
    else
        HB_ASM(INSN_HB_OUT);
}

static __attribute__((noinline)) void exec_hb_in(Regs *r, int mode)
{
    if (mode == MODE_VMCALL)
        HB_ASM(INSN_VMCALL);
    else if (mode == MODE_VMMCALL)
        HB_ASM(INSN_VMMCALL);
    else
        HB_ASM(INSN_HB_IN);
}

static void do_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t out[4])
{
    __cpuid_count(leaf, subleaf, out[0], out[1], out[2], out[3]);
}

/* -1 unknown, 0 not VMware, 1 VMware.  Decided once per process, like the tools do. */
static int vmware_state = -1;

/*
 * Whether the VMware hypervisor advertises the hypercall interface for
 * `mode` (CPUID 0x40000010 ECX bit 1 vmcall, bit 0 vmmcall), as
 * open-vm-tools decides.  Asked only after is_vmware(): a vmcall or vmmcall
 * that no VMware hypervisor asked for would go to whatever hypervisor this
 * really is (on KVM, vmmcall from user mode is a real hypercall).
 */
static int hypercall_advertised(int mode)
{
    uint32_t r[4];
    do_cpuid(0x40000000, 0, r);
    if (r[0] < 0x40000010)
        return 0;
    do_cpuid(0x40000010, 0, r);
    return (r[2] & (mode == MODE_VMCALL ? 2u : 1u)) != 0;
}

static int is_vmware(void)
{
    if (vmware_state < 0) {
        uint32_t r[4];
        int ok = 0;
        do_cpuid(1, 0, r);
        if (r[2] & (1u << 31)) {
            char sig[13];
            do_cpuid(0x40000000, 0, r);
            memcpy(sig, &r[1], 4);
            memcpy(sig + 4, &r[2], 4);
            memcpy(sig + 8, &r[3], 4);
            sig[12] = 0;
            ok = memcmp(sig, "VMwareVMware", 12) == 0;
        }
        vmware_state = ok;
    }
    return vmware_state;
}
#endif /* BACKDOOR_SUPPORTED */

/*
 * Returns 0 (with an exception set) if the instruction must not run.
 *
 * Without the magic in EAX it is not a backdoor call, just port I/O or a
 * hypercall.  Checking it here also puts the magic in this object's code,
 * which is how the ptrace trap engine recognises backdoor-using objects
 * whose CPUID instructions it must answer.
 */
static int may_execute(unsigned long long ax, int mode)
{
    if ((uint32_t)ax != BDOOR_MAGIC) {
        PyErr_SetString(PyExc_ValueError, "EAX must hold the backdoor magic 0x564D5868");
        return 0;
    }
    if (mode < MODE_PORT || mode > MODE_VMMCALL) {
        PyErr_Format(PyExc_ValueError, "unknown backdoor mode %d", mode);
        return 0;
    }
#if BACKDOOR_SUPPORTED
    if (!is_vmware()) {
        PyErr_SetString(PyExc_OSError,
                        "refusing to execute a backdoor instruction: "
                        "CPUID does not report a VMware hypervisor");
        return 0;
    }
    if (mode != MODE_PORT && !hypercall_advertised(mode)) {
        PyErr_SetString(PyExc_OSError,
                        "refusing to execute vmcall/vmmcall: "
                        "the hypervisor does not advertise that backdoor interface");
        return 0;
    }
    return 1;
#else
    PyErr_SetString(PyExc_OSError, "the VMware backdoor is only implemented on x86-64 Linux");
    return 0;
#endif
}

static PyObject *regs_tuple(const Regs *r, int with_bp)
{
    if (with_bp)
        return Py_BuildValue("(KKKKKKK)", (unsigned long long)r->ax, (unsigned long long)r->bx,
                             (unsigned long long)r->cx, (unsigned long long)r->dx,
                             (unsigned long long)r->si, (unsigned long long)r->di,
                             (unsigned long long)r->bp);
    return Py_BuildValue("(KKKKKK)", (unsigned long long)r->ax, (unsigned long long)r->bx,
                         (unsigned long long)r->cx, (unsigned long long)r->dx,
                         (unsigned long long)r->si, (unsigned long long)r->di);
}

PyDoc_STRVAR(lb_doc,
"lb(ax, bx, cx, dx, si, di, mode=0) -> (ax, bx, cx, dx, si, di)\n\n"
"Low-bandwidth backdoor call: `in eax, dx` (mode 0), vmcall (1) or vmmcall (2).\n"
"Raises OSError unless CPUID reports VMware.");

static PyObject *py_lb(PyObject *self, PyObject *args)
{
    Regs r = {0};
    int mode = MODE_PORT;
    unsigned long long ax, bx, cx, dx, si, di;
    (void)self;
    if (!PyArg_ParseTuple(args, "KKKKKK|i:lb", &ax, &bx, &cx, &dx, &si, &di, &mode))
        return NULL;
    if (!may_execute(ax, mode))
        return NULL;
    r.ax = ax; r.bx = bx; r.cx = cx; r.dx = dx; r.si = si; r.di = di;
#if BACKDOOR_SUPPORTED
    exec_lb(&r, mode);
#endif
    return regs_tuple(&r, 0);
}

PyDoc_STRVAR(hb_out_doc,
"hb_out(ax, bx, dx, di, bp, data, mode=0) -> (ax, bx, cx, dx, si, di, bp)\n\n"
"High-bandwidth send: `cld; rep outsb` (mode 0), vmcall (1) or vmmcall (2),\n"
"with RSI = the address of data and RCX = len(data), which are therefore\n"
"not parameters: the instruction can never read past the buffer.");

static PyObject *py_hb_out(PyObject *self, PyObject *args)
{
    Regs r = {0};
    int mode = MODE_PORT;
    unsigned long long ax, bx, dx, di, bp;
    Py_buffer data;
    PyObject *result;
    (void)self;
    if (!PyArg_ParseTuple(args, "KKKKKy*|i:hb_out", &ax, &bx, &dx, &di, &bp, &data, &mode))
        return NULL;
    if (!may_execute(ax, mode)) {
        PyBuffer_Release(&data);
        return NULL;
    }
    r.ax = ax; r.bx = bx; r.cx = (uint64_t)data.len; r.dx = dx;
    r.si = (uint64_t)(uintptr_t)data.buf; r.di = di; r.bp = bp;
#if BACKDOOR_SUPPORTED
    exec_hb_out(&r, mode);
#endif
    PyBuffer_Release(&data);
    result = regs_tuple(&r, 1);
    return result;
}

PyDoc_STRVAR(hb_in_doc,
"hb_in(ax, bx, dx, si, bp, size, mode=0) -> ((ax, bx, cx, dx, si, di, bp), data)\n\n"
"High-bandwidth receive: `cld; rep insb` (mode 0), vmcall (1) or vmmcall (2),\n"
"with RDI = a fresh buffer of size bytes and RCX = size.");

static PyObject *py_hb_in(PyObject *self, PyObject *args)
{
    Regs r = {0};
    int mode = MODE_PORT;
    unsigned long long ax, bx, dx, si, bp;
    Py_ssize_t size;
    PyObject *buffer, *regs;
    (void)self;
    if (!PyArg_ParseTuple(args, "KKKKKn|i:hb_in", &ax, &bx, &dx, &si, &bp, &size, &mode))
        return NULL;
    if (size < 0) {
        PyErr_SetString(PyExc_ValueError, "size must not be negative");
        return NULL;
    }
    if (!may_execute(ax, mode))
        return NULL;
    /* Zeroed, so whatever the VMX does not write reads back as zeros, not heap garbage. */
    buffer = PyBytes_FromStringAndSize(NULL, size);
    if (buffer == NULL)
        return NULL;
    memset(PyBytes_AS_STRING(buffer), 0, (size_t)size);
    r.ax = ax; r.bx = bx; r.cx = (uint64_t)size; r.dx = dx; r.si = si;
    r.di = (uint64_t)(uintptr_t)PyBytes_AS_STRING(buffer); r.bp = bp;
#if BACKDOOR_SUPPORTED
    exec_hb_in(&r, mode);
#endif
    regs = regs_tuple(&r, 1);
    if (regs == NULL) {
        Py_DECREF(buffer);
        return NULL;
    }
    return Py_BuildValue("(NN)", regs, buffer);
}

/* Where `exchange` stopped: the index of the call in its sequence. */
enum { AT_SENDSIZE = 0, AT_HB_OUT = 1, AT_RECVSIZE = 2, AT_HB_IN = 3, AT_RECVSTATUS = 4 };

/* The words of `exchange`, in the order of codecs.message.ExchangeWords. */
enum {
    W_DX, W_HB_DX, W_COOKIE_HIGH, W_COOKIE_LOW, W_CX_SENDSIZE, W_CX_RECVSIZE, W_CX_RECVSTATUS,
    W_HB_BX, W_SUCCESS, W_DORECV, W_HB, W_SENDSIZE_TYPE, W_COUNT
};

static int parse_words(PyObject *words, uint64_t w[W_COUNT])
{
    Py_ssize_t i;
    if (!PyTuple_Check(words) || PyTuple_GET_SIZE(words) != W_COUNT) {
        PyErr_Format(PyExc_TypeError, "exchange: words must be a tuple of %d ints", (int)W_COUNT);
        return 0;
    }
    for (i = 0; i < W_COUNT; i++) {
        w[i] = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(words, i));
        if (w[i] == (uint64_t)-1 && PyErr_Occurred())
            return 0;
    }
    return 1;
}

/* A TCLO/RPCI status: the high half of the 32-bit word it comes in. */
#define STATUS_OF(word) (((word) >> 16) & 0xFFFFu)

/* `asked` is what rep insb was asked for (0 before it): its RCX out is what the VMX left
 * untransferred (0 under the trap engine), so the size cannot be read back from the registers. */
static PyObject *stopped_at(int stage, const Regs *r, int with_bp, PyObject *data, Py_ssize_t asked)
{
    PyObject *regs = regs_tuple(r, with_bp);
    if (regs == NULL) {
        Py_XDECREF(data);
        return NULL;
    }
    if (data == NULL)
        data = PyBytes_FromStringAndSize(NULL, 0);
    if (data == NULL) {
        Py_DECREF(regs);
        return NULL;
    }
    return Py_BuildValue("(iNNn)", stage, regs, data, asked);
}

PyDoc_STRVAR(exchange_doc,
"exchange(payload, words) -> bytes | (stage, regs, data, asked)\n\n"
"One message-channel exchange on the I/O port, its backdoor calls back to\n"
"back: SENDSIZE; rep outsb of payload if the VMX offers high bandwidth;\n"
"RECVSIZE; if a message waits, rep insb of it into a fresh bytes object;\n"
"RECVSTATUS.  The registers and the status bits come from words (a tuple\n"
"laid out as codecs.message.ExchangeWords): no protocol constant lives here.\n\n"
"Returns the message received (b\"\" if none), or, at the first answer off\n"
"that path (a failure, a checkpoint, low bandwidth, a wrong type), stops and\n"
"returns (stage, regs, data, asked): stage the index of that call in the sequence\n"
"(0 SENDSIZE, 1 rep outsb, 2 RECVSIZE, 3 rep insb, 4 RECVSTATUS), regs its\n"
"registers out (six for in, seven with RBP for the rep ones), data the bytes\n"
"received so far, asked the size rep insb was asked for (0 before it).  The\n"
"caller goes on from there.");

static PyObject *py_exchange(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Regs r = {0};
    uint64_t w[W_COUNT];
    Py_buffer payload;
    PyObject *data = NULL;
    uint64_t status, size;
    (void)self;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "exchange(payload, words) takes exactly two arguments");
        return NULL;
    }
    if (!parse_words(args[1], w))
        return NULL;
    if (PyObject_GetBuffer(args[0], &payload, PyBUF_SIMPLE) < 0)
        return NULL;
    if (!may_execute(BDOOR_MAGIC, MODE_PORT)) {
        PyBuffer_Release(&payload);
        return NULL;
    }
#if BACKDOOR_SUPPORTED
    /* Sending. */
    r.ax = BDOOR_MAGIC; r.bx = (uint64_t)payload.len; r.cx = w[W_CX_SENDSIZE]; r.dx = w[W_DX];
    r.si = w[W_COOKIE_HIGH]; r.di = w[W_COOKIE_LOW];
    exec_lb(&r, MODE_PORT);
    status = STATUS_OF(r.cx);
    if (!(status & w[W_SUCCESS]) || (payload.len && !(status & w[W_HB]))) {
        PyBuffer_Release(&payload);
        return stopped_at(AT_SENDSIZE, &r, 0, NULL, 0);
    }
    if (payload.len) {
        memset(&r, 0, sizeof r);
        r.ax = BDOOR_MAGIC; r.bx = w[W_HB_BX]; r.cx = (uint64_t)payload.len; r.dx = w[W_HB_DX];
        r.si = (uint64_t)(uintptr_t)payload.buf; r.di = w[W_COOKIE_LOW]; r.bp = w[W_COOKIE_HIGH];
        exec_hb_out(&r, MODE_PORT);
        if (!(STATUS_OF(r.bx) & w[W_SUCCESS])) {
            PyBuffer_Release(&payload);
            return stopped_at(AT_HB_OUT, &r, 1, NULL, 0);
        }
    }
    PyBuffer_Release(&payload);

    /* Receiving. */
    memset(&r, 0, sizeof r);
    r.ax = BDOOR_MAGIC; r.cx = w[W_CX_RECVSIZE]; r.dx = w[W_DX];
    r.si = w[W_COOKIE_HIGH]; r.di = w[W_COOKIE_LOW];
    exec_lb(&r, MODE_PORT);
    status = STATUS_OF(r.cx);
    if (!(status & w[W_SUCCESS]))
        return stopped_at(AT_RECVSIZE, &r, 0, NULL, 0);
    if (!(status & w[W_DORECV]))
        return PyBytes_FromStringAndSize(NULL, 0);
    size = r.bx & 0xFFFFFFFFu;
    if (STATUS_OF(r.dx) != w[W_SENDSIZE_TYPE] || (size && !(status & w[W_HB])))
        return stopped_at(AT_RECVSIZE, &r, 0, NULL, 0);
    data = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)size);
    if (data == NULL)
        return NULL;
    if (size) {
        /* Zeroed, so whatever the VMX does not write reads back as zeros, not heap garbage. */
        memset(PyBytes_AS_STRING(data), 0, (size_t)size);
        memset(&r, 0, sizeof r);
        r.ax = BDOOR_MAGIC; r.bx = w[W_HB_BX]; r.cx = size; r.dx = w[W_HB_DX];
        r.si = w[W_COOKIE_HIGH]; r.di = (uint64_t)(uintptr_t)PyBytes_AS_STRING(data);
        r.bp = w[W_COOKIE_LOW];
        exec_hb_in(&r, MODE_PORT);
        if (!(STATUS_OF(r.bx) & w[W_SUCCESS]))
            return stopped_at(AT_HB_IN, &r, 1, data, (Py_ssize_t)size);
    }
    memset(&r, 0, sizeof r);
    r.ax = BDOOR_MAGIC; r.bx = w[W_SUCCESS]; r.cx = w[W_CX_RECVSTATUS]; r.dx = w[W_DX];
    r.si = w[W_COOKIE_HIGH]; r.di = w[W_COOKIE_LOW];
    exec_lb(&r, MODE_PORT);
    if (!(STATUS_OF(r.cx) & w[W_SUCCESS]))
        return stopped_at(AT_RECVSTATUS, &r, 0, data, (Py_ssize_t)size);
    return data;
#else
    (void)status; (void)size; (void)data;
    PyBuffer_Release(&payload);
    return NULL; /* not reached: may_execute refused */
#endif
}

PyDoc_STRVAR(cpuid_doc,
"cpuid(leaf, subleaf=0) -> (eax, ebx, ecx, edx)\n\n"
"Execute CPUID (safe everywhere on x86-64; the hypervisor answers it).");

static PyObject *py_cpuid(PyObject *self, PyObject *args)
{
    unsigned int leaf, subleaf = 0;
    (void)self;
    if (!PyArg_ParseTuple(args, "I|I:cpuid", &leaf, &subleaf))
        return NULL;
#if BACKDOOR_SUPPORTED
    {
        uint32_t r[4];
        do_cpuid(leaf, subleaf, r);
        return Py_BuildValue("(IIII)", r[0], r[1], r[2], r[3]);
    }
#else
    PyErr_SetString(PyExc_OSError, "cpuid is only implemented on x86-64 Linux");
    return NULL;
#endif
}

PyDoc_STRVAR(vmware_doc,
"vmware() -> bool\n\n"
"What the instruction entry points check: CPUID reports \"VMwareVMware\".\n"
"Decided by the first call in this process and then cached.");

static PyObject *py_vmware(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
#if BACKDOOR_SUPPORTED
    return PyBool_FromLong(is_vmware());
#else
    Py_RETURN_FALSE;
#endif
}

static PyMethodDef methods[] = {
    {"lb", py_lb, METH_VARARGS, lb_doc},
    {"hb_out", py_hb_out, METH_VARARGS, hb_out_doc},
    {"hb_in", py_hb_in, METH_VARARGS, hb_in_doc},
    {"exchange", (PyCFunction)(void (*)(void))py_exchange, METH_FASTCALL, exchange_doc},
    {"cpuid", py_cpuid, METH_VARARGS, cpuid_doc},
    {"vmware", py_vmware, METH_NOARGS, vmware_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "twisted_vmtools._backdoor",
    "VMware backdoor instructions (in/rep outsb/rep insb/vmcall/vmmcall), a whole\n"
    "message-channel exchange made of them, and CPUID.",
    -1,
    methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__backdoor(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "SUPPORTED", BACKDOOR_SUPPORTED) < 0 ||
        PyModule_AddIntConstant(m, "MODE_PORT", MODE_PORT) < 0 ||
        PyModule_AddIntConstant(m, "MODE_VMCALL", MODE_VMCALL) < 0 ||
        PyModule_AddIntConstant(m, "MODE_VMMCALL", MODE_VMMCALL) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
