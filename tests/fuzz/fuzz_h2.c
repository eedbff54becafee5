/*
 * libFuzzer target for the HTTP/2 downstream session (src/http2/session.c): arbitrary bytes as
 * what a client sends on an h2c connection, through the real pipeline (routing, local answers,
 * echo reading the request body, and a scripted stand-in for the proxy on /up/ routes that
 * holds body slices, streams and aborts asynchronously) on a worker of our own with no socket. The session is driven
 * the way src/http1/server.c drives it (conn_start_h2, h2_feed, the h2_transport ops): bytes in
 * slices copied into buffers freed as soon as sl_h2_session_recv returns (as the connection's
 * read buffer is reused), the worker's loop run between slices so the batched flush happens,
 * then the connection closes (sl_h2_session_closed, cancelled write callbacks,
 * sl_h2_session_destroy) and the per-worker state goes (sl_h2_worker_destroy).
 *
 * Input: a 9-byte header, then the bytes after the client preface.
 *   byte 0  flags: bit 0 no preface (the input is the whole stream: bad prefaces too),
 *           bits 1-2 slices - 1, bit 3 end with EOF from the client (else the server closes),
 *           bit 4 graceful drain after the first slice, bit 5 writes complete later (the
 *           transport returns 0 and the write callback runs on the next pump), bit 6 the
 *           write after the first one fails (a reset socket: at once, or with bit 5 in its
 *           callback), bit 7 the clock moves.
 *   bytes 1-6  three big-endian 16-bit split offsets into the stream.
 *   byte 7  with flags bit 7: after each slice the clock moves this many 250 ms steps (so the
 *           drain's 1 s grace, client_body's 5 s and client_idle's 60 s can all expire). Time
 *           is simulated: the worker's timeout queues are moved forward, no sleep.
 *   byte 8  with flags bit 5: the client reads this many writes, then stops reading (the last
 *           write stays pending until the close cancels it); 0: it reads everything.
 *
 * Checks besides ASan/UBSan/LSan: what the session writes is a well-formed frame sequence
 * starting with our SETTINGS, read only when the write completes (a pending write's bytes must
 * stay valid until its callback); the session never writes while a write is pending nor after
 * the connection closed; after close the connection is not "active"; and once the session is
 * destroyed every exchange has been logged (worker in-flight count back to 0), has dropped
 * its snapshot reference (no exchange outlives its connection), and every scripted handler was
 * either finished by itself or told through x->on_abort (never from inside its own call); body
 * slices are read in full when resumed (still valid), never delivered twice without a resume;
 * sl_h2_preface_match agrees with the bytes.
 *
 * FUZZ_H2_TRACE=1 ./fuzz_h2 <file> prints every frame the session sends (response heads
 * decoded). Seeds: tests/fuzz/gen_h2_corpus.py.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <nghttp2/nghttp2.h>
#include <uv.h>

#include "common/bug.h"
#include "common/log.h"
#include "config/config.h"
#include "http/reply.h"
#include "http1/parser.h"
#include "http2/h2.h"
#include "net/worker.h"
#include "pipeline/snapshot.h"
#include "router/router.h"

#define CHECK(c)                                                                                                       \
    do {                                                                                                               \
        if (!(c)) {                                                                                                    \
            fprintf(stderr, "fuzz_h2: check failed at %s:%d: %s\n", __FILE__, __LINE__, #c);                           \
            __builtin_trap();                                                                                          \
        }                                                                                                              \
    } while (0)

static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
#define PREFACE_LEN (sizeof(preface) - 1)

/* ---- the worker, set up once --------------------------------------------------------------- */

static sl_worker_t worker;
static sl_snapshot_t *snap;
static bool trace; /* FUZZ_H2_TRACE set (below) */
static nghttp2_hd_inflater *trace_hd;

