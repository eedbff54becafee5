/*
 * Unit tests of the listener handoff (net/handoff.h) between a server on a real libuv loop and
 * a client thread: the sockets arrive as the same kernel sockets, READY reaches the server only
 * when the client says it, a client that gives up leaves the server serving, and every wrong
 * peer (nothing there, a stale socket, a file, a stream socket, garbage, silence) is a distinct
 * error. Plus the systemd notification's bytes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <uv.h>

#include "net/handoff.h"
#include "net/worker.h"

static char dir[64];

static void path_in_dir(char *out, size_t len, const char *name)
{
    snprintf(out, len, "%s/%s", dir, name);
}

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/sl-handoff-XXXXXX");
    return mkdtemp(dir) != NULL ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* A loopback listening socket on an ephemeral port, as a worker's. */
static int tcp_listener(struct sockaddr_in *addr)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = -1;
    assert_int_equal(sl_listen_socket((struct sockaddr *)&a, sizeof(a), 16, &fd), 0);
    socklen_t len = sizeof(*addr);
    assert_int_equal(getsockname(fd, (struct sockaddr *)addr, &len), 0);
    return fd;
}

static ino_t inode_of(int fd)
{
    struct stat st;
    assert_int_equal(fstat(fd, &st), 0);
    return st.st_ino;
}

/* ---- a server on a loop, clients in a thread ------------------------------------------------ */

typedef struct scenario {
    char path[96];
    int give_up_first; /* the first client takes the sockets and closes without READY */
    int ask_twice;     /* a second client asks while the first has not said READY yet */
    /* results */
    int fetch_err[2];
    size_t got[2];
    ino_t taken_ino;
    int ready_err;
    int ready_calls;
    size_t ready_adopted, ready_total;
    pid_t ready_pid;
    int busy_err;
    char busy_why[256];
    int busy_fd;
} scenario_t;

static void on_ready(void *ctx, pid_t pid, size_t adopted, size_t total)
{
    scenario_t *s = ctx;
    s->ready_calls++;
    s->ready_pid = pid;
    s->ready_adopted = adopted;
    s->ready_total = total;
}

static struct sockaddr_in addr_a, addr_b;

static void client_thread(void *arg)
{
    scenario_t *s = arg;
    sl_handoff_client_t c;
    int round = 0;
    if (s->give_up_first) {
        s->fetch_err[0] = sl_handoff_fetch(s->path, 5000, &c, NULL, 0);
        s->got[0] = c.nls;
        if (s->fetch_err[0] == 0)
            sl_handoff_abort(&c);
        round = 1;
    }
    char why[256];
    s->fetch_err[round] = sl_handoff_fetch(s->path, 5000, &c, why, sizeof(why));
    if (s->fetch_err[round] != 0)
        return;
    s->got[round] = c.nls;
    if (s->ask_twice) {
        sl_handoff_client_t c2;
        s->busy_err = sl_handoff_fetch(s->path, 5000, &c2, s->busy_why, sizeof(s->busy_why));
        s->busy_fd = c2.fd;
        if (s->busy_err == 0)
            sl_handoff_abort(&c2);
    }
    /* worker 1's socket of addr_b, then nothing more of it for worker 1 */
    int fd = sl_handoff_take(&c, (struct sockaddr *)&addr_b, 1, false);
    if (fd >= 0) {
        s->taken_ino = inode_of(fd);
        if (sl_handoff_take(&c, (struct sockaddr *)&addr_b, 1, false) >= 0)
            s->taken_ino = 0;
        close(fd);
    }
    s->ready_err = sl_handoff_ready(&c, 5000);
}

