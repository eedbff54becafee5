/*
 * Local replies through the exchange's downstream ops: the codec frames them like any other
 * response, so an error answer looks the same on HTTP/1.1 and (later) HTTP/2.
 */
#include "http/reply.h"

#include <stdio.h>
#include <string.h>

static void reply_written(sl_exchange_t *x, int status)
{
    if (status < 0)
        x->down->abort(x);
    else
        x->down->finish(x);
}

void sl_reply(sl_exchange_t *x, int status, sl_str_t content_type, sl_str_t body)
{
    x->status = status;
    if (content_type.len)
        sl_headers_add(&x->arena, &x->resp_headers, SL_STR_LIT("Content-Type"), content_type);
    x->resp_body_kind = SL_BODY_LENGTH;
    x->resp_content_length = body.len;
    if (x->down->send_head(x) != 0) {
        x->down->abort(x);
        return;
    }
    if (body.len == 0 || x->method == SL_METHOD_HEAD) {
        x->down->finish(x);
        return;
    }
    sl_str_t part = sl_arena_str_dup(&x->arena, body);
    int r = x->down->send_body(x, &part, 1, reply_written);
    if (r == 1)
        x->down->finish(x);
    else if (r < 0)
        x->down->abort(x);
}

size_t sl_json_escape(char *out, sl_str_t s)
{
    static const char hex[] = "0123456789abcdef";
    size_t n = 0;
    for (size_t i = 0; i < s.len; i++) {
        unsigned char c = (unsigned char)s.ptr[i];
        if (c == '"' || c == '\\') {
            out[n++] = '\\';
            out[n++] = (char)c;
        } else if (c < 0x20 || c == 0x7f) {
            out[n++] = '\\';
            out[n++] = 'u';
            out[n++] = '0';
            out[n++] = '0';
            out[n++] = hex[c >> 4];
            out[n++] = hex[c & 15];
        } else {
            out[n++] = (char)c;
        }
    }
    return n;
}

bool sl_exchange_is_grpc(const sl_exchange_t *x)
{
    const sl_header_t *ct = sl_headers_find(&x->req_headers, SL_STR_LIT("Content-Type"));
    if (ct == NULL || ct->value.len < 16 ||
        !sl_str_caseeq((sl_str_t){ct->value.ptr, 16}, SL_STR_LIT("application/grpc")))
        return false;
    return ct->value.len == 16 || ct->value.ptr[16] == '+' || ct->value.ptr[16] == ';';
}

/* gRPC's Percent-Encoded (PROTOCOL-HTTP2.md): bytes outside 0x20-0x7E, and '%', as %XX. */
static size_t grpc_percent_encode(char *out, sl_str_t s)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = 0;
    for (size_t i = 0; i < s.len; i++) {
        unsigned char c = (unsigned char)s.ptr[i];
        if (c < 0x20 || c > 0x7e || c == '%') {
            out[n++] = '%';
            out[n++] = hex[c >> 4];
            out[n++] = hex[c & 15];
        } else {
            out[n++] = (char)c;
        }
    }
    return n;
}

/* Trailers-only (a HEADERS frame ending the stream on HTTP/2): a gRPC client reads the status
 * from grpc-status, and would report a 4xx/5xx :status as a bare protocol error. */
static void reply_grpc_error(sl_exchange_t *x, const sl_cause_info_t *info, sl_str_t msg)
{
    char *code = sl_arena_alloc(&x->arena, 4);
    int st = sl_cause_grpc_status(x->cause);
    size_t cl = (size_t)snprintf(code, 4, "%d", st);
    size_t name_len = strlen(info->name);
    char *m = sl_arena_alloc(&x->arena, name_len + 2 + 3 * msg.len);
    memcpy(m, info->name, name_len);
    memcpy(m + name_len, ": ", 2);
    size_t mlen = name_len + 2 + grpc_percent_encode(m + name_len + 2, msg);
    x->status = 200;
    sl_headers_add(&x->arena, &x->resp_headers, SL_STR_LIT("Content-Type"), SL_STR_LIT("application/grpc"));
    sl_headers_add(&x->arena, &x->resp_headers, SL_STR_LIT("grpc-status"), (sl_str_t){code, cl});
    sl_headers_add(&x->arena, &x->resp_headers, SL_STR_LIT("grpc-message"), (sl_str_t){m, mlen});
    sl_headers_add(&x->arena, &x->resp_headers, SL_STR_LIT("Sluice-Error"), sl_str_from_cstr(info->name));
    x->resp_body_kind = SL_BODY_NONE;
    x->resp_content_length = 0;
    if (x->down->send_head(x) != 0) {
        x->down->abort(x);
        return;
    }
    x->down->finish(x);
}

void sl_reply_error(sl_exchange_t *x, enum sl_cause cause, const char *message)
{
    const sl_cause_info_t *info = sl_cause_info(cause);
    x->cause = cause;
    sl_str_t msg = sl_str_from_cstr(message ? message : info->message);
    if (sl_exchange_is_grpc(x)) {
        reply_grpc_error(x, info, msg);
        return;
    }
    size_t cap = 64 + 6 * (msg.len + x->request_id.len) + 64;
    char *body = sl_arena_alloc(&x->arena, cap);
    size_t n = (size_t)snprintf(body, cap, "{\"error\":\"%s\",\"message\":\"", info->name);
    n += sl_json_escape(body + n, msg);
    n += (size_t)snprintf(body + n, cap - n, "\",\"request_id\":\"");
    n += sl_json_escape(body + n, x->request_id);
    n += (size_t)snprintf(body + n, cap - n, "\"}\n");
    sl_headers_add(&x->arena, &x->resp_headers, SL_STR_LIT("Sluice-Error"), sl_str_from_cstr(info->name));
    /* An error never reuses a connection whose request body was not read (RFC 9112 §9.6). */
    sl_reply(x, info->status, SL_STR_LIT("application/json"), (sl_str_t){body, n});
}
