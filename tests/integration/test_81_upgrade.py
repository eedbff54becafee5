"""Zero-downtime upgrade (docs/deploy.md "Upgrading without downtime"): `sluice run --handoff
PATH` takes the listening sockets of the gateway serving PATH over SCM_RIGHTS; that one stops
accepting once the new one is ready, drains and exits.

- under load (keep-alive clients and clients opening a new connection per request), three
  upgrades in a row: zero failed requests, zero refused connections, each old pid exits 0, the
  new one holds the very same listening sockets (socket inodes) and serves;
- an upgrade that fails (bad config; a port it cannot bind after it got the sockets) leaves the
  old gateway serving, still upgradable;
- a stale socket or a path that is not a socket: a clear line, and the gateway binds its own;
- SIGUSR2 starts the successor itself;
- a successor with fewer workers and one more address adopts every old socket of the kept
  address (none closes with its backlog) and binds the new one.
"""
import os
import re
import signal
import socket
import subprocess
import threading
import time

import pytest

import backend as be
import harness
from harness import slack

pytestmark = pytest.mark.deadline(120)


# ---- a gateway with --handoff ---------------------------------------------------------------------


class UpGateway(harness.Gateway):
    """harness.Gateway started as `sluice run -c FILE --handoff PATH`."""

    def __init__(self, workdir, config, handoff, name="sluice", env=None):
        super().__init__(workdir, config, name=name)
        self.handoff = str(handoff)
        self.extra_env = env or {}
        # the config names the ports (every generation shares them): the harness's fresh ones are unused
        self.port = int(self.config["listen"][0]["address"].rsplit(":", 1)[1])
        self.admin_port = int(self.config["admin"]["address"].rsplit(":", 1)[1])

    def start(self, wait=True, write=True):
        if write:
            self.write_config()
        out = open(self.stdout_path, "ab")
        err = open(self.stderr_path, "ab")
        self._files = [out, err]
        env = dict(os.environ)
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
        env.update(self.extra_env)
        self.proc = subprocess.Popen(
            [harness.sluice_bin(), "run", "-c", str(self.config_path), "--handoff", self.handoff],
            stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=str(self.dir), env=env, start_new_session=True)
        self.signalled = False
        if self not in harness.ACTIVE:
            harness.ACTIVE.append(self)
        if wait:
            self.wait_serving()
        return self

    def status_pid(self):
        try:
            status, _, body = self.admin_request("GET", "/status", timeout=1.0)
            return body.get("pid") if status == 200 and isinstance(body, dict) else None
        except (OSError, ValueError):
            return None

    def wait_serving(self, timeout=15.0):
        """Until this process answers the admin API (/ready, and /status says its pid)."""
        deadline = time.monotonic() + slack(timeout)
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                self.returncode = rc
                self.signalled = True
                raise harness.GatewayDied(f"sluice exited with {rc} before serving\n{self.log_tail()}")
            if self.admin_status("/ready") == 200 and self.status_pid() == self.proc.pid:
                return
            time.sleep(0.05)
        raise AssertionError(f"sluice pid {self.proc.pid} not serving after {slack(timeout)}s\n{self.log_tail()}")

    def stderr_text(self):
        return self.stderr_path.read_text(errors="replace")


def up(launcher, *args, **kw):
    """An UpGateway the test's launcher (the env fixture) stops at teardown, reporting a crash."""
    gw = UpGateway(*args, **kw)
    launcher.gateways.append(gw)
    return gw


def base_config(port, admin_port, workers=2, **extra):
    cfg = {"listen": [{"address": f"127.0.0.1:{port}"}], "admin": {"address": f"127.0.0.1:{admin_port}"},
           "workers": workers, "timeouts": {"drain": "10s"}}
    cfg.update(extra)
    return cfg


def routes(backend):
    return {"upstreams": {"app": harness.upstream(backend)},
            "routes": [{"name": "slow", "match": {"path_prefix": "/slow"}, "upstream": "app"},
                       {"name": "hello", "match": {"path_prefix": "/"}, "respond": {"status": 200, "body": "hello\n"}}]}


