/*
 * Chunked decoder tests: data, extensions and trailers; the same output whatever the input is
 * split into (every single split point, and one byte at a time); data handed out before a
 * chunk is complete; and each framing error with its exact code.
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

/* What a whole decode produced: the data bytes, the trailer lines ("|"-joined), the verdict
 * (DONE, NEED_MORE at the end of input, or an error) and the bytes consumed. */
struct result {
    char data[8192];
    size_t ndata;
    char trailers[1024];
    size_t ntrailers;
    int verdict;
    size_t consumed;
};

static void on_event(struct result *r, int rc, sl_str_t out)
{
    if (rc == SL_H1_CHUNK_DATA) {
        assert_true(out.len > 0);
        assert_true(r->ndata + out.len <= sizeof(r->data));
        memcpy(r->data + r->ndata, out.ptr, out.len);
        r->ndata += out.len;
    } else if (rc == SL_H1_CHUNK_TRAILER) {
        assert_true(r->ntrailers + out.len + 1 <= sizeof(r->trailers));
        memcpy(r->trailers + r->ntrailers, out.ptr, out.len);
        r->ntrailers += out.len;
        r->trailers[r->ntrailers++] = '|';
    }
}

/*
 * Feeds `in` as the pieces [0, cuts[0]), [cuts[0], cuts[1]), ...; like a connection, bytes not
 * consumed stay in front of the next piece. Calls decode until it asks for more.
 */
static void decode_pieces(const char *in, size_t len, const size_t *cuts, size_t ncuts, size_t max_trailer,
                          struct result *r)
{
    sl_h1_chunked_t d;
    size_t pos = 0;
    memset(r, 0, sizeof(*r));
    sl_h1_chunked_init(&d);
    d.max_trailer_bytes = max_trailer;
    r->verdict = SL_H1_CHUNK_NEED_MORE;
    for (size_t k = 0; k <= ncuts; k++) {
        size_t upto = k < ncuts ? cuts[k] : len;
        for (;;) {
            size_t used = SIZE_MAX;
            sl_str_t out;
            int rc = sl_h1_chunked_decode(&d, in + pos, upto - pos, &used, &out);
            assert_true(used <= upto - pos);
            pos += used;
            r->verdict = rc;
            if (rc < 0 || rc == SL_H1_CHUNK_DONE) {
                r->consumed = pos;
                return;
            }
            if (rc == SL_H1_CHUNK_NEED_MORE)
                break;
            on_event(r, rc, out);
        }
    }
    r->consumed = pos;
}

static void decode_whole(const char *in, size_t len, struct result *r)
{
    decode_pieces(in, len, NULL, 0, 0, r);
}

static void assert_same(const struct result *a, const struct result *b, const char *what, size_t at)
{
    if (a->verdict != b->verdict || a->ndata != b->ndata || memcmp(a->data, b->data, a->ndata) != 0 ||
        a->ntrailers != b->ntrailers || memcmp(a->trailers, b->trailers, a->ntrailers) != 0 ||
        a->consumed != b->consumed)
        fail_msg("%s at %zu: verdict %d vs %d, %zu vs %zu data bytes, consumed %zu vs %zu", what, at, a->verdict,
                 b->verdict, a->ndata, b->ndata, a->consumed, b->consumed);
}

/* Splitting anywhere, and feeding byte by byte, must not change anything. */
static void check_splits(const char *in, size_t len, size_t max_trailer)
{
    struct result whole, part;
    decode_pieces(in, len, NULL, 0, max_trailer, &whole);
    for (size_t cut = 0; cut <= len; cut++) {
        decode_pieces(in, len, &cut, 1, max_trailer, &part);
        assert_same(&whole, &part, "split", cut);
    }
    size_t cuts[600];
    assert_true(len < 600);
    for (size_t i = 0; i < len; i++)
        cuts[i] = i + 1;
    decode_pieces(in, len, cuts, len, max_trailer, &part);
    assert_same(&whole, &part, "bytewise", 0);
}

#define LIT(s) (s), (sizeof(s) - 1)

static void test_simple(void **state)
{
    static const char in[] = "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    struct result r;
    decode_whole(LIT(in), &r);
    assert_int_equal(r.verdict, SL_H1_CHUNK_DONE);
    assert_int_equal(r.ndata, 11);
    assert_memory_equal(r.data, "hello world", 11);
    assert_int_equal(r.consumed, sizeof(in) - 1);
    assert_int_equal(r.ntrailers, 0);
}

