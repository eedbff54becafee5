/*
 * Metrics: counters and histograms of the data path, exposed in the Prometheus text format
 * (0.0.4) on the admin listener's /metrics (DESIGN.md "Metrics"; every series is in
 * docs/metrics.md).
 *
 * Three objects, and why:
 *
 * - sl_metrics_t, the registry, one per process (created by the server). It holds an
 *   append-only table of every route, upstream and target name any config ever had, each with a
 *   stable slot number, plus the process-wide figures (reloads). Slots are never reused, so a
 *   Prometheus counter of a route that survives a reload keeps counting instead of resetting.
 *   The table is capped (SL_METRICS_MAX_*); past the cap new names share one "(overflow)"
 *   series, with a warning in the error log. It is an object, not a global, so tests and a
 *   future second instance stay independent.
 *
 * - sl_metrics_schema_t, one per config snapshot: maps the config's dense route index and
 *   (upstream index, target index) to stable slots, and lists the series to export in sorted
 *   order. Immutable after creation, so any thread may read it without locks.
 *
 * - sl_metrics_worker_t, one per worker thread: fixed arrays of counters and histograms indexed
 *   by stable slot. Only its worker writes it, with relaxed atomic load + store (single writer:
 *   a plain load and store on x86/arm64, no lock prefix, no shared cache line); the scraper
 *   sums all workers with relaxed loads when /metrics is read, so the cost of a scrape is
 *   proportional to the number of series, never to the request rate. The storage of a slot is
 *   allocated by the main thread when the slot is created (schema or worker creation), so the
 *   update path never allocates and never takes a lock.
 *
 * Reloads: series are exported for the names of the *current* schema only. A route removed by
 * a reload stops being exported (Prometheus treats the series as ended; dashboards stop showing
 * a route that no longer exists) but its slot keeps its counts, so re-adding the same name
 * resumes the same counter without a reset. A renamed route is a new series from zero.
 *
 * Memory class: the registry, schemas and worker storage are plain heap objects, freed by
 * their _destroy. Per worker, each route slot costs sizeof(sl__metrics_route_t) (~1.1 KiB:
 * a 64-entry (method,status,cause) table, a duration histogram and the auth-failure counters
 * by detail) and each target slot
 * ~0.15 KiB, plus ~96 KiB of slot pointers per worker (see docs/metrics.md).
 *
 * Threads: the registry, schema creation, worker creation/destruction, reload results and
 * rendering belong to one control thread (the main thread). The observe/connection functions
 * are called only by the worker thread that owns `w`. sl_metrics_schema_destroy may run on any
 * thread (a snapshot's last reference may drop in a worker); it touches only the schema.
 */
#ifndef SL_METRICS_METRICS_H
#define SL_METRICS_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config/config.h"
#include "http/exchange.h"

/* Name-table caps, reserved slots excluded. */
#define SL_METRICS_MAX_ROUTES    4096
#define SL_METRICS_MAX_UPSTREAMS 1024
#define SL_METRICS_MAX_TARGETS   8192

/* Distinct (method, status, cause) keys counted per route per worker; more share one
 * `cause="other"` series of that route. */
#define SL_METRICS_ROUTE_KEYS 64

/* Label value of unrouted requests (400s before routing, 404 route_not_found). Route names may
 * be `none` too: such a route then shares these series (same stable slot). */
#define SL_METRICS_ROUTE_NONE "none"
/* Label value of routes/upstreams/targets past the name-table caps: not a valid config name. */
#define SL_METRICS_OVERFLOW "(overflow)"

/* Histogram buckets: 16 upper bounds (docs/metrics.md) and +Inf. */
#define SL_METRICS_HIST_BUCKETS 17

/* The unmatched-request sampler (sl_metrics_observe_unmatched): entries per worker, and the
 * size of a "host /segment" key with its NUL (longer hosts and segments are cut). */
#define SL_METRICS_UNMATCHED_TOP  32
#define SL_METRICS_UNMATCHED_KEY  80
#define SL_METRICS_UNMATCHED_HOST 47 /* bytes of the host kept */

/* Kinds of failed upstream tries, the `cause` label of sluice_upstream_errors_total: the
 * gateway causes of a failed try, plus a 5xx status answered by the upstream itself. */