# ---- listening sockets as the kernel sees them -------------------------------------------------------


def listen_inodes(port):
    """Inodes of the TCP sockets listening on 127.0.0.1:port (/proc/net/tcp, state 0A)."""
    out = set()
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            local, state, inode = parts[1], parts[3], parts[9]
            if state == "0A" and int(local.split(":")[1], 16) == port:
                out.add(int(inode))
    return out


def held_sockets(pid):
    """Inodes of the sockets open in process `pid`."""
    out = set()
    d = f"/proc/{pid}/fd"
    for name in os.listdir(d):
        try:
            m = re.match(r"socket:\[(\d+)\]", os.readlink(f"{d}/{name}"))
        except OSError:
            continue
        if m:
            out.add(int(m.group(1)))
    return out


def listeners_of(pid, port):
    return listen_inodes(port) & held_sockets(pid)


# ---- the load ---------------------------------------------------------------------------------------


class Load:
    """Client threads sending GETs until stop(). `keepalive` threads each reuse one connection
    (reconnecting after a `Connection: close` answer); a reused connection closed by the server
    before any byte of the answer is retried once on a new connection, as HTTP clients do with
    idempotent requests on a stale keep-alive connection: counted in `stale_retries`. `fresh`
    threads open a new connection for every request. Everything else that is not a complete
    answer is a failure: a refused or failed connect (`refused`), an error on a new connection or
    on the retry (`failed`). With several ports the threads spread over those not marked
    `down` (the client's balancer)."""

    def __init__(self, ports, paths, keepalive=3, fresh=3, pause=0.0):
        self.ports = list(ports)
        self.down = set()
        self.paths = paths
        self.pause = pause
        self.lock = threading.Lock()
        self.stop_ev = threading.Event()
        self.counts = {}  # port -> dict
        self.events = []  # (time, port, kind, detail) of every failure
        self.statuses = {}
        self.threads = [threading.Thread(target=self._keepalive, args=(i,), daemon=True) for i in range(keepalive)]
        self.threads += [threading.Thread(target=self._fresh, args=(i,), daemon=True) for i in range(fresh)]

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def stop(self):
        self.stop_ev.set()
        for t in self.threads:
            t.join(timeout=slack(30))
        assert not any(t.is_alive() for t in self.threads), "a client thread hangs"

    def _count(self, port, key, n=1):
        with self.lock:
            c = self.counts.setdefault(port, {"ok": 0, "failed": 0, "refused": 0, "connects": 0,
                                              "stale_retries": 0})
            c[key] += n

    def _fail(self, port, kind, detail):
        with self.lock:
            self.events.append((time.monotonic(), port, kind, detail))
        self._count(port, kind)

    def _ok(self, port, resp):
        self._count(port, "ok")
        with self.lock:
            self.statuses[resp.status] = self.statuses.get(resp.status, 0) + 1

    def total(self, key, ports=None):
        with self.lock:
            return sum(c[key] for p, c in self.counts.items() if ports is None or p in ports)

    def _port(self, i):
        live = [p for p in self.ports if p not in self.down]
        return live[i % len(live)]

    def _connect(self, port):
        self._count(port, "connects")
        try:
            return harness.RawConn(port, timeout=10)
        except ConnectionRefusedError as e:
            self._fail(port, "refused", repr(e))
        except OSError as e:
            self._fail(port, "refused", repr(e))
        return None

    def _path(self, n):
        return self.paths[n % len(self.paths)]

    def _fresh(self, i):
        n = i
        while not self.stop_ev.is_set():
            port = self._port(n)
            n += 1
            c = self._connect(port)
            if c is None:
                continue
            try:
                r = c.roundtrip("GET", self._path(n), headers=[("Connection", "close")])
                self._ok(port, r)
            except (OSError, harness.ConnectionClosed, AssertionError) as e:
                self._fail(port, "failed", f"new connection: {e!r}")
            finally:
                c.close()
            if self.pause:
                time.sleep(self.pause)

    def _keepalive(self, i):
        n = i
        c, port, used = None, None, 0
        while not self.stop_ev.is_set():
            if c is None:
                port = self._port(n)
                c = self._connect(port)
                used = 0
                if c is None:
                    n += 1
                    continue
            n += 1
            path = self._path(n)
            try:
                c.request("GET", path)
                r = c.read_response()
                used += 1
                self._ok(port, r)
                if (r.header("Connection") or "").lower() == "close":
                    c.close()
                    c = None
            except (OSError, harness.ConnectionClosed, AssertionError) as e:
                got_bytes = c.reader.avail() > 0
                c.close()
                c = None
                if used == 0 or got_bytes:
                    self._fail(port, "failed", f"keep-alive, {used} answered before: {e!r}")
                    continue
                self._count(port, "stale_retries")
                port = self._port(n)  # through the client's balancer, as a new request would go
                c2 = self._connect(port)
                if c2 is None:
                    continue
                try:
                    r = c2.roundtrip("GET", path)
                    self._ok(port, r)
                    c, used = c2, 1
                except (OSError, harness.ConnectionClosed, AssertionError) as e2:
                    c2.close()
                    self._fail(port, "failed", f"retry of a stale keep-alive request: {e2!r}")
            if self.pause:
                time.sleep(self.pause)
        if c is not None:
            c.close()

    def wait_requests(self, n, timeout=10.0):
        deadline = time.monotonic() + slack(timeout)
        target = self.total("ok") + n
        while self.total("ok") < target:
            assert time.monotonic() < deadline, f"the load made no progress: {self.counts}"
            time.sleep(0.02)

    def summary(self):
        return (f"{self.total('ok')} answered, {self.total('failed')} failed, {self.total('refused')} refused "
                f"connects of {self.total('connects')}, {self.total('stale_retries')} stale keep-alive retries, "
                f"statuses {dict(sorted(self.statuses.items()))}")


