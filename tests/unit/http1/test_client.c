/*
 * The outgoing HTTP/1.1 client against a real loop and a tiny libuv server in the same loop on
 * 127.0.0.1: each framing (Content-Length, chunked, until close), statuses passed through,
 * every error (refused, timeout, too large, garbage, unresolvable) and cancel in each phase.
 * Each test ends by running the loop dry and closing it, so a handle left open fails the test
 * and ASan sees every fetch object freed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <uv.h>

#include "common/error.h"
#include "http1/client.h"

/* ---- the test server ------------------------------------------------------------------------ */

typedef struct srv srv_t;

typedef struct sconn {
    uv_tcp_t tcp;
    srv_t *srv;
    struct sconn *next;
    bool closing;
    size_t len;
    char buf[8192];
} sconn_t;

struct srv {
    uv_tcp_t listener;
    int port;
    const char *reply; /* sent once the request head (and its Content-Length body) is in */
    size_t reply_len;
    bool silent;    /* never answers */
    bool keep_open; /* does not close after replying */
    int requests;   /* complete requests seen */
    int writes_done;
    char last[8192]; /* the last complete request */
    size_t last_len;
    sconn_t *conns;
};

static void sconn_close_cb(uv_handle_t *h)
{
    sconn_t *c = h->data;
    srv_t *s = c->srv;
    for (sconn_t **pp = &s->conns; *pp != NULL; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    free(c);
}

static void sconn_close(sconn_t *c)
{
    if (!c->closing) {
        c->closing = true;
        uv_close((uv_handle_t *)&c->tcp, sconn_close_cb);
    }
}

typedef struct swrite {
    uv_write_t w;
    sconn_t *c;
} swrite_t;

static void on_swrite(uv_write_t *w, int status)
{
    (void)status;
    swrite_t *sw = (swrite_t *)w;
    sw->c->srv->writes_done++;
    if (!sw->c->srv->keep_open)
        sconn_close(sw->c);
    free(sw);
}

static void on_salloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    sconn_t *c = h->data;
    *buf = uv_buf_init(c->buf + c->len, (unsigned)(sizeof(c->buf) - c->len));
}

static size_t request_length(const char *p, size_t n)
{
    const char *e = memmem(p, n, "\r\n\r\n", 4);
    if (e == NULL)
        return 0;
    size_t head = (size_t)(e - p) + 4;
    const char *cl = memmem(p, head, "Content-Length: ", 16);
    size_t body = cl != NULL ? (size_t)strtoul(cl + 16, NULL, 10) : 0;
    return n >= head + body ? head + body : 0;
}

static void on_sread(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    (void)buf;
    sconn_t *c = st->data;
    srv_t *s = c->srv;
    if (nread < 0) {
        sconn_close(c);
        return;
    }
    c->len += (size_t)nread;
    size_t n = request_length(c->buf, c->len);
    if (n == 0)
        return;
    s->requests++;
    memcpy(s->last, c->buf, n);
    s->last_len = n;
    c->len = 0;
    if (s->silent)
        return;
    swrite_t *sw = calloc(1, sizeof(*sw));
    sw->c = c;
    uv_buf_t b = uv_buf_init((char *)s->reply, (unsigned)s->reply_len);
    uv_write(&sw->w, st, &b, 1, on_swrite);
}

static void on_sconn(uv_stream_t *l, int status)
{
    srv_t *s = l->data;
    if (status < 0)
        return;
    sconn_t *c = calloc(1, sizeof(*c));
    c->srv = s;
    uv_tcp_init(l->loop, &c->tcp);
    c->tcp.data = c;
    c->next = s->conns;
    s->conns = c;
    if (uv_accept(l, (uv_stream_t *)&c->tcp) == 0)
        uv_read_start((uv_stream_t *)&c->tcp, on_salloc, on_sread);
    else
        sconn_close(c);
}

