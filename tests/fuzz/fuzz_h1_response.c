/*
 * libFuzzer target for the response-head parser (what a backend sends the upstream client).
 * The first input byte picks "response to HEAD"; the rest is the response. Checks the same
 * contract as the request target: slices inside the input, prefixes of a valid head are
 * incomplete, errors are stable under longer input, and the framing rules of RFC 9112 §6.3.
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

static int parse(const char *buf, size_t len, sl_h1_response_t *resp, const sl_h1_limits_t *lim, bool head)
{
    memset(resp, 0, sizeof(*resp));
    resp->headers = hdrs;
    return sl_h1_parse_response(buf, len, resp, lim, head);
}

static void run(const char *buf, size_t len, const sl_h1_limits_t *lim, bool head)
{
    sl_h1_response_t resp;
    int rc = parse(buf, len, &resp, lim, head);

    if (rc > 0) {
        SL_BUG_ON((size_t)rc > len || (size_t)rc > lim->max_head_bytes);
        SL_BUG_ON(resp.nheaders > lim->max_headers);
        SL_BUG_ON(resp.status < 100 || resp.status > 999);
        SL_BUG_ON(resp.minor_version != 0 && resp.minor_version != 1);
        check_slice(resp.reason, buf, (size_t)rc);
        for (size_t i = 0; i < resp.nheaders; i++) {
            check_slice(resp.headers[i].name, buf, (size_t)rc);
            check_slice(resp.headers[i].value, buf, (size_t)rc);
        }
        int s = resp.status;
        if (head || s < 200 || s == 204 || s == 304)
            SL_BUG_ON(resp.body != SL_H1_BODY_NONE);
        if (resp.body == SL_H1_BODY_CLOSE)
            SL_BUG_ON(resp.keep_alive);
        SL_BUG_ON(parse(buf, (size_t)rc - 1, &resp, lim, head) != SL_EINCOMPLETE);
        if (len / 2 < (size_t)rc)
            SL_BUG_ON(parse(buf, len / 2, &resp, lim, head) != SL_EINCOMPLETE);
    } else if (rc != SL_EINCOMPLETE) {
        SL_BUG_ON(rc < SL_EH1_BAD_REQUEST_LINE || rc >= SL_EH1__LAST);
        int half = parse(buf, len / 2, &resp, lim, head);
        SL_BUG_ON(half != SL_EINCOMPLETE && half != rc);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const sl_h1_limits_t wide = {.max_head_bytes = 8192, .max_uri_bytes = 2048, .max_headers = MAXH};
    static const sl_h1_limits_t tight = {.max_head_bytes = 80, .max_uri_bytes = 16, .max_headers = 3};
    if (size == 0)
        return 0;
    bool head = data[0] & 1;
    run((const char *)data + 1, size - 1, &wide, head);
    run((const char *)data + 1, size - 1, &tight, head);
    return 0;
}
