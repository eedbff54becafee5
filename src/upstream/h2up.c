/*
 * HTTP/2 client sessions to upstreams (h2up.h). nghttp2 does the framing, HPACK, stream states
 * and window accounting; this file decides which connection a stream goes on, moves bytes
 * between the socket and the session, and tells each stream's user what happened.
 *
 * Re-entrancy: nghttp2_session_mem_recv / mem_send must never run inside one of their own
 * callbacks, and a session must not be deleted under them. Stream callbacks (which may submit
 * new streams, cancel streams or give body slices) therefore only mark the connection; output
 * is flushed after the receive returns or once per event-loop turn (a per-worker idle handle,
 * so the frames of many requests share a write), and a connection that failed inside a
 * callback is torn down after it.
 */
#include "upstream/h2up.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nghttp2/nghttp2.h>

#include "common/bug.h"
#include "common/error.h"
#include "common/log.h"
#include "common/str.h"
#include "http2/h2.h"
#include "net/timeq.h"

/* Our receive window per stream: one worker h2 buffer (connpool.c H2UP_BUF), so everything the
 * server may send unasked fits in the stream's buffer. */
#define STREAM_WINDOW (64 * 1024)
/* The connection window: many streams receiving at once. */
#define CONN_WINDOW (16 * 1024 * 1024)
/* Streams per connection before another is opened, whatever the server allows. */
#define MAX_STREAMS_PER_CONN 256
/* Before the server's SETTINGS arrive (RFC 9113 §6.5.2 recommends at least 100). */
#define INITIAL_PEER_STREAMS 100
/* A response head larger than this (names + values) ends the stream. */
#define MAX_HEAD_BYTES  (64 * 1024)
#define MAX_HEAD_FIELDS 128

/* What nghttp2 holds as a stream's user data: the stream, or NULL once its user let go. A
 * stream's user data cannot be reliably cleared through nghttp2 before its HEADERS are sent
 * (a request queued behind the server's stream limit has no stream object yet), so the user's
 * stream (in its arena) is never handed to nghttp2 directly. Freed at the stream's close, or
 * with the connection. */
typedef struct slot {
    sl_h2up_stream_t *st;
    struct slot *prev, *next; /* the connection's live slots, or its free list (next) */
} slot_t;

struct sl_h2up_conn {
    sl_upconn_t *c;
    nghttp2_session *ng;
    sl_worker_t *w;
    sl_connpool_t *pool;
    sl_h2up_conn_t *next; /* the pool's list */
    sl_h2up_stream_t *streams;
    size_t nstreams;
    const sl_tls_client_ctx_t *tls; /* a reference until the handshake starts */
    char *sni, *verify_name;        /* in this allocation */
    uint64_t connect_timeout_ms, send_timeout_ms, idle_timeout_ms;
    sl_timeq_entry_t timer; /* connect, send (a write pending) or idle (no stream) */
    sl_buf_t *out;
    uv_buf_t iov[2];
    bool up;                    /* connected, TLS done: frames may be written */
    bool no_new;                /* GOAWAY received, draining, or failing: no new stream */
    bool in_recv;               /* inside nghttp2_session_mem_recv */
    bool in_flush;              /* inside the flush loop */
    bool writing;               /* a write is queued */
    bool dirty;                 /* something was submitted during the flush loop: run mem_send again */
    bool any_taken;             /* a request body slice was packed: tell its stream */
    bool any_end_check;         /* a stream was answered early: see end_checks_run */
    bool failed;                /* torn down (deferred while inside a callback) */
    bool we_ended;              /* nghttp2 sent GOAWAY with an error: the server broke the protocol */
    sl_h2up_conn_t *flush_next; /* the worker's list of connections to flush this loop turn */
    bool queued;                /* in that list */
    slot_t *slots;              /* live */
    slot_t *free_slots;         /* for reuse: no malloc per stream once the connection is warm */
    enum sl_h2up_end fail_how;
    char fail_detail[160];
};

static _Thread_local char end_detail[160];

/* Per worker: the connections whose output waits for the end of this loop turn, so the
 * frames of many streams (and a request's HEADERS, DATA and END_STREAM) leave in one write. */
typedef struct h2up_worker {
    uv_idle_t idle;
    bool active;
    sl_h2up_conn_t *flush_head;
} h2up_worker_t;

void sl__connpool_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
void sl__connpool_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void conn_flush(sl_h2up_conn_t *hc);
static void conn_unqueue(sl_h2up_conn_t *hc);
static void conn_fail(sl_h2up_conn_t *hc, enum sl_h2up_end how, const char *detail);
static void conn_maybe_close(sl_h2up_conn_t *hc);

static sl_timeqs_t *timeqs(sl_h2up_conn_t *hc)
{
    return &hc->w->timeqs;
}

static sl_buf_pool_t *bufs(sl_h2up_conn_t *hc)
{
    return sl__connpool_h2_bufs(hc->w);
}

/* ---- streams in a connection ------------------------------------------------------------- */

