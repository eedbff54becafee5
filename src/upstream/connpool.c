/*
 * Keep-alive pools of upstream connections, one set per worker. Reads stay armed for the whole
 * life of a connection (idle or busy) so reuse costs no epoll_ctl; the read callback hands data
 * to the current user, or closes an idle connection the server has closed or written to. TLS
 * connections (docs/tls.md "Upstream TLS") decrypt into the same rbuf on the way.
 */
#include "upstream/connpool.h"

#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "common/bug.h"
#include "common/error.h"
#include "net/stream.h"

struct sl_connpool {
    struct sockaddr_storage addr;
    socklen_t addrlen;
    uint64_t tls_id;                /* 0: plain TCP */
    char *sni;                      /* TLS: the server name sent, or NULL */
    struct ssl_session_st *session; /* TLS: the newest resumable session, or NULL */
    sl_worker_t *worker;
    sl_upconn_t *idle; /* most recently used first */
    uint32_t nidle;
    uint32_t nbusy;
    /* Peak connections in use in the current and the previous window (one idle timeout each):
     * the pool keeps up to that many, so a burst's connections survive its own ebb. */
    uint32_t peak_cur, peak_prev;
    uint64_t window_end;
    void *mux; /* HTTP/2 connections (h2up.c) */
};

struct sl_upstream_worker {
    sl_connpool_t **pools;
    size_t npools, cap;
    sl_timeq_entry_t *tick; /* the proxy's resilience tick; first member of its object */
    void (*tick_free)(void *);
    sl_buf_pool_t h2_bufs; /* H2UP_BUF bytes each: h2 stream windows and output */
    void *h2up;            /* h2up.c's per-worker state (its flush handle), or NULL */
};

/* An h2 stream's receive window and an h2 connection's gathered output (h2up.c). */
#define H2UP_BUF (64 * 1024)

void **sl__connpool_mux(sl_connpool_t *p)
{
    return &p->mux;
}

sl_buf_pool_t *sl__connpool_h2_bufs(sl_worker_t *w)
{
    return &w->up->h2_bufs;
}

void **sl__connpool_h2up_state(sl_worker_t *w)
{
    return &w->up->h2up;
}

size_t sl__connpool_count(sl_worker_t *w)
{
    return w->up == NULL ? 0 : w->up->npools;
}

sl_connpool_t *sl__connpool_at(sl_worker_t *w, size_t i)
{
    return w->up->pools[i];
}

void sl__connpool_worker_set_tick(struct sl_upstream_worker *uw, void *tick, void (*tick_free)(void *))
{
    uw->tick = tick;
    uw->tick_free = tick_free;
}

/* The proxy's read entry point for busy connections (defined in proxy.c): `nread` bytes were
 * appended to rbuf, or a libuv error (UV_EOF, UV_ENOBUFS for a full rbuf). */
void sl__proxy_on_upstream_read(sl_upconn_t *c, ssize_t nread);
/* ... and the end of a TLS handshake (proxy.c). */
void sl__proxy_on_upstream_handshake(sl_upconn_t *c, int status);
/* HTTP/2 connections have their own (h2up.c). */
void sl__h2up_on_read(sl_upconn_t *c, ssize_t nread);
void sl__h2up_on_handshake(sl_upconn_t *c, int status);

static void deliver_read(sl_upconn_t *c, ssize_t nread)
{
    if (c->mux)
        sl__h2up_on_read(c, nread);
    else
        sl__proxy_on_upstream_read(c, nread);
}

static void deliver_handshake(sl_upconn_t *c, int status)
{
    if (c->mux)
        sl__h2up_on_handshake(c, status);
    else
        sl__proxy_on_upstream_handshake(c, status);
}

struct sl_upstream_worker *sl__connpool_worker_create(void)
{
    struct sl_upstream_worker *uw = sl_xcalloc(1, sizeof(struct sl_upstream_worker));
    sl_buf_pool_init(&uw->h2_bufs, H2UP_BUF, 64);
    return uw;
}

void sl__connpool_worker_destroy(struct sl_upstream_worker *uw)
{
    if (uw == NULL)
        return;
    for (size_t i = 0; i < uw->npools; i++) {
        sl_tls_session_free(uw->pools[i]->session);
        free(uw->pools[i]->sni);
        free(uw->pools[i]);
    }
    free(uw->pools);
    sl_buf_pool_dispose(&uw->h2_bufs);
    if (uw->tick != NULL) {
        sl_timeq_cancel(uw->tick);
        uw->tick_free(uw->tick);
    }
    free(uw);
}

static bool same_sni(const char *a, const char *b)
{
    return a == NULL || b == NULL ? a == b : strcmp(a, b) == 0;
}

