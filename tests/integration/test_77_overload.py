"""Overload protection: an upstream's limits.max_connections caps the connections in use,
max_pending bounds the queue behind it, and past the queue requests are answered
upstream_overloaded at once instead of piling up; the gateway-wide limits.max_connections
refuses new connections while the ones it has keep being served."""
import socket
import threading
import time

import pytest

import backend as be
import harness

pytestmark = pytest.mark.deadline(60)


class Slow:
    def __init__(self, delay):
        self.delay, self.now, self.peak, self.lock = delay, 0, 0, threading.Lock()

    def __call__(self, ex):
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        ex.read_body()
        time.sleep(self.delay)
        with self.lock:
            self.now -= 1
        ex.respond(200, b"ok")


def fire(gw, n):
    out, lock = [], threading.Lock()

    def one():
        t0 = time.monotonic()
        r = harness.request(gw.port, "GET", "/", timeout=10)
        with lock:
            out.append((r.status, r.header("Sluice-Error"), time.monotonic() - t0))

    threads = [threading.Thread(target=one, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    return out


def test_cap_queue_and_overloaded(env):
    slow = Slow(0.5)
    up = env.backend(slow, name="slow")
    gw = env.gateway(upstreams={"u": harness.upstream(up, limits={"max_connections": 2, "max_pending": 2},
                                                      timeouts={"connect": "3s"})},
                     routes=[{"name": "r", "match": {"path_prefix": "/"}, "upstream": "u"}])
    out = fire(gw, 8)
    ok = [o for o in out if o[0] == 200]
    over = [o for o in out if o[1] == "upstream_overloaded"]
    assert len(ok) == 4 and len(over) == 4, out
    assert all(o[0] == 503 for o in over)
    assert max(o[2] for o in over) < 0.3, f"overloaded answers should be immediate: {over}"
    assert slow.peak <= 2, f"{slow.peak} connections in use at once; the cap is 2"
    assert max(o[2] for o in ok) >= 0.9, "two requests should have waited for a slot"


def test_waiting_is_bounded_by_the_connect_timeout(env):
    slow = Slow(2.0)
    up = env.backend(slow, name="slower")
    gw = env.gateway(upstreams={"u": harness.upstream(up, limits={"max_connections": 1, "max_pending": 5},
                                                      timeouts={"connect": "300ms", "read": "5s"})},
                     routes=[{"name": "r", "match": {"path_prefix": "/"}, "upstream": "u"}])
    out = fire(gw, 3)
    waited = [o for o in out if o[1] == "upstream_overloaded"]
    assert len(waited) == 2, out
    assert all(0.25 <= o[2] < 1.5 for o in waited), waited


def test_gateway_connection_limit_keeps_serving_the_connected(env):
    gw = env.gateway(limits={"max_connections": 4},
                     routes=[{"name": "r", "match": {"path_prefix": "/"}, "respond": {"status": 200, "body": "ok"}}])
    held = [gw.conn() for _ in range(4)]
    for c in held:
        assert c.roundtrip("GET", "/").status == 200
    extra = socket.create_connection(("127.0.0.1", gw.port), timeout=2)
    extra.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    extra.settimeout(2)
    try:
        data = extra.recv(100)
    except ConnectionResetError:
        data = b""
    assert data == b"", "a connection past limits.max_connections was served"
    extra.close()
    for c in held:  # the ones it has keep working
        assert c.roundtrip("GET", "/").status == 200
        c.close()
