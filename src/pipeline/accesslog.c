/*
 * The log phase: one JSON line per exchange, written with a single write(2) so lines from
 * several workers never interleave (O_APPEND files; pipes for lines under PIPE_BUF). The
 * destination is an fd swapped atomically, so a reload can change it without a lock.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "common/time.h"
#include "http/reply.h"
#include "metrics/metrics.h"
#include "net/worker.h"
#include "pipeline/pipeline.h"
#include "pipeline/internal.h"
#include "pipeline/snapshot.h"

static atomic_int log_fd = -1;

int sl_accesslog_open(sl_str_t path)
{
    int fd = -1;
    if (sl_str_eq(path, SL_STR_LIT("stdout")) || path.len == 0) {
        fd = dup(STDOUT_FILENO);
    } else if (!sl_str_eq(path, SL_STR_LIT("off"))) {
        char p[4096];
        if (path.len >= sizeof(p))
            return -ENAMETOOLONG;
        memcpy(p, path.ptr, path.len);
        p[path.len] = '\0';
        fd = open(p, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
        if (fd < 0)
            return -errno;
    }
    int old = atomic_exchange(&log_fd, fd);
    if (old >= 0)
        close(old);
    return 0;
}

void sl_accesslog_close(void)
{
    int old = atomic_exchange(&log_fd, -1);
    if (old >= 0)
        close(old);
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
    int fd = atomic_load_explicit(&log_fd, memory_order_relaxed);
    if (fd < 0)
        return;
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
    ssize_t w = write(fd, out, n);
    (void)w;
}
