/*
 * The strict HTTP/1.1 head parser (contract in parser.h). The server side runs it over the
 * connection's read buffer to build a request, the upstream client side over a backend's
 * response. One forward pass with a byte-class table; every construct that two HTTP
 * implementations could frame or route differently stops the parse with its own error code, and
 * each code maps to one status and one reason sentence at the bottom of this file.
 */
#include "http1/parser.h"

#include <arpa/inet.h>
#include <limits.h>
#include <netinet/in.h>

#include "common/bug.h"
#include "common/error.h"
#include "http1/chartab.h"

/* Generated: bit 0x01 tchar, 0x02 field value byte, 0x04 target byte, 0x08 HEXDIG,
 * 0x10 qdtext, 0x20 reg-name byte (see chartab.h). */
const uint8_t sl__h1_chartab[256] = {
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x12, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, /* 0x00 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, /* 0x10 */
    0x12, 0x17, 0x06, 0x13, 0x17, 0x37, 0x17, 0x17, 0x16, 0x16, 0x17, 0x17, 0x16, 0x37, 0x37, 0x16, /* 0x20 */
    0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x16, 0x16, 0x16, 0x16, 0x16, 0x16, /* 0x30 */
    0x16, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, /* 0x40 */
    0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x16, 0x06, 0x16, 0x17, 0x37, /* 0x50 */
    0x17, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, /* 0x60 */
    0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x16, 0x17, 0x16, 0x37, 0x00, /* 0x70 */
    0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, /* 0x80 */
    0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, /* 0x90 */
    0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, /* 0xa0 */
    0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, /* 0xb0 */
    0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, /* 0xc0 */
    0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, /* 0xd0 */
    0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, /* 0xe0 */
    0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, /* 0xf0 */
};

#define IS SL_H1_IS

/* RFC 9112 §2.2: a server SHOULD ignore at least one empty line before the request-line. A few
 * cover every client that sends a stray CRLF after a body; more is not a request. */
#define MAX_LEADING_CRLF 4

/* A classify() verdict meaning "this is a CRLF": any other result is an error or SL_EINCOMPLETE. */
#define LINE_END 1

/* What a message head tells about framing and the connection, gathered field by field. */
struct msg {
    const char *end; /* buf + min(len, max_head_bytes): nothing beyond is ever read */
    bool truncated;  /* the caller holds more than max_head_bytes, so "incomplete" means too big */
    bool request;
    int minor;
    unsigned nhost, ncl, nte;
    sl_str_t host;
    uint64_t content_length;
    bool conn_close, conn_keep_alive, conn_upgrade, has_upgrade, expect_continue;
};

static void msg_init(struct msg *m, const char *buf, size_t len, const sl_h1_limits_t *limits, bool request)
{
    size_t max = limits->max_head_bytes;
    /* The head length is returned as an int. */
    if (max > INT_MAX)
        max = INT_MAX;
    memset(m, 0, sizeof(*m));
    m->truncated = len > max;
    m->end = buf + (m->truncated ? max : len);
    m->request = request;
}

/* Out of bytes: wait for more, unless the head already fills the window (parser.h). */
static inline int incomplete(const struct msg *m, int too_big)
{
    return m->truncated ? too_big : SL_EINCOMPLETE;
}

/*
 * `p` stopped a scan. CRLF is the only line ending (RFC 9112 §2.2): a CR must be followed by LF,
 * and a lone LF, which some servers accept as a line end and others as data, is an error too.
 * A NUL is named apart: C-string handling in a backend would cut the field there.
 */
static inline int classify(const struct msg *m, const char *p, int other, int too_big)
{
    switch (*p) {
    case '\r':
        if (p + 1 == m->end)
            return incomplete(m, too_big);
        return p[1] == '\n' ? LINE_END : SL_EH1_BARE_CR;
    case '\n':
        return SL_EH1_BARE_LF;
    case '\0':
        return SL_EH1_NUL_BYTE;
    default:
        return other;
    }
}

static inline bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

/* Case-insensitive compare against a lower-case literal of letters and '-'. Exact for tchar
 * input: the only tchar that OR 0x20 turns into a letter or '-' is the letter itself. */
