/*
 * Process-wide totals for the admin API's /status: the same per-worker counters /metrics sums,
 * folded into a handful of numbers. Control thread only (like rendering); the cost is one pass
 * over every route slot of every worker, independent of the request rate.
 */
#ifndef SL_METRICS_SUMMARY_H
#define SL_METRICS_SUMMARY_H

#include <stdint.h>

#include "metrics/metrics.h"

typedef struct sl_metrics_summary {
    uint64_t requests_total; /* finished exchanges since start, every route ever configured */
    uint64_t connections_active, connections_idle;
    uint64_t connections_accepted_total;
    uint64_t bytes_in, bytes_out;
} sl_metrics_summary_t;

void sl_metrics_summary(const sl_metrics_t *m, sl_metrics_summary_t *out);

#endif
