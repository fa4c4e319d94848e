/*
 * ipcsem._ledger: the shared-memory ledger of one ipcsem semaphore.
 *
 * This module is the whole protocol: the layout of the segment, the lock that
 * survives its owner's death, the undo log that makes every change atomic with
 * respect to SIGKILL, and the few transactions (take, enqueue, grant, release,
 * disown, cancel, recover) that move units.  Everything that talks to the
 * kernel about *objects* (shm_open, named semaphores, /proc) lives in Python;
 * this file only ever touches the mapped bytes it is given.
 *
 * Why C: an acquire+release pair must cost about one SysV semop (~1 us).
 * Python needs ~1 us for the field stores alone; here the pair is ~0.1 us.
 *
 * THE INVARIANT (checked by Ledger.check, asserted by the torture tests):
 *
 *     available + sum(holder.units) + unowned == capacity,   all terms >= 0
 *
 * - a GRANTED waiter's units are already in its holder slot (granted before it
 *   wakes), so a waiter that dies after the grant is recovered with its holder;
 * - at most one holder slot per identity (pid, start); every pending waiter
 *   entry points at its own process's holder slot, whose `pending` counts them;
 * - `waiting` == number of WAITING entries, tickets are unique;
 * - liveness: while anyone is WAITING, the head of the queue (highest
 *   priority, then lowest ticket) wants more than `available`.  Strict FIFO is
 *   this rule: nobody behind the head is ever granted before it.
 *
 * CRASH ATOMICITY: every store to the ledger goes through tx_store(), which
 * first records (offset, old value) in the undo log and publishes it with one
 * aligned 8-byte store of the log length, then does the data store.
 * tx_commit() empties the log with one 8-byte store.  Whoever takes the lock
 * next and finds a non-empty log (the robust mutex also says EOWNERDEAD) rolls
 * the stores back newest-first; the rollback is idempotent, so a repairer that
 * dies mid-repair is repaired by the next one.  A SIGKILL between any two
 * machine instructions therefore leaves either the state before or the state
 * after a transaction, never a mix.  Side effects outside the ledger (waking a
 * waiter) happen only after commit, and waiters treat wake-ups as hints.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <fcntl.h>
#include <semaphore.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <linux/futex.h>
#endif

#define LEDGER_MAGIC 0x31304d4553435049ULL /* bytes "IPCSEM01" on little-endian */
#define LAYOUT_VERSION 1
#define HEADER_SIZE 4096
#define MUTEX_OFF 512
#define MUTEX_RESERVED 128
#define UNDO_COUNT_OFF 640
#define UNDO_OFF 648
#define UNDO_MAX 64            /* entries of 16 bytes: ends at 1672 < HEADER_SIZE */
#define HOLDER_WORDS 8
#define WAITER_WORDS 12
#define MAX_SLOTS (1 << 20)
#define MAX_CAPACITY 2147483647LL /* SEM_VALUE_MAX on Linux: keeps figures comparable */

/* Header fields, in int64 words from offset 0.  Never reorder: the layout
 * version names this exact order.  New fields go into the reserved words. */
enum {
    H_MAGIC = 0, H_VERSION, H_HEADER_SIZE, H_TOTAL_SIZE, H_CAPACITY,
    H_MAX_HOLDERS, H_MAX_WAITERS, H_HOLDERS_OFF, H_WAITERS_OFF,
    H_CREATED_NS, H_CREATOR_PID, H_INITIAL, H_FLAGS,
    H_AVAILABLE, H_UNOWNED, H_WAITING, H_NEXT_TICKET,
    H_HOLDER_HWM, H_WAITER_HWM,
    H_LAST_HEAL_NS, H_RECOVERED_UNITS, H_RECOVERIES, H_LOCK_REPAIRS,
    H_LOCK_OWNER, H_ACQUISITIONS, H_REGISTRATIONS, H_CHANGES,
    H_NFIELDS /* <= 64: the words up to MUTEX_OFF */
};
#define FLAG_UNLINKED 1

/* Holder slot: one per registered process (free when pid == 0). */
enum { HO_PID = 0, HO_START, HO_UNITS, HO_SINCE, HO_ACQUIRED, HO_PENDING, HO_REGISTERED_NS };
/* Waiter entry: one per blocked acquire call (free when state == 0). */
enum { WA_STATE = 0, WA_PID, WA_START, WA_TID, WA_UNITS, WA_PRIORITY, WA_TICKET,
       WA_SINCE, WA_HOLDER };
enum { W_FREE = 0, W_WAITING = 1, W_GRANTED = 2 };

/* Return codes of take/enqueue. */
#define R_GRANTED (-1)
#define R_BUSY (-2)

/* A view of a ledger: the live mapping, or a private copy taken under the
 * lock (snapshot, check), so the same accessors read both. */
typedef struct {
    char *base;
    Py_ssize_t size;
    volatile int64_t *hdr, *holders, *waiters;
    int64_t capacity, max_holders, max_waiters;
} View;

typedef struct {
    PyObject_HEAD
    Py_buffer buffer;
    int has_buffer;
    View v;
    Py_ssize_t hint; /* holder slot this handle last used: a hint, verified before use */
    int active;      /* calls in progress (some run without the GIL) */
} Ledger;

/* Everything one call needs, on the caller's stack: bodies run without the
 * GIL when the lock was contended, so they touch no Python object and no
 * per-handle state other than the hint. */
enum { E_OK = 0, E_VALUE, E_CORRUPT, E_FULL, E_UNLINKED, E_NOMEM, E_PYTHON };
#define INLINE_WAKES 16
typedef struct {
    int64_t a[6];   /* arguments */
    int64_t r[3];   /* results */
    int err;
    char msg[240];
    Py_ssize_t nwakes, wakes_cap;
    Py_ssize_t *wakes;
    Py_ssize_t inline_wakes[INLINE_WAKES];
    char *copy; /* snapshot/check: private copy of the ledger */
    View cv;
} Call;

static PyObject *CorruptError = NULL; /* set by register_errors() */
static PyObject *FullError = NULL;
static PyObject *UnlinkedError = NULL;
static int64_t self_pid = 0;      /* diagnostic only: who holds the lock */
static long crash_countdown = -1; /* test hook: SIGKILL self at the Nth point */

/* ---------------------------------------------------------------- helpers */

static inline void crash_point(void)
{
    /* Fault injection for the crash tests: a real SIGKILL of this process at
     * a chosen instant inside a transaction.  -1 (the default) disables it. */
    if (crash_countdown >= 0 && crash_countdown-- == 0)
        raise(SIGKILL);
}

