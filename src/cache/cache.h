/*
 * The response cache core (docs/cache.md): an RFC 9111 shared cache's store, its freshness
 * arithmetic and its keys. No I/O and no libuv: the proxy (src/upstream/proxy.c) drives it.
 *
 * Why hand-written: no Debian package offers an embeddable, byte-bounded, thread-safe HTTP
 * object store (libmemcached & co. are clients of a server; Varnish/ATS/nginx caches are not
 * libraries), and RFC 9111's arithmetic is a few hundred lines that must see our header lists.
 *
 * Sharing: one store per process, shared by every worker, split in SL_CACHE_SHARDS shards each
 * with its own mutex, hash table, byte budget and segmented LRU. A lookup holds one shard's lock
 * for a hash probe and a list move, never while bytes are copied to a client: objects are
 * refcounted and immutable once published, so a HIT streams from the object outside the lock.
 * Per-worker stores would need no lock, but every worker would miss (and fetch) every URL once,
 * N workers would hold N copies in the same budget, a purge would have to reach N threads and
 * concurrent misses on different workers could not be coalesced; the lock is taken only on
 * routes with `cache`, so a plain proxied request still takes none.
 *
 * Admission: each shard is a segmented LRU (probation + protected, 80 % of the shard). New
 * objects enter probation; only a second hit promotes one to protected; eviction takes the
 * probation tail first. A scan of one-time URLs therefore only churns probation and the hot set
 * survives it.
 *
 * Memory class: objects are refcounted shared objects (STYLE.md), heap-allocated; the table
 * holds one reference, each exchange serving one holds another (released by its arena).
 * Threads: every function may be called from any thread unless it says otherwise.
 */
#ifndef SL_CACHE_CACHE_H
#define SL_CACHE_CACHE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/arena.h"
#include "common/str.h"
#include "config/config.h"
#include "http/exchange.h"
#include "http/header.h"

#define SL_CACHE_SHARDS 16

/* ---- Cache-Control and dates (RFC 9111 §5.2, RFC 9110 §5.6.7) ---------------------------- */

enum {
    SL_CC_NO_STORE = 1u << 0,
    SL_CC_NO_CACHE = 1u << 1, /* unqualified only; no-cache="field" is treated the same */
    SL_CC_PRIVATE = 1u << 2,
    SL_CC_PUBLIC = 1u << 3,
    SL_CC_MUST_REVALIDATE = 1u << 4,
    SL_CC_PROXY_REVALIDATE = 1u << 5,
    SL_CC_MAX_AGE = 1u << 6,
    SL_CC_S_MAXAGE = 1u << 7,
    SL_CC_STALE_IF_ERROR = 1u << 8,
    SL_CC_STALE_WHILE_REVALIDATE = 1u << 9,
    SL_CC_ONLY_IF_CACHED = 1u << 10,
};

typedef struct sl_cache_control {
    uint32_t flags;
    int64_t max_age, s_maxage, stale_if_error, stale_while_revalidate; /* seconds, when flagged */
} sl_cache_control_t;

/** Adds the directives of one Cache-Control field value to `cc` (call once per field; zero
 *  `cc` first). Unknown directives are ignored; a malformed delta-seconds makes max-age /
 *  s-maxage 0 (RFC 9111 §4.2.1: treat as stale) and drops the stale-* extensions. */
void sl_cache_control_parse(sl_str_t value, sl_cache_control_t *cc);

/** Every Cache-Control field of `h` (Pragma: no-cache too when there is none, RFC 9111 §5.4). */
void sl_cache_control_of(const sl_headers_t *h, sl_cache_control_t *cc);

/** An HTTP-date (IMF-fixdate, RFC 850 or asctime, RFC 9110 §5.6.7) into Unix seconds.
 *  Returns false (and leaves `*out`) when `s` is not one. */
bool sl_http_date_parse(sl_str_t s, int64_t *out);

/* ---- freshness (RFC 9111 §4.2) ------------------------------------------------------------ */

/* What the store keeps about a response to judge it later. Times are Unix seconds. */
typedef struct sl_cache_meta {
    int status;
    int64_t request_time;           /* when the request that fetched it was sent */
    int64_t response_time;          /* when its head arrived */
    int64_t date_value;             /* its Date, or response_time when absent */
    int64_t age_value;              /* its Age, 0 when absent */
    int64_t lifetime;               /* freshness lifetime */
    int64_t stale_if_error;         /* seconds past expiry it may be served on upstream failure */
    int64_t stale_while_revalidate; /* seconds past expiry it may be served while revalidating */
    bool no_stale;                  /* must-revalidate, proxy-revalidate or s-maxage: never served stale */
    bool no_cache;                  /* stored, but every use needs revalidation */
    bool auth_ok;                   /* may answer requests with Authorization (public, s-maxage, must-revalidate) */
    bool has_validator;             /* ETag or Last-Modified */
} sl_cache_meta_t;

