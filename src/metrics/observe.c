/*
 * The update path: called by a worker thread in the log phase of every exchange, per upstream
 * try and per connection event. It writes only the calling worker's own storage, with relaxed
 * load + store (one writer per counter, so no read-modify-write and no lock prefix), never
 * allocates and never takes a lock; the scraper (render.c) sums the workers later.
 */
#include "metrics/metrics.h"

#include <string.h>

#include "common/bug.h"
#include "metrics/internal.h"

/* 0.5 ms .. 60 s: gateway overhead lives in the first buckets, slow upstreams in the last. */
const uint64_t sl__metrics_bounds_ns[SL__METRICS_NBUCKETS] = {
    500000ull,     1000000ull,     2500000ull,     5000000ull,     10000000ull,   25000000ull,
    50000000ull,   100000000ull,   250000000ull,   500000000ull,   1000000000ull, 2500000000ull,
    5000000000ull, 10000000000ull, 30000000000ull, 60000000000ull,
};
const char *const sl__metrics_bounds_text[SL__METRICS_NBUCKETS] = {
    "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1",
    "0.25",   "0.5",   "1",      "2.5",   "5",    "10",    "30",   "60",
};

_Static_assert(SL_METHOD__COUNT <= 16, "method must fit 4 key bits");
_Static_assert(SL_CAUSE__COUNT <= 64, "cause must fit 6 key bits");
_Static_assert((SL_METRICS_ROUTE_KEYS & (SL_METRICS_ROUTE_KEYS - 1)) == 0, "table size must be a power of two");

static void hist_observe(sl__metrics_hist_t *h, uint64_t ns)
{
    /* A linear scan: 16 predictable compares beat a binary search's mispredictions. */
    size_t b = 0;
    while (b < SL__METRICS_NBUCKETS && ns > sl__metrics_bounds_ns[b])
        b++;
    sl__metrics_add(&h->buckets[b], 1);
    sl__metrics_add(&h->sum_ns, ns);
}

void sl__metrics_route_count(sl__metrics_route_t *r, uint32_t key, uint64_t n)
{
    /* Fibonacci hashing spreads the few keys a route sees (mostly one method, a few statuses)
     * over the table; probing the whole table keeps the cap exactly SL_METRICS_ROUTE_KEYS. */
    size_t i = (size_t)((key * 2654435761u) >> 26) & (SL_METRICS_ROUTE_KEYS - 1);
    for (size_t probes = 0; probes < SL_METRICS_ROUTE_KEYS; probes++, i = (i + 1) & (SL_METRICS_ROUTE_KEYS - 1)) {
        uint32_t k = atomic_load_explicit(&r->keys[i], memory_order_relaxed);
        if (k == key) {
            sl__metrics_add(&r->counts[i], n);
            return;
        }
        if (k == 0) {
            /* Count first, then publish the key (release): a scraper that sees the key also
             * sees a count, never a key whose count belongs to nothing yet. */
            sl__metrics_add(&r->counts[i], n);
            atomic_store_explicit(&r->keys[i], key, memory_order_release);
            return;
        }
    }
    sl__metrics_add(&r->overflow, n);
}

static uint32_t route_slot(const sl_metrics_schema_t *s, const sl_exchange_t *x)
{
    if (x->route_index < 0)
        return SL__METRICS_ROUTE_NONE;
    if (s == NULL)
        return SL__METRICS_ROUTE_OVERFLOW;
    size_t i = (size_t)x->route_index;
    if (i < s->nroutes) {
        uint32_t slot = s->route_slot[i];
        if (slot == SL__METRICS_ROUTE_OVERFLOW || sl_str_eq(s->route_name[slot], x->route_name))
            return slot;
    }
    /* The exchange ran with another config than `s` (the caller passed the worker's newest
     * schema): find the route by name. */
    size_t h = (size_t)sl__metrics_hash(0, x->route_name) & s->route_mask;
    for (uint32_t e; (e = s->route_index[h]) != 0; h = (h + 1) & s->route_mask)
        if (sl_str_eq(s->route_name[s->route_slot[e - 1]], x->route_name))
            return s->route_slot[e - 1];
    return SL__METRICS_ROUTE_OVERFLOW;
}

