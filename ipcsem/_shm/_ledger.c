/*
 * ipcsem._shm._ledger: the shared-memory ledger of one ipcsem semaphore.
 *
 * This module is the whole protocol: the layout of the segment, the lock that
 * survives its owner's death, the undo log that makes every change atomic with
 * respect to SIGKILL, the wait queue, the doorbells waiters sleep on, and the
 * few transactions (take, enqueue, grant, settle, cancel, release, disown,
 * recover) that move units.  Everything that talks to the kernel about
 * *objects* (shm_open, /proc, pidfds, permissions) lives in Python; this file
 * only touches the mapped bytes it is given (and futexes inside them).
 *
 * Why C: an acquire+release pair must cost less than one SysV semop (~1 us).
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
 * - the queue is a doubly linked list of exactly the WAITING entries, in
 *   serving order: higher priority first, then lower ticket; `waiting` is its
 *   length; free entries form a free list;
 * - liveness (fair semaphores): while anyone is WAITING, the head of the queue
 *   wants more than `available`.  Strict FIFO is this rule: nobody behind the
 *   head is ever granted before it;
 * - slotted semaphores: unit u is free (owner 0), unowned (-1) or owned by
 *   holder slot h (h + 1); the counts agree with available/unowned/units;
 * - mutexes: capacity 1; owned (owner key != 0) exactly when its unit is held.
 *
 * CRASH ATOMICITY: every store to the ledger goes through tx_store(), which
 * first records (offset, old value) in the undo log and publishes it with one
 * aligned 8-byte store of the log length, then does the data store.
 * tx_commit() empties the log with one 8-byte store.  Whoever takes the lock
 * next and finds a non-empty log (the robust mutex also says EOWNERDEAD) rolls
 * the stores back newest-first; the rollback is idempotent, so a repairer that
 * dies mid-repair is repaired by the next one.  A SIGKILL between any two
 * machine instructions therefore leaves either the state before or the state
 * after a transaction, never a mix.  Side effects outside the ledger (ringing
 * a doorbell) happen only after commit, and waiters treat rings as hints.
 *
 * TRUST: only processes that may write a ledger share it, and they trust each
 * other (the opener checks owner and mode before mapping it: segment.py).
 * Still, every value read from the segment is validated before it indexes,
 * offsets, counts or bounds a loop, and read once into a local: a corrupt (or
 * hostile) ledger gives Corrupt, never a wild store or a crash.  The undo-log
 * length of a transaction in flight lives in the caller's own memory (Call),
 * never re-read from the segment.  Read-only views (status tools, root) parse
 * private copies taken with pread(), never a mapping.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structseq.h>
#include <structmember.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <linux/futex.h>

#ifndef __linux__
#error "ipcsem's ledger needs Linux (robust futexes, futex doorbells)"
#endif

#define LEDGER_MAGIC 0x32304d4553435049ULL /* bytes "IPCSEM02" on little-endian */
#define LAYOUT_VERSION 3
#define HEADER_SIZE 4096
#define MUTEX_OFF 512
#define MUTEX_RESERVED 128
#define HOLDER_WORDS 8
#define WAITER_WORDS 16
#define UNIT_WORDS 3
#define UNDO_BASE 64           /* entries every transaction may need */
#define MAX_SLOTS (1 << 20)
#define MAX_CAPACITY 2147483647LL /* SEM_VALUE_MAX on Linux */
#define MAX_SLOTTED_CAPACITY 4096
#define OVERTAKE_LIMIT 16      /* fair=False: arrivals may pass a queued head this often */
#define LOCK_SLICE_NS 200000000LL

/* Creation-time policy bits (H_POLICY): fixed for the ledger's life. */
#define P_SLOTS 1
#define P_MUTEX 2
#define P_REENTRANT 4
#define P_UNFAIR 8
#define P_PI 16
#define P_KNOWN (P_SLOTS | P_MUTEX | P_REENTRANT | P_UNFAIR | P_PI)

/* Header fields, in int64 words from offset 0.  Never reorder: the layout
 * version names this exact order (layout 3 moved the hot line together).
 * New fields go before H_NFIELDS. */
enum {
    /* fixed at creation */
    H_MAGIC = 0, H_VERSION, H_HEADER_SIZE, H_TOTAL_SIZE, H_CAPACITY,
    H_MAX_HOLDERS, H_MAX_WAITERS, H_HOLDERS_OFF, H_WAITERS_OFF, H_UNITS_OFF,
    H_UNDO_OFF, H_UNDO_MAX, H_CREATED_NS, H_CREATOR_PID, H_INITIAL, H_POLICY, H_NONCE,
    /* changed by transactions, seldom */
    H_FLAGS, H_UNOWNED, H_NEXT_TICKET, H_HOLDER_HWM, H_WAITER_HWM, H_Q_TAIL, H_FREE_HEAD,
    /* The hot line (words 24-31, one 64-byte cache line): every take and
     * release of every process reads or writes these, so under contention
     * they move between CPUs together, as one line, instead of as six (the
     * lock owner and the commit count are stored lock-free by the lock
     * holder, the undo count by tx_store; none of the three is undo-logged;
     * acquisitions and the next token are stored without undo entries). */
    H_AVAILABLE, H_WAITING, H_Q_HEAD, H_ACQUISITIONS, H_NEXT_TOKEN, H_LOCK_OWNER, H_COMMITS,
    H_UNDO_COUNT,
    /* changed by transactions */
    H_HEAD_OVERTAKEN, H_RECOVERED_UNITS, H_RECOVERIES, H_REGISTRATIONS, H_CHANGES,
    /* the mutex owner; its TID and DEPTH mean something only while KEY is
     * set; H_MX_TOKEN is unused since layout 3 (see mutex_token) */
    H_MX_OWNER_KEY, H_MX_OWNER_TID, H_MX_DEPTH, H_MX_TOKEN, H_MX_OWNER_DIED,
    /* priority inheritance (P_PI): the boosted owner thread, its own
     * priority before the first boost, the priority it was given, who did
     * it; cleared with the owner */
    H_PI_STATE, H_PI_TID, H_PI_BASE_POLICY, H_PI_BASE_RTPRIO, H_PI_BASE_NICE,
    H_PI_BOOST_POLICY, H_PI_BOOST_RTPRIO, H_PI_BOOST_NICE, H_PI_BOOSTER, H_PI_REASON,
    /* not undo-logged: diagnostics, the healer election, the count of
     * entries their owners abandoned (changed lock-free) */
    H_LAST_HEAL_NS, H_LOCK_REPAIRS, H_ABANDONED,
    H_NFIELDS
};
_Static_assert(H_AVAILABLE % 8 == 0 && H_UNDO_COUNT == H_AVAILABLE + 7,
               "the hot line is one 64-byte cache line");
#define UNDO_COUNT_OFF (H_UNDO_COUNT * 8)
_Static_assert(H_NFIELDS * 8 <= MUTEX_OFF, "header fields overlap the mutex");
_Static_assert(sizeof(pthread_mutex_t) <= MUTEX_RESERVED, "mutex does not fit");
#define FLAG_UNLINKED 1

/* Holder slot: one per registered process (free when pid == 0). */
enum { HO_PID = 0, HO_START, HO_UNITS, HO_SINCE, HO_ACQUIRED, HO_PENDING, HO_REGISTERED_NS,
       HO_BELL /* process doorbell (futex, low 32 bits): async waiters of this process */ };
/* Waiter entry: one per queued acquire call (free when state == 0). */
enum { WA_STATE = 0, WA_PID, WA_START, WA_TID, WA_UNITS, WA_PRIORITY, WA_TICKET,
       WA_SINCE, WA_HOLDER, WA_NEXT, WA_PREV, WA_TOKEN, WA_FLAGS, WA_OWNER,
       WA_BELL /* this entry's doorbell (futex, low 32 bits) */ };
enum { W_FREE = 0, W_WAITING = 1, W_GRANTED = 2 };
#define WF_ASYNC 1          /* ring the holder's process bell, not the entry's */
#define WF_DEADLOCK_RAISE 2 /* the waiter asked deadlock="raise" (read by detectors) */
#define WF_PARKED 4         /* async: every task of its event loop waits on ipcsem */
#define WF_ABANDONED 8      /* its owner gave up while the lock was wedged: cancel it */
#define WF_KNOWN (WF_ASYNC | WF_DEADLOCK_RAISE | WF_PARKED | WF_ABANDONED)
#define GIVE_UP_GRACE 50000000LL   /* past a deadline, how long we still wait for the lock */
#define CANCEL_GRACE 1000000000LL  /* an interrupted wait: how long its cancel may wait */
/* Unit table (slotted): owner (0 free, -1 unowned, h + 1 holder slot h), the
 * grant's token, and its owner key (thread or task): a bare release frees
 * the unit numbers of the calling thread's latest grant first. */
enum { UN_OWNER = 0, UN_TOKEN, UN_KEY };

/* Lock waiting modes (the lock_ns argument of locked calls). */
#define LOCK_FOREVER (-1)     /* wait as long as it takes; signal handlers run */
#define LOCK_UNINTERRUPTED (-2) /* wait as long as it takes; signals wait for us */
#define LOCK_TRY (-3)           /* do not wait at all (the facade's fast path) */

/* A view of a ledger: the live mapping, or a private copy, so the same
 * accessors read both. */
typedef struct {
    char *base;
    Py_ssize_t size;
    volatile int64_t *hdr, *holders, *waiters, *units, *undo;
    int64_t capacity, max_holders, max_waiters, undo_max, policy;
} View;

typedef struct {
    PyObject_HEAD
    Py_buffer buffer;
    int has_buffer;
    View v;
    Py_ssize_t hint;  /* holder slot this handle last used: a hint, verified before use */
    int active;       /* calls in progress (some run without the GIL) */
    pid_t active_pid; /* process that counted `active` (a forked child starts at 0) */
    int closing;      /* shutdown(): waits in other threads give up */
    int64_t waits[8]; /* entries this handle is parked on now (for shutdown) */
    int64_t spin_ns;  /* the queue head's spin budget (head_spin); 0: not yet set */
} Ledger;

/* Everything one call needs, on the caller's stack: bodies run without the
 * GIL when the lock was contended, so they touch no Python object. */
enum { E_OK = 0, E_VALUE, E_CORRUPT, E_FULL_HOLDERS, E_FULL_WAITERS, E_UNLINKED, E_NOMEM,
       E_NOTOWNER, E_SELF_DEADLOCK, E_LOCK_TIMEOUT, E_SIGNAL };
#define INLINE_LIST 16
typedef struct {
    int64_t *items;
    Py_ssize_t n, cap;
    int64_t inline_items[INLINE_LIST];
} List;

typedef struct {
    int64_t a[12];    /* arguments */
    int64_t r[6];     /* results */
    int err;
    char msg[240];
    int64_t undo_n;   /* undo entries of the transaction in flight (never re-read from shm) */
    int in_tx;
    List wakes;       /* >= 0: entry bells; < 0: -(h + 1): holder slot h's process bell */
    List slots;       /* units granted to the caller (slotted) */
    char *copy;       /* check(): private copy of the ledger */
    View cv;
    int64_t lock_owner_pid;
} Call;

static PyObject *set_corrupt(const char *reason);
static PyObject *CorruptError, *FullError, *UnlinkedError, *NotOwnerError, *DeadlockError,
    *WedgedError, *ClosedError, *IpcsemError;
/* This process's pid, kept current across fork() by an atfork handler
 * (glibc no longer caches getpid(): a system call per transaction would
 * cost more than the transaction).  Recorded as the lock owner for tools,
 * and used to tell a forked child's handles from its parent's. */
static int64_t self_pid = 0;
static int64_t self_start = 0;  /* start ticks of this process (0: not known yet) */
static long crash_countdown = -1; /* test hook: SIGKILL self at the Nth point */
/* The calling thread's native id, cached: gettid() is a system call, and a
 * thread id is needed on every acquire (waiter entries and mutexes record it). */
static __thread int64_t tls_tid = 0;
/* The C wait asked the handle to start its watcher thread (on_watch(None)). */
static int watch_prepared = 0;

static inline int64_t my_tid(void)
{
    if (!tls_tid)
        tls_tid = (int64_t)syscall(SYS_gettid);
    return tls_tid;
}

/* The grant most recently handed from C to Python on this thread and not
 * yet delivered to the user's frame: if Python raises (a Ctrl-C lands
 * between frames) before the facade's C entry point returns it, that entry
 * point gives it back, so no unit stays with a process that does not know.
 * Only the user's own frame is left, as for threading.Lock. */
static __thread PyObject *claim_ledger = NULL;
static __thread int64_t claim_units, claim_token, claim_owner;

static void claim_clear(void)
{
    PyObject *l = claim_ledger;
    claim_ledger = NULL;
    Py_XDECREF(l);
}

static void claim_set(PyObject *ledger, int64_t units, int64_t token, int64_t owner)
{
    claim_clear();
    claim_ledger = Py_NewRef(ledger);
    claim_units = units, claim_token = token, claim_owner = owner;
}

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

static inline int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static inline struct timespec ts_of(int64_t ns)
{
    struct timespec ts = {(time_t)(ns / 1000000000LL), (long)(ns % 1000000000LL)};
    return ts;
}

static void fail(Call *c, int err, const char *fmt, ...)
{
    if (c->err != E_OK)
        return; /* the first failure is the one to report */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->msg, sizeof c->msg, fmt, ap);
    va_end(ap);
    c->err = err;
}

static int list_add(Call *c, List *l, int64_t v)
{
    if (l->n == l->cap) {
        /* plain malloc: this may run without the GIL */
        Py_ssize_t cap = 2 * l->cap;
        int64_t *n = malloc(cap * sizeof(int64_t));
        if (!n) {
            fail(c, E_NOMEM, "out of memory");
            return -1;
        }
        memcpy(n, l->items, l->n * sizeof(int64_t));
        if (l->items != l->inline_items)
            free(l->items);
        l->items = n;
        l->cap = cap;
    }
    l->items[l->n++] = v;
    return 0;
}

static void list_init(List *l)
{
    l->items = l->inline_items;
    l->n = 0;
    l->cap = INLINE_LIST;
}

static void list_free(List *l)
{
    if (l->items && l->items != l->inline_items)
        free(l->items);
    l->items = l->inline_items;
    l->n = 0;
}

static void call_init(Call *c)
{
    /* No memset of the whole struct: it is ~1 KiB and this is the hot path. */
    memset(c->r, 0, sizeof c->r);
    c->a[8] = 0; /* release: no priority to restore unless the caller gives one */
    c->err = E_OK;
    c->msg[0] = 0;
    c->undo_n = 0;
    c->in_tx = 0;
    c->copy = NULL;
    c->lock_owner_pid = 0;
    list_init(&c->wakes);
    list_init(&c->slots);
}

static void call_done(Call *c)
{
    list_free(&c->wakes);
    list_free(&c->slots);
    free(c->copy);
    c->copy = NULL;
}

#define HDR(V, f) ((V)->hdr + (f))
#define HOLDER(V, i, f) ((V)->holders + (i) * HOLDER_WORDS + (f))
#define WAITER(V, i, f) ((V)->waiters + (i) * WAITER_WORDS + (f))
#define UNIT(V, u, f) ((V)->units + (u) * UNIT_WORDS + (f))
#define UNDO_COUNT(V) ((volatile int64_t *)((V)->base + UNDO_COUNT_OFF))
#define MUTEX(V) ((pthread_mutex_t *)((V)->base + MUTEX_OFF))

static inline int is_slotted(View *V) { return (V->policy & P_SLOTS) != 0; }
static inline int is_mutex(View *V) { return (V->policy & P_MUTEX) != 0; }
static inline int is_unfair(View *V) { return (V->policy & P_UNFAIR) != 0; }

/* Index checks: every index read from the segment passes one of these. */
static inline int holder_ok(View *V, int64_t h) { return h >= 0 && h < V->max_holders; }
static inline int waiter_ok(View *V, int64_t w) { return w >= 0 && w < V->max_waiters; }

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

/* ---------------------------------------------------- undo-logged stores */

static void tx_store(View *V, Call *c, volatile int64_t *p, int64_t v)
{
    if (c->err != E_OK)
        return; /* an aborted transaction stores nothing more: it is rolled back */
    int64_t old = *p;
    if (old == v)
        return; /* nothing to undo, nothing to do */
    int64_t n = c->undo_n;
    if (n >= V->undo_max) {
        fail(c, E_CORRUPT, "transaction larger than the undo log (%lld entries)",
             (long long)V->undo_max);
        return;
    }
    volatile int64_t *entry = V->undo + 2 * n;
    entry[0] = (int64_t)((char *)p - V->base);
    entry[1] = old;
    crash_point();
    c->undo_n = n + 1;
    st(UNDO_COUNT(V), n + 1); /* the entry exists from this store on */
    crash_point();
    st(p, v);
    crash_point();
}

static void tx_commit(View *V, Call *c)
{
    if (c->err != E_OK)
        return;
    if (c->undo_n) {
        /* Seqlock for lock-free readers: the commit count moves before the
         * log empties, so a reader that saw an empty log both before and
         * after its copy, and the same count, copied no transaction's half. */
        st(HDR(V, H_COMMITS), ld(HDR(V, H_COMMITS)) + 1);
        st(UNDO_COUNT(V), 0); /* one store: the transaction happened */
        c->undo_n = 0;
        crash_point();
    }
}

/* Is `off` a word a transaction may have stored?  The header fields that
 * transactions change (never the ones fixed at creation — a forged log
 * could otherwise erase the magic and have the ledger re-initialised under
 * its holders — nor the mutex, the log, or the lock-free words) and the
 * slot regions. */
static int undo_target_ok(View *V, int64_t off)
{
    if (off < 0 || (off & 7) || off > V->size - 8)
        return 0;
    if (off < H_NFIELDS * 8) {
        int64_t f = off / 8;
        return f >= H_FLAGS && f < H_LAST_HEAL_NS && f != H_ACQUISITIONS && f != H_NEXT_TOKEN &&
               f != H_LOCK_OWNER && f != H_COMMITS && f != H_UNDO_COUNT;
    }
    int64_t undo_off = (char *)V->undo - V->base;
    return off >= HEADER_SIZE && off < undo_off;
}

/* Roll back the newest `n` entries of the log: a dead lock owner's
 * unfinished transaction (n read once from the segment by after_lock) or our
 * own aborted one (n from the caller's memory: a peer rewriting the count
 * cannot make us undo our own committed stores).  -1 if the log is not
 * believable, and then nothing is stored: every entry is checked before the
 * first store (a forged entry found halfway would otherwise leave the
 * believable ones applied).  The second pass checks each offset again as it
 * reads it: only a writer racing us can change the log in between, and it
 * could store those words itself. */
static int tx_rollback_n(View *V, int64_t n)
{
    volatile int64_t *count = UNDO_COUNT(V);
    if (n < 0 || n > V->undo_max)
        return -1;
    for (int64_t i = n - 1; i >= 0; i--)
        if (!undo_target_ok(V, V->undo[2 * i]))
            return -1;
    for (int64_t i = n - 1; i >= 0; i--) {
        volatile int64_t *entry = V->undo + 2 * i;
        int64_t off = entry[0], old = entry[1];
        if (!undo_target_ok(V, off))
            return -1;
        st((volatile int64_t *)(V->base + off), old);
        crash_point();
    }
    st(HDR(V, H_COMMITS), ld(HDR(V, H_COMMITS)) + 1);
    st(count, 0);
    return 0;
}

static int tx_rollback(View *V) { return tx_rollback_n(V, ld(UNDO_COUNT(V))); }

/* ------------------------------------------------------------- doorbells */

/* A doorbell is a 32-bit futex word inside the ledger (the low half of an
 * int64 field): ringing adds one and wakes; a waiter reads the word before it
 * looks at its entry and sleeps only while the word still has that value, so
 * a ring between its look and its sleep is never lost.  Rings are hints: the
 * waiter re-reads the ledger after every wake-up. */
static inline volatile uint32_t *bell_word(volatile int64_t *field)
{
    return (volatile uint32_t *)field; /* little-endian: the low half */
}

