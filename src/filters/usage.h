/*
 * What a consumer has used of the rate limits and quotas that apply to it, read from the
 * process's limiter table (store/gcra.h) without changing it: the admin API's
 * `GET /consumers/NAME/usage` (src/admin/usage.c, docs/ratelimit.md "Reading a consumer's
 * usage"). The implementation lives next to the filters that own the key layout (rate_limit.c,
 * quota.c), so the reader computes exactly the keys the filters admit against.
 *
 * The view is this node's table: in cluster mode (stores.redis) decisions are made in Redis
 * and the table holds only what this node decided while Redis was down; the caller says so.
 *
 * Threads: any (the main thread in practice). Nothing here touches the hot path: one digest and
 * one lock-free table read per item.
 */
#ifndef SL_FILTERS_USAGE_H
#define SL_FILTERS_USAGE_H

#include <stdbool.h>
#include <stdint.h>

#include "config/config.h"
#include "store/gcra.h"

typedef struct sl_filters_usage_item {
    bool quota;     /* false: a rate limit */
    bool global;    /* a top-level limit, one budget across routes (route "*") */
    sl_str_t route; /* the route whose requests it counts; "*" for a global limit */
    const char *label;
    const sl_rate_limit_conf_t *conf; /* rate, period_ms, burst, key (a quota: rate is its limit) */
    enum sl_quota_period period;      /* quotas */
    /* false: the key has an ip or header:NAME part, so the budget is not the consumer's own
     * (it is per address or per header value): no figures below. */
    bool per_consumer;
    bool tracked; /* the key holds state now; false: a full budget (never seen, or expired) */
    /* Rate limits: sl_gcra_peek's figures. Quotas: limit, remaining, reset_ns to the window's
     * end, retry_after_ns 0 unless exhausted. */
    sl_gcra_result_t r;
    uint64_t used;                           /* quotas: requests counted in the current window */
    uint64_t window_start_ms, window_end_ms; /* quotas: the current UTC window */
} sl_filters_usage_item_t;

typedef void (*sl_filters_usage_cb)(void *arg, const sl_filters_usage_item_t *item);

/**
 * Calls `cb` once per rate limit and quota of `cfg` that a request of `consumer` can meet:
 * each global limit (once; once per route when its key has a `route` part), then each route's
 * limits and quota, in config order. `now_mono_ns` and `now_wall_ns` are the clocks of "now".
 * Returns the number of items, or SL_ENOTFOUND when this process has no limiter table yet
 * (no route with a limit was ever built: no item can hold state, `cb` is still called with
 * full budgets).
 */
int sl_filters_usage(const sl_config_t *cfg, sl_str_t consumer, uint64_t now_mono_ns, uint64_t now_wall_ns,
                     sl_filters_usage_cb cb, void *arg);

#endif
