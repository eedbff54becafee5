/*
 * A blocking HTTP/1.1 client for the operator commands (client.h). One request per connection:
 * resolve, connect with a deadline, the TLS handshake for https (OpenSSL on the non-blocking
 * socket, waiting with poll), send, then read the head through the strict response parser and
 * the body by its framing (length, chunked or until close), stamping each phase with
 * CLOCK_MONOTONIC for `sluice probe`.
 */
#include "cli/client.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/bug.h"
#include "common/error.h"
#include "http1/parser.h"

#define MAX_HEAD    (64 * 1024)
#define MAX_HEADERS 100

/* ---- URLs ---------------------------------------------------------------------------------- */

static bool host_char_ok(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
           c == '_';
}

/* Parses "host[:port]" or "[v6][:port]" from s[0..len) into host/port/host_is_ip (the default
 * port by u->tls). */
static int parse_authority(const char *s, size_t len, bool port_required, sl_cli_url_t *u, const char **why)
{
    const char *host = s, *port = NULL;
    size_t hlen;
    if (len > 0 && s[0] == '[') {
        const char *end = memchr(s, ']', len);
        if (end == NULL) {
            *why = "missing ']' after an IPv6 address";
            return SL_EINVALID;
        }
        host = s + 1;
        hlen = (size_t)(end - host);
        size_t rest = len - (size_t)(end + 1 - s);
        if (rest > 0) {
            if (end[1] != ':') {
                *why = "expected ':port' after ']'";
                return SL_EINVALID;
            }
            port = end + 2;
        }
    } else {
        const char *colon = memchr(s, ':', len);
        hlen = colon != NULL ? (size_t)(colon - s) : len;
        if (colon != NULL)
            port = colon + 1;
    }
    if (hlen == 0) {
        *why = "the host is empty";
        return SL_EINVALID;
    }
    if (hlen >= sizeof(u->host)) {
        *why = "the host name is too long";
        return SL_EINVALID;
    }
    memcpy(u->host, host, hlen);
    u->host[hlen] = '\0';

    unsigned char tmp[sizeof(struct in6_addr)];
    if (s[0] == '[') {
        if (inet_pton(AF_INET6, u->host, tmp) != 1) {
            *why = "not a valid IPv6 address between '[' and ']'";
            return SL_EINVALID;
        }
        u->host_is_ip = true;
    } else {
        for (size_t i = 0; i < hlen; i++) {
            if (!host_char_ok(u->host[i])) {
                *why = "the host has a character not allowed in a host name";
                return SL_EINVALID;
            }
        }
        u->host_is_ip = inet_pton(AF_INET, u->host, tmp) == 1;
    }

    if (port == NULL) {
        if (port_required) {
            *why = "expected host:port";
            return SL_EINVALID;
        }
        u->port = u->tls ? 443 : 80;
        return 0;
    }
    size_t plen = len - (size_t)(port - s);
    unsigned long v = 0;
    if (plen == 0 || plen > 5) {
        *why = "the port must be a number from 1 to 65535";
        return SL_EINVALID;
    }
    for (size_t i = 0; i < plen; i++) {
        if (port[i] < '0' || port[i] > '9') {
            *why = "the port must be a number from 1 to 65535";
            return SL_EINVALID;
        }
        v = v * 10 + (unsigned long)(port[i] - '0');
    }
    if (v == 0 || v > 65535) {
        *why = "the port must be a number from 1 to 65535";
        return SL_EINVALID;
    }
    u->port = (uint16_t)v;
    return 0;
}

/* The path goes on the request line as it is, so it may hold only visible ASCII. */
static int set_path(sl_cli_url_t *u, const char *path, size_t len, const char **why)
{
    if (len == 0) {
        strcpy(u->path, "/");
        return 0;
    }
    if (path[0] != '/') {
        *why = "the path must start with '/'";
        return SL_EINVALID;
    }
    if (len >= sizeof(u->path)) {
        *why = "the path is too long";
        return SL_EINVALID;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)path[i];
        if (c <= 0x20 || c >= 0x7f) {
            *why = "the path has a space or a control or non-ASCII character (percent-encode it)";
            return SL_EINVALID;
        }
    }
    /* A fragment is never sent (RFC 9110 §4.2.4). */
    const char *hash = memchr(path, '#', len);
    if (hash != NULL)
        len = (size_t)(hash - path);
    memcpy(u->path, path, len);
    u->path[len] = '\0';
    return 0;
}

