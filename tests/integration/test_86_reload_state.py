"""Hot reload keeps the runtime state of unchanged upstreams: a circuit opened before a SIGHUP
that only changed an unrelated route is still open after it, a passively ejected target stays
ejected, and an upstream whose own config changed starts fresh (closed circuits, nothing
ejected) while an unchanged one next to it keeps its state."""
import threading
import time

import pytest

import backend as be
import harness

pytestmark = pytest.mark.deadline(60)


class Switch:
    """A backend handler whose status the test flips; counts what it served."""

    def __init__(self, name, status=200):
        self.name, self.status, self.hits = name, status, 0
        self.lock = threading.Lock()

    def __call__(self, ex):
        with self.lock:
            self.hits += 1
            status = self.status
        ex.read_body()
        ex.respond(status, self.name.encode())


BREAKER = {"failure_ratio": 0.5, "min_requests": 4, "window": "30s", "open_for": "30s", "half_open_requests": 1}


def config(upstreams, marker, extra_routes=()):
    routes = [{"name": f"r-{name}", "match": {"path_prefix": f"/{name}/"}, "upstream": name} for name in upstreams]
    routes += list(extra_routes)
    # The unrelated route whose body tells which config answers.
    routes.append({"name": "marker", "match": {"path_prefix": "/marker"},
                   "respond": {"status": 200, "body": marker}})
    return {"upstreams": upstreams, "routes": routes}


def reload_and_wait(gw, cfg, marker):
    before = gw.stderr_path.read_text().count("config reloaded")
    gw.reload(cfg)
    deadline = time.monotonic() + harness.slack(5)
    while time.monotonic() < deadline:
        if gw.request("GET", "/marker").body == marker.encode():
            break
        time.sleep(0.05)
    assert gw.request("GET", "/marker").body == marker.encode(), gw.log_tail()
    assert gw.stderr_path.read_text().count("config reloaded") == before + 1


def open_circuit(gw, prefix, switch):
    for _ in range(BREAKER["min_requests"]):
        assert gw.request("GET", prefix).status == 500
    harness.assert_gateway_error(gw.request("GET", prefix), 503, "circuit_open")
    return switch.hits


def test_open_circuit_survives_unrelated_reload(env):
    s = Switch("svc", 500)
    b = env.backend(s, name="svc")
    ups = {"u": harness.upstream(b, circuit_breaker=BREAKER)}
    gw = env.gateway(**config(ups, "one"))
    hits = open_circuit(gw, "/u/", s)
    s.status = 200  # recovered, but the circuit stays open for 30 s
    reload_and_wait(gw, config(ups, "two", [{"name": "extra", "match": {"path_prefix": "/extra"},
                                             "respond": {"status": 204}}]), "two")
    for _ in range(5):
        r = gw.request("GET", "/u/")
        harness.assert_gateway_error(r, 503, "circuit_open")
        assert int(r.header("Retry-After")) > 1, r.headers  # the remaining open time, not a new one
    assert s.hits == hits, "the reload closed an open circuit"


def test_ejected_target_stays_ejected_across_reload(env):
    bad, good = Switch("bad", 500), Switch("good")
    b, g = env.backend(bad, name="bad"), env.backend(good, name="good")
    ups = {"u": harness.upstream(b, g, health={"passive": {
        "consecutive_failures": 3, "eject_for": "30s", "max_ejected_percent": 50}})}
    gw = env.gateway(**config(ups, "one"))
    for _ in range(10):
        gw.request("GET", "/u/")
    assert bad.hits == 3, bad.hits
    bad.status = 200
    reload_and_wait(gw, config(ups, "two"), "two")
    for _ in range(20):
        assert gw.request("GET", "/u/").body == b"good"
    assert bad.hits == 3, "the reload re-admitted an ejected target"


def test_changed_upstream_starts_fresh_unchanged_one_keeps_state(env):
    s1, s2 = Switch("one", 500), Switch("two", 500)
    b1, b2 = env.backend(s1, name="one"), env.backend(s2, name="two")
    ups = {"kept": harness.upstream(b1, circuit_breaker=BREAKER),
           "changed": harness.upstream(b2, circuit_breaker=BREAKER)}
    gw = env.gateway(**config(ups, "one"))
    hits1 = open_circuit(gw, "/kept/", s1)
    hits2 = open_circuit(gw, "/changed/", s2)
    s1.status = s2.status = 200
    ups2 = dict(ups)
    ups2["changed"] = harness.upstream(b2, circuit_breaker=BREAKER, timeouts={"read": "20s"})
    reload_and_wait(gw, config(ups2, "two"), "two")
    harness.assert_gateway_error(gw.request("GET", "/kept/"), 503, "circuit_open")
    assert s1.hits == hits1
    r = gw.request("GET", "/changed/")
    assert r.status == 200 and r.body == b"two", r
    assert s2.hits == hits2 + 1


def test_connection_slots_carry_over_a_reload(env):
    """limits.max_connections holds across a reload: the new snapshot sees the slot an exchange
    of the old one still holds, instead of starting from 0 and letting one more through."""
    slow = env.backend(be.sleep_then(harness.slack(2.0), be.fixed(200, b"slow")), name="slow")
    ups = {"u": harness.upstream(slow, limits={"max_connections": 1, "max_pending": 0})}
    gw = env.gateway(**config(ups, "one"))
    first = {}
    t = threading.Thread(target=lambda: first.update(r=gw.request("GET", "/u/first", timeout=10)), daemon=True)
    t.start()
    assert slow.wait_requests(1), "the first request never reached the backend"
    reload_and_wait(gw, config(ups, "two"), "two")
    harness.assert_gateway_error(gw.request("GET", "/u/second"), 503, "upstream_overloaded")
    t.join(harness.slack(10))
    assert first["r"].status == 200 and first["r"].body == b"slow", first
    assert len(slow.requests) == 1
