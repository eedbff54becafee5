/*
 * I/O buffers: fixed-capacity byte buffers recycled through a per-worker free list, so the data
 * path takes and returns buffers without malloc. A buffer has one owner at a time (a connection
 * while it has unparsed or unsent bytes); idle connections hold none. In sanitizer builds the
 * free list is bypassed so ASan sees every buffer's lifetime.
 */
#ifndef SL_NET_BUF_H
#define SL_NET_BUF_H

#include <stddef.h>

typedef struct sl_buf {
    struct sl_buf *next_free;
    size_t cap;
    size_t off; /* first unconsumed byte */
    size_t len; /* end of valid data */
    char data[];
} sl_buf_t;

typedef struct sl_buf_pool {
    sl_buf_t *free;
    size_t nfree;
    size_t max_free;
    size_t buf_size;
} sl_buf_pool_t;

void sl_buf_pool_init(sl_buf_pool_t *p, size_t buf_size, size_t max_free);
void sl_buf_pool_dispose(sl_buf_pool_t *p);

/** Takes an empty buffer of the pool's size (off = len = 0). Never NULL. Owner thread only. */
sl_buf_t *sl_buf_get(sl_buf_pool_t *p);
/** Returns a buffer taken from this pool; NULL is ignored. */
void sl_buf_put(sl_buf_pool_t *p, sl_buf_t *b);

static inline size_t sl_buf_avail(const sl_buf_t *b)
{
    return b->len - b->off;
}

/** Moves unconsumed bytes to the front, making room at the end. */
void sl_buf_compact(sl_buf_t *b);

#endif
