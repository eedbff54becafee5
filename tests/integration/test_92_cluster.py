"""Cluster mode (docs/ratelimit.md "Cluster mode"): sluice processes sharing one real
redis-server that the test starts on a free loopback port (no persistence, killed by PID).

- three gateways hammered together for 8 s admit the cluster-wide bound of one limit, +-2%;
- Redis killed mid-test: `on_failure: allow` keeps serving with per-node limits, `deny` answers
  503 gateway_overloaded (redis_unavailable); Redis back on the same port: cluster limits resume
  without restarting sluice;
- a quota counted in Redis survives a gateway restart;
- with `slice: 10` a hot key costs Redis far fewer calls, and the admitted total stays within
  the bound plus nodes x workers x slice.
"""
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

import harness

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")


class Redis:
    """One redis-server on 127.0.0.1:port, started and killed by PID."""

    def __init__(self, workdir, port=None):
        self.port = port or harness.free_port()
        self.dir = workdir
        self.proc = None

    def start(self):
        log = open(self.dir / f"redis-{self.port}.log", "ab")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=str(self.dir), start_new_session=True)
        log.close()
        deadline = time.monotonic() + harness.slack(5)
        while time.monotonic() < deadline:
            if self.ping():
                return self
            time.sleep(0.02)
        raise AssertionError(f"redis-server did not start on port {self.port}")

    def ping(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def cli(self, *args):
        out = subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True, timeout=10)
        return out.stdout

    def evalsha_calls(self):
        m = re.search(r"cmdstat_evalsha:calls=(\d+)", self.cli("INFO", "commandstats"))
        return int(m.group(1)) if m else 0


@pytest.fixture
def redis(tmp_path):
    r = Redis(tmp_path).start()
    yield r
    r.kill()


def store(r, **opts):
    conf = {"address": f"127.0.0.1:{r.port}"}
    conf.update(opts)
    return {"redis": conf}


def limited_route(limit, **extra):
    route = {"name": "api", "match": {"path_prefix": "/api"}, "rate_limit": [limit],
             "respond": {"status": 200, "body": "ok\n"}}
    route.update(extra)
    return route


def metric(gw, name):
    status, _, body = gw.admin_get("/metrics")
    assert status == 200
    m = re.search(rf"^{name} (\d+)$", body.decode(), re.M)
    return int(m.group(1)) if m else None


def wait_store_up(gws, up=True, timeout=15):
    deadline = time.monotonic() + harness.slack(timeout)
    while time.monotonic() < deadline:
        if all(metric(g, "sluice_store_up") == int(up) for g in gws):
            return
        time.sleep(0.1)
    raise AssertionError(f"sluice_store_up did not become {int(up)}: " +
                         ", ".join(str(metric(g, "sluice_store_up")) for g in gws))