static inline int64_t ld(volatile int64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void st(volatile int64_t *p, int64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

static inline int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void fail(Call *c, int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->msg, sizeof c->msg, fmt, ap);
    va_end(ap);
    c->err = err;
}

#define HDR(V, f) ((V)->hdr + (f))
#define HOLDER(V, i, f) ((V)->holders + (i) * HOLDER_WORDS + (f))
#define WAITER(V, i, f) ((V)->waiters + (i) * WAITER_WORDS + (f))
#define UNDO_COUNT(V) ((volatile int64_t *)((V)->base + UNDO_COUNT_OFF))
#define UNDO(V) ((volatile int64_t *)((V)->base + UNDO_OFF))
#define MUTEX(V) ((pthread_mutex_t *)((V)->base + MUTEX_OFF))

/* ---------------------------------------------------- undo-logged stores */

static void tx_store(View *V, volatile int64_t *p, int64_t v)
{
    volatile int64_t *count = UNDO_COUNT(V);
    int64_t n = *count;
    int64_t old = *p;
    if (old == v)
        return; /* nothing to undo, nothing to do */
    if (n >= UNDO_MAX)
        abort(); /* a transaction larger than the log is a bug in this file */
    volatile int64_t *entry = UNDO(V) + 2 * n;
    entry[0] = (int64_t)((char *)p - V->base);
    entry[1] = old;
    crash_point();
    st(count, n + 1); /* the entry exists from this store on */
    crash_point();
    st(p, v);
    crash_point();
}

static void tx_commit(View *V)
{
    st(UNDO_COUNT(V), 0); /* one store: the transaction happened */
    crash_point();
}

/* Roll back a dead lock owner's unfinished transaction.  Returns -1 if the
 * log itself is not believable (the segment is corrupt). */
static int tx_rollback(View *V)
{
    volatile int64_t *count = UNDO_COUNT(V);
    int64_t n = *count;
    if (n < 0 || n > UNDO_MAX)
        return -1;
    for (int64_t i = n - 1; i >= 0; i--) {
        volatile int64_t *entry = UNDO(V) + 2 * i;
        int64_t off = entry[0];
        /* Only ledger words may be named: header fields and slots, never the
         * mutex or the log itself. */
        int in_fields = off >= 0 && off < H_NFIELDS * 8;
        int in_slots = off >= HEADER_SIZE && off + 8 <= V->size;
        if ((off & 7) || !(in_fields || in_slots))
            return -1;
        st((volatile int64_t *)(V->base + off), entry[1]);
        crash_point();
    }
    st(count, 0);
    return 0;
}

/* ------------------------------------------------------------ slot logic */

static int add_wake(Call *c, Py_ssize_t w)
{
    if (c->nwakes == c->wakes_cap) {
        /* plain malloc: this may run without the GIL */
        Py_ssize_t cap = 2 * c->wakes_cap;
        Py_ssize_t *n = malloc(cap * sizeof(Py_ssize_t));
        if (!n) {
            fail(c, E_NOMEM, "out of memory");
            return -1;
        }
        memcpy(n, c->wakes, c->nwakes * sizeof(Py_ssize_t));
        if (c->wakes != c->inline_wakes)
            free(c->wakes);
        c->wakes = n;
        c->wakes_cap = cap;
    }
    c->wakes[c->nwakes++] = w;
    return 0;
}

static inline int64_t holder_hwm(View *V)
{
    int64_t h = ld(HDR(V, H_HOLDER_HWM));
    return h < 0 ? 0 : (h > V->max_holders ? V->max_holders : h);
}

static inline int64_t waiter_hwm(View *V)
{
    int64_t h = ld(HDR(V, H_WAITER_HWM));
    return h < 0 ? 0 : (h > V->max_waiters ? V->max_waiters : h);
}

static Py_ssize_t find_holder(Ledger *L, int64_t pid, int64_t start)
{
    View *V = &L->v;
    Py_ssize_t i = L->hint;
    int64_t hwm = holder_hwm(V);
    if (i < hwm && ld(HOLDER(V, i, HO_PID)) == pid && ld(HOLDER(V, i, HO_START)) == start)
        return i;
    for (i = 0; i < hwm; i++) {
        if (ld(HOLDER(V, i, HO_PID)) == pid && ld(HOLDER(V, i, HO_START)) == start) {
            L->hint = i;
            return i;
        }
    }
    return -1;
}

/* Find this identity's holder slot or register it in a free one (no commit:
 * part of the caller's transaction).  -1 when the table is full. */
static Py_ssize_t find_or_register(Ledger *L, Call *c, int64_t pid, int64_t start, int64_t now)
{
    View *V = &L->v;
    Py_ssize_t i = find_holder(L, pid, start);
    if (i >= 0)
        return i;
    int64_t hwm = holder_hwm(V);
    for (i = 0; i < hwm; i++)
        if (ld(HOLDER(V, i, HO_PID)) == 0)
            break;
    if (i == hwm) {
        if (hwm >= V->max_holders) {
            fail(c, E_FULL, "holder table full (%lld processes registered)",
                 (long long)V->max_holders);
            return -1;
        }
        tx_store(V, HDR(V, H_HOLDER_HWM), hwm + 1);
    }
    tx_store(V, HOLDER(V, i, HO_START), start);
    tx_store(V, HOLDER(V, i, HO_UNITS), 0);
    tx_store(V, HOLDER(V, i, HO_SINCE), 0);
    tx_store(V, HOLDER(V, i, HO_ACQUIRED), 0);
    tx_store(V, HOLDER(V, i, HO_PENDING), 0);
    tx_store(V, HOLDER(V, i, HO_REGISTERED_NS), now);
    tx_store(V, HOLDER(V, i, HO_PID), pid);
    tx_store(V, HDR(V, H_REGISTRATIONS), ld(HDR(V, H_REGISTRATIONS)) + 1);
    L->hint = i;
    return i;
}

static void unregister_holder(View *V, Py_ssize_t h)
{
    tx_store(V, HOLDER(V, h, HO_PID), 0);
    tx_store(V, HOLDER(V, h, HO_START), 0);
    /* Keep the scanned range short once the top slots are gone. */
    int64_t hwm = holder_hwm(V);
    while (hwm > 0 && ld(HOLDER(V, hwm - 1, HO_PID)) == 0)
        hwm--;
    tx_store(V, HDR(V, H_HOLDER_HWM), hwm);
    tx_store(V, HDR(V, H_CHANGES), ld(HDR(V, H_CHANGES)) + 1);
}

static void give_units(View *V, Py_ssize_t h, int64_t units, int64_t now)
{
    int64_t held = ld(HOLDER(V, h, HO_UNITS));
    if (held == 0)
        tx_store(V, HOLDER(V, h, HO_SINCE), now);
    tx_store(V, HOLDER(V, h, HO_UNITS), held + units);
    tx_store(V, HOLDER(V, h, HO_ACQUIRED), ld(HOLDER(V, h, HO_ACQUIRED)) + 1);
    tx_store(V, HDR(V, H_AVAILABLE), ld(HDR(V, H_AVAILABLE)) - units);
    tx_store(V, HDR(V, H_ACQUISITIONS), ld(HDR(V, H_ACQUISITIONS)) + 1);
}

/* The head of the queue: highest priority, then oldest ticket.  -1 if none. */
static Py_ssize_t queue_head(View *V)
{
    Py_ssize_t best = -1;
    int64_t best_prio = 0, best_ticket = 0;
    int64_t hwm = waiter_hwm(V);
    for (Py_ssize_t w = 0; w < hwm; w++) {
        if (ld(WAITER(V, w, WA_STATE)) != W_WAITING)
            continue;
        int64_t prio = ld(WAITER(V, w, WA_PRIORITY));
        int64_t ticket = ld(WAITER(V, w, WA_TICKET));
        if (best < 0 || prio > best_prio || (prio == best_prio && ticket < best_ticket)) {
            best = w;
            best_prio = prio;
            best_ticket = ticket;
        }
    }
    return best;
}

/* May a new request of this priority take units now without overtaking
 * anyone?  Only if nobody of the same or a higher priority is queued. */
static int nobody_ahead(View *V, int64_t priority)
{
    if (ld(HDR(V, H_WAITING)) == 0)
        return 1;
    Py_ssize_t head = queue_head(V);
    return head < 0 || ld(WAITER(V, head, WA_PRIORITY)) < priority;
}

/* Grant units to the queue in order until the head wants more than is free.
 * One transaction per grant keeps the undo log small.  Collects wakes. */
static int grant_loop(View *V, Call *c)
{
    int64_t now = 0;
    while (ld(HDR(V, H_WAITING)) > 0) {
        Py_ssize_t w = queue_head(V);
        if (w < 0)
            break;
        int64_t units = ld(WAITER(V, w, WA_UNITS));
        if (units > ld(HDR(V, H_AVAILABLE)))
            break;
        int64_t h = ld(WAITER(V, w, WA_HOLDER));
        if (h < 0 || h >= V->max_holders || ld(HOLDER(V, h, HO_PID)) != ld(WAITER(V, w, WA_PID)) ||
            ld(HOLDER(V, h, HO_START)) != ld(WAITER(V, w, WA_START)) || units < 1) {
            fail(c, E_CORRUPT, "waiter entry %zd is inconsistent with its holder slot", w);
            return -1;
        }
        if (!now)
            now = now_ns();
        give_units(V, h, units, now);
        tx_store(V, WAITER(V, w, WA_STATE), W_GRANTED);
        tx_store(V, HDR(V, H_WAITING), ld(HDR(V, H_WAITING)) - 1);
        tx_commit(V);
        if (add_wake(c, w) < 0)
            return -1;
    }
    return 0;
}

/* Free a pending (WAITING or GRANTED) entry; part of a transaction. */
static void free_waiter(View *V, Py_ssize_t w)
{
    int64_t state = ld(WAITER(V, w, WA_STATE));
    int64_t h = ld(WAITER(V, w, WA_HOLDER));
    if (state == W_WAITING)
        tx_store(V, HDR(V, H_WAITING), ld(HDR(V, H_WAITING)) - 1);
    if (h >= 0 && h < V->max_holders)
        tx_store(V, HOLDER(V, h, HO_PENDING), ld(HOLDER(V, h, HO_PENDING)) - 1);
    tx_store(V, WAITER(V, w, WA_STATE), W_FREE);
    int64_t hwm = waiter_hwm(V);
    while (hwm > 0 && ld(WAITER(V, hwm - 1, WA_STATE)) == W_FREE)
        hwm--;
    tx_store(V, HDR(V, H_WAITER_HWM), hwm);
}

/* ------------------------------------------------------------------ lock */

/* Called right after the mutex is ours.  The mutex is robust: if its owner
 * died we got EOWNERDEAD.  A non-empty undo log means the same thing and is
 * checked on every lock, so repair does not depend on how we learnt of it. */
static int after_lock(View *V, Call *c, int rc)
{
    if (rc == EOWNERDEAD) {
        pthread_mutex_consistent(MUTEX(V));
        st(HDR(V, H_LOCK_REPAIRS), ld(HDR(V, H_LOCK_REPAIRS)) + 1);
    } else if (rc != 0) {
        fail(c, E_CORRUPT, "ledger lock unusable (%s)", strerror(rc));
        return -1;
    }
    st(HDR(V, H_LOCK_OWNER), self_pid);
    if (rc == EOWNERDEAD || *UNDO_COUNT(V) != 0) {
        if (*UNDO_COUNT(V) != 0 && tx_rollback(V) < 0) {
            fail(c, E_CORRUPT, "undo log is corrupt");
            return -1;
        }
        /* The dead owner may have died between a commit and the grants that
         * follow it (release, cancel, recover and each grant commit first):
         * the log is empty then, but units may be free for the queue head.
         * It may also have granted and not yet rung: ring every granted
         * entry (a spurious ring costs a waiter one look at the ledger). */
        int64_t hwm = waiter_hwm(V);
        for (Py_ssize_t w = 0; w < hwm; w++)
            if (ld(WAITER(V, w, WA_STATE)) == W_GRANTED && add_wake(c, w) < 0)
                return -1;
        if (grant_loop(V, c) < 0)
            return -1;
    }
    return 0;
}

static void unlock(View *V)
{
    st(HDR(V, H_LOCK_OWNER), 0);
    crash_point();
    pthread_mutex_unlock(MUTEX(V));
}

#if defined(__GLIBC__) && defined(FUTEX_OWNER_DIED)
/* The kernel marks a robust mutex owner-dead by walking the dead thread's
 * robust list, which lives in *its* memory: if the process unmapped the ledger
 * before dying (Python unmaps at interpreter exit; any process can munmap),
 * the walk skips it and the mutex stays "held" by a dead TID forever.  A
 * waiter that has waited a whole slice looks at the owner TID in the futex
 * word (glibc keeps it in __lock, the mutex's first word, as the kernel ABI
 * requires) and, if no such task exists, sets FUTEX_OWNER_DIED itself, as the
 * kernel would have: the next lock attempt then gets EOWNERDEAD and repairs.
 * A reused TID only makes us keep waiting, never steal a live owner's lock. */
static void mark_vanished_owner(View *V)
{
    volatile uint32_t *word = (volatile uint32_t *)MUTEX(V);
    uint32_t w = __atomic_load_n(word, __ATOMIC_ACQUIRE);
    pid_t tid = (pid_t)(w & FUTEX_TID_MASK);
    if (tid == 0 || (w & FUTEX_OWNER_DIED))
        return;
    if (kill(tid, 0) == 0 || errno != ESRCH)
        return;
    __atomic_compare_exchange_n(word, &w, w | FUTEX_OWNER_DIED, 0, __ATOMIC_ACQ_REL,
                                __ATOMIC_ACQUIRE);
}
#else
static void mark_vanished_owner(View *V) { (void)V; }
#endif

typedef void (*Body)(Ledger *L, Call *c);

/* Run one transaction body under the ledger lock.  Uncontended: with the
 * GIL, no system call.  Contended: the GIL is released before waiting and
 * re-taken only after unlock, so nobody ever holds the ledger lock while
 * waiting for a GIL.  Waiting is sliced so Ctrl-C is seen even when the lock
 * owner is a stopped process.  Returns -1 with a Python error set. */
static int run_locked(Ledger *L, Body body, Call *c)
{
    View *V = &L->v;
    if (!V->base) {
        PyErr_SetString(PyExc_ValueError, "ledger is closed");
        return -1;
    }
    c->wakes = c->inline_wakes;
    c->wakes_cap = INLINE_WAKES;
    L->active++; /* with the GIL: release_buffer() refuses while > 0 */
    int rc = pthread_mutex_trylock(MUTEX(V));
    if (rc != EBUSY) {
        if (after_lock(V, c, rc) == 0)
            body(L, c);
        if (rc == 0 || rc == EOWNERDEAD)
            unlock(V);
    } else {
        PyThreadState *ts = PyEval_SaveThread();
        for (;;) {
            struct timespec deadline;
            clock_gettime(CLOCK_REALTIME, &deadline);
            deadline.tv_nsec += 200 * 1000 * 1000;
            if (deadline.tv_nsec >= 1000000000L) {
                deadline.tv_sec += 1;
                deadline.tv_nsec -= 1000000000L;
            }
            rc = pthread_mutex_timedlock(MUTEX(V), &deadline);
            if (rc != ETIMEDOUT)
                break;
            mark_vanished_owner(V);
            PyEval_RestoreThread(ts);
            if (PyErr_CheckSignals() < 0) {
                L->active--;
                return -1;
            }
            ts = PyEval_SaveThread();
        }
        if (after_lock(V, c, rc) == 0)
            body(L, c);
        if (rc == 0 || rc == EOWNERDEAD)
            unlock(V);
        PyEval_RestoreThread(ts);
    }
    L->active--;
    if (c->err == E_OK)
        return 0;
    PyObject *type = c->err == E_VALUE      ? PyExc_ValueError
                     : c->err == E_FULL     ? FullError
                     : c->err == E_UNLINKED ? UnlinkedError
                     : c->err == E_NOMEM    ? PyExc_MemoryError
                                            : CorruptError;
    PyErr_SetString(type, c->msg);
    return -1;
}

static void call_done(Call *c)
{
    if (c->wakes && c->wakes != c->inline_wakes)
        free(c->wakes);
    free(c->copy);
}

/* None, or the list of waiter entries to wake: the caller rings their
 * doorbells after unlock.  Wakes can come from any call, because any lock
 * may repair a dead owner's work and grant. */
static PyObject *wakes_list(Call *c)
{
    if (c->nwakes == 0)
        Py_RETURN_NONE;
    PyObject *list = PyList_New(c->nwakes);
    if (!list)
        return NULL;
    for (Py_ssize_t i = 0; i < c->nwakes; i++)
        PyList_SET_ITEM(list, i, PyLong_FromSsize_t(c->wakes[i]));
    return list;
}

/* An int result that must still carry wakes from a repair: int, or
 * (int, [wakes]) in that rare case, so the fast path allocates nothing. */
static PyObject *code_result(Call *c, long code)
{
    PyObject *r;
    if (c->nwakes == 0)
        r = PyLong_FromLong(code);
    else {
        PyObject *wakes = wakes_list(c);
        r = wakes ? Py_BuildValue("(lN)", code, wakes) : NULL;
    }
    call_done(c);
    return r;
}

/* -------------------------------------------------------- argument parsing */

static int parse_args(Call *c, PyObject *const *args, Py_ssize_t nargs, Py_ssize_t want,
                      const char *fname)
{
    memset(c, 0, offsetof(Call, inline_wakes));
    c->copy = NULL;
    if (nargs != want) {
        PyErr_Format(PyExc_TypeError, "%s takes %zd arguments", fname, want);
        return -1;
    }
    for (Py_ssize_t i = 0; i < nargs; i++) {
        c->a[i] = PyLong_AsLongLong(args[i]);
        if (c->a[i] == -1 && PyErr_Occurred())
            return -1;
    }
    return 0;
}

static int check_units(Ledger *L, int64_t units)
{
    if (units < 1 || units > L->v.capacity) {
        PyErr_Format(PyExc_ValueError, "units must be in 1..%lld (the capacity), got %lld",
                     (long long)L->v.capacity, (long long)units);
        return -1;
    }
    return 0;
}

/* ----------------------------------------------------------- transactions */

static int refuse_if_unlinked(View *V, Call *c)
{
    if (ld(HDR(V, H_FLAGS)) & FLAG_UNLINKED) {
        fail(c, E_UNLINKED, "the semaphore was unlinked");
        return -1;
    }
    return 0;
}

/* take(pid, start, units, priority) -> -1 granted | -2 busy.
 * The uncontended path: lock, a few stores, commit, unlock. */
static void body_take(Ledger *L, Call *c)
{
    View *V = &L->v;
    int64_t units = c->a[2];
    c->r[0] = R_BUSY;
    if (refuse_if_unlinked(V, c) < 0)
        return;
    if (ld(HDR(V, H_AVAILABLE)) >= units && nobody_ahead(V, c->a[3])) {
        int64_t now = now_ns();
        Py_ssize_t h = find_or_register(L, c, c->a[0], c->a[1], now);
        if (h < 0)
            return;
        give_units(V, h, units, now);
        tx_commit(V);
        c->r[0] = R_GRANTED;
    }
}

static PyObject *Ledger_take(Ledger *L, PyObject *const *args, Py_ssize_t nargs)
{
    Call c;
    if (parse_args(&c, args, nargs, 4, "take") < 0 || check_units(L, c.a[2]) < 0)
        return NULL;
    if (run_locked(L, body_take, &c) < 0) {
        call_done(&c);
        return NULL;
    }
    return code_result(&c, (long)c.r[0]);
}

/* enqueue(pid, start, tid, units, priority) -> -1 granted | waiter index.
 * Re-checks the fast path under the lock, so a caller that lost a race with a
 * release is not queued behind nobody. */
static void body_enqueue(Ledger *L, Call *c)
{
    View *V = &L->v;
    int64_t pid = c->a[0], start = c->a[1], tid = c->a[2], units = c->a[3], priority = c->a[4];
    if (refuse_if_unlinked(V, c) < 0)
        return;
    int64_t now = now_ns();
    Py_ssize_t h = find_or_register(L, c, pid, start, now);
    if (h < 0)
        return;
    if (ld(HDR(V, H_AVAILABLE)) >= units && nobody_ahead(V, priority)) {
        give_units(V, h, units, now);
        tx_commit(V);
        c->r[0] = R_GRANTED;
        return;
    }
    int64_t hwm = waiter_hwm(V);
    Py_ssize_t w;
    for (w = 0; w < hwm; w++)
        if (ld(WAITER(V, w, WA_STATE)) == W_FREE)
            break;
    if (w == hwm) {
        if (hwm >= V->max_waiters) {
            tx_commit(V); /* keep the registration: it is consistent */
            fail(c, E_FULL, "wait queue full (%lld waiters)", (long long)V->max_waiters);
            return;
        }
        tx_store(V, HDR(V, H_WAITER_HWM), hwm + 1);
    }
    int64_t ticket = ld(HDR(V, H_NEXT_TICKET));
    tx_store(V, WAITER(V, w, WA_PID), pid);
    tx_store(V, WAITER(V, w, WA_START), start);
    tx_store(V, WAITER(V, w, WA_TID), tid);
    tx_store(V, WAITER(V, w, WA_UNITS), units);
    tx_store(V, WAITER(V, w, WA_PRIORITY), priority);
    tx_store(V, WAITER(V, w, WA_TICKET), ticket);
    tx_store(V, WAITER(V, w, WA_SINCE), now);
    tx_store(V, WAITER(V, w, WA_HOLDER), h);
    tx_store(V, WAITER(V, w, WA_STATE), W_WAITING);
    tx_store(V, HDR(V, H_NEXT_TICKET), ticket + 1);
    tx_store(V, HDR(V, H_WAITING), ld(HDR(V, H_WAITING)) + 1);
    tx_store(V, HOLDER(V, h, HO_PENDING), ld(HOLDER(V, h, HO_PENDING)) + 1);
    tx_commit(V);
    c->r[0] = w;
}

static PyObject *Ledger_enqueue(Ledger *L, PyObject *const *args, Py_ssize_t nargs)
{
    Call c;
    if (parse_args(&c, args, nargs, 5, "enqueue") < 0 || check_units(L, c.a[3]) < 0)
        return NULL;
    if (c.a[4] < INT32_MIN || c.a[4] > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "priority must fit in 32 bits");
        return NULL;
    }
    if (run_locked(L, body_enqueue, &c) < 0) {
        call_done(&c);
        return NULL;
    }
    return code_result(&c, (long)c.r[0]);
}

