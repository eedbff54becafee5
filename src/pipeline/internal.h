/*
 * Private to src/pipeline: the seams between pipeline.c (routing, the route's answer) and
 * chain.c (the filter chain between them). Exchange's worker thread only.
 */
#ifndef SL_PIPELINE_INTERNAL_H
#define SL_PIPELINE_INTERNAL_H

#include "http/exchange.h"

/** After the last filter: request header edits, then respond / echo / proxy. */
void sl__pipeline_answer(sl_exchange_t *x);

/** Runs x->chain from its first filter (x->chain may be NULL: straight to the answer). */
void sl__pipeline_chain_start(sl_exchange_t *x);
/** Response-side and log hooks of the filters that ran, last first. */
void sl__pipeline_chain_response_headers(sl_exchange_t *x);
void sl__pipeline_chain_log(sl_exchange_t *x);

#endif