static inline bool lower_eq(sl_str_t s, const char *lit, size_t n)
{
    if (s.len != n)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((s.ptr[i] | 0x20) != lit[i])
            return false;
    return true;
}
#define LOWER_EQ(s, lit) lower_eq((s), (lit), sizeof(lit) - 1)

/*
 * Long runs (values, targets) are scanned eight bytes at a time: a word with no byte that can
 * stop the scan is skipped whole, otherwise the byte loop finds the exact stop. The tests are
 * exact for "some byte matches" (no borrow without a matching byte), so nothing is skipped
 * wrongly; loads go through memcpy, so alignment does not matter.
 */
#define ONES  0x0101010101010101ull
#define HIGHS 0x8080808080808080ull

static inline uint64_t load64(const char *p)
{
    uint64_t x;
    memcpy(&x, p, sizeof(x));
    return x;
}

/* Some byte of x is below n (n <= 0x80), counting only bytes below 0x80. */
static inline uint64_t has_below(uint64_t x, unsigned n)
{
    return (x - ONES * n) & ~x & HIGHS;
}

static inline uint64_t has_byte(uint64_t x, unsigned c)
{
    return has_below(x ^ (ONES * c), 1);
}

/* How many bytes precede the first flagged one. A borrow can flag bytes above a real match but
 * never below it, so the lowest flag is exact; on big-endian machines, skip nothing. */
static inline size_t first_hit(uint64_t hit)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    return (size_t)__builtin_ctzll(hit) / 8;
#else
    (void)hit;
    return 0;
#endif
}

/* Field values: stop at CTLs (HTAB too, rare enough to take the byte loop) and DEL. */
static inline const char *scan_value(const char *p, const char *end)
{
    while (end - p >= 8) {
        uint64_t x = load64(p), hit = has_below(x, 0x20) | has_byte(x, 0x7f);
        if (hit) {
            p += first_hit(hit);
            break;
        }
        p += 8;
    }
    while (p < end && IS(*p, SL_H1_C_VALUE))
        p++;
    return p;
}

/* Targets: stop at SP, CTLs, DEL, bytes >= 0x80 and '#'. */
static inline const char *scan_target(const char *p, const char *end)
{
    while (end - p >= 8) {
        uint64_t x = load64(p), hit = has_below(x, 0x21) | (x & HIGHS) | has_byte(x, 0x7f) | has_byte(x, '#');
        if (hit) {
            p += first_hit(hit);
            break;
        }
        p += 8;
    }
    while (p < end && IS(*p, SL_H1_C_TARGET))
        p++;
    return p;
}

/* Tokens (methods, field names) are short: unrolled by four, one bounds check per four bytes. */
static inline const char *scan_token(const char *p, const char *end)
{
    while (end - p >= 4) {
        if (!IS(p[0], SL_H1_C_TOKEN))
            return p;
        if (!IS(p[1], SL_H1_C_TOKEN))
            return p + 1;
        if (!IS(p[2], SL_H1_C_TOKEN))
            return p + 2;
        if (!IS(p[3], SL_H1_C_TOKEN))
            return p + 3;
        p += 4;
    }
    while (p < end && IS(*p, SL_H1_C_TOKEN))
        p++;
    return p;
}

/* ---- authority: Host values, absolute-form and authority-form targets --------------------- */

/*
 * host [ ":" port ] (RFC 9110 §4.2.1, RFC 3986 §3.2.2). Stricter than RFC 3986 on purpose:
 * reg-name is limited to unreserved and pct-encoded (no sub-delims: "a.com,b.com" is read as a
 * list by some hops, and no DNS name needs them), no userinfo (RFC 9110 §4.2.4), an IP literal
 * must be a real IPv6 address (no zone id, no IPvFuture), and a port, when its colon is there,
 * is 1 to 5 digits up to 65535.
 */
