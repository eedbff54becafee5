/*
 * HTTP/2 server sessions (h2.h): nghttp2 does the framing, HPACK, stream states and flow-control
 * accounting; this file maps streams onto exchanges and decides when bytes move.
 *
 * Writes are batched: whatever wants to send (a response head, a body slice, a WINDOW_UPDATE)
 * only marks the session; the worker's idle handle flushes every marked session once per loop
 * turn, so the frames of many streams leave in one write, and nghttp2_session_mem_send never
 * runs inside one of its own callbacks or a handler's call.
 */
#include "http2/h2.h"

#include <stdlib.h>
#include <string.h>

#include <nghttp2/nghttp2.h>

#include "common/arena.h"
#include "common/bug.h"
#include "common/error.h"
#include "common/log.h"
#include "common/str.h"
#include "common/time.h"
#include "config/config.h"
#include "http/exchange.h"
#include "http/reply.h"
#include "net/buf.h"
#include "net/timeq.h"
#include "pipeline/pipeline.h"
#include "pipeline/snapshot.h"

/* Our stream window: a request body is buffered up to this much per stream before the client
 * must wait for the handler (WINDOW_UPDATE follows consumption). 64 KiB keeps an upload moving
 * at 64 KiB per round trip while bounding a stalled stream's memory. */
#define STREAM_WINDOW (64 * 1024)
/* The connection window: several streams uploading at once. */
#define CONN_WINDOW (1024 * 1024)
/* One write: what mem_send produces is gathered up to this before it goes to the socket. */
#define OUT_BUFFER (64 * 1024)
#define MAX_PARTS  16
/* Free-list bounds per worker. */
#define MAX_FREE_STREAMS 1024
#define MAX_FREE_BUFS    64
/* A client that resets more streams than it lets finish is flooding (rapid reset): past this
 * many resets with fewer than RESET_RATIO completions per reset, GOAWAY. */
/* Between the drain's shutdown notice and its final GOAWAY. */
#define DRAIN_GRACE_MS 1000
#define RESET_FLOOR    200
#define RESET_RATIO    1

typedef struct h2_stream h2_stream_t;

struct sl_h2_worker {
    sl_worker_t *w;
    uv_idle_t flush_idle;
    bool idle_active;
    sl_h2_session_t *flush_head; /* sessions to flush this loop turn (singly linked) */
    h2_stream_t *free_streams;
    size_t nfree_streams;
    sl_buf_pool_t bufs; /* STREAM_WINDOW / OUT_BUFFER bytes each (the same size) */
};

struct h2_stream {
    sl_exchange_t x;
    sl_h2_session_t *s;
    h2_stream_t *next_free;
    h2_stream_t *prev, *next; /* the session's streams with an exchange */
    h2_stream_t *ready_next;  /* the session's list of streams whose body slice left */
    sl_timeq_entry_t body_timeout;
    int32_t id;
    size_t header_bytes;
    bool too_large;   /* the header list passed limits.max_header_bytes */
    bool dispatched;  /* handed to the pipeline */
    bool req_eos;     /* the client ended the stream (END_STREAM seen) */
    bool closed;      /* nghttp2 closed the stream */
    bool done;        /* the handler finished or aborted: it will not touch the exchange again */
    bool logged;      /* the log phase ran */
    bool end_on_wire; /* our END_STREAM was sent */
    bool no_body;     /* HEAD, 1xx, 204, 304: the head ends the stream */
    bool deferred;    /* the data source said DEFERRED: resume when there is more */
    bool in_ready;
    /* request body, within the stream window */
    sl_buf_t *body;
    size_t body_off;       /* delivered and acknowledged up to here */
    size_t body_delivered; /* bytes of the slice the handler holds (until body_resume) */
    uint64_t body_received;
    uint64_t max_body;
    sl_body_cb body_cb;
    bool body_started;
    bool body_done;
    enum sl_cause body_error; /* a failure seen before the handler started reading */
    /* response body slice */
    sl_str_t parts[MAX_PARTS];
    size_t nparts, part_i, part_off;
    sl_write_cb write_cb;
};

enum {
    SESS_CLOSING = 1 << 0,     /* the connection is closing: no more I/O */
    SESS_IN_FLUSH = 1 << 1,    /* mem_send / ready callbacks on the stack */
    SESS_QUEUED = 1 << 2,      /* in the worker's flush list */
    SESS_DRAINING = 1 << 3,    /* GOAWAY sent: close when the last stream ends */
    SESS_CLOSE_AFTER = 1 << 4, /* close once the output is written (fatal error, GOAWAY) */
    SESS_ACTIVE = 1 << 5,      /* told the connection it has streams */
    SESS_GOAWAY = 1 << 6,      /* the drain's final GOAWAY is queued: no new stream from here */
};

struct sl_h2_session {
    nghttp2_session *ng;
    sl_h2_worker_t *hw;
    const sl_h2_transport_t *t;
    void *conn;
    sl_h2_peer_t peer;
    uint32_t flags;
    sl_h2_session_t *flush_next;
    uv_write_t wreq;
    bool writing;
    sl_buf_t *out; /* gathered output of this flush; NULL between flushes */
    uv_buf_t iov[2];
    h2_stream_t *ready;   /* body slices that went into the current write */
    h2_stream_t *streams; /* with an exchange, open or finishing */
    size_t nstreams;
    sl_timeq_entry_t timeout; /* idle (no stream) or send (a write pending) */
    sl_timeq_entry_t drain_timer;
    uint64_t resets, completed;
};

static const sl_downstream_ops_t h2_ops;
static void session_kick(sl_h2_session_t *s);
static void session_close(sl_h2_session_t *s);
static void stream_release(h2_stream_t *st);
static void body_deliver(h2_stream_t *st);

static const sl_config_t *session_cfg(const sl_h2_session_t *s)
{
    return s->hw->w->snap->cfg;
}

/* ---- per worker ----------------------------------------------------------------------------- */

