/*
 * HTTP/1.1 downstream connections: read → parse → exchange → pipeline → framed response → next
 * request. Pipelined requests wait in the read buffer and are parsed after the current response
 * ends, so they are answered in order. The exchange's downstream ops are implemented here; the
 * pipeline and the proxy never see HTTP/1 framing.
 */
#include "http1/server.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "common/bug.h"
#include "common/error.h"
#include "common/log.h"
#include "common/str.h"
#include "common/time.h"
#include "http/reply.h"
#include "http1/parser.h"
#include "http2/h2.h"
#include "metrics/metrics.h"
#include "net/stream.h"
#include "pipeline/pipeline.h"
#include "pipeline/snapshot.h"
#include "tls/tls.h"

#define MAX_HEADERS 100
/* Heads larger than one pooled buffer get a one-off buffer of this size at most. */
#define MAX_HEAD_BUFFER (64 * 1024 + 1024)
/* One socket read of a TLS connection: ciphertext lands here and is copied into the TLS read
 * BIO at once, so one buffer per worker serves every TLS connection. */
#define TLS_READ_BUFFER (64 * 1024)
/* How long a drained worker keeps an idle keep-alive connection open for a request already sent. */
#define DRAIN_IDLE_GRACE_MS 1000

typedef struct sl_h1_conn sl_h1_conn_t;
typedef struct sl_h1_active sl_h1_active_t;

struct sl_h1_worker {
    sl_h1_conn_t *conns; /* doubly linked, for drain */
    size_t nconns;
    bool draining;
    void (*on_empty)(sl_worker_t *w);
    sl_h1_active_t *free_active;
    size_t nfree_active;
    unsigned depth;      /* conn_process frames on the stack, to keep pipelining iterative */
    char *tls_in;        /* TLS_READ_BUFFER bytes, allocated with the first TLS connection */
    sl_h2_worker_t *h2w; /* HTTP/2 free lists, created with the first h2 connection */
};

static atomic_uint_fast64_t total_connections;

enum conn_flag {
    CONN_CLOSING = 1 << 0,
    CONN_READING = 1 << 1,
    CONN_CLOSE_AFTER = 1 << 2, /* close once the current response is written */
    CONN_SAW_BYTES = 1 << 3,   /* the current request's first byte has arrived */
    CONN_PEER_EOF = 1 << 4,
    CONN_PROCESS_PENDING = 1 << 5, /* a pipelined request waits for the outer conn_process */
    CONN_COUNTED_ACTIVE = 1 << 6,  /* the connections{state="active"} gauge counts it */
    CONN_TLS_READY = 1 << 7,       /* the TLS handshake is done: bytes are HTTP from here */
    CONN_H2C_OK = 1 << 8,          /* plain listener with http2: the first bytes may be the h2 preface */
};

struct sl_h1_conn {
    uv_tcp_t tcp;
    sl_timeq_entry_t timeout;
    sl_h1_conn_t *prev, *next;
    sl_worker_t *worker;
    sl_buf_t *rbuf;      /* NULL while idle with nothing buffered */
    sl_h1_active_t *act; /* NULL between requests */
    sl_tls_conn_t *tls;  /* NULL on a plain listener */
    sl_h2_session_t *h2; /* set once the connection speaks HTTP/2 (ALPN h2 or the h2c preface) */
    uint32_t flags;
    /* The peer, captured once at accept (not a getpeername per request), kept compact
     * because it stays in every idle connection. */
    uint16_t peer_port;
    uint8_t peer_family; /* AF_INET, AF_INET6 or 0 when unknown */
    uint8_t peer_addr[16];
};

struct sl_h1_active {
    sl_exchange_t x;
    sl_h1_conn_t *conn;
    sl_h1_active_t *next_free;
    uv_write_t wreq;
    sl_header_t parsed[MAX_HEADERS];
    size_t head_start, head_end; /* the request head in rbuf; kept until the exchange ends */
    /* response */
    char *head;
    size_t head_len;
    bool head_pending; /* serialised, not yet written: goes out with the first body bytes */
    bool resp_chunked;
    bool resp_no_body;
    bool finished;
    bool writing;
    sl_write_cb write_cb;
    char chunk_hdr[24];
    uv_buf_t iov[12];
    /* request body */
    sl_body_cb body_cb;
    bool body_started;
    bool body_wait_ack;
    bool body_done;
    bool body_delivering;
    size_t body_ack_to; /* rbuf offset to consume on ack */
    uint64_t body_remaining;
    uint64_t body_received;
    uint64_t max_body;
    sl_h1_chunked_t chunked;
    bool continue_sent;
    /* After a 101 the connection is a byte tunnel: the body path delivers the client's bytes
     * (after the request head, which the log still reads) and send_body writes unframed. */
    bool tunnel;
};

static void conn_close(sl_h1_conn_t *c);
static void conn_process(sl_h1_conn_t *c);
static void exchange_end(sl_h1_conn_t *c);
static void body_deliver(sl_h1_conn_t *c);
static sl_h1_active_t *active_take(sl_h1_conn_t *c);
static sl_h1_active_t *active_take_unparsed(sl_h1_conn_t *c);
static const sl_downstream_ops_t h1_ops;
static int conn_start_h2(sl_h1_conn_t *c);

/* ---- per-worker state ----------------------------------------------------------------------- */

void sl_h1_worker_init(sl_worker_t *w)
{
    w->h1 = sl_xcalloc(1, sizeof(*w->h1));
}

void sl_h1_worker_dispose(sl_worker_t *w)
{
    sl_h1_worker_t *hw = w->h1;
    if (hw == NULL)
        return;
    while (hw->free_active != NULL) {
        sl_h1_active_t *a = hw->free_active;
        hw->free_active = a->next_free;
        sl_arena_dispose(&a->x.arena);
        free(a);
    }
    free(hw->tls_in);
    if (hw->h2w != NULL)
        sl_log_warn("worker %u: HTTP/2 state left at exit", w->id); /* released when the drain ended */
    free(hw);
    w->h1 = NULL;
}

size_t sl_h1_server_connections(const sl_worker_t *w)
{
    return w->h1 ? w->h1->nconns : 0;
}

uint64_t sl_h1_server_total_connections(void)
{
    return atomic_load_explicit(&total_connections, memory_order_relaxed);
}

static const sl_config_t *conn_cfg(const sl_h1_conn_t *c)
{
    return c->worker->snap->cfg;
}

static sl_timeq_t *timeq_for(sl_h1_conn_t *c, uint64_t ms)
{
    return sl_timeqs_get(&c->worker->timeqs, ms);
}

/* ---- timeouts --------------------------------------------------------------------------- */

static void on_header_timeout(sl_timeq_entry_t *e)
{
    sl_h1_conn_t *c = SL_CONTAINER_OF(e, sl_h1_conn_t, timeout);
    if (c->tls != NULL && !(c->flags & CONN_TLS_READY))
        sl_tls_conn_set_failure(c->tls, SL_TLS_FAIL_TIMEOUT); /* the handshake timeout */
    if (c->act == NULL && (c->flags & CONN_SAW_BYTES)) {
        /* Part of a head arrived but not all of it in time: say so, then close (RFC 9110 §15.5.9). */
        c->flags |= CONN_CLOSE_AFTER;
        sl_h1_active_t *a = active_take_unparsed(c);
        sl_reply_error(&a->x, SL_CAUSE_CLIENT_TIMEOUT, NULL);
        return;
    }
    conn_close(c);
}

