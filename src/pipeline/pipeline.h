/*
 * The pipeline: what happens to an exchange between "head parsed" and "response finished",
 * whatever the codec. Phases (STYLE.md): route → request header edits → the route's answer
 * (respond, echo, or the proxy through the snapshot's handler) → response header edits (from the
 * codec's send_head) → log (always, also after errors and local replies).
 */
#ifndef SL_PIPELINE_PIPELINE_H
#define SL_PIPELINE_PIPELINE_H

#include "http/exchange.h"

/** Request side. The codec calls it once per exchange, with x->snap set and referenced. */
void sl_pipeline_process(sl_exchange_t *x);

/** Response side: applies the route's response header edits and the gateway's own headers.
 *  The codec calls it from send_head, once, before serialising. */
void sl_pipeline_response_headers(sl_exchange_t *x);

/** Log phase: the access log line. The codec calls it once per exchange as it ends. */
void sl_pipeline_log(sl_exchange_t *x);

/** Sets the access log destination: "stdout", "off" or a file path (opened O_APPEND).
 *  Main thread, before workers start or while they run (the switch is atomic). 0 or -errno. */
int sl_accesslog_open(sl_str_t path);
void sl_accesslog_close(void);

/** Writes a fresh 32-hex-digit request id into `out` (33 bytes with NUL). Any thread. */
void sl_request_id_generate(char out[33]);

/** True if `id` may be kept as a client-supplied X-Request-Id: 1–128 of [A-Za-z0-9._-]. */
bool sl_request_id_valid(sl_str_t id);

#endif