enum sl_metrics_upstream_error {
    SL_METRICS_UPSTREAM_ERR_CONNECT_FAILED = 0, /* upstream_connect_failed */
    SL_METRICS_UPSTREAM_ERR_RESET,              /* upstream_reset */
    SL_METRICS_UPSTREAM_ERR_BAD_RESPONSE,       /* upstream_bad_response */
    SL_METRICS_UPSTREAM_ERR_TIMEOUT,            /* upstream_timeout */
    SL_METRICS_UPSTREAM_ERR_5XX,                /* upstream_5xx: a response with status >= 500 */
    SL_METRICS_UPSTREAM_ERR_OTHER,              /* other: any other cause passed in */
    SL_METRICS_UPSTREAM_ERR__COUNT,
};

/* Why an authentication or authorisation refusal happened: the `detail` label of
 * sluice_auth_failures_total, one per static detail code the filters set (x->cause_detail).
 * A fixed list so the update is an array index and the label set stays bounded; a code not in
 * it (a newer filter's) counts as `other`. In label order, so the exposition needs no sort; keep
 * in step with sl__metrics_auth_names. */
enum sl_metrics_auth_detail {
    SL_METRICS_AUTH_ACL_ANONYMOUS = 0,
    SL_METRICS_AUTH_ACL_DENIED_GROUP,
    SL_METRICS_AUTH_ACL_NOT_IN_GROUP,
    SL_METRICS_AUTH_API_KEY_UNKNOWN,
    SL_METRICS_AUTH_BASIC_BAD_PASSWORD,
    SL_METRICS_AUTH_BASIC_MALFORMED,
    SL_METRICS_AUTH_BASIC_UNKNOWN_USER,
    SL_METRICS_AUTH_CORS_HEADERS,
    SL_METRICS_AUTH_CORS_METHOD,
    SL_METRICS_AUTH_CORS_ORIGIN,
    SL_METRICS_AUTH_INTROSPECTION_NO_CONSUMER,
    SL_METRICS_AUTH_INTROSPECTION_TOO_LARGE,
    SL_METRICS_AUTH_IP_DENIED,
    SL_METRICS_AUTH_JWT_ALG_NOT_ALLOWED,
    SL_METRICS_AUTH_JWT_BAD_AUDIENCE,
    SL_METRICS_AUTH_JWT_BAD_CONSUMER_CLAIM,
    SL_METRICS_AUTH_JWT_BAD_GROUPS_CLAIM,
    SL_METRICS_AUTH_JWT_BAD_ISSUER,
    SL_METRICS_AUTH_JWT_BAD_SIGNATURE,
    SL_METRICS_AUTH_JWT_CLAIMS_TOO_LARGE,
    SL_METRICS_AUTH_JWT_EXPIRED,
    SL_METRICS_AUTH_JWT_ISSUED_IN_FUTURE,
    SL_METRICS_AUTH_JWT_MALFORMED,
    SL_METRICS_AUTH_JWT_MISSING_CLAIM,
    SL_METRICS_AUTH_JWT_NO_KEYS,
    SL_METRICS_AUTH_JWT_NOT_YET_VALID,
    SL_METRICS_AUTH_JWT_UNKNOWN_KID,
    SL_METRICS_AUTH_MTLS_NO_CERTIFICATE,
    SL_METRICS_AUTH_MTLS_NO_TLS,
    SL_METRICS_AUTH_MTLS_UNKNOWN_CERTIFICATE,
    SL_METRICS_AUTH_MTLS_UNVERIFIED,
    SL_METRICS_AUTH_NO_CREDENTIALS,
    SL_METRICS_AUTH_OTHER, /* a detail code not listed here, or none */
    SL_METRICS_AUTH_TOKEN_EXPIRED,
    SL_METRICS_AUTH_TOKEN_INACTIVE,
    SL_METRICS_AUTH_TOKEN_TOO_LARGE,
    SL_METRICS_AUTH__COUNT,
};

/* Rate limits counted per route by sluice_rate_limited_total{route,limit}, in the route's order
 * (top-level limits first); refusals by later limits share the last counter. */
#define SL_METRICS_RATE_LIMITS 16

/* Results of the response cache, the `result` label of sluice_cache_requests_total, in label
 * order (docs/cache.md). */
