/*
 * Helpers on slices that are too big to inline: strict number parsing (framing depends on it)
 * and constant-time comparison of secrets.
 */
#include "common/str.h"

#include <limits.h>

bool sl_str_to_u64(sl_str_t s, unsigned long long *out)
{
    unsigned long long v = 0;
    if (s.len == 0 || s.len > 20)
        return false;
    for (size_t i = 0; i < s.len; i++) {
        unsigned d = (unsigned char)s.ptr[i] - '0';
        if (d > 9)
            return false;
        if (v > (ULLONG_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *out = v;
    return true;
}

bool sl_str_secret_eq(sl_str_t a, sl_str_t b)
{
    /* Compare over the longer length so a prefix match does not finish early. */
    size_t n = a.len > b.len ? a.len : b.len;
    unsigned char diff = (unsigned char)(a.len != b.len);
    for (size_t i = 0; i < n; i++) {
        unsigned char x = i < a.len ? (unsigned char)a.ptr[i] : 0;
        unsigned char y = i < b.len ? (unsigned char)b.ptr[i] : 0;
        diff |= x ^ y;
    }
    return diff == 0;
}