/* state(w) -> entry state, read without the lock (a waiter's spin/poll). */
static PyObject *Ledger_state(Ledger *L, PyObject *arg)
{
    Py_ssize_t w = PyLong_AsSsize_t(arg);
    if (w == -1 && PyErr_Occurred())
        return NULL;
    if (!L->v.base || w < 0 || w >= L->v.max_waiters) {
        PyErr_SetString(PyExc_ValueError, "waiter index out of range or ledger closed");
        return NULL;
    }
    return PyLong_FromLongLong(ld(WAITER(&L->v, w, WA_STATE)));
}

/* settle(w, pid, start, cancel) -> (outcome, wakes)
 * outcome 1: granted (entry freed, the units are the caller's);
 *         0: still waiting (only when cancel is false and not unlinked);
 *        -1: cancelled, or the entry is gone. */
static void body_settle(Ledger *L, Call *c)
{
    View *V = &L->v;
    int64_t w = c->a[0], pid = c->a[1], start = c->a[2], cancel = c->a[3];
    c->r[0] = -1;
    if (ld(WAITER(V, w, WA_STATE)) == W_FREE || ld(WAITER(V, w, WA_PID)) != pid ||
        ld(WAITER(V, w, WA_START)) != start)
        return; /* not ours any more */
    int64_t state = ld(WAITER(V, w, WA_STATE));
    if (state == W_GRANTED) {
        free_waiter(V, w);
        tx_commit(V);
        c->r[0] = 1;
    } else if (cancel || (ld(HDR(V, H_FLAGS)) & FLAG_UNLINKED)) {
        free_waiter(V, w);
        tx_commit(V);
        /* The head leaving can let smaller requests behind it go. */
        grant_loop(V, c);
    } else {
        c->r[0] = 0;
    }
}