static void on_idle_timeout(sl_timeq_entry_t *e)
{
    conn_close(SL_CONTAINER_OF(e, sl_h1_conn_t, timeout));
}

static void on_body_timeout(sl_timeq_entry_t *e)
{
    sl_h1_conn_t *c = SL_CONTAINER_OF(e, sl_h1_conn_t, timeout);
    sl_h1_active_t *a = c->act;
    if (a == NULL || a->body_done || a->body_cb == NULL) {
        conn_close(c);
        return;
    }
    c->flags |= CONN_CLOSE_AFTER;
    a->body_done = true;
    a->x.cause = SL_CAUSE_CLIENT_TIMEOUT;
    a->body_cb(&a->x, SL_ETIMEDOUT, NULL, 0);
}

static void on_send_timeout(sl_timeq_entry_t *e)
{
    /* The client stopped reading what we write: drop it rather than hold buffers forever. */
    conn_close(SL_CONTAINER_OF(e, sl_h1_conn_t, timeout));
}

/* ---- active exchange state -------------------------------------------------------------- */

/* The client address as text, for every exchange: IPv4 by hand, since inet_ntop's sprintf was
 * 1,670 instructions per request, an eighth of a proxied request's user-space work. */
static void format_peer(const sl_h1_conn_t *c, char out[48])
{
    if (c->peer_family != AF_INET) {
        inet_ntop(c->peer_family, c->peer_addr, out, 48);
        return;
    }
    char *p = out;
    for (int i = 0; i < 4; i++) {
        if (i)
            *p++ = '.';
        p = sl_put_u64(p, c->peer_addr[i]);
    }
    *p = '\0';
}

static sl_h1_active_t *active_take(sl_h1_conn_t *c)
{
    sl_h1_worker_t *hw = c->worker->h1;
    sl_h1_active_t *a = hw->free_active;
    if (a != NULL) {
        hw->free_active = a->next_free;
        hw->nfree_active--;
    } else {
        a = sl_xmalloc(sizeof(*a));
        sl_arena_init(&a->x.arena, 4096);
    }
    sl_arena_t arena = a->x.arena;
    memset(a, 0, offsetof(sl_h1_active_t, parsed));
    memset(&a->head, 0, sizeof(*a) - offsetof(sl_h1_active_t, head));
    a->x.arena = arena;
    a->conn = c;
    a->x.worker = c->worker;
    a->x.down = &h1_ops;
    a->x.down_ctx = a;
    a->x.snap = sl_snapshot_ref(c->worker->snap);
    a->x.start_ns = sl_time_mono_ns();
    a->x.route_index = -1;
    a->x.upstream_connect_ns = -1;
    a->x.upstream_first_byte_ns = -1;
    a->wreq.data = c;
    c->act = a;
    if (c->worker->metrics && !(c->flags & CONN_COUNTED_ACTIVE)) {
        c->flags |= CONN_COUNTED_ACTIVE;
        sl_metrics_connection_active(c->worker->metrics, true);
    }
    if (c->peer_family != 0) {
        format_peer(c, a->x.client_ip);
        a->x.client_family = (uint8_t)c->peer_family;
        memcpy(a->x.client_addr, c->peer_addr, c->peer_family == AF_INET ? 4 : 16);
    }
    a->x.client_port = c->peer_port;
    a->x.client_tls = c->tls != NULL;
    a->x.tls_conn = c->tls;
    return a;
}

/* An exchange for a request that never parsed (an error or a timeout before the head was
 * complete): just enough to answer through the normal path, with a fresh request id. */
static sl_h1_active_t *active_take_unparsed(sl_h1_conn_t *c)
{
    sl_h1_active_t *a = active_take(c);
    c->flags |= CONN_CLOSE_AFTER;
    a->x.method = SL_METHOD_OTHER;
    a->x.method_token = SL_STR_LIT("-");
    a->x.minor_version = 1;
    char *id = sl_arena_alloc(&a->x.arena, 33);
    sl_request_id_generate(id);
    a->x.request_id = (sl_str_t){id, 32};
    return a;
}

static void active_release(sl_h1_conn_t *c)
{
    sl_h1_active_t *a = c->act;
    if (a == NULL)
        return;
    c->act = NULL;
    if (c->worker->metrics && (c->flags & CONN_COUNTED_ACTIVE) && !(c->flags & CONN_CLOSING)) {
        c->flags &= ~CONN_COUNTED_ACTIVE;
        sl_metrics_connection_active(c->worker->metrics, false);
    }
    sl_snapshot_t *snap = a->x.snap;
    sl_arena_reset(&a->x.arena);
    sl_snapshot_unref(snap);
    sl_h1_worker_t *hw = c->worker->h1;
#ifndef SLUICE_SANITIZE
    if (hw->nfree_active < 1024) {
        a->next_free = hw->free_active;
        hw->free_active = a;
        hw->nfree_active++;
        return;
    }
#endif
    (void)hw;
    sl_arena_dispose(&a->x.arena);
    free(a);
}

/* ---- connection lifecycle --------------------------------------------------------------- */

/* The HTTP/2 state goes when the drain ended: its idle handle must close while the loop runs. */
static void h2_worker_release(sl_h1_worker_t *hw)
{
    sl_h2_worker_destroy(hw->h2w);
    hw->h2w = NULL;
}

static void on_close(uv_handle_t *h)
{
    sl_h1_conn_t *c = h->data;
    sl_h1_worker_t *hw = c->worker->h1;
    sl_buf_put(&c->worker->bufs, c->rbuf);
    if (c->prev)
        c->prev->next = c->next;
    else
        hw->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    hw->nconns--;
    atomic_fetch_sub_explicit(&total_connections, 1, memory_order_relaxed);
    if (c->worker->metrics)
        sl_metrics_connection_closed(c->worker->metrics, (c->flags & CONN_COUNTED_ACTIVE) != 0);
    sl_worker_t *w = c->worker;
    sl_h2_session_destroy(c->h2);
    sl_tls_conn_destroy(c->tls);
    free(c);
    if (hw->draining && hw->nconns == 0 && hw->on_empty) {
        void (*cb)(sl_worker_t *) = hw->on_empty;
        hw->on_empty = NULL;
        h2_worker_release(hw);
        cb(w);
    }
}

static void conn_close(sl_h1_conn_t *c)
{
    if (c->flags & CONN_CLOSING)
        return;
    c->flags |= CONN_CLOSING;
    sl_timeq_cancel(&c->timeout);
    if (c->h2 != NULL)
        sl_h2_session_closed(c->h2); /* its exchanges are aborted and logged now */
    sl_h1_active_t *a = c->act;
    if (a != NULL) {
        if (!a->finished) {
            if (a->x.on_abort) {
                void (*abort_cb)(sl_exchange_t *) = a->x.on_abort;
                a->x.on_abort = NULL;
                abort_cb(&a->x);
            }
            if (a->x.status == 0)
                a->x.status = 499; /* client closed before a response: logged like nginx */
            sl_pipeline_log(&a->x);
        }
        /* A write still in flight references the arena: release after uv_close completes
         * the write callback (libuv cancels it with UV_ECANCELED first). */
        if (!a->writing)
            active_release(c);
    }
    if (c->tls != NULL) {
        if (c->flags & CONN_TLS_READY)
            sl_tls_conn_shutdown(c->tls);
        else
            sl_tls_count_failure(c->tls);
    }
    uv_close((uv_handle_t *)&c->tcp, on_close);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    sl_h1_conn_t *c = h->data;
    (void)suggested;
    if (c->tls != NULL) {
        buf->base = c->worker->h1->tls_in;
        buf->len = TLS_READ_BUFFER;
        return;
    }
    if (c->rbuf == NULL)
        c->rbuf = sl_buf_get(&c->worker->bufs);
    sl_buf_t *b = c->rbuf;
    if (b->len == b->cap && c->act == NULL && b->off > 0)
        sl_buf_compact(b);
    buf->base = b->data + b->len;
    buf->len = b->cap - b->len;
}

