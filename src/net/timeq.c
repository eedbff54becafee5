/*
 * One uv timer serves every timeout of a worker: it is armed for the earliest head of the
 * queues and, when it fires, expires every due entry. Entries with individual deadlines go to
 * queue 0, which is kept sorted by insertion (rare: route whole-request timeouts).
 */
#include "net/timeq.h"

#include <string.h>

static void list_init(sl_timeq_entry_t *h)
{
    h->prev = h->next = h;
}

static void unlink_entry(sl_timeq_entry_t *e)
{
    e->prev->next = e->next;
    e->next->prev = e->prev;
    e->prev = e->next = NULL;
}

static void insert_before(sl_timeq_entry_t *pos, sl_timeq_entry_t *e)
{
    e->next = pos;
    e->prev = pos->prev;
    pos->prev->next = e;
    pos->prev = e;
}

static void on_timer(uv_timer_t *timer);

static void arm(sl_timeqs_t *t, uint64_t deadline)
{
    if (deadline >= t->armed_for)
        return;
    uint64_t now = uv_now(t->timer.loop);
    t->armed_for = deadline;
    uv_timer_start(&t->timer, on_timer, deadline > now ? deadline - now : 0, 0);
}

static void on_timer(uv_timer_t *timer)
{
    sl_timeqs_t *t = timer->data;
    uint64_t now = uv_now(timer->loop);
    uint64_t next = UINT64_MAX;
    t->armed_for = UINT64_MAX;
    for (unsigned i = 0; i < t->nqueues; i++) {
        sl_timeq_t *q = &t->queues[i];
        /* A callback may add entries anywhere; re-read the head each time. */
        while (q->head.next != &q->head && q->head.next->deadline <= now) {
            sl_timeq_entry_t *e = q->head.next;
            unlink_entry(e);
            e->cb(e);
        }
    }
    for (unsigned i = 0; i < t->nqueues; i++) {
        sl_timeq_t *q = &t->queues[i];
        if (q->head.next != &q->head && q->head.next->deadline < next)
            next = q->head.next->deadline;
    }
    if (next != UINT64_MAX)
        arm(t, next);
}

void sl_timeqs_init(sl_timeqs_t *t, uv_loop_t *loop)
{
    memset(t, 0, sizeof(*t));
    uv_timer_init(loop, &t->timer);
    t->timer.data = t;
    t->armed_for = UINT64_MAX;
    /* queue 0: individually-timed entries, sorted on insert */
    list_init(&t->queues[0].head);
    t->queues[0].duration_ms = 0;
    t->nqueues = 1;
}

void sl_timeqs_close(sl_timeqs_t *t)
{
    uv_timer_stop(&t->timer);
    uv_close((uv_handle_t *)&t->timer, NULL);
}

sl_timeq_t *sl_timeqs_get(sl_timeqs_t *t, uint64_t duration_ms)
{
    sl_timeq_t *best = NULL;
    for (unsigned i = 1; i < t->nqueues; i++) {
        if (t->queues[i].duration_ms == duration_ms)
            return &t->queues[i];
        if (t->queues[i].duration_ms > duration_ms && (best == NULL || t->queues[i].duration_ms < best->duration_ms))
            best = &t->queues[i];
    }
    if (t->nqueues < SL_TIMEQ_MAX) {
        sl_timeq_t *q = &t->queues[t->nqueues++];
        list_init(&q->head);
        q->duration_ms = duration_ms;
        return q;
    }
    if (best == NULL) {
        best = &t->queues[1];
        for (unsigned i = 2; i < t->nqueues; i++)
            if (t->queues[i].duration_ms > best->duration_ms)
                best = &t->queues[i];
    }
    return best;
}

void sl_timeq_add(sl_timeqs_t *t, sl_timeq_t *q, sl_timeq_entry_t *e, sl_timeq_cb cb)
{
    if (e->next != NULL)
        unlink_entry(e);
    e->deadline = uv_now(t->timer.loop) + q->duration_ms;
    e->cb = cb;
    insert_before(&q->head, e);
    arm(t, e->deadline);
}

void sl_timeq_add_at(sl_timeqs_t *t, sl_timeq_entry_t *e, uint64_t delay_ms, sl_timeq_cb cb)
{
    sl_timeq_t *q = &t->queues[0];
    if (e->next != NULL)
        unlink_entry(e);
    e->deadline = uv_now(t->timer.loop) + delay_ms;
    e->cb = cb;
    sl_timeq_entry_t *pos = q->head.next;
    while (pos != &q->head && pos->deadline <= e->deadline)
        pos = pos->next;
    insert_before(pos, e);
    arm(t, e->deadline);
}

void sl_timeq_cancel(sl_timeq_entry_t *e)
{
    if (e->next != NULL)
        unlink_entry(e);
}
