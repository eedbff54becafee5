/*
 * The error log: leveled lines to stderr (or a file), safe from any thread; each line is written
 * with one write(2) so lines from workers never interleave. Not for the access log (see
 * pipeline/accesslog.h), which has its own buffered per-worker writer.
 */
#ifndef SL_COMMON_LOG_H
#define SL_COMMON_LOG_H

enum sl_log_level {
    SL_LOG_DEBUG = 0,
    SL_LOG_INFO,
    SL_LOG_WARN,
    SL_LOG_ERROR,
};

/** Sets the minimum level written. Call before starting threads. */
void sl_log_set_level(enum sl_log_level level);
enum sl_log_level sl_log_get_level(void);

/** Parses "debug|info|warn|error"; returns 0 or SL_EINVALID. */
int sl_log_level_parse(const char *name, enum sl_log_level *out);

/** Writes "<iso time> <level> <message>\n". Never logs secrets: callers pass none. */
void sl_log(enum sl_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define sl_log_debug(...) sl_log(SL_LOG_DEBUG, __VA_ARGS__)
#define sl_log_info(...)  sl_log(SL_LOG_INFO, __VA_ARGS__)
#define sl_log_warn(...)  sl_log(SL_LOG_WARN, __VA_ARGS__)
#define sl_log_error(...) sl_log(SL_LOG_ERROR, __VA_ARGS__)

#endif
