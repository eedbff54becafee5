/*
 * The proxy handler: exchange in, upstream HTTP/1.1 out, response back. One state machine per
 * exchange (arena-allocated): pick a target, get a connection, send the head, stream the body
 * up, parse the response head, stream the body down. Backpressure: upstream reads pause while
 * a slice is being written to the client; client body reads pause while a slice is being
 * written upstream. Every failure before the response head reaches the client becomes a
 * gateway error with its cause; after that, the client connection is closed. After a 101 to an
 * upgrade request the exchange becomes a tunnel (PX_TUNNEL): bytes both ways with the same
 * one-write-at-a-time backpressure, half-close, and an idle timeout (docs/websocket.md).
 * Upstreams with `tls` (docs/tls.md "Upstream TLS") handshake inside the connect phase; the
 * connection pool decrypts into the same read buffer, so everything after that is unchanged
 * except where bytes TLS already holds must be pulled without a socket event (refill).
 */
#include "upstream/proxy.h"

#include <arpa/inet.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "cache/cache.h"
#include "common/bug.h"
#include "common/error.h"
#include "common/log.h"
#include "common/time.h"
#include "http/reply.h"
#include "http1/parser.h"
#include "metrics/metrics.h"
#include "net/stream.h"
#include "pipeline/pipeline.h"
#include "upstream/balancer.h"
#include "upstream/breaker.h"
#include "upstream/outlier.h"
#include "upstream/split.h"
#include "upstream/connpool.h"
#include "upstream/h2up.h"

void sl__connpool_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
void sl__connpool_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
void sl__proxy_on_upstream_read(sl_upconn_t *c, ssize_t nread);

#define MAX_RESP_HEADERS 128

/* The clock of ejections and breakers: monotonic ms, the same in every thread. */
static uint64_t now_ms(void)
{
    return sl_time_mono_ns() / 1000000u;
}

/* ---- runtime state of a snapshot's upstreams -------------------------------------------- */

/* The address a target connects to, rewritten by the main thread when a host name is
 * re-resolved while workers read it: a seqlock over three atomic words (family, port, IPv4 or
 * IPv6 bytes), so a reader either copies a whole address or tries again, and every access is
 * atomic (no torn copy, nothing for ThreadSanitizer to object to). One writer: the main thread. */
typedef struct target_addr {
    atomic_uint seq;
    atomic_uint_fast64_t w[3];
} target_addr_t;

static void addr_store(target_addr_t *a, const struct sockaddr *sa)
{
    uint64_t w[3] = {0, 0, 0};
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        uint32_t ip;
        memcpy(&ip, &in->sin_addr, 4);
        w[0] = AF_INET | (uint64_t)ntohs(in->sin_port) << 16 | (uint64_t)ip << 32;
    } else {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        w[0] = AF_INET6 | (uint64_t)ntohs(in6->sin6_port) << 16;
        memcpy(&w[1], &in6->sin6_addr, 16);
    }
    unsigned s = atomic_load_explicit(&a->seq, memory_order_relaxed);
    atomic_store_explicit(&a->seq, s + 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    for (int i = 0; i < 3; i++)
        atomic_store_explicit(&a->w[i], w[i], memory_order_relaxed);
    atomic_store_explicit(&a->seq, s + 2, memory_order_release);
}

static socklen_t addr_load(const target_addr_t *a, struct sockaddr_storage *out)
{
    uint64_t w[3];
    unsigned s1, s2;
    do {
        s1 = atomic_load_explicit(&a->seq, memory_order_acquire);
        for (int i = 0; i < 3; i++)
            w[i] = atomic_load_explicit(&a->w[i], memory_order_relaxed);
        atomic_thread_fence(memory_order_acquire);
        s2 = atomic_load_explicit(&a->seq, memory_order_relaxed);
    } while ((s1 & 1u) || s1 != s2);
    memset(out, 0, sizeof(*out));
    if ((w[0] & 0xffff) == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)out;
        uint32_t ip = (uint32_t)(w[0] >> 32);
        in->sin_family = AF_INET;
        in->sin_port = htons((uint16_t)(w[0] >> 16));
        memcpy(&in->sin_addr, &ip, 4);
        return sizeof(*in);
    }
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)out;
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons((uint16_t)(w[0] >> 16));
    memcpy(&in6->sin6_addr, &w[1], 16);
    return sizeof(*in6);
}

typedef struct target_rt {
    const sl_target_conf_t *conf;
    target_addr_t addr;
    atomic_int resolved;     /* 1 resolved (at least once), 0 pending, -1 never resolved */
    atomic_bool tls_failing; /* a TLS handshake failure was logged; cleared by the next success */
    sl_target_state_t *state;
    /* main thread only */
    uv_getaddrinfo_t gai;
    bool resolving;
    bool failing; /* the last resolution failed: logged once per change */
    uint64_t resolved_at_ms;
    struct upstream_rt *owner;
} target_rt_t;

/* One upstream's runtime state. Refcounted on its own, so consecutive snapshots share it while
 * the upstream's config (name + fingerprint) stays the same: a reload then keeps ejections,
 * open circuits, the balancer's cursor, EWMAs and in-flight counts, the retry budget window
 * and the limits slots, instead of starting every upstream from zero (which also let a reload
 * under load overshoot limits.max_connections while old exchanges still held slots). Every
 * field a worker writes is atomic, so it does not matter which snapshot an exchange reaches
 * it through. */
typedef struct upstream_rt {
    atomic_uint refs; /* snapshots listing it + its pending resolutions */
    sl_config_t *cfg; /* one reference: the generation `conf` and the targets' confs live in */
    const sl_upstream_conf_t *conf;
    target_rt_t *targets;
    size_t ntargets;
    sl_target_state_t *states; /* shared by all workers: in-flight, latency, availability */
    sl_balancer_t *balancer;   /* NULL only if it could not be built (then no_healthy_upstream) */
    sl_outlier_t *outlier;     /* passive ejection (a no-op unless health.passive is set) */
    sl_breaker_t *breaker;     /* per-target circuit breakers (a no-op unless configured) */
    /* Retry budget over a 10 s window, shared by workers: retries <= budget_percent of requests. */
    atomic_uint_fast64_t window_start_ms;
    atomic_uint window_requests;
    atomic_uint window_retries;
    /* limits: connections in use (= exchanges holding a slot) and exchanges waiting for one */
    atomic_uint in_use;
    atomic_uint pending;
} upstream_rt_t;

/* A snapshot's view: its config's upstreams, in config order, each one reference. */
typedef struct upstreams_rt {
    upstream_rt_t **ups;
    size_t nups;
    /* The response cache (docs/cache.md), shared with the snapshots before and after this one;
     * NULL when no route has `cache`. `route_tags[i]` is route i's cache identity. */
    sl_cache_t *cache;
    uint64_t *route_tags;
} upstreams_rt_t;

/* The last reference may go on any thread (a worker ending the last exchange of an old
 * snapshot); acq_rel orders every earlier write to the state before the free. */
static void upstream_unref(upstream_rt_t *up)
{
    if (atomic_fetch_sub_explicit(&up->refs, 1, memory_order_acq_rel) != 1)
        return;
    free(up->targets);
    sl_balancer_destroy(up->balancer);
    sl_outlier_destroy(up->outlier);
    sl_breaker_destroy(up->breaker);
    sl_balancer_states_destroy(up->states);
    sl_config_unref(up->cfg);
    free(up);
}

static void upstreams_release(void *p)
{
    upstreams_rt_t *u = p;
    for (size_t i = 0; i < u->nups; i++)
        upstream_unref(u->ups[i]);
    free(u->ups);
    sl_cache_unref(u->cache);
    free(u->route_tags);
    free(u);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    target_rt_t *t = req->data;
    t->resolving = false;
    t->resolved_at_ms = now_ms();
    /* The first IPv4 answer, else the first IPv6 one (loopback services often bind IPv4 only). */
    const struct addrinfo *pick = NULL;
    for (const struct addrinfo *a = status == 0 ? res : NULL; a != NULL; a = a->ai_next)
        if (pick == NULL || (a->ai_family == AF_INET && pick->ai_family != AF_INET))
            pick = a;
    if (pick != NULL) {
        struct sockaddr_storage ss;
        memcpy(&ss, pick->ai_addr, pick->ai_addrlen);
        if (ss.ss_family == AF_INET)
            ((struct sockaddr_in *)&ss)->sin_port = htons(t->conf->port);
        else
            ((struct sockaddr_in6 *)&ss)->sin6_port = htons(t->conf->port);
        addr_store(&t->addr, (const struct sockaddr *)&ss);
        atomic_store_explicit(&t->resolved, 1, memory_order_release);
        if (sl_log_get_level() <= SL_LOG_DEBUG) {
            char ip[64] = "";
            if (ss.ss_family == AF_INET)
                uv_ip4_name((struct sockaddr_in *)&ss, ip, sizeof(ip));
            else
                uv_ip6_name((struct sockaddr_in6 *)&ss, ip, sizeof(ip));
            sl_log_debug("upstream target %.*s resolved to %s", SL_STR_FMT(t->conf->address), ip);
        }
        atomic_fetch_and_explicit(&t->state->flags, ~SL_TARGET_UNRESOLVED, memory_order_relaxed);
        if (t->failing)
            sl_log_info("upstream target %.*s resolves again", SL_STR_FMT(t->conf->address));
        t->failing = false;
    } else {
        /* Not crashed on, not connected to: balancers skip it until the name comes back. */
        atomic_fetch_or_explicit(&t->state->flags, SL_TARGET_UNRESOLVED, memory_order_relaxed);
        if (atomic_load_explicit(&t->resolved, memory_order_relaxed) == 0)
            atomic_store_explicit(&t->resolved, -1, memory_order_release);
        if (!t->failing)
            sl_log_warn("upstream target %.*s: cannot resolve %s: %s; not used until it does",
                        SL_STR_FMT(t->conf->address), t->conf->host.ptr, uv_strerror(status ? status : UV_EAI_NODATA));
        t->failing = true;
    }
    uv_freeaddrinfo(res);
    upstream_unref(t->owner);
}

static void resolve_start(target_rt_t *t, uv_loop_t *loop)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    t->gai.data = t;
    atomic_fetch_add_explicit(&t->owner->refs, 1, memory_order_relaxed);
    t->resolving = true;
    if (loop == NULL || uv_getaddrinfo(loop, &t->gai, on_resolved, t->conf->host.ptr, NULL, &hints) != 0) {
        t->resolving = false;
        atomic_fetch_or_explicit(&t->state->flags, SL_TARGET_UNRESOLVED, memory_order_relaxed);
        if (atomic_load_explicit(&t->resolved, memory_order_relaxed) == 0)
            atomic_store(&t->resolved, -1);
        atomic_fetch_sub_explicit(&t->owner->refs, 1, memory_order_relaxed);
    }
}

void sl_proxy_refresh_dns(sl_snapshot_t *snap, uv_loop_t *loop)
{
    /* An upstream_rt shared with older snapshots is refreshed once, through the current one;
     * `resolving` (main thread only) keeps a slow answer from being asked for twice. */
    upstreams_rt_t *u = snap->upstreams;
    uint64_t now = now_ms();
    for (size_t i = 0; i < u->nups; i++) {
        upstream_rt_t *up = u->ups[i];
        for (size_t j = 0; j < up->ntargets; j++) {
            target_rt_t *t = &up->targets[j];
            if (!t->conf->host_is_ip && !t->resolving && now - t->resolved_at_ms >= up->conf->dns_refresh_ms)
                resolve_start(t, loop);
        }
    }
}

static upstream_rt_t *upstream_rt_create(sl_config_t *cfg, size_t index, uv_loop_t *main_loop)
{
    upstream_rt_t *up = sl_xcalloc(1, sizeof(*up));
    atomic_init(&up->refs, 1);
    up->cfg = sl_config_ref(cfg);
    up->conf = &cfg->upstreams[index];
    up->ntargets = up->conf->ntargets;
    up->targets = sl_xcalloc(up->ntargets ? up->ntargets : 1, sizeof(*up->targets));
    up->states = sl_balancer_states_create(up->ntargets ? up->ntargets : 1);
    for (size_t j = 0; j < up->ntargets; j++) {
        target_rt_t *t = &up->targets[j];
        t->conf = &up->conf->targets[j];
        t->owner = up;
        t->state = &up->states[j];
        if (t->conf->host_is_ip) {
            addr_store(&t->addr, (const struct sockaddr *)&t->conf->addr);
            atomic_init(&t->resolved, 1);
            continue;
        }
        atomic_init(&t->resolved, 0);
        atomic_fetch_or(&t->state->flags, SL_TARGET_UNRESOLVED);
        resolve_start(t, main_loop);
    }
    if (up->conf->tls.enabled && !up->conf->tls.verify)
        sl_log_warn("upstream %.*s: tls.verify is false: its certificates are not checked", SL_STR_FMT(up->conf->name));
    up->outlier = sl_outlier_create(up->conf, up->states, up->ntargets, NULL);
    up->breaker = sl_breaker_create(up->conf, up->states, up->ntargets, NULL);
    int err = sl_balancer_create(up->conf, up->states, &up->balancer);
    if (err)
        sl_log_error("upstream %.*s: cannot build its balancer: %s", SL_STR_FMT(up->conf->name), sl_strerror(err));
    return up;
}

/* The runtime state `prev` has for an upstream configured exactly like `conf`, or NULL. The
 * target count is compared too: a fingerprint collision must not index past an array. */
static upstream_rt_t *upstream_rt_reusable(const sl_snapshot_t *prev, const sl_upstream_conf_t *conf)
{
    if (prev == NULL || prev->upstreams_release != upstreams_release)
        return NULL;
    const upstreams_rt_t *pu = prev->upstreams;
    long j = sl_config_find_upstream(prev->cfg, conf->name);
    if (j < 0 || (size_t)j >= pu->nups)
        return NULL;
    upstream_rt_t *up = pu->ups[j];
    if (up->conf->fingerprint != conf->fingerprint || up->ntargets != conf->ntargets ||
        !sl_str_eq(up->conf->name, conf->name))
        return NULL;
    return up;
}

static void proxy_start(sl_exchange_t *x, const sl_route_conf_t *route);

/* The cache survives reloads: the store is handed from snapshot to snapshot, its budget
 * follows limits.cache_memory, and entries of routes whose identity changed are dropped. */
static void cache_attach(upstreams_rt_t *u, const sl_config_t *cfg, const sl_snapshot_t *prev)
{
    size_t ncached = 0;
    for (size_t i = 0; i < cfg->nroutes; i++)
        ncached += cfg->routes[i].cache.enabled;
    if (ncached == 0)
        return;
    const upstreams_rt_t *pu = prev != NULL && prev->upstreams_release == upstreams_release ? prev->upstreams : NULL;
    u->cache = pu != NULL && pu->cache != NULL ? sl_cache_ref(pu->cache) : sl_cache_create(cfg->limits.cache_memory);
    sl_cache_set_budget(u->cache, cfg->limits.cache_memory);
    u->route_tags = sl_xcalloc(cfg->nroutes, sizeof(*u->route_tags));
    uint64_t *kept = sl_xcalloc(ncached, sizeof(*kept));
    size_t n = 0;
    for (size_t i = 0; i < cfg->nroutes; i++)
        if (cfg->routes[i].cache.enabled)
            kept[n++] = u->route_tags[i] = sl_cache_route_tag(&cfg->routes[i]);
    if (pu != NULL && pu->cache != NULL) {
        size_t dropped = sl_cache_retain(u->cache, kept, n);
        if (dropped)
            sl_log_info("cache: %zu entries of changed or removed routes dropped", dropped);
    }
    free(kept);
}

sl_cache_t *sl_proxy_cache(const sl_snapshot_t *snap)
{
    const upstreams_rt_t *u = snap->upstreams;
    return u != NULL && snap->upstreams_release == upstreams_release ? u->cache : NULL;
}

