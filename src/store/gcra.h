/*
 * GCRA (the generic cell rate algorithm; the "leaky bucket as a meter"): one timestamp per key,
 * the theoretical arrival time (TAT). With T = period / rate (the emission interval) and
 * tolerance = burst * T, a request of cost c at time now is admitted when
 *     new_tat = max(TAT, now) + c*T   satisfies   new_tat - now <= tolerance + T,
 * and then TAT = new_tat. So `rate` per period is admitted steadily and up to `burst` more at
 * once after a quiet spell.
 *
 * The local table is shared by every worker thread: lock-free on the hot path (a CAS on the
 * key's TAT word), memory-bounded (a fixed number of slots chosen at create; a slot whose TAT is
 * in the past holds no information and is reused by any key), and exact: N threads together never
 * admit more than the algorithm allows for a key.
 *
 * Keys are 128-bit digests of (limit identity, key value) made by the caller
 * (sl_gcra_key_digest): a limit whose definition did not change across a reload keeps its keys,
 * so its state survives; a changed limit gets new keys and starts fresh.
 *
 * Layout and the reuse race are explained at the top of gcra.c: a slot's state is ONE 64-bit word
 * (the TAT in absolute monotonic ns, plus a claim bit), whose value never repeats, so a CAS
 * prepared against one owner can never land on the next owner of the slot.
 *
 * Threads: create/destroy on the main thread; admit and the counters from any thread.
 * Memory: the table owns one array of slots (allocated at create, never grown): 24 bytes per
 * slot plus 8 per bucket of 16 slots; `max_keys` is rounded up to a power of two.
 */
#ifndef SL_STORE_GCRA_H
#define SL_STORE_GCRA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/str.h"

typedef struct sl_gcra_params {
    uint64_t emission_ns;  /* T: period / rate, >= 1 */
    uint64_t tolerance_ns; /* burst * T (0: no burst beyond one request) */
} sl_gcra_params_t;

typedef struct sl_gcra_result {
    bool allowed;
    uint64_t limit;          /* the full budget: tolerance / T + 1 requests at once */
    uint64_t remaining;      /* requests that could be admitted right now after this one */
    uint64_t retry_after_ns; /* when refused: wait this long, then the same request is admitted */
    uint64_t reset_ns;       /* time until the key is back to a full budget */
} sl_gcra_result_t;

typedef struct sl_gcra_key {
    uint64_t hi, lo; /* never both 0 (0,0 marks a free slot) */
} sl_gcra_key_t;

/** Digest of a limit identity and a key value (SipHash-2-4 or similar, keyed per process). */
sl_gcra_key_t sl_gcra_key_digest(sl_str_t limit_id, sl_str_t value);

/** The digest's state after the identity: computed once per limit, so a request hashes only its
 *  key value. sl_gcra_key_digest_prefixed(prefix of ID, V) == sl_gcra_key_digest(ID, V). */
typedef struct sl_gcra_key_prefix {
    uint64_t v0, v1, v2, v3, tail;
    size_t ntail, total;
} sl_gcra_key_prefix_t;
void sl_gcra_key_prefix(sl_str_t limit_id, sl_gcra_key_prefix_t *out);
sl_gcra_key_t sl_gcra_key_digest_prefixed(const sl_gcra_key_prefix_t *prefix, sl_str_t value);

/** The pure decision, for tests and for the Redis script's twin: given the key's TAT (0 = none),
 *  whether a request of `cost` at `now_ns` is admitted, the new TAT, and the result figures. */
bool sl_gcra_decide(const sl_gcra_params_t *p, uint64_t tat_ns, uint64_t now_ns, uint32_t cost, uint64_t *new_tat_ns,
                    sl_gcra_result_t *out);

typedef struct sl_gcra_table sl_gcra_table_t;

/** A table of `max_keys` slots (rounded up to a power of two, at least one bucket). 0 or
 *  SL_EINVALID (0 keys, or more than 2^32). Main thread. */
int sl_gcra_table_create(size_t max_keys, sl_gcra_table_t **out);
void sl_gcra_table_destroy(sl_gcra_table_t *t);

/**
 * Admits (or not) a request of `cost` for `key` at `now_ns` (monotonic). Returns 0 with `*out`
 * filled, or SL_ETOOBIG when the key is new and no slot is free (every probed slot holds a live
 * key): the caller decides (the filter admits and counts it: a full table must not turn into an
 * outage). `cost` >= 1 (0: SL_EINVALID). Any thread; allocation-free; lock-free for a key
 * already in the table; the first request of a new key serialises with other new keys of the
 * same 16-slot bucket for a few stores (see gcra.c).
 */
int sl_gcra_admit(sl_gcra_table_t *t, sl_gcra_key_t key, const sl_gcra_params_t *p, uint64_t now_ns, uint32_t cost,
                  sl_gcra_result_t *out);

/**
 * Reads `key`'s state at `now_ns` without changing it (the admin API's usage view): `*out` says
 * what the key has left right now, as the admit of a request of cost 1 would see it before
 * deciding (`allowed`: one more would be admitted; `remaining`: requests admissible at once;
 * `retry_after_ns`: the wait until one more is; `reset_ns`: until a full budget). Returns 0, or
 * SL_ENOTFOUND when the key holds no live state (never seen, or expired): `*out` is then a full
 * budget (so is every key of a NULL table). Any thread; lock-free; a reader racing an admit
 * sees the state before or after it.
 */
int sl_gcra_peek(const sl_gcra_table_t *t, sl_gcra_key_t key, const sl_gcra_params_t *p, uint64_t now_ns,
                 sl_gcra_result_t *out);

/** Live keys (TAT in the future) counted by a sweep of the table; O(slots). Main thread. */
size_t sl_gcra_table_live(const sl_gcra_table_t *t, uint64_t now_ns);
/** Times SL_ETOOBIG was returned (table full), since create. Any thread. */
uint64_t sl_gcra_table_full_total(const sl_gcra_table_t *t);

#endif
