/*
 * Load balancers: which target of an upstream an exchange goes to. One sl_balancer_t is built
 * per upstream per config snapshot from its sl_upstream_conf_t (round_robin, least_conn, hash
 * with Maglev, p2c_ewma) and is immutable afterwards; picking reads the targets' shared runtime
 * state (sl_target_state_t), which health checks, ejection and circuit breakers write.
 *
 * Memory: the caller owns the sl_target_state_t array and keeps it alive (and at the same
 * indices as conf->targets) for as long as the balancer; the balancer owns its tables and its
 * shared cursor, freed by sl_balancer_destroy. It does not keep `conf`.
 *
 * Threads: create and destroy on one thread (the one that builds snapshots); publish the
 * balancer to workers through the snapshot swap. sl_balancer_pick and sl_balancer_observe may be
 * called from any number of threads at once: no locks, no allocation.
 */
#ifndef SL_UPSTREAM_BALANCER_H
#define SL_UPSTREAM_BALANCER_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "config/config.h"

/* sl_target_state_t.flags: why a target must not be picked, one bit per reason so each writer
 * (active health checks, passive ejection, the circuit breaker) sets and clears only its own,
 * atomically (fetch_or / fetch_and). Every balancer skips a target with any of them set. */
#define SL_TARGET_UNHEALTHY    (1u << 0) /* active health checks failed */
#define SL_TARGET_EJECTED      (1u << 1) /* passive outlier detection ejected it */
#define SL_TARGET_CIRCUIT_OPEN (1u << 2) /* its circuit breaker is open */
#define SL_TARGET_UNRESOLVED   (1u << 3) /* its host name does not resolve (yet, or any more) */
#define SL_TARGET_UNAVAILABLE  (SL_TARGET_UNHEALTHY | SL_TARGET_EJECTED | SL_TARGET_CIRCUIT_OPEN | SL_TARGET_UNRESOLVED)

/*
 * Runtime state of one target, shared by every worker. All fields start at zero (a zeroed
 * allocation is a valid initial state). Padded to a cache line so that workers bumping the
 * inflight counters of neighbouring targets do not share a line (sl_balancer_states_create
 * aligns the array; a plain calloc works too, only with some false sharing).
 */
typedef struct sl_target_state {
    /* Requests on this target now. The proxy adds 1 when it sends an exchange to the target
     * and subtracts 1 when that exchange ends (any outcome); relaxed order is enough. */
    atomic_int inflight;
    atomic_uint flags; /* SL_TARGET_* bits */
    /* Latency EWMA in ns, 0 = not measured yet; written only through sl_balancer_observe. */
    atomic_uint_fast64_t ewma_ns;
    char pad[64 - sizeof(atomic_int) - sizeof(atomic_uint) - sizeof(atomic_uint_fast64_t)];
} sl_target_state_t;

/* The key of `balance: hash`, extracted by the proxy according to conf->hash_on (client IP,
 * path, a header or a cookie value). Only read during the call. An empty key (len 0, ptr may
 * be NULL) falls back to round robin. */
typedef struct sl_balance_key {
    const char *ptr;
    size_t len;
} sl_balance_key_t;

typedef struct sl_balancer sl_balancer_t;

/**
 * Builds the balancer of `conf` over `states` (conf->ntargets entries, owned by the caller, see
 * above). Returns 0 and sets `*out` (the caller owns it, free with sl_balancer_destroy), or
 * SL_ETOOBIG when the upstream has more than 65535 targets. Allocation failure aborts.
 * The hash balancer's table has 65537 entries (more for upstreams of over 655 targets), so a
 * build takes a few milliseconds; do it where a config load may take that long.
 */
int sl_balancer_create(const sl_upstream_conf_t *conf, sl_target_state_t *states, sl_balancer_t **out);

/** Frees `b` (NULL is ignored). No thread may be picking from it any more. */
void sl_balancer_destroy(sl_balancer_t *b);

/**
 * Picks a target: returns its index in conf->targets (and states), or -1 when every target is
 * unavailable (the proxy answers no_healthy_upstream). Never returns an unavailable target.
 * `key` is used by the hash balancer only (NULL = empty). `rng` is the calling thread's random
 * state, updated in place (any initial value, 0 included); p2c_ewma draws its two candidates
 * from it; keep one per worker so picking shares no cache line for it.
 * Any thread; lock-free and allocation-free; O(1) except least_conn (O(n)) and the fallbacks
 * taken when many targets are unavailable (O(n)).
 */
int sl_balancer_pick(const sl_balancer_t *b, const sl_balance_key_t *key, uint64_t *rng);

/**
 * Feeds one latency sample (time to the response head, in ns) into t->ewma_ns:
 * ewma += (sample - ewma) / 8, the first sample taken as is. A fixed weight rather than a
 * decay by time: no clock read, and the same samples always give the same value (testable);
 * 1/8 forgets a change of speed within ~16 samples. Any thread (a CAS loop, several writers).
 */
void sl_balancer_observe(sl_target_state_t *t, uint64_t latency_ns);

/** A zeroed, cache-line aligned array of `n` states (n may be 0); free with the function below. */
sl_target_state_t *sl_balancer_states_create(size_t n);
void sl_balancer_states_destroy(sl_target_state_t *states);

/** The 64-bit hash the hash balancer uses (exposed for tests and for the proxy's own keys). */
uint64_t sl_balancer_hash(const void *data, size_t len, uint64_t seed);

#endif