def hammer(gws, path, duration, clients_per_gateway=2):
    """Every gateway gets `clients_per_gateway` keep-alive clients sending GET `path` for
    `duration` seconds from one common start. Returns (admitted, refused, other, span)."""
    counts = {"ok": 0, "limited": 0, "other": 0}
    lock = threading.Lock()
    n = len(gws) * clients_per_gateway
    ready = threading.Barrier(n)
    clock = {}
    last = [0.0]

    def client(gw):
        ok = lim = other = 0
        with harness.RawConn(gw.port, timeout=10) as c:
            if ready.wait() == 0:
                clock["start"] = time.monotonic()
            while "start" not in clock:
                time.sleep(0.0005)
            stop_at = clock["start"] + duration
            now = time.monotonic()
            while now < stop_at:
                r = c.roundtrip("GET", path)
                if r.status == 200:
                    ok += 1
                elif r.status == 429 and r.header("Sluice-Error") == "rate_limited":
                    lim += 1
                else:
                    other += 1
                now = time.monotonic()
        with lock:
            counts["ok"] += ok
            counts["limited"] += lim
            counts["other"] += other
            last[0] = max(last[0], now)

    threads = [threading.Thread(target=client, args=(g,)) for g in gws for _ in range(clients_per_gateway)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return counts["ok"], counts["limited"], counts["other"], last[0] - clock["start"]


def burst(gw, path, cap=100):
    """Statuses of requests sent one after another until the first non-200 (included)."""
    out = []
    with harness.RawConn(gw.port) as c:
        for _ in range(cap):
            r = c.roundtrip("GET", path)
            out.append((r.status, r.header("Sluice-Error")))
            if r.status != 200:
                break
    return out


def admitted_until_refused(gw, path):
    statuses = burst(gw, path)
    assert statuses[-1] == (429, "rate_limited"), statuses[-3:]
    return len(statuses) - 1


@pytest.mark.deadline(60)
def test_three_nodes_share_one_limit_within_two_percent(env, redis):
    limit = {"key": "route", "rate": "50/s", "burst": 10}
    gws = [env.gateway(routes=[limited_route(limit)], stores=store(redis)) for _ in range(3)]
    wait_store_up(gws)
    duration = 8.0
    ok, lim, other, span = hammer(gws, "/api/x", duration)
    expected = 50 * duration + 10
    calls = redis.evalsha_calls()
    print(f"\n3 nodes x 2 workers, 50/s burst 10, {duration:.0f} s: admitted {ok}, refused {lim}, "
          f"bound {expected:.0f} ({100 * (ok - expected) / expected:+.2f}%), over the measured {span:.3f} s "
          f"{50 * span + 10:.1f}; redis EVALSHA calls {calls}")
    assert other == 0
    assert lim > 5 * ok  # really hammered: every node alone would have admitted far more
    assert abs(ok - expected) <= 0.02 * expected
    assert ok <= 50 * span + 10 + 1
    for g in gws:
        assert metric(g, "sluice_store_fallbacks_total") == 0
        assert metric(g, "sluice_store_failures_total") == 0


@pytest.mark.deadline(90)
def test_redis_down_allow_limits_per_node_deny_refuses_and_redis_back_resumes(env, redis):
    # 1/m: nothing refills during the test, so every count below is exact.
    limit = {"key": "route", "rate": "1/m", "burst": 5}
    a, b = (env.gateway(routes=[limited_route(limit)], stores=store(redis, on_failure="allow")) for _ in range(2))
    d = env.gateway(routes=[limited_route(limit)], stores=store(redis, on_failure="deny"))
    wait_store_up([a, b, d])
    # Cluster: one budget of 5 for the three of them.
    assert admitted_until_refused(a, "/api") == 5
    assert admitted_until_refused(b, "/api") == 0
    assert burst(d, "/api") == [(429, "rate_limited")]

    redis.kill()
    # allow: each node on its own table, which never saw this key: 5 each.
    assert admitted_until_refused(a, "/api") == 5
    assert admitted_until_refused(b, "/api") == 5
    # deny: every request that needs Redis is refused.
    for _ in range(3):
        r = d.request("GET", "/api")
        harness.assert_gateway_error(r, 503, "gateway_overloaded")
    wait_store_up([a, b, d], up=False)
    refused = d.wait_access_log(lambda e: e.get("status") == 503)
    assert refused and refused[0]["detail"] == "redis_unavailable"
    assert metric(a, "sluice_store_fallbacks_total") >= 6
    assert metric(d, "sluice_store_refusals_total") >= 3
    # The doctor names it: rate limits are per node until Redis is back.
    deadline = time.monotonic() + harness.slack(10)
    while time.monotonic() < deadline:
        status, _, report = a.admin_request("GET", "/doctor")
        found = [f for f in report["findings"] if f["cause"] == "rate_limit" and "redis" in f["summary"]]
        if found:
            break
        time.sleep(0.5)
    assert found, report
    assert found[0]["severity"] == "warning"
    assert f"rate limits are per node until redis at 127.0.0.1:{redis.port} is back" in found[0]["summary"]
    assert "rate limits are per node until it is back" in a.stderr_path.read_text()

    # Redis back on the same port (empty: no persistence): cluster limits resume, no restart.
    redis.start()
    wait_store_up([a, b, d], timeout=20)
    assert admitted_until_refused(a, "/api") == 5
    assert admitted_until_refused(b, "/api") == 0
    assert burst(d, "/api") == [(429, "rate_limited")]
    assert "cluster-wide rate limits resumed" in b.stderr_path.read_text()
    assert all(g.alive() for g in (a, b, d))


def test_a_quota_in_redis_survives_a_gateway_restart(env, redis):
    route = {"name": "q", "match": {"path_prefix": "/q"}, "quota": {"key": "ip", "limit": "5/day", "name": "daily"},
             "respond": {"status": 200, "body": "ok\n"}}
    gw = env.gateway(routes=[route], stores=store(redis))
    other = env.gateway(routes=[route], stores=store(redis))
    for _ in range(3):
        assert gw.request("GET", "/q").status == 200
    gw.stop()
    gw.start()
    assert gw.request("GET", "/q").status == 200
    assert other.request("GET", "/q").status == 200  # the same count on another node
    r = gw.request("GET", "/q")
    harness.assert_gateway_error(r, 429, "quota_exceeded")
    retry = int(r.header("Retry-After"))
    assert 1 <= retry <= 86400
    r = other.request("GET", "/q")
    harness.assert_gateway_error(r, 429, "quota_exceeded")


@pytest.mark.deadline(90)
def test_leasing_a_hot_key_saves_redis_calls_within_the_slice_bound(env, redis):
    limit = {"key": "route", "rate": "100/s", "burst": 40}
    duration, nodes, workers, slice_ = 5.0, 3, 2, 10
    figures = {}
    for s in (0, slice_):
        if s:
            limit = dict(limit, name="leased")  # a new identity: a fresh budget
        redis.cli("CONFIG", "RESETSTAT")
        gws = [env.gateway(routes=[limited_route(limit)], stores=store(redis, slice=s)) for _ in range(nodes)]
        wait_store_up(gws)
        before = redis.evalsha_calls()
        ok, lim, other, span = hammer(gws, "/api/x", duration)
        calls = redis.evalsha_calls() - before
        leased = sum(metric(g, "sluice_store_lease_admits_total") for g in gws)
        figures[s] = (ok, lim, calls, span)
        print(f"\nslice {s}: admitted {ok}, refused {lim}, bound {100 * span + 40 + 1:.0f} "
              f"(+{nodes * workers * s} for leases), redis calls {calls} "
              f"({calls / max(ok + lim, 1):.3f} per request, {calls / max(ok, 1):.2f} per admitted), "
              f"decided from leases {leased}")
        assert other == 0
        assert ok <= 100 * span + 40 + 1 + nodes * workers * s
        assert ok >= 100 * duration * 0.9
        for g in gws:
            g.stop()
    ok0, lim0, calls0, _ = figures[0]
    ok1, lim1, calls1, _ = figures[slice_]
    assert calls0 >= 0.95 * (ok0 + lim0)  # without leases: one call per request
    assert calls1 * 4 <= calls0 * (ok1 + lim1) / (ok0 + lim0)  # per request, at least 4x fewer


def test_a_client_leaving_while_redis_is_slow_cancels_its_call(env, redis):
    limit = {"key": "ip", "rate": "100/s", "burst": 100}
    gw = env.gateway(routes=[limited_route(limit, quota={"key": "ip", "limit": "1000/hour"})],
                     stores=store(redis, command_timeout="2s"))
    assert gw.request("GET", "/api").status == 200  # connected, script loaded
    os.kill(redis.proc.pid, signal.SIGSTOP)
    try:
        for _ in range(20):  # each one waits on Redis, then goes away
            c = harness.RawConn(gw.port)
            c.send(harness.build_request("GET", "/api"))
            time.sleep(0.01)
            c.close()
        time.sleep(0.2)
    finally:
        os.kill(redis.proc.pid, signal.SIGCONT)
    # The cancelled calls' replies arrive and are dropped; the gateway goes on.
    for _ in range(5):
        assert gw.request("GET", "/api").status == 200
    assert gw.alive()
    assert metric(gw, "sluice_store_timeouts_total") == 0


def test_a_reload_keeps_the_running_store_and_says_so(env, redis):
    limit = {"key": "route", "rate": "1/m", "burst": 3}
    gw = env.gateway(routes=[limited_route(limit)], stores=store(redis))
    assert admitted_until_refused(gw, "/api") == 3
    cfg = {"routes": [limited_route(limit), {"name": "marker", "match": {"path_prefix": "/marker"},
                                             "respond": {"status": 200, "body": "two"}}],
           "stores": store(redis, on_failure="deny", slice=5)}
    cfg["stores"]["redis"]["address"] = f"127.0.0.1:{harness.free_port()}"
    gw.reload(cfg)
    deadline = time.monotonic() + harness.slack(5)
    while gw.request("GET", "/marker").body != b"two" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "reload: stores.redis changes need a restart; the running store (redis at 127.0.0.1:" \
        f"{redis.port}) stays" in gw.stderr_path.read_text()
    # Same limit, same Redis: its spent budget is still spent.
    assert burst(gw, "/api") == [(429, "rate_limited")]
    assert metric(gw, "sluice_store_up") == 1