/* Binds a listener on a free port in 20000-32000. */
static void srv_start(uv_loop_t *loop, srv_t *s, const char *reply)
{
    memset(s, 0, sizeof(*s));
    s->reply = reply;
    s->reply_len = reply != NULL ? strlen(reply) : 0;
    for (int tries = 0; tries < 200; tries++) {
        int port = 20000 + (int)(((unsigned)rand() ^ (unsigned)getpid() * 7919u) % 12000u);
        struct sockaddr_in a;
        uv_ip4_addr("127.0.0.1", port, &a);
        assert_int_equal(uv_tcp_init(loop, &s->listener), 0);
        s->listener.data = s;
        if (uv_tcp_bind(&s->listener, (const struct sockaddr *)&a, 0) == 0 &&
            uv_listen((uv_stream_t *)&s->listener, 16, on_sconn) == 0) {
            s->port = port;
            return;
        }
        uv_close((uv_handle_t *)&s->listener, NULL);
        uv_run(loop, UV_RUN_NOWAIT);
    }
    fail_msg("no free port");
}

static void srv_stop(srv_t *s)
{
    for (sconn_t *c = s->conns; c != NULL; c = c->next)
        sconn_close(c);
    uv_close((uv_handle_t *)&s->listener, NULL);
}

/* ---- the client side ------------------------------------------------------------------------ */

typedef struct result {
    int calls;
    int code;
    int status;
    char body[300000];
    size_t body_len;
    char ctype[64];
} result_t;

static result_t R;

static void fetch_cb(void *arg, int code, const sl_fetch_response_t *res)
{
    result_t *r = arg;
    r->calls++;
    r->code = code;
    if (res != NULL) {
        assert_int_equal(code, res->status);
        r->status = res->status;
        assert_true(res->body.len < sizeof(r->body));
        memcpy(r->body, res->body.ptr, res->body.len);
        r->body_len = res->body.len;
        assert_int_equal(res->body.ptr[res->body.len], '\0');
        for (size_t i = 0; i < res->nheaders; i++)
            if (sl_str_caseeq_cstr(res->headers[i].name, "content-type"))
                snprintf(r->ctype, sizeof(r->ctype), "%.*s", SL_STR_FMT(res->headers[i].value));
    } else {
        assert_true(code < 0);
    }
}

static uv_loop_t loop;

static int setup(void **state)
{
    (void)state;
    memset(&R, 0, sizeof(R));
    sl_h1_fetch_register_errors();
    return uv_loop_init(&loop);
}