void sl_proxy_attach(sl_snapshot_t *snap, uv_loop_t *main_loop, const sl_snapshot_t *prev)
{
    sl_config_t *cfg = snap->cfg;
    upstreams_rt_t *u = sl_xcalloc(1, sizeof(*u));
    u->nups = cfg->nupstreams;
    u->ups = sl_xcalloc(u->nups ? u->nups : 1, sizeof(*u->ups));
    size_t kept = 0;
    for (size_t i = 0; i < u->nups; i++) {
        upstream_rt_t *old = upstream_rt_reusable(prev, &cfg->upstreams[i]);
        if (old != NULL) {
            /* `prev` holds a reference, so the count cannot reach zero under us. */
            atomic_fetch_add_explicit(&old->refs, 1, memory_order_relaxed);
            u->ups[i] = old;
            kept++;
            continue;
        }
        u->ups[i] = upstream_rt_create(cfg, i, main_loop);
    }
    if (prev != NULL)
        sl_log_debug("upstreams: %zu kept their runtime state, %zu start fresh", kept, u->nups - kept);
    cache_attach(u, cfg, prev);
    snap->upstreams = u;
    snap->upstreams_release = upstreams_release;
    snap->proxy = proxy_start;
}

sl_target_state_t *sl_proxy_target_states(const sl_snapshot_t *snap, size_t upstream_index)
{
    const upstreams_rt_t *u = snap->upstreams;
    return upstream_index < u->nups ? u->ups[upstream_index]->states : NULL;
}

sl_breaker_t *sl_proxy_breaker(const sl_snapshot_t *snap, size_t upstream_index)
{
    const upstreams_rt_t *u = snap->upstreams;
    return u != NULL && upstream_index < u->nups ? u->ups[upstream_index]->breaker : NULL;
}

/* Ejections expire and open circuits turn half-open by time, not by traffic (an open target is
 * never picked, so nothing else would ask): every worker ticks its current snapshot. A state
 * shared by several snapshots is ticked by several workers at once, as it always was by N
 * workers: each transition is one CAS that only one of them wins, so a repeat costs a read. */
typedef struct resilience_tick {
    sl_timeq_entry_t e;
    sl_worker_t *w;
} resilience_tick_t;

static void on_resilience_tick(sl_timeq_entry_t *e)
{
    resilience_tick_t *t = SL_CONTAINER_OF(e, resilience_tick_t, e);
    upstreams_rt_t *u = t->w->snap->upstreams;
    uint64_t now = now_ms();
    for (size_t i = 0; i < u->nups; i++) {
        sl_outlier_tick(u->ups[i]->outlier, now);
        sl_breaker_tick(u->ups[i]->breaker, now);
    }
    sl_timeq_add(&t->w->timeqs, sl_timeqs_get(&t->w->timeqs, 250), &t->e, on_resilience_tick);
}

void sl_upstream_worker_init(sl_worker_t *w)
{
    w->up = sl__connpool_worker_create();
    resilience_tick_t *t = sl_xcalloc(1, sizeof(*t));
    t->w = w;
    sl__connpool_worker_set_tick(w->up, t, free);
    sl_timeq_add(&w->timeqs, sl_timeqs_get(&w->timeqs, 250), &t->e, on_resilience_tick);
}

void sl_upstream_worker_close_idle(sl_worker_t *w)
{
    sl_h2up_close_idle(w);
    sl_connpool_close_idle(w);
}

void sl_upstream_worker_dispose(sl_worker_t *w)
{
    /* The h2 flush handle closes on the finished loop: one more turn runs its close callback. */
    sl_h2up_worker_dispose(w);
    uv_run(&w->loop, UV_RUN_NOWAIT);
    sl__connpool_worker_destroy(w->up);
    w->up = NULL;
}

/* ---- per-exchange proxy state -------------------------------------------------------------- */

enum proxy_state {
    PX_CONNECTING = 1,
    PX_AWAIT_HEAD,
    PX_BODY,
    PX_TUNNEL, /* after a 101: bytes both ways until both sides are done (docs/websocket.md) */
    PX_DONE,
};

typedef struct proxy {
    sl_exchange_t *x;
    const sl_route_conf_t *route;
    upstream_rt_t *up;
    size_t up_index; /* of `up` in x->snap (metrics); the state may be shared by other snapshots */
    target_rt_t *target;
    sl_upconn_t *conn;
    sl_timeq_entry_t phase_timeout; /* connect, then read/send */
    sl_timeq_entry_t route_timeout;
    enum proxy_state state;
    uint64_t connect_start_ns;
    bool reused;
    bool retried;
    bool counted;   /* this exchange is in its target's in-flight count */
    unsigned tries; /* 1 for the first try */
    bool slotted;   /* holds one of the upstream's limits.max_connections slots */
    bool waiting;   /* queued for a slot (counted in pending) */
    uint64_t wait_deadline_ms;
    /* request */
    char *head;
    size_t head_len;
    bool req_has_body;
    bool req_chunked;
    bool req_body_started;
    bool req_body_done;
    bool req_writing;
    bool req_head_written;
    char chunk_hdr[24];
    uv_buf_t wiov[4];
    /* response */
    enum sl_h1_body_kind resp_kind;
    uint64_t resp_remaining;
    sl_h1_chunked_t chunked;
    bool resp_keep_alive;
    bool client_writing;
    bool upstream_eof;
    bool got_response_bytes;
    /* response cache (docs/cache.md); `cc` NULL: the route has none */
    const sl_cache_conf_t *cc;
    sl_cache_t *cache;
    uint64_t ctag, chash;
    sl_str_t ckey;
    sl_cache_obj_t *stale; /* a stored response to revalidate or serve stale; the arena holds a ref */
    sl_cache_obj_t *fill;  /* the object this response is copied into, or NULL */
    int64_t creq_time;     /* wall seconds the request went upstream */
    const char *cresult;   /* the Sluice-Cache value */
    bool clocked;          /* holds the coalescing lock of ckey */
    bool cstore;           /* the response may be stored (GET, no request no-store) */
    bool crevalidate;      /* conditional headers for `stale` go upstream */
    bool cstrip_cond;      /* the client's own conditional headers do not */
    bool cinvalidate;      /* unsafe method: invalidate on success (RFC 9111 §4.4) */
    bool creq_auth;
    /* protocol upgrade (docs/websocket.md) */
    bool upgrade;            /* the client asked for one that is forwarded */
    sl_str_t upgrade_value;  /* its Upgrade tokens, h2c removed */
    bool tunnel_head_unsent; /* the 101 head goes out with the first tunnel write */
    bool client_eof;         /* the client half-closed ... */
    bool up_shut;            /* ... and the upstream was told so (SHUT_WR) */
    bool down_shut;          /* the upstream's EOF was passed on to the client */
    /* HTTP/2 upstream (`protocol: h2`, docs/grpc.md): a stream instead of a connection */
    bool h2;               /* the upstream speaks h2: tries run as streams */
    bool h2_active;        /* h2s was submitted and sl_h2up_stream_end not called yet */
    bool h2_eos;           /* the upstream's response is complete */
    bool h2_body_wait;     /* the request body starts once the connection is up */
    bool grpc_deadline;    /* the route timeout was shortened by grpc-timeout */
    bool h2_head_pending;  /* a Content-Length response's head waits for its first DATA */
    size_t h2_inflight;    /* bytes of h2s.body being written to the client */
    uint64_t h2_body_sent; /* request body bytes given to the stream */
    sl_h2up_request_t h2req;
    sl_h2up_stream_t h2s;
} proxy_t;

static void proxy_connect(proxy_t *px);
static void response_process(proxy_t *px);

/* The upstream's config in the snapshot this exchange runs under. `px->up->conf` may belong to
 * an older generation with the same fingerprint; the TLS context must be the newest, so a
 * reload with new certificate files applies to new connections. */
static const sl_upstream_conf_t *upstream_conf_now(const proxy_t *px)
{
    return &px->x->snap->cfg->upstreams[px->up_index];
}

static sl_timeqs_t *timeqs_of(proxy_t *px)
{
    return &px->x->worker->timeqs;
}

static void phase_timeout_set(proxy_t *px, uint64_t ms, sl_timeq_cb cb)
{
    sl_timeq_add(timeqs_of(px), sl_timeqs_get(timeqs_of(px), ms), &px->phase_timeout, cb);
}

/* How long a try may wait for the response head: retries.per_try_timeout, else timeouts.read. */
static uint64_t try_timeout_ms(const proxy_t *px)
{
    uint64_t per_try = px->up->conf->retries.per_try_timeout_ms;
    return per_try ? per_try : px->up->conf->read_timeout_ms;
}

typedef struct held_buf {
    sl_buf_pool_t *pool;
    sl_buf_t *buf;
} held_buf_t;

static void held_buf_release(void *p)
{
    held_buf_t *h = p;
    sl_buf_put(h->pool, h->buf);
}

/* The h2 stream is reset if still open (nghttp2 forgets it: it lives in the arena). A slice of
 * its buffer being written to the client stays valid until the exchange is recycled, which
 * the codec does only once no write of it is pending (a stalled client's connection may be
 * closed without the write callback ever running). */
static void h2_drop(proxy_t *px)
{
    if (!px->h2_active)
        return;
    px->h2_active = false;
    if (px->client_writing && px->h2s.body != NULL) {
        held_buf_t *h = sl_arena_alloc(&px->x->arena, sizeof(*h));
        h->pool = sl__connpool_h2_bufs(px->x->worker);
        h->buf = px->h2s.body;
        px->h2s.body = NULL;
        sl_arena_on_dispose(&px->x->arena, held_buf_release, h);
    }
    sl_h2up_stream_end(&px->h2s);
}

static void conn_drop(proxy_t *px)
{
    h2_drop(px);
    if (px->conn != NULL) {
        px->conn->pinned = false;
        sl_upconn_close(px->conn);
        px->conn = NULL;
    }
}

/* An unfinished fill is dropped (upstream failed mid-body, client left) and the coalescing lock
 * released, so waiters look again and go upstream themselves. */
static void cache_abandon(proxy_t *px)
{
    if (px->fill != NULL) {
        sl_cache_obj_unref(px->fill);
        px->fill = NULL;
    }
    if (px->clocked) {
        px->clocked = false;
        sl_cache_unlock(px->cache, px->ctag, px->chash, px->ckey, now_ms(), 0);
    }
}

static void proxy_cleanup(proxy_t *px)
{
    if (px->waiting) {
        px->waiting = false;
        atomic_fetch_sub_explicit(&px->up->pending, 1, memory_order_relaxed);
    }
    if (px->slotted) {
        px->slotted = false;
        atomic_fetch_sub_explicit(&px->up->in_use, 1, memory_order_relaxed);
    }
    if (px->counted) {
        px->counted = false;
        atomic_fetch_sub_explicit(&px->up->states[px->target - px->up->targets].inflight, 1, memory_order_relaxed);
    }
    h2_drop(px);
    sl_timeq_cancel(&px->phase_timeout);
    sl_timeq_cancel(&px->route_timeout);
    px->state = PX_DONE;
    px->x->on_abort = NULL;
    cache_abandon(px);
}

/* ---- retries ------------------------------------------------------------------------------ */

static _Thread_local uint64_t pick_rng; /* per-thread xorshift state for p2c and backoff jitter */

static bool method_is_idempotent(enum sl_method m)
{
    /* RFC 9110 §9.2.2 */
    return m == SL_METHOD_GET || m == SL_METHOD_HEAD || m == SL_METHOD_OPTIONS || m == SL_METHOD_TRACE ||
           m == SL_METHOD_PUT || m == SL_METHOD_DELETE;
}

static void budget_note_request(upstream_rt_t *up, uint64_t now_ms)
{
    uint64_t start = atomic_load_explicit(&up->window_start_ms, memory_order_relaxed);
    if (now_ms - start > 10000 && atomic_compare_exchange_strong_explicit(&up->window_start_ms, &start, now_ms,
                                                                          memory_order_relaxed, memory_order_relaxed)) {
        atomic_store_explicit(&up->window_requests, 0, memory_order_relaxed);
        atomic_store_explicit(&up->window_retries, 0, memory_order_relaxed);
    }
    atomic_fetch_add_explicit(&up->window_requests, 1, memory_order_relaxed);
}

/* Takes one retry from the budget if there is one. At least one retry is always allowed per
 * window, so a quiet upstream still gets its stale-connection or connect-failure retry. */
static bool budget_take(upstream_rt_t *up)
{
    unsigned reqs = atomic_load_explicit(&up->window_requests, memory_order_relaxed);
    unsigned allowed = (unsigned)((uint64_t)reqs * up->conf->retries.budget_percent / 100);
    if (allowed < 1)
        allowed = 1;
    unsigned used = atomic_fetch_add_explicit(&up->window_retries, 1, memory_order_relaxed);
    if (used < allowed)
        return true;
    atomic_fetch_sub_explicit(&up->window_retries, 1, memory_order_relaxed);
    return false;
}

static bool retry_allowed(proxy_t *px, uint32_t on_bit)
{
    const sl_exchange_t *x = px->x;
    const __typeof__(px->up->conf->retries) *rp = &px->up->conf->retries;
    if (px->tries >= rp->attempts || !(rp->on & on_bit) || x->head_sent || px->req_body_started)
        return false;
    /* A connect failure never reached the upstream: safe whatever the method, and outside the
     * budget, which exists to keep retries from piling work on upstreams that are failing
     * while they receive it. */
    if (on_bit == SL_RETRY_ON_CONNECT_FAILURE)
        return true;
    if (!rp->non_idempotent && !method_is_idempotent(x->method))
        return false;
    return budget_take(px->up);
}

static void on_backoff_done(sl_timeq_entry_t *e)
{
    proxy_connect(SL_CONTAINER_OF(e, proxy_t, phase_timeout));
}

static target_rt_t *pick_target(const sl_exchange_t *x, upstream_rt_t *up);

/* Starts another try after `cause`, on another target when the upstream has one. */
static void retry(proxy_t *px, const char *detail)
{
    sl_exchange_t *x = px->x;
    upstream_rt_t *up = px->up;
    sl_log_debug("upstream %.*s: retrying after %s on %.*s", SL_STR_FMT(up->conf->name), detail,
                 SL_STR_FMT(px->target->conf->address));
    conn_drop(px);
    px->h2_eos = px->h2_body_wait = false;
    px->h2_inflight = 0;
    px->h2_body_sent = 0;
    sl_timeq_cancel(&px->phase_timeout);
    target_rt_t *failed = px->target, *next = NULL;
    for (int i = 0; i < 4 && (next == NULL || (next == failed && up->ntargets > 1)); i++)
        next = pick_target(x, up);
    if (next == NULL)
        next = failed;
    atomic_fetch_sub_explicit(&up->states[failed - up->targets].inflight, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&up->states[next - up->targets].inflight, 1, memory_order_relaxed);
    px->target = next;
    x->target_addr = next->conf->address;
    px->tries++;
    px->reused = px->retried = false;
    px->got_response_bytes = px->upstream_eof = false;
    px->req_head_written = px->req_writing = false;
    px->state = PX_CONNECTING;
    /* Jittered exponential backoff: base x 2^(try-2) x [0.5, 1.5), at most 1 s, so retries from
     * many exchanges do not arrive at the next target in step. */
    uint64_t base = up->conf->retries.backoff_ms << (px->tries > 2 ? px->tries - 2 : 0);
    if (pick_rng == 0)
        pick_rng = sl_time_mono_ns() | 1;
    pick_rng ^= pick_rng << 13;
    pick_rng ^= pick_rng >> 7;
    pick_rng ^= pick_rng << 17;
    uint64_t delay = base / 2 + (base ? pick_rng % base : 0);
    sl_timeq_add_at(timeqs_of(px), &px->phase_timeout, delay > 1000 ? 1000 : delay, on_backoff_done);
}

