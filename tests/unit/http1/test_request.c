/*
 * Request-head parser tests: valid forms and what they yield, restartability (one byte at a
 * time, pipelining), every strictness rule with its exact error code and status, the limits,
 * and the error -> status / cause / reason mapping.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "http1/parser.h"

#define MAXH 32
static sl_header_t hdrs[MAXH];
static const sl_h1_limits_t limits = {.max_head_bytes = 4096, .max_uri_bytes = 1024, .max_headers = MAXH};

static int parse_n(const char *buf, size_t len, sl_h1_request_t *req, const sl_h1_limits_t *lim)
{
    memset(req, 0, sizeof(*req));
    req->headers = hdrs;
    return sl_h1_parse_request(buf, len, req, lim);
}

#define PARSE(lit, req) parse_n((lit), sizeof(lit) - 1, (req), &limits)
#define OK_LEN(lit)     ((int)(sizeof(lit) - 1))

static void assert_slice(sl_str_t s, const char *want)
{
    if (s.len != strlen(want) || (s.len && memcmp(s.ptr, want, s.len) != 0))
        fail_msg("got \"%.*s\", want \"%s\"", (int)s.len, s.ptr ? s.ptr : "", want);
}

/* ---- valid requests ----------------------------------------------------------------------- */

static void test_get_minimal(void **state)
{
    static const char r[] = "GET / HTTP/1.1\r\nHost: example.com\r\n\r\n";
    sl_h1_request_t req;
    assert_int_equal(PARSE(r, &req), OK_LEN(r));
    assert_slice(req.method, "GET");
    assert_int_equal(req.method_id, SL_METHOD_GET);
    assert_slice(req.target, "/");
    assert_slice(req.path, "/");
    assert_slice(req.query, "");
    assert_slice(req.authority, "");
    assert_slice(req.host, "example.com");
    assert_int_equal(req.minor_version, 1);
    assert_int_equal(req.nheaders, 1);
    assert_slice(req.headers[0].name, "Host");
    assert_slice(req.headers[0].value, "example.com");
    assert_int_equal(req.body, SL_H1_BODY_NONE);
    assert_true(req.keep_alive);
    assert_false(req.expect_continue);
    assert_false(req.upgrade);
    assert_false(req.asterisk_form);
}

static void test_get_headers_and_query(void **state)
{
    static const char r[] = "GET /a/b%20c?x=1&y=?z HTTP/1.1\r\n"
                            "host: api.example.com:8080\r\n"
                            "X-Empty:\r\n"
                            "X-Trim: \t value with  inner space \t \r\n"
                            "X-Obs-Text: caf\xc3\xa9\r\n"
                            "X-Tab:a\tb\r\n"
                            "\r\n";
    sl_h1_request_t req;
    assert_int_equal(PARSE(r, &req), OK_LEN(r));
    assert_slice(req.path, "/a/b%20c");
    assert_slice(req.query, "x=1&y=?z");
    assert_slice(req.host, "api.example.com:8080");
    assert_int_equal(req.nheaders, 5);
    assert_slice(req.headers[1].name, "X-Empty");
    assert_slice(req.headers[1].value, "");
    assert_slice(req.headers[2].value, "value with  inner space");
    assert_slice(req.headers[3].value, "caf\xc3\xa9");
    assert_slice(req.headers[4].value, "a\tb");
}

static void test_post_content_length(void **state)
{
    static const char r[] = "POST /submit HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world";
    sl_h1_request_t req;
    int n = PARSE(r, &req);
    assert_int_equal(n, OK_LEN(r) - 11);
    assert_int_equal(req.method_id, SL_METHOD_POST);
    assert_int_equal(req.body, SL_H1_BODY_LENGTH);
    assert_int_equal(req.content_length, 11);
    assert_memory_equal(r + n, "hello world", 11);
}

static void test_content_length_bounds(void **state)
{
    static const char zero[] = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n";
    static const char max[] = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9223372036854775807\r\n\r\n";
    static const char lead0[] = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 007\r\n\r\n";
    sl_h1_request_t req;
    assert_int_equal(PARSE(zero, &req), OK_LEN(zero));
    assert_int_equal(req.body, SL_H1_BODY_LENGTH);
    assert_int_equal(req.content_length, 0);
    assert_int_equal(PARSE(max, &req), OK_LEN(max));
    assert_true(req.content_length == (uint64_t)INT64_MAX);
    assert_int_equal(PARSE(lead0, &req), OK_LEN(lead0));
    assert_int_equal(req.content_length, 7);
}

