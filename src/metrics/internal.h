/*
 * Private to src/metrics: the layouts of the registry, the schema and a worker's storage, shared
 * by registry.c (control thread), observe.c (worker threads) and render.c (the scraper).
 */
#ifndef SL_METRICS_INTERNAL_H
#define SL_METRICS_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/arena.h"
#include "common/str.h"
#include "http/cause.h"
#include "http/method.h"
#include "metrics/metrics.h"

/* Histogram upper bounds (le), in nanoseconds so bucketing is integer compares. Keep in step
 * with sl__metrics_bounds_text and docs/metrics.md. */
#define SL__METRICS_NBUCKETS 16
extern const uint64_t sl__metrics_bounds_ns[SL__METRICS_NBUCKETS];
extern const char *const sl__metrics_bounds_text[SL__METRICS_NBUCKETS];

/* Reserved slots. Route slot 0 is the name "none" (unrouted requests), 1 the overflow series;
 * upstream and target slot 0 are overflow. */
#define SL__METRICS_ROUTE_NONE     0u
#define SL__METRICS_ROUTE_OVERFLOW 1u
#define SL__METRICS_ROUTE_SLOTS    (SL_METRICS_MAX_ROUTES + 2)
#define SL__METRICS_UP_OVERFLOW    0u
#define SL__METRICS_UP_SLOTS       (SL_METRICS_MAX_UPSTREAMS + 1)
#define SL__METRICS_TGT_OVERFLOW   0u
#define SL__METRICS_TGT_SLOTS      (SL_METRICS_MAX_TARGETS + 1)

/* A (method, status, cause) key: bit 31 marks it used (0 is an empty table entry), status in
 * bits 10..19 (0 = outside 100..599), cause in bits 4..9, method in bits 0..3. */
#define SL__METRICS_KEY_USED (1u << 31)
static inline uint32_t sl__metrics_key(unsigned method, unsigned status, unsigned cause)
{
    return SL__METRICS_KEY_USED | (status << 10) | (cause << 4) | method;
}
static inline unsigned sl__metrics_key_method(uint32_t k)
{
    return k & 0xfu;
}
static inline unsigned sl__metrics_key_cause(uint32_t k)
{
    return (k >> 4) & 0x3fu;
}
static inline unsigned sl__metrics_key_status(uint32_t k)
{
    return (k >> 10) & 0x3ffu;
}

typedef struct sl__metrics_hist {
    _Atomic uint64_t buckets[SL__METRICS_NBUCKETS + 1]; /* not cumulative; the last is +Inf */
    _Atomic uint64_t sum_ns;
} sl__metrics_hist_t;

_Static_assert(SL__METRICS_NBUCKETS + 1 == SL_METRICS_HIST_BUCKETS, "public and private bucket counts differ");

/* One target's counters in one worker: time to first byte and failed tries by kind. */
typedef struct sl__metrics_target {
    sl__metrics_hist_t first_byte;
    _Atomic uint64_t errors[SL_METRICS_UPSTREAM_ERR__COUNT];
} sl__metrics_target_t;

/* The unmatched-request sampler of one worker: a space-saving top-k table (Metwally et al.)
 * of "host /segment" keys. Each entry is a seqlock over atomic words: the worker is the only
 * writer (odd `seq` while it rewrites the entry), the scraper retries a read that saw an odd
 * or changed `seq`. Atomic words rather than a plain buffer, so the read racing a write is not
 * a data race in the C11 model (TSan checks it). */
#define SL__METRICS_UNMATCHED_WORDS (SL_METRICS_UNMATCHED_KEY / 8)
typedef struct sl__metrics_unmatched_entry {
    _Atomic uint32_t seq;
    _Atomic uint64_t count;
    _Atomic uint64_t hash; /* of the key, 0 = empty entry; writer-side lookups compare it first */
    _Atomic uint64_t key[SL__METRICS_UNMATCHED_WORDS];
} sl__metrics_unmatched_entry_t;

/* One route's counters in one worker: an open-addressed table (linear probing, never deleted)
 * of (method,status,cause) keys. Keys are published with a release store so the scraper, which
 * loads them with acquire, never pairs a key with a count of another key. */
typedef struct sl__metrics_route {
    _Atomic uint32_t keys[SL_METRICS_ROUTE_KEYS];
    _Atomic uint64_t counts[SL_METRICS_ROUTE_KEYS];
    _Atomic uint64_t overflow; /* keys that found the table full */
    sl__metrics_hist_t duration;
    _Atomic uint64_t auth[SL_METRICS_AUTH__COUNT];         /* sluice_auth_failures_total by detail */
    _Atomic uint64_t rate_limited[SL_METRICS_RATE_LIMITS]; /* sluice_rate_limited_total by limit index */
    _Atomic uint64_t cache[SL_METRICS_CACHE__COUNT];       /* sluice_cache_requests_total by result */
} sl__metrics_route_t;

