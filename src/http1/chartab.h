/*
 * Byte classes shared by the HTTP/1 head parser and the chunked decoder: one 256-entry table,
 * so every "is this byte allowed here" question on the hot path is a single load and mask.
 * Private to src/http1/ (the table is defined in parser.c).
 */
#ifndef SL_HTTP1_CHARTAB_H
#define SL_HTTP1_CHARTAB_H

#include <stdint.h>

#define SL_H1_C_TOKEN  0x01 /* tchar (RFC 9110 §5.6.2) */
#define SL_H1_C_VALUE  0x02 /* field-vchar, obs-text, SP, HTAB (RFC 9110 §5.5) */
#define SL_H1_C_TARGET 0x04 /* VCHAR except '#': a fragment is never sent (RFC 9112 §3.2) */
#define SL_H1_C_HEX    0x08 /* HEXDIG */
#define SL_H1_C_QDTEXT 0x10 /* qdtext of a quoted-string (RFC 9110 §5.6.4) */
#define SL_H1_C_HOST   0x20 /* reg-name bytes we accept: unreserved and '%' (see parser.c) */

extern const uint8_t sl__h1_chartab[256];

#define SL_H1_IS(c, cls) (sl__h1_chartab[(unsigned char)(c)] & (cls))

#endif
