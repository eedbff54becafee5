/*
 * libFuzzer target for the request-head parser, and the chunked decoder behind it. Besides "no
 * crash, no out-of-bounds read", it checks the parser's contract: slices point into the input,
 * a successful head is "incomplete" on any shorter prefix, and an error found at some byte is
 * the same error for every prefix that contains that byte.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "common/bug.h"
#include "common/error.h"
#include "http1/parser.h"

#define MAXH 64
static sl_header_t hdrs[MAXH];

static void check_slice(sl_str_t s, const char *buf, size_t len)
{
    SL_BUG_ON(s.len > 0 && (s.ptr < buf || s.ptr + s.len > buf + len));
}

static int parse(const char *buf, size_t len, sl_h1_request_t *req, const sl_h1_limits_t *lim)
{
    memset(req, 0, sizeof(*req));
    req->headers = hdrs;
    return sl_h1_parse_request(buf, len, req, lim);
}

static void drain_chunked(const char *buf, size_t len)
{
    sl_h1_chunked_t d;
    size_t pos = 0;
    sl_h1_chunked_init(&d);
    for (;;) {
        size_t used;
        sl_str_t out;
        int rc = sl_h1_chunked_decode(&d, buf + pos, len - pos, &used, &out);
        SL_BUG_ON(used > len - pos);
        if (rc == SL_H1_CHUNK_DATA || rc == SL_H1_CHUNK_TRAILER)
            check_slice(out, buf + pos, used);
        pos += used;
        if (rc < 0 || rc == SL_H1_CHUNK_DONE || rc == SL_H1_CHUNK_NEED_MORE)
            return;
    }
}

static void run(const char *buf, size_t len, const sl_h1_limits_t *lim)
{
    sl_h1_request_t req;
    int rc = parse(buf, len, &req, lim);

    if (rc > 0) {
        SL_BUG_ON((size_t)rc > len || (size_t)rc > lim->max_head_bytes);
        SL_BUG_ON(req.nheaders > lim->max_headers);
        SL_BUG_ON(req.minor_version != 0 && req.minor_version != 1);
        SL_BUG_ON(req.target.len == 0 || req.target.len > lim->max_uri_bytes);
        check_slice(req.method, buf, (size_t)rc);
        check_slice(req.target, buf, (size_t)rc);
        check_slice(req.query, buf, (size_t)rc);
        check_slice(req.authority, buf, (size_t)rc);
        check_slice(req.host, buf, (size_t)rc);
        /* The path is a slice of the target, or the static "/" of an absolute-form target
         * without a path. */
        if (!(req.path.len == 1 && req.path.ptr[0] == '/'))
            check_slice(req.path, req.target.ptr, req.target.len);
        for (size_t i = 0; i < req.nheaders; i++) {
            check_slice(req.headers[i].name, buf, (size_t)rc);
            check_slice(req.headers[i].value, buf, (size_t)rc);
            SL_BUG_ON(req.headers[i].name.len == 0);
        }
        SL_BUG_ON(req.body == SL_H1_BODY_CLOSE);
        SL_BUG_ON(parse(buf, (size_t)rc - 1, &req, lim) != SL_EINCOMPLETE);
        if (len / 2 < (size_t)rc)
            SL_BUG_ON(parse(buf, len / 2, &req, lim) != SL_EINCOMPLETE);
        if (parse(buf, len, &req, lim) == rc && req.body == SL_H1_BODY_CHUNKED)
            drain_chunked(buf + rc, len - (size_t)rc);
    } else if (rc != SL_EINCOMPLETE) {
        SL_BUG_ON(rc < SL_EH1_BAD_REQUEST_LINE || rc >= SL_EH1__LAST);
        SL_BUG_ON(sl_h1_error_reason(rc) == NULL);
        int half = parse(buf, len / 2, &req, lim);
        SL_BUG_ON(half != SL_EINCOMPLETE && half != rc);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const sl_h1_limits_t wide = {.max_head_bytes = 8192, .max_uri_bytes = 2048, .max_headers = MAXH};
    static const sl_h1_limits_t tight = {.max_head_bytes = 96, .max_uri_bytes = 24, .max_headers = 3};
    run((const char *)data, size, &wide);
    run((const char *)data, size, &tight);
    return 0;
}