static void ring_bell(volatile int64_t *field)
{
    volatile uint32_t *w = bell_word(field);
    __atomic_fetch_add(w, 1, __ATOMIC_RELEASE);
    syscall(SYS_futex, w, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/* Sleep while the bell still reads `seen`, until `deadline` (CLOCK_MONOTONIC
 * ns; 0: no deadline).  0 rung or spurious, ETIMEDOUT, or EINTR. */
static int bell_wait(volatile int64_t *field, uint32_t seen, int64_t deadline)
{
    struct timespec ts, *tp = NULL;
    if (deadline > 0) {
        ts = ts_of(deadline);
        tp = &ts;
    }
    long rc = syscall(SYS_futex, bell_word(field), FUTEX_WAIT_BITSET, seen, tp, NULL,
                      FUTEX_BITSET_MATCH_ANY);
    if (rc == 0 || errno == EAGAIN)
        return 0;
    return errno == ETIMEDOUT ? ETIMEDOUT : (errno == EINTR ? EINTR : 0);
}

static inline uint32_t bell_read(volatile int64_t *field)
{
    return __atomic_load_n(bell_word(field), __ATOMIC_ACQUIRE);
}

/* An entry's doorbell has one waiter, its owner's thread, which sets the
 * top bit of the word before it sleeps; a ring clears the bit as it counts
 * and (fair ledgers: see ring_entry) makes the FUTEX_WAKE system call only
 * if the bit was set.  A ring for a waiter that is still running -- the
 * spinning head, a woken head that has not looked yet -- is then one atomic
 * instruction instead of a system call on a shared futex (which pins the
 * page).  The count is the low 31 bits.  A peer that clears the bit can
 * only delay the wake-up to the waiter's next slice, as a peer that never
 * rings can.  (Process bells, which the notifier thread waits on several
 * at a time with futex_waitv, keep ringing unconditionally.) */
#define BELL_SLEEPER 0x80000000u

static inline uint32_t entry_bell_read(volatile int64_t *field)
{
    return bell_read(field) & ~BELL_SLEEPER;
}

static void ring_entry(View *V, volatile int64_t *field)
{
    volatile uint32_t *w = bell_word(field);
    uint32_t old = __atomic_load_n(w, __ATOMIC_RELAXED);
    while (!__atomic_compare_exchange_n(w, &old, ((old & ~BELL_SLEEPER) + 1) & ~BELL_SLEEPER,
                                        1, __ATOMIC_RELEASE, __ATOMIC_RELAXED))
        ;
    /* fair=False rings a head only as a hint, and there the system call's
     * pause is what lets the woken head reach the units before the ringer's
     * next take: without it, interleaved A/B, P=4 capacity 1 fell from 1.04M
     * to 0.63M ops/s (P=8 rose 486k -> 584k).  So barging ledgers always wake. */
    if ((old & BELL_SLEEPER) || is_unfair(V))
        syscall(SYS_futex, w, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/* bell_wait for an entry's bell: say we sleep, then sleep while nothing rang. */
static int entry_bell_wait(volatile int64_t *field, uint32_t seen, int64_t deadline)
{
    volatile uint32_t *w = bell_word(field);
    uint32_t cur = __atomic_load_n(w, __ATOMIC_ACQUIRE);
    for (;;) {
        if ((cur & ~BELL_SLEEPER) != seen)
            return 0; /* rung since we looked */
        if ((cur & BELL_SLEEPER) ||
            __atomic_compare_exchange_n(w, &cur, cur | BELL_SLEEPER, 1, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE))
            break;
    }
    return bell_wait(field, seen | BELL_SLEEPER, deadline);
}

/* Remember to ring entry w's doorbell after unlock (or its holder's process
 * bell when an event loop waits for it). */
static int add_wake(View *V, Call *c, int64_t w)
{
    int64_t flags = ld(WAITER(V, w, WA_FLAGS));
    int64_t h = ld(WAITER(V, w, WA_HOLDER));
    if ((flags & WF_ASYNC) && holder_ok(V, h))
        return list_add(c, &c->wakes, -(h + 1));
    return list_add(c, &c->wakes, w);
}

/* After unlock: ring what the transaction granted.  The mapping stays valid
 * (the call is counted in `active`).  A ring cannot fail in a way that
 * matters: the waiter looks at the ledger at least every slice anyway. */
static void ring_wakes(View *V, Call *c)
{
    for (Py_ssize_t i = 0; i < c->wakes.n; i++) {
        int64_t k = c->wakes.items[i];
        if (k >= 0 && waiter_ok(V, k))
            ring_entry(V, WAITER(V, k, WA_BELL));
        else if (k < 0 && holder_ok(V, -k - 1))
            ring_bell(HOLDER(V, -k - 1, HO_BELL));
    }
}

/* ------------------------------------------------------------ the queue */

/* Serving order: higher priority first, then lower ticket. */
static inline int served_before(int64_t prio_a, int64_t ticket_a, int64_t prio_b, int64_t ticket_b)
{
    return prio_a > prio_b || (prio_a == prio_b && ticket_a < ticket_b);
}

/* The head of the queue, validated; -1 if empty; -2 if the list is corrupt. */
static int64_t queue_head(View *V)
{
    if (ld(HDR(V, H_WAITING)) <= 0)
        return -1;
    int64_t w = ld(HDR(V, H_Q_HEAD));
    if (!waiter_ok(V, w) || ld(WAITER(V, w, WA_STATE)) != W_WAITING)
        return -2;
    return w;
}

/* Link entry w (WAITING, fields set) into the queue by its priority: walk
 * back from the tail past lower priorities (O(1) when all are equal). */
static void queue_insert(View *V, Call *c, int64_t w, int64_t prio)
{
    int64_t after = ld(HDR(V, H_Q_TAIL)), steps = 0;
    int64_t waiting = ld(HDR(V, H_WAITING));
    if (waiting <= 0)
        after = -1;
    while (after != -1) {
        if (!waiter_ok(V, after) || ++steps > V->max_waiters) {
            fail(c, E_CORRUPT, "wait queue links are corrupt");
            return;
        }
        if (ld(WAITER(V, after, WA_PRIORITY)) >= prio)
            break;
        after = ld(WAITER(V, after, WA_PREV));
    }
    int64_t before = after == -1 ? (waiting > 0 ? ld(HDR(V, H_Q_HEAD)) : -1)
                                 : ld(WAITER(V, after, WA_NEXT));
    if (before != -1 && !waiter_ok(V, before)) {
        fail(c, E_CORRUPT, "wait queue links are corrupt");
        return;
    }
    tx_store(V, c, WAITER(V, w, WA_PREV), after);
    tx_store(V, c, WAITER(V, w, WA_NEXT), before);
    if (after == -1) {
        tx_store(V, c, HDR(V, H_Q_HEAD), w);
        tx_store(V, c, HDR(V, H_HEAD_OVERTAKEN), 0); /* a new head */
    } else
        tx_store(V, c, WAITER(V, after, WA_NEXT), w);
    if (before == -1)
        tx_store(V, c, HDR(V, H_Q_TAIL), w);
    else
        tx_store(V, c, WAITER(V, before, WA_PREV), w);
    tx_store(V, c, HDR(V, H_WAITING), waiting + 1);
}

/* Unlink WAITING entry w from the queue. */
static void queue_remove(View *V, Call *c, int64_t w)
{
    int64_t prev = ld(WAITER(V, w, WA_PREV)), next = ld(WAITER(V, w, WA_NEXT));
    if ((prev != -1 && !waiter_ok(V, prev)) || (next != -1 && !waiter_ok(V, next))) {
        fail(c, E_CORRUPT, "wait queue links are corrupt");
        return;
    }
    if (prev == -1) {
        tx_store(V, c, HDR(V, H_Q_HEAD), next);
        tx_store(V, c, HDR(V, H_HEAD_OVERTAKEN), 0);
    } else
        tx_store(V, c, WAITER(V, prev, WA_NEXT), next);
    if (next == -1)
        tx_store(V, c, HDR(V, H_Q_TAIL), prev);
    else
        tx_store(V, c, WAITER(V, next, WA_PREV), prev);
    int64_t waiting = ld(HDR(V, H_WAITING)) - 1;
    tx_store(V, c, HDR(V, H_WAITING), waiting);
    if (waiting == 0) {
        tx_store(V, c, HDR(V, H_Q_HEAD), -1);
        tx_store(V, c, HDR(V, H_Q_TAIL), -1);
    }
}

/* A free waiter entry (free list first, then the high-water mark), or -1. */
static int64_t alloc_waiter(View *V, Call *c)
{
    int64_t w = ld(HDR(V, H_FREE_HEAD));
    if (w != -1) {
        if (!waiter_ok(V, w) || w >= waiter_hwm(V) || ld(WAITER(V, w, WA_STATE)) != W_FREE) {
            fail(c, E_CORRUPT, "free-entry list is corrupt");
            return -1;
        }
        tx_store(V, c, HDR(V, H_FREE_HEAD), ld(WAITER(V, w, WA_NEXT)));
        return w;
    }
    int64_t hwm = waiter_hwm(V);
    if (hwm >= V->max_waiters)
        return -1;
    tx_store(V, c, HDR(V, H_WAITER_HWM), hwm + 1);
    return hwm;
}

/* Free a pending (WAITING or GRANTED) entry; part of a transaction. */
static void free_waiter(View *V, Call *c, int64_t w)
{
    int64_t state = ld(WAITER(V, w, WA_STATE));
    int64_t h = ld(WAITER(V, w, WA_HOLDER));
    if (state == W_WAITING)
        queue_remove(V, c, w);
    if (holder_ok(V, h))
        tx_store(V, c, HOLDER(V, h, HO_PENDING), ld(HOLDER(V, h, HO_PENDING)) - 1);
    tx_store(V, c, WAITER(V, w, WA_STATE), W_FREE);
    tx_store(V, c, WAITER(V, w, WA_NEXT), ld(HDR(V, H_FREE_HEAD)));
    tx_store(V, c, WAITER(V, w, WA_PREV), -1);
    tx_store(V, c, HDR(V, H_FREE_HEAD), w);
}

/* ------------------------------------------------------------ holders */

static int64_t find_holder(Ledger *L, int64_t pid, int64_t start)
{
    View *V = &L->v;
    int64_t i = L->hint;
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
static int64_t find_or_register(Ledger *L, Call *c, int64_t pid, int64_t start, int64_t now)
{
    View *V = &L->v;
    int64_t i = find_holder(L, pid, start);
    if (i >= 0)
        return i;
    int64_t hwm = holder_hwm(V);
    for (i = 0; i < hwm; i++)
        if (ld(HOLDER(V, i, HO_PID)) == 0)
            break;
    if (i == hwm) {
        if (hwm >= V->max_holders) {
            fail(c, E_FULL_HOLDERS, "holder table full");
            c->r[5] = V->max_holders;
            return -1;
        }
        tx_store(V, c, HDR(V, H_HOLDER_HWM), hwm + 1);
    }
    tx_store(V, c, HOLDER(V, i, HO_START), start);
    tx_store(V, c, HOLDER(V, i, HO_UNITS), 0);
    tx_store(V, c, HOLDER(V, i, HO_SINCE), 0);
    tx_store(V, c, HOLDER(V, i, HO_ACQUIRED), 0);
    tx_store(V, c, HOLDER(V, i, HO_PENDING), 0);
    tx_store(V, c, HOLDER(V, i, HO_REGISTERED_NS), now);
    tx_store(V, c, HOLDER(V, i, HO_PID), pid);
    tx_store(V, c, HDR(V, H_REGISTRATIONS), ld(HDR(V, H_REGISTRATIONS)) + 1);
    L->hint = i;
    return i;
}

static void unregister_holder(View *V, Call *c, int64_t h)
{
    tx_store(V, c, HOLDER(V, h, HO_PID), 0);
    tx_store(V, c, HOLDER(V, h, HO_START), 0);
    /* Keep the scanned range short once the top slots are gone. */
    int64_t hwm = holder_hwm(V);
    while (hwm > 0 && (hwm - 1 == h || ld(HOLDER(V, hwm - 1, HO_PID)) == 0))
        hwm--;
    tx_store(V, c, HDR(V, H_HOLDER_HWM), hwm);
    tx_store(V, c, HDR(V, H_CHANGES), ld(HDR(V, H_CHANGES)) + 1);
}

/* ------------------------------------------------------------- slots */

/* Give `units` free unit numbers (lowest first) to holder h with `token`
 * for owner `key`; remember them for the caller when `mine`. */
static void slots_assign(View *V, Call *c, int64_t h, int64_t units, int64_t token, int64_t key,
                         int mine)
{
    int64_t given = 0;
    for (int64_t u = 0; u < V->capacity && given < units; u++) {
        if (ld(UNIT(V, u, UN_OWNER)) != 0)
            continue;
        /* A free unit's token and key are never read (everything asks its
         * owner word first), so they need no undo entry: a rollback frees
         * the unit again by its owner word alone.  Stored before the owner
         * word, so whoever sees the owner sees them. */
        if (c->err != E_OK)
            return;
        st(UNIT(V, u, UN_TOKEN), token);
        st(UNIT(V, u, UN_KEY), key);
        tx_store(V, c, UNIT(V, u, UN_OWNER), h + 1);
        if (mine && list_add(c, &c->slots, u) < 0)
            return;
        given++;
    }
    if (given < units)
        fail(c, E_CORRUPT, "unit table has %lld free unit(s), the count says %lld",
             (long long)given, (long long)units);
}

static int64_t slots_move_token(View *V, Call *c, int64_t h, int64_t want, int64_t token,
                                int64_t to)
{
    int64_t moved = 0;
    for (int64_t u = V->capacity - 1; u >= 0 && moved < want; u--) {
        if (ld(UNIT(V, u, UN_OWNER)) != h + 1 || ld(UNIT(V, u, UN_TOKEN)) != token)
            continue;
        tx_store(V, c, UNIT(V, u, UN_OWNER), to); /* a free unit's token and key are never read */
        moved++;
    }
    return moved;
}

/* Move `units` of holder h's unit numbers to `to` (0: free, -1: unowned):
 * those of grant `token` first (when given), then those of owner `key`'s
 * grants, newest grant first (a thread's bare release undoes its own latest
 * acquire), then any, highest numbers first. */
static void slots_move(View *V, Call *c, int64_t h, int64_t units, int64_t token, int64_t key,
                       int64_t to)
{
    int64_t moved = token ? slots_move_token(V, c, h, units, token, to) : 0;
    while (moved < units && key) {
        int64_t newest = 0;
        for (int64_t u = 0; u < V->capacity; u++)
            if (ld(UNIT(V, u, UN_OWNER)) == h + 1 && ld(UNIT(V, u, UN_KEY)) == key &&
                ld(UNIT(V, u, UN_TOKEN)) > newest)
                newest = ld(UNIT(V, u, UN_TOKEN));
        if (!newest)
            break;
        moved += slots_move_token(V, c, h, units - moved, newest, to);
    }
    for (int64_t u = V->capacity - 1; u >= 0 && moved < units; u--) {
        if (ld(UNIT(V, u, UN_OWNER)) != h + 1)
            continue;
        tx_store(V, c, UNIT(V, u, UN_OWNER), to);
        moved++;
    }
    if (moved < units)
        fail(c, E_CORRUPT, "holder slot %lld owns fewer unit numbers than units",
             (long long)h);
}

/* Free `units` unowned unit numbers, lowest first (an unowned post). */
static void slots_free_unowned(View *V, Call *c, int64_t units)
{
    int64_t freed = 0;
    for (int64_t u = 0; u < V->capacity && freed < units; u++) {
        if (ld(UNIT(V, u, UN_OWNER)) != -1)
            continue;
        tx_store(V, c, UNIT(V, u, UN_OWNER), 0);
        freed++;
    }
    if (freed < units)
        fail(c, E_CORRUPT, "unit table has fewer unowned units than the count");
}

/* The slots of grant `token` held by h (settle: what a queued grant gave). */
static void slots_of_grant(View *V, Call *c, int64_t h, int64_t token)
{
    for (int64_t u = 0; u < V->capacity; u++)
        if (ld(UNIT(V, u, UN_OWNER)) == h + 1 && ld(UNIT(V, u, UN_TOKEN)) == token)
            if (list_add(c, &c->slots, u) < 0)
                return;
}

/* ------------------------------------------------------------- granting */

/* The mutex has no owner any more (release, recovery, a cancelled grant):
 * its priority-inheritance record goes with the owner. */
static void mutex_clear_owner(View *V, Call *c)
{
    /* Only the key: H_MX_OWNER_TID and H_MX_DEPTH mean something only while
     * the key is set (every reader asks the key first), so they are left as
     * they are -- the next owner's stores of the same thread and depth 1
     * then cost nothing (tx_store skips an unchanged word).  A mutex pair
     * logs two stores of its own instead of seven (layout 3). */
    tx_store(V, c, HDR(V, H_MX_OWNER_KEY), 0);
    if (!(V->policy & P_PI) && !ld(HDR(V, H_PI_STATE)))
        return; /* no record to clear: only inheriting mutexes keep one */
    for (int f = H_PI_STATE; f <= H_PI_REASON; f++)
        tx_store(V, c, HDR(V, f), 0);
}

/* Give `units` to holder h as one grant; returns its fencing token.  For a
 * mutex, `owner`/`tid` become the owner. */
static int64_t give_units(View *V, Call *c, int64_t h, int64_t units, int64_t now, int64_t owner,
                          int64_t tid, int mine)
{
    int64_t held = ld(HOLDER(V, h, HO_UNITS));
    int64_t token = ld(HDR(V, H_NEXT_TOKEN));
    if (held == 0)
        tx_store(V, c, HOLDER(V, h, HO_SINCE), now);
    tx_store(V, c, HOLDER(V, h, HO_UNITS), held + units);
    tx_store(V, c, HDR(V, H_AVAILABLE), ld(HDR(V, H_AVAILABLE)) - units);
    /* Not undo-logged (each logged store is an undo entry, two words of a
     * shared cache line, and a crash point): the counters only count, and
     * the token only has to grow.  A transaction rolled back after these
     * leaves a counter one high and a token value never handed out, which
     * is all a crash can do to them.  The log is not empty here (HO_UNITS
     * above), so lock-free readers still see the transaction in progress. */
    if (c->err == E_OK) {
        st(HOLDER(V, h, HO_ACQUIRED), ld(HOLDER(V, h, HO_ACQUIRED)) + 1);
        st(HDR(V, H_ACQUISITIONS), ld(HDR(V, H_ACQUISITIONS)) + 1);
        st(HDR(V, H_NEXT_TOKEN), token + 1);
    }
    if (is_slotted(V))
        slots_assign(V, c, h, units, token, owner, mine);
    if (is_mutex(V)) {
        tx_store(V, c, HDR(V, H_MX_OWNER_KEY), owner);
        tx_store(V, c, HDR(V, H_MX_OWNER_TID), tid);
        tx_store(V, c, HDR(V, H_MX_DEPTH), 1);
        /* No copy of the token: with one unit, the owner's grant is the
         * last one made while the key is set (see mutex_token). */
    }
    return token;
}

/* Grant the head entry w: units into its holder slot, GRANTED, out of the
 * queue, committed; its doorbell rung after unlock. */
static int grant_entry(View *V, Call *c, int64_t w, int64_t *now)
{
    int64_t units = ld(WAITER(V, w, WA_UNITS));
    int64_t h = ld(WAITER(V, w, WA_HOLDER));
    if (!holder_ok(V, h) || ld(HOLDER(V, h, HO_PID)) != ld(WAITER(V, w, WA_PID)) ||
        ld(HOLDER(V, h, HO_START)) != ld(WAITER(V, w, WA_START)) || units < 1 ||
        units > V->capacity) {
        fail(c, E_CORRUPT, "waiter entry %lld is inconsistent with its holder slot",
             (long long)w);
        return -1;
    }
    if (!*now)
        *now = now_ns();
    int64_t token = give_units(V, c, h, units, *now, ld(WAITER(V, w, WA_OWNER)),
                               ld(WAITER(V, w, WA_TID)), 0);
    queue_remove(V, c, w);
    tx_store(V, c, WAITER(V, w, WA_TOKEN), token);
    tx_store(V, c, WAITER(V, w, WA_STATE), W_GRANTED);
    tx_commit(V, c);
    if (c->err != E_OK)
        return -1;
    return add_wake(V, c, w);
}

/* After units were freed or a head left: fair semaphores grant the queue in
 * order until the head wants more than is free (one transaction per grant,
 * so the undo log stays small); unfair ones ring a head that fits (it takes
 * the units itself when it runs, unless an arrival was quicker) and hand off
 * only to a head passed over OVERTAKE_LIMIT times. */
static int grant_loop(View *V, Call *c)
{
    int64_t now = 0;
    for (int64_t steps = 0; steps <= V->max_waiters; steps++) {
        int64_t w = queue_head(V);
        if (w == -1)
            return 0;
        if (w == -2) {
            fail(c, E_CORRUPT, "wait queue head is not a waiting entry");
            return -1;
        }
        if (ld(WAITER(V, w, WA_FLAGS)) & WF_ABANDONED) {
            free_waiter(V, c, w); /* its owner left: never grant it */
            tx_commit(V, c);
            if (c->err != E_OK)
                return -1;
            continue;
        }
        int64_t units = ld(WAITER(V, w, WA_UNITS));
        if (units > ld(HDR(V, H_AVAILABLE)))
            return 0;
        if (is_unfair(V) && ld(HDR(V, H_HEAD_OVERTAKEN)) < OVERTAKE_LIMIT)
            return add_wake(V, c, w);
        if (grant_entry(V, c, w, &now) < 0)
            return -1;
    }
    fail(c, E_CORRUPT, "wait queue does not end");
    return -1;
}

/* May a new request take units now?  0 no; 1 yes, overtaking nobody; 2 yes,
 * barging past a queued head (fair=False, bounded by OVERTAKE_LIMIT). */
static int may_take(View *V, Call *c, int64_t units, int64_t priority)
{
    if (ld(HDR(V, H_AVAILABLE)) < units)
        return 0;
    int64_t head = queue_head(V);
    if (head == -1)
        return 1;
    if (head == -2) {
        fail(c, E_CORRUPT, "wait queue head is not a waiting entry");
        return 0;
    }
    if (ld(WAITER(V, head, WA_PRIORITY)) < priority)
        return 1; /* the queue is sorted: nobody of our priority or higher waits */
    if (is_unfair(V) && ld(HDR(V, H_HEAD_OVERTAKEN)) < OVERTAKE_LIMIT)
        return 2;
    return 0;
}

/* ------------------------------------------------------------------ lock */

/* A waiter that must return (its deadline passed, a signal, close()) while
 * the lock is wedged (held by a stopped process) cannot remove its entry:
 * it marks the entry abandoned, lock-free, and leaves.  One atomic OR on a
 * word only its owner writes outside the lock, one atomic add on a counter
 * no transaction logs.  Whoever takes the lock next cancels it (a grant that
 * reached it is given back).  So a deadline holds whatever the lock does. */
static void abandon(View *V, int64_t w)
{
    __atomic_fetch_or(WAITER(V, w, WA_FLAGS), WF_ABANDONED, __ATOMIC_ACQ_REL);
    __atomic_fetch_add(HDR(V, H_ABANDONED), 1, __ATOMIC_ACQ_REL);
}

static int64_t cancel_entry(View *V, Call *c, int64_t w);

/* Cancel every abandoned entry (under the lock, before the caller's body). */
static int sweep_abandoned(View *V, Call *c)
{
    int64_t n = ld(HDR(V, H_ABANDONED));
    if (n <= 0)
        return 0;
    int64_t hwm = waiter_hwm(V);
    for (int64_t w = 0; w < hwm; w++)
        if (ld(WAITER(V, w, WA_STATE)) != W_FREE && (ld(WAITER(V, w, WA_FLAGS)) & WF_ABANDONED)) {
            cancel_entry(V, c, w);
            tx_commit(V, c);
            if (c->err != E_OK)
                return -1;
        }
    __atomic_fetch_sub(HDR(V, H_ABANDONED), n, __ATOMIC_ACQ_REL);
    return grant_loop(V, c);
}

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
    c->undo_n = 0;
    c->in_tx = 1;
    if (rc == EOWNERDEAD || ld(UNDO_COUNT(V)) != 0) {
        if (ld(UNDO_COUNT(V)) != 0 && tx_rollback(V) < 0) {
            fail(c, E_CORRUPT, "undo log is corrupt");
            return -1;
        }
        /* The dead owner may have died between a commit and the grants that
         * follow it (release, cancel, recover and each grant commit first):
         * the log is empty then, but units may be free for the queue head.
         * It may also have granted and not yet rung: ring every granted
         * entry (a spurious ring costs a waiter one look at the ledger). */
        int64_t hwm = waiter_hwm(V);
        for (int64_t w = 0; w < hwm; w++)
            if (ld(WAITER(V, w, WA_STATE)) == W_GRANTED && add_wake(V, c, w) < 0)
                return -1;
        if (grant_loop(V, c) < 0)
            return -1;
    }
    return sweep_abandoned(V, c);
}

static void unlock(View *V, Call *c)
{
    /* A body that failed mid-transaction leaves uncommitted stores: undo them
     * before anyone else can see them. */
    if (c->undo_n && tx_rollback_n(V, c->undo_n) < 0)
        fail(c, E_CORRUPT, "undo log is corrupt");
    c->undo_n = 0;
    c->in_tx = 0;
    st(HDR(V, H_LOCK_OWNER), 0);
    crash_point();
    pthread_mutex_unlock(MUTEX(V));
}

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
    if (tid <= 0 || (w & FUTEX_OWNER_DIED))
        return;
    if (kill(tid, 0) == 0 || errno != ESRCH)
        return;
    __atomic_compare_exchange_n(word, &w, w | FUTEX_OWNER_DIED, 0, __ATOMIC_ACQ_REL,
                                __ATOMIC_ACQUIRE);
}

typedef void (*Body)(Ledger *L, Call *c);

/* Take the lock in `mode`: LOCK_FOREVER (slices; signal handlers run between
 * them, and what they raise ends the wait), LOCK_UNINTERRUPTED (slices, no
 * handlers: signals are handled after the call), or an absolute
 * CLOCK_MONOTONIC deadline in ns (E_LOCK_TIMEOUT past it).  Called with the
 * GIL released when `ts` is non-NULL.  Returns the pthread code or -1. */
static int lock_wait(View *V, Call *c, int64_t mode, PyThreadState **ts)
{
    for (;;) {
        int64_t now = mono_ns();
        int64_t until = now + LOCK_SLICE_NS;
        if (mode >= 0 && mode < until)
            until = mode;
        struct timespec dl = ts_of(until);
        int rc = pthread_mutex_clocklock(MUTEX(V), CLOCK_MONOTONIC, &dl);
        if (rc != ETIMEDOUT)
            return rc;
        mark_vanished_owner(V);
        if (mode >= 0 && mono_ns() >= mode) {
            rc = pthread_mutex_trylock(MUTEX(V)); /* a vanished owner was just marked */
            if (rc != EBUSY)
                return rc;
            c->lock_owner_pid = ld(HDR(V, H_LOCK_OWNER));
            fail(c, E_LOCK_TIMEOUT, "ledger lock busy");
            return -1;
        }
        if (mode == LOCK_FOREVER) {
            PyEval_RestoreThread(*ts);
            int sig = PyErr_CheckSignals();
            *ts = PyEval_SaveThread();
            if (sig < 0) {
                c->err = E_SIGNAL; /* the Python error stays set */
                return -1;
            }
        }
    }
}

/* Run one transaction body under the ledger lock.  Uncontended: with the
 * GIL, no system call.  Contended: the GIL is released before waiting and
 * re-taken only after unlock, so nobody ever holds the ledger lock while
 * waiting for a GIL.  Doorbells are rung here, after unlock, so no caller
 * can forget it.  Returns -1 with c->err set (E_SIGNAL: a Python error). */
static int run_locked(Ledger *L, Body body, Call *c, int64_t mode)
{
    View *V = &L->v;
    if (!V->base) {
        fail(c, E_VALUE, "ledger is closed");
        return -1;
    }
    if (L->active_pid != self_pid) { /* a forked child: the parent's calls are not ours */
        L->active = 0;
        L->active_pid = (pid_t)self_pid;
    }
    L->active++; /* with the GIL: release_buffer() refuses while > 0 */
    int rc = pthread_mutex_trylock(MUTEX(V));
    if (rc != EBUSY) {
        if (after_lock(V, c, rc) == 0)
            body(L, c);
        if (rc == 0 || rc == EOWNERDEAD)
            unlock(V, c);
        ring_wakes(V, c);
    } else if (mode == LOCK_TRY) {
        c->lock_owner_pid = ld(HDR(V, H_LOCK_OWNER));
        fail(c, E_LOCK_TIMEOUT, "ledger lock busy");
    } else {
        PyThreadState *ts = PyEval_SaveThread();
        rc = lock_wait(V, c, mode, &ts);
        if (rc >= 0) {
            if (after_lock(V, c, rc) == 0)
                body(L, c);
            if (rc == 0 || rc == EOWNERDEAD)
                unlock(V, c);
            ring_wakes(V, c);
        }
        PyEval_RestoreThread(ts);
    }
    L->active--;
    return c->err == E_OK ? 0 : -1;
}

/* Turn c->err into the matching ipcsem error (with the GIL). */
static PyObject *raise_call_error(Call *c)
{
    switch (c->err) {
    case E_SIGNAL:
        return NULL; /* already set */
    case E_VALUE:
        PyErr_SetString(PyExc_ValueError, c->msg);
        return NULL;
    case E_NOMEM:
        return PyErr_NoMemory();
    case E_FULL_HOLDERS:
    case E_FULL_WAITERS: {
        PyObject *e = PyObject_CallFunction(FullError, "sL",
                                            c->err == E_FULL_HOLDERS ? "holders" : "waiters",
                                            (long long)c->r[5]);
        if (e) {
            PyErr_SetObject(FullError, e);
            Py_DECREF(e);
        }
        return NULL;
    }
    case E_UNLINKED:
        PyErr_SetNone(UnlinkedError);
        return NULL;
    case E_NOTOWNER:
        PyErr_SetString(NotOwnerError, c->msg);
        return NULL;
    case E_SELF_DEADLOCK: {
        PyObject *e = PyObject_CallFunction(DeadlockError, "s", c->msg);
        if (e) {
            PyErr_SetObject(DeadlockError, e);
            Py_DECREF(e);
        }
        return NULL;
    }
    case E_LOCK_TIMEOUT: {
        PyObject *e = PyObject_CallFunction(WedgedError, "L", (long long)c->lock_owner_pid);
        if (e) {
            PyErr_SetObject(WedgedError, e);
            Py_DECREF(e);
        }
        return NULL;
    }
    default: {
        PyObject *e = PyObject_CallFunction(CorruptError, "s", c->msg);
        if (e) {
            PyErr_SetObject(CorruptError, e);
            Py_DECREF(e);
        }
        return NULL;
    }
    }
}

/* -------------------------------------------------------- result records */

static PyTypeObject *HolderRowType, *WaiterRowType, *HeaderType, *SnapshotType;

/* ipcsem.Lease on this backend: what one grant gave the caller.  A small C
 * type rather than a struct sequence: a grant happens on every acquire, and
 * a struct sequence costs dictionary lookups to build and to free. */
typedef struct {
    PyObject_HEAD
    long long units;
    PyObject *slots;
    long long token;
    char previous_owner_died;
} LeaseObject;

static PyMemberDef Lease_members[] = {
    {"units", T_LONGLONG, offsetof(LeaseObject, units), READONLY, "units granted"},
    {"slots", T_OBJECT, offsetof(LeaseObject, slots), READONLY,
     "unit numbers granted, sorted (slotted semaphores), else ()"},
    {"token", T_LONGLONG, offsetof(LeaseObject, token), READONLY,
     "fencing token of this grant (strictly increasing per semaphore)"},
    {"previous_owner_died", T_BOOL, offsetof(LeaseObject, previous_owner_died), READONLY,
     "mutex: its previous owner died holding it, not yet repaired"},
    {NULL}};

static PyObject *Lease_valid(PyObject *self, void *c) { Py_RETURN_TRUE; }
static PyObject *Lease_deadline(PyObject *self, void *c) { Py_RETURN_NONE; }

static PyGetSetDef Lease_getset[] = {
    {"valid", Lease_valid, NULL, "always True on one machine: a lease ends only with its process",
     NULL},
    {"deadline", Lease_deadline, NULL, "always None: a lease on one machine does not expire", NULL},
    {NULL}};

static void Lease_dealloc(LeaseObject *g)
{
    Py_XDECREF(g->slots);
    PyObject_Free(g);
}

static PyObject *Lease_repr(LeaseObject *g)
{
    return PyUnicode_FromFormat("ipcsem.Lease(units=%lld, slots=%R, token=%lld%s)", g->units,
                                g->slots, g->token,
                                g->previous_owner_died ? ", previous_owner_died=True" : "");
}

static PyTypeObject LeaseType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ipcsem.Lease",
    .tp_basicsize = sizeof(LeaseObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "What a grant gave the caller (see ipcsem.Lease).",
    .tp_dealloc = (destructor)Lease_dealloc,
    .tp_repr = (reprfunc)Lease_repr,
    .tp_members = Lease_members,
    .tp_getset = Lease_getset,
};

static PyObject *slots_tuple(List *l)
{
    PyObject *t = PyTuple_New(l->n);
    if (!t)
        return NULL;
    /* ascending: the order they were assigned or found in, sorted */
    for (Py_ssize_t i = 1; i < l->n; i++)
        for (Py_ssize_t j = i; j > 0 && l->items[j - 1] > l->items[j]; j--) {
            int64_t x = l->items[j];
            l->items[j] = l->items[j - 1];
            l->items[j - 1] = x;
        }
    for (Py_ssize_t i = 0; i < l->n; i++) {
        PyObject *v = PyLong_FromLongLong(l->items[i]);
        if (!v) {
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, i, v);
    }
    return t;
}

static PyObject *empty_tuple;

static PyObject *make_grant(int64_t units, int64_t token, List *slots, int owner_died)
{
    PyObject *sl = slots->n ? slots_tuple(slots) : Py_NewRef(empty_tuple);
    if (!sl)
        return NULL;
    LeaseObject *g = PyObject_New(LeaseObject, &LeaseType);
    if (!g) {
        Py_DECREF(sl);
        return NULL;
    }
    g->units = units;
    g->slots = sl;
    g->token = token;
    g->previous_owner_died = owner_died != 0;
    return (PyObject *)g;
}

/* -------------------------------------------------------- argument parsing */

static int parse_args(Call *c, PyObject *const *args, Py_ssize_t nargs, Py_ssize_t want,
                      const char *fname)
{
    call_init(c);
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

/* A tid or owner argument of 0 means the calling thread. */
static inline void default_thread(int64_t *tid, int64_t *owner)
{
    if (tid && !*tid)
        *tid = my_tid();
    if (owner && !*owner)
        *owner = tid ? *tid : my_tid();
}

static int check_open(Ledger *L)
{
    if (!L->v.base) {
        PyErr_SetString(ClosedError ? ClosedError : PyExc_ValueError, "ledger is closed");
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

static int check_priority(int64_t p)
{
    if (p < INT32_MIN || p > INT32_MAX) {
        PyErr_Format(PyExc_ValueError, "priority must be in %d..%d, got %lld", INT32_MIN,
                     INT32_MAX, (long long)p);
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

/* The fencing token of the mutex owner's grant: capacity 1, so while the
 * owner key is set no other grant was made since the owner's -- tokens are
 * only handed out by give_units, which bumps H_NEXT_TOKEN. */
static int64_t mutex_token(View *V) { return ld(HDR(V, H_NEXT_TOKEN)) - 1; }

/* A mutex asked for by its own owner: nest (reentrant) or refuse. */
static int mutex_self(Ledger *L, Call *c, int64_t pid, int64_t start, int64_t owner)
{
    View *V = &L->v;
    if (!is_mutex(V) || ld(HDR(V, H_MX_OWNER_KEY)) != owner || owner == 0)
        return 0;
    int64_t h = find_holder(L, pid, start);
    if (h < 0 || ld(HOLDER(V, h, HO_UNITS)) < 1)
        return 0;
    if (!(V->policy & P_REENTRANT)) {
        fail(c, E_SELF_DEADLOCK, "this thread already owns the (non-reentrant) mutex: "
                                 "acquiring it again would wait forever");
        return -1;
    }
    tx_store(V, c, HDR(V, H_MX_DEPTH), ld(HDR(V, H_MX_DEPTH)) + 1);
    tx_commit(V, c);
    c->r[0] = 1;
    c->r[1] = mutex_token(V);
    c->r[2] = ld(HDR(V, H_MX_OWNER_DIED));
    return 1;
}

/* args: pid, start, tid, owner, units, priority, flags.  r[0] 1 granted. */
static void body_take(Ledger *L, Call *c)
{
    View *V = &L->v;
    int64_t pid = c->a[0], start = c->a[1], tid = c->a[2], owner = c->a[3], units = c->a[4],
            priority = c->a[5];
    if (refuse_if_unlinked(V, c) < 0 || mutex_self(L, c, pid, start, owner) != 0)
        return;
    int how = may_take(V, c, units, priority);
    if (!how)
        return;
    int64_t now = now_ns();
    int64_t h = find_or_register(L, c, pid, start, now);
    if (h < 0)
        return;
    if (how == 2)
        tx_store(V, c, HDR(V, H_HEAD_OVERTAKEN), ld(HDR(V, H_HEAD_OVERTAKEN)) + 1);
    int64_t token = give_units(V, c, h, units, now, owner, tid, 1);
    int died = is_mutex(V) ? (int)ld(HDR(V, H_MX_OWNER_DIED)) : 0;
    tx_commit(V, c);
    c->r[0] = 1;
    c->r[1] = token;
    c->r[2] = died;
}

static int lock_mode_arg(int64_t mode)
{
    if (mode < LOCK_TRY) {
        PyErr_SetString(PyExc_ValueError, "bad lock mode");
        return -1;
    }
    return 0;
}

static PyObject *grant_result(Call *c, int64_t units)
{
    return make_grant(units, c->r[1], &c->slots, (int)c->r[2]);
}

/* take(pid, start, tid, owner, units, priority, lock) -> Grant | None.
 * The uncontended path: lock, a few stores, commit, unlock.  None when the
 * units are not free for us now, or the lock was not had by the deadline. */
static PyObject *Ledger_take(Ledger *L, PyObject *const *args, Py_ssize_t nargs)
{
    Call c;
    if (parse_args(&c, args, nargs, 7, "take") < 0 || check_open(L) < 0 ||
        check_units(L, c.a[4]) < 0 || check_priority(c.a[5]) < 0 || lock_mode_arg(c.a[6]) < 0)
        goto error;
    default_thread(&c.a[2], &c.a[3]);
    if (run_locked(L, body_take, &c, c.a[6]) < 0) {
        if (c.err == E_LOCK_TIMEOUT) {
            call_done(&c);
            Py_RETURN_NONE;
        }
        raise_call_error(&c);
        goto error;
    }
    PyObject *r;
    if (c.r[0]) {
        r = grant_result(&c, c.a[4]);
        if (r)
            claim_set((PyObject *)L, c.a[4], c.r[1], c.a[3]);
    } else
        r = Py_NewRef(Py_None);
    call_done(&c);
    return r;
error:
    call_done(&c);
    return NULL;
}

/* args: pid, start, tid, owner, units, priority, flags.
 * r[0]: 1 granted now; 0 queued as entry r[3]. */
static void body_enqueue(Ledger *L, Call *c)
{
    View *V = &L->v;
    int64_t pid = c->a[0], start = c->a[1], tid = c->a[2], owner = c->a[3], units = c->a[4],
            priority = c->a[5], flags = c->a[6] & WF_KNOWN;
    if (refuse_if_unlinked(V, c) < 0 || mutex_self(L, c, pid, start, owner) != 0)
        return;
    int64_t now = now_ns();
    int64_t h = find_or_register(L, c, pid, start, now);
    if (h < 0)
        return;
    int how = may_take(V, c, units, priority);
    if (how) {
        /* A release raced us between take and enqueue: do not queue behind nobody. */
        if (how == 2)
            tx_store(V, c, HDR(V, H_HEAD_OVERTAKEN), ld(HDR(V, H_HEAD_OVERTAKEN)) + 1);
        int64_t token = give_units(V, c, h, units, now, owner, tid, 1);
        int died = is_mutex(V) ? (int)ld(HDR(V, H_MX_OWNER_DIED)) : 0;
        tx_commit(V, c);
        c->r[0] = 1;
        c->r[1] = token;
        c->r[2] = died;
        return;
    }
    int64_t w = alloc_waiter(V, c);
    if (c->err != E_OK)
        return;
    if (w < 0) {
        tx_commit(V, c); /* keep the registration: it is consistent */
        fail(c, E_FULL_WAITERS, "wait queue full");
        c->r[5] = V->max_waiters;
        return;
    }
    int64_t ticket = ld(HDR(V, H_NEXT_TICKET));
    tx_store(V, c, WAITER(V, w, WA_PID), pid);
    tx_store(V, c, WAITER(V, w, WA_START), start);
    tx_store(V, c, WAITER(V, w, WA_TID), tid);
    tx_store(V, c, WAITER(V, w, WA_UNITS), units);
    tx_store(V, c, WAITER(V, w, WA_PRIORITY), priority);
    tx_store(V, c, WAITER(V, w, WA_TICKET), ticket);
    tx_store(V, c, WAITER(V, w, WA_SINCE), now);
    tx_store(V, c, WAITER(V, w, WA_HOLDER), h);
    tx_store(V, c, WAITER(V, w, WA_TOKEN), 0);
    tx_store(V, c, WAITER(V, w, WA_FLAGS), flags);
    tx_store(V, c, WAITER(V, w, WA_OWNER), owner);
    tx_store(V, c, WAITER(V, w, WA_STATE), W_WAITING);
    queue_insert(V, c, w, priority);
    tx_store(V, c, HDR(V, H_NEXT_TICKET), ticket + 1);
    tx_store(V, c, HOLDER(V, h, HO_PENDING), ld(HOLDER(V, h, HO_PENDING)) + 1);
    tx_commit(V, c);
    c->r[0] = 0;
    c->r[3] = w;
}

/* enqueue(pid, start, tid, owner, units, priority, flags, lock)
 *   -> Grant (free after all) | int entry (queued) | None (lock deadline).
 * Re-checks the fast path under the lock, so a caller that lost a race with
 * a release is not queued behind nobody. */
static PyObject *Ledger_enqueue(Ledger *L, PyObject *const *args, Py_ssize_t nargs)
{
    Call c;
    if (parse_args(&c, args, nargs, 8, "enqueue") < 0 || check_open(L) < 0 ||
        check_units(L, c.a[4]) < 0 || check_priority(c.a[5]) < 0 || lock_mode_arg(c.a[7]) < 0)
        goto error;
    default_thread(&c.a[2], &c.a[3]);
    if (run_locked(L, body_enqueue, &c, c.a[7]) < 0) {
        if (c.err == E_LOCK_TIMEOUT) {
            call_done(&c);
            Py_RETURN_NONE;
        }
        raise_call_error(&c);
        goto error;
    }
    PyObject *r = c.r[0] ? grant_result(&c, c.a[4]) : PyLong_FromLongLong(c.r[3]);
    call_done(&c);
    return r;
error:
    call_done(&c);
    return NULL;
}

/* state(w) -> entry state, read without the lock. */
static PyObject *Ledger_state(Ledger *L, PyObject *arg)
{
    Py_ssize_t w = PyLong_AsSsize_t(arg);
    if (w == -1 && PyErr_Occurred())
        return NULL;
    if (check_open(L) < 0)
        return NULL;
    if (!waiter_ok(&L->v, w)) {
        PyErr_SetString(PyExc_ValueError, "waiter index out of range");
        return NULL;
    }
    return PyLong_FromLongLong(ld(WAITER(&L->v, w, WA_STATE)));
}

/* args: w, pid, start, cancel.  The waiter's own step:
 *   GRANTED -> free the entry: r[0] = 1, the units are already the caller's;
 *   WAITING, unfair, at the head and it fits -> take them itself: r[0] = 1;
 *   WAITING and cancel (or unlinked) -> free the entry, grant the queue on:
 *       r[0] = -1 (r[4] = 1 when unlinked);
 *   WAITING otherwise -> r[0] = 0;  not ours any more -> r[0] = -2. */
static void body_settle(Ledger *L, Call *c)
{
    View *V = &L->v;
    int64_t w = c->a[0], pid = c->a[1], start = c->a[2], cancel = c->a[3];
    int64_t state = ld(WAITER(V, w, WA_STATE));
    c->r[0] = -2;
    if (state == W_FREE || ld(WAITER(V, w, WA_PID)) != pid ||
        ld(WAITER(V, w, WA_START)) != start)
        return; /* not ours any more */
    int64_t h = ld(WAITER(V, w, WA_HOLDER));
    int64_t units = ld(WAITER(V, w, WA_UNITS));
    if (state == W_WAITING && !cancel && is_unfair(V) && queue_head(V) == w &&
        units <= ld(HDR(V, H_AVAILABLE)) && !(ld(HDR(V, H_FLAGS)) & FLAG_UNLINKED)) {
        int64_t now = 0;
        if (grant_entry(V, c, w, &now) < 0)
            return;
        c->wakes.n--; /* our own ring: we are awake */
        state = W_GRANTED;
    }
    if (state == W_GRANTED) {
        int64_t token = ld(WAITER(V, w, WA_TOKEN));
        if (is_slotted(V) && holder_ok(V, h))
            slots_of_grant(V, c, h, token);
        c->r[1] = token;
        c->r[2] = is_mutex(V) ? ld(HDR(V, H_MX_OWNER_DIED)) : 0;
        c->r[3] = units;
        free_waiter(V, c, w);
        tx_commit(V, c);
        c->r[0] = 1;
        if (is_unfair(V))
            grant_loop(V, c); /* units may remain for the next head */
    } else if (cancel || (ld(HDR(V, H_FLAGS)) & FLAG_UNLINKED)) {
        free_waiter(V, c, w);
        tx_commit(V, c);
        c->r[0] = -1;
        c->r[4] = (ld(HDR(V, H_FLAGS)) & FLAG_UNLINKED) != 0;
        /* The head leaving can let smaller requests behind it go. */
        grant_loop(V, c);
    } else {
        c->r[0] = 0;
    }
}

/* Free entry w; if it was granted, give back what its holder still holds
 * of the grant (another thread of the process may have released some).
 * Part of a transaction; the units given back. */
static int64_t cancel_entry(View *V, Call *c, int64_t w)
{
    int64_t state = ld(WAITER(V, w, WA_STATE));
    int64_t h = ld(WAITER(V, w, WA_HOLDER));
    int64_t back = 0;
    if (state == W_GRANTED && holder_ok(V, h)) {
        int64_t units = ld(WAITER(V, w, WA_UNITS)), held = ld(HOLDER(V, h, HO_UNITS));
        if (units < 1 || held < 0) {
            fail(c, E_CORRUPT, "granted entry %lld is inconsistent with its holder",
                 (long long)w);
            return 0;
        }
        back = units < held ? units : held;
        if (back > 0) {
            if (is_slotted(V))
                slots_move(V, c, h, back, ld(WAITER(V, w, WA_TOKEN)), 0, 0);
            if (is_mutex(V) && ld(HDR(V, H_MX_OWNER_KEY)) == ld(WAITER(V, w, WA_OWNER)))
                mutex_clear_owner(V, c);
            tx_store(V, c, HOLDER(V, h, HO_UNITS), held - back);
            tx_store(V, c, HDR(V, H_AVAILABLE), ld(HDR(V, H_AVAILABLE)) + back);
        }
    }
    free_waiter(V, c, w);
    return back;
}

/* args: w, pid, start.  Cancel, and give back a grant that raced in, in one
 * transaction: the caller never learns of those units. */
static void body_cancel(Ledger *L, Call *c)
{
    View *V = &L->v;
    int64_t w = c->a[0], pid = c->a[1], start = c->a[2];
    int64_t state = ld(WAITER(V, w, WA_STATE));
    c->r[0] = 0;
    if (state == W_FREE || ld(WAITER(V, w, WA_PID)) != pid ||
        ld(WAITER(V, w, WA_START)) != start)
        return;
    c->r[0] = cancel_entry(V, c, w);
    tx_commit(V, c);
    grant_loop(V, c);
}

static int check_entry(Ledger *L, int64_t w)
{
    if (!waiter_ok(&L->v, w)) {
        PyErr_SetString(PyExc_ValueError, "waiter index out of range");
        return -1;
    }
    return 0;
}

/* settle(w, pid, start, lock) -> Grant (granted; entry freed) | None (still
 * waiting).  Raises Unlinked (entry freed), Wedged (the lock was not had by
 * the deadline; nothing changed) or Corrupt if the entry is no longer ours.
 * For event-loop waiters. */
static PyObject *Ledger_settle(Ledger *L, PyObject *const *args, Py_ssize_t nargs)
{
    Call c;
    if (parse_args(&c, args, nargs, 4, "settle") < 0 || check_open(L) < 0 ||
        check_entry(L, c.a[0]) < 0 || lock_mode_arg(c.a[3]) < 0)
        goto error;
    int64_t mode = c.a[3];
    c.a[3] = 0;
    if (run_locked(L, body_settle, &c, mode) < 0) {
        raise_call_error(&c);
        goto error;
    }
    PyObject *r;
    if (c.r[0] == 1)
        r = grant_result(&c, c.r[3]);
    else if (c.r[0] == 0)
        r = Py_NewRef(Py_None);
    else if (c.r[4]) {
        PyErr_SetNone(UnlinkedError);
        r = NULL;
    } else {
        /* the same typed error as wait()'s: a RuntimeError would escape
         * every `except ipcsem.IpcsemError` */
        set_corrupt("this process's queue entry was freed by someone else (was it "
                    "recovered as dead? did a peer rewrite the ledger?)");
        r = NULL;
    }
    call_done(&c);
    return r;
error:
    call_done(&c);
    return NULL;
}

/* cancel(w, pid, start, lock) -> units given back (a grant that raced in).
 * With LOCK_UNINTERRUPTED never interrupted by a signal: whatever they raise
 * is raised after it.  Wedged if a deadline passes first (nothing changed). */
static PyObject *Ledger_cancel(Ledger *L, PyObject *const *args, Py_ssize_t nargs)
{
    Call c;
    if (parse_args(&c, args, nargs, 4, "cancel") < 0 || check_open(L) < 0 ||
        check_entry(L, c.a[0]) < 0 || lock_mode_arg(c.a[3]) < 0)
        goto error;
    if (run_locked(L, body_cancel, &c, c.a[3]) < 0) {
        raise_call_error(&c);
        goto error;
    }
    call_done(&c);
    return PyLong_FromLongLong(c.r[0]);
error:
    call_done(&c);
    return NULL;
}

/* ------------------------------------------------- priority inheritance
 *
 * The owner thread of a PI mutex is boosted by its waiters and restored by
 * itself; both are serialized with ownership by the ledger lock: a waiter
 * changes the owner's priority only inside a locked call that finds it still
 * the owner (pi_boost), and the owner restores its own priority in the same
 * release call that clears it as the owner, after the unlock (a side effect
 * after commit, like ringing a doorbell), so no boost can land after the
 * restore.  Which priority is right is decided in Python (ipcsem/_pi.py:
 * the kernel's view of the threads, never the ledger's record); this file
 * only applies it, at the one moment it is still true. */

#define PI_NONE 0
#define PI_BOOSTED 1
#define PI_UNAVAILABLE 2

/* Give thread `tid` policy/rtprio/nice: only what differs is changed.
 * 0, or the errno of the kernel's refusal (EINVAL for a priority that is
 * not one).  No GIL needed: system calls only. */
static int apply_prio(pid_t tid, int64_t policy, int64_t rtprio, int64_t nice)
{
    int rt = policy == SCHED_FIFO || policy == SCHED_RR;
    if (tid <= 0 || !(rt || policy == SCHED_OTHER || policy == SCHED_BATCH || policy == SCHED_IDLE) ||
        (rt ? rtprio < 1 || rtprio > 99 : rtprio != 0) || nice < -20 || nice > 19)
        return EINVAL;
    int cur = sched_getscheduler(tid);
    struct sched_param sp;
    if (cur < 0 || sched_getparam(tid, &sp) != 0)
        return errno;
    int keep = cur & SCHED_RESET_ON_FORK; /* the thread's own flag stays as it is */
    cur &= ~SCHED_RESET_ON_FORK;
    if (cur == SCHED_DEADLINE)
        return EINVAL; /* a reservation, not a priority: never touched */
    if (cur != policy || sp.sched_priority != rtprio) {
        struct sched_param want = {.sched_priority = (int)rtprio};
        if (sched_setscheduler(tid, (int)policy | keep, &want) != 0)
            return errno;
    }
    errno = 0;
    int now = getpriority(PRIO_PROCESS, (id_t)tid);
    if (now == -1 && errno)
        return errno;
    if (now != nice && setpriority(PRIO_PROCESS, (id_t)tid, (int)nice) != 0)
        return errno;
    return 0;
}

/* args: pid, start, tid, hops, base policy/rtprio/nice, policy/rtprio/nice,
 * booster.  If `tid` owns the mutex, is a thread of process `pid`, and
 * (pid, start) is the holder of the mutex: give it policy/rtprio/nice and
 * record it: PI_BOOSTED with `hops` (1..64: how many PI mutexes the lent
 * priority came through, 1 for the booster's own; a chain adds one per
 * owner that lends on what it was given, which bounds chains, _pi.py) in
 * the reason word; PI_NONE for hops 0 (a thread back at its own priority);
 * PI_UNAVAILABLE with the reason when the kernel refuses.
 * r[0]: -1 not the owner (nothing done), else the errno of the change (0). */
static void body_pi_boost(Ledger *L, Call *c)
{
    View *V = &L->v;
    int64_t pid = c->a[0], start = c->a[1], tid = c->a[2];
    c->r[0] = -1;
    if (!is_mutex(V) || !(V->policy & P_PI) || pid <= 0 || pid > INT_MAX || tid <= 0 ||
        tid > INT_MAX || ld(HDR(V, H_MX_OWNER_KEY)) == 0 || ld(HDR(V, H_MX_OWNER_TID)) != tid)
        return;
    int64_t h = find_holder(L, pid, start);
    if (h < 0 || ld(HOLDER(V, h, HO_UNITS)) < 1)
        return;
    /* signal 0: does `tid` belong to thread group `pid` (EPERM: it does, and
     * we may not signal it, which is no reason not to ask the kernel) */
    if (syscall(SYS_tgkill, (pid_t)pid, (pid_t)tid, 0) != 0 && errno == ESRCH)
        return;
    int err = apply_prio((pid_t)tid, c->a[7], c->a[8], c->a[9]);
    int64_t hops = c->a[3] < 0 ? 0 : c->a[3] > 64 ? 64 : c->a[3];
    int64_t state = hops ? PI_BOOSTED : PI_NONE, reason = hops;
    if (err) {
        state = PI_UNAVAILABLE;
        reason = err == EPERM || err == EACCES ? 1 : err == ESRCH ? 2 : 3;
    }
    /* the kernel has the new priority from here on: a crash now leaves no
     * record of it (rolled back), which nothing relies on (the owner
     * restores its own priority at release, whatever the record says) */
    crash_point();
    tx_store(V, c, HDR(V, H_PI_STATE), state);
    tx_store(V, c, HDR(V, H_PI_TID), tid);
    for (int i = 0; i < 6; i++)
        tx_store(V, c, HDR(V, H_PI_BASE_POLICY + i), c->a[4 + i]);
    tx_store(V, c, HDR(V, H_PI_BOOSTER), c->a[10]);
    tx_store(V, c, HDR(V, H_PI_REASON), reason);
    tx_commit(V, c);
    c->r[0] = err;
}

static PyObject *Ledger_pi_boost(Ledger *L, PyObject *const *args, Py_ssize_t nargs)
{
    Call c;
    if (parse_args(&c, args, nargs, 12, "pi_boost") < 0 || check_open(L) < 0 ||
        lock_mode_arg(c.a[11]) < 0)
        goto error;
    if (run_locked(L, body_pi_boost, &c, c.a[11]) < 0) {
        raise_call_error(&c);
        goto error;
    }
    call_done(&c);
    if (c.r[0] < 0)
        Py_RETURN_NONE;
    return PyLong_FromLongLong(c.r[0]);
error:
    call_done(&c);
    return NULL;
}

/* args: pid, start, owner_key: the thread that owns the mutex is gone while
 * its process lives (a thread exited holding it): free the mutex, mark it
 * owner-died for the next owner, grant the queue.  No-op if that owner
 * key no longer owns it. */
static void body_mutex_orphan(Ledger *L, Call *c)
{
    View *V = &L->v;
    if (!is_mutex(V) || ld(HDR(V, H_MX_OWNER_KEY)) != c->a[2] || c->a[2] == 0)
        return;
    int64_t h = find_holder(L, c->a[0], c->a[1]);
    if (h < 0 || ld(HOLDER(V, h, HO_UNITS)) < 1)
        return;
    mutex_clear_owner(V, c);
    tx_store(V, c, HDR(V, H_MX_OWNER_DIED), 1);
    tx_store(V, c, HOLDER(V, h, HO_UNITS), ld(HOLDER(V, h, HO_UNITS)) - 1);
    tx_store(V, c, HDR(V, H_AVAILABLE), ld(HDR(V, H_AVAILABLE)) + 1);
    tx_store(V, c, HDR(V, H_RECOVERED_UNITS), ld(HDR(V, H_RECOVERED_UNITS)) + 1);
    tx_store(V, c, HDR(V, H_RECOVERIES), ld(HDR(V, H_RECOVERIES)) + 1);
    tx_commit(V, c);
    c->r[0] = 1;
    grant_loop(V, c);
}

static PyObject *Ledger_recover_orphan(Ledger *L, PyObject *const *args, Py_ssize_t nargs)
{
    Call c;
    if (parse_args(&c, args, nargs, 4, "recover_orphan") < 0 || check_open(L) < 0 ||
        lock_mode_arg(c.a[3]) < 0)
        goto error;
    if (run_locked(L, body_mutex_orphan, &c, c.a[3]) < 0) {
        raise_call_error(&c);
        goto error;
    }
    call_done(&c);
    return PyBool_FromLong((long)c.r[0]);
error:
    call_done(&c);
    return NULL;
}

/* touch(lock): take the lock and let go: repairs a dead owner's half-done
 * transaction (a lock-free look cannot), sweeps abandoned entries. */
static void body_nothing(Ledger *L, Call *c) { (void)L, (void)c; }

static PyObject *Ledger_touch(Ledger *L, PyObject *arg)
{
    Call c;
    call_init(&c);
    int64_t mode = PyLong_AsLongLong(arg);
    if ((mode == -1 && PyErr_Occurred()) || check_open(L) < 0 || lock_mode_arg(mode) < 0)
        goto error;
    if (run_locked(L, body_nothing, &c, mode) < 0) {
        raise_call_error(&c);
        goto error;
    }
    call_done(&c);
    Py_RETURN_NONE;
error:
    call_done(&c);
    return NULL;
}

/* args: w, pid, start, set, clear: change an entry's flags (WF_PARKED). */
static void body_flags(Ledger *L, Call *c)
{
    View *V = &L->v;
    int64_t w = c->a[0];
    if (ld(WAITER(V, w, WA_STATE)) != W_WAITING || ld(WAITER(V, w, WA_PID)) != c->a[1] ||
        ld(WAITER(V, w, WA_START)) != c->a[2])
        return;
    int64_t f = ld(WAITER(V, w, WA_FLAGS));
    tx_store(V, c, WAITER(V, w, WA_FLAGS), ((f | c->a[3]) & ~c->a[4]) & WF_KNOWN);
    tx_commit(V, c);
}

/* set_flags(w, pid, start, set, clear, lock): an event loop tells detectors
 * whether its thread is parked (every task of the loop waits on ipcsem). */
static PyObject *Ledger_set_flags(Ledger *L, PyObject *const *args, Py_ssize_t nargs)
{
    Call c;
    if (parse_args(&c, args, nargs, 6, "set_flags") < 0 || check_open(L) < 0 ||
        check_entry(L, c.a[0]) < 0 || lock_mode_arg(c.a[5]) < 0)
        goto error;
    if (run_locked(L, body_flags, &c, c.a[5]) < 0) {
        raise_call_error(&c);
        goto error;
    }
    call_done(&c);
    Py_RETURN_NONE;
error:
    call_done(&c);
    return NULL;
}

/* process_bell(pid, start) -> (holder slot, bell value) | None: what an
 * event loop's notifier waits on (grants to its async entries ring it). */
static PyObject *Ledger_process_bell(Ledger *L, PyObject *const *args, Py_ssize_t nargs)
{
    Call c;
    if (parse_args(&c, args, nargs, 2, "process_bell") < 0 || check_open(L) < 0) {
        call_done(&c);
        return NULL;
    }
    call_done(&c);
    int64_t h = find_holder(L, c.a[0], c.a[1]);
    if (h < 0)
        Py_RETURN_NONE;
    return Py_BuildValue("(LI)", (long long)h, bell_read(HOLDER(&L->v, h, HO_BELL)));
}

/* ------------------------------------------------------------- waiting */

/* Cancel our entry w (giving back a grant that raced in), waiting for the
 * lock without interruption until `until`; abandon it if still wedged. */
static void give_up(Ledger *L, int64_t w, int64_t pid, int64_t start, int64_t until)
{
    Call c;
    call_init(&c);
    c.a[0] = w, c.a[1] = pid, c.a[2] = start;
    if (run_locked(L, body_cancel, &c, until) < 0 && c.err == E_LOCK_TIMEOUT)
        abandon(&L->v, w);
    if (c.err == E_SIGNAL)
        PyErr_Clear();
    call_done(&c);
}

static int track_wait(Ledger *L, int64_t w)
{
    for (int i = 0; i < 8; i++)
        if (L->waits[i] < 0) {
            L->waits[i] = w;
            return i;
        }
    return -1;
}

/* A wait still ungranted this long engages the pidfd watcher (on_watch(True)):
 * a handoff on a contended semaphore (~0.1-1 ms) never touches it, a wait
 * that lasts is watched as if from the start. */
#define WATCH_AFTER_NS 2000000LL
#define DEFAULT_SLICE_NS 500000000LL /* the shm handle's HEAL_INTERVAL */

/* The queue's head polls its doorbell for a bounded few microseconds before
 * it sleeps on it.  When every queued process and a holder can be on a CPU
 * at once, the holder is running and its release hands the unit over within
 * a few microseconds: the grant then arrives without a sleep and a wake-up
 * (a context switch each way, the whole cost of a strict-FIFO handoff:
 * make bench figure 2, P=2 capacity 1 ~9x SysV instead of ~1x).  Never
 * otherwise: only the head spins, only with at least two CPUs online and
 * fewer waiters than CPUs (with more, the spinner could be taking the CPU
 * the holder needs to reach its release), and only as long as spinning pays
 * on this ledger: each handle keeps a budget that doubles (up to
 * SPIN_MAX_NS) when the grant came while spinning and halves (down to
 * SPIN_MIN_NS, a probe) when it did not, so long holds cost a couple of
 * microseconds per wait, not twenty.  H_Q_HEAD and H_WAITING are read
 * without the lock as hints only (compared, never used to index). */
#define SPIN_MAX_NS 20000LL
#define SPIN_MIN_NS 1000LL
static int online_cpus = 1;

/* Spinning pays only while a CPU is idle to spin on: with as many runnable
 * tasks as CPUs (this machine's, ours or not) the spinner takes a CPU from a
 * process that would otherwise run -- the holder on its way to the release,
 * or a process on its way to queue up.  Measured at P <= cores: a third task
 * (the harness, a kworker) that preempted the holder made the head spin its
 * budget away and halve it, until heads slept on most handoffs.  The kernel's count of runnable tasks (/proc/loadavg's
 * fourth field, which counts the reader) decides: spin only while it is at
 * most the CPUs we may use, and leave the budget alone when it is not (the
 * spin was not tried).  Read at most once per CPU_BUSY_TTL_NS by a process
 * (a racy cache of a hint: one open/read/close, ~3 us, per millisecond of
 * spinning); an unreadable or unparsable count does not forbid spinning (the
 * waiting-count rule still applies).  Measured by interleaved A/B rounds
 * (docs/perf.md): P=2 capacity 1 2.2-4.2x the throughput of the rule
 * without it. */
#define CPU_BUSY_TTL_NS 1000000LL
static int64_t cpus_checked_ns; /* 0: never */
static int cpus_busy;

static int cpus_all_busy(int64_t now)
{
    int64_t checked = __atomic_load_n(&cpus_checked_ns, __ATOMIC_RELAXED);
    if (checked != 0 && now - checked < CPU_BUSY_TTL_NS && now >= checked)
        return __atomic_load_n(&cpus_busy, __ATOMIC_RELAXED);
    int busy = 0;
    int fd = open("/proc/loadavg", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        char buf[128];
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (n > 0) {
            /* "0.50 0.40 0.30 3/456 7890": the running count after 3 spaces */
            buf[n] = 0;
            const char *p = buf;
            for (int spaces = 0; *p && spaces < 3; p++)
                spaces += *p == ' ';
            long running = 0;
            int digits = 0;
            for (; *p >= '0' && *p <= '9' && digits < 9; p++, digits++)
                running = running * 10 + (*p - '0');
            busy = digits > 0 && *p == '/' && running > online_cpus;
        }
    }
    __atomic_store_n(&cpus_busy, busy, __ATOMIC_RELAXED);
    __atomic_store_n(&cpus_checked_ns, now, __ATOMIC_RELAXED);
    return busy;
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Spin while entry w is the queue's head and its bell still reads `seen`,
 * for the handle's budget at most (and not past `until`): 1 if the bell
 * rang.  Runs without the GIL: the budget is a relaxed atomic (a hint that
 * concurrent waits of the handle may race on harmlessly). */
static int head_spin(Ledger *L, View *V, int64_t w, uint32_t seen, int64_t until)
{
    if (online_cpus < 2 || ld(HDR(V, H_Q_HEAD)) != w || ld(HDR(V, H_WAITING)) >= online_cpus)
        return 0;
    int64_t budget = __atomic_load_n(&L->spin_ns, __ATOMIC_RELAXED);
    if (budget < SPIN_MIN_NS || budget > SPIN_MAX_NS)
        budget = SPIN_MAX_NS;
    int64_t now = mono_ns();
    if (cpus_all_busy(now))
        return 0;
    int64_t end = now + budget;
    if (until > 0 && until < end)
        end = until;
    for (int i = 0;; i++) {
        if (entry_bell_read(WAITER(V, w, WA_BELL)) != seen) {
            int64_t grown = budget * 2 > SPIN_MAX_NS ? SPIN_MAX_NS : budget * 2;
            __atomic_store_n(&L->spin_ns, grown, __ATOMIC_RELAXED);
            return 1;
        }
        if ((i & 15) == 15 && mono_ns() >= end) {
            int64_t shrunk = budget / 2 < SPIN_MIN_NS ? SPIN_MIN_NS : budget / 2;
            __atomic_store_n(&L->spin_ns, shrunk, __ATOMIC_RELAXED);
            return 0;
        }
        cpu_relax();
    }
}

/* The wait itself (see wait() below), on arguments parsed into q: queue, then
 * park on the entry's doorbell until granted.  on_watch (NULL: none) is
 * called with True once the wait has lasted WATCH_AFTER_NS and with False
 * when that wait ends, whatever ends it.  If on_watch(False) raises with a
 * grant in hand, the grant is left in claim_ledger for the caller to give
 * back.  not_queued (NULL: raise instead): set when the enqueue failed for
 * a reason other than a signal; nothing is queued, no error is set, and the
 * caller takes a path that heals, retries or raises with the name. */
static PyObject *wait_entry(Ledger *L, Call *q, PyObject *on_slice, PyObject *on_watch,
                            int *not_queued)
{
    int64_t pid = q->a[0], start = q->a[1], deadline = q->a[7], slice = q->a[8];
    /* enqueue: the lock waits until the deadline (a signal may end it;
     * nothing is queued then) */
    if (run_locked(L, body_enqueue, q, deadline > 0 ? deadline : LOCK_FOREVER) < 0) {
        if (q->err == E_LOCK_TIMEOUT)
            return Py_NewRef(Py_None);
        if (not_queued && q->err != E_SIGNAL)
            *not_queued = 1;
        else
            raise_call_error(q);
        return NULL;
    }
    if (q->r[0]) { /* free after all */
        PyObject *g = grant_result(q, q->a[4]);
        if (g)
            claim_set((PyObject *)L, q->a[4], q->r[1], q->a[3]);
        return g;
    }
    int64_t owner = q->a[3];
    int64_t w = q->r[3];
    if (slice <= 0)
        slice = DEFAULT_SLICE_NS;
    View *V = &L->v;
    L->active++;
    int tracked = track_wait(L, w);
    PyObject *result = NULL;
    int64_t began = mono_ns();
    int64_t next_slice = began + slice;
    int64_t watch_at = on_watch ? began + WATCH_AFTER_NS : INT64_MAX;
    int watched = 0;
    Call c;
    for (;;) {
        uint32_t seen = entry_bell_read(WAITER(V, w, WA_BELL));
        int64_t state = ld(WAITER(V, w, WA_STATE));
        int unlinked = (ld(HDR(V, H_FLAGS)) & FLAG_UNLINKED) != 0;
        if (L->closing) {
            give_up(L, w, pid, start, mono_ns() + CANCEL_GRACE);
            PyErr_SetString(ClosedError, "closed by another thread while waiting");
            break;
        }
        int64_t now = mono_ns();
        if (state == W_GRANTED || unlinked || (state == W_WAITING && is_unfair(V)) ||
            (deadline > 0 && now >= deadline) || state != W_WAITING) {
            call_init(&c);
            c.a[0] = w, c.a[1] = pid, c.a[2] = start;
            c.a[3] = deadline > 0 && now >= deadline;
            /* With a deadline, the lock is waited for until just past it: a
             * wedged lock then cannot keep us (we abandon the entry). */
            int64_t mode = deadline > 0 ? (now > deadline ? now : deadline) + GIVE_UP_GRACE
                                        : LOCK_UNINTERRUPTED;
            if (run_locked(L, body_settle, &c, mode) < 0) {
                if (c.err == E_LOCK_TIMEOUT && mono_ns() >= deadline) {
                    call_done(&c);
                    abandon(V, w);
                    result = Py_NewRef(Py_None); /* the deadline held */
                    break;
                }
                if (c.err == E_LOCK_TIMEOUT) { /* before the deadline: look again */
                    call_done(&c);
                    continue;
                }
                raise_call_error(&c);
                call_done(&c);
                break;
            }
            if (c.r[0] == 1) {
                result = grant_result(&c, c.r[3]);
                if (result)
                    claim_set((PyObject *)L, c.r[3], c.r[1], owner);
                call_done(&c);
                break;
            }
            if (c.r[0] == -1) {
                call_done(&c);
                if (c.r[4])
                    PyErr_SetNone(UnlinkedError);
                else
                    result = Py_NewRef(Py_None); /* deadline */
                break;
            }
            if (c.r[0] == -2) {
                call_done(&c);
                set_corrupt("this process's queue entry was freed by someone else (was it "
                            "recovered as dead? did a peer rewrite the ledger?)");
                break;
            }
            call_done(&c); /* still waiting (unfair: an arrival was quicker) */
        }
        if (now >= watch_at) {
            watch_at = INT64_MAX;
            PyObject *r = PyObject_CallOneArg(on_watch, Py_True);
            if (!r)
                goto cancel;
            Py_DECREF(r);
            watched = 1;
            continue; /* that took time: look again */
        }
        if (now >= next_slice) {
            next_slice = now + slice;
            if (on_slice != Py_None) {
                PyObject *r = PyObject_CallNoArgs(on_slice);
                if (!r)
                    goto cancel;
                Py_DECREF(r);
                continue; /* healing may have granted us: look again */
            }
        }
        int64_t until = next_slice;
        if (watch_at < until)
            until = watch_at;
        if (deadline > 0 && deadline < until)
            until = deadline;
        int rc = 0;
        Py_BEGIN_ALLOW_THREADS
        if (!head_spin(L, V, w, seen, until))
            rc = entry_bell_wait(WAITER(V, w, WA_BELL), seen, until);
        Py_END_ALLOW_THREADS
        if (rc == EINTR && PyErr_CheckSignals() < 0)
            goto cancel;
    }
    goto done;
cancel: {
    /* Ctrl-C, SystemExit, anything: leave nothing behind, keep the error. */
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    give_up(L, w, pid, start, mono_ns() + CANCEL_GRACE);
    PyErr_Restore(et, ev, tb);
}
done:
    if (tracked >= 0)
        L->waits[tracked] = -1;
    L->active--;
    if (watched) {
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        PyObject *r = PyObject_CallOneArg(on_watch, Py_False);
        if (r) {
            Py_DECREF(r);
            PyErr_Restore(et, ev, tb);
        } else if (et) {
            PyErr_Clear(); /* the first error is the one to report */
            PyErr_Restore(et, ev, tb);
        } else
            Py_CLEAR(result); /* raised holding a grant: claim_ledger gives it back */
    }
    return result;
}

/* wait(pid, start, tid, owner, units, priority, flags, deadline_ns, slice_ns,
 *      on_slice[, on_watch]) -> Grant | None (the deadline passed: nothing is
 * left queued).
 * Queue the request and park on its doorbell until it is granted — one C
 * call, so no Python code (where a signal handler could raise) runs between
 * queueing and waiting.  Every `slice_ns` (and after every wake-up) it looks
 * at the entry; `on_slice()` (healing, deadlock detection) runs between
 * slices; `on_watch(True)` once the wait has lasted WATCH_AFTER_NS, then
 * `on_watch(False)` when it ends.  Whatever a signal handler or a hook raises
 * cancels the entry first, in C, uninterruptibly, giving back a grant that
 * raced in: nothing is left behind.  Raises Unlinked when the name was
 * unlinked, Closed when another thread closed the handle, LedgerFull when
 * the queue is full. */
static PyObject *Ledger_wait(Ledger *L, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 10 && nargs != 11) {
        PyErr_SetString(PyExc_TypeError, "wait takes 10 or 11 arguments");
        return NULL;
    }
    Call q;
    if (parse_args(&q, args, 9, 9, "wait") < 0 || check_open(L) < 0 ||
        check_units(L, q.a[4]) < 0 || check_priority(q.a[5]) < 0) {
        call_done(&q);
        return NULL;
    }
    default_thread(&q.a[2], &q.a[3]);
    PyObject *on_watch = nargs == 11 && args[10] != Py_None ? args[10] : NULL;
    PyObject *r = wait_entry(L, &q, args[9], on_watch, NULL);
    call_done(&q);
    return r;
}

/* ring(w): wake entry w's waiter (shutdown, tests). */
static PyObject *Ledger_ring(Ledger *L, PyObject *arg)
{
    Py_ssize_t w = PyLong_AsSsize_t(arg);
    if ((w == -1 && PyErr_Occurred()) || check_open(L) < 0 || check_entry(L, w) < 0)
        return NULL;
    ring_entry(&L->v, WAITER(&L->v, w, WA_BELL));
    Py_RETURN_NONE;
}

/* release(pid, start, owner, units, token_hint[, lock | policy, rtprio, nice])
 * -> None
 * ``lock`` (6 arguments) bounds the wait for the ledger lock (Wedged when it
 * passes: nothing done) -- an event loop's release must not wait for a lock
 * whose holder is off a CPU; otherwise the lock is waited for as long as it
 * takes.
 * Owned units first (a slotted semaphore frees grant token_hint's unit
 * numbers first); the rest is an unowned post, allowed only while it does
 * not push the total over capacity.  A mutex: only its owner; nested
 * acquires unwind first.  All or nothing.
 * A PI mutex's owner thread passes its own priority: when this release ends
 * its ownership, the calling thread gets that priority back right after the
 * unlock (r[1] says so) — no waiter can boost it any more by then, since
 * pi_boost finds it no longer the owner. */
static void body_release(Ledger *L, Call *c)
{
    View *V = &L->v;
    int64_t pid = c->a[0], start = c->a[1], owner = c->a[2], units = c->a[3], hint = c->a[4];
    int64_t h = find_holder(L, pid, start);
    if (is_mutex(V)) {
        int64_t key = ld(HDR(V, H_MX_OWNER_KEY));
        if (key != owner || owner == 0 || h < 0 || ld(HOLDER(V, h, HO_UNITS)) < 1) {
            if (key == 0)
                fail(c, E_NOTOWNER, "release of a mutex nobody holds");
            else
                fail(c, E_NOTOWNER, "release by a thread, task or process that does not own "
                                    "the mutex (it is owned by thread %lld)",
                     (long long)ld(HDR(V, H_MX_OWNER_TID)));
            return;
        }
        int64_t depth = ld(HDR(V, H_MX_DEPTH));
        if (depth > 1) {
            tx_store(V, c, HDR(V, H_MX_DEPTH), depth - 1);
            tx_commit(V, c);
            return;
        }
        if (c->a[8] && (V->policy & P_PI) && ld(HDR(V, H_MX_OWNER_TID)) == my_tid())
            c->r[1] = 1; /* our own priority back once the lock is let go */
        mutex_clear_owner(V, c);
        tx_store(V, c, HDR(V, H_MX_OWNER_DIED), 0); /* a normal release: state repaired */
        tx_store(V, c, HOLDER(V, h, HO_UNITS), ld(HOLDER(V, h, HO_UNITS)) - 1);
        tx_store(V, c, HDR(V, H_AVAILABLE), ld(HDR(V, H_AVAILABLE)) + 1);
        tx_commit(V, c);
        grant_loop(V, c);
        return;
    }
    int64_t owned = h >= 0 ? ld(HOLDER(V, h, HO_UNITS)) : 0;
    if (owned < 0)
        owned = 0;
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
    if (from_owned) {
        if (is_slotted(V))
            slots_move(V, c, h, from_owned, hint, owner, 0);
        tx_store(V, c, HOLDER(V, h, HO_UNITS), owned - from_owned);
    }
    if (extra) {
        if (is_slotted(V))
            slots_free_unowned(V, c, extra);
        tx_store(V, c, HDR(V, H_UNOWNED), unowned - extra);
    }
    tx_store(V, c, HDR(V, H_AVAILABLE), ld(HDR(V, H_AVAILABLE)) + units);
    tx_commit(V, c);
    grant_loop(V, c);
}

static PyObject *Ledger_release(Ledger *L, PyObject *const *args, Py_ssize_t nargs)
{
    Call c;
    if (parse_args(&c, args, nargs, nargs == 8 || nargs == 6 ? nargs : 5, "release") < 0 ||
        check_open(L) < 0 || check_units(L, c.a[3]) < 0 ||
        (nargs == 6 && lock_mode_arg(c.a[5]) < 0))
        goto error;
    int64_t lock = nargs == 6 ? c.a[5] : LOCK_FOREVER;
    if (nargs == 6)
        c.a[5] = 0;
    c.a[8] = nargs == 8; /* a priority to restore was given (a[5..7]) */
    default_thread(NULL, &c.a[2]);
    if (run_locked(L, body_release, &c, lock) < 0) {
        raise_call_error(&c);
        goto error;
    }
    call_done(&c);
    if (c.r[1]) {
        /* Unlocked and committed: the mutex is gone from us, the waiter it
         * went to was rung while we still ran at the boosted priority.  A
         * refusal changes nothing of the release (lowering one's own
         * priority is always allowed; anything else was not ours to have). */
        Py_BEGIN_ALLOW_THREADS
        (void)apply_prio((pid_t)my_tid(), c.a[5], c.a[6], c.a[7]);
        Py_END_ALLOW_THREADS
    }
    Py_RETURN_NONE;
error:
    call_done(&c);
    return NULL;
}

/* disown(pid, start, units, token_hint, key): owned units become units out
 * without an owner (a hand-off: a consumer's item, a producer's filled
 * slot).  A slotted semaphore keeps their unit numbers taken, owned by
 * nobody.  Not for mutexes. */
static void body_disown(Ledger *L, Call *c)
{
    View *V = &L->v;
    int64_t units = c->a[2];
    if (is_mutex(V)) {
        fail(c, E_VALUE, "a mutex cannot be disowned");
        return;
    }
    int64_t h = find_holder(L, c->a[0], c->a[1]);
    int64_t owned = h >= 0 ? ld(HOLDER(V, h, HO_UNITS)) : 0;
    if (owned < units) {
        fail(c, E_VALUE, "disown(%lld): this process holds only %lld unit(s)",
             (long long)units, (long long)owned);
        return;
    }
    if (is_slotted(V))
        slots_move(V, c, h, units, c->a[3], c->a[4], -1);
    tx_store(V, c, HOLDER(V, h, HO_UNITS), owned - units);
    tx_store(V, c, HDR(V, H_UNOWNED), ld(HDR(V, H_UNOWNED)) + units);
    tx_commit(V, c);
}

static PyObject *Ledger_disown(Ledger *L, PyObject *const *args, Py_ssize_t nargs)
{
    Call c;
    if (parse_args(&c, args, nargs, 5, "disown") < 0 || check_open(L) < 0 ||
        check_units(L, c.a[2]) < 0)
        goto error;
    default_thread(NULL, &c.a[4]);
    if (run_locked(L, body_disown, &c, LOCK_FOREVER) < 0) {
        raise_call_error(&c);
        goto error;
    }
    call_done(&c);
    Py_RETURN_NONE;
error:
    call_done(&c);
    return NULL;
}

/* recover(pid, start, lock) -> (units, entries)
 * Return everything the (dead) identity holds or waits for.  The caller has
 * established that the identity is dead; this is idempotent: a second call
 * finds nothing, so two recoverers never post a unit twice.  A mutex it
 * owned is marked owner-died for the next owner. */
static void body_recover(Ledger *L, Call *c)
{
    View *V = &L->v;
    int64_t pid = c->a[0], start = c->a[1];
    int64_t entries = 0, units = 0;
    int64_t hwm = waiter_hwm(V);
    for (int64_t w = 0; w < hwm; w++) {
        if (ld(WAITER(V, w, WA_STATE)) != W_FREE && ld(WAITER(V, w, WA_PID)) == pid &&
            ld(WAITER(V, w, WA_START)) == start) {
            free_waiter(V, c, w);
            tx_commit(V, c);
            entries++;
        }
    }
    int64_t h = find_holder(L, pid, start);
    if (h >= 0) {
        units = ld(HOLDER(V, h, HO_UNITS));
        if (units < 0 || units > V->capacity) {
            fail(c, E_CORRUPT, "holder slot %lld has %lld units", (long long)h, (long long)units);
            return;
        }
        if (units) {
            if (is_slotted(V))
                slots_move(V, c, h, units, 0, 0, 0);
            if (is_mutex(V)) {
                mutex_clear_owner(V, c);
                tx_store(V, c, HDR(V, H_MX_OWNER_DIED), 1);
            }
            tx_store(V, c, HDR(V, H_AVAILABLE), ld(HDR(V, H_AVAILABLE)) + units);
            tx_store(V, c, HDR(V, H_RECOVERED_UNITS), ld(HDR(V, H_RECOVERED_UNITS)) + units);
        }
        if (units || entries)
            tx_store(V, c, HDR(V, H_RECOVERIES), ld(HDR(V, H_RECOVERIES)) + 1);
        tx_store(V, c, HOLDER(V, h, HO_UNITS), 0);
        tx_store(V, c, HOLDER(V, h, HO_PENDING), 0);
        unregister_holder(V, c, h);
        tx_commit(V, c);
    }
    c->r[0] = units;
    c->r[1] = entries;
    grant_loop(V, c);
}

static PyObject *Ledger_recover(Ledger *L, PyObject *const *args, Py_ssize_t nargs)
{
    Call c;
    if (parse_args(&c, args, nargs, 3, "recover") < 0 || check_open(L) < 0 ||
        lock_mode_arg(c.a[2]) < 0)
        goto error;
    if (c.a[0] <= 0) {
        PyErr_SetString(PyExc_ValueError, "pid must be positive");
        goto error;
    }
    if (run_locked(L, body_recover, &c, c.a[2]) < 0) {
        raise_call_error(&c);
        goto error;
    }
    call_done(&c);
    return Py_BuildValue("(LL)", (long long)c.r[0], (long long)c.r[1]);
error:
    call_done(&c);
    return NULL;
}

/* unregister(pid, start) -> True if an idle registration was dropped (close()). */
static void body_unregister(Ledger *L, Call *c)
{
    View *V = &L->v;
    int64_t h = find_holder(L, c->a[0], c->a[1]);
    if (h >= 0 && ld(HOLDER(V, h, HO_UNITS)) == 0 && ld(HOLDER(V, h, HO_PENDING)) == 0) {
        unregister_holder(V, c, h);
        tx_commit(V, c);
        c->r[0] = 1;
    }
}

static PyObject *Ledger_unregister(Ledger *L, PyObject *const *args, Py_ssize_t nargs)
{
    Call c;
    if (parse_args(&c, args, nargs, 3, "unregister") < 0 || check_open(L) < 0 ||
        lock_mode_arg(c.a[2]) < 0)
        goto error;
    if (run_locked(L, body_unregister, &c, c.a[2]) < 0) {
        if (c.err == E_LOCK_TIMEOUT) {
            call_done(&c);
            Py_RETURN_FALSE;
        }
        raise_call_error(&c);
        goto error;
    }
    call_done(&c);
    return PyBool_FromLong((long)c.r[0]);
error:
    call_done(&c);
    return NULL;
}

/* mark_unlinked(lock): after unlink nobody new can open the name, so queued
 * waiters are woken to give up. */
static void body_mark_unlinked(Ledger *L, Call *c)
{
    View *V = &L->v;
    tx_store(V, c, HDR(V, H_FLAGS), ld(HDR(V, H_FLAGS)) | FLAG_UNLINKED);
    tx_commit(V, c);
    for (int64_t w = ld(HDR(V, H_Q_HEAD)), steps = 0;
         ld(HDR(V, H_WAITING)) > 0 && waiter_ok(V, w) && steps < V->max_waiters;
         w = ld(WAITER(V, w, WA_NEXT)), steps++)
        if (add_wake(V, c, w) < 0)
            return;
}

static PyObject *Ledger_mark_unlinked(Ledger *L, PyObject *arg)
{
    Call c;
    call_init(&c);
    int64_t mode = PyLong_AsLongLong(arg);
    if ((mode == -1 && PyErr_Occurred()) || check_open(L) < 0 || lock_mode_arg(mode) < 0)
        goto error;
    if (run_locked(L, body_mark_unlinked, &c, mode) < 0) {
        raise_call_error(&c);
        goto error;
    }
    call_done(&c);
    Py_RETURN_NONE;
error:
    call_done(&c);
    return NULL;
}

/* claim_heal(now_ns, interval_ns) -> bool: lock-free election of one healer
 * per interval, so a thousand blocked waiters do not all scan /proc. */
static PyObject *Ledger_claim_heal(Ledger *L, PyObject *const *args, Py_ssize_t nargs)
{
    Call c;
    if (parse_args(&c, args, nargs, 2, "claim_heal") < 0 || check_open(L) < 0) {
        call_done(&c);
        return NULL;
    }
    volatile int64_t *p = HDR(&L->v, H_LAST_HEAL_NS);
    int64_t last = ld(p);
    if (c.a[0] >= last && c.a[0] - last < c.a[1])
        Py_RETURN_FALSE;
    int won = __atomic_compare_exchange_n(p, &last, c.a[0], 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    return PyBool_FromLong(won);
}

/* ------------------------------------------------------- reading a ledger */

/* A ledger to read, as regions of bytes: the header (HEADER_SIZE), the
 * holder slots up to the high-water mark, the waiter entries up to theirs,
 * the unit table.  From the live mapping (snapshot) or from pread() copies
 * (a read-only view of a ledger we may not map: parse). */
typedef struct {
    const char *hdr;
    Py_ssize_t hdr_len;
    const char *holders;
    Py_ssize_t holders_len; /* bytes: whole slots up to the hwm */
    const char *waiters;
    Py_ssize_t waiters_len;
    const char *units;
    Py_ssize_t units_len;
} Regions;

typedef struct {
    int64_t capacity, max_holders, max_waiters, holders_off, waiters_off, units_off, undo_off,
        undo_max, total, policy;
} Geometry;

static int64_t geo_total(int64_t cap, int64_t mh, int64_t mw, int64_t policy, Geometry *g)
{
    g->capacity = cap;
    g->max_holders = mh;
    g->max_waiters = mw;
    g->policy = policy;
    g->holders_off = HEADER_SIZE;
    g->waiters_off = g->holders_off + mh * HOLDER_WORDS * 8;
    g->units_off = g->waiters_off + mw * WAITER_WORDS * 8;
    int64_t nunits = (policy & P_SLOTS) ? cap : 0;
    g->undo_off = g->units_off + nunits * UNIT_WORDS * 8;
    g->undo_max = UNDO_BASE + 4 * nunits;
    g->total = g->undo_off + g->undo_max * 16;
    return g->total;
}

/* Validate the fixed header fields and derive the geometry; NULL or a
 * reason.  Everything is recomputed from the parameters and compared, so a
 * lying header cannot point anywhere. */
static const char *geometry_of(const volatile int64_t *hdr, Geometry *g)
{
    uint64_t magic = (uint64_t)ld((volatile int64_t *)hdr + H_MAGIC);
    if (magic != LEDGER_MAGIC) {
        if (magic == 0)
            return "segment is not initialised (no magic)";
        if (magic == 0x31304d4553435049ULL)
            return "ledger layout version 1 (ipcsem 0.1): this ipcsem reads version 3";
        return "segment is not an ipcsem ledger (bad magic)";
    }
    int64_t version = hdr[H_VERSION];
    if (version == 2)
        return "ledger layout version 2 (an earlier ipcsem 0.2): this ipcsem reads version 3";
    if (version != LAYOUT_VERSION)
        return "ledger layout version unknown to this ipcsem";
    int64_t cap = hdr[H_CAPACITY], mh = hdr[H_MAX_HOLDERS], mw = hdr[H_MAX_WAITERS],
            policy = hdr[H_POLICY];
    if (hdr[H_HEADER_SIZE] != HEADER_SIZE || cap < 1 || cap > MAX_CAPACITY || mh < 1 ||
        mh > MAX_SLOTS || mw < 1 || mw > MAX_SLOTS || (policy & ~P_KNOWN) ||
        ((policy & P_SLOTS) && cap > MAX_SLOTTED_CAPACITY) ||
        ((policy & P_MUTEX) && cap != 1))
        return "ledger header is inconsistent";
    geo_total(cap, mh, mw, policy, g);
    if (hdr[H_HOLDERS_OFF] != g->holders_off || hdr[H_WAITERS_OFF] != g->waiters_off ||
        hdr[H_UNITS_OFF] != ((policy & P_SLOTS) ? g->units_off : 0) ||
        hdr[H_UNDO_OFF] != g->undo_off || hdr[H_UNDO_MAX] != g->undo_max ||
        hdr[H_TOTAL_SIZE] != g->total)
        return "ledger header is inconsistent";
    return NULL;
}

static PyObject *set_corrupt(const char *reason)
{
    PyObject *e = PyObject_CallFunction(CorruptError, "s", reason);
    if (e) {
        PyErr_SetObject(CorruptError, e);
        Py_DECREF(e);
    }
    return NULL;
}

static PyStructSequence_Field holder_fields[] = {
    {"slot", "holder slot index"}, {"pid", NULL}, {"start", "start time in clock ticks"},
    {"units", NULL}, {"since_ns", "epoch ns its holding went from 0 to > 0"},
    {"acquisitions", NULL}, {"pending", "its queue entries"},
    {"registered_ns", NULL}, {"slots", "unit numbers it holds (slotted), else ()"},
    {NULL}};
static PyStructSequence_Desc holder_desc = {"ipcsem._shm._ledger.HolderRow",
                                            "A registered process (a holder slot in use).",
                                            holder_fields, 9};

static PyStructSequence_Field waiter_fields[] = {
    {"entry", "waiter entry index"}, {"state", "1 WAITING, 2 GRANTED"}, {"pid", NULL},
    {"start", NULL}, {"tid", "native thread id of the waiting thread"}, {"units", NULL},
    {"priority", NULL}, {"ticket", "FIFO order within a priority"},
    {"since_ns", "epoch ns it started waiting"}, {"holder", "its holder slot"},
    {"token", "fencing token once granted"}, {"flags", "1 async, 2 deadlock=raise"},
    {"owner", "owner key (mutex: thread or task)"}, {"position", "1-based queue position, 0 if granted"},
    {NULL}};
static PyStructSequence_Desc waiter_desc = {"ipcsem._shm._ledger.WaiterRow",
                                            "A queue entry in use; waiting ones in serving order.",
                                            waiter_fields, 14};

static PyStructSequence_Field header_fields[] = {
    {"capacity", NULL}, {"max_holders", NULL}, {"max_waiters", NULL}, {"policy", "P_* bits"},
    {"created_ns", NULL}, {"creator_pid", NULL}, {"initial", NULL}, {"nonce", NULL},
    {"flags", "1: unlinked"}, {"available", NULL}, {"unowned", NULL}, {"waiting", NULL},
    {"next_ticket", NULL}, {"next_token", NULL}, {"recovered_units", NULL},
    {"recoveries", NULL}, {"lock_repairs", NULL}, {"lock_owner", NULL},
    {"acquisitions", NULL}, {"registrations", NULL}, {"changes", NULL},
    {"holder_hwm", NULL}, {"waiter_hwm", NULL}, {"undo_count", NULL},
    {"head_overtaken", NULL}, {"mx_owner", "mutex owner key (0: free)"},
    {"mx_owner_tid", NULL}, {"mx_depth", NULL}, {"mx_owner_died", NULL},
    {"pi_state", "0 none, 1 boosted, 2 unavailable"}, {"pi_tid", "the boosted owner thread"},
    {"pi_base_policy", NULL}, {"pi_base_rtprio", NULL}, {"pi_base_nice", NULL},
    {"pi_boost_policy", NULL}, {"pi_boost_rtprio", NULL}, {"pi_boost_nice", NULL},
    {"pi_booster", "pid that boosted it"}, {"pi_reason", "why unavailable (code)"},
    {"commits", NULL},
    {NULL}};
static PyStructSequence_Desc header_desc = {"ipcsem._shm._ledger.Header",
                                            "A ledger's header fields.", header_fields, 40};

static PyStructSequence_Field snapshot_fields[] = {
    {"header", "Header"}, {"holders", "list of HolderRow"},
    {"waiters", "list of WaiterRow: waiting ones in serving order, then granted ones"},
    {"consistent", "read between transactions (False: may show one half done)"},
    {NULL}};
static PyStructSequence_Desc snapshot_desc = {"ipcsem._shm._ledger.Snapshot",
                                              "One look at a ledger.", snapshot_fields, 4};

static PyObject *ll(int64_t v) { return PyLong_FromLongLong(v); }

static int set_fields(PyObject *seq, const int64_t *v, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *x = ll(v[i]);
        if (!x)
            return -1;
        PyStructSequence_SET_ITEM(seq, i, x);
    }
    return 0;
}

static inline int64_t rd(const char *region, Py_ssize_t len, Py_ssize_t word)
{
    /* bounds were checked by the caller; an 8-byte load from a private copy
     * or from the mapping (relaxed: consistency comes from the seqlock) */
    (void)len;
    return __atomic_load_n((const int64_t *)(region) + word, __ATOMIC_RELAXED);
}

/* Build a Snapshot from regions.  `strict`: a consistent read of a ledger
 * that must satisfy its invariant's structure (Corrupt otherwise); else a
 * best-effort read that drops what does not add up. */
static PyObject *parse_regions(Regions *R, int consistent, int strict)
{
    if (R->hdr_len < HEADER_SIZE)
        return set_corrupt("segment is smaller than a ledger header");
    const volatile int64_t *hdr = (const volatile int64_t *)R->hdr;
    Geometry g;
    const char *why = geometry_of(hdr, &g);
    if (why)
        return set_corrupt(why);
    int64_t h_avail = R->holders_len / (HOLDER_WORDS * 8);
    int64_t w_avail = R->waiters_len / (WAITER_WORDS * 8);
    int64_t u_avail = R->units_len / (UNIT_WORDS * 8);
    int64_t hhwm = rd(R->hdr, 0, H_HOLDER_HWM), whwm = rd(R->hdr, 0, H_WAITER_HWM);
    if (hhwm < 0 || hhwm > g.max_holders || whwm < 0 || whwm > g.max_waiters) {
        if (strict)
            return set_corrupt("high-water marks out of range");
        hhwm = hhwm < 0 ? 0 : (hhwm > g.max_holders ? g.max_holders : hhwm);
        whwm = whwm < 0 ? 0 : (whwm > g.max_waiters ? g.max_waiters : whwm);
    }
    if (hhwm > h_avail)
        hhwm = h_avail;
    if (whwm > w_avail)
        whwm = w_avail;
    int slotted = (g.policy & P_SLOTS) != 0;
    int64_t nunits = slotted ? (g.capacity < u_avail ? g.capacity : u_avail) : 0;

    PyObject *snap = NULL, *header = NULL, *holders = NULL, *waiters = NULL;
    header = PyStructSequence_New(HeaderType);
    holders = PyList_New(0);
    waiters = PyList_New(0);
    if (!header || !holders || !waiters)
        goto fail;
    /* the owner's thread and depth mean nothing without an owner (see
     * mutex_clear_owner): reported as 0 then */
    int64_t mx_key = rd(R->hdr, 0, H_MX_OWNER_KEY);
    int64_t hv[40] = {
        g.capacity, g.max_holders, g.max_waiters, g.policy,
        rd(R->hdr, 0, H_CREATED_NS), rd(R->hdr, 0, H_CREATOR_PID), rd(R->hdr, 0, H_INITIAL),
        rd(R->hdr, 0, H_NONCE), rd(R->hdr, 0, H_FLAGS), rd(R->hdr, 0, H_AVAILABLE),
        rd(R->hdr, 0, H_UNOWNED), rd(R->hdr, 0, H_WAITING), rd(R->hdr, 0, H_NEXT_TICKET),
        rd(R->hdr, 0, H_NEXT_TOKEN), rd(R->hdr, 0, H_RECOVERED_UNITS),
        rd(R->hdr, 0, H_RECOVERIES), rd(R->hdr, 0, H_LOCK_REPAIRS), rd(R->hdr, 0, H_LOCK_OWNER),
        rd(R->hdr, 0, H_ACQUISITIONS), rd(R->hdr, 0, H_REGISTRATIONS), rd(R->hdr, 0, H_CHANGES),
        hhwm, whwm, rd(R->hdr, 0, UNDO_COUNT_OFF / 8), rd(R->hdr, 0, H_HEAD_OVERTAKEN),
        mx_key, mx_key ? rd(R->hdr, 0, H_MX_OWNER_TID) : 0, mx_key ? rd(R->hdr, 0, H_MX_DEPTH) : 0,
        rd(R->hdr, 0, H_MX_OWNER_DIED), rd(R->hdr, 0, H_PI_STATE), rd(R->hdr, 0, H_PI_TID),
        rd(R->hdr, 0, H_PI_BASE_POLICY), rd(R->hdr, 0, H_PI_BASE_RTPRIO),
        rd(R->hdr, 0, H_PI_BASE_NICE), rd(R->hdr, 0, H_PI_BOOST_POLICY),
        rd(R->hdr, 0, H_PI_BOOST_RTPRIO), rd(R->hdr, 0, H_PI_BOOST_NICE),
        rd(R->hdr, 0, H_PI_BOOSTER), rd(R->hdr, 0, H_PI_REASON), rd(R->hdr, 0, H_COMMITS)};
    if (set_fields(header, hv, 40) < 0)
        goto fail;

    /* holders (with their unit numbers) */
    for (int64_t i = 0; i < hhwm; i++) {
        const char *s = R->holders + i * HOLDER_WORDS * 8;
        int64_t pid = rd(s, 0, HO_PID);
        if (pid == 0)
            continue;
        int64_t units = rd(s, 0, HO_UNITS);
        if (pid < 0 || units < 0 || units > g.capacity) {
            if (strict) {
                set_corrupt("a holder slot holds an impossible pid or unit count");
                goto fail;
            }
            continue;
        }
        PyObject *row = PyStructSequence_New(HolderRowType);
        if (!row)
            goto fail;
        int64_t v[8] = {i, pid, rd(s, 0, HO_START), units, rd(s, 0, HO_SINCE),
                        rd(s, 0, HO_ACQUIRED), rd(s, 0, HO_PENDING), rd(s, 0, HO_REGISTERED_NS)};
        PyObject *sl = NULL;
        if (set_fields(row, v, 8) < 0)
            goto row_fail;
        if (slotted) {
            Py_ssize_t n = 0;
            for (int64_t u = 0; u < nunits; u++)
                if (rd(R->units + u * UNIT_WORDS * 8, 0, UN_OWNER) == i + 1)
                    n++;
            sl = PyTuple_New(n);
            if (!sl)
                goto row_fail;
            n = 0;
            for (int64_t u = 0; u < nunits; u++)
                if (rd(R->units + u * UNIT_WORDS * 8, 0, UN_OWNER) == i + 1)
                    PyTuple_SET_ITEM(sl, n++, ll(u));
        } else
            sl = Py_NewRef(empty_tuple);
        PyStructSequence_SET_ITEM(row, 8, sl);
        if (PyList_Append(holders, row) < 0)
            goto row_fail;
        Py_DECREF(row);
        continue;
    row_fail:
        Py_DECREF(row);
        goto fail;
    }

    /* waiters: the queue in serving order (walking the list, bounded), then
     * granted entries */
    int64_t waiting = rd(R->hdr, 0, H_WAITING);
    int64_t w = waiting > 0 ? rd(R->hdr, 0, H_Q_HEAD) : -1, pos = 0;
    while (w != -1 && pos < whwm) {
        if (w < 0 || w >= whwm) {
            if (strict) {
                set_corrupt("wait queue links point outside the table");
                goto fail;
            }
            break;
        }
        const char *e = R->waiters + w * WAITER_WORDS * 8;
        if (rd(e, 0, WA_STATE) != W_WAITING) {
            if (strict) {
                set_corrupt("wait queue links a non-waiting entry");
                goto fail;
            }
            break;
        }
        pos++;
        PyObject *row = PyStructSequence_New(WaiterRowType);
        int64_t v[14] = {w, W_WAITING, rd(e, 0, WA_PID), rd(e, 0, WA_START), rd(e, 0, WA_TID),
                         rd(e, 0, WA_UNITS), rd(e, 0, WA_PRIORITY), rd(e, 0, WA_TICKET),
                         rd(e, 0, WA_SINCE), rd(e, 0, WA_HOLDER), rd(e, 0, WA_TOKEN),
                         rd(e, 0, WA_FLAGS), rd(e, 0, WA_OWNER), pos};
        if (!row || set_fields(row, v, 14) < 0 || PyList_Append(waiters, row) < 0) {
            Py_XDECREF(row);
            goto fail;
        }
        Py_DECREF(row);
        w = rd(e, 0, WA_NEXT);
    }
    if (strict && (w != -1 || pos != waiting)) {
        set_corrupt("wait queue length disagrees with its count");
        goto fail;
    }
    for (int64_t i = 0; i < whwm; i++) {
        const char *e = R->waiters + i * WAITER_WORDS * 8;
        if (rd(e, 0, WA_STATE) != W_GRANTED)
            continue;
        PyObject *row = PyStructSequence_New(WaiterRowType);
        int64_t v[14] = {i, W_GRANTED, rd(e, 0, WA_PID), rd(e, 0, WA_START), rd(e, 0, WA_TID),
                         rd(e, 0, WA_UNITS), rd(e, 0, WA_PRIORITY), rd(e, 0, WA_TICKET),
                         rd(e, 0, WA_SINCE), rd(e, 0, WA_HOLDER), rd(e, 0, WA_TOKEN),
                         rd(e, 0, WA_FLAGS), rd(e, 0, WA_OWNER), 0};
        if (!row || set_fields(row, v, 14) < 0 || PyList_Append(waiters, row) < 0) {
            Py_XDECREF(row);
            goto fail;
        }
        Py_DECREF(row);
    }
    snap = PyStructSequence_New(SnapshotType);
    if (!snap)
        goto fail;
    PyStructSequence_SET_ITEM(snap, 0, header);
    PyStructSequence_SET_ITEM(snap, 1, holders);
    PyStructSequence_SET_ITEM(snap, 2, waiters);
    PyStructSequence_SET_ITEM(snap, 3, Py_NewRef(consistent ? Py_True : Py_False));
    return snap;
fail:
    Py_XDECREF(header);
    Py_XDECREF(holders);
    Py_XDECREF(waiters);
    return NULL;
}

/* Copy the used regions of the live mapping between two transactions: the
 * seqlock (commit count + empty undo log before and after the copy).  A
 * process stopped inside a transaction keeps the log non-empty: after
 * `tries` attempts the last copy is used and marked inconsistent. */
static char *seqlock_copy(View *V, Regions *R, int *consistent, int tries)
{
    Py_ssize_t hbytes_max = V->max_holders * HOLDER_WORDS * 8;
    Py_ssize_t wbytes_max = V->max_waiters * WAITER_WORDS * 8;
    Py_ssize_t ubytes = is_slotted(V) ? V->capacity * UNIT_WORDS * 8 : 0;
    char *buf = NULL;
    *consistent = 0;
    for (int attempt = 0; attempt < tries; attempt++) {
        int64_t c1 = ld(HDR(V, H_COMMITS)), u1 = ld(UNDO_COUNT(V));
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        Py_ssize_t hb = holder_hwm(V) * HOLDER_WORDS * 8, wb = waiter_hwm(V) * WAITER_WORDS * 8;
        if (hb > hbytes_max)
            hb = hbytes_max;
        if (wb > wbytes_max)
            wb = wbytes_max;
        free(buf);
        buf = malloc(HEADER_SIZE + hb + wb + ubytes + 8);
        if (!buf)
            return NULL;
        memcpy(buf, V->base, HEADER_SIZE);
        memcpy(buf + HEADER_SIZE, (char *)V->holders, hb);
        memcpy(buf + HEADER_SIZE + hb, (char *)V->waiters, wb);
        if (ubytes)
            memcpy(buf + HEADER_SIZE + hb + wb, (char *)V->units, ubytes);
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        int64_t u2 = ld(UNDO_COUNT(V)), c2 = ld(HDR(V, H_COMMITS));
        R->hdr = buf;
        R->hdr_len = HEADER_SIZE;
        R->holders = buf + HEADER_SIZE;
        R->holders_len = hb;
        R->waiters = buf + HEADER_SIZE + hb;
        R->waiters_len = wb;
        R->units = buf + HEADER_SIZE + hb + wb;
        R->units_len = ubytes;
        if (u1 == 0 && u2 == 0 && c1 == c2) {
            *consistent = 1;
            return buf;
        }
        if (attempt > 4) {
            struct timespec nap = {0, 100000}; /* 0.1 ms: let a writer finish */
            Py_BEGIN_ALLOW_THREADS
            nanosleep(&nap, NULL);
            Py_END_ALLOW_THREADS
        }
    }
    return buf;
}

/* snapshot(tries=200) -> Snapshot, read without the lock (never blocks, not
 * even on a lock held by a stopped process). */
static PyObject *Ledger_snapshot(Ledger *L, PyObject *const *args, Py_ssize_t nargs)
{
    long tries = 200;
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "snapshot takes at most 1 argument");
        return NULL;
    }
    if (nargs == 1 && ((tries = PyLong_AsLong(args[0])) == -1 && PyErr_Occurred()))
        return NULL;
    if (check_open(L) < 0)
        return NULL;
    if (tries < 1)
        tries = 1;
    Regions R;
    int consistent;
    L->active++;
    char *buf = seqlock_copy(&L->v, &R, &consistent, (int)tries);
    L->active--;
    if (!buf)
        return PyErr_NoMemory();
    PyObject *r = parse_regions(&R, consistent, consistent);
    free(buf);
    return r;
}

/* Verify THE INVARIANT (top of file) on a private copy; 0 or -1 with c->msg set. */
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
    int64_t held = 0, waiting = 0, granted = 0, next_ticket = ld(HDR(V, H_NEXT_TICKET));
    if (ld(UNDO_COUNT(V)) != 0)
        BROKEN("undo log not empty under the lock");
    if (available < 0 || available > cap)
        BROKEN("available=%lld outside 0..%lld", (long long)available, (long long)cap);
    if (unowned < 0 || unowned > cap)
        BROKEN("unowned=%lld outside 0..%lld", (long long)unowned, (long long)cap);
    if (hhwm < 0 || hhwm > V->max_holders || whwm < 0 || whwm > V->max_waiters)
        BROKEN("high-water marks out of range");
    for (int64_t i = 0; i < V->max_holders; i++) {
        int64_t pid = ld(HOLDER(V, i, HO_PID));
        if (pid == 0)
            continue;
        if (i >= hhwm)
            BROKEN("holder slot %lld is above the high-water mark", (long long)i);
        if (pid < 0)
            BROKEN("holder slot %lld names pid %lld", (long long)i, (long long)pid);
        int64_t units = ld(HOLDER(V, i, HO_UNITS)), pending = 0;
        if (units < 0 || units > cap)
            BROKEN("holder slot %lld has %lld units", (long long)i, (long long)units);
        held += units;
        for (int64_t j = i + 1; j < hhwm; j++)
            if (ld(HOLDER(V, j, HO_PID)) == pid &&
                ld(HOLDER(V, j, HO_START)) == ld(HOLDER(V, i, HO_START)))
                BROKEN("identity pid %lld registered twice (slots %lld, %lld)", (long long)pid,
                       (long long)i, (long long)j);
        for (int64_t w = 0; w < whwm; w++)
            if (ld(WAITER(V, w, WA_STATE)) != W_FREE && ld(WAITER(V, w, WA_HOLDER)) == i)
                pending++;
        if (pending != ld(HOLDER(V, i, HO_PENDING)))
            BROKEN("holder slot %lld counts %lld pending entries, %lld exist", (long long)i,
                   (long long)ld(HOLDER(V, i, HO_PENDING)), (long long)pending);
        if (is_slotted(V)) {
            int64_t n = 0;
            for (int64_t u = 0; u < cap; u++)
                if (ld(UNIT(V, u, UN_OWNER)) == i + 1)
                    n++;
            if (n != units)
                BROKEN("holder slot %lld holds %lld units but %lld unit numbers",
                       (long long)i, (long long)units, (long long)n);
        }
    }
    int64_t free_entries = 0;
    for (int64_t w = 0; w < V->max_waiters; w++) {
        int64_t state = ld(WAITER(V, w, WA_STATE));
        if (state == W_FREE) {
            if (w < whwm)
                free_entries++;
            continue;
        }
        if (w >= whwm)
            BROKEN("waiter entry %lld is above the high-water mark", (long long)w);
        if (state != W_WAITING && state != W_GRANTED)
            BROKEN("waiter entry %lld has state %lld", (long long)w, (long long)state);
        int64_t h = ld(WAITER(V, w, WA_HOLDER)), units = ld(WAITER(V, w, WA_UNITS));
        if (!holder_ok(V, h) || ld(HOLDER(V, h, HO_PID)) != ld(WAITER(V, w, WA_PID)) ||
            ld(HOLDER(V, h, HO_START)) != ld(WAITER(V, w, WA_START)))
            BROKEN("waiter entry %lld does not point at its own holder slot", (long long)w);
        if (units < 1 || units > cap)
            BROKEN("waiter entry %lld wants %lld units", (long long)w, (long long)units);
        int64_t ticket = ld(WAITER(V, w, WA_TICKET));
        if (ticket < 0 || ticket >= next_ticket)
            BROKEN("waiter entry %lld has ticket %lld >= next %lld", (long long)w,
                   (long long)ticket, (long long)next_ticket);
        if (state == W_WAITING)
            waiting++;
        else
            granted++;
    }
    if (waiting != ld(HDR(V, H_WAITING)))
        BROKEN("waiting=%lld but %lld entries wait", (long long)ld(HDR(V, H_WAITING)),
               (long long)waiting);
    /* The queue: exactly the WAITING entries, in serving order, links both ways. */
    int64_t w = waiting ? ld(HDR(V, H_Q_HEAD)) : -1, prev = -1, n = 0;
    int64_t last_prio = 0, last_ticket = 0;
    while (w != -1) {
        if (!waiter_ok(V, w) || w >= whwm || ld(WAITER(V, w, WA_STATE)) != W_WAITING ||
            ++n > waiting)
            BROKEN("wait queue links are broken at entry %lld", (long long)w);
        if (ld(WAITER(V, w, WA_PREV)) != prev)
            BROKEN("wait queue back-link of entry %lld is wrong", (long long)w);
        int64_t prio = ld(WAITER(V, w, WA_PRIORITY)), ticket = ld(WAITER(V, w, WA_TICKET));
        if (n > 1 && !served_before(last_prio, last_ticket, prio, ticket))
            BROKEN("wait queue is out of order at entry %lld", (long long)w);
        last_prio = prio, last_ticket = ticket, prev = w;
        w = ld(WAITER(V, w, WA_NEXT));
    }
    if (n != waiting || (waiting && ld(HDR(V, H_Q_TAIL)) != prev))
        BROKEN("wait queue holds %lld of %lld waiting entries", (long long)n, (long long)waiting);
    /* The free list: exactly the free entries below the high-water mark. */
    int64_t f = ld(HDR(V, H_FREE_HEAD)), nf = 0;
    while (f != -1) {
        if (!waiter_ok(V, f) || f >= whwm || ld(WAITER(V, f, WA_STATE)) != W_FREE ||
            ++nf > free_entries)
            BROKEN("free-entry list is broken at entry %lld", (long long)f);
        f = ld(WAITER(V, f, WA_NEXT));
    }
    if (nf != free_entries)
        BROKEN("free-entry list holds %lld of %lld free entries", (long long)nf,
               (long long)free_entries);
    if (available + held + unowned != cap)
        BROKEN("units lost or invented: available %lld + held %lld + unowned %lld != capacity %lld",
               (long long)available, (long long)held, (long long)unowned, (long long)cap);
    if (is_slotted(V)) {
        int64_t nfree = 0, nunowned = 0;
        for (int64_t u = 0; u < cap; u++) {
            int64_t o = ld(UNIT(V, u, UN_OWNER));
            if (o == 0)
                nfree++;
            else if (o == -1)
                nunowned++;
            else if (o < 1 || o > V->max_holders || ld(HOLDER(V, o - 1, HO_PID)) == 0)
                BROKEN("unit %lld is owned by holder slot %lld, which is free", (long long)u,
                       (long long)(o - 1));
        }
        if (nfree != available || nunowned != unowned)
            BROKEN("unit table: %lld free, %lld unowned; counts say %lld, %lld",
                   (long long)nfree, (long long)nunowned, (long long)available,
                   (long long)unowned);
    }
    if (is_mutex(V)) {
        int64_t key = ld(HDR(V, H_MX_OWNER_KEY)), depth = ld(HDR(V, H_MX_DEPTH));
        if ((key != 0) != (held == 1) || (key != 0 && depth < 1))
            BROKEN("mutex owner (key %lld, depth %lld) disagrees with %lld held unit(s)",
                   (long long)key, (long long)depth, (long long)held);
    }
    if (waiting && !is_unfair(V)) {
        int64_t head = ld(HDR(V, H_Q_HEAD));
        if (ld(WAITER(V, head, WA_UNITS)) <= available)
            BROKEN("the queue head (entry %lld, %lld units) waits while %lld are available",
                   (long long)head, (long long)ld(WAITER(V, head, WA_UNITS)),
                   (long long)available);
    }
    (void)granted;
    return 0;
}

/* Copy the whole ledger (under the lock: check() must see a committed state). */
static void body_copy(Ledger *L, Call *c)
{
    View *V = &L->v;
    char *copy = malloc(V->size);
    if (!copy) {
        fail(c, E_NOMEM, "out of memory");
        return;
    }
    memcpy(copy, V->base, V->size);
    c->copy = copy;
    c->cv = *V;
    c->cv.base = copy;
    c->cv.hdr = (volatile int64_t *)copy;
    c->cv.holders = (volatile int64_t *)(copy + ((char *)V->holders - V->base));
    c->cv.waiters = (volatile int64_t *)(copy + ((char *)V->waiters - V->base));
    c->cv.units = (volatile int64_t *)(copy + ((char *)V->units - V->base));
    c->cv.undo = (volatile int64_t *)(copy + ((char *)V->undo - V->base));
}

/* check(lock) -> None, or raise Corrupt naming the first broken rule
 * (Wedged when the lock is not had by the deadline). */
static PyObject *Ledger_check(Ledger *L, PyObject *arg)
{
    Call c;
    call_init(&c);
    int64_t mode = PyLong_AsLongLong(arg);
    if ((mode == -1 && PyErr_Occurred()) || check_open(L) < 0 || lock_mode_arg(mode) < 0)
        goto error;
    if (run_locked(L, body_copy, &c, mode) < 0) {
        raise_call_error(&c);
        goto error;
    }
    if (verify(&c.cv, &c) < 0) {
        raise_call_error(&c);
        goto error;
    }
    call_done(&c);
    Py_RETURN_NONE;
error:
    call_done(&c);
    return NULL;
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
    for (int i = 0; i < 8; i++)
        L->waits[i] = -1;
    L->active_pid = (pid_t)self_pid;
    View *V = &L->v;
    char *base = L->buffer.buf;
    Py_ssize_t size = L->buffer.len;
    if (((uintptr_t)base & 63) != 0) {
        PyErr_SetString(PyExc_ValueError, "ledger buffer must be 64-byte aligned");
        return -1;
    }
    if (size < HEADER_SIZE) {
        set_corrupt("segment is smaller than a ledger header");
        return -1;
    }
    Geometry g;
    const char *why = geometry_of((volatile int64_t *)base, &g);
    if (why) {
        set_corrupt(why);
        return -1;
    }
    if (g.total > size) {
        char msg[160];
        snprintf(msg, sizeof msg, "segment is truncated: %zd bytes, the ledger needs %lld", size,
                 (long long)g.total);
        set_corrupt(msg);
        return -1;
    }
    V->base = base;
    V->size = g.total;
    V->hdr = (volatile int64_t *)base;
    V->capacity = g.capacity;
    V->max_holders = g.max_holders;
    V->max_waiters = g.max_waiters;
    V->undo_max = g.undo_max;
    V->policy = g.policy;
    V->holders = (volatile int64_t *)(base + g.holders_off);
    V->waiters = (volatile int64_t *)(base + g.waiters_off);
    V->units = (volatile int64_t *)(base + g.units_off);
    V->undo = (volatile int64_t *)(base + g.undo_off);
    L->hint = 0;
    return 0;
}

static void Ledger_dealloc(Ledger *L)
{
    if (L->has_buffer)
        PyBuffer_Release(&L->buffer);
    Py_TYPE(L)->tp_free((PyObject *)L);
}

/* shutdown(seconds) -> bool: make waits of other threads on this handle give
 * up (Closed), wait up to `seconds` for every call in flight to leave, then
 * let go of the mapping.  False (and nothing released) if calls remain. */
static PyObject *Ledger_shutdown(Ledger *L, PyObject *arg)
{
    double seconds = PyFloat_AsDouble(arg);
    if (seconds == -1.0 && PyErr_Occurred())
        return NULL;
    if (L->active_pid != self_pid) {
        L->active = 0; /* a forked child: the parent's threads are not here */
        L->active_pid = (pid_t)self_pid;
        for (int i = 0; i < 8; i++)
            L->waits[i] = -1;
    }
    if (L->v.base) {
        L->closing = 1;
        int64_t end = mono_ns() + (int64_t)(seconds * 1e9);
        while (L->active > 0) {
            for (int i = 0; i < 8; i++)
                if (L->waits[i] >= 0 && waiter_ok(&L->v, L->waits[i]))
                    ring_entry(&L->v, WAITER(&L->v, L->waits[i], WA_BELL));
            if (mono_ns() >= end) {
                L->closing = 0;
                Py_RETURN_FALSE;
            }
            struct timespec nap = {0, 1000000};
            Py_BEGIN_ALLOW_THREADS
            nanosleep(&nap, NULL);
            Py_END_ALLOW_THREADS
        }
    }
    if (L->has_buffer) {
        PyBuffer_Release(&L->buffer);
        L->has_buffer = 0;
    }
    L->v.base = NULL;
    Py_RETURN_TRUE;
}

static PyObject *lockfree_field(Ledger *L, int field)
{
    if (check_open(L) < 0)
        return NULL;
    /* An aligned 8-byte load: never torn; committed or in flight. */
    return PyLong_FromLongLong(ld(HDR(&L->v, field)));
}

static PyObject *Ledger_get_capacity(Ledger *L, void *c) { return PyLong_FromLongLong(L->v.capacity); }
static PyObject *Ledger_get_policy(Ledger *L, void *c) { return PyLong_FromLongLong(L->v.policy); }
static PyObject *Ledger_get_available(Ledger *L, void *c) { return lockfree_field(L, H_AVAILABLE); }
static PyObject *Ledger_get_waiting(Ledger *L, void *c) { return lockfree_field(L, H_WAITING); }
static PyObject *Ledger_get_nonce(Ledger *L, void *c) { return lockfree_field(L, H_NONCE); }
static PyObject *Ledger_get_changes(Ledger *L, void *c)
{
    if (check_open(L) < 0)
        return NULL;
    return PyLong_FromLongLong(ld(HDR(&L->v, H_REGISTRATIONS)) + ld(HDR(&L->v, H_CHANGES)));
}
static PyObject *Ledger_get_unlinked(Ledger *L, void *c)
{
    if (check_open(L) < 0)
        return NULL;
    return PyBool_FromLong(ld(HDR(&L->v, H_FLAGS)) & FLAG_UNLINKED);
}
static PyObject *Ledger_get_max_holders(Ledger *L, void *c) { return PyLong_FromLongLong(L->v.max_holders); }
static PyObject *Ledger_get_max_waiters(Ledger *L, void *c) { return PyLong_FromLongLong(L->v.max_waiters); }
static PyObject *Ledger_get_closed(Ledger *L, void *c) { return PyBool_FromLong(L->v.base == NULL); }
static PyObject *Ledger_get_active(Ledger *L, void *c)
{
    return PyLong_FromLong(L->active_pid == self_pid ? L->active : 0);
}

static PyObject *Ledger_get_mutex(Ledger *L, void *c)
{
    if (check_open(L) < 0)
        return NULL;
    View *V = &L->v;
    int64_t key = ld(HDR(V, H_MX_OWNER_KEY));
    return Py_BuildValue("(LLLL)", (long long)key, (long long)(key ? ld(HDR(V, H_MX_OWNER_TID)) : 0),
                         (long long)(key ? ld(HDR(V, H_MX_DEPTH)) : 0),
                         (long long)ld(HDR(V, H_MX_OWNER_DIED)));
}

static PyGetSetDef Ledger_getset[] = {
    {"mutex", (getter)Ledger_get_mutex, NULL,
     "(owner key, owner tid, depth, owner died), lock-free: exact for the owner itself", NULL},
    {"capacity", (getter)Ledger_get_capacity, NULL, "capacity (fixed at creation)", NULL},
    {"policy", (getter)Ledger_get_policy, NULL, "creation-time policy bits (P_*)", NULL},
    {"available", (getter)Ledger_get_available, NULL, "units free now (lock-free read)", NULL},
    {"waiting", (getter)Ledger_get_waiting, NULL, "queued requests (lock-free read)", NULL},
    {"nonce", (getter)Ledger_get_nonce, NULL, "random number fixed at creation", NULL},
    {"changes", (getter)Ledger_get_changes, NULL, "grows when processes register/leave", NULL},
    {"unlinked", (getter)Ledger_get_unlinked, NULL, "the name was unlinked", NULL},
    {"max_holders", (getter)Ledger_get_max_holders, NULL, "holder slots", NULL},
    {"max_waiters", (getter)Ledger_get_max_waiters, NULL, "waiter entries", NULL},
    {"closed", (getter)Ledger_get_closed, NULL, "the mapping was let go", NULL},
    {"active", (getter)Ledger_get_active, NULL, "calls in flight in this process", NULL},
    {NULL}};

static PyMethodDef Ledger_methods[] = {
    {"take", (PyCFunction)(void (*)(void))Ledger_take, METH_FASTCALL, NULL},
    {"enqueue", (PyCFunction)(void (*)(void))Ledger_enqueue, METH_FASTCALL, NULL},
    {"wait", (PyCFunction)(void (*)(void))Ledger_wait, METH_FASTCALL, NULL},
    {"state", (PyCFunction)Ledger_state, METH_O, NULL},
    {"settle", (PyCFunction)(void (*)(void))Ledger_settle, METH_FASTCALL, NULL},
    {"cancel", (PyCFunction)(void (*)(void))Ledger_cancel, METH_FASTCALL, NULL},
    {"ring", (PyCFunction)Ledger_ring, METH_O, NULL},
    {"set_flags", (PyCFunction)(void (*)(void))Ledger_set_flags, METH_FASTCALL, NULL},
    {"pi_boost", (PyCFunction)(void (*)(void))Ledger_pi_boost, METH_FASTCALL, NULL},
    {"recover_orphan", (PyCFunction)(void (*)(void))Ledger_recover_orphan, METH_FASTCALL, NULL},
    {"touch", (PyCFunction)Ledger_touch, METH_O, NULL},
    {"process_bell", (PyCFunction)(void (*)(void))Ledger_process_bell, METH_FASTCALL, NULL},
    {"release", (PyCFunction)(void (*)(void))Ledger_release, METH_FASTCALL, NULL},
    {"disown", (PyCFunction)(void (*)(void))Ledger_disown, METH_FASTCALL, NULL},
    {"recover", (PyCFunction)(void (*)(void))Ledger_recover, METH_FASTCALL, NULL},
    {"unregister", (PyCFunction)(void (*)(void))Ledger_unregister, METH_FASTCALL, NULL},
    {"mark_unlinked", (PyCFunction)Ledger_mark_unlinked, METH_O, NULL},
    {"claim_heal", (PyCFunction)(void (*)(void))Ledger_claim_heal, METH_FASTCALL, NULL},
    {"snapshot", (PyCFunction)(void (*)(void))Ledger_snapshot, METH_FASTCALL, NULL},
    {"check", (PyCFunction)Ledger_check, METH_O, NULL},
    {"shutdown", (PyCFunction)Ledger_shutdown, METH_O, NULL},
    {NULL}};

static PyTypeObject LedgerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ipcsem._shm._ledger.Ledger",
    .tp_basicsize = sizeof(Ledger),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Transactions on one mapped ipcsem ledger (see the file's comment).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Ledger_init,
    .tp_dealloc = (destructor)Ledger_dealloc,
    .tp_methods = Ledger_methods,
    .tp_getset = Ledger_getset,
};

/* ------------------------------------------------------- the fast path */

/* The base type of ipcsem.Semaphore and ipcsem.Mutex.  Its four hot methods
 * (acquire, release, __enter__, __exit__) handle exactly one case in C —
 * the shared-memory backend, no arguments (or release(n)), the ledger lock
 * free, the units free — and hand every other call, unchanged, to the
 * Python methods _acquire_slow, _release_slow, _enter_slow and _exit_slow,
 * which are the implementation.  A failure of any kind on the fast path
 * changes nothing and takes the slow path too, so errors, names and
 * waiting live in one place.  Why: a Python-level method call costs about
 * what the whole ledger transaction does. */
typedef struct {
    PyObject_HEAD
    Ledger *fast; /* the shm ledger when the fast path applies, else NULL */
    /* The handle's hooks for a contended wait in C (NULL: the slow path
     * waits): its healing slice, its pidfd-watcher switch, its name. */
    PyObject *on_slice, *on_watch, *name;
} Primitive;

/* Python subclasses (Semaphore, Mutex) are heap types: their subtype_dealloc
 * and subtype_traverse handle the type's reference; this only handles ours. */
static void Primitive_dealloc(Primitive *P)
{
    PyObject_GC_UnTrack(P);
    Py_CLEAR(P->fast);
    Py_CLEAR(P->on_slice);
    Py_CLEAR(P->on_watch);
    Py_CLEAR(P->name);
    Py_TYPE(P)->tp_free((PyObject *)P);
}

static int Primitive_traverse(Primitive *P, visitproc visit, void *arg)
{
    Py_VISIT(P->fast);
    Py_VISIT(P->on_slice);
    Py_VISIT(P->on_watch);
    return 0;
}

static int Primitive_clear(Primitive *P)
{
    Py_CLEAR(P->fast);
    Py_CLEAR(P->on_slice);
    Py_CLEAR(P->on_watch);
    Py_CLEAR(P->name);
    return 0;
}

/* _fast_attach(None | ledger | (ledger, on_slice, on_watch, name)): the
 * ledger for the uncontended fast path; with the handle's hooks, a refused
 * blocking acquire waits in C too (fast_wait). */
static PyObject *Primitive_attach(Primitive *P, PyObject *arg)
{
    PyObject *ledger = arg, *on_slice = NULL, *on_watch = NULL, *name = NULL;
    if (PyTuple_Check(arg)) {
        if (PyTuple_GET_SIZE(arg) != 4) {
            PyErr_SetString(PyExc_TypeError, "(ledger, on_slice, on_watch, name)");
            return NULL;
        }
        ledger = PyTuple_GET_ITEM(arg, 0);
        on_slice = PyTuple_GET_ITEM(arg, 1);
        on_watch = PyTuple_GET_ITEM(arg, 2);
        name = PyTuple_GET_ITEM(arg, 3);
        if (!PyCallable_Check(on_slice) || !PyCallable_Check(on_watch) ||
            !PyUnicode_Check(name)) {
            PyErr_SetString(PyExc_TypeError, "(ledger, on_slice, on_watch, name)");
            return NULL;
        }
    }
    if (ledger != Py_None && !PyObject_TypeCheck(ledger, &LedgerType)) {
        PyErr_SetString(PyExc_TypeError, "a Ledger or None");
        return NULL;
    }
    Py_XSETREF(P->fast, ledger == Py_None ? NULL : (Ledger *)Py_NewRef(ledger));
    Py_XSETREF(P->on_slice, Py_XNewRef(on_slice));
    Py_XSETREF(P->on_watch, Py_XNewRef(on_watch));
    Py_XSETREF(P->name, Py_XNewRef(name));
    Py_RETURN_NONE;
}

static PyObject *slow(PyObject *self, const char *name, PyObject *const *args, size_t nargsf,
                      PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    Py_ssize_t total = nargs + (kwnames ? PyTuple_GET_SIZE(kwnames) : 0);
    PyObject *small[8], **stack = small;
    if (total + 1 > 8) {
        stack = PyMem_Malloc((total + 1) * sizeof(PyObject *));
        if (!stack)
            return PyErr_NoMemory();
    }
    stack[0] = self;
    for (Py_ssize_t i = 0; i < total; i++)
        stack[i + 1] = args[i];
    PyObject *meth = PyUnicode_InternFromString(name);
    PyObject *r = meth ? PyObject_VectorcallMethod(meth, stack, (nargs + 1), kwnames) : NULL;
    Py_XDECREF(meth);
    if (stack != small)
        PyMem_Free(stack);
    return r;
}

/* An acquiring call is raising: give back the grant handed out on this
 * thread and not delivered (claim_ledger), keeping the error. */
static void give_back_claim(void)
{
    if (!claim_ledger || !self_start) {
        claim_clear();
        return;
    }
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    Ledger *L = (Ledger *)claim_ledger;
    Call c;
    call_init(&c);
    c.a[0] = self_pid, c.a[1] = self_start, c.a[2] = claim_owner, c.a[3] = claim_units;
    c.a[4] = claim_token;
    if (L->v.base)
        run_locked(L, body_release, &c, mono_ns() + CANCEL_GRACE);
    if (c.err == E_SIGNAL)
        PyErr_Clear();
    call_done(&c);
    claim_clear();
    PyErr_Restore(et, ev, tb);
}

/* The slow path of an acquiring entry point, delivering its grant safely
 * (see claim_ledger): if the Python implementation raises after a grant
 * was handed to it, the grant is given back before the error propagates. */
static PyObject *slow_claimed(PyObject *self, const char *name, PyObject *const *args,
                              size_t nargsf, PyObject *kwnames)
{
    claim_clear();
    PyObject *r = slow(self, name, args, nargsf, kwnames);
    if (!r)
        give_back_claim();
    claim_clear();
    return r;
}

/* One fast transaction: 1 on success (c->r filled), 0 to take the slow path. */
static int fast_call(Primitive *P, Body body, Call *c)
{
    Ledger *L = P->fast;
    if (!L || !L->v.base || !self_start)
        return 0;
    if (run_locked(L, body, c, LOCK_TRY) < 0) {
        if (c->err == E_SIGNAL)
            PyErr_Clear();
        return 0;
    }
    return 1;
}

/* 1: taken.  0: take the slow path; *refused then says whether the
 * transaction ran and found the units not free for us (not a busy lock,
 * not an error). */
static int fast_take(Primitive *P, Call *c, int64_t units, int *refused)
{
    call_init(c);
    *refused = 0;
    if (P->fast && (units < 1 || units > P->fast->v.capacity))
        return 0;
    int64_t tid = my_tid();
    c->a[0] = self_pid, c->a[1] = self_start, c->a[2] = tid, c->a[3] = tid;
    c->a[4] = units, c->a[5] = 0;
    if (!fast_call(P, body_take, c))
        return 0;
    if (c->r[0] == 1)
        return 1;
    *refused = 1;
    return 0;
}

/* Fill in the semaphore's name on the ipcsem error being raised (the C
 * layer does not know it; the handle's calls add it the same way). */
static void name_error(PyObject *name)
{
    if (!name || !IpcsemError || !PyErr_Occurred())
        return;
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    PyErr_NormalizeException(&et, &ev, &tb);
    if (ev && PyObject_IsInstance(ev, IpcsemError) == 1) {
        PyObject *r = PyObject_CallMethod(ev, "with_name", "O", name);
        Py_XDECREF(r);
    }
    PyErr_Clear(); /* a failure to name it is not the error to report */
    PyErr_Restore(et, ev, tb);
}

/* A blocking acquire with no deadline (acquire(), acquire(k), `with`) whose
 * fast take was refused: queue and wait in C, with the handle's healing
 * slice and its watcher hook (see wait_entry) -- the contended path without
 * the slow path's Python frames and its futile second take.  Returns the
 * Grant; NULL with an error set (named; a grant that raced in was given
 * back); NULL without one: take the slow path (no hooks, or nothing was
 * queued: a full queue, an unlinked name, a closed ledger -- the slow path
 * heals and retries, or raises with the name). */
static PyObject *fast_wait(Primitive *P, int64_t units)
{
    Ledger *L = P->fast;
    if (!L || !P->on_slice || !P->on_watch || !L->v.base || !self_start)
        return NULL;
    if (!watch_prepared) {
        /* Once per process: the watcher's thread starts before anything
         * of ours can queue (see watch.prepare). */
        PyObject *r = PyObject_CallOneArg(P->on_watch, Py_None);
        if (!r)
            return NULL;
        Py_DECREF(r);
        watch_prepared = 1;
    }
    /* Another thread may close the semaphore (detaching these) while we wait. */
    Py_INCREF(L);
    PyObject *on_slice = Py_NewRef(P->on_slice), *on_watch = Py_NewRef(P->on_watch);
    PyObject *name = Py_XNewRef(P->name);
    Call q;
    call_init(&q);
    int64_t tid = my_tid();
    q.a[0] = self_pid, q.a[1] = self_start, q.a[2] = tid, q.a[3] = tid, q.a[4] = units;
    q.a[5] = 0, q.a[6] = 0, q.a[7] = 0, q.a[8] = 0; /* priority, flags, no deadline, slice */
    int not_queued = 0;
    claim_clear();
    PyObject *g = wait_entry(L, &q, on_slice, on_watch, &not_queued);
    call_done(&q);
    if (g == Py_None) /* a deadline passed: there is none; defensively, nothing is held */
        Py_CLEAR(g);
    else if (!g && PyErr_Occurred()) {
        give_back_claim();
        name_error(name);
    }
    claim_clear();
    Py_XDECREF(name);
    Py_DECREF(on_watch);
    Py_DECREF(on_slice);
    Py_DECREF(L);
    return g;
}

static int fast_release(Primitive *P, Call *c, int64_t units)
{
    call_init(c);
    c->a[0] = self_pid, c->a[1] = self_start, c->a[2] = my_tid(), c->a[3] = units, c->a[4] = 0;
    if (P->fast && (units < 1 || units > P->fast->v.capacity))
        return 0;
    return fast_call(P, body_release, c);
}

static PyObject *Primitive_acquire(Primitive *P, PyObject *const *args, size_t nargsf,
                                   PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    /* acquire() and acquire(k) with an int k (never a bool: that is
     * blocking=) on a semaphore; the slow path decides what else is meant */
    if (!kwnames && (nargs == 0 || (nargs == 1 && PyLong_CheckExact(args[0])))) {
        int64_t units = 1;
        if (nargs == 1) {
            units = PyLong_AsLongLong(args[0]);
            if (units == -1 && PyErr_Occurred())
                PyErr_Clear();
        }
        Call c;
        call_init(&c);
        int refused = 0;
        int ok = units >= 1 && fast_take(P, &c, units, &refused);
        call_done(&c);
        if (ok)
            Py_RETURN_TRUE;
        /* The units are taken: wait in C (a mutex only for acquire(): its
         * acquire(k) is the slow path's TypeError). */
        if (refused && (nargs == 0 || !is_mutex(&P->fast->v))) {
            PyObject *g = fast_wait(P, units);
            if (g) {
                Py_DECREF(g);
                Py_RETURN_TRUE;
            }
            if (PyErr_Occurred())
                return NULL;
        }
    }
    return slow_claimed((PyObject *)P, "_acquire_slow", args, nargsf, kwnames);
}

static PyObject *Primitive_release(Primitive *P, PyObject *const *args, size_t nargsf,
                                   PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (!kwnames && (nargs == 0 || (nargs == 1 && PyLong_CheckExact(args[0])))) {
        int64_t units = 1;
        if (nargs == 1) {
            units = PyLong_AsLongLong(args[0]);
            if (units == -1 && PyErr_Occurred())
                PyErr_Clear();
        }
        Call c;
        call_init(&c);
        int ok = units >= 1 && fast_release(P, &c, units);
        call_done(&c);
        if (ok)
            Py_RETURN_NONE;
    }
    return slow((PyObject *)P, "_release_slow", args, nargsf, kwnames);
}

static PyObject *Primitive_enter(Primitive *P, PyObject *const *args, size_t nargsf,
                                 PyObject *kwnames)
{
    Call c;
    int refused;
    if (fast_take(P, &c, 1, &refused)) {
        PyObject *g = grant_result(&c, 1);
        call_done(&c);
        return g;
    }
    call_done(&c);
    if (refused) {
        PyObject *g = fast_wait(P, 1);
        if (g || PyErr_Occurred())
            return g;
    }
    return slow_claimed((PyObject *)P, "_enter_slow", args, nargsf, kwnames);
}

static PyObject *Primitive_exit(Primitive *P, PyObject *const *args, size_t nargsf,
                                PyObject *kwnames)
{
    Call c;
    int ok = fast_release(P, &c, 1);
    call_done(&c);
    if (ok)
        Py_RETURN_NONE;
    return slow((PyObject *)P, "_exit_slow", args, nargsf, kwnames);
}

static PyMethodDef Primitive_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))Primitive_acquire, METH_FASTCALL | METH_KEYWORDS,
     "acquire(...) -> bool: take units (see the class's documentation)."},
    {"release", (PyCFunction)(void (*)(void))Primitive_release, METH_FASTCALL | METH_KEYWORDS,
     "release(...): give units back (see the class's documentation)."},
    {"__enter__", (PyCFunction)(void (*)(void))Primitive_enter, METH_FASTCALL | METH_KEYWORDS,
     "Acquire one unit; the Lease."},
    {"__exit__", (PyCFunction)(void (*)(void))Primitive_exit, METH_FASTCALL | METH_KEYWORDS,
     "Release what __enter__ took."},
    {"_fast_attach", (PyCFunction)Primitive_attach, METH_O,
     "use this shm Ledger for the fast path (None: never)"},
    {NULL}};

static PyTypeObject PrimitiveType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ipcsem._shm._ledger.Primitive",
    .tp_basicsize = sizeof(Primitive),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Base of ipcsem.Semaphore and ipcsem.Mutex: a C fast path for their hot methods.",
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)Primitive_dealloc,
    .tp_traverse = (traverseproc)Primitive_traverse,
    .tp_clear = (inquiry)Primitive_clear,
    .tp_methods = Primitive_methods,
};