static bool valid_authority(const char *s, size_t n, bool need_port)
{
    const char *p = s, *e = s + n;
    if (n == 0)
        return false;
    if (*p == '[') {
        const char *rb = memchr(p, ']', n);
        char tmp[INET6_ADDRSTRLEN];
        struct in6_addr a6;
        size_t l;
        if (rb == NULL)
            return false;
        l = (size_t)(rb - p - 1);
        if (l == 0 || l >= sizeof(tmp))
            return false;
        memcpy(tmp, p + 1, l);
        tmp[l] = '\0';
        if (inet_pton(AF_INET6, tmp, &a6) != 1)
            return false;
        p = rb + 1;
    } else {
        const char *h = p;
        while (p < e && IS(*p, SL_H1_C_HOST)) {
            if (*p == '%') {
                if (e - p < 3 || !IS(p[1], SL_H1_C_HEX) || !IS(p[2], SL_H1_C_HEX))
                    return false;
                p += 3;
            } else {
                p++;
            }
        }
        if (p == h)
            return false;
    }
    if (p == e)
        return !need_port;
    if (*p++ != ':' || p == e || e - p > 5)
        return false;
    unsigned port = 0;
    for (; p < e; p++) {
        if (*p < '0' || *p > '9')
            return false;
        port = port * 10 + (unsigned)(*p - '0');
    }
    return port <= 65535;
}

/* ---- request line ------------------------------------------------------------------------- */

static void split_path_query(const char *p, size_t n, sl_h1_request_t *req)
{
    const char *q = memchr(p, '?', n);
    if (q == NULL) {
        req->path = (sl_str_t){p, n};
        req->query = (sl_str_t){p + n, 0};
    } else {
        req->path = (sl_str_t){p, (size_t)(q - p)};
        req->query = (sl_str_t){q + 1, n - (size_t)(q - p) - 1};
    }
}

/* The four forms of request-target (RFC 9112 §3.2), each allowed only where the RFC puts it. */
static int parse_target_form(sl_h1_request_t *req)
{
    const char *t = req->target.ptr;
    size_t n = req->target.len, s;

    req->path = req->query = req->authority = SL_STR_NULL;
    req->asterisk_form = false;
    if (req->method_id == SL_METHOD_CONNECT) {
        /* RFC 9112 §3.2.3: CONNECT takes authority-form (host ":" port), and nothing else does. */
        if (!valid_authority(t, n, true))
            return SL_EH1_BAD_TARGET;
        req->authority = req->target;
        return 0;
    }
    if (t[0] == '/') {
        split_path_query(t, n, req);
        return 0;
    }
    if (t[0] == '*') {
        /* RFC 9112 §3.2.4: asterisk-form is only for a server-wide OPTIONS. */
        if (n != 1 || req->method_id != SL_METHOD_OPTIONS)
            return SL_EH1_BAD_TARGET;
        req->asterisk_form = true;
        return 0;
    }
    /* absolute-form (RFC 9112 §3.2.2); only the schemes a gateway serves. The scheme is
     * case-insensitive (RFC 3986 §3.1). */
    if (n >= 7 && sl_str_caseeq((sl_str_t){t, 7}, SL_STR_LIT("http://")))
        s = 7;
    else if (n >= 8 && sl_str_caseeq((sl_str_t){t, 8}, SL_STR_LIT("https://")))
        s = 8;
    else
        return SL_EH1_BAD_TARGET;
    const char *a = t + s, *e = t + n, *q = a;
    while (q < e && *q != '/' && *q != '?')
        q++;
    if (!valid_authority(a, (size_t)(q - a), false))
        return SL_EH1_BAD_TARGET;
    req->authority = (sl_str_t){a, (size_t)(q - a)};
    if (q < e && *q == '/') {
        split_path_query(q, (size_t)(e - q), req);
    } else {
        /* "http://h?x": the path of an http URI with an empty path is "/" (RFC 9110 §4.2.3). */
        req->path = SL_STR_LIT("/");
        req->query = q < e ? (sl_str_t){q + 1, (size_t)(e - q - 1)} : (sl_str_t){e, 0};
    }
    return 0;
}

/* "HTTP/1.0" or "HTTP/1.1", case-sensitive (RFC 9112 §2.3); the minor version, or -1. */
static inline int version_minor(const char *v, size_t n)
{
    if (n != 8 || memcmp(v, "HTTP/1.", 7) != 0 || (v[7] != '0' && v[7] != '1'))
        return -1;
    return v[7] - '0';
}

