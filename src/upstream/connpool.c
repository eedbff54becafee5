/*
 * Keep-alive pools of upstream connections, one set per worker. Reads stay armed for the whole
 * life of a connection (idle or busy) so reuse costs no epoll_ctl; the read callback hands data
 * to the current user, or closes an idle connection the server has closed or written to.
 */
#include "upstream/connpool.h"

#include <stdlib.h>
#include <string.h>

#include "common/bug.h"

struct sl_connpool {
    struct sockaddr_storage addr;
    socklen_t addrlen;
    sl_worker_t *worker;
    sl_upconn_t *idle; /* most recently used first */
    uint32_t nidle;
    uint32_t nbusy;
    /* Peak connections in use in the current and the previous window (one idle timeout each):
     * the pool keeps up to that many, so a burst's connections survive its own ebb. */
    uint32_t peak_cur, peak_prev;
    uint64_t window_end;
};

struct sl_upstream_worker {
    sl_connpool_t **pools;
    size_t npools, cap;
    sl_timeq_entry_t *tick; /* the proxy's resilience tick; first member of its object */
    void (*tick_free)(void *);
};

void sl__connpool_worker_set_tick(struct sl_upstream_worker *uw, void *tick, void (*tick_free)(void *))
{
    uw->tick = tick;
    uw->tick_free = tick_free;
}

/* The proxy's read entry point for busy connections (defined in proxy.c). */
void sl__proxy_on_upstream_read(sl_upconn_t *c, ssize_t nread);

struct sl_upstream_worker *sl__connpool_worker_create(void)
{
    return sl_xcalloc(1, sizeof(struct sl_upstream_worker));
}

void sl__connpool_worker_destroy(struct sl_upstream_worker *uw)
{
    if (uw == NULL)
        return;
    for (size_t i = 0; i < uw->npools; i++)
        free(uw->pools[i]);
    free(uw->pools);
    if (uw->tick != NULL) {
        sl_timeq_cancel(uw->tick);
        uw->tick_free(uw->tick);
    }
    free(uw);
}

sl_connpool_t *sl_connpool_get(sl_worker_t *w, const struct sockaddr *addr, socklen_t addrlen)
{
    struct sl_upstream_worker *uw = w->up;
    for (size_t i = 0; i < uw->npools; i++) {
        sl_connpool_t *p = uw->pools[i];
        if (p->addrlen == addrlen && memcmp(&p->addr, addr, addrlen) == 0)
            return p;
    }
    if (uw->npools == uw->cap) {
        uw->cap = uw->cap ? uw->cap * 2 : 8;
        uw->pools = sl_xrealloc(uw->pools, uw->cap * sizeof(*uw->pools));
    }
    sl_connpool_t *p = sl_xcalloc(1, sizeof(*p));
    memcpy(&p->addr, addr, addrlen);
    p->addrlen = addrlen;
    p->worker = w;
    uw->pools[uw->npools++] = p;
    return p;
}

static void idle_unlink(sl_upconn_t *c)
{
    sl_connpool_t *p = c->pool;
    if (c->prev)
        c->prev->next = c->next;
    else
        p->idle = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    p->nidle--;
}

static void note_busy(sl_connpool_t *p)
{
    p->nbusy++;
    if (p->nbusy > p->peak_cur)
        p->peak_cur = p->nbusy;
}

sl_upconn_t *sl_connpool_acquire(sl_connpool_t *p)
{
    sl_upconn_t *c = p->idle;
    if (c == NULL)
        return NULL;
    idle_unlink(c);
    sl_timeq_cancel(&c->idle_timeout);
    note_busy(p);
    return c;
}

static void on_conn_closed(uv_handle_t *h)
{
    sl_upconn_t *c = h->data;
    sl_buf_put(&c->pool->worker->bufs, c->rbuf);
    free(c);
}

sl_upconn_t *sl_connpool_create_conn(sl_connpool_t *p)
{
    sl_upconn_t *c = sl_xcalloc(1, sizeof(*c));
    c->pool = p;
    uv_tcp_init(&p->worker->loop, &c->tcp);
    c->tcp.data = c;
    c->connect_req.data = c;
    c->write_req.data = c;
    note_busy(p);
    return c;
}

void sl_upconn_close(sl_upconn_t *c)
{
    if (c->closing)
        return;
    c->closing = true;
    sl_timeq_cancel(&c->idle_timeout);
    if (c->user != NULL)
        c->pool->nbusy--;
    c->user = NULL;
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
}

static void idle_close(sl_upconn_t *c)
{
    idle_unlink(c);
    c->closing = true;
    sl_timeq_cancel(&c->idle_timeout);
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
}

static void on_idle_timeout(sl_timeq_entry_t *e)
{
    idle_close(SL_CONTAINER_OF(e, sl_upconn_t, idle_timeout));
}

void sl_connpool_release(sl_upconn_t *c, uint32_t max_idle, uint64_t idle_timeout_ms)
{
    sl_connpool_t *p = c->pool;
    p->nbusy--;
    c->user = NULL;
    c->requests++;
    if (c->rbuf != NULL && c->rbuf->off == c->rbuf->len) {
        sl_buf_put(&p->worker->bufs, c->rbuf);
        c->rbuf = NULL;
    }
    uint64_t now = uv_now(&p->worker->loop);
    if (now >= p->window_end) {
        p->peak_prev = p->peak_cur;
        p->peak_cur = p->nbusy;
        p->window_end = now + idle_timeout_ms;
    }
    uint32_t keep = SL_MAX(max_idle, SL_MAX(p->peak_cur, p->peak_prev));
    /* Extra bytes after a complete response, or more idle than recent concurrency needs. */
    if (c->rbuf != NULL || p->nidle + p->nbusy >= keep) {
        c->closing = true;
        uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
        return;
    }
    c->next = p->idle;
    c->prev = NULL;
    if (p->idle)
        p->idle->prev = c;
    p->idle = c;
    p->nidle++;
    sl_timeq_add(&p->worker->timeqs, sl_timeqs_get(&p->worker->timeqs, idle_timeout_ms), &c->idle_timeout,
                 on_idle_timeout);
}

void sl_connpool_close_idle(sl_worker_t *w)
{
    struct sl_upstream_worker *uw = w->up;
    if (uw == NULL)
        return;
    /* Draining: the periodic tick must not keep the loop alive (it re-arms itself). */
    if (uw->tick != NULL)
        sl_timeq_cancel(uw->tick);
    for (size_t i = 0; i < uw->npools; i++)
        while (uw->pools[i]->idle != NULL)
            idle_close(uw->pools[i]->idle);
}

/* ---- reads: shared by idle and busy connections ------------------------------------------ */

void sl__connpool_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
void sl__connpool_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

void sl__connpool_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    sl_upconn_t *c = h->data;
    (void)suggested;
    if (c->rbuf == NULL)
        c->rbuf = sl_buf_get(&c->pool->worker->bufs);
    sl_buf_t *b = c->rbuf;
    /* While the proxy has a slice of this buffer in flight to the client, nothing may move. */
    if (b->len == b->cap && b->off > 0 && !c->pinned)
        sl_buf_compact(b);
    buf->base = b->data + b->len;
    buf->len = b->cap - b->len;
}

void sl__connpool_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    sl_upconn_t *c = s->data;
    (void)buf;
    if (nread == 0)
        return;
    if (c->user == NULL) {
        /* Idle: the server closed it, or sent bytes nobody asked for. Either way it is done. */
        if (!c->closing)
            idle_close(c);
        return;
    }
    sl__proxy_on_upstream_read(c, nread);
}
