"""Graceful drain: on SIGTERM/SIGINT the listeners close at once (new connections refused),
requests in flight (also ones still uploading) complete, idle connections are closed after a
one-second grace (a request already on the wire is answered with Connection: close), the process
exits 0 — and the drain timeout bounds how long that may take."""
import signal
import socket
import threading
import time

import pytest

import backend as be
import harness
from harness import build_request, chunk, slack

pytestmark = pytest.mark.deadline(40)


def start(env, drain="10s"):
    slow = env.backend(be.paths({
        "/slow": be.sleep_then(2.0, be.fixed(200, b"finished after drain started")),
        "/very-slow": be.sleep_then(10.0),
        "/upload": be.sink(),
    }), name="slow")
    gw = env.gateway(timeouts={"drain": drain},
                     upstreams={"slow": harness.upstream(slow, timeouts={"read": "30s"})},
                     routes=[{"name": "slow", "match": {"path_prefix": "/"}, "upstream": "slow"}])
    return gw, slow


def refused_within(port, seconds):
    """True once a connect to port is refused, polling for `seconds`."""
    deadline = time.monotonic() + slack(seconds)
    while time.monotonic() < deadline:
        s = socket.socket()
        s.settimeout(0.5)
        try:
            s.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return True
        except OSError:
            pass
        finally:
            s.close()
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_in_flight_request_completes_and_new_connections_are_refused(env, sig):
    gw, slow = start(env)
    c = gw.conn(timeout=10)
    c.request("GET", "/slow")
    assert slow.wait_requests(1), "the request never reached the upstream"
    gw.send_signal(sig)
    t0 = time.monotonic()
    assert refused_within(gw.port, 1.0), "the listener still accepts after the signal"
    r = c.read_response()
    assert r.status == 200 and r.body == b"finished after drain started"
    assert c.wait_closed(2)[0], "the connection stays open after its last response during drain"
    c.close()
    rc = gw.wait(5)
    assert rc == 0, f"exit code {rc} (None = still running)\n{gw.log_tail()}"
    assert time.monotonic() - t0 < slack(5)


def test_upload_in_progress_completes(env):
    gw, slow = start(env)
    with gw.conn(timeout=10) as c:
        c.send(build_request("POST", "/upload", [("Transfer-Encoding", "chunked")]))
        c.send(chunk(b"a" * 1000))
        time.sleep(0.3)
        gw.send_signal(signal.SIGTERM)
        for _ in range(10):
            time.sleep(0.1)
            c.send(chunk(b"b" * 1000))
        c.send(b"0\r\n\r\n")
        r = c.read_response()
        assert r.status == 200 and r.json()["bytes"] == 11000
    assert gw.wait(5) == 0


def test_idle_connections_do_not_hold_up_exit(env):
    gw, _ = start(env, drain="10s")
    idle = gw.conn()
    idle.request("GET", "/upload", body=b"x")
    assert idle.read_response().status == 200  # now an idle keep-alive connection
    t0 = time.monotonic()
    gw.send_signal(signal.SIGTERM)
    assert idle.wait_closed(3)[0], "the idle connection was not closed on drain"
    rc = gw.wait(3)
    assert rc == 0, f"exit code {rc} (None = still running)"
    assert time.monotonic() - t0 < slack(3)
    idle.close()


def test_request_already_sent_on_an_idle_connection_is_answered(env):
    """HTTP/1.1 has no GOAWAY: an idle keep-alive connection gets a one-second grace on drain, so a
    request the client sent just as the drain began is answered (with Connection: close) instead
    of meeting a closed connection and a retry."""
    gw, _ = start(env, drain="10s")
    idle = gw.conn()
    idle.request("GET", "/upload", body=b"x")
    assert idle.read_response().status == 200
    gw.send_signal(signal.SIGTERM)
    time.sleep(0.2)  # the drain has begun (listeners close at once)
    assert refused_within(gw.port, 2)
    idle.request("GET", "/upload", body=b"y")
    r = idle.read_response()
    assert r.status == 200 and r.header("Connection") == "close", r
    assert idle.wait_closed(2)[0]
    assert gw.wait(3) == 0
    idle.close()


def test_drain_timeout_bounds_shutdown(env):
    gw, slow = start(env, drain="1s")
    c = gw.conn(timeout=15)
    c.request("GET", "/very-slow")
    assert slow.wait_requests(1)
    t0 = time.monotonic()
    gw.send_signal(signal.SIGTERM)
    rc = gw.wait(6)
    took = time.monotonic() - t0
    assert rc is not None, "still running 6 s after SIGTERM with drain: 1s"
    assert rc == 0, f"exit code {rc}"
    assert 0.9 <= took <= slack(3), f"exit {took:.2f} s after SIGTERM with drain: 1s"
    closed, _ = c.wait_closed(2)
    assert closed
    c.close()


def test_concurrent_in_flight_requests_all_complete(env):
    gw, slow = start(env)
    results, conns = [], []
    for i in range(8):
        c = gw.conn(timeout=10)
        c.request("GET", f"/slow?i={i}")
        conns.append(c)
    assert len(slow.wait_requests(8)) == 8
    gw.send_signal(signal.SIGTERM)

    def read(c):
        try:
            results.append(c.read_response().status)
        except Exception as e:  # reported through results
            results.append(repr(e))

    threads = [threading.Thread(target=read, args=(c,)) for c in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    for c in conns:
        c.close()
    assert results == [200] * 8, results
    assert gw.wait(5) == 0
