/*
 * Worker threads and their listeners. Sockets are created (and bind errors reported) on the
 * main thread before any worker starts; each worker then adopts its own SO_REUSEPORT sockets
 * into its loop and runs until its owner closes everything.
 */
#include "net/worker.h"

#include "common/time.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <sys/resource.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <stdlib.h>
#include <unistd.h>

#include "common/bug.h"
#include "common/log.h"

int sl_listen_socket(const struct sockaddr *addr, socklen_t addrlen, int backlog, int *fd_out)
{
    int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0)
        goto fail;
    if (addr->sa_family == AF_INET6)
        (void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, addr, addrlen) != 0 || listen(fd, backlog) != 0)
        goto fail;
    *fd_out = fd;
    return 0;
fail:;
    int err = -errno;
    close(fd);
    return err;
}

/* Within this many of the open-files limit the process is short of descriptors; it is back
 * once accepted fds are FD_MARGIN * 2 below the limit again. */
#define FD_MARGIN 16

static int open_files_limit(void)
{
    static atomic_int limit; /* 0: not read yet */
    int v = atomic_load_explicit(&limit, memory_order_relaxed);
    if (v == 0) {
        struct rlimit rl;
        v = INT_MAX;
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < (rlim_t)INT_MAX)
            v = (int)rl.rlim_cur;
        atomic_store_explicit(&limit, v, memory_order_relaxed);
    }
    return v;
}

static void fds_short(sl_worker_t *w, int fd, int limit)
{
    if (w->fds_short)
        return;
    w->fds_short = true;
    sl_log_warn("worker %u: file descriptors nearly exhausted (fd %d, open files limit %d): new connections are "
                "dropped until some close; raise the limit (LimitNOFILE=, ulimit -n) or lower "
                "limits.max_connections",
                w->id, fd, limit);
}

void sl_worker_note_accepted_fd(sl_worker_t *w, int fd)
{
    int limit = open_files_limit();
    if (!w->fds_short && fd >= limit - FD_MARGIN) {
        fds_short(w, fd, limit);
    } else if (w->fds_short && fd < limit - 2 * FD_MARGIN) {
        w->fds_short = false;
        sl_log_info("worker %u: file descriptors available again (fd %d, open files limit %d)", w->id, fd, limit);
    }
}

static void on_listener_connection(uv_stream_t *server, int status)
{
    sl_listener_t *l = server->data;
    if (status == UV_EMFILE || status == UV_ENFILE) {
        /* libuv calls back only when its own EMFILE handling could not drain the backlog. */
        fds_short(l->worker, -1, open_files_limit());
        return;
    }
    if (status < 0) {
        sl_log_warn("worker %u: accept failed: %s", l->worker->id, uv_strerror(status));
        return;
    }
    l->worker->on_connection(l);
}

static void on_lag_timer(uv_timer_t *t)
{
    sl_worker_t *w = t->data;
    uint64_t now = uv_hrtime();
    uint64_t lag = now > w->lag_due_ns ? now - w->lag_due_ns : 0;
    w->last_lag_ns = lag;
    /* The main thread may reset the maximum meanwhile: raise it with a CAS, never overwrite a
     * larger value it has not taken yet. */
    uint_fast64_t cur = atomic_load_explicit(&w->loop_lag_max_ns, memory_order_relaxed);
    while (lag > cur && !atomic_compare_exchange_weak_explicit(&w->loop_lag_max_ns, &cur, lag, memory_order_relaxed,
                                                               memory_order_relaxed))
        ;
    /* libuv re-arms a repeating timer from the loop's cached time, which is at most `now`:
     * expecting the next fire a full interval from `now` can only under-state the lag. */
    w->lag_due_ns = now + (uint64_t)SL_WORKER_LAG_INTERVAL_MS * 1000000u;
}

void sl_worker_count_refused(sl_worker_t *w)
{
    atomic_store_explicit(&w->refused, atomic_load_explicit(&w->refused, memory_order_relaxed) + 1,
                          memory_order_relaxed);
}

uint64_t sl_worker_refused_total(sl_worker_t *w)
{
    return atomic_load_explicit(&w->refused, memory_order_relaxed);
}

uint64_t sl_worker_take_loop_lag(sl_worker_t *w)
{
    return atomic_exchange_explicit(&w->loop_lag_max_ns, 0, memory_order_relaxed);
}