/* One try's outcome, for passive ejection and the target's circuit breaker. */
static void report_try(proxy_t *px, bool failure, enum sl_cause cause)
{
    upstream_rt_t *up = px->up;
    sl_exchange_t *x = px->x;
    /* Per-target failure counters (the doctor's dead-target and 5xx findings): the worker's
     * own storage, a relaxed store, whatever else is configured. */
    if (failure && x->worker->metrics != NULL && x->snap->metrics != NULL)
        sl_metrics_observe_upstream_failure(x->worker->metrics, x->snap->metrics, px->up_index,
                                            (size_t)(px->target - up->targets), cause);
    if (!up->conf->health_passive.enabled && !up->conf->circuit_breaker.enabled)
        return; /* neither is configured: no clock read, no shared write */
    size_t t = (size_t)(px->target - up->targets);
    uint64_t now = now_ms();
    if (sl_outlier_report(up->outlier, t, failure, now) == SL_OUTLIER_EJECTED)
        sl_log_warn("upstream %.*s: target %.*s ejected for %llus after %u consecutive failures",
                    SL_STR_FMT(up->conf->name), SL_STR_FMT(px->target->conf->address),
                    (unsigned long long)((sl_outlier_ejected_until(up->outlier, t) - now + 999) / 1000),
                    up->conf->health_passive.consecutive_failures);
    if (sl_breaker_report(up->breaker, t, failure, now))
        sl_log_warn("upstream %.*s: circuit of target %.*s opened (failure ratio over %llums)",
                    SL_STR_FMT(up->conf->name), SL_STR_FMT(px->target->conf->address),
                    (unsigned long long)up->conf->circuit_breaker.window_ms);
}

/* A response head's outcome: a failure here is a 5xx status from the upstream itself. */
static void report_outcome(proxy_t *px, bool failure)
{
    report_try(px, failure, SL_CAUSE_NONE);
}

static void proxy_fail(proxy_t *px, enum sl_cause cause, const char *detail);
static bool cache_serve_stale(proxy_t *px, enum sl_cause cause);

/* A try failed in a way `retries.on` may cover: try again if allowed, else fail with `cause`. */
static void try_failed(proxy_t *px, enum sl_cause cause, const char *detail, uint32_t on_bit)
{
    report_try(px, true, cause);
    if (retry_allowed(px, on_bit)) {
        retry(px, detail);
        return;
    }
    proxy_fail(px, cause, detail);
}

/* Ends the exchange with a gateway error (before the head was sent) or by closing the client
 * connection (after). */
static void proxy_fail(proxy_t *px, enum sl_cause cause, const char *detail)
{
    sl_exchange_t *x = px->x;
    if (px->h2_head_pending) {
        /* The upstream's head never left: the error replaces it. */
        px->h2_head_pending = false;
        x->resp_headers.len = 0;
        x->resp_trailers.len = 0;
    }
    conn_drop(px);
    proxy_cleanup(px);
    x->cause = cause;
    x->cause_detail = detail;
    /* stale-if-error: the cause stays on the exchange for the log and metrics. */
    if (!x->head_sent && cache_serve_stale(px, cause))
        return;
    if (!x->head_sent) {
        sl_reply_error(x, cause, NULL);
    } else if (!px->client_writing) {
        x->down->abort(x);
    }
    /* With a client write in flight, its callback sees PX_DONE and aborts then. */
}

static void proxy_on_abort(sl_exchange_t *x)
{
    proxy_t *px = x->handler_data;
    conn_drop(px);
    proxy_cleanup(px);
}

static void on_route_timeout(sl_timeq_entry_t *e)
{
    proxy_t *px = SL_CONTAINER_OF(e, proxy_t, route_timeout);
    proxy_fail(px, SL_CAUSE_UPSTREAM_TIMEOUT, px->grpc_deadline ? "grpc-timeout passed" : "route timeout");
}

static void on_connect_timeout(sl_timeq_entry_t *e)
{
    proxy_t *px = SL_CONTAINER_OF(e, proxy_t, phase_timeout);
    /* The handshake counts in the connect phase: its time, its timeout, its cause. */
    bool handshaking = px->conn != NULL && px->conn->connected && px->conn->tls != NULL;
    try_failed(px, SL_CAUSE_UPSTREAM_CONNECT_FAILED, handshaking ? "tls: handshake timed out" : "connect timed out",
               SL_RETRY_ON_CONNECT_FAILURE);
}

static void on_read_timeout(sl_timeq_entry_t *e)
{
    proxy_t *px = SL_CONTAINER_OF(e, proxy_t, phase_timeout);
    try_failed(px, SL_CAUSE_UPSTREAM_TIMEOUT, "read timed out", SL_RETRY_ON_TIMEOUT);
}

static void on_send_timeout(sl_timeq_entry_t *e)
{
    proxy_t *px = SL_CONTAINER_OF(e, proxy_t, phase_timeout);
    try_failed(px, SL_CAUSE_UPSTREAM_TIMEOUT, "send timed out", SL_RETRY_ON_TIMEOUT);
}

/* ---- the request head ------------------------------------------------------------------- */

/* The Connection fields of a message, found once so each field's check is O(1) in the
 * common case (no Connection field, or one with a single token). */
typedef struct conn_fields {
    const sl_header_t *items[4];
    size_t n;
} conn_fields_t;

static void conn_fields_collect(const sl_header_t *h, size_t n, conn_fields_t *cf)
{
    cf->n = 0;
    for (size_t i = 0; i < n && cf->n < SL_ARRAY_SIZE(cf->items); i++)
        if (h[i].name.len == 10 && sl_str_caseeq(h[i].name, SL_STR_LIT("Connection")))
            cf->items[cf->n++] = &h[i];
}

/* True when the comma-separated field value `v` lists `token` (case-insensitive). */
static bool list_has_token(sl_str_t v, sl_str_t token)
{
    size_t p = 0;
    while (p < v.len) {
        while (p < v.len && (v.ptr[p] == ' ' || v.ptr[p] == '\t' || v.ptr[p] == ','))
            p++;
        size_t st = p;
        while (p < v.len && v.ptr[p] != ',' && v.ptr[p] != ' ' && v.ptr[p] != '\t')
            p++;
        if (p > st && sl_str_caseeq(token, (sl_str_t){v.ptr + st, p - st}))
            return true;
    }
    return false;
}

static bool is_hop_by_hop(sl_str_t name, const conn_fields_t *cf)
{
    static const sl_str_t hop[] = {
        SL_STR_LIT("Connection"), SL_STR_LIT("Keep-Alive"),     SL_STR_LIT("Proxy-Connection"),
        SL_STR_LIT("TE"),         SL_STR_LIT("Trailer"),        SL_STR_LIT("Transfer-Encoding"),
        SL_STR_LIT("Upgrade"),    SL_STR_LIT("Content-Length"),
    };
    for (size_t i = 0; i < SL_ARRAY_SIZE(hop); i++)
        if (name.len == hop[i].len && sl_str_caseeq(name, hop[i]))
            return true;
    /* RFC 9110 §7.6.1: fields named in Connection are hop-by-hop too. */
    for (size_t i = 0; i < cf->n; i++)
        if (list_has_token(cf->items[i]->value, name))
            return true;
    return false;
}

static bool is_replaced_request_header(sl_str_t name)
{
    /* Set by the gateway itself: a client's copy must not reach the upstream as if ours. */
    return sl_str_caseeq(name, SL_STR_LIT("X-Forwarded-Proto")) ||
           sl_str_caseeq(name, SL_STR_LIT("X-Forwarded-Host")) || sl_str_caseeq(name, SL_STR_LIT("X-Request-Id")) ||
           sl_str_caseeq(name, SL_STR_LIT("Expect")) || sl_str_caseeq(name, SL_STR_LIT("X-Forwarded-For")) ||
           sl_str_caseeq(name, SL_STR_LIT("Forwarded")) || sl_str_caseeq(name, SL_STR_LIT("traceparent"));
}

/* X-Forwarded-For's value: every earlier hop's list (all fields, in order) plus this client.
 * `any`: the request has such a field. */
static char *put_xff(char *p, const sl_exchange_t *x, bool any)
{
    const sl_headers_t *h = &x->req_headers;
    for (size_t i = 0; any && i < h->len; i++)
        if (sl_str_caseeq(h->items[i].name, SL_STR_LIT("X-Forwarded-For")) && h->items[i].value.len) {
            p = sl_put(p, h->items[i].value.ptr, h->items[i].value.len);
            p = sl_put(p, ", ", 2);
        }
    return sl_put(p, x->client_ip, strlen(x->client_ip));
}

/* Forwarded's value (RFC 7239): earlier elements kept, ours appended; IPv6 quoted in brackets. */
static char *put_forwarded(char *p, const sl_exchange_t *x, bool any)
{
    const sl_headers_t *h = &x->req_headers;
    for (size_t i = 0; any && i < h->len; i++)
        if (sl_str_caseeq(h->items[i].name, SL_STR_LIT("Forwarded")) && h->items[i].value.len) {
            p = sl_put(p, h->items[i].value.ptr, h->items[i].value.len);
            p = sl_put(p, ", ", 2);
        }
    size_t iplen = strlen(x->client_ip);
    if (memchr(x->client_ip, ':', iplen) != NULL) {
        p = sl_put(p, "for=\"[", 6);
        p = sl_put(p, x->client_ip, iplen);
        p = sl_put(p, "]\";proto=", 9);
    } else {
        p = sl_put(p, "for=", 4);
        p = sl_put(p, x->client_ip, iplen);
        p = sl_put(p, ";proto=", 7);
    }
    p = x->client_tls ? sl_put(p, "https", 5) : sl_put(p, "http", 4);
    if (x->authority.len) {
        p = sl_put(p, ";host=\"", 7);
        p = sl_put(p, x->authority.ptr, x->authority.len);
        *p++ = '"';
    }
    return p;
}

/* The path sent upstream (the route's rewrite applied); starts our span of the trace. */
static int request_path(proxy_t *px, sl_str_t *path)
{
    sl_exchange_t *x = px->x;
    *path = x->path;
    sl_trace_begin(x);
    return sl_router_rewrite_path(x->snap->router, (size_t)x->route_index, x->path, &x->arena, path) != 0 ? SL_ETOOBIG
                                                                                                          : 0;
}

/* Whether a client field goes upstream as it is (both protocols; Host and TE are each head
 * builder's own business). */
static bool field_forwarded(const proxy_t *px, const sl_header_t *f, const conn_fields_t *cf)
{
    if (is_hop_by_hop(f->name, cf) || is_replaced_request_header(f->name))
        return false;
    /* Some backends (CGI-style) read '_' as '-', so "Transfer_Encoding" could smuggle framing
     * past us; such fields are dropped, as nginx does by default. */
    if (memchr(f->name.ptr, '_', f->name.len) != NULL)
        return false;
    /* A cacheable fetch asks for the whole response (or its own revalidation), not the
     * client's: the client's conditions are answered from what comes back. */
    return !((px->cstrip_cond || px->crevalidate) && (sl_str_caseeq(f->name, SL_STR_LIT("If-None-Match")) ||
                                                      sl_str_caseeq(f->name, SL_STR_LIT("If-Modified-Since"))));
}

static int build_request_head(proxy_t *px)
{
    sl_exchange_t *x = px->x;
    sl_str_t path;
    if (request_path(px, &path) != 0)
        return SL_ETOOBIG;
    const sl_headers_t *h = &x->req_headers;
    const sl_header_t *xff = NULL, *fwd = NULL;
    size_t size = 340 + x->method_token.len + path.len + x->query.len + 2 * x->authority.len + x->request_id.len +
                  px->target->conf->address.len + 4 * sizeof(x->client_ip);
    if (px->crevalidate)
        size += 48 + px->stale->etag.len + px->stale->last_modified.len;
    if (px->upgrade)
        size += 48 + px->upgrade_value.len;
    for (size_t i = 0; i < h->len; i++) {
        size += h->items[i].name.len + h->items[i].value.len + 4;
        if (xff == NULL && sl_str_caseeq(h->items[i].name, SL_STR_LIT("X-Forwarded-For")))
            xff = &h->items[i];
        if (fwd == NULL && sl_str_caseeq(h->items[i].name, SL_STR_LIT("Forwarded")))
            fwd = &h->items[i];
    }
    char *head = sl_arena_alloc(&x->arena, size);
    char *p = head;
    p = sl_put(p, x->method_token.ptr, x->method_token.len);
    *p++ = ' ';
    p = sl_put(p, path.ptr, path.len);
    if (x->query.len) {
        *p++ = '?';
        p = sl_put(p, x->query.ptr, x->query.len);
    }
    p = sl_put(p, " HTTP/1.1\r\n", 11);
    bool have_host = false;
    conn_fields_t cf;
    conn_fields_collect(h->items, h->len, &cf);
    for (size_t i = 0; i < h->len; i++) {
        const sl_header_t *f = &h->items[i];
        if (!field_forwarded(px, f, &cf))
            continue;
        if (sl_str_caseeq(f->name, SL_STR_LIT("Host"))) {
            /* absolute-form wins over Host (RFC 9112 §3.2.2): send the authority we routed on */
            have_host = true;
            p = sl_put(p, "Host: ", 6);
            p = sl_put(p, x->authority.ptr, x->authority.len);
            p = sl_put(p, "\r\n", 2);
            continue;
        }
        p = sl_put(p, f->name.ptr, f->name.len);
        p = sl_put(p, ": ", 2);
        p = sl_put(p, f->value.ptr, f->value.len);
        p = sl_put(p, "\r\n", 2);
    }
    if (!have_host) {
        /* HTTP/1.0 without Host: HTTP/1.1 upstreams require one; name the target. */
        sl_str_t host = x->authority.len ? x->authority : px->target->conf->address;
        p = sl_put(p, "Host: ", 6);
        p = sl_put(p, host.ptr, host.len);
        p = sl_put(p, "\r\n", 2);
    }
    p = sl_put(p, "X-Forwarded-For: ", 17);
    p = put_xff(p, x, xff != NULL);
    p = x->client_tls ? sl_put(p, "\r\nX-Forwarded-Proto: https\r\n", 28)
                      : sl_put(p, "\r\nX-Forwarded-Proto: http\r\n", 27);
    if (x->authority.len) {
        p = sl_put(p, "X-Forwarded-Host: ", 18);
        p = sl_put(p, x->authority.ptr, x->authority.len);
        p = sl_put(p, "\r\n", 2);
    }
    p = sl_put(p, "Forwarded: ", 11);
    p = put_forwarded(p, x, fwd != NULL);
    if (px->crevalidate && px->stale->etag.len) {
        p = sl_put(p, "\r\nIf-None-Match: ", 17);
        p = sl_put(p, px->stale->etag.ptr, px->stale->etag.len);
    }
    if (px->crevalidate && px->stale->last_modified.len) {
        p = sl_put(p, "\r\nIf-Modified-Since: ", 21);
        p = sl_put(p, px->stale->last_modified.ptr, px->stale->last_modified.len);
    }
    p = sl_put(p, "\r\nX-Request-Id: ", 16);
    p = sl_put(p, x->request_id.ptr, x->request_id.len);
    /* The caller's trace with our span as the parent; tracestate went through untouched. */
    p = sl_put(p, "\r\ntraceparent: ", 15);
    sl_trace_format(&x->trace, p);
    p += 55;
    p = sl_put(p, "\r\n", 2);
    if (px->upgrade) {
        p = sl_put(p, "Upgrade: ", 9);
        p = sl_put(p, px->upgrade_value.ptr, px->upgrade_value.len);
        p = sl_put(p, "\r\nConnection: upgrade\r\n", 23);
    }
    if (x->req_body_kind == SL_BODY_LENGTH) {
        p = sl_put(p, "Content-Length: ", 16);
        p = sl_put_u64(p, x->req_content_length);
        p = sl_put(p, "\r\n", 2);
    } else if (x->req_body_kind == SL_BODY_STREAM)
        p = sl_put(p, "Transfer-Encoding: chunked\r\n", 28);
    p = sl_put(p, "\r\n", 2);
    SL_BUG_ON((size_t)(p - head) > size);
    px->head = head;
    px->head_len = (size_t)(p - head);
    px->req_has_body = x->req_body_kind != SL_BODY_NONE;
    px->req_chunked = x->req_body_kind == SL_BODY_STREAM;
    return 0;
}