enum sl_metrics_cache_result {
    SL_METRICS_CACHE_BYPASS = 0,
    SL_METRICS_CACHE_EXPIRED,
    SL_METRICS_CACHE_HIT,
    SL_METRICS_CACHE_MISS,
    SL_METRICS_CACHE_STALE,
    SL_METRICS_CACHE__COUNT,
};

typedef struct sl_metrics sl_metrics_t;
typedef struct sl_metrics_schema sl_metrics_schema_t;
typedef struct sl_metrics_worker sl_metrics_worker_t;

/* ---- control thread ----------------------------------------------------------------------- */

/** Creates the registry; the caller owns it. Reads the process start time once. */
void sl_metrics_create(sl_metrics_t **out);

/** Frees the registry. Every worker storage must have been destroyed before; schemas must not
 *  be used for observing or rendering afterwards (they may still be destroyed). */
void sl_metrics_destroy(sl_metrics_t *m);

/**
 * Builds the schema of `cfg`: registers new route/upstream/target names (stable slots),
 * allocates their storage in every worker storage, and records the export order. `cfg` is not
 * referenced after the call. Returns 0 and sets `*out` (owned by the caller, usually stored in
 * the snapshot). Names past the caps are logged once per call and map to the overflow slot.
 */
int sl_metrics_schema_create(sl_metrics_t *m, const sl_config_t *cfg, sl_metrics_schema_t **out);

/** Where sluice_rate_limit_table_full_total comes from: `full_total(ctx)` is read at each
 *  scrape (the process-wide limiter table's counter). Control thread. */
void sl_metrics_set_rate_limit_source(sl_metrics_t *m, uint64_t (*full_total)(const void *ctx), const void *ctx);

/** Where sluice_access_log_dropped_total comes from: `dropped_total()` is read at each scrape
 *  (the access log's process-wide count of lines lost to failed writes). Control thread. */
void sl_metrics_set_access_log_source(sl_metrics_t *m, uint64_t (*dropped_total)(void));

/* The Redis store's figures (cluster mode), read at each scrape: sluice_store_*. */
typedef struct sl_metrics_store_figures {
    bool up;               /* every worker has a ready connection */
    uint64_t commands;     /* sent to Redis */
    uint64_t failures;     /* commands without a usable reply */
    uint64_t timeouts;     /* commands past the command timeout */
    uint64_t fallbacks;    /* decisions made on the local table because Redis was down (allow) */
    uint64_t refusals;     /* requests refused (503) because Redis was down (deny) */
    uint64_t lease_admits; /* hot-key decisions made from a lease, without a Redis call */
} sl_metrics_store_figures_t;

/** Where sluice_store_* come from (NULL `get`: no store, no samples). Control thread. */
void sl_metrics_set_store_source(sl_metrics_t *m, void (*get)(const void *ctx, sl_metrics_store_figures_t *out),
                                 const void *ctx);

/** Frees a schema. Any thread; touches nothing but the schema. NULL is ignored. */
void sl_metrics_schema_destroy(sl_metrics_schema_t *s);

/** Creates one worker's storage (call on the control thread before the worker starts). */
void sl_metrics_worker_create(sl_metrics_t *m, sl_metrics_worker_t **out);

/** Control thread, after the worker thread has ended: folds the worker's counters into the
 *  registry (so totals never go down) and frees the storage. Gauges are dropped. */
void sl_metrics_worker_destroy(sl_metrics_worker_t *w);

/** Counts a reload attempt (not the initial load); a success also sets the last-reload time. */
void sl_metrics_reload_result(sl_metrics_t *m, bool ok);

/* Where the scrape-time gauges sluice_upstream_target_healthy and sluice_circuit_state come
 * from: the server's current snapshot, which this module cannot see (metrics sits below the
 * upstream layer). `get` fills the state of config target (upstream_index, target_index) of
 * the schema being rendered and returns false when it does not know it (no sample written). */
typedef struct sl_metrics_target_status {
    bool healthy; /* not failing health checks, not ejected, resolved */
    int circuit;  /* 0 closed, 1 half-open, 2 open */
} sl_metrics_target_status_t;

typedef struct sl_metrics_status_source {
    bool (*get)(void *ctx, size_t upstream_index, size_t target_index, sl_metrics_target_status_t *out);
    void *ctx;
} sl_metrics_status_source_t;