static void on_flush_idle(uv_idle_t *h);

sl_h2_worker_t *sl_h2_worker_create(sl_worker_t *w)
{
    sl_h2_worker_t *hw = sl_xcalloc(1, sizeof(*hw));
    hw->w = w;
    uv_idle_init(&w->loop, &hw->flush_idle);
    hw->flush_idle.data = hw;
    sl_buf_pool_init(&hw->bufs, STREAM_WINDOW, MAX_FREE_BUFS);
    return hw;
}

static void free_worker(uv_handle_t *h)
{
    free(h->data);
}

void sl_h2_worker_destroy(sl_h2_worker_t *hw)
{
    if (hw == NULL)
        return;
    while (hw->free_streams != NULL) {
        h2_stream_t *st = hw->free_streams;
        hw->free_streams = st->next_free;
        sl_arena_dispose(&st->x.arena);
        free(st);
    }
    sl_buf_pool_dispose(&hw->bufs);
    uv_close((uv_handle_t *)&hw->flush_idle, free_worker);
}

int sl_h2_preface_match(const char *p, size_t n)
{
    static const char preface[] = NGHTTP2_CLIENT_MAGIC;
    size_t m = n < sizeof(preface) - 1 ? n : sizeof(preface) - 1;
    if (memcmp(p, preface, m) != 0)
        return -1;
    return m == sizeof(preface) - 1 ? 1 : 0;
}

/* ---- timeouts --------------------------------------------------------------------------------- */

static sl_timeq_t *timeq_for(sl_h2_session_t *s, uint64_t ms)
{
    return sl_timeqs_get(&s->hw->w->timeqs, ms);
}

static void on_session_timeout(sl_timeq_entry_t *e)
{
    /* Idle with no stream for client_idle, or a write the client has not taken for as long. */
    sl_h2_session_t *s = SL_CONTAINER_OF(e, sl_h2_session_t, timeout);
    if (s->writing || s->nstreams > 0) {
        session_close(s);
        return;
    }
    nghttp2_submit_goaway(s->ng, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(s->ng), NGHTTP2_NO_ERROR,
                          NULL, 0);
    s->flags |= SESS_CLOSE_AFTER;
    session_kick(s);
}

static void timeout_update(sl_h2_session_t *s)
{
    if (s->flags & SESS_CLOSING)
        return;
    const sl_config_t *cfg = session_cfg(s);
    if (s->writing || s->nstreams == 0)
        sl_timeq_add(&s->hw->w->timeqs, timeq_for(s, cfg->timeouts.client_idle_ms), &s->timeout, on_session_timeout);
    else
        sl_timeq_cancel(&s->timeout);
}

static void set_active(sl_h2_session_t *s, bool active)
{
    if (active == ((s->flags & SESS_ACTIVE) != 0))
        return;
    s->flags ^= SESS_ACTIVE;
    if (s->t->active)
        s->t->active(s->conn, active);
}

/* ---- output ----------------------------------------------------------------------------------- */

static void session_kick(sl_h2_session_t *s)
{
    if (s->flags & (SESS_CLOSING | SESS_QUEUED))
        return;
    s->flags |= SESS_QUEUED;
    sl_h2_worker_t *hw = s->hw;
    s->flush_next = hw->flush_head;
    hw->flush_head = s;
    if (!hw->idle_active) {
        hw->idle_active = true;
        uv_idle_start(&hw->flush_idle, on_flush_idle);
    }
}

static void session_unqueue(sl_h2_session_t *s)
{
    if (!(s->flags & SESS_QUEUED))
        return;
    s->flags &= ~SESS_QUEUED;
    for (sl_h2_session_t **p = &s->hw->flush_head; *p != NULL; p = &(*p)->flush_next) {
        if (*p == s) {
            *p = s->flush_next;
            break;
        }
    }
}

/* The body slices that left in the last completed write: their handlers may send more. */
static void ready_run(sl_h2_session_t *s)
{
    while (s->ready != NULL && !(s->flags & SESS_CLOSING)) {
        h2_stream_t *st = s->ready;
        s->ready = st->ready_next;
        st->in_ready = false;
        sl_write_cb cb = st->write_cb;
        st->write_cb = NULL;
        if (cb != NULL && !st->done)
            cb(&st->x, 0);
    }
}

static void session_flush(sl_h2_session_t *s);

static void on_written(uv_write_t *req, int status)
{
    sl_h2_session_t *s = req->data;
    s->writing = false;
    if (s->flags & SESS_CLOSING)
        return; /* cancelled by the close; destroy frees the buffer */
    sl_buf_put(&s->hw->bufs, s->out);
    s->out = NULL;
    if (status < 0) {
        session_close(s);
        return;
    }
    timeout_update(s);
    session_flush(s);
}

/* Gathers what nghttp2 wants to send into one buffer and writes it; repeats while writes
 * complete at once. Body slices consumed into a write are released to their handlers after it. */
static void session_flush(sl_h2_session_t *s)
{
    if (s->flags & (SESS_CLOSING | SESS_IN_FLUSH) || s->writing)
        return;
    s->flags |= SESS_IN_FLUSH;
    for (;;) {
        ready_run(s);
        if (s->flags & SESS_CLOSING)
            break;
        if (s->out == NULL)
            s->out = sl_buf_get(&s->hw->bufs);
        unsigned n;
        int rv = sl_h2_output_gather(s->ng, s->out, s->iov, &n);
        if (rv < 0) {
            sl_log_debug("h2: mem_send: %s", nghttp2_strerror(rv));
            s->flags &= ~SESS_IN_FLUSH;
            session_close(s);
            return;
        }
        if (n == 0) {
            /* Nothing to send. */
            sl_buf_put(&s->hw->bufs, s->out);
            s->out = NULL;
            if (s->ready != NULL)
                continue;
            break;
        }
        s->wreq.data = s;
        int r = s->t->write(s->conn, &s->wreq, s->iov, n, on_written);
        if (r < 0) {
            s->flags &= ~SESS_IN_FLUSH;
            session_close(s);
            return;
        }
        if (r == 0) {
            s->writing = true;
            timeout_update(s);
            break;
        }
    }
    s->flags &= ~SESS_IN_FLUSH;
    if (s->flags & SESS_CLOSING)
        return;
    if (!s->writing && !nghttp2_session_want_write(s->ng) &&
        ((s->flags & SESS_CLOSE_AFTER) || !nghttp2_session_want_read(s->ng) ||
         ((s->flags & SESS_GOAWAY) && s->nstreams == 0))) {
        session_close(s);
        return;
    }
    timeout_update(s);
}

