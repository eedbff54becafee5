/*
 * The operator commands' HTTP/1.1 client: URL parsing and one blocking request per connection,
 * with the phase timings `sluice probe` prints. It is for a command line, never for the data
 * path: blocking sockets, getaddrinfo, one request, `Connection: close`. Responses are read with
 * the gateway's own strict parser (http1/parser.h), so what the CLI accepts is what sluice
 * itself would accept from an upstream. Plain TCP only until TLS exists.
 */
#ifndef SL_CLI_CLIENT_H
#define SL_CLI_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Largest response body the CLI reads (a /routes table of many thousand routes fits). */
#define SL_CLI_MAX_BODY (64u * 1024 * 1024)

typedef struct sl_cli_url {
    char host[256];  /* without brackets for IPv6; NUL-terminated */
    uint16_t port;   /* 80 when the URL has none */
    char path[2048]; /* origin-form with the query, "/" when the URL has none */
    bool host_is_ip; /* a literal IPv4/IPv6 address: no DNS lookup */
} sl_cli_url_t;

/**
 * Parses `http://host[:port][/path]`. `host` is a name, an IPv4 address or a bracketed IPv6
 * address. Returns 0 and fills `*out`, or SL_EINVALID with a static reason in `*why` (for the
 * user: "expected http://host:port/path", "https is not supported yet", ...); `*out` is
 * untouched on failure. `why` may be NULL.
 */
int sl_cli_url_parse(const char *s, sl_cli_url_t *out, const char **why);

/**
 * Parses a target address as the config writes it, `host:port` or `[v6]:port`, into a URL with
 * `path`. Same contract as sl_cli_url_parse.
 */
int sl_cli_url_from_address(const char *address, const char *path, sl_cli_url_t *out, const char **why);

/** Writes the URL back as `http://host:port/path` (brackets around IPv6) into buf. */
void sl_cli_url_format(const sl_cli_url_t *u, char *buf, size_t len);

/* Milliseconds from the start of each phase, measured with CLOCK_MONOTONIC; < 0 = not reached. */
typedef struct sl_cli_timings {
    double dns_ms;        /* name resolution; 0 for an IP literal */
    double connect_ms;    /* TCP handshake */
    double first_byte_ms; /* request sent until the first response byte */
    double total_ms;      /* from the start until the response was complete */
} sl_cli_timings_t;

typedef struct sl_cli_request {
    const char *method; /* "GET", "POST", ... */
    const char *token;  /* sent as "Authorization: Bearer"; NULL or "" = none */
    const char *body;   /* NULL = no body */
    size_t body_len;
    const char *host_header; /* NULL = host[:port] of the URL */
    int timeout_ms;          /* for the connect, and again for the whole response */
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
 * (closed before the response was complete), SL_ETOOBIG (body over SL_CLI_MAX_BODY) or an http1
 * parser code (not valid HTTP/1.1). `timings` (may be NULL) is filled as far as the exchange
 * got, in both cases.
 */
int sl_cli_http(const sl_cli_url_t *url, const sl_cli_request_t *req, sl_cli_response_t *resp,
                sl_cli_timings_t *timings);

void sl_cli_response_dispose(sl_cli_response_t *resp);

/** A short phrase for a code of sl_cli_http: "connection refused", "timed out", ... */
const char *sl_cli_strerror(int code);

#endif
