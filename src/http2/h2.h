/*
 * HTTP/2 downstream (docs/http2.md): an nghttp2 server session on a connection the HTTP/1
 * server accepted and owns (the socket, TLS, its place in the drain list). The connection hands
 * every byte it reads (decrypted) to the session and gives it a way to write; the session maps
 * each stream onto an exchange of the same pipeline, filters and proxy as HTTP/1.1 and
 * implements the exchange's downstream ops for it.
 *
 * Flow control is wired to backpressure both ways: a request body is taken into a per-stream
 * buffer no larger than the stream's window, and WINDOW_UPDATE goes out only when the handler
 * has consumed the bytes (body_resume); a response body slice is released to the handler
 * (its write callback) only when the client's window let it into a write that completed.
 *
 * Limits and defences: SETTINGS_MAX_CONCURRENT_STREAMS from limits.max_concurrent_streams, the
 * header list bounded by limits.max_header_bytes (431 past it), nghttp2's CONTINUATION and
 * RST_STREAM rate limits (CVE-2024-28182, CVE-2023-44487) plus our own: a stream reset by the
 * client aborts its exchange at once (the upstream work is released), and a connection whose
 * client resets more streams than it completes is closed with GOAWAY (ENHANCE_YOUR_CALM).
 *
 * Memory: sl_h2_session_t is owned by the connection (create when h2 is chosen, destroy after
 * the socket's close callback). Streams and their exchanges (with arenas), request body
 * buffers and write buffers come from per-worker free lists (sl_h2_worker_t). Worker thread only.
 */
#ifndef SL_HTTP2_H2_H
#define SL_HTTP2_H2_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "net/buf.h"
#include "net/worker.h"

typedef struct sl_h2_session sl_h2_session_t;
typedef struct sl_h2_worker sl_h2_worker_t;
struct sl_tls_conn;

/* The connection a session lives on, as the session sees it. */
typedef struct sl_h2_transport {
    /* sl_stream_write's contract: 1 written now, 0 queued (cb runs once written), < 0 error. */
    int (*write)(void *conn, uv_write_t *req, uv_buf_t *iov, unsigned n, uv_write_cb cb);
    /* Closes the connection now. The connection then calls sl_h2_session_closed at once and
     * sl_h2_session_destroy after its close callback. */
    void (*close)(void *conn);
    /* The session has streams open (true) or none (false): the connection gauges. */
    void (*active)(void *conn, bool active);
} sl_h2_transport_t;

/* Who the client is, copied into each stream's exchange. */
typedef struct sl_h2_peer {
    char client_ip[48];
    uint16_t client_port;
    uint8_t client_family;
    uint8_t client_addr[16];
    struct sl_tls_conn *tls_conn; /* NULL over plain TCP (h2c) */
} sl_h2_peer_t;

/** Per-worker state (free lists). Worker thread; destroy after every session is destroyed. */
sl_h2_worker_t *sl_h2_worker_create(sl_worker_t *w);
void sl_h2_worker_destroy(sl_h2_worker_t *hw);

/** The client connection preface (RFC 9113 §3.4), for h2c prior knowledge: 1 when `p` starts
 *  with it, 0 when `p` is a shorter prefix of it (wait for more), -1 when it is not HTTP/2. */
int sl_h2_preface_match(const char *p, size_t n);

/**
 * Starts a server session on `conn`: queues our SETTINGS. `w` is the worker (its current
 * snapshot gives the limits). Returns 0 and sets `*out`, or SL_ENOMEM.
 */
int sl_h2_session_create(sl_h2_worker_t *hw, const sl_h2_transport_t *t, void *conn, const sl_h2_peer_t *peer,
                         sl_h2_session_t **out);

/**
 * Takes bytes read from the client (all of them: a stream's body is buffered within its window).
 * Returns 0, or a negative code after a protocol error: GOAWAY is queued and the session closes
 * the connection once it is written.
 */
int sl_h2_session_recv(sl_h2_session_t *s, const char *p, size_t n);

/** The client sent its last byte (EOF): open streams are aborted and the connection closes. */
void sl_h2_session_peer_eof(sl_h2_session_t *s);

/** Graceful drain: GOAWAY with the last stream we took; open streams finish, new ones are
 *  refused; the connection closes when none is left. */
void sl_h2_session_drain(sl_h2_session_t *s);

/** The connection is closing: every open exchange is aborted (its handler released) and
 *  logged now; nothing more is written. */
void sl_h2_session_closed(sl_h2_session_t *s);

/** Frees the session after the connection's close callback (queued writes cancelled). */
void sl_h2_session_destroy(sl_h2_session_t *s);

struct nghttp2_session;

/**
 * Everything nghttp2 session `ng` wants to send (nghttp2_session_mem_send until it has nothing
 * more), gathered into `b` (rewound first) as `*n` buffers in `iov`: 0 (nothing to send), 1 (all
 * in `b`), or 2 when a frame larger than what was left in `b` follows it: that second buffer is
 * nghttp2's own, valid until the next mem_send, so the next gather must wait for the write.
 * Returns 0 or nghttp2's negative error. Shared by the server sessions and the upstream client
 * (src/upstream/h2up.c).
 */
int sl_h2_output_gather(struct nghttp2_session *ng, sl_buf_t *b, uv_buf_t iov[2], unsigned *n);

#endif