/* Routes that reach every path of the session: the scripted handler (/up/), a local answer
 * (small, bodiless, larger than the client's initial window so DATA waits for WINDOW_UPDATE),
 * echo (reads the request body within the stream window), a method-restricted route (405), and
 * anything else 404. Limits small enough that 431/414/413 are a few bytes away. The upstream
 * is never connected to: the snapshot's proxy hook is the scripted handler. */
static const char config_head[] =
    "listen: [ { address: \"127.0.0.1:28999\" } ]\n"
    "admin: off\n"
    "limits: { max_header_bytes: 2kb, max_uri_bytes: 512, max_body_bytes: 24kb, max_concurrent_streams: 8 }\n"
    "timeouts: { client_body: 5s, client_idle: 60s }\n"
    "upstreams: { fake: { targets: [ { address: \"127.0.0.1:9\" } ] } }\n"
    "routes:\n"
    "  - { name: up, match: { path_prefix: /up/ }, upstream: fake }\n"
    "  - { name: echo, match: { path_prefix: /echo }, respond: { echo: true } }\n"
    "  - { name: get, match: { path: /get, methods: [ GET, HEAD ] }, respond: { body: \"only get\\n\" } }\n"
    "  - { name: empty, match: { path: /204 }, respond: { status: 204 } }\n"
    "  - name: small\n"
    "    match: { path_prefix: /r }\n"
    "    respond: { body: \"hello\\n\" }\n"
    "    response_headers: { set: { Cache-Control: no-store, X-Multi: \"a\" }, add: { X-Multi: \"b\" } }\n"
    "  - name: big\n"
    "    match: { path_prefix: /big }\n"
    "    respond: { body: \"";
static const char config_tail[] = "\" }\n";
#define BIG_BODY 100000

static void script_start(sl_exchange_t *x, const sl_route_conf_t *route);

static void teardown(void)
{
    if (trace_hd != NULL)
        nghttp2_hd_inflate_del(trace_hd);
    sl_snapshot_unref(snap);
    snap = NULL;
    worker.snap = NULL;
    sl_worker_close(&worker);
    while (uv_run(&worker.loop, UV_RUN_NOWAIT) != 0)
        ;
    CHECK(uv_loop_close(&worker.loop) == 0);
    sl_buf_pool_dispose(&worker.bufs);
    free(worker.listeners);
    worker.listeners = NULL;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    sl_log_set_level(SL_LOG_ERROR);
    sl_h1_register_errors();
    size_t len = sizeof(config_head) - 1 + BIG_BODY + sizeof(config_tail) - 1;
    char *text = malloc(len);
    CHECK(text != NULL);
    memcpy(text, config_head, sizeof(config_head) - 1);
    for (size_t i = 0; i < BIG_BODY; i++)
        text[sizeof(config_head) - 1 + i] = (char)('a' + i % 26);
    memcpy(text + sizeof(config_head) - 1 + BIG_BODY, config_tail, sizeof(config_tail) - 1);
    sl_config_errors_t errs = {0};
    sl_config_t *cfg = NULL;
    sl_router_t *router = NULL;
    int rc = sl_config_load_buffer("fuzz_h2.yaml", text, len, &cfg, &errs);
    if (rc == 0)
        rc = sl_router_create(cfg, &router, &errs);
    if (rc != 0) {
        sl_config_errors_print(&errs, stderr);
        CHECK(rc == 0);
    }
    sl_config_errors_dispose(&errs);
    free(text);
    snap = sl_snapshot_create(cfg, router);
    snap->proxy = script_start;
    CHECK(sl_worker_init(&worker, 0, NULL, 0) == 0);
    worker.snap = snap;
    trace = getenv("FUZZ_H2_TRACE") != NULL;
    if (trace)
        CHECK(nghttp2_hd_inflate_new(&trace_hd) == 0);
    atexit(teardown);
    return 0;
}

/* ---- a scripted upstream handler ------------------------------------------------------------ */