static void on_flush_idle(uv_idle_t *h)
{
    sl_h2_worker_t *hw = h->data;
    while (hw->flush_head != NULL) {
        sl_h2_session_t *s = hw->flush_head;
        hw->flush_head = s->flush_next;
        s->flags &= ~SESS_QUEUED;
        session_flush(s);
    }
    if (hw->flush_head == NULL) {
        hw->idle_active = false;
        uv_idle_stop(&hw->flush_idle);
    }
}

/* ---- streams ---------------------------------------------------------------------------------- */

static h2_stream_t *stream_take(sl_h2_session_t *s, int32_t id)
{
    sl_h2_worker_t *hw = s->hw;
    h2_stream_t *st = hw->free_streams;
    if (st != NULL) {
        hw->free_streams = st->next_free;
        hw->nfree_streams--;
        sl_arena_t arena = st->x.arena;
        memset(st, 0, sizeof(*st));
        st->x.arena = arena;
    } else {
        st = sl_xcalloc(1, sizeof(*st));
        sl_arena_init(&st->x.arena, 4096);
    }
    st->s = s;
    st->id = id;
    sl_exchange_t *x = &st->x;
    x->worker = hw->w;
    x->down = &h2_ops;
    x->down_ctx = st;
    x->snap = sl_snapshot_ref(hw->w->snap);
    x->start_ns = sl_time_mono_ns();
    x->route_index = -1;
    x->upstream_connect_ns = -1;
    x->upstream_first_byte_ns = -1;
    x->minor_version = 2;
    x->keep_alive = true;
    memcpy(x->client_ip, s->peer.client_ip, sizeof(x->client_ip));
    x->client_port = s->peer.client_port;
    x->client_family = s->peer.client_family;
    memcpy(x->client_addr, s->peer.client_addr, sizeof(x->client_addr));
    x->client_tls = s->peer.tls_conn != NULL;
    x->tls_conn = s->peer.tls_conn;
    st->max_body = x->snap->cfg->limits.max_body_bytes;
    st->next = s->streams;
    if (s->streams != NULL)
        s->streams->prev = st;
    s->streams = st;
    s->nstreams++;
    set_active(s, true);
    timeout_update(s);
    return st;
}

static void stream_log(h2_stream_t *st)
{
    if (st->logged)
        return;
    st->logged = true;
    sl_pipeline_log(&st->x);
}

/* Back to the free list once nghttp2 is done with the stream and the handler with the exchange. */
static void stream_release(h2_stream_t *st)
{
    sl_h2_session_t *s = st->s;
    SL_BUG_ON(!st->done || !st->closed);
    stream_log(st);
    sl_timeq_cancel(&st->body_timeout);
    if (st->in_ready) {
        for (h2_stream_t **p = &s->ready; *p != NULL; p = &(*p)->ready_next) {
            if (*p == st) {
                *p = st->ready_next;
                break;
            }
        }
        st->in_ready = false;
    }
    sl_h2_worker_t *hw = s->hw;
    if (st->body != NULL) {
        /* Bytes that arrived and were never consumed still hold the connection's window. */
        size_t unread = st->body->len;
        if (unread > 0 && !(s->flags & SESS_CLOSING))
            nghttp2_session_consume_connection(s->ng, unread);
        sl_buf_put(&hw->bufs, st->body);
        st->body = NULL;
    }
    if (st->prev != NULL)
        st->prev->next = st->next;
    else
        s->streams = st->next;
    if (st->next != NULL)
        st->next->prev = st->prev;
    sl_snapshot_t *snap = st->x.snap;
    sl_arena_reset(&st->x.arena);
    sl_snapshot_unref(snap);
    s->nstreams--;
    if (s->nstreams == 0) {
        set_active(s, false);
        if (s->flags & SESS_GOAWAY)
            session_kick(s); /* the flush closes the drained connection */
    }
    timeout_update(s);
#ifndef SLUICE_SANITIZE
    if (hw->nfree_streams < MAX_FREE_STREAMS) {
        st->next_free = hw->free_streams;
        hw->free_streams = st;
        hw->nfree_streams++;
        return;
    }
#endif
    sl_arena_dispose(&st->x.arena);
    free(st);
}

/* The exchange cannot complete (client reset, connection gone): the handler lets go. */
static void stream_abort_exchange(h2_stream_t *st)
{
    if (st->done)
        return;
    st->done = true;
    st->write_cb = NULL;
    if (st->dispatched && st->x.on_abort != NULL) {
        void (*abort_cb)(sl_exchange_t *) = st->x.on_abort;
        st->x.on_abort = NULL;
        abort_cb(&st->x);
    } else if (st->body_cb != NULL && !st->body_done) {
        /* A handler reading the body with no abort hook of its own hears the client left. */
        st->body_done = true;
        st->body_cb(&st->x, SL_ECLOSED, NULL, 0);
    }
    if (st->x.status == 0)
        st->x.status = 499; /* client closed before a response: logged like nginx */
    stream_log(st);
}

/* ---- request heads ---------------------------------------------------------------------------- */

static int on_begin_headers(nghttp2_session *ng, const nghttp2_frame *frame, void *user)
{
    sl_h2_session_t *s = user;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    h2_stream_t *st = stream_take(s, frame->hd.stream_id);
    nghttp2_session_set_stream_user_data(ng, frame->hd.stream_id, st);
    return 0;
}

