/*
 * The gateway's own outgoing HTTP/1.1 requests (http1/client.h): JWKS documents on the main
 * loop, token introspection on a worker's. One heap object per fetch holds the handles, the
 * serialised request and the response; it walks resolve -> connect (each address in turn) ->
 * write + read head -> read body, under one deadline timer, and ends once in `finish`, which
 * calls back (unless cancelled) and closes everything; the object is freed by the last close.
 */
#include "http1/client.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/bug.h"
#include "common/error.h"
#include "http1/parser.h"
#include "tls/tls.h"

/* Read window past the head: a body is copied out of it after each read, so this bounds the
 * receive buffer, not the body. A partial chunked trailer line (8 KiB at most) fits. */
#define READ_WINDOW (16 * 1024)
#define RBUF_SIZE   (SL_H1_FETCH_MAX_HEAD + READ_WINDOW)

enum phase {
    PH_RESOLVE = 0,
    PH_CONNECT,
    PH_HEAD,
    PH_BODY,
};

struct sl_fetch {
    uv_loop_t *loop;
    sl_fetch_cb cb;
    void *arg;
    /* Handles open and requests whose callback is still due: the object is freed when this
     * drops to 0 after `done`. */
    int pending;
    bool done;      /* called back or cancelled: later libuv callbacks only release */
    bool cancelled; /* done without calling back */
    bool tcp_open;
    bool resolving;
    bool head_request;
    enum phase phase;
    int deferred_err; /* a failure found inside the start call, reported from the timer */

    uv_timer_t timer;
    uv_tcp_t tcp;
    uv_getaddrinfo_t gai;
    uv_connect_t connect;
    uv_write_t write;

    struct addrinfo *addrs; /* from uv_getaddrinfo; the next one to try is `next_addr` */
    struct addrinfo *next_addr;
    char *host; /* NUL-terminated, without brackets */
    char port[8];

    char *req; /* the serialised request */
    size_t req_len;

    /* https: TLS over the socket; the request goes once the handshake is done, reads land in
     * tls_in and are decrypted into rbuf. */
    bool https;
    sl_tls_conn_t *tls;

    /* Response: rbuf holds the final head at [0, head_len) (the headers point into it) and
     * unprocessed body bytes after it. */
    size_t max_body;
    size_t rlen, head_len;
    sl_h1_response_t resp;
    sl_header_t headers[SL_H1_FETCH_MAX_HEADERS];
    sl_h1_chunked_t chunked;
    char *body;
    size_t body_len, body_cap;
    char rbuf[RBUF_SIZE];
    char tls_in[16384]; /* https: where the socket's bytes land before decryption */
};

static const char *error_name(int code)
{
    switch (code) {
    case SL_EFETCH_BAD_URL:
        return "unsupported URL (expected http:// or https://host[:port]/path)";
    case SL_EFETCH_DNS:
        return "host name not resolved";
    case SL_EFETCH_REFUSED:
        return "connection refused";
    case SL_EFETCH_CONNECT:
        return "connect failed";
    case SL_EFETCH_TIMEOUT:
        return "timed out";
    case SL_EFETCH_IO:
        return "connection failed while sending or receiving";
    case SL_EFETCH_BAD_RESPONSE:
        return "bad HTTP response";
    case SL_EFETCH_TOO_LARGE:
        return "response too large";
    case SL_EFETCH_TLS:
        return "TLS handshake failed (certificate not trusted or not for this host, no common protocol, or "
               "the server did not speak TLS)";
    default:
        return "unknown fetch error";
    }
}

void sl_h1_fetch_register_errors(void)
{
    sl_error_register_range(SL_EFETCH_BAD_URL, SL_EFETCH__LAST - 1, error_name);
}

/* ---- lifetime ------------------------------------------------------------------------------- */

static void fetch_free(sl_fetch_t *f)
{
    if (f->addrs != NULL)
        uv_freeaddrinfo(f->addrs);
    free(f->host);
    free(f->req);
    free(f->body);
    sl_tls_conn_destroy(f->tls); /* after the socket's close: its queued writes are done */
    free(f);
}

static void unpend(sl_fetch_t *f)
{
    SL_BUG_ON(f->pending <= 0);
    if (--f->pending == 0 && f->done)
        fetch_free(f);
}

static void close_cb(uv_handle_t *h)
{
    unpend(h->data);
}

