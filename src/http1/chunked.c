/*
 * The chunked transfer coding decoder (RFC 9112 §7.1). The server side runs it over request
 * bodies and the upstream client side over response bodies, after the head parser said
 * SL_H1_BODY_CHUNKED. It is an incremental state machine that hands out data slices as soon as
 * they arrive, so a body streams through without being buffered; anything in the framing that
 * two hops could read differently (sizes, extensions, line ends, trailers) is an error.
 */
#include "http1/parser.h"

#include "common/error.h"
#include "http1/chartab.h"

#define IS SL_H1_IS

/* 16 hex digits hold any uint64_t; a longer size, even with leading zeros, is rejected so no
 * hop can wrap it around (RFC 9112 §7.1: "anticipate ... integer conversion overflows"). */
#define MAX_SIZE_DIGITS 16
/* The size line with its extensions (RFC 9112 §7.1.1 lets a server limit them). */
#define MAX_SIZE_LINE       4096
#define DEFAULT_MAX_TRAILER 8192

/* States. The size line is parsed byte by byte (and consumed), so no line is ever buffered;
 * a trailer line is returned whole, so it is consumed only once its CRLF is in. A negative
 * state is a sticky error. */
enum {
    ST_SIZE = 0,        /* hex digits; line_len counts them */
    ST_EXT_SEMI_WS,     /* BWS, then ";" must come */
    ST_EXT_NAME_WS,     /* after ";": BWS, then a chunk-ext-name */
    ST_EXT_NAME,        /* in chunk-ext-name */
    ST_EXT_NAME_END_WS, /* BWS after a name: "=", ";" must come */
    ST_EXT_VAL_WS,      /* after "=": BWS, then a token or quoted-string */
    ST_EXT_VAL_TOKEN,   /* in a token value */
    ST_EXT_VAL_QUOTED,  /* in a quoted-string value */
    ST_EXT_VAL_QPAIR,   /* after a backslash in a quoted-string */
    ST_EXT_VAL_END,     /* after the closing quote */
    ST_SIZE_LF,         /* CR seen, LF must come */
    ST_DATA,            /* `remaining` bytes of data to hand out */
    ST_DATA_CR,         /* data done, CRLF must come */
    ST_DATA_LF,
    ST_TRAILER, /* at the start of a trailer line or of the final CRLF */
    ST_DONE,
};

void sl_h1_chunked_init(sl_h1_chunked_t *d)
{
    memset(d, 0, sizeof(*d));
}

static inline unsigned hexval(unsigned char c)
{
    return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10;
}

/* What may follow a complete size, extension name or value: BWS, ";" or the line's CR. */
static inline int after_item(sl_h1_chunked_t *d, unsigned char c, int bad, int ws_state)
{
    switch (c) {
    case ' ':
    case '\t':
        d->state = ws_state;
        return 0;
    case ';':
        d->state = ST_EXT_NAME_WS;
        return 0;
    case '\r':
        d->state = ST_SIZE_LF;
        return 0;
    default:
        return bad;
    }
}

/*
 * One byte of "chunk-size [ chunk-ext ] CRLF" (RFC 9112 §7.1, §7.1.1):
 *   chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
 * followed exactly: no whitespace before the size or before the CRLF, no "0x", no sign.
 */