/* ---- writing upstream ------------------------------------------------------------------------ */

static void request_body_cb(sl_exchange_t *x, int status, const char *data, size_t len);
static void tunnel_upstream_written(proxy_t *px, int status);

static void on_upstream_written(uv_write_t *req, int status)
{
    sl_upconn_t *c = req->data;
    proxy_t *px = c->user;
    if (px == NULL)
        return; /* the exchange was torn down while this write was queued */
    px->req_writing = false;
    if (px->state == PX_TUNNEL) {
        tunnel_upstream_written(px, status);
        return;
    }
    if (px->state == PX_AWAIT_HEAD)
        phase_timeout_set(px, try_timeout_ms(px), on_read_timeout);
    if (status < 0) {
        /* The upstream stopped reading our request; its response (if any) will tell. */
        if (!px->got_response_bytes)
            try_failed(px, SL_CAUSE_UPSTREAM_RESET, "write to upstream failed", SL_RETRY_ON_RESET);
        return;
    }
    if (px->req_has_body && !px->req_body_done) {
        if (!px->req_body_started) {
            px->req_body_started = true;
            px->x->down->body_start(px->x, request_body_cb);
        } else {
            px->x->down->body_resume(px->x);
        }
    }
}

/* The same contract as sl_stream_write; a queued remainder arms the send timeout. */
static int upstream_write(proxy_t *px, uv_buf_t *iov, unsigned n)
{
    int r = sl_upconn_write(px->conn, iov, n, on_upstream_written);
    if (r == 0) {
        px->req_writing = true;
        if (px->state == PX_AWAIT_HEAD)
            phase_timeout_set(px, px->up->conf->send_timeout_ms, on_send_timeout);
    }
    return r;
}

/* The client's body failed (timeout, too large, bad chunk, gone): the upstream got a truncated
 * request, so that connection cannot be reused (an h2 stream is reset). */
static void request_body_failed(proxy_t *px)
{
    sl_exchange_t *x = px->x;
    px->req_body_done = true;
    conn_drop(px);
    proxy_cleanup(px);
    if (x->cause != SL_CAUSE_NONE && !x->head_sent)
        sl_reply_error(x, x->cause, x->cause == SL_CAUSE_BAD_REQUEST ? x->cause_detail : NULL);
    else
        x->down->abort(x);
}

static void request_body_cb(sl_exchange_t *x, int status, const char *data, size_t len)
{
    proxy_t *px = x->handler_data;
    if (px->state == PX_DONE)
        return;
    if (status < 0) {
        request_body_failed(px);
        return;
    }
    unsigned n = 0;
    if (len == 0) {
        px->req_body_done = true;
        if (!px->req_chunked)
            return;
        px->wiov[n++] = uv_buf_init("0\r\n\r\n", 5);
    } else {
        if (px->req_chunked) {
            int hl = snprintf(px->chunk_hdr, sizeof(px->chunk_hdr), "%zx\r\n", len);
            px->wiov[n++] = uv_buf_init(px->chunk_hdr, (unsigned)hl);
        }
        px->wiov[n++] = uv_buf_init((char *)data, (unsigned)len);
        if (px->req_chunked)
            px->wiov[n++] = uv_buf_init("\r\n", 2);
    }
    int r = upstream_write(px, px->wiov, n);
    if (r < 0) {
        if (!px->got_response_bytes)
            try_failed(px, SL_CAUSE_UPSTREAM_RESET, "write to upstream failed", SL_RETRY_ON_RESET);
        return;
    }
    if (r == 1 && len > 0)
        x->down->body_resume(x);
}

static void send_request(proxy_t *px)
{
    sl_exchange_t *x = px->x;
    px->state = PX_AWAIT_HEAD;
    px->conn->user = px;
    phase_timeout_set(px, try_timeout_ms(px), on_read_timeout);
    px->wiov[0] = uv_buf_init(px->head, (unsigned)px->head_len);
    int r = upstream_write(px, px->wiov, 1);
    if (r < 0) {
        if (px->reused && !px->retried) {
            /* A pooled connection the server had just closed: try once on a fresh one. */
            px->retried = true;
            conn_drop(px);
            proxy_connect(px);
            return;
        }
        try_failed(px, SL_CAUSE_UPSTREAM_RESET, "write to upstream failed", SL_RETRY_ON_RESET);
        return;
    }
    px->req_head_written = true;
    if (r == 1 && px->req_has_body) {
        px->req_body_started = true;
        x->down->body_start(x, request_body_cb);
    }
}

static void on_connected(uv_connect_t *req, int status)
{
    sl_upconn_t *c = req->data;
    proxy_t *px = c->user;
    if (px == NULL)
        return;
    if (status < 0) {
        try_failed(px, SL_CAUSE_UPSTREAM_CONNECT_FAILED, uv_strerror(status), SL_RETRY_ON_CONNECT_FAILURE);
        return;
    }
    c->connected = true;
    uv_tcp_nodelay(&c->tcp, 1);
    uv_read_start((uv_stream_t *)&c->tcp, sl__connpool_on_alloc, sl__connpool_on_read);
    const sl_upstream_conf_t *uc = upstream_conf_now(px);
    if (uc->tls.ctx != NULL) {
        /* The request goes once the handshake is done (sl__proxy_on_upstream_handshake). */
        const char *sni, *name;
        sl_upconn_tls_names(uc, px->target->conf, &sni, &name);
        if (sl_upconn_tls_start(c, uc->tls.ctx, sni, name) < 0)
            try_failed(px, SL_CAUSE_UPSTREAM_CONNECT_FAILED, "tls: cannot send the handshake",
                       SL_RETRY_ON_CONNECT_FAILURE);
        return;
    }
    px->x->upstream_connect_ns = (int64_t)(sl_time_mono_ns() - px->connect_start_ns);
    send_request(px);
}

/* One line per target and change, not per request: every worker may see it at once. */
static void tls_failure_note(proxy_t *px, const char *detail)
{
    if (!atomic_exchange_explicit(&px->target->tls_failing, true, memory_order_relaxed))
        sl_log_warn("upstream %.*s target %.*s: %s (logged again after a handshake succeeds)",
                    SL_STR_FMT(px->up->conf->name), SL_STR_FMT(px->target->conf->address), detail);
}

static void tls_success_note(proxy_t *px)
{
    if (atomic_load_explicit(&px->target->tls_failing, memory_order_relaxed) &&
        atomic_exchange_explicit(&px->target->tls_failing, false, memory_order_relaxed))
        sl_log_info("upstream %.*s target %.*s: tls handshakes succeed again", SL_STR_FMT(px->up->conf->name),
                    SL_STR_FMT(px->target->conf->address));
}

void sl__proxy_on_upstream_handshake(sl_upconn_t *c, int status)
{
    proxy_t *px = c->user;
    if (px == NULL || px->state != PX_CONNECTING)
        return;
    if (status < 0) {
        /* The detail is the log's (never the client's): which check failed, or how it ended. */
        char *detail = sl_arena_alloc(&px->x->arena, 160);
        sl_tls_handshake_failure(c->tls, status, detail, 160);
        tls_failure_note(px, detail);
        try_failed(px, SL_CAUSE_UPSTREAM_CONNECT_FAILED, detail, SL_RETRY_ON_CONNECT_FAILURE);
        return;
    }
    tls_success_note(px);
    px->x->upstream_connect_ns = (int64_t)(sl_time_mono_ns() - px->connect_start_ns);
    send_request(px);
}

static void h2_submit(proxy_t *px, const sl_h2up_target_t *t);

static void proxy_connect(proxy_t *px)
{
    sl_exchange_t *x = px->x;
    target_rt_t *t = px->target;
    int resolved = atomic_load_explicit(&t->resolved, memory_order_acquire);
    struct sockaddr_storage ss;
    socklen_t sslen = addr_load(&t->addr, &ss);
    if (resolved != 1) {
        try_failed(px, SL_CAUSE_UPSTREAM_CONNECT_FAILED, resolved == 0 ? "name not resolved yet" : "name not resolved",
                   SL_RETRY_ON_CONNECT_FAILURE);
        return;
    }
    const sl_upstream_conf_t *uc = upstream_conf_now(px);
    sl_connpool_t *pool;
    const char *sni = NULL, *name = NULL;
    if (uc->tls.ctx != NULL) {
        sl_upconn_tls_names(uc, t->conf, &sni, &name);
        pool = sl_connpool_get(x->worker, (struct sockaddr *)&ss, sslen, sl_tls_client_ctx_id(uc->tls.ctx), sni);
    } else {
        pool = sl_connpool_get(x->worker, (struct sockaddr *)&ss, sslen, 0, NULL);
    }
    if (px->h2) {
        sl_h2up_target_t ht = {
            .pool = pool,
            .addr = (struct sockaddr *)&ss,
            .addrlen = sslen,
            .tls = uc->tls.ctx,
            .sni = sni,
            .verify_name = name,
            .connect_timeout_ms = uc->connect_timeout_ms,
            .send_timeout_ms = uc->send_timeout_ms,
            .idle_timeout_ms = uc->keepalive_idle_timeout_ms,
        };
        h2_submit(px, &ht);
        return;
    }
    sl_upconn_t *c = px->retried ? NULL : sl_connpool_acquire(pool);
    if (c != NULL) {
        px->conn = c;
        px->reused = true;
        send_request(px);
        return;
    }
    px->reused = false;
    c = sl_connpool_create_conn(pool);
    px->conn = c;
    c->user = px;
    px->state = PX_CONNECTING;
    px->connect_start_ns = sl_time_mono_ns();
    phase_timeout_set(px, px->up->conf->connect_timeout_ms, on_connect_timeout);
    int err = uv_tcp_connect(&c->connect_req, &c->tcp, (struct sockaddr *)&ss, on_connected);
    if (err) {
        try_failed(px, SL_CAUSE_UPSTREAM_CONNECT_FAILED, uv_strerror(err), SL_RETRY_ON_CONNECT_FAILURE);
        return;
    }
}

/* ---- the response ------------------------------------------------------------------------ */

/* TLS: response bytes TLS already holds, which no socket read will announce (it stopped for a
 * full rbuf, or one read brought more than fitted). True when rbuf or the EOF state changed, so
 * the caller looks again. Plain connections: false at once. */
static bool refill(proxy_t *px)
{
    sl_upconn_t *c = px->conn;
    if (c->tls == NULL || px->upstream_eof)
        return false;
    ssize_t r = sl_upconn_fill(c);
    if (r == 0)
        return false;
    if (r > 0) {
        px->got_response_bytes = true;
        return true;
    }
    px->upstream_eof = true; /* close_notify, or a fatal TLS error: the response ends here */
    uv_read_stop((uv_stream_t *)&c->tcp);
    return true;
}

static void cache_commit(proxy_t *px);

static void response_done(proxy_t *px)
{
    sl_exchange_t *x = px->x;
    sl_upconn_t *c = px->conn;
    if (px->fill != NULL)
        cache_commit(px);
    if (px->h2) {
        conn_drop(px); /* the stream is over: this only gives its buffer back */
        proxy_cleanup(px);
        x->down->finish(x);
        return;
    }
    px->conn = NULL;
    bool reusable = px->resp_keep_alive && px->resp_kind != SL_H1_BODY_CLOSE && !px->upstream_eof &&
                    (px->req_body_done || !px->req_has_body) && !px->req_writing;
    if (c != NULL) {
        c->pinned = false;
        if (reusable) {
            sl_connpool_release(c, px->up->conf->keepalive_max_idle, px->up->conf->keepalive_idle_timeout_ms);
        } else {
            sl_upconn_close(c);
        }
    }
    proxy_cleanup(px);
    x->down->finish(x);
}

static void h2_pump(proxy_t *px);

static void on_client_written(sl_exchange_t *x, int status)
{
    proxy_t *px = x->handler_data;
    px->client_writing = false;
    if (px->conn)
        px->conn->pinned = false;
    if (px->state == PX_DONE) {
        x->down->abort(x);
        return;
    }
    if (status < 0) {
        conn_drop(px);
        proxy_cleanup(px);
        x->down->abort(x);
        return;
    }
    phase_timeout_set(px, px->up->conf->read_timeout_ms, on_read_timeout);
    if (px->h2) {
        size_t n = px->h2_inflight;
        px->h2_inflight = 0;
        sl_h2up_stream_consume(&px->h2s, n);
        h2_pump(px);
        return;
    }
    uv_read_start((uv_stream_t *)&px->conn->tcp, sl__connpool_on_alloc, sl__connpool_on_read);
    response_process(px);
}

/* Sends one body slice to the client; returns true if the caller may go on at once. */
static bool forward_slice(proxy_t *px, const char *data, size_t len)
{
    sl_exchange_t *x = px->x;
    sl_str_t part = {data, len};
    if (px->fill != NULL && sl_cache_obj_append(px->fill, data, len, px->cc->max_object_size) != 0) {
        /* Past max_object_size: it streams on unstored, and waiters stop waiting for it. */
        sl_cache_obj_unref(px->fill);
        px->fill = NULL;
        if (px->clocked) {
            px->clocked = false;
            sl_cache_unlock(px->cache, px->ctag, px->chash, px->ckey, now_ms(), px->cc->lock_timeout_ms);
        }
    }
    px->client_writing = true;
    if (px->conn)
        px->conn->pinned = true;
    int r = x->down->send_body(x, &part, 1, on_client_written);
    if (r == 1) {
        px->client_writing = false;
        if (px->conn)
            px->conn->pinned = false;
        return true;
    }
    if (r < 0) {
        px->client_writing = false;
        conn_drop(px);
        proxy_cleanup(px);
        x->down->abort(x);
        return false;
    }
    /* Pending: the client is slower than the upstream. Stop the read timeout (the wait is on
     * the client's side) until the slice is written. */
    sl_timeq_cancel(&px->phase_timeout);
    return false;
}

static bool cache_on_response(proxy_t *px, const sl_h1_response_t *resp, size_t head_len);

/* Returns true when the body follows (PX_BODY); false when `px` must not be touched again
 * (a retry started, or the exchange was answered or aborted, and may be gone already). */
static bool response_head(proxy_t *px, const sl_h1_response_t *resp, size_t head_len)
{
    sl_exchange_t *x = px->x;
    uint32_t status_bit = resp->status == 502   ? SL_RETRY_ON_502
                          : resp->status == 503 ? SL_RETRY_ON_503
                          : resp->status == 504 ? SL_RETRY_ON_504
                                                : 0;
    report_outcome(px, resp->status >= 500);
    if (status_bit && retry_allowed(px, status_bit)) {
        retry(px, resp->status == 502 ? "status 502" : resp->status == 503 ? "status 503" : "status 504");
        return false;
    }
    sl_buf_t *b = px->conn->rbuf;
    x->status = resp->status;
    conn_fields_t cf;
    conn_fields_collect(resp->headers, resp->nheaders, &cf);
    for (size_t i = 0; i < resp->nheaders; i++) {
        const sl_header_t *h = &resp->headers[i];
        if (is_hop_by_hop(h->name, &cf))
            continue;
        sl_headers_add(&x->arena, &x->resp_headers, h->name, h->value);
    }
    if (px->cc != NULL && cache_on_response(px, resp, head_len))
        return false;
    px->resp_kind = resp->body;
    px->resp_keep_alive = resp->keep_alive;
    switch (resp->body) {
    case SL_H1_BODY_LENGTH:
        x->resp_body_kind = SL_BODY_LENGTH;
        x->resp_content_length = resp->content_length;
        px->resp_remaining = resp->content_length;
        break;
    case SL_H1_BODY_CHUNKED:
        x->resp_body_kind = SL_BODY_STREAM;
        sl_h1_chunked_init(&px->chunked);
        break;
    case SL_H1_BODY_CLOSE:
        x->resp_body_kind = SL_BODY_STREAM;
        break;
    default:
        x->resp_body_kind = SL_BODY_NONE;
        if (x->method == SL_METHOD_HEAD) {
            /* A HEAD response keeps the length the GET would have had (RFC 9110 §9.3.2). */
            for (size_t i = 0; i < resp->nheaders; i++)
                if (sl_str_caseeq(resp->headers[i].name, SL_STR_LIT("Content-Length"))) {
                    unsigned long long v;
                    if (sl_str_to_u64(resp->headers[i].value, &v)) {
                        x->resp_body_kind = SL_BODY_LENGTH;
                        x->resp_content_length = v;
                    }
                }
        }
        break;
    }
    /* send_head copies every header slice into the exchange arena before we consume. */
    if (x->down->send_head(x) != 0) {
        conn_drop(px);
        proxy_cleanup(px);
        x->down->abort(x);
        return false;
    }
    b->off += head_len;
    px->state = PX_BODY;
    return true;
}

