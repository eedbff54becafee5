"""Paths the other suites do not reach: a request head larger than one pooled read buffer
(allowed by a higher limits.max_header_bytes), an upstream response head that overflows the
proxy's buffer, and retries.per_try_timeout cutting each try short of timeouts.read."""
import time

import backend as be
import harness


def test_request_head_larger_than_a_pooled_buffer(env):
    gw = env.gateway(limits={"max_header_bytes": "40kb"},
                     routes=[{"name": "e", "match": {"path_prefix": "/"}, "respond": {"echo": True}}])
    r = gw.request("GET", "/big", [("X-Big", "a" * 25000)])
    assert r.status == 200, r
    assert r.json()["headers"]["x-big"] == "a" * 25000
    with gw.conn() as c:  # the connection keeps working after the one-off large buffer
        assert c.roundtrip("GET", "/big", [("X-Big", "b" * 30000)]).status == 200
        assert c.roundtrip("GET", "/small").status == 200
    harness.assert_gateway_error(gw.request("GET", "/big", [("X-Big", "c" * 45000)]), 431, "header_too_large")


def test_upstream_response_head_too_large(env):
    def big_head(ex):
        ex.read_body()
        ex.send_head(200, [("X-Big", "z" * 20000), ("Content-Length", "2")])
        ex.send(b"ok")

    up = env.backend(big_head, name="bighead")
    gw = env.gateway(upstreams={"u": harness.upstream(up)},
                     routes=[{"name": "r", "match": {"path_prefix": "/"}, "upstream": "u"}])
    harness.assert_gateway_error(gw.request("GET", "/"), 502, "upstream_bad_response")
    assert gw.alive()


def test_per_try_timeout_bounds_each_try(env):
    hits = {"n": 0}

    def slow(ex):
        hits["n"] += 1
        ex.read_body()
        time.sleep(1.5)
        ex.respond(200, b"late")

    up = env.backend(slow, name="slow")
    gw = env.gateway(upstreams={"u": harness.upstream(up, timeouts={"read": "10s"}, retries={
        "attempts": 2, "on": ["timeout"], "per_try_timeout": "300ms", "backoff": "1ms"})},
        routes=[{"name": "r", "match": {"path_prefix": "/"}, "upstream": "u"}])
    t0 = time.monotonic()
    r = gw.request("GET", "/", timeout=10)
    took = time.monotonic() - t0
    harness.assert_gateway_error(r, 504, "upstream_timeout")
    assert 0.55 <= took < harness.slack(1.4), f"two tries of 300 ms took {took:.2f} s"
    time.sleep(0.1)
    assert hits["n"] == 2