static void on_async(uv_async_t *a)
{
    sl_worker_t *w = a->data;
    if (w->on_wakeup)
        w->on_wakeup(w);
}

int sl_worker_init(sl_worker_t *w, unsigned id, const int *fds, size_t nfds)
{
    return sl_worker_init_indexed(w, id, fds, NULL, nfds);
}

int sl_worker_init_indexed(sl_worker_t *w, unsigned id, const int *fds, const unsigned *index, size_t nfds)
{
    int err = uv_loop_init(&w->loop);
    if (err) {
        for (size_t i = 0; i < nfds; i++)
            close(fds[i]);
        return err;
    }
    w->id = id;
    w->loop.data = w;
    uv_async_init(&w->loop, &w->async, on_async);
    w->async.data = w;
    uv_timer_init(&w->loop, &w->lag_timer);
    w->lag_timer.data = w;
    /* The lag timer alone must not keep a loop alive that has nothing else to do. */
    uv_unref((uv_handle_t *)&w->lag_timer);
    sl_buf_pool_init(&w->bufs, SL_WORKER_BUF_SIZE, 4096);
    sl_timeqs_init(&w->timeqs, &w->loop);
    w->listeners = sl_xcalloc(nfds ? nfds : 1, sizeof(*w->listeners));
    w->nlisteners = nfds;
    for (size_t i = 0; i < nfds; i++) {
        sl_listener_t *l = &w->listeners[i];
        uv_tcp_init(&w->loop, &l->tcp);
        l->tcp.data = l;
        l->worker = w;
        l->index = index != NULL ? index[i] : (unsigned)i;
        err = uv_tcp_open(&l->tcp, fds[i]);
        if (err) {
            sl_log_error("worker %u: cannot adopt listening socket: %s", id, uv_strerror(err));
            for (size_t j = i + 1; j < nfds; j++)
                close(fds[j]);
            return err; /* the caller runs the loop to close what was opened */
        }
    }
    return 0;
}

static void worker_main(void *arg)
{
    sl_worker_t *w = arg;
    for (size_t i = 0; i < w->nlisteners; i++) {
        int err = uv_listen((uv_stream_t *)&w->listeners[i].tcp, 4096, on_listener_connection);
        if (err)
            sl_log_error("worker %u: listen failed: %s", w->id, uv_strerror(err));
    }
    w->listening = true;
    w->lag_due_ns = uv_hrtime() + (uint64_t)SL_WORKER_LAG_INTERVAL_MS * 1000000u;
    uv_timer_start(&w->lag_timer, on_lag_timer, SL_WORKER_LAG_INTERVAL_MS, SL_WORKER_LAG_INTERVAL_MS);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    if (w->on_exit)
        w->on_exit(w);
}

int sl_worker_start(sl_worker_t *w)
{
    return uv_thread_create(&w->thread, worker_main, w);
}

void sl_worker_wakeup(sl_worker_t *w)
{
    uv_async_send(&w->async);
}

void sl_worker_stop_listening(sl_worker_t *w)
{
    if (!w->listening)
        return;
    w->listening = false;
    for (size_t i = 0; i < w->nlisteners; i++)
        uv_close((uv_handle_t *)&w->listeners[i].tcp, NULL);
}

void sl_worker_close(sl_worker_t *w)
{
    if (!uv_is_closing((uv_handle_t *)&w->async))
        uv_close((uv_handle_t *)&w->async, NULL);
    if (!uv_is_closing((uv_handle_t *)&w->lag_timer))
        uv_close((uv_handle_t *)&w->lag_timer, NULL);
    if (!uv_is_closing((uv_handle_t *)&w->timeqs.timer))
        sl_timeqs_close(&w->timeqs);
}

void sl_worker_join(sl_worker_t *w)
{
    uv_thread_join(&w->thread);
    uv_run(&w->loop, UV_RUN_NOWAIT);
    if (uv_loop_close(&w->loop) != 0)
        sl_log_warn("worker %u: loop closed with handles still open", w->id);
    sl_buf_pool_dispose(&w->bufs);
    free(w->listeners);
    w->listeners = NULL;
}

sl_str_t sl_worker_http_date(sl_worker_t *w)
{
    uint64_t now = sl_time_wall_ms();
    if (now / 1000 != w->http_date_sec || w->http_date[0] == '\0') {
        w->http_date_sec = now / 1000;
        sl_time_format_http(w->http_date, sizeof(w->http_date), now);
    }
    return (sl_str_t){w->http_date, 29};
}