static void stream_link(sl_h2up_conn_t *hc, sl_h2up_stream_t *st)
{
    st->conn = hc;
    st->prev = NULL;
    st->next = hc->streams;
    if (hc->streams != NULL)
        hc->streams->prev = st;
    hc->streams = st;
    hc->nstreams++;
}

static void stream_unlink(sl_h2up_stream_t *st)
{
    sl_h2up_conn_t *hc = st->conn;
    if (st->prev != NULL)
        st->prev->next = st->next;
    else
        hc->streams = st->next;
    if (st->next != NULL)
        st->next->prev = st->prev;
    st->prev = st->next = NULL;
    st->conn = NULL;
    if (st->slot != NULL) {
        ((slot_t *)st->slot)->st = NULL;
        st->slot = NULL;
    }
    hc->nstreams--;
}

static slot_t *slot_take(sl_h2up_conn_t *hc, sl_h2up_stream_t *st)
{
    slot_t *sl = hc->free_slots;
    if (sl != NULL)
        hc->free_slots = sl->next;
    else
        sl = sl_xmalloc(sizeof(*sl));
    sl->st = st;
    sl->prev = NULL;
    sl->next = hc->slots;
    if (hc->slots != NULL)
        hc->slots->prev = sl;
    hc->slots = sl;
    return sl;
}

static void slot_give(sl_h2up_conn_t *hc, slot_t *sl)
{
    if (sl->prev != NULL)
        sl->prev->next = sl->next;
    else
        hc->slots = sl->next;
    if (sl->next != NULL)
        sl->next->prev = sl->prev;
    sl->st = NULL;
    sl->next = hc->free_slots;
    hc->free_slots = sl;
}

static void slots_free(slot_t *sl)
{
    while (sl != NULL) {
        slot_t *next = sl->next;
        free(sl);
        sl = next;
    }
}

/* ---- timers -------------------------------------------------------------------------------- */

static void on_connect_timeout(sl_timeq_entry_t *e)
{
    sl_h2up_conn_t *hc = SL_CONTAINER_OF(e, sl_h2up_conn_t, timer);
    bool handshaking = hc->c->connected && hc->c->tls != NULL;
    conn_fail(hc, SL_H2UP_CONNECT_FAILED, handshaking ? "tls: handshake timed out" : "connect timed out");
}

static void on_send_timeout(sl_timeq_entry_t *e)
{
    sl_h2up_conn_t *hc = SL_CONTAINER_OF(e, sl_h2up_conn_t, timer);
    conn_fail(hc, SL_H2UP_TIMEOUT, "send timed out");
}

static void on_idle_timeout(sl_timeq_entry_t *e)
{
    sl_h2up_conn_t *hc = SL_CONTAINER_OF(e, sl_h2up_conn_t, timer);
    /* GOAWAY first, so the server knows no stream was lost; the close follows its write. */
    hc->no_new = true;
    nghttp2_session_terminate_session(hc->ng, NGHTTP2_NO_ERROR);
    conn_flush(hc);
}

static void timer_set(sl_h2up_conn_t *hc, uint64_t ms, sl_timeq_cb cb)
{
    sl_timeq_add(timeqs(hc), sl_timeqs_get(timeqs(hc), ms), &hc->timer, cb);
}

/* The timer that applies now: a pending write's, else the idle one when no stream is left. */
static void timer_update(sl_h2up_conn_t *hc)
{
    if (!hc->up || hc->failed)
        return;
    if (hc->writing)
        timer_set(hc, hc->send_timeout_ms, on_send_timeout);
    else if (hc->nstreams == 0 && !hc->no_new)
        timer_set(hc, hc->idle_timeout_ms, on_idle_timeout);
    else
        sl_timeq_cancel(&hc->timer);
}

/* ---- teardown ------------------------------------------------------------------------------ */

static void pool_unlist(sl_h2up_conn_t *hc)
{
    for (sl_h2up_conn_t **p = (sl_h2up_conn_t **)sl__connpool_mux(hc->pool); *p != NULL; p = &(*p)->next) {
        if (*p == hc) {
            *p = hc->next;
            break;
        }
    }
    hc->next = NULL;
}

/* Frees the connection. The socket closes (its queued write is cancelled; the callback sees
 * c->user NULL). Every stream must be unlinked already. */
static void conn_destroy(sl_h2up_conn_t *hc)
{
    SL_BUG_ON(hc->nstreams != 0);
    pool_unlist(hc);
    conn_unqueue(hc);
    sl_timeq_cancel(&hc->timer);
    nghttp2_session_del(hc->ng);
    slots_free(hc->slots);
    slots_free(hc->free_slots);
    sl_buf_put(bufs(hc), hc->out);
    if (hc->tls != NULL)
        sl_tls_client_ctx_unref((sl_tls_client_ctx_t *)hc->tls);
    sl_upconn_close(hc->c);
    free(hc);
}

/* Ends every stream with `how` (CONNECT_FAILED for all if the connection never came up) and
 * frees the connection. Inside a session callback it only marks it: the caller of
 * mem_recv / mem_send finishes the job. */
