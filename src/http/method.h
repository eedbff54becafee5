/*
 * Request methods as a small enum, so routes can match them as a bit set and the hot path
 * compares integers. Extension methods are SL_METHOD_OTHER and keep their token.
 */
#ifndef SL_HTTP_METHOD_H
#define SL_HTTP_METHOD_H

#include "common/str.h"

enum sl_method {
    SL_METHOD_OTHER = 0,
    SL_METHOD_GET,
    SL_METHOD_HEAD,
    SL_METHOD_POST,
    SL_METHOD_PUT,
    SL_METHOD_DELETE,
    SL_METHOD_PATCH,
    SL_METHOD_OPTIONS,
    SL_METHOD_CONNECT,
    SL_METHOD_TRACE,
    SL_METHOD__COUNT,
};
#define SL_METHOD_BIT(m) (1u << (m))

/** Maps a method token to enum sl_method (case-sensitive, RFC 9110 §9.1); OTHER if unknown. */
enum sl_method sl_method_from_str(sl_str_t token);
/** "GET"...; "" for OTHER. */
const char *sl_method_name(enum sl_method m);

#endif
