/*
 * The JWT key sets of every configured issuer (jwt_issuers), one interface whatever the source:
 * `jwks_url` sets are fetched on the main loop (at apply, every jwks_refresh, and on demand when
 * a worker met an unknown `kid`, at most once per issuer per SL_JWKS_REFRESH_MIN_MS), and the
 * last good set is kept while the provider is down or answers an unusable set; `jwks_file`,
 * `public_key_file` and `secret_env` sets are read at each apply (each config load).
 *
 * Fetching: filters may not depend on a codec (STYLE.md), so the store is handed the fetch
 * functions at create: the server passes `&sl_h1_fetcher` (http1/client.h), tests a fake or the
 * same. Types in http/fetch.h.
 *
 * State is keyed by (issuer name, source, URL/file/variable): across reloads an unchanged
 * URL issuer keeps its set and its timer; a changed URL is a new issuer (fetched afresh); a
 * removed one is stopped. Like sl_health_apply, apply before publishing the snapshot that uses it.
 *
 * Threads:
 * - main thread (the loop given to create): create, apply, stop, each.
 * - any thread, lock-free, allocation-free: get, request_refresh. A reader enters a tiny
 *   critical section (two counters and a phase, a minimal RCU) around "find the issuer slot,
 *   take a reference on its set"; the main thread, after swapping a set or the issuer table,
 *   waits for the readers that may have seen the old one to leave before dropping it. Readers
 *   never block the main thread for longer than a name lookup.
 * - get/request_refresh must not be called after sl_jwks_store_stop (stop workers first).
 *
 * Memory: the store owns one reference per current set; a caller of get owns the one it got
 * (sl_jwks_unref when the verification is done), so a set replaced meanwhile stays valid.
 * Like libuv, a function that fails synchronously never calls its callback.
 */
#ifndef SL_FILTERS_JWKS_STORE_H
#define SL_FILTERS_JWKS_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "common/str.h"
#include "config/config.h"
#include "filters/jwt.h"
#include "http/fetch.h"

/* On-demand refreshes (unknown kid) of one issuer are at most one per this many ms; requests
 * in between are dropped (a fetch in flight or just done already has the newest set). */
#define SL_JWKS_REFRESH_MIN_MS 10000
/* After a failed fetch, retry after 1 s, doubling up to jwks_refresh: a gateway that started
 * while its identity provider was down gets keys soon after it is back. */
#define SL_JWKS_RETRY_MIN_MS 1000

typedef struct sl_jwks_store sl_jwks_store_t;

/**
 * Creates an empty store on `main_loop`. `fetcher` (copied) fetches jwks_url documents; NULL
 * is allowed when no issuer will use jwks_url (apply then fails for one that does). Returns 0
 * or a libuv error.
 */
int sl_jwks_store_create(uv_loop_t *main_loop, const sl_fetcher_t *fetcher, sl_jwks_store_t **out);

/**
 * Makes `cfg`'s jwt_issuers the stored ones. File and environment sources are read here; any
 * error (unreadable file, no usable key, unset or weak secret) is added to `errs` with the
 * issuer's position and the file or variable name, and the store is left unchanged: returns
 * SL_ECONFIG. On success (0), URL issuers that are new have their first fetch started and sets
 * of removed issuers are released once no reader holds them. `cfg` is not kept. Main thread.
 */
int sl_jwks_store_apply(sl_jwks_store_t *s, const sl_config_t *cfg, sl_config_errors_t *errs);

/**
 * Any thread: the current set of issuer `issuer_name` with a new reference (the caller
 * unrefs it), or NULL when there is none (unknown issuer, or a URL issuer whose first fetch has
 * not succeeded yet). `*generation` (may be NULL) is set to the set's sl_jwks_generation, 0
 * when NULL: it changes whenever the set does, so cached verdicts keyed by it expire.
 */
sl_jwks_t *sl_jwks_store_get(sl_jwks_store_t *s, sl_str_t issuer_name, uint64_t *generation);

/**
 * Any thread: the generation of the current set (0 when none) without taking a reference: a
 * verified-token cache hit needs only this, so the hot path touches no shared counter but this
 * thread's guard shard. A miss then calls sl_jwks_store_get (which may return a newer set:
 * cache the verdict under the generation that get returned).
 */
uint64_t sl_jwks_store_generation(sl_jwks_store_t *s, sl_str_t issuer_name);

/**
 * Any thread, cheap: asks for a refetch of a jwks_url issuer's set (a token with an unknown
 * kid). Coalesced and rate-limited (SL_JWKS_REFRESH_MIN_MS per issuer); ignored for other
 * sources and unknown names. The new set, if any, is seen by later gets.
 */
void sl_jwks_store_request_refresh(sl_jwks_store_t *s, sl_str_t issuer_name);

/**
 * Cancels fetches, closes timers and the wakeup handle, and when all are closed frees the
 * store with its references and calls `done(arg)` (may be NULL). Always asynchronous. `s` must
 * not be used after this call, from any thread. Main thread.
 */
void sl_jwks_store_stop(sl_jwks_store_t *s, void (*done)(void *arg), void *arg);

/** One issuer's view, for the admin API and doctor. Strings valid only during the visit. */
typedef struct sl_jwks_store_info {
    const char *issuer;     /* the jwt_issuers name */
    const char *source;     /* "jwks_url", "jwks_file", "public_key_file", "secret_env" */
    size_t nkeys;           /* in the current set; 0 = none */
    uint64_t loaded_ms;     /* wall clock when the current set was fetched or read; 0 = none */
    uint64_t fetches;       /* fetches started (URL sources) */
    uint64_t failures;      /* fetches that failed or gave an unusable set */
    const char *last_error; /* "" when the last fetch succeeded; never NULL */
} sl_jwks_store_info_t;

/** Calls `visit` for each issuer in config order; returns how many. Main thread. */
size_t sl_jwks_store_each(sl_jwks_store_t *s, void (*visit)(void *arg, const sl_jwks_store_info_t *info), void *arg);

/** Tests: changes the on-demand rate limit (SL_JWKS_REFRESH_MIN_MS) of this store. */
void sl_jwks_store_set_refresh_min_ms(sl_jwks_store_t *s, uint64_t ms);

#endif