/* Hold(primitive, units, timeout, priority, deadlock): what sem.hold(...)
 * returns.  A C type for the same reason as the fast path's __enter__: its
 * __enter__ must deliver the grant without a Python frame in between
 * (slow_claimed); the work is the primitive's _hold_enter / _hold_exit. */
typedef struct {
    PyObject_HEAD
    PyObject *prim, *args, *lease;
} Hold;

static int Hold_init(Hold *H, PyObject *args, PyObject *kwds)
{
    PyObject *prim, *units, *timeout, *priority, *deadlock;
    if (!PyArg_ParseTuple(args, "OOOOO", &prim, &units, &timeout, &priority, &deadlock))
        return -1;
    Py_XSETREF(H->prim, Py_NewRef(prim));
    Py_XSETREF(H->args, PyTuple_Pack(4, units, timeout, priority, deadlock));
    return H->args ? 0 : -1;
}

static void Hold_dealloc(Hold *H)
{
    PyObject_GC_UnTrack(H);
    Py_CLEAR(H->prim);
    Py_CLEAR(H->args);
    Py_CLEAR(H->lease);
    Py_TYPE(H)->tp_free((PyObject *)H);
}

static int Hold_traverse(Hold *H, visitproc visit, void *arg)
{
    Py_VISIT(H->prim);
    Py_VISIT(H->args);
    Py_VISIT(H->lease);
    return 0;
}