/* Ends the fetch exactly once. The callback runs before the handles are closed (their close
 * callbacks come in a later iteration), so the response it sees, in `f`, is still alive. */
static void finish(sl_fetch_t *f, int code)
{
    if (f->done)
        return;
    f->done = true;
    uv_timer_stop(&f->timer);
    uv_close((uv_handle_t *)&f->timer, close_cb);
    if (f->tcp_open) {
        f->tcp_open = false;
        uv_close((uv_handle_t *)&f->tcp, close_cb);
    }
    if (f->resolving)
        uv_cancel((uv_req_t *)&f->gai); /* its callback still comes, with UV_ECANCELED */
    if (f->cancelled)
        return;
    if (code >= 0) {
        f->body[f->body_len] = '\0';
        sl_fetch_response_t res = {
            .status = f->resp.status,
            .headers = f->resp.headers,
            .nheaders = f->resp.nheaders,
            .body = {f->body, f->body_len},
        };
        f->cb(f->arg, f->resp.status, &res);
    } else {
        f->cb(f->arg, code, NULL);
    }
}

static void on_timer(uv_timer_t *t)
{
    sl_fetch_t *f = t->data;
    finish(f, f->deferred_err != 0 ? f->deferred_err : SL_EFETCH_TIMEOUT);
}

/* A failure found while still inside sl_h1_fetch (or a connect attempt that failed at once):
 * reported from the next loop iteration, so a started fetch never calls back synchronously. */
static void fail_later(sl_fetch_t *f, int code)
{
    f->deferred_err = code;
    uv_timer_start(&f->timer, on_timer, 0, 0);
}

void sl_h1_fetch_cancel(sl_fetch_t *f)
{
    if (f == NULL)
        return;
    SL_BUG_ON(f->done); /* after the callback, or a second cancel: the handle is gone */
    f->cancelled = true;
    finish(f, 0);
}

/* ---- response ------------------------------------------------------------------------------- */

static bool body_append(sl_fetch_t *f, const char *p, size_t n)
{
    if (n > f->max_body - f->body_len) {
        finish(f, SL_EFETCH_TOO_LARGE);
        return false;
    }
    if (f->body_len + n + 1 > f->body_cap) {
        size_t cap = f->body_cap * 2;
        if (cap < f->body_len + n + 1)
            cap = f->body_len + n + 1;
        if (cap > f->max_body + 1)
            cap = f->max_body + 1;
        f->body = sl_xrealloc(f->body, cap);
        f->body_cap = cap;
    }
    memcpy(f->body + f->body_len, p, n);
    f->body_len += n;
    return true;
}

static int parse_head(sl_fetch_t *f)
{
    sl_h1_limits_t limits = {
        .max_head_bytes = SL_H1_FETCH_MAX_HEAD,
        .max_uri_bytes = SL_H1_FETCH_MAX_HEAD,
        .max_headers = SL_H1_FETCH_MAX_HEADERS,
    };
    for (;;) {
        f->resp = (sl_h1_response_t){.headers = f->headers};
        int rc = sl_h1_parse_response(f->rbuf, f->rlen, &f->resp, &limits, f->head_request);
        if (rc == SL_EINCOMPLETE)
            return 0;
        if (rc == SL_EH1_HEADER_TOO_LARGE || rc == SL_EH1_TOO_MANY_HEADERS)
            return SL_EFETCH_TOO_LARGE;
        if (rc < 0)
            return SL_EFETCH_BAD_RESPONSE;
        if (f->resp.status == 101)
            return SL_EFETCH_BAD_RESPONSE; /* nobody asked to switch protocols */
        if (f->resp.status >= 200) {
            f->head_len = (size_t)rc;
            return 1;
        }
        /* Interim 1xx: the final head follows (RFC 9110 §15.2). */
        memmove(f->rbuf, f->rbuf + rc, f->rlen - (size_t)rc);
        f->rlen -= (size_t)rc;
    }
}