int sl_cli_url_parse(const char *s, sl_cli_url_t *out, const char **why)
{
    const char *dummy;
    if (why == NULL)
        why = &dummy;
    sl_cli_url_t u;
    memset(&u, 0, sizeof(u));
    if (strncasecmp(s, "https://", 8) == 0) {
        u.tls = true;
    } else if (strncasecmp(s, "http://", 7) != 0) {
        *why = "expected http://host:port/path or https://host:port/path";
        return SL_EINVALID;
    }
    const char *auth = s + (u.tls ? 8 : 7);
    size_t alen = strcspn(auth, "/?#");
    if (memchr(auth, '@', alen) != NULL) {
        *why = "user information in the URL is not supported";
        return SL_EINVALID;
    }
    int rc = parse_authority(auth, alen, false, &u, why);
    if (rc != 0)
        return rc;
    const char *path = auth + alen;
    if (path[0] == '?') {
        /* "http://h?q" has an empty path: the request target is "/?q" (RFC 9112 §3.2.1). */
        char tmp[sizeof(u.path)];
        if (strlen(path) + 2 > sizeof(tmp)) {
            *why = "the path is too long";
            return SL_EINVALID;
        }
        snprintf(tmp, sizeof(tmp), "/%s", path);
        rc = set_path(&u, tmp, strlen(tmp), why);
    } else {
        rc = set_path(&u, path, strlen(path), why);
    }
    if (rc != 0)
        return rc;
    *out = u;
    return 0;
}

int sl_cli_url_from_address(const char *address, const char *path, sl_cli_url_t *out, const char **why)
{
    const char *dummy;
    if (why == NULL)
        why = &dummy;
    sl_cli_url_t u;
    memset(&u, 0, sizeof(u));
    if (strncasecmp(address, "https://", 8) == 0) {
        u.tls = true;
        address += 8;
    }
    int rc = parse_authority(address, strlen(address), true, &u, why);
    if (rc == 0)
        rc = set_path(&u, path != NULL ? path : "/", path != NULL ? strlen(path) : 1, why);
    if (rc != 0)
        return rc;
    *out = u;
    return 0;
}

static bool is_v6(const char *host)
{
    return strchr(host, ':') != NULL;
}

void sl_cli_url_format(const sl_cli_url_t *u, char *buf, size_t len)
{
    snprintf(buf, len, "%s://%s%s%s:%u%s", u->tls ? "https" : "http", is_v6(u->host) ? "[" : "", u->host,
             is_v6(u->host) ? "]" : "", (unsigned)u->port, u->path);
}

/* ---- the exchange -------------------------------------------------------------------------- */

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Waits until `fd` is ready for `events` or `deadline` (now_ms clock) passes. */
static int wait_fd(int fd, short events, double deadline)
{
    for (;;) {
        double left = deadline - now_ms();
        if (left <= 0)
            return SL_ETIMEDOUT;
        struct pollfd p = {.fd = fd, .events = events};
        int n = poll(&p, 1, (int)left + 1);
        if (n > 0)
            return 0;
        if (n == 0)
            continue;
        if (errno != EINTR)
            return -errno;
    }
}

static int resolve(const sl_cli_url_t *url, struct addrinfo **res)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = url->host_is_ip ? AI_NUMERICHOST : 0};
    char port[8];
    snprintf(port, sizeof(port), "%u", (unsigned)url->port);
    int rc = getaddrinfo(url->host, port, &hints, res);
    if (rc == 0)
        return 0;
    if (rc == EAI_SYSTEM && errno != 0)
        return -errno;
    if (rc == EAI_AGAIN)
        return SL_ETIMEDOUT;
    return SL_ENOTFOUND;
}

