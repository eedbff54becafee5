/*
 * The only place that turns a broken invariant or an exhausted heap into process death, with a
 * line on stderr that says where. Everything else reports errors as return codes.
 */
#include "common/bug.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void sl_bug(const char *file, int line, const char *cond)
{
    fprintf(stderr, "sluice: BUG at %s:%d: %s\n", file, line, cond);
    abort();
}

static _Noreturn void out_of_memory(size_t size)
{
    fprintf(stderr, "sluice: out of memory allocating %zu bytes\n", size);
    abort();
}

void *sl_xmalloc(size_t size)
{
    void *p = malloc(size ? size : 1);
    if (p == NULL)
        out_of_memory(size);
    return p;
}

void *sl_xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (p == NULL)
        out_of_memory(n * size);
    return p;
}

void *sl_xrealloc(void *p, size_t size)
{
    void *q = realloc(p, size ? size : 1);
    if (q == NULL)
        out_of_memory(size);
    return q;
}

char *sl_xstrndup(const char *s, size_t len)
{
    char *p = sl_xmalloc(len + 1);
    memcpy(p, s, len);
    p[len] = '\0';
    return p;
}