/**
 * Renders every series in the Prometheus text format 0.0.4, summed over all worker storage,
 * for the names of `current` (NULL: only unrouted and process-wide series); the target gauges
 * come from `status` (NULL: those families have no samples). On return `*out`
 * is a malloc'd NUL-terminated buffer the caller frees, `*len` its length. Returns 0.
 * Cost: proportional to series count × workers. Concurrent updates may or may not be included;
 * every counter read is a value the counter really had.
 */
int sl_metrics_render(sl_metrics_t *m, const sl_metrics_schema_t *current, const sl_metrics_status_source_t *status,
                      char **out, size_t *len);

/* ---- the owning worker thread only -------------------------------------------------------- */

/**
 * Counts one finished exchange (the log phase): sluice_requests_total, the route's duration
 * histogram (end_ns - x->start_ns) and sluice_bytes_total. `s` should be the schema of the
 * snapshot the exchange ran with (x->route_index is an index into that config); another schema
 * still counts correctly by route name, a little slower. Never allocates.
 */
void sl_metrics_observe_exchange(sl_metrics_worker_t *w, const sl_metrics_schema_t *s, const sl_exchange_t *x,
                                 uint64_t end_ns);

/** Time to first response byte of one upstream try; indices into the schema's config
 *  (cfg->upstreams[upstream_index].targets[target_index]). Out of range counts as overflow. */
void sl_metrics_observe_upstream(sl_metrics_worker_t *w, const sl_metrics_schema_t *s, size_t upstream_index,
                                 size_t target_index, uint64_t first_byte_ns);

/**
 * Counts one failed try to a target (sluice_upstream_errors_total): `cause` is the gateway
 * cause of the failure (upstream_connect_failed, upstream_reset, upstream_bad_response,
 * upstream_timeout), or SL_CAUSE_NONE for a response with a 5xx status from the upstream
 * itself. Indices as in sl_metrics_observe_upstream. Never allocates.
 */
void sl_metrics_observe_upstream_failure(sl_metrics_worker_t *w, const sl_metrics_schema_t *s, size_t upstream_index,
                                         size_t target_index, enum sl_cause cause);

/**
 * Counts one refused exchange in sluice_auth_failures_total by (route, detail) when its cause
 * is auth_missing, auth_invalid, auth_expired or forbidden; any other exchange is ignored, so
 * the log phase calls it for every exchange. The detail is x->cause_detail mapped with
 * sl_metrics_auth_detail_of. Schema as in sl_metrics_observe_exchange. Never allocates.
 */
void sl_metrics_observe_auth_failure(sl_metrics_worker_t *w, const sl_metrics_schema_t *s, const sl_exchange_t *x);

/** Counts one response of a cached route in sluice_cache_requests_total{route,result}. Schema
 *  as in sl_metrics_observe_exchange; the exchange's worker only. Never allocates. */
void sl_metrics_observe_cache(sl_metrics_worker_t *w, const sl_metrics_schema_t *s, const sl_exchange_t *x,
                              enum sl_metrics_cache_result result);

/**
 * Samples a request that matched no route (route_not_found) into the worker's top-k table of
 * (host, first path segment), for `sluice doctor`. The key is cut to SL_METRICS_UNMATCHED_KEY,
 * the host lowercased and every byte outside printable ASCII replaced by '?', so the table
 * holds no request bytes that could break JSON or a terminal. Never a metric label. Fixed
 * size, no allocation, no lock: ~32 short compares per call.
 */
void sl_metrics_observe_unmatched(sl_metrics_worker_t *w, sl_str_t host, sl_str_t path);

/* Connection gauges. Either track transitions (opened → idle; active(true) when a request
 * starts, active(false) when it ends and the connection waits; closed) or, when the caller
 * already keeps counts, set them with sl_metrics_connections_set. Do not mix the two on one
 * worker. */
void sl_metrics_connection_opened(sl_metrics_worker_t *w); /* also counts accepted_total */
void sl_metrics_connection_active(sl_metrics_worker_t *w, bool active);
void sl_metrics_connection_closed(sl_metrics_worker_t *w, bool was_active);
void sl_metrics_connections_set(sl_metrics_worker_t *w, uint64_t active, uint64_t idle);
/** Counts an accepted connection without touching the gauges (with connections_set). */
void sl_metrics_connection_accepted(sl_metrics_worker_t *w);

