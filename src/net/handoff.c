/*
 * The handoff protocol (see handoff.h). SOCK_SEQPACKET keeps each record and the fd riding on it
 * together; a stream socket could merge records and make the fd's owner ambiguous. The new
 * process's side is blocking with poll() deadlines: it runs before its own loop exists. The old
 * process's side lives on its main loop and never blocks it for long: reads only when the socket
 * is readable, sends with a short SO_SNDTIMEO (records are small and the peer is reading).
 */
#include "net/handoff.h"

#include <errno.h>
#include <poll.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <netinet/in.h>

#include "common/bug.h"
#include "common/log.h"

#define HANDOFF_MAGIC   0x534c4846u /* "SLHF" */
#define HANDOFF_VERSION 1
#define SEND_TIMEOUT_MS 2000

enum msg_type { MSG_HELLO = 1, MSG_LISTENER, MSG_END, MSG_ERROR, MSG_READY, MSG_DONE };

typedef struct msg {
    uint32_t magic;
    uint16_t version;
    uint16_t type;
    uint32_t pid;
    uint32_t worker;
    uint32_t index;
    uint32_t count;
    uint32_t addrlen;
    unsigned char addr[sizeof(struct sockaddr_storage)];
    char text[128];
} msg_t;

static void msg_init(msg_t *m, enum msg_type type)
{
    memset(m, 0, sizeof(*m));
    m->magic = HANDOFF_MAGIC;
    m->version = HANDOFF_VERSION;
    m->type = (uint16_t)type;
    m->pid = (uint32_t)getpid();
}

/* Sends one record, with `fd` attached when >= 0. */
static int msg_send(int sock, const msg_t *m, int fd)
{
    struct iovec iov = {.iov_base = (void *)m, .iov_len = sizeof(*m)};
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(sizeof(int))];
    } ctl;
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    if (fd >= 0) {
        memset(&ctl, 0, sizeof(ctl));
        mh.msg_control = ctl.buf;
        mh.msg_controllen = sizeof(ctl.buf);
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof(int));
    }
    ssize_t n;
    do
        n = sendmsg(sock, &mh, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return -errno;
    return n == (ssize_t)sizeof(*m) ? 0 : -EPROTO;
}

/* Receives one record without blocking; `*fd` gets an attached fd (close-on-exec) or -1.
 * Returns 0, -EAGAIN, -ECONNRESET on end of stream, -EPROTO on a malformed record. */
static int msg_recv(int sock, msg_t *m, int *fd)
{
    struct iovec iov = {.iov_base = m, .iov_len = sizeof(*m)};
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(sizeof(int) * 4)];
    } ctl;
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof(ctl.buf)};
    *fd = -1;
    ssize_t n;
    /* ECONNRESET: the peer closed with our last record unread (a refusal does). Linux reports
     * that once, before the records still queued for us, so read on: they or the end follow. */
    do
        n = recvmsg(sock, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    while (n < 0 && (errno == EINTR || errno == ECONNRESET));
    if (n < 0)
        return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c != NULL; c = CMSG_NXTHDR(&mh, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        size_t nfd = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < nfd; i++) {
            int f;
            memcpy(&f, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
            if (*fd < 0)
                *fd = f;
            else
                close(f); /* one fd per record: anything more is not ours to keep */
        }
    }
    if (n == 0)
        return -ECONNRESET;
    if ((size_t)n != sizeof(*m) || (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) || m->magic != HANDOFF_MAGIC ||
        m->version != HANDOFF_VERSION || m->addrlen > sizeof(m->addr)) {
        if (*fd >= 0)
            close(*fd);
        *fd = -1;
        return -EPROTO;
    }
    m->text[sizeof(m->text) - 1] = '\0';
    return 0;
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Blocking receive until `deadline` (now_ms). */
static int msg_recv_until(int sock, msg_t *m, int *fd, uint64_t deadline)
{
    for (;;) {
        int err = msg_recv(sock, m, fd);
        if (err != -EAGAIN)
            return err;
        uint64_t now = now_ms();
        if (now >= deadline)
            return -ETIMEDOUT;
        struct pollfd p = {.fd = sock, .events = POLLIN};
        int n = poll(&p, 1, (int)SL_MIN(deadline - now, (uint64_t)INT32_MAX));
        if (n < 0 && errno != EINTR)
            return -errno;
    }
}

static int unix_addr(const char *path, struct sockaddr_un *sun)
{
    memset(sun, 0, sizeof(*sun));
    sun->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof(sun->sun_path))
        return -ENAMETOOLONG;
    memcpy(sun->sun_path, path, strlen(path));
    return 0;
}