/*
 * Routes with an upstream go to the snapshot's proxy hook; here it is a handler that plays the
 * part of the proxy from a script in the request path (/up/<script>), so the ops the proxy uses
 * are driven the way it drives them: asynchronously (on later loop turns), re-entrantly (from
 * inside the write and body callbacks, which run inside the session's flush and recv), holding
 * request body slices across loop turns (the backpressure), streaming a response larger than
 * the window, aborting. One op per character, run until one has to wait:
 *   b  body_start            r  body_resume once (the held slice is read first)
 *   R  resume every slice as it comes (inside the body callback) until the body ended or failed
 *   i  a 103 informational   h  head, streamed body   l  head, content-length 8   0  head, 204
 *   w  send_body, 3 parts (one empty)   W  send_body 40 kB   z  send_body, one empty part
 *   u  a 101 informational (not sent on HTTP/2)   f  finish   a  abort
 *   e  sl_reply_error (502) when no head was sent, else abort   .  wait for the next loop turn
 * At the end of the script: finish (a 200 head first if none was sent). A failed request body
 * is answered as the proxy does: the error reply for x->cause before the head, abort after. While it has work in
 * flight the handler sets x->on_abort; the session must call it before the exchange goes.
 */
typedef struct script {
    struct script *prev, *next;
    sl_exchange_t *x;
    char ops[64];
    size_t nops, pc;
    bool writing;     /* a send_body whose callback has not run */
    bool body_done;   /* end of body or an error seen */
    bool body_err;    /* the body failed: answered like the proxy does, at the next step */
    const char *held; /* a body slice not yet resumed */
    size_t nheld;
    bool running; /* script_run is on the stack (no recursion) */
} script_t;

static script_t *scripts; /* live handlers */
static char big_part[40000];
static unsigned sink_sum;

static void script_unlink(script_t *sc)
{
    if (sc->prev != NULL)
        sc->prev->next = sc->next;
    else
        scripts = sc->next;
    if (sc->next != NULL)
        sc->next->prev = sc->prev;
    free(sc);
}

/* The handler lets go of the exchange for good: it never touches x again. */
static void script_done(script_t *sc)
{
    sc->x->on_abort = NULL;
    sc->x->handler_data = NULL;
    script_unlink(sc);
}

static void script_on_abort(sl_exchange_t *x)
{
    script_t *sc = x->handler_data;
    CHECK(sc != NULL && sc->x == x);
    CHECK(!sc->running); /* never from inside one of the handler's own calls */
    x->handler_data = NULL;
    script_unlink(sc);
}

static void script_run(script_t *sc);

static void script_written(sl_exchange_t *x, int status)
{
    script_t *sc = x->handler_data;
    CHECK(sc != NULL && sc->writing);
    sc->writing = false;
    if (status < 0) {
        sl_exchange_t *xx = sc->x;
        script_done(sc);
        xx->down->abort(xx);
        return;
    }
    script_run(sc); /* re-entrant, like the proxy reading on once a write left */
}

static void script_consume(script_t *sc)
{
    /* The slice is valid until body_resume: read all of it (ASan checks it still is). */
    for (size_t i = 0; i < sc->nheld; i++)
        sink_sum += (unsigned char)sc->held[i];
    sc->held = NULL;
    sc->nheld = 0;
    sc->x->down->body_resume(sc->x);
}

static void script_body(sl_exchange_t *x, int status, const char *data, size_t len)
{
    script_t *sc = x->handler_data;
    if (sc == NULL)
        return; /* let go already (finished, replied, aborted): ignored, as the proxy does (PX_DONE) */
    CHECK(sc->x == x && !sc->body_done);
    CHECK(sc->held == NULL); /* nothing is delivered before the last slice was resumed */
    if (status < 0 || len == 0) {
        sc->body_done = true;
        if (status < 0) {
            CHECK(data == NULL && len == 0);
            sc->body_err = true;
        }
    } else {
        CHECK(data != NULL);
        sc->held = data;
        sc->nheld = len;
    }
    if (sc->pc < sc->nops && sc->ops[sc->pc] == 'R' && sc->held != NULL && !sc->running)
        script_consume(sc); /* inside the delivery, like echo */
    else
        script_run(sc);
}

