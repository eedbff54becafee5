/*
 * The doctor (`GET /doctor`, `sluice doctor`): names which of the six failure causes of
 * DESIGN.md is happening, where, since when, with evidence and the next action.
 *
 * How it sees the gateway: it never touches the data path. Every SL_DOCTOR_TICK_MS the main
 * thread calls sl_doctor_tick, which copies the cumulative per-worker counters (summed by
 * src/metrics: requests per route by cause and auth refusals by detail code, per-target
 * time-to-first-byte histograms and failed tries, the unmatched-request sampler), each
 * target's availability flags, the JWT key store's view of each issuer and the resource
 * gauges the caller measured into a ring of samples (SL_DOCTOR_SAMPLES deep: five minutes).
 * A window is the difference of two samples, so the doctor's cost is per tick and
 * proportional to series × workers, never to the request rate. Series are keyed by the
 * metrics' stable ids, so windows stay right across reloads.
 *
 * Findings come from a table of rules (doctor.c): per target, per upstream, per route and
 * cause (one row per gateway cause: a feature that adds a cause adds a row), per route and
 * auth detail (unknown kids after a key rotation, expired tokens, an issuer without keys,
 * rejected credentials, forbidden clients), and gateway-wide resources. A rule only counts
 * ratios over a minimum number of requests, so a healthy or idle gateway has no findings.
 * Each tick evaluates the rules over both windows and remembers when each finding (rule +
 * place) started to hold: that is its `since`.
 *
 * Memory: the doctor owns its ring (sized by the config: up to SL_DOCTOR_MAX_ROUTES routes and
 * SL_DOCTOR_MAX_TARGETS targets are followed, in config order; per sample ~0.2 KiB per target
 * and ~0.45 KiB per route) and one reference to the snapshot of its latest sample. Threads:
 * every function, the main thread only (it reads worker counters with relaxed atomic loads,
 * workers never wait).
 */
#ifndef SL_ADMIN_DOCTOR_H
#define SL_ADMIN_DOCTOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "filters/jwks_store.h"
#include "metrics/metrics.h"
#include "net/worker.h"
#include "pipeline/snapshot.h"
#include "upstream/health.h"

#define SL_DOCTOR_TICK_MS     2000u
#define SL_DOCTOR_SAMPLES     151u /* 300 s of ticks, both ends included */
#define SL_DOCTOR_MAX_ROUTES  1024u
#define SL_DOCTOR_MAX_TARGETS 1024u

typedef struct sl_doctor sl_doctor_t;

typedef struct sl_doctor_resources { /* filled by the caller each tick */
    uint64_t fds_open, fds_limit;    /* /proc/self/fd count, RLIMIT_NOFILE soft */
    uint64_t rss_bytes;
    uint64_t connections, max_connections; /* downstream now, limits.max_connections */
    uint64_t connections_refused_total;    /* refused at the gateway-wide connection limit */
    uint64_t loop_lag_max_ns;              /* worst worker event-loop lag since last tick */
    /* The Redis store (cluster mode), when stores.redis is configured. */
    bool store_configured, store_up, store_deny;
    uint64_t store_down_since_ms;                         /* wall clock; 0 when up */
    uint64_t store_fallbacks_total, store_refusals_total; /* decisions without Redis, since start */
    char store_address[64];
} sl_doctor_resources_t;

/** Creates a doctor reading `m` (which must outlive it). Returns 0 and sets `*out`. */
int sl_doctor_create(sl_metrics_t *m, sl_doctor_t **out);

/** Frees `d` and drops its snapshot reference. NULL is ignored. */
void sl_doctor_destroy(sl_doctor_t *d);

/**
 * Gives the doctor the JWT key store (NULL: none; the default) so the auth findings can say
 * what the gateway holds for an issuer: keys, last load, fetch failures. Each tick copies
 * sl_jwks_store_each; the doctor does not keep the store past a tick, but the caller must
 * set NULL before the store is stopped. Main thread.
 */
void sl_doctor_set_jwks(sl_doctor_t *d, sl_jwks_store_t *jwks);

/**
 * Takes one sample: counters of `snap`'s routes and targets (snap->metrics must be set, else
 * the tick is skipped), its targets' flags, the last health-check results of `health` (may be
 * NULL) and `res`; then evaluates the rules to keep each finding's `since`. `now_wall_ms` is
 * the Unix time in ms (injected so tests control the clock); it should grow by about
 * SL_DOCTOR_TICK_MS per call. Main thread.
 */
void sl_doctor_tick(sl_doctor_t *d, const sl_snapshot_t *snap, sl_health_t *health, const sl_doctor_resources_t *res,
                    uint64_t now_wall_ms);

/**
 * The findings over the last `window_s` seconds (60 or 300; values up to 60 give 60, larger
 * ones 300) as DESIGN.md "Doctor findings": {"window_seconds":N,"findings":[...]}, most severe
 * first. Reads the samples taken so far (before the second tick every window is empty, and only
 * state findings such as an ejected target or fd usage can show). `snap` is the caller's
 * current snapshot: a sample of another config is still read by its own names. New reference,
 * the caller decrefs. Main thread.
 */
json_t *sl_doctor_report(sl_doctor_t *d, const sl_snapshot_t *snap, unsigned window_s);

/**
 * Tries sent to target (upstream_index, target_index) of `snap` over the window, and how many
 * of them failed (connect failure, reset, bad response, timeout or a 5xx status). Both 0 when
 * there are fewer than two samples or the target is unknown. Main thread.
 */
void sl_doctor_target_window(sl_doctor_t *d, const sl_snapshot_t *snap, size_t upstream_index, size_t target_index,
                             unsigned window_s, uint64_t *requests, uint64_t *errors);

/**
 * Fills `*res` from the process and the workers: open fds (/proc/self/fd), the RLIMIT_NOFILE
 * soft limit, RSS (/proc/self/statm), downstream connections (all workers), refusals at the
 * connection limit and the worst loop lag since the previous call (which resets each worker's
 * maximum: call it once per tick). Main thread.
 */
void sl_doctor_resources_read(sl_doctor_resources_t *res, sl_worker_t *const *workers, size_t nworkers,
                              uint64_t max_connections);

/** The q-quantile (0..1) of a histogram in ns, as Prometheus' histogram_quantile: linear
 *  inside the bucket holding the rank; a rank in +Inf gives the largest finite bound; 0 when
 *  empty. The doctor applies it to window deltas of the time-to-first-byte histograms. */
uint64_t sl_doctor_hist_quantile_ns(const sl_metrics_hist_sum_t *h, double q);

/**
 * The target gauges of /metrics (sluice_upstream_target_healthy, sluice_circuit_state) for
 * target (upstream_index, target_index) of the snapshot `snap` (an sl_snapshot_t *): the
 * `get` of an sl_metrics_status_source_t. Any thread that holds a reference to `snap`.
 */
bool sl_doctor_target_status(void *snap, size_t upstream_index, size_t target_index, sl_metrics_target_status_t *out);

#endif