static void grow_head_buffer(sl_h1_conn_t *c)
{
    /* Only heads longer than a pooled buffer get here (max_header_bytes > 16 KiB). */
    sl_buf_t *old = c->rbuf;
    sl_buf_t *nb = sl_xmalloc(sizeof(*nb) + MAX_HEAD_BUFFER);
    nb->next_free = NULL;
    nb->cap = MAX_HEAD_BUFFER;
    nb->off = 0;
    nb->len = old->len - old->off;
    memcpy(nb->data, old->data + old->off, nb->len);
    c->rbuf = nb;
    sl_buf_put(&c->worker->bufs, old); /* frees it when its size is not the pool's */
}

static void stop_reading(sl_h1_conn_t *c)
{
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->flags &= ~CONN_READING;
}

/* The peer sent its last byte (TCP FIN or TLS close_notify) while the exchange goes on. */
static void peer_half_closed(sl_h1_conn_t *c)
{
    c->flags |= CONN_PEER_EOF;
    stop_reading(c);
}

/* New request bytes are in rbuf: hand them to whoever waits for them. */
static void h2_feed(sl_h1_conn_t *c);

static void on_bytes(sl_h1_conn_t *c)
{
    if (c->h2 != NULL) {
        h2_feed(c);
    } else if (c->act == NULL) {
        conn_process(c);
    } else if (c->act->body_started && !c->act->body_done) {
        body_deliver(c);
    } else if (c->rbuf->len == c->rbuf->cap) {
        /* Pipelined bytes filled the buffer while a response is pending: pause reading. */
        stop_reading(c);
    }
}

/* The read buffer is full and no more fits (UV_ENOBUFS, or decrypted bytes still waiting). */
static void on_buffer_full(sl_h1_conn_t *c)
{
    stop_reading(c);
    if (c->act == NULL)
        conn_process(c);
}

static void on_peer_eof(sl_h1_conn_t *c);
static bool tunnel_half_close(sl_h1_conn_t *c);
static void tls_on_read(sl_h1_conn_t *c, const char *p, size_t n);

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    sl_h1_conn_t *c = s->data;
    if (nread > 0 && c->tls != NULL) {
        tls_on_read(c, buf->base, (size_t)nread);
        return;
    }
    if (nread > 0) {
        c->rbuf->len += (size_t)nread;
        on_bytes(c);
        return;
    }
    if (nread == 0)
        return;
    if (nread == UV_ENOBUFS) {
        on_buffer_full(c);
        return;
    }
    if (c->tls != NULL && !(c->flags & CONN_TLS_READY))
        sl_tls_conn_set_failure(c->tls, SL_TLS_FAIL_CLOSED);
    if (nread == UV_EOF && tunnel_half_close(c))
        return;
    on_peer_eof(c);
}

/* A clean EOF in a tunnel is a half-close: the other direction goes on, and the handler hears
 * of it once the bytes before it were delivered. False when not in a tunnel. */
static bool tunnel_half_close(sl_h1_conn_t *c)
{
    sl_h1_active_t *a = c->act;
    if (a == NULL || !a->tunnel)
        return false;
    peer_half_closed(c);
    if (a->body_started && !a->body_done && !a->body_wait_ack)
        body_deliver(c);
    return true;
}

static void on_peer_eof(sl_h1_conn_t *c)
{
    /* EOF or error. Idle or mid-head: just close. During an exchange: the client left. */
    c->flags |= CONN_PEER_EOF;
    if (c->h2 != NULL) {
        sl_h2_session_peer_eof(c->h2);
        return;
    }
    sl_h1_active_t *a = c->act;
    if (a != NULL && a->body_started && !a->body_done && a->body_cb != NULL) {
        a->body_done = true;
        c->flags |= CONN_CLOSE_AFTER;
        sl_body_cb cb = a->body_cb;
        cb(&a->x, SL_ECLOSED, NULL, 0);
        if (c->act == a && !(c->flags & CONN_CLOSING))
            conn_close(c);
        return;
    }
    conn_close(c);
}

/* ---- TLS: the same connection, with OpenSSL between the socket and rbuf ------------------- */

static void on_tls_dead(sl_timeq_entry_t *e)
{
    conn_close(SL_CONTAINER_OF(e, sl_h1_conn_t, timeout));
}

/* Decrypts what TLS holds into rbuf, as far as it fits: the bytes added, SL_ECLOSED for a
 * close_notify with nothing before it, or another negative code for a fatal TLS error. What
 * does not fit stays in TLS (backpressure: the caller stops reading the socket). */
static ssize_t tls_fill(sl_h1_conn_t *c)
{
    if (!sl_tls_conn_has_input(c->tls))
        return 0;
    if (c->rbuf == NULL)
        c->rbuf = sl_buf_get(&c->worker->bufs);
    sl_buf_t *b = c->rbuf;
    if (b->len == b->cap && c->act == NULL && b->off > 0)
        sl_buf_compact(b);
    /* After bytes, the socket's EOF follows the close_notify. */
    bool closed = false;
    ssize_t added = sl_tls_conn_read_many(c->tls, b->data + b->len, b->cap - b->len, &closed);
    if (added > 0)
        b->len += (size_t)added;
    return added;
}

static bool rbuf_full(const sl_h1_conn_t *c)
{
    return c->rbuf != NULL && c->rbuf->len == c->rbuf->cap;
}

static void tls_on_read(sl_h1_conn_t *c, const char *p, size_t n)
{
    sl_tls_conn_feed(c->tls, p, n);
    if (!(c->flags & CONN_TLS_READY)) {
        int r = sl_tls_conn_handshake(c->tls);
        /* Our flight, or the alert explaining a failure. */
        int f = sl_tls_conn_flush(c->tls);
        if (r < 0 || f < 0) {
            conn_close(c);
            return;
        }
        if (r == 0)
            return;
        c->flags |= CONN_TLS_READY;
        sl_tls_count_handshake(c->tls);
        if (strcmp(sl_tls_conn_alpn(c->tls), "h2") == 0 && conn_start_h2(c) != 0)
            return;
    }
    for (;;) {
        ssize_t added = tls_fill(c);
        if (sl_tls_conn_flush(c->tls) < 0) {
            conn_close(c);
            return;
        }
        if (added == SL_ECLOSED) {
            if (!tunnel_half_close(c))
                on_peer_eof(c);
            return;
        }
        if (added < 0) {
            conn_close(c);
            return;
        }
        if (added == 0)
            return;
        on_bytes(c);
        if (c->flags & CONN_CLOSING || !sl_tls_conn_has_input(c->tls) || !(c->flags & CONN_READING))
            return;
        if (rbuf_full(c)) {
            on_buffer_full(c);
            return;
        }
    }
}

/* Starts reading the socket; on a TLS connection also moves into rbuf what TLS already holds
 * (no socket event would announce it) and returns how many bytes that was, for the caller to
 * process. A fatal TLS error closes the connection from the timer, not under the caller. */
