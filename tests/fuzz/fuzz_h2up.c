/*
 * libFuzzer target for the HTTP/2 upstream client (src/upstream/h2up.c): arbitrary bytes as
 * what an upstream h2c server sends, driven through the public API (sl_h2up_stream_submit,
 * send_body, consume, end, close_idle) by streams that behave like the proxy: they copy and
 * consume response data (at once, half, or late), give request body slices (freed as soon as
 * body_taken says they were packed, so ASan sees any later read), end streams from inside
 * callbacks, are cancelled by the harness midway, and submit new streams from `closed`.
 *
 * No seam in src/: the connection is real TCP on loopback (h2up.c calls uv_tcp_connect itself)
 * to a listener of ours that accepts with plain syscalls and reads what the client writes, so
 * connects and writes are the real ones (small socket buffers and a server that reads slowly
 * make writes go pending). The server's bytes do not go through the socket: they are placed in
 * the connection's read buffer with connpool.c's own alloc callback and handed to its read
 * callback (sl__connpool_on_alloc / sl__connpool_on_read, exactly what libuv would call), in
 * chunks whose sizes come from the input. Every connection the client opens (GOAWAY or a small
 * SETTINGS_MAX_CONCURRENT_STREAMS make it open more) is fed the same server script from its
 * start, like a deterministic server. Time is simulated (the worker's timeout queues move).
 *
 * Input: a 22-byte header, then the server's bytes.
 *   byte 0  flags: bits 0-2 streams - 1 (1..8); bit 3 small socket buffers and a slow server
 *           (reads byte 3 * 64 bytes a step); bit 4 the clock moves byte 4 * 100 ms a step;
 *           bit 5 the target refuses the connection; bit 6 the server closes after its script
 *           (EOF; with bit 3 it resets the socket, and the client's read or write fails);
 *           bit 7 the clock jumps past the connect timeout before the first loop turn.
 *   bytes 1-2  chunk sizes, alternating: 0 the rest, 1..128 that many, else (v - 128) * 256.
 *   byte 3  slow server: bytes read per step / 64.   byte 4  clock step / 100 ms.
 *   byte 5  bits 0-5 the step at which the harness drains the worker's h2 connections
 *           (close_idle; 0 never); bits 6-7 reads per loop turn: 1, 2, 4 or 8 chunks.
 *   bytes 6-21  two per stream i:
 *     behaviour  bit 0 a request body; bits 1-2 slices - 1; bit 3 20 KB slices (else 1..97 B)
 *                and END_STREAM on the last slice (`last`) instead of an empty end;
 *                bits 4-5 consume: 0 all in `data`, 1 half there and the rest late, 2 late
 *                (and body slices given late), 3 only at the end (the window stays shut);
 *                bits 6-7 the user ends the stream inside: 0 never (after the input),
 *                1 `head`, 2 `data`, 3 `trailers`, `body_taken` (first slice) or `closed`.
 *     schedule   low nibble the step it is submitted at (0 before the connection is up; 15
 *                from inside another stream's `closed`); high nibble the step the harness
 *                cancels it at (0 never).
 *
 * Checks besides ASan/UBSan/LSan: no callback inside a call the harness made from outside a
 * callback, none after sl_h2up_stream_end or after `closed`, `closed` once; heads have a status
 * of 100..999, at most one final head, data and trailers only after it, COMPLETE only with
 * one; a refused submit links nothing. What the server reads is the preface, our SETTINGS,
 * then well-formed frames on client streams (no PUSH_PROMISE), request body bytes in order
 * and never after END_STREAM. After the input every connection is gone from its pool and from
 * the loop.
 *
 * Seeds: tests/fuzz/gen_h2up_corpus.py.
 */
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <uv.h>

#include "common/arena.h"
#include "common/bug.h"
#include "common/log.h"
#include "net/worker.h"
#include "upstream/connpool.h"
#include "upstream/h2up.h"