/* method SP request-target SP HTTP-version CRLF (RFC 9112 §3), exactly one SP between parts. */
static int parse_request_line(struct msg *m, const char **pp, sl_h1_request_t *req, const sl_h1_limits_t *limits)
{
    const char *p = *pp, *end = m->end;
    int rc;

    for (int i = 0; i < MAX_LEADING_CRLF && end - p >= 2 && p[0] == '\r' && p[1] == '\n'; i++)
        p += 2;

    const char *method = p;
    p = scan_token(p, end);
    if (p == end)
        return incomplete(m, SL_EH1_HEADER_TOO_LARGE);
    if (*p != ' ' || p == method) {
        rc = classify(m, p, (p == method && *p == ' ') ? SL_EH1_BAD_REQUEST_LINE : SL_EH1_BAD_METHOD,
                      SL_EH1_HEADER_TOO_LARGE);
        return rc == LINE_END ? SL_EH1_BAD_REQUEST_LINE : rc;
    }
    req->method = (sl_str_t){method, (size_t)(p - method)};
    req->method_id = sl_method_from_str(req->method);
    p++;

    /* The target limit is checked as the bytes arrive, so a client cannot make us hold more
     * than max_uri_bytes of it while waiting for the SP. */
    const char *t = p, *tlim = end;
    if ((size_t)(end - t) > limits->max_uri_bytes)
        tlim = t + limits->max_uri_bytes + 1;
    p = scan_target(p, tlim);
    if (p == tlim) {
        if ((size_t)(p - t) > limits->max_uri_bytes)
            return SL_EH1_URI_TOO_LONG;
        return incomplete(m, SL_EH1_URI_TOO_LONG);
    }
    if (*p != ' ' || p == t) {
        /* RFC 9112 §3.2: no whitespace, CTL or non-ASCII byte in a target; CRLF right after
         * the target is an HTTP/0.9 request, which we do not speak. */
        rc = classify(m, p, (p == t && *p == ' ') ? SL_EH1_BAD_REQUEST_LINE : SL_EH1_BAD_TARGET, SL_EH1_URI_TOO_LONG);
        return rc == LINE_END ? SL_EH1_BAD_REQUEST_LINE : rc;
    }
    req->target = (sl_str_t){t, (size_t)(p - t)};
    rc = parse_target_form(req);
    if (rc)
        return rc;
    p++;

    if (end - p >= 10 && memcmp(p, "HTTP/1.", 7) == 0 && (p[7] == '0' || p[7] == '1') && p[8] == '\r' && p[9] == '\n') {
        req->minor_version = p[7] - '0';
        p += 10;
    } else {
        const char *v = p;
        while (p < end && p - v <= 8 && *p != ' ' && *p != '\r' && *p != '\n' && *p != '\0')
            p++;
        if (p - v > 8)
            return SL_EH1_BAD_VERSION;
        if (p == end)
            return incomplete(m, SL_EH1_URI_TOO_LONG);
        if (*p == ' ')
            return SL_EH1_BAD_REQUEST_LINE;
        rc = classify(m, p, SL_EH1_BAD_REQUEST_LINE, SL_EH1_URI_TOO_LONG);
        if (rc != LINE_END)
            return rc;
        if (p == v)
            return SL_EH1_BAD_REQUEST_LINE;
        req->minor_version = version_minor(v, (size_t)(p - v));
        if (req->minor_version < 0)
            return SL_EH1_BAD_VERSION;
        p += 2;
    }
    m->minor = req->minor_version;
    *pp = p;
    return 0;
}

/* ---- header fields ------------------------------------------------------------------------ */

/* 1*DIGIT up to 2^63-1 (RFC 9110 §8.6): no sign, no inner space, no list. */
static bool parse_content_length(sl_str_t v, uint64_t *out)
{
    uint64_t n = 0;
    if (v.len == 0)
        return false;
    for (size_t i = 0; i < v.len; i++) {
        unsigned d = (unsigned)(unsigned char)v.ptr[i] - '0';
        if (d > 9 || n > (uint64_t)(INT64_MAX - d) / 10)
            return false;
        n = n * 10 + d;
    }
    *out = n;
    return true;
}

/* Connection = #connection-option (RFC 9110 §7.6.1): a list of tokens, empty elements allowed
 * (RFC 9110 §5.6.1). Several Connection fields add up to one list. */
