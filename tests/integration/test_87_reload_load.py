"""Reload under load: 50 SIGHUP reloads, alternating two valid configs that differ in a route and
an upstream, while wrk and Python clients (keep-alive and new-connection) drive a real backend
for ~10 s. Zero failed requests; one bad config in the middle is refused and the config before
it keeps serving; afterwards the gateway's open fds are back to the warm baseline (± a small
margin) and its RSS has grown by less than 10 MiB (the figures are printed)."""
import os
import re
import shutil
import subprocess
import threading
import time

import pytest

import backend as be
import harness

RELOADS = 50
WARM_RELOADS = 5
RUN_SECONDS = 10
FD_MARGIN = 3
RSS_BOUND_KB = 10 * 1024
pytestmark = pytest.mark.deadline(150)


fd_count = harness.fd_count


def config(stable, flip, variant):
    """`variant` 0 or 1: the `local` route's body and the `flip` upstream's read timeout differ;
    the `stable` upstream is the same in both."""
    keepalive = {"max_idle": 64, "idle_timeout": "1s"}
    return {
        "limits": {"max_connections": 10000},
        "upstreams": {
            "stable": harness.upstream(stable, keepalive=keepalive),
            "flip": harness.upstream(flip, keepalive=keepalive, timeouts={"read": "30s" if variant else "29s"}),
        },
        "routes": [
            {"name": "stable", "match": {"path_prefix": "/s/"}, "upstream": "stable"},
            {"name": "flip", "match": {"path_prefix": "/f/"}, "upstream": "flip"},
            {"name": "local", "match": {"path_prefix": "/l/"},
             "respond": {"status": 200, "body": f"variant {variant}\n"}},
        ],
    }


def bad_config(stable, flip):
    cfg = config(stable, flip, 0)
    cfg["routes"][0]["upstream"] = "missing"
    return cfg


def wait_for(pred, timeout):
    deadline = time.monotonic() + harness.slack(timeout)
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def wrk(port, seconds, path):
    return subprocess.Popen(["wrk", "-t2", "-c16", f"-d{seconds}s", f"--timeout={int(harness.slack(10))}s",
                             f"http://127.0.0.1:{port}{path}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def wrk_result(proc):
    out, _ = proc.communicate(timeout=harness.slack(60))
    m = re.search(r"(\d+) requests in", out)
    assert m, out
    errors = 0
    s = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if s:
        errors += sum(int(g) for g in s.groups())
    n = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if n:
        errors += int(n.group(1))
    return int(m.group(1)), errors, out


class Clients:
    """Python clients until stopped: even ones keep one connection, odd ones reconnect for every
    request; they rotate over the proxied and the local routes and check every answer."""

    def __init__(self, gw, n):
        self.gw, self.stop = gw, threading.Event()
        self.failures, self.counts = [], [0] * n
        self.threads = [threading.Thread(target=self.run, args=(t,), daemon=True) for t in range(n)]

    def run(self, t):
        conn = None
        try:
            while not self.stop.is_set():
                if conn is None:
                    conn = self.gw.conn(timeout=20)
                path = ("/s/", "/f/", "/l/")[self.counts[t] % 3] + str(t)
                r = conn.roundtrip("GET", path)
                if r.status != 200 or (path.startswith("/l/") and not r.body.startswith(b"variant ")):
                    self.failures.append(f"client {t}: {path} -> {r.status} {r.body[:200]!r}")
                    return
                self.counts[t] += 1
                if t % 2:
                    conn.close()
                    conn = None
        except Exception as e:
            self.failures.append(f"client {t}: {e!r}")
        finally:
            if conn is not None:
                conn.close()

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(30)


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed")
def test_fifty_reloads_under_load(env):
    stable, flip = env.backend(be.fixed(200, b"stable\n"), name="stable"), env.backend(be.fixed(200, b"flip\n"),
                                                                                        name="flip")
    gw = env.gateway(**config(stable, flip, 0))
    variant = 0

    def reload_next():
        nonlocal variant
        variant ^= 1
        gw.reload(config(stable, flip, variant))
        time.sleep(0.15)

    # Warm-up: the same mix, shorter, so pools, free lists and malloc arenas reach their size.
    w = wrk(gw.port, 2, "/s/warm")
    with Clients(gw, 6) as warm:
        for _ in range(WARM_RELOADS):
            reload_next()
        wrk_result(w)
    assert not warm.failures, warm.failures[:5]
    time.sleep(harness.slack(2.0))  # idle upstream connections time out (1s)
    fds_base, rss_base = fd_count(gw.pid), gw.rss_kb()

    # The run: wrk on the unchanged upstream, Python clients on all three routes, 50 reloads
    # spread over it, and one bad config in the middle.
    w = wrk(gw.port, RUN_SECONDS, "/s/x")
    start = time.monotonic()
    bad_refused = None
    with harness.RssSampler(gw) as sampler, Clients(gw, 6) as clients:
        for i in range(RELOADS):
            if i == RELOADS // 2:
                before = gw.request("GET", "/l/x").body
                failed = gw.stderr_path.read_text().count("reload of")
                gw.reload(bad_config(stable, flip))
                assert wait_for(lambda: gw.stderr_path.read_text().count("reload of") > failed, 5), gw.log_tail()
                bad_refused = gw.request("GET", "/l/x").body == before
            reload_next()
        # Keep the clients going until wrk ends.
        total, wrk_errors, wrk_out = wrk_result(w)
    elapsed = time.monotonic() - start
    assert gw.alive(), gw.log_tail()
    assert bad_refused, "the bad config was not refused, or the previous config stopped serving"
    failures = clients.failures + ([f"wrk: {wrk_errors} errors\n{wrk_out}"] if wrk_errors else [])
    assert not failures, "\n".join(failures[:10])
    log = gw.stderr_path.read_text()
    # SIGHUPs that arrive before the previous one is handled coalesce (see test_85_reload.py)
    assert (WARM_RELOADS + RELOADS) * 3 // 4 <= log.count("config reloaded") <= WARM_RELOADS + RELOADS, log[-2000:]
    assert log.count("reload of") == 1, log[-2000:]
    # The last config is the one in force.
    want = f"variant {variant}\n".encode()
    assert wait_for(lambda: gw.request("GET", "/l/x").body == want, 3)

    # Descriptors: once the pools' idle timeout has passed, back to the warm baseline.
    wait_for(lambda: fd_count(gw.pid) <= fds_base + FD_MARGIN, 5)
    fds_after = fd_count(gw.pid)
    rss_after = gw.rss_kb()
    print(f"\nreload under load: {total} wrk requests + {sum(clients.counts)} checked client requests in "
          f"{elapsed:.1f}s, {RELOADS} reloads + 1 refused; fds {fds_base} -> {fds_after}; "
          f"RSS {rss_base} kB -> peak {sampler.peak_kb} kB -> {rss_after} kB "
          f"(growth {rss_after - rss_base} kB)")
    assert fds_after <= fds_base + FD_MARGIN, (fds_base, fds_after, sorted(os.listdir(f"/proc/{gw.pid}/fd")))
    if not harness.SANITIZED:  # sanitizer runtimes grow their own shadow and quarantine memory
        assert rss_after - rss_base < RSS_BOUND_KB, (rss_base, rss_after)
    assert sum(clients.counts) > RELOADS and total > RELOADS, (clients.counts, total)