static PyObject *Ledger_settle(Ledger *L, PyObject *const *args, Py_ssize_t nargs)
{
    Call c;
    if (parse_args(&c, args, nargs, 4, "settle") < 0)
        return NULL;
    if (c.a[0] < 0 || c.a[0] >= L->v.max_waiters) {
        PyErr_SetString(PyExc_ValueError, "waiter index out of range");
        return NULL;
    }
    if (run_locked(L, body_settle, &c) < 0) {
        call_done(&c);
        return NULL;
    }
    PyObject *wakes = wakes_list(&c);
    long outcome = (long)c.r[0];
    call_done(&c);
    return wakes ? Py_BuildValue("(lN)", outcome, wakes) : NULL;
}

/* release(pid, start, units) -> None | [wakes]
 * Owned units first; the rest is an unowned post, allowed only while it does
 * not push the total over capacity.  All or nothing. */
static void body_release(Ledger *L, Call *c)
{
    View *V = &L->v;
    int64_t units = c->a[2];
    Py_ssize_t h = find_holder(L, c->a[0], c->a[1]);
    int64_t owned = h >= 0 ? ld(HOLDER(V, h, HO_UNITS)) : 0;
    int64_t from_owned = owned < units ? owned : units;
    int64_t extra = units - from_owned;
    int64_t unowned = ld(HDR(V, H_UNOWNED));
    if (extra > unowned) {
        fail(c, E_VALUE,
             "release(%lld): this process holds %lld unit(s) and only %lld unit(s) are out "
             "without an owner; releasing more would exceed the capacity %lld",
             (long long)units, (long long)owned, (long long)unowned, (long long)V->capacity);
        return;
    }
    if (from_owned)
        tx_store(V, HOLDER(V, h, HO_UNITS), owned - from_owned);
    if (extra)
        tx_store(V, HDR(V, H_UNOWNED), unowned - extra);
    tx_store(V, HDR(V, H_AVAILABLE), ld(HDR(V, H_AVAILABLE)) + units);
    tx_commit(V);
    grant_loop(V, c);
}

static PyObject *Ledger_release(Ledger *L, PyObject *const *args, Py_ssize_t nargs)
{
    Call c;
    if (parse_args(&c, args, nargs, 3, "release") < 0 || check_units(L, c.a[2]) < 0)
        return NULL;
    if (run_locked(L, body_release, &c) < 0) {
        call_done(&c);
        return NULL;
    }
    PyObject *r = wakes_list(&c);
    call_done(&c);
    return r;
}

/* disown(pid, start, units): owned units become units out without an owner
 * (a hand-off: a consumer's item, a producer's filled slot). */
static void body_disown(Ledger *L, Call *c)
{
    View *V = &L->v;
    Py_ssize_t h = find_holder(L, c->a[0], c->a[1]);
    int64_t owned = h >= 0 ? ld(HOLDER(V, h, HO_UNITS)) : 0;
    if (owned < c->a[2]) {
        fail(c, E_VALUE, "disown(%lld): this process holds only %lld unit(s)",
             (long long)c->a[2], (long long)owned);
        return;
    }
    tx_store(V, HOLDER(V, h, HO_UNITS), owned - c->a[2]);
    tx_store(V, HDR(V, H_UNOWNED), ld(HDR(V, H_UNOWNED)) + c->a[2]);
    tx_commit(V);
}

static PyObject *Ledger_disown(Ledger *L, PyObject *const *args, Py_ssize_t nargs)
{
    Call c;
    if (parse_args(&c, args, nargs, 3, "disown") < 0 || check_units(L, c.a[2]) < 0)
        return NULL;
    if (run_locked(L, body_disown, &c) < 0) {
        call_done(&c);
        return NULL;
    }
    return code_result(&c, 0);
}

/* recover(pid, start) -> (units, entries, wakes)
 * Return everything the (dead) identity holds or waits for.  The caller has
 * established that the identity is dead; this is idempotent: a second call
 * finds nothing, so two recoverers never post a unit twice. */
static void body_recover(Ledger *L, Call *c)
{
    View *V = &L->v;
    int64_t pid = c->a[0], start = c->a[1];
    int64_t entries = 0, units = 0;
    int64_t hwm = waiter_hwm(V);
    for (Py_ssize_t w = 0; w < hwm; w++) {
        if (ld(WAITER(V, w, WA_STATE)) != W_FREE && ld(WAITER(V, w, WA_PID)) == pid &&
            ld(WAITER(V, w, WA_START)) == start) {
            free_waiter(V, w);
            tx_commit(V);
            entries++;
        }
    }
    Py_ssize_t h = find_holder(L, pid, start);
    if (h >= 0) {
        units = ld(HOLDER(V, h, HO_UNITS));
        if (units) {
            tx_store(V, HDR(V, H_AVAILABLE), ld(HDR(V, H_AVAILABLE)) + units);
            tx_store(V, HDR(V, H_RECOVERED_UNITS), ld(HDR(V, H_RECOVERED_UNITS)) + units);
        }
        if (units || entries)
            tx_store(V, HDR(V, H_RECOVERIES), ld(HDR(V, H_RECOVERIES)) + 1);
        tx_store(V, HOLDER(V, h, HO_UNITS), 0);
        tx_store(V, HOLDER(V, h, HO_PENDING), 0);
        unregister_holder(V, h);
        tx_commit(V);
    }
    c->r[0] = units;
    c->r[1] = entries;
    grant_loop(V, c);
}