static int on_header(nghttp2_session *ng, const nghttp2_frame *frame, const uint8_t *name, size_t namelen,
                     const uint8_t *value, size_t valuelen, uint8_t flags, void *user)
{
    (void)flags;
    (void)user;
    h2_stream_t *st = nghttp2_session_get_stream_user_data(ng, frame->hd.stream_id);
    if (st == NULL || frame->hd.type != NGHTTP2_HEADERS)
        return 0;
    if (frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0; /* request trailers: validated by nghttp2, not forwarded (as on HTTP/1.1) */
    sl_exchange_t *x = &st->x;
    /* RFC 9113 §6.5.2's size: name + value + 32 per field, against the same limit as HTTP/1. */
    st->header_bytes += namelen + valuelen + 32;
    if (st->header_bytes > x->snap->cfg->limits.max_header_bytes) {
        st->too_large = true;
        return 0;
    }
    sl_str_t n = {(const char *)name, namelen};
    sl_str_t v = sl_arena_str_dup(&x->arena, (sl_str_t){(const char *)value, valuelen});
    if (namelen > 0 && name[0] == ':') {
        if (sl_str_eq(n, SL_STR_LIT(":method"))) {
            x->method_token = v;
            x->method = sl_method_from_str(v);
        } else if (sl_str_eq(n, SL_STR_LIT(":path"))) {
            x->target = v;
            const char *q = memchr(v.ptr, '?', v.len);
            x->path = q ? (sl_str_t){v.ptr, (size_t)(q - v.ptr)} : v;
            x->query = q ? (sl_str_t){q + 1, v.len - (size_t)(q - v.ptr) - 1} : (sl_str_t){v.ptr + v.len, 0};
        } else if (sl_str_eq(n, SL_STR_LIT(":authority"))) {
            x->authority = v;
        }
        return 0; /* :scheme: the listener says what it is */
    }
    if (sl_str_eq(n, SL_STR_LIT("host"))) {
        if (x->authority.len == 0)
            x->authority = v;
        return 0; /* :authority wins (RFC 9113 §8.3.1); the proxy sends it as Host */
    }
    if (sl_str_eq(n, SL_STR_LIT("cookie"))) {
        /* Split crumbs are joined with "; " for an HTTP/1.1 upstream (RFC 9113 §8.2.3). */
        for (size_t i = 0; i < x->req_headers.len; i++) {
            sl_header_t *h = &x->req_headers.items[i];
            if (sl_str_eq(h->name, SL_STR_LIT("cookie"))) {
                char *j = sl_arena_alloc(&x->arena, h->value.len + 2 + v.len);
                memcpy(j, h->value.ptr, h->value.len);
                memcpy(j + h->value.len, "; ", 2);
                memcpy(j + h->value.len + 2, v.ptr, v.len);
                h->value = (sl_str_t){j, h->value.len + 2 + v.len};
                return 0;
            }
        }
    }
    if (sl_str_eq(n, SL_STR_LIT("content-length"))) {
        unsigned long long cl;
        if (sl_str_to_u64(v, &cl)) {
            x->req_content_length = cl;
            x->req_body_kind = SL_BODY_LENGTH;
        }
    }
    sl_headers_add(&x->arena, &x->req_headers, sl_arena_str_dup(&x->arena, n), v);
    return 0;
}

static void stream_dispatch(h2_stream_t *st)
{
    sl_exchange_t *x = &st->x;
    st->dispatched = true;
    x->host = sl_host_without_port(x->authority);
    if (st->req_eos) {
        x->req_body_kind = SL_BODY_NONE;
        x->req_content_length = 0;
    } else if (x->req_body_kind != SL_BODY_LENGTH) {
        x->req_body_kind = SL_BODY_STREAM;
    } else if (x->req_content_length == 0) {
        x->req_body_kind = SL_BODY_NONE;
    }
    x->bytes_in = st->header_bytes;
    const sl_header_t *rid = sl_headers_find(&x->req_headers, SL_STR_LIT("x-request-id"));
    if (rid != NULL && sl_request_id_valid(rid->value)) {
        x->request_id = rid->value;
    } else {
        char *id = sl_arena_alloc(&x->arena, 33);
        sl_request_id_generate(id);
        x->request_id = (sl_str_t){id, 32};
    }
    if (x->method_token.len == 0)
        x->method_token = SL_STR_LIT("GET");
    if (st->too_large) {
        sl_reply_error(x, SL_CAUSE_HEADER_TOO_LARGE, NULL);
        return;
    }
    if (x->method == SL_METHOD_CONNECT) {
        /* No tunnels over HTTP/2 (RFC 8441's extended CONNECT is not offered). */
        sl_reply_error(x, SL_CAUSE_METHOD_NOT_ALLOWED, "CONNECT is not supported over HTTP/2");
        return;
    }
    if (x->target.len > x->snap->cfg->limits.max_uri_bytes) {
        sl_reply_error(x, SL_CAUSE_URI_TOO_LONG, NULL);
        return;
    }
    if (x->req_body_kind == SL_BODY_LENGTH && st->max_body && x->req_content_length > st->max_body) {
        sl_reply_error(x, SL_CAUSE_REQUEST_TOO_LARGE, NULL);
        return;
    }
    sl_pipeline_process(x);
}

/* ---- request bodies --------------------------------------------------------------------------- */

static void on_body_timeout(sl_timeq_entry_t *e)
{
    h2_stream_t *st = SL_CONTAINER_OF(e, h2_stream_t, body_timeout);
    if (st->body_done || st->body_cb == NULL)
        return;
    st->body_done = true;
    st->x.cause = SL_CAUSE_CLIENT_TIMEOUT;
    st->body_cb(&st->x, SL_ETIMEDOUT, NULL, 0);
}

static void body_fail(h2_stream_t *st, enum sl_cause cause, int err)
{
    sl_timeq_cancel(&st->body_timeout);
    if (st->body_cb == NULL || st->body_done) {
        st->body_error = cause;
        return;
    }
    st->body_done = true;
    st->x.cause = cause;
    st->body_cb(&st->x, err, NULL, 0);
}

static void body_deliver(h2_stream_t *st)
{
    if (st->body_cb == NULL || st->body_done || st->body_delivered > 0 || st->done)
        return;
    if (st->body_error != SL_CAUSE_NONE) {
        enum sl_cause c = st->body_error;
        st->body_error = SL_CAUSE_NONE;
        body_fail(st, c, c == SL_CAUSE_REQUEST_TOO_LARGE ? SL_ETOOBIG : SL_ECLOSED);
        return;
    }
    sl_buf_t *b = st->body;
    if (b != NULL && b->len > st->body_off) {
        sl_timeq_cancel(&st->body_timeout);
        st->body_delivered = b->len - st->body_off;
        st->body_cb(&st->x, 0, b->data + st->body_off, st->body_delivered);
        return;
    }
    if (st->req_eos) {
        sl_timeq_cancel(&st->body_timeout);
        st->body_done = true;
        st->body_cb(&st->x, 0, NULL, 0);
        return;
    }
    sl_h2_session_t *s = st->s;
    sl_timeq_add(&s->hw->w->timeqs, timeq_for(s, st->x.snap->cfg->timeouts.client_body_ms), &st->body_timeout,
                 on_body_timeout);
}

static int on_data_chunk(nghttp2_session *ng, uint8_t flags, int32_t stream_id, const uint8_t *data, size_t len,
                         void *user)
{
    (void)flags;
    (void)user;
    h2_stream_t *st = nghttp2_session_get_stream_user_data(ng, stream_id);
    if (st == NULL || st->done || st->body_done || st->body_error != SL_CAUSE_NONE) {
        /* Nobody reads it: give the window back at once. */
        nghttp2_session_consume(ng, stream_id, len);
        return 0;
    }
    st->body_received += len;
    st->x.bytes_in += len;
    if (st->max_body && st->body_received > st->max_body) {
        /* The handler hears it when it reads (at once if it already does) and answers 413; what
         * the client still sends is discarded, and our END_STREAM ends the upload (RST NO_ERROR). */
        nghttp2_session_consume(ng, stream_id, len);
        body_fail(st, SL_CAUSE_REQUEST_TOO_LARGE, SL_ETOOBIG);
        return 0;
    }
    if (st->body == NULL) {
        st->body = sl_buf_get(&st->s->hw->bufs);
        st->body->off = st->body->len = 0;
    }
    sl_buf_t *b = st->body;
    if (len > b->cap - b->len) {
        /* More than the window we gave: nghttp2 enforces the window, so this is a bug or a
         * window change; refuse the stream rather than grow. */
        nghttp2_session_consume(ng, stream_id, len);
        nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, stream_id, NGHTTP2_FLOW_CONTROL_ERROR);
        body_fail(st, SL_CAUSE_BAD_REQUEST, SL_EINVALID);
        return 0;
    }
    memcpy(b->data + b->len, data, len);
    b->len += len;
    if (st->body_started)
        body_deliver(st);
    return 0;
}

