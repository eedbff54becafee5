/*
 * Length-delimited string slices. A slice never owns its bytes: it points into a read buffer,
 * an arena or a config generation, and lives no longer than that owner.
 */
#ifndef SL_COMMON_STR_H
#define SL_COMMON_STR_H

#include <stdbool.h>
#include <stddef.h>
#include <string.h>

typedef struct sl_str {
    const char *ptr;
    size_t len;
} sl_str_t;

#define SL_STR_LIT(s) ((sl_str_t){(s), sizeof(s) - 1})
#define SL_STR_NULL   ((sl_str_t){NULL, 0})
/* printf("%.*s", SL_STR_FMT(s)) */
#define SL_STR_FMT(s) (int)(s).len, (s).ptr

static inline sl_str_t sl_str_from_cstr(const char *s)
{
    return (sl_str_t){s, s ? strlen(s) : 0};
}

static inline bool sl_str_eq(sl_str_t a, sl_str_t b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0);
}

static inline char sl_ascii_lower(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c | 0x20) : c;
}

/** ASCII case-insensitive equality (header names, hosts, tokens). */
static inline bool sl_str_caseeq(sl_str_t a, sl_str_t b)
{
    if (a.len != b.len)
        return false;
    for (size_t i = 0; i < a.len; i++)
        if (sl_ascii_lower(a.ptr[i]) != sl_ascii_lower(b.ptr[i]))
            return false;
    return true;
}

static inline bool sl_str_caseeq_cstr(sl_str_t a, const char *b)
{
    return sl_str_caseeq(a, sl_str_from_cstr(b));
}

static inline bool sl_str_has_prefix(sl_str_t s, sl_str_t prefix)
{
    return s.len >= prefix.len && memcmp(s.ptr, prefix.ptr, prefix.len) == 0;
}

/** Copies `n` bytes to `p` and returns the end: for serialising heads without printf.
 *  `s` may be NULL when `n` is 0 (empty slices). The caller sized the buffer. */
static inline char *sl_put(char *p, const char *s, size_t n)
{
    if (n)
        memcpy(p, s, n);
    return p + n;
}

/** Writes `v` in decimal (at most 20 bytes) and returns the end. */
static inline char *sl_put_u64(char *p, unsigned long long v)
{
    char tmp[20];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        *p++ = tmp[--n];
    return p;
}

/** The value of a hex digit (either case), or -1. */
static inline int sl_hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/** Parses an unsigned decimal with no sign, no spaces, no overflow; false on anything else. */
bool sl_str_to_u64(sl_str_t s, unsigned long long *out);

/** Constant-time equality for secrets: the time depends on the lengths only. */
bool sl_str_secret_eq(sl_str_t a, sl_str_t b);

#endif
