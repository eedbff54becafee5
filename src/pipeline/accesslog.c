/*
 * The log phase: one JSON line per exchange, written with a single write(2) so lines from
 * several workers never interleave (O_APPEND files; pipes for lines under PIPE_BUF).
 *
 * The destination never blocks a worker: files and FIFOs are opened O_NONBLOCK, a pipe on
 * stdout is reopened (through /proc/self/fd/1) as a non-blocking description of its own, so the
 * flag does not leak into the stdout the process shares, and a socket on stdout (journald) is
 * written with send(MSG_DONTWAIT). A reader that stalls costs lines, never the gateway's time.
 *
 * A write that fails (ENOSPC on a full disk, EIO, EAGAIN on a full pipe) or is short drops the
 * line: the request was served already and must not wait for or fail on its log. The drops are
 * counted, and the error log gets one line when writes start failing and one when they succeed
 * again (with the count), never one per request: a full disk under load would otherwise turn
 * the error log into a second disk filler.
 *
 * A reload swaps the destination without a lock and without a window where a worker could write
 * into a closed or reused fd number: the number workers write to is allocated once and the new
 * destination is dup3()'d onto it (an atomic replacement of what the number refers to); `off`
 * points it at /dev/null for writers that loaded it just before.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/log.h"
#include "common/time.h"
#include "http/reply.h"
#include "metrics/metrics.h"
#include "net/worker.h"
#include "pipeline/pipeline.h"
#include "pipeline/internal.h"
#include "pipeline/snapshot.h"

/* What workers write to: (fd << 1) | is_socket, or -1 when the access log is off. */
static atomic_int log_dest = -1;
/* The fd number behind log_dest, kept once allocated (main thread). */
static int log_fd_num = -1;
/* Lines dropped by failed or short writes, since start; and whether the last write failed. */
static atomic_ullong dropped_total;
static atomic_ullong dropped_at_failure; /* dropped_total when the current failing spell began */
static atomic_bool failing;

uint64_t sl_accesslog_dropped_total(void)
{
    return atomic_load_explicit(&dropped_total, memory_order_relaxed);
}

/* A new non-blocking fd for stdout; `*sock` when it is a socket (written with MSG_DONTWAIT). */
static int open_stdout(bool *sock)
{
    struct stat st;
    if (fstat(STDOUT_FILENO, &st) != 0)
        return -errno;
    if (S_ISFIFO(st.st_mode)) {
        /* O_NONBLOCK belongs to the open file description: set on a dup it would reach every
         * other user of this stdout. A fresh open of the pipe is a description of our own. */
        int fd = open("/proc/self/fd/1", O_WRONLY | O_NONBLOCK | O_CLOEXEC);
        if (fd >= 0)
            return fd;
    }
    *sock = S_ISSOCK(st.st_mode);
    int fd = fcntl(STDOUT_FILENO, F_DUPFD_CLOEXEC, 0);
    return fd >= 0 ? fd : -errno;
}

int sl_accesslog_open(sl_str_t path)
{
    int fd = -1;
    bool sock = false;
    if (sl_str_eq(path, SL_STR_LIT("off"))) {
        atomic_store(&log_dest, -1);
        if (log_fd_num >= 0) {
            int nul = open("/dev/null", O_WRONLY | O_CLOEXEC);
            if (nul >= 0) {
                (void)dup3(nul, log_fd_num, O_CLOEXEC);
                close(nul);
            }
        }
        return 0;
    }
    if (sl_str_eq(path, SL_STR_LIT("stdout")) || path.len == 0) {
        fd = open_stdout(&sock);
        if (fd < 0)
            return fd;
    } else {
        char p[4096];
        if (path.len >= sizeof(p))
            return -ENAMETOOLONG;
        memcpy(p, path.ptr, path.len);
        p[path.len] = '\0';
        /* O_NONBLOCK: no effect on a regular file; a FIFO without a reader fails (ENXIO) rather
         * than blocking the start, and a full one drops lines rather than blocking a worker. */
        fd = open(p, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NONBLOCK, 0640);
        if (fd < 0)
            return -errno;
    }
    if (log_fd_num < 0) {
        log_fd_num = fd;
    } else if (fd != log_fd_num) {
        if (dup3(fd, log_fd_num, O_CLOEXEC) < 0) {
            int err = -errno;
            close(fd);
            return err;
        }
        close(fd);
    }
    atomic_store(&log_dest, (log_fd_num << 1) | (int)sock);
    return 0;
}

void sl_accesslog_close(void)
{
    atomic_store(&log_dest, -1);
    if (log_fd_num >= 0)
        close(log_fd_num);
    log_fd_num = -1;
}

/* One line's write result: counts drops and logs the changes of state (any worker thread; the
 * exchange on `failing` makes exactly one thread log each change). */
