/*
 * The exchange: one request and its response through the gateway, protocol-neutral. The
 * downstream codec (HTTP/1 today, HTTP/2 later) fills the request part and implements
 * sl_downstream_ops_t; the pipeline, filters and the proxy only ever see this object.
 *
 * Memory: everything request-lifetime lives in `arena`, reset by the codec when the exchange
 * ends (after the log phase). Request header slices point into the codec's read buffer, which
 * the codec keeps until the exchange ends. Thread: the owning worker's only.
 */
#ifndef SL_HTTP_EXCHANGE_H
#define SL_HTTP_EXCHANGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/arena.h"
#include "common/str.h"
#include "http/cause.h"
#include "http/header.h"
#include "http/method.h"

typedef struct sl_exchange sl_exchange_t;
struct sl_worker;
struct sl_snapshot;
struct sl_tls_conn;

/*
 * W3C Trace Context (https://www.w3.org/TR/trace-context/) of one exchange: the trace it
 * belongs to and the span sluice adds to it. Filled by sl_trace_begin (pipeline.h) only when the
 * request is proxied; `started` false means no trace (local answers log empty ids). Fixed-size
 * and inline, so tracing costs no allocation.
 */
typedef struct sl_trace {
    char trace_id[32]; /* lowercase hex: the caller's, or a new one when it sent none valid */
    char span_id[16];  /* ours: the parent-id sent upstream, and what the access log names */
    char flags[2];     /* trace-flags: the caller's, or "01" for a trace we start */
    bool started;
} sl_trace_t;

typedef struct sl_headers {
    sl_header_t *items;
    size_t len, cap;
} sl_headers_t;

enum sl_body_kind {
    SL_BODY_NONE = 0,
    SL_BODY_LENGTH, /* content_length bytes */
    SL_BODY_STREAM, /* length unknown until the end (chunked on HTTP/1.1) */
};

/*
 * Request body delivery: `status` 0 with data (len > 0) is one slice of body; status 0 with
 * len == 0 is the end of the body; status < 0 is an error (x->cause says which: client_timeout,
 * request_too_large, bad_request, or SL_ECLOSED when the client went away). After a data slice
 * nothing more is delivered until the consumer calls body_resume: that is the backpressure, and
 * it also says the slice's bytes may be reused. A status < 0 (SL_ECLOSED) may still come when the
 * client goes away until the exchange ends, also after a handler cleared on_abort to answer
 * locally: a body callback must tolerate it.
 */
typedef void (*sl_body_cb)(sl_exchange_t *x, int status, const char *data, size_t len);
typedef void (*sl_write_cb)(sl_exchange_t *x, int status);

typedef struct sl_downstream_ops {
    /* Sends the response head from x->status / x->resp_headers with framing from
     * x->resp_body_kind / x->resp_content_length. The codec may hold it to coalesce with the
     * first body write. Returns 0 or an error (the connection is then being closed). */
    int (*send_head)(sl_exchange_t *x);
    /* Sends body bytes. Returns 1 when every byte was written at once (cb will not run), 0 when
     * `cb` will run once they are written (until then the bytes must stay valid), or < 0 on
     * error (cb will not run; the caller then calls abort). One send_body at a time. */
    int (*send_body)(sl_exchange_t *x, const sl_str_t *parts, size_t nparts, sl_write_cb cb);
    /* The response is complete; the codec runs the log phase and recycles the exchange. */
    void (*finish)(sl_exchange_t *x);
    /* The response cannot be completed (e.g. upstream died mid-body): the codec closes the
     * connection without a valid end of message, runs the log phase and recycles. */
    void (*abort)(sl_exchange_t *x);
    /* Starts request body delivery to `cb` (sends 100 Continue first when asked for). */
    void (*body_start)(sl_exchange_t *x, sl_body_cb cb);
    void (*body_resume)(sl_exchange_t *x);
    /* Sends an interim 1xx response (status, headers) before the final one. */
    int (*send_informational)(sl_exchange_t *x, int status, const sl_header_t *h, size_t n);
    /* Protocol upgrade (101, docs/websocket.md); NULL when the codec cannot tunnel. tunnel_start
     * turns the connection into a byte tunnel: it prepares the 101 head from x->resp_headers
     * (sent with the first send_body, which from then on writes bytes unframed), and makes
     * body_start/body_resume deliver the client's tunnel bytes (status 0 with len 0: the client
     * half-closed; < 0: it failed). No codec timeout runs in a tunnel: the handler keeps the
     * idle timeout. The connection closes when the exchange ends. Returns 0 or an error. */
    int (*tunnel_start)(sl_exchange_t *x);
    /* Half-closes the client side (no more bytes to it); no send_body may be pending. */
    int (*tunnel_shutdown)(sl_exchange_t *x);
} sl_downstream_ops_t;

