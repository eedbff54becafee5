/*
 * The output side every nghttp2 session of the gateway shares (h2.h): what mem_send produces,
 * gathered into one buffer so many frames leave in one write.
 */
#include <string.h>

#include <nghttp2/nghttp2.h>

#include "http2/h2.h"

int sl_h2_output_gather(struct nghttp2_session *ng, sl_buf_t *b, uv_buf_t iov[2], unsigned *n)
{
    b->off = b->len = 0;
    *n = 0;
    for (;;) {
        const uint8_t *data;
        ssize_t len = nghttp2_session_mem_send(ng, &data);
        if (len < 0)
            return (int)len;
        if (len == 0)
            break;
        if ((size_t)len <= b->cap - b->len) {
            memcpy(b->data + b->len, data, (size_t)len);
            b->len += (size_t)len;
            continue;
        }
        /* Too big to gather (a large DATA frame): it goes out as a second buffer, valid until
         * the next mem_send, which waits for this write. */
        iov[(*n)++] = uv_buf_init(b->data, (unsigned)b->len);
        iov[(*n)++] = uv_buf_init((char *)data, (unsigned)len);
        return 0;
    }
    if (b->len > 0)
        iov[(*n)++] = uv_buf_init(b->data, (unsigned)b->len);
    return 0;
}
