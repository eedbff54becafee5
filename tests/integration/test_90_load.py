"""Load: 200 concurrent clients x 20 requests, proxied and local, all answered correctly (no
mix-ups between clients), one access log line each, upstream connections pooled under
concurrency, and the gateway healthy afterwards."""
import socket
import threading

import pytest

import backend as be
import harness

CLIENTS = 200
REQUESTS = 20
pytestmark = pytest.mark.deadline(120)


@pytest.fixture(scope="module")
def rig(menv):
    up = menv.backend(be.echo(), name="up")
    gw = menv.gateway(
        limits={"max_connections": 10000},
        upstreams={"up": harness.upstream(up, keepalive={"max_idle": 256, "idle_timeout": "60s"})},
        routes=[{"name": "proxied", "match": {"path_prefix": "/p/"}, "upstream": "up"},
                {"name": "local", "match": {"path_prefix": "/l/"}, "respond": {"echo": True}}])
    return gw, up


def hammer(gw, prefix, check):
    """CLIENTS threads x REQUESTS requests; even threads keep one connection, odd ones reconnect."""
    failures = []
    start = threading.Barrier(CLIENTS)

    def client(t):
        try:
            start.wait(30)
            conn = gw.conn(timeout=20) if t % 2 == 0 else None
            for i in range(REQUESTS):
                path = f"{prefix}{t}/{i}"
                if conn is not None:
                    r = conn.roundtrip("GET", path, [("X-Load", f"{t}-{i}")])
                else:
                    r = harness.request(gw.port, "GET", path, [("X-Load", f"{t}-{i}")], timeout=20)
                problem = check(r, path, f"{t}-{i}")
                if problem:
                    failures.append(problem)
                    return
            if conn is not None:
                conn.close()
        except Exception as e:  # collected and reported below
            failures.append(f"client {t}: {e!r}")

    threads = [threading.Thread(target=client, args=(t,), daemon=True) for t in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(100)
    assert not any(t.is_alive() for t in threads), "clients still running"
    return failures


def test_200_clients_proxied(rig):
    gw, up = rig
    conns_before = up.connection_count

    def check(r, path, tag):
        if r.status != 200:
            return f"{path}: {r!r}"
        j = r.json()
        if j["target"] != path or dict((k.lower(), v) for k, v in j["headers"]).get("x-load") != tag:
            return f"{path}: answered {j['target']} / {j['headers']}"
        return None

    failures = hammer(gw, "/p/", check)
    assert not failures, f"{len(failures)} failures, e.g. {failures[:5]}"
    total = CLIENTS * REQUESTS
    entries = gw.wait_access_log(lambda e: e.get("path", "").startswith("/p/"), total, timeout=10)
    assert len(entries) == total, f"{len(entries)} access log lines for {total} requests"
    assert len({e["request_id"] for e in entries}) == total
    assert all(e["status"] == 200 and e["route"] == "proxied" for e in entries)
    opened = up.connection_count - conns_before
    assert opened <= total // 4, f"{opened} upstream connections for {total} requests: no pooling under load"
    assert not up.errors, up.errors[:3]


def test_200_clients_local(rig):
    gw, _ = rig

    def check(r, path, tag):
        if r.status != 200:
            return f"{path}: {r!r}"
        j = r.json()
        if j["path"] != path or j["headers"].get("x-load") != tag or j["route"] != "local":
            return f"{path}: answered {j}"
        return None

    failures = hammer(gw, "/l/", check)
    assert not failures, f"{len(failures)} failures, e.g. {failures[:5]}"


def test_healthy_after_load(rig):
    gw, _ = rig
    assert gw.alive()
    assert gw.admin_get("/health")[0] == 200
    assert gw.request("GET", "/l/after").status == 200


def test_pool_grows_with_concurrency_instead_of_reconnecting(menv):
    """keepalive.max_idle is a floor, not a cap: with more requests in flight than max_idle, the
    pool keeps what the recent peak needs. Bursts make the difference visible: all requests of a
    burst are sent at once, so the gateway releases their upstream connections in a batch. A pool
    that closed connections past max_idle (or whenever idle outnumber busy, mid-batch)
    reconnects for a good share of every following burst."""
    up = menv.backend(be.echo(), name="burst")
    gw = menv.gateway(
        workers=1,
        upstreams={"burst": harness.upstream(up, keepalive={"max_idle": 4, "idle_timeout": "60s"})},
        routes=[{"name": "burst", "match": {"path_prefix": "/"}, "upstream": "burst"}])
    clients, bursts = 100, 15
    socks = [socket.create_connection(("127.0.0.1", gw.port), timeout=10) for _ in range(clients)]
    try:
        for b in range(bursts):
            for i, s in enumerate(socks):
                s.sendall(f"GET /{b}/{i} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            for i, s in enumerate(socks):
                r = harness.read_response(harness.SockReader(s))
                assert r.status == 200, (b, i, r)
    finally:
        for s in socks:
            s.close()
    opened = up.connection_count
    assert opened <= clients + clients // 4, f"{opened} upstream connections for {clients} clients x {bursts} bursts"