struct sl_exchange {
    sl_arena_t arena;
    struct sl_worker *worker;
    const sl_downstream_ops_t *down;
    void *down_ctx;
    struct sl_snapshot *snap; /* the config this exchange started with; held until it ends */

    /* ---- request (filled by the codec) ---- */
    uint64_t start_ns;
    enum sl_method method;
    sl_str_t method_token;
    sl_str_t target;    /* as sent */
    sl_str_t path;      /* without the query */
    sl_str_t query;     /* without '?' */
    sl_str_t host;      /* without the port, as sent (any case) */
    sl_str_t authority; /* the Host value with port */
    int minor_version;  /* HTTP/1.x; 2 for HTTP/2 */
    sl_headers_t req_headers;
    enum sl_body_kind req_body_kind;
    uint64_t req_content_length;
    bool keep_alive;
    bool expect_continue;
    char client_ip[48];
    uint16_t client_port;
    bool client_tls; /* arrived over TLS: the scheme sent upstream in X-Forwarded-Proto / Forwarded */
    /* The client's TLS connection (its verified certificate, for mTLS auth); NULL over plain
     * TCP. Owned by the codec's connection, which outlives the exchange. */
    struct sl_tls_conn *tls_conn;
    sl_str_t request_id;

    /* ---- routing ---- */
    long route_index; /* -1 before routing or when none matched */
    sl_str_t route_name;

    /* ---- response (filled by whoever answers) ---- */
    int status;
    sl_headers_t resp_headers;
    enum sl_body_kind resp_body_kind;
    uint64_t resp_content_length;
    /* Trailer fields, sent by finish after the body (gRPC's grpc-status): HTTP/2 a trailing
     * HEADERS frame; HTTP/1.1 the last chunk of a chunked response (dropped when the body has a
     * Content-Length or none). Set before finish; slices live in the arena. */
    sl_headers_t resp_trailers;
    bool head_sent;
    enum sl_cause cause;
    const char *cause_detail; /* static text for the log, e.g. "connection refused" */

    /* ---- for the log phase ---- */
    sl_str_t upstream_name;
    sl_str_t target_addr;
    uint64_t bytes_in, bytes_out;
    int64_t upstream_connect_ns;    /* -1 when no connect was made (pooled or not proxied) */
    int64_t upstream_first_byte_ns; /* -1 when not proxied */
    sl_trace_t trace;

    /* ---- the route's filter chain (pipeline/filter.h) ---- */
    const struct sl_chain *chain; /* NULL until routed */
    uint16_t chain_pos;           /* request-side filters entered so far */
    bool chain_paused;            /* a filter returned PAUSE and has not resumed yet */
    bool preflight;               /* a CORS preflight routed by its Access-Control-Request-Method */
    bool counted_inflight;        /* counted in its worker's in-flight figure (load shedding) */
    sl_str_t consumer;            /* identified consumer id; empty when none (open or anonymous) */
    sl_str_t consumer_groups;     /* its groups, comma-separated */
    uint8_t client_family;        /* AF_INET / AF_INET6 of the peer (0 unknown), for ip rules */
    uint8_t client_addr[16];
    void *rate_limit; /* the rate_limit filter's decisions (arena), for its response headers */

    void *handler_data; /* the terminal handler's per-exchange state (proxy) */
    /* Set by a handler with work in flight: the codec calls it when the client connection dies
     * before the response finished. The handler releases what it holds, synchronously, and
     * never touches `x` again; the codec then logs and recycles the exchange. */
    void (*on_abort)(sl_exchange_t *x);
};

/** Appends a header (slices are not copied: keep them alive for the exchange). */
void sl_headers_add(sl_arena_t *a, sl_headers_t *h, sl_str_t name, sl_str_t value);
/** Removes every field named `name` (case-insensitive); returns how many. */
size_t sl_headers_remove(sl_headers_t *h, sl_str_t name);
/** The first field named `name`, or NULL. */
const sl_header_t *sl_headers_find(const sl_headers_t *h, sl_str_t name);

/** The host of a Host / :authority value: without the port, and without the brackets of an
 *  IPv6 literal ("[::1]:8080" -> "::1"). A slice of `authority`. */
sl_str_t sl_host_without_port(sl_str_t authority);

/** The value of cookie `name` from the Cookie fields (RFC 6265 §4.2.1: `a=1; b=2`, possibly
 *  over several fields; the first match wins), or an empty slice. Points into `h`'s values. */
sl_str_t sl_headers_cookie(const sl_headers_t *h, sl_str_t name);

#endif
