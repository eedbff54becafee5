/*
 * Writing to a libuv stream the cheap way: try the write at once (most responses and request
 * heads fit in the socket buffer, so there is no request object, no callback and no extra loop
 * turn), and queue only the remainder through uv_write. Owner thread only.
 */
#ifndef SL_NET_STREAM_H
#define SL_NET_STREAM_H

#include <uv.h>

/**
 * Writes iov[0..n). Returns 1 when everything went out now (cb will not run), 0 when the rest
 * was queued with `req` (cb runs once it is written; iov's bytes must stay valid until then;
 * `iov` itself may be modified), or a negative libuv error (cb will not run).
 */
int sl_stream_write(uv_stream_t *s, uv_write_t *req, uv_buf_t *iov, unsigned n, uv_write_cb cb);

#endif