struct sl_metrics_worker {
    sl_metrics_t *m;
    _Atomic uint64_t bytes_in, bytes_out, accepted;
    _Atomic int64_t active, idle;
    /* Storage per stable slot, allocated by the control thread when the slot appears and
     * published with a release store before any schema naming the slot exists. */
    _Atomic(sl__metrics_route_t *) routes[SL__METRICS_ROUTE_SLOTS];
    _Atomic(sl__metrics_target_t *) targets[SL__METRICS_TGT_SLOTS];
    sl__metrics_unmatched_entry_t unmatched[SL_METRICS_UNMATCHED_TOP];
};

/* An append-only name → slot table. `scope` separates namespaces sharing one table: a target
 * address is only unique within its upstream, so targets use the upstream slot as scope. */
typedef struct sl__metrics_names {
    sl_str_t *names; /* [cap], copies in the registry's arena */
    uint32_t *scope; /* [cap] */
    uint32_t *index; /* [mask + 1]: slot + 1, 0 = empty */
    size_t len, cap, mask;
} sl__metrics_names_t;

struct sl_metrics {
    sl_arena_t arena; /* name copies; lives as long as the registry */
    sl__metrics_names_t routes, upstreams, targets;
    size_t routes_allocated, targets_allocated; /* slots below these have storage everywhere */
    sl_metrics_worker_t **workers;              /* [0] is `retired`, the sum of destroyed ones */
    size_t nworkers, capworkers;
    _Atomic uint64_t reloads_ok, reloads_failed;
    _Atomic uint64_t last_reload_wall_ms;
    uint64_t (*rate_full_total)(const void *ctx);                        /* NULL: no limiter table */
    void (*store_get)(const void *ctx, sl_metrics_store_figures_t *out); /* NULL: no Redis store */
    const void *store_ctx;
    const void *rate_full_ctx;
    uint64_t (*access_log_dropped)(void); /* NULL: not wired */
    uint64_t start_time_s;                /* 0 when /proc could not tell */
};

struct sl_metrics_schema {
    size_t nroutes;
    uint32_t *route_slot;       /* [nroutes]: config route index → stable slot */
    const sl_str_t *route_name; /* registry names by slot (stable: the registry never moves them) */
    uint32_t *route_index;      /* [route_mask + 1]: config index + 1 by name hash, 0 = empty */
    size_t route_mask;
    size_t nupstreams;
    uint32_t *target_base;     /* [nupstreams + 1]: first entry of each upstream in target_slot */
    uint32_t *target_slot;     /* config (upstream, target) → stable target slot */
    uint32_t *route_order;     /* route slots to export, sorted by name, unique */
    uint32_t *route_order_cfg; /* [nroute_order]: config index of each, SL__METRICS_NO_CFG for reserved */
    size_t nroute_order;
    /* Rate-limit labels (sl_rate_limit_label) of config route i: rl_labels[rl_base[i] ..
     * rl_base[i + 1]), top-level limits first; the text lives in rl_text. */
    uint32_t *rl_base;
    sl_str_t *rl_labels;
    char *rl_text;
    uint32_t *target_order;     /* target slots to export, sorted by (upstream, address), unique */
    uint32_t *target_order_cfg; /* [ntarget_order]: flat config index (target_base + t) of each, NO_CFG for none */
    size_t ntarget_order;
};

/* target_order_cfg of the reserved overflow entry: it stands for no single config target. */
#define SL__METRICS_NO_CFG UINT32_MAX

/* The `detail` labels, indexed by enum sl_metrics_auth_detail. */
extern const char *const sl__metrics_auth_names[SL_METRICS_AUTH__COUNT];

uint64_t sl__metrics_hash(uint32_t scope, sl_str_t name);

/** Adds `n` to a counter that only the calling thread writes (no read-modify-write needed). */
static inline void sl__metrics_add(_Atomic uint64_t *c, uint64_t n)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n, memory_order_relaxed);
}

static inline uint64_t sl__metrics_load(_Atomic uint64_t *c)
{
    return atomic_load_explicit(c, memory_order_relaxed);
}

/** Counts `n` requests of `key` in `r` (overflow when the table is full). Writer thread only. */
void sl__metrics_route_count(sl__metrics_route_t *r, uint32_t key, uint64_t n);

/** The name of a target slot's upstream (registry lookup for rendering). */
sl_str_t sl__metrics_target_upstream(const sl_metrics_t *m, uint32_t target_slot);

#endif