static PyObject *Ledger_recover(Ledger *L, PyObject *const *args, Py_ssize_t nargs)
{
    Call c;
    if (parse_args(&c, args, nargs, 2, "recover") < 0)
        return NULL;
    if (c.a[0] <= 0) {
        PyErr_SetString(PyExc_ValueError, "pid must be positive");
        return NULL;
    }
    if (run_locked(L, body_recover, &c) < 0) {
        call_done(&c);
        return NULL;
    }
    PyObject *wakes = wakes_list(&c);
    PyObject *r = wakes ? Py_BuildValue("(LLN)", (long long)c.r[0], (long long)c.r[1], wakes) : NULL;
    call_done(&c);
    return r;
}

/* unregister(pid, start) -> 1 if an idle registration was dropped (close()). */
static void body_unregister(Ledger *L, Call *c)
{
    View *V = &L->v;
    Py_ssize_t h = find_holder(L, c->a[0], c->a[1]);
    if (h >= 0 && ld(HOLDER(V, h, HO_UNITS)) == 0 && ld(HOLDER(V, h, HO_PENDING)) == 0) {
        unregister_holder(V, h);
        tx_commit(V);
        c->r[0] = 1;
    }
}

static PyObject *Ledger_unregister(Ledger *L, PyObject *const *args, Py_ssize_t nargs)
{
    Call c;
    if (parse_args(&c, args, nargs, 2, "unregister") < 0)
        return NULL;
    if (run_locked(L, body_unregister, &c) < 0) {
        call_done(&c);
        return NULL;
    }
    return code_result(&c, (long)c.r[0]);
}

/* mark_unlinked() -> None | [wakes of every waiter]: after unlink nobody new
 * can open the name, so queued waiters are woken to give up. */
static void body_mark_unlinked(Ledger *L, Call *c)
{
    View *V = &L->v;
    tx_store(V, HDR(V, H_FLAGS), ld(HDR(V, H_FLAGS)) | FLAG_UNLINKED);
    tx_commit(V);
    int64_t hwm = waiter_hwm(V);
    for (Py_ssize_t w = 0; w < hwm; w++)
        if (ld(WAITER(V, w, WA_STATE)) == W_WAITING && add_wake(c, w) < 0)
            return;
}

static PyObject *Ledger_mark_unlinked(Ledger *L, PyObject *Py_UNUSED(ignored))
{
    Call c;
    if (parse_args(&c, NULL, 0, 0, "mark_unlinked") < 0)
        return NULL;
    if (run_locked(L, body_mark_unlinked, &c) < 0) {
        call_done(&c);
        return NULL;
    }
    PyObject *r = wakes_list(&c);
    call_done(&c);
    return r;
}

/* claim_heal(now_ns, interval_ns) -> bool: lock-free election of one healer
 * per interval, so a thousand blocked waiters do not all scan /proc. */
static PyObject *Ledger_claim_heal(Ledger *L, PyObject *const *args, Py_ssize_t nargs)
{
    Call c;
    if (parse_args(&c, args, nargs, 2, "claim_heal") < 0)
        return NULL;
    if (!L->v.base) {
        PyErr_SetString(PyExc_ValueError, "ledger is closed");
        return NULL;
    }
    volatile int64_t *p = HDR(&L->v, H_LAST_HEAL_NS);
    int64_t last = ld(p);
    if (c.a[0] >= last && c.a[0] - last < c.a[1])
        Py_RETURN_FALSE;
    int won = __atomic_compare_exchange_n(p, &last, c.a[0], 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    return PyBool_FromLong(won);
}

/* --------------------------------------------------------- observation */

/* Copy the ledger under the lock; everything after works on the copy, so a
 * status tool or check() holds the lock only for a memcpy. */
static void body_copy(Ledger *L, Call *c)
{
    View *V = &L->v;
    int full = (int)c->a[0];
    int64_t hh = full ? V->max_holders : holder_hwm(V);
    int64_t wh = full ? V->max_waiters : waiter_hwm(V);
    Py_ssize_t hbytes = hh * HOLDER_WORDS * 8, wbytes = wh * WAITER_WORDS * 8;
    Py_ssize_t size = HEADER_SIZE + V->max_holders * HOLDER_WORDS * 8 +
                      V->max_waiters * WAITER_WORDS * 8;
    char *copy = calloc(1, size);
    if (!copy) {
        fail(c, E_NOMEM, "out of memory");
        return;
    }
    memcpy(copy, V->base, HEADER_SIZE);
    memcpy(copy + ((char *)V->holders - V->base), (char *)V->holders, hbytes);
    memcpy(copy + ((char *)V->waiters - V->base), (char *)V->waiters, wbytes);
    c->copy = copy;
    c->cv = *V;
    c->cv.base = copy;
    c->cv.size = size;
    c->cv.hdr = (volatile int64_t *)copy;
    c->cv.holders = (volatile int64_t *)(copy + ((char *)V->holders - V->base));
    c->cv.waiters = (volatile int64_t *)(copy + ((char *)V->waiters - V->base));
}

static int copy_ledger(Ledger *L, Call *c, int full)
{
    memset(c, 0, offsetof(Call, inline_wakes));
    c->copy = NULL;
    c->a[0] = full;
    return run_locked(L, body_copy, c);
}

static PyObject *header_dict(View *V)
{
    return Py_BuildValue(
        "{sLsLsLsLsLsLsLsLsLsLsLsLsLsLsLsLsLsLsLsLsL}",
        "capacity", (long long)V->capacity, "max_holders", (long long)V->max_holders,
        "max_waiters", (long long)V->max_waiters, "created_ns", (long long)ld(HDR(V, H_CREATED_NS)),
        "creator_pid", (long long)ld(HDR(V, H_CREATOR_PID)), "initial",
        (long long)ld(HDR(V, H_INITIAL)), "flags", (long long)ld(HDR(V, H_FLAGS)), "available",
        (long long)ld(HDR(V, H_AVAILABLE)), "unowned", (long long)ld(HDR(V, H_UNOWNED)),
        "waiting", (long long)ld(HDR(V, H_WAITING)), "next_ticket",
        (long long)ld(HDR(V, H_NEXT_TICKET)), "recovered_units",
        (long long)ld(HDR(V, H_RECOVERED_UNITS)), "recoveries", (long long)ld(HDR(V, H_RECOVERIES)),
        "lock_repairs", (long long)ld(HDR(V, H_LOCK_REPAIRS)), "lock_owner",
        (long long)ld(HDR(V, H_LOCK_OWNER)), "acquisitions", (long long)ld(HDR(V, H_ACQUISITIONS)),
        "registrations", (long long)ld(HDR(V, H_REGISTRATIONS)), "changes",
        (long long)ld(HDR(V, H_CHANGES)), "holder_hwm", (long long)holder_hwm(V), "waiter_hwm",
        (long long)waiter_hwm(V), "undo_count", (long long)*UNDO_COUNT(V));
}

static PyObject *collect(View *V)
{
    PyObject *hdr = header_dict(V);
    PyObject *holders = PyList_New(0), *waiters = PyList_New(0);
    if (!hdr || !holders || !waiters)
        goto fail;
    int64_t hwm = holder_hwm(V);
    for (Py_ssize_t i = 0; i < hwm; i++) {
        if (ld(HOLDER(V, i, HO_PID)) == 0)
            continue;
        PyObject *t = Py_BuildValue(
            "(nLLLLLLL)", i, (long long)ld(HOLDER(V, i, HO_PID)),
            (long long)ld(HOLDER(V, i, HO_START)), (long long)ld(HOLDER(V, i, HO_UNITS)),
            (long long)ld(HOLDER(V, i, HO_SINCE)), (long long)ld(HOLDER(V, i, HO_ACQUIRED)),
            (long long)ld(HOLDER(V, i, HO_PENDING)), (long long)ld(HOLDER(V, i, HO_REGISTERED_NS)));
        if (!t || PyList_Append(holders, t) < 0) {
            Py_XDECREF(t);
            goto fail;
        }
        Py_DECREF(t);
    }
    hwm = waiter_hwm(V);
    for (Py_ssize_t w = 0; w < hwm; w++) {
        if (ld(WAITER(V, w, WA_STATE)) == W_FREE)
            continue;
        PyObject *t = Py_BuildValue(
            "(nLLLLLLLLL)", w, (long long)ld(WAITER(V, w, WA_STATE)),
            (long long)ld(WAITER(V, w, WA_PID)), (long long)ld(WAITER(V, w, WA_START)),
            (long long)ld(WAITER(V, w, WA_TID)), (long long)ld(WAITER(V, w, WA_UNITS)),
            (long long)ld(WAITER(V, w, WA_PRIORITY)), (long long)ld(WAITER(V, w, WA_TICKET)),
            (long long)ld(WAITER(V, w, WA_SINCE)), (long long)ld(WAITER(V, w, WA_HOLDER)));
        if (!t || PyList_Append(waiters, t) < 0) {
            Py_XDECREF(t);
            goto fail;
        }
        Py_DECREF(t);
    }
    return Py_BuildValue("(NNN)", hdr, holders, waiters);
fail:
    Py_XDECREF(hdr);
    Py_XDECREF(holders);
    Py_XDECREF(waiters);
    return NULL;
}

/* snapshot(locked=True) -> (header, holders, waiters, wakes).  Unlocked
 * snapshots are for tools that must never block (a lock held by a stopped
 * process); they may show a transaction half done. */
static PyObject *Ledger_snapshot(Ledger *L, PyObject *const *args, Py_ssize_t nargs)
{
    int locked = 1;
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "snapshot takes at most 1 argument");
        return NULL;
    }
    if (nargs == 1 && (locked = PyObject_IsTrue(args[0])) < 0)
        return NULL;
    if (!L->v.base) {
        PyErr_SetString(PyExc_ValueError, "ledger is closed");
        return NULL;
    }
    if (!locked) {
        PyObject *r = collect(&L->v);
        return r ? Py_BuildValue("(OOOO)", PyTuple_GET_ITEM(r, 0), PyTuple_GET_ITEM(r, 1),
                                 PyTuple_GET_ITEM(r, 2), Py_None)
                 : NULL;
    }
    Call c;
    if (copy_ledger(L, &c, 0) < 0) {
        call_done(&c);
        return NULL;
    }
    PyObject *r = collect(&c.cv);
    PyObject *wakes = r ? wakes_list(&c) : NULL;
    PyObject *out = NULL;
    if (r && wakes)
        out = Py_BuildValue("(OOON)", PyTuple_GET_ITEM(r, 0), PyTuple_GET_ITEM(r, 1),
                            PyTuple_GET_ITEM(r, 2), wakes);
    Py_XDECREF(r);
    call_done(&c);
    return out;
}

