/*
 * Invariant checks and allocation that cannot fail. SL_BUG_ON is for broken invariants only,
 * never for validating input: input errors are returned as codes. Allocation failure of internal
 * (config-bounded) memory aborts, like h2o's h2o_mem_alloc and redis' zmalloc.
 */
#ifndef SL_COMMON_BUG_H
#define SL_COMMON_BUG_H

#include <stddef.h>

/** Abort with file and line; never returns. */
_Noreturn void sl_bug(const char *file, int line, const char *cond);

#define SL_BUG_ON(cond)                                                                                                \
    do {                                                                                                               \
        if (__builtin_expect(!!(cond), 0))                                                                             \
            sl_bug(__FILE__, __LINE__, #cond);                                                                         \
    } while (0)

#ifdef NDEBUG
#define SL_DEBUG_BUG_ON(cond) ((void)0)
#else
#define SL_DEBUG_BUG_ON(cond) SL_BUG_ON(cond)
#endif

#define SL_ARRAY_SIZE(a)                   (sizeof(a) / sizeof((a)[0]))
#define SL_MIN(a, b)                       ((a) < (b) ? (a) : (b))
#define SL_MAX(a, b)                       ((a) > (b) ? (a) : (b))
#define SL_CONTAINER_OF(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

/** malloc/calloc/realloc/strndup that abort on failure; free with free(). */
void *sl_xmalloc(size_t size);
void *sl_xcalloc(size_t n, size_t size);
void *sl_xrealloc(void *p, size_t size);
char *sl_xstrndup(const char *s, size_t len);

#endif