static size_t start_reading(sl_h1_conn_t *c)
{
    if (c->flags & (CONN_CLOSING | CONN_PEER_EOF))
        return 0;
    if (!(c->flags & CONN_READING) && uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0)
        c->flags |= CONN_READING;
    if (c->tls == NULL || !(c->flags & CONN_TLS_READY))
        return 0;
    ssize_t added = tls_fill(c);
    if (added == SL_ECLOSED && c->act != NULL && c->act->tunnel) {
        /* A close_notify TLS held while the tunnel waited: the client's half-close. */
        peer_half_closed(c);
        return 0;
    }
    if (added < 0) {
        stop_reading(c);
        sl_timeq_add_at(&c->worker->timeqs, &c->timeout, 0, on_tls_dead);
        return 0;
    }
    return (size_t)added;
}

void sl_h1_server_accept(sl_listener_t *l)
{
    sl_worker_t *w = l->worker;
    sl_h1_worker_t *hw = w->h1;
    sl_h1_conn_t *c = sl_xcalloc(1, sizeof(*c));
    c->worker = w;
    uv_tcp_init(&w->loop, &c->tcp);
    c->tcp.data = c;
    c->next = hw->conns;
    if (hw->conns)
        hw->conns->prev = c;
    hw->conns = c;
    hw->nconns++;
    uint64_t total = atomic_fetch_add_explicit(&total_connections, 1, memory_order_relaxed) + 1;
    if (w->metrics)
        sl_metrics_connection_opened(w->metrics);
    if (uv_accept((uv_stream_t *)&l->tcp, (uv_stream_t *)&c->tcp) != 0) {
        conn_close(c);
        return;
    }
    uv_os_fd_t fd;
    if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0)
        sl_worker_note_accepted_fd(w, fd);
    const sl_config_t *cfg = conn_cfg(c);
    if (hw->draining || total > cfg->limits.max_connections) {
        /* Over the connection limit: close at once so the rest keep being served. */
        if (!hw->draining)
            sl_worker_count_refused(w);
        conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    struct sockaddr_storage ss;
    int sslen = sizeof(ss);
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sslen) == 0) {
        if (ss.ss_family == AF_INET) {
            const struct sockaddr_in *in = (const struct sockaddr_in *)&ss;
            c->peer_family = AF_INET;
            c->peer_port = ntohs(in->sin_port);
            memcpy(c->peer_addr, &in->sin_addr, 4);
        } else if (ss.ss_family == AF_INET6) {
            const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&ss;
            c->peer_family = AF_INET6;
            c->peer_port = ntohs(in6->sin6_port);
            memcpy(c->peer_addr, &in6->sin6_addr, 16);
        }
    }
    if (l->index < cfg->nlistens && cfg->listens[l->index].http2 && cfg->listens[l->index].tls.ctx == NULL)
        c->flags |= CONN_H2C_OK;
    if (l->index < cfg->nlistens && cfg->listens[l->index].tls.ctx != NULL) {
        if (hw->tls_in == NULL)
            hw->tls_in = sl_xmalloc(TLS_READ_BUFFER);
        sl_tls_conn_create(cfg->listens[l->index].tls.ctx, (uv_stream_t *)&c->tcp, &c->tls);
    }
    /* On TLS this is also the handshake timeout: no request byte can come before it ends. */
    sl_timeq_add(&w->timeqs, timeq_for(c, cfg->timeouts.client_header_ms), &c->timeout, on_header_timeout);
    start_reading(c);
}

/* ---- HTTP/2: the connection carries an nghttp2 session ----------------------------------- */

static int h2_write(void *conn, uv_write_t *req, uv_buf_t *iov, unsigned n, uv_write_cb cb)
{
    sl_h1_conn_t *c = conn;
    if (c->flags & CONN_CLOSING)
        return SL_ECLOSED;
    return c->tls != NULL ? sl_tls_conn_write(c->tls, req, iov, n, cb)
                          : sl_stream_write((uv_stream_t *)&c->tcp, req, iov, n, cb);
}

static void h2_close(void *conn)
{
    conn_close(conn);
}

static void h2_active(void *conn, bool active)
{
    sl_h1_conn_t *c = conn;
    if (c->worker->metrics == NULL || active == ((c->flags & CONN_COUNTED_ACTIVE) != 0) || (c->flags & CONN_CLOSING))
        return;
    c->flags ^= CONN_COUNTED_ACTIVE;
    sl_metrics_connection_active(c->worker->metrics, active);
}

static const sl_h2_transport_t h2_transport = {.write = h2_write, .close = h2_close, .active = h2_active};

/* Hands the connection to an HTTP/2 session; bytes already read go to it. Non-zero when the
 * connection was closed instead. */
static int conn_start_h2(sl_h1_conn_t *c)
{
    sl_h1_worker_t *hw = c->worker->h1;
    if (hw->draining) {
        conn_close(c);
        return -1;
    }
    if (hw->h2w == NULL)
        hw->h2w = sl_h2_worker_create(c->worker);
    sl_h2_peer_t peer = {.client_port = c->peer_port, .client_family = c->peer_family, .tls_conn = c->tls};
    if (c->peer_family != 0) {
        format_peer(c, peer.client_ip);
        memcpy(peer.client_addr, c->peer_addr, c->peer_family == AF_INET ? 4 : 16);
    }
    if (sl_h2_session_create(hw->h2w, &h2_transport, c, &peer, &c->h2) != 0) {
        conn_close(c);
        return -1;
    }
    c->flags &= ~(CONN_H2C_OK | CONN_SAW_BYTES);
    sl_timeq_cancel(&c->timeout); /* the session keeps its own */
    if (c->rbuf != NULL && c->rbuf->len > c->rbuf->off)
        h2_feed(c);
    return 0;
}

/* Every byte read goes to the session at once: streams' bodies wait in their own buffers. */
static void h2_feed(sl_h1_conn_t *c)
{
    sl_buf_t *b = c->rbuf;
    if (b == NULL)
        return;
    size_t n = b->len - b->off;
    const char *p = b->data + b->off;
    b->off = b->len = 0;
    if (n > 0)
        sl_h2_session_recv(c->h2, p, n);
    if (c->rbuf == b) {
        c->rbuf = NULL;
        sl_buf_put(&c->worker->bufs, b);
    }
}

/* ---- request heads ---------------------------------------------------------------------- */

static void reply_parse_error(sl_h1_conn_t *c, int err)
{
    sl_h1_active_t *a = active_take_unparsed(c);
    a->x.cause_detail = sl_h1_error_reason(err);
    sl_reply_error(&a->x, sl_h1_error_cause(err), sl_h1_error_reason(err));
}

static void conn_process_one(sl_h1_conn_t *c);

static void conn_process(sl_h1_conn_t *c)
{
    /* A response finished synchronously inside conn_process_one may find the next pipelined
     * request already buffered; it is parsed here, in a loop, not by recursion. */
    sl_h1_worker_t *hw = c->worker->h1;
    if (hw->depth > 0) {
        c->flags |= CONN_PROCESS_PENDING;
        return;
    }
    do {
        c->flags &= ~CONN_PROCESS_PENDING;
        hw->depth++;
        conn_process_one(c);
        hw->depth--;
    } while ((c->flags & (CONN_PROCESS_PENDING | CONN_CLOSING)) == CONN_PROCESS_PENDING);
}