/* Verify THE INVARIANT (top of file) on a view; 0 or -1 with c->msg set. */
#define BROKEN(...)                             \
    do {                                        \
        fail(c, E_CORRUPT, __VA_ARGS__);        \
        return -1;                              \
    } while (0)

static int verify(View *V, Call *c)
{
    int64_t cap = V->capacity;
    int64_t available = ld(HDR(V, H_AVAILABLE)), unowned = ld(HDR(V, H_UNOWNED));
    int64_t hhwm = ld(HDR(V, H_HOLDER_HWM)), whwm = ld(HDR(V, H_WAITER_HWM));
    int64_t held = 0, waiting = 0, next_ticket = ld(HDR(V, H_NEXT_TICKET));
    if (*UNDO_COUNT(V) != 0)
        BROKEN("undo log not empty under the lock");
    if (available < 0 || available > cap)
        BROKEN("available=%lld outside 0..%lld", (long long)available, (long long)cap);
    if (unowned < 0 || unowned > cap)
        BROKEN("unowned=%lld outside 0..%lld", (long long)unowned, (long long)cap);
    if (hhwm < 0 || hhwm > V->max_holders || whwm < 0 || whwm > V->max_waiters)
        BROKEN("high-water marks out of range");
    for (Py_ssize_t i = 0; i < V->max_holders; i++) {
        int64_t pid = ld(HOLDER(V, i, HO_PID));
        if (pid == 0)
            continue;
        if (i >= hhwm)
            BROKEN("holder slot %zd is above the high-water mark", i);
        int64_t units = ld(HOLDER(V, i, HO_UNITS)), pending = 0;
        if (units < 0)
            BROKEN("holder slot %zd has %lld units", i, (long long)units);
        held += units;
        for (Py_ssize_t j = i + 1; j < hhwm; j++)
            if (ld(HOLDER(V, j, HO_PID)) == pid &&
                ld(HOLDER(V, j, HO_START)) == ld(HOLDER(V, i, HO_START)))
                BROKEN("identity pid %lld registered twice (slots %zd, %zd)", (long long)pid, i, j);
        for (Py_ssize_t w = 0; w < whwm; w++)
            if (ld(WAITER(V, w, WA_STATE)) != W_FREE && ld(WAITER(V, w, WA_HOLDER)) == i)
                pending++;
        if (pending != ld(HOLDER(V, i, HO_PENDING)))
            BROKEN("holder slot %zd counts %lld pending entries, %lld exist", i,
                   (long long)ld(HOLDER(V, i, HO_PENDING)), (long long)pending);
    }
    for (Py_ssize_t w = 0; w < V->max_waiters; w++) {
        int64_t state = ld(WAITER(V, w, WA_STATE));
        if (state == W_FREE)
            continue;
        if (w >= whwm)
            BROKEN("waiter entry %zd is above the high-water mark", w);
        if (state != W_WAITING && state != W_GRANTED)
            BROKEN("waiter entry %zd has state %lld", w, (long long)state);
        int64_t h = ld(WAITER(V, w, WA_HOLDER)), units = ld(WAITER(V, w, WA_UNITS));
        if (h < 0 || h >= V->max_holders || ld(HOLDER(V, h, HO_PID)) != ld(WAITER(V, w, WA_PID)) ||
            ld(HOLDER(V, h, HO_START)) != ld(WAITER(V, w, WA_START)))
            BROKEN("waiter entry %zd does not point at its own holder slot", w);
        if (units < 1 || units > cap)
            BROKEN("waiter entry %zd wants %lld units", w, (long long)units);
        int64_t ticket = ld(WAITER(V, w, WA_TICKET));
        if (ticket < 0 || ticket >= next_ticket)
            BROKEN("waiter entry %zd has ticket %lld >= next %lld", w, (long long)ticket,
                   (long long)next_ticket);
        if (state == W_WAITING) {
            waiting++;
            for (Py_ssize_t v = w + 1; v < whwm; v++)
                if (ld(WAITER(V, v, WA_STATE)) == W_WAITING && ld(WAITER(V, v, WA_TICKET)) == ticket)
                    BROKEN("ticket %lld queued twice", (long long)ticket);
        }
    }
    if (waiting != ld(HDR(V, H_WAITING)))
        BROKEN("waiting=%lld but %lld entries wait", (long long)ld(HDR(V, H_WAITING)),
               (long long)waiting);
    if (available + held + unowned != cap)
        BROKEN("units lost or invented: available %lld + held %lld + unowned %lld != capacity %lld",
               (long long)available, (long long)held, (long long)unowned, (long long)cap);
    if (waiting) {
        Py_ssize_t head = queue_head(V);
        if (head >= 0 && ld(WAITER(V, head, WA_UNITS)) <= available)
            BROKEN("the queue head (entry %zd, %lld units) waits while %lld are available", head,
                   (long long)ld(WAITER(V, head, WA_UNITS)), (long long)available);
    }
    return 0;
}

/* check() -> None | [wakes], or raise CorruptError naming the first broken rule. */
static PyObject *Ledger_check(Ledger *L, PyObject *Py_UNUSED(ignored))
{
    Call c;
    if (copy_ledger(L, &c, 1) < 0) {
        call_done(&c);
        return NULL;
    }
    if (verify(&c.cv, &c) < 0) {
        PyErr_SetString(CorruptError, c.msg);
        call_done(&c);
        return NULL;
    }
    PyObject *r = wakes_list(&c);
    call_done(&c);
    return r;
}

/* --------------------------------------------------------- construction */