static void test_hex_sizes(void **state)
{
    static const char in[] = "A\r\n0123456789\r\n0000b\r\nabcdefghijk\r\n00\r\n\r\n";
    struct result r;
    decode_whole(LIT(in), &r);
    assert_int_equal(r.verdict, SL_H1_CHUNK_DONE);
    assert_int_equal(r.ndata, 21);
    assert_memory_equal(r.data, "0123456789abcdefghijk", 21);
}

static void test_extensions(void **state)
{
    static const char in[] = "5;a=b\r\nhello\r\n"
                             "1 ; name = \"quoted \\\" \\\\ value\" ;flag\t;x=y\r\n!\r\n"
                             "2;a;b;c=\"\"\r\nok\r\n"
                             "0;last-chunk\r\n\r\n";
    struct result r;
    decode_whole(LIT(in), &r);
    assert_int_equal(r.verdict, SL_H1_CHUNK_DONE);
    assert_int_equal(r.ndata, 8);
    assert_memory_equal(r.data, "hello!ok", 8);
    check_splits(LIT(in), 0);
}

static void test_trailers(void **state)
{
    static const char in[] = "3\r\nabc\r\n0\r\nX-Checksum: 1234\r\nServer-Timing:  db;dur=53 \r\nX-Empty:\r\n\r\n";
    struct result r;
    decode_whole(LIT(in), &r);
    assert_int_equal(r.verdict, SL_H1_CHUNK_DONE);
    assert_int_equal(r.ndata, 3);
    assert_int_equal(r.consumed, sizeof(in) - 1);
    r.trailers[r.ntrailers] = '\0';
    assert_string_equal(r.trailers, "X-Checksum: 1234|Server-Timing:  db;dur=53 |X-Empty:|");
    check_splits(LIT(in), 0);
}

static void test_data_streams(void **state)
{
    static const char in[] = "10\r\n0123456789abcdef\r\n0\r\n\r\n";
    sl_h1_chunked_t d;
    size_t used;
    sl_str_t out;
    sl_h1_chunked_init(&d);
    /* The size line is consumed as it comes; data is handed out before the chunk is whole. */
    assert_int_equal(sl_h1_chunked_decode(&d, in, 2, &used, &out), SL_H1_CHUNK_NEED_MORE);
    assert_int_equal(used, 2);
    assert_int_equal(sl_h1_chunked_decode(&d, in + 2, 5, &used, &out), SL_H1_CHUNK_DATA);
    assert_int_equal(used, 5);
    assert_int_equal(out.len, 3);
    assert_memory_equal(out.ptr, "012", 3);
    assert_ptr_equal(out.ptr, in + 4); /* zero-copy */
    assert_int_equal(sl_h1_chunked_decode(&d, in + 7, sizeof(in) - 1 - 7, &used, &out), SL_H1_CHUNK_DATA);
    assert_int_equal(out.len, 13);
    assert_int_equal(used, 13);
    assert_int_equal(sl_h1_chunked_decode(&d, in + 20, sizeof(in) - 1 - 20, &used, &out), SL_H1_CHUNK_DONE);
    assert_int_equal(20 + used, sizeof(in) - 1);
    /* After DONE the decoder stays done and takes nothing more. */
    assert_int_equal(sl_h1_chunked_decode(&d, "x", 1, &used, &out), SL_H1_CHUNK_DONE);
    assert_int_equal(used, 0);
}

static void test_stops_at_message_end(void **state)
{
    static const char in[] = "1\r\na\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
    struct result r;
    decode_whole(LIT(in), &r);
    assert_int_equal(r.verdict, SL_H1_CHUNK_DONE);
    assert_int_equal(r.consumed, sizeof("1\r\na\r\n0\r\n\r\n") - 1);
}

static void test_partial_trailer_not_consumed(void **state)
{
    static const char in[] = "0\r\nX-A: b";
    sl_h1_chunked_t d;
    size_t used;
    sl_str_t out;
    sl_h1_chunked_init(&d);
    /* A trailer is returned as one line, so a partial one stays with the caller. */
    assert_int_equal(sl_h1_chunked_decode(&d, LIT(in), &used, &out), SL_H1_CHUNK_NEED_MORE);
    assert_int_equal(used, 3);
}

static void test_huge_size_waits(void **state)
{
    static const char in[] = "FFFFFFFFFFFFFFFF\r\nabc";
    sl_h1_chunked_t d;
    size_t used;
    sl_str_t out;
    sl_h1_chunked_init(&d);
    assert_int_equal(sl_h1_chunked_decode(&d, LIT(in), &used, &out), SL_H1_CHUNK_DATA);
    assert_int_equal(out.len, 3);
    assert_true(d.remaining == UINT64_MAX - 3);
}