/* Runs until the callback came, then stops the server and runs the loop dry. */
static void finish_test(srv_t *s)
{
    while (R.calls == 0 && uv_run(&loop, UV_RUN_ONCE) != 0)
        ;
    if (s != NULL)
        srv_stop(s);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static int teardown(void **state)
{
    (void)state;
    return 0;
}

static int start(const char *url, uint64_t timeout_ms, size_t max_body, sl_h1_fetch_t **h)
{
    sl_h1_fetch_request_t req = {.url = url, .timeout_ms = timeout_ms, .max_body = max_body};
    return sl_h1_fetch(&loop, &req, fetch_cb, &R, h);
}

static int start_srv(srv_t *s, const char *path, uint64_t timeout_ms, size_t max_body, sl_h1_fetch_t **h)
{
    char url[128];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", s->port, path);
    return start(url, timeout_ms, max_body, h);
}

/* ---- tests ---------------------------------------------------------------------------------- */

static void test_content_length(void **state)
{
    (void)state;
    srv_t s;
    srv_start(&loop, &s,
              "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"keys\":[]}");
    assert_int_equal(start_srv(&s, "/jwks?x=1", 2000, 1024, NULL), 0);
    assert_int_equal(R.calls, 0); /* never synchronously */
    finish_test(&s);
    assert_int_equal(R.calls, 1);
    assert_int_equal(R.code, 200);
    assert_int_equal(R.body_len, 11);
    assert_memory_equal(R.body, "{\"keys\":[]}", 11);
    assert_string_equal(R.ctype, "application/json");
    char want[128];
    snprintf(want, sizeof(want), "GET /jwks?x=1 HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n\r\n", s.port);
    assert_int_equal(s.last_len, strlen(want));
    assert_memory_equal(s.last, want, s.last_len);
}

static void test_post_with_headers_and_body(void **state)
{
    (void)state;
    srv_t s;
    srv_start(&loop, &s, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", s.port);
    sl_header_t hs[] = {{SL_STR_LIT("Content-Type"), SL_STR_LIT("application/x-www-form-urlencoded")},
                        {SL_STR_LIT("Authorization"), SL_STR_LIT("Basic YTpi")}};
    sl_h1_fetch_request_t req = {.method = SL_STR_LIT("POST"),
                                 .url = url,
                                 .headers = hs,
                                 .nheaders = 2,
                                 .body = SL_STR_LIT("token=abc"),
                                 .timeout_ms = 2000,
                                 .max_body = 16};
    assert_int_equal(sl_h1_fetch(&loop, &req, fetch_cb, &R, NULL), 0);
    finish_test(&s);
    assert_int_equal(R.code, 200); /* the interim 100 was skipped */
    assert_memory_equal(R.body, "ok", 2);
    char want[256];
    snprintf(want, sizeof(want),
             "POST / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/x-www-form-urlencoded\r\n"
             "Authorization: Basic YTpi\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoken=abc",
             s.port);
    assert_int_equal(s.last_len, strlen(want));
    assert_memory_equal(s.last, want, s.last_len);
}

static void test_chunked(void **state)
{
    (void)state;
    srv_t s;
    srv_start(&loop, &s,
              "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\n"
              "X-Trailer: t\r\n\r\n");
    s.keep_open = true; /* the end of the chunks ends the response, not the close */
    assert_int_equal(start_srv(&s, "/", 2000, 64, NULL), 0);
    finish_test(&s);
    assert_int_equal(R.code, 200);
    assert_int_equal(R.body_len, 11);
    assert_memory_equal(R.body, "hello world", 11);
}

static void test_close_delimited(void **state)
{
    (void)state;
    srv_t s;
    srv_start(&loop, &s, "HTTP/1.1 200 OK\r\n\r\nuntil the end");
    assert_int_equal(start_srv(&s, "/", 2000, 64, NULL), 0);
    finish_test(&s);
    assert_int_equal(R.code, 200);
    assert_int_equal(R.body_len, 13);
    assert_memory_equal(R.body, "until the end", 13);
}

static void test_large_body_many_reads(void **state)
{
    (void)state;
    size_t n = 200000;
    char *reply = malloc(n + 100);
    int h = snprintf(reply, 100, "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n", n);
    for (size_t i = 0; i < n; i++)
        reply[h + (int)i] = (char)('a' + i % 26);
    reply[h + (int)n] = '\0';
    srv_t s;
    srv_start(&loop, &s, reply);
    assert_int_equal(start_srv(&s, "/", 5000, n, NULL), 0); /* exactly at the cap is fine */
    finish_test(&s);
    assert_int_equal(R.code, 200);
    assert_int_equal(R.body_len, n);
    assert_memory_equal(R.body, reply + h, n);
    free(reply);
}

static void test_404_is_a_status(void **state)
{
    (void)state;
    srv_t s;
    srv_start(&loop, &s, "HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found");
    assert_int_equal(start_srv(&s, "/missing", 2000, 64, NULL), 0);
    finish_test(&s);
    assert_int_equal(R.code, 404);
    assert_int_equal(R.status, 404);
    assert_memory_equal(R.body, "not found", 9);
}

static void test_head_request_has_no_body(void **state)
{
    (void)state;
    srv_t s;
    srv_start(&loop, &s, "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n");
    s.keep_open = true;
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/", s.port);
    sl_h1_fetch_request_t req = {.method = SL_STR_LIT("HEAD"), .url = url, .timeout_ms = 2000, .max_body = 10};
    assert_int_equal(sl_h1_fetch(&loop, &req, fetch_cb, &R, NULL), 0);
    finish_test(&s);
    assert_int_equal(R.code, 200);
    assert_int_equal(R.body_len, 0);
}

static void test_refused(void **state)
{
    (void)state;
    srv_t s;
    srv_start(&loop, &s, "");
    int port = s.port;
    uv_close((uv_handle_t *)&s.listener, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/", port);
    assert_int_equal(start(url, 2000, 64, NULL), 0);
    finish_test(NULL);
    assert_int_equal(R.calls, 1);
    assert_int_equal(R.code, SL_EFETCH_REFUSED);
    assert_string_equal(sl_strerror(R.code), "connection refused");
}

static void test_timeout_when_never_answered(void **state)
{
    (void)state;
    srv_t s;
    srv_start(&loop, &s, NULL);
    s.silent = true;
    uint64_t t0 = uv_hrtime();
    assert_int_equal(start_srv(&s, "/", 150, 64, NULL), 0);
    finish_test(&s);
    assert_int_equal(R.calls, 1);
    assert_int_equal(R.code, SL_EFETCH_TIMEOUT);
    assert_int_equal(s.requests, 1);
    uint64_t ms = (uv_hrtime() - t0) / 1000000;
    assert_true(ms >= 140 && ms < 1500);
}

static void test_timeout_mid_body(void **state)
{
    (void)state;
    srv_t s;
    srv_start(&loop, &s, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part");
    s.keep_open = true;
    assert_int_equal(start_srv(&s, "/", 150, 1000, NULL), 0);
    finish_test(&s);
    assert_int_equal(R.code, SL_EFETCH_TIMEOUT);
}

static void test_body_too_large(void **state)
{
    (void)state;
    static const char *const replies[] = {
        "HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n0123456789a", /* said up front */
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\n012345\r\n5\r\n6789a\r\n0\r\n\r\n", /* grows */
        "HTTP/1.1 200 OK\r\n\r\n0123456789a",                                                          /* until close */
    };
    for (size_t i = 0; i < sizeof(replies) / sizeof(replies[0]); i++) {
        memset(&R, 0, sizeof(R));
        if (i > 0)
            assert_int_equal(uv_loop_init(&loop), 0);
        srv_t s;
        srv_start(&loop, &s, replies[i]);
        s.keep_open = true;
        assert_int_equal(start_srv(&s, "/", 2000, 10, NULL), 0);
        finish_test(&s);
        assert_int_equal(R.calls, 1);
        assert_int_equal(R.code, SL_EFETCH_TOO_LARGE);
    }
}

static void test_bad_responses(void **state)
{
    (void)state;
    static const char *const replies[] = {
        "HELLO\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\ncut short",        /* then closed */
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", /* then closed */
        "HTTP/1.1 200 OK\r\nContent-",                                   /* head cut short */
        "HTTP/1.1 200 OK\r\nX: a\rb\r\nContent-Length: 0\r\n\r\n",       /* bare CR */
    };
    for (size_t i = 0; i < sizeof(replies) / sizeof(replies[0]); i++) {
        memset(&R, 0, sizeof(R));
        if (i > 0)
            assert_int_equal(uv_loop_init(&loop), 0);
        srv_t s;
        srv_start(&loop, &s, replies[i]);
        assert_int_equal(start_srv(&s, "/", 2000, 100, NULL), 0);
        finish_test(&s);
        assert_int_equal(R.calls, 1);
        assert_int_equal(R.code, SL_EFETCH_BAD_RESPONSE);
    }
}

static void test_unresolvable_name(void **state)
{
    (void)state;
    assert_int_equal(start("http://nonexistent.invalid:8080/jwks", 5000, 64, NULL), 0);
    finish_test(NULL);
    assert_int_equal(R.calls, 1);
    assert_int_equal(R.code, SL_EFETCH_DNS);
}

static void test_localhost_name_resolves(void **state)
{
    (void)state;
    srv_t s;
    srv_start(&loop, &s, "HTTP/1.1 204 No Content\r\n\r\n");
    char url[64];
    /* localhost may resolve to ::1 first: the refused IPv6 attempt falls through to 127.0.0.1. */
    snprintf(url, sizeof(url), "http://localhost:%d/", s.port);
    assert_int_equal(start(url, 2000, 64, NULL), 0);
    finish_test(&s);
    assert_int_equal(R.code, 204);
}

static void test_synchronous_errors_never_call_back(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "https:///jwks", /* https is supported (tests/unit/tls/test_fetch_https.c); no host is not */
        "http://",         "http:///x",         "ftp://a/b",   "http://a:0/",
        "http://a:65536/", "http://user@host/", "http://a b/", "http://[::1/",
        "http://[zz]/",    "http://h/x y",      NULL,
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        sl_h1_fetch_t *h = NULL;
        assert_int_equal(start(bad[i], 1000, 64, &h), SL_EFETCH_BAD_URL);
        assert_null(h);
    }
    assert_int_equal(start("http://127.0.0.1:1/", 0, 64, NULL), SL_EINVALID);
    sl_header_t inj = {SL_STR_LIT("X-A"), SL_STR_LIT("1\r\nHost: evil")};
    sl_header_t own = {SL_STR_LIT("content-length"), SL_STR_LIT("5")};
    sl_h1_fetch_request_t req = {.url = "http://127.0.0.1:1/", .headers = &inj, .nheaders = 1, .timeout_ms = 1000};
    assert_int_equal(sl_h1_fetch(&loop, &req, fetch_cb, &R, NULL), SL_EINVALID);
    req.headers = &own;
    assert_int_equal(sl_h1_fetch(&loop, &req, fetch_cb, &R, NULL), SL_EINVALID);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(R.calls, 0);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* ---- cancel in each phase ------------------------------------------------------------------- */

static void cancel_and_drain(sl_h1_fetch_t *h, srv_t *s)
{
    sl_h1_fetch_cancel(h);
    if (s != NULL)
        srv_stop(s);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(R.calls, 0);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_cancel_while_resolving(void **state)
{
    (void)state;
    sl_h1_fetch_t *h = NULL;
    assert_int_equal(start("http://localhost:9/", 2000, 64, &h), 0);
    cancel_and_drain(h, NULL);
}

static void test_cancel_while_resolving_a_bad_name(void **state)
{
    (void)state;
    sl_h1_fetch_t *h = NULL;
    assert_int_equal(start("http://nonexistent.invalid/", 2000, 64, &h), 0);
    uv_run(&loop, UV_RUN_NOWAIT);
    cancel_and_drain(h, NULL);
}

static void test_cancel_while_connecting(void **state)
{
    (void)state;
    srv_t s;
    srv_start(&loop, &s, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    sl_h1_fetch_t *h = NULL;
    assert_int_equal(start_srv(&s, "/", 2000, 64, &h), 0);
    cancel_and_drain(h, &s);
}

static void test_cancel_while_waiting_for_the_head(void **state)
{
    (void)state;
    srv_t s;
    srv_start(&loop, &s, NULL);
    s.silent = true;
    sl_h1_fetch_t *h = NULL;
    assert_int_equal(start_srv(&s, "/", 5000, 64, &h), 0);
    while (s.requests == 0)
        uv_run(&loop, UV_RUN_ONCE);
    cancel_and_drain(h, &s);
}

static void test_cancel_mid_body(void **state)
{
    (void)state;
    srv_t s;
    srv_start(&loop, &s, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart of it");
    s.keep_open = true;
    sl_h1_fetch_t *h = NULL;
    assert_int_equal(start_srv(&s, "/", 5000, 1000, &h), 0);
    while (s.writes_done == 0)
        uv_run(&loop, UV_RUN_ONCE);
    for (int i = 0; i < 5; i++)
        uv_run(&loop, UV_RUN_NOWAIT); /* let the client read the head and part of the body */
    assert_int_equal(R.calls, 0);
    cancel_and_drain(h, &s);
}

static void test_cancel_refused_before_its_callback(void **state)
{
    (void)state;
    sl_h1_fetch_t *h = NULL;
    assert_int_equal(start("http://127.0.0.1:1/", 2000, 64, &h), 0);
    cancel_and_drain(h, NULL);
}

int main(void)
{
    srand((unsigned)uv_hrtime());
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_content_length, setup, teardown),
        cmocka_unit_test_setup_teardown(test_post_with_headers_and_body, setup, teardown),
        cmocka_unit_test_setup_teardown(test_chunked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_delimited, setup, teardown),
        cmocka_unit_test_setup_teardown(test_large_body_many_reads, setup, teardown),
        cmocka_unit_test_setup_teardown(test_404_is_a_status, setup, teardown),
        cmocka_unit_test_setup_teardown(test_head_request_has_no_body, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeout_when_never_answered, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeout_mid_body, setup, teardown),
        cmocka_unit_test_setup_teardown(test_body_too_large, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_responses, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unresolvable_name, setup, teardown),
        cmocka_unit_test_setup_teardown(test_localhost_name_resolves, setup, teardown),
        cmocka_unit_test_setup_teardown(test_synchronous_errors_never_call_back, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_while_resolving, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_while_resolving_a_bad_name, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_while_connecting, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_while_waiting_for_the_head, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_mid_body, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_refused_before_its_callback, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