static int on_connection(struct msg *m, sl_str_t v)
{
    const char *p = v.ptr, *e = v.ptr + v.len;
    for (;;) {
        while (p < e && is_ows(*p))
            p++;
        if (p == e)
            return 0;
        if (*p == ',') {
            p++;
            continue;
        }
        const char *tok = p;
        while (p < e && IS(*p, SL_H1_C_TOKEN))
            p++;
        if (p == tok)
            return SL_EH1_BAD_HEADER_VALUE;
        sl_str_t opt = {tok, (size_t)(p - tok)};
        if (LOWER_EQ(opt, "close"))
            m->conn_close = true;
        else if (LOWER_EQ(opt, "keep-alive"))
            m->conn_keep_alive = true;
        else if (LOWER_EQ(opt, "upgrade"))
            m->conn_upgrade = true;
        while (p < e && is_ows(*p))
            p++;
        if (p < e && *p++ != ',')
            return SL_EH1_BAD_HEADER_VALUE;
    }
}

/* The fields that decide framing, routing and the connection's fate; the rest pass through. */
static int on_field(struct msg *m, sl_str_t name, sl_str_t value)
{
    uint64_t cl;

    switch (name.len) {
    case 4:
        if (!m->request || !LOWER_EQ(name, "host"))
            return 0;
        /* RFC 9112 §3.2: a request with more than one Host is rejected. */
        if (++m->nhost > 1)
            return SL_EH1_DUPLICATE_HOST;
        /* RFC 9110 §7.2 allows an empty Host when the target has no authority; a gateway routes
         * by it, so on HTTP/1.1 it must name a host. */
        if (value.len == 0 ? m->minor != 0 : !valid_authority(value.ptr, value.len, false))
            return SL_EH1_BAD_HOST;
        m->host = value;
        return 0;
    case 6:
        /* RFC 9110 §10.1.1: a 100-continue expectation in an HTTP/1.0 request is ignored. */
        if (m->request && m->minor == 1 && LOWER_EQ(name, "expect") && LOWER_EQ(value, "100-continue"))
            m->expect_continue = true;
        return 0;
    case 7:
        if (LOWER_EQ(name, "upgrade") && value.len > 0)
            m->has_upgrade = true;
        return 0;
    case 10:
        return LOWER_EQ(name, "connection") ? on_connection(m, value) : 0;
    case 14:
        if (!LOWER_EQ(name, "content-length"))
            return 0;
        if (!parse_content_length(value, &cl))
            return SL_EH1_BAD_CONTENT_LENGTH;
        /* RFC 9112 §6.3 p5: repeated Content-Length is rejected, or collapsed when the values
         * agree. Requests are rejected even when equal (one rule is simpler and leaves nothing
         * for a backend to read differently); an identical repeat in a response is accepted. */
        if (m->ncl++ > 0 && (m->request || cl != m->content_length))
            return SL_EH1_DUPLICATE_CONTENT_LENGTH;
        m->content_length = cl;
        return 0;
    case 17:
        if (!LOWER_EQ(name, "transfer-encoding"))
            return 0;
        /* RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 means the framing is faulty. */
        if (m->minor == 0)
            return SL_EH1_TE_IN_HTTP10;
        /* Exactly one field whose whole value is "chunked": a second field extends the coding
         * list (RFC 9110 §5.3), and any other coding is one we cannot frame (RFC 9112 §6.1). */
        if (m->nte++ > 0 || !LOWER_EQ(value, "chunked"))
            return SL_EH1_BAD_TRANSFER_ENCODING;
        return 0;
    default:
        return 0;
    }
}

/* A field line stopped somewhere other than "name:". */
static int bad_name(const struct msg *m, const char *p)
{
    if (*p == ' ' || *p == '\t') {
        const char *q = p;
        while (q < m->end && is_ows(*q))
            q++;
        if (q == m->end)
            return incomplete(m, SL_EH1_HEADER_TOO_LARGE);
        /* RFC 9112 §5.1: a server MUST reject whitespace between field name and colon. */
        return *q == ':' ? SL_EH1_SPACE_BEFORE_COLON : SL_EH1_BAD_HEADER_NAME;
    }
    int rc = classify(m, p, SL_EH1_BAD_HEADER_NAME, SL_EH1_HEADER_TOO_LARGE);
    /* A line without a colon is not a field line (RFC 9112 §5). */
    return rc == LINE_END ? SL_EH1_BAD_HEADER_NAME : rc;
}

