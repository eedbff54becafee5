/*
 * The vocabulary of an outgoing HTTP request made by the gateway itself (a JWKS document, a
 * token introspection): request, response, callback and the start/cancel function types.
 * Protocol-neutral on purpose: filters may not depend on a codec (STYLE.md "Shape"), so a filter
 * that fetches is handed these two function pointers by the server, which passes the HTTP/1.1
 * client's (http1/client.h: sl_h1_fetch, sl_h1_fetch_cancel). Tests can pass fakes.
 *
 * The contract every implementation keeps (libuv's):
 * - start runs on the thread of `loop` and never calls `cb` itself: if it fails synchronously it
 *   returns the error, `cb` is never called, and nothing needs cancelling;
 * - otherwise `cb` is called exactly once, from a later loop iteration, unless the fetch is
 *   cancelled first; after cancel, `cb` is never called;
 * - the handle is valid from a successful start until `cb` returns or cancel is called,
 *   whichever is first; cancelling from inside `cb`, or twice, is a bug.
 */
#ifndef SL_HTTP_FETCH_H
#define SL_HTTP_FETCH_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "common/str.h"
#include "http/header.h"

/* Fetch errors: [-10399, -10300]. Names through sl_strerror once the implementation registered
 * them (sl_h1_fetch_register_errors). */
enum sl_fetch_error {
    SL_EFETCH_BAD_URL = -10399, /* not http(s)://host[:port][/path] */
    SL_EFETCH_DNS,              /* the host name did not resolve */
    SL_EFETCH_REFUSED,          /* connection refused */
    SL_EFETCH_CONNECT,          /* connect failed otherwise (unreachable, reset, ...) */
    SL_EFETCH_TIMEOUT,          /* the total deadline passed */
    SL_EFETCH_IO,               /* sending or receiving failed (reset by peer, ...) */
    SL_EFETCH_BAD_RESPONSE,     /* not a strict HTTP/1.1 response, or cut short */
    SL_EFETCH_TOO_LARGE,        /* body over max_body (never truncated), or head over 16 KiB */
    SL_EFETCH_TLS,              /* https: the handshake failed (untrusted or misnamed certificate, ...) */
    SL_EFETCH__LAST,
};

typedef struct sl_fetch_request {
    sl_str_t method;            /* empty: GET */
    const char *url;            /* http://host[:port][/path[?query]], NUL-terminated */
    const sl_header_t *headers; /* extra fields; Host, Content-Length and Connection are the
                                   client's own and may not be given */
    size_t nheaders;
    sl_str_t body;       /* sent with Content-Length when body.ptr != NULL (may be empty) */
    uint64_t timeout_ms; /* connect + send + whole response; must be > 0 */
    size_t max_body;     /* a larger response body fails with SL_EFETCH_TOO_LARGE */
} sl_fetch_request_t;

/* Everything points into the fetch's own memory and is valid only during the callback. */
typedef struct sl_fetch_response {
    int status; /* 200..999 (interim 1xx heads are skipped) */
    const sl_header_t *headers;
    size_t nheaders;
    sl_str_t body; /* decoded (no chunk framing); body.ptr[body.len] == '\0' */
} sl_fetch_response_t;

typedef struct sl_fetch sl_fetch_t;

/** `status_or_error` is the HTTP status (>= 200, any status: a 404 is a response, not an
 *  error) with `res` set, or a negative code (enum sl_fetch_error, rarely a libuv code) with
 *  `res` NULL. */
typedef void (*sl_fetch_cb)(void *arg, int status_or_error, const sl_fetch_response_t *res);

/** Starts one request on `loop`; `req` and what it points to are copied before returning. */
typedef int (*sl_fetch_start_fn)(uv_loop_t *loop, const sl_fetch_request_t *req, sl_fetch_cb cb, void *arg,
                                 sl_fetch_t **out);

/** Abandons a fetch: `cb` will not be called; memory is freed once libuv closed the handles. */
typedef void (*sl_fetch_cancel_fn)(sl_fetch_t *f);

/* What a module that fetches is given (by value is fine: two pointers). */
typedef struct sl_fetcher {
    sl_fetch_start_fn start;
    sl_fetch_cancel_fn cancel;
} sl_fetcher_t;

#endif