/* Consumes the body bytes in rbuf after the head; returns true when the response is complete. */
static bool take_body(sl_fetch_t *f)
{
    char *p = f->rbuf + f->head_len;
    size_t n = f->rlen - f->head_len;
    switch (f->resp.body) {
    case SL_H1_BODY_NONE:
        return true;
    case SL_H1_BODY_LENGTH: {
        size_t want = (size_t)f->resp.content_length - f->body_len;
        /* Bytes past Content-Length are the server's error; with Connection: close, ignored. */
        if (!body_append(f, p, SL_MIN(n, want)))
            return false;
        f->rlen = f->head_len;
        return f->body_len == f->resp.content_length;
    }
    case SL_H1_BODY_CLOSE:
        if (!body_append(f, p, n))
            return false;
        f->rlen = f->head_len;
        return false;
    case SL_H1_BODY_CHUNKED:
        for (;;) {
            size_t used = 0;
            sl_str_t out;
            int ev = sl_h1_chunked_decode(&f->chunked, p, n, &used, &out);
            if (ev < 0) {
                finish(f, SL_EFETCH_BAD_RESPONSE);
                return false;
            }
            p += used;
            n -= used;
            if (ev == SL_H1_CHUNK_DATA && !body_append(f, out.ptr, out.len))
                return false;
            if (ev == SL_H1_CHUNK_DONE)
                return true;
            if (ev == SL_H1_CHUNK_NEED_MORE) {
                /* A trailer line waits whole for its CRLF: keep the unconsumed tail. */
                memmove(f->rbuf + f->head_len, p, n);
                f->rlen = f->head_len + n;
                return false;
            }
        }
    }
    return false;
}

static bool start_body(sl_fetch_t *f)
{
    f->phase = PH_BODY;
    size_t cap = 1024;
    if (f->resp.body == SL_H1_BODY_LENGTH) {
        if (f->resp.content_length > f->max_body) {
            finish(f, SL_EFETCH_TOO_LARGE);
            return false;
        }
        cap = (size_t)f->resp.content_length + 1;
    } else if (f->resp.body == SL_H1_BODY_NONE) {
        cap = 1;
    }
    if (cap > f->max_body + 1)
        cap = f->max_body + 1;
    f->body = sl_xmalloc(cap);
    f->body_cap = cap;
    sl_h1_chunked_init(&f->chunked);
    return true;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    sl_fetch_t *f = h->data;
    if (f->tls != NULL)
        *buf = uv_buf_init(f->tls_in, sizeof(f->tls_in));
    else
        *buf = uv_buf_init(f->rbuf + f->rlen, (unsigned)(sizeof(f->rbuf) - f->rlen));
}

/* `n` new bytes are in rbuf at rlen: the head, then the body. */
static void on_data(sl_fetch_t *f, size_t n)
{
    f->rlen += n;
    if (f->phase == PH_HEAD) {
        int rc = parse_head(f);
        if (rc < 0) {
            finish(f, rc);
            return;
        }
        if (rc == 0)
            return;
        if (!start_body(f))
            return;
    }
    if (take_body(f))
        finish(f, 0);
}

static void on_eof(sl_fetch_t *f)
{
    if (f->tls != NULL && !sl_tls_conn_handshake_done(f->tls)) {
        finish(f, SL_EFETCH_TLS); /* no HTTP byte was exchanged: the server refused TLS */
        return;
    }
    if (f->phase == PH_BODY && f->resp.body == SL_H1_BODY_CLOSE)
        finish(f, 0);
    else
        finish(f, SL_EFETCH_BAD_RESPONSE); /* cut short: head, Content-Length or chunks */
}