/* ---- the new process ------------------------------------------------------------------------- */

static void client_reset(sl_handoff_client_t *c)
{
    if (c->fd >= 0)
        close(c->fd);
    for (size_t i = 0; i < c->nls; i++)
        if (c->ls[i].fd >= 0)
            close(c->ls[i].fd);
    free(c->ls);
    memset(c, 0, sizeof(*c));
    c->fd = -1;
}

#define WHY(...)                                                                                                       \
    do {                                                                                                               \
        if (why != NULL)                                                                                               \
            snprintf(why, whylen, __VA_ARGS__);                                                                        \
    } while (0)

int sl_handoff_fetch(const char *path, int timeout_ms, sl_handoff_client_t *c, char *why, size_t whylen)
{
    memset(c, 0, sizeof(*c));
    c->fd = -1;
    struct stat st;
    if (stat(path, &st) != 0) {
        int err = -errno;
        WHY("%s: %s", path, strerror(-err));
        return err;
    }
    if (!S_ISSOCK(st.st_mode)) {
        WHY("%s is not a socket", path);
        return -ENOTSOCK;
    }
    struct sockaddr_un sun;
    int err = unix_addr(path, &sun);
    if (err != 0) {
        WHY("%s: path too long for a Unix socket", path);
        return err;
    }
    c->fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        err = -errno;
        WHY("socket: %s", strerror(-err));
        return err;
    }
    if (connect(c->fd, (struct sockaddr *)&sun, sizeof(sun)) != 0) {
        err = errno == EPROTOTYPE ? -EPROTO : -errno;
        if (err == -ECONNREFUSED)
            WHY("%s: no process answers on it (a stale socket left by one that is gone)", path);
        else if (err == -EPROTO)
            WHY("%s is not a sluice handoff socket", path);
        else
            WHY("%s: %s", path, strerror(-err));
        client_reset(c);
        return err;
    }
    uint64_t deadline = now_ms() + (uint64_t)timeout_ms;
    msg_t m;
    msg_init(&m, MSG_HELLO);
    err = msg_send(c->fd, &m, -1);
    /* A busy server refuses at once and may close before our HELLO arrives: its ERROR is
     * still queued for us, so read it rather than report a bare EPIPE. */
    if (err == -EPIPE || err == -ECONNRESET)
        err = 0;
    size_t cap = 0;
    while (err == 0) {
        int fd;
        err = msg_recv_until(c->fd, &m, &fd, deadline);
        if (err != 0)
            break;
        c->peer = (pid_t)m.pid;
        if (m.type == MSG_LISTENER && fd >= 0) {
            if (c->nls == cap) {
                cap = cap ? cap * 2 : 16;
                c->ls = sl_xrealloc(c->ls, cap * sizeof(*c->ls));
            }
            sl_handoff_listener_t *l = &c->ls[c->nls++];
            memset(l, 0, sizeof(*l));
            l->worker = m.worker;
            l->index = m.index;
            memcpy(&l->addr, m.addr, m.addrlen);
            l->addrlen = m.addrlen;
            l->fd = fd;
        } else if (m.type == MSG_END && m.count == c->nls) {
            return 0;
        } else if (m.type == MSG_ERROR) {
            if (fd >= 0)
                close(fd);
            WHY("the process at %s (pid %u) refused: %s", path, m.pid, m.text);
            client_reset(c);
            return -EBUSY;
        } else {
            if (fd >= 0)
                close(fd);
            err = -EPROTO;
        }
    }
    if (err == -ETIMEDOUT)
        WHY("the process at %s did not hand over its listeners within %d ms", path, timeout_ms);
    else if (err == -EPROTO || err == -ECONNRESET)
        WHY("%s: not a sluice handoff socket of this version, or it closed the connection", path);
    else
        WHY("%s: %s", path, strerror(-err));
    client_reset(c);
    return err == -ECONNRESET ? -EPROTO : err;
}

