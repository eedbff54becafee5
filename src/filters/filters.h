/*
 * The filters module: one file per filter, each an sl_filter_type_t (pipeline/filter.h), and
 * the registry that compiles a route's chain from its config in the fixed order of DESIGN.md:
 * ip rules, CORS, auth, ACL, rate limits, quotas (the cache joins the table when it lands).
 *
 * Memory: sl_filters_attach gives the snapshot its chains and the per-snapshot shared data
 * (consumer indexes), released with the snapshot. Per-worker caches (verified tokens and Basic
 * credentials) are thread-local to each worker and freed by sl_filters_thread_exit.
 */
#ifndef SL_FILTERS_FILTERS_H
#define SL_FILTERS_FILTERS_H

#include "config/config.h"
#include "http/fetch.h"
#include "pipeline/filter.h"
#include "pipeline/snapshot.h"

struct sl_jwks_store;
struct sl_gcra_table;
struct sl_store;
struct sl_store_worker;

/* The rate-limit table's clock: monotonic ns plus this (filters/internal.h says why); the
 * Redis store's local fallback must use the same base (sl_store_conf_t.fallback_clock_ns). */
#define SL_FILTERS_RATE_TABLE_CLOCK_BIAS (UINT64_C(1) << 62)

/* What the filters need from the process, supplied by the server. */
typedef struct sl_filters_env {
    struct sl_jwks_store *jwks;  /* key sets of the jwt issuers; NULL: routes with jwt fail to build */
    const sl_fetcher_t *fetcher; /* HTTP client for token introspection; NULL: those routes fail to build */
    /* The process-wide rate-limit table (gcra.h): outlives every snapshot, so limits keep their
     * state across reloads. NULL: routes with rate limits fail to build. */
    struct sl_gcra_table *rate_table;
    /* The Redis store (store/store.h) when the process runs in cluster mode: routes whose
     * config has stores.redis decide every rate limit and quota there, through the calling
     * worker's connection (sl_filters_set_thread_store). NULL: local decisions only. */
    struct sl_store *store;
} sl_filters_env_t;

/**
 * Builds every route's chain into `snap` (snap->chains, chains_release). Main thread, before
 * the snapshot is published. Returns 0, or SL_ECONFIG with `errs` filled (nothing attached).
 */
int sl_filters_attach(sl_snapshot_t *snap, const sl_filters_env_t *env, sl_config_errors_t *errs);

/** The calling worker thread's connection of the Redis store (sl_store_worker_start on its
 *  loop), or NULL once it is stopped. Limits of cluster-mode routes decide locally (as if Redis
 *  were down) on a thread without one. Worker thread. */
void sl_filters_set_thread_store(struct sl_store_worker *w);

/** Frees the calling worker thread's caches. The worker thread, after its loop ended. */
void sl_filters_thread_exit(void);

extern const sl_filter_type_t sl_filter_ip_rules;
extern const sl_filter_type_t sl_filter_cors;
extern const sl_filter_type_t sl_filter_auth;
extern const sl_filter_type_t sl_filter_acl;
extern const sl_filter_type_t sl_filter_rate_limit;
extern const sl_filter_type_t sl_filter_quota;

#endif