static void script_finish(script_t *sc)
{
    sl_exchange_t *x = sc->x;
    if (!x->head_sent) {
        x->status = 200;
        x->resp_body_kind = SL_BODY_NONE;
    }
    script_done(sc);
    x->down->finish(x);
}

static void head(sl_exchange_t *x, int status, enum sl_body_kind kind, uint64_t len)
{
    x->status = status;
    x->resp_body_kind = kind;
    x->resp_content_length = len;
    sl_headers_add(&x->arena, &x->resp_headers, SL_STR_LIT("X-Script"), SL_STR_LIT("1"));
    sl_headers_add(&x->arena, &x->resp_headers, SL_STR_LIT("Connection"), SL_STR_LIT("close"));
}

/* Runs ops until one has to wait. Returns with the handler possibly done (sc freed). */
static void script_run(script_t *sc)
{
    if (sc->running)
        return;
    sc->running = true;
    sl_exchange_t *x = sc->x;
    while (sc->pc < sc->nops || sc->body_err) {
        if (sc->body_err && !sc->writing) {
            script_done(sc);
            if (x->cause != SL_CAUSE_NONE && !x->head_sent)
                sl_reply_error(x, x->cause, NULL);
            else
                x->down->abort(x);
            return;
        }
        if (sc->writing)
            goto wait;
        char op = sc->ops[sc->pc];
        switch (op) {
        case 'b':
            sc->pc++;
            x->down->body_start(x, script_body);
            if (x->handler_data != sc)
                return; /* aborted under the call */
            continue;
        case 'r':
            sc->pc++;
            if (sc->held != NULL) {
                script_consume(sc);
                if (x->handler_data != sc)
                    return;
            }
            continue;
        case 'R':
            if (sc->held != NULL) {
                script_consume(sc);
                if (x->handler_data != sc)
                    return;
                continue;
            }
            if (!sc->body_done)
                goto wait;
            sc->pc++;
            continue;
        case 'i':
        case 'u': {
            sc->pc++;
            static const sl_header_t link = {{"Link", 4}, {"</s.css>; rel=preload", 21}};
            if (!x->head_sent)
                x->down->send_informational(x, op == 'i' ? 103 : 101, &link, 1);
            continue;
        }
        case 'h':
        case 'l':
        case '0':
            sc->pc++;
            if (x->head_sent)
                continue;
            if (op == 'h')
                head(x, 200, SL_BODY_STREAM, 0);
            else if (op == 'l')
                head(x, 200, SL_BODY_LENGTH, 8);
            else
                head(x, 204, SL_BODY_NONE, 0);
            if (x->down->send_head(x) != 0) {
                script_done(sc);
                x->down->abort(x);
                return;
            }
            continue;
        case 'w':
        case 'W':
        case 'z': {
            sc->pc++;
            if (!x->head_sent)
                head(x, 200, SL_BODY_STREAM, 0);
            static const sl_str_t small[3] = {{"abcde", 5}, {"", 0}, {"fgh", 3}};
            sl_str_t big = {big_part, sizeof(big_part)};
            sc->writing = true;
            int r = op == 'w'   ? x->down->send_body(x, small, 3, script_written)
                    : op == 'W' ? x->down->send_body(x, &big, 1, script_written)
                                : x->down->send_body(x, &small[1], 1, script_written);
            if (r != 0)
                sc->writing = false;
            if (r < 0) {
                script_done(sc);
                x->down->abort(x);
                return;
            }
            if (x->handler_data != sc)
                return;
            continue;
        }
        case 'f':
            script_finish(sc);
            return;
        case 'a':
            script_done(sc);
            x->down->abort(x);
            return;
        case 'e':
            if (x->head_sent) {
                script_done(sc);
                x->down->abort(x);
            } else {
                script_done(sc);
                sl_reply_error(x, SL_CAUSE_UPSTREAM_BAD_RESPONSE, NULL);
            }
            return;
        case '.':
            sc->pc++;
            goto wait;
        default:
            sc->pc++;
            continue;
        }
    }
    if (!sc->writing) {
        script_finish(sc);
        return;
    }
wait:
    sc->running = false;
}

