/*
 * The operator commands' HTTP/1.1 client: URL parsing and one blocking request per connection,
 * with the phase timings `sluice probe` prints. It is for a command line, never for the data
 * path: blocking sockets, getaddrinfo, one request, `Connection: close`. Responses are read with
 * the gateway's own strict parser (http1/parser.h), so what the CLI accepts is what sluice
 * itself would accept from an upstream. `https://` URLs (and requests given TLS options) run a
 * TLS handshake (OpenSSL, blocking) after the TCP connect; sl_cli_h2_preface checks that a server
 * speaks HTTP/2 without sending a request.
 */
#ifndef SL_CLI_CLIENT_H
#define SL_CLI_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Largest response body the CLI reads (a /routes table of many thousand routes fits). */
#define SL_CLI_MAX_BODY (64u * 1024 * 1024)

/* sl_cli_http / sl_cli_h2_preface failures beyond errno and sluice codes; the detail (e.g.
 * "tls: certificate verify failed: self-signed certificate") goes to the request's `detail`. */
#define SL_CLI_ETLS (-10901) /* the TLS handshake (or a TLS record after it) failed */
#define SL_CLI_EH2  (-10902) /* the server did not answer the HTTP/2 preface with SETTINGS */

typedef struct sl_cli_url {
    char host[256];  /* without brackets for IPv6; NUL-terminated */
    uint16_t port;   /* 80 when the URL has none (443 for https) */
    char path[2048]; /* origin-form with the query, "/" when the URL has none */
    bool host_is_ip; /* a literal IPv4/IPv6 address: no DNS lookup */
    bool tls;        /* https:// */
} sl_cli_url_t;

/**
 * Parses `http://host[:port][/path]` or `https://...` (then `tls` is set and the port defaults
 * to 443). `host` is a name, an IPv4 address or a bracketed IPv6 address. Returns 0 and fills
 * `*out`, or SL_EINVALID with a static reason in `*why` (for the user: "expected
 * http://host:port/path", "the port must be ...", ...); `*out` is untouched on failure. `why`
 * may be NULL.
 */
int sl_cli_url_parse(const char *s, sl_cli_url_t *out, const char **why);

/**
 * Parses a target address as the config writes it, `host:port`, `[v6]:port` or
 * `https://host:port` (sets `tls`), into a URL with `path`. Same contract as sl_cli_url_parse.
 */
int sl_cli_url_from_address(const char *address, const char *path, sl_cli_url_t *out, const char **why);

/** Writes the URL back as `http[s]://host:port/path` (brackets around IPv6) into buf. */
void sl_cli_url_format(const sl_cli_url_t *u, char *buf, size_t len);

/* Milliseconds from the start of each phase, measured with CLOCK_MONOTONIC; < 0 = not reached. */
typedef struct sl_cli_timings {
    double dns_ms;        /* name resolution; 0 for an IP literal */
    double connect_ms;    /* TCP handshake */
    double tls_ms;        /* TLS handshake; < 0 also when the exchange had no TLS */
    double first_byte_ms; /* request sent until the first response byte (h2: the server's SETTINGS) */
    double total_ms;      /* from the start until the response was complete */
} sl_cli_timings_t;

/* TLS settings of an exchange; all zero (with verify true) are the defaults of an https:// URL. */
typedef struct sl_cli_tls {
    bool verify;             /* false: neither the chain nor the name is checked */
    const char *ca;          /* PEM CA bundle; NULL: the system trust store (or SSL_CERT_FILE/DIR) */
    const char *sni;         /* server name sent and checked; NULL: the URL's host when a name */
    const char *client_cert; /* PEM chain, leaf first, with client_key; NULL: none */
    const char *client_key;
    int min_version; /* 13: TLS 1.3 only; otherwise TLS 1.2 and up */
} sl_cli_tls_t;

typedef struct sl_cli_request {
    const char *method; /* "GET", "POST", ... */
    const char *token;  /* sent as "Authorization: Bearer"; NULL or "" = none */
    const char *body;   /* NULL = no body */
    size_t body_len;
    const char *host_header; /* NULL = host[:port] of the URL */
    int timeout_ms;          /* for the connect and TLS handshake, and again for the whole response */
    const sl_cli_tls_t *tls; /* NULL: TLS with the defaults when the URL is https://; else TLS as set */
    char *detail;            /* NULL, or a buffer for the reason of SL_CLI_ETLS / SL_CLI_EH2 */
    size_t detail_len;
} sl_cli_request_t;

typedef struct sl_cli_response {
    int status;
    char *body; /* malloc'd and NUL-terminated (the NUL is not counted); free with _dispose */
    size_t body_len;
    char content_type[128];
} sl_cli_response_t;

/**
 * Sends one request to `url` and reads the whole response. Returns 0 and fills `*resp` (the
 * caller disposes it), or a negative code with `*resp` untouched: SL_ENOTFOUND (name not
 * resolved), -ECONNREFUSED and other errno codes of connect/send/recv, SL_ETIMEDOUT, SL_ECLOSED
 * (closed before the response was complete), SL_ETOOBIG (body over SL_CLI_MAX_BODY), an http1
 * parser code (not valid HTTP/1.1) or SL_CLI_ETLS (with the reason in req->detail). `timings`
 * (may be NULL) is filled as far as the exchange got, in both cases.
 */
int sl_cli_http(const sl_cli_url_t *url, const sl_cli_request_t *req, sl_cli_response_t *resp,
                sl_cli_timings_t *timings);

/**
 * Connects like sl_cli_http (TLS offering ALPN h2 alone when `req->tls` is set or the URL is
 * https://), sends the HTTP/2 client preface and an empty SETTINGS frame, and waits for the
 * server's first frame, which must be SETTINGS (RFC 9113 §3.4); then acknowledges it, sends
 * GOAWAY and closes. Returns 0, or sl_cli_http's codes, or SL_CLI_EH2 with the reason in
 * req->detail ("h2: the server answered in HTTP/1.x", ...). first_byte_ms is the wait for that
 * SETTINGS frame. `req->method` and the body are not used.
 */
int sl_cli_h2_preface(const sl_cli_url_t *url, const sl_cli_request_t *req, sl_cli_timings_t *timings);

void sl_cli_response_dispose(sl_cli_response_t *resp);

/** A short phrase for a code of sl_cli_http: "connection refused", "timed out", ... */
const char *sl_cli_strerror(int code);

#endif