/* Ciphertext arrived: advance the handshake (then send the request), decrypt into rbuf. */
static void on_tls_bytes(sl_fetch_t *f, const char *p, size_t n)
{
    sl_tls_conn_feed(f->tls, p, n);
    if (!sl_tls_conn_handshake_done(f->tls)) {
        int r = sl_tls_conn_handshake(f->tls);
        if (sl_tls_conn_flush(f->tls) < 0 || r < 0) {
            finish(f, r < 0 ? SL_EFETCH_TLS : SL_EFETCH_IO);
            return;
        }
        if (r == 0)
            return;
        uv_buf_t b = uv_buf_init(f->req, (unsigned)f->req_len);
        if (sl_tls_conn_write(f->tls, NULL, &b, 1, NULL) < 0) {
            finish(f, SL_EFETCH_IO);
            return;
        }
    }
    while (!f->done) {
        if (f->rlen == sizeof(f->rbuf)) {
            finish(f, SL_EFETCH_TOO_LARGE); /* a head larger than the buffer, as without TLS */
            return;
        }
        int r = sl_tls_conn_read(f->tls, f->rbuf + f->rlen, sizeof(f->rbuf) - f->rlen);
        if (r == 0)
            break;
        if (r == SL_ECLOSED) {
            on_eof(f);
            return;
        }
        if (r < 0) {
            finish(f, SL_EFETCH_IO);
            return;
        }
        on_data(f, (size_t)r);
    }
    if (!f->done && sl_tls_conn_flush(f->tls) < 0)
        finish(f, SL_EFETCH_IO);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    sl_fetch_t *f = s->data;
    if (f->done || nread == 0)
        return;
    if (nread == UV_EOF) {
        on_eof(f);
        return;
    }
    if (nread < 0) {
        /* ENOBUFS: the head filled the buffer without the parser deciding; cannot happen with
         * RBUF_SIZE > max_head_bytes, but it is a too-large head if it does. */
        finish(f, nread == UV_ENOBUFS ? SL_EFETCH_TOO_LARGE : SL_EFETCH_IO);
        return;
    }
    if (f->tls != NULL)
        on_tls_bytes(f, buf->base, (size_t)nread);
    else
        on_data(f, (size_t)nread);
}

/* ---- connect and send ----------------------------------------------------------------------- */

static void connect_addr(sl_fetch_t *f, const struct sockaddr *sa);

static void on_write(uv_write_t *w, int status)
{
    sl_fetch_t *f = w->data;
    if (!f->done && status < 0)
        finish(f, SL_EFETCH_IO);
    unpend(f);
}

/* The failed attempt's handle is closed: its memory may now take the next attempt (a handle
 * cannot be re-initialised before its close callback). */
static void on_closed_try_next(uv_handle_t *h)
{
    sl_fetch_t *f = h->data;
    if (!f->done) {
        struct addrinfo *ai = f->next_addr;
        f->next_addr = ai->ai_next;
        connect_addr(f, ai->ai_addr);
    }
    unpend(f);
}

static void on_connect(uv_connect_t *c, int status)
{
    sl_fetch_t *f = c->data;
    if (f->done) {
        unpend(f);
        return;
    }
    if (status < 0) {
        f->tcp_open = false;
        if (f->next_addr != NULL) {
            uv_close((uv_handle_t *)&f->tcp, on_closed_try_next);
        } else {
            uv_close((uv_handle_t *)&f->tcp, close_cb);
            finish(f, status == UV_ECONNREFUSED ? SL_EFETCH_REFUSED : SL_EFETCH_CONNECT);
        }
        unpend(f);
        return;
    }
    f->phase = PH_HEAD;
    int err;
    if (f->https) {
        /* The ClientHello now; the request once the handshake is done (on_tls_bytes). */
        err = sl_tls_client_create((uv_stream_t *)&f->tcp, f->host, &f->tls);
        if (err == 0) {
            sl_tls_conn_handshake(f->tls);
            err = sl_tls_conn_flush(f->tls);
        }
    } else {
        uv_buf_t b = uv_buf_init(f->req, (unsigned)f->req_len);
        f->write.data = f;
        err = uv_write(&f->write, (uv_stream_t *)&f->tcp, &b, 1, on_write);
        if (err == 0)
            f->pending++;
    }
    if (err == 0)
        err = uv_read_start((uv_stream_t *)&f->tcp, on_alloc, on_read);
    if (err != 0)
        finish(f, SL_EFETCH_IO);
    unpend(f);
}

static void connect_addr(sl_fetch_t *f, const struct sockaddr *sa)
{
    f->phase = PH_CONNECT;
    int err = uv_tcp_init(f->loop, &f->tcp);
    if (err != 0) {
        fail_later(f, SL_EFETCH_CONNECT);
        return;
    }
    f->tcp.data = f;
    f->tcp_open = true;
    f->pending++;
    f->connect.data = f;
    err = uv_tcp_connect(&f->connect, &f->tcp, sa, on_connect);
    if (err != 0) {
        fail_later(f, err == UV_ECONNREFUSED ? SL_EFETCH_REFUSED : SL_EFETCH_CONNECT);
        return;
    }
    f->pending++;
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    sl_fetch_t *f = req->data;
    f->resolving = false;
    if (f->done || status < 0 || res == NULL) {
        uv_freeaddrinfo(res);
        if (!f->done)
            finish(f, SL_EFETCH_DNS);
        unpend(f);
        return;
    }
    f->addrs = res;
    f->next_addr = res->ai_next;
    connect_addr(f, res->ai_addr);
    unpend(f);
}