static int Ledger_init(Ledger *L, PyObject *args, PyObject *kwds)
{
    PyObject *buf;
    static char *kwlist[] = {"buffer", NULL};
    if (L->has_buffer) {
        PyErr_SetString(PyExc_TypeError, "Ledger is already attached");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O", kwlist, &buf))
        return -1;
    if (PyObject_GetBuffer(buf, &L->buffer, PyBUF_WRITABLE) < 0)
        return -1;
    /* Holding the buffer export keeps the mmap from being closed under us. */
    L->has_buffer = 1;
    View *V = &L->v;
    char *base = L->buffer.buf;
    Py_ssize_t size = L->buffer.len;
    if (((uintptr_t)base & 63) != 0) {
        PyErr_SetString(PyExc_ValueError, "ledger buffer must be 64-byte aligned");
        return -1;
    }
    if (size < HEADER_SIZE) {
        PyErr_Format(CorruptError, "segment is %zd bytes, smaller than a ledger header (%d)",
                     size, HEADER_SIZE);
        return -1;
    }
    volatile int64_t *hdr = (volatile int64_t *)base;
    uint64_t magic = (uint64_t)ld(hdr + H_MAGIC);
    if (magic != LEDGER_MAGIC) {
        PyErr_SetString(CorruptError, magic == 0 ? "segment is not initialised (no magic)"
                                                 : "segment is not an ipcsem ledger (bad magic)");
        return -1;
    }
    int64_t version = ld(hdr + H_VERSION);
    if (version != LAYOUT_VERSION) {
        PyErr_Format(CorruptError, "ledger layout version %lld, this ipcsem reads version %d",
                     (long long)version, LAYOUT_VERSION);
        return -1;
    }
    int64_t cap = ld(hdr + H_CAPACITY), mh = ld(hdr + H_MAX_HOLDERS), mw = ld(hdr + H_MAX_WAITERS),
            hoff = ld(hdr + H_HOLDERS_OFF), woff = ld(hdr + H_WAITERS_OFF),
            total = ld(hdr + H_TOTAL_SIZE);
    if (ld(hdr + H_HEADER_SIZE) != HEADER_SIZE || cap < 1 || cap > MAX_CAPACITY || mh < 1 ||
        mh > MAX_SLOTS || mw < 1 || mw > MAX_SLOTS || hoff != HEADER_SIZE ||
        woff != hoff + mh * HOLDER_WORDS * 8 || total != woff + mw * WAITER_WORDS * 8) {
        PyErr_SetString(CorruptError, "ledger header is inconsistent");
        return -1;
    }
    if (total > size) {
        PyErr_Format(CorruptError, "segment is truncated: %zd bytes, the ledger needs %lld", size,
                     (long long)total);
        return -1;
    }
    V->base = base;
    V->size = total;
    V->hdr = hdr;
    V->capacity = cap;
    V->max_holders = mh;
    V->max_waiters = mw;
    V->holders = (volatile int64_t *)(base + hoff);
    V->waiters = (volatile int64_t *)(base + woff);
    L->hint = 0;
    return 0;
}

static void Ledger_dealloc(Ledger *L)
{
    if (L->has_buffer)
        PyBuffer_Release(&L->buffer);
    Py_TYPE(L)->tp_free((PyObject *)L);
}

static PyObject *Ledger_release_buffer(Ledger *L, PyObject *Py_UNUSED(ignored))
{
    /* Let the owner close its mmap: after this the object is unusable. */
    if (L->active) {
        PyErr_SetString(PyExc_BufferError, "ledger is in use by another thread");
        return NULL;
    }
    if (L->has_buffer) {
        PyBuffer_Release(&L->buffer);
        L->has_buffer = 0;
    }
    L->v.base = NULL;
    Py_RETURN_NONE;
}

static PyObject *lockfree_field(Ledger *L, int field)
{
    if (!L->v.base) {
        PyErr_SetString(PyExc_ValueError, "ledger is closed");
        return NULL;
    }
    /* An aligned 8-byte load: never torn; committed or in flight. */
    return PyLong_FromLongLong(ld(HDR(&L->v, field)));
}

static PyObject *Ledger_get_capacity(Ledger *L, void *c) { return PyLong_FromLongLong(L->v.capacity); }
static PyObject *Ledger_get_available(Ledger *L, void *c) { return lockfree_field(L, H_AVAILABLE); }
static PyObject *Ledger_get_waiting(Ledger *L, void *c) { return lockfree_field(L, H_WAITING); }
static PyObject *Ledger_get_changes(Ledger *L, void *c)
{
    if (!L->v.base)
        return lockfree_field(L, 0);
    return PyLong_FromLongLong(ld(HDR(&L->v, H_REGISTRATIONS)) + ld(HDR(&L->v, H_CHANGES)));
}
static PyObject *Ledger_get_unlinked(Ledger *L, void *c)
{
    if (!L->v.base)
        return lockfree_field(L, 0);
    return PyBool_FromLong(ld(HDR(&L->v, H_FLAGS)) & FLAG_UNLINKED);
}
static PyObject *Ledger_get_max_holders(Ledger *L, void *c) { return PyLong_FromLongLong(L->v.max_holders); }
static PyObject *Ledger_get_max_waiters(Ledger *L, void *c) { return PyLong_FromLongLong(L->v.max_waiters); }

static PyGetSetDef Ledger_getset[] = {
    {"capacity", (getter)Ledger_get_capacity, NULL, "capacity (fixed at creation)", NULL},
    {"available", (getter)Ledger_get_available, NULL, "units free now (lock-free read)", NULL},
    {"waiting", (getter)Ledger_get_waiting, NULL, "queued requests (lock-free read)", NULL},
    {"changes", (getter)Ledger_get_changes, NULL, "grows when processes register/leave", NULL},
    {"unlinked", (getter)Ledger_get_unlinked, NULL, "the name was unlinked", NULL},
    {"max_holders", (getter)Ledger_get_max_holders, NULL, "holder slots", NULL},
    {"max_waiters", (getter)Ledger_get_max_waiters, NULL, "waiter entries", NULL},
    {NULL}};

static PyMethodDef Ledger_methods[] = {
    {"take", (PyCFunction)(void (*)(void))Ledger_take, METH_FASTCALL, NULL},
    {"enqueue", (PyCFunction)(void (*)(void))Ledger_enqueue, METH_FASTCALL, NULL},
    {"state", (PyCFunction)Ledger_state, METH_O, NULL},
    {"settle", (PyCFunction)(void (*)(void))Ledger_settle, METH_FASTCALL, NULL},
    {"release", (PyCFunction)(void (*)(void))Ledger_release, METH_FASTCALL, NULL},
    {"disown", (PyCFunction)(void (*)(void))Ledger_disown, METH_FASTCALL, NULL},
    {"recover", (PyCFunction)(void (*)(void))Ledger_recover, METH_FASTCALL, NULL},
    {"unregister", (PyCFunction)(void (*)(void))Ledger_unregister, METH_FASTCALL, NULL},
    {"mark_unlinked", (PyCFunction)Ledger_mark_unlinked, METH_NOARGS, NULL},
    {"claim_heal", (PyCFunction)(void (*)(void))Ledger_claim_heal, METH_FASTCALL, NULL},
    {"snapshot", (PyCFunction)(void (*)(void))Ledger_snapshot, METH_FASTCALL, NULL},
    {"check", (PyCFunction)Ledger_check, METH_NOARGS, NULL},
    {"release_buffer", (PyCFunction)Ledger_release_buffer, METH_NOARGS, NULL},
    {NULL}};

static PyTypeObject LedgerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ipcsem._ledger.Ledger",
    .tp_basicsize = sizeof(Ledger),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Transactions on one mapped ipcsem ledger (see the file's comment).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Ledger_init,
    .tp_dealloc = (destructor)Ledger_dealloc,
    .tp_methods = Ledger_methods,
    .tp_getset = Ledger_getset,
};

/* ------------------------------------------------------------- doorbells */

/* A waiter's doorbell: a named POSIX semaphore (sem.ipcsem.NAME:wN in
 * /dev/shm), rung by whoever grants the waiter's entry.  Only a hint: the
 * waiter re-reads the ledger after every wake-up.
 *
 * Why not posix_ipc.Semaphore: when a signal interrupts its wait, posix_ipc
 * runs the Python handler and then *clears* whatever the handler raised
 * unless it is KeyboardInterrupt, so a SIGTERM handler's SystemExit was lost
 * and the acquire went on blocking.  Here EINTR runs the handlers and any
 * exception they raise propagates; otherwise the wait resumes. */
typedef struct {
    PyObject_HEAD
    sem_t *sem;
} Doorbell;

static int Doorbell_init(Doorbell *D, PyObject *args, PyObject *kwds)
{
    const char *name;
    int mode = 0600, exclusive = 0;
    static char *kwlist[] = {"name", "mode", "exclusive", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "s|ip", kwlist, &name, &mode, &exclusive))
        return -1;
    if (D->sem) {
        PyErr_SetString(PyExc_TypeError, "Doorbell is already open");
        return -1;
    }
    sem_t *sem;
    Py_BEGIN_ALLOW_THREADS
    sem = sem_open(name, O_CREAT | (exclusive ? O_EXCL : 0), (mode_t)mode, 0);
    Py_END_ALLOW_THREADS
    if (sem == SEM_FAILED) {
        PyErr_SetFromErrnoWithFilename(PyExc_OSError, name);
        return -1;
    }
    D->sem = sem;
    return 0;
}

static void Doorbell_dealloc(Doorbell *D)
{
    if (D->sem)
        sem_close(D->sem);
    Py_TYPE(D)->tp_free((PyObject *)D);
}

static int doorbell_open(Doorbell *D)
{
    if (!D->sem) {
        PyErr_SetString(PyExc_ValueError, "doorbell is closed");
        return -1;
    }
    return 0;
}

