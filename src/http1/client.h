/*
 * A small asynchronous HTTP/1.1 client for the gateway's own requests (JWKS documents, token
 * introspection): one request per call, one connection per request (`Connection: close`), on
 * whichever libuv loop the caller runs (the main thread's, a worker's). Not the proxy's
 * upstream path (upstream/proxy.c streams and pools); this one buffers a bounded body.
 *
 * What it does: parses `http://host[:port][/path[?query]]` or `https://...` (TLS 1.2+, the
 * server's certificate verified against the system trust store or SSL_CERT_FILE, and against
 * the host name; a failed verification, or a server that hangs up or answers without TLS
 * before the handshake ends, is SL_EFETCH_TLS), resolves the host with uv_getaddrinfo unless
 * it is an IP literal (and tries each resolved address until one connects), sends method + path + Host +
 * the caller's headers + optional body with Content-Length, and reads the response with the
 * strict parser (sl_h1_parse_response; interim 1xx heads skipped) and its body by
 * Content-Length, chunked coding (sl_h1_chunked_decode) or until close. One uv_timer bounds the
 * whole exchange (resolve + connect + send + response).
 *
 * Contract (http/fetch.h): a start that fails returns the error and never calls `cb`; otherwise
 * `cb` is called exactly once from a later loop iteration, or never if sl_h1_fetch_cancel came
 * first (cancel does not call `cb`: the caller that cancels has gone away). Errors are
 * enum sl_fetch_error: DNS, refused, connect, timeout, I/O, bad response, too large, TLS.
 *
 * Memory: one heap object per fetch holding the handles, the request bytes and the response;
 * it is freed after the callback has returned (or after cancel) once libuv has closed every
 * handle, so the response passed to `cb` is valid during `cb` only.
 * Threads: every call on the thread that runs `loop`.
 */
#ifndef SL_HTTP1_CLIENT_H
#define SL_HTTP1_CLIENT_H

#include <uv.h>

#include "http/fetch.h"

typedef sl_fetch_t sl_h1_fetch_t;
typedef sl_fetch_request_t sl_h1_fetch_request_t;
typedef sl_fetch_response_t sl_h1_fetch_response_t;

#define SL_H1_FETCH_MAX_HEAD    16384 /* response head cap: status line + headers */
#define SL_H1_FETCH_MAX_HEADERS 64

/**
 * Starts `req` on `loop` (sl_fetch_start_fn). Returns 0 and sets `*out` (the handle for
 * sl_h1_fetch_cancel; `out` may be NULL when the caller never cancels), or SL_EFETCH_BAD_URL,
 * or SL_EINVALID (timeout 0, a method that is not a token, a header with CR/LF/CTL or one of the
 * client's own: Host, Content-Length, Transfer-Encoding, Connection), or a libuv error; then
 * `cb` is never called. All of `req` is copied.
 */
int sl_h1_fetch(uv_loop_t *loop, const sl_h1_fetch_request_t *req, sl_fetch_cb cb, void *arg, sl_h1_fetch_t **out);

/** Cancels a fetch that has not called back (sl_fetch_cancel_fn): whatever phase it is in
 *  (resolving, connecting, reading), `cb` is not called and everything is freed after libuv
 *  has closed its handles. NULL is ignored. */
void sl_h1_fetch_cancel(sl_h1_fetch_t *f);

/** The pair to hand to modules that may not depend on http1 (e.g. filters/jwks_store.h). */
extern const sl_fetcher_t sl_h1_fetcher;

/** Registers the names of enum sl_fetch_error with sl_strerror; idempotent; call at start,
 *  before threads (like sl_h1_register_errors). */
void sl_h1_fetch_register_errors(void);

#endif
