"""Active health checks over the wire: a target failing its /healthz probe, or gone entirely,
stops getting traffic within interval x unhealthy and comes back within interval x healthy; with
every target down the gateway answers 503 no_healthy_upstream; the state survives a reload."""
import time

import pytest

import backend as be
import harness

pytestmark = pytest.mark.deadline(60)

INTERVAL, HEALTHY, UNHEALTHY = 0.2, 2, 2
HEALTH = {"active": {"path": "/healthz", "interval": "200ms", "timeout": "100ms", "healthy": HEALTHY,
                     "unhealthy": UNHEALTHY}}
MARK_DOWN = INTERVAL * UNHEALTHY + 0.4  # plus a probe timeout and scheduling slack
MARK_UP = INTERVAL * HEALTHY + 0.4


def target(name, health_status=200):
    return be.paths({"/healthz": be.fixed(health_status, b"ok")}, default=be.fixed(200, name.encode()))


def config(backs, **extra):
    cfg = {"upstreams": {"u": harness.upstream(*backs, health=HEALTH)},
           "routes": [{"name": "r", "match": {"path_prefix": "/"}, "upstream": "u"}]}
    cfg.update(extra)
    return cfg


def reopen(env, old, handler):
    """A new Backend on the port of a closed one (backend.py always picks a fresh port)."""
    saved = be.free_port
    be.free_port = lambda: old.port
    try:
        b = be.Backend(handler, name=old.name + "-again")
    finally:
        be.free_port = saved
    env.backends.append(b)
    return b


def served(gw, n=30):
    """Bodies of n requests, one connection each so both workers take part."""
    out = []
    for _ in range(n):
        r = harness.request(gw.port, "GET", "/")
        out.append((r.status, r.body.decode(errors="replace")))
    return out


def client_requests(b):
    return len(b.find(lambda r: r.path != "/healthz"))


def test_failing_probe_takes_target_out(env):
    backs = [env.backend(target("t0"), name="t0"), env.backend(target("t1"), name="t1"),
             env.backend(target("t2", health_status=503), name="t2")]
    gw = env.gateway(**config(backs))
    time.sleep(harness.slack(MARK_DOWN))
    for b in backs:
        b.reset()
    got = served(gw, 40)
    assert all(s == 200 for s, _ in got), got
    assert client_requests(backs[2]) == 0
    assert client_requests(backs[0]) > 0 and client_requests(backs[1]) > 0
    assert client_requests(backs[0]) + client_requests(backs[1]) == 40
    assert backs[2].wait_requests(1, pred=lambda r: r.path == "/healthz"), "t2 is still probed"
    text = gw.stderr_path.read_text()
    assert f"upstream u target {backs[2].address} is unhealthy: status 503 ({UNHEALTHY} failures)" in text, text


def test_dead_target_marked_down_then_back(env):
    backs = [env.backend(target(f"t{i}"), name=f"t{i}") for i in range(3)]
    gw = env.gateway(**config(backs))
    assert {b for s, b in served(gw, 12)} == {"t0", "t1", "t2"}
    backs[2].close()
    time.sleep(harness.slack(MARK_DOWN))
    # Requests in the window before marking may fail (no retries yet); from here on, none may.
    got = served(gw, 40)
    assert all(s == 200 for s, _ in got), got
    assert "t2" not in {b for _, b in got}
    assert f"target {backs[2].address} is unhealthy: connection refused" in gw.stderr_path.read_text()

    again = reopen(env, backs[2], target("t2"))
    deadline = time.monotonic() + harness.slack(MARK_UP + 0.5)
    seen = False
    while time.monotonic() < deadline and not seen:
        seen = "t2" in {b for _, b in served(gw, 6)}
    assert seen, "t2 got no traffic after it came back"
    assert client_requests(again) > 0
    assert f"target {backs[2].address} is healthy again" in gw.stderr_path.read_text()


def test_all_unhealthy_is_503(env):
    backs = [env.backend(target(f"t{i}", health_status=503), name=f"t{i}") for i in range(3)]
    gw = env.gateway(**config(backs))
    time.sleep(harness.slack(MARK_DOWN))
    r = harness.request(gw.port, "GET", "/")
    harness.assert_gateway_error(r, 503, "no_healthy_upstream")
    assert sum(client_requests(b) for b in backs) == 0


def test_state_survives_reload(env):
    backs = [env.backend(target(f"t{i}"), name=f"t{i}") for i in range(3)]
    gw = env.gateway(**config(backs))
    backs[2].close()
    time.sleep(harness.slack(MARK_DOWN))
    assert all(s == 200 for s, _ in served(gw, 10))
    # An unrelated change: a second route. The dead target must not get a single request after it.
    cfg = config(backs)
    cfg["routes"].insert(0, {"name": "other", "match": {"path": "/other"}, "respond": {"body": "x"}})
    gw.reload(cfg)
    deadline = time.monotonic() + harness.slack(3)
    while time.monotonic() < deadline and harness.request(gw.port, "GET", "/other").status != 200:
        time.sleep(0.02)
    got = served(gw, 40)
    assert all(s == 200 for s, _ in got), got
    assert "t2" not in {b for _, b in got}
    assert "is healthy again" not in gw.stderr_path.read_text()
