/*
 * Timeout queues: one FIFO list per distinct duration, one libuv timer per worker. Because every
 * entry in a queue has the same duration, appending keeps the list sorted by deadline, so
 * arming, re-arming and cancelling a timeout are O(1) pointer moves (h2o's timeout lists) and an
 * idle connection needs no uv_timer_t of its own. Owner thread only.
 */
#ifndef SL_NET_TIMEQ_H
#define SL_NET_TIMEQ_H

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

typedef struct sl_timeq_entry sl_timeq_entry_t;
typedef void (*sl_timeq_cb)(sl_timeq_entry_t *e);

struct sl_timeq_entry {
    sl_timeq_entry_t *prev, *next; /* NULL when not linked */
    uint64_t deadline;             /* loop time, ms */
    sl_timeq_cb cb;
};

typedef struct sl_timeq {
    sl_timeq_entry_t head; /* sentinel */
    uint64_t duration_ms;
} sl_timeq_t;

#define SL_TIMEQ_MAX 32

typedef struct sl_timeqs {
    uv_timer_t timer;
    uint64_t armed_for; /* deadline the timer is set for; UINT64_MAX when stopped */
    sl_timeq_t queues[SL_TIMEQ_MAX];
    unsigned nqueues;
} sl_timeqs_t;

/** Initialises the set on `loop` (one uv_timer_t). */
void sl_timeqs_init(sl_timeqs_t *t, uv_loop_t *loop);
/** Closes the timer; entries still linked are dropped without callbacks. */
void sl_timeqs_close(sl_timeqs_t *t);

/** The queue for `duration_ms`, created on first use. Up to SL_TIMEQ_MAX distinct durations;
 *  past that the nearest longer existing queue is returned (or the longest). */
sl_timeq_t *sl_timeqs_get(sl_timeqs_t *t, uint64_t duration_ms);

/** (Re)starts `e` in queue `q`: it fires `cb(e)` once after q's duration unless cancelled. */
void sl_timeq_add(sl_timeqs_t *t, sl_timeq_t *q, sl_timeq_entry_t *e, sl_timeq_cb cb);

/** Starts `e` with a deadline of its own, `delay_ms` from now, in an unsorted slow path.
 *  For rare, varying deadlines (a route's remaining whole-request time). */
void sl_timeq_add_at(sl_timeqs_t *t, sl_timeq_entry_t *e, uint64_t delay_ms, sl_timeq_cb cb);

/** Cancels `e` if linked; safe to call on an unlinked entry. */
void sl_timeq_cancel(sl_timeq_entry_t *e);

static inline bool sl_timeq_linked(const sl_timeq_entry_t *e)
{
    return e->next != NULL;
}

#endif