/* Connects to the first address that accepts; the error of the last one otherwise. */
static int connect_any(const struct addrinfo *ai, double deadline, int *out)
{
    int rc = SL_ENOTFOUND;
    for (; ai != NULL; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
        if (fd < 0) {
            rc = -errno;
            continue;
        }
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
            *out = fd;
            return 0;
        }
        rc = -errno;
        if (rc == -EINPROGRESS) {
            rc = wait_fd(fd, POLLOUT, deadline);
            if (rc == 0) {
                int err = 0;
                socklen_t elen = sizeof(err);
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen);
                rc = -err;
            }
            if (rc == 0) {
                *out = fd;
                return 0;
            }
        }
        close(fd);
        if (rc == SL_ETIMEDOUT)
            break;
    }
    return rc;
}

/* One connection: the socket, and OpenSSL's state over it when the exchange is TLS. */
typedef struct conn {
    int fd;
    SSL_CTX *ctx;
    SSL *ssl;    /* NULL: plain TCP */
    bool broken; /* a fatal TLS error: no close_notify */
    char *detail;
    size_t detail_len;
} conn_t;

static void conn_close(conn_t *c)
{
    if (c->ssl != NULL) {
        if (!c->broken && SSL_is_init_finished(c->ssl))
            SSL_shutdown(c->ssl); /* best effort close_notify: the socket does not block */
        SSL_free(c->ssl);
    }
    SSL_CTX_free(c->ctx);
    if (c->fd >= 0)
        close(c->fd);
    ERR_clear_error();
}

/* Writes "tls: <why>" into the request's detail buffer and returns SL_CLI_ETLS. */
static int tls_fail(conn_t *c, const char *why)
{
    if (c->detail != NULL && c->detail_len > 0)
        snprintf(c->detail, c->detail_len, "tls: %s", why);
    ERR_clear_error();
    return SL_CLI_ETLS;
}

/* OpenSSL's reason for the last failure, worded like the gateway's (sl_tls_conn_error). */
static int tls_fail_openssl(conn_t *c, const char *fallback)
{
    char why[256];
    unsigned long err = ERR_peek_error();
    if (c->ssl != NULL && ERR_GET_LIB(err) == ERR_LIB_SSL && ERR_GET_REASON(err) == SSL_R_CERTIFICATE_VERIFY_FAILED) {
        snprintf(why, sizeof(why), "certificate verify failed: %s",
                 X509_verify_cert_error_string(SSL_get_verify_result(c->ssl)));
    } else {
        const char *r = err != 0 ? ERR_reason_error_string(err) : NULL;
        snprintf(why, sizeof(why), "%s", r != NULL ? r : fallback);
    }
    return tls_fail(c, why);
}

/* After an SSL call returned `ret` <= 0: waits for the socket and returns 0 when the call should
 * be repeated, else SL_ECLOSED (the peer closed), SL_ETIMEDOUT, an errno code or SL_CLI_ETLS. */
static int ssl_retry(conn_t *c, int ret, double deadline)
{
    int e = SSL_get_error(c->ssl, ret);
    if (e == SSL_ERROR_WANT_READ)
        return wait_fd(c->fd, POLLIN, deadline);
    if (e == SSL_ERROR_WANT_WRITE)
        return wait_fd(c->fd, POLLOUT, deadline);
    if (e == SSL_ERROR_ZERO_RETURN)
        return SL_ECLOSED;
    c->broken = true;
    if (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0) {
        int err = errno;
        ERR_clear_error();
        return ret == 0 || err == 0 ? SL_ECLOSED : -err;
    }
    return tls_fail_openssl(c, "handshake failed");
}

