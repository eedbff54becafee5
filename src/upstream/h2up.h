/*
 * HTTP/2 to upstreams (`protocol: h2`, docs/grpc.md): nghttp2 client sessions on upstream
 * connections, and the streams the proxy runs on them. The client side of src/http2's server
 * sessions; it lives here because it is driven by the upstream connection (connpool.h: socket,
 * TLS, read buffer, pool key) and by nothing else.
 *
 * One pool (address, TLS context, SNI) of a worker has at most a few h2 connections: a new
 * stream goes to the newest connection that is not closing and has room under the server's
 * SETTINGS_MAX_CONCURRENT_STREAMS, else a new connection is opened. Streams submitted while the
 * connection is still connecting (or handshaking) wait in nghttp2 and leave with the preface.
 * A connection that received GOAWAY, failed, or was asked to drain takes no new stream and
 * closes when its last stream ends; an idle one closes after the upstream's keep-alive idle
 * timeout.
 *
 * Flow control is backpressure: response DATA is copied into the stream's buffer (a worker
 * I/O buffer), whose size is the stream window we advertise, and WINDOW_UPDATE goes out only
 * for bytes the user consumed (sl_h2up_stream_consume) after writing them on. A request body
 * slice is held by reference until nghttp2 has packed it into frames (the peer's window
 * permitting), then `body_taken` asks for the next one.
 *
 * Output of all of a worker's h2 connections is written once per event-loop turn (an idle
 * handle), so the frames of many requests share a write.
 *
 * Ownership: sl_h2up_conn_t is malloc'd and owned by this file (listed in its pool while it
 * takes new streams), freed when it closes. sl_h2up_stream_t is the user's (the proxy's arena),
 * linked into its connection from submit until `closed` runs or the user ends it
 * (sl_h2up_stream_end); nghttp2 only ever holds a slot that forgets the stream when it ends.
 * Callbacks run on the worker thread from socket reads, writes, timers and the loop-turn flush,
 * never from inside a call the user made. A callback may submit or end streams (its own and
 * others).
 */
#ifndef SL_UPSTREAM_H2UP_H
#define SL_UPSTREAM_H2UP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/arena.h"
#include "http/header.h"
#include "net/buf.h"
#include "upstream/connpool.h"

typedef struct sl_h2up_conn sl_h2up_conn_t;
typedef struct sl_h2up_stream sl_h2up_stream_t;

/* How a stream ended, for the proxy's cause. */
enum sl_h2up_end {
    SL_H2UP_COMPLETE = 0,   /* END_STREAM received (and ours sent) */
    SL_H2UP_CONNECT_FAILED, /* the connection never came up: TCP, TLS or ALPN */
    SL_H2UP_REFUSED,        /* not processed by the server (REFUSED_STREAM, or above GOAWAY's last id) */
    SL_H2UP_RESET,          /* RST_STREAM from the server, or the connection died under it */
    SL_H2UP_PROTOCOL_ERROR, /* the server broke HTTP/2 (bad frames, bad headers) */
    SL_H2UP_TIMEOUT,        /* the connection's writes were stuck past the send timeout */
};

struct sl_h2up_stream_ops {
    /* The response head: `status` (>= 100; 1xx are informational and more heads follow) and its
     * fields (lower-case names, in `st->arena`). `end_stream`: nothing follows (no body, no
     * trailers). */
    void (*head)(sl_h2up_stream_t *st, int status, const sl_header_t *h, size_t n, bool end_stream);
    /* More response body is in st->body (from body->off to body->len). */
    void (*data)(sl_h2up_stream_t *st);
    /* Trailer fields (in `st->arena`); `closed` follows. */
    void (*trailers)(sl_h2up_stream_t *st, const sl_header_t *h, size_t n);
    /* The stream is over; st is unlinked and may be reused. `detail` is static text for logs. */
    void (*closed)(sl_h2up_stream_t *st, enum sl_h2up_end how, const char *detail);
    /* The request body slice given last was packed: give the next (or the end). */
    void (*body_taken)(sl_h2up_stream_t *st);
    /* The connection is up (TCP and TLS done) for a stream that waited for it: connect timing. */
    void (*connected)(sl_h2up_stream_t *st);
};

