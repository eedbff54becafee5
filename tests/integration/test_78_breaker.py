"""Passive ejection and circuit breaking: a failing target stops getting traffic without a
health check, a tripped circuit answers circuit_open with Retry-After without touching the
backend, then half-opens and closes again once the backend recovers."""
import threading
import time

import pytest

import backend as be
import harness

pytestmark = pytest.mark.deadline(60)


class Switch:
    """A backend handler whose status can be flipped by the test; counts what it served."""

    def __init__(self, name, status=200):
        self.name, self.status, self.hits = name, status, 0
        self.lock = threading.Lock()

    def __call__(self, ex):
        with self.lock:
            self.hits += 1
            status = self.status
        ex.read_body()
        ex.respond(status, self.name.encode())


def route(upstream):
    return [{"name": "r", "match": {"path_prefix": "/"}, "upstream": upstream}]


def test_consecutive_failures_eject_then_readmit(env):
    bad, good = Switch("bad", 500), Switch("good")
    b, g = env.backend(bad, name="bad"), env.backend(good, name="good")
    gw = env.gateway(upstreams={"u": harness.upstream(b, g, health={"passive": {
        "consecutive_failures": 3, "eject_for": "1s", "max_ejected_percent": 50}})}, routes=route("u"))
    for _ in range(10):
        gw.request("GET", "/")
    assert bad.hits == 3, f"the failing target got {bad.hits} requests; ejection should stop it at 3"
    before = bad.hits
    for _ in range(20):
        assert gw.request("GET", "/").body == b"good"
    assert bad.hits == before, "an ejected target got traffic"
    bad.status = 200  # recovered
    time.sleep(harness.slack(1.5))  # ejection ends
    for _ in range(10):
        gw.request("GET", "/")
    assert bad.hits > before, "the target was not re-admitted after eject_for"
    log = gw.stderr_path.read_text()
    assert "ejected for 1s after 3 consecutive failures" in log, log[-1500:]


def test_max_ejected_percent_keeps_the_last_target(env):
    s = Switch("only", 500)
    gw = env.gateway(upstreams={"u": harness.upstream(env.backend(s, name="only"), health={"passive": {
        "consecutive_failures": 2, "eject_for": "10s"}})}, routes=route("u"))
    for _ in range(6):
        assert gw.request("GET", "/").status == 500  # passed through, never ejected (cap 50% of 1 = 0)
    assert s.hits == 6


def test_breaker_opens_answers_circuit_open_then_recovers(env):
    s = Switch("svc", 500)
    up = env.backend(s, name="svc")
    gw = env.gateway(upstreams={"u": harness.upstream(up, circuit_breaker={
        "failure_ratio": 0.5, "min_requests": 5, "window": "10s", "open_for": "1s", "half_open_requests": 1})},
        routes=route("u"))
    for _ in range(5):
        assert gw.request("GET", "/").status == 500
    hits = s.hits
    r = gw.request("GET", "/")
    harness.assert_gateway_error(r, 503, "circuit_open")
    ra = int(r.header("Retry-After"))
    assert 1 <= ra <= 1, ra
    for _ in range(5):
        harness.assert_gateway_error(gw.request("GET", "/"), 503, "circuit_open")
    assert s.hits == hits, "an open circuit let requests through"
    s.status = 200  # the service recovers
    time.sleep(harness.slack(1.3))  # open_for passes: half-open lets a probe through
    deadline = time.monotonic() + harness.slack(3)
    while time.monotonic() < deadline:
        r = gw.request("GET", "/")
        if r.status == 200:
            break
        time.sleep(0.1)
    assert r.status == 200, r
    for _ in range(10):
        assert gw.request("GET", "/").status == 200  # closed again
