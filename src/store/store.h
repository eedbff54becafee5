/*
 * The Redis store (`stores: { redis: ... }`): cluster-wide GCRA rate limits and calendar quotas
 * kept in one Redis, reached from every worker's own loop through hiredis' libuv adapter.
 *
 * One sl_store_t per process (main thread) and one sl_store_worker_t per worker loop, each with
 * its own connection: commands are pipelined on it in order, each with a deadline (a command
 * past `command_timeout_ms` fails, and so does the connection: replies come in order, so every
 * later command would wait behind it). A lost connection is retried after 1 s, doubling to 10 s.
 * One Lua script (store/script.c) is loaded per connection (SCRIPT LOAD) and called by its SHA1
 * (EVALSHA; a NOSCRIPT reply reloads it and retries the command once). The script reads Redis'
 * own clock (TIME), so the clocks of the gateway nodes do not matter.
 *
 * When Redis is unreachable, `on_failure: allow` decides on the local table given at create (per
 * node limits, logged once per change of state and counted), `deny` refuses (the caller answers
 * 503 gateway_overloaded). Cluster limits resume by themselves once Redis is back.
 *
 * Hot keys are leased: a key admitted more than `hot_per_s` times in a second on one worker
 * takes a slice of up to `slice` requests of its budget from Redis in one call and spends it
 * locally; unused units go back to Redis when the lease ends (`lease_ms`). Cluster-wide error:
 * at most (nodes x workers x slice) requests over the limit in any window (docs/internals/store.md).
 *
 * Threads: create/destroy and the process-wide figures on the main thread (figures: any thread);
 * a worker's functions on its own loop's thread only. Callbacks run on that thread too.
 * Memory: the store owns a copy of its conf strings; a worker owns its connection, its
 * recycled request objects and its hot-key table (fixed size). Like libuv, a function that fails
 * synchronously never calls its callback.
 */
#ifndef SL_STORE_STORE_H
#define SL_STORE_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "common/str.h"
#include "store/gcra.h"

/* Store errors: [-10499, -10400], named through sl_strerror. */
enum sl_store_error {
    SL_ESTORE_DOWN = -10499, /* Redis unreachable and on_failure: deny */
    SL_ESTORE_TIMEOUT,       /* a command passed command_timeout_ms */
    SL_ESTORE_REPLY,         /* an error or an unexpected reply from Redis */
    SL_ESTORE_STOPPED,       /* the worker was stopped with the request pending */
    SL_ESTORE__LAST,
};

enum sl_store_on_failure {
    SL_STORE_ALLOW = 1, /* decide on the local table (per node) */
    SL_STORE_DENY,      /* refuse: the caller answers 503 */
};

typedef struct sl_store_conf {
    const char *address; /* host:port, [v6]:port, or host (port 6379); a name is resolved at create */
    enum sl_store_on_failure on_failure;
    uint64_t connect_timeout_ms; /* 0: 1000 */
    uint64_t command_timeout_ms; /* 0: 250 */
    uint32_t slice;              /* units leased per call for hot keys; 0: no leasing */
    uint32_t hot_per_s;          /* a key seen more often than this per second on a worker is hot; 0: 4 * slice */
    uint64_t lease_ms;           /* a lease's life; its unused units are then returned; 0: 250 */
    const char *key_prefix;      /* of every Redis key; NULL: "sluice:" */
    sl_gcra_table_t *fallback;   /* borrowed, outlives the store; NULL: allow admits everything */
    uint64_t fallback_clock_ns;  /* added to now_ns for the fallback table (its owner's clock base) */
} sl_store_conf_t;

typedef struct sl_store sl_store_t;
typedef struct sl_store_worker sl_store_worker_t;
typedef struct sl_store_req sl_store_req_t;

/**
 * Creates the store from `conf` (copied; `fallback` is borrowed). Resolves the address here
 * (blocking: main thread, at config load). Returns 0, SL_EINVALID (bad address or figures) or
 * a getaddrinfo failure as SL_ENOTFOUND. Connects nothing: workers do. Main thread.
 */
int sl_store_create(const sl_store_conf_t *conf, sl_store_t **out);

/** Frees the store. Every worker must have been stopped and its loop run to the end. Main thread. */
void sl_store_destroy(sl_store_t *s);

/**
 * Starts a worker's connection on `loop` (the calling thread's loop): the first connect begins
 * now; commands sent before it is ready wait for it (bounded by the connect timeout). Returns 0
 * or a libuv error. Worker thread.
 */
int sl_store_worker_start(sl_store_t *s, uv_loop_t *loop, sl_store_worker_t **out);

/**
 * Stops a worker: returns its unused leases, lets pending commands finish (bounded by the
 * command timeout), closes the connection and its handles, and frees `w` once they are closed:
 * run the loop on. Requests that were still pending when the connection went away get their
 * callback with SL_ESTORE_STOPPED. `w` must not be used after this call. Worker thread.
 */
void sl_store_worker_stop(sl_store_worker_t *w);

