/*
 * Error codes. Functions return 0 or a negative code. libuv and errno codes (> -4096) pass
 * through unchanged; gateway codes live in [-10999, -10000]. Parsers own the sub-range
 * [-10199, -10100] (see http1/parser.h), config [-10299, -10200].
 */
#ifndef SL_COMMON_ERROR_H
#define SL_COMMON_ERROR_H

enum sl_error {
    SL_OK = 0,
    SL_EINCOMPLETE = -10001, /* need more input */
    SL_ETOOBIG = -10002,     /* a configured cap was hit */
    SL_ENOTFOUND = -10003,
    SL_EINVALID = -10004, /* malformed input (a more specific code is preferred) */
    SL_ECONFIG = -10005,  /* config did not validate; the errors were reported separately */
    SL_ECLOSED = -10006,  /* peer closed */
    SL_ETIMEDOUT = -10007,
    SL_EBUSY = -10008,
};

/** A static, human string for any code (gateway, libuv or errno). Never NULL. */
const char *sl_strerror(int code);

/** Lets a module give names to its own sub-range; called once at start, before threads. */
void sl_error_register_range(int lo, int hi, const char *(*name)(int code));

#endif