struct sl_h2up_stream {
    const struct sl_h2up_stream_ops *ops;
    void *user;
    sl_arena_t *arena;    /* where header fields are copied; the user's */
    sl_h2up_conn_t *conn; /* NULL when not linked */
    void *slot;           /* what nghttp2 knows it by (h2up.c) */
    sl_h2up_stream_t *prev, *next;
    int32_t id;
    /* response body received and not yet consumed; never larger than the stream window */
    sl_buf_t *body;
    /* request body: the slice being packed */
    const char *req_data;
    size_t req_len, req_off;
    bool req_eof;            /* the user said the body ended */
    bool req_last;           /* the slice being packed ends the body */
    bool req_deferred;       /* nghttp2 waits for a slice */
    bool req_taken;          /* the slice was packed: body_taken is due */
    bool has_body;           /* a data provider was submitted */
    bool head_seen;          /* a final (>= 200) head arrived */
    bool reused;             /* the connection was already up when the stream was submitted */
    bool resp_eos;           /* the server ended its side */
    bool end_check;          /* answered while our body was still going: reset unless the server did */
    bool remote_rst;         /* the server sent RST_STREAM */
    bool bad_head;           /* the response head passed the limits */
    bool bad_flow;           /* the server sent more than the window */
    const char *fail_detail; /* why submit failed (SL_ECLOSED), until the next call */
    sl_worker_t *w;
    size_t nhdr;
    sl_header_t *hdr; /* fields of the head being received */
    size_t hdr_cap;
    int status;
    size_t header_bytes;
};

/* A request head: pseudo-headers and fields, names lower-case. */
typedef struct sl_h2up_request {
    sl_str_t method, scheme, authority, path;
    const sl_header_t *fields;
    size_t nfields;
    bool has_body; /* a body follows (sl_h2up_stream_send_body), else END_STREAM on the head */
} sl_h2up_request_t;

/* Where a new connection goes and how it is brought up (from the upstream's config). */
typedef struct sl_h2up_target {
    sl_connpool_t *pool;
    const struct sockaddr *addr;
    socklen_t addrlen;
    const struct sl_tls_client_ctx *tls; /* NULL: h2c prior knowledge */
    const char *sni, *verify_name;
    uint64_t connect_timeout_ms, send_timeout_ms, idle_timeout_ms;
} sl_h2up_target_t;

/**
 * Submits a request on a connection of `t->pool` (opened when none has room). `st` must be
 * zeroed except ops, user, arena and w. Returns 0 (st linked; callbacks will follow), or a
 * negative code with nothing linked: SL_ECLOSED when a new connection could not even start
 * (st->fail_detail says why), SL_EINVALID for a head nghttp2 refuses.
 */
int sl_h2up_stream_submit(sl_worker_t *w, const sl_h2up_target_t *t, const sl_h2up_request_t *req,
                          sl_h2up_stream_t *st);

/** Gives the next request body slice (held by reference until body_taken), or the end of the
 *  body (len 0). `last`: this slice ends the body (END_STREAM goes on its last frame; a later
 *  end is then ignored). */
void sl_h2up_stream_send_body(sl_h2up_stream_t *st, const char *data, size_t len, bool last);

/** The user wrote `n` bytes of st->body on: they leave the buffer and the window reopens. */
void sl_h2up_stream_consume(sl_h2up_stream_t *st, size_t n);

/** The user is done with `st`, whatever happened: a stream still open is reset (RST_STREAM
 *  CANCEL) and unlinked, and no callback follows; its buffer goes back to the worker. Call it
 *  once, also after `closed`. */
void sl_h2up_stream_end(sl_h2up_stream_t *st);

/** Closes every h2 connection of the worker without streams; the others stop taking streams
 *  and close after their last (drain). */
void sl_h2up_close_idle(sl_worker_t *w);

/** Closes the worker's flush handle (after its loop ended; run the loop once more to finish). */
void sl_h2up_worker_dispose(sl_worker_t *w);

/* connpool.c hands a connection's reads and handshake result here when c->mux is set. */
void sl__h2up_on_read(sl_upconn_t *c, ssize_t nread);
void sl__h2up_on_handshake(sl_upconn_t *c, int status);

#endif