static void conn_fail(sl_h2up_conn_t *hc, enum sl_h2up_end how, const char *detail)
{
    if (!hc->failed) {
        hc->failed = true;
        hc->no_new = true;
        hc->fail_how = hc->up ? how : SL_H2UP_CONNECT_FAILED;
        snprintf(hc->fail_detail, sizeof(hc->fail_detail), "%s", detail);
        pool_unlist(hc);
    }
    if (hc->in_recv || hc->in_flush)
        return;
    while (hc->streams != NULL) {
        sl_h2up_stream_t *st = hc->streams;
        stream_unlink(st);
        st->ops->closed(st, hc->fail_how, hc->fail_detail);
    }
    conn_destroy(hc);
}

/* A connection that takes no new stream closes when its last stream is done and its output
 * is written. */
static void conn_maybe_close(sl_h2up_conn_t *hc)
{
    if (hc->failed || hc->in_recv || hc->in_flush || hc->writing)
        return;
    bool over = !nghttp2_session_want_read(hc->ng) && !nghttp2_session_want_write(hc->ng);
    if ((hc->no_new && hc->nstreams == 0) || over) {
        if (hc->nstreams != 0) {
            if (hc->we_ended)
                conn_fail(hc, SL_H2UP_PROTOCOL_ERROR, "invalid HTTP/2 from upstream (connection error)");
            else
                conn_fail(hc, SL_H2UP_RESET, "upstream ended the HTTP/2 session");
            return;
        }
        conn_destroy(hc);
    }
}

/* ---- output ------------------------------------------------------------------------------ */

static void on_written(uv_write_t *req, int status)
{
    sl_upconn_t *c = req->data;
    sl_h2up_conn_t *hc = c->user;
    if (hc == NULL)
        return; /* closed while the write was queued */
    hc->writing = false;
    if (status < 0) {
        conn_fail(hc, SL_H2UP_RESET, "write to upstream failed");
        return;
    }
    conn_flush(hc);
}

/* Streams whose request body slice was packed get the next one asked for. */
static void taken_run(sl_h2up_conn_t *hc)
{
    while (hc->any_taken && !hc->failed) {
        hc->any_taken = false;
        for (sl_h2up_stream_t *st = hc->streams; st != NULL; st = st->next) {
            if (!st->req_taken)
                continue;
            st->req_taken = false;
            st->ops->body_taken(st); /* may give a slice (marks dirty) but never unlinks others */
            hc->any_taken = true;    /* the list may have changed: look again from the start */
            break;
        }
    }
}

/* Gathers what nghttp2 wants to send into one buffer and writes it; repeats while writes
 * complete at once or callbacks submitted more. */
static void conn_flush(sl_h2up_conn_t *hc)
{
    if (hc->failed || hc->in_recv || hc->in_flush || hc->writing || !hc->up)
        return;
    hc->in_flush = true;
    for (;;) {
        hc->dirty = false;
        if (hc->out == NULL)
            hc->out = sl_buf_get(bufs(hc));
        unsigned n;
        int rv = sl_h2_output_gather(hc->ng, hc->out, hc->iov, &n);
        if (rv < 0) {
            hc->in_flush = false;
            conn_fail(hc, SL_H2UP_PROTOCOL_ERROR, nghttp2_strerror(rv));
            return;
        }
        if (hc->failed)
            break;
        if (n > 0) {
            int r = sl_upconn_write(hc->c, hc->iov, n, on_written);
            if (r < 0) {
                hc->in_flush = false;
                conn_fail(hc, SL_H2UP_RESET, "write to upstream failed");
                return;
            }
            if (r == 0)
                hc->writing = true;
        }
        taken_run(hc);
        if (hc->writing || hc->failed || (n == 0 && !hc->dirty))
            break;
    }
    hc->in_flush = false;
    if (hc->failed) {
        conn_fail(hc, hc->fail_how, hc->fail_detail);
        return;
    }
    if (!hc->writing && hc->out != NULL) {
        sl_buf_put(bufs(hc), hc->out);
        hc->out = NULL;
    }
    timer_update(hc);
    conn_maybe_close(hc);
}

static void on_flush_idle(uv_idle_t *h)
{
    h2up_worker_t *hw = h->data;
    while (hw->flush_head != NULL) {
        sl_h2up_conn_t *hc = hw->flush_head;
        hw->flush_head = hc->flush_next;
        hc->queued = false;
        conn_flush(hc);
    }
    hw->active = false;
    uv_idle_stop(&hw->idle);
}

static h2up_worker_t *worker_state(sl_worker_t *w)
{
    void **p = sl__connpool_h2up_state(w);
    if (*p == NULL) {
        h2up_worker_t *hw = sl_xcalloc(1, sizeof(*hw));
        uv_idle_init(&w->loop, &hw->idle);
        hw->idle.data = hw;
        *p = hw;
    }
    return *p;
}

static void conn_unqueue(sl_h2up_conn_t *hc)
{
    if (!hc->queued)
        return;
    hc->queued = false;
    h2up_worker_t *hw = worker_state(hc->w);
    for (sl_h2up_conn_t **p = &hw->flush_head; *p != NULL; p = &(*p)->flush_next)
        if (*p == hc) {
            *p = hc->flush_next;
            break;
        }
}