static void tunnel_begin(proxy_t *px, const sl_h1_response_t *resp, size_t head_len);

/* Time to the upstream's first response byte: the log, the balancer's EWMA, the histogram. */
static void note_first_byte(proxy_t *px)
{
    sl_exchange_t *x = px->x;
    if (x->upstream_first_byte_ns >= 0)
        return;
    x->upstream_first_byte_ns = (int64_t)(sl_time_mono_ns() - x->start_ns);
    sl_balancer_observe(&px->up->states[px->target - px->up->targets], (uint64_t)x->upstream_first_byte_ns);
    if (x->worker->metrics != NULL && x->snap->metrics != NULL)
        sl_metrics_observe_upstream(x->worker->metrics, x->snap->metrics, px->up_index,
                                    (size_t)(px->target - px->up->targets), (uint64_t)x->upstream_first_byte_ns);
}

/* Trailer fields that may be passed on: none that frames, routes, authenticates or controls
 * the response (RFC 9110 §6.5.1), nor a hop-by-hop one. */
static bool trailer_allowed(sl_str_t name)
{
    static const char *const denied[] = {"content-length",
                                         "transfer-encoding",
                                         "host",
                                         "authorization",
                                         "proxy-authorization",
                                         "set-cookie",
                                         "content-type",
                                         "content-range",
                                         "content-encoding",
                                         "trailer",
                                         "te",
                                         "connection",
                                         "keep-alive",
                                         "upgrade",
                                         "cache-control",
                                         "expires",
                                         "age",
                                         "date",
                                         "location",
                                         "retry-after",
                                         "www-authenticate",
                                         "proxy-authenticate",
                                         "vary"};
    for (size_t i = 0; i < SL_ARRAY_SIZE(denied); i++)
        if (sl_str_caseeq_cstr(name, denied[i]))
            return false;
    return name.len > 0 && name.ptr[0] != ':';
}

/* One trailer line of a chunked response ("name: value", validated by the decoder), copied:
 * the read buffer moves on. */
static void trailer_add(proxy_t *px, sl_str_t line)
{
    const char *colon = memchr(line.ptr, ':', line.len);
    if (colon == NULL)
        return;
    sl_str_t name = {line.ptr, (size_t)(colon - line.ptr)};
    const char *v = colon + 1, *e = line.ptr + line.len;
    while (v < e && (*v == ' ' || *v == '\t'))
        v++;
    while (e > v && (e[-1] == ' ' || e[-1] == '\t'))
        e--;
    if (!trailer_allowed(name))
        return;
    sl_exchange_t *x = px->x;
    sl_headers_add(&x->arena, &x->resp_trailers, sl_arena_str_dup(&x->arena, name),
                   sl_arena_str_dup(&x->arena, (sl_str_t){v, (size_t)(e - v)}));
}

static void response_process(proxy_t *px)
{
    sl_exchange_t *x = px->x;
    while (px->state == PX_AWAIT_HEAD || px->state == PX_BODY) {
        sl_upconn_t *c = px->conn;
        sl_buf_t *b = c->rbuf;
        size_t avail = b ? b->len - b->off : 0;
        if (px->state == PX_AWAIT_HEAD) {
            if (avail == 0) {
                if (refill(px))
                    continue;
                if (px->upstream_eof)
                    try_failed(px, SL_CAUSE_UPSTREAM_RESET, "upstream closed before responding", SL_RETRY_ON_RESET);
                return;
            }
            sl_h1_response_t resp;
            sl_header_t hdrs[MAX_RESP_HEADERS];
            resp.headers = hdrs;
            sl_h1_limits_t limits = {
                .max_head_bytes = b->cap - 1024, .max_uri_bytes = 0, .max_headers = MAX_RESP_HEADERS};
            int r = sl_h1_parse_response(b->data + b->off, avail, &resp, &limits, x->method == SL_METHOD_HEAD);
            if (r == SL_EINCOMPLETE) {
                if (refill(px))
                    continue;
                if (px->upstream_eof)
                    try_failed(px, SL_CAUSE_UPSTREAM_RESET, "upstream closed in the response head", SL_RETRY_ON_RESET);
                return;
            }
            if (r < 0) {
                proxy_fail(px, SL_CAUSE_UPSTREAM_BAD_RESPONSE, sl_h1_error_reason(r));
                return;
            }
            note_first_byte(px);
            if (resp.status < 200) {
                if (resp.status == 101) {
                    if (!px->upgrade) {
                        /* A switch nobody asked for: the bytes after it are not HTTP we know. */
                        proxy_fail(px, SL_CAUSE_UPSTREAM_BAD_RESPONSE, "protocol upgrade not requested");
                        return;
                    }
                    tunnel_begin(px, &resp, (size_t)r);
                    return;
                }
                x->down->send_informational(x, resp.status, resp.headers, resp.nheaders);
                b->off += (size_t)r;
                continue;
            }
            if (!response_head(px, &resp, (size_t)r))
                return;
            continue;
        }
        /* PX_BODY */
        if (px->resp_kind == SL_H1_BODY_NONE) {
            response_done(px);
            return;
        }
        if (px->resp_kind == SL_H1_BODY_LENGTH) {
            if (px->resp_remaining == 0) {
                response_done(px);
                return;
            }
            if (avail == 0) {
                if (refill(px))
                    continue;
                if (px->upstream_eof)
                    proxy_fail(px, SL_CAUSE_UPSTREAM_RESET, "upstream closed mid-body");
                return;
            }
            size_t n = avail < px->resp_remaining ? avail : (size_t)px->resp_remaining;
            const char *data = b->data + b->off;
            b->off += n;
            px->resp_remaining -= n;
            if (!forward_slice(px, data, n))
                return;
            continue;
        }
        if (px->resp_kind == SL_H1_BODY_CLOSE) {
            if (avail == 0) {
                if (refill(px))
                    continue;
                if (px->upstream_eof)
                    response_done(px);
                return;
            }
            const char *data = b->data + b->off;
            b->off += avail;
            if (!forward_slice(px, data, avail))
                return;
            continue;
        }
        /* chunked */
        if (avail == 0) {
            if (refill(px))
                continue;
            if (px->upstream_eof)
                proxy_fail(px, SL_CAUSE_UPSTREAM_RESET, "upstream closed mid-body");
            return;
        }
        size_t consumed = 0;
        sl_str_t out = SL_STR_NULL;
        int r = sl_h1_chunked_decode(&px->chunked, b->data + b->off, avail, &consumed, &out);
        if (r < 0) {
            proxy_fail(px, SL_CAUSE_UPSTREAM_BAD_RESPONSE, sl_h1_error_reason(r));
            return;
        }
        b->off += consumed;
        if (r == SL_H1_CHUNK_NEED_MORE) {
            /* A partial size or trailer line stays unconsumed until more bytes arrive. */
            if (refill(px))
                continue;
            if (px->upstream_eof)
                proxy_fail(px, SL_CAUSE_UPSTREAM_RESET, "upstream closed mid-body");
            return;
        }
        if (r == SL_H1_CHUNK_TRAILER) {
            trailer_add(px, out);
            continue;
        }
        if (r == SL_H1_CHUNK_DONE) {
            response_done(px);
            return;
        }
        if (!forward_slice(px, out.ptr, out.len))
            return;
    }
}

static void tunnel_upstream_read(proxy_t *px, ssize_t nread);

void sl__proxy_on_upstream_read(sl_upconn_t *c, ssize_t nread)
{
    proxy_t *px = c->user;
    if (px->state == PX_TUNNEL) {
        tunnel_upstream_read(px, nread);
        return;
    }
    if (nread > 0) {
        px->got_response_bytes = true;
        if (px->state == PX_AWAIT_HEAD || !px->client_writing)
            phase_timeout_set(px, px->up->conf->read_timeout_ms, on_read_timeout);
        if (!px->client_writing)
            response_process(px);
        return;
    }
    if (nread == UV_ENOBUFS) {
        /* The buffer is full of bytes still being written to the client: wait for them. */
        uv_read_stop((uv_stream_t *)&c->tcp);
        if (px->state == PX_AWAIT_HEAD)
            proxy_fail(px, SL_CAUSE_UPSTREAM_BAD_RESPONSE, "response head too large");
        return;
    }
    /* EOF or error from the upstream. */
    px->upstream_eof = true;
    uv_read_stop((uv_stream_t *)&c->tcp);
    if (nread == UV_EPROTO && c->tls != NULL && c->requests == 0 && !px->got_response_bytes &&
        px->state == PX_AWAIT_HEAD) {
        /* A TLS alert in place of the first response: the server refused the session after the
         * handshake (TLS 1.3 checks the client certificate then), so nothing was served. */
        char *detail = sl_arena_alloc(&px->x->arena, 160);
        sl_tls_handshake_failure(c->tls, SL_EINVALID, detail, 160);
        try_failed(px, SL_CAUSE_UPSTREAM_CONNECT_FAILED, detail, SL_RETRY_ON_CONNECT_FAILURE);
        return;
    }
    if (!px->got_response_bytes && px->reused && !px->retried && !px->req_body_started) {
        /* Closed under us right as we reused it (the keep-alive race): retry once, fresh. The
         * EOF was that connection's, not the next one's. */
        px->retried = true;
        px->upstream_eof = false;
        conn_drop(px);
        proxy_connect(px);
        return;
    }
    if (!px->client_writing)
        response_process(px);
}

/* ---- HTTP/2 upstreams (protocol: h2, docs/grpc.md) ----------------------------------------- */

/* The request as h2 fields: the same forwarding rules as build_request_head, with the request
 * line and Host as pseudo-headers, no framing fields but Content-Length, and `te: trailers`
 * kept (gRPC servers require it; it is the only TE value HTTP/2 allows). */
static int build_h2_request(proxy_t *px)
{
    sl_exchange_t *x = px->x;
    sl_str_t path;
    if (request_path(px, &path) != 0)
        return SL_ETOOBIG;
    const sl_headers_t *h = &x->req_headers;
    sl_header_t *f = sl_arena_alloc(&x->arena, (h->len + 12) * sizeof(*f));
    size_t n = 0, extra = 0;
    bool any_xff = false, any_fwd = false, te_trailers = false;
    conn_fields_t cf;
    conn_fields_collect(h->items, h->len, &cf);
    for (size_t i = 0; i < h->len; i++) {
        const sl_header_t *it = &h->items[i];
        if (sl_str_caseeq(it->name, SL_STR_LIT("TE"))) {
            te_trailers = te_trailers || list_has_token(it->value, SL_STR_LIT("trailers"));
            continue;
        }
        if (sl_str_caseeq(it->name, SL_STR_LIT("X-Forwarded-For"))) {
            any_xff = true;
            extra += it->value.len + 2;
        } else if (sl_str_caseeq(it->name, SL_STR_LIT("Forwarded"))) {
            any_fwd = true;
            extra += it->value.len + 2;
        }
        if (field_forwarded(px, it, &cf) && !sl_str_caseeq(it->name, SL_STR_LIT("Host")))
            f[n++] = *it;
    }
    size_t cap = extra + 2 * sizeof(x->client_ip) + 2 * x->authority.len + 128;
    char *v = sl_arena_alloc(&x->arena, cap), *p = v, *e;
    e = put_xff(p, x, any_xff);
    f[n++] = (sl_header_t){SL_STR_LIT("x-forwarded-for"), {p, (size_t)(e - p)}};
    p = e;
    e = put_forwarded(p, x, any_fwd);
    f[n++] = (sl_header_t){SL_STR_LIT("forwarded"), {p, (size_t)(e - p)}};
    p = e;
    SL_BUG_ON((size_t)(p - v) > cap);
    f[n++] = (sl_header_t){SL_STR_LIT("x-forwarded-proto"), x->client_tls ? SL_STR_LIT("https") : SL_STR_LIT("http")};
    if (x->authority.len)
        f[n++] = (sl_header_t){SL_STR_LIT("x-forwarded-host"), x->authority};
    if (px->crevalidate && px->stale->etag.len)
        f[n++] = (sl_header_t){SL_STR_LIT("if-none-match"), px->stale->etag};
    if (px->crevalidate && px->stale->last_modified.len)
        f[n++] = (sl_header_t){SL_STR_LIT("if-modified-since"), px->stale->last_modified};
    f[n++] = (sl_header_t){SL_STR_LIT("x-request-id"), x->request_id};
    char *tp = sl_arena_alloc(&x->arena, 56);
    sl_trace_format(&x->trace, tp);
    f[n++] = (sl_header_t){SL_STR_LIT("traceparent"), {tp, 55}};
    if (te_trailers)
        f[n++] = (sl_header_t){SL_STR_LIT("te"), SL_STR_LIT("trailers")};
    if (x->req_body_kind == SL_BODY_LENGTH) {
        char *cl = sl_arena_alloc(&x->arena, 24);
        f[n++] =
            (sl_header_t){SL_STR_LIT("content-length"), {cl, (size_t)(sl_put_u64(cl, x->req_content_length) - cl)}};
    }
    sl_str_t target = path;
    if (x->query.len) {
        char *t = sl_arena_alloc(&x->arena, path.len + 1 + x->query.len);
        memcpy(t, path.ptr, path.len);
        t[path.len] = '?';
        memcpy(t + path.len + 1, x->query.ptr, x->query.len);
        target = (sl_str_t){t, path.len + 1 + x->query.len};
    }
    px->h2req = (sl_h2up_request_t){
        .method = x->method_token,
        .scheme = upstream_conf_now(px)->tls.ctx != NULL ? SL_STR_LIT("https") : SL_STR_LIT("http"),
        .authority = x->authority.len ? x->authority : px->target->conf->address,
        .path = target,
        .fields = f,
        .nfields = n,
        .has_body = x->req_body_kind != SL_BODY_NONE,
    };
    px->req_has_body = px->h2req.has_body;
    return 0;
}

static proxy_t *h2_proxy(sl_h2up_stream_t *st)
{
    return st->user;
}

static bool h2_send_head(proxy_t *px);

/* Writes what the stream has received to the client, one slice at a time; the window reopens
 * as each write completes (on_client_written). Ends the exchange once the stream is complete
 * and everything is out. */
static void h2_pump(proxy_t *px)
{
    if (px->h2_head_pending && !h2_send_head(px))
        return;
    for (;;) {
        sl_buf_t *b = px->h2s.body;
        size_t avail = b != NULL ? b->len - b->off : 0;
        if (avail == 0) {
            if (px->h2_eos)
                response_done(px);
            return;
        }
        px->h2_inflight = avail;
        if (!forward_slice(px, b->data + b->off, avail))
            return; /* pending (on_client_written goes on), or the exchange ended */
        px->h2_inflight = 0;
        sl_h2up_stream_consume(&px->h2s, avail);
    }
}

/* Returns false when the exchange ended (px must not be touched). */
static bool h2_send_head(proxy_t *px)
{
    sl_exchange_t *x = px->x;
    px->h2_head_pending = false;
    if (x->down->send_head(x) != 0) {
        conn_drop(px);
        proxy_cleanup(px);
        x->down->abort(x);
        return false;
    }
    return true;
}

