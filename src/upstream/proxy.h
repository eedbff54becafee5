/*
 * The proxy: the terminal handler of routes with an upstream. It picks a target (balancer),
 * takes a pooled keep-alive connection or opens one (connpool), forwards the request head with
 * hop-by-hop headers removed and X-Forwarded-* / Forwarded / X-Request-Id set, streams the
 * request body up and the response body down with backpressure both ways, and maps every
 * failure to its cause (upstream_connect_failed, upstream_reset, upstream_bad_response,
 * upstream_timeout). An upgrade request (WebSocket; never h2c) keeps Upgrade/Connection, and
 * after the upstream's 101 the two connections become a byte tunnel with backpressure, half-close
 * and timeouts.tunnel_idle (docs/websocket.md); that upstream connection is never pooled again.
 * An upstream with `tls` is spoken to over verified TLS (docs/tls.md "Upstream TLS"); a failed
 * handshake is upstream_connect_failed with the reason as the log's detail.
 * All of it runs on the exchange's worker thread.
 */
#ifndef SL_UPSTREAM_PROXY_H
#define SL_UPSTREAM_PROXY_H

#include "net/worker.h"
#include "pipeline/snapshot.h"

/**
 * Gives `snap` the runtime state of its upstreams (targets, balancer, ejections, circuits,
 * retry budget, limits slots) and installs the proxy handler in it.
 *
 * Each upstream's state is an object of its own, refcounted and shared by consecutive
 * snapshots: an upstream of `prev` (the snapshot being replaced, or NULL) with the same name
 * and config fingerprint (sl_upstream_conf_t.fingerprint) is reused as it is, with everything
 * it learnt; any other starts fresh. A reused state keeps pointing at the config generation it
 * was built from (it holds a reference to it), which is equal in content. It lives until the
 * last snapshot listing it (and its last pending DNS answer) is gone; the last release may run
 * on any thread. Workers of old and new snapshots use it at once: every field they write is
 * atomic. Reused host-name targets keep their resolved address and their refresh schedule
 * (a reload does not re-resolve them); new ones are resolved asynchronously on `main_loop`
 * (the main thread's, NULL for none), and until a name resolves, connects to it fail with
 * upstream_connect_failed. Main thread only; `prev` must stay referenced during the call.
 */
void sl_proxy_attach(sl_snapshot_t *snap, uv_loop_t *main_loop, const sl_snapshot_t *prev);

/** The shared runtime state of upstream `upstream_index`'s targets in `snap`, at the same
 *  indices as its config targets (read by balancers; health checks, ejection and breakers
 *  write their flag bits there). The same array for every snapshot sharing the upstream's
 *  state (see sl_proxy_attach); lives at least as long as `snap`. Any thread. */
struct sl_target_state *sl_proxy_target_states(const sl_snapshot_t *snap, size_t upstream_index);

/** The circuit breakers of upstream `upstream_index` in `snap` (read sl_breaker_state from any
 *  thread), or NULL. Lives as long as `snap`. */
struct sl_breaker *sl_proxy_breaker(const sl_snapshot_t *snap, size_t upstream_index);

/** The response cache of `snap` (shared with the snapshots around it; see docs/cache.md), or
 *  NULL when no route has `cache`. Lives as long as `snap`. Any thread. */
struct sl_cache *sl_proxy_cache(const sl_snapshot_t *snap);

/** Re-resolves the host-name targets of `snap` whose last resolution is dns_refresh old, on
 *  `loop`. Main thread, periodically (the server calls it every second for the current
 *  snapshot only: a state shared with older snapshots is refreshed once, through it); a name
 *  that stops resolving marks its target SL_TARGET_UNRESOLVED. */
void sl_proxy_refresh_dns(sl_snapshot_t *snap, uv_loop_t *loop);

/** Per-worker pools (w->up). Worker thread, before serving. */
void sl_upstream_worker_init(sl_worker_t *w);
/** Closes every pooled connection (drain); the worker's loop finishes the closes. */
void sl_upstream_worker_close_idle(sl_worker_t *w);
/** Frees w->up after the loop ended. */
void sl_upstream_worker_dispose(sl_worker_t *w);

#endif