#define CHECK(c)                                                                                                       \
    do {                                                                                                               \
        if (!(c)) {                                                                                                    \
            fprintf(stderr, "fuzz_h2up: check failed at %s:%d: %s\n", __FILE__, __LINE__, #c);                         \
            __builtin_trap();                                                                                          \
        }                                                                                                              \
    } while (0)

void sl__connpool_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
void sl__connpool_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

#define NSTREAMS  8
#define HDR_LEN   (6 + 2 * NSTREAMS)
#define MAX_CONNS 24
#define MAX_STEPS 512

static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
#define PREFACE_LEN 24

/* ---- the worker and the listeners, set up once ----------------------------------------------- */

static sl_worker_t worker;
static int lfd[2] = {-1, -1};      /* normal, small buffers */
static struct sockaddr_in addr[3]; /* the two listeners, and a port that refuses */
static int refuse_fd = -1;         /* bound, not listening: connects are refused */
static sl_connpool_t *pools[3];

static void teardown(void)
{
    sl_h2up_worker_dispose(&worker);
    uv_run(&worker.loop, UV_RUN_NOWAIT);
    sl__connpool_worker_destroy(worker.up);
    worker.up = NULL;
    sl_worker_close(&worker);
    while (uv_run(&worker.loop, UV_RUN_NOWAIT) != 0)
        ;
    uv_loop_close(&worker.loop);
    sl_buf_pool_dispose(&worker.bufs);
    for (int i = 0; i < 2; i++)
        close(lfd[i]);
    close(refuse_fd);
}

static int bound_socket(struct sockaddr_in *a, int rcvbuf)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    CHECK(fd >= 0);
    if (rcvbuf > 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    memset(a, 0, sizeof(*a));
    a->sin_family = AF_INET;
    a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    /* The test port range (20000-32000; the ephemeral range is busy on shared machines), from
     * a place that depends on the process, so parallel fuzzers rarely collide. */
    static unsigned next;
    if (next == 0)
        next = (unsigned)getpid() * 7919u;
    int rc = -1;
    for (int tries = 0; tries < 2000 && rc != 0; tries++) {
        a->sin_port = htons((uint16_t)(20000 + next++ % 12000));
        rc = bind(fd, (struct sockaddr *)a, sizeof(*a));
    }
    CHECK(rc == 0);
    socklen_t len = sizeof(*a);
    CHECK(getsockname(fd, (struct sockaddr *)a, &len) == 0);
    return fd;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    signal(SIGPIPE, SIG_IGN);
    sl_log_set_level(SL_LOG_ERROR);
    CHECK(sl_worker_init(&worker, 0, NULL, 0) == 0);
    worker.up = sl__connpool_worker_create();
    for (int i = 0; i < 2; i++) {
        lfd[i] = bound_socket(&addr[i], i == 1 ? 2048 : 0);
        CHECK(listen(lfd[i], 64) == 0);
    }
    refuse_fd = bound_socket(&addr[2], 0);
    for (int i = 0; i < 3; i++)
        pools[i] = sl_connpool_get(&worker, (struct sockaddr *)&addr[i], sizeof(addr[i]), 0, NULL);
    atexit(teardown);
    return 0;
}

/* ---- the server side: what the client wrote ---------------------------------------------------- */

typedef struct sconn {
    int fd;
    int port;      /* the client's */
    size_t cursor; /* into the script */
    bool eof_sent;
    unsigned nchunks;
    bool dead;      /* its client connection is gone */
    sl_upconn_t *c; /* the client's connection, while it lives */
    /* the parser of what the client sent */
    size_t npre;
    uint8_t hd[9];
    size_t nhd, left, nframes;
    uint8_t type, flags;
    uint32_t sid;
    size_t body_off[32]; /* by stream id / 2 */
    bool ended[32];
} sconn_t;

static sconn_t sconns[MAX_CONNS];
static size_t nsconns;

static uint8_t pattern(size_t off)
{
    return (uint8_t)(off * 131u + (off >> 9) + 7u);
}

static void frame_begin(sconn_t *s)
{
    const uint8_t *hd = s->hd;
    s->left = (size_t)hd[0] << 16 | (size_t)hd[1] << 8 | hd[2];
    s->type = hd[3];
    s->flags = hd[4];
    s->sid = ((uint32_t)hd[5] << 24 | (uint32_t)hd[6] << 16 | (uint32_t)hd[7] << 8 | hd[8]) & 0x7fffffffu;
    if (s->nframes == 0)
        CHECK(s->type == 0x4 && s->sid == 0 && !(s->flags & 0x1)); /* our SETTINGS first */
    s->nframes++;
    CHECK(s->type <= 0x9 && s->type != 0x5); /* no extension frames, never PUSH_PROMISE */
    switch (s->type) {
    case 0x0: /* DATA */
    case 0x1: /* HEADERS */
    case 0x3: /* RST_STREAM */
        CHECK(s->sid != 0 && (s->sid & 1) == 1 && s->sid < 64);
        if (s->type != 0x3)
            CHECK(!s->ended[s->sid / 2]); /* nothing after END_STREAM */
        if (s->type == 0x3)
            CHECK(s->left == 4);
        break;
    case 0x4: /* SETTINGS */
    case 0x6: /* PING */
    case 0x7: /* GOAWAY */
        CHECK(s->sid == 0);
        if (s->type == 0x6)
            CHECK(s->left == 8);
        break;
    default:
        break;
    }
    if (s->type == 0x1 && (s->flags & 0x1))
        s->ended[s->sid / 2] = true;
    if (s->type == 0x0 && s->left == 0 && (s->flags & 0x1))
        s->ended[s->sid / 2] = true;
}

static void server_parse(sconn_t *s, const uint8_t *p, size_t n)
{
    while (n > 0) {
        if (s->npre < PREFACE_LEN) {
            CHECK(*p == (uint8_t)preface[s->npre]);
            s->npre++;
            p++;
            n--;
            continue;
        }
        if (s->left > 0) {
            size_t k = n < s->left ? n : s->left;
            if (s->type == 0x0) { /* DATA: the request body, in order (we never pad) */
                size_t *off = &s->body_off[s->sid / 2];
                for (size_t i = 0; i < k; i++)
                    CHECK(p[i] == pattern((*off)++));
            }
            s->left -= k;
            p += k;
            n -= k;
            if (s->left == 0 && s->type == 0x0 && (s->flags & 0x1))
                s->ended[s->sid / 2] = true;
            continue;
        }
        s->hd[s->nhd++] = *p++;
        n--;
        if (s->nhd == 9) {
            s->nhd = 0;
            frame_begin(s);
        }
    }
}

/* Reads what the client wrote: everything, or `budget` bytes. */
static void server_read(sconn_t *s, size_t budget)
{
    uint8_t buf[16384];
    while (s->fd >= 0) {
        size_t want = budget < sizeof(buf) ? budget : sizeof(buf);
        if (want == 0)
            return;
        ssize_t r = recv(s->fd, buf, want, 0);
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (r <= 0) { /* the client closed (EOF or RST): nothing more to read */
            close(s->fd);
            s->fd = -1;
            return;
        }
        server_parse(s, buf, (size_t)r);
        budget -= (size_t)r;
    }
}

static void server_accept(void)
{
    for (int i = 0; i < 2; i++) {
        for (;;) {
            struct sockaddr_in peer;
            socklen_t len = sizeof(peer);
            int fd = accept4(lfd[i], (struct sockaddr *)&peer, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd < 0)
                break;
            CHECK(nsconns < MAX_CONNS);
            struct linger lg = {1, 0}; /* close with RST: no TIME_WAIT piling up */
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
            sconns[nsconns++] = (sconn_t){.fd = fd, .port = ntohs(peer.sin_port)};
        }
    }
}

/* ---- the client's connections, found in the loop ------------------------------------------------ */

static sl_upconn_t *live[MAX_CONNS];
static size_t nlive;

static void walk_cb(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (h->type != UV_TCP || uv_is_closing(h))
        return;
    CHECK(nlive < MAX_CONNS);
    live[nlive++] = h->data; /* connpool.c: tcp.data is the sl_upconn_t */
}

static size_t live_conns(void)
{
    nlive = 0;
    uv_walk(&worker.loop, walk_cb, NULL);
    return nlive;
}

static int local_port(sl_upconn_t *c)
{
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    if (uv_tcp_getsockname(&c->tcp, (struct sockaddr *)&ss, &len) != 0 || ss.ss_family != AF_INET)
        return -1;
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

/* Pairs each connected client connection with its accepted socket. */
static sconn_t *find_sconn(sl_upconn_t *c, int port)
{
    for (size_t j = 0; j < nsconns; j++)
        if (sconns[j].port == port && !sconns[j].dead && (sconns[j].c == c || sconns[j].c == NULL))
            return &sconns[j];
    return NULL;
}

/* Pairs each connected client connection with its accepted socket (by the client's port; a
 * socket whose client went away is never paired again, whatever port comes back). */
static void pair_conns(bool small_bufs)
{
    live_conns();
    for (size_t j = 0; j < nsconns; j++) {
        bool alive = false;
        for (size_t i = 0; i < nlive && !alive && sconns[j].c != NULL; i++)
            alive = live[i] == sconns[j].c && !live[i]->closing;
        if (sconns[j].c != NULL && !alive)
            sconns[j].dead = true;
    }
    bool accepted = false;
    for (size_t i = 0; i < nlive; i++) {
        sl_upconn_t *c = live[i];
        if (!c->connected || c->closing)
            continue;
        int port = local_port(c);
        sconn_t *s = find_sconn(c, port);
        if (s == NULL && !accepted) { /* accept only when a connection is new */
            server_accept();
            accepted = true;
            s = find_sconn(c, port);
        }
        if (s == NULL || s->c == c)
            continue;
        s->c = c;
        uv_os_fd_t fd;
        if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0) {
            struct linger lg = {1, 0};
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
            if (small_bufs) {
                int sz = 4096;
                setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
            }
        }
    }
}

/* ---- the streams: a user like the proxy --------------------------------------------------------- */

typedef struct ustream {
    sl_h2up_stream_t st;
    sl_arena_t arena;
    int idx;
    uint8_t beh, sched;
    bool submitted, ended, closed, head_final, got_trailers, eof_given;
    bool late_consume, late_slice;
    unsigned nslices, given;
    size_t slice_size, body_off;
    char *slice; /* the slice h2up holds by reference */
    char path[8];
} ustream_t;

static ustream_t us[NSTREAMS];
static unsigned nus;
static int user_depth; /* inside a call the harness made from outside any callback */
static int cb_depth;
static unsigned sink;
static int cur_target;
static uint64_t timeouts_ms = 1000;

static void submit(ustream_t *u);

static void call_begin(void)
{
    if (cb_depth == 0)
        user_depth++;
}

static void call_end(void)
{
    if (cb_depth == 0)
        user_depth--;
}

static ustream_t *cb_enter(sl_h2up_stream_t *st)
{
    ustream_t *u = st->user;
    CHECK(u == &us[u->idx]);
    CHECK(user_depth == 0);         /* never from inside a call the user made */
    CHECK(!u->ended && !u->closed); /* nothing after end or closed */
    CHECK(u->submitted);
    cb_depth++;
    return u;
}

static void cb_leave(void)
{
    cb_depth--;
}

static void free_slice(ustream_t *u)
{
    free(u->slice);
    u->slice = NULL;
}

static void user_end(ustream_t *u)
{
    CHECK(!u->ended);
    call_begin();
    sl_h2up_stream_end(&u->st);
    call_end();
    u->ended = true;
    CHECK(u->st.conn == NULL && u->st.body == NULL);
    free_slice(u);
}

static void give_slice(ustream_t *u)
{
    u->late_slice = false;
    if (u->closed || u->ended || u->eof_given)
        return;
    bool last_flag = (u->beh & 0x08) != 0;
    if (u->given < u->nslices) {
        CHECK(u->slice == NULL);
        size_t n = u->slice_size ? u->slice_size : 1 + (u->body_off * 7 + (size_t)u->idx) % 97;
        u->slice = malloc(n);
        CHECK(u->slice != NULL);
        for (size_t i = 0; i < n; i++)
            u->slice[i] = (char)pattern(u->body_off + i);
        u->body_off += n;
        u->given++;
        bool last = last_flag && u->given == u->nslices;
        if (last)
            u->eof_given = true;
        call_begin();
        sl_h2up_stream_send_body(&u->st, u->slice, n, last);
        call_end();
    } else {
        u->eof_given = true;
        call_begin();
        sl_h2up_stream_send_body(&u->st, NULL, 0, true);
        call_end();
    }
}

static void consume(ustream_t *u, size_t n)
{
    if (n == 0)
        return;
    call_begin();
    sl_h2up_stream_consume(&u->st, n);
    call_end();
}

static void read_fields(const sl_header_t *h, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        for (size_t k = 0; k < h[i].name.len; k++)
            sink += (unsigned char)h[i].name.ptr[k];
        for (size_t k = 0; k < h[i].value.len; k++)
            sink += (unsigned char)h[i].value.ptr[k];
    }
}

