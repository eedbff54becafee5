/*
 * Listener handoff between two sluice processes (zero-downtime restart and binary upgrade, like
 * HAProxy's seamless reload). The running process serves a Unix socket (SOCK_SEQPACKET, mode
 * 0600, only its own user or root may talk to it); a new process connects, receives every
 * listening socket with SCM_RIGHTS (the same kernel sockets, so their accept backlogs come
 * along), starts its workers on them and says READY; only then does the old process release its
 * admin listener, answer DONE and drain. Until READY the old process changes nothing: a new
 * process that fails, hangs (SL_HANDOFF_TIMEOUT_MS) or goes away leaves it serving as before.
 *
 * This module owns the protocol and the sockets it makes; what a listener means and when to
 * drain is the caller's (server/gateway.c). Messages are fixed-size records in host byte order
 * (both ends are on one machine), tagged with a magic and a version.
 *
 *   new → old  HELLO  {pid}
 *   old → new  LISTENER {worker, index, addr} + 1 fd   (one per listening socket)
 *   old → new  END    {count}                          (or ERROR {text}: busy, draining)
 *   new → old  READY  {pid, adopted}                   (its workers accept on the sockets)
 *   old → new  DONE                                    (admin listener released, draining)
 */
#ifndef SL_NET_HANDOFF_H
#define SL_NET_HANDOFF_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/types.h>

#include <uv.h>

/** How long either side waits for the other at each step. */
#define SL_HANDOFF_TIMEOUT_MS 30000

/** One listening socket offered by the old process. */
typedef struct sl_handoff_listener {
    unsigned worker; /* worker index in the old process */
    unsigned index;  /* position in the old config's listen list */
    struct sockaddr_storage addr;
    socklen_t addrlen;
    int fd; /* -1 once taken (or in the old process's table: its worker's fd, borrowed) */
} sl_handoff_listener_t;

/* ---- the new process: blocking calls on the main thread, before its loop runs ---- */

typedef struct sl_handoff_client {
    int fd; /* the connection to the old process; -1 when none */
    pid_t peer;
    sl_handoff_listener_t *ls;
    size_t nls;
    size_t adopted;
} sl_handoff_client_t;

/**
 * Connects to the process serving `path` and receives its listeners into `*c` (caller memory).
 * Returns 0, or a negative errno: -ENOENT (nothing at `path`: a first start), -ECONNREFUSED
 * (a stale socket: nobody serves it), -ENOTSOCK (`path` is something else), -ETIMEDOUT,
 * -EPROTO (not a sluice handoff socket, or one of another version), -EBUSY (it is draining or
 * another upgrade is in progress). On failure `*c` holds nothing open. `why` (may be NULL)
 * gets a one-line reason.
 */
int sl_handoff_fetch(const char *path, int timeout_ms, sl_handoff_client_t *c, char *why, size_t whylen);

/**
 * Takes the fd of the old listener on `addr` (same family, address and port) of worker
 * `worker`, or when `any_worker`, of any worker, not taken yet. Returns the fd, now the
 * caller's (counted in `c->adopted`), or -1 when none is left.
 */
int sl_handoff_take(sl_handoff_client_t *c, const struct sockaddr *addr, unsigned worker, bool any_worker);

/** True when `a` and `b` are the same address and port (IPv4/IPv6). */
bool sl_handoff_same_addr(const struct sockaddr *a, const struct sockaddr *b);

/**
 * Tells the old process this one accepts on what it took, closes the fds nobody took, and waits
 * for DONE (the old process released its admin listener and drains). Returns 0, or a negative
 * errno when DONE did not come (the old process died or timed out: it may still hold its admin
 * listener). `c` is released either way.
 */
int sl_handoff_ready(sl_handoff_client_t *c, int timeout_ms);

/** Gives up: closes every fd received and the connection; the old process keeps serving. */
void sl_handoff_abort(sl_handoff_client_t *c);

/* ---- the running process: the handoff socket on its main loop ---- */

typedef struct sl_handoff_server sl_handoff_server_t;

/** Called on the loop when a new process said READY: `adopted` of the `total` listeners. The
 *  callee stops accepting and releases its admin listener before returning (DONE follows). */
typedef void (*sl_handoff_on_ready_fn)(void *ctx, pid_t pid, size_t adopted, size_t total);

/**
 * Serves handoff requests on `path`: binds a fresh socket beside it and renames it over `path`
 * (an existing socket there is replaced; anything else is an error, -EEXIST). `ls` (copied) are
 * the listeners to offer: fds stay owned by their workers and must stay open while the server
 * runs. Returns 0 and sets `*out`, or a negative errno.
 */
int sl_handoff_listen(uv_loop_t *loop, const char *path, const sl_handoff_listener_t *ls, size_t nls,
                      sl_handoff_on_ready_fn on_ready, void *ctx, sl_handoff_server_t **out);

/** Stops serving (drain, or a handoff done); removes `path` unless another process's socket has
 *  replaced it. Frees `s` once libuv is done with it. NULL is fine. */
void sl_handoff_server_stop(sl_handoff_server_t *s);

/* ---- the service manager ---- */

/**
 * Tells systemd (Type=notify; the socket in $NOTIFY_SOCKET) "MAINPID=<mainpid>", and "READY=1"
 * when `ready`. A gateway says both once it serves; at a handoff the old process, still the
 * unit's main process (NotifyAccess=main suffices), names its successor, so systemd follows the
 * new process instead of stopping the unit when the old one exits. Without $NOTIFY_SOCKET it
 * does nothing. Returns 0 or a negative errno (worth a warning, not a failure).
 */
int sl_handoff_notify(pid_t mainpid, bool ready);

#endif
