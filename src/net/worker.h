/*
 * Workers: one thread, one libuv loop and one SO_REUSEPORT listening socket per listen address
 * each, so the kernel spreads connections and workers share nothing on the hot path. A worker
 * owns its loop, listeners, buffer pool and timeout queues; everything in it is touched only by
 * its own thread, except `sl_worker_wakeup` (any thread) which runs `on_wakeup` in the worker.
 * What a connection means (HTTP/1, later TLS/h2) is the owner's business, through on_connection.
 *
 * Two health figures leave the worker for the main thread (the doctor reads them each tick):
 * the worst event-loop lag, measured by a 250 ms timer of the worker's own loop (how late it
 * fires is how long the loop was busy), and the connections refused at the gateway-wide
 * connection limit. Both are atomics with one writer; neither is touched per request.
 */
#ifndef SL_NET_WORKER_H
#define SL_NET_WORKER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <uv.h>

#include "common/str.h"
#include "net/buf.h"
#include "net/timeq.h"

typedef struct sl_worker sl_worker_t;

typedef struct sl_listener {
    uv_tcp_t tcp;
    sl_worker_t *worker;
    unsigned index; /* position in the config's listen list */
} sl_listener_t;

struct sl_worker {
    uv_loop_t loop;
    uv_async_t async;
    uv_thread_t thread;
    unsigned id;
    sl_listener_t *listeners;
    size_t nlisteners;
    bool listening;
    bool fds_short;     /* the last accepted fd was near RLIMIT_NOFILE (logged once per change) */
    sl_buf_pool_t bufs; /* read and body buffers, SL_WORKER_BUF_SIZE each */
    sl_timeqs_t timeqs;
    /* set by the owner before sl_worker_start */
    void (*on_connection)(sl_listener_t *l); /* a connection is ready to uv_accept on l->tcp */
    void (*on_wakeup)(sl_worker_t *w);       /* after sl_worker_wakeup, in the worker thread */
    void (*on_exit)(sl_worker_t *w);         /* in the worker thread, after its loop ended */
    void *data;                              /* the owner's per-worker state */
    /* Per-worker state of the layers above, opaque here (each module owns its own). */
    struct sl_snapshot *snap;          /* the current config snapshot (pipeline/snapshot.h) */
    struct sl_h1_worker *h1;           /* downstream HTTP/1 connections (http1/server.h) */
    struct sl_upstream_worker *up;     /* upstream pools (upstream/proxy.h) */
    struct sl_metrics_worker *metrics; /* this worker's counters (metrics/metrics.h) */
    /* Loop lag: the lag timer fires every SL_WORKER_LAG_INTERVAL_MS; lag = how late. */
    uv_timer_t lag_timer;
    uint64_t lag_due_ns;                  /* worker thread only */
    uint64_t last_lag_ns;                 /* worker thread only: the lag the last tick measured */
    uint32_t inflight;                    /* worker thread only: exchanges between routing and log */
    atomic_uint_fast64_t loop_lag_max_ns; /* worst since sl_worker_take_loop_lag; worker raises, main resets */
    atomic_uint_fast64_t refused;         /* connections refused at limits.max_connections; worker writes */
    char http_date[32];                   /* worker thread only: sl_worker_http_date's cache */
    uint64_t http_date_sec;
};

#define SL_WORKER_LAG_INTERVAL_MS 250

#define SL_WORKER_BUF_SIZE (16 * 1024)

/**
 * Creates a listening socket for `addr` with SO_REUSEPORT (so each worker can bind its own),
 * non-blocking, close-on-exec. Returns 0 and sets `*fd`, or a negative errno.
 */
int sl_listen_socket(const struct sockaddr *addr, socklen_t addrlen, int backlog, int *fd);

/**
 * Prepares `w` (caller-owned memory) with one listener per fd; the worker takes ownership of the
 * fds. Call from the main thread before sl_worker_start. Returns 0 or a libuv error (then
 * nothing is left open, the fds included).
 */
int sl_worker_init(sl_worker_t *w, unsigned id, const int *fds, size_t nfds);

/** sl_worker_init where listener i serves the config's listen entry `index[i]` rather than i:
 *  after an upgrade a worker may adopt more than one socket of an address (listeners of old
 *  workers beyond the new worker count; net/handoff.h). */
int sl_worker_init_indexed(sl_worker_t *w, unsigned id, const int *fds, const unsigned *index, size_t nfds);

/** Starts the worker thread: listens and runs the loop until it has no active handles left. */
int sl_worker_start(sl_worker_t *w);

/** Any thread: schedules on_wakeup in the worker thread (coalesced like uv_async_send). */
void sl_worker_wakeup(sl_worker_t *w);

/** Worker thread: closes the listeners (stop accepting); idempotent. */
void sl_worker_stop_listening(sl_worker_t *w);

/** Worker thread: closes the wakeup handle and timers so the loop can end once connections are
 *  gone. Call after sl_worker_stop_listening, when the owner has nothing left to do. */
void sl_worker_close(sl_worker_t *w);

/**
 * Worker thread: notes the fd of a connection just accepted. Running out of descriptors is
 * otherwise silent: libuv's EMFILE handling accepts and closes the excess connections without
 * calling back. fds are allocated lowest first, so an accepted fd near the open-files limit
 * means the process is nearly out: logged once when it gets there, once when it is back.
 * No syscall (the limit is read once per process).
 */
void sl_worker_note_accepted_fd(sl_worker_t *w, int fd);

/** Worker thread: counts a connection refused at the gateway-wide connection limit. */
void sl_worker_count_refused(sl_worker_t *w);

/** Any thread: connections refused at the gateway-wide limit by this worker since it started. */
uint64_t sl_worker_refused_total(sl_worker_t *w);

/** Any thread (the main thread, once per doctor tick): the worst event-loop lag in ns since the
 *  previous call, and resets it. A loop that never got to run its timer shows as lag too. */
uint64_t sl_worker_take_loop_lag(sl_worker_t *w);

/** Main thread: waits for the worker thread, then frees the loop's resources. */
void sl_worker_join(sl_worker_t *w);

/** The current time as an IMF-fixdate (a response's Date), formatted at most once a second per
 *  worker. The bytes stay valid until the next call. Worker thread. */
sl_str_t sl_worker_http_date(sl_worker_t *w);

#endif
