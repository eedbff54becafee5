/*
 * Passive health (`health.passive`): outlier ejection from the outcomes of real exchanges. The
 * proxy reports every finished try to a target (failure = connect failure, reset, timeout or
 * 5xx); after `consecutive_failures` failures in a row the target is ejected, i.e. its
 * SL_TARGET_EJECTED flag is set and every balancer skips it, for eject_for × 2^(k-1) (k = the
 * ejection's rank in the current streak), capped at 10 × eject_for. A success resets the
 * consecutive count. At most floor(ntargets × max_ejected_percent / 100) targets are ejected at
 * once (so 1 target at 50% may never be ejected; 0 is always allowed). An ejection ends when its
 * time has passed: sl_outlier_tick clears all expired ones, and a report on an expired target
 * clears it lazily. The streak (k) decays: an ejection that starts 10 × eject_for or more after
 * the previous one ended counts as the first again. See docs/internals/resilience.md.
 *
 * Clock: every `now_ms` is a monotonic time in milliseconds (uv_now, sl_time_mono_ns / 1e6, or
 * an injected clock in tests); only differences matter.
 *
 * Memory: the per-target runtime state is a plain array of sl_outlier_target_t, zero = initial.
 * The caller may own it (pass it to sl_outlier_create) so that it survives a config reload next to
 * the sl_target_state_t array, or pass NULL and let the outlier own a zeroed one. The caller owns
 * `states` and keeps both arrays alive, at the same indices as conf->targets, for as long as the
 * outlier. The outlier copies the thresholds it needs and does not keep `conf`.
 *
 * Threads: create and destroy on one thread; sl_outlier_report from any number of threads at
 * once, concurrently with sl_outlier_tick (usually a main-thread timer every 100 ms to 1 s).
 * Lock-free (atomics and CAS) and allocation-free after create.
 */
#ifndef SL_UPSTREAM_OUTLIER_H
#define SL_UPSTREAM_OUTLIER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config/config.h"
#include "upstream/balancer.h"

/* ejected_until_ms while one thread is ejecting or un-ejecting the target: it owns the
 * target's ejection fields until it stores the final value. */
#define SL_OUTLIER_BUSY UINT64_MAX

/* Runtime passive-health state of one target; all zero = never failed, not ejected. */
typedef struct sl_outlier_target {
    atomic_uint consecutive;               /* failures in a row since the last success */
    atomic_uint ejections;                 /* rank of the last ejection in the current streak */
    atomic_uint_fast64_t ejected_until_ms; /* 0 = not ejected, else the end; or SL_OUTLIER_BUSY */
    atomic_uint_fast64_t last_until_ms;    /* end of the previous ejection (for the decay) */
} sl_outlier_target_t;

/* What a report did, for the caller's log line. */
enum sl_outlier_result {
    SL_OUTLIER_NONE = 0, /* nothing changed (or passive health is disabled) */
    SL_OUTLIER_EJECTED,  /* this report ejected the target; see sl_outlier_ejected_until */
    SL_OUTLIER_CAPPED,   /* the target reached the threshold but max_ejected_percent forbids more */
};

typedef struct sl_outlier sl_outlier_t;

/**
 * Builds the passive-health state of `conf`'s upstream over `states` (n entries, n ==
 * conf->ntargets) and `rt` (n entries, or NULL: owned zeroed array). A caller-provided `rt` may
 * hold ejections from a previous generation: they are counted towards the cap. The previous
 * generation should stop reporting before this one starts (the cap counter is per object).
 * Returns the object (free with sl_outlier_destroy); allocation failure aborts. With
 * conf->health_passive.enabled false every report is a no-op returning SL_OUTLIER_NONE.
 */
sl_outlier_t *sl_outlier_create(const sl_upstream_conf_t *conf, sl_target_state_t *states, size_t n,
                                sl_outlier_target_t *rt);

/** Frees `o` (NULL is ignored) and its own array, not `states` nor a caller-provided `rt`. Flags
 * stay as they are, so an ejection outlives a reload when the arrays do. */
void sl_outlier_destroy(sl_outlier_t *o);

/**
 * Records one finished try to `target` (< n). A failure reported while the target is ejected is
 * ignored (it was sent before the ejection). Returns SL_OUTLIER_EJECTED exactly once per
 * ejection, to the thread whose report caused it. Any thread; lock-free, no allocation.
 */
enum sl_outlier_result sl_outlier_report(sl_outlier_t *o, size_t target, bool failure, uint64_t now_ms);

/** Clears every ejection whose time has passed; returns how many it cleared. Any thread. */
size_t sl_outlier_tick(sl_outlier_t *o, uint64_t now_ms);

/** When `target`'s ejection ends (ms, same clock), 0 when it is not ejected. For logs, admin. */
uint64_t sl_outlier_ejected_until(const sl_outlier_t *o, size_t target);

/** Targets ejected now, and the most that may be (floor(n × max_ejected_percent / 100)). */
size_t sl_outlier_ejected_count(const sl_outlier_t *o);
size_t sl_outlier_max_ejected(const sl_outlier_t *o);

#endif
