/*
 * Both sides of src/tls on one loop: a tiny HTTPS server built on the server engine
 * (sl_tls_conn over memory BIOs) and the gateway's fetch client (http1/client.h) with an
 * https:// URL. A trusted certificate naming 127.0.0.1 is fetched from; an untrusted one and a
 * trusted one for another name are refused as connect failures; the body arrives intact across
 * many TLS records. The trust store is SSL_CERT_FILE, set before the client's first use.
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
#include "tls/tls.h"

#include "certs.h"

static char dir[256];
static uv_loop_t loop;

static int group_setup(void **state)
{
    (void)state;
    certs_mkdir(dir, sizeof(dir), "/tmp/sluice-unit-https-XXXXXX");
    /* the trust store holds every certificate but "untrusted" */
    certs_make(dir, "good", "good", "IP:127.0.0.1", 1, "trust.pem");
    certs_make(dir, "untrusted", "untrusted", "IP:127.0.0.1", 1, NULL);
    certs_make(dir, "misnamed", "misnamed", "DNS:elsewhere.example", 1, "trust.pem");
    char path[512];
    snprintf(path, sizeof(path), "%s/trust.pem", dir);
    setenv("SSL_CERT_FILE", path, 1);
    sl_h1_fetch_register_errors();
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    return certs_rmdir(dir);
}

/* ---- the HTTPS server ------------------------------------------------------------------- */

#define BODY_LEN 200000

/* What the server does with a connection: TLS, or a broken peer the client must survive. */
enum srv_mode {
    SRV_TLS = 0,
    SRV_PLAIN,  /* answers the ClientHello with a plain-text HTTP error, as an http:// server would */
    SRV_HANGUP, /* closes each connection as soon as it is accepted: EOF in the handshake */
};

typedef struct srv {
    uv_tcp_t listener;
    int port;
    enum srv_mode mode;
    sl_tls_ctx_t *ctx;
    int handshakes, failures;
} srv_t;

typedef struct sconn {
    uv_tcp_t tcp;
    srv_t *srv;
    sl_tls_conn_t *tls;
    uv_write_t wreq;
    char in[16384];
    char req[4096];
    size_t req_len;
    bool answered;
} sconn_t;

static char body[BODY_LEN];

static void sconn_closed(uv_handle_t *h)
{
    sconn_t *c = h->data;
    sl_tls_conn_destroy(c->tls);
    free(c);
}

static void sconn_close(sconn_t *c)
{
    if (!uv_is_closing((uv_handle_t *)&c->tcp))
        uv_close((uv_handle_t *)&c->tcp, sconn_closed);
}

static void on_answer_written(uv_write_t *w, int status)
{
    sconn_t *c = w->data;
    (void)status;
    sl_tls_conn_shutdown(c->tls);
    sconn_close(c);
}

static void on_salloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    sconn_t *c = h->data;
    (void)suggested;
    *buf = uv_buf_init(c->in, sizeof(c->in));
}

static void on_sread(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    sconn_t *c = s->data;
    if (nread < 0) {
        if (!sl_tls_conn_handshake_done(c->tls))
            c->srv->failures++;
        sconn_close(c);
        return;
    }
    if (nread == 0 || c->answered)
        return;
    if (c->tls == NULL) {
        static const char reply[] = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
        uv_buf_t b = uv_buf_init((char *)reply, sizeof(reply) - 1);
        (void)uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
        c->answered = true;
        sconn_close(c);
        return;
    }
    sl_tls_conn_feed(c->tls, buf->base, (size_t)nread);
    if (!sl_tls_conn_handshake_done(c->tls)) {
        int r = sl_tls_conn_handshake(c->tls);
        sl_tls_conn_flush(c->tls);
        if (r < 0) {
            c->srv->failures++;
            sconn_close(c);
            return;
        }
        if (r == 0)
            return;
        c->srv->handshakes++;
    }
    int n;
    while ((n = sl_tls_conn_read(c->tls, c->req + c->req_len, sizeof(c->req) - 1 - c->req_len)) > 0)
        c->req_len += (size_t)n;
    c->req[c->req_len] = '\0';
    if (strstr(c->req, "\r\n\r\n") == NULL)
        return;
    c->answered = true;
    char head[128];
    int hl = snprintf(head, sizeof(head), "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Path: %.*s\r\n\r\n", BODY_LEN,
                      (int)strcspn(c->req + 4, " "), c->req + 4);
    uv_buf_t iov[2] = {uv_buf_init(head, (unsigned)hl), uv_buf_init(body, BODY_LEN)};
    c->wreq.data = c;
    int r = sl_tls_conn_write(c->tls, &c->wreq, iov, 2, on_answer_written);
    if (r == 1)
        on_answer_written(&c->wreq, 0);
    else if (r < 0)
        sconn_close(c);
}

static void on_sconn(uv_stream_t *l, int status)
{
    srv_t *s = l->data;
    assert_int_equal(status, 0);
    sconn_t *c = calloc(1, sizeof(*c));
    c->srv = s;
    uv_tcp_init(&loop, &c->tcp);
    c->tcp.data = c;
    assert_int_equal(uv_accept(l, (uv_stream_t *)&c->tcp), 0);
    if (s->mode == SRV_HANGUP) {
        sconn_close(c);
        return;
    }
    if (s->mode == SRV_PLAIN) {
        uv_read_start((uv_stream_t *)&c->tcp, on_salloc, on_sread);
        return;
    }
    sl_tls_conn_create(s->ctx, (uv_stream_t *)&c->tcp, &c->tls);
    uv_read_start((uv_stream_t *)&c->tcp, on_salloc, on_sread);
}

