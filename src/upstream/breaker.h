/*
 * Circuit breaker (`circuit_breaker`), one per target. CLOSED: outcomes go into a sliding window
 * of SL_BREAKER_BUCKETS time buckets of window/SL_BREAKER_BUCKETS each; when the window holds at
 * least min_requests outcomes and failures/total >= failure_ratio the circuit OPENs: the target's
 * SL_TARGET_CIRCUIT_OPEN flag is set (balancers skip it) and sl_breaker_allow refuses it, for
 * open_for. Then HALF_OPEN: the flag is cleared and at most half_open_requests probes are
 * allowed (once they are all out the flag is set again so balancers stop picking it); if that
 * many probes succeed the circuit CLOSEs with an empty window, and any failure re-OPENs it for
 * open_for × 2^(k) (k = re-opens in a row without closing), capped at 10 × open_for.
 * See docs/internals/resilience.md.
 *
 * Clock: every `now_ms` is a monotonic time in milliseconds (uv_now or an injected clock).
 *
 * Memory: the per-target runtime state is a plain array of sl_breaker_target_t, zero = CLOSED
 * with an empty window. The caller may own it (pass it to sl_breaker_create) so that it survives
 * a reload next to the sl_target_state_t array, or pass NULL and let the breaker own a zeroed
 * one. The caller owns `states` and keeps both arrays alive, at conf->targets' indices, for as
 * long as the breaker. The breaker copies its thresholds and does not keep `conf`.
 *
 * Threads: create and destroy on one thread; every other function from any number of threads
 * at once (workers report and allow, a main-thread timer ticks, admin reads). Lock-free (each
 * transition is one CAS on a 64-bit state word) and allocation-free after create.
 */
#ifndef SL_UPSTREAM_BREAKER_H
#define SL_UPSTREAM_BREAKER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config/config.h"
#include "upstream/balancer.h"

#define SL_BREAKER_BUCKETS 10

/* sl_breaker_state values; the same numbers are the `sluice_circuit_state` metric. */
enum sl_breaker_state {
    SL_BREAKER_CLOSED = 0,
    SL_BREAKER_HALF_OPEN = 1,
    SL_BREAKER_OPEN = 2,
};

/* Runtime circuit state of one target; all zero = closed, empty window. Both fields are packed
 * words changed only by CAS (layout in breaker.c), so each change is one atomic step. */
typedef struct sl_breaker_target {
    atomic_uint_fast64_t state;                       /* state, re-open level, open-until or probe counts */
    atomic_uint_fast64_t buckets[SL_BREAKER_BUCKETS]; /* bucket epoch, failures, successes */
} sl_breaker_target_t;

typedef struct sl_breaker sl_breaker_t;

/**
 * Builds the breakers of `conf`'s upstream over `states` (n entries, n == conf->ntargets) and
 * `rt` (n entries, or NULL: owned zeroed array). Returns the object (free with
 * sl_breaker_destroy); allocation failure aborts. With conf->circuit_breaker.enabled false,
 * allow always says yes and report does nothing.
 */
sl_breaker_t *sl_breaker_create(const sl_upstream_conf_t *conf, sl_target_state_t *states, size_t n,
                                sl_breaker_target_t *rt);

/** Frees `b` (NULL is ignored) and its own array; not `states` nor a caller-provided `rt`. */
void sl_breaker_destroy(sl_breaker_t *b);

/**
 * May an exchange go to `target` now? Closed: yes. Open: no until open_for has passed, then the
 * circuit turns half-open and this call takes the first probe. Half-open: yes for at most
 * half_open_requests calls in total (each yes is a probe whose outcome must be reported). On
 * no, the proxy answers `circuit_open` 503 with Retry-After = sl_breaker_retry_after_s. Any thread.
 */
bool sl_breaker_allow(sl_breaker_t *b, size_t target, uint64_t now_ms);

/**
 * Records one finished try to `target`. Closed: counted in the window, and may open the
 * circuit (returns true then, once, to the thread that opened it: log it). Open: ignored (the
 * exchange was sent before). Half-open: a probe result; a failure re-opens (returns true).
 */
bool sl_breaker_report(sl_breaker_t *b, size_t target, bool failure, uint64_t now_ms);

/**
 * Turns every open circuit whose open_for has passed half-open and clears its flag, so that
 * balancers pick it again and its probes can flow. Call from a timer (100 ms to 1 s): without
 * it a circuit nobody asks about stays open, since balancers skip flagged targets. Any thread.
 */
void sl_breaker_tick(sl_breaker_t *b, uint64_t now_ms);

/** 0 closed, 1 half-open, 2 open (enum sl_breaker_state). For admin and metrics. */
int sl_breaker_state(const sl_breaker_t *b, size_t target);

/** Seconds until `target` may be tried again, rounded up, >= 1 when not closed; 0 if closed. */
uint32_t sl_breaker_retry_after_s(const sl_breaker_t *b, size_t target, uint64_t now_ms);

/**
 * Whether any target's circuit is not closed. When sl_balancer_pick returns -1 and this is true,
 * the breaker is (at least part of) the reason: the proxy answers `circuit_open` with
 * Retry-After = sl_breaker_min_retry_after_s, else `no_healthy_upstream`.
 */
bool sl_breaker_any_open(const sl_breaker_t *b);

/** The smallest sl_breaker_retry_after_s over the targets whose circuit is not closed; 0: none. */
uint32_t sl_breaker_min_retry_after_s(const sl_breaker_t *b, uint64_t now_ms);

#endif