/* Output wanted: at the end of this loop turn (or of the flush on the stack). */
static void conn_kick(sl_h2up_conn_t *hc)
{
    if (hc->in_flush) {
        hc->dirty = true;
        return;
    }
    if (hc->queued || hc->failed)
        return;
    h2up_worker_t *hw = worker_state(hc->w);
    hc->queued = true;
    hc->flush_next = hw->flush_head;
    hw->flush_head = hc;
    if (!hw->active) {
        hw->active = true;
        uv_idle_start(&hw->idle, on_flush_idle);
    }
}

/* ---- session callbacks -------------------------------------------------------------------- */

static sl_h2up_stream_t *stream_of(nghttp2_session *ng, int32_t id)
{
    slot_t *sl = nghttp2_session_get_stream_user_data(ng, id);
    return sl != NULL ? sl->st : NULL;
}

static ssize_t on_request_body(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t length, uint32_t *flags,
                               nghttp2_data_source *source, void *user)
{
    (void)source;
    sl_h2up_conn_t *hc = user;
    sl_h2up_stream_t *st = stream_of(ng, id);
    if (st == NULL)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* cancelled: the stream is reset */
    size_t n = st->req_len - st->req_off;
    if (n > length)
        n = length;
    if (n > 0) {
        memcpy(buf, st->req_data + st->req_off, n);
        st->req_off += n;
        if (st->req_off == st->req_len) {
            /* Copied into nghttp2's frame: the slice is free for the next one. */
            st->req_data = NULL;
            st->req_len = st->req_off = 0;
            st->req_taken = true;
            hc->any_taken = true;
            if (st->req_last) {
                /* END_STREAM on this frame, not on an empty one after it. */
                st->req_eof = true;
                *flags |= NGHTTP2_DATA_FLAG_EOF;
            }
        }
        return (ssize_t)n;
    }
    if (st->req_eof) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        return 0;
    }
    st->req_deferred = true;
    return NGHTTP2_ERR_DEFERRED;
}

static int on_begin_headers(nghttp2_session *ng, const nghttp2_frame *frame, void *user)
{
    (void)user;
    sl_h2up_stream_t *st = stream_of(ng, frame->hd.stream_id);
    if (st != NULL) {
        st->nhdr = 0;
        st->header_bytes = 0;
        st->status = 0;
    }
    return 0;
}

static int on_header(nghttp2_session *ng, const nghttp2_frame *frame, const uint8_t *name, size_t namelen,
                     const uint8_t *value, size_t valuelen, uint8_t flags, void *user)
{
    (void)flags;
    (void)user;
    sl_h2up_stream_t *st = stream_of(ng, frame->hd.stream_id);
    if (st == NULL)
        return 0;
    st->header_bytes += namelen + valuelen + 32;
    if (st->header_bytes > MAX_HEAD_BYTES) {
        st->bad_head = true;
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    if (namelen > 0 && name[0] == ':') {
        /* nghttp2 already checked the pseudo-headers of a response (RFC 9113 §8.3.2). */
        if (namelen == 7 && memcmp(name, ":status", 7) == 0 && valuelen == 3)
            st->status = (value[0] - '0') * 100 + (value[1] - '0') * 10 + (value[2] - '0');
        return 0;
    }
    if (st->nhdr == st->hdr_cap) {
        if (st->hdr_cap >= MAX_HEAD_FIELDS) {
            st->bad_head = true;
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        }
        size_t cap = st->hdr_cap ? st->hdr_cap * 2 : 16;
        sl_header_t *h = sl_arena_alloc(st->arena, cap * sizeof(*h));
        if (st->nhdr)
            memcpy(h, st->hdr, st->nhdr * sizeof(*h));
        st->hdr = h;
        st->hdr_cap = cap;
    }
    st->hdr[st->nhdr].name = (sl_str_t){sl_arena_strndup(st->arena, (const char *)name, namelen), namelen};
    st->hdr[st->nhdr].value = (sl_str_t){sl_arena_strndup(st->arena, (const char *)value, valuelen), valuelen};
    st->nhdr++;
    return 0;
}

static int on_data_chunk(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data, size_t len, void *user)
{
    (void)flags;
    sl_h2up_conn_t *hc = user;
    sl_h2up_stream_t *st = stream_of(ng, id);
    if (st == NULL) {
        /* A cancelled stream's data in flight: give the window back. */
        nghttp2_session_consume(ng, id, len);
        return 0;
    }
    if (st->body == NULL)
        st->body = sl_buf_get(bufs(hc));
    sl_buf_t *b = st->body;
    if (len > b->cap - b->len) {
        /* More than the window we advertised (consume compacts, so this is the server's
         * fault): the stream ends. */
        st->bad_flow = true;
        nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, id, NGHTTP2_FLOW_CONTROL_ERROR);
        return 0;
    }
    memcpy(b->data + b->len, data, len);
    b->len += len;
    st->ops->data(st);
    return 0;
}