static PyObject *Doorbell_ring(Doorbell *D, PyObject *Py_UNUSED(ignored))
{
    if (doorbell_open(D) < 0)
        return NULL;
    if (sem_post(D->sem) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

/* wait(seconds) -> True if rung, False on timeout.  Signal handlers run
 * on EINTR and their exceptions propagate. */
static PyObject *Doorbell_wait(Doorbell *D, PyObject *arg)
{
    double seconds = PyFloat_AsDouble(arg);
    if (seconds == -1.0 && PyErr_Occurred())
        return NULL;
    if (doorbell_open(D) < 0)
        return NULL;
    if (!(seconds >= 0))
        seconds = 0;
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    double whole = (double)(int64_t)seconds;
    deadline.tv_sec += (time_t)whole;
    deadline.tv_nsec += (long)((seconds - whole) * 1e9);
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec += 1;
        deadline.tv_nsec -= 1000000000L;
    }
    for (;;) {
        int rc, err;
        Py_BEGIN_ALLOW_THREADS
#ifdef __APPLE__
        /* no sem_timedwait on macOS: poll */
        for (;;) {
            rc = sem_trywait(D->sem);
            if (rc == 0 || errno != EAGAIN)
                break;
            struct timespec now, nap = {0, 1000000};
            clock_gettime(CLOCK_REALTIME, &now);
            if (now.tv_sec > deadline.tv_sec ||
                (now.tv_sec == deadline.tv_sec && now.tv_nsec >= deadline.tv_nsec)) {
                errno = ETIMEDOUT;
                break;
            }
            nanosleep(&nap, NULL);
        }
#else
        rc = sem_timedwait(D->sem, &deadline);
#endif
        err = errno;
        Py_END_ALLOW_THREADS
        if (rc == 0)
            Py_RETURN_TRUE;
        if (err == ETIMEDOUT)
            Py_RETURN_FALSE;
        if (err != EINTR) {
            errno = err;
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        if (PyErr_CheckSignals() < 0)
            return NULL; /* whatever the handler raised: SystemExit, KeyboardInterrupt, ... */
    }
}

/* drain() -> number of stale rings consumed (meant for this entry's previous user). */
static PyObject *Doorbell_drain(Doorbell *D, PyObject *Py_UNUSED(ignored))
{
    if (doorbell_open(D) < 0)
        return NULL;
    long n = 0;
    while (sem_trywait(D->sem) == 0)
        n++;
    return PyLong_FromLong(n);
}

static PyObject *Doorbell_close(Doorbell *D, PyObject *Py_UNUSED(ignored))
{
    if (D->sem) {
        sem_close(D->sem);
        D->sem = NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef Doorbell_methods[] = {
    {"ring", (PyCFunction)Doorbell_ring, METH_NOARGS, "wake the waiter (sem_post)"},
    {"wait", (PyCFunction)Doorbell_wait, METH_O, "wait up to SECONDS; True if rung"},
    {"drain", (PyCFunction)Doorbell_drain, METH_NOARGS, "consume stale rings"},
    {"close", (PyCFunction)Doorbell_close, METH_NOARGS, "sem_close"},
    {NULL}};

static PyTypeObject DoorbellType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ipcsem._ledger.Doorbell",
    .tp_basicsize = sizeof(Doorbell),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Doorbell(name, mode=0o600, exclusive=False): a named POSIX semaphore used as a wake-up hint.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Doorbell_init,
    .tp_dealloc = (destructor)Doorbell_dealloc,
    .tp_methods = Doorbell_methods,
};

/* ------------------------------------------------------ module functions */

/* initialize(buffer, capacity, initial, max_holders, max_waiters, creator_pid)
 * Lay out a fresh segment.  The magic is stored last: until then every
 * opener sees "not initialised" and waits (the creator holds flock). */
static PyObject *mod_initialize(PyObject *mod, PyObject *args)
{
    Py_buffer view;
    long long cap, initial, mh, mw, creator;
    if (!PyArg_ParseTuple(args, "w*LLLLL", &view, &cap, &initial, &mh, &mw, &creator))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t total = HEADER_SIZE + (Py_ssize_t)mh * HOLDER_WORDS * 8 +
                       (Py_ssize_t)mw * WAITER_WORDS * 8;
    if (cap < 1 || cap > MAX_CAPACITY || initial < 0 || initial > cap || mh < 1 ||
        mh > MAX_SLOTS || mw < 1 || mw > MAX_SLOTS) {
        PyErr_SetString(PyExc_ValueError, "bad ledger parameters");
        goto done;
    }
    if (view.len < total) {
        PyErr_Format(PyExc_ValueError, "buffer of %zd bytes, ledger needs %zd", view.len, total);
        goto done;
    }
    char *base = view.buf;
    volatile int64_t *hdr = (volatile int64_t *)base;
    st(hdr + H_MAGIC, 0);
    memset(base + 8, 0, total - 8);
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
    int rc = pthread_mutex_init((pthread_mutex_t *)(base + MUTEX_OFF), &attr);
    pthread_mutexattr_destroy(&attr);
    if (rc != 0) {
        PyErr_Format(PyExc_OSError, "pthread_mutex_init: %s", strerror(rc));
        goto done;
    }
    hdr[H_VERSION] = LAYOUT_VERSION;
    hdr[H_HEADER_SIZE] = HEADER_SIZE;
    hdr[H_TOTAL_SIZE] = total;
    hdr[H_CAPACITY] = cap;
    hdr[H_MAX_HOLDERS] = mh;
    hdr[H_MAX_WAITERS] = mw;
    hdr[H_HOLDERS_OFF] = HEADER_SIZE;
    hdr[H_WAITERS_OFF] = HEADER_SIZE + mh * HOLDER_WORDS * 8;
    hdr[H_CREATED_NS] = now_ns();
    hdr[H_CREATOR_PID] = creator;
    hdr[H_INITIAL] = initial;
    hdr[H_AVAILABLE] = initial;
    hdr[H_UNOWNED] = cap - initial; /* created "taken": the producer/consumer start */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    st(hdr + H_MAGIC, (int64_t)LEDGER_MAGIC);
    result = PyLong_FromSsize_t(total);
done:
    PyBuffer_Release(&view);
    return result;
}

static PyObject *mod_segment_size(PyObject *mod, PyObject *args)
{
    long long mh, mw;
    if (!PyArg_ParseTuple(args, "LL", &mh, &mw))
        return NULL;
    return PyLong_FromLongLong(HEADER_SIZE + mh * HOLDER_WORDS * 8 + mw * WAITER_WORDS * 8);
}

static PyObject *mod_register_errors(PyObject *mod, PyObject *args)
{
    PyObject *c, *f, *u;
    if (!PyArg_ParseTuple(args, "OOO", &c, &f, &u))
        return NULL;
    Py_XSETREF(CorruptError, Py_NewRef(c));
    Py_XSETREF(FullError, Py_NewRef(f));
    Py_XSETREF(UnlinkedError, Py_NewRef(u));
    Py_RETURN_NONE;
}

static PyObject *mod_set_self_pid(PyObject *mod, PyObject *arg)
{
    self_pid = PyLong_AsLongLong(arg);
    if (self_pid == -1 && PyErr_Occurred())
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *mod_set_crash_point(PyObject *mod, PyObject *arg)
{
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    crash_countdown = n;
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"initialize", mod_initialize, METH_VARARGS, "lay out a fresh ledger in a buffer"},
    {"segment_size", mod_segment_size, METH_VARARGS, "bytes needed for (max_holders, max_waiters)"},
    {"register_errors", mod_register_errors, METH_VARARGS, "(Corrupt, Full, Unlinked) classes"},
    {"set_self_pid", mod_set_self_pid, METH_O, "pid recorded as lock owner (diagnostics)"},
    {"set_crash_point", mod_set_crash_point, METH_O,
     "TEST HOOK: SIGKILL this process at the Nth crash point inside a transaction (-1: off)"},
    {NULL}};

static struct PyModuleDef ledger_module = {
    PyModuleDef_HEAD_INIT, "ipcsem._ledger", "Shared-memory ledger transactions.", -1,
    module_methods};

PyMODINIT_FUNC PyInit__ledger(void)
{
    if (PyType_Ready(&LedgerType) < 0 || PyType_Ready(&DoorbellType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&ledger_module);
    if (!m)
        return NULL;
    Py_INCREF(&LedgerType);
    PyModule_AddObject(m, "Ledger", (PyObject *)&LedgerType);
    Py_INCREF(&DoorbellType);
    PyModule_AddObject(m, "Doorbell", (PyObject *)&DoorbellType);
    PyModule_AddIntConstant(m, "LAYOUT_VERSION", LAYOUT_VERSION);
    PyModule_AddIntConstant(m, "HEADER_SIZE", HEADER_SIZE);
    PyModule_AddIntConstant(m, "GRANTED", R_GRANTED);
    PyModule_AddIntConstant(m, "BUSY", R_BUSY);
    PyModule_AddIntConstant(m, "WAITING", W_WAITING);
    PyModule_AddIntConstant(m, "STATE_GRANTED", W_GRANTED);
    PyModule_AddObject(m, "MAGIC", PyLong_FromUnsignedLongLong(LEDGER_MAGIC));
    PyModule_AddObject(m, "MAX_CAPACITY", PyLong_FromLongLong(MAX_CAPACITY));
    PyModule_AddIntConstant(m, "MAX_SLOTS", MAX_SLOTS);
    return m;
}