/* Why a response is not stored (the `reason` of sl_cache_response_analyze). */
enum sl_cache_verdict {
    SL_CACHE_STORE = 0,
    SL_CACHE_NO_STATUS,    /* status not cacheable */
    SL_CACHE_NO_STORE,     /* Cache-Control: no-store */
    SL_CACHE_NO_PRIVATE,   /* Cache-Control: private */
    SL_CACHE_NO_AUTH,      /* request had Authorization, response not marked shareable */
    SL_CACHE_NO_COOKIE,    /* Set-Cookie: kept out of a shared cache */
    SL_CACHE_NO_VARY_STAR, /* Vary: * */
    SL_CACHE_NO_FRESHNESS, /* neither freshness nor a validator: useless to keep */
};

/**
 * Decides whether a response may be stored and fills `out` (RFC 9111 §3, §4.2.1). The route's
 * `ttl` stands in for the origin's freshness when it gives none, for the statuses RFC 9110
 * §15.1 calls heuristically cacheable; heuristic freshness from Last-Modified is never used.
 * `out` is filled whatever the verdict. Pure.
 */
enum sl_cache_verdict sl_cache_response_analyze(const sl_cache_conf_t *conf, int status, const sl_headers_t *resp,
                                                bool req_has_auth, int64_t request_time, int64_t response_time,
                                                sl_cache_meta_t *out);

/** The current age of a stored response at `now` (RFC 9111 §4.2.3). */
int64_t sl_cache_current_age(const sl_cache_meta_t *m, int64_t now);

/* ---- keys (RFC 9111 §2, §4.1) ------------------------------------------------------------ */

/** The primary key of a request: "host\ntarget" with the host lower-cased and the method left
 *  out (HEAD and GET share entries). In `a`; never fails. */
sl_str_t sl_cache_key(sl_arena_t *a, sl_str_t host, sl_str_t path, sl_str_t query);

/** The hash of (tag, key): picks the shard and bucket. */
uint64_t sl_cache_hash(uint64_t tag, sl_str_t key);

/** A route's cache identity: its name, upstreams, path rewrites and cache settings. Entries of a
 *  route whose tag is unchanged by a reload stay valid; any change starts it from empty. */
uint64_t sl_cache_route_tag(const sl_route_conf_t *r);

/** Normalises a Vary field list ("Accept-Encoding, accept-language") into "accept-encoding\n
 *  accept-language" in `a`; sets `*star` for "*". Combines several Vary fields of `h`. */
sl_str_t sl_cache_vary_names(sl_arena_t *a, const sl_headers_t *h, bool *star);

/** The selecting values of request headers `h` for `names` (sl_cache_vary_names' form): each
 *  field's values joined with ", ", whitespace trimmed, one per name, '\n'-separated. In `a`. */
sl_str_t sl_cache_vary_values(sl_arena_t *a, sl_str_t names, const sl_headers_t *h);

/* ---- objects ------------------------------------------------------------------------------ */

typedef struct sl_cache_obj sl_cache_obj_t;

struct sl_cache_obj {
    atomic_uint refs;
    /* The store's links, under the shard lock. */
    sl_cache_obj_t *hnext, *prev, *next;
    uint8_t segment; /* 0 none, 1 probation, 2 protected */
    uint64_t hash, tag;
    size_t size; /* bytes charged to the budget */
    /* Immutable once inserted. */
    sl_str_t route; /* route name, for purges by route */
    sl_str_t key, vary_names, vary_values;
    sl_cache_meta_t meta;
    sl_header_t *headers; /* end-to-end response headers as received (no Age, no Sluice-*) */
    size_t nheaders;
    sl_str_t etag, last_modified; /* slices of `headers`' values, or empty */
    char *body;
    size_t body_len, body_cap;
};

/**
 * A new object (refcount 1, not in any store) with copies of everything given; `body_hint`
 * bytes of body are reserved (the Content-Length when known). Headers named Age, Sluice-Cache
 * or Sluice-Error are not kept.
 */
sl_cache_obj_t *sl_cache_obj_create(sl_str_t route, uint64_t tag, sl_str_t key, sl_str_t vary_names,
                                    sl_str_t vary_values, const sl_cache_meta_t *meta, const sl_header_t *headers,
                                    size_t nheaders, size_t body_hint);

/** Appends body bytes; SL_ETOOBIG (nothing appended) when the body would pass `max`. Only before
 *  the object is inserted, by its one owner. */