/* ---- start ---------------------------------------------------------------------------------- */

typedef struct url {
    sl_str_t authority; /* as written: the Host header */
    sl_str_t host;      /* without brackets */
    sl_str_t path;      /* from '/' (or '?'), without a fragment; empty means "/" */
    unsigned port;
    bool bracketed;
    bool https;
} url_t;

static bool is_host_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
           c == '_';
}

static int parse_url(const char *s, url_t *u)
{
    const char *a;
    if (s != NULL && strncasecmp(s, "http://", 7) == 0) {
        a = s + 7;
    } else if (s != NULL && strncasecmp(s, "https://", 8) == 0) {
        a = s + 8;
        u->https = true;
    } else {
        return SL_EFETCH_BAD_URL;
    }
    const char *end = a + strcspn(a, "/?#");
    if (end == a)
        return SL_EFETCH_BAD_URL;
    u->authority = (sl_str_t){a, (size_t)(end - a)};
    const char *port = NULL;
    if (*a == '[') {
        const char *rb = memchr(a, ']', (size_t)(end - a));
        if (rb == NULL || rb == a + 1)
            return SL_EFETCH_BAD_URL;
        u->host = (sl_str_t){a + 1, (size_t)(rb - a - 1)};
        u->bracketed = true;
        if (rb + 1 != end) {
            if (rb[1] != ':')
                return SL_EFETCH_BAD_URL;
            port = rb + 2;
        }
        for (const char *p = u->host.ptr; p < rb; p++)
            if (!(is_host_char(*p) || *p == ':'))
                return SL_EFETCH_BAD_URL;
    } else {
        const char *colon = memchr(a, ':', (size_t)(end - a));
        const char *hend = colon != NULL ? colon : end;
        if (hend == a)
            return SL_EFETCH_BAD_URL;
        for (const char *p = a; p < hend; p++)
            if (!is_host_char(*p)) /* '@' (userinfo) included: no credentials in URLs */
                return SL_EFETCH_BAD_URL;
        u->host = (sl_str_t){a, (size_t)(hend - a)};
        if (colon != NULL)
            port = colon + 1;
    }
    u->port = u->https ? 443 : 80;
    if (port != NULL) {
        unsigned long long v;
        if (!sl_str_to_u64((sl_str_t){port, (size_t)(end - port)}, &v) || v == 0 || v > 65535)
            return SL_EFETCH_BAD_URL;
        u->port = (unsigned)v;
    }
    const char *pend = end + strcspn(end, "#");
    u->path = (sl_str_t){end, (size_t)(pend - end)};
    for (const char *p = end; p < pend; p++)
        if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f)
            return SL_EFETCH_BAD_URL;
    return 0;
}

static bool is_tchar(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || strchr("!#$%&'*+-.^_`|~", c);
}