/* ---- reading sums (control thread; the doctor) -------------------------------------------- */

/* Sums over every worker (and the retired ones) of one series, read with relaxed loads: each
 * value is one the counter really had; two values are not one instant. */
typedef struct sl_metrics_hist_sum {
    uint64_t buckets[SL_METRICS_HIST_BUCKETS]; /* per bucket, not cumulative; the last is +Inf */
    uint64_t sum_ns, count;
} sl_metrics_hist_sum_t;

typedef struct sl_metrics_route_sum {
    uint64_t requests;                       /* finished exchanges */
    uint64_t causes[SL_CAUSE__COUNT];        /* by gateway cause; [SL_CAUSE_NONE]: upstream or respond answers */
    uint64_t status_5xx;                     /* of causes[SL_CAUSE_NONE], those with a status >= 500 */
    uint64_t auth[SL_METRICS_AUTH__COUNT];   /* refusals (auth_* and forbidden) by detail */
    uint64_t cache[SL_METRICS_CACHE__COUNT]; /* cache results (sluice_cache_requests_total) */
} sl_metrics_route_sum_t;

typedef struct sl_metrics_target_sum {
    sl_metrics_hist_sum_t first_byte; /* count = tries that got a response head */
    uint64_t errors[SL_METRICS_UPSTREAM_ERR__COUNT];
} sl_metrics_target_sum_t;

typedef struct sl_metrics_unmatched {
    char host[SL_METRICS_UNMATCHED_HOST + 1];
    char prefix[SL_METRICS_UNMATCHED_KEY]; /* "/segment", or "/" */
    uint64_t count;                        /* since start, an upper bound (space-saving) */
} sl_metrics_unmatched_t;

/** Upper bound of bucket `b` in ns; UINT64_MAX for the last (+Inf). */
uint64_t sl_metrics_hist_bound_ns(size_t b);

/** The `cause` label of an error kind ("upstream_connect_failed", ..., "upstream_5xx", "other"). */
const char *sl_metrics_upstream_error_name(enum sl_metrics_upstream_error e);

/** The `result` label of a cache result ("BYPASS", "EXPIRED", "HIT", "MISS", "STALE"). */
const char *sl_metrics_cache_result_name(enum sl_metrics_cache_result r);

/** The `detail` label of a kind ("jwt_unknown_kid", ..., "other"). */
const char *sl_metrics_auth_detail_name(enum sl_metrics_auth_detail d);

/** The kind of a filter's static detail code; SL_METRICS_AUTH_OTHER for NULL or an unlisted
 *  code. A few short compares; any thread. */
enum sl_metrics_auth_detail sl_metrics_auth_detail_of(const char *detail);

/* Stable series ids: equal across schemas for the same route name / (upstream, target) name,
 * so counters read under different configs can be subtracted. route_index -1 is the unrouted
 * series; out-of-range indices give the overflow series. */
uint32_t sl_metrics_route_id(const sl_metrics_schema_t *s, long route_index);
uint32_t sl_metrics_target_id(const sl_metrics_schema_t *s, size_t upstream_index, size_t target_index);

/** Sums of one series over every worker. Control thread. */
void sl_metrics_read_route(sl_metrics_t *m, uint32_t route_id, sl_metrics_route_sum_t *out);
/** The route's whole-request duration histogram, summed over workers (a separate call: the
 *  doctor's sample history does not need it). */
void sl_metrics_read_route_duration(sl_metrics_t *m, uint32_t route_id, sl_metrics_hist_sum_t *out);
void sl_metrics_read_target(sl_metrics_t *m, uint32_t target_id, sl_metrics_target_sum_t *out);

/**
 * The unmatched-request samples of every worker, merged by key, largest count first; writes
 * at most `max` entries and returns how many. Control thread; never blocks a worker (a read
 * racing the worker's write of an entry retries that entry a few times, then skips it).
 */
size_t sl_metrics_read_unmatched(sl_metrics_t *m, sl_metrics_unmatched_t *out, size_t max);

/** Entries of /proc/self/fd (without the one the count itself opens); 0 when unreadable.
 *  Any thread. The one place that counts them (/metrics and the doctor), so that one TSan
 *  suppression (tests/tsan.supp) covers the descriptor-number reuse it races with. */
uint64_t sl_metrics_read_open_fds(void);

#endif
