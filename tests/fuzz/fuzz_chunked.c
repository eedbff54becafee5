/*
 * libFuzzer target for the chunked decoder. The first input byte picks the trailer budget; the
 * rest is a chunked body. Invariant: decoding it in as few calls as possible and decoding it as
 * it trickles in one byte at a time (unconsumed bytes kept, as a connection does) give the same
 * data bytes, the same trailers, the same verdict and the same consumed length.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/bug.h"
#include "common/error.h"
#include "http1/parser.h"

struct result {
    char *data, *trailers;
    size_t ndata, ntrailers;
    int verdict;
    size_t consumed;
};

static void add(char *dst, size_t *n, sl_str_t s, size_t cap)
{
    SL_BUG_ON(*n + s.len + 1 > cap);
    memcpy(dst + *n, s.ptr, s.len);
    *n += s.len;
}

/* Feeds in[0..len) in pieces of `step` bytes (0: all at once). */
static void decode(const char *in, size_t len, size_t step, size_t max_trailer, struct result *r)
{
    sl_h1_chunked_t d;
    size_t pos = 0, upto = 0;
    sl_h1_chunked_init(&d);
    d.max_trailer_bytes = max_trailer;
    r->ndata = r->ntrailers = 0;
    r->verdict = SL_H1_CHUNK_NEED_MORE;
    do {
        upto = step == 0 || len - upto < step ? len : upto + step;
        for (;;) {
            size_t used;
            sl_str_t out;
            int rc = sl_h1_chunked_decode(&d, in + pos, upto - pos, &used, &out);
            SL_BUG_ON(used > upto - pos);
            r->verdict = rc;
            if (rc == SL_H1_CHUNK_DATA) {
                SL_BUG_ON(out.len == 0 || out.ptr < in + pos || out.ptr + out.len > in + pos + used);
                add(r->data, &r->ndata, out, len + 1);
            } else if (rc == SL_H1_CHUNK_TRAILER) {
                SL_BUG_ON(out.ptr < in + pos || out.ptr + out.len + 2 != in + pos + used);
                add(r->trailers, &r->ntrailers, out, 2 * len + 2);
                r->trailers[r->ntrailers++] = '\n';
            }
            pos += used;
            if (rc < 0 || rc == SL_H1_CHUNK_DONE) {
                SL_BUG_ON(rc < 0 && (rc < SL_EH1_BAD_REQUEST_LINE || rc >= SL_EH1__LAST));
                r->consumed = pos;
                return;
            }
            if (rc == SL_H1_CHUNK_NEED_MORE)
                break;
        }
    } while (upto < len);
    r->consumed = pos;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    size_t max_trailer = data[0] < 128 ? 0 : (size_t)(data[0] & 0x7f);
    const char *in = (const char *)data + 1;
    size_t len = size - 1;
    struct result a, b;
    a.data = malloc(len + 1);
    b.data = malloc(len + 1);
    a.trailers = malloc(2 * len + 2);
    b.trailers = malloc(2 * len + 2);

    decode(in, len, 0, max_trailer, &a);
    decode(in, len, 1, max_trailer, &b);
    SL_BUG_ON(a.verdict != b.verdict);
    SL_BUG_ON(a.consumed != b.consumed);
    SL_BUG_ON(a.ndata != b.ndata || memcmp(a.data, b.data, a.ndata) != 0);
    SL_BUG_ON(a.ntrailers != b.ntrailers || memcmp(a.trailers, b.trailers, a.ntrailers) != 0);
    /* A third split, odd-sized, catches state carried wrongly across calls at other offsets. */
    decode(in, len, 7, max_trailer, &b);
    SL_BUG_ON(a.verdict != b.verdict || a.consumed != b.consumed || a.ndata != b.ndata);

    free(a.data);
    free(b.data);
    free(a.trailers);
    free(b.trailers);
    return 0;
}