static void on_head(sl_h2up_stream_t *st, int status, const sl_header_t *h, size_t n, bool end_stream)
{
    ustream_t *u = cb_enter(st);
    (void)end_stream;
    CHECK(status >= 100 && status <= 999);
    CHECK(!u->head_final);
    if (status >= 200)
        u->head_final = true;
    read_fields(h, n);
    if ((u->beh >> 6) == 1)
        user_end(u);
    cb_leave();
}

static void on_data(sl_h2up_stream_t *st)
{
    ustream_t *u = cb_enter(st);
    CHECK(u->head_final);
    sl_buf_t *b = st->body;
    CHECK(b != NULL && b->len > b->off && b->len <= b->cap);
    for (size_t i = b->off; i < b->len; i++)
        sink += (unsigned char)b->data[i];
    size_t avail = b->len - b->off;
    switch ((u->beh >> 4) & 3) {
    case 0:
        consume(u, avail);
        break;
    case 1:
        consume(u, (avail + 1) / 2);
        u->late_consume = true;
        break;
    case 2:
        u->late_consume = true;
        break;
    default:
        break;
    }
    if ((u->beh >> 6) == 2 && !u->ended)
        user_end(u);
    cb_leave();
}

static void on_trailers(sl_h2up_stream_t *st, const sl_header_t *h, size_t n)
{
    ustream_t *u = cb_enter(st);
    CHECK(u->head_final && !u->got_trailers);
    u->got_trailers = true;
    read_fields(h, n);
    if ((u->beh >> 6) == 3)
        user_end(u);
    cb_leave();
}

