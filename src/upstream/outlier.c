/*
 * Passive outlier ejection: the proxy reports each try's outcome from its worker thread, this
 * module counts consecutive failures per target and sets/clears SL_TARGET_EJECTED, which the
 * balancers read. A state machine per target (in service -> ejected -> in service) driven by
 * CAS on ejected_until_ms, plus one upstream-wide counter of ejected targets for the cap.
 */
#include "upstream/outlier.h"

#include <stdlib.h>

#include "common/bug.h"

struct sl_outlier {
    sl_target_state_t *states;
    sl_outlier_target_t *rt;
    bool own_rt;
    bool enabled;
    size_t n;
    size_t max_ejected;
    uint32_t threshold;
    uint64_t eject_for_ms;
    /* Targets whose ejected_until_ms is non-zero (ejected, or being ejected/un-ejected). A slot is
     * reserved here by CAS before a target is claimed, so no interleaving exceeds the cap. */
    atomic_size_t nejected;
};

static uint64_t eject_duration(const sl_outlier_t *o, unsigned rank)
{
    uint64_t cap = o->eject_for_ms * 10;
    uint64_t d = o->eject_for_ms;
    /* Doubling stops at the cap, so the shift never overflows whatever the rank. */
    for (unsigned i = 1; i < rank && d < cap; i++)
        d *= 2;
    return SL_MIN(d, cap);
}

sl_outlier_t *sl_outlier_create(const sl_upstream_conf_t *conf, sl_target_state_t *states, size_t n,
                                sl_outlier_target_t *rt)
{
    sl_outlier_t *o = sl_xcalloc(1, sizeof(*o));
    uint32_t pct = SL_MIN(conf->health_passive.max_ejected_percent, 100u);

    o->states = states;
    o->n = n;
    o->own_rt = rt == NULL;
    o->rt = rt ? rt : sl_xcalloc(n ? n : 1, sizeof(*rt));
    o->enabled = conf->health_passive.enabled;
    o->threshold = SL_MAX(conf->health_passive.consecutive_failures, 1u);
    o->eject_for_ms = conf->health_passive.eject_for_ms;
    /* Floor: a share of the targets is a promise about capacity, so never round it up. */
    o->max_ejected = n * pct / 100;

    size_t held = 0;
    for (size_t i = 0; i < n; i++)
        if (atomic_load(&o->rt[i].ejected_until_ms) != 0)
            held++;
    atomic_init(&o->nejected, held);
    return o;
}

void sl_outlier_destroy(sl_outlier_t *o)
{
    if (o == NULL)
        return;
    if (o->own_rt)
        free(o->rt);
    free(o);
}

/* Ends t's ejection if it expired at now_ms. The CAS to BUSY makes exactly one thread (tick or a
 * lazy report) own the transition; the flag is cleared while BUSY still keeps any re-ejection
 * out, so a fresh ejection's flag can never be cleared by a late un-ejecter. */
static bool try_unject(sl_outlier_t *o, size_t i, uint64_t now_ms)
{
    sl_outlier_target_t *t = &o->rt[i];
    uint_fast64_t until = atomic_load(&t->ejected_until_ms);

    if (until == 0 || until == SL_OUTLIER_BUSY || now_ms < until)
        return false;
    if (!atomic_compare_exchange_strong(&t->ejected_until_ms, &until, SL_OUTLIER_BUSY))
        return false;
    atomic_fetch_and(&o->states[i].flags, ~SL_TARGET_EJECTED);
    atomic_store(&t->last_until_ms, until);
    atomic_store(&t->consecutive, 0);
    atomic_fetch_sub(&o->nejected, 1);
    atomic_store(&t->ejected_until_ms, 0);
    return true;
}

static bool reserve_slot(sl_outlier_t *o)
{
    size_t cur = atomic_load(&o->nejected);
    do {
        if (cur >= o->max_ejected)
            return false;
    } while (!atomic_compare_exchange_weak(&o->nejected, &cur, cur + 1));
    return true;
}

enum sl_outlier_result sl_outlier_report(sl_outlier_t *o, size_t i, bool failure, uint64_t now_ms)
{
    SL_DEBUG_BUG_ON(i >= o->n);
    if (!o->enabled)
        return SL_OUTLIER_NONE;
    sl_outlier_target_t *t = &o->rt[i];

    try_unject(o, i, now_ms);
    if (!failure) {
        /* Skip the store when already 0: keeps a healthy target's line shared-clean. */
        if (atomic_load_explicit(&t->consecutive, memory_order_relaxed) != 0)
            atomic_store(&t->consecutive, 0);
        return SL_OUTLIER_NONE;
    }
    /* Failures of exchanges sent before the ejection say nothing new about the target. */
    if (atomic_load(&t->ejected_until_ms) != 0)
        return SL_OUTLIER_NONE;
    if (atomic_fetch_add(&t->consecutive, 1) + 1 < o->threshold)
        return SL_OUTLIER_NONE;

    /* Slot first, then the target: a thread holding a slot but losing the target gives the slot
     * back, so the counter only ever overstates the ejected targets for a moment, never under. */
    if (!reserve_slot(o))
        return SL_OUTLIER_CAPPED;
    uint_fast64_t zero = 0;
    if (!atomic_compare_exchange_strong(&t->ejected_until_ms, &zero, SL_OUTLIER_BUSY)) {
        atomic_fetch_sub(&o->nejected, 1);
        return SL_OUTLIER_NONE;
    }
    uint64_t last = atomic_load(&t->last_until_ms);
    unsigned rank = atomic_load(&t->ejections);
    /* Decay: a target that behaved for a whole maximum ejection starts a new streak. */
    if (rank == 0 || (last != 0 && now_ms >= last && now_ms - last >= o->eject_for_ms * 10))
        rank = 0;
    rank = rank < 64 ? rank + 1 : rank;
    atomic_store(&t->ejections, rank);
    atomic_store(&t->consecutive, 0);
    atomic_fetch_or(&o->states[i].flags, SL_TARGET_EJECTED);
    uint64_t until = now_ms + eject_duration(o, rank);
    /* 0 and BUSY are reserved values; a clock that large is not a real monotonic clock. */
    if (until == 0 || until == SL_OUTLIER_BUSY)
        until = SL_OUTLIER_BUSY - 1;
    atomic_store(&t->ejected_until_ms, until);
    return SL_OUTLIER_EJECTED;
}

size_t sl_outlier_tick(sl_outlier_t *o, uint64_t now_ms)
{
    size_t cleared = 0;
    for (size_t i = 0; i < o->n; i++)
        cleared += try_unject(o, i, now_ms);
    return cleared;
}

uint64_t sl_outlier_ejected_until(const sl_outlier_t *o, size_t i)
{
    SL_DEBUG_BUG_ON(i >= o->n);
    uint64_t until = atomic_load(&o->rt[i].ejected_until_ms);
    return until == SL_OUTLIER_BUSY ? 0 : until;
}

size_t sl_outlier_ejected_count(const sl_outlier_t *o)
{
    return atomic_load(&((sl_outlier_t *)o)->nejected);
}

size_t sl_outlier_max_ejected(const sl_outlier_t *o)
{
    return o->max_ejected;
}