/* The response is complete while our request is still going (RFC 9113 §8.1 allows an early
 * response): the rest of the request is not wanted. Our side cannot end with END_STREAM (the
 * body would be shorter than its Content-Length: malformed), so it is reset with NO_ERROR; but
 * only after this read, and only if the server did not reset the stream itself right behind
 * its response (as sluice and most servers do): servers count a client's resets against rapid
 * reset, and an upstream sluice closed the connection after 1,000 of them. */
static void remote_end(nghttp2_session *ng, sl_h2up_conn_t *hc, sl_h2up_stream_t *st)
{
    st->resp_eos = true;
    if (st->has_body && nghttp2_session_get_stream_local_close(ng, st->id) == 0) {
        st->end_check = true;
        hc->any_end_check = true;
    }
}

/* After a read: the early-answered streams the server left open are reset. */
static void end_checks_run(sl_h2up_conn_t *hc)
{
    if (!hc->any_end_check)
        return;
    hc->any_end_check = false;
    for (sl_h2up_stream_t *st = hc->streams; st != NULL; st = st->next) {
        if (!st->end_check)
            continue;
        st->end_check = false;
        if (nghttp2_session_get_stream_local_close(hc->ng, st->id) == 0)
            nghttp2_submit_rst_stream(hc->ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_NO_ERROR);
    }
}

static int on_frame_recv(nghttp2_session *ng, const nghttp2_frame *frame, void *user)
{
    sl_h2up_conn_t *hc = user;
    if (frame->hd.type == NGHTTP2_GOAWAY) {
        /* Streams above last_stream_id are closed by nghttp2 as refused; the rest may finish. */
        hc->no_new = true;
        pool_unlist(hc);
        return 0;
    }
    sl_h2up_stream_t *st = stream_of(ng, frame->hd.stream_id);
    if (st == NULL)
        return 0;
    bool eos = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    switch (frame->hd.type) {
    case NGHTTP2_HEADERS:
        if (!st->head_seen) {
            if (st->status >= 200)
                st->head_seen = true;
            if (eos)
                remote_end(ng, hc, st);
            st->ops->head(st, st->status, st->hdr, st->nhdr, eos);
        } else {
            if (eos)
                remote_end(ng, hc, st);
            st->ops->trailers(st, st->hdr, st->nhdr);
        }
        break;
    case NGHTTP2_DATA:
        if (eos)
            remote_end(ng, hc, st);
        break;
    case NGHTTP2_RST_STREAM:
        st->remote_rst = true;
        break;
    default:
        break;
    }
    return 0;
}

static int on_stream_close(nghttp2_session *ng, int32_t id, uint32_t error_code, void *user)
{
    sl_h2up_conn_t *hc = user;
    slot_t *sl = nghttp2_session_get_stream_user_data(ng, id);
    if (sl == NULL)
        return 0;
    nghttp2_session_set_stream_user_data(ng, id, NULL);
    sl_h2up_stream_t *st = sl->st;
    slot_give(hc, sl);
    if (st == NULL)
        return 0;
    st->slot = NULL;
    /* What the user has not consumed yet is in our buffer: the connection window need not
     * wait for it. */
    if (st->body != NULL && st->body->len > st->body->off)
        nghttp2_session_consume_connection(ng, st->body->len - st->body->off);
    enum sl_h2up_end how;
    const char *detail;
    if (st->resp_eos && (error_code == NGHTTP2_NO_ERROR || !st->remote_rst)) {
        how = SL_H2UP_COMPLETE;
        detail = "";
    } else if (error_code == NGHTTP2_REFUSED_STREAM) {
        how = SL_H2UP_REFUSED;
        detail = "upstream refused the stream (not processed)";
    } else if (st->bad_head) {
        how = SL_H2UP_PROTOCOL_ERROR;
        detail = "response head too large";
    } else if (st->bad_flow) {
        how = SL_H2UP_PROTOCOL_ERROR;
        detail = "upstream overran the flow-control window";
    } else if (st->remote_rst) {
        how = SL_H2UP_RESET;
        snprintf(end_detail, sizeof(end_detail), "upstream reset the stream (%s)", nghttp2_http2_strerror(error_code));
        detail = end_detail;
    } else {
        /* Reset by nghttp2 itself: the server broke the protocol on this stream. */
        how = SL_H2UP_PROTOCOL_ERROR;
        snprintf(end_detail, sizeof(end_detail), "invalid HTTP/2 response (%s)", nghttp2_http2_strerror(error_code));
        detail = end_detail;
    }
    stream_unlink(st);
    st->ops->closed(st, how, detail);
    return 0;
}

static int on_frame_send(nghttp2_session *ng, const nghttp2_frame *frame, void *user)
{
    (void)ng;
    sl_h2up_conn_t *hc = user;
    if (frame->hd.type == NGHTTP2_GOAWAY && frame->goaway.error_code != NGHTTP2_NO_ERROR)
        hc->we_ended = true;
    return 0;
}

/* A request that never left (the server sent GOAWAY first, or the session is ending): nghttp2
 * has no stream for it, so it tells nobody else. Not processed: refused. */