static void on_closed(sl_h2up_stream_t *st, enum sl_h2up_end how, const char *detail)
{
    ustream_t *u = cb_enter(st);
    u->closed = true;
    CHECK(st->conn == NULL);
    CHECK(detail != NULL);
    sink += (unsigned)strlen(detail);
    CHECK(how >= SL_H2UP_COMPLETE && how <= SL_H2UP_TIMEOUT);
    if (how == SL_H2UP_COMPLETE)
        CHECK(u->head_final);
    /* The slice is no longer held once the stream is unlinked. */
    free_slice(u);
    /* A stream that was waiting for one goes now: like a retry on another connection. */
    for (unsigned i = 0; i < nus; i++) {
        if (!us[i].submitted && !us[i].ended && (us[i].sched & 0x0f) == 15) {
            submit(&us[i]);
            break;
        }
    }
    if ((u->beh >> 6) == 3)
        user_end(u);
    cb_leave();
}

static void on_body_taken(sl_h2up_stream_t *st)
{
    ustream_t *u = cb_enter(st);
    CHECK(u->slice != NULL); /* only a slice given is taken */
    /* The slice is ours again: gone at once, so a later read by h2up is a use-after-free. */
    free_slice(u);
    if ((u->beh >> 6) == 3 && u->given == 1) {
        user_end(u);
    } else if (((u->beh >> 4) & 3) == 2) {
        u->late_slice = true;
    } else {
        give_slice(u);
    }
    cb_leave();
}

