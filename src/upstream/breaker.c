/*
 * Circuit breakers: per-target closed/open/half-open state machines fed by the proxy's
 * outcome reports from every worker, read by sl_breaker_allow before a try and by admin and
 * metrics. Each target's state is one packed 64-bit word changed only by CAS, and its sliding
 * window is a ring of packed bucket words, so no transition needs a lock or can be half-seen.
 */
#include "upstream/breaker.h"

#include <stdlib.h>

#include "common/bug.h"

/* State word: bits 0-1 state, 2-7 re-open level; OPEN: bits 8-63 open-until (ms);
 * HALF_OPEN: bits 8-27 probes let through, bits 28-47 probes succeeded. CLOSED: level 0. */
#define ST_MASK     UINT64_C(0x3)
#define LEVEL_SHIFT 2
#define LEVEL_MAX   63u
#define UNTIL_SHIFT 8
#define UNTIL_MAX   (UINT64_MAX >> UNTIL_SHIFT)
#define CNT_BITS    20
#define CNT_MAX     ((UINT64_C(1) << CNT_BITS) - 1)
#define ISSUED_SH   8
#define OK_SH       (ISSUED_SH + CNT_BITS)

/* Bucket word: bits 0-19 successes, 20-39 failures, 40-63 epoch (bucket number mod 2^24). Packing
 * the epoch with its counts lets a stale bucket be reset and counted into in one CAS, so no
 * outcome is lost or counted into the wrong period. 2^24 periods of >= 1 ms wrap after 4.6 h at
 * the very least (19 days with the default 1 s buckets); a bucket is only trusted when its
 * epoch is among the last SL_BREAKER_BUCKETS, so a wrap could only revive counts untouched for
 * exactly a multiple of that span. */
#define B_OK_SH    0
#define B_FAIL_SH  CNT_BITS
#define B_EP_SH    (2 * CNT_BITS)
#define B_EP_MASK  ((UINT64_C(1) << 24) - 1)
#define B_OK(w)    (((w) >> B_OK_SH) & CNT_MAX)
#define B_FAIL(w)  (((w) >> B_FAIL_SH) & CNT_MAX)
#define B_EPOCH(w) ((w) >> B_EP_SH)

struct sl_breaker {
    sl_target_state_t *states;
    sl_breaker_target_t *rt;
    bool own_rt;
    bool enabled;
    size_t n;
    double failure_ratio;
    uint32_t min_requests;
    uint32_t half_open;
    uint64_t bucket_ms;
    uint64_t open_for_ms;
};

static unsigned st_state(uint64_t w)
{
    return (unsigned)(w & ST_MASK);
}

static unsigned st_level(uint64_t w)
{
    return (unsigned)((w >> LEVEL_SHIFT) & LEVEL_MAX);
}

static uint64_t st_until(uint64_t w)
{
    return w >> UNTIL_SHIFT;
}

static uint64_t st_issued(uint64_t w)
{
    return (w >> ISSUED_SH) & CNT_MAX;
}

static uint64_t st_ok(uint64_t w)
{
    return (w >> OK_SH) & CNT_MAX;
}

static uint64_t mk_open(unsigned level, uint64_t until)
{
    return SL_BREAKER_OPEN | (uint64_t)level << LEVEL_SHIFT | SL_MIN(until, UNTIL_MAX) << UNTIL_SHIFT;
}

static uint64_t mk_half(unsigned level, uint64_t issued, uint64_t ok)
{
    return SL_BREAKER_HALF_OPEN | (uint64_t)level << LEVEL_SHIFT | issued << ISSUED_SH | ok << OK_SH;
}

sl_breaker_t *sl_breaker_create(const sl_upstream_conf_t *conf, sl_target_state_t *states, size_t n,
                                sl_breaker_target_t *rt)
{
    sl_breaker_t *b = sl_xcalloc(1, sizeof(*b));

    b->states = states;
    b->n = n;
    b->own_rt = rt == NULL;
    b->rt = rt ? rt : sl_xcalloc(n ? n : 1, sizeof(*rt));
    b->enabled = conf->circuit_breaker.enabled;
    b->failure_ratio = conf->circuit_breaker.failure_ratio;
    /* A ratio over zero outcomes means nothing: at least one is needed. */
    b->min_requests = SL_MAX(conf->circuit_breaker.min_requests, 1u);
    b->half_open = (uint32_t)SL_MIN(SL_MAX(conf->circuit_breaker.half_open_requests, 1u), CNT_MAX);
    b->bucket_ms = SL_MAX(conf->circuit_breaker.window_ms / SL_BREAKER_BUCKETS, UINT64_C(1));
    b->open_for_ms = conf->circuit_breaker.open_for_ms;
    return b;
}

