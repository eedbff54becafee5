/*
 * The HTTP/1.1 message parser: pure, zero-copy, strict (RFC 9112 / RFC 9110). Bytes in;
 * "consumed N / need more / a specific error" out. No allocation, no I/O: every slice in the
 * results points into the caller's buffer, which must outlive their use.
 *
 * Strictness is the point (DESIGN.md "Rules of the data path"): anything that two HTTP
 * implementations could frame differently is an error, never a guess. Each error code maps to
 * one status and one static reason sentence, which is what the error body and the log say.
 *
 * The parse is restartable: call again from the start of the message with more bytes. The
 * cost of re-scanning is bounded by max_head_bytes.
 */
#ifndef SL_HTTP1_PARSER_H
#define SL_HTTP1_PARSER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/str.h"
#include "http/cause.h"
#include "http/header.h"
#include "http/method.h"

/* Parser errors: [-10199, -10100]. Each has a status (400/413/414/431) and a reason. */
enum sl_h1_error {
    SL_EH1_BAD_REQUEST_LINE = -10199, /* malformed request line */
    SL_EH1_BAD_METHOD,                /* method is not a token */
    SL_EH1_BAD_TARGET,                /* request-target has invalid characters or form */
    SL_EH1_BAD_VERSION,               /* not HTTP/1.0 or HTTP/1.1 */
    SL_EH1_BAD_HEADER_NAME,           /* empty name, or a non-token character in it */
    SL_EH1_BAD_HEADER_VALUE,          /* CTL (other than HTAB), NUL or bare CR in a value */
    SL_EH1_SPACE_BEFORE_COLON,        /* "Name : value" (RFC 9112 §5.1) */
    SL_EH1_OBS_FOLD,                  /* line folding (RFC 9112 §5.2) */
    SL_EH1_BARE_CR,                   /* CR not followed by LF (RFC 9112 §2.2) */
    SL_EH1_BARE_LF,                   /* LF line ending without CR */
    SL_EH1_MISSING_HOST,              /* HTTP/1.1 without Host (RFC 9112 §3.2) */
    SL_EH1_DUPLICATE_HOST,            /* more than one Host */
    SL_EH1_BAD_HOST,                  /* Host value is not a valid authority */
    SL_EH1_BAD_CONTENT_LENGTH,        /* not 1*DIGIT, or overflow */
    SL_EH1_DUPLICATE_CONTENT_LENGTH,  /* differing values, or a list (RFC 9112 §6.3 p5) */
    SL_EH1_CL_AND_TE,                 /* both Content-Length and Transfer-Encoding (§6.3 p3) */
    SL_EH1_BAD_TRANSFER_ENCODING,     /* anything but exactly "chunked" as the final coding */
    SL_EH1_TE_IN_HTTP10,              /* Transfer-Encoding in an HTTP/1.0 message (§6.1) */
    SL_EH1_TOO_MANY_HEADERS,          /* more than max_headers fields -> 431 */
    SL_EH1_HEADER_TOO_LARGE,          /* head longer than max_head_bytes -> 431 */
    SL_EH1_URI_TOO_LONG,              /* target longer than max_uri_bytes -> 414 */
    SL_EH1_BAD_CHUNK_SIZE,            /* chunk size not hex, empty or too big */
    SL_EH1_BAD_CHUNK_EXTENSION,       /* malformed or over-long chunk extension */
    SL_EH1_BAD_CHUNK_DATA,            /* missing CRLF after chunk data */
    SL_EH1_BAD_TRAILER,               /* malformed trailer field, or trailers too large */
    SL_EH1_BAD_STATUS_LINE,           /* response: malformed status line */
    SL_EH1_NUL_BYTE,                  /* NUL anywhere in the head */
    SL_EH1__LAST,
};

enum sl_h1_body_kind {
    SL_H1_BODY_NONE = 0, /* no body (request without CL/TE; response to HEAD, 1xx, 204, 304) */
    SL_H1_BODY_LENGTH,   /* content_length bytes (may be 0) */
    SL_H1_BODY_CHUNKED,  /* chunked coding; decode with sl_h1_chunked_decode */
    SL_H1_BODY_CLOSE,    /* response only: until the connection closes */
};

typedef struct sl_h1_limits {
    size_t max_head_bytes; /* request/status line + headers + final CRLF */
    size_t max_uri_bytes;  /* request-target length */
    size_t max_headers;    /* header fields; at most the capacity of the caller's array */
} sl_h1_limits_t;