static void h2_on_head(sl_h2up_stream_t *st, int status, const sl_header_t *h, size_t n, bool end_stream)
{
    proxy_t *px = h2_proxy(st);
    sl_exchange_t *x = px->x;
    if (px->state != PX_AWAIT_HEAD)
        return;
    note_first_byte(px);
    if (status < 200) {
        if (status != 101)
            x->down->send_informational(x, status, h, n);
        return;
    }
    uint32_t status_bit = status == 502   ? SL_RETRY_ON_502
                          : status == 503 ? SL_RETRY_ON_503
                          : status == 504 ? SL_RETRY_ON_504
                                          : 0;
    report_outcome(px, status >= 500);
    if (status_bit && retry_allowed(px, status_bit)) {
        retry(px, status == 502 ? "status 502" : status == 503 ? "status 503" : "status 504");
        return;
    }
    x->status = status;
    bool has_length = false;
    unsigned long long length = 0;
    for (size_t i = 0; i < n; i++) {
        if (sl_str_caseeq(h[i].name, SL_STR_LIT("content-length"))) {
            has_length = sl_str_to_u64(h[i].value, &length);
            continue;
        }
        sl_headers_add(&x->arena, &x->resp_headers, h[i].name, h[i].value);
    }
    bool bodiless = end_stream || x->method == SL_METHOD_HEAD || status == 204 || status == 304;
    sl_h1_response_t resp = {
        .minor_version = 1,
        .status = status,
        .headers = (sl_header_t *)h,
        .nheaders = n,
        .body = bodiless     ? SL_H1_BODY_NONE
                : has_length ? SL_H1_BODY_LENGTH
                             : SL_H1_BODY_CHUNKED,
        .content_length = length,
        .keep_alive = true,
    };
    if (px->cc != NULL && cache_on_response(px, &resp, 0))
        return;
    if (has_length && (!bodiless || x->method == SL_METHOD_HEAD)) {
        /* A HEAD response keeps the length the GET would have had (RFC 9110 §9.3.2). */
        x->resp_body_kind = SL_BODY_LENGTH;
        x->resp_content_length = length;
    } else {
        x->resp_body_kind = bodiless ? SL_BODY_NONE : SL_BODY_STREAM;
    }
    px->state = PX_BODY;
    phase_timeout_set(px, px->up->conf->read_timeout_ms, on_read_timeout);
    /* A head with a Content-Length waits for the first DATA (nghttp2 checks it against the
     * length before handing it over): a body that breaks the length is then still a 502, not
     * a head and a cut connection. Streams (gRPC) get their head at once. */
    if (has_length && !end_stream) {
        px->h2_head_pending = true;
        return;
    }
    h2_send_head(px);
}

static void h2_on_data(sl_h2up_stream_t *st)
{
    proxy_t *px = h2_proxy(st);
    if (px->state == PX_BODY && px->x->resp_body_kind == SL_BODY_NONE) {
        /* Bytes after a head that has no body (nghttp2 refuses most): never to the client. */
        sl_h2up_stream_consume(st, st->body->len - st->body->off);
        return;
    }
    if (px->state != PX_BODY || px->client_writing)
        return;
    phase_timeout_set(px, px->up->conf->read_timeout_ms, on_read_timeout);
    h2_pump(px);
}

static void h2_on_trailers(sl_h2up_stream_t *st, const sl_header_t *h, size_t n)
{
    proxy_t *px = h2_proxy(st);
    sl_exchange_t *x = px->x;
    if (px->state != PX_BODY)
        return;
    for (size_t i = 0; i < n; i++)
        if (trailer_allowed(h[i].name))
            sl_headers_add(&x->arena, &x->resp_trailers, h[i].name, h[i].value);
}

static void h2_on_closed(sl_h2up_stream_t *st, enum sl_h2up_end how, const char *detail)
{
    proxy_t *px = h2_proxy(st);
    if (px->state == PX_DONE)
        return;
    if (how == SL_H2UP_COMPLETE) {
        px->h2_eos = true;
        if (px->state == PX_BODY && !px->client_writing)
            h2_pump(px);
        return;
    }
    /* The detail may be the callee's buffer: the log needs it after this call. */
    const char *d = sl_arena_strndup(&px->x->arena, detail, strlen(detail));
    if (px->state != PX_AWAIT_HEAD) {
        proxy_fail(px, how == SL_H2UP_PROTOCOL_ERROR ? SL_CAUSE_UPSTREAM_BAD_RESPONSE : SL_CAUSE_UPSTREAM_RESET, d);
        return;
    }
    switch (how) {
    case SL_H2UP_CONNECT_FAILED:
        if (upstream_conf_now(px)->tls.ctx != NULL && strncmp(d, "tls", 3) == 0)
            tls_failure_note(px, d);
        try_failed(px, SL_CAUSE_UPSTREAM_CONNECT_FAILED, d, SL_RETRY_ON_CONNECT_FAILURE);
        break;
    case SL_H2UP_REFUSED:
        /* Never processed: as safe to retry as a refused connect, whatever the method. */
        try_failed(px, SL_CAUSE_UPSTREAM_RESET, d, SL_RETRY_ON_CONNECT_FAILURE);
        break;
    case SL_H2UP_TIMEOUT:
        try_failed(px, SL_CAUSE_UPSTREAM_TIMEOUT, d, SL_RETRY_ON_TIMEOUT);
        break;
    case SL_H2UP_PROTOCOL_ERROR:
        report_try(px, true, SL_CAUSE_UPSTREAM_BAD_RESPONSE);
        proxy_fail(px, SL_CAUSE_UPSTREAM_BAD_RESPONSE, d);
        break;
    default:
        try_failed(px, SL_CAUSE_UPSTREAM_RESET, d, SL_RETRY_ON_RESET);
        break;
    }
}

static void h2_request_body_cb(sl_exchange_t *x, int status, const char *data, size_t len)
{
    proxy_t *px = x->handler_data;
    if (px->state == PX_DONE)
        return;
    if (status < 0) {
        request_body_failed(px);
        return;
    }
    if (len == 0)
        px->req_body_done = true;
    px->h2_body_sent += len;
    /* A body of known length ends with its last byte: END_STREAM rides on that DATA frame. */
    bool last = len > 0 && x->req_body_kind == SL_BODY_LENGTH && px->h2_body_sent == x->req_content_length;
    if (px->h2_active)
        sl_h2up_stream_send_body(&px->h2s, data, len, last);
}

static void h2_on_body_taken(sl_h2up_stream_t *st)
{
    proxy_t *px = h2_proxy(st);
    if (px->state != PX_DONE && !px->req_body_done)
        px->x->down->body_resume(px->x);
}

static void h2_body_begin(proxy_t *px)
{
    px->h2_body_wait = false;
    px->req_body_started = true;
    px->x->down->body_start(px->x, h2_request_body_cb);
}

static void h2_on_connected(sl_h2up_stream_t *st)
{
    proxy_t *px = h2_proxy(st);
    if (px->state != PX_AWAIT_HEAD)
        return;
    px->x->upstream_connect_ns = (int64_t)(sl_time_mono_ns() - px->connect_start_ns);
    if (upstream_conf_now(px)->tls.ctx != NULL)
        tls_success_note(px);
    phase_timeout_set(px, try_timeout_ms(px), on_read_timeout);
    if (px->h2_body_wait)
        h2_body_begin(px);
}

static const struct sl_h2up_stream_ops h2_stream_ops = {
    .head = h2_on_head,
    .data = h2_on_data,
    .trailers = h2_on_trailers,
    .closed = h2_on_closed,
    .body_taken = h2_on_body_taken,
    .connected = h2_on_connected,
};

static void h2_submit(proxy_t *px, const sl_h2up_target_t *t)
{
    sl_exchange_t *x = px->x;
    memset(&px->h2s, 0, sizeof(px->h2s));
    px->h2s.ops = &h2_stream_ops;
    px->h2s.user = px;
    px->h2s.arena = &x->arena;
    px->h2s.w = x->worker;
    px->state = PX_AWAIT_HEAD;
    px->connect_start_ns = sl_time_mono_ns();
    int r = sl_h2up_stream_submit(x->worker, t, &px->h2req, &px->h2s);
    if (r < 0) {
        if (r == SL_ECLOSED) {
            const char *d = sl_arena_strndup(&x->arena, px->h2s.fail_detail, strlen(px->h2s.fail_detail));
            try_failed(px, SL_CAUSE_UPSTREAM_CONNECT_FAILED, d, SL_RETRY_ON_CONNECT_FAILURE);
        } else {
            proxy_fail(px, SL_CAUSE_BAD_REQUEST, "request head not valid for HTTP/2");
        }
        return;
    }
    px->h2_active = true;
    px->reused = px->h2s.reused;
    /* A new connection has its own connect timeout; the try's starts when it is up. */
    uint64_t wait = px->h2s.reused ? try_timeout_ms(px) : px->up->conf->connect_timeout_ms + try_timeout_ms(px);
    phase_timeout_set(px, wait, on_read_timeout);
    if (px->req_has_body) {
        if (px->h2s.reused)
            h2_body_begin(px);
        else
            px->h2_body_wait = true;
    }
}

/* `grpc-timeout` (gRPC over HTTP/2: 1-8 digits and a unit H M S m u n) in ms, rounded up. */
static bool grpc_timeout_ms(const sl_exchange_t *x, uint64_t *out)
{
    const sl_header_t *g = sl_headers_find(&x->req_headers, SL_STR_LIT("grpc-timeout"));
    if (g == NULL || g->value.len < 2 || g->value.len > 9)
        return false;
    uint64_t v = 0;
    for (size_t i = 0; i + 1 < g->value.len; i++) {
        if (g->value.ptr[i] < '0' || g->value.ptr[i] > '9')
            return false;
        v = v * 10 + (uint64_t)(g->value.ptr[i] - '0');
    }
    switch (g->value.ptr[g->value.len - 1]) {
    case 'H':
        v *= 3600000;
        break;
    case 'M':
        v *= 60000;
        break;
    case 'S':
        v *= 1000;
        break;
    case 'm':
        break;
    case 'u':
        v = (v + 999) / 1000;
        break;
    case 'n':
        v = (v + 999999) / 1000000;
        break;
    default:
        return false;
    }
    *out = v > 0 ? v : 1;
    return true;
}

/* ---- protocol upgrade: the tunnel after a 101 (docs/websocket.md) ------------------------------ */

/* True when a Connection field of `h` lists `token` (RFC 9110 §7.6.1). */
static bool connection_lists(const sl_headers_t *h, sl_str_t token)
{
    for (size_t i = 0; i < h->len; i++) {
        if (!sl_str_caseeq(h->items[i].name, SL_STR_LIT("Connection")))
            continue;
        if (list_has_token(h->items[i].value, token))
            return true;
    }
    return false;
}

/* An upgrade the gateway forwards: GET without a body on HTTP/1.1, Connection naming upgrade,
 * and an Upgrade field. Its h2c tokens are dropped (sluice speaks HTTP/1.1 upstream: an h2c
 * switch would take the connection out of its hands); nothing left means no upgrade. */
static bool upgrade_wanted(proxy_t *px)
{
    sl_exchange_t *x = px->x;
    if (x->method != SL_METHOD_GET || x->req_body_kind != SL_BODY_NONE || x->minor_version < 1 ||
        x->down->tunnel_start == NULL)
        return false;
    const sl_header_t *up = sl_headers_find(&x->req_headers, SL_STR_LIT("Upgrade"));
    if (up == NULL || !connection_lists(&x->req_headers, SL_STR_LIT("upgrade")))
        return false;
    sl_str_t v = up->value;
    char *out = sl_arena_alloc(&x->arena, 2 * v.len + 1); /* "a,b" becomes "a, b" */
    size_t n = 0, p = 0;
    while (p < v.len) {
        while (p < v.len && (v.ptr[p] == ' ' || v.ptr[p] == '\t' || v.ptr[p] == ','))
            p++;
        size_t st = p;
        while (p < v.len && v.ptr[p] != ',')
            p++;
        size_t e = p;
        while (e > st && (v.ptr[e - 1] == ' ' || v.ptr[e - 1] == '\t'))
            e--;
        sl_str_t tok = {v.ptr + st, e - st};
        if (tok.len == 0 || sl_str_caseeq(tok, SL_STR_LIT("h2c")))
            continue;
        if (n > 0) {
            out[n++] = ',';
            out[n++] = ' ';
        }
        memcpy(out + n, tok.ptr, tok.len);
        n += tok.len;
    }
    if (n == 0)
        return false;
    px->upgrade_value = (sl_str_t){out, n};
    return true;
}

static void on_tunnel_idle(sl_timeq_entry_t *e);

/* Any byte either way restarts timeouts.tunnel_idle. */
static void tunnel_touch(proxy_t *px)
{
    phase_timeout_set(px, px->x->snap->cfg->timeouts.tunnel_idle_ms, on_tunnel_idle);
}

/* Ends the exchange: both directions done (finish), or a failure or timeout (abort, which also
 * drops a client write still queued). Either way both connections close; the upstream one is
 * never pooled again. */
static void tunnel_end(proxy_t *px, bool failed)
{
    sl_exchange_t *x = px->x;
    conn_drop(px);
    proxy_cleanup(px);
    if (failed)
        x->down->abort(x);
    else
        x->down->finish(x);
}

static void on_tunnel_idle(sl_timeq_entry_t *e)
{
    proxy_t *px = SL_CONTAINER_OF(e, proxy_t, phase_timeout);
    px->x->cause_detail = "tunnel idle timeout";
    tunnel_end(px, true);
}

/* Returns false when the tunnel ended (px must not be touched). */
static bool tunnel_maybe_end(proxy_t *px)
{
    if (px->up_shut && px->down_shut && !px->client_writing && !px->req_writing) {
        tunnel_end(px, false);
        return false;
    }
    return true;
}

static bool tunnel_shut_upstream(proxy_t *px)
{
    px->up_shut = true;
    if (sl_upconn_shutdown(px->conn) != 0) {
        tunnel_end(px, true);
        return false;
    }
    return tunnel_maybe_end(px);
}

static void tunnel_client_written(sl_exchange_t *x, int status);

/* Upstream bytes to the client, one write at a time straight from the upstream's read buffer
 * (pinned while queued). While a write is queued the upstream buffer fills and its reads stop
 * (UV_ENOBUFS): a client that does not read holds one buffer, not a growing queue. Returns
 * false when the tunnel ended. */
static bool tunnel_pump(proxy_t *px)
{
    sl_exchange_t *x = px->x;
    while (!px->client_writing) {
        sl_buf_t *b = px->conn->rbuf;
        size_t avail = b != NULL ? b->len - b->off : 0;
        if (avail == 0 && !px->tunnel_head_unsent) {
            if (refill(px))
                continue;
            if (px->upstream_eof && !px->down_shut) {
                px->down_shut = true;
                if (x->down->tunnel_shutdown(x) != 0) {
                    tunnel_end(px, true);
                    return false;
                }
                return tunnel_maybe_end(px);
            }
            return true;
        }
        px->tunnel_head_unsent = false;
        sl_str_t part = {avail ? b->data + b->off : NULL, avail};
        if (avail)
            b->off += avail;
        px->client_writing = true;
        px->conn->pinned = true;
        int r = x->down->send_body(x, &part, avail ? 1 : 0, tunnel_client_written);
        if (r < 0) {
            px->client_writing = false;
            tunnel_end(px, true);
            return false;
        }
        if (r == 0)
            return true;
        px->client_writing = false;
        px->conn->pinned = false;
    }
    return true;
}

static void tunnel_client_written(sl_exchange_t *x, int status)
{
    proxy_t *px = x->handler_data;
    px->client_writing = false;
    if (px->conn != NULL)
        px->conn->pinned = false;
    if (px->state != PX_TUNNEL) {
        x->down->abort(x);
        return;
    }
    if (status < 0) {
        tunnel_end(px, true);
        return;
    }
    tunnel_touch(px);
    if (!px->upstream_eof)
        uv_read_start((uv_stream_t *)&px->conn->tcp, sl__connpool_on_alloc, sl__connpool_on_read);
    tunnel_pump(px);
}