static void run_scenario(scenario_t *s, int *fds, ino_t *inos)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    fds[0] = tcp_listener(&addr_a);
    fds[1] = tcp_listener(&addr_b);
    inos[0] = inode_of(fds[0]);
    inos[1] = inode_of(fds[1]);
    sl_handoff_listener_t ls[2] = {{.worker = 0, .index = 0, .fd = fds[0]}, {.worker = 1, .index = 1, .fd = fds[1]}};
    memcpy(&ls[0].addr, &addr_a, sizeof(addr_a));
    ls[0].addrlen = sizeof(addr_a);
    memcpy(&ls[1].addr, &addr_b, sizeof(addr_b));
    ls[1].addrlen = sizeof(addr_b);
    sl_handoff_server_t *srv = NULL;
    assert_int_equal(sl_handoff_listen(&loop, s->path, ls, 2, on_ready, s, &srv), 0);
    struct stat st;
    assert_int_equal(stat(s->path, &st), 0);
    assert_true(S_ISSOCK(st.st_mode));
    assert_int_equal(st.st_mode & 0777, 0600);
    uv_thread_t t;
    uv_thread_create(&t, client_thread, s);
    /* READY stops the server itself, and the loop runs out of handles */
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_thread_join(&t);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_handoff_roundtrip(void **state)
{
    (void)state;
    scenario_t s = {0};
    path_in_dir(s.path, sizeof(s.path), "h.sock");
    int fds[2];
    ino_t inos[2];
    run_scenario(&s, fds, inos);
    assert_int_equal(s.fetch_err[0], 0);
    assert_int_equal(s.got[0], 2);
    assert_true(s.taken_ino == inos[1]); /* the very socket, not a copy */
    assert_int_equal(s.ready_err, 0);
    assert_int_equal(s.ready_calls, 1);
    assert_int_equal(s.ready_adopted, 1);
    assert_int_equal(s.ready_total, 2);
    assert_int_equal(s.ready_pid, getpid());
    /* handed over: the path is left for the successor to replace (here: nobody did) */
    assert_int_equal(access(s.path, F_OK), 0);
    close(fds[0]);
    close(fds[1]);
}

static void test_client_giving_up_leaves_the_server_serving(void **state)
{
    (void)state;
    scenario_t s = {.give_up_first = 1};
    path_in_dir(s.path, sizeof(s.path), "g.sock");
    int fds[2];
    ino_t inos[2];
    run_scenario(&s, fds, inos);
    assert_int_equal(s.fetch_err[0], 0);
    assert_int_equal(s.got[0], 2);
    assert_int_equal(s.fetch_err[1], 0); /* the second asks again and gets them again */
    assert_int_equal(s.got[1], 2);
    assert_int_equal(s.ready_calls, 1);
    /* the server's fds stayed open and listening all along */
    assert_true(inode_of(fds[0]) == inos[0]);
    assert_true(inode_of(fds[1]) == inos[1]);
    close(fds[0]);
    close(fds[1]);
}

static void test_second_upgrade_is_refused_while_one_is_in_progress(void **state)
{
    (void)state;
    scenario_t s = {.ask_twice = 1};
    path_in_dir(s.path, sizeof(s.path), "b.sock");
    int fds[2];
    ino_t inos[2];
    run_scenario(&s, fds, inos);
    assert_int_equal(s.fetch_err[0], 0);
    assert_int_equal(s.busy_err, -EBUSY);
    assert_non_null(strstr(s.busy_why, "another upgrade is in progress"));
    assert_int_equal(s.busy_fd, -1); /* the refused client holds nothing open */
    /* the first one is not disturbed: it completes */
    assert_int_equal(s.ready_err, 0);
    assert_int_equal(s.ready_calls, 1);
    close(fds[0]);
    close(fds[1]);
}

/* ---- wrong peers ------------------------------------------------------------------------------ */

static void test_missing_file_and_stale_paths(void **state)
{
    (void)state;
    sl_handoff_client_t c;
    char p[96], why[256];
    path_in_dir(p, sizeof(p), "none.sock");
    assert_int_equal(sl_handoff_fetch(p, 1000, &c, why, sizeof(why)), -ENOENT);
    assert_int_equal(c.fd, -1);

    path_in_dir(p, sizeof(p), "file.txt");
    FILE *f = fopen(p, "w");
    fputs("keep me\n", f);
    fclose(f);
    assert_int_equal(sl_handoff_fetch(p, 1000, &c, why, sizeof(why)), -ENOTSOCK);
    assert_non_null(strstr(why, "is not a socket"));
    /* and a server refuses to replace it */
    uv_loop_t loop;
    uv_loop_init(&loop);
    sl_handoff_server_t *srv = NULL;
    assert_int_equal(sl_handoff_listen(&loop, p, NULL, 0, on_ready, NULL, &srv), -EEXIST);
    assert_null(srv);
    char buf[16] = {0};
    f = fopen(p, "r");
    assert_non_null(fgets(buf, sizeof(buf), f));
    fclose(f);
    assert_string_equal(buf, "keep me\n");
    uv_loop_close(&loop);

    /* a socket file nobody listens on */
    path_in_dir(p, sizeof(p), "stale.sock");
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", p);
    int fd = socket(AF_UNIX, SOCK_SEQPACKET, 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sun, sizeof(sun)), 0);
    close(fd);
    assert_int_equal(sl_handoff_fetch(p, 1000, &c, why, sizeof(why)), -ECONNREFUSED);
    assert_non_null(strstr(why, "stale"));

    /* a stream socket: someone else's service */
    path_in_dir(p, sizeof(p), "stream.sock");
    snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", p);
    fd = socket(AF_UNIX, SOCK_STREAM, 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sun, sizeof(sun)), 0);
    assert_int_equal(listen(fd, 1), 0);
    assert_int_equal(sl_handoff_fetch(p, 1000, &c, why, sizeof(why)), -EPROTO);
    close(fd);
}