static void h2_body_start(sl_exchange_t *x, sl_body_cb cb)
{
    h2_stream_t *st = x->down_ctx;
    st->body_cb = cb;
    st->body_started = true;
    body_deliver(st);
}

static void h2_body_resume(sl_exchange_t *x)
{
    h2_stream_t *st = x->down_ctx;
    sl_h2_session_t *s = st->s;
    size_t n = st->body_delivered;
    if (n == 0)
        return;
    st->body_delivered = 0;
    st->body_off += n;
    sl_buf_t *b = st->body;
    if (st->body_off == b->len) {
        b->len = 0;
        st->body_off = 0;
    } else {
        memmove(b->data, b->data + st->body_off, b->len - st->body_off);
        b->len -= st->body_off;
        st->body_off = 0;
    }
    if (!(s->flags & SESS_CLOSING)) {
        /* WINDOW_UPDATE: the client may send more (only the connection's once it closed). */
        if (st->closed)
            nghttp2_session_consume_connection(s->ng, n);
        else
            nghttp2_session_consume(s->ng, st->id, n);
        session_kick(s);
    }
    body_deliver(st);
}

/* ---- responses -------------------------------------------------------------------------------- */

static bool is_connection_specific(sl_str_t name)
{
    /* RFC 9113 §8.2.2: not allowed in HTTP/2; the HTTP/1 framing is ours to add. */
    static const char *const names[] = {"connection", "keep-alive",     "proxy-connection", "transfer-encoding",
                                        "upgrade",    "content-length", "x-request-id"};
    for (size_t i = 0; i < SL_ARRAY_SIZE(names); i++)
        if (sl_str_caseeq_cstr(name, names[i]))
            return true;
    return false;
}

static void lower_copy(char *dst, sl_str_t s)
{
    for (size_t i = 0; i < s.len; i++)
        dst[i] = sl_ascii_lower(s.ptr[i]);
}

static nghttp2_nv make_nv(const char *n, size_t nlen, const char *v, size_t vlen)
{
    return (nghttp2_nv){(uint8_t *)n, (uint8_t *)v, nlen, vlen, NGHTTP2_NV_FLAG_NONE};
}

/* The last DATA frame: END_STREAM on it, or on the trailing HEADERS frame when the handler
 * set trailers (nghttp2 lets the data source submit them here). */
