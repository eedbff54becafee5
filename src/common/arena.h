/*
 * Arena: bump allocation in chunks, freed or reset as a unit, with cleanup callbacks for
 * non-memory resources (nginx's pool cleanups). Used for config generations (freed once) and
 * per-exchange data (reset between keep-alive requests; the first chunk is kept so a steady
 * request stream allocates nothing). Not thread-safe: one owner at a time.
 */
#ifndef SL_COMMON_ARENA_H
#define SL_COMMON_ARENA_H

#include <stddef.h>

#include "common/str.h"

typedef struct sl_arena_chunk sl_arena_chunk_t;
typedef struct sl_arena_cleanup sl_arena_cleanup_t;

typedef struct sl_arena {
    sl_arena_chunk_t *chunks; /* newest first; the last one is the kept first chunk */
    char *cur, *end;
    size_t chunk_size;
    sl_arena_cleanup_t *cleanups;
} sl_arena_t;

/** Prepares an embedded arena; `chunk_size` is the usual chunk (large requests get their own). */
void sl_arena_init(sl_arena_t *a, size_t chunk_size);

/** Runs cleanups (newest first) and frees every chunk. The arena may be re-initialised after. */
void sl_arena_dispose(sl_arena_t *a);

/** Runs cleanups, frees all chunks but the first, and rewinds. */
void sl_arena_reset(sl_arena_t *a);

/** Returns `size` bytes aligned to 16; never NULL (aborts on OOM). Valid until reset/dispose. */
void *sl_arena_alloc(sl_arena_t *a, size_t size);

/** Copies `len` bytes and a NUL into the arena. */
char *sl_arena_strndup(sl_arena_t *a, const char *s, size_t len);

static inline sl_str_t sl_arena_str_dup(sl_arena_t *a, sl_str_t s)
{
    return (sl_str_t){sl_arena_strndup(a, s.ptr, s.len), s.len};
}

/** Registers `fn(data)` to run at the next reset or dispose, newest first. */
void sl_arena_on_dispose(sl_arena_t *a, void (*fn)(void *data), void *data);

/** Bytes currently allocated from the heap by this arena (for memory bounds and tests). */
size_t sl_arena_footprint(const sl_arena_t *a);

#endif