bool sl_handoff_same_addr(const struct sockaddr *a, const struct sockaddr *b)
{
    if (a->sa_family != b->sa_family)
        return false;
    if (a->sa_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    if (a->sa_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
        return x->sin6_port == y->sin6_port && memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
    }
    return false;
}

int sl_handoff_take(sl_handoff_client_t *c, const struct sockaddr *addr, unsigned worker, bool any_worker)
{
    for (size_t i = 0; i < c->nls; i++) {
        sl_handoff_listener_t *l = &c->ls[i];
        if (l->fd < 0 || (!any_worker && l->worker != worker) ||
            !sl_handoff_same_addr((const struct sockaddr *)&l->addr, addr))
            continue;
        int fd = l->fd;
        l->fd = -1;
        c->adopted++;
        return fd;
    }
    return -1;
}

int sl_handoff_ready(sl_handoff_client_t *c, int timeout_ms)
{
    msg_t m;
    msg_init(&m, MSG_READY);
    m.count = (uint32_t)c->adopted;
    /* What nobody took closes in the old process when it stops listening; our copies go now. */
    for (size_t i = 0; i < c->nls; i++)
        if (c->ls[i].fd >= 0) {
            close(c->ls[i].fd);
            c->ls[i].fd = -1;
        }
    int err = msg_send(c->fd, &m, -1);
    if (err == 0) {
        int fd;
        err = msg_recv_until(c->fd, &m, &fd, now_ms() + (uint64_t)timeout_ms);
        if (fd >= 0)
            close(fd);
        if (err == 0 && m.type != MSG_DONE)
            err = -EPROTO;
    }
    client_reset(c);
    return err;
}

void sl_handoff_abort(sl_handoff_client_t *c)
{
    client_reset(c);
}

/* ---- the running process ---------------------------------------------------------------------- */

typedef struct session {
    sl_handoff_server_t *srv;
    int fd;
    uv_poll_t poll;
    uv_timer_t timer;
    pid_t peer;
    bool sent;   /* the listeners went out: waiting for READY */
    int handles; /* open libuv handles; freed at 0 */
} session_t;

struct sl_handoff_server {
    uv_loop_t *loop;
    char *path;
    dev_t dev;
    ino_t ino;
    int fd;
    uv_poll_t poll;
    bool poll_open;
    bool stopped;
    bool handed_over;   /* a new process serves `path` now: leave it be */
    session_t *session; /* the conversation in progress, if any */
    size_t nsessions;   /* sessions whose handles are not closed yet */
    sl_handoff_listener_t *ls;
    size_t nls;
    sl_handoff_on_ready_fn on_ready;
    void *ctx;
};

static void server_maybe_free(sl_handoff_server_t *s)
{
    if (s->stopped && !s->poll_open && s->nsessions == 0) {
        free(s->path);
        free(s->ls);
        free(s);
    }
}

static void on_session_handle_closed(uv_handle_t *h)
{
    session_t *ss = h->data;
    if (--ss->handles > 0)
        return;
    sl_handoff_server_t *s = ss->srv;
    free(ss);
    s->nsessions--;
    server_maybe_free(s);
}

static void session_end(session_t *ss)
{
    if (ss->fd < 0)
        return; /* ending already */
    if (ss->srv->session == ss)
        ss->srv->session = NULL;
    uv_close((uv_handle_t *)&ss->poll, on_session_handle_closed);
    uv_close((uv_handle_t *)&ss->timer, on_session_handle_closed);
    close(ss->fd);
    ss->fd = -1;
}

static void session_refuse(int fd, const char *why)
{
    msg_t m;
    msg_init(&m, MSG_ERROR);
    snprintf(m.text, sizeof(m.text), "%s", why);
    (void)msg_send(fd, &m, -1);
}

static int session_send_listeners(session_t *ss)
{
    sl_handoff_server_t *s = ss->srv;
    msg_t m;
    for (size_t i = 0; i < s->nls; i++) {
        const sl_handoff_listener_t *l = &s->ls[i];
        msg_init(&m, MSG_LISTENER);
        m.worker = l->worker;
        m.index = l->index;
        m.addrlen = (uint32_t)l->addrlen;
        memcpy(m.addr, &l->addr, l->addrlen);
        int err = msg_send(ss->fd, &m, l->fd);
        if (err != 0)
            return err;
    }
    msg_init(&m, MSG_END);
    m.count = (uint32_t)s->nls;
    return msg_send(ss->fd, &m, -1);
}

static void on_session_timeout(uv_timer_t *t)
{
    session_t *ss = t->data;
    sl_log_warn("upgrade: process %d did not get ready within %d ms; this process keeps serving", (int)ss->peer,
                SL_HANDOFF_TIMEOUT_MS);
    session_end(ss);
}

static void on_session_readable(uv_poll_t *p, int status, int events)
{
    (void)events;
    session_t *ss = p->data;
    sl_handoff_server_t *s = ss->srv;
    msg_t m;
    int fd = -1;
    int err = status < 0 ? status : msg_recv(ss->fd, &m, &fd);
    if (fd >= 0)
        close(fd);
    if (err == -EAGAIN)
        return;
    if (err == 0 && m.type == MSG_HELLO && !ss->sent) {
        ss->peer = (pid_t)m.pid;
        sl_log_info("upgrade: process %d asks for the listeners; handing over %zu socket%s", (int)ss->peer, s->nls,
                    s->nls == 1 ? "" : "s");
        err = session_send_listeners(ss);
        if (err == 0) {
            ss->sent = true;
            return;
        }
    } else if (err == 0 && m.type == MSG_READY && ss->sent) {
        s->handed_over = true;
        size_t adopted = m.count;
        msg_init(&m, MSG_DONE);
        /* The callee stops accepting and frees the admin address before DONE tells the new
         * process to bind it. */
        s->on_ready(s->ctx, ss->peer, adopted, s->nls);
        (void)msg_send(ss->fd, &m, -1);
        session_end(ss);
        sl_handoff_server_stop(s);
        return;
    } else if (err == 0) {
        err = -EPROTO;
    }
    if (ss->sent)
        sl_log_warn("upgrade: process %d went away before it was ready (%s); this process keeps serving", (int)ss->peer,
                    err == -ECONNRESET ? "connection closed" : strerror(-err));
    else
        sl_log_warn("upgrade: a handoff request failed: %s", err == -ECONNRESET ? "connection closed" : strerror(-err));
    session_end(ss);
}

static void on_server_readable(uv_poll_t *p, int status, int events)
{
    (void)events;
    (void)status;
    sl_handoff_server_t *s = p->data;
    int fd = accept4(s->fd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0)
        return;
    struct ucred cred;
    socklen_t cl = sizeof(cred);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) != 0 || (cred.uid != geteuid() && cred.uid != 0)) {
        sl_log_warn("upgrade: refused a handoff request from uid %u", (unsigned)cred.uid);
        close(fd);
        return;
    }
    struct timeval tv = {.tv_sec = SEND_TIMEOUT_MS / 1000, .tv_usec = (SEND_TIMEOUT_MS % 1000) * 1000};
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    /* A client that just gave up may not have been noticed yet: its end frees the place. */
    if (s->session != NULL) {
        struct pollfd pf = {.fd = s->session->fd, .events = POLLIN | POLLRDHUP};
        if (poll(&pf, 1, 0) == 1 && (pf.revents & (POLLHUP | POLLRDHUP | POLLERR)))
            on_session_readable(&s->session->poll, 0, UV_READABLE);
    }
    if (s->stopped) { /* that was a READY: handed over meanwhile */
        close(fd);
        return;
    }
    if (s->session != NULL) {
        session_refuse(fd, "another upgrade is in progress");
        close(fd);
        return;
    }
    session_t *ss = sl_xcalloc(1, sizeof(*ss));
    ss->srv = s;
    ss->fd = fd;
    ss->peer = cred.pid;
    uv_poll_init(s->loop, &ss->poll, fd);
    uv_timer_init(s->loop, &ss->timer);
    ss->poll.data = ss->timer.data = ss;
    ss->handles = 2;
    s->session = ss;
    s->nsessions++;
    uv_poll_start(&ss->poll, UV_READABLE | UV_DISCONNECT, on_session_readable);
    uv_timer_start(&ss->timer, on_session_timeout, SL_HANDOFF_TIMEOUT_MS, 0);
}

