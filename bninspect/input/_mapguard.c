/* Memory-mapped reads that survive the file shrinking.

   Reading a page of a file mapping that lies past the file's end raises SIGBUS, which ends the
   process (exit 135, nothing said) and cannot be caught in Python: the fault would only repeat.
   A file truncated while `run --stats-only` streams it did exactly that. This module registers
   the address ranges of bninspect's own read-only mappings; its SIGBUS handler, on a fault in
   one of them, maps zero pages over the rest of that range (MAP_FIXED) and notes the fault, so
   the read resumes on zeros and the Python side, asking faulted(), reports the file as changed.
   A SIGBUS anywhere else goes to the previous disposition, as if this handler were not there.

   mmap is not on POSIX's list of async-signal-safe functions, but on Linux it is the plain
   system call, which is what the handler needs; the handler touches nothing else but its own
   fixed table. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define SLOTS 64

typedef struct {
    uintptr_t start, end;        /* [start, end) page-aligned */
    volatile sig_atomic_t active;
    volatile sig_atomic_t faulted;
} Slot;

static Slot slots[SLOTS];
static struct sigaction previous;
static int installed = 0;
static uintptr_t page_size = 4096;

static void on_sigbus(int sig, siginfo_t *info, void *context) {
    (void)context;
    if (info != NULL && info->si_code > 0) { /* a fault, not a kill() */
        uintptr_t address = (uintptr_t)info->si_addr;
        for (int i = 0; i < SLOTS; i++) {
            if (!__atomic_load_n(&slots[i].active, __ATOMIC_ACQUIRE)) continue;
            if (address < slots[i].start || address >= slots[i].end) continue;
            uintptr_t page = address & ~(page_size - 1);
            void *zeros = mmap((void *)page, slots[i].end - page, PROT_READ,
                               MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
            if (zeros != MAP_FAILED) {
                slots[i].faulted = 1;
                return; /* the read is retried, on zeros */
            }
            break;
        }
    }
    /* Not ours, or no zero pages to be had: the previous disposition takes it. A fault
       repeats on return and meets it; a signal sent by kill() is raised again. */
    sigaction(SIGBUS, &previous, NULL);
    if (info == NULL || info->si_code <= 0) raise(sig);
}

static int install(void) {
    if (installed) return 0;
    long size = sysconf(_SC_PAGESIZE);
    if (size > 0) page_size = (uintptr_t)size;
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = on_sigbus;
    action.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&action.sa_mask);
    if (sigaction(SIGBUS, &action, &previous) != 0) return -1;
    installed = 1;
    return 0;
}

/* Whether any page of [start, end) is still mapped (mincore fails with ENOMEM on a range
   with unmapped pages: then the mapping it guarded is gone). */
static int still_mapped(uintptr_t start, uintptr_t end) {
    unsigned char resident;
    return mincore((void *)start, page_size, &resident) == 0 ||
           mincore((void *)(end - page_size), page_size, &resident) == 0;
}

/* guard(address, length) -> token: zero-fill faults in [address, address + length). A slot
   whose range overlaps the new one is reused: its mapping must be gone, since the address is
   mapped anew; with every slot taken, those whose mappings are gone are freed. */
static PyObject *guard(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long address, length;
    if (!PyArg_ParseTuple(args, "KK", &address, &length)) return NULL;
    if (install() != 0) return PyErr_SetFromErrno(PyExc_OSError);
    uintptr_t start = (uintptr_t)address & ~(page_size - 1);
    uintptr_t end = ((uintptr_t)address + (uintptr_t)length + page_size - 1) & ~(page_size - 1);
    for (int i = 0; i < SLOTS; i++) {
        if (slots[i].active && slots[i].start < end && start < slots[i].end) {
            __atomic_store_n(&slots[i].active, 0, __ATOMIC_RELEASE);
        }
    }
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < SLOTS; i++) {
            if (slots[i].active) continue;
            slots[i].start = start;
            slots[i].end = end;
            slots[i].faulted = 0;
            __atomic_store_n(&slots[i].active, 1, __ATOMIC_RELEASE);
            return PyLong_FromLong(i);
        }
        for (int i = 0; i < SLOTS; i++) {
            if (!still_mapped(slots[i].start, slots[i].end)) {
                __atomic_store_n(&slots[i].active, 0, __ATOMIC_RELEASE);
            }
        }
    }
    PyErr_SetString(PyExc_RuntimeError, "too many guarded mappings");
    return NULL;
}

static int slot_of(PyObject *args) {
    int token;
    if (!PyArg_ParseTuple(args, "i", &token)) return -1;
    if (token < 0 || token >= SLOTS) {
        PyErr_SetString(PyExc_ValueError, "not a guard token");
        return -1;
    }
    return token;
}

/* faulted(token) -> bool: whether a read in the range found the file shorter than mapped. */
static PyObject *faulted(PyObject *self, PyObject *args) {
    (void)self;
    int token = slot_of(args);
    if (token < 0) return NULL;
    return PyBool_FromLong(slots[token].faulted);
}

/* release(token): stop guarding the range (before it is unmapped). */
static PyObject *release(PyObject *self, PyObject *args) {
    (void)self;
    int token = slot_of(args);
    if (token < 0) return NULL;
    __atomic_store_n(&slots[token].active, 0, __ATOMIC_RELEASE);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"guard", guard, METH_VARARGS, "guard(address, length) -> token"},
    {"faulted", faulted, METH_VARARGS, "faulted(token) -> bool"},
    {"release", release, METH_VARARGS, "release(token)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_mapguard",
    "Memory-mapped reads that survive the file shrinking (see _mapguard.c).", -1, methods,
};

PyMODINIT_FUNC PyInit__mapguard(void) { return PyModule_Create(&module); }