static int on_frame_not_send(nghttp2_session *ng, const nghttp2_frame *frame, int lib_error, void *user)
{
    (void)ng;
    (void)lib_error;
    sl_h2up_conn_t *hc = user;
    if (frame->hd.type != NGHTTP2_HEADERS)
        return 0;
    for (sl_h2up_stream_t *st = hc->streams; st != NULL; st = st->next) {
        if (st->id == frame->hd.stream_id) {
            stream_unlink(st);
            st->ops->closed(st, SL_H2UP_REFUSED, "request not sent: the upstream connection is going away");
            break;
        }
    }
    return 0;
}

static int on_invalid_frame(nghttp2_session *ng, const nghttp2_frame *frame, int lib_error, void *user)
{
    (void)ng;
    (void)frame;
    (void)user;
    sl_log_debug("upstream h2: invalid frame: %s", nghttp2_strerror(lib_error));
    return 0;
}

/* nghttp2 copies the callbacks into the session: a table per connection, freed at once. */
static nghttp2_session_callbacks *session_callbacks(void)
{
    nghttp2_session_callbacks *cbs;
    int rv = nghttp2_session_callbacks_new(&cbs);
    SL_BUG_ON(rv != 0); /* out of memory */
    nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
    nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(cbs, on_invalid_frame);
    nghttp2_session_callbacks_set_on_frame_send_callback(cbs, on_frame_send);
    nghttp2_session_callbacks_set_on_frame_not_send_callback(cbs, on_frame_not_send);
    return cbs;
}

/* ---- connections ------------------------------------------------------------------------- */

static void conn_up(sl_h2up_conn_t *hc)
{
    hc->up = true;
    sl_timeq_cancel(&hc->timer);
    /* Output waits for the end of the walk: a flush could close streams under it. A callback
     * may end its own stream (a failed body start), never another. */
    hc->in_flush = true;
    for (sl_h2up_stream_t *st = hc->streams, *next; st != NULL; st = next) {
        next = st->next;
        st->ops->connected(st);
    }
    hc->in_flush = false;
    if (hc->failed)
        conn_fail(hc, hc->fail_how, hc->fail_detail);
    else
        conn_flush(hc);
}

static void on_connected(uv_connect_t *req, int status)
{
    sl_upconn_t *c = req->data;
    sl_h2up_conn_t *hc = c->user;
    if (hc == NULL)
        return;
    if (status < 0) {
        conn_fail(hc, SL_H2UP_CONNECT_FAILED, uv_strerror(status));
        return;
    }
    c->connected = true;
    uv_tcp_nodelay(&c->tcp, 1);
    uv_read_start((uv_stream_t *)&c->tcp, sl__connpool_on_alloc, sl__connpool_on_read);
    if (hc->tls != NULL) {
        int r = sl_upconn_tls_start(c, hc->tls, hc->sni, hc->verify_name);
        sl_tls_client_ctx_unref((sl_tls_client_ctx_t *)hc->tls); /* the SSL holds OpenSSL's own */
        hc->tls = NULL;
        if (r < 0)
            conn_fail(hc, SL_H2UP_CONNECT_FAILED, "tls: cannot send the handshake");
        return;
    }
    conn_up(hc);
}

void sl__h2up_on_handshake(sl_upconn_t *c, int status)
{
    sl_h2up_conn_t *hc = c->user;
    if (hc == NULL || hc->up)
        return;
    if (status < 0) {
        char detail[160];
        sl_tls_handshake_failure(c->tls, status, detail, sizeof(detail));
        conn_fail(hc, SL_H2UP_CONNECT_FAILED, detail);
        return;
    }
    const char *alpn = sl_tls_conn_alpn(c->tls);
    if (alpn == NULL || strcmp(alpn, "h2") != 0) {
        conn_fail(hc, SL_H2UP_CONNECT_FAILED, "tls: the upstream did not select h2 (ALPN); protocol: h2 needs it");
        return;
    }
    conn_up(hc);
}

void sl__h2up_on_read(sl_upconn_t *c, ssize_t nread)
{
    sl_h2up_conn_t *hc = c->user;
    if (hc == NULL || hc->failed)
        return;
    if (nread <= 0) {
        if (nread == UV_ENOBUFS)
            return; /* never: every read is taken whole */
        conn_fail(hc, SL_H2UP_RESET,
                  nread == UV_EOF ? "upstream closed the HTTP/2 connection" : "upstream connection failed");
        return;
    }
    sl_buf_t *b = c->rbuf;
    hc->in_recv = true;
    ssize_t r = nghttp2_session_mem_recv(hc->ng, (const uint8_t *)b->data + b->off, b->len - b->off);
    hc->in_recv = false;
    b->off = b->len = 0;
    if (r < 0 && !hc->failed) {
        snprintf(end_detail, sizeof(end_detail), "invalid HTTP/2 from upstream (%s)", nghttp2_strerror((int)r));
        conn_fail(hc, SL_H2UP_PROTOCOL_ERROR, end_detail);
        return;
    }
    if (hc->failed) {
        conn_fail(hc, hc->fail_how, hc->fail_detail);
        return;
    }
    end_checks_run(hc);
    conn_flush(hc);
}

