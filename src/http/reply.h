/*
 * Local replies: responses the gateway makes itself, on any codec. Error replies follow the
 * contract of DESIGN.md: `Content-Type: application/json`, `Sluice-Error: <cause>`, and the
 * body {"error","message","request_id"}. The message is a fixed sentence: never request data,
 * secrets or internal addresses.
 */
#ifndef SL_HTTP_REPLY_H
#define SL_HTTP_REPLY_H

#include "http/exchange.h"

/** Answers `x` with `status`, `content_type` and `body` (copied into the arena), then finishes. */
void sl_reply(sl_exchange_t *x, int status, sl_str_t content_type, sl_str_t body);

/** Answers with the error body for `cause`; `message` NULL uses the cause's default sentence.
 *  A gRPC request (sl_exchange_is_grpc) gets a trailers-only response instead: status 200,
 *  `grpc-status` from sl_cause_grpc_status, `grpc-message: <cause>: <sentence>`
 *  (percent-encoded), and the same Sluice-Error field (docs/grpc.md). */
void sl_reply_error(sl_exchange_t *x, enum sl_cause cause, const char *message);

/** True when the request is gRPC: its Content-Type is application/grpc or application/grpc+X
 *  or ;params (not gRPC-Web, whose errors are ordinary responses). */
bool sl_exchange_is_grpc(const sl_exchange_t *x);

/** Appends `s` to `out` as a JSON string body (without quotes), escaping as RFC 8259 says.
 *  `out` must have room for 6 * s.len bytes; returns the bytes written. */
size_t sl_json_escape(char *out, sl_str_t s);

#endif