void sl_breaker_destroy(sl_breaker_t *b)
{
    if (b == NULL)
        return;
    if (b->own_rt)
        free(b->rt);
    free(b);
}

static bool wants_flag(const sl_breaker_t *b, uint64_t w)
{
    switch (st_state(w)) {
    case SL_BREAKER_OPEN:
        return true;
    case SL_BREAKER_HALF_OPEN:
        /* All probes out: further picks would only be refused by allow. */
        return st_issued(w) >= b->half_open;
    default:
        return false;
    }
}

/* Makes the flag match the state word after a transition. Writers of different transitions may
 * race here; each re-reads the word after writing and repeats if it changed, so whoever writes
 * the flag last has checked it against the latest state: the flag converges to the truth. */
static void sync_flag(sl_breaker_t *b, size_t i)
{
    atomic_uint *flags = &b->states[i].flags;
    uint64_t w = atomic_load(&b->rt[i].state);
    for (;;) {
        if (wants_flag(b, w))
            atomic_fetch_or(flags, SL_TARGET_CIRCUIT_OPEN);
        else
            atomic_fetch_and(flags, ~SL_TARGET_CIRCUIT_OPEN);
        uint64_t again = atomic_load(&b->rt[i].state);
        if (again == w)
            return;
        w = again;
    }
}

static uint64_t open_duration(const sl_breaker_t *b, unsigned level)
{
    uint64_t cap = b->open_for_ms * 10;
    uint64_t d = b->open_for_ms;
    for (unsigned k = 0; k < level && d < cap; k++)
        d *= 2;
    return SL_MIN(d, cap);
}

/* Adds one outcome to the bucket of now_ms; returns the bucket's epoch. */
static uint64_t bucket_add(sl_breaker_t *b, sl_breaker_target_t *t, bool failure, uint64_t now_ms)
{
    uint64_t period = now_ms / b->bucket_ms;
    uint64_t epoch = period & B_EP_MASK;
    atomic_uint_fast64_t *slot = &t->buckets[period % SL_BREAKER_BUCKETS];
    uint64_t w = atomic_load_explicit(slot, memory_order_relaxed);
    uint64_t nw;
    do {
        uint64_t ok = 0, fail = 0;
        /* Another epoch in this slot is SL_BREAKER_BUCKETS periods old (or from a reload with
         * another window): start the bucket afresh in the same CAS. */
        if (B_EPOCH(w) == epoch) {
            ok = B_OK(w);
            fail = B_FAIL(w);
        }
        if (failure)
            fail++;
        else
            ok++;
        /* Over a million outcomes in one bucket: halve both, which keeps their ratio. */
        if (ok > CNT_MAX || fail > CNT_MAX) {
            ok /= 2;
            fail /= 2;
        }
        nw = epoch << B_EP_SH | fail << B_FAIL_SH | ok << B_OK_SH;
    } while (!atomic_compare_exchange_weak_explicit(slot, &w, nw, memory_order_relaxed, memory_order_relaxed));
    return epoch;
}

static bool window_trips(const sl_breaker_t *b, sl_breaker_target_t *t, uint64_t epoch)
{
    uint64_t ok = 0, fail = 0;
    for (size_t k = 0; k < SL_BREAKER_BUCKETS; k++) {
        uint64_t w = atomic_load_explicit(&t->buckets[k], memory_order_relaxed);
        /* Epochs compare modulo 2^24; "ahead of us" (another thread's slightly later clock)
         * wraps to a huge age and is left out, which only delays a trip by one report. */
        if (((epoch - B_EPOCH(w)) & B_EP_MASK) < SL_BREAKER_BUCKETS) {
            ok += B_OK(w);
            fail += B_FAIL(w);
        }
    }
    uint64_t total = ok + fail;
    return total >= b->min_requests && (double)fail >= b->failure_ratio * (double)total;
}

static void window_reset(sl_breaker_target_t *t)
{
    for (size_t k = 0; k < SL_BREAKER_BUCKETS; k++)
        atomic_store_explicit(&t->buckets[k], 0, memory_order_relaxed);
}