static PyObject *Hold_enter(Hold *H, PyObject *Py_UNUSED(ignored))
{
    if (!H->prim) {
        PyErr_SetString(PyExc_TypeError, "Hold is not initialised");
        return NULL;
    }
    PyObject *stack[4];
    for (int i = 0; i < 4; i++)
        stack[i] = PyTuple_GET_ITEM(H->args, i);
    PyObject *lease = slow_claimed(H->prim, "_hold_enter", stack, 4, NULL);
    if (lease)
        Py_XSETREF(H->lease, Py_NewRef(lease));
    return lease;
}

static PyObject *Hold_exit(Hold *H, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *lease = H->lease ? H->lease : Py_None;
    PyObject *stack[3] = {H->prim, PyTuple_GET_ITEM(H->args, 0), lease};
    PyObject *meth = PyUnicode_InternFromString("_hold_exit");
    PyObject *r = meth ? PyObject_VectorcallMethod(meth, stack, 3, NULL) : NULL;
    Py_XDECREF(meth);
    Py_CLEAR(H->lease);
    return r;
}

static PyMethodDef Hold_methods[] = {
    {"__enter__", (PyCFunction)Hold_enter, METH_NOARGS, "acquire; the Lease (Timeout if not in time)"},
    {"__exit__", (PyCFunction)(void (*)(void))Hold_exit, METH_FASTCALL, "release what __enter__ took"},
    {NULL}};