/* The snapshot's proxy hook. */
static void script_start(sl_exchange_t *x, const sl_route_conf_t *route)
{
    (void)route;
    script_t *sc = calloc(1, sizeof(*sc));
    CHECK(sc != NULL);
    sc->x = x;
    sl_str_t p = x->path;
    size_t skip = 4; /* "/up/" */
    if (p.len > skip) {
        sc->nops = p.len - skip < sizeof(sc->ops) ? p.len - skip : sizeof(sc->ops);
        memcpy(sc->ops, p.ptr + skip, sc->nops);
    }
    sc->next = scripts;
    if (scripts != NULL)
        scripts->prev = sc;
    scripts = sc;
    x->handler_data = sc;
    x->on_abort = script_on_abort;
    script_run(sc);
}

/* Each loop turn: every live handler gets to go on. */
static void scripts_tick(void)
{
    script_t *next;
    for (script_t *sc = scripts; sc != NULL; sc = next) {
        next = sc->next;
        script_run(sc);
        /* script_run may free sc and others reached from the list: start over when it did. */
        if (next != NULL) {
            bool still = false;
            for (script_t *t = scripts; t != NULL && !still; t = t->next)
                still = t == next;
            if (!still)
                next = scripts;
        }
    }
}

/* ---- the output: a frame sequence ----------------------------------------------------------- */

typedef struct frames {
    uint8_t hd[9];
    size_t nhd;
    uint8_t *pl; /* trace only: the current frame's payload */
    size_t npl;
    size_t left; /* payload bytes of the current frame still to come */
    size_t nframes;
    size_t bytes;
} frames_t;

/* FUZZ_H2_TRACE=1: each frame we send is printed (response heads decoded), to see what a seed
 * makes the session answer. Off while fuzzing. */
static void trace_frame(const uint8_t *hd, const uint8_t *payload)
{
    static const char *const names[] = {"DATA", "HEADERS", "PRIORITY", "RST_STREAM",    "SETTINGS",
                                        "PUSH", "PING",    "GOAWAY",   "WINDOW_UPDATE", "CONTINUATION"};
    uint32_t len = (uint32_t)hd[0] << 16 | (uint32_t)hd[1] << 8 | hd[2];
    uint32_t sid = ((uint32_t)hd[5] << 24 | (uint32_t)hd[6] << 16 | (uint32_t)hd[7] << 8 | hd[8]) & 0x7fffffffu;
    fprintf(stderr, "  > %s stream=%u len=%u flags=0x%x", hd[3] <= 9 ? names[hd[3]] : "?", sid, len, hd[4]);
    if ((hd[3] == 0x3 || hd[3] == 0x7) && len >= 4) {
        const uint8_t *e = payload + (hd[3] == 0x7 ? 4 : 0);
        fprintf(stderr, " error=%u", (unsigned)(e[0] << 24 | e[1] << 16 | e[2] << 8 | e[3]));
        if (hd[3] == 0x7 && len > 8)
            fprintf(stderr, " debug=\"%.*s\"", (int)(len - 8), (const char *)payload + 8);
    }
    if (hd[3] == 0x1 && (hd[4] & 0x4)) { /* HEADERS with END_HEADERS, no padding/priority from us */
        const uint8_t *in = payload;
        size_t left = len;
        for (;;) {
            nghttp2_nv nv;
            int fl = 0;
            ssize_t r = nghttp2_hd_inflate_hd2(trace_hd, &nv, &fl, in, left, 1);
            if (r < 0)
                break;
            in += r;
            left -= (size_t)r;
            if (fl & NGHTTP2_HD_INFLATE_EMIT)
                fprintf(stderr, " %.*s=%.*s", (int)nv.namelen, nv.name, nv.valuelen > 40 ? 40 : (int)nv.valuelen,
                        nv.value);
            if (fl & NGHTTP2_HD_INFLATE_FINAL) {
                nghttp2_hd_inflate_end_headers(trace_hd);
                break;
            }
            if (r == 0 && !(fl & NGHTTP2_HD_INFLATE_EMIT))
                break;
        }
    }
    fputc('\n', stderr);
}