/* The refusing limit by its label (the filter's detail is "rate_limit:<label>"): a scan of the
 * route's few labels, on refusals only. */
static void count_rate_limited(sl__metrics_route_t *r, const sl_metrics_schema_t *s, const sl_exchange_t *x)
{
    static const char prefix[] = "rate_limit:";
    if (s == NULL || x->cause_detail == NULL || strncmp(x->cause_detail, prefix, sizeof(prefix) - 1) != 0 ||
        x->route_index < 0 || (size_t)x->route_index >= s->nroutes)
        return;
    sl_str_t label = sl_str_from_cstr(x->cause_detail + sizeof(prefix) - 1);
    size_t i = (size_t)x->route_index;
    for (uint32_t k = s->rl_base[i]; k < s->rl_base[i + 1]; k++)
        if (sl_str_eq(s->rl_labels[k], label)) {
            uint32_t n = k - s->rl_base[i];
            sl__metrics_add(&r->rate_limited[n < SL_METRICS_RATE_LIMITS ? n : SL_METRICS_RATE_LIMITS - 1], 1);
            return;
        }
}

void sl_metrics_observe_exchange(sl_metrics_worker_t *w, const sl_metrics_schema_t *s, const sl_exchange_t *x,
                                 uint64_t end_ns)
{
    sl__metrics_route_t *r = atomic_load_explicit(&w->routes[route_slot(s, x)], memory_order_acquire);
    /* NULL only when `w` was created off the control thread while a schema was being built. */
    SL_DEBUG_BUG_ON(r == NULL);
    if (r != NULL) {
        unsigned method = (unsigned)x->method < SL_METHOD__COUNT ? (unsigned)x->method : SL_METHOD_OTHER;
        unsigned status = x->status >= 100 && x->status <= 599 ? (unsigned)x->status : 0;
        unsigned cause = (unsigned)x->cause < SL_CAUSE__COUNT ? (unsigned)x->cause : SL_CAUSE_INTERNAL_ERROR;
        sl__metrics_route_count(r, sl__metrics_key(method, status, cause), 1);
        hist_observe(&r->duration, end_ns > x->start_ns ? end_ns - x->start_ns : 0);
        if (x->cause == SL_CAUSE_RATE_LIMITED)
            count_rate_limited(r, s, x);
    }
    sl__metrics_add(&w->bytes_in, x->bytes_in);
    sl__metrics_add(&w->bytes_out, x->bytes_out);
}

void sl_metrics_observe_cache(sl_metrics_worker_t *w, const sl_metrics_schema_t *s, const sl_exchange_t *x,
                              enum sl_metrics_cache_result result)
{
    sl__metrics_route_t *r = atomic_load_explicit(&w->routes[route_slot(s, x)], memory_order_acquire);
    if (r != NULL && (unsigned)result < SL_METRICS_CACHE__COUNT)
        sl__metrics_add(&r->cache[result], 1);
}

const char *sl_metrics_cache_result_name(enum sl_metrics_cache_result r)
{
    static const char *const names[SL_METRICS_CACHE__COUNT] = {"BYPASS", "EXPIRED", "HIT", "MISS", "STALE"};
    return (unsigned)r < SL_METRICS_CACHE__COUNT ? names[r] : "BYPASS";
}