static void tunnel_upstream_read(proxy_t *px, ssize_t nread)
{
    sl_upconn_t *c = px->conn;
    if (nread > 0) {
        tunnel_touch(px);
        if (!px->client_writing)
            tunnel_pump(px);
        return;
    }
    uv_read_stop((uv_stream_t *)&c->tcp);
    if (nread == UV_ENOBUFS)
        return; /* a client write holds the buffer; its completion reads on */
    if (nread != UV_EOF) {
        px->x->cause = SL_CAUSE_UPSTREAM_RESET;
        px->x->cause_detail = "upstream reset the tunnel";
        tunnel_end(px, true);
        return;
    }
    px->upstream_eof = true;
    if (!px->client_writing)
        tunnel_pump(px);
}

/* Client bytes to the upstream; the next slice comes after body_resume (backpressure). */
static void tunnel_from_client(sl_exchange_t *x, int status, const char *data, size_t len)
{
    proxy_t *px = x->handler_data;
    if (px->state != PX_TUNNEL)
        return;
    if (status < 0) {
        tunnel_end(px, true);
        return;
    }
    if (len == 0) {
        px->client_eof = true;
        if (!px->req_writing)
            tunnel_shut_upstream(px);
        return;
    }
    tunnel_touch(px);
    px->wiov[0] = uv_buf_init((char *)data, (unsigned)len);
    int r = upstream_write(px, px->wiov, 1);
    if (r < 0) {
        tunnel_end(px, true);
        return;
    }
    if (r == 1)
        x->down->body_resume(x);
}

static void tunnel_upstream_written(proxy_t *px, int status)
{
    if (status < 0) {
        tunnel_end(px, true);
        return;
    }
    tunnel_touch(px);
    if (px->client_eof) {
        tunnel_shut_upstream(px);
        return;
    }
    px->x->down->body_resume(px->x);
}

/* The upstream switched protocols: the 101 goes to the client with the upstream's Upgrade and
 * Sec-WebSocket-* fields, then both connections carry bytes until both sides are done. */
static void tunnel_begin(proxy_t *px, const sl_h1_response_t *resp, size_t head_len)
{
    sl_exchange_t *x = px->x;
    report_outcome(px, false);
    x->status = 101;
    conn_fields_t cf;
    conn_fields_collect(resp->headers, resp->nheaders, &cf);
    for (size_t i = 0; i < resp->nheaders; i++) {
        const sl_header_t *h = &resp->headers[i];
        if (!sl_str_caseeq(h->name, SL_STR_LIT("Upgrade")) && is_hop_by_hop(h->name, &cf))
            continue;
        sl_headers_add(&x->arena, &x->resp_headers, h->name, h->value);
    }
    sl_timeq_cancel(&px->route_timeout); /* a tunnel lives as long as it is used */
    px->resp_keep_alive = false;
    if (x->down->tunnel_start(x) != 0) { /* the head is copied into the exchange arena here */
        if (!x->head_sent) {
            /* The client connection cannot carry it (a request head filling its buffer). */
            x->resp_headers.len = 0;
            proxy_fail(px, SL_CAUSE_UPSTREAM_BAD_RESPONSE, "cannot tunnel on this connection");
            return;
        }
        conn_drop(px);
        proxy_cleanup(px);
        x->down->abort(x);
        return;
    }
    px->conn->rbuf->off += head_len;
    px->state = PX_TUNNEL;
    px->tunnel_head_unsent = true;
    tunnel_touch(px);
    if (!tunnel_pump(px))
        return;
    x->down->body_start(x, tunnel_from_client);
}

/* ---- the response cache (docs/cache.md) ------------------------------------------------------ */

static void proxy_go(proxy_t *px);

static int64_t wall_s(void)
{
    return (int64_t)(sl_time_wall_ms() / 1000);
}

static void served_cb(sl_exchange_t *x, int status)
{
    if (status < 0)
        x->down->abort(x);
    else
        x->down->finish(x);
}

/* Sets the Sluice-Cache header and counts the result in sluice_cache_requests_total. */
static void cache_mark(proxy_t *px, const char *result)
{
    sl_exchange_t *x = px->x;
    px->cresult = result;
    sl_headers_add(&x->arena, &x->resp_headers, SL_STR_LIT("Sluice-Cache"), sl_str_from_cstr(result));
    if (x->worker->metrics == NULL || x->snap->metrics == NULL)
        return;
    enum sl_metrics_cache_result r = result[0] == 'H'   ? SL_METRICS_CACHE_HIT
                                     : result[0] == 'M' ? SL_METRICS_CACHE_MISS
                                     : result[0] == 'S' ? SL_METRICS_CACHE_STALE
                                     : result[0] == 'E' ? SL_METRICS_CACHE_EXPIRED
                                                        : SL_METRICS_CACHE_BYPASS;
    sl_metrics_observe_cache(x->worker->metrics, x->snap->metrics, x, r);
}

/* Weak comparison of an If-None-Match list with an entity tag (RFC 9110 §13.1.2). */
static bool etag_listed(sl_str_t list, sl_str_t etag)
{
    if (etag.len > 2 && etag.ptr[0] == 'W' && etag.ptr[1] == '/')
        etag = (sl_str_t){etag.ptr + 2, etag.len - 2};
    size_t p = 0;
    while (p < list.len) {
        while (p < list.len && (list.ptr[p] == ' ' || list.ptr[p] == '\t' || list.ptr[p] == ','))
            p++;
        size_t st = p;
        if (p < list.len && list.ptr[p] == '*')
            return true;
        if (p + 1 < list.len && list.ptr[p] == 'W' && list.ptr[p + 1] == '/')
            st = p += 2;
        if (p < list.len && list.ptr[p] == '"') {
            p++;
            while (p < list.len && list.ptr[p] != '"')
                p++;
            if (p < list.len)
                p++;
        }
        if (sl_str_eq((sl_str_t){list.ptr + st, p - st}, etag))
            return true;
        while (p < list.len && list.ptr[p] != ',')
            p++;
    }
    return false;
}

/* Whether the client's own conditions say its copy is current (RFC 9110 §13.2.2). */
static bool client_not_modified(const sl_exchange_t *x, const sl_cache_obj_t *o)
{
    if (o->meta.status != 200)
        return false; /* RFC 9110 §13.2.1: preconditions apply to a 2xx selected representation */
    const sl_header_t *inm = sl_headers_find(&x->req_headers, SL_STR_LIT("If-None-Match"));
    if (inm != NULL)
        return o->etag.len > 0 && etag_listed(inm->value, o->etag);
    const sl_header_t *ims = sl_headers_find(&x->req_headers, SL_STR_LIT("If-Modified-Since"));
    int64_t since, modified;
    return ims != NULL && o->last_modified.len > 0 && sl_http_date_parse(ims->value, &since) &&
           sl_http_date_parse(o->last_modified, &modified) && modified <= since;
}

/* RFC 9110 §15.4.5: what a 304 carries of the stored response. */
static bool kept_in_304(sl_str_t name)
{
    static const sl_str_t keep[] = {SL_STR_LIT("Cache-Control"), SL_STR_LIT("Content-Location"), SL_STR_LIT("Date"),
                                    SL_STR_LIT("ETag"),          SL_STR_LIT("Expires"),          SL_STR_LIT("Vary"),
                                    SL_STR_LIT("Last-Modified")};
    for (size_t i = 0; i < SL_ARRAY_SIZE(keep); i++)
        if (sl_str_caseeq(name, keep[i]))
            return true;
    return false;
}

/* Answers the exchange from `o` (a reference the arena holds): a conditional request of the
 * client may get 304. The bytes go to the client straight from the object. */
static void cache_serve(proxy_t *px, sl_cache_obj_t *o, const char *result)
{
    sl_exchange_t *x = px->x;
    proxy_cleanup(px);
    x->on_abort = NULL;
    bool not_modified = client_not_modified(x, o);
    x->status = not_modified ? 304 : o->meta.status;
    for (size_t i = 0; i < o->nheaders; i++)
        if (!not_modified || kept_in_304(o->headers[i].name))
            sl_headers_add(&x->arena, &x->resp_headers, o->headers[i].name, o->headers[i].value);
    char *age = sl_arena_alloc(&x->arena, 24);
    char *e = sl_put_u64(age, (uint64_t)sl_cache_current_age(&o->meta, wall_s()));
    sl_headers_add(&x->arena, &x->resp_headers, SL_STR_LIT("Age"), (sl_str_t){age, (size_t)(e - age)});
    cache_mark(px, result);
    x->resp_body_kind = not_modified ? SL_BODY_NONE : SL_BODY_LENGTH;
    x->resp_content_length = not_modified ? 0 : o->body_len;
    if (x->down->send_head(x) != 0) {
        x->down->abort(x);
        return;
    }
    if (not_modified || x->method == SL_METHOD_HEAD || o->body_len == 0) {
        x->down->finish(x);
        return;
    }
    sl_str_t part = {o->body, o->body_len};
    int r = x->down->send_body(x, &part, 1, served_cb);
    if (r == 1)
        x->down->finish(x);
    else if (r < 0)
        x->down->abort(x);
}

/* A stale object may stand in for a failed fetch (stale-if-error, RFC 5861 §4). */
static bool stale_usable_on_error(const proxy_t *px)
{
    if (px->stale == NULL)
        return false;
    const sl_cache_meta_t *m = &px->stale->meta;
    int64_t past = sl_cache_current_age(m, wall_s()) - m->lifetime;
    return !m->no_stale && past <= m->stale_if_error && m->stale_if_error > 0;
}

/* The access log and metrics carry every stale answer's cause; the error log says it at most
 * once a second per worker, so an outage does not flood it. */
static void log_stale(proxy_t *px, const char *why)
{
    static _Thread_local uint64_t last_ms;
    uint64_t now = now_ms();
    if (last_ms != 0 && now - last_ms < 1000)
        return;
    last_ms = now;
    sl_log_info("route %.*s: upstream failed (%s), serving a stale response", SL_STR_FMT(px->x->route_name), why);
}

static bool cache_serve_stale(proxy_t *px, enum sl_cause cause)
{
    switch (cause) {
    case SL_CAUSE_UPSTREAM_CONNECT_FAILED:
    case SL_CAUSE_UPSTREAM_RESET:
    case SL_CAUSE_UPSTREAM_BAD_RESPONSE:
    case SL_CAUSE_UPSTREAM_TIMEOUT:
    case SL_CAUSE_NO_HEALTHY_UPSTREAM:
    case SL_CAUSE_CIRCUIT_OPEN:
    case SL_CAUSE_UPSTREAM_OVERLOADED:
        break;
    default:
        return false;
    }
    if (!stale_usable_on_error(px))
        return false;
    /* The error's own headers (Retry-After of an open circuit) do not belong on a 200. */
    px->x->resp_headers.len = 0;
    log_stale(px, sl_cause_info(cause)->name);
    cache_serve(px, px->stale, "STALE");
    return true;
}

static void cache_unlock(proxy_t *px, uint64_t pass_ms)
{
    if (px->clocked) {
        px->clocked = false;
        sl_cache_unlock(px->cache, px->ctag, px->chash, px->ckey, now_ms(), pass_ms);
    }
}

/* RFC 9111 §4.4: a successful unsafe request invalidates the URL and its Location and
 * Content-Location when they name the same host. */
static void cache_invalidate(proxy_t *px)
{
    sl_exchange_t *x = px->x;
    sl_cache_invalidate(px->cache, px->ctag, px->chash, px->ckey);
    static const sl_str_t fields[] = {SL_STR_LIT("Location"), SL_STR_LIT("Content-Location")};
    for (size_t i = 0; i < SL_ARRAY_SIZE(fields); i++) {
        const sl_header_t *h = sl_headers_find(&x->resp_headers, fields[i]);
        if (h == NULL || h->value.len == 0)
            continue;
        sl_str_t v = h->value, host = x->host, target;
        if (v.ptr[0] == '/' && (v.len < 2 || v.ptr[1] != '/')) {
            target = v;
        } else {
            size_t skip = sl_str_has_prefix(v, SL_STR_LIT("http://"))    ? 7
                          : sl_str_has_prefix(v, SL_STR_LIT("https://")) ? 8
                                                                         : 0;
            if (skip == 0)
                continue;
            const char *slash = memchr(v.ptr + skip, '/', v.len - skip);
            sl_str_t auth = {v.ptr + skip, (slash ? (size_t)(slash - v.ptr) : v.len) - skip};
            const char *colon = memchr(auth.ptr, ':', auth.len);
            if (colon)
                auth.len = (size_t)(colon - auth.ptr);
            if (!sl_str_caseeq(auth, host))
                continue;
            target = slash ? (sl_str_t){slash, v.len - (size_t)(slash - v.ptr)} : SL_STR_LIT("/");
        }
        const char *q = memchr(target.ptr, '?', target.len);
        sl_str_t path = q ? (sl_str_t){target.ptr, (size_t)(q - target.ptr)} : target;
        sl_str_t query = q ? (sl_str_t){q + 1, target.len - (size_t)(q + 1 - target.ptr)} : SL_STR_NULL;
        sl_str_t key = sl_cache_key(&x->arena, host, path, query);
        sl_cache_invalidate(px->cache, px->ctag, sl_cache_hash(px->ctag, key), key);
    }
}

/* The upstream's response head is in x->resp_headers. Returns true when the cache took the
 * exchange over (a 304 refreshed the stored response, or a 5xx made way for a stale one). */
static bool cache_on_response(proxy_t *px, const sl_h1_response_t *resp, size_t head_len)
{
    sl_exchange_t *x = px->x;
    if (px->cinvalidate) {
        if (resp->status < 400)
            cache_invalidate(px);
        cache_mark(px, "BYPASS");
        return false;
    }
    int64_t now = wall_s();
    if (resp->status == 304 && px->crevalidate) {
        /* RFC 9111 §4.3.4: the stored response, its headers updated by the 304's. */
        sl_cache_meta_t meta;
        sl_cache_obj_t *fresh =
            sl_cache_obj_refresh(px->stale, x->resp_headers.items, x->resp_headers.len, &px->stale->meta);
        sl_headers_t merged = {fresh->headers, fresh->nheaders, fresh->nheaders};
        enum sl_cache_verdict v = sl_cache_response_analyze(px->cc, px->stale->meta.status, &merged, px->creq_auth,
                                                            px->creq_time, now, &meta);
        fresh->meta = meta;
        if (v == SL_CACHE_STORE)
            sl_cache_insert(px->cache, fresh, px->cc->max_variants);
        else
            sl_cache_invalidate(px->cache, px->ctag, px->chash, px->ckey);
        cache_unlock(px, 0);
        sl_arena_on_dispose(&x->arena, sl_cache_obj_release, fresh);
        /* The 304 has no body: the connection goes back to the pool (an h2 stream is over). */
        if (px->conn != NULL) {
            px->conn->rbuf->off += head_len;
            px->resp_kind = SL_H1_BODY_NONE;
            px->resp_keep_alive = resp->keep_alive;
            sl_upconn_t *c = px->conn;
            px->conn = NULL;
            c->pinned = false;
            if (px->resp_keep_alive && !px->upstream_eof && !px->req_writing)
                sl_connpool_release(c, px->up->conf->keepalive_max_idle, px->up->conf->keepalive_idle_timeout_ms);
            else
                sl_upconn_close(c);
        } else {
            conn_drop(px);
        }
        x->resp_headers.len = 0;
        cache_serve(px, fresh, "EXPIRED");
        return true;
    }
    if (resp->status >= 500 && stale_usable_on_error(px)) {
        conn_drop(px);
        x->cause_detail = "upstream 5xx; stale response served";
        x->resp_headers.len = 0;
        log_stale(px, "upstream 5xx");
        cache_serve(px, px->stale, "STALE");
        return true;
    }
    if (px->cstore) {
        sl_cache_meta_t meta;
        enum sl_cache_verdict v =
            sl_cache_response_analyze(px->cc, resp->status, &x->resp_headers, px->creq_auth, px->creq_time, now, &meta);
        bool star = false;
        sl_str_t names = sl_cache_vary_names(&x->arena, &x->resp_headers, &star);
        bool fits = resp->body != SL_H1_BODY_LENGTH || resp->content_length <= px->cc->max_object_size;
        if (v == SL_CACHE_STORE && fits && !star) {
            sl_str_t values = sl_cache_vary_values(&x->arena, names, &x->req_headers);
            size_t hint = resp->body == SL_H1_BODY_LENGTH ? (size_t)resp->content_length : 0;
            px->fill = sl_cache_obj_create(x->route_name, px->ctag, px->ckey, names, values, &meta,
                                           x->resp_headers.items, x->resp_headers.len, hint);
            if (resp->body == SL_H1_BODY_NONE || (resp->body == SL_H1_BODY_LENGTH && resp->content_length == 0))
                cache_commit(px);
        } else {
            /* Not storable: whoever waits for it goes upstream now, and so does the next one
             * for a while, instead of queueing behind one fetch at a time. */
            if (px->stale != NULL && v != SL_CACHE_STORE)
                sl_cache_invalidate(px->cache, px->ctag, px->chash, px->ckey);
            cache_unlock(px, px->cc->lock_timeout_ms);
        }
    }
    cache_mark(px, px->cresult);
    return false;
}