static void frame_check(const frames_t *f, const uint8_t *hd)
{
    uint32_t len = (uint32_t)hd[0] << 16 | (uint32_t)hd[1] << 8 | hd[2];
    uint8_t type = hd[3];
    uint32_t sid = ((uint32_t)hd[5] << 24 | (uint32_t)hd[6] << 16 | (uint32_t)hd[7] << 8 | hd[8]) & 0x7fffffffu;
    if (f->nframes == 0)
        CHECK(type == 0x4 && sid == 0 && (hd[4] & 0x1) == 0); /* our SETTINGS comes first */
    CHECK(type <= 0x9);                                       /* no extension frames */
    switch (type) {
    case 0x0:                              /* DATA */
    case 0x1:                              /* HEADERS */
    case 0x3:                              /* RST_STREAM */
        CHECK(sid != 0 && (sid & 1) == 1); /* client-initiated streams only: we never push */
        break;
    case 0x4: /* SETTINGS */
    case 0x6: /* PING */
    case 0x7: /* GOAWAY */
        CHECK(sid == 0);
        break;
    case 0x2: /* PRIORITY */
    case 0x5: /* PUSH_PROMISE */
    case 0x9: /* CONTINUATION: nghttp2 sends one HEADERS per head (max frame size permitting) */
        break;
    }
    if (type == 0x3)
        CHECK(len == 4);
    if (type == 0x6)
        CHECK(len == 8);
    CHECK(type != 0x5); /* ENABLE_PUSH is off and we never push */
}

static void frames_feed(frames_t *f, const uint8_t *p, size_t n)
{
    f->bytes += n;
    while (n > 0) {
        if (f->left > 0) {
            size_t k = n < f->left ? n : f->left;
            if (trace) {
                memcpy(f->pl + f->npl, p, k);
                f->npl += k;
                if (k == f->left)
                    trace_frame(f->hd, f->pl);
            }
            f->left -= k;
            p += k;
            n -= k;
            continue;
        }
        f->hd[f->nhd++] = *p++;
        n--;
        if (f->nhd == 9) {
            frame_check(f, f->hd);
            f->left = (size_t)f->hd[0] << 16 | (size_t)f->hd[1] << 8 | f->hd[2];
            f->nhd = 0;
            f->nframes++;
            if (trace) {
                free(f->pl);
                f->pl = malloc(f->left + 1);
                f->npl = 0;
                if (f->left == 0)
                    trace_frame(f->hd, f->pl);
            }
        }
    }
}

/* ---- the fake connection ---------------------------------------------------------------------- */

typedef struct fconn {
    sl_h2_session_t *s;
    bool closed;
    bool active;
    bool defer_writes;
    bool fail_second;
    unsigned nwrites;
    unsigned read_budget; /* deferred writes the client takes before it stops reading; 0: all */
    unsigned ncompleted;
    /* a write the transport has not completed yet */
    uv_write_t *pending;
    uv_write_cb pending_cb;
    uv_buf_t pending_iov[4];
    unsigned pending_n;
    frames_t out;
} fconn_t;