static void test_every_split(void **state)
{
    static const char in[] = "4;x=\"a;b\"\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nT: v\r\n\r\n";
    struct result r;
    decode_whole(LIT(in), &r);
    assert_int_equal(r.verdict, SL_H1_CHUNK_DONE);
    assert_int_equal(r.ndata, 23);
    assert_memory_equal(r.data, "Wikipedia in\r\n\r\nchunks.", 23);
    check_splits(LIT(in), 0);
}

/* ---- errors ------------------------------------------------------------------------------- */

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

static const struct bad bad_chunks[] = {
    BAD("0x prefix", "0x10\r\n", SL_EH1_BAD_CHUNK_SIZE),
    BAD("negative", "-1\r\n", SL_EH1_BAD_CHUNK_SIZE),
    BAD("plus", "+1\r\n", SL_EH1_BAD_CHUNK_SIZE),
    BAD("empty size", "\r\n", SL_EH1_BAD_CHUNK_SIZE),
    BAD("leading space", " 5\r\nhello\r\n", SL_EH1_BAD_CHUNK_SIZE),
    BAD("leading tab", "\t5\r\nhello\r\n", SL_EH1_BAD_CHUNK_SIZE),
    BAD("not hex", "g\r\n", SL_EH1_BAD_CHUNK_SIZE),
    BAD("hex then junk", "5g\r\n", SL_EH1_BAD_CHUNK_SIZE),
    BAD("17 digits", "10000000000000000\r\n", SL_EH1_BAD_CHUNK_SIZE),
    BAD("17 digits leading zeros", "00000000000000001\r\n", SL_EH1_BAD_CHUNK_SIZE),
    BAD("empty size with ext", ";a\r\n", SL_EH1_BAD_CHUNK_SIZE),
    BAD("trailing space", "5 \r\nhello\r\n", SL_EH1_BAD_CHUNK_EXTENSION),
    BAD("empty ext", "5;\r\nhello\r\n", SL_EH1_BAD_CHUNK_EXTENSION),
    BAD("ext no name", "5;=x\r\n", SL_EH1_BAD_CHUNK_EXTENSION),
    BAD("ext no value", "5;a=\r\n", SL_EH1_BAD_CHUNK_EXTENSION),
    BAD("ext two names", "5;a b\r\n", SL_EH1_BAD_CHUNK_EXTENSION),
    BAD("ext value space", "5;a=b c\r\n", SL_EH1_BAD_CHUNK_EXTENSION),
    BAD("ext trailing space", "5;a=b \r\n", SL_EH1_BAD_CHUNK_EXTENSION),
    BAD("ext unterminated quote", "5;a=\"x\r\n", SL_EH1_BAD_CHUNK_EXTENSION),
    BAD("ext CTL", "5;a\x01\r\n", SL_EH1_BAD_CHUNK_EXTENSION),
    BAD("ext CTL in quotes", "5;a=\"\x01\"\r\n", SL_EH1_BAD_CHUNK_EXTENSION),
    BAD("ext junk after quote", "5;a=\"x\"y\r\n", SL_EH1_BAD_CHUNK_EXTENSION),
    BAD("size bare LF", "5\nhello\r\n", SL_EH1_BARE_LF),
    BAD("ext bare LF", "5;a=b\nhello\r\n", SL_EH1_BARE_LF),
    BAD("size bare CR", "5\rhello\r\n", SL_EH1_BARE_CR),
    BAD("data bare LF", "5\r\nhello\n0\r\n\r\n", SL_EH1_BARE_LF),
    BAD("data too long", "3\r\nhello\r\n", SL_EH1_BAD_CHUNK_DATA),
    BAD("data CR junk", "5\r\nhello\rX", SL_EH1_BAD_CHUNK_DATA),
    BAD("data no CRLF", "5\r\nhello0\r\n\r\n", SL_EH1_BAD_CHUNK_DATA),
    BAD("trailer space before colon", "0\r\nX : y\r\n\r\n", SL_EH1_BAD_TRAILER),
    BAD("trailer obs-fold", "0\r\nX: y\r\n z\r\n\r\n", SL_EH1_BAD_TRAILER),
    BAD("trailer leading space", "0\r\n X: y\r\n\r\n", SL_EH1_BAD_TRAILER),
    BAD("trailer no colon", "0\r\nXY\r\n\r\n", SL_EH1_BAD_TRAILER),
    BAD("trailer empty name", "0\r\n: y\r\n\r\n", SL_EH1_BAD_TRAILER),
    BAD("trailer CTL", "0\r\nX: a\x01\r\n\r\n", SL_EH1_BAD_TRAILER),
    BAD("trailer NUL", "0\r\nX: a\0\r\n\r\n", SL_EH1_BAD_TRAILER),
    BAD("trailer bare LF", "0\r\nX: a\n\r\n", SL_EH1_BARE_LF),
    BAD("final bare LF", "0\r\n\n", SL_EH1_BARE_LF),
    BAD("trailer bare CR", "0\r\nX: a\rb\r\n\r\n", SL_EH1_BARE_CR),
    BAD("final bare CR", "0\r\n\rX", SL_EH1_BARE_CR),
};