static void body_end(h2_stream_t *st, uint32_t *data_flags)
{
    *data_flags |= NGHTTP2_DATA_FLAG_EOF;
    sl_exchange_t *x = &st->x;
    if (x->resp_trailers.len == 0)
        return;
    nghttp2_nv *nv = sl_arena_alloc(&x->arena, x->resp_trailers.len * sizeof(*nv));
    size_t n = 0;
    for (size_t i = 0; i < x->resp_trailers.len; i++) {
        const sl_header_t *h = &x->resp_trailers.items[i];
        if (is_connection_specific(h->name) || h->name.len == 0)
            continue;
        char *name = sl_arena_alloc(&x->arena, h->name.len);
        lower_copy(name, h->name);
        nv[n++] = make_nv(name, h->name.len, h->value.ptr, h->value.len);
    }
    if (n > 0 && nghttp2_submit_trailer(st->s->ng, st->id, nv, n) == 0)
        *data_flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
}

static ssize_t on_data_source_read(nghttp2_session *ng, int32_t stream_id, uint8_t *buf, size_t length,
                                   uint32_t *data_flags, nghttp2_data_source *source, void *user)
{
    (void)ng;
    (void)stream_id;
    (void)user;
    h2_stream_t *st = source->ptr;
    size_t copied = 0;
    while (copied < length && st->part_i < st->nparts) {
        const sl_str_t *p = &st->parts[st->part_i];
        size_t n = p->len - st->part_off;
        if (n > length - copied)
            n = length - copied;
        memcpy(buf + copied, p->ptr + st->part_off, n);
        copied += n;
        st->part_off += n;
        if (st->part_off == p->len) {
            st->part_i++;
            st->part_off = 0;
        }
    }
    if (st->part_i == st->nparts && st->nparts > 0) {
        /* The whole slice is in nghttp2's hands: its handler may go on once the write is out. */
        st->nparts = st->part_i = 0;
        if (st->write_cb != NULL && !st->in_ready) {
            st->in_ready = true;
            st->ready_next = st->s->ready;
            st->s->ready = st;
        }
    }
    st->x.bytes_out += copied;
    if (copied == 0 && st->nparts == 0) {
        if (st->done) {
            body_end(st, data_flags);
            return 0;
        }
        st->deferred = true;
        return NGHTTP2_ERR_DEFERRED;
    }
    if (st->done && st->nparts == 0)
        body_end(st, data_flags);
    return (ssize_t)copied;
}

/* The fields of the response head (or a 1xx), lower-cased into the arena, without the
 * connection-specific ones; `extra` more slots are left at the end. */
static nghttp2_nv *head_fields(sl_exchange_t *x, int status, const sl_header_t *h, size_t nh, size_t extra,
                               size_t *nout)
{
    nghttp2_nv *nv = sl_arena_alloc(&x->arena, (nh + 1 + extra) * sizeof(*nv));
    char *code = sl_arena_alloc(&x->arena, 4);
    code[0] = (char)('0' + status / 100 % 10);
    code[1] = (char)('0' + status / 10 % 10);
    code[2] = (char)('0' + status % 10);
    size_t n = 0;
    nv[n++] = make_nv(":status", 7, code, 3);
    for (size_t i = 0; i < nh; i++) {
        if (is_connection_specific(h[i].name))
            continue;
        char *name = sl_arena_alloc(&x->arena, h[i].name.len ? h[i].name.len : 1);
        lower_copy(name, h[i].name);
        nv[n++] = make_nv(name, h[i].name.len, h[i].value.ptr, h[i].value.len);
    }
    *nout = n;
    return nv;
}

static int h2_send_head(sl_exchange_t *x)
{
    h2_stream_t *st = x->down_ctx;
    sl_h2_session_t *s = st->s;
    SL_BUG_ON(x->head_sent);
    x->head_sent = true;
    sl_pipeline_response_headers(x);
    if (st->closed || (s->flags & SESS_CLOSING))
        return SL_ECLOSED;
    int status = x->status;
    bool bodiless_status = (status >= 100 && status < 200) || status == 204 || status == 304;
    st->no_body = bodiless_status || x->method == SL_METHOD_HEAD;
    size_t n;
    nghttp2_nv *nv = head_fields(x, status, x->resp_headers.items, x->resp_headers.len, 3, &n);
    bool have_date = false;
    for (size_t i = 1; i < n && !have_date; i++)
        have_date = nv[i].namelen == 4 && memcmp(nv[i].name, "date", 4) == 0;
    if (!have_date) {
        /* nghttp2 copies the fields at submit: the worker's cached date needs no copy. */
        sl_str_t d = sl_worker_http_date(s->hw->w);
        nv[n++] = make_nv("date", 4, d.ptr, d.len);
    }
    if (!bodiless_status && (x->resp_body_kind == SL_BODY_LENGTH || x->resp_body_kind == SL_BODY_NONE)) {
        char *cl = sl_arena_alloc(&x->arena, 24);
        char *e = sl_put_u64(cl, x->resp_body_kind == SL_BODY_LENGTH ? x->resp_content_length : 0);
        nv[n++] = make_nv("content-length", 14, cl, (size_t)(e - cl));
    }
    if (x->request_id.len) {
        /* Unique per response: indexed, it would only push reusable fields out of the client's
         * 4 KiB HPACK table (and cost ~4k instructions of table upkeep per response). */
        nv[n] = make_nv("x-request-id", 12, x->request_id.ptr, x->request_id.len);
        nv[n++].flags = NGHTTP2_NV_FLAG_NO_INDEX;
    }
    int rv;
    if (st->no_body || (x->resp_body_kind == SL_BODY_NONE)) {
        st->no_body = true;
        rv = nghttp2_submit_response(s->ng, st->id, nv, n, NULL);
    } else {
        nghttp2_data_provider dp = {.source.ptr = st, .read_callback = on_data_source_read};
        rv = nghttp2_submit_response(s->ng, st->id, nv, n, &dp);
    }
    if (rv != 0) {
        sl_log_debug("h2: submit_response: %s", nghttp2_strerror(rv));
        return SL_EINVALID;
    }
    session_kick(s);
    return 0;
}

