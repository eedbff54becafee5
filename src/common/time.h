/*
 * Clocks: monotonic milliseconds/nanoseconds for timeouts and durations, wall-clock for logs.
 * All are plain syscalls-free vDSO reads; safe from any thread.
 */
#ifndef SL_COMMON_TIME_H
#define SL_COMMON_TIME_H

#include <stddef.h>
#include <stdint.h>

uint64_t sl_time_mono_ns(void);
uint64_t sl_time_wall_ms(void);

/** Writes "2026-11-26T10:02:11.123Z" (24 chars + NUL); returns the length written. */
size_t sl_time_format_iso8601(char *buf, size_t size, uint64_t wall_ms);

/** Writes an IMF-fixdate for the Date header ("Thu, 26 Nov 2026 10:02:11 GMT", 29 chars). */
size_t sl_time_format_http(char *buf, size_t size, uint64_t wall_ms);

#endif
