/*
 * The HTTP/1.1 server side: a downstream connection's state machine over libuv. It reads into a
 * pooled buffer, parses heads with the strict parser, turns each request into an exchange for
 * the pipeline, implements the exchange's downstream ops (response framing, body streaming with
 * backpressure, 100-continue), answers pipelined requests in order, and enforces the client
 * timeouts and limits of the current snapshot. After a 101 (tunnel_start) the connection carries
 * opaque bytes both ways for the handler, through the TLS engine on TLS listeners, until the
 * exchange ends and the connection closes. All functions run on the owning worker's thread.
 *
 * Memory (docs/internals/memory.md): an idle keep-alive connection holds only sl_h1_conn_t
 * (socket + timeout entry + a few pointers); the read buffer and the exchange (with its arena)
 * are taken from per-worker free lists when a request starts and returned when it ends.
 */
#ifndef SL_HTTP1_SERVER_H
#define SL_HTTP1_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "net/worker.h"

typedef struct sl_h1_worker sl_h1_worker_t;

/** Creates the per-worker state (w->h1). Worker or main thread before the loop runs. */
void sl_h1_worker_init(sl_worker_t *w);
/** Frees w->h1 once every connection is closed. */
void sl_h1_worker_dispose(sl_worker_t *w);

/** The worker's on_connection handler: accepts and starts serving one connection. */
void sl_h1_server_accept(sl_listener_t *l);

/** Begins draining: idle connections close now; busy ones close after their current response.
 *  `on_empty` runs (once) when the worker has no connection left. */
void sl_h1_server_drain(sl_worker_t *w, void (*on_empty)(sl_worker_t *w));

/** Closes every connection at once (drain deadline); in-flight exchanges are aborted. */
void sl_h1_server_close_all(sl_worker_t *w);

/** Open downstream connections of this worker. */
size_t sl_h1_server_connections(const sl_worker_t *w);

/** Connections open across all workers (for limits.max_connections). Any thread. */
uint64_t sl_h1_server_total_connections(void);

#endif