/* The client context of `o`; SL_CLI_ETLS with the detail when a file cannot be used. */
static int tls_context(conn_t *c, const sl_cli_tls_t *o, bool h2)
{
    char why[600];
    c->ctx = SSL_CTX_new(TLS_client_method());
    if (c->ctx == NULL)
        return tls_fail_openssl(c, "cannot create a TLS context");
    SSL_CTX_set_min_proto_version(c->ctx, o->min_version == 13 ? TLS1_3_VERSION : TLS1_2_VERSION);
    SSL_CTX_set_options(c->ctx, SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_RENEGOTIATION);
    if (o->verify) {
        if (o->ca != NULL) {
            if (access(o->ca, R_OK) != 0) {
                snprintf(why, sizeof(why), "cannot read the CA file %s: %s", o->ca, strerror(errno));
                return tls_fail(c, why);
            }
            if (SSL_CTX_load_verify_locations(c->ctx, o->ca, NULL) != 1) {
                snprintf(why, sizeof(why), "no PEM certificate in the CA file %s", o->ca);
                return tls_fail(c, why);
            }
        } else if (SSL_CTX_set_default_verify_paths(c->ctx) != 1) {
            return tls_fail(c, "cannot load the system trust store");
        }
        SSL_CTX_set_verify(c->ctx, SSL_VERIFY_PEER, NULL);
    } else {
        SSL_CTX_set_verify(c->ctx, SSL_VERIFY_NONE, NULL);
    }
    if (o->client_cert != NULL) {
        if (SSL_CTX_use_certificate_chain_file(c->ctx, o->client_cert) != 1) {
            snprintf(why, sizeof(why), "cannot load the client certificate %s", o->client_cert);
            return tls_fail(c, why);
        }
        const char *key = o->client_key != NULL ? o->client_key : o->client_cert;
        if (SSL_CTX_use_PrivateKey_file(c->ctx, key, SSL_FILETYPE_PEM) != 1 || SSL_CTX_check_private_key(c->ctx) != 1) {
            snprintf(why, sizeof(why), "cannot load the client key %s (or it does not match the certificate)", key);
            return tls_fail(c, why);
        }
    }
    static const unsigned char alpn_h1[] = "\x08http/1.1", alpn_h2[] = "\x02h2";
    if (h2)
        SSL_CTX_set_alpn_protos(c->ctx, alpn_h2, sizeof(alpn_h2) - 1);
    else
        SSL_CTX_set_alpn_protos(c->ctx, alpn_h1, sizeof(alpn_h1) - 1);
    return 0;
}

/* The handshake on the connected socket, bounded by `deadline`. Every failure is SL_CLI_ETLS. */
static int tls_handshake(conn_t *c, const sl_cli_url_t *url, const sl_cli_tls_t *o, bool h2, double deadline)
{
    int rc = tls_context(c, o, h2);
    if (rc != 0)
        return rc;
    c->ssl = SSL_new(c->ctx);
    if (c->ssl == NULL || SSL_set_fd(c->ssl, c->fd) != 1)
        return tls_fail_openssl(c, "cannot create a TLS connection");
    /* SNI is a DNS name only (RFC 6066 §3); an IP target is checked against its IP SANs. */
    const char *name = o->sni != NULL && o->sni[0] != '\0' ? o->sni : url->host_is_ip ? NULL : url->host;
    if (name != NULL)
        SSL_set_tlsext_host_name(c->ssl, name);
    if (o->verify) {
        if (name != NULL)
            SSL_set1_host(c->ssl, name);
        else
            X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), url->host);
    }
    SSL_set_connect_state(c->ssl);
    ERR_clear_error();
    for (;;) {
        int ret = SSL_connect(c->ssl);
        if (ret == 1)
            break;
        rc = ssl_retry(c, ret, deadline);
        if (rc == SL_CLI_ETLS)
            return rc;
        if (rc == SL_ETIMEDOUT)
            return tls_fail(c, "handshake timed out");
        if (rc == SL_ECLOSED)
            return tls_fail(c, "connection closed during the handshake");
        if (rc < 0) {
            char why[160];
            snprintf(why, sizeof(why), "%s during the handshake", sl_cli_strerror(rc));
            return tls_fail(c, why);
        }
    }
    if (h2) {
        const unsigned char *sel = NULL;
        unsigned len = 0;
        SSL_get0_alpn_selected(c->ssl, &sel, &len);
        if (len != 2 || memcmp(sel, "h2", 2) != 0)
            return tls_fail(c, "the server did not select h2 (ALPN)");
    }
    return 0;
}