static PyTypeObject HoldType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ipcsem._shm._ledger.Hold",
    .tp_basicsize = sizeof(Hold),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "with sem.hold(units, timeout=...) as lease: ...",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Hold_init,
    .tp_dealloc = (destructor)Hold_dealloc,
    .tp_traverse = (traverseproc)Hold_traverse,
    .tp_methods = Hold_methods,
};

/* ------------------------------------------------------ module functions */

/* initialize(buffer, capacity, initial, max_holders, max_waiters, policy,
 * creator_pid, nonce) -> size.  Lay out a fresh segment.  The magic is stored
 * last: until then every opener sees "not initialised" and waits (the
 * creator holds the creation flock). */
static PyObject *mod_initialize(PyObject *mod, PyObject *args)
{
    Py_buffer view;
    long long cap, initial, mh, mw, policy, creator, nonce;
    if (!PyArg_ParseTuple(args, "w*LLLLLLL", &view, &cap, &initial, &mh, &mw, &policy, &creator,
                          &nonce))
        return NULL;
    PyObject *result = NULL;
    Geometry g;
    if (cap < 1 || cap > MAX_CAPACITY || initial < 0 || initial > cap || mh < 1 ||
        mh > MAX_SLOTS || mw < 1 || mw > MAX_SLOTS || (policy & ~P_KNOWN) ||
        ((policy & P_SLOTS) && cap > MAX_SLOTTED_CAPACITY) ||
        ((policy & P_MUTEX) && (cap != 1 || initial != 1))) {
        PyErr_SetString(PyExc_ValueError, "bad ledger parameters");
        goto done;
    }
    geo_total(cap, mh, mw, policy, &g);
    if (view.len < g.total) {
        PyErr_Format(PyExc_ValueError, "buffer of %zd bytes, ledger needs %lld", view.len,
                     (long long)g.total);
        goto done;
    }
    char *base = view.buf;
    volatile int64_t *hdr = (volatile int64_t *)base;
    st(hdr + H_MAGIC, 0);
    memset(base + 8, 0, g.total - 8);
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
    hdr[H_TOTAL_SIZE] = g.total;
    hdr[H_CAPACITY] = cap;
    hdr[H_MAX_HOLDERS] = mh;
    hdr[H_MAX_WAITERS] = mw;
    hdr[H_HOLDERS_OFF] = g.holders_off;
    hdr[H_WAITERS_OFF] = g.waiters_off;
    hdr[H_UNITS_OFF] = (policy & P_SLOTS) ? g.units_off : 0;
    hdr[H_UNDO_OFF] = g.undo_off;
    hdr[H_UNDO_MAX] = g.undo_max;
    hdr[H_CREATED_NS] = now_ns();
    hdr[H_CREATOR_PID] = creator;
    hdr[H_INITIAL] = initial;
    hdr[H_POLICY] = policy;
    hdr[H_NONCE] = nonce;
    hdr[H_AVAILABLE] = initial;
    hdr[H_UNOWNED] = cap - initial; /* created "taken": the producer/consumer start */
    hdr[H_Q_HEAD] = hdr[H_Q_TAIL] = hdr[H_FREE_HEAD] = -1;
    /* Tokens start at the creation time in ns: a semaphore re-created under
     * the same name (after rm, a reboot) keeps handing out larger tokens, so
     * a resource fenced by name never sees an old number again (as long as
     * the clock does not go back; grants are far fewer than 1e9 a second). */
    hdr[H_NEXT_TOKEN] = hdr[H_CREATED_NS];
    if (policy & P_SLOTS) /* units initial..cap-1 start out unowned */
        for (long long u = initial; u < cap; u++)
            ((volatile int64_t *)(base + g.units_off))[u * UNIT_WORDS + UN_OWNER] = -1;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    st(hdr + H_MAGIC, (int64_t)LEDGER_MAGIC);
    result = PyLong_FromLongLong(g.total);
done:
    PyBuffer_Release(&view);
    return result;
}