int sl_cache_obj_append(sl_cache_obj_t *o, const char *data, size_t len, uint64_t max);

/** Gives back the body's unused reserve (a body of unknown length grows by doubling), so the
 *  budget is charged what is kept. Before insertion, by the owner. */
void sl_cache_obj_trim(sl_cache_obj_t *o);

sl_cache_obj_t *sl_cache_obj_ref(sl_cache_obj_t *o);
/** Drops a reference; the last frees the object. NULL is ignored. */
void sl_cache_obj_unref(sl_cache_obj_t *o);
/** sl_cache_obj_unref with a void pointer (arena cleanups). */
void sl_cache_obj_release(void *o);

/** A copy of `o` with the headers of a 304 merged in (RFC 9111 §3.2: fields in `update`
 *  replace the stored ones of the same name) and a new `meta`; the body is copied. */
sl_cache_obj_t *sl_cache_obj_refresh(const sl_cache_obj_t *o, const sl_header_t *update, size_t nupdate,
                                     const sl_cache_meta_t *meta);

/* ---- the store ---------------------------------------------------------------------------- */

typedef struct sl_cache sl_cache_t;

typedef struct sl_cache_stats {
    uint64_t bytes, objects, budget;
    uint64_t inserts, evictions, rejected_too_big;
} sl_cache_stats_t;

/** A store of at most `budget` bytes (objects and their bodies); refcount 1 for the caller. */
sl_cache_t *sl_cache_create(uint64_t budget);
sl_cache_t *sl_cache_ref(sl_cache_t *c);
/** The last reference frees every object not held by an exchange. */
void sl_cache_unref(sl_cache_t *c);
/** A new budget (reload); shards over it shrink at their next insert. */
void sl_cache_set_budget(sl_cache_t *c, uint64_t budget);

/**
 * The object stored for (tag, hash, key) whose Vary selecting values match request headers
 * `req`, with a reference for the caller, or NULL. A hit counts toward promotion. `scratch`
 * holds the temporary selecting values.
 */
sl_cache_obj_t *sl_cache_lookup(sl_cache_t *c, uint64_t tag, uint64_t hash, sl_str_t key, const sl_headers_t *req,
                                sl_arena_t *scratch);

/**
 * Publishes `o` (the store takes its own reference), replacing the object with the same key and
 * selecting values and keeping at most `max_variants` variants of the key (the oldest go).
 * Evicts to stay within the shard's share of the budget. SL_ETOOBIG when `o` alone is larger
 * than a quarter of a shard's share (it would flush the shard).
 */
int sl_cache_insert(sl_cache_t *c, sl_cache_obj_t *o, uint32_t max_variants);

/** Removes every variant of (tag, hash, key) (RFC 9111 §4.4); returns how many. */
size_t sl_cache_invalidate(sl_cache_t *c, uint64_t tag, uint64_t hash, sl_str_t key);

/** Removes objects of route `route` (empty: every route) whose target (the key after the host,
 *  path and query) is `target` (empty: any). Returns how many. */
size_t sl_cache_purge(sl_cache_t *c, sl_str_t route, sl_str_t target);

/** Removes objects whose tag is not one of `tags` (after a reload: routes that changed). */
size_t sl_cache_retain(sl_cache_t *c, const uint64_t *tags, size_t ntags);

enum sl_cache_lock_result {
    SL_CACHE_LOCK_TAKEN = 1, /* the caller fetches; the others wait for it */
    SL_CACHE_LOCK_BUSY,      /* another exchange is fetching: wait, then look again */
    SL_CACHE_LOCK_PASS,      /* the last fetch was not storable: go upstream at once, unlocked */
};

/**
 * Request coalescing: takes the fetch lock of (tag, hash, key) for `hold_ms`, or says that
 * another exchange holds it (unexpired) or that the key was just found uncacheable. `now_ms` is
 * monotonic. An expired lock is taken over (its holder is stuck or gone).
 */
enum sl_cache_lock_result sl_cache_lock(sl_cache_t *c, uint64_t tag, uint64_t hash, sl_str_t key, uint64_t now_ms,
                                        uint64_t hold_ms);
/** Releases a lock taken by sl_cache_lock. With `pass_ms` > 0 it turns into a pass marker for
 *  that long instead (waiters and newcomers go upstream at once rather than one by one). */
void sl_cache_unlock(sl_cache_t *c, uint64_t tag, uint64_t hash, sl_str_t key, uint64_t now_ms, uint64_t pass_ms);

void sl_cache_stats(sl_cache_t *c, sl_cache_stats_t *out);

#endif
