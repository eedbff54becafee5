/*
 * Error log lines to stderr. One formatted buffer and one write(2) per line keeps lines from
 * several workers whole without a lock.
 */
#include "common/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "common/error.h"
#include "common/time.h"

static enum sl_log_level min_level = SL_LOG_INFO;
static const char *const level_names[] = {"debug", "info", "warn", "error"};

void sl_log_set_level(enum sl_log_level level)
{
    min_level = level;
}

enum sl_log_level sl_log_get_level(void)
{
    return min_level;
}

int sl_log_level_parse(const char *name, enum sl_log_level *out)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(name, level_names[i]) == 0) {
            *out = (enum sl_log_level)i;
            return 0;
        }
    return SL_EINVALID;
}

void sl_log(enum sl_log_level level, const char *fmt, ...)
{
    if (level < min_level)
        return;
    char line[2048];
    size_t n = sl_time_format_iso8601(line, sizeof(line), sl_time_wall_ms());
    n += (size_t)snprintf(line + n, sizeof(line) - n, " %s ", level_names[level]);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - n - 1, fmt, ap);
    va_end(ap);
    if (m < 0)
        m = 0;
    n += (size_t)m;
    if (n > sizeof(line) - 2)
        n = sizeof(line) - 2;
    line[n++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, n);
    (void)w;
}