/* segment_size(capacity, max_holders, max_waiters, policy) -> bytes */
static PyObject *mod_segment_size(PyObject *mod, PyObject *args)
{
    long long cap, mh, mw, policy;
    if (!PyArg_ParseTuple(args, "LLLL", &cap, &mh, &mw, &policy))
        return NULL;
    if (cap < 1 || cap > MAX_CAPACITY || mh < 1 || mh > MAX_SLOTS || mw < 1 || mw > MAX_SLOTS) {
        PyErr_SetString(PyExc_ValueError, "bad ledger parameters");
        return NULL;
    }
    Geometry g;
    return PyLong_FromLongLong(geo_total(cap, mh, mw, policy, &g));
}

/* extent(header_bytes) -> dict of the regions to pread for a view:
 * {"holders": (off, len), "waiters": (off, len), "units": (off, len),
 *  "total": size}.  Lengths stop at the high-water marks. */
static PyObject *mod_extent(PyObject *mod, PyObject *arg)
{
    Py_buffer b;
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *r = NULL;
    if (b.len < HEADER_SIZE) {
        set_corrupt("segment is smaller than a ledger header");
        goto done;
    }
    int64_t hdr[H_NFIELDS];
    memcpy(hdr, b.buf, sizeof hdr);
    Geometry g;
    const char *why = geometry_of(hdr, &g);
    if (why) {
        set_corrupt(why);
        goto done;
    }
    int64_t hh = hdr[H_HOLDER_HWM], wh = hdr[H_WAITER_HWM];
    hh = hh < 0 ? 0 : (hh > g.max_holders ? g.max_holders : hh);
    wh = wh < 0 ? 0 : (wh > g.max_waiters ? g.max_waiters : wh);
    int64_t ulen = (g.policy & P_SLOTS) ? g.capacity * UNIT_WORDS * 8 : 0;
    r = Py_BuildValue("{s(LL)s(LL)s(LL)sL}", "holders", (long long)g.holders_off,
                      (long long)(hh * HOLDER_WORDS * 8), "waiters", (long long)g.waiters_off,
                      (long long)(wh * WAITER_WORDS * 8), "units", (long long)g.units_off,
                      (long long)ulen, "total", (long long)g.total);
done:
    PyBuffer_Release(&b);
    return r;
}

