/*
 * Running a route's filter chain (filter.h): the request side from routing to the route's
 * answer, pauses and resumes, cancellation when the client leaves, and the response-side and
 * log hooks in reverse order. The answer itself (header edits, respond, proxy) is pipeline.c's.
 */
#include "common/bug.h"
#include "http/reply.h"
#include "pipeline/filter.h"
#include "pipeline/internal.h"
#include "pipeline/snapshot.h"

static void chain_on_abort(sl_exchange_t *x)
{
    const sl_filter_t *f = &x->chain->filters[x->chain_pos - 1];
    x->chain_paused = false;
    if (f->type->on_abort != NULL)
        f->type->on_abort(x, f->state);
}

static void chain_continue(sl_exchange_t *x)
{
    const sl_chain_t *c = x->chain;
    while (c != NULL && x->chain_pos < c->n) {
        const sl_filter_t *f = &c->filters[x->chain_pos++];
        switch (f->type->on_request(x, f->state)) {
        case SL_FILTER_CONTINUE:
            continue;
        case SL_FILTER_PAUSE:
            x->chain_paused = true;
            x->on_abort = chain_on_abort;
            return;
        case SL_FILTER_REPLIED:
            return;
        case SL_FILTER_ERROR:
            SL_BUG_ON(x->cause == SL_CAUSE_NONE);
            sl_reply_error(x, x->cause, NULL);
            return;
        }
    }
    sl__pipeline_answer(x);
}

void sl__pipeline_chain_start(sl_exchange_t *x)
{
    x->chain_pos = 0;
    chain_continue(x);
}

void sl_filter_resume(sl_exchange_t *x)
{
    /* A second resume, or a resume after the filter answered, is a filter bug. */
    SL_BUG_ON(!x->chain_paused);
    x->chain_paused = false;
    x->on_abort = NULL;
    chain_continue(x);
}

void sl_filter_end_pause(sl_exchange_t *x)
{
    SL_BUG_ON(!x->chain_paused);
    x->chain_paused = false;
    x->on_abort = NULL;
}

void sl_filter_fail(sl_exchange_t *x, enum sl_cause cause, const char *detail)
{
    SL_BUG_ON(!x->chain_paused);
    x->chain_paused = false;
    x->on_abort = NULL;
    x->cause_detail = detail;
    sl_reply_error(x, cause, NULL);
}

void sl__pipeline_chain_response_headers(sl_exchange_t *x)
{
    const sl_chain_t *c = x->chain;
    for (size_t i = c != NULL ? x->chain_pos : 0; i-- > 0;) {
        const sl_filter_t *f = &c->filters[i];
        if (f->type->on_response_headers != NULL)
            f->type->on_response_headers(x, f->state);
    }
}

void sl__pipeline_chain_log(sl_exchange_t *x)
{
    const sl_chain_t *c = x->chain;
    for (size_t i = c != NULL ? x->chain_pos : 0; i-- > 0;) {
        const sl_filter_t *f = &c->filters[i];
        if (f->type->on_log != NULL)
            f->type->on_log(x, f->state);
    }
}
