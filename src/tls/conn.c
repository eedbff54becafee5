/*
 * One TLS connection over memory BIOs: the owner reads the socket itself and feeds ciphertext
 * in; plaintext comes out into the owner's buffer; writes are encrypted into the write BIO and
 * drained to the socket with a try-write through a per-thread buffer, queueing only what the
 * socket did not take (one uv_write in flight, from a heap copy freed when it is written, so
 * the write BIO may keep growing meanwhile and an idle connection holds no output buffer).
 * Server connections (downstream) and client ones (the gateway's own https fetches) differ
 * only in how they are created.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "common/bug.h"
#include "common/error.h"
#include "tls/internal.h"

struct sl_tls_conn {
    SSL *ssl;
    BIO *rbio, *wbio; /* owned by ssl */
    sl_tls_ctx_t *ctx;
    uv_stream_t *stream;
    uv_write_t wreq; /* ours: the queued remainder of `out` */
    char *out;       /* the queued remainder's bytes, only while `writing` */
    bool writing;
    bool done; /* handshake finished */
    uint8_t failure;
    uv_write_t *user_req; /* a caller's write waiting for everything queued to go out */
    uv_write_cb user_cb;
    /* upstream client connections (sl_tls_upstream_conn_create) */
    unsigned long err; /* the OpenSSL error of a failed handshake, for sl_tls_conn_error */
    sl_tls_session_cb on_session;
    void *session_arg;
};

const char *sl_tls_failure_name(enum sl_tls_failure f)
{
    static const char *const names[SL_TLS_FAIL__COUNT] = {
        [SL_TLS_FAIL_TIMEOUT] = "timeout",   [SL_TLS_FAIL_CLOSED] = "closed",
        [SL_TLS_FAIL_VERSION] = "version",   [SL_TLS_FAIL_CIPHER] = "cipher",
        [SL_TLS_FAIL_PROTOCOL] = "protocol", [SL_TLS_FAIL_CERTIFICATE] = "certificate",
        [SL_TLS_FAIL_OTHER] = "other",
    };
    return (unsigned)f < SL_TLS_FAIL__COUNT ? names[f] : "other";
}

/* A connection's SSL over two memory BIOs: the socket's bytes are fed in, its output drained. */
static sl_tls_conn_t *conn_new(SSL_CTX *ssl_ctx, uv_stream_t *stream)
{
    sl_tls_conn_t *t = sl_xcalloc(1, sizeof(*t));
    t->stream = stream;
    t->ssl = SSL_new(ssl_ctx);
    SL_BUG_ON(t->ssl == NULL);
    t->rbio = BIO_new(BIO_s_mem());
    t->wbio = BIO_new(BIO_s_mem());
    SL_BUG_ON(t->rbio == NULL || t->wbio == NULL);
    /* An empty memory BIO means "would block", not EOF. */
    BIO_set_mem_eof_return(t->rbio, -1);
    BIO_set_mem_eof_return(t->wbio, -1);
    SSL_set_bio(t->ssl, t->rbio, t->wbio);
    t->failure = SL_TLS_FAIL_OTHER;
    t->wreq.data = t;
    return t;
}

void sl_tls_conn_create(sl_tls_ctx_t *ctx, uv_stream_t *stream, sl_tls_conn_t **out)
{
    sl_tls_conn_t *t = conn_new(ctx->ssl, stream);
    t->ctx = sl_tls_ctx_ref(ctx);
    SSL_set_accept_state(t->ssl);
    *out = t;
}

static pthread_once_t client_once = PTHREAD_ONCE_INIT;
static SSL_CTX *client_ctx; /* NULL when the trust store could not be loaded */

static void client_ctx_init(void)
{
    SSL_CTX *c = SSL_CTX_new(TLS_client_method());
    SL_BUG_ON(c == NULL);
    SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION);
    SSL_CTX_set_verify(c, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_mode(c, SSL_MODE_RELEASE_BUFFERS);
    static const unsigned char alpn[] = "\x08http/1.1";
    SSL_CTX_set_alpn_protos(c, alpn, sizeof(alpn) - 1);
    if (SSL_CTX_set_default_verify_paths(c) != 1) {
        ERR_clear_error();
        SSL_CTX_free(c);
        return;
    }
    client_ctx = c;
}

