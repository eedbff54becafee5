"""Timeouts: client header (408, also for a slowloris trickle), client idle (connection closed),
client body (408), upstream connect (a blackhole -> 502 upstream_connect_failed), upstream read
(504 before the head; a cut body after it), and a route's whole-request timeout (504)."""
import select
import socket
import time

import pytest

import backend as be
import harness
from harness import assert_gateway_error, build_request, slack

HEADER_T = 1.0  # client_header, client_idle and client_body below
CONNECT_T = 0.3
READ_T = 0.5
ROUTE_T = 0.8


@pytest.fixture(scope="module")
def rig(menv):
    hole = menv.blackhole()
    slow = menv.backend(be.paths({
        "/slow/sleep-head": be.sleep_then(3.0),
        "/slow/sleep-short": be.sleep_then(0.25, be.fixed(200, b"in time")),
        "/slow/stall-body": be.partial_body(100000, 1000, then="stall", stall=5.0),
        "/slow/ok": be.fixed(200, b"ok"),
        "/whole/sleep": be.sleep_then(3.0),
        "/whole/trickle": be.trickle_head(["HTTP/1.1 200 OK"] + [f"X-Slow-{i}: {i}" for i in range(12)]
                                          + ["Content-Length: 2"], 0.2, b"ok"),
    }), name="slow")
    gw = menv.gateway(
        timeouts={"client_header": "1s", "client_idle": "1s", "client_body": "1s", "drain": "1s"},
        upstreams={
            "hole": harness.upstream(hole, timeouts={"connect": "300ms", "read": "5s"}),
            "slow": harness.upstream(slow, timeouts={"connect": "1s", "read": "500ms"}),
            "patient": harness.upstream(slow, timeouts={"connect": "1s", "read": "10s"}),
        },
        routes=[
            {"name": "hole", "match": {"path_prefix": "/hole"}, "upstream": "hole"},
            {"name": "slow", "match": {"path_prefix": "/slow"}, "upstream": "slow"},
            {"name": "whole", "match": {"path_prefix": "/whole"}, "upstream": "patient", "timeout": "800ms"},
            {"name": "echo", "match": {"path_prefix": "/echo"}, "respond": {"echo": True}},
        ])
    return gw, slow


def timed(fn):
    t0 = time.monotonic()
    out = fn()
    return out, time.monotonic() - t0


def assert_took(elapsed, low, high):
    assert low * 0.9 <= elapsed <= slack(high), f"took {elapsed:.3f} s, expected {low}..{slack(high)}"


def test_client_header_timeout_on_partial_head(rig):
    gw, _ = rig
    with gw.conn() as c:
        c.send(b"GET /echo HTTP/1.1\r\nHost: a\r\n")
        r, took = timed(lambda: c.read_response(timeout=5))
        assert_gateway_error(r, 408, "client_timeout")
        assert_took(took, HEADER_T, HEADER_T + 1.5)
        assert c.wait_closed(2)[0]


def test_client_header_timeout_on_slowloris(rig):
    gw, _ = rig
    head = b"GET /echo HTTP/1.1\r\nHost: a\r\n" + b"X-Slow: " + b"a" * 100
    with gw.conn() as c:
        t0 = time.monotonic()
        for byte in head:  # one byte every 100 ms: never idle, never complete
            try:
                c.sock.send(bytes([byte]))
            except OSError:
                break
            if select.select([c.sock], [], [], 0.1)[0]:
                break
        r = c.read_response(timeout=5)
        took = time.monotonic() - t0
        assert_gateway_error(r, 408, "client_timeout")
        assert_took(took, HEADER_T, HEADER_T + 1.5)


def test_client_idle_timeout_closes_keepalive_connection(rig):
    gw, _ = rig
    with gw.conn() as c:
        assert c.roundtrip("GET", "/echo").status == 200
        time.sleep(0.5 * HEADER_T)
        assert c.roundtrip("GET", "/echo").status == 200, "closed before the idle timeout"
        t0 = time.monotonic()
        closed, extra = c.wait_closed(HEADER_T + 3)
        took = time.monotonic() - t0
        assert closed, "idle keep-alive connection never closed"
        assert_took(took, HEADER_T, HEADER_T + 1.5)
        assert extra == b"" or extra.startswith(b"HTTP/1.1 408"), extra[:200]


def test_silent_new_connection_is_closed(rig):
    gw, _ = rig
    with gw.conn() as c:
        t0 = time.monotonic()
        closed, _ = c.wait_closed(HEADER_T + 3)
        assert closed, "a connection that sends nothing is never closed"
        assert_took(time.monotonic() - t0, HEADER_T, HEADER_T + 1.5)


def test_client_body_timeout(rig):
    gw, _ = rig
    with gw.conn() as c:
        c.send(build_request("POST", "/echo", [("Content-Length", "100")]) + b"x" * 10)
        r, took = timed(lambda: c.read_response(timeout=5))
        assert_gateway_error(r, 408, "client_timeout")
        assert_took(took, HEADER_T, HEADER_T + 1.5)
        assert c.wait_closed(2)[0]


def test_upstream_connect_timeout(rig):
    gw, _ = rig
    r, took = timed(lambda: gw.request("GET", "/hole/x"))
    body = assert_gateway_error(r, 502, "upstream_connect_failed")
    assert_took(took, CONNECT_T, CONNECT_T + 1.5)
    e = gw.log_entry(body["request_id"])
    assert (e["status"], e["cause"], e["upstream"], e["route"]) == (502, "upstream_connect_failed", "hole", "hole")


def test_upstream_read_timeout_before_head(rig):
    gw, _ = rig
    r, took = timed(lambda: gw.request("GET", "/slow/sleep-head"))
    body = assert_gateway_error(r, 504, "upstream_timeout")
    assert_took(took, READ_T, READ_T + 1.5)
    e = gw.log_entry(body["request_id"])
    assert (e["status"], e["cause"], e["upstream"]) == (504, "upstream_timeout", "slow")


def test_upstream_answering_within_read_timeout_is_fine(rig):
    gw, _ = rig
    r = gw.request("GET", "/slow/sleep-short")
    assert r.status == 200 and r.body == b"in time"


def test_upstream_read_timeout_mid_body_cuts_the_response(rig):
    gw, _ = rig
    with gw.conn() as c:
        c.request("GET", "/slow/stall-body")
        t0 = time.monotonic()
        with pytest.raises(harness.IncompleteBody) as ei:
            c.read_response(timeout=5)
        took = time.monotonic() - t0
    r = ei.value.response
    assert r.status == 200 and 0 < r.body_len < 100000
    assert_took(took, READ_T, READ_T + 1.5)


def test_route_timeout(rig):
    gw, _ = rig
    r, took = timed(lambda: gw.request("GET", "/whole/sleep"))
    body = assert_gateway_error(r, 504, "upstream_timeout")
    assert_took(took, ROUTE_T, ROUTE_T + 1.5)
    assert gw.log_entry(body["request_id"])["cause"] == "upstream_timeout"


def test_route_timeout_bounds_a_trickling_upstream(rig):
    gw, _ = rig
    # Each header line comes 200 ms after the last (never a read timeout); the whole takes 2.6 s.
    r, took = timed(lambda: gw.request("GET", "/whole/trickle"))
    assert_gateway_error(r, 504, "upstream_timeout")
    assert_took(took, ROUTE_T, ROUTE_T + 1.5)


def test_gateway_still_serves_after_timeouts(rig):
    gw, _ = rig
    assert gw.request("GET", "/slow/ok").body == b"ok"
    assert gw.alive()
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=2)
    s.close()