static void cache_commit(proxy_t *px)
{
    sl_cache_obj_t *o = px->fill;
    px->fill = NULL;
    sl_cache_obj_trim(o);
    if (sl_cache_insert(px->cache, o, px->cc->max_variants) != 0)
        sl_log_debug("cache: %.*s not stored: larger than a quarter of a shard's budget",
                     SL_STR_FMT(px->x->route_name));
    sl_cache_obj_unref(o);
    cache_unlock(px, 0);
}

/* Looks the request up: a fresh object answers it; otherwise one exchange per key goes
 * upstream (revalidating a stale object when it can) while the others wait a bounded time. */
enum cache_step {
    CACHE_GO = 1, /* go upstream */
    CACHE_WAIT,   /* another exchange is fetching the key: look again later */
    CACHE_DONE,   /* answered from the cache: `px` and the exchange may be gone */
};

static enum cache_step cache_try(proxy_t *px, bool first)
{
    sl_exchange_t *x = px->x;
    sl_cache_control_t rcc = {0};
    sl_cache_control_of(&x->req_headers, &rcc);
    sl_cache_obj_t *o = sl_cache_lookup(px->cache, px->ctag, px->chash, px->ckey, &x->req_headers, &x->arena);
    if (o != NULL && px->creq_auth && !o->meta.auth_ok) {
        /* RFC 9111 §3.5: not to be shared with a request that carries credentials. */
        sl_cache_obj_unref(o);
        o = NULL;
    }
    if (o != NULL) {
        sl_arena_on_dispose(&x->arena, sl_cache_obj_release, o);
        int64_t age = sl_cache_current_age(&o->meta, wall_s());
        bool fresh = o->meta.lifetime > age && !(rcc.flags & SL_CC_NO_CACHE) &&
                     !((rcc.flags & SL_CC_MAX_AGE) && age > rcc.max_age);
        if (fresh) {
            cache_serve(px, o, "HIT");
            return CACHE_DONE;
        }
        px->stale = o;
        px->cresult = "EXPIRED";
        px->crevalidate = o->etag.len > 0 || o->last_modified.len > 0;
    } else if (first) {
        px->cresult = "MISS";
    }
    if (!px->cstore)
        return CACHE_GO; /* HEAD: straight upstream */
    enum sl_cache_lock_result lr =
        sl_cache_lock(px->cache, px->ctag, px->chash, px->ckey, now_ms(), px->cc->lock_timeout_ms);
    if (lr == SL_CACHE_LOCK_TAKEN) {
        px->clocked = true;
        return CACHE_GO;
    }
    if (lr == SL_CACHE_LOCK_PASS)
        return CACHE_GO;
    /* Someone is fetching it. stale-while-revalidate: a stale object within its window answers
     * at once; otherwise wait for the fetch. */
    if (px->stale != NULL && !(rcc.flags & SL_CC_NO_CACHE) && !px->stale->meta.no_stale &&
        px->stale->meta.stale_while_revalidate > 0 &&
        sl_cache_current_age(&px->stale->meta, wall_s()) - px->stale->meta.lifetime <=
            px->stale->meta.stale_while_revalidate) {
        cache_serve(px, px->stale, "STALE");
        return CACHE_DONE;
    }
    if (first)
        px->wait_deadline_ms = now_ms() + px->cc->lock_timeout_ms;
    else if (now_ms() >= px->wait_deadline_ms)
        return CACHE_GO; /* waited long enough: go upstream unlocked */
    return CACHE_WAIT;
}

#define CACHE_POLL_MS 5

static void on_cache_poll(sl_timeq_entry_t *e);

static void cache_wait_or_go(proxy_t *px, bool first)
{
    switch (cache_try(px, first)) {
    case CACHE_GO:
        px->creq_time = wall_s();
        proxy_go(px);
        return;
    case CACHE_WAIT: /* look again soon (the fetch may run on another worker) */
        sl_timeq_add_at(timeqs_of(px), &px->phase_timeout, CACHE_POLL_MS, on_cache_poll);
        return;
    case CACHE_DONE:
        return;
    }
}

static void on_cache_poll(sl_timeq_entry_t *e)
{
    cache_wait_or_go(SL_CONTAINER_OF(e, proxy_t, phase_timeout), false);
}

static void cache_start(proxy_t *px, upstreams_rt_t *u)
{
    sl_exchange_t *x = px->x;
    px->cc = &px->route->cache;
    px->cache = u->cache;
    px->ctag = u->route_tags[x->route_index];
    px->ckey = sl_cache_key(&x->arena, x->host, x->path, x->query);
    /* RFC 9111 §3.5 covers Authorization; an identified consumer is the same case even when its
     * credential was an API key or was hidden from the upstream (which sees X-Consumer-Id). */
    px->creq_auth = sl_headers_find(&x->req_headers, SL_STR_LIT("Authorization")) != NULL || x->consumer.len > 0;
    if (px->cc->per_consumer && x->consumer.len > 0) {
        /* The route's opt-in: each consumer's entries are its own, so they may be stored. */
        size_t n = px->ckey.len + 2 + x->consumer.len;
        char *k = sl_arena_alloc(&x->arena, n + 1);
        char *e = sl_put(k, px->ckey.ptr, px->ckey.len);
        e = sl_put(e, "\n@", 2);
        e = sl_put(e, x->consumer.ptr, x->consumer.len);
        *e = 0;
        px->ckey = (sl_str_t){k, n};
        px->creq_auth = false;
    }
    px->chash = sl_cache_hash(px->ctag, px->ckey);
    px->cresult = "BYPASS";
    px->creq_time = wall_s();
    px->state = PX_CONNECTING;
    bool safe = x->method == SL_METHOD_GET || x->method == SL_METHOD_HEAD;
    if (!safe) {
        px->cinvalidate = x->method == SL_METHOD_POST || x->method == SL_METHOD_PUT || x->method == SL_METHOD_DELETE ||
                          x->method == SL_METHOD_PATCH;
        if (!px->cinvalidate)
            px->cc = NULL;
        proxy_go(px);
        return;
    }
    sl_cache_control_t rcc = {0};
    sl_cache_control_of(&x->req_headers, &rcc);
    if ((rcc.flags & SL_CC_NO_STORE) || sl_headers_find(&x->req_headers, SL_STR_LIT("Range")) != NULL) {
        /* Ranges are not cached (206 is never stored); no-store asks for no copy at all. */
        proxy_go(px);
        return;
    }
    px->cstore = x->method == SL_METHOD_GET;
    px->cstrip_cond = px->cstore;
    cache_wait_or_go(px, true);
}

/* ---- entry --------------------------------------------------------------------------------- */

/* The bytes `balance: hash` hashes, per `hash_on`; empty (round robin) when absent. */
static sl_balance_key_t hash_key(const sl_exchange_t *x, const sl_upstream_conf_t *conf)
{
    sl_balance_key_t k = {NULL, 0};
    switch (conf->hash_on) {
    case SL_HASH_ON_IP:
        k.ptr = x->client_ip;
        k.len = strlen(x->client_ip);
        break;
    case SL_HASH_ON_PATH:
        k.ptr = x->path.ptr;
        k.len = x->path.len;
        break;
    case SL_HASH_ON_HEADER: {
        const sl_header_t *h = sl_headers_find(&x->req_headers, conf->hash_on_name);
        if (h != NULL) {
            k.ptr = h->value.ptr;
            k.len = h->value.len;
        }
        break;
    }
    case SL_HASH_ON_COOKIE: {
        sl_str_t v = sl_headers_cookie(&x->req_headers, conf->hash_on_name);
        k.ptr = v.ptr;
        k.len = v.len;
        break;
    }
    default:
        break;
    }
    return k;
}

static target_rt_t *pick_target(const sl_exchange_t *x, upstream_rt_t *up)
{
    if (up->balancer == NULL)
        return NULL;
    if (pick_rng == 0)
        pick_rng = sl_time_mono_ns() | 1;
    sl_balance_key_t key = {NULL, 0};
    if (up->conf->balance == SL_BALANCE_HASH)
        key = hash_key(x, up->conf);
    /* A half-open circuit admits only a few probes: another pick when this one is refused. */
    for (int tries = 0; tries < 3; tries++) {
        int i = sl_balancer_pick(up->balancer, &key, &pick_rng);
        if (i < 0)
            return NULL;
        if (!up->conf->circuit_breaker.enabled || sl_breaker_allow(up->breaker, (size_t)i, now_ms()))
            return &up->targets[i];
    }
    return NULL;
}

/* Slots of limits.max_connections are taken with a CAS loop so the cap holds across workers. */
static bool slot_take(upstream_rt_t *up, uint32_t max)
{
    unsigned n = atomic_load_explicit(&up->in_use, memory_order_relaxed);
    while (n < max)
        if (atomic_compare_exchange_weak_explicit(&up->in_use, &n, n + 1, memory_order_relaxed, memory_order_relaxed))
            return true;
    return false;
}

/* Waiters poll rather than being woken: a slot may free up on any worker, and a few ms of
 * polling only happens while the upstream is at its cap. */
#define SLOT_POLL_MS 2

static void proxy_begin(proxy_t *px);

static void on_slot_poll(sl_timeq_entry_t *e)
{
    proxy_t *px = SL_CONTAINER_OF(e, proxy_t, phase_timeout);
    if (slot_take(px->up, px->up->conf->limits.max_connections)) {
        px->waiting = false;
        atomic_fetch_sub_explicit(&px->up->pending, 1, memory_order_relaxed);
        px->slotted = true;
        proxy_begin(px);
        return;
    }
    if (now_ms() >= px->wait_deadline_ms) {
        proxy_fail(px, SL_CAUSE_UPSTREAM_OVERLOADED, "waited too long for a connection");
        return;
    }
    sl_timeq_add_at(timeqs_of(px), &px->phase_timeout, SLOT_POLL_MS, on_slot_poll);
}

/* Picks a target, writes the request head and connects (or takes a pooled connection). */
static void proxy_begin(proxy_t *px)
{
    sl_exchange_t *x = px->x;
    px->target = pick_target(x, px->up);
    if (px->target == NULL) {
        if (sl_breaker_any_open(px->up->breaker)) {
            /* RFC 9110 §10.2.3: when the breaker will let requests through again. */
            char *ra = sl_arena_alloc(&x->arena, 24);
            char *e = sl_put_u64(ra, sl_breaker_min_retry_after_s(px->up->breaker, now_ms()));
            sl_headers_add(&x->arena, &x->resp_headers, SL_STR_LIT("Retry-After"), (sl_str_t){ra, (size_t)(e - ra)});
            proxy_fail(px, SL_CAUSE_CIRCUIT_OPEN, "every target's circuit is open");
            return;
        }
        proxy_fail(px, SL_CAUSE_NO_HEALTHY_UPSTREAM, "no available target");
        return;
    }
    x->target_addr = px->target->conf->address;
    px->counted = true;
    atomic_fetch_add_explicit(&px->up->states[px->target - px->up->targets].inflight, 1, memory_order_relaxed);
    if ((px->h2 ? build_h2_request(px) : build_request_head(px)) != 0) {
        proxy_fail(px, SL_CAUSE_URI_TOO_LONG, "rewritten path too long");
        return;
    }
    proxy_connect(px);
}

static void cache_start(proxy_t *px, upstreams_rt_t *u);
static void proxy_go(proxy_t *px);

static void proxy_start(sl_exchange_t *x, const sl_route_conf_t *route)
{
    upstreams_rt_t *u = x->snap->upstreams;
    proxy_t *px = sl_arena_alloc(&x->arena, sizeof(*px));
    memset(px, 0, sizeof(*px));
    px->x = x;
    px->route = route;
    if (pick_rng == 0)
        pick_rng = sl_time_mono_ns() | 1;
    /* A split route sends weighted shares (or sticky keys) to several upstreams. */
    px->up_index = route->nsplit > 0 ? sl_split_pick(route, x, &pick_rng) : route->upstream_index;
    px->up = u->ups[px->up_index];
    px->tries = 1;
    /* The budget only limits retries other than after a connect failure: without such retries
     * configured, no request needs counting in the shared window. */
    if (px->up->conf->retries.attempts > 1 && (px->up->conf->retries.on & ~SL_RETRY_ON_CONNECT_FAILURE))
        budget_note_request(px->up, uv_now(&x->worker->loop));
    x->handler_data = px;
    x->on_abort = proxy_on_abort;
    x->upstream_name = px->up->conf->name;
    /* HTTP/2 has no Upgrade (RFC 9113 §8.6); extended CONNECT (RFC 8441) is not built. */
    px->h2 = px->up->conf->protocol == SL_UPSTREAM_H2;
    px->upgrade = !px->h2 && upgrade_wanted(px);
    if (route->cache.enabled && u->cache != NULL && x->route_index >= 0 && !px->upgrade) {
        cache_start(px, u);
        return;
    }
    proxy_go(px);
}

/* Goes upstream: the route timeout, a connection slot, then a target. */
static void proxy_go(proxy_t *px)
{
    const sl_route_conf_t *route = px->route;
    if (px->up->ntargets == 0) {
        proxy_fail(px, SL_CAUSE_NO_HEALTHY_UPSTREAM, "no targets");
        return;
    }
    uint64_t timeout = route->timeout_ms, g;
    /* A gRPC client's deadline: past it nobody waits for the answer (HTTP/2 requests only). */
    if (px->x->minor_version == 2 && grpc_timeout_ms(px->x, &g) && (timeout == 0 || g < timeout)) {
        timeout = g;
        px->grpc_deadline = true;
    }
    if (timeout)
        sl_timeq_add_at(timeqs_of(px), &px->route_timeout, timeout, on_route_timeout);
    uint32_t max_conn = px->up->conf->limits.max_connections;
    if (max_conn && !slot_take(px->up, max_conn)) {
        /* At the cap: wait for a slot if the queue has room, else say so at once rather than
         * letting requests pile up without bound. */
        unsigned waiting = atomic_fetch_add_explicit(&px->up->pending, 1, memory_order_relaxed);
        if (waiting >= px->up->conf->limits.max_pending) {
            atomic_fetch_sub_explicit(&px->up->pending, 1, memory_order_relaxed);
            proxy_fail(px, SL_CAUSE_UPSTREAM_OVERLOADED, "connection limit reached, queue full");
            return;
        }
        px->waiting = true;
        px->wait_deadline_ms = now_ms() + px->up->conf->connect_timeout_ms;
        sl_timeq_add_at(timeqs_of(px), &px->phase_timeout, SLOT_POLL_MS, on_slot_poll);
        return;
    }
    px->slotted = max_conn != 0;
    proxy_begin(px);
}