static void test_chunked(void **state)
{
    static const char r[] = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
    static const char ows[] = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\t CHUNKED \t\r\n\r\n";
    sl_h1_request_t req;
    assert_int_equal(PARSE(r, &req), OK_LEN(r));
    assert_int_equal(req.body, SL_H1_BODY_CHUNKED);
    /* OWS around a value is not part of it (RFC 9110 §5.5); codings are case-insensitive. */
    assert_int_equal(PARSE(ows, &req), OK_LEN(ows));
    assert_int_equal(req.body, SL_H1_BODY_CHUNKED);
}

static void test_absolute_form(void **state)
{
    static const char r[] = "GET http://Example.com:8080/a/b?x=1 HTTP/1.1\r\nHost: other.example\r\n\r\n";
    static const char noslash[] = "GET https://h.example?q HTTP/1.1\r\nHost: h.example\r\n\r\n";
    static const char bare[] = "GET HTTP://h.example HTTP/1.1\r\nHost: h.example\r\n\r\n";
    static const char v6[] = "GET http://[2001:db8::1]:80/x HTTP/1.1\r\nHost: [2001:db8::1]:80\r\n\r\n";
    sl_h1_request_t req;
    assert_int_equal(PARSE(r, &req), OK_LEN(r));
    assert_slice(req.authority, "Example.com:8080");
    assert_slice(req.host, "Example.com:8080"); /* RFC 9112 §3.2.2: the target's authority wins */
    assert_slice(req.path, "/a/b");
    assert_slice(req.query, "x=1");
    assert_int_equal(PARSE(noslash, &req), OK_LEN(noslash));
    assert_slice(req.authority, "h.example");
    assert_slice(req.path, "/");
    assert_slice(req.query, "q");
    assert_int_equal(PARSE(bare, &req), OK_LEN(bare));
    assert_slice(req.path, "/");
    assert_slice(req.query, "");
    assert_int_equal(PARSE(v6, &req), OK_LEN(v6));
    assert_slice(req.authority, "[2001:db8::1]:80");
    assert_slice(req.path, "/x");
}

static void test_asterisk_form(void **state)
{
    static const char r[] = "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n";
    sl_h1_request_t req;
    assert_int_equal(PARSE(r, &req), OK_LEN(r));
    assert_true(req.asterisk_form);
    assert_int_equal(req.method_id, SL_METHOD_OPTIONS);
    assert_slice(req.target, "*");
    assert_slice(req.path, "");
}

static void test_connect_authority_form(void **state)
{
    static const char r[] = "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n";
    sl_h1_request_t req;
    assert_int_equal(PARSE(r, &req), OK_LEN(r));
    assert_int_equal(req.method_id, SL_METHOD_CONNECT);
    assert_slice(req.authority, "example.com:443");
    assert_slice(req.path, "");
}

static void test_extension_method(void **state)
{
    static const char r[] = "PURGE /x HTTP/1.1\r\nHost: a\r\n\r\n";
    static const char lower[] = "get /x HTTP/1.1\r\nHost: a\r\n\r\n";
    sl_h1_request_t req;
    assert_int_equal(PARSE(r, &req), OK_LEN(r));
    assert_int_equal(req.method_id, SL_METHOD_OTHER);
    assert_slice(req.method, "PURGE");
    /* Methods are case-sensitive (RFC 9110 §9.1): "get" is a valid token, but not GET. */
    assert_int_equal(PARSE(lower, &req), OK_LEN(lower));
    assert_int_equal(req.method_id, SL_METHOD_OTHER);
}

static void test_http10(void **state)
{
    static const char plain[] = "GET / HTTP/1.0\r\n\r\n";
    static const char ka[] = "GET / HTTP/1.0\r\nConnection: Keep-Alive\r\nHost:\r\n\r\n";
    static const char expect[] = "POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n";
    sl_h1_request_t req;
    assert_int_equal(PARSE(plain, &req), OK_LEN(plain));
    assert_int_equal(req.minor_version, 0);
    assert_false(req.keep_alive);
    assert_slice(req.host, "");
    assert_int_equal(PARSE(ka, &req), OK_LEN(ka)); /* an empty Host is fine on 1.0 */
    assert_true(req.keep_alive);
    assert_int_equal(PARSE(expect, &req), OK_LEN(expect));
    assert_false(req.expect_continue); /* RFC 9110 §10.1.1 */
}