const char *const sl__metrics_auth_names[SL_METRICS_AUTH__COUNT] = {
    [SL_METRICS_AUTH_ACL_ANONYMOUS] = "acl_anonymous",
    [SL_METRICS_AUTH_ACL_DENIED_GROUP] = "acl_denied_group",
    [SL_METRICS_AUTH_ACL_NOT_IN_GROUP] = "acl_not_in_group",
    [SL_METRICS_AUTH_API_KEY_UNKNOWN] = "api_key_unknown",
    [SL_METRICS_AUTH_BASIC_BAD_PASSWORD] = "basic_bad_password",
    [SL_METRICS_AUTH_BASIC_MALFORMED] = "basic_malformed",
    [SL_METRICS_AUTH_BASIC_UNKNOWN_USER] = "basic_unknown_user",
    [SL_METRICS_AUTH_CORS_HEADERS] = "cors_headers",
    [SL_METRICS_AUTH_CORS_METHOD] = "cors_method",
    [SL_METRICS_AUTH_CORS_ORIGIN] = "cors_origin",
    [SL_METRICS_AUTH_INTROSPECTION_NO_CONSUMER] = "introspection_no_consumer",
    [SL_METRICS_AUTH_INTROSPECTION_TOO_LARGE] = "introspection_too_large",
    [SL_METRICS_AUTH_IP_DENIED] = "ip_denied",
    [SL_METRICS_AUTH_JWT_ALG_NOT_ALLOWED] = "jwt_alg_not_allowed",
    [SL_METRICS_AUTH_JWT_BAD_AUDIENCE] = "jwt_bad_audience",
    [SL_METRICS_AUTH_JWT_BAD_CONSUMER_CLAIM] = "jwt_bad_consumer_claim",
    [SL_METRICS_AUTH_JWT_BAD_GROUPS_CLAIM] = "jwt_bad_groups_claim",
    [SL_METRICS_AUTH_JWT_BAD_ISSUER] = "jwt_bad_issuer",
    [SL_METRICS_AUTH_JWT_BAD_SIGNATURE] = "jwt_bad_signature",
    [SL_METRICS_AUTH_JWT_CLAIMS_TOO_LARGE] = "jwt_claims_too_large",
    [SL_METRICS_AUTH_JWT_EXPIRED] = "jwt_expired",
    [SL_METRICS_AUTH_JWT_ISSUED_IN_FUTURE] = "jwt_issued_in_future",
    [SL_METRICS_AUTH_JWT_MALFORMED] = "jwt_malformed",
    [SL_METRICS_AUTH_JWT_MISSING_CLAIM] = "jwt_missing_claim",
    [SL_METRICS_AUTH_JWT_NO_KEYS] = "jwt_no_keys",
    [SL_METRICS_AUTH_JWT_NOT_YET_VALID] = "jwt_not_yet_valid",
    [SL_METRICS_AUTH_JWT_UNKNOWN_KID] = "jwt_unknown_kid",
    [SL_METRICS_AUTH_MTLS_NO_CERTIFICATE] = "mtls_no_certificate",
    [SL_METRICS_AUTH_MTLS_NO_TLS] = "mtls_no_tls",
    [SL_METRICS_AUTH_MTLS_UNKNOWN_CERTIFICATE] = "mtls_unknown_certificate",
    [SL_METRICS_AUTH_MTLS_UNVERIFIED] = "mtls_unverified",
    [SL_METRICS_AUTH_NO_CREDENTIALS] = "no_credentials",
    [SL_METRICS_AUTH_OTHER] = "other",
    [SL_METRICS_AUTH_TOKEN_EXPIRED] = "token_expired",
    [SL_METRICS_AUTH_TOKEN_INACTIVE] = "token_inactive",
    [SL_METRICS_AUTH_TOKEN_TOO_LARGE] = "token_too_large",
};

enum sl_metrics_auth_detail sl_metrics_auth_detail_of(const char *detail)
{
    if (detail == NULL)
        return SL_METRICS_AUTH_OTHER;
    /* A linear scan of short literals: runs only for refused requests, and most compares stop
     * at the first byte or right after "jwt_". */
    for (size_t i = 0; i < SL_METRICS_AUTH__COUNT; i++)
        if (i != SL_METRICS_AUTH_OTHER && strcmp(detail, sl__metrics_auth_names[i]) == 0)
            return (enum sl_metrics_auth_detail)i;
    return SL_METRICS_AUTH_OTHER;
}