static int h2_send_body(sl_exchange_t *x, const sl_str_t *parts, size_t nparts, sl_write_cb cb)
{
    h2_stream_t *st = x->down_ctx;
    sl_h2_session_t *s = st->s;
    SL_BUG_ON(st->write_cb != NULL || st->nparts != 0);
    if (st->closed || (s->flags & SESS_CLOSING))
        return SL_ECLOSED;
    if (!x->head_sent && h2_send_head(x) != 0)
        return SL_ECLOSED;
    if (st->no_body)
        return 1; /* HEAD and bodiless statuses carry no body bytes */
    size_t n = 0;
    for (size_t i = 0; i < nparts; i++) {
        if (parts[i].len == 0)
            continue;
        SL_BUG_ON(n == MAX_PARTS);
        st->parts[n++] = parts[i];
    }
    if (n == 0)
        return 1;
    st->nparts = n;
    st->part_i = st->part_off = 0;
    st->write_cb = cb;
    if (st->deferred) {
        st->deferred = false;
        nghttp2_session_resume_data(s->ng, st->id);
    }
    session_kick(s);
    return 0;
}

static void h2_finish(sl_exchange_t *x)
{
    h2_stream_t *st = x->down_ctx;
    sl_h2_session_t *s = st->s;
    if (st->done)
        return; /* aborted under the handler (stream_abort_exchange): that path releases it */
    if (!x->head_sent)
        h2_send_head(x);
    st->done = true;
    st->x.on_abort = NULL;
    if (st->closed) {
        /* A bodiless answer already ended the stream, or the client left. */
        stream_release(st);
        return;
    }
    if (s->flags & SESS_CLOSING)
        return;
    if (st->deferred) {
        st->deferred = false;
        nghttp2_session_resume_data(s->ng, st->id);
    }
    session_kick(s);
}

static void h2_abort(sl_exchange_t *x)
{
    h2_stream_t *st = x->down_ctx;
    sl_h2_session_t *s = st->s;
    if (st->done)
        return; /* already being aborted: the caller releases it */
    st->x.on_abort = NULL;
    st->done = true;
    st->write_cb = NULL;
    stream_log(st);
    if (st->closed) {
        stream_release(st);
        return;
    }
    if (!(s->flags & SESS_CLOSING)) {
        nghttp2_submit_rst_stream(s->ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
        session_kick(s);
    }
}

static int h2_send_informational(sl_exchange_t *x, int status, const sl_header_t *h, size_t nh)
{
    h2_stream_t *st = x->down_ctx;
    sl_h2_session_t *s = st->s;
    if (status == 101 || st->closed || (s->flags & SESS_CLOSING))
        return 0; /* no protocol switch in HTTP/2 (RFC 9113 §8.6) */
    size_t n;
    nghttp2_nv *nv = head_fields(x, status, h, nh, 0, &n);
    if (nghttp2_submit_headers(s->ng, NGHTTP2_FLAG_NONE, st->id, NULL, nv, n, NULL) < 0)
        return SL_EINVALID;
    session_kick(s);
    return 0;
}

static const sl_downstream_ops_t h2_ops = {
    .send_head = h2_send_head,
    .send_body = h2_send_body,
    .finish = h2_finish,
    .abort = h2_abort,
    .body_start = h2_body_start,
    .body_resume = h2_body_resume,
    .send_informational = h2_send_informational,
    .tunnel_start = NULL,
    .tunnel_shutdown = NULL,
};

/* ---- frames ----------------------------------------------------------------------------------- */

/* A RST_STREAM from the client. Rapid reset (CVE-2023-44487) is a client that resets more
 * streams than it lets finish: past RESET_FLOOR such resets, the connection ends. */
static void client_reset(sl_h2_session_t *s)
{
    s->resets++;
    if (s->resets > RESET_FLOOR && s->resets > RESET_RATIO * s->completed && !(s->flags & SESS_CLOSE_AFTER)) {
        sl_log_warn("h2: client %s reset %llu streams and completed %llu: closing (rapid reset)", s->peer.client_ip,
                    (unsigned long long)s->resets, (unsigned long long)s->completed);
        nghttp2_session_terminate_session(s->ng, NGHTTP2_ENHANCE_YOUR_CALM);
        s->flags |= SESS_CLOSE_AFTER;
    }
}

static int on_frame_recv(nghttp2_session *ng, const nghttp2_frame *frame, void *user)
{
    if (frame->hd.type == NGHTTP2_RST_STREAM) {
        client_reset(user);
        return 0;
    }
    if (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA)
        return 0;
    h2_stream_t *st = nghttp2_session_get_stream_user_data(ng, frame->hd.stream_id);
    if (st == NULL)
        return 0;
    if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)
        st->req_eos = true;
    if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_REQUEST && !st->dispatched) {
        stream_dispatch(st);
        return 0;
    }
    if (st->req_eos && st->body_started)
        body_deliver(st);
    return 0;
}

static int on_frame_send(nghttp2_session *ng, const nghttp2_frame *frame, void *user)
{
    (void)user;
    if (!(frame->hd.flags & NGHTTP2_FLAG_END_STREAM) ||
        (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA))
        return 0;
    h2_stream_t *st = nghttp2_session_get_stream_user_data(ng, frame->hd.stream_id);
    if (st == NULL)
        return 0;
    st->end_on_wire = true;
    if (!st->req_eos) {
        /* The answer is complete while the client still sends: tell it to stop (RFC 9113
         * §8.1), and the stream closes without waiting for a body nobody reads. */
        nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, frame->hd.stream_id, NGHTTP2_NO_ERROR);
    }
    return 0;
}

static int on_stream_close(nghttp2_session *ng, int32_t stream_id, uint32_t error_code, void *user)
{
    sl_h2_session_t *s = user;
    h2_stream_t *st = nghttp2_session_get_stream_user_data(ng, stream_id);
    if (st == NULL)
        return 0;
    nghttp2_session_set_stream_user_data(ng, stream_id, NULL);
    st->closed = true;
    (void)error_code;
    if (!st->end_on_wire) {
        /* Reset before our answer ended: by the client, or by us after an abort. */
        if (!st->done)
            stream_abort_exchange(st);
    } else {
        s->completed++;
    }
    if (st->done)
        stream_release(st);
    return 0;
}