def wait_exit(proc, timeout):
    try:
        return proc.wait(timeout=slack(timeout))
    except subprocess.TimeoutExpired:
        return None


# ---- tests -----------------------------------------------------------------------------------------


def test_three_upgrades_under_load_lose_nothing(env, tmp_path):
    app = env.backend(be.paths({"/slow": be.sleep_then(0.05, be.fixed(200, b"slow\n"))}, default=be.fixed(200, b"x")))
    port, admin = harness.free_port(), harness.free_port()
    sock = tmp_path / "handoff.sock"
    cfg = base_config(port, admin, **routes(app))
    gens = [up(env, tmp_path / "gen0", cfg, sock, name="gen0").start()]
    original = listeners_of(gens[0].pid, port)
    assert len(original) == 2, f"2 workers should hold 2 listening sockets, found {original}"
    assert oct(os.stat(sock).st_mode & 0o777) == "0o600"

    load = Load([port], ["/", "/slow", "/slow?x=1"], keepalive=4, fresh=4).start()
    try:
        load.wait_requests(100)
        for g in range(1, 4):
            old = gens[-1]
            old.signalled = True  # it exits on its own once drained
            new = up(env, tmp_path / f"gen{g}", cfg, sock, name=f"gen{g}").start()
            gens.append(new)
            # The very same kernel sockets, not new ones beside them.
            held = listeners_of(new.pid, port)
            assert held == original, f"gen{g} holds {held}, not the old sockets {original}\n{new.log_tail()}"
            now = listen_inodes(port)
            assert now == original, f"listening sockets {now}, expected {original}\n{new.log_tail()}"
            rc = wait_exit(old.proc, 20)
            assert rc == 0, f"old pid {old.pid}: exit {rc}\n{old.log_tail()}"
            assert "took over 2 of 2 listening sockets" in old.stderr_text(), old.log_tail()
            load.wait_requests(200)
    finally:
        load.stop()
    print(f"\n3 upgrades under load: {load.summary()}")
    for e in load.events[:10]:
        print("  ", e)
    assert load.total("failed") == 0 and load.total("refused") == 0, load.summary()
    assert load.total("ok") >= 700  # the progress waits above
    assert gens[-1].alive() and gens[-1].status_pid() == gens[-1].pid
    assert listen_inodes(port) == original
    r = harness.request(port, "GET", "/slow")
    assert r.status == 200 and r.body == b"slow\n"


