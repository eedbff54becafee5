/*
 * Response-head parser tests: the status line (with and without a reason), framing per
 * RFC 9112 §6.3 (HEAD, 1xx, 204, 304, chunked, length, close), connection reuse, restart, and
 * each malformed class with its exact error code.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "common/error.h"
#include "http1/parser.h"

#define MAXH 16
static sl_header_t hdrs[MAXH];
static const sl_h1_limits_t limits = {.max_head_bytes = 1024, .max_uri_bytes = 1024, .max_headers = MAXH};

static int parse_n(const char *buf, size_t len, sl_h1_response_t *resp, bool head)
{
    memset(resp, 0, sizeof(*resp));
    resp->headers = hdrs;
    return sl_h1_parse_response(buf, len, resp, &limits, head);
}

#define PARSE(lit, resp)      parse_n((lit), sizeof(lit) - 1, (resp), false)
#define PARSE_HEAD(lit, resp) parse_n((lit), sizeof(lit) - 1, (resp), true)
#define OK_LEN(lit)           ((int)(sizeof(lit) - 1))

static void assert_slice(sl_str_t s, const char *want)
{
    if (s.len != strlen(want) || (s.len && memcmp(s.ptr, want, s.len) != 0))
        fail_msg("got \"%.*s\", want \"%s\"", (int)s.len, s.ptr ? s.ptr : "", want);
}

static void test_length(void **state)
{
    static const char r[] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello";
    sl_h1_response_t resp;
    assert_int_equal(PARSE(r, &resp), OK_LEN(r) - 5);
    assert_int_equal(resp.minor_version, 1);
    assert_int_equal(resp.status, 200);
    assert_slice(resp.reason, "OK");
    assert_int_equal(resp.nheaders, 2);
    assert_slice(resp.headers[1].name, "Content-Length");
    assert_int_equal(resp.body, SL_H1_BODY_LENGTH);
    assert_int_equal(resp.content_length, 5);
    assert_true(resp.keep_alive);
}

static void test_reason_forms(void **state)
{
    static const char none[] = "HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n";
    static const char empty[] = "HTTP/1.1 404 \r\nContent-Length: 0\r\n\r\n";
    static const char spaces[] = "HTTP/1.1 503 Service \tUnavailable \xe2\x9c\x97\r\nContent-Length: 0\r\n\r\n";
    sl_h1_response_t resp;
    assert_int_equal(PARSE(none, &resp), OK_LEN(none));
    assert_int_equal(resp.status, 200);
    assert_slice(resp.reason, "");
    assert_int_equal(PARSE(empty, &resp), OK_LEN(empty));
    assert_int_equal(resp.status, 404);
    assert_slice(resp.reason, "");
    assert_int_equal(PARSE(spaces, &resp), OK_LEN(spaces));
    assert_slice(resp.reason, "Service \tUnavailable \xe2\x9c\x97");
}

static void test_chunked_and_close(void **state)
{
    static const char chunked[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n";
    static const char close[] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n";
    static const char conn_close[] = "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n";
    sl_h1_response_t resp;
    assert_int_equal(PARSE(chunked, &resp), OK_LEN(chunked));
    assert_int_equal(resp.body, SL_H1_BODY_CHUNKED);
    assert_true(resp.keep_alive);
    assert_int_equal(PARSE(close, &resp), OK_LEN(close));
    assert_int_equal(resp.body, SL_H1_BODY_CLOSE);
    assert_false(resp.keep_alive);
    assert_int_equal(PARSE(conn_close, &resp), OK_LEN(conn_close));
    assert_int_equal(resp.body, SL_H1_BODY_LENGTH);
    assert_false(resp.keep_alive);
}

static void test_no_body_statuses(void **state)
{
    static const char head[] = "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n";
    static const char s204[] = "HTTP/1.1 204 No Content\r\n\r\n";
    static const char s304[] = "HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n";
    static const char s101[] = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n";
    static const char te204[] = "HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n";
    sl_h1_response_t resp;
    assert_int_equal(PARSE_HEAD(head, &resp), OK_LEN(head));
    assert_int_equal(resp.body, SL_H1_BODY_NONE);
    assert_true(resp.keep_alive);
    assert_int_equal(PARSE(s204, &resp), OK_LEN(s204));
    assert_int_equal(resp.body, SL_H1_BODY_NONE);
    assert_true(resp.keep_alive);
    assert_int_equal(PARSE(s304, &resp), OK_LEN(s304));
    assert_int_equal(resp.body, SL_H1_BODY_NONE);
    assert_int_equal(PARSE(s101, &resp), OK_LEN(s101));
    assert_int_equal(resp.body, SL_H1_BODY_NONE);
    assert_int_equal(PARSE(te204, &resp), OK_LEN(te204));
    assert_int_equal(resp.body, SL_H1_BODY_NONE);
}

static void test_interim_then_final(void **state)
{
    static const char r[] = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n"
                            "HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok";
    sl_h1_response_t resp;
    size_t off = 0, len = sizeof(r) - 1;
    int n = parse_n(r, len, &resp, false);
    assert_true(n > 0);
    assert_int_equal(resp.status, 100);
    assert_int_equal(resp.body, SL_H1_BODY_NONE);
    off += (size_t)n;
    n = parse_n(r + off, len - off, &resp, false);
    assert_true(n > 0);
    assert_int_equal(resp.status, 103);
    off += (size_t)n;
    n = parse_n(r + off, len - off, &resp, false);
    assert_int_equal(resp.status, 201);
    assert_int_equal(resp.body, SL_H1_BODY_LENGTH);
    assert_int_equal(off + (size_t)n + 2, len);
}

static void test_http10(void **state)
{
    static const char plain[] = "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n";
    static const char ka[] = "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n";
    static const char ka_close[] = "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n";
    sl_h1_response_t resp;
    assert_int_equal(PARSE(plain, &resp), OK_LEN(plain));
    assert_int_equal(resp.minor_version, 0);
    assert_false(resp.keep_alive);
    assert_int_equal(PARSE(ka, &resp), OK_LEN(ka));
    assert_true(resp.keep_alive);
    assert_int_equal(PARSE(ka_close, &resp), OK_LEN(ka_close));
    assert_int_equal(resp.body, SL_H1_BODY_CLOSE);
    assert_false(resp.keep_alive);
}

static void test_duplicate_content_length(void **state)
{
    static const char same[] = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n";
    static const char differ[] = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n";
    sl_h1_response_t resp;
    /* RFC 9112 §6.3 p5: identical repeats may be collapsed; differing ones may not. */
    assert_int_equal(PARSE(same, &resp), OK_LEN(same));
    assert_int_equal(resp.content_length, 3);
    assert_int_equal(PARSE(differ, &resp), SL_EH1_DUPLICATE_CONTENT_LENGTH);
}

