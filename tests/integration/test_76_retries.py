"""Retries: on another target, only before any response byte reached the client, idempotent
methods only (a connect failure is safe for any method), bounded by the retry budget."""
import threading
import time

import pytest

import backend as be
import harness

pytestmark = pytest.mark.deadline(90)


def named(name):
    return be.fixed(200, name.encode())


def route(upstream):
    return [{"name": "r", "match": {"path_prefix": "/"}, "upstream": upstream}]


def test_connect_failure_is_retried_on_another_target_by_default(env):
    live = env.backend(named("live"), name="live")
    dead = harness.free_port()  # nothing listens: connection refused
    gw = env.gateway(upstreams={"u": {"targets": [{"address": f"127.0.0.1:{dead}"},
                                                   {"address": f"127.0.0.1:{live.port}"}]}},
                     routes=route("u"))
    for method, body in (("GET", None), ("POST", b"payload")):  # connect failures: any method
        for _ in range(20):
            r = gw.request(method, "/", body=body)
            assert r.status == 200 and r.body == b"live", r
    log = gw.wait_access_log(lambda e: e["route"] == "r", 40)
    assert all(e["target"] == f"127.0.0.1:{live.port}" for e in log)


def test_retry_budget_bounds_upstream_load_when_everything_fails(env):
    hits = {"n": 0}
    lock = threading.Lock()

    def failing(ex):
        with lock:
            hits["n"] += 1
        ex.read_body()
        ex.respond(503, b"down")

    backs = [env.backend(failing, name=f"f{i}") for i in range(3)]
    gw = env.gateway(upstreams={"u": harness.upstream(*backs, retries={
        "attempts": 3, "on": ["503"], "budget_percent": 20, "backoff": "1ms"})}, routes=route("u"))
    clients = 100
    for _ in range(clients):
        r = gw.request("GET", "/")
        assert r.status == 503 and r.body == b"down"  # the upstream's own answer, passed through
    print(f"backend requests: {hits['n']} for {clients} client requests (budget 20%)")
    assert clients < hits["n"] <= clients * 1.2 + 1


def test_non_idempotent_not_retried_on_status(env):
    hits = {"n": 0}

    def failing(ex):
        hits["n"] += 1
        ex.read_body()
        ex.respond(503, b"down")

    up = env.backend(failing, name="f")
    gw = env.gateway(upstreams={"u": harness.upstream(up, retries={"attempts": 3, "on": ["503"]})},
                     routes=route("u"))
    for _ in range(5):
        assert gw.request("POST", "/", body=b"x").status == 503
    assert hits["n"] == 5
    for _ in range(5):
        assert gw.request("DELETE", "/").status == 503  # idempotent and bodiless: retried
    assert hits["n"] > 10


def test_no_retry_once_the_response_started(env):
    hits = {"n": 0}

    def half(ex):
        hits["n"] += 1
        ex.read_body()
        ex.send_head(200, [("Content-Length", "1000")])
        ex.send(b"x" * 10)
        ex.close()

    up = env.backend(half, name="half")
    gw = env.gateway(upstreams={"u": harness.upstream(up, retries={"attempts": 3, "on": ["reset", "connect_failure"]})},
                     routes=route("u"))
    with pytest.raises(Exception):
        r = gw.request("GET", "/")
        assert len(r.body) == 1000  # a truncated body must not look complete
    time.sleep(harness.slack(0.2))
    assert hits["n"] == 1


def test_killed_target_under_steady_load_costs_no_client_errors(env):
    backs = [env.backend(named(f"t{i}"), name=f"t{i}") for i in range(3)]
    gw = env.gateway(upstreams={"u": harness.upstream(*backs, retries={
        "attempts": 3, "on": ["connect_failure", "reset"], "budget_percent": 50})}, routes=route("u"))
    errors, done, stop = [], [0], threading.Event()

    def client():
        while not stop.is_set():
            try:
                r = harness.request(gw.port, "GET", "/", timeout=5)
                if r.status != 200:
                    errors.append(r.status)
                done[0] += 1
            except Exception as e:
                errors.append(repr(e))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(1)
    backs[1].close()  # the target dies: refused from now on, pooled connections reset
    time.sleep(2)
    stop.set()
    for t in threads:
        t.join(10)
    print(f"{done[0]} requests, errors: {errors[:5]}")
    assert done[0] > 100
    # The only failures allowed are requests already in flight on the killed target, whose
    # response had started (so no retry is possible): at most one per client at the kill.
    failed = [e for e in gw.access_log() if e["status"] != 200 or e["cause"]]
    print("failed exchanges:", failed[:5])
    assert len(errors) <= len(threads), errors[:10]
    assert len(failed) == len(errors), (failed, errors)
    assert all(e["target"] == f"127.0.0.1:{backs[1].port}" and e["upstream_first_byte_ms"] >= 0 for e in failed), failed
