/*
 * A header field as two slices. In a parsed request they point into the connection's read
 * buffer (zero-copy); headers added by the gateway point into the exchange arena or static text.
 */
#ifndef SL_HTTP_HEADER_H
#define SL_HTTP_HEADER_H

#include "common/str.h"

typedef struct sl_header {
    sl_str_t name;
    sl_str_t value; /* without leading/trailing whitespace (RFC 9110 §5.5) */
} sl_header_t;

#endif