/**
 * `status` is 0 with `res` set (a decision: Redis', or the local table's when Redis failed and
 * on_failure is allow), or negative with `res` NULL: SL_ESTORE_DOWN / SL_ESTORE_TIMEOUT /
 * SL_ESTORE_REPLY under on_failure deny (answer 503 gateway_overloaded), SL_ESTORE_STOPPED.
 * `res` is valid during the call only.
 */
typedef void (*sl_store_admit_cb)(void *arg, int status, const sl_gcra_result_t *res);

/**
 * Admits (or not) a request of `cost` for a limit key. `key` is the caller's digest (local table,
 * lease table); `key_text` is the key's stable identity across nodes and restarts (limit
 * identity + value: the digest is keyed per process) and names the Redis key. `now_ns` is the
 * monotonic clock (local decisions and lease lifetimes; Redis uses its own).
 * Returns 1: decided now, `*out` filled (a lease had budget, a hot key is known to be refused, or
 * Redis is down and on_failure is allow); 0: pending, `cb(arg, ...)` will be called exactly once
 * from a later callback on this loop unless sl_store_cancel(*req) is called first; negative:
 * refused to decide (SL_ESTORE_DOWN: Redis down and on_failure deny; SL_EINVALID: cost 0). On
 * 1 or negative, `cb` is never called and `*req` is not set. Worker thread.
 */
int sl_store_admit(sl_store_worker_t *w, sl_gcra_key_t key, sl_str_t key_text, const sl_gcra_params_t *p, uint32_t cost,
                   uint64_t now_ns, sl_gcra_result_t *out, sl_store_admit_cb cb, void *arg, sl_store_req_t **req);

/** Calendar windows of quotas, in UTC. */
enum sl_store_window {
    SL_STORE_HOUR = 1,
    SL_STORE_DAY,
    SL_STORE_MONTH,
};

typedef struct sl_store_quota_result {
    bool allowed;
    bool local;        /* Redis was down (on_failure allow): admitted uncounted, `used` unknown (0) */
    uint64_t used;     /* in the current window, this request included when allowed */
    uint64_t limit;    /* as given */
    uint64_t reset_ns; /* until the window ends (Redis' clock) */
} sl_store_quota_result_t;

typedef void (*sl_store_quota_cb)(void *arg, int status, const sl_store_quota_result_t *res);

/**
 * Counts `cost` against the quota `key_text` of `limit` per calendar `window` (UTC, Redis'
 * clock): admitted when used + cost <= limit, and only then counted; a cost of 0 reads the
 * usage. The window's counter expires at the window's end. Return values, callback and
 * `*req` as sl_store_admit (1: Redis down and allow, `*out` says `local`). Worker thread.
 */
int sl_store_quota(sl_store_worker_t *w, sl_str_t key_text, enum sl_store_window window, uint64_t limit, uint32_t cost,
                   sl_store_quota_result_t *out, sl_store_quota_cb cb, void *arg, sl_store_req_t **req);

/** Abandons a pending admit or quota: its callback is never called. Calling it from inside that
 *  callback, twice, or after the callback is a bug. Worker thread. */
void sl_store_cancel(sl_store_req_t *r);

/* ---- health ------------------------------------------------------------------------------ */

typedef struct sl_store_health {
    bool up;                /* every started worker has a ready connection */
    uint64_t down_since_ms; /* wall clock; 0 when up */
    unsigned workers, workers_up;
    uint64_t commands;       /* sent to Redis */
    uint64_t failures;       /* commands without a usable reply (connection lost, error reply) */
    uint64_t timeouts;       /* commands past command_timeout_ms */
    uint64_t fallbacks;      /* decisions made locally because Redis was down (allow) */
    uint64_t refusals;       /* decisions refused because Redis was down (deny) */
    uint64_t down_events;    /* transitions of the process from up to down */
    uint64_t reconnects;     /* connections that became ready after a failure */
    uint64_t leases;         /* lease calls answered */
    uint64_t leased_units;   /* units granted by them */
    uint64_t returned_units; /* units given back unused */
    uint64_t lease_admits;   /* hot-key requests decided on the worker (from a lease, or refused
                                until Redis' retry_after), without a Redis call */
} sl_store_health_t;

/** The process-wide view (sums over workers, relaxed reads). Any thread. */
void sl_store_health(sl_store_t *s, sl_store_health_t *out);

/** One worker's connection: ready or not, and since when it is not (wall ms; 0 when ready). */
bool sl_store_worker_up(const sl_store_worker_t *w, uint64_t *down_since_ms);

/** The configured address as resolved ("127.0.0.1:6379"), for logs and the doctor. */
const char *sl_store_address(const sl_store_t *s);

/* ---- tests ------------------------------------------------------------------------------- */

/** Tests: scripts get this wall clock (ns since the epoch) instead of Redis' TIME; NULL
 *  restores TIME. Set before workers start. Quota keys expire at the injected window end, so
 *  inject times after the real clock. */
void sl_store_set_test_clock(sl_store_t *s, uint64_t (*wall_ns)(void *arg), void *arg);

#endif