static int size_line_byte(sl_h1_chunked_t *d, unsigned char c)
{
    if (++d->line_len > MAX_SIZE_LINE)
        return SL_EH1_BAD_CHUNK_EXTENSION;
    if (c == '\n' && d->state != ST_SIZE_LF)
        return SL_EH1_BARE_LF;

    switch (d->state) {
    case ST_SIZE:
        if (IS(c, SL_H1_C_HEX)) {
            if (d->line_len > MAX_SIZE_DIGITS)
                return SL_EH1_BAD_CHUNK_SIZE;
            d->remaining = d->remaining << 4 | hexval(c);
            return 0;
        }
        if (d->line_len == 1)
            return SL_EH1_BAD_CHUNK_SIZE;
        return after_item(d, c, SL_EH1_BAD_CHUNK_SIZE, ST_EXT_SEMI_WS);
    case ST_EXT_SEMI_WS:
        if (c == ' ' || c == '\t')
            return 0;
        if (c == ';') {
            d->state = ST_EXT_NAME_WS;
            return 0;
        }
        return SL_EH1_BAD_CHUNK_EXTENSION;
    case ST_EXT_NAME_WS:
        if (c == ' ' || c == '\t')
            return 0;
        if (IS(c, SL_H1_C_TOKEN)) {
            d->state = ST_EXT_NAME;
            return 0;
        }
        return SL_EH1_BAD_CHUNK_EXTENSION;
    case ST_EXT_NAME:
        if (IS(c, SL_H1_C_TOKEN))
            return 0;
        if (c == '=') {
            d->state = ST_EXT_VAL_WS;
            return 0;
        }
        return after_item(d, c, SL_EH1_BAD_CHUNK_EXTENSION, ST_EXT_NAME_END_WS);
    case ST_EXT_NAME_END_WS:
        if (c == ' ' || c == '\t')
            return 0;
        if (c == '=') {
            d->state = ST_EXT_VAL_WS;
            return 0;
        }
        if (c == ';') {
            d->state = ST_EXT_NAME_WS;
            return 0;
        }
        return SL_EH1_BAD_CHUNK_EXTENSION;
    case ST_EXT_VAL_WS:
        if (c == ' ' || c == '\t')
            return 0;
        if (IS(c, SL_H1_C_TOKEN)) {
            d->state = ST_EXT_VAL_TOKEN;
            return 0;
        }
        if (c == '"') {
            d->state = ST_EXT_VAL_QUOTED;
            return 0;
        }
        return SL_EH1_BAD_CHUNK_EXTENSION;
    case ST_EXT_VAL_TOKEN:
        if (IS(c, SL_H1_C_TOKEN))
            return 0;
        return after_item(d, c, SL_EH1_BAD_CHUNK_EXTENSION, ST_EXT_SEMI_WS);
    case ST_EXT_VAL_QUOTED:
        if (c == '"')
            d->state = ST_EXT_VAL_END;
        else if (c == '\\')
            d->state = ST_EXT_VAL_QPAIR;
        else if (!IS(c, SL_H1_C_QDTEXT))
            return SL_EH1_BAD_CHUNK_EXTENSION;
        return 0;
    case ST_EXT_VAL_QPAIR:
        /* quoted-pair = "\" ( HTAB / SP / VCHAR / obs-text ) (RFC 9110 §5.6.4) */
        if (!IS(c, SL_H1_C_VALUE))
            return SL_EH1_BAD_CHUNK_EXTENSION;
        d->state = ST_EXT_VAL_QUOTED;
        return 0;
    case ST_EXT_VAL_END:
        return after_item(d, c, SL_EH1_BAD_CHUNK_EXTENSION, ST_EXT_SEMI_WS);
    case ST_SIZE_LF:
        /* RFC 9112 §2.2: a CR is only ever half of a CRLF. */
        if (c != '\n')
            return SL_EH1_BARE_CR;
        d->line_len = 0;
        if (d->remaining == 0) {
            d->state = ST_TRAILER;
            d->trailer_bytes = 0;
        } else {
            d->state = ST_DATA;
        }
        return 0;
    default:
        return SL_EH1_BAD_CHUNK_SIZE;
    }
}

/* A trailer scan stopped at q (< lim). A CR as the last byte we may read needs one more. */
#define STOP_LINE_END  1
#define STOP_NEED_MORE 2
static inline int trailer_stop(const char *q, const char *lim)
{
    if (*q == '\n')
        return SL_EH1_BARE_LF;
    if (*q != '\r')
        return SL_EH1_BAD_TRAILER;
    if (q + 1 == lim)
        return STOP_NEED_MORE;
    /* RFC 9112 §2.2: a CR is only ever half of a CRLF. */
    return q[1] == '\n' ? STOP_LINE_END : SL_EH1_BARE_CR;
}

/*
 * At the start of a line of the trailer section (RFC 9112 §7.1.2): either the final CRLF, or a
 * field line that must be one whole, valid "name: value" within the trailer budget. Returns
 * TRAILER or DONE with *next past the line, NEED_MORE (nothing consumed), or an error.
 */