/* ---- the session ------------------------------------------------------------------------------ */

int sl_h2_session_create(sl_h2_worker_t *hw, const sl_h2_transport_t *t, void *conn, const sl_h2_peer_t *peer,
                         sl_h2_session_t **out)
{
    sl_h2_session_t *s = sl_xcalloc(1, sizeof(*s));
    s->hw = hw;
    s->t = t;
    s->conn = conn;
    s->peer = *peer;
    nghttp2_session_callbacks *cbs;
    if (nghttp2_session_callbacks_new(&cbs) != 0) {
        free(s);
        return SL_EINVALID;
    }
    nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
    nghttp2_session_callbacks_set_on_frame_send_callback(cbs, on_frame_send);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
    nghttp2_option *opt;
    if (nghttp2_option_new(&opt) != 0) {
        nghttp2_session_callbacks_del(cbs);
        free(s);
        return SL_EINVALID;
    }
    /* Windows move when the handler consumed the bytes, not when they arrived. */
    nghttp2_option_set_no_auto_window_update(opt, 1);
    /* Bounds on what a client can make us hold (CONTINUATION flood, SETTINGS/PING floods,
     * RST_STREAM floods): nghttp2's defences, set explicitly so they do not depend on the
     * library's defaults. */
    nghttp2_option_set_max_continuations(opt, 8);
    nghttp2_option_set_max_settings(opt, 32);
    nghttp2_option_set_max_outbound_ack(opt, 1000);
    nghttp2_option_set_stream_reset_rate_limit(opt, 1000, 33);
    const sl_config_t *cfg = hw->w->snap->cfg;
    nghttp2_option_set_max_deflate_dynamic_table_size(opt, 4096);
    int rv = nghttp2_session_server_new2(&s->ng, cbs, s, opt);
    nghttp2_session_callbacks_del(cbs);
    nghttp2_option_del(opt);
    if (rv != 0) {
        free(s);
        return SL_EINVALID;
    }
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, cfg->limits.max_concurrent_streams},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, (uint32_t)cfg->limits.max_header_bytes},
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
    };
    nghttp2_submit_settings(s->ng, NGHTTP2_FLAG_NONE, iv, SL_ARRAY_SIZE(iv));
    nghttp2_session_set_local_window_size(s->ng, NGHTTP2_FLAG_NONE, 0, CONN_WINDOW);
    timeout_update(s);
    session_kick(s);
    *out = s;
    return 0;
}

int sl_h2_session_recv(sl_h2_session_t *s, const char *p, size_t n)
{
    if (s->flags & SESS_CLOSING)
        return SL_ECLOSED;
    ssize_t r = nghttp2_session_mem_recv(s->ng, (const uint8_t *)p, n);
    if (r < 0) {
        /* A connection error (bad preface, flood, compression error): nghttp2 queued GOAWAY. */
        sl_log_debug("h2: client %s: %s", s->peer.client_ip, nghttp2_strerror((int)r));
        s->flags |= SESS_CLOSE_AFTER;
        session_kick(s);
        return SL_EINVALID;
    }
    session_kick(s);
    return 0;
}

void sl_h2_session_peer_eof(sl_h2_session_t *s)
{
    session_close(s);
}

/* The second step of a graceful shutdown: GOAWAY with the last stream we took. */
static void on_drain_timer(sl_timeq_entry_t *e)
{
    sl_h2_session_t *s = SL_CONTAINER_OF(e, sl_h2_session_t, drain_timer);
    s->flags |= SESS_GOAWAY;
    nghttp2_submit_goaway(s->ng, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(s->ng), NGHTTP2_NO_ERROR,
                          NULL, 0);
    session_kick(s);
}

void sl_h2_session_drain(sl_h2_session_t *s)
{
    if (s->flags & (SESS_CLOSING | SESS_DRAINING))
        return;
    s->flags |= SESS_DRAINING;
    /* RFC 9113 §6.8: a GOAWAY naming the largest stream id first, so requests already on the
     * wire are still taken, then after a round trip's grace the one that names the last stream
     * we took. A client retries anything after it on a new connection. */
    nghttp2_submit_shutdown_notice(s->ng);
    sl_timeq_add(&s->hw->w->timeqs, timeq_for(s, DRAIN_GRACE_MS), &s->drain_timer, on_drain_timer);
    session_kick(s);
}

static void session_close(sl_h2_session_t *s)
{
    if (s->flags & SESS_CLOSING)
        return;
    s->t->close(s->conn); /* calls sl_h2_session_closed */
}

void sl_h2_session_closed(sl_h2_session_t *s)
{
    if (s->flags & SESS_CLOSING)
        return;
    s->flags |= SESS_CLOSING;
    session_unqueue(s);
    sl_timeq_cancel(&s->timeout);
    sl_timeq_cancel(&s->drain_timer);
    s->ready = NULL;
    /* Every stream with an exchange: the handler lets go, the log runs, the stream is freed
     * (nghttp2 is told nothing more; the session is deleted with the connection). */
    while (s->streams != NULL) {
        h2_stream_t *st = s->streams;
        if (!st->closed)
            nghttp2_session_set_stream_user_data(s->ng, st->id, NULL);
        st->closed = true;
        st->in_ready = false;
        stream_abort_exchange(st);
        stream_release(st);
    }
    set_active(s, false);
}

void sl_h2_session_destroy(sl_h2_session_t *s)
{
    if (s == NULL)
        return;
    SL_BUG_ON(!(s->flags & SESS_CLOSING));
    nghttp2_session_del(s->ng);
    if (s->out != NULL)
        sl_buf_put(&s->hw->bufs, s->out);
    free(s);
}