static void test_connection_and_expect(void **state)
{
    static const char close[] = "GET / HTTP/1.1\r\nHost: a\r\nConnection: foo, ,CLOSE\r\n\r\n";
    static const char upg[] = "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nConnection: Upgrade\r\n"
                              "Upgrade: websocket\r\n\r\n";
    static const char upg_no_hdr[] = "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n\r\n";
    static const char expect[] = "PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n";
    static const char bad_conn[] = "GET / HTTP/1.1\r\nHost: a\r\nConnection: close;x\r\n\r\n";
    static const char bad_conn2[] = "GET / HTTP/1.1\r\nHost: a\r\nConnection: @\r\n\r\n";
    static const char spaced[] = "GET / HTTP/1.1\r\nHost: a\r\nConnection: te , close\r\n\r\n";
    sl_h1_request_t req;
    assert_int_equal(PARSE(close, &req), OK_LEN(close));
    assert_false(req.keep_alive);
    assert_int_equal(PARSE(upg, &req), OK_LEN(upg));
    assert_true(req.upgrade);
    assert_true(req.keep_alive);
    assert_int_equal(PARSE(upg_no_hdr, &req), OK_LEN(upg_no_hdr));
    assert_false(req.upgrade);
    assert_int_equal(PARSE(expect, &req), OK_LEN(expect));
    assert_true(req.expect_continue);
    assert_int_equal(PARSE(bad_conn, &req), SL_EH1_BAD_HEADER_VALUE);
    assert_int_equal(PARSE(bad_conn2, &req), SL_EH1_BAD_HEADER_VALUE);
    assert_int_equal(PARSE(spaced, &req), OK_LEN(spaced));
    assert_false(req.keep_alive);
}

static void test_hosts(void **state)
{
    static const char *const good[] = {
        "a",          "a.b-c_d~e",          "127.0.0.1:80",          "[::1]",
        "[::1]:8080", "[::ffff:192.0.2.1]", "xn--bcher-kva.example", "%41.example:65535"};
    char buf[256];
    sl_h1_request_t req;
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        int n = snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", good[i]);
        if (parse_n(buf, (size_t)n, &req, &limits) != n)
            fail_msg("Host \"%s\" rejected", good[i]);
        assert_slice(req.host, good[i]);
    }
}

static void test_leading_crlf(void **state)
{
    static const char one[] = "\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
    static const char four[] = "\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
    static const char five[] = "\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
    static const char lf[] = "\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
    sl_h1_request_t req;
    /* RFC 9112 §2.2: ignored, but counted in the consumed length. */
    assert_int_equal(PARSE(one, &req), OK_LEN(one));
    assert_slice(req.method, "GET");
    assert_int_equal(PARSE(four, &req), OK_LEN(four));
    assert_int_equal(PARSE(five, &req), SL_EH1_BAD_REQUEST_LINE);
    assert_int_equal(PARSE(lf, &req), SL_EH1_BARE_LF);
}

static void test_pipelined(void **state)
{
    static const char r[] = "POST /one HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
                            "GET /two?x HTTP/1.1\r\nHost: b\r\n\r\n"
                            "GET /three HTTP/1.1\r\nHost: c\r\n";
    sl_h1_request_t req;
    size_t len = sizeof(r) - 1;
    int n1 = parse_n(r, len, &req, &limits);
    assert_true(n1 > 0);
    assert_slice(req.path, "/one");
    size_t off = (size_t)n1 + req.content_length;
    int n2 = parse_n(r + off, len - off, &req, &limits);
    assert_true(n2 > 0);
    assert_slice(req.path, "/two");
    assert_slice(req.query, "x");
    assert_slice(req.host, "b");
    off += (size_t)n2;
    assert_int_equal(parse_n(r + off, len - off, &req, &limits), SL_EINCOMPLETE);
}

/* Every strict prefix of a valid head is "incomplete"; the whole head parses to its length. */
static void check_bytewise(const char *r, size_t len, size_t head)
{
    sl_h1_request_t req;
    for (size_t i = 0; i < head; i++) {
        int rc = parse_n(r, i, &req, &limits);
        if (rc != SL_EINCOMPLETE)
            fail_msg("prefix of %zu bytes: got %d, want SL_EINCOMPLETE", i, rc);
    }
    for (size_t i = head; i <= len; i++)
        assert_int_equal(parse_n(r, i, &req, &limits), (int)head);
}

static void test_restart_bytewise(void **state)
{
    static const char a[] = "GET /x?y HTTP/1.1\r\nHost: a\r\nUser-Agent: t\r\n\r\n";
    static const char b[] = "\r\n\r\nPOST http://h:1/p HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nX:\r\n\r\nzz";
    static const char c[] = "OPTIONS * HTTP/1.0\r\n\r\n";
    check_bytewise(a, sizeof(a) - 1, sizeof(a) - 1);
    check_bytewise(b, sizeof(b) - 1, sizeof(b) - 3);
    check_bytewise(c, sizeof(c) - 1, sizeof(c) - 1);
}