static void test_restart_bytewise(void **state)
{
    static const char r[] = "HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 0\r\n\r\n";
    static const char noreason[] = "HTTP/1.1 204\r\n\r\n";
    sl_h1_response_t resp;
    for (size_t i = 0; i < sizeof(r) - 1; i++)
        assert_int_equal(parse_n(r, i, &resp, false), SL_EINCOMPLETE);
    assert_int_equal(parse_n(r, sizeof(r) - 1, &resp, false), OK_LEN(r));
    for (size_t i = 0; i < sizeof(noreason) - 1; i++)
        assert_int_equal(parse_n(noreason, i, &resp, false), SL_EINCOMPLETE);
    assert_int_equal(parse_n(noreason, sizeof(noreason) - 1, &resp, false), OK_LEN(noreason));
}

struct bad {
    const char *name;
    const char *raw;
    size_t len;
    int code;
};
#define BAD(name, lit, code)                                                                                           \
    {                                                                                                                  \
        name, lit, sizeof(lit) - 1, code                                                                               \
    }
#define SL "HTTP/1.1 200 OK\r\n"

static const struct bad bad_responses[] = {
    BAD("4-digit status", "HTTP/1.1 2000 OK\r\n\r\n", SL_EH1_BAD_STATUS_LINE),
    BAD("2-digit status", "HTTP/1.1 20 OK\r\n\r\n", SL_EH1_BAD_STATUS_LINE),
    BAD("status 0xx", "HTTP/1.1 099 Odd\r\n\r\n", SL_EH1_BAD_STATUS_LINE),
    BAD("status letters", "HTTP/1.1 abc\r\n\r\n", SL_EH1_BAD_STATUS_LINE),
    BAD("no status", "HTTP/1.1\r\n\r\n", SL_EH1_BAD_STATUS_LINE),
    BAD("two SP", "HTTP/1.1  200 OK\r\n\r\n", SL_EH1_BAD_STATUS_LINE),
    BAD("reason glued", "HTTP/1.1 200OK\r\n\r\n", SL_EH1_BAD_STATUS_LINE),
    BAD("reason CTL", "HTTP/1.1 200 O\x01K\r\n\r\n", SL_EH1_BAD_STATUS_LINE),
    BAD("not HTTP", "ICY 200 OK\r\n\r\n", SL_EH1_BAD_STATUS_LINE),
    BAD("HTTPS name", "HTTPS/1.1 200 OK\r\n\r\n", SL_EH1_BAD_STATUS_LINE),
    BAD("leading CRLF", "\r\nHTTP/1.1 200 OK\r\n\r\n", SL_EH1_BAD_STATUS_LINE),
    BAD("HTTP/2.0", "HTTP/2.0 200 OK\r\n\r\n", SL_EH1_BAD_VERSION),
    BAD("HTTP/1.2", "HTTP/1.2 200 OK\r\n\r\n", SL_EH1_BAD_VERSION),
    BAD("HTTP/1.1x", "HTTP/1.1x 200 OK\r\n\r\n", SL_EH1_BAD_VERSION),
    BAD("status line bare LF", "HTTP/1.1 200 OK\nServer: x\r\n\r\n", SL_EH1_BARE_LF),
    BAD("status line bare CR", "HTTP/1.1 200 OK\rServer: x\r\n\r\n", SL_EH1_BARE_CR),
    BAD("reason NUL", "HTTP/1.1 200 O\0K\r\n\r\n", SL_EH1_NUL_BYTE),
    BAD("field bare LF", SL "Server: x\n\r\n", SL_EH1_BARE_LF),
    BAD("obs-fold", SL "Server: x\r\n y\r\n\r\n", SL_EH1_OBS_FOLD),
    BAD("space before colon", SL "Content-Length : 1\r\n\r\n", SL_EH1_SPACE_BEFORE_COLON),
    BAD("bad name", SL "Set Cookie: a\r\n\r\n", SL_EH1_BAD_HEADER_NAME),
    BAD("bad value", SL "Set-Cookie: a\x01\r\n\r\n", SL_EH1_BAD_HEADER_VALUE),
    BAD("bad CL", SL "Content-Length: 1x\r\n\r\n", SL_EH1_BAD_CONTENT_LENGTH),
    BAD("CL and TE", SL "Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", SL_EH1_CL_AND_TE),
    BAD("TE gzip", SL "Transfer-Encoding: gzip\r\n\r\n", SL_EH1_BAD_TRANSFER_ENCODING),
    BAD("TE gzip, chunked", SL "Transfer-Encoding: gzip, chunked\r\n\r\n", SL_EH1_BAD_TRANSFER_ENCODING),
    BAD("TE twice", SL "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        SL_EH1_BAD_TRANSFER_ENCODING),
    BAD("TE in 1.0", "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", SL_EH1_TE_IN_HTTP10),
};

static void test_bad_responses(void **state)
{
    sl_h1_response_t resp;
    int failures = 0;
    for (size_t i = 0; i < sizeof(bad_responses) / sizeof(bad_responses[0]); i++) {
        const struct bad *b = &bad_responses[i];
        int rc = parse_n(b->raw, b->len, &resp, false);
        if (rc != b->code || sl_h1_error_status(rc) != 400) {
            print_error("%s: got %d (%s), want %d (%s)\n", b->name, rc, sl_h1_error_reason(rc), b->code,
                        sl_h1_error_reason(b->code));
            failures++;
        }
    }
    assert_int_equal(failures, 0);
}

static void test_limits(void **state)
{
    char buf[2048];
    sl_h1_response_t resp;
    size_t n = (size_t)sprintf(buf, "HTTP/1.1 200 OK\r\n");
    for (int i = 0; i < MAXH + 1; i++)
        n += (size_t)sprintf(buf + n, "X-%d: y\r\n", i);
    n += (size_t)sprintf(buf + n, "\r\n");
    assert_int_equal(parse_n(buf, n, &resp, false), SL_EH1_TOO_MANY_HEADERS);

    n = (size_t)sprintf(buf, "HTTP/1.1 200 OK\r\nX: ");
    memset(buf + n, 'v', 1100);
    n += 1100;
    n += (size_t)sprintf(buf + n, "\r\n\r\n");
    assert_int_equal(parse_n(buf, n, &resp, false), SL_EH1_HEADER_TOO_LARGE);
    assert_int_equal(parse_n(buf, 1025, &resp, false), SL_EH1_HEADER_TOO_LARGE);
    assert_int_equal(parse_n(buf, 1024, &resp, false), SL_EINCOMPLETE);
    /* Still in the status line when the limit is hit: the head is too large, not the URI. */
    memset(buf, 0, sizeof(buf));
    n = (size_t)sprintf(buf, "HTTP/1.1 200 ");
    memset(buf + n, 'r', 1100);
    assert_int_equal(parse_n(buf, n + 1100, &resp, false), SL_EH1_HEADER_TOO_LARGE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_length),
        cmocka_unit_test(test_reason_forms),
        cmocka_unit_test(test_chunked_and_close),
        cmocka_unit_test(test_no_body_statuses),
        cmocka_unit_test(test_interim_then_final),
        cmocka_unit_test(test_http10),
        cmocka_unit_test(test_duplicate_content_length),
        cmocka_unit_test(test_restart_bytewise),
        cmocka_unit_test(test_bad_responses),
        cmocka_unit_test(test_limits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