typedef struct sl_h1_request {
    sl_str_t method;
    enum sl_method method_id;
    sl_str_t target;      /* as sent */
    sl_str_t path;        /* path part of origin-form or absolute-form ("/" for "*" is not set: see below) */
    sl_str_t query;       /* after '?', without it; empty if none */
    sl_str_t authority;   /* host[:port] of absolute-form, else empty */
    int minor_version;    /* 0 or 1 */
    sl_header_t *headers; /* the caller's array, filled with nheaders fields in order */
    size_t nheaders;
    sl_str_t host; /* the Host value (absolute-form authority wins; RFC 9112 §3.2.2) */
    enum sl_h1_body_kind body;
    uint64_t content_length; /* valid when body == SL_H1_BODY_LENGTH */
    bool keep_alive;         /* 1.1 unless "Connection: close"; 1.0 only with "keep-alive" */
    bool expect_continue;    /* "Expect: 100-continue" */
    bool upgrade;            /* Upgrade header and Connection: upgrade */
    bool asterisk_form;      /* "OPTIONS * HTTP/1.1" */
} sl_h1_request_t;

typedef struct sl_h1_response {
    int minor_version;
    int status; /* 100..999 */
    sl_str_t reason;
    sl_header_t *headers;
    size_t nheaders;
    enum sl_h1_body_kind body;
    uint64_t content_length;
    bool keep_alive; /* the upstream connection may be reused after this response */
} sl_h1_response_t;

/**
 * Parses a request head from `buf[0..len)`. `req->headers` must point to an array of at least
 * `limits->max_headers` entries. Returns the head length (> 0, the body starts there),
 * SL_EINCOMPLETE, or an sl_h1_error. On SL_EINCOMPLETE with len > max_head_bytes it returns
 * SL_EH1_HEADER_TOO_LARGE (or SL_EH1_URI_TOO_LONG while still in the request line), so a caller
 * never needs to buffer more than the limit. `req` is meaningful only on success.
 */
int sl_h1_parse_request(const char *buf, size_t len, sl_h1_request_t *req, const sl_h1_limits_t *limits);

/**
 * Parses a response head. `head_request` says the request was HEAD (no body whatever the
 * headers say). 1xx responses parse like others (body NONE): the caller forwards or skips them
 * and parses again after the returned length. Same return convention as the request parser.
 */
int sl_h1_parse_response(const char *buf, size_t len, sl_h1_response_t *resp, const sl_h1_limits_t *limits,
                         bool head_request);

/** HTTP status to answer for a parser error (400, 413, 414, 431). */
int sl_h1_error_status(int code);
/** The cause for a parser error: bad_request, uri_too_long or header_too_large. */
enum sl_cause sl_h1_error_cause(int code);
/** One static sentence, e.g. "line folding of header fields is not supported". */
const char *sl_h1_error_reason(int code);

/* ---- chunked transfer coding (RFC 9112 §7.1) ----------------------------------------------- */

typedef struct sl_h1_chunked {
    int state;          /* private */
    uint64_t remaining; /* private: data bytes left in the current chunk */
    size_t line_len;    /* private: bytes of the current size/extension/trailer line */
    size_t trailer_bytes;
    size_t max_trailer_bytes; /* set by the caller before the first call; 0 = 8 KiB */
} sl_h1_chunked_t;

enum sl_h1_chunk_event {
    SL_H1_CHUNK_NEED_MORE = 0, /* everything up to *consumed was taken; feed more */
    SL_H1_CHUNK_DATA,          /* *out is body data (a slice of buf) */
    SL_H1_CHUNK_TRAILER,       /* *out is one trailer field line, without its CRLF, validated */
    SL_H1_CHUNK_DONE,          /* last chunk and trailers done; the message ends at *consumed */
};

/** Zeroes the decoder; set max_trailer_bytes after if needed. */
void sl_h1_chunked_init(sl_h1_chunked_t *d);

/**
 * Decodes from `buf[0..len)`. Returns an sl_h1_chunk_event (>= 0) or an sl_h1_error; sets
 * `*consumed` to the bytes of buf used (call again with buf + *consumed). Data slices are
 * returned as soon as available, so a body streams without being buffered whole. After DONE
 * the decoder must be re-initialised.
 */
int sl_h1_chunked_decode(sl_h1_chunked_t *d, const char *buf, size_t len, size_t *consumed, sl_str_t *out);

/** Registers the parser's error names with sl_strerror (idempotent). */
void sl_h1_register_errors(void);

#endif