static void test_bad_chunks(void **state)
{
    struct result r;
    int failures = 0;
    for (size_t i = 0; i < sizeof(bad_chunks) / sizeof(bad_chunks[0]); i++) {
        const struct bad *b = &bad_chunks[i];
        decode_whole(b->raw, b->len, &r);
        if (r.verdict != b->code || sl_h1_error_status(r.verdict) != 400) {
            print_error("%s: got %d (%s), want %d (%s)\n", b->name, r.verdict, sl_h1_error_reason(r.verdict), b->code,
                        sl_h1_error_reason(b->code));
            failures++;
        }
        check_splits(b->raw, b->len, 0);
    }
    assert_int_equal(failures, 0);
}

static void test_extension_limit(void **state)
{
    static char in[5000];
    struct result r;
    /* "1;" + name: exactly 4096 bytes of line with its CRLF is fine; one more is too long. */
    size_t n = 4096 - 2;
    memcpy(in, "1;", 2);
    memset(in + 2, 'a', n - 2);
    memcpy(in + n, "\r\nx\r\n0\r\n\r\n", 10);
    decode_whole(in, n + 10, &r);
    assert_int_equal(r.verdict, SL_H1_CHUNK_DONE);
    memset(in + 2, 'a', n - 1);
    memcpy(in + n + 1, "\r\nx\r\n0\r\n\r\n", 10);
    decode_whole(in, n + 11, &r);
    assert_int_equal(r.verdict, SL_EH1_BAD_CHUNK_EXTENSION);
    /* Detected as the bytes arrive: no CRLF needed. */
    memset(in + 2, 'a', sizeof(in) - 2);
    decode_whole(in, sizeof(in), &r);
    assert_int_equal(r.verdict, SL_EH1_BAD_CHUNK_EXTENSION);
}

static void test_trailer_limit(void **state)
{
    static const char in[] = "0\r\nA: 12345678\r\nB: 1234\r\n\r\n"; /* lines of 13 and 9 bytes with CRLF */
    struct result r;
    decode_pieces(LIT(in), NULL, 0, 22, &r);
    assert_int_equal(r.verdict, SL_H1_CHUNK_DONE);
    decode_pieces(LIT(in), NULL, 0, 21, &r);
    assert_int_equal(r.verdict, SL_EH1_BAD_TRAILER);
    assert_int_equal(r.ntrailers, sizeof("A: 12345678|") - 1);
    check_splits(LIT(in), 21);
    decode_pieces(LIT(in), NULL, 0, 12, &r);
    assert_int_equal(r.verdict, SL_EH1_BAD_TRAILER);
    /* A partial line already over the budget fails without waiting for its end. */
    decode_pieces(in, sizeof("0\r\nA: 12345678\r") - 1, NULL, 0, 12, &r);
    assert_int_equal(r.verdict, SL_EH1_BAD_TRAILER);
    decode_pieces(in, sizeof("0\r\nA: 12345678") - 1, NULL, 0, 12, &r);
    assert_int_equal(r.verdict, SL_H1_CHUNK_NEED_MORE);
}

static void test_error_is_sticky(void **state)
{
    sl_h1_chunked_t d;
    size_t used;
    sl_str_t out;
    sl_h1_chunked_init(&d);
    assert_int_equal(sl_h1_chunked_decode(&d, "zz\r\n", 4, &used, &out), SL_EH1_BAD_CHUNK_SIZE);
    assert_int_equal(sl_h1_chunked_decode(&d, "5\r\nhello\r\n", 10, &used, &out), SL_EH1_BAD_CHUNK_SIZE);
    assert_int_equal(used, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_simple),
        cmocka_unit_test(test_hex_sizes),
        cmocka_unit_test(test_extensions),
        cmocka_unit_test(test_trailers),
        cmocka_unit_test(test_data_streams),
        cmocka_unit_test(test_stops_at_message_end),
        cmocka_unit_test(test_partial_trailer_not_consumed),
        cmocka_unit_test(test_huge_size_waits),
        cmocka_unit_test(test_every_split),
        cmocka_unit_test(test_bad_chunks),
        cmocka_unit_test(test_extension_limit),
        cmocka_unit_test(test_trailer_limit),
        cmocka_unit_test(test_error_is_sticky),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