def test_failed_upgrades_leave_the_old_gateway_serving(env, tmp_path):
    port, admin, taken_port = harness.free_port(), harness.free_port(), harness.free_port()
    sock = tmp_path / "handoff.sock"
    cfg = base_config(port, admin, routes=[{"name": "hello", "match": {"path_prefix": "/"},
                                            "respond": {"status": 200, "body": "hello\n"}}])
    old = up(env, tmp_path / "old", cfg, sock, name="old").start()
    inodes = listeners_of(old.pid, port)
    sock_ino = os.stat(sock).st_ino
    taken = socket.socket()
    taken.bind(("127.0.0.1", taken_port))
    taken.listen()
    load = Load([port], ["/"], keepalive=2, fresh=2).start()
    try:
        load.wait_requests(50)
        # 1. A config that does not load: it exits before asking for anything.
        bad = dict(cfg, workers="many")
        b1 = up(env, tmp_path / "bad1", bad, sock, name="bad1").start(wait=False)
        assert wait_exit(b1.proc, 15) == 1
        b1.signalled = True
        # 2. It gets the sockets, then cannot bind its second address: it gives up; the old one
        #    had changed nothing and keeps accepting.
        two = dict(cfg, listen=cfg["listen"] + [{"address": f"127.0.0.1:{taken_port}"}])
        b2 = up(env, tmp_path / "bad2", two, sock, name="bad2").start(wait=False)
        assert wait_exit(b2.proc, 15) == 1
        b2.signalled = True
        assert "address already in use" in b2.stderr_text()
        deadline = time.monotonic() + slack(5)
        while "went away before it was ready" not in old.stderr_text():
            assert time.monotonic() < deadline, old.log_tail()
            time.sleep(0.05)
        load.wait_requests(100)
        assert old.alive() and old.status_pid() == old.pid
        assert listeners_of(old.pid, port) == inodes
        assert os.stat(sock).st_ino == sock_ino, "a failed upgrade replaced the handoff socket"
        # 3. Still upgradable afterwards.
        old.signalled = True
        new = up(env, tmp_path / "new", cfg, sock, name="new").start()
        assert wait_exit(old.proc, 20) == 0
        assert listeners_of(new.pid, port) == inodes
        load.wait_requests(100)
    finally:
        load.stop()
        taken.close()
    print(f"\ntwo failed upgrades and a good one under load: {load.summary()}")
    assert load.total("failed") == 0 and load.total("refused") == 0, load.summary()


def test_stale_socket_and_wrong_path_fall_back_to_binding(env, tmp_path):
    port, admin = harness.free_port(), harness.free_port()
    cfg = base_config(port, admin, routes=[{"name": "hello", "match": {"path_prefix": "/"},
                                            "respond": {"status": 200, "body": "hello\n"}}])
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.bind(str(stale))
    s.close()  # the file stays, nobody listens: what a killed gateway leaves
    gw = up(env, tmp_path / "a", cfg, stale, name="a").start()
    assert "stale socket" in gw.stderr_text()
    assert harness.request(port, "GET", "/").status == 200
    assert stale.is_socket()
    # it serves the path now: the next one takes over from it
    gw.signalled = True
    nxt = up(env, tmp_path / "b", cfg, stale, name="b").start()
    assert wait_exit(gw.proc, 20) == 0
    assert "handed over 2 listening sockets" in nxt.stderr_text()
    assert nxt.stop() == 0
    assert not stale.exists(), "a clean exit leaves the handoff socket behind"

    wrong = tmp_path / "notes.txt"
    wrong.write_text("not a socket\n")
    gw2 = up(env, tmp_path / "c", cfg, wrong, name="c").start()
    err = gw2.stderr_text()
    assert "is not a socket; binding them instead" in err
    assert "upgrades are off" in err
    assert harness.request(port, "GET", "/").status == 200
    assert wrong.read_text() == "not a socket\n"
    # SIGUSR2 with no handoff socket served: refused with a reason, nothing started.
    gw2.send_signal(signal.SIGUSR2)
    deadline = time.monotonic() + slack(5)
    while "SIGUSR2: no upgrade started" not in gw2.stderr_text():
        assert time.monotonic() < deadline, gw2.log_tail()
        time.sleep(0.05)
    assert gw2.stop() == 0