static sl_h2up_conn_t *conn_open(sl_worker_t *w, const sl_h2up_target_t *t)
{
    size_t sni_len = t->sni ? strlen(t->sni) + 1 : 0, name_len = t->verify_name ? strlen(t->verify_name) + 1 : 0;
    sl_h2up_conn_t *hc = sl_xcalloc(1, sizeof(*hc) + sni_len + name_len);
    char *extra = (char *)(hc + 1);
    if (t->sni) {
        hc->sni = memcpy(extra, t->sni, sni_len);
        extra += sni_len;
    }
    if (t->verify_name)
        hc->verify_name = memcpy(extra, t->verify_name, name_len);
    hc->w = w;
    hc->pool = t->pool;
    hc->connect_timeout_ms = t->connect_timeout_ms;
    hc->send_timeout_ms = t->send_timeout_ms;
    hc->idle_timeout_ms = t->idle_timeout_ms;
    if (t->tls != NULL)
        hc->tls = sl_tls_client_ctx_ref((sl_tls_client_ctx_t *)t->tls);

    nghttp2_option *opt;
    int rv = nghttp2_option_new(&opt);
    SL_BUG_ON(rv != 0); /* out of memory */
    /* WINDOW_UPDATE only for what the user consumed: flow control is our backpressure. */
    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_option_set_peer_max_concurrent_streams(opt, INITIAL_PEER_STREAMS);
    nghttp2_session_callbacks *cbs = session_callbacks();
    rv = nghttp2_session_client_new2(&hc->ng, cbs, hc, opt);
    nghttp2_session_callbacks_del(cbs);
    nghttp2_option_del(opt);
    SL_BUG_ON(rv != 0); /* out of memory */
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, MAX_HEAD_BYTES},
    };
    nghttp2_submit_settings(hc->ng, NGHTTP2_FLAG_NONE, iv, SL_ARRAY_SIZE(iv));
    nghttp2_session_set_local_window_size(hc->ng, NGHTTP2_FLAG_NONE, 0, CONN_WINDOW);

    sl_upconn_t *c = sl_connpool_create_conn(t->pool);
    c->mux = true;
    c->user = hc;
    hc->c = c;
    sl_h2up_conn_t **head = (sl_h2up_conn_t **)sl__connpool_mux(t->pool);
    hc->next = *head;
    *head = hc;
    timer_set(hc, hc->connect_timeout_ms, on_connect_timeout);
    int err = uv_tcp_connect(&c->connect_req, &c->tcp, t->addr, on_connected);
    if (err) {
        /* Reported to the stream once it is linked: fail on the next loop turn's timer. */
        snprintf(hc->fail_detail, sizeof(hc->fail_detail), "%s", uv_strerror(err));
        hc->failed = true;
        hc->no_new = true;
        hc->fail_how = SL_H2UP_CONNECT_FAILED;
        pool_unlist(hc);
    }
    return hc;
}