void sl_metrics_observe_auth_failure(sl_metrics_worker_t *w, const sl_metrics_schema_t *s, const sl_exchange_t *x)
{
    if (x->cause != SL_CAUSE_AUTH_MISSING && x->cause != SL_CAUSE_AUTH_INVALID && x->cause != SL_CAUSE_AUTH_EXPIRED &&
        x->cause != SL_CAUSE_FORBIDDEN)
        return;
    sl__metrics_route_t *r = atomic_load_explicit(&w->routes[route_slot(s, x)], memory_order_acquire);
    SL_DEBUG_BUG_ON(r == NULL);
    if (r != NULL)
        sl__metrics_add(&r->auth[sl_metrics_auth_detail_of(x->cause_detail)], 1);
}

static uint32_t target_slot(const sl_metrics_schema_t *s, size_t upstream_index, size_t target_index)
{
    if (s != NULL && upstream_index < s->nupstreams &&
        target_index < s->target_base[upstream_index + 1] - s->target_base[upstream_index])
        return s->target_slot[s->target_base[upstream_index] + target_index];
    return SL__METRICS_TGT_OVERFLOW;
}

void sl_metrics_observe_upstream(sl_metrics_worker_t *w, const sl_metrics_schema_t *s, size_t upstream_index,
                                 size_t target_index, uint64_t first_byte_ns)
{
    sl__metrics_target_t *t =
        atomic_load_explicit(&w->targets[target_slot(s, upstream_index, target_index)], memory_order_acquire);
    SL_DEBUG_BUG_ON(t == NULL);
    if (t != NULL)
        hist_observe(&t->first_byte, first_byte_ns);
}

static enum sl_metrics_upstream_error error_kind(enum sl_cause cause)
{
    switch (cause) {
    case SL_CAUSE_UPSTREAM_CONNECT_FAILED:
        return SL_METRICS_UPSTREAM_ERR_CONNECT_FAILED;
    case SL_CAUSE_UPSTREAM_RESET:
        return SL_METRICS_UPSTREAM_ERR_RESET;
    case SL_CAUSE_UPSTREAM_BAD_RESPONSE:
        return SL_METRICS_UPSTREAM_ERR_BAD_RESPONSE;
    case SL_CAUSE_UPSTREAM_TIMEOUT:
        return SL_METRICS_UPSTREAM_ERR_TIMEOUT;
    case SL_CAUSE_NONE:
        return SL_METRICS_UPSTREAM_ERR_5XX;
    default:
        return SL_METRICS_UPSTREAM_ERR_OTHER;
    }
}

void sl_metrics_observe_upstream_failure(sl_metrics_worker_t *w, const sl_metrics_schema_t *s, size_t upstream_index,
                                         size_t target_index, enum sl_cause cause)
{
    sl__metrics_target_t *t =
        atomic_load_explicit(&w->targets[target_slot(s, upstream_index, target_index)], memory_order_acquire);
    SL_DEBUG_BUG_ON(t == NULL);
    if (t != NULL)
        sl__metrics_add(&t->errors[error_kind(cause)], 1);
}

/* ---- the unmatched-request sampler -------------------------------------------------------- */