sl_connpool_t *sl_connpool_get(sl_worker_t *w, const struct sockaddr *addr, socklen_t addrlen, uint64_t tls_id,
                               const char *sni)
{
    struct sl_upstream_worker *uw = w->up;
    for (size_t i = 0; i < uw->npools; i++) {
        sl_connpool_t *p = uw->pools[i];
        if (p->addrlen == addrlen && p->tls_id == tls_id && memcmp(&p->addr, addr, addrlen) == 0 &&
            (tls_id == 0 || same_sni(p->sni, sni)))
            return p;
    }
    if (uw->npools == uw->cap) {
        uw->cap = uw->cap ? uw->cap * 2 : 8;
        uw->pools = sl_xrealloc(uw->pools, uw->cap * sizeof(*uw->pools));
    }
    sl_connpool_t *p = sl_xcalloc(1, sizeof(*p));
    memcpy(&p->addr, addr, addrlen);
    p->addrlen = addrlen;
    p->tls_id = tls_id;
    if (tls_id != 0 && sni != NULL) {
        size_t n = strlen(sni) + 1;
        p->sni = sl_xmalloc(n);
        memcpy(p->sni, sni, n);
    }
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
    sl_tls_conn_destroy(c->tls); /* after the close: its queued write was cancelled */
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

/* A graceful end of a healthy connection: TLS says so first (close_notify, best effort). */
static void close_gracefully(sl_upconn_t *c)
{
    c->closing = true;
    if (c->tls != NULL && c->tls_ready)
        sl_tls_conn_shutdown(c->tls);
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
}

static void idle_close(sl_upconn_t *c)
{
    idle_unlink(c);
    sl_timeq_cancel(&c->idle_timeout);
    close_gracefully(c);
}

/* A TLS connection going idle or sitting idle: what TLS holds must be no response bytes (only
 * session tickets or key updates, which SSL_read consumes and answers). False: close it. */
static bool tls_idle_ok(sl_upconn_t *c)
{
    if (c->tls_eof)
        return false;
    if (!sl_tls_conn_has_input(c->tls))
        return true;
    /* One read takes every complete record (handshake messages are consumed in a loop); a
     * partial one waits in TLS for the rest. */
    char scratch[256];
    if (sl_tls_conn_read(c->tls, scratch, sizeof(scratch)) != 0)
        return false; /* bytes nobody asked for, close_notify, or an error */
    return sl_tls_conn_flush(c->tls) == 0;
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
    if (c->rbuf != NULL || p->nidle + p->nbusy >= keep || (c->tls != NULL && !tls_idle_ok(c))) {
        close_gracefully(c);
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

/* Ciphertext of TLS connections lands here and is fed to TLS in the same callback: one
 * buffer per thread, not per connection. A little over one full record. */
static _Thread_local char tls_in[16384 + 512];

void sl__connpool_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    sl_upconn_t *c = h->data;
    (void)suggested;
    if (c->tls != NULL) {
        sl_buf_t *b = c->rbuf;
        /* A full rbuf that cannot be compacted stops reading (UV_ENOBUFS), as for plain TCP:
         * TLS then holds at most one read's worth beyond it. */
        bool full = b != NULL && b->len == b->cap && (b->off == 0 || c->pinned);
        *buf = uv_buf_init(tls_in, full ? 0 : (unsigned)sizeof(tls_in));
        return;
    }
    if (c->rbuf == NULL)
        c->rbuf = sl_buf_get(&c->pool->worker->bufs);
    sl_buf_t *b = c->rbuf;
    /* While the proxy has a slice of this buffer in flight to the client, nothing may move. */
    if (b->len == b->cap && b->off > 0 && !c->pinned)
        sl_buf_compact(b);
    buf->base = b->data + b->len;
    buf->len = b->cap - b->len;
}

ssize_t sl_upconn_fill(sl_upconn_t *c)
{
    if (c->tls == NULL || !c->tls_ready)
        return 0;
    if (!sl_tls_conn_has_input(c->tls))
        return c->tls_eof ? SL_ECLOSED : 0;
    if (c->rbuf == NULL)
        c->rbuf = sl_buf_get(&c->pool->worker->bufs);
    sl_buf_t *b = c->rbuf;
    if (b->len == b->cap && b->off > 0 && !c->pinned)
        sl_buf_compact(b);
    /* After bytes, a close_notify is reported by the next fill (tls_eof). */
    bool closed = false;
    ssize_t added = sl_tls_conn_read_many(c->tls, b->data + b->len, b->cap - b->len, &closed);
    if (closed)
        c->tls_eof = true;
    if (added < 0)
        return added;
    b->len += (size_t)added;
    /* Anything TLS must answer on its own (a key update). */
    if (sl_tls_conn_flush(c->tls) < 0)
        return SL_ECLOSED;
    return added;
}

static void tls_on_read(sl_upconn_t *c, const char *p, size_t n)
{
    sl_tls_conn_feed(c->tls, p, n);
    if (c->user == NULL) {
        if (!tls_idle_ok(c) && !c->closing)
            idle_close(c);
        return;
    }
    if (!c->tls_ready) {
        int r = sl_tls_conn_handshake(c->tls);
        /* Our next flight, or the alert explaining a failure. */
        int f = sl_tls_conn_flush(c->tls);
        if (r < 0 || f < 0) {
            deliver_handshake(c, r < 0 ? r : f);
            return;
        }
        if (r == 0)
            return;
        c->tls_ready = true;
        void *user = c->user;
        deliver_handshake(c, 0);
        if (c->closing || c->user != user)
            return;
    }
    for (;;) {
        void *user = c->user;
        ssize_t added = sl_upconn_fill(c);
        if (added == 0) {
            if (sl_tls_conn_has_input(c->tls) && c->rbuf != NULL && c->rbuf->len == c->rbuf->cap)
                deliver_read(c, UV_ENOBUFS); /* the proxy stops reading */
            return;
        }
        if (added < 0) {
            deliver_read(c, added == SL_ECLOSED ? UV_EOF : UV_EPROTO);
            return;
        }
        deliver_read(c, added);
        if (c->closing)
            return;
        if (c->user == NULL) {
            /* Released to the pool by that very read: what TLS holds must be no response. */
            if (c->tls != NULL && !tls_idle_ok(c))
                idle_close(c);
            return;
        }
        if (c->user != user || !sl_tls_conn_has_input(c->tls))
            return;
    }
}

void sl__connpool_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    sl_upconn_t *c = s->data;
    if (nread == 0)
        return;
    if (c->user == NULL) {
        /* Idle: the server closed it, or sent bytes nobody asked for. Either way it is done;
         * TLS may have sent a session ticket or a key update, which it keeps for itself. */
        if (nread > 0 && c->tls != NULL) {
            tls_on_read(c, buf->base, (size_t)nread);
            return;
        }
        if (!c->closing)
            idle_close(c);
        return;
    }
    if (c->tls != NULL) {
        if (nread > 0) {
            tls_on_read(c, buf->base, (size_t)nread);
            return;
        }
        if (!c->tls_ready) {
            deliver_handshake(c, (int)nread);
            return;
        }
        deliver_read(c, nread);
        return;
    }
    if (nread > 0)
        c->rbuf->len += (size_t)nread;
    deliver_read(c, nread);
}

/* ---- TLS ----------------------------------------------------------------------------------- */

void sl_upconn_tls_names(const sl_upstream_conf_t *u, const sl_target_conf_t *t, const char **sni, const char **name)
{
    if (u->tls.sni.len > 0)
        *sni = u->tls.sni.ptr;
    else
        *sni = t->host_is_ip ? NULL : t->host.ptr;
    *name = *sni != NULL ? *sni : t->host.ptr;
}

static void on_session(void *arg, struct ssl_session_st *s)
{
    sl_upconn_t *c = arg;
    sl_tls_session_free(c->pool->session);
    c->pool->session = s;
}

int sl_upconn_tls_start(sl_upconn_t *c, const sl_tls_client_ctx_t *ctx, const char *sni, const char *name)
{
    sl_tls_upstream_conn_create(ctx, (uv_stream_t *)&c->tcp, sni, name, c->pool->session, on_session, c, &c->tls);
    int r = sl_tls_conn_handshake(c->tls);
    int f = sl_tls_conn_flush(c->tls);
    return r < 0 ? r : f;
}

int sl_upconn_write(sl_upconn_t *c, uv_buf_t *iov, unsigned n, uv_write_cb cb)
{
    if (c->tls != NULL)
        return sl_tls_conn_write(c->tls, &c->write_req, iov, n, cb);
    return sl_stream_write((uv_stream_t *)&c->tcp, &c->write_req, iov, n, cb);
}

int sl_upconn_shutdown(sl_upconn_t *c)
{
    uv_os_fd_t fd;
    if (c->tls != NULL)
        sl_tls_conn_shutdown(c->tls); /* TLS's own half-close */
    if (uv_fileno((uv_handle_t *)&c->tcp, &fd) != 0 || shutdown(fd, SHUT_WR) != 0)
        return SL_ECLOSED;
    return 0;
}