static int send_all(conn_t *c, const char *p, size_t len, double deadline)
{
    while (len > 0) {
        if (c->ssl != NULL) {
            ERR_clear_error();
            int n = SSL_write(c->ssl, p, len > INT32_MAX ? INT32_MAX : (int)len);
            if (n > 0) {
                p += n;
                len -= (size_t)n;
                continue;
            }
            int rc = ssl_retry(c, n, deadline);
            if (rc != 0)
                return rc;
            continue;
        }
        ssize_t n = send(c->fd, p, len, MSG_NOSIGNAL);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
            return -errno;
        int rc = wait_fd(c->fd, POLLOUT, deadline);
        if (rc != 0)
            return rc;
    }
    return 0;
}

typedef struct rbuf {
    char *p;
    size_t len, cap;
} rbuf_t;

static void rbuf_reserve(rbuf_t *b, size_t more)
{
    if (b->len + more + 1 <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 16384;
    while (cap < b->len + more + 1)
        cap *= 2;
    b->p = sl_xrealloc(b->p, cap);
    b->cap = cap;
}

/* Reads more bytes into b. Returns bytes read (0 at end of stream) or a negative code. */
static long read_some(conn_t *c, rbuf_t *b, double deadline)
{
    rbuf_reserve(b, 16384);
    size_t room = b->cap - b->len - 1;
    for (;;) {
        if (c->ssl != NULL) {
            ERR_clear_error();
            int n = SSL_read(c->ssl, b->p + b->len, room > INT32_MAX ? INT32_MAX : (int)room);
            if (n > 0) {
                b->len += (size_t)n;
                return n;
            }
            int rc = ssl_retry(c, n, deadline);
            if (rc == SL_ECLOSED)
                return 0;
            if (rc != 0)
                return rc;
            continue;
        }
        ssize_t n = recv(c->fd, b->p + b->len, room, 0);
        if (n >= 0) {
            b->len += (size_t)n;
            return (long)n;
        }
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return -errno;
        int rc = wait_fd(c->fd, POLLIN, deadline);
        if (rc != 0)
            return rc;
    }
}

static int build_request(const sl_cli_url_t *url, const sl_cli_request_t *req, rbuf_t *out)
{
    char host[300];
    if (req->host_header != NULL)
        snprintf(host, sizeof(host), "%s", req->host_header);
    else
        snprintf(host, sizeof(host), "%s%s%s:%u", is_v6(url->host) ? "[" : "", url->host, is_v6(url->host) ? "]" : "",
                 (unsigned)url->port);
    size_t need = strlen(url->path) + strlen(host) + (req->token ? strlen(req->token) : 0) + 512 + req->body_len;
    rbuf_reserve(out, need);
    int n = snprintf(out->p, out->cap,
                     "%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: sluice/" SLUICE_VERSION
                     "\r\nAccept: application/json\r\nConnection: close\r\n",
                     req->method, url->path, host);
    if (req->token != NULL && req->token[0] != '\0')
        n += snprintf(out->p + n, out->cap - (size_t)n, "Authorization: Bearer %s\r\n", req->token);
    if (req->body != NULL)
        n += snprintf(out->p + n, out->cap - (size_t)n, "Content-Type: application/json\r\nContent-Length: %zu\r\n",
                      req->body_len);
    else if (strcmp(req->method, "POST") == 0 || strcmp(req->method, "PUT") == 0)
        n += snprintf(out->p + n, out->cap - (size_t)n, "Content-Length: 0\r\n");
    n += snprintf(out->p + n, out->cap - (size_t)n, "\r\n");
    out->len = (size_t)n;
    if (req->body != NULL) {
        memcpy(out->p + out->len, req->body, req->body_len);
        out->len += req->body_len;
    }
    return 0;
}

/* Reads the body that starts at b->p[head] according to its framing; on success `body` holds
 * only the body bytes. */
static int read_body(conn_t *c, rbuf_t *b, size_t head, const sl_h1_response_t *r, double deadline, rbuf_t *body)
{
    switch (r->body) {
    case SL_H1_BODY_NONE:
        return 0;
    case SL_H1_BODY_LENGTH: {
        if (r->content_length > SL_CLI_MAX_BODY)
            return SL_ETOOBIG;
        while (b->len - head < r->content_length) {
            long n = read_some(c, b, deadline);
            if (n < 0)
                return (int)n;
            if (n == 0)
                return SL_ECLOSED;
        }
        rbuf_reserve(body, r->content_length);
        memcpy(body->p, b->p + head, r->content_length);
        body->len = r->content_length;
        return 0;
    }
    case SL_H1_BODY_CLOSE:
        for (;;) {
            if (b->len - head > SL_CLI_MAX_BODY)
                return SL_ETOOBIG;
            long n = read_some(c, b, deadline);
            if (n < 0)
                return (int)n;
            if (n == 0)
                break;
        }
        rbuf_reserve(body, b->len - head);
        memcpy(body->p, b->p + head, b->len - head);
        body->len = b->len - head;
        return 0;
    case SL_H1_BODY_CHUNKED: {
        sl_h1_chunked_t d;
        sl_h1_chunked_init(&d);
        size_t pos = head;
        for (;;) {
            size_t used = 0;
            sl_str_t out;
            int ev = sl_h1_chunked_decode(&d, b->p + pos, b->len - pos, &used, &out);
            if (ev < 0)
                return ev;
            pos += used;
            if (ev == SL_H1_CHUNK_DONE)
                return 0;
            if (ev == SL_H1_CHUNK_DATA) {
                if (body->len + out.len > SL_CLI_MAX_BODY)
                    return SL_ETOOBIG;
                rbuf_reserve(body, out.len);
                memcpy(body->p + body->len, out.ptr, out.len);
                body->len += out.len;
                continue;
            }
            if (ev == SL_H1_CHUNK_TRAILER)
                continue;
            /* Drop what the decoder consumed, so the buffer does not hold the whole body twice. */
            memmove(b->p + head, b->p + pos, b->len - pos);
            b->len = head + (b->len - pos);
            pos = head;
            long n = read_some(c, b, deadline);
            if (n < 0)
                return (int)n;
            if (n == 0)
                return SL_ECLOSED;
        }
    }
    }
    return SL_EINVALID;
}

static int exchange(conn_t *c, const sl_cli_url_t *url, const sl_cli_request_t *req, double t0, sl_cli_response_t *resp,
                    sl_cli_timings_t *t)
{
    rbuf_t out = {0}, in = {0}, body = {0};
    build_request(url, req, &out);
    double deadline = now_ms() + req->timeout_ms;
    int rc = send_all(c, out.p, out.len, deadline);
    free(out.p);
    if (rc != 0)
        return rc;
    double sent = now_ms();

    sl_header_t headers[MAX_HEADERS];
    sl_h1_response_t r;
    sl_h1_limits_t limits = {.max_head_bytes = MAX_HEAD, .max_uri_bytes = MAX_HEAD, .max_headers = MAX_HEADERS};
    int head = 0;
    bool more = true; /* the buffer holds no complete head: read before parsing */
    for (;;) {
        if (more) {
            long n = read_some(c, &in, deadline);
            if (n < 0) {
                rc = (int)n;
                goto fail;
            }
            if (n == 0) {
                rc = SL_ECLOSED;
                goto fail;
            }
            if (t->first_byte_ms < 0)
                t->first_byte_ms = now_ms() - sent;
        }
        more = true;
        memset(&r, 0, sizeof(r));
        r.headers = headers;
        head = sl_h1_parse_response(in.p, in.len, &r, &limits, strcmp(req->method, "HEAD") == 0);
        if (head == SL_EINCOMPLETE)
            continue;
        if (head < 0) {
            rc = head;
            goto fail;
        }
        if (r.status >= 200)
            break;
        /* An interim response (100 Continue, 103 Early Hints): the final one follows. */
        memmove(in.p, in.p + head, in.len - (size_t)head);
        in.len -= (size_t)head;
        more = in.len == 0;
    }
    rc = read_body(c, &in, (size_t)head, &r, deadline, &body);
    if (rc != 0)
        goto fail;
    t->total_ms = now_ms() - t0;

    memset(resp, 0, sizeof(*resp));
    resp->status = r.status;
    for (size_t i = 0; i < r.nheaders; i++)
        if (sl_str_caseeq_cstr(r.headers[i].name, "content-type"))
            snprintf(resp->content_type, sizeof(resp->content_type), "%.*s", (int)r.headers[i].value.len,
                     r.headers[i].value.ptr);
    rbuf_reserve(&body, 0);
    body.p[body.len] = '\0';
    resp->body = body.p;
    resp->body_len = body.len;
    free(in.p);
    return 0;
fail:
    free(in.p);
    free(body.p);
    return rc;
}

/* Resolves, connects and, for TLS, runs the handshake, stamping t. On success `c` is open (the
 * caller closes it); on failure it is closed. */
static int open_conn(const sl_cli_url_t *url, const sl_cli_request_t *req, bool h2, double t0, conn_t *c,
                     sl_cli_timings_t *t)
{
    memset(c, 0, sizeof(*c));
    c->fd = -1;
    c->detail = req->detail;
    c->detail_len = req->detail_len;
    if (c->detail != NULL && c->detail_len > 0)
        c->detail[0] = '\0';
    struct addrinfo *ai = NULL;
    int rc = resolve(url, &ai);
    t->dns_ms = url->host_is_ip ? 0 : now_ms() - t0;
    if (rc != 0)
        return rc;
    double c0 = now_ms();
    double deadline = c0 + req->timeout_ms; /* TCP and TLS together */
    rc = connect_any(ai, deadline, &c->fd);
    freeaddrinfo(ai);
    if (rc != 0)
        return rc;
    double c1 = now_ms();
    t->connect_ms = c1 - c0;
    static const sl_cli_tls_t defaults = {.verify = true};
    const sl_cli_tls_t *tls = req->tls != NULL ? req->tls : url->tls ? &defaults : NULL;
    if (tls != NULL) {
        rc = tls_handshake(c, url, tls, h2, deadline);
        if (rc == 0 || (c->ssl != NULL && SSL_is_init_finished(c->ssl)))
            t->tls_ms = now_ms() - c1;
        if (rc != 0)
            conn_close(c);
    }
    return rc;
}

static sl_cli_timings_t timings_init(void)
{
    return (sl_cli_timings_t){.dns_ms = -1, .connect_ms = -1, .tls_ms = -1, .first_byte_ms = -1, .total_ms = -1};
}

int sl_cli_http(const sl_cli_url_t *url, const sl_cli_request_t *req, sl_cli_response_t *resp,
                sl_cli_timings_t *timings)
{
    sl_cli_timings_t t = timings_init();
    double t0 = now_ms();
    conn_t c;
    int rc = open_conn(url, req, false, t0, &c, &t);
    if (rc == 0) {
        rc = exchange(&c, url, req, t0, resp, &t);
        conn_close(&c);
    }
    if (timings != NULL)
        *timings = t;
    return rc;
}

/* ---- the HTTP/2 preface check (RFC 9113 §3.4) ---------------------------------------------- */

#define H2_FRAME_HEAD     9
#define H2_SETTINGS       0x4
#define H2_FLAG_ACK       0x1
#define H2_MAX_FRAME_SIZE 16384 /* SETTINGS_MAX_FRAME_SIZE's initial value: we announce no other */

static const char *h2_frame_name(unsigned type)
{
    static const char *const names[] = {"DATA",         "HEADERS", "PRIORITY", "RST_STREAM",    "SETTINGS",
                                        "PUSH_PROMISE", "PING",    "GOAWAY",   "WINDOW_UPDATE", "CONTINUATION"};
    return type < SL_ARRAY_SIZE(names) ? names[type] : "of an unknown type";
}

static int h2_fail(conn_t *c, const char *why)
{
    if (c->detail != NULL && c->detail_len > 0)
        snprintf(c->detail, c->detail_len, "h2: %s", why);
    return SL_CLI_EH2;
}

/* Reads until `b` holds `want` bytes: 0, SL_CLI_EH2 when the server closed first, or a code. */
static int h2_read(conn_t *c, rbuf_t *b, size_t want, double deadline, double sent, sl_cli_timings_t *t)
{
    while (b->len < want) {
        long n = read_some(c, b, deadline);
        if (n < 0)
            return (int)n;
        if (n == 0) {
            if (b->len >= 5 && memcmp(b->p, "HTTP/", 5) == 0)
                return h2_fail(c, "the server answered in HTTP/1.x, not HTTP/2");
            return h2_fail(c, "the server closed the connection before its SETTINGS");
        }
        if (t->first_byte_ms < 0 && b->len >= H2_FRAME_HEAD)
            t->first_byte_ms = now_ms() - sent;
    }
    return 0;
}

static int preface_exchange(conn_t *c, const sl_cli_request_t *req, double t0, sl_cli_timings_t *t)
{
    /* The client preface and an empty SETTINGS frame: the defaults are all we need. */
    static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
                                  "\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    double deadline = now_ms() + req->timeout_ms;
    int rc = send_all(c, preface, sizeof(preface) - 1, deadline);
    if (rc != 0)
        return rc;
    double sent = now_ms();
    rbuf_t in = {0};
    rc = h2_read(c, &in, H2_FRAME_HEAD, deadline, sent, t);
    if (rc != 0)
        goto out;
    const unsigned char *h = (const unsigned char *)in.p;
    size_t len = (size_t)h[0] << 16 | (size_t)h[1] << 8 | h[2];
    unsigned type = h[3], flags = h[4];
    uint32_t stream = ((uint32_t)h[5] << 24 | (uint32_t)h[6] << 16 | (uint32_t)h[7] << 8 | h[8]) & 0x7fffffffu;
    if (memcmp(in.p, "HTTP/", 5) == 0) {
        rc = h2_fail(c, "the server answered in HTTP/1.x, not HTTP/2");
        goto out;
    }
    if (type != H2_SETTINGS) {
        char why[80];
        snprintf(why, sizeof(why), "the server's first frame is %s, not SETTINGS", h2_frame_name(type));
        rc = h2_fail(c, why);
        goto out;
    }
    if ((flags & H2_FLAG_ACK) != 0 || stream != 0 || len % 6 != 0 || len > H2_MAX_FRAME_SIZE) {
        rc = h2_fail(c, "the server's SETTINGS frame is malformed");
        goto out;
    }
    rc = h2_read(c, &in, H2_FRAME_HEAD + len, deadline, sent, t);
    if (rc != 0)
        goto out;
    t->total_ms = now_ms() - t0;
    /* Polite: acknowledge its SETTINGS, then GOAWAY(NO_ERROR) with no stream processed. */
    static const char bye[] = "\x00\x00\x00\x04\x01\x00\x00\x00\x00"
                              "\x00\x00\x08\x07\x00\x00\x00\x00\x00"
                              "\x00\x00\x00\x00\x00\x00\x00\x00";
    send_all(c, bye, sizeof(bye) - 1, deadline);
out:
    free(in.p);
    return rc;
}

int sl_cli_h2_preface(const sl_cli_url_t *url, const sl_cli_request_t *req, sl_cli_timings_t *timings)
{
    sl_cli_timings_t t = timings_init();
    double t0 = now_ms();
    conn_t c;
    int rc = open_conn(url, req, true, t0, &c, &t);
    if (rc == 0) {
        rc = preface_exchange(&c, req, t0, &t);
        conn_close(&c);
    }
    if (timings != NULL)
        *timings = t;
    return rc;
}

void sl_cli_response_dispose(sl_cli_response_t *resp)
{
    free(resp->body);
    resp->body = NULL;
    resp->body_len = 0;
}

const char *sl_cli_strerror(int code)
{
    switch (code) {
    case SL_ENOTFOUND:
        return "name not resolved";
    case SL_ETIMEDOUT:
    case -ETIMEDOUT:
        return "timed out";
    case -ECONNREFUSED:
        return "connection refused";
    case -ECONNRESET:
    case SL_ECLOSED:
        return "connection closed before a complete response";
    case SL_ETOOBIG:
        return "response too large";
    case SL_CLI_ETLS:
        return "tls: handshake failed";
    case SL_CLI_EH2:
        return "h2: not an HTTP/2 server";
    case -EHOSTUNREACH:
        return "host unreachable";
    case -ENETUNREACH:
        return "network unreachable";
    }
    if (code <= -10100 && code >= -10199)
        return sl_h1_error_reason(code);
    if (code < 0 && code > -4096)
        return strerror(-code);
    return sl_strerror(code);
}