/* parse(header, holders, waiters, units, consistent) -> Snapshot from bytes
 * read with pread (a read-only view: nothing is mapped, so a truncating
 * peer cannot SIGBUS us; every value is validated as it is used). */
static PyObject *mod_parse(PyObject *mod, PyObject *args)
{
    Py_buffer h, ho, wa, un;
    int consistent;
    if (!PyArg_ParseTuple(args, "y*y*y*y*p", &h, &ho, &wa, &un, &consistent))
        return NULL;
    Regions R = {h.buf, h.len, ho.buf, ho.len, wa.buf, wa.len, un.buf, un.len};
    PyObject *r = parse_regions(&R, consistent, 0);
    PyBuffer_Release(&h);
    PyBuffer_Release(&ho);
    PyBuffer_Release(&wa);
    PyBuffer_Release(&un);
    return r;
}

/* seqlock_words(header) -> (commits, undo_count): what a pread view compares
 * before and after its copy. */
static PyObject *mod_seqlock_words(PyObject *mod, PyObject *arg)
{
    Py_buffer b;
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *r = NULL;
    if (b.len < HEADER_SIZE)
        set_corrupt("segment is smaller than a ledger header");
    else
        r = Py_BuildValue("(LL)", (long long)((int64_t *)b.buf)[H_COMMITS],
                          (long long)((int64_t *)b.buf)[UNDO_COUNT_OFF / 8]);
    PyBuffer_Release(&b);
    return r;
}