static bool conn_has_room(const sl_h2up_conn_t *hc)
{
    if (hc->no_new || hc->failed)
        return false;
    uint32_t max = nghttp2_session_get_remote_settings(hc->ng, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
    if (max > MAX_STREAMS_PER_CONN)
        max = MAX_STREAMS_PER_CONN;
    return hc->nstreams < max && nghttp2_session_get_next_stream_id(hc->ng) < (1u << 30);
}

/* ---- the API --------------------------------------------------------------------------- */

/* HTTP/2 field names are lower-case (RFC 9113 §8.2.1). Names from an HTTP/2 client, and the
 * ones the proxy adds, already are: only others are copied. */
static const char *lower_name(sl_arena_t *a, sl_str_t name)
{
    size_t i = 0;
    while (i < name.len && !(name.ptr[i] >= 'A' && name.ptr[i] <= 'Z'))
        i++;
    if (i == name.len)
        return name.ptr;
    char *l = sl_arena_alloc(a, name.len);
    for (size_t j = 0; j < name.len; j++)
        l[j] = sl_ascii_lower(name.ptr[j]);
    return l;
}

int sl_h2up_stream_submit(sl_worker_t *w, const sl_h2up_target_t *t, const sl_h2up_request_t *req, sl_h2up_stream_t *st)
{
    sl_h2up_conn_t *hc = NULL;
    for (sl_h2up_conn_t *it = *(sl_h2up_conn_t **)sl__connpool_mux(t->pool); it != NULL; it = it->next)
        if (conn_has_room(it)) {
            hc = it;
            break;
        }
    if (hc == NULL)
        hc = conn_open(w, t);
    if (hc->failed) {
        /* uv_tcp_connect refused at once (no fd, no route): nothing was linked. */
        snprintf(end_detail, sizeof(end_detail), "%s", hc->fail_detail);
        conn_destroy(hc);
        st->fail_detail = end_detail;
        return SL_ECLOSED;
    }
    size_t n = 0;
    nghttp2_nv *nv = sl_arena_alloc(st->arena, (req->nfields + 4) * sizeof(*nv));
#define NV(n_, nl_, v_, vl_) (nghttp2_nv){(uint8_t *)(n_), (uint8_t *)(v_), (nl_), (vl_), NGHTTP2_NV_FLAG_NONE}
    nv[n++] = NV(":method", 7, req->method.ptr, req->method.len);
    nv[n++] = NV(":scheme", 7, req->scheme.ptr, req->scheme.len);
    nv[n++] = NV(":authority", 10, req->authority.ptr, req->authority.len);
    nv[n++] = NV(":path", 5, req->path.ptr, req->path.len);
    for (size_t i = 0; i < req->nfields; i++) {
        const sl_header_t *f = &req->fields[i];
        nv[n] = NV(lower_name(st->arena, f->name), f->name.len, f->value.ptr, f->value.len);
        /* Unique per request: indexed, they would only push reusable fields out of the
         * server's HPACK table. */
        if ((f->name.len == 12 && sl_str_caseeq(f->name, SL_STR_LIT("x-request-id"))) ||
            (f->name.len == 11 && sl_str_caseeq(f->name, SL_STR_LIT("traceparent"))))
            nv[n].flags = NGHTTP2_NV_FLAG_NO_INDEX;
        n++;
    }
#undef NV
    nghttp2_data_provider dp = {.source.ptr = NULL, .read_callback = on_request_body};
    st->has_body = req->has_body;
    slot_t *sl = slot_take(hc, st);
    int32_t id = nghttp2_submit_request(hc->ng, NULL, nv, n, req->has_body ? &dp : NULL, sl);
    if (id < 0) {
        slot_give(hc, sl);
        sl_log_debug("upstream h2: submit_request: %s", nghttp2_strerror(id));
        if (hc->nstreams == 0 && !hc->up)
            conn_destroy(hc);
        return SL_EINVALID;
    }
    st->id = id;
    st->slot = sl;
    st->reused = hc->up;
    stream_link(hc, st);
    timer_update(hc);
    if (!hc->in_recv)
        conn_kick(hc);
    return 0;
}

void sl_h2up_stream_send_body(sl_h2up_stream_t *st, const char *data, size_t len, bool last)
{
    sl_h2up_conn_t *hc = st->conn;
    if (hc == NULL || st->req_eof)
        return;
    if (len == 0) {
        st->req_eof = true;
    } else {
        st->req_data = data;
        st->req_len = len;
        st->req_off = 0;
        st->req_last = last;
    }
    if (st->req_deferred) {
        st->req_deferred = false;
        nghttp2_session_resume_data(hc->ng, st->id);
    }
    if (!hc->in_recv)
        conn_kick(hc);
}

void sl_h2up_stream_consume(sl_h2up_stream_t *st, size_t n)
{
    sl_buf_t *b = st->body;
    SL_BUG_ON(b == NULL || n > b->len - b->off);
    b->off += n;
    if (b->off == b->len)
        b->off = b->len = 0;
    else
        sl_buf_compact(b);
    sl_h2up_conn_t *hc = st->conn;
    if (hc == NULL)
        return; /* closed: its connection window was returned then */
    nghttp2_session_consume(hc->ng, st->id, n);
    if (!hc->in_recv)
        conn_kick(hc);
}

void sl_h2up_stream_end(sl_h2up_stream_t *st)
{
    sl_h2up_conn_t *hc = st->conn;
    if (hc != NULL) {
        stream_unlink(st); /* its slot forgets it: nghttp2's later callbacks see no stream */
        if (st->body != NULL && st->body->len > st->body->off)
            nghttp2_session_consume(hc->ng, st->id, st->body->len - st->body->off);
        if (!hc->failed) {
            nghttp2_submit_rst_stream(hc->ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_CANCEL);
            if (!hc->in_recv)
                conn_kick(hc);
        }
        timer_update(hc);
    }
    if (st->body != NULL) {
        sl_buf_put(sl__connpool_h2_bufs(st->w), st->body);
        st->body = NULL;
    }
}

void sl_h2up_close_idle(sl_worker_t *w)
{
    for (size_t i = 0; i < sl__connpool_count(w); i++) {
        sl_h2up_conn_t **head = (sl_h2up_conn_t **)sl__connpool_mux(sl__connpool_at(w, i));
        sl_h2up_conn_t *hc = *head;
        while (hc != NULL) {
            sl_h2up_conn_t *next = hc->next;
            hc->no_new = true;
            if (hc->up && !hc->failed)
                nghttp2_submit_goaway(hc->ng, NGHTTP2_FLAG_NONE, 0, NGHTTP2_NO_ERROR, NULL, 0);
            if (hc->nstreams == 0) {
                sl_timeq_cancel(&hc->timer);
                if (hc->up && !hc->writing)
                    conn_flush(hc); /* the GOAWAY, then the close */
                else
                    conn_destroy(hc);
            }
            hc = next;
        }
    }
}

static void free_worker_state(uv_handle_t *h)
{
    free(h->data);
}

void sl_h2up_worker_dispose(sl_worker_t *w)
{
    void **p = sl__connpool_h2up_state(w);
    h2up_worker_t *hw = *p;
    if (hw == NULL)
        return;
    *p = NULL;
    uv_close((uv_handle_t *)&hw->idle, free_worker_state);
}
