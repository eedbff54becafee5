/*
 * Try-then-queue writes for the data path: one writev syscall in the common case, a uv_write
 * for whatever the socket buffer did not take.
 */
#include "net/stream.h"

int sl_stream_write(uv_stream_t *s, uv_write_t *req, uv_buf_t *iov, unsigned n, uv_write_cb cb)
{
    size_t total = 0;
    for (unsigned i = 0; i < n; i++)
        total += iov[i].len;
    int w = uv_try_write(s, iov, n);
    if (w == UV_EAGAIN)
        w = 0;
    if (w < 0)
        return w;
    if ((size_t)w == total)
        return 1;
    size_t skip = (size_t)w;
    unsigned i = 0;
    while (skip >= iov[i].len) {
        skip -= iov[i].len;
        i++;
    }
    iov[i].base += skip;
    iov[i].len -= skip;
    int err = uv_write(req, s, iov + i, n - i, cb);
    return err ? err : 0;
}
