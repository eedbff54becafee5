/*
 * A small HTTP/1.1 server for the admin API on the main loop. One request per connection
 * (Connection: close), heads of at most 8 KiB, JSON answers. Off the data path: simplicity
 * over speed here.
 */
#include "admin/admin.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/bug.h"
#include "common/error.h"
#include "common/log.h"
#include "http1/parser.h"

#define ADMIN_HEAD_MAX 8192

struct sl_admin {
    uv_tcp_t listener;
    sl_admin_hooks_t hooks;
    bool ready;
    bool stopping;
};

typedef struct admin_conn {
    uv_tcp_t tcp;
    uv_write_t wreq;
    uv_timer_t timer;
    sl_admin_t *admin;
    size_t len;
    int closing;
    char *reply;
    char buf[ADMIN_HEAD_MAX];
} admin_conn_t;

static void on_conn_closed(uv_handle_t *h)
{
    admin_conn_t *c = h->data;
    if (--c->closing == 0) {
        free(c->reply);
        free(c);
    }
}

static void conn_close(admin_conn_t *c)
{
    if (c->closing)
        return;
    c->closing = 2;
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
    uv_close((uv_handle_t *)&c->timer, on_conn_closed);
}

static void on_written(uv_write_t *req, int status)
{
    (void)status;
    conn_close(req->data);
}

static void respond_typed(admin_conn_t *c, int status, const char *reason, const char *ctype, const char *body,
                          size_t body_len)
{
    size_t cap = body_len + 256;
    c->reply = sl_xmalloc(cap);
    int n = snprintf(c->reply, cap,
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                     "Cache-Control: no-store\r\nConnection: close\r\n\r\n",
                     status, reason, ctype, body_len);
    memcpy(c->reply + n, body, body_len);
    n += (int)body_len;
    uv_buf_t b = uv_buf_init(c->reply, (unsigned)n);
    uv_read_stop((uv_stream_t *)&c->tcp);
    if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, on_written) != 0)
        conn_close(c);
}

static void respond(admin_conn_t *c, int status, const char *reason, const char *body)
{
    respond_typed(c, status, reason, "application/json", body, strlen(body));
}

static void handle(admin_conn_t *c, const sl_h1_request_t *req)
{
    sl_admin_t *a = c->admin;
    bool get = req->method_id == SL_METHOD_GET || req->method_id == SL_METHOD_HEAD;
    if (sl_str_eq(req->path, SL_STR_LIT("/health"))) {
        if (!get)
            respond(c, 405, "Method Not Allowed", "{\"error\":\"method_not_allowed\"}\n");
        else
            respond(c, 200, "OK", "{\"status\":\"ok\"}\n");
        return;
    }
    if (sl_str_eq(req->path, SL_STR_LIT("/ready"))) {
        if (!get)
            respond(c, 405, "Method Not Allowed", "{\"error\":\"method_not_allowed\"}\n");
        else if (a->ready && !a->stopping)
            respond(c, 200, "OK", "{\"status\":\"ready\"}\n");
        else
            respond(c, 503, "Service Unavailable", "{\"status\":\"not_ready\"}\n");
        return;
    }
    if (sl_str_eq(req->path, SL_STR_LIT("/metrics")) && a->hooks.render_metrics != NULL) {
        char *text = NULL;
        size_t len = 0;
        if (!get) {
            respond(c, 405, "Method Not Allowed", "{\"error\":\"method_not_allowed\"}\n");
        } else if (a->hooks.render_metrics(a->hooks.ctx, &text, &len) != 0) {
            respond(c, 500, "Internal Server Error", "{\"error\":\"internal_error\"}\n");
        } else {
            respond_typed(c, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", text, len);
        }
        free(text);
        return;
    }
    respond(c, 404, "Not Found", "{\"error\":\"not_found\",\"message\":\"No such admin endpoint.\"}\n");
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    admin_conn_t *c = h->data;
    (void)suggested;
    buf->base = c->buf + c->len;
    buf->len = sizeof(c->buf) - c->len;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    admin_conn_t *c = s->data;
    (void)buf;
    if (nread < 0) {
        if (nread == UV_ENOBUFS)
            respond(c, 431, "Request Header Fields Too Large", "{\"error\":\"header_too_large\"}\n");
        else
            conn_close(c);
        return;
    }
    c->len += (size_t)nread;
    sl_header_t hdrs[64];
    sl_h1_request_t req;
    req.headers = hdrs;
    sl_h1_limits_t limits = {.max_head_bytes = ADMIN_HEAD_MAX - 1, .max_uri_bytes = 4096, .max_headers = 64};
    int r = sl_h1_parse_request(c->buf, c->len, &req, &limits);
    if (r == SL_EINCOMPLETE)
        return;
    if (r < 0) {
        respond(c, sl_h1_error_status(r), "Bad Request", "{\"error\":\"bad_request\"}\n");
        return;
    }
    uv_timer_stop(&c->timer);
    handle(c, &req);
}

static void on_timeout(uv_timer_t *t)
{
    conn_close(t->data);
}

static void on_connection(uv_stream_t *server, int status)
{
    sl_admin_t *a = server->data;
    if (status < 0)
        return;
    admin_conn_t *c = sl_xcalloc(1, sizeof(*c));
    c->admin = a;
    uv_tcp_init(server->loop, &c->tcp);
    uv_timer_init(server->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->wreq.data = c;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        conn_close(c);
        return;
    }
    uv_timer_start(&c->timer, on_timeout, 10000, 0);
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

static void on_listener_closed(uv_handle_t *h)
{
    free(h->data);
}

int sl_admin_start(uv_loop_t *loop, const struct sockaddr *addr, const sl_admin_hooks_t *hooks, sl_admin_t **out)
{
    sl_admin_t *a = sl_xcalloc(1, sizeof(*a));
    if (hooks != NULL)
        a->hooks = *hooks;
    uv_tcp_init(loop, &a->listener);
    a->listener.data = a;
    int err = uv_tcp_bind(&a->listener, addr, 0);
    if (err == 0)
        err = uv_listen((uv_stream_t *)&a->listener, 128, on_connection);
    if (err) {
        uv_close((uv_handle_t *)&a->listener, on_listener_closed);
        return err;
    }
    *out = a;
    return 0;
}

void sl_admin_set_ready(sl_admin_t *a, bool ready)
{
    a->ready = ready;
}

void sl_admin_stop(sl_admin_t *a)
{
    if (a->stopping)
        return;
    a->stopping = true;
    uv_close((uv_handle_t *)&a->listener, on_listener_closed);
}