static void on_connected(sl_h2up_stream_t *st)
{
    ustream_t *u = cb_enter(st);
    CHECK(!st->reused);
    if ((u->beh & 1) && u->given == 0 && !u->eof_given)
        give_slice(u);
    cb_leave();
}

static const struct sl_h2up_stream_ops ops = {
    .head = on_head,
    .data = on_data,
    .trailers = on_trailers,
    .closed = on_closed,
    .body_taken = on_body_taken,
    .connected = on_connected,
};

static void submit(ustream_t *u)
{
    u->submitted = true;
    memset(&u->st, 0, sizeof(u->st));
    u->st.ops = &ops;
    u->st.user = u;
    u->st.arena = &u->arena;
    u->st.w = &worker;
    bool body = (u->beh & 1) != 0;
    u->nslices = 1 + ((u->beh >> 1) & 3);
    u->slice_size = (u->beh & 0x08) ? 20000 : 0;
    snprintf(u->path, sizeof(u->path), "/s%d", u->idx);
    static const sl_header_t fields[] = {
        {{"TE", 2}, {"trailers", 8}},
        {{"content-type", 12}, {"application/grpc", 16}},
        {{"X-Fuzz", 6}, {"1", 1}},
    };
    sl_h2up_request_t req = {
        .method = body ? SL_STR_LIT("POST") : SL_STR_LIT("GET"),
        .scheme = SL_STR_LIT("http"),
        .authority = SL_STR_LIT("upstream.test"),
        .path = {u->path, strlen(u->path)},
        .fields = fields,
        .nfields = SL_ARRAY_SIZE(fields),
        .has_body = body,
    };
    sl_h2up_target_t t = {
        .pool = pools[cur_target],
        .addr = (struct sockaddr *)&addr[cur_target],
        .addrlen = sizeof(addr[cur_target]),
        .connect_timeout_ms = timeouts_ms,
        .send_timeout_ms = 2 * timeouts_ms,
        .idle_timeout_ms = 5 * timeouts_ms,
    };
    call_begin();
    int r = sl_h2up_stream_submit(&worker, &t, &req, &u->st);
    call_end();
    if (r < 0) {
        CHECK(u->st.conn == NULL); /* nothing linked */
        u->ended = true;           /* no callback will come, nothing to end */
        return;
    }
    CHECK(u->st.conn != NULL || u->closed);
    if (body && u->st.reused)
        give_slice(u);
}

