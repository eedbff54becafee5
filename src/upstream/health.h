/*
 * Active health checks: HTTP probes of every target of each upstream with `health.active`,
 * run on the main thread's loop, off the hot path. The outcome is one bit, SL_TARGET_UNHEALTHY,
 * in the current snapshot's sl_target_state_t (balancer.h); balancers skip targets with it set.
 *
 * State per (upstream name, target address) lives in the checker, not in a snapshot, so it
 * survives reloads for targets that remain: a dead target stays out of rotation across a reload.
 * Targets start healthy: marking everything down until a first probe succeeds would answer 503
 * to every request of a fresh start; a dead target is marked down within interval × unhealthy.
 *
 * Host-name targets are resolved by each probe itself (uv_getaddrinfo, first address); a name
 * that does not resolve is a failed probe ("name not resolved").
 *
 * Memory: the checker owns its table and a reference to the last applied snapshot; it frees
 * everything itself at the end of sl_health_stop. Threads: every function, main thread only.
 * Like libuv, a function that fails synchronously never calls its callback.
 */
#ifndef SL_UPSTREAM_HEALTH_H
#define SL_UPSTREAM_HEALTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "pipeline/snapshot.h"

typedef struct sl_health sl_health_t;

/** Creates an idle checker on `loop` (the main thread's). Returns 0 and sets `*out`. */
int sl_health_create(uv_loop_t *loop, sl_health_t **out);

/**
 * Makes `snap` the checked snapshot (takes a reference; drops the previous one). Targets that
 * remain keep their state and their probe timer, and their current health bit is written into
 * `snap`'s states at once, so call it *before* publishing `snap` to workers: then no worker
 * ever sees a known-dead target as healthy after a reload. New targets start healthy and get a
 * staggered first probe; removed targets have their in-flight probe cancelled. `snap` must have
 * gone through sl_proxy_attach. Ignored after sl_health_stop.
 */
void sl_health_apply(sl_health_t *h, sl_snapshot_t *snap);

/**
 * Cancels every probe and timer and closes every handle; when the last one is closed, frees
 * `h` (with its snapshot reference) and calls `done(arg)` (`done` may be NULL). Always
 * asynchronous: `done` runs from a later loop iteration. `h` must not be used after this call.
 */
void sl_health_stop(sl_health_t *h, void (*done)(void *arg), void *arg);

/** One target's view, for the admin API. Strings are valid only during the visit. */
typedef struct sl_health_target_info {
    const char *upstream;
    const char *target; /* the address as configured */
    bool healthy;
    const char *last_result; /* "status 200", "connection refused", ""; never NULL */
    uint64_t last_check_ms;  /* wall clock of the last finished probe; 0 = none yet */
} sl_health_target_info_t;

/** Calls `visit` for each checked target, in table order; returns how many. Main thread. */
size_t sl_health_each(sl_health_t *h, void (*visit)(void *arg, const sl_health_target_info_t *info), void *arg);

/* The pure state machine of one target, exposed for tests. */
typedef struct sl_health_counts {
    uint32_t successes; /* consecutive, reset by a failure */
    uint32_t failures;  /* consecutive, reset by a success */
    bool healthy;
} sl_health_counts_t;

enum sl_health_change {
    SL_HEALTH_SAME = 0,
    SL_HEALTH_BECAME_HEALTHY,
    SL_HEALTH_BECAME_UNHEALTHY,
};

/** Records one probe result against thresholds `healthy` / `unhealthy` (both >= 1). */
enum sl_health_change sl_health_record(sl_health_counts_t *c, bool ok, uint32_t healthy, uint32_t unhealthy);

#endif