static bool valid_header(const sl_header_t *h)
{
    if (h->name.len == 0)
        return false;
    for (size_t i = 0; i < h->name.len; i++)
        if (!is_tchar(h->name.ptr[i]))
            return false;
    for (size_t i = 0; i < h->value.len; i++) {
        unsigned char c = (unsigned char)h->value.ptr[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return false; /* CR, LF, NUL: no header injection */
    }
    /* The framing and the target's identity are the client's: a caller's copy could only
     * contradict them (RFC 9112 §6.3). */
    return !sl_str_caseeq_cstr(h->name, "host") && !sl_str_caseeq_cstr(h->name, "content-length") &&
           !sl_str_caseeq_cstr(h->name, "transfer-encoding") && !sl_str_caseeq_cstr(h->name, "connection");
}

static void build_request(sl_fetch_t *f, const sl_fetch_request_t *req, const url_t *u)
{
    sl_str_t method = req->method.len > 0 ? req->method : SL_STR_LIT("GET");
    sl_str_t path = u->path;
    bool slash = path.len == 0 || path.ptr[0] == '?';
    size_t n = method.len + 1 + 1 + path.len + sizeof(" HTTP/1.1\r\nHost: ") + u->authority.len + 2;
    for (size_t i = 0; i < req->nheaders; i++)
        n += req->headers[i].name.len + 2 + req->headers[i].value.len + 2;
    n += sizeof("Content-Length: \r\n") + 20 + sizeof("Connection: close\r\n\r\n") + req->body.len;
    char *p = f->req = sl_xmalloc(n);
    p = sl_put(p, method.ptr, method.len);
    *p++ = ' ';
    if (slash)
        *p++ = '/';
    p = sl_put(p, path.ptr, path.len);
    p = sl_put(p, " HTTP/1.1\r\nHost: ", 17);
    p = sl_put(p, u->authority.ptr, u->authority.len);
    p = sl_put(p, "\r\n", 2);
    for (size_t i = 0; i < req->nheaders; i++) {
        p = sl_put(p, req->headers[i].name.ptr, req->headers[i].name.len);
        p = sl_put(p, ": ", 2);
        p = sl_put(p, req->headers[i].value.ptr, req->headers[i].value.len);
        p = sl_put(p, "\r\n", 2);
    }
    if (req->body.ptr != NULL) {
        p = sl_put(p, "Content-Length: ", 16);
        p = sl_put_u64(p, req->body.len);
        p = sl_put(p, "\r\n", 2);
    }
    p = sl_put(p, "Connection: close\r\n\r\n", 21);
    p = sl_put(p, req->body.ptr, req->body.len);
    f->req_len = (size_t)(p - f->req);
    SL_BUG_ON(f->req_len > n);
}

int sl_h1_fetch(uv_loop_t *loop, const sl_fetch_request_t *req, sl_fetch_cb cb, void *arg, sl_fetch_t **out)
{
    url_t u = {0};
    int rc = parse_url(req->url, &u);
    if (rc != 0)
        return rc;
    if (req->timeout_ms == 0 || cb == NULL)
        return SL_EINVALID;
    for (size_t i = 0; i < req->method.len; i++)
        if (!is_tchar(req->method.ptr[i]))
            return SL_EINVALID;
    for (size_t i = 0; i < req->nheaders; i++)
        if (!valid_header(&req->headers[i]))
            return SL_EINVALID;

    struct sockaddr_storage ss;
    bool literal;
    char host[256];
    if (u.host.len >= sizeof(host))
        return SL_EFETCH_BAD_URL;
    memcpy(host, u.host.ptr, u.host.len);
    host[u.host.len] = '\0';
    literal = uv_ip4_addr(host, (int)u.port, (struct sockaddr_in *)&ss) == 0;
    if (u.bracketed) {
        if (uv_ip6_addr(host, (int)u.port, (struct sockaddr_in6 *)&ss) != 0)
            return SL_EFETCH_BAD_URL;
        literal = true;
    }

    sl_fetch_t *f = sl_xmalloc(sizeof(*f));
    /* Only the bookkeeping needs zeroing; the 32 KiB read buffer is written before read. */
    memset(f, 0, offsetof(sl_fetch_t, rbuf));
    f->loop = loop;
    f->cb = cb;
    f->arg = arg;
    /* Capped so that max_body + 1 (the NUL after the body) cannot wrap. */
    f->max_body = SL_MIN(req->max_body, (size_t)SIZE_MAX / 2);
    f->head_request = sl_str_eq(req->method, SL_STR_LIT("HEAD"));
    f->https = u.https;
    rc = uv_timer_init(loop, &f->timer);
    if (rc != 0) {
        free(f);
        return rc;
    }
    f->timer.data = f;
    f->pending = 1;
    build_request(f, req, &u);
    f->host = sl_xstrndup(host, u.host.len);
    snprintf(f->port, sizeof(f->port), "%u", u.port);
    uv_timer_start(&f->timer, on_timer, req->timeout_ms, 0);
    if (out != NULL)
        *out = f;

    if (literal) {
        connect_addr(f, (const struct sockaddr *)&ss);
        return 0;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    f->gai.data = f;
    rc = uv_getaddrinfo(loop, &f->gai, on_resolved, f->host, f->port, &hints);
    if (rc != 0) {
        fail_later(f, SL_EFETCH_DNS);
        return 0;
    }
    f->resolving = true;
    f->pending++;
    return 0;
}

const sl_fetcher_t sl_h1_fetcher = {.start = sl_h1_fetch, .cancel = sl_h1_fetch_cancel};