/* ---- time ---------------------------------------------------------------------------------------- */

/* As fuzz_h2.c: every linked timeout moves `ms` closer; the queues' timer fires next turn. */
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

/* ---- one input ----------------------------------------------------------------------------------- */

static size_t chunk_size(uint8_t v, size_t rest)
{
    size_t n = v == 0 ? rest : v <= 128 ? v : (size_t)(v - 128) * 256;
    return n < rest ? n : rest;
}

static void late_actions(void)
{
    for (unsigned i = 0; i < nus; i++) {
        ustream_t *u = &us[i];
        if (!u->submitted || u->ended)
            continue;
        if (u->late_consume && u->st.body != NULL) {
            u->late_consume = false;
            consume(u, u->st.body->len - u->st.body->off);
        }
        if (u->late_slice && !u->ended)
            give_slice(u);
    }
}

static void turn(bool small_bufs, size_t budget)
{
    uv_run(&worker.loop, UV_RUN_NOWAIT);
    pair_conns(small_bufs);
    for (size_t i = 0; i < nsconns; i++)
        server_read(&sconns[i], budget);
    late_actions();
    uv_run(&worker.loop, UV_RUN_NOWAIT);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t hdr[HDR_LEN] = {0};
    memcpy(hdr, data, size < HDR_LEN ? size : HDR_LEN);
    const uint8_t *script = data + (size < HDR_LEN ? size : HDR_LEN);
    size_t script_len = size > HDR_LEN ? size - HDR_LEN : 0;
    uint8_t flags = hdr[0];
    nus = 1 + (flags & 7);
    bool small_bufs = (flags & 0x08) != 0;
    uint64_t clock_step = (flags & 0x10) ? (uint64_t)hdr[4] * 100 : 0;
    cur_target = (flags & 0x20) ? 2 : small_bufs ? 1 : 0;
    bool server_eof = (flags & 0x40) != 0;
    size_t budget = small_bufs ? (size_t)hdr[3] * 64 : SIZE_MAX;
    unsigned drain_at = hdr[5] & 0x3f;
    unsigned reads_per_turn = 1u << (hdr[5] >> 6);

    nsconns = 0;
    user_depth = cb_depth = 0;
    for (unsigned i = 0; i < nus; i++) {
        us[i] = (ustream_t){.idx = (int)i, .beh = hdr[6 + 2 * i], .sched = hdr[7 + 2 * i]};
        sl_arena_init(&us[i].arena, 1024);
    }
    for (unsigned i = 0; i < nus; i++)
        if ((us[i].sched & 0x0f) == 0 && !us[i].submitted)
            submit(&us[i]);
    if (flags & 0x80)
        clock_advance(2 * timeouts_ms);

    unsigned tail = clock_step > 0 ? 8 : 0;
    for (unsigned step = 1; step < MAX_STEPS; step++) {
        for (unsigned i = 0; i < nus; i++) {
            ustream_t *u = &us[i];
            if (!u->submitted && !u->ended && (u->sched & 0x0f) == step)
                submit(u);
            if (u->submitted && !u->ended && (u->sched >> 4) == step)
                user_end(u); /* the harness cancels it */
        }
        if (drain_at == step) {
            call_begin();
            sl_h2up_close_idle(&worker);
            call_end();
        }
        turn(small_bufs, budget);
        /* The server's next chunks to every connection it is paired with: 1, 2, 4 or 8 reads
         * in a loop turn (libuv reads several times per poll when bytes keep coming). The
         * turn's last uv_run may have freed connections: pair again first. */
        pair_conns(small_bufs);
        for (size_t i = 0; i < nsconns; i++) {
            sconn_t *s = &sconns[i];
            for (unsigned k = 0; k < reads_per_turn; k++) {
                sl_upconn_t *c = s->c;
                if (c == NULL || s->dead || c->closing || c->user == NULL || !c->connected)
                    break;
                if (s->cursor < script_len) {
                    uint8_t v = hdr[1 + (s->nchunks++ & 1)];
                    size_t want = chunk_size(v, script_len - s->cursor);
                    uv_buf_t buf;
                    sl__connpool_on_alloc((uv_handle_t *)&c->tcp, want, &buf);
                    size_t n = want < buf.len ? want : buf.len;
                    if (n == 0)
                        break;
                    memcpy(buf.base, script + s->cursor, n);
                    s->cursor += n;
                    sl__connpool_on_read((uv_stream_t *)&c->tcp, (ssize_t)n, &buf);
                } else if (server_eof && !s->eof_sent) {
                    s->eof_sent = true;
                    if (small_bufs && s->fd >= 0) {
                        /* A reset: the client's socket sees it (its read, or a pending write). */
                        close(s->fd);
                        s->fd = -1;
                    } else {
                        sl__connpool_on_read((uv_stream_t *)&c->tcp, UV_EOF, NULL);
                    }
                } else {
                    break;
                }
            }
        }
        turn(small_bufs, budget);
        if (clock_step > 0) {
            clock_advance(clock_step);
            turn(small_bufs, budget);
        }
        /* More to come: a connection with script left, or one not paired yet. */
        bool more = false;
        live_conns();
        for (size_t i = 0; i < nlive && !more; i++) {
            sl_upconn_t *c = live[i];
            if (c->closing || c->user == NULL)
                continue;
            sconn_t *s = c->connected ? find_sconn(c, local_port(c)) : NULL;
            more = s == NULL || s->c != c || s->cursor < script_len || (server_eof && !s->eof_sent);
        }
        bool waiting = false; /* streams still to be submitted or cancelled by schedule */
        for (unsigned i = 0; i < nus; i++) {
            unsigned at = us[i].sched & 0x0f, cancel = us[i].sched >> 4;
            if ((!us[i].submitted && at != 15 && at > step) || (!us[i].ended && cancel > step))
                waiting = true;
        }
        /* With a moving clock, a few steps more after the script: timeouts get their turn. */
        if (!more && !waiting && drain_at <= step && tail-- == 0)
            break;
    }

    /* The user lets go of every stream; the worker drains; the server reads everything. */
    for (unsigned i = 0; i < nus; i++) {
        ustream_t *u = &us[i];
        if (u->submitted && !u->ended) {
            if (u->late_consume && u->st.body != NULL && u->st.body->len > u->st.body->off)
                consume(u, u->st.body->len - u->st.body->off);
            user_end(u);
        }
    }
    call_begin();
    sl_h2up_close_idle(&worker);
    call_end();
    for (int i = 0; i < 8 && live_conns() > 0; i++)
        turn(small_bufs, SIZE_MAX);
    for (int i = 0; i < 3; i++)
        uv_run(&worker.loop, UV_RUN_NOWAIT);
    CHECK(live_conns() == 0); /* every connection closed */
    for (int i = 0; i < 3; i++)
        CHECK(*sl__connpool_mux(pools[i]) == NULL);
    for (size_t i = 0; i < nsconns; i++)
        if (sconns[i].fd >= 0)
            close(sconns[i].fd);
    for (unsigned i = 0; i < nus; i++) {
        CHECK(us[i].ended || !us[i].submitted);
        CHECK(us[i].slice == NULL);
        sl_arena_dispose(&us[i].arena);
    }
    return 0;
}