int sl_handoff_listen(uv_loop_t *loop, const char *path, const sl_handoff_listener_t *ls, size_t nls,
                      sl_handoff_on_ready_fn on_ready, void *ctx, sl_handoff_server_t **out)
{
    struct stat st;
    if (lstat(path, &st) == 0 && !S_ISSOCK(st.st_mode))
        return -EEXIST; /* never replace someone's file */
    char tmp[sizeof(((struct sockaddr_un *)0)->sun_path) + 32];
    int n = snprintf(tmp, sizeof(tmp), "%s.%d.tmp", path, (int)getpid());
    struct sockaddr_un sun;
    if (n < 0 || (size_t)n >= sizeof(tmp) || unix_addr(tmp, &sun) != 0)
        return -ENAMETOOLONG;
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -errno;
    (void)unlink(tmp);
    /* Created 0600 from the start: a wider umask must not leave a window in which another user
     * could connect and take the listeners. */
    mode_t old_mask = umask(0177);
    int err = bind(fd, (struct sockaddr *)&sun, sizeof(sun)) == 0 ? 0 : -errno;
    umask(old_mask);
    if (err == 0 && listen(fd, 4) != 0)
        err = -errno;
    if (err == 0 && rename(tmp, path) != 0)
        err = -errno;
    if (err == 0 && stat(path, &st) != 0)
        err = -errno;
    if (err != 0) {
        (void)unlink(tmp);
        close(fd);
        return err;
    }
    sl_handoff_server_t *s = sl_xcalloc(1, sizeof(*s));
    s->loop = loop;
    s->path = sl_xstrndup(path, strlen(path));
    s->dev = st.st_dev;
    s->ino = st.st_ino;
    s->fd = fd;
    s->ls = sl_xcalloc(nls ? nls : 1, sizeof(*ls));
    memcpy(s->ls, ls, nls * sizeof(*ls));
    s->nls = nls;
    s->on_ready = on_ready;
    s->ctx = ctx;
    uv_poll_init(loop, &s->poll, fd);
    s->poll.data = s;
    s->poll_open = true;
    uv_poll_start(&s->poll, UV_READABLE, on_server_readable);
    *out = s;
    return 0;
}