static void conn_process_one(sl_h1_conn_t *c)
{
    if (c->act != NULL || (c->flags & CONN_CLOSING))
        return;
    sl_buf_t *b = c->rbuf;
    if (b == NULL || b->off == b->len) {
        return;
    }
    if (c->flags & CONN_H2C_OK) {
        /* Prior knowledge (RFC 9113 §3.3): only as a connection's first bytes. */
        int m = sl_h2_preface_match(b->data + b->off, b->len - b->off);
        if (m == 0) {
            if (start_reading(c) > 0)
                c->flags |= CONN_PROCESS_PENDING;
            return;
        }
        c->flags &= ~CONN_H2C_OK;
        if (m == 1) {
            conn_start_h2(c);
            return;
        }
    }
    const sl_config_t *cfg = conn_cfg(c);
    if (!(c->flags & CONN_SAW_BYTES)) {
        /* The header timeout counts from a request's first byte (or from accept). */
        c->flags |= CONN_SAW_BYTES;
        sl_timeq_add(&c->worker->timeqs, timeq_for(c, cfg->timeouts.client_header_ms), &c->timeout, on_header_timeout);
    }
    sl_h1_limits_t limits = {
        .max_head_bytes = cfg->limits.max_header_bytes,
        .max_uri_bytes = cfg->limits.max_uri_bytes,
        .max_headers = MAX_HEADERS,
    };
    sl_h1_request_t req;
    sl_header_t hdrs[MAX_HEADERS];
    req.headers = hdrs;
    int r = sl_h1_parse_request(b->data + b->off, b->len - b->off, &req, &limits);
    if (r == SL_EINCOMPLETE) {
        if (b->len == b->cap) {
            if (b->off > 0) {
                sl_buf_compact(b);
            } else if (b->cap < MAX_HEAD_BUFFER) {
                grow_head_buffer(c);
            } else {
                reply_parse_error(c, SL_EH1_HEADER_TOO_LARGE);
                return;
            }
        }
        if (start_reading(c) > 0)
            c->flags |= CONN_PROCESS_PENDING; /* TLS had more of the head: parse again */
        return;
    }
    if (r < 0) {
        reply_parse_error(c, r);
        return;
    }
    sl_timeq_cancel(&c->timeout);
    c->flags &= ~CONN_SAW_BYTES;
    sl_h1_active_t *a = active_take(c);
    sl_exchange_t *x = &a->x;
    a->head_start = b->off;
    a->head_end = b->off + (size_t)r;
    b->off = a->head_end;
    memcpy(a->parsed, hdrs, req.nheaders * sizeof(sl_header_t));
    x->method = req.method_id;
    x->method_token = req.method;
    x->target = req.target;
    x->path = req.path;
    x->query = req.query;
    x->authority = req.host;
    x->host = sl_host_without_port(req.host);
    x->minor_version = req.minor_version;
    x->req_headers.items = a->parsed;
    x->req_headers.len = req.nheaders;
    x->req_headers.cap = req.nheaders; /* any addition copies into the arena */
    x->keep_alive = req.keep_alive;
    x->expect_continue = req.expect_continue;
    switch (req.body) {
    case SL_H1_BODY_LENGTH:
        x->req_body_kind = req.content_length ? SL_BODY_LENGTH : SL_BODY_NONE;
        x->req_content_length = req.content_length;
        a->body_remaining = req.content_length;
        break;
    case SL_H1_BODY_CHUNKED:
        x->req_body_kind = SL_BODY_STREAM;
        sl_h1_chunked_init(&a->chunked);
        break;
    default:
        x->req_body_kind = SL_BODY_NONE;
        break;
    }
    x->bytes_in = (uint64_t)r;
    if (!x->keep_alive || c->worker->h1->draining)
        c->flags |= CONN_CLOSE_AFTER;
    const sl_header_t *rid = sl_headers_find(&x->req_headers, SL_STR_LIT("X-Request-Id"));
    if (rid != NULL && sl_request_id_valid(rid->value)) {
        x->request_id = rid->value;
    } else {
        char *id = sl_arena_alloc(&x->arena, 33);
        sl_request_id_generate(id);
        x->request_id = (sl_str_t){id, 32};
    }
    a->max_body = cfg->limits.max_body_bytes;
    if (x->req_body_kind == SL_BODY_LENGTH && a->max_body && x->req_content_length > a->max_body) {
        /* Refuse before reading a byte of it; the connection closes since the body is unread. */
        c->flags |= CONN_CLOSE_AFTER;
        sl_reply_error(x, SL_CAUSE_REQUEST_TOO_LARGE, NULL);
        return;
    }
    sl_pipeline_process(x);
}

/* ---- request body ----------------------------------------------------------------------- */

/* Waits for more body bytes; true when some are already in rbuf (TLS held them). */
static bool body_need_more(sl_h1_conn_t *c)
{
    sl_buf_t *b = c->rbuf;
    sl_h1_active_t *a = c->act;
    if (b->off == b->len) {
        /* Everything after the head was consumed: reuse that space for the next read. */
        b->off = b->len = a->head_end;
    }
    if (b->len == b->cap && b->off > a->head_end) {
        size_t n = b->len - b->off;
        memmove(b->data + a->head_end, b->data + b->off, n);
        b->off = a->head_end;
        b->len = a->head_end + n;
    }
    const sl_config_t *cfg = a->x.snap->cfg;
    sl_timeq_add(&c->worker->timeqs, timeq_for(c, cfg->timeouts.client_body_ms), &c->timeout, on_body_timeout);
    return start_reading(c) > 0;
}

static void body_fail(sl_h1_conn_t *c, enum sl_cause cause, int err)
{
    sl_h1_active_t *a = c->act;
    a->body_done = true;
    a->x.cause = cause;
    /* A framing error inside the body is named like one in the head (docs/http1.md): the reason
     * is static text, never request bytes, so it may also be the answer's message. */
    if (cause == SL_CAUSE_BAD_REQUEST)
        a->x.cause_detail = sl_h1_error_reason(err);
    c->flags |= CONN_CLOSE_AFTER;
    sl_timeq_cancel(&c->timeout);
    a->body_cb(&a->x, err, NULL, 0);
}

/* Tunnel bytes, one slice per ack like a body; the space after the request head is reused once
 * a slice is acked, so a client writing faster than the upstream reads fills one buffer and
 * then is not read (backpressure). No timeout here: the handler has the tunnel's idle one. */
static void tunnel_deliver(sl_h1_conn_t *c)
{
    sl_h1_active_t *a = c->act;
    while (c->act == a && !a->body_wait_ack && !a->body_done && !(c->flags & CONN_CLOSING)) {
        sl_buf_t *b = c->rbuf;
        size_t avail = b->len - b->off;
        if (avail == 0) {
            b->off = b->len = a->head_end;
            if (!(c->flags & CONN_PEER_EOF) && c->tls != NULL && (c->flags & CONN_TLS_READY)) {
                /* tls_fill stops when TLS holds no input, so a close_notify that came with the
                 * last bytes is already consumed: ask TLS directly, or the half-close would wait
                 * for a TCP FIN that a TLS half-close does not send. */
                int n = sl_tls_conn_read(c->tls, b->data + b->len, b->cap - b->len);
                if (n > 0) {
                    b->len += (size_t)n;
                    continue;
                }
                if (n == SL_ECLOSED) {
                    peer_half_closed(c);
                } else if (n < 0) {
                    sl_timeq_add_at(&c->worker->timeqs, &c->timeout, 0, on_tls_dead);
                    break;
                }
            }
            if (!(c->flags & CONN_PEER_EOF) && start_reading(c) > 0)
                continue;
            if (c->flags & CONN_PEER_EOF) {
                a->body_done = true;
                a->body_cb(&a->x, 0, NULL, 0);
            }
            break;
        }
        a->x.bytes_in += avail;
        a->body_ack_to = b->off + avail;
        a->body_wait_ack = true;
        a->body_cb(&a->x, 0, b->data + b->off, avail);
    }
}