static char key_byte(char c, bool lower)
{
    /* Printable ASCII only (no space: it separates host and segment in the key). */
    if (c <= 0x20 || c >= 0x7f)
        return '?';
    return lower && c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

/* "host /segment" into `words` (NUL-padded); returns its hash (never 0). */
static uint64_t unmatched_key(sl_str_t host, sl_str_t path, uint64_t words[SL__METRICS_UNMATCHED_WORDS])
{
    char key[SL_METRICS_UNMATCHED_KEY];
    memset(key, 0, sizeof(key));
    size_t n = 0;
    for (size_t i = 0; i < host.len && n < SL_METRICS_UNMATCHED_HOST; i++)
        key[n++] = key_byte(host.ptr[i], true);
    key[n++] = ' ';
    key[n++] = '/';
    /* The first segment: the bytes after the leading '/' up to the next '/' (or '?'). */
    size_t i = path.len > 0 && path.ptr[0] == '/' ? 1 : 0;
    for (; i < path.len && path.ptr[i] != '/' && path.ptr[i] != '?' && n < SL_METRICS_UNMATCHED_KEY - 1; i++)
        key[n++] = key_byte(path.ptr[i], false);
    memcpy(words, key, sizeof(key));
    uint64_t h = 1469598103934665603ull;
    for (size_t k = 0; k < n; k++) {
        h ^= (unsigned char)key[k];
        h *= 1099511628211ull;
    }
    return h ? h : 1;
}

static void entry_write(sl__metrics_unmatched_entry_t *e, uint64_t hash, const uint64_t *words, uint64_t count)
{
    uint32_t seq = atomic_load_explicit(&e->seq, memory_order_relaxed);
    atomic_store_explicit(&e->seq, seq + 1, memory_order_relaxed);
    /* Orders the odd seq before the data stores for a reader that sees any of them. */
    atomic_thread_fence(memory_order_release);
    atomic_store_explicit(&e->hash, hash, memory_order_relaxed);
    for (size_t k = 0; k < SL__METRICS_UNMATCHED_WORDS; k++)
        atomic_store_explicit(&e->key[k], words[k], memory_order_relaxed);
    atomic_store_explicit(&e->count, count, memory_order_relaxed);
    atomic_store_explicit(&e->seq, seq + 2, memory_order_release);
}

void sl_metrics_observe_unmatched(sl_metrics_worker_t *w, sl_str_t host, sl_str_t path)
{
    uint64_t words[SL__METRICS_UNMATCHED_WORDS];
    uint64_t hash = unmatched_key(host, path, words);
    sl__metrics_unmatched_entry_t *min = NULL;
    uint64_t min_count = UINT64_MAX;
    for (size_t i = 0; i < SL_METRICS_UNMATCHED_TOP; i++) {
        sl__metrics_unmatched_entry_t *e = &w->unmatched[i];
        uint64_t h = atomic_load_explicit(&e->hash, memory_order_relaxed);
        uint64_t c = atomic_load_explicit(&e->count, memory_order_relaxed);
        if (h == hash) {
            bool same = true;
            for (size_t k = 0; same && k < SL__METRICS_UNMATCHED_WORDS; k++)
                same = atomic_load_explicit(&e->key[k], memory_order_relaxed) == words[k];
            if (same) {
                /* A count alone changes: a reader sees the old or the new one, both true. */
                atomic_store_explicit(&e->count, c + 1, memory_order_relaxed);
                return;
            }
        }
        if (h == 0) {
            entry_write(e, hash, words, 1);
            return;
        }
        if (c < min_count) {
            min = e;
            min_count = c;
        }
    }
    /* Space-saving: the new key takes the smallest entry's place and count + 1, so a key that
     * keeps coming rises to the top and the counts stay upper bounds of the true ones. */
    entry_write(min, hash, words, min_count + 1);
}

static void gauge_add(_Atomic int64_t *g, int64_t d)
{
    atomic_store_explicit(g, atomic_load_explicit(g, memory_order_relaxed) + d, memory_order_relaxed);
}

void sl_metrics_connection_opened(sl_metrics_worker_t *w)
{
    sl__metrics_add(&w->accepted, 1);
    gauge_add(&w->idle, 1);
}

void sl_metrics_connection_active(sl_metrics_worker_t *w, bool active)
{
    gauge_add(&w->active, active ? 1 : -1);
    gauge_add(&w->idle, active ? -1 : 1);
}

void sl_metrics_connection_closed(sl_metrics_worker_t *w, bool was_active)
{
    gauge_add(was_active ? &w->active : &w->idle, -1);
}

void sl_metrics_connections_set(sl_metrics_worker_t *w, uint64_t active, uint64_t idle)
{
    atomic_store_explicit(&w->active, (int64_t)active, memory_order_relaxed);
    atomic_store_explicit(&w->idle, (int64_t)idle, memory_order_relaxed);
}

void sl_metrics_connection_accepted(sl_metrics_worker_t *w)
{
    sl__metrics_add(&w->accepted, 1);
}