def notifications(sock, timeout):
    """The datagrams on `sock` (a systemd NOTIFY_SOCKET stand-in) within `timeout` seconds."""
    out = []
    deadline = time.monotonic() + slack(timeout)
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            out.append(sock.recv(4096).decode())
        except socket.timeout:
            break
    return out


def test_sigusr2_starts_the_successor_and_systemd_follows_it(env, tmp_path):
    port, admin = harness.free_port(), harness.free_port()
    sock = tmp_path / "handoff.sock"
    cfg = base_config(port, admin, routes=[{"name": "hello", "match": {"path_prefix": "/"},
                                            "respond": {"status": 200, "body": "hello\n"}}])
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    old = up(env, tmp_path / "old", cfg, sock, name="old", env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
    old.start()
    assert notifications(notify, 2) == [f"READY=1\nMAINPID={old.pid}\n"]
    inodes = listeners_of(old.pid, port)
    load = Load([port], ["/"], keepalive=2, fresh=2).start()
    new_pid = None
    try:
        load.wait_requests(50)
        old.send_signal(signal.SIGUSR2)
        assert wait_exit(old.proc, 20) == 0, old.log_tail()
        deadline = time.monotonic() + slack(10)
        while new_pid in (None, old.pid):
            assert time.monotonic() < deadline, old.log_tail()
            new_pid = old.status_pid()  # same admin port: the successor answers
            time.sleep(0.05)
        assert listeners_of(new_pid, port) == inodes
        load.wait_requests(100)
        # systemd (Type=notify) learns the successor from the old main process, then hears it is ready
        seen = notifications(notify, 2)
        assert seen[:1] == [f"MAINPID={new_pid}\n"], seen
        assert f"READY=1\nMAINPID={new_pid}\n" in seen, seen
    finally:
        load.stop()
        notify.close()
        if new_pid is not None:  # not our child: started by the old gateway
            os.kill(new_pid, signal.SIGTERM)
            deadline = time.monotonic() + slack(10)
            while os.path.exists(f"/proc/{new_pid}") and time.monotonic() < deadline:
                time.sleep(0.05)
    print(f"\nSIGUSR2 upgrade under load: {load.summary()}")
    assert load.total("failed") == 0 and load.total("refused") == 0, load.summary()


def test_fewer_workers_and_a_new_address_adopt_every_old_socket(env, tmp_path):
    port, port2, admin = harness.free_port(), harness.free_port(), harness.free_port()
    sock = tmp_path / "handoff.sock"
    hello = [{"name": "hello", "match": {"path_prefix": "/"}, "respond": {"status": 200, "body": "hello\n"}}]
    old = up(env, tmp_path / "old", base_config(port, admin, workers=3, routes=hello), sock, name="old").start()
    inodes = listeners_of(old.pid, port)
    assert len(inodes) == 3
    cfg2 = base_config(port, admin, workers=2, routes=hello)
    cfg2["listen"].append({"address": f"127.0.0.1:{port2}"})
    old.signalled = True
    new = up(env, tmp_path / "new", cfg2, sock, name="new").start()
    assert wait_exit(old.proc, 20) == 0
    # worker 2 of the old process is gone, its socket (and backlog) lives on in the new one
    assert listeners_of(new.pid, port) == inodes
    assert len(listeners_of(new.pid, port2)) == 2
    assert "took over 3 of 3 listening sockets" in old.stderr_text()
    for p in (port, port2):
        assert harness.request(p, "GET", "/").status == 200
    # back to one address: the second's sockets are offered and, unclaimed, close with the old one
    old2, new.signalled = new, True
    newer = up(env, tmp_path / "newer", base_config(port, admin, workers=2, routes=hello), sock, name="newer").start()
    assert wait_exit(old2.proc, 20) == 0
    assert "took over 3 of 5 listening sockets" in old2.stderr_text()
    assert listeners_of(newer.pid, port) == inodes
    assert listen_inodes(port2) == set()
