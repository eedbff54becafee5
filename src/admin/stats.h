/*
 * `GET /stats` (docs/admin.md, docs/dashboard.md): one JSON document with what the dashboard
 * page shows, built from the current counters in one pass: totals and errors by cause, per
 * route and per upstream counts, cumulative latency histograms, target states, connection and
 * resource gauges against their limits, the doctor's findings and the config generation.
 *
 * Counters are cumulative since start (like /metrics): a reader gets rates, error ratios and
 * windowed quantiles by subtracting two polls, which is what the page does. So the cost of a
 * call is proportional to routes + targets, never to the request rate, and the gateway keeps
 * no per-reader state.
 *
 * Threads: main thread only (it reads the health checker and the doctor, both main-thread
 * state). Memory: the result is a new jansson reference the caller releases.
 */
#ifndef SL_ADMIN_STATS_H
#define SL_ADMIN_STATS_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "admin/doctor.h"
#include "metrics/metrics.h"
#include "pipeline/snapshot.h"
#include "upstream/health.h"

/* What /stats reads, supplied by the server; the view keeps none of it past the call. */
typedef struct sl_admin_stats_source {
    const sl_snapshot_t *snap;   /* the running snapshot (snap->metrics may be NULL: no counters) */
    sl_metrics_t *metrics;       /* the registry; required */
    sl_health_t *health;         /* may be NULL: no last-check results */
    sl_doctor_t *doctor;         /* may be NULL: no findings, no 1-minute target windows */
    const char *config_path;     /* the config file */
    uint64_t generation;         /* of `snap` */
    const json_t *last_reload;   /* {result, time[, errors]} or NULL before the first reload */
    uint64_t started_ms, now_ms; /* wall clock, Unix ms */
    size_t workers;
} sl_admin_stats_source_t;

/**
 * The /stats document (shape in docs/dashboard.md). Reads the counters with relaxed loads, the
 * target states with atomic loads; allocates only the result. Never NULL (allocation failure
 * aborts). Main thread.
 */
json_t *sl_admin_stats(const sl_admin_stats_source_t *src);

#endif