typedef struct fake_peer {
    int lfd;
    int mode; /* 0: garbage answer, 1: silence */
} fake_peer_t;

static void fake_peer_thread(void *arg)
{
    fake_peer_t *fp = arg;
    int c = accept(fp->lfd, NULL, NULL);
    if (c < 0)
        return;
    char buf[1024];
    (void)recv(c, buf, sizeof(buf), 0);
    if (fp->mode == 0) {
        memset(buf, 'x', sizeof(buf));
        (void)send(c, buf, 300, 0);
    }
    /* silence: wait for the client to give up */
    (void)recv(c, buf, sizeof(buf), 0);
    close(c);
}

static int fake_seqpacket(const char *p)
{
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", p);
    int fd = socket(AF_UNIX, SOCK_SEQPACKET, 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sun, sizeof(sun)), 0);
    assert_int_equal(listen(fd, 1), 0);
    return fd;
}

/* Descriptors this process has open: a failed fetch must leave none behind. */
static int open_fds(void)
{
    int n = 0;
    for (int fd = 0; fd < 1024; fd++)
        if (fcntl(fd, F_GETFD) != -1)
            n++;
    return n;
}

static void test_garbage_and_silence(void **state)
{
    (void)state;
    char p[96], why[256];
    sl_handoff_client_t c;
    int before = open_fds();
    for (int mode = 0; mode < 2; mode++) {
        path_in_dir(p, sizeof(p), mode ? "silent.sock" : "garbage.sock");
        fake_peer_t fp = {.lfd = fake_seqpacket(p), .mode = mode};
        uv_thread_t t;
        uv_thread_create(&t, fake_peer_thread, &fp);
        uint64_t t0 = uv_hrtime();
        int err = sl_handoff_fetch(p, 300, &c, why, sizeof(why));
        uint64_t ms = (uv_hrtime() - t0) / 1000000u;
        if (mode == 0) {
            assert_int_equal(err, -EPROTO);
        } else {
            assert_int_equal(err, -ETIMEDOUT);
            assert_true(ms >= 250 && ms < 5000);
            assert_non_null(strstr(why, "did not hand over"));
        }
        assert_int_equal(c.fd, -1);
        assert_int_equal(c.nls, 0);
        uv_thread_join(&t);
        close(fp.lfd);
    }
    assert_int_equal(open_fds(), before);
}

/* ---- systemd ------------------------------------------------------------------------------------ */

static void test_notify(void **state)
{
    (void)state;
    unsetenv("NOTIFY_SOCKET");
    assert_int_equal(sl_handoff_notify(getpid(), true), 0); /* not under systemd: nothing */
    char p[96];
    path_in_dir(p, sizeof(p), "notify.sock");
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", p);
    int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sun, sizeof(sun)), 0);
    setenv("NOTIFY_SOCKET", p, 1);
    assert_int_equal(sl_handoff_notify(4242, false), 0);
    assert_int_equal(sl_handoff_notify(4343, true), 0);
    char buf[128];
    ssize_t n = recv(fd, buf, sizeof(buf) - 1, MSG_DONTWAIT);
    assert_true(n > 0);
    buf[n] = '\0';
    assert_string_equal(buf, "MAINPID=4242\n");
    n = recv(fd, buf, sizeof(buf) - 1, MSG_DONTWAIT);
    assert_true(n > 0);
    buf[n] = '\0';
    assert_string_equal(buf, "READY=1\nMAINPID=4343\n");
    setenv("NOTIFY_SOCKET", "relative/path", 1);
    assert_int_equal(sl_handoff_notify(1, true), -EINVAL);
    unsetenv("NOTIFY_SOCKET");
    close(fd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_handoff_roundtrip),
        cmocka_unit_test(test_client_giving_up_leaves_the_server_serving),
        cmocka_unit_test(test_second_upgrade_is_refused_while_one_is_in_progress),
        cmocka_unit_test(test_missing_file_and_stale_paths),
        cmocka_unit_test(test_garbage_and_silence),
        cmocka_unit_test(test_notify),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