static void on_server_poll_closed(uv_handle_t *h)
{
    sl_handoff_server_t *s = h->data;
    s->poll_open = false;
    server_maybe_free(s);
}

void sl_handoff_server_stop(sl_handoff_server_t *s)
{
    if (s == NULL || s->stopped)
        return;
    s->stopped = true;
    struct stat st;
    if (!s->handed_over && stat(s->path, &st) == 0 && st.st_dev == s->dev && st.st_ino == s->ino)
        (void)unlink(s->path);
    uv_close((uv_handle_t *)&s->poll, on_server_poll_closed);
    close(s->fd);
    if (s->session != NULL)
        session_end(s->session);
}

/* ---- the service manager ----------------------------------------------------------------------- */

int sl_handoff_notify(pid_t mainpid, bool ready)
{
    const char *path = getenv("NOTIFY_SOCKET");
    if (path == NULL || path[0] == '\0')
        return 0;
    struct sockaddr_un sun;
    memset(&sun, 0, sizeof(sun));
    sun.sun_family = AF_UNIX;
    size_t len = strlen(path);
    if ((path[0] != '/' && path[0] != '@') || len >= sizeof(sun.sun_path))
        return -EINVAL;
    memcpy(sun.sun_path, path, len);
    if (path[0] == '@')
        sun.sun_path[0] = '\0'; /* an abstract socket */
    socklen_t alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    char msg[64];
    int n = snprintf(msg, sizeof(msg), "%sMAINPID=%d\n", ready ? "READY=1\n" : "", (int)mainpid);
    int err = sendto(fd, msg, (size_t)n, MSG_NOSIGNAL, (struct sockaddr *)&sun, alen) == n ? 0 : -errno;
    close(fd);
    return err;
}
