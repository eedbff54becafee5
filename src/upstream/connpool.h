/*
 * Upstream connections and their per-worker keep-alive pools, keyed by target address so a
 * reload that keeps a target keeps its warm connections. A pool keeps up to max(max_idle, the
 * peak number of connections in use over the last two idle-timeout windows), so it grows with
 * concurrency instead of forcing reconnects at a fixed size (nginx with `keepalive 64` loses a
 * third of its throughput at 1,000 clients that way), and shrinks by the idle timeout.
 * Idle connections keep reading: a server-side close is seen at once and the connection leaves
 * the pool. Worker thread only.
 */
#ifndef SL_UPSTREAM_CONNPOOL_H
#define SL_UPSTREAM_CONNPOOL_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include <uv.h>

#include "net/worker.h"

typedef struct sl_connpool sl_connpool_t;
typedef struct sl_upconn sl_upconn_t;

struct sl_upconn {
    uv_tcp_t tcp;
    uv_connect_t connect_req;
    uv_write_t write_req;
    sl_timeq_entry_t idle_timeout;
    sl_connpool_t *pool;
    sl_upconn_t *prev, *next; /* idle list */
    sl_buf_t *rbuf;
    void *user;        /* the proxy exchange using it; NULL while idle */
    uint32_t requests; /* served on this connection */
    bool connected;
    bool closing;
    bool pinned; /* rbuf bytes are being written to the client: do not compact */
};

/** The pool for `addr` in worker `w`, created on first use. */
sl_connpool_t *sl_connpool_get(sl_worker_t *w, const struct sockaddr *addr, socklen_t addrlen);

/** An idle connection from the pool (owned by the caller until released), or NULL. */
sl_upconn_t *sl_connpool_acquire(sl_connpool_t *p);

/** A new unconnected connection for `p` (uv_tcp_t initialised); the caller connects it. */
sl_upconn_t *sl_connpool_create_conn(sl_connpool_t *p);

/** Returns a connection after a complete keep-alive response; it is kept or closed by policy. */
void sl_connpool_release(sl_upconn_t *c, uint32_t max_idle, uint64_t idle_timeout_ms);

/** Closes a connection (not in the idle list) and frees it once libuv is done. */
void sl_upconn_close(sl_upconn_t *c);

/** Closes every idle connection of the worker. */
void sl_connpool_close_idle(sl_worker_t *w);

struct sl_upstream_worker;
struct sl_upstream_worker *sl__connpool_worker_create(void);
void sl__connpool_worker_destroy(struct sl_upstream_worker *uw);
void sl__connpool_worker_set_tick(struct sl_upstream_worker *uw, void *tick, void (*tick_free)(void *));

#endif
