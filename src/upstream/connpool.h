/*
 * Upstream connections and their per-worker keep-alive pools, keyed by target address so a
 * reload that keeps a target keeps its warm connections. A pool keeps up to max(max_idle, the
 * peak number of connections in use over the last two idle-timeout windows), so it grows with
 * concurrency instead of forcing reconnects at a fixed size (nginx with `keepalive 64` loses a
 * third of its throughput at 1,000 clients that way), and shrinks by the idle timeout.
 * Idle connections keep reading: a server-side close is seen at once and the connection leaves
 * the pool. Worker thread only.
 *
 * TLS upstreams (docs/tls.md "Upstream TLS"): a pool is keyed by address, the client context's
 * id and the server name, so a TLS and a plain upstream to one address, or two names, never
 * share a connection. A TLS connection runs the memory-BIO engine (tls/tls.h) between the
 * socket and `rbuf`: ciphertext lands in a per-thread buffer and is fed to TLS at once, then
 * decrypted into `rbuf` as far as it fits; what does not fit stays in TLS and reading stops, as
 * a full `rbuf` stops a plain connection (backpressure unchanged). Each pool keeps the newest
 * session the server issued, offered by the pool's next new connection (resumption).
 */
#ifndef SL_UPSTREAM_CONNPOOL_H
#define SL_UPSTREAM_CONNPOOL_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include <uv.h>

#include "config/config.h"
#include "net/worker.h"
#include "tls/tls.h"

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
    sl_tls_conn_t *tls; /* NULL: plain TCP; freed after the handle's close callback */
    void *user;         /* the proxy exchange using it; NULL while idle */
    uint32_t requests;  /* served on this connection */
    bool connected;
    bool closing;
    bool pinned;    /* rbuf bytes are being written to the client: do not compact */
    bool tls_ready; /* the handshake is done */
    bool tls_eof;   /* the server sent close_notify */
    bool mux;       /* an HTTP/2 connection (h2up.h): `user` is its session, reads go there */
};

/**
 * The pool for `addr` in worker `w`, created on first use. `tls_id` is 0 for plain TCP, else
 * sl_tls_client_ctx_id of the upstream's context; `sni` the server name sent (NULL: none;
 * copied into a new pool).
 */
sl_connpool_t *sl_connpool_get(sl_worker_t *w, const struct sockaddr *addr, socklen_t addrlen, uint64_t tls_id,
                               const char *sni);

/** An idle connection from the pool (owned by the caller until released), or NULL. */
sl_upconn_t *sl_connpool_acquire(sl_connpool_t *p);

/** A new unconnected connection for `p` (uv_tcp_t initialised); the caller connects it. */
sl_upconn_t *sl_connpool_create_conn(sl_connpool_t *p);

/** Returns a connection after a complete keep-alive response; it is kept or closed by policy. */
void sl_connpool_release(sl_upconn_t *c, uint32_t max_idle, uint64_t idle_timeout_ms);

/** Closes a connection (not in the idle list) and frees it once libuv is done. */
void sl_upconn_close(sl_upconn_t *c);

/**
 * The server name a TLS connection to target `t` of `u` sends (`*sni`, NULL for none: `tls.sni`,
 * else the target's host when it is a name) and the name its certificate is checked against
 * (`*name`: the SNI, else the target's IP literal). Both point into the config. Any thread.
 */
void sl_upconn_tls_names(const sl_upstream_conf_t *u, const sl_target_conf_t *t, const char **sni, const char **name);

/**
 * Makes connected `c` a TLS connection with `ctx` (offering the pool's session) and sends the
 * ClientHello; reads must be started. When the handshake ends, the user's
 * sl__proxy_on_upstream_handshake(c, status) runs: 0, or a negative code with the reason in
 * sl_tls_conn_error(c->tls). Returns 0, or a negative code when the hello cannot be written
 * (then no callback).
 */
int sl_upconn_tls_start(sl_upconn_t *c, const sl_tls_client_ctx_t *ctx, const char *sni, const char *name);

/** Writes to the upstream, through TLS if `c` has it; sl_stream_write's contract, with
 *  `c->write_req` as the request. */
int sl_upconn_write(sl_upconn_t *c, uv_buf_t *iov, unsigned n, uv_write_cb cb);

/**
 * TLS: decrypts what TLS already holds into `rbuf` (compacting it unless pinned), as far as it
 * fits: the bytes added (0 when TLS holds none or rbuf is full), SL_ECLOSED after the server's
 * close_notify, or another negative code for a fatal TLS error. Plain connections: 0. Call it
 * where the socket would not announce them: after a stop for a full rbuf.
 */
ssize_t sl_upconn_fill(sl_upconn_t *c);

/** Half-closes the upstream direction (a tunnel's client EOF): close_notify on TLS, then a
 *  TCP shutdown. 0 or a negative code. */
int sl_upconn_shutdown(sl_upconn_t *c);

/** Closes every idle connection of the worker. */
void sl_connpool_close_idle(sl_worker_t *w);

/* For h2up.c: the pool's list of HTTP/2 connections (owned by h2up.c), the worker's 64 KiB
 * buffers for h2 streams and output, and the worker's pools in creation order. */
void **sl__connpool_mux(sl_connpool_t *p);
sl_buf_pool_t *sl__connpool_h2_bufs(sl_worker_t *w);
void **sl__connpool_h2up_state(sl_worker_t *w);
size_t sl__connpool_count(sl_worker_t *w);
sl_connpool_t *sl__connpool_at(sl_worker_t *w, size_t i);

struct sl_upstream_worker;
struct sl_upstream_worker *sl__connpool_worker_create(void);
void sl__connpool_worker_destroy(struct sl_upstream_worker *uw);
void sl__connpool_worker_set_tick(struct sl_upstream_worker *uw, void *tick, void (*tick_free)(void *));

#endif
