/*
 * Maps error codes to text. Modules with their own code range (the HTTP/1 parser, the config
 * loader) register a naming function at start so sl_strerror works everywhere.
 */
#include "common/error.h"

#include <uv.h>

static struct {
    int lo, hi;
    const char *(*name)(int);
} ranges[8];
static int nranges;

void sl_error_register_range(int lo, int hi, const char *(*name)(int))
{
    for (int i = 0; i < nranges; i++)
        if (ranges[i].lo == lo && ranges[i].name == name)
            return;
    if (nranges < (int)(sizeof(ranges) / sizeof(ranges[0]))) {
        ranges[nranges].lo = lo;
        ranges[nranges].hi = hi;
        ranges[nranges].name = name;
        nranges++;
    }
}

const char *sl_strerror(int code)
{
    switch (code) {
    case SL_OK:
        return "ok";
    case SL_EINCOMPLETE:
        return "incomplete input";
    case SL_ETOOBIG:
        return "size limit exceeded";
    case SL_ENOTFOUND:
        return "not found";
    case SL_EINVALID:
        return "invalid input";
    case SL_ECONFIG:
        return "invalid configuration";
    case SL_ECLOSED:
        return "connection closed by peer";
    case SL_ETIMEDOUT:
        return "timed out";
    case SL_EBUSY:
        return "busy";
    }
    for (int i = 0; i < nranges; i++)
        if (code >= ranges[i].lo && code <= ranges[i].hi)
            return ranges[i].name(code);
    if (code > -4096 && code < 0)
        return uv_strerror(code);
    return "unknown error";
}
