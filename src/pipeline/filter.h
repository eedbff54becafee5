/*
 * The filter contract (STYLE.md "One filter contract"). A route's filters run between routing
 * and the route's answer (respond, echo or the proxy), in the fixed order of the registry
 * (src/filters/registry.c): ip rules, CORS, auth, ACL, then later rate limits, quotas, cache.
 *
 * Request side, `on_request` returns:
 *   SL_FILTER_CONTINUE  the next filter runs (then the route's answer);
 *   SL_FILTER_PAUSE     the filter started asynchronous work; it later calls exactly one of
 *                       sl_filter_resume(x) (go on with the next filter), sl_reply / sl_reply_error
 *                       (the filter answered) or sl_filter_fail(x, cause, detail);
 *   SL_FILTER_REPLIED   the filter answered the request itself (sl_reply*); the chain stops;
 *   SL_FILTER_ERROR     x->cause (and x->cause_detail) are set; the pipeline answers with them.
 * While a filter is paused and the client goes away, the pipeline calls its `on_abort`: it
 * cancels its work synchronously and must never touch `x` again (nor resume it).
 * Response side, `on_response_headers` runs in reverse order for the filters that ran, just
 * before the head is serialised (local answers included); `on_log` likewise at the end, always.
 *
 * Runtime state: `create` builds a filter's state for one route of a snapshot (main thread,
 * at snapshot build; errors go to `errs` and fail the build like config errors), `destroy`
 * frees it with the snapshot (any thread). That state is shared by every worker: read-only, or
 * atomics. Per-request state goes in the exchange's arena.
 */
#ifndef SL_PIPELINE_FILTER_H
#define SL_PIPELINE_FILTER_H

#include <stddef.h>

#include "config/config.h"
#include "http/exchange.h"

struct sl_snapshot;

enum sl_filter_status {
    SL_FILTER_CONTINUE = 1,
    SL_FILTER_PAUSE,
    SL_FILTER_REPLIED,
    SL_FILTER_ERROR,
};

typedef struct sl_filter_type {
    const char *name;
    /* Sets `*state` (NULL: the filter is not on this route) or returns an error after adding
     * to `errs`. `shared` is the filters module's per-snapshot data (consumer indexes, key
     * stores). Main thread. */
    int (*create)(const struct sl_snapshot *snap, const sl_route_conf_t *route, void *shared, void **state,
                  sl_config_errors_t *errs);
    void (*destroy)(void *state);
    enum sl_filter_status (*on_request)(sl_exchange_t *x, void *state);
    void (*on_response_headers)(sl_exchange_t *x, void *state); /* may be NULL */
    void (*on_log)(sl_exchange_t *x, void *state);              /* may be NULL */
    void (*on_abort)(sl_exchange_t *x, void *state);            /* may be NULL: nothing to cancel */
} sl_filter_type_t;

typedef struct sl_filter {
    const sl_filter_type_t *type;
    void *state;
} sl_filter_t;

/* One route's compiled chain (owned by the snapshot). */
typedef struct sl_chain {
    sl_filter_t *filters;
    size_t n;
} sl_chain_t;

/** Goes on with the filter after the paused one. Exchange's worker thread. */
void sl_filter_resume(sl_exchange_t *x);

/** A paused filter about to answer with sl_reply (not an error) calls this first, so a client
 *  leaving during the answer does not call its on_abort. */
void sl_filter_end_pause(sl_exchange_t *x);

/** Ends a paused exchange with `cause` (detail: static text for the log). */
void sl_filter_fail(sl_exchange_t *x, enum sl_cause cause, const char *detail);

#endif