static void body_deliver(sl_h1_conn_t *c)
{
    sl_h1_active_t *a = c->act;
    if (a->body_delivering)
        return; /* a resume from inside the callback: the loop below continues */
    a->body_delivering = true;
    if (a->tunnel) {
        tunnel_deliver(c);
        if (c->act == a)
            a->body_delivering = false;
        return;
    }
    while (c->act == a && !a->body_wait_ack && !a->body_done && !(c->flags & CONN_CLOSING)) {
        sl_buf_t *b = c->rbuf;
        size_t avail = b->len - b->off;
        const char *p = b->data + b->off;
        if (a->x.req_body_kind == SL_BODY_LENGTH) {
            if (a->body_remaining == 0) {
                a->body_done = true;
                sl_timeq_cancel(&c->timeout);
                a->body_cb(&a->x, 0, NULL, 0);
                break;
            }
            if (avail == 0) {
                if (body_need_more(c))
                    continue;
                break;
            }
            size_t n = avail < a->body_remaining ? avail : (size_t)a->body_remaining;
            a->body_remaining -= n;
            a->body_received += n;
            a->x.bytes_in += n;
            a->body_ack_to = b->off + n;
            a->body_wait_ack = true;
            a->body_cb(&a->x, 0, p, n);
            continue;
        }
        /* chunked */
        if (avail == 0) {
            if (body_need_more(c))
                continue;
            break;
        }
        size_t consumed = 0;
        sl_str_t out = SL_STR_NULL;
        int r = sl_h1_chunked_decode(&a->chunked, p, avail, &consumed, &out);
        if (r < 0) {
            body_fail(c, SL_CAUSE_BAD_REQUEST, r);
            break;
        }
        a->x.bytes_in += consumed;
        if (r == SL_H1_CHUNK_NEED_MORE) {
            b->off += consumed;
            if (body_need_more(c))
                continue;
            break;
        }
        if (r == SL_H1_CHUNK_TRAILER) {
            /* Trailers are not forwarded yet (docs/http1.md); the fields were validated. */
            b->off += consumed;
            continue;
        }
        if (r == SL_H1_CHUNK_DONE) {
            b->off += consumed;
            a->body_done = true;
            sl_timeq_cancel(&c->timeout);
            a->body_cb(&a->x, 0, NULL, 0);
            break;
        }
        a->body_received += out.len;
        if (a->max_body && a->body_received > a->max_body) {
            b->off += consumed;
            body_fail(c, SL_CAUSE_REQUEST_TOO_LARGE, SL_ETOOBIG);
            break;
        }
        a->body_ack_to = b->off + consumed;
        a->body_wait_ack = true;
        a->body_cb(&a->x, 0, out.ptr, out.len);
    }
    if (c->act == a)
        a->body_delivering = false;
}

/* A small write that must go out now (100 Continue): 0, or non-zero for a dead peer. On TLS
 * a full socket queues it inside TLS, ahead of anything written later. */
static int conn_write_small(sl_h1_conn_t *c, uv_buf_t *b)
{
    if (c->tls != NULL)
        return sl_tls_conn_write(c->tls, NULL, b, 1, NULL) < 0;
    /* A fresh socket's send buffer cannot be full; treat a short write as a dead peer. */
    return uv_try_write((uv_stream_t *)&c->tcp, b, 1) != (int)b->len;
}

static void h1_body_start(sl_exchange_t *x, sl_body_cb cb)
{
    sl_h1_active_t *a = x->down_ctx;
    sl_h1_conn_t *c = a->conn;
    a->body_cb = cb;
    a->body_started = true;
    if (a->tunnel) {
        body_deliver(c);
        return;
    }
    if (x->req_body_kind == SL_BODY_NONE) {
        a->body_done = true;
        cb(x, 0, NULL, 0);
        return;
    }
    if (x->expect_continue && !a->continue_sent && c->rbuf->off == c->rbuf->len && x->minor_version >= 1) {
        /* RFC 9110 §10.1.1: the client waits for this before sending the body. */
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        uv_buf_t b = uv_buf_init((char *)cont, sizeof(cont) - 1);
        a->continue_sent = true;
        if (conn_write_small(c, &b) != 0) {
            body_fail(c, SL_CAUSE_NONE, SL_ECLOSED);
            return;
        }
    }
    body_deliver(c);
}

static void h1_body_resume(sl_exchange_t *x)
{
    sl_h1_active_t *a = x->down_ctx;
    sl_h1_conn_t *c = a->conn;
    if (!a->body_wait_ack)
        return;
    a->body_wait_ack = false;
    c->rbuf->off = a->body_ack_to;
    body_deliver(c);
}

/* ---- response ---------------------------------------------------------------------------- */

static const char *reason_phrase(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 101:
        return "Switching Protocols";
    case 103:
        return "Early Hints";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 206:
        return "Partial Content";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 303:
        return "See Other";
    case 304:
        return "Not Modified";
    case 307:
        return "Temporary Redirect";
    case 308:
        return "Permanent Redirect";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 499:
        return "Client Closed Request";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return "Unknown";
    }
}

static int h1_send_head(sl_exchange_t *x)
{
    sl_h1_active_t *a = x->down_ctx;
    sl_h1_conn_t *c = a->conn;
    SL_BUG_ON(x->head_sent);
    x->head_sent = true;
    sl_pipeline_response_headers(x);
    int st = x->status;
    bool bodiless_status = (st >= 100 && st < 200) || st == 204 || st == 304;
    a->resp_no_body = bodiless_status || x->method == SL_METHOD_HEAD;
    if (c->worker->h1->draining)
        c->flags |= CONN_CLOSE_AFTER;
    const char *framing = NULL;
    char clen[48];
    if (!bodiless_status) {
        if (x->resp_body_kind == SL_BODY_LENGTH || x->resp_body_kind == SL_BODY_NONE) {
            uint64_t n = x->resp_body_kind == SL_BODY_LENGTH ? x->resp_content_length : 0;
            char *e = sl_put(clen, "Content-Length: ", 16);
            e = sl_put_u64(e, n);
            e = sl_put(e, "\r\n", 3);
            framing = clen;
        } else if (x->minor_version >= 1) {
            if (x->method != SL_METHOD_HEAD) {
                framing = "Transfer-Encoding: chunked\r\n";
                a->resp_chunked = true;
            }
        } else {
            /* HTTP/1.0 has no chunked coding: the end of the body is the end of the connection. */
            c->flags |= CONN_CLOSE_AFTER;
        }
    }
    bool close_after = (c->flags & CONN_CLOSE_AFTER) != 0;
    sl_str_t date = sl_worker_http_date(c->worker);
    const char *reason = reason_phrase(st);
    size_t size = 64 + strlen(reason) + 48 + date.len + 48 + x->request_id.len + 32 + 24;
    bool have_date = false;
    for (size_t i = 0; i < x->resp_headers.len; i++) {
        size += x->resp_headers.items[i].name.len + x->resp_headers.items[i].value.len + 4;
        if (!have_date && sl_str_caseeq(x->resp_headers.items[i].name, SL_STR_LIT("Date")))
            have_date = true;
    }
    char *head = sl_arena_alloc(&x->arena, size);
    char *p = sl_put(head, "HTTP/1.1 ", 9);
    p = sl_put_u64(p, (uint64_t)st);
    *p++ = ' ';
    p = sl_put(p, reason, strlen(reason));
    p = sl_put(p, "\r\n", 2);
    if (!have_date) {
        p = sl_put(p, "Date: ", 6);
        p = sl_put(p, date.ptr, date.len);
        p = sl_put(p, "\r\n", 2);
    }
    for (size_t i = 0; i < x->resp_headers.len; i++) {
        const sl_header_t *h = &x->resp_headers.items[i];
        /* Ours goes last: an upstream's echo of it (or an id of its own) would make two, and
         * the one the client keeps must be the one in our log line and error bodies. */
        if (x->request_id.len && h->name.len == 12 && sl_str_caseeq(h->name, SL_STR_LIT("X-Request-Id")))
            continue;
        p = sl_put(p, h->name.ptr, h->name.len);
        p = sl_put(p, ": ", 2);
        p = sl_put(p, h->value.ptr, h->value.len);
        p = sl_put(p, "\r\n", 2);
    }
    if (framing)
        p = sl_put(p, framing, strlen(framing));
    if (x->request_id.len) {
        p = sl_put(p, "X-Request-Id: ", 14);
        p = sl_put(p, x->request_id.ptr, x->request_id.len);
        p = sl_put(p, "\r\n", 2);
    }
    if (a->tunnel)
        p = sl_put(p, "Connection: upgrade\r\n", 21);
    else if (close_after)
        p = sl_put(p, "Connection: close\r\n", 19);
    else if (x->minor_version == 0)
        p = sl_put(p, "Connection: keep-alive\r\n", 24);
    p = sl_put(p, "\r\n", 2);
    a->head = head;
    a->head_len = (size_t)(p - head);
    a->head_pending = true;
    return 0;
}