static int t_write(void *conn, uv_write_t *req, uv_buf_t *iov, unsigned n, uv_write_cb cb)
{
    fconn_t *c = conn;
    CHECK(!c->closed);         /* the session writes nothing once the connection closes */
    CHECK(c->pending == NULL); /* one write at a time: the next waits for the callback */
    CHECK(n >= 1 && n <= SL_ARRAY_SIZE(c->pending_iov));
    c->nwrites++;
    if (c->fail_second && c->nwrites == 2 && !c->defer_writes)
        return -104; /* ECONNRESET, as sl_stream_write reports it */
    if (c->defer_writes) {
        /* Like uv_write: the iov array is copied, the bytes must stay valid until cb. */
        c->pending = req;
        c->pending_cb = cb;
        memcpy(c->pending_iov, iov, n * sizeof(*iov));
        c->pending_n = n;
        return 0;
    }
    for (unsigned i = 0; i < n; i++)
        frames_feed(&c->out, (const uint8_t *)iov[i].base, iov[i].len);
    return 1;
}

static void t_close(void *conn)
{
    fconn_t *c = conn;
    CHECK(!c->closed);
    c->closed = true;
    sl_h2_session_closed(c->s);
}

static void t_active(void *conn, bool active)
{
    fconn_t *c = conn;
    CHECK(active != c->active); /* only changes are reported */
    c->active = active;
}

static const sl_h2_transport_t transport = {.write = t_write, .close = t_close, .active = t_active};

/* The socket took the pending write (status 0), or the close cancelled it. */
static void complete_write(fconn_t *c, int status)
{
    uv_write_t *req = c->pending;
    if (req == NULL)
        return;
    if (status == 0 && c->read_budget > 0 && c->ncompleted >= c->read_budget)
        return; /* the client stopped reading: the write stays pending */
    if (status == 0 && c->fail_second && c->nwrites == 2)
        status = -104; /* the reset shows in the write's callback */
    c->ncompleted++;
    if (status == 0)
        for (unsigned i = 0; i < c->pending_n; i++)
            frames_feed(&c->out, (const uint8_t *)c->pending_iov[i].base, c->pending_iov[i].len);
    c->pending = NULL;
    c->pending_cb(req, status);
}

/* Time passes by `ms` for every timeout of the worker: each linked entry's deadline moves that
 * much closer (the queues stay sorted), and the queues' timer is re-armed to fire on the next
 * loop turn, when on_timer expires what is due. The timeq structures are public (net/timeq.h);
 * the timer's callback is the one timeq.c armed it with. */
static void clock_advance(uint64_t ms)
{
    sl_timeqs_t *t = &worker.timeqs;
    bool any = false;
    for (unsigned i = 0; i < t->nqueues; i++) {
        sl_timeq_entry_t *head = &t->queues[i].head;
        for (sl_timeq_entry_t *e = head->next; e != head; e = e->next) {
            e->deadline = e->deadline > ms ? e->deadline - ms : 0;
            any = true;
        }
    }
    if (any && t->timer.timer_cb != NULL) {
        t->armed_for = 0;
        uv_timer_start(&t->timer, t->timer.timer_cb, 0, 0);
    }
}

/* A few loop turns: the flush idle handle runs, pending writes complete. */
static void pump(fconn_t *c)
{
    for (int i = 0; i < 4; i++) {
        uv_run(&worker.loop, UV_RUN_NOWAIT);
        scripts_tick();
        if (!c->closed)
            complete_write(c, 0);
    }
}