static PyObject *mod_set_identity(PyObject *mod, PyObject *args)
{
    long long pid, start;
    if (!PyArg_ParseTuple(args, "LL", &pid, &start))
        return NULL;
    self_pid = pid;
    self_start = start;
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

/* The notifier's own wake-up word (process-private): poke_bells() rings it
 * when the set of bells to wait on changes. */
static uint32_t notifier_word = 0;

static PyObject *mod_poke_bells(PyObject *mod, PyObject *Py_UNUSED(ignored))
{
    __atomic_fetch_add(&notifier_word, 1, __ATOMIC_RELEASE);
    syscall(SYS_futex, &notifier_word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
    Py_RETURN_NONE;
}

static PyObject *mod_notifier_word(PyObject *mod, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromUnsignedLong(__atomic_load_n(&notifier_word, __ATOMIC_ACQUIRE));
}

/* wait_bells([(ledger, slot, seen), ...], notifier_seen, seconds) -> bool
 * Sleep (without the GIL) until one of the process bells or the notifier
 * word no longer reads what was seen, or `seconds` pass; False on timeout.
 * futex_waitv (Linux 5.16+) waits on up to 127 bells at once; without it,
 * or beyond, we poll every millisecond. */
static PyObject *mod_wait_bells(PyObject *mod, PyObject *args)
{
    PyObject *items;
    unsigned long nseen;
    double seconds;
    if (!PyArg_ParseTuple(args, "O!kd", &PyList_Type, &items, &nseen, &seconds))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(items);
    struct futex_waitv wv[FUTEX_WAITV_MAX];
    volatile uint32_t *words[FUTEX_WAITV_MAX];
    uint32_t seen[FUTEX_WAITV_MAX];
    int count = 0;
    wv[count] = (struct futex_waitv){.val = (uint32_t)nseen, .uaddr = (uintptr_t)&notifier_word,
                                     .flags = FUTEX_32 | FUTEX_PRIVATE_FLAG};
    words[count] = &notifier_word;
    seen[count++] = (uint32_t)nseen;
    PyObject *keep = PyList_New(0); /* the ledgers stay alive while we sleep */
    if (!keep)
        return NULL;
    int overflow = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *t = PyList_GET_ITEM(items, i);
        PyObject *lo;
        long long slot;
        unsigned long val;
        if (!PyArg_ParseTuple(t, "O!Lk", &LedgerType, &lo, &slot, &val)) {
            Py_DECREF(keep);
            return NULL;
        }
        Ledger *L = (Ledger *)lo;
        if (!L->v.base || !holder_ok(&L->v, slot))
            continue;
        if (count == FUTEX_WAITV_MAX) {
            overflow = 1;
            continue;
        }
        if (PyList_Append(keep, lo) < 0) {
            Py_DECREF(keep);
            return NULL;
        }
        L->active++;
        volatile uint32_t *w = bell_word(HOLDER(&L->v, slot, HO_BELL));
        wv[count] = (struct futex_waitv){.val = (uint32_t)val, .uaddr = (uintptr_t)w,
                                         .flags = FUTEX_32};
        words[count] = w;
        seen[count++] = (uint32_t)val;
    }
    int64_t deadline = mono_ns() + (int64_t)(seconds * 1e9);
    int changed = 0;
    Py_BEGIN_ALLOW_THREADS
    for (;;) {
        for (int i = 0; i < count; i++)
            if (__atomic_load_n(words[i], __ATOMIC_ACQUIRE) != seen[i])
                changed = 1;
        if (changed || mono_ns() >= deadline)
            break;
        int64_t until = deadline;
        if (overflow && until > mono_ns() + 1000000)
            until = mono_ns() + 1000000;
        struct timespec ts = ts_of(until);
        long rc = syscall(SYS_futex_waitv, wv, count, 0, &ts, CLOCK_MONOTONIC);
        if (rc >= 0) {
            changed = 1;
            break;
        }
        if (errno == ENOSYS) { /* before Linux 5.16: poll */
            overflow = 1;
            struct timespec nap = {0, 1000000};
            nanosleep(&nap, NULL);
        } else if (errno != EAGAIN && errno != ETIMEDOUT && errno != EINTR) {
            struct timespec nap = {0, 1000000};
            nanosleep(&nap, NULL);
        }
    }
    Py_END_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(keep); i++)
        ((Ledger *)PyList_GET_ITEM(keep, i))->active--;
    Py_DECREF(keep);
    return PyBool_FromLong(changed);
}

static PyObject *mod_tid(PyObject *mod, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLongLong(my_tid());
}

static PyMethodDef module_methods[] = {
    {"initialize", mod_initialize, METH_VARARGS, "lay out a fresh ledger in a buffer"},
    {"segment_size", mod_segment_size, METH_VARARGS,
     "bytes needed for (capacity, max_holders, max_waiters, policy)"},
    {"extent", mod_extent, METH_O, "regions of a ledger to read, from its header bytes"},
    {"parse", mod_parse, METH_VARARGS, "Snapshot from pread copies of the regions"},
    {"seqlock_words", mod_seqlock_words, METH_O, "(commits, undo_count) of header bytes"},
    {"set_identity", mod_set_identity, METH_VARARGS,
     "(pid, start) of this process: the lock owner tools see, the fast path's identity"},
    {"tid", mod_tid, METH_NOARGS, "the calling thread's native id (cached per thread)"},
    {"wait_bells", mod_wait_bells, METH_VARARGS, "sleep until a process bell rings"},
    {"poke_bells", mod_poke_bells, METH_NOARGS, "wake the notifier (the set of bells changed)"},
    {"notifier_word", mod_notifier_word, METH_NOARGS, "the notifier's wake-up word now"},
    {"set_crash_point", mod_set_crash_point, METH_O,
     "TEST HOOK: SIGKILL this process at the Nth crash point inside a transaction (-1: off)"},
    {NULL}};

static struct PyModuleDef ledger_module = {
    PyModuleDef_HEAD_INIT, "ipcsem._shm._ledger", "Shared-memory ledger transactions.", -1,
    module_methods};

static int add_type(PyObject *m, const char *name, PyTypeObject *t)
{
    return PyModule_AddObjectRef(m, name, (PyObject *)t);
}

static void atfork_child(void)
{
    self_pid = getpid();
    self_start = 0; /* the facade's fast path waits for Python to set the child's identity */
    tls_tid = 0; /* the forking thread is the child's only thread, with a new id */
    watch_prepared = 0; /* no watcher thread in the child */
}

PyMODINIT_FUNC PyInit__ledger(void)
{
    self_pid = getpid();
    /* The CPUs this process may run on (taskset), at most those online. */
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    cpu_set_t allowed;
    if (sched_getaffinity(0, sizeof allowed, &allowed) == 0 && CPU_COUNT(&allowed) < cpus)
        cpus = CPU_COUNT(&allowed);
    online_cpus = cpus > 1 ? (int)(cpus > INT_MAX ? INT_MAX : cpus) : 1;
    pthread_atfork(NULL, NULL, atfork_child);
    if (PyType_Ready(&LedgerType) < 0 || PyType_Ready(&PrimitiveType) < 0 ||
        PyType_Ready(&HoldType) < 0)
        return NULL;
    /* ipcsem's typed errors live in one place, ipcsem._errors; the C layer
     * raises them directly (the Python layer adds the name and path). */
    PyObject *errors = PyImport_ImportModule("ipcsem._errors");
    if (!errors)
        return NULL;
    CorruptError = PyObject_GetAttrString(errors, "Corrupt");
    FullError = PyObject_GetAttrString(errors, "LedgerFull");
    UnlinkedError = PyObject_GetAttrString(errors, "Unlinked");
    NotOwnerError = PyObject_GetAttrString(errors, "NotOwner");
    DeadlockError = PyObject_GetAttrString(errors, "DeadlockDetected");
    WedgedError = PyObject_GetAttrString(errors, "Wedged");
    ClosedError = PyObject_GetAttrString(errors, "Closed");
    IpcsemError = PyObject_GetAttrString(errors, "IpcsemError");
    Py_DECREF(errors);
    if (!CorruptError || !FullError || !UnlinkedError || !NotOwnerError || !DeadlockError ||
        !WedgedError || !ClosedError || !IpcsemError)
        return NULL;
    empty_tuple = PyTuple_New(0);
    HolderRowType = PyStructSequence_NewType(&holder_desc);
    WaiterRowType = PyStructSequence_NewType(&waiter_desc);
    HeaderType = PyStructSequence_NewType(&header_desc);
    SnapshotType = PyStructSequence_NewType(&snapshot_desc);
    if (PyType_Ready(&LeaseType) < 0)
        return NULL;
    if (!empty_tuple || !HolderRowType || !WaiterRowType || !HeaderType ||
        !SnapshotType)
        return NULL;
    PyObject *m = PyModule_Create(&ledger_module);
    if (!m)
        return NULL;
    if (add_type(m, "Ledger", &LedgerType) < 0 || add_type(m, "Grant", &LeaseType) < 0 ||
        add_type(m, "Primitive", &PrimitiveType) < 0 || add_type(m, "Hold", &HoldType) < 0 ||
        add_type(m, "HolderRow", HolderRowType) < 0 || add_type(m, "WaiterRow", WaiterRowType) < 0 ||
        add_type(m, "Header", HeaderType) < 0 || add_type(m, "Snapshot", SnapshotType) < 0)
        return NULL;
    PyModule_AddIntConstant(m, "LAYOUT_VERSION", LAYOUT_VERSION);
    PyModule_AddIntConstant(m, "HEADER_SIZE", HEADER_SIZE);
    PyModule_AddIntConstant(m, "WAITING", W_WAITING);
    PyModule_AddIntConstant(m, "GRANTED", W_GRANTED);
    PyModule_AddIntConstant(m, "P_SLOTS", P_SLOTS);
    PyModule_AddIntConstant(m, "P_MUTEX", P_MUTEX);
    PyModule_AddIntConstant(m, "P_REENTRANT", P_REENTRANT);
    PyModule_AddIntConstant(m, "P_UNFAIR", P_UNFAIR);
    PyModule_AddIntConstant(m, "P_PI", P_PI);
    PyModule_AddIntConstant(m, "WF_ASYNC", WF_ASYNC);
    PyModule_AddIntConstant(m, "WF_DEADLOCK_RAISE", WF_DEADLOCK_RAISE);
    PyModule_AddIntConstant(m, "WF_PARKED", WF_PARKED);
    PyModule_AddIntConstant(m, "LOCK_FOREVER", LOCK_FOREVER);
    PyModule_AddIntConstant(m, "LOCK_UNINTERRUPTED", LOCK_UNINTERRUPTED);
    PyModule_AddIntConstant(m, "OVERTAKE_LIMIT", OVERTAKE_LIMIT);
    PyModule_AddIntConstant(m, "MAX_SLOTTED_CAPACITY", MAX_SLOTTED_CAPACITY);
    PyModule_AddObject(m, "MAGIC", PyLong_FromUnsignedLongLong(LEDGER_MAGIC));
    PyModule_AddObject(m, "MAX_CAPACITY", PyLong_FromLongLong(MAX_CAPACITY));
    PyModule_AddIntConstant(m, "MAX_SLOTS", MAX_SLOTS);
    return m;
}