int sl_tls_client_create(uv_stream_t *stream, const char *host, sl_tls_conn_t **out)
{
    pthread_once(&client_once, client_ctx_init);
    if (client_ctx == NULL)
        return SL_EINVALID;
    sl_tls_conn_t *t = conn_new(client_ctx, stream);
    SSL_set_connect_state(t->ssl);
    unsigned char ip[16];
    bool literal = inet_pton(AF_INET, host, ip) == 1 || inet_pton(AF_INET6, host, ip) == 1;
    X509_VERIFY_PARAM *vp = SSL_get0_param(t->ssl);
    if (literal) {
        /* RFC 6066 §3: no IP literals in SNI; the certificate must name the address. */
        X509_VERIFY_PARAM_set1_ip_asc(vp, host);
    } else {
        SSL_set_tlsext_host_name(t->ssl, host);
        X509_VERIFY_PARAM_set_hostflags(vp, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        SSL_set1_host(t->ssl, host);
    }
    *out = t;
    return 0;
}

void sl_tls_conn_destroy(sl_tls_conn_t *t)
{
    if (t == NULL)
        return;
    SSL_free(t->ssl);
    sl_tls_ctx_unref(t->ctx);
    free(t->out);
    free(t);
}

void sl_tls_conn_feed(sl_tls_conn_t *t, const char *p, size_t n)
{
    /* A memory BIO only fails to grow on OOM, which aborts elsewhere too. */
    int w = BIO_write(t->rbio, p, (int)n);
    SL_BUG_ON(w != (int)n);
}

static enum sl_tls_failure classify(unsigned long e)
{
    if (ERR_GET_LIB(e) != ERR_LIB_SSL)
        return SL_TLS_FAIL_OTHER;
    switch (ERR_GET_REASON(e)) {
    case SSL_R_UNSUPPORTED_PROTOCOL:
    case SSL_R_TLSV1_ALERT_PROTOCOL_VERSION:
    case SSL_R_VERSION_TOO_LOW:
        return SL_TLS_FAIL_VERSION;
    case SSL_R_NO_SHARED_CIPHER:
    case SSL_R_NO_SHARED_GROUPS:
    case SSL_R_NO_SUITABLE_SIGNATURE_ALGORITHM:
    case SSL_R_SSLV3_ALERT_HANDSHAKE_FAILURE:
        return SL_TLS_FAIL_CIPHER;
    case SSL_R_CERTIFICATE_VERIFY_FAILED:
    case SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE:
    case SSL_R_SSLV3_ALERT_BAD_CERTIFICATE:
    case SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN:
    case SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED:
    case SSL_R_TLSV1_ALERT_UNKNOWN_CA:
    case SSL_R_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE:
    case SSL_R_SSLV3_ALERT_CERTIFICATE_REVOKED:
        return SL_TLS_FAIL_CERTIFICATE;
    default:
        return SL_TLS_FAIL_PROTOCOL;
    }
}

int sl_tls_conn_handshake(sl_tls_conn_t *t)
{
    if (t->done)
        return 1;
    ERR_clear_error();
    int r = SSL_do_handshake(t->ssl);
    if (r == 1) {
        t->done = true;
        return 1;
    }
    int e = SSL_get_error(t->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return 0;
    t->err = ERR_peek_error();
    t->failure = (uint8_t)classify(t->err);
    ERR_clear_error();
    return SL_EINVALID;
}

bool sl_tls_conn_handshake_done(const sl_tls_conn_t *t)
{
    return t->done;
}

enum sl_tls_failure sl_tls_conn_failure(const sl_tls_conn_t *t)
{
    return (enum sl_tls_failure)t->failure;
}

void sl_tls_conn_set_failure(sl_tls_conn_t *t, enum sl_tls_failure f)
{
    t->failure = (uint8_t)f;
}

bool sl_tls_conn_has_input(const sl_tls_conn_t *t)
{
    return SSL_pending(t->ssl) > 0 || BIO_ctrl_pending(t->rbio) > 0;
}

ssize_t sl_tls_conn_read_many(sl_tls_conn_t *t, char *dst, size_t cap, bool *closed)
{
    size_t added = 0;
    while (added < cap) {
        int n = sl_tls_conn_read(t, dst + added, cap - added);
        if (n == 0)
            break;
        if (n < 0) {
            if (n == SL_ECLOSED)
                *closed = true;
            if (added > 0 && n == SL_ECLOSED)
                break;
            return n;
        }
        added += (size_t)n;
    }
    return (ssize_t)added;
}

int sl_tls_conn_read(sl_tls_conn_t *t, char *buf, size_t cap)
{
    if (cap > INT32_MAX)
        cap = INT32_MAX;
    /* The error queue is empty here: every failure path below clears it. */
    int r = SSL_read(t->ssl, buf, (int)cap);
    if (r > 0)
        return r;
    int e = SSL_get_error(t->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return 0;
    if (e != SSL_ERROR_ZERO_RETURN)
        t->err = ERR_peek_error(); /* for sl_tls_conn_error: an alert after the handshake */
    ERR_clear_error();
    return e == SSL_ERROR_ZERO_RETURN ? SL_ECLOSED : SL_EINVALID;
}

static void on_written(uv_write_t *req, int status);

static void notify_user(sl_tls_conn_t *t, int status)
{
    uv_write_cb cb = t->user_cb;
    if (cb == NULL)
        return;
    t->user_cb = NULL;
    cb(t->user_req, status);
}

/* Ciphertext goes from the write BIO through this per-thread buffer straight to the socket;
 * only what the socket does not take is copied to the heap (and freed once written), so an
 * idle connection holds no output buffer. */
static _Thread_local char drain_buf[64 * 1024];

/* 1: the write BIO is empty and nothing is queued; 0: a remainder is queued; < 0: error. */
static int drain(sl_tls_conn_t *t)
{
    if (t->writing)
        return 0;
    if (uv_is_closing((uv_handle_t *)t->stream))
        return UV_ECANCELED;
    for (;;) {
        size_t pending = BIO_ctrl_pending(t->wbio);
        if (pending == 0)
            return 1;
        int got = BIO_read(t->wbio, drain_buf, (int)SL_MIN(pending, sizeof(drain_buf)));
        SL_BUG_ON(got <= 0);
        uv_buf_t b = uv_buf_init(drain_buf, (unsigned)got);
        int w = uv_try_write(t->stream, &b, 1);
        if (w == UV_EAGAIN)
            w = 0;
        if (w < 0)
            return w;
        if (w == got)
            continue;
        size_t rest = (size_t)(got - w);
        t->out = sl_xmalloc(rest);
        memcpy(t->out, drain_buf + w, rest);
        b = uv_buf_init(t->out, (unsigned)rest);
        int r = uv_write(&t->wreq, t->stream, &b, 1, on_written);
        if (r != 0) {
            free(t->out);
            t->out = NULL;
            return r;
        }
        t->writing = true;
        return 0;
    }
}

static void on_written(uv_write_t *req, int status)
{
    sl_tls_conn_t *t = req->data;
    t->writing = false;
    free(t->out);
    t->out = NULL;
    if (status < 0) {
        notify_user(t, status);
        return;
    }
    int r = drain(t);
    if (r != 0)
        notify_user(t, r < 0 ? r : 0);
}

/* A memory BIO takes everything: SSL_write either writes all of it or fails. */
static int ssl_write_all(sl_tls_conn_t *t, const char *p, size_t len)
{
    while (len > 0) {
        int chunk = len > (1u << 30) ? 1 << 30 : (int)len;
        int w = SSL_write(t->ssl, p, chunk);
        if (w <= 0) {
            ERR_clear_error();
            return -1;
        }
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

int sl_tls_conn_write(sl_tls_conn_t *t, uv_write_t *req, const uv_buf_t *iov, unsigned n, uv_write_cb cb)
{
    SL_BUG_ON(cb != NULL && t->user_cb != NULL);
    if (!t->done)
        return SL_ECLOSED;
    /* Small pieces (a head, a chunk-size line, a CRLF) are gathered into one record: each
     * SSL_write is a record with its own header, tag and per-call cost. */
    char gather[16384];
    size_t used = 0;
    for (unsigned i = 0; i < n; i++) {
        const char *p = iov[i].base;
        size_t len = iov[i].len;
        while (len > 0) {
            if (used == 0 && len >= sizeof(gather)) {
                if (ssl_write_all(t, p, len) != 0)
                    return SL_ECLOSED;
                break;
            }
            size_t k = len < sizeof(gather) - used ? len : sizeof(gather) - used;
            memcpy(gather + used, p, k);
            used += k;
            p += k;
            len -= k;
            if (used == sizeof(gather)) {
                if (ssl_write_all(t, gather, used) != 0)
                    return SL_ECLOSED;
                used = 0;
            }
        }
    }
    if (used > 0 && ssl_write_all(t, gather, used) != 0)
        return SL_ECLOSED;
    int r = drain(t);
    if (r == 0 && cb != NULL) {
        t->user_req = req;
        t->user_cb = cb;
    }
    return r;
}

int sl_tls_conn_flush(sl_tls_conn_t *t)
{
    int r = drain(t);
    return r < 0 ? r : 0;
}

void sl_tls_conn_shutdown(sl_tls_conn_t *t)
{
    if (!t->done || t->writing || uv_is_closing((uv_handle_t *)t->stream))
        return;
    ERR_clear_error();
    if (SSL_shutdown(t->ssl) < 0) {
        ERR_clear_error();
        return;
    }
    char buf[128];
    int n = BIO_read(t->wbio, buf, sizeof(buf));
    if (n > 0) {
        uv_buf_t b = uv_buf_init(buf, (unsigned)n);
        (void)uv_try_write(t->stream, &b, 1);
    }
}

const char *sl_tls_conn_alpn(const sl_tls_conn_t *t)
{
    const unsigned char *p;
    unsigned len;
    SSL_get0_alpn_selected(t->ssl, &p, &len);
    if (len == 2 && memcmp(p, "h2", 2) == 0)
        return "h2";
    return len == 8 && memcmp(p, "http/1.1", 8) == 0 ? "http/1.1" : "";
}

const char *sl_tls_conn_version(const sl_tls_conn_t *t)
{
    return SSL_get_version(t->ssl);
}

bool sl_tls_conn_resumed(const sl_tls_conn_t *t)
{
    return SSL_session_reused(t->ssl) == 1;
}

unsigned sl__tls_conn_listener(const sl_tls_conn_t *t)
{
    return t->ctx != NULL ? t->ctx->listener : 0;
}
SSL *sl__tls_conn_ssl(const sl_tls_conn_t *t)
{
    return t->ssl;
} /* for peer.c (mTLS identity) */

/* ---- upstream client connections (docs/tls.md "Upstream TLS") ------------------------------- */

/* OpenSSL's new-session callback of every upstream client context: a copy of the session goes
 * to the connection's owner (its pool). A copy, because the session itself stays the
 * connection's and OpenSSL marks it not resumable when the connection ends without a
 * close_notify (as most upstream connections do: the server closes, or we drop it). */
int sl__tls_upstream_new_session(SSL *ssl, SSL_SESSION *s)
{
    sl_tls_conn_t *t = SSL_get_app_data(ssl);
    if (t == NULL || t->on_session == NULL || SSL_SESSION_is_resumable(s) != 1)
        return 0;
    SSL_SESSION *copy = SSL_SESSION_dup(s);
    if (copy != NULL)
        t->on_session(t->session_arg, copy);
    return 0;
}

void sl_tls_upstream_conn_create(const sl_tls_client_ctx_t *ctx, uv_stream_t *stream, const char *sni, const char *name,
                                 struct ssl_session_st *resume, sl_tls_session_cb on_session, void *arg,
                                 sl_tls_conn_t **out)
{
    SSL_CTX *ssl_ctx = sl__tls_client_ctx_ssl(ctx);
    sl_tls_conn_t *t = conn_new(ssl_ctx, stream);
    SSL_set_connect_state(t->ssl);
    SSL_set_app_data(t->ssl, t);
    t->on_session = on_session;
    t->session_arg = arg;
    if (sni != NULL)
        SSL_set_tlsext_host_name(t->ssl, sni);
    if (name != NULL && (SSL_CTX_get_verify_mode(ssl_ctx) & SSL_VERIFY_PEER)) {
        unsigned char ip[16];
        X509_VERIFY_PARAM *vp = SSL_get0_param(t->ssl);
        if (inet_pton(AF_INET, name, ip) == 1 || inet_pton(AF_INET6, name, ip) == 1) {
            X509_VERIFY_PARAM_set1_ip_asc(vp, name);
        } else {
            X509_VERIFY_PARAM_set_hostflags(vp, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
            SSL_set1_host(t->ssl, name);
        }
    }
    if (resume != NULL)
        SSL_set_session(t->ssl, resume); /* takes its own reference */
    *out = t;
}

const char *sl_tls_conn_error(const sl_tls_conn_t *t, char *buf, size_t len)
{
    if (ERR_GET_LIB(t->err) == ERR_LIB_SSL && ERR_GET_REASON(t->err) == SSL_R_CERTIFICATE_VERIFY_FAILED) {
        long v = SSL_get_verify_result(t->ssl);
        snprintf(buf, len, "certificate verify failed: %s", X509_verify_cert_error_string(v));
        return buf;
    }
    const char *r = t->err != 0 ? ERR_reason_error_string(t->err) : NULL;
    snprintf(buf, len, "%s", r != NULL ? r : "handshake failed");
    return buf;
}

const char *sl_tls_handshake_failure(const sl_tls_conn_t *t, int status, char *buf, size_t len)
{
    char why[128];
    if (status == SL_EINVALID)
        snprintf(buf, len, "tls: %s", sl_tls_conn_error(t, why, sizeof(why)));
    else if (status == UV_EOF)
        snprintf(buf, len, "tls: connection closed during the handshake");
    else
        snprintf(buf, len, "tls: %s during the handshake", uv_strerror(status));
    return buf;
}

void sl_tls_session_free(struct ssl_session_st *s)
{
    SSL_SESSION_free(s);
}