/* An error is found at one byte: every longer prefix gives the same error, shorter ones wait. */
static void test_errors_are_stable(void **state)
{
    static const char r[] = "GET / HTTP/1.1\r\nHost: a\r\nX: a\x01z\r\n\r\n";
    sl_h1_request_t req;
    size_t at = sizeof("GET / HTTP/1.1\r\nHost: a\r\nX: a") - 1;
    for (size_t i = 0; i <= at; i++)
        assert_int_equal(parse_n(r, i, &req, &limits), SL_EINCOMPLETE);
    for (size_t i = at + 1; i < sizeof(r); i++)
        assert_int_equal(parse_n(r, i, &req, &limits), SL_EH1_BAD_HEADER_VALUE);
}

/* ---- malformed requests ------------------------------------------------------------------- */

struct bad {
    const char *name;
    const char *raw;
    size_t len;
    int code;
    int status;
};
#define BAD(name, lit, code, status)                                                                                   \
    {                                                                                                                  \
        name, lit, sizeof(lit) - 1, code, status                                                                       \
    }
#define RL   "GET / HTTP/1.1\r\nHost: a\r\n"
#define POST "POST / HTTP/1.1\r\nHost: a\r\n"

static const struct bad bad_requests[] = {
    /* request line (RFC 9112 §3) */
    BAD("http/0.9", "GET /\r\n\r\n", SL_EH1_BAD_REQUEST_LINE, 400),
    BAD("method only", "GET\r\n\r\n", SL_EH1_BAD_REQUEST_LINE, 400),
    BAD("two SP after method", "GET  / HTTP/1.1\r\nHost: a\r\n\r\n", SL_EH1_BAD_REQUEST_LINE, 400),
    BAD("two SP after target", "GET /  HTTP/1.1\r\nHost: a\r\n\r\n", SL_EH1_BAD_REQUEST_LINE, 400),
    BAD("SP after version", "GET / HTTP/1.1 \r\nHost: a\r\n\r\n", SL_EH1_BAD_REQUEST_LINE, 400),
    BAD("leading SP", " GET / HTTP/1.1\r\nHost: a\r\n\r\n", SL_EH1_BAD_REQUEST_LINE, 400),
    BAD("empty version", "GET / \r\nHost: a\r\n\r\n", SL_EH1_BAD_REQUEST_LINE, 400),
    BAD("space in target", "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", SL_EH1_BAD_REQUEST_LINE, 400),
    BAD("empty line", "\r\n\r\n\r\n\r\n\r\n", SL_EH1_BAD_REQUEST_LINE, 400),
    BAD("method @", "G@T / HTTP/1.1\r\nHost: a\r\n\r\n", SL_EH1_BAD_METHOD, 400),
    BAD("method tab", "GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", SL_EH1_BAD_METHOD, 400),
    BAD("method 8bit", "G\xc9T / HTTP/1.1\r\nHost: a\r\n\r\n", SL_EH1_BAD_METHOD, 400),
    BAD("method starts with /", "/ HTTP/1.1\r\nHost: a\r\n\r\n", SL_EH1_BAD_METHOD, 400),
    BAD("target DEL", "GET /a\x7f HTTP/1.1\r\nHost: a\r\n\r\n", SL_EH1_BAD_TARGET, 400),
    BAD("target CTL", "GET /a\x01 HTTP/1.1\r\nHost: a\r\n\r\n", SL_EH1_BAD_TARGET, 400),
    BAD("target tab", "GET /a\tb HTTP/1.1\r\nHost: a\r\n\r\n", SL_EH1_BAD_TARGET, 400),
    BAD("target 8bit", "GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", SL_EH1_BAD_TARGET, 400),
    BAD("target fragment", "GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n", SL_EH1_BAD_TARGET, 400),
    BAD("target relative", "GET a/b HTTP/1.1\r\nHost: a\r\n\r\n", SL_EH1_BAD_TARGET, 400),
    BAD("asterisk with GET", "GET * HTTP/1.1\r\nHost: a\r\n\r\n", SL_EH1_BAD_TARGET, 400),
    BAD("asterisk plus", "OPTIONS *x HTTP/1.1\r\nHost: a\r\n\r\n", SL_EH1_BAD_TARGET, 400),
    BAD("CONNECT origin-form", "CONNECT / HTTP/1.1\r\nHost: a\r\n\r\n", SL_EH1_BAD_TARGET, 400),
    BAD("CONNECT without port", "CONNECT a.example HTTP/1.1\r\nHost: a\r\n\r\n", SL_EH1_BAD_TARGET, 400),
    BAD("authority-form with GET", "GET a.example:80 HTTP/1.1\r\nHost: a\r\n\r\n", SL_EH1_BAD_TARGET, 400),
    BAD("scheme ftp", "GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n", SL_EH1_BAD_TARGET, 400),
    BAD("absolute userinfo", "GET http://u:p@a/ HTTP/1.1\r\nHost: a\r\n\r\n", SL_EH1_BAD_TARGET, 400),
    BAD("absolute empty host", "GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n", SL_EH1_BAD_TARGET, 400),
    BAD("absolute bad port", "GET http://a:99999/ HTTP/1.1\r\nHost: a\r\n\r\n", SL_EH1_BAD_TARGET, 400),
    BAD("HTTP/1.2", "GET / HTTP/1.2\r\nHost: a\r\n\r\n", SL_EH1_BAD_VERSION, 400),
    BAD("HTTP/2.0", "GET / HTTP/2.0\r\nHost: a\r\n\r\n", SL_EH1_BAD_VERSION, 400),
    BAD("HTTP/1.10", "GET / HTTP/1.10\r\nHost: a\r\n\r\n", SL_EH1_BAD_VERSION, 400),
    BAD("lower-case version", "GET / http/1.1\r\nHost: a\r\n\r\n", SL_EH1_BAD_VERSION, 400),
    BAD("short version", "GET / HTTP/1\r\nHost: a\r\n\r\n", SL_EH1_BAD_VERSION, 400),
    BAD("version junk", "GET / HTTP/1.1x\r\nHost: a\r\n\r\n", SL_EH1_BAD_VERSION, 400),
    BAD("request line bare LF", "GET / HTTP/1.1\nHost: a\r\n\r\n", SL_EH1_BARE_LF, 400),
    BAD("target bare LF", "GET /\nHost: a\r\n\r\n", SL_EH1_BARE_LF, 400),
    BAD("request line bare CR", "GET / HTTP/1.1\rHost: a\r\n\r\n", SL_EH1_BARE_CR, 400),
    BAD("target NUL", "GET /\0 HTTP/1.1\r\nHost: a\r\n\r\n", SL_EH1_NUL_BYTE, 400),
    BAD("method NUL", "G\0T / HTTP/1.1\r\nHost: a\r\n\r\n", SL_EH1_NUL_BYTE, 400),
    /* field lines (RFC 9112 §5, RFC 9110 §5.5) */
    BAD("name CTL", RL "X\x01Y: z\r\n\r\n", SL_EH1_BAD_HEADER_NAME, 400),
    BAD("name 8bit", RL "X\xe9: z\r\n\r\n", SL_EH1_BAD_HEADER_NAME, 400),
    BAD("empty name", RL ": z\r\n\r\n", SL_EH1_BAD_HEADER_NAME, 400),
    BAD("space inside name", RL "X Y: z\r\n\r\n", SL_EH1_BAD_HEADER_NAME, 400),
    BAD("no colon", RL "XY\r\n\r\n", SL_EH1_BAD_HEADER_NAME, 400),
    BAD("name with slash", RL "X/Y: z\r\n\r\n", SL_EH1_BAD_HEADER_NAME, 400),
    BAD("value CTL", RL "X: a\x01z\r\n\r\n", SL_EH1_BAD_HEADER_VALUE, 400),
    BAD("value DEL", RL "X: a\177z\r\n\r\n", SL_EH1_BAD_HEADER_VALUE, 400),
    BAD("value VT", RL "X: \013chunked\r\n\r\n", SL_EH1_BAD_HEADER_VALUE, 400),
    BAD("value ESC", RL "X: \x1b[31m\r\n\r\n", SL_EH1_BAD_HEADER_VALUE, 400),
    BAD("space before colon", RL "X : z\r\n\r\n", SL_EH1_SPACE_BEFORE_COLON, 400),
    BAD("tab before colon", RL "X\t: z\r\n\r\n", SL_EH1_SPACE_BEFORE_COLON, 400),
    BAD("TE space before colon", POST "Transfer-Encoding : chunked\r\n\r\n", SL_EH1_SPACE_BEFORE_COLON, 400),
    BAD("obs-fold SP", RL "X: a\r\n b\r\n\r\n", SL_EH1_OBS_FOLD, 400),
    BAD("obs-fold HTAB", RL "X: a\r\n\tb\r\n\r\n", SL_EH1_OBS_FOLD, 400),
    BAD("space before first field", "GET / HTTP/1.1\r\n Host: a\r\n\r\n", SL_EH1_OBS_FOLD, 400),
    BAD("value bare CR", RL "X: a\rb\r\n\r\n", SL_EH1_BARE_CR, 400),
    BAD("end bare CR", RL "\rX", SL_EH1_BARE_CR, 400),
    BAD("field bare LF", "GET / HTTP/1.1\r\nX: a\nHost: a\r\n\r\n", SL_EH1_BARE_LF, 400),
    BAD("end bare LF", RL "\n", SL_EH1_BARE_LF, 400),
    BAD("value NUL", RL "X: a\0b\r\n\r\n", SL_EH1_NUL_BYTE, 400),
    BAD("name NUL", RL "X\0: b\r\n\r\n", SL_EH1_NUL_BYTE, 400),
    /* Host (RFC 9112 §3.2, RFC 9110 §7.2) */
    BAD("missing Host", "GET / HTTP/1.1\r\nX: y\r\n\r\n", SL_EH1_MISSING_HOST, 400),
    BAD("absolute-form without Host", "GET http://a/ HTTP/1.1\r\n\r\n", SL_EH1_MISSING_HOST, 400),
    BAD("duplicate Host", RL "Host: a\r\n\r\n", SL_EH1_DUPLICATE_HOST, 400),
    BAD("duplicate Host differing", RL "host: b\r\n\r\n", SL_EH1_DUPLICATE_HOST, 400),
    BAD("Host with space", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", SL_EH1_BAD_HOST, 400),
    BAD("Host with path", "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", SL_EH1_BAD_HOST, 400),
    BAD("Host with userinfo", "GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", SL_EH1_BAD_HOST, 400),
    BAD("Host list", "GET / HTTP/1.1\r\nHost: a,b\r\n\r\n", SL_EH1_BAD_HOST, 400),
    BAD("Host empty port", "GET / HTTP/1.1\r\nHost: a:\r\n\r\n", SL_EH1_BAD_HOST, 400),
    BAD("Host bad port", "GET / HTTP/1.1\r\nHost: a:8x\r\n\r\n", SL_EH1_BAD_HOST, 400),
    BAD("Host big port", "GET / HTTP/1.1\r\nHost: a:65536\r\n\r\n", SL_EH1_BAD_HOST, 400),
    BAD("Host only port", "GET / HTTP/1.1\r\nHost: :80\r\n\r\n", SL_EH1_BAD_HOST, 400),
    BAD("Host open bracket", "GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", SL_EH1_BAD_HOST, 400),
    BAD("Host bad IPv6", "GET / HTTP/1.1\r\nHost: [::g]\r\n\r\n", SL_EH1_BAD_HOST, 400),
    BAD("Host bad pct", "GET / HTTP/1.1\r\nHost: %zz\r\n\r\n", SL_EH1_BAD_HOST, 400),
    BAD("Host empty on 1.1", "GET / HTTP/1.1\r\nHost:\r\n\r\n", SL_EH1_BAD_HOST, 400),
    /* Content-Length (RFC 9110 §8.6, RFC 9112 §6.3) */
    BAD("CL plus", POST "Content-Length: +5\r\n\r\n", SL_EH1_BAD_CONTENT_LENGTH, 400),
    BAD("CL minus", POST "Content-Length: -1\r\n\r\n", SL_EH1_BAD_CONTENT_LENGTH, 400),
    BAD("CL inner space", POST "Content-Length: 1 0\r\n\r\n", SL_EH1_BAD_CONTENT_LENGTH, 400),
    BAD("CL list", POST "Content-Length: 5, 5\r\n\r\n", SL_EH1_BAD_CONTENT_LENGTH, 400),
    BAD("CL hex", POST "Content-Length: 0x5\r\n\r\n", SL_EH1_BAD_CONTENT_LENGTH, 400),
    BAD("CL empty", POST "Content-Length:\r\n\r\n", SL_EH1_BAD_CONTENT_LENGTH, 400),
    BAD("CL 2^63", POST "Content-Length: 9223372036854775808\r\n\r\n", SL_EH1_BAD_CONTENT_LENGTH, 400),
    BAD("CL overflow", POST "Content-Length: 99999999999999999999999\r\n\r\n", SL_EH1_BAD_CONTENT_LENGTH, 400),
    BAD("CL twice equal", POST "Content-Length: 5\r\nContent-Length: 5\r\n\r\n", SL_EH1_DUPLICATE_CONTENT_LENGTH, 400),
    BAD("CL twice differing", POST "Content-Length: 5\r\ncontent-length: 6\r\n\r\n", SL_EH1_DUPLICATE_CONTENT_LENGTH,
        400),
    /* Transfer-Encoding (RFC 9112 §6.1, §6.3) */
    BAD("CL then TE", POST "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", SL_EH1_CL_AND_TE, 400),
    BAD("TE then CL", POST "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", SL_EH1_CL_AND_TE, 400),
    BAD("TE xchunked", POST "Transfer-Encoding: xchunked\r\n\r\n", SL_EH1_BAD_TRANSFER_ENCODING, 400),
    BAD("TE identity", POST "Transfer-Encoding: identity\r\n\r\n", SL_EH1_BAD_TRANSFER_ENCODING, 400),
    BAD("TE chunked, identity", POST "Transfer-Encoding: chunked, identity\r\n\r\n", SL_EH1_BAD_TRANSFER_ENCODING, 400),
    BAD("TE gzip, chunked", POST "Transfer-Encoding: gzip, chunked\r\n\r\n", SL_EH1_BAD_TRANSFER_ENCODING, 400),
    BAD("TE chunked, chunked", POST "Transfer-Encoding: chunked, chunked\r\n\r\n", SL_EH1_BAD_TRANSFER_ENCODING, 400),
    BAD("TE empty", POST "Transfer-Encoding:\r\n\r\n", SL_EH1_BAD_TRANSFER_ENCODING, 400),
    BAD("TE quoted", POST "Transfer-Encoding: \"chunked\"\r\n\r\n", SL_EH1_BAD_TRANSFER_ENCODING, 400),
    BAD("TE param", POST "Transfer-Encoding: chunked;q=1\r\n\r\n", SL_EH1_BAD_TRANSFER_ENCODING, 400),
    BAD("TE twice", POST "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        SL_EH1_BAD_TRANSFER_ENCODING, 400),
    BAD("TE in 1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", SL_EH1_TE_IN_HTTP10, 400),
};

static void test_bad_requests(void **state)
{
    sl_h1_request_t req;
    int failures = 0;
    for (size_t i = 0; i < sizeof(bad_requests) / sizeof(bad_requests[0]); i++) {
        const struct bad *b = &bad_requests[i];
        int rc = parse_n(b->raw, b->len, &req, &limits);
        if (rc != b->code || sl_h1_error_status(rc) != b->status) {
            print_error("%s: got %d (%s, %d), want %d (%s, %d)\n", b->name, rc, sl_h1_error_reason(rc),
                        sl_h1_error_status(rc), b->code, sl_h1_error_reason(b->code), b->status);
            failures++;
        }
    }
    assert_int_equal(failures, 0);
}

/* ---- limits ------------------------------------------------------------------------------- */

static char *make_request(size_t target_len, size_t nfields, size_t value_len, size_t *len)
{
    size_t cap = target_len + nfields * (value_len + 16) + 64;
    char *b = malloc(cap), *p = b;
    p += sprintf(p, "GET /");
    memset(p, 'a', target_len - 1);
    p += target_len - 1;
    p += sprintf(p, " HTTP/1.1\r\nHost: a\r\n");
    for (size_t i = 0; i < nfields; i++) {
        p += sprintf(p, "X-%zu: ", i);
        memset(p, 'v', value_len);
        p += value_len;
        p += sprintf(p, "\r\n");
    }
    p += sprintf(p, "\r\n");
    *len = (size_t)(p - b);
    return b;
}

static void test_uri_limit(void **state)
{
    sl_h1_request_t req;
    size_t len;
    char *ok = make_request(1024, 0, 0, &len);
    assert_int_equal(parse_n(ok, len, &req, &limits), (int)len);
    free(ok);
    char *big = make_request(1025, 0, 0, &len);
    assert_int_equal(parse_n(big, len, &req, &limits), SL_EH1_URI_TOO_LONG);
    /* Known as soon as byte 1025 of the target is in, without waiting for the SP. */
    assert_int_equal(parse_n(big, 4 + 1025, &req, &limits), SL_EH1_URI_TOO_LONG);
    assert_int_equal(parse_n(big, 4 + 1024, &req, &limits), SL_EINCOMPLETE);
    assert_int_equal(sl_h1_error_status(SL_EH1_URI_TOO_LONG), 414);
    assert_int_equal(sl_h1_error_cause(SL_EH1_URI_TOO_LONG), SL_CAUSE_URI_TOO_LONG);
    free(big);
    /* A target that outgrows the head limit first, while the line is unfinished, is a long URI. */
    sl_h1_limits_t wide = {.max_head_bytes = 512, .max_uri_bytes = 4096, .max_headers = MAXH};
    char *mid = make_request(1000, 0, 0, &len);
    assert_int_equal(parse_n(mid, 600, &req, &wide), SL_EH1_URI_TOO_LONG);
    free(mid);
}

static void test_head_limit(void **state)
{
    sl_h1_request_t req;
    size_t len;
    char *r = make_request(10, 1, 100, &len);
    sl_h1_limits_t exact = {.max_head_bytes = len, .max_uri_bytes = 1024, .max_headers = MAXH};
    sl_h1_limits_t less = {.max_head_bytes = len - 1, .max_uri_bytes = 1024, .max_headers = MAXH};
    assert_int_equal(parse_n(r, len, &req, &exact), (int)len);
    assert_int_equal(parse_n(r, len, &req, &less), SL_EH1_HEADER_TOO_LARGE);
    /* Incomplete but longer than the limit: no point waiting. */
    assert_int_equal(parse_n(r, len - 1, &req, &less), SL_EINCOMPLETE);
    assert_int_equal(parse_n(r, len - 2, &req, &less), SL_EINCOMPLETE);
    free(r);
    char *huge = make_request(10, 1, 5000, &len);
    assert_int_equal(parse_n(huge, len, &req, &limits), SL_EH1_HEADER_TOO_LARGE);
    assert_int_equal(parse_n(huge, 4097, &req, &limits), SL_EH1_HEADER_TOO_LARGE);
    assert_int_equal(parse_n(huge, 4096, &req, &limits), SL_EINCOMPLETE);
    assert_int_equal(sl_h1_error_status(SL_EH1_HEADER_TOO_LARGE), 431);
    assert_int_equal(sl_h1_error_cause(SL_EH1_HEADER_TOO_LARGE), SL_CAUSE_HEADER_TOO_LARGE);
    free(huge);
}

static void test_header_count_limit(void **state)
{
    sl_h1_request_t req;
    size_t len;
    char *ok = make_request(2, MAXH - 1, 1, &len); /* + Host = MAXH fields */
    assert_int_equal(parse_n(ok, len, &req, &limits), (int)len);
    assert_int_equal(req.nheaders, MAXH);
    free(ok);
    char *many = make_request(2, MAXH, 1, &len);
    assert_int_equal(parse_n(many, len, &req, &limits), SL_EH1_TOO_MANY_HEADERS);
    assert_int_equal(sl_h1_error_status(SL_EH1_TOO_MANY_HEADERS), 431);
    assert_int_equal(sl_h1_error_cause(SL_EH1_TOO_MANY_HEADERS), SL_CAUSE_HEADER_TOO_LARGE);
    free(many);
}

/* ---- error mapping ------------------------------------------------------------------------ */

static void test_error_mapping(void **state)
{
    sl_h1_register_errors();
    sl_h1_register_errors(); /* idempotent */
    assert_string_equal(sl_h1_error_reason(SL_EH1_OBS_FOLD), "line folding of header fields is not supported");
    for (int c = SL_EH1_BAD_REQUEST_LINE; c < SL_EH1__LAST; c++) {
        const char *r = sl_h1_error_reason(c);
        assert_non_null(r);
        assert_true(strlen(r) > 10);
        assert_string_equal(sl_strerror(c), r);
        for (int d = SL_EH1_BAD_REQUEST_LINE; d < c; d++)
            assert_string_not_equal(sl_h1_error_reason(d), r);
        int s = sl_h1_error_status(c);
        enum sl_cause cause = sl_h1_error_cause(c);
        if (c == SL_EH1_URI_TOO_LONG)
            assert_true(s == 414 && cause == SL_CAUSE_URI_TOO_LONG);
        else if (c == SL_EH1_HEADER_TOO_LARGE || c == SL_EH1_TOO_MANY_HEADERS)
            assert_true(s == 431 && cause == SL_CAUSE_HEADER_TOO_LARGE);
        else
            assert_true(s == 400 && cause == SL_CAUSE_BAD_REQUEST);
    }
    assert_int_equal(sl_h1_error_status(SL_EINVALID), 400);
    assert_non_null(sl_h1_error_reason(SL_EINVALID));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get_minimal),
        cmocka_unit_test(test_get_headers_and_query),
        cmocka_unit_test(test_post_content_length),
        cmocka_unit_test(test_content_length_bounds),
        cmocka_unit_test(test_chunked),
        cmocka_unit_test(test_absolute_form),
        cmocka_unit_test(test_asterisk_form),
        cmocka_unit_test(test_connect_authority_form),
        cmocka_unit_test(test_extension_method),
        cmocka_unit_test(test_http10),
        cmocka_unit_test(test_connection_and_expect),
        cmocka_unit_test(test_hosts),
        cmocka_unit_test(test_leading_crlf),
        cmocka_unit_test(test_pipelined),
        cmocka_unit_test(test_restart_bytewise),
        cmocka_unit_test(test_errors_are_stable),
        cmocka_unit_test(test_bad_requests),
        cmocka_unit_test(test_uri_limit),
        cmocka_unit_test(test_head_limit),
        cmocka_unit_test(test_header_count_limit),
        cmocka_unit_test(test_error_mapping),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