static int trailer_line(sl_h1_chunked_t *d, const char *p, const char *end, const char **next, sl_str_t *out)
{
    size_t max = d->max_trailer_bytes ? d->max_trailer_bytes : DEFAULT_MAX_TRAILER;
    size_t room = max > d->trailer_bytes ? max - d->trailer_bytes : 0;
    /* The line with its CRLF must fit in `room`, so nothing at or past `lim` is looked at. */
    const char *lim = (size_t)(end - p) < room ? end : p + room, *q = p;
    int rc;

    if (*p == '\r' || *p == '\n') {
        rc = trailer_stop(p, end);
        if (rc == STOP_NEED_MORE)
            return SL_H1_CHUNK_NEED_MORE;
        if (rc != STOP_LINE_END)
            return rc;
        *next = p + 2;
        return SL_H1_CHUNK_DONE;
    }

    /* Field lines are validated like header fields (RFC 9110 §6.5, §5.1): a token name right
     * before the colon, no obs-fold (a line starting with whitespace, RFC 9112 §5.2), no CTL. */
    while (q < lim && IS(*q, SL_H1_C_TOKEN))
        q++;
    if (q == lim)
        goto out_of_bytes;
    if (*q != ':' || q == p) {
        rc = trailer_stop(q, lim);
        if (rc == STOP_NEED_MORE)
            goto out_of_bytes;
        return rc == STOP_LINE_END ? SL_EH1_BAD_TRAILER : rc;
    }
    q++;
    while (q < lim && IS(*q, SL_H1_C_VALUE))
        q++;
    if (q == lim)
        goto out_of_bytes;
    rc = trailer_stop(q, lim);
    if (rc == STOP_NEED_MORE)
        goto out_of_bytes;
    if (rc != STOP_LINE_END)
        return rc;
    *out = (sl_str_t){p, (size_t)(q - p)};
    *next = q + 2;
    d->trailer_bytes += (size_t)(q + 2 - p);
    return SL_H1_CHUNK_TRAILER;

out_of_bytes:
    /* Wait for the rest of the line, unless the budget is what ran out. */
    return (size_t)(end - p) < room ? SL_H1_CHUNK_NEED_MORE : SL_EH1_BAD_TRAILER;
}

int sl_h1_chunked_decode(sl_h1_chunked_t *d, const char *buf, size_t len, size_t *consumed, sl_str_t *out)
{
    const char *p = buf, *end = buf + len, *next;
    int rc = SL_H1_CHUNK_NEED_MORE;

    *out = (sl_str_t){buf, 0};
    if (d->state < 0 || d->state == ST_DONE) {
        *consumed = 0;
        return d->state < 0 ? d->state : SL_H1_CHUNK_DONE;
    }
    while (p < end) {
        switch (d->state) {
        case ST_DATA: {
            size_t n = (size_t)(end - p) < d->remaining ? (size_t)(end - p) : (size_t)d->remaining;
            *out = (sl_str_t){p, n};
            p += n;
            d->remaining -= n;
            if (d->remaining == 0)
                d->state = ST_DATA_CR;
            *consumed = (size_t)(p - buf);
            return SL_H1_CHUNK_DATA;
        }
        case ST_DATA_CR:
            /* RFC 9112 §7.1: chunk-data is followed by CRLF; anything else means the size lied,
             * and the excess must not be read as the next chunk or request. */
            if (*p != '\r') {
                rc = *p == '\n' ? SL_EH1_BARE_LF : SL_EH1_BAD_CHUNK_DATA;
                goto fail;
            }
            d->state = ST_DATA_LF;
            p++;
            break;
        case ST_DATA_LF:
            if (*p != '\n') {
                rc = SL_EH1_BAD_CHUNK_DATA;
                goto fail;
            }
            d->state = ST_SIZE;
            d->line_len = 0;
            d->remaining = 0;
            p++;
            break;
        case ST_TRAILER:
            rc = trailer_line(d, p, end, &next, out);
            if (rc < 0)
                goto fail;
            if (rc == SL_H1_CHUNK_NEED_MORE)
                goto need_more;
            if (rc == SL_H1_CHUNK_DONE)
                d->state = ST_DONE;
            *consumed = (size_t)(next - buf);
            return rc;
        default:
            rc = size_line_byte(d, (unsigned char)*p);
            if (rc < 0)
                goto fail;
            p++;
            break;
        }
    }
need_more:
    *consumed = (size_t)(p - buf);
    return SL_H1_CHUNK_NEED_MORE;
fail:
    d->state = rc;
    *consumed = (size_t)(p - buf);
    return rc;
}