static void account(ssize_t w, size_t n, int err)
{
    if (w == (ssize_t)n) {
        if (atomic_load_explicit(&failing, memory_order_relaxed) && atomic_exchange(&failing, false)) {
            unsigned long long lost =
                atomic_load_explicit(&dropped_total, memory_order_relaxed) - atomic_load(&dropped_at_failure);
            sl_log_info("access log: writes succeed again; %llu lines were lost", lost);
        }
        return;
    }
    unsigned long long before = atomic_fetch_add_explicit(&dropped_total, 1, memory_order_relaxed);
    if (!atomic_load_explicit(&failing, memory_order_relaxed) && !atomic_exchange(&failing, true)) {
        atomic_store(&dropped_at_failure, before);
        if (w < 0)
            sl_log_warn("access log: write failed (%s); lines are dropped (and counted) until writes succeed",
                        strerror(err));
        else
            sl_log_warn("access log: short write (%zd of %zu bytes, disk full?); lines are dropped (and counted) "
                        "until writes succeed",
                        w, n);
    }
}

static size_t put_str(char *out, size_t n, const char *key, sl_str_t v)
{
    size_t klen = strlen(key);
    memcpy(out + n, key, klen);
    n += klen;
    n += sl_json_escape(out + n, v);
    out[n++] = '"';
    return n;
}

static double ns_to_ms(int64_t ns)
{
    return ns < 0 ? -1.0 : (double)ns / 1e6;
}

void sl_pipeline_log(sl_exchange_t *x)
{
    if (x->counted_inflight) {
        x->worker->inflight--;
        x->counted_inflight = false;
    }
    sl__pipeline_chain_log(x);
    if (x->worker->metrics != NULL && x->snap->metrics != NULL) {
        sl_metrics_observe_exchange(x->worker->metrics, x->snap->metrics, x, sl_time_mono_ns());
        sl_metrics_observe_auth_failure(x->worker->metrics, x->snap->metrics, x);
    }
    int dest = atomic_load_explicit(&log_dest, memory_order_relaxed);
    if (dest < 0)
        return;
    int fd = dest >> 1;
    /* Every variable field is escaped (6x worst case) and bounded by the request limits, so the
     * line is sized from them rather than truncated. */
    sl_str_t path = x->path.len > 2048 ? (sl_str_t){x->path.ptr, 2048} : x->path;
    size_t cap = 704 + 6 * (path.len + x->request_id.len + x->route_name.len + x->upstream_name.len +
                            x->target_addr.len + x->method_token.len + x->consumer.len + 64);
    char stackbuf[4096];
    char *out = cap <= sizeof(stackbuf) ? stackbuf : sl_arena_alloc(&x->arena, cap);
    size_t n = 0;
    out[n++] = '{';
    n += (size_t)snprintf(out + n, cap - n, "\"time\":\"");
    n += sl_time_format_iso8601(out + n, cap - n, sl_time_wall_ms());
    out[n++] = '"';
    n = put_str(out, n, ",\"request_id\":\"", x->request_id);
    n += (size_t)snprintf(out + n, cap - n, ",\"client\":\"%s\"", x->client_ip);
    n = put_str(out, n, ",\"method\":\"", x->method_token);
    n = put_str(out, n, ",\"path\":\"", path);
    n = put_str(out, n, ",\"route\":\"", x->route_name);
    n = put_str(out, n, ",\"upstream\":\"", x->upstream_name);
    n = put_str(out, n, ",\"target\":\"", x->target_addr);
    /* Empty when the request was not proxied: no span was made. */
    const sl_trace_t *t = &x->trace;
    n = put_str(out, n, ",\"trace_id\":\"", t->started ? (sl_str_t){t->trace_id, 32} : SL_STR_NULL);
    n = put_str(out, n, ",\"span_id\":\"", t->started ? (sl_str_t){t->span_id, 16} : SL_STR_NULL);
    n = put_str(out, n, ",\"consumer\":\"", x->consumer);
    /* The detail says which rule fired (jwt_expired, ip_denied, ...); static text, never data. */
    n = put_str(out, n, ",\"detail\":\"", x->cause_detail ? sl_str_from_cstr(x->cause_detail) : SL_STR_NULL);
    n += (size_t)snprintf(out + n, cap - n,
                          ",\"status\":%d,\"cause\":\"%s\",\"bytes_in\":%llu,\"bytes_out\":%llu,"
                          "\"duration_ms\":%.3f,\"upstream_connect_ms\":%.3f,\"upstream_first_byte_ms\":%.3f}\n",
                          x->status, sl_cause_info(x->cause)->name, (unsigned long long)x->bytes_in,
                          (unsigned long long)x->bytes_out, (double)(sl_time_mono_ns() - x->start_ns) / 1e6,
                          ns_to_ms(x->upstream_connect_ns), ns_to_ms(x->upstream_first_byte_ns));
    ssize_t w;
    do
        w = (dest & 1) ? send(fd, out, n, MSG_DONTWAIT | MSG_NOSIGNAL) : write(fd, out, n);
    while (w < 0 && errno == EINTR);
    account(w, n, w < 0 ? errno : 0);
}
