/*
 * Method token ↔ enum. Method names are case-sensitive (RFC 9110 §9.1), so "get" is OTHER.
 */
#include "http/method.h"

static const char *const names[SL_METHOD__COUNT] = {"",       "GET",   "HEAD",    "POST",    "PUT",
                                                    "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"};

enum sl_method sl_method_from_str(sl_str_t t)
{
    switch (t.len) {
    case 3:
        if (memcmp(t.ptr, "GET", 3) == 0)
            return SL_METHOD_GET;
        if (memcmp(t.ptr, "PUT", 3) == 0)
            return SL_METHOD_PUT;
        break;
    case 4:
        if (memcmp(t.ptr, "POST", 4) == 0)
            return SL_METHOD_POST;
        if (memcmp(t.ptr, "HEAD", 4) == 0)
            return SL_METHOD_HEAD;
        break;
    case 5:
        if (memcmp(t.ptr, "PATCH", 5) == 0)
            return SL_METHOD_PATCH;
        if (memcmp(t.ptr, "TRACE", 5) == 0)
            return SL_METHOD_TRACE;
        break;
    case 6:
        if (memcmp(t.ptr, "DELETE", 6) == 0)
            return SL_METHOD_DELETE;
        break;
    case 7:
        if (memcmp(t.ptr, "OPTIONS", 7) == 0)
            return SL_METHOD_OPTIONS;
        if (memcmp(t.ptr, "CONNECT", 7) == 0)
            return SL_METHOD_CONNECT;
        break;
    }
    return SL_METHOD_OTHER;
}

const char *sl_method_name(enum sl_method m)
{
    return (unsigned)m < SL_METHOD__COUNT ? names[m] : "";
}