/* *( field-line CRLF ) CRLF (RFC 9112 §2.1, §5). On success *pp is past the empty line. */
static int parse_fields(struct msg *m, const char **pp, sl_header_t *hdrs, size_t max, size_t *pn)
{
    const char *p = *pp, *end = m->end;
    size_t n = 0;
    int rc;

    for (;;) {
        if (p == end)
            return incomplete(m, SL_EH1_HEADER_TOO_LARGE);
        if (*p == '\r') {
            if (p + 1 == end)
                return incomplete(m, SL_EH1_HEADER_TOO_LARGE);
            if (p[1] != '\n')
                return SL_EH1_BARE_CR;
            *pp = p + 2;
            *pn = n;
            return 0;
        }
        /* RFC 9112 §5.2 (obs-fold) and §2.2 (whitespace before the first field): both are
         * rejected, since a hop that unfolds and one that does not see different fields. */
        if (*p == ' ' || *p == '\t')
            return SL_EH1_OBS_FOLD;
        if (*p == '\n')
            return SL_EH1_BARE_LF;
        if (n == max)
            return SL_EH1_TOO_MANY_HEADERS;

        const char *name = p;
        p = scan_token(p, end);
        if (p == end)
            return incomplete(m, SL_EH1_HEADER_TOO_LARGE);
        if (*p != ':' || p == name)
            return p == name && *p == ':' ? SL_EH1_BAD_HEADER_NAME : bad_name(m, p);
        hdrs[n].name = (sl_str_t){name, (size_t)(p - name)};
        p++;

        while (p < end && is_ows(*p))
            p++;
        const char *v = p;
        p = scan_value(p, end);
        if (p == end)
            return incomplete(m, SL_EH1_HEADER_TOO_LARGE);
        /* RFC 9110 §5.5: CTLs other than HTAB are invalid in a value; CR only ends the line. */
        rc = classify(m, p, SL_EH1_BAD_HEADER_VALUE, SL_EH1_HEADER_TOO_LARGE);
        if (rc != LINE_END)
            return rc;
        const char *ve = p;
        while (ve > v && is_ows(ve[-1]))
            ve--;
        hdrs[n].value = (sl_str_t){v, (size_t)(ve - v)};
        p += 2;
        rc = on_field(m, hdrs[n].name, hdrs[n].value);
        if (rc)
            return rc;
        n++;
    }
}

/* ---- the two entry points ----------------------------------------------------------------- */

int sl_h1_parse_request(const char *buf, size_t len, sl_h1_request_t *req, const sl_h1_limits_t *limits)
{
    struct msg m;
    const char *p = buf;
    int rc;

    msg_init(&m, buf, len, limits, true);
    req->nheaders = 0;
    rc = parse_request_line(&m, &p, req, limits);
    if (rc)
        return rc;
    rc = parse_fields(&m, &p, req->headers, limits->max_headers, &req->nheaders);
    if (rc)
        return rc;

    /* RFC 9112 §6.3 p3: both framings at once is the classic smuggling vector; reject. */
    if (m.nte > 0 && m.ncl > 0)
        return SL_EH1_CL_AND_TE;
    /* RFC 9112 §3.2: an HTTP/1.1 request without Host gets a 400, even in absolute-form. */
    if (m.minor == 1 && m.nhost == 0)
        return SL_EH1_MISSING_HOST;

    /* RFC 9112 §3.2.2: the authority of an absolute-form target replaces Host. */
    req->host = req->authority.len > 0 ? req->authority : m.host;
    if (m.nte > 0) {
        req->body = SL_H1_BODY_CHUNKED;
        req->content_length = 0;
    } else if (m.ncl > 0) {
        req->body = SL_H1_BODY_LENGTH;
        req->content_length = m.content_length;
    } else {
        /* RFC 9112 §6.3 p7: a request with neither has no body. */
        req->body = SL_H1_BODY_NONE;
        req->content_length = 0;
    }
    /* RFC 9112 §9.3: persistent by default in 1.1; in 1.0 only with keep-alive. */
    req->keep_alive = !m.conn_close && (m.minor == 1 || m.conn_keep_alive);
    req->expect_continue = m.expect_continue;
    req->upgrade = m.conn_upgrade && m.has_upgrade;
    return (int)(p - buf);
}

/* HTTP-version SP 3DIGIT SP [ reason-phrase ] CRLF (RFC 9112 §4); the SP before an empty
 * reason is optional in practice (many servers omit it), so "HTTP/1.1 200" is accepted. */
