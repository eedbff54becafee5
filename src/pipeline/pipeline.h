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
/** Lines lost to failed or short writes since start (sluice_access_log_dropped_total). Any thread. */
uint64_t sl_accesslog_dropped_total(void);

/** The event loop of the exchange's worker, for filters that start asynchronous work (thread
 *  pool jobs, timers, fetches) on it. The exchange's worker thread. */
struct uv_loop_s *sl_exchange_loop(const sl_exchange_t *x);

/** Writes a fresh 32-hex-digit request id into `out` (33 bytes with NUL). Any thread. */
void sl_request_id_generate(char out[33]);

/** True if `id` may be kept as a client-supplied X-Request-Id: 1–128 of [A-Za-z0-9._-]. */
bool sl_request_id_valid(sl_str_t id);

/**
 * Parses a `traceparent` field value (W3C Trace Context, version 00): exactly
 * `00-<32 hex trace-id>-<16 hex parent-id>-<2 hex flags>`, lowercase hex only, neither id all
 * zeros. Returns true and copies the three parts (no NUL) on success; false leaves the outputs
 * untouched. Other versions are refused too: sluice only speaks 00 and starts a new trace then.
 * Pure: any thread.
 */
bool sl_traceparent_parse(sl_str_t v, char trace_id[32], char parent_id[16], char flags[2]);

/**
 * Fills x->trace once (later calls do nothing): the trace of the request's one valid
 * `traceparent` field (two or more fields count as none), else a new trace-id with flags 01;
 * and always a new span id of ours. Ids come from the worker's id generator (no syscall, no
 * allocation). The exchange's worker thread; called by the proxy when it builds the upstream
 * request, so local answers never pay for it.
 */
void sl_trace_begin(sl_exchange_t *x);

/** Writes `00-<trace>-<span>-<flags>` (55 bytes, no NUL) for the upstream request. */
void sl_trace_format(const sl_trace_t *t, char out[55]);

#endif