static void on_write_done(uv_write_t *req, int status);

static size_t iov_total(const uv_buf_t *iov, unsigned n)
{
    size_t t = 0;
    for (unsigned i = 0; i < n; i++)
        t += iov[i].len;
    return t;
}

/* sl_stream_write's contract; the bytes count towards the log, and a queued remainder arms
 * the send timeout (a client that stops reading is dropped, not waited for). */
static int conn_write(sl_h1_conn_t *c, uv_buf_t *iov, unsigned n)
{
    sl_h1_active_t *a = c->act;
    a->x.bytes_out += iov_total(iov, n);
    int r = c->tls != NULL ? sl_tls_conn_write(c->tls, &a->wreq, iov, n, on_write_done)
                           : sl_stream_write((uv_stream_t *)&c->tcp, &a->wreq, iov, n, on_write_done);
    if (r == 0) {
        a->writing = true;
        if (!a->tunnel)
            sl_timeq_add(&c->worker->timeqs, timeq_for(c, a->x.snap->cfg->timeouts.client_idle_ms), &c->timeout,
                         on_send_timeout);
    }
    return r;
}

static int h1_send_body(sl_exchange_t *x, const sl_str_t *parts, size_t nparts, sl_write_cb cb)
{
    sl_h1_active_t *a = x->down_ctx;
    sl_h1_conn_t *c = a->conn;
    SL_BUG_ON(a->writing);
    if (c->flags & CONN_CLOSING)
        return SL_ECLOSED;
    unsigned n = 0;
    if (a->head_pending) {
        a->iov[n++] = uv_buf_init(a->head, (unsigned)a->head_len);
        a->head_pending = false;
    }
    if (!a->resp_no_body || a->tunnel) {
        size_t total = 0;
        for (size_t i = 0; i < nparts; i++)
            total += parts[i].len;
        if (total > 0) {
            if (a->resp_chunked) {
                int len = snprintf(a->chunk_hdr, sizeof(a->chunk_hdr), "%zx\r\n", total);
                a->iov[n++] = uv_buf_init(a->chunk_hdr, (unsigned)len);
            }
            for (size_t i = 0; i < nparts && n < SL_ARRAY_SIZE(a->iov) - 1; i++)
                if (parts[i].len)
                    a->iov[n++] = uv_buf_init((char *)parts[i].ptr, (unsigned)parts[i].len);
            if (a->resp_chunked)
                a->iov[n++] = uv_buf_init("\r\n", 2);
        }
    }
    if (n == 0)
        return 1;
    a->write_cb = cb;
    int r = conn_write(c, a->iov, n);
    if (r != 0)
        a->write_cb = NULL; /* on error the caller aborts the exchange */
    return r;
}

static void finish_written(sl_h1_conn_t *c)
{
    sl_h1_active_t *a = c->act;
    a->finished = true;
    sl_pipeline_log(&a->x);
    exchange_end(c);
}

/* "0", the trailer fields, and the empty line (RFC 9112 §7.1.2), in the arena. Fields that
 * cannot be trailers (framing, routing, auth: RFC 9110 §6.5.1) were never put there. */
static uv_buf_t last_chunk_with_trailers(sl_exchange_t *x)
{
    size_t size = 7;
    for (size_t i = 0; i < x->resp_trailers.len; i++)
        size += x->resp_trailers.items[i].name.len + x->resp_trailers.items[i].value.len + 4;
    char *buf = sl_arena_alloc(&x->arena, size), *p = buf;
    p = sl_put(p, "0\r\n", 3);
    for (size_t i = 0; i < x->resp_trailers.len; i++) {
        const sl_header_t *h = &x->resp_trailers.items[i];
        p = sl_put(p, h->name.ptr, h->name.len);
        p = sl_put(p, ": ", 2);
        p = sl_put(p, h->value.ptr, h->value.len);
        p = sl_put(p, "\r\n", 2);
    }
    p = sl_put(p, "\r\n", 2);
    return uv_buf_init(buf, (unsigned)(p - buf));
}

static void h1_finish(sl_exchange_t *x)
{
    sl_h1_active_t *a = x->down_ctx;
    sl_h1_conn_t *c = a->conn;
    SL_BUG_ON(a->writing);
    if (c->flags & CONN_CLOSING)
        return;
    if (!x->head_sent)
        h1_send_head(x);
    unsigned n = 0;
    if (a->head_pending) {
        a->iov[n++] = uv_buf_init(a->head, (unsigned)a->head_len);
        a->head_pending = false;
    }
    if (a->resp_chunked && !a->resp_no_body) {
        if (x->resp_trailers.len == 0)
            a->iov[n++] = uv_buf_init("0\r\n\r\n", 5);
        else
            a->iov[n++] = last_chunk_with_trailers(x);
    }
    a->finished = true; /* no abort from here on: only the write remains */
    if (n == 0) {
        finish_written(c);
        return;
    }
    a->write_cb = NULL;
    int r = conn_write(c, a->iov, n);
    if (r == 1) {
        finish_written(c);
    } else if (r < 0) {
        sl_pipeline_log(&a->x);
        conn_close(c);
    }
}

static void on_write_done(uv_write_t *req, int status)
{
    sl_h1_conn_t *c = req->data;
    sl_h1_active_t *a = c->act;
    a->writing = false;
    if (c->flags & CONN_CLOSING) {
        /* The connection died while this write was queued; release what conn_close left. */
        if (a->finished && a->write_cb == NULL)
            sl_pipeline_log(&a->x);
        active_release(c);
        return;
    }
    sl_timeq_cancel(&c->timeout);
    if (status < 0) {
        sl_write_cb cb = a->write_cb;
        a->write_cb = NULL;
        if (cb)
            cb(&a->x, status); /* the handler aborts the exchange */
        else
            sl_pipeline_log(&a->x); /* the final write of a finished exchange */
        conn_close(c);
        return;
    }
    if (a->finished && a->write_cb == NULL) {
        finish_written(c);
        return;
    }
    sl_write_cb cb = a->write_cb;
    a->write_cb = NULL;
    if (cb)
        cb(&a->x, 0);
}

