/*
 * Chunked bump allocator with cleanups. Request data lives here so the data path frees nothing
 * per request: a reset rewinds the first chunk and drops the rest.
 */
#include "common/arena.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/bug.h"

struct sl_arena_chunk {
    sl_arena_chunk_t *next;
    size_t size;
    _Alignas(16) char data[];
};

struct sl_arena_cleanup {
    sl_arena_cleanup_t *next;
    void (*fn)(void *);
    void *data;
};

void sl_arena_init(sl_arena_t *a, size_t chunk_size)
{
    memset(a, 0, sizeof(*a));
    a->chunk_size = chunk_size < 256 ? 256 : chunk_size;
}

static void run_cleanups(sl_arena_t *a)
{
    while (a->cleanups != NULL) {
        sl_arena_cleanup_t *c = a->cleanups;
        a->cleanups = c->next;
        c->fn(c->data);
    }
}

void sl_arena_dispose(sl_arena_t *a)
{
    run_cleanups(a);
    while (a->chunks != NULL) {
        sl_arena_chunk_t *c = a->chunks;
        a->chunks = c->next;
        free(c);
    }
    a->cur = a->end = NULL;
}

void sl_arena_reset(sl_arena_t *a)
{
    run_cleanups(a);
    if (a->chunks == NULL)
        return;
    while (a->chunks->next != NULL) {
        sl_arena_chunk_t *c = a->chunks;
        a->chunks = c->next;
        free(c);
    }
    a->cur = a->chunks->data;
    a->end = a->chunks->data + a->chunks->size;
}

static void *alloc_chunk(sl_arena_t *a, size_t size)
{
    size_t csize = size > a->chunk_size ? size : a->chunk_size;
    sl_arena_chunk_t *c = sl_xmalloc(sizeof(*c) + csize);
    c->size = csize;
    if (a->chunks == NULL || size <= a->chunk_size) {
        c->next = a->chunks;
        a->chunks = c;
        a->cur = c->data + size;
        a->end = c->data + csize;
    } else {
        /* An oversized block goes behind the current chunk so its free space stays usable. */
        c->next = a->chunks->next;
        a->chunks->next = c;
    }
    return c->data;
}

void *sl_arena_alloc(sl_arena_t *a, size_t size)
{
    size = (size + 15) & ~(size_t)15;
    if (size == 0)
        size = 16;
    if ((size_t)(a->end - a->cur) >= size && a->cur != NULL) {
        void *p = a->cur;
        a->cur += size;
        return p;
    }
    return alloc_chunk(a, size);
}

char *sl_arena_strndup(sl_arena_t *a, const char *s, size_t len)
{
    char *p = sl_arena_alloc(a, len + 1);
    if (len)
        memcpy(p, s, len);
    p[len] = '\0';
    return p;
}

void sl_arena_on_dispose(sl_arena_t *a, void (*fn)(void *), void *data)
{
    sl_arena_cleanup_t *c = sl_arena_alloc(a, sizeof(*c));
    c->fn = fn;
    c->data = data;
    c->next = a->cleanups;
    a->cleanups = c;
}

size_t sl_arena_footprint(const sl_arena_t *a)
{
    size_t n = 0;
    for (const sl_arena_chunk_t *c = a->chunks; c != NULL; c = c->next)
        n += sizeof(*c) + c->size;
    return n;
}