static int parse_status_line(struct msg *m, const char **pp, sl_h1_response_t *resp)
{
    const char *p = *pp, *end = m->end, *v = p;
    int rc;

    while (p < end && p - v <= 8 && *p != ' ' && *p != '\r' && *p != '\n' && *p != '\0')
        p++;
    if (p - v > 8)
        return memcmp(v, "HTTP/", 5) == 0 ? SL_EH1_BAD_VERSION : SL_EH1_BAD_STATUS_LINE;
    if (p == end)
        return incomplete(m, SL_EH1_HEADER_TOO_LARGE);
    if (*p != ' ') {
        rc = classify(m, p, SL_EH1_BAD_STATUS_LINE, SL_EH1_HEADER_TOO_LARGE);
        return rc == LINE_END ? SL_EH1_BAD_STATUS_LINE : rc;
    }
    resp->minor_version = version_minor(v, (size_t)(p - v));
    if (resp->minor_version < 0)
        return p - v >= 5 && memcmp(v, "HTTP/", 5) == 0 ? SL_EH1_BAD_VERSION : SL_EH1_BAD_STATUS_LINE;
    p++;

    int status = 0;
    for (int i = 0; i < 3; i++, p++) {
        if (p == end)
            return incomplete(m, SL_EH1_HEADER_TOO_LARGE);
        if (*p < '0' || *p > '9') {
            rc = classify(m, p, SL_EH1_BAD_STATUS_LINE, SL_EH1_HEADER_TOO_LARGE);
            return rc == LINE_END ? SL_EH1_BAD_STATUS_LINE : rc;
        }
        status = status * 10 + (*p - '0');
    }
    /* RFC 9110 §15: the first digit is the class, 1 to 5; we take 6..9 as extension classes
     * (parser.h promises 100..999) but never 0xx. */
    if (status < 100)
        return SL_EH1_BAD_STATUS_LINE;
    resp->status = status;
    if (p == end)
        return incomplete(m, SL_EH1_HEADER_TOO_LARGE);
    const char *r = p;
    if (*p == ' ') {
        r = ++p;
        while (p < end && IS(*p, SL_H1_C_VALUE))
            p++;
        if (p == end)
            return incomplete(m, SL_EH1_HEADER_TOO_LARGE);
    }
    rc = classify(m, p, SL_EH1_BAD_STATUS_LINE, SL_EH1_HEADER_TOO_LARGE);
    if (rc != LINE_END)
        return rc;
    resp->reason = (sl_str_t){r, (size_t)(p - r)};
    m->minor = resp->minor_version;
    *pp = p + 2;
    return 0;
}

int sl_h1_parse_response(const char *buf, size_t len, sl_h1_response_t *resp, const sl_h1_limits_t *limits,
                         bool head_request)
{
    struct msg m;
    const char *p = buf;
    int rc;

    msg_init(&m, buf, len, limits, false);
    resp->nheaders = 0;
    rc = parse_status_line(&m, &p, resp);
    if (rc)
        return rc;
    rc = parse_fields(&m, &p, resp->headers, limits->max_headers, &resp->nheaders);
    if (rc)
        return rc;

    /* RFC 9112 §6.3 p3: "ought to be handled as an error" - a hop that picks the other framing
     * would splice the next response into this one. */
    if (m.nte > 0 && m.ncl > 0)
        return SL_EH1_CL_AND_TE;

    int s = resp->status;
    resp->content_length = 0;
    if (head_request || s < 200 || s == 204 || s == 304) {
        /* RFC 9112 §6.3 p1: these never have a body, whatever the headers say. */
        resp->body = SL_H1_BODY_NONE;
    } else if (m.nte > 0) {
        resp->body = SL_H1_BODY_CHUNKED;
    } else if (m.ncl > 0) {
        resp->body = SL_H1_BODY_LENGTH;
        resp->content_length = m.content_length;
    } else {
        /* RFC 9112 §6.3 p8: read until the server closes. */
        resp->body = SL_H1_BODY_CLOSE;
    }
    resp->keep_alive = resp->body != SL_H1_BODY_CLOSE && !m.conn_close && (m.minor == 1 || m.conn_keep_alive);
    return (int)(p - buf);
}

/* ---- errors ------------------------------------------------------------------------------- */

#define IDX(code) ((code)-SL_EH1_BAD_REQUEST_LINE)