static void h1_abort(sl_exchange_t *x)
{
    sl_h1_active_t *a = x->down_ctx;
    sl_h1_conn_t *c = a->conn;
    a->x.on_abort = NULL;
    if (!a->finished) {
        a->finished = true;
        sl_pipeline_log(x);
    }
    conn_close(c);
}

static int h1_send_informational(sl_exchange_t *x, int status, const sl_header_t *h, size_t n)
{
    sl_h1_active_t *a = x->down_ctx;
    sl_h1_conn_t *c = a->conn;
    if (x->minor_version == 0 || status == 101)
        return 0; /* HTTP/1.0 clients get no interim responses (RFC 9110 §15.2) */
    if (status == 100 && a->continue_sent)
        return 0;
    size_t size = 64;
    for (size_t i = 0; i < n; i++)
        size += h[i].name.len + h[i].value.len + 4;
    char *buf = sl_arena_alloc(&x->arena, size);
    char *p = buf + snprintf(buf, 64, "HTTP/1.1 %d %s\r\n", status, reason_phrase(status));
    for (size_t i = 0; i < n; i++) {
        p = sl_put(p, h[i].name.ptr, h[i].name.len);
        p = sl_put(p, ": ", 2);
        p = sl_put(p, h[i].value.ptr, h[i].value.len);
        p = sl_put(p, "\r\n", 2);
    }
    p = sl_put(p, "\r\n", 2);
    if (status == 100)
        a->continue_sent = true;
    uv_buf_t b = uv_buf_init(buf, (unsigned)(p - buf));
    if (c->tls != NULL) {
        /* Encrypted and queued by TLS if the socket is full; nobody waits for it. */
        int w = sl_tls_conn_write(c->tls, NULL, &b, 1, NULL);
        return w < 0 ? w : 0;
    }
    int w = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    /* Interim responses are small and precede the final one; a short write means a client that
     * does not read at all, which the final response's send timeout will deal with. */
    return w < 0 && w != UV_EAGAIN ? w : 0;
}

static int h1_tunnel_start(sl_exchange_t *x)
{
    sl_h1_active_t *a = x->down_ctx;
    sl_h1_conn_t *c = a->conn;
    if (c->flags & CONN_CLOSING)
        return SL_ECLOSED;
    /* Tunnel bytes use the buffer after the request head: a head filling it leaves no room. */
    if (x->head_sent || c->rbuf == NULL || c->rbuf->cap - a->head_end < 4096)
        return SL_ETOOBIG;
    a->tunnel = true;
    c->flags |= CONN_CLOSE_AFTER;
    return h1_send_head(x);
}

static int h1_tunnel_shutdown(sl_exchange_t *x)
{
    sl_h1_active_t *a = x->down_ctx;
    sl_h1_conn_t *c = a->conn;
    SL_BUG_ON(a->writing || !a->tunnel);
    if (c->flags & CONN_CLOSING)
        return SL_ECLOSED;
    if (c->tls != NULL) {
        sl_tls_conn_shutdown(c->tls); /* close_notify: TLS's own half-close */
        return 0;
    }
    uv_os_fd_t fd;
    if (uv_fileno((uv_handle_t *)&c->tcp, &fd) != 0 || shutdown(fd, SHUT_WR) != 0)
        return SL_ECLOSED;
    return 0;
}

static const sl_downstream_ops_t h1_ops = {
    .send_head = h1_send_head,
    .send_body = h1_send_body,
    .finish = h1_finish,
    .abort = h1_abort,
    .body_start = h1_body_start,
    .body_resume = h1_body_resume,
    .send_informational = h1_send_informational,
    .tunnel_start = h1_tunnel_start,
    .tunnel_shutdown = h1_tunnel_shutdown,
};

/* ---- end of an exchange: keep-alive or close ------------------------------------------- */

static bool skip_unread_body(sl_h1_conn_t *c)
{
    /* The answer came before the body was read (an error, a respond route). Keep the
     * connection only if the rest of the body is already buffered and can be skipped. */
    sl_h1_active_t *a = c->act;
    sl_buf_t *b = c->rbuf;
    sl_exchange_t *x = &a->x;
    if (x->req_body_kind == SL_BODY_NONE || a->body_done)
        return !a->body_started || a->body_done;
    if (a->body_wait_ack)
        b->off = a->body_ack_to;
    if (x->req_body_kind == SL_BODY_LENGTH) {
        if (b->len - b->off < a->body_remaining)
            return false;
        b->off += a->body_remaining;
        return true;
    }
    for (;;) {
        size_t consumed = 0;
        sl_str_t out;
        int r = sl_h1_chunked_decode(&a->chunked, b->data + b->off, b->len - b->off, &consumed, &out);
        b->off += consumed;
        if (r == SL_H1_CHUNK_DONE)
            return true;
        if (r < 0 || r == SL_H1_CHUNK_NEED_MORE)
            return false;
    }
}

static void exchange_end(sl_h1_conn_t *c)
{
    if (!skip_unread_body(c))
        c->flags |= CONN_CLOSE_AFTER;
    bool close_after = (c->flags & (CONN_CLOSE_AFTER | CONN_PEER_EOF)) != 0;
    const sl_config_t *cfg = c->act->x.snap->cfg;
    uint64_t idle_ms = cfg->timeouts.client_idle_ms;
    active_release(c);
    if (close_after) {
        conn_close(c);
        return;
    }
    sl_buf_t *b = c->rbuf;
    if (b != NULL) {
        if (b->off == b->len) {
            sl_buf_put(&c->worker->bufs, b);
            c->rbuf = NULL;
        } else {
            sl_buf_compact(b);
        }
    }
    sl_timeq_add(&c->worker->timeqs, timeq_for(c, idle_ms), &c->timeout, on_idle_timeout);
    start_reading(c);
    if (c->rbuf != NULL)
        conn_process(c); /* a pipelined request is already here */
}

/* ---- drain ----------------------------------------------------------------------------- */

void sl_h1_server_drain(sl_worker_t *w, void (*on_empty)(sl_worker_t *w))
{
    sl_h1_worker_t *hw = w->h1;
    hw->draining = true;
    hw->on_empty = on_empty;
    sl_h1_conn_t *c = hw->conns;
    while (c != NULL) {
        sl_h1_conn_t *next = c->next;
        if (c->h2 != NULL) {
            sl_h2_session_drain(c->h2); /* GOAWAY: open streams finish, then it closes */
        } else {
            c->flags |= CONN_CLOSE_AFTER;
            /* An idle keep-alive connection may already carry a request on the wire, and
             * HTTP/1.1 has no GOAWAY to tell the client: closing it now would make the client
             * retry. It gets a short grace instead (a request that arrives is answered with
             * Connection: close); one mid-head keeps its header timeout. */
            if (c->act == NULL && !(c->flags & CONN_SAW_BYTES))
                sl_timeq_add(&w->timeqs, timeq_for(c, DRAIN_IDLE_GRACE_MS), &c->timeout, on_idle_timeout);
        }
        c = next;
    }
    if (hw->nconns == 0 && hw->on_empty) {
        hw->on_empty = NULL;
        h2_worker_release(hw);
        on_empty(w);
    }
}

void sl_h1_server_close_all(sl_worker_t *w)
{
    sl_h1_conn_t *c = w->h1->conns;
    while (c != NULL) {
        sl_h1_conn_t *next = c->next;
        conn_close(c);
        c = next;
    }
}