static uint16_t be16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t hdr[9] = {0};
    memcpy(hdr, data, size < sizeof(hdr) ? size : sizeof(hdr));
    const uint8_t *body = size > sizeof(hdr) ? data + sizeof(hdr) : data + size;
    size_t body_len = size > sizeof(hdr) ? size - sizeof(hdr) : 0;
    uint8_t flags = hdr[0];
    bool with_preface = !(flags & 0x01);
    unsigned nslices = 1 + ((flags >> 1) & 3);
    bool peer_eof = (flags & 0x08) != 0;
    bool drain = (flags & 0x10) != 0;
    uint64_t clock_step = (flags & 0x80) ? (uint64_t)hdr[7] * 250 : 0;

    /* The stream the client sends: preface + input (or the input alone). */
    size_t total = (with_preface ? PREFACE_LEN : 0) + body_len;
    uint8_t *stream = malloc(total ? total : 1);
    CHECK(stream != NULL);
    if (with_preface)
        memcpy(stream, preface, PREFACE_LEN);
    if (body_len > 0)
        memcpy(stream + (with_preface ? PREFACE_LEN : 0), body, body_len);
    size_t cuts[5] = {0};
    for (unsigned i = 0; i + 1 < nslices; i++) {
        size_t at = be16(hdr + 1 + 2 * i);
        cuts[i + 1] = at < total ? at : total;
    }
    cuts[nslices] = total;
    for (unsigned i = 1; i < nslices; i++) /* sorted, so slices are in order */
        for (unsigned j = i; j > 1 && cuts[j - 1] > cuts[j]; j--) {
            size_t t = cuts[j];
            cuts[j] = cuts[j - 1];
            cuts[j - 1] = t;
        }

    /* What the connection's h2c sniffing (conn_process_one) would decide on these bytes. */
    int m = sl_h2_preface_match((const char *)stream, total);
    size_t k = total < PREFACE_LEN ? total : PREFACE_LEN;
    CHECK(m == (memcmp(stream, preface, k) != 0 ? -1 : k == PREFACE_LEN ? 1 : 0));

    unsigned refs_before = atomic_load(&snap->refcount);
    sl_h2_worker_t *hw = sl_h2_worker_create(&worker);
    fconn_t c = {.defer_writes = (flags & 0x20) != 0, .fail_second = (flags & 0x40) != 0, .read_budget = hdr[8]};
    sl_h2_peer_t peer = {
        .client_ip = "192.0.2.7", .client_port = 40000, .client_family = AF_INET, .client_addr = {192, 0, 2, 7}};
    CHECK(sl_h2_session_create(hw, &transport, &c, &peer, &c.s) == 0);
    pump(&c);
    for (unsigned i = 0; i < nslices && !c.closed; i++) {
        size_t n = cuts[i + 1] - cuts[i];
        if (n > 0) {
            /* A buffer of its own, gone after the call, like the connection's read buffer. */
            char *p = malloc(n);
            CHECK(p != NULL);
            memcpy(p, stream + cuts[i], n);
            sl_h2_session_recv(c.s, p, n);
            free(p);
        }
        if (drain && i == 0 && !c.closed)
            sl_h2_session_drain(c.s);
        pump(&c);
        if (clock_step > 0 && !c.closed) {
            clock_advance(clock_step);
            pump(&c);
        }
    }
    free(stream);

    /* The connection ends: EOF from the client, or the server closes it (drain timeout, a
     * reload, shutdown); either way sl_h2_session_closed runs once, then cancelled writes'
     * callbacks, then destroy after the socket's close callback. */
    if (!c.closed) {
        if (peer_eof)
            sl_h2_session_peer_eof(c.s);
        else
            t_close(&c);
    }
    CHECK(c.closed && !c.active);
    complete_write(&c, UV_ECANCELED);
    uv_run(&worker.loop, UV_RUN_NOWAIT);
    sl_h2_session_destroy(c.s);
    sl_h2_worker_destroy(hw);
    uv_run(&worker.loop, UV_RUN_NOWAIT);
    uv_run(&worker.loop, UV_RUN_NOWAIT);

    free(c.out.pl);
    if (trace) {
        fprintf(stderr, "  closed after %u writes, %zu frames, %zu bytes\n", c.nwrites, c.out.nframes, c.out.bytes);
        nghttp2_hd_inflate_del(trace_hd);
        CHECK(nghttp2_hd_inflate_new(&trace_hd) == 0);
    }
    CHECK(scripts == NULL);                             /* every handler was let go */
    CHECK(worker.inflight == 0);                        /* every exchange was logged */
    CHECK(atomic_load(&snap->refcount) == refs_before); /* and let go of its snapshot */
    CHECK(c.nwrites == 0 || c.out.nframes > 0 || c.defer_writes || c.fail_second);
    return 0;
}