static void srv_start(srv_t *s, const char *cert, enum srv_mode mode)
{
    memset(s, 0, sizeof(*s));
    s->mode = mode;
    char crt[64], key[64], msg[512];
    snprintf(crt, sizeof(crt), "%s.crt", cert);
    snprintf(key, sizeof(key), "%s.key", cert);
    sl_tls_cert_t *tc = certs_load(dir, crt, key);
    sl_tls_options_t o = {.listener_name = "unit"};
    assert_int_equal(sl_tls_ctx_create(&tc, 1, &o, &s->ctx, msg, sizeof(msg)), 0);
    for (int tries = 0; tries < 200; tries++) {
        int port = 20000 + (int)(((unsigned)rand() ^ (unsigned)getpid() * 7919u) % 12000u);
        struct sockaddr_in a;
        uv_ip4_addr("127.0.0.1", port, &a);
        assert_int_equal(uv_tcp_init(&loop, &s->listener), 0);
        s->listener.data = s;
        if (uv_tcp_bind(&s->listener, (const struct sockaddr *)&a, 0) == 0 &&
            uv_listen((uv_stream_t *)&s->listener, 16, on_sconn) == 0) {
            s->port = port;
            return;
        }
        uv_close((uv_handle_t *)&s->listener, NULL);
        uv_run(&loop, UV_RUN_NOWAIT);
    }
    fail_msg("no free port");
}

/* ---- the client ------------------------------------------------------------------------- */

typedef struct result {
    int calls, code, status;
    size_t body_len;
    bool body_ok;
    char path[64];
} result_t;

static void fetch_cb(void *arg, int code, const sl_fetch_response_t *res)
{
    result_t *r = arg;
    r->calls++;
    r->code = code;
    if (res == NULL)
        return;
    r->status = res->status;
    r->body_len = res->body.len;
    r->body_ok = res->body.len == BODY_LEN && memcmp(res->body.ptr, body, BODY_LEN) == 0;
    for (size_t i = 0; i < res->nheaders; i++)
        if (sl_str_caseeq_cstr(res->headers[i].name, "x-path"))
            snprintf(r->path, sizeof(r->path), "%.*s", SL_STR_FMT(res->headers[i].value));
}

static result_t fetch_from_mode(const char *cert, enum srv_mode mode, srv_t *s)
{
    assert_int_equal(uv_loop_init(&loop), 0);
    srv_start(s, cert, mode);
    char url[128];
    snprintf(url, sizeof(url), "https://127.0.0.1:%d/jwks?x=1", s->port);
    result_t r = {0};
    sl_h1_fetch_request_t req = {.url = url, .timeout_ms = 5000, .max_body = 1 << 20};
    assert_int_equal(sl_h1_fetch(&loop, &req, fetch_cb, &r, NULL), 0);
    while (r.calls == 0 && uv_run(&loop, UV_RUN_ONCE) != 0)
        ;
    uv_close((uv_handle_t *)&s->listener, NULL);
    uv_run(&loop, UV_RUN_DEFAULT); /* every connection closes: no handle may be left */
    assert_int_equal(uv_loop_close(&loop), 0);
    sl_tls_ctx_unref(s->ctx);
    assert_int_equal(r.calls, 1);
    return r;
}

static result_t fetch_from(const char *cert, srv_t *s)
{
    return fetch_from_mode(cert, SRV_TLS, s);
}

static void test_fetch_over_https(void **state)
{
    (void)state;
    for (size_t i = 0; i < BODY_LEN; i++)
        body[i] = (char)(i * 31 + i / 251);
    srv_t s;
    result_t r = fetch_from("good", &s);
    assert_int_equal(r.code, 200);
    assert_true(r.body_ok);
    assert_string_equal(r.path, "/jwks?x=1");
    assert_int_equal(s.handshakes, 1);
}

static void test_untrusted_certificate_is_refused(void **state)
{
    (void)state;
    srv_t s;
    result_t r = fetch_from("untrusted", &s);
    assert_int_equal(r.code, SL_EFETCH_TLS);
    assert_int_equal(s.handshakes, 0);
}

static void test_certificate_for_another_name_is_refused(void **state)
{
    (void)state;
    srv_t s;
    result_t r = fetch_from("misnamed", &s);
    assert_int_equal(r.code, SL_EFETCH_TLS);
    assert_int_equal(s.handshakes, 0);
}

/* An https:// URL pointing at a plain HTTP server: its answer is no ServerHello. */
static void test_plain_http_server_is_a_tls_failure(void **state)
{
    (void)state;
    srv_t s;
    result_t r = fetch_from_mode("good", SRV_PLAIN, &s);
    assert_int_equal(r.code, SL_EFETCH_TLS);
    assert_int_equal(r.status, 0);
}

/* The server hangs up before the handshake ends: a TLS failure, not a "bad HTTP response"
 * (no HTTP byte was ever exchanged). */
static void test_server_closing_mid_handshake_is_a_tls_failure(void **state)
{
    (void)state;
    srv_t s;
    result_t r = fetch_from_mode("good", SRV_HANGUP, &s);
    assert_int_equal(r.code, SL_EFETCH_TLS);
    assert_int_equal(r.status, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fetch_over_https),
        cmocka_unit_test(test_untrusted_certificate_is_refused),
        cmocka_unit_test(test_certificate_for_another_name_is_refused),
        cmocka_unit_test(test_plain_http_server_is_a_tls_failure),
        cmocka_unit_test(test_server_closing_mid_handshake_is_a_tls_failure),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