static const char *const reasons[] = {
    [IDX(SL_EH1_BAD_REQUEST_LINE)] = "the request line is malformed",
    [IDX(SL_EH1_BAD_METHOD)] = "the request method is not a valid token",
    [IDX(SL_EH1_BAD_TARGET)] = "the request target has invalid characters or an invalid form",
    [IDX(SL_EH1_BAD_VERSION)] = "only HTTP/1.0 and HTTP/1.1 are supported",
    [IDX(SL_EH1_BAD_HEADER_NAME)] = "a header field name is empty or has an invalid character",
    [IDX(SL_EH1_BAD_HEADER_VALUE)] = "a header field value has an invalid character",
    [IDX(SL_EH1_SPACE_BEFORE_COLON)] = "whitespace between a header field name and its colon is not allowed",
    [IDX(SL_EH1_OBS_FOLD)] = "line folding of header fields is not supported",
    [IDX(SL_EH1_BARE_CR)] = "a CR must be followed by LF",
    [IDX(SL_EH1_BARE_LF)] = "lines must end with CRLF, not a bare LF",
    [IDX(SL_EH1_MISSING_HOST)] = "an HTTP/1.1 request must have a Host header",
    [IDX(SL_EH1_DUPLICATE_HOST)] = "a request must have only one Host header",
    [IDX(SL_EH1_BAD_HOST)] = "the Host header is not a valid host and port",
    [IDX(SL_EH1_BAD_CONTENT_LENGTH)] = "the Content-Length header is not a valid number",
    [IDX(SL_EH1_DUPLICATE_CONTENT_LENGTH)] = "a message must have only one Content-Length",
    [IDX(SL_EH1_CL_AND_TE)] = "a message must not have both Content-Length and Transfer-Encoding",
    [IDX(SL_EH1_BAD_TRANSFER_ENCODING)] = "only a single \"Transfer-Encoding: chunked\" is supported",
    [IDX(SL_EH1_TE_IN_HTTP10)] = "Transfer-Encoding is not allowed in an HTTP/1.0 message",
    [IDX(SL_EH1_TOO_MANY_HEADERS)] = "there are too many header fields",
    [IDX(SL_EH1_HEADER_TOO_LARGE)] = "the header section is too large",
    [IDX(SL_EH1_URI_TOO_LONG)] = "the request target is too long",
    [IDX(SL_EH1_BAD_CHUNK_SIZE)] = "a chunk size is not a valid hexadecimal number",
    [IDX(SL_EH1_BAD_CHUNK_EXTENSION)] = "a chunk extension is malformed or too long",
    [IDX(SL_EH1_BAD_CHUNK_DATA)] = "chunk data is not followed by CRLF",
    [IDX(SL_EH1_BAD_TRAILER)] = "a trailer field is malformed or the trailers are too large",
    [IDX(SL_EH1_BAD_STATUS_LINE)] = "the status line is malformed",
    [IDX(SL_EH1_NUL_BYTE)] = "a NUL byte is not allowed in a message head",
};
_Static_assert(SL_ARRAY_SIZE(reasons) == IDX(SL_EH1__LAST), "a parser error has no reason");

static inline bool is_h1_error(int code)
{
    return code >= SL_EH1_BAD_REQUEST_LINE && code < SL_EH1__LAST;
}

int sl_h1_error_status(int code)
{
    return sl_cause_info(sl_h1_error_cause(code))->status;
}

enum sl_cause sl_h1_error_cause(int code)
{
    switch (code) {
    case SL_EH1_URI_TOO_LONG:
        return SL_CAUSE_URI_TOO_LONG;
    case SL_EH1_HEADER_TOO_LARGE:
    case SL_EH1_TOO_MANY_HEADERS:
        return SL_CAUSE_HEADER_TOO_LARGE;
    default:
        return SL_CAUSE_BAD_REQUEST;
    }
}

const char *sl_h1_error_reason(int code)
{
    return is_h1_error(code) ? reasons[IDX(code)] : "the HTTP/1 message is malformed";
}

static const char *error_name(int code)
{
    return is_h1_error(code) ? reasons[IDX(code)] : "unknown HTTP/1 parser error";
}

void sl_h1_register_errors(void)
{
    sl_error_register_range(SL_EH1_BAD_REQUEST_LINE, -10100, error_name);
}
