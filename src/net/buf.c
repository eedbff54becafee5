/*
 * The per-worker buffer free list behind every connection's read buffer and the proxy's body
 * buffers. Owned by one worker thread; never shared.
 */
#include "net/buf.h"

#include <stdlib.h>
#include <string.h>

#include "common/bug.h"

void sl_buf_pool_init(sl_buf_pool_t *p, size_t buf_size, size_t max_free)
{
    memset(p, 0, sizeof(*p));
    p->buf_size = buf_size;
#ifdef SLUICE_SANITIZE
    p->max_free = 0;
    (void)max_free;
#else
    p->max_free = max_free;
#endif
}

void sl_buf_pool_dispose(sl_buf_pool_t *p)
{
    while (p->free != NULL) {
        sl_buf_t *b = p->free;
        p->free = b->next_free;
        free(b);
    }
    p->nfree = 0;
}

sl_buf_t *sl_buf_get(sl_buf_pool_t *p)
{
    sl_buf_t *b = p->free;
    if (b != NULL) {
        p->free = b->next_free;
        p->nfree--;
    } else {
        b = sl_xmalloc(sizeof(*b) + p->buf_size);
        b->cap = p->buf_size;
    }
    b->next_free = NULL;
    b->off = b->len = 0;
    return b;
}

void sl_buf_put(sl_buf_pool_t *p, sl_buf_t *b)
{
    if (b == NULL)
        return;
    if (p->nfree >= p->max_free || b->cap != p->buf_size) {
        free(b);
        return;
    }
    b->next_free = p->free;
    p->free = b;
    p->nfree++;
}

void sl_buf_compact(sl_buf_t *b)
{
    if (b->off == 0)
        return;
    size_t n = b->len - b->off;
    if (n)
        memmove(b->data, b->data + b->off, n);
    b->off = 0;
    b->len = n;
}