bool sl_breaker_allow(sl_breaker_t *b, size_t i, uint64_t now_ms)
{
    SL_DEBUG_BUG_ON(i >= b->n);
    if (!b->enabled)
        return true;
    sl_breaker_target_t *t = &b->rt[i];
    uint64_t w = atomic_load(&t->state);
    for (;;) {
        uint64_t nw;
        switch (st_state(w)) {
        case SL_BREAKER_OPEN:
            if (now_ms < st_until(w))
                return false;
            nw = mk_half(st_level(w), 1, 0);
            break;
        case SL_BREAKER_HALF_OPEN:
            if (st_issued(w) >= b->half_open)
                return false;
            nw = mk_half(st_level(w), st_issued(w) + 1, st_ok(w));
            break;
        default:
            return true;
        }
        if (atomic_compare_exchange_weak(&t->state, &w, nw)) {
            if (wants_flag(b, w) != wants_flag(b, nw))
                sync_flag(b, i);
            return true;
        }
    }
}

bool sl_breaker_report(sl_breaker_t *b, size_t i, bool failure, uint64_t now_ms)
{
    SL_DEBUG_BUG_ON(i >= b->n);
    if (!b->enabled)
        return false;
    sl_breaker_target_t *t = &b->rt[i];
    uint64_t w = atomic_load(&t->state);

    if (st_state(w) == SL_BREAKER_CLOSED) {
        uint64_t epoch = bucket_add(b, t, failure, now_ms);
        if (!window_trips(b, t, epoch))
            return false;
        /* Only a CLOSED word (level 0) can be replaced: losers saw another thread open it. */
        if (!atomic_compare_exchange_strong(&t->state, &w, mk_open(0, now_ms + open_duration(b, 0))))
            return false;
        sync_flag(b, i);
        return true;
    }

    for (;;) {
        uint64_t nw;
        bool opened = false;
        if (st_state(w) != SL_BREAKER_HALF_OPEN)
            return false; /* open: sent before it opened; closed: another report just closed it */
        if (failure) {
            unsigned level = SL_MIN(st_level(w) + 1, LEVEL_MAX);
            nw = mk_open(level, now_ms + open_duration(b, level));
            opened = true;
        } else if (st_ok(w) + 1 >= b->half_open) {
            nw = 0;
        } else {
            nw = mk_half(st_level(w), st_issued(w), st_ok(w) + 1);
        }
        if (atomic_compare_exchange_weak(&t->state, &w, nw)) {
            /* The failures that opened it are history once the probes passed. */
            if (nw == 0)
                window_reset(t);
            sync_flag(b, i);
            return opened;
        }
    }
}

void sl_breaker_tick(sl_breaker_t *b, uint64_t now_ms)
{
    if (!b->enabled)
        return;
    for (size_t i = 0; i < b->n; i++) {
        sl_breaker_target_t *t = &b->rt[i];
        uint64_t w = atomic_load(&t->state);
        if (st_state(w) != SL_BREAKER_OPEN || now_ms < st_until(w))
            continue;
        if (atomic_compare_exchange_strong(&t->state, &w, mk_half(st_level(w), 0, 0)))
            sync_flag(b, i);
    }
}

int sl_breaker_state(const sl_breaker_t *b, size_t i)
{
    SL_DEBUG_BUG_ON(i >= b->n);
    return (int)st_state(atomic_load(&b->rt[i].state));
}

uint32_t sl_breaker_retry_after_s(const sl_breaker_t *b, size_t i, uint64_t now_ms)
{
    SL_DEBUG_BUG_ON(i >= b->n);
    uint64_t w = atomic_load(&b->rt[i].state);
    switch (st_state(w)) {
    case SL_BREAKER_OPEN: {
        uint64_t until = st_until(w);
        uint64_t left = until > now_ms ? until - now_ms : 0;
        uint64_t s = (left + 999) / 1000;
        return (uint32_t)SL_MIN(SL_MAX(s, UINT64_C(1)), (uint64_t)UINT32_MAX);
    }
    case SL_BREAKER_HALF_OPEN:
        /* Probes are out; their answers come within a request's time, so "soon". */
        return 1;
    default:
        return 0;
    }
}

bool sl_breaker_any_open(const sl_breaker_t *b)
{
    for (size_t i = 0; i < b->n; i++)
        if (st_state(atomic_load(&b->rt[i].state)) != SL_BREAKER_CLOSED)
            return true;
    return false;
}

uint32_t sl_breaker_min_retry_after_s(const sl_breaker_t *b, uint64_t now_ms)
{
    uint32_t best = 0;
    for (size_t i = 0; i < b->n; i++) {
        uint32_t s = sl_breaker_retry_after_s(b, i, now_ms);
        if (s != 0 && (best == 0 || s < best))
            best = s;
    }
    return best;
}
