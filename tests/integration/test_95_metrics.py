"""Prometheus metrics on the admin listener: the counters match the requests the test made
(per route, method, status and cause), histograms are consistent, connections are counted,
reloads are counted, and the process figures are sane."""
import hashlib
import re
import time

import backend as be
import harness


def scrape(gw):
    status, headers, body = gw.admin_get("/metrics")
    assert headers.get("Content-Type", "").startswith("text/plain; version=0.0.4"), headers
    assert status == 200, body
    text = body.decode() if isinstance(body, bytes) else body
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$', line)
        assert m, f"not a Prometheus sample line: {line!r}"
        samples[(m.group(1), m.group(2) or "")] = float(m.group(3))
    return samples


def value(samples, name, **labels):
    want = {k: str(v) for k, v in labels.items()}
    total, found = 0.0, False
    for (n, lab), v in samples.items():
        if n != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', lab))
        if all(got.get(k) == v for k, v in want.items()):
            total += v
            found = True
    return total if found else None


def test_counters_match_the_requests_made(env):
    up = env.backend(be.fixed(200, b"ok"), name="up")
    gw = env.gateway(
        upstreams={"users": harness.upstream(up)},
        routes=[{"name": "users", "match": {"path_prefix": "/users"}, "upstream": "users"},
                {"name": "hello", "match": {"path": "/hello"}, "respond": {"status": 200, "body": "hi"}}])
    before = scrape(gw)
    assert value(before, "sluice_requests_total", route="users") in (None, 0.0)
    for _ in range(7):
        assert gw.request("GET", "/users/1").status == 200
    for _ in range(3):
        assert gw.request("POST", "/users/1", body=b"x").status == 200
    for _ in range(2):
        assert gw.request("GET", "/hello").status == 200
    for _ in range(4):
        assert gw.request("GET", "/nowhere").status == 404
    time.sleep(harness.slack(0.2))
    s = scrape(gw)
    assert value(s, "sluice_requests_total", route="users", method="GET", status="200", cause="") == 7
    assert value(s, "sluice_requests_total", route="users", method="POST", status="200") == 3
    assert value(s, "sluice_requests_total", route="hello", method="GET", status="200") == 2
    assert value(s, "sluice_requests_total", route="none", status="404", cause="route_not_found") == 4
    assert value(s, "sluice_request_duration_seconds_count", route="users") == 10
    assert value(s, "sluice_request_duration_seconds_bucket", route="users", le="+Inf") == 10
    assert value(s, "sluice_upstream_duration_seconds_count", upstream="users",
                 target=f"127.0.0.1:{up.port}") == 10
    assert value(s, "sluice_connections_accepted_total") >= 16
    assert value(s, "sluice_bytes_total", direction="in") > 0
    assert value(s, "sluice_bytes_total", direction="out") > 0
    now = time.time()
    assert now - 3600 < value(s, "process_start_time_seconds") <= now + 1
    assert value(s, "process_open_fds") > 0
    assert value(s, "process_resident_memory_bytes") > 1e6


def test_upstream_failure_cause_is_counted(env):
    bh_port = harness.free_port()  # nothing listens: connection refused
    gw = env.gateway(upstreams={"dead": {"targets": [{"address": f"127.0.0.1:{bh_port}"}]}},
                     routes=[{"name": "dead", "match": {"path_prefix": "/"}, "upstream": "dead"}])
    for _ in range(5):
        assert gw.request("GET", "/").status == 502
    time.sleep(harness.slack(0.2))
    s = scrape(gw)
    assert value(s, "sluice_requests_total", route="dead", status="502", cause="upstream_connect_failed") == 5


def test_reloads_counted_and_series_survive(env):
    def cfg(body):
        return {"routes": [{"name": "r", "match": {"path_prefix": "/"},
                            "respond": {"status": 200, "body": body}}]}
    gw = env.gateway(**cfg("one"))
    for _ in range(3):
        gw.request("GET", "/")
    gw.reload(cfg("two"))
    deadline = time.monotonic() + harness.slack(3)
    while time.monotonic() < deadline and gw.request("GET", "/").body != b"two":
        time.sleep(0.05)
    broken = dict(gw.config, routes=[{"name": "r", "match": {"path_prefix": "/"}, "upstream": "missing"}])
    gw.config_path.write_text(harness.to_yaml(broken))
    gw.send_signal(__import__("signal").SIGHUP)
    time.sleep(harness.slack(0.5))
    s = scrape(gw)
    assert value(s, "sluice_config_reloads_total", result="success") == 1
    assert value(s, "sluice_config_reloads_total", result="failure") == 1
    # the route's counter kept counting across the reload (it was not reset)
    assert value(s, "sluice_requests_total", route="r") >= 4


def test_upstream_errors_by_target_and_cause(env):
    dead = harness.free_port()  # nothing listens: connection refused
    failing = env.backend(be.fixed(500, b"boom"), name="failing")
    gw = env.gateway(
        upstreams={"dead": {"targets": [{"address": f"127.0.0.1:{dead}"}], "retries": {"attempts": 1}},
                   "failing": harness.upstream(failing)},
        routes=[{"name": "dead", "match": {"path_prefix": "/dead"}, "upstream": "dead"},
                {"name": "failing", "match": {"path_prefix": "/failing"}, "upstream": "failing"}])
    for _ in range(4):
        assert gw.request("GET", "/dead").status == 502
    for _ in range(3):
        assert gw.request("GET", "/failing").status == 500
    time.sleep(harness.slack(0.2))
    s = scrape(gw)
    t_dead, t_fail = f"127.0.0.1:{dead}", failing.address
    assert value(s, "sluice_upstream_errors_total", upstream="dead", target=t_dead,
                 cause="upstream_connect_failed") == 4
    assert value(s, "sluice_upstream_errors_total", upstream="dead", target=t_dead, cause="upstream_5xx") == 0
    assert value(s, "sluice_upstream_errors_total", upstream="failing", target=t_fail, cause="upstream_5xx") == 3
    assert value(s, "sluice_upstream_errors_total", upstream="failing", target=t_fail,
                 cause="upstream_connect_failed") == 0
    # six causes per target, zeros included
    assert len([k for k in s if k[0] == "sluice_upstream_errors_total"]) == 12


def test_target_health_and_circuit_gauges(env):
    good = env.backend(be.paths({"/healthz": be.fixed(200, b"ok")}, default=be.fixed(200, b"ok")), name="good")
    sick = env.backend(be.paths({"/healthz": be.fixed(503, b"no")}, default=be.fixed(500, b"x")), name="sick")
    health = {"active": {"path": "/healthz", "interval": "200ms", "timeout": "100ms", "healthy": 1, "unhealthy": 1}}
    breaker = {"failure_ratio": 0.5, "min_requests": 3, "window": "10s", "open_for": "30s"}
    gw = env.gateway(
        upstreams={"checked": harness.upstream(good, sick, health=health),
                   "broken": harness.upstream(sick, circuit_breaker=breaker)},
        routes=[{"name": "broken", "match": {"path_prefix": "/broken"}, "upstream": "broken"},
                {"name": "checked", "match": {"path_prefix": "/"}, "upstream": "checked"}])
    s = scrape(gw)
    assert value(s, "sluice_circuit_state", upstream="broken", target=sick.address) == 0
    for _ in range(3):
        assert gw.request("GET", "/broken").status == 500
    deadline = time.monotonic() + harness.slack(3)
    while True:
        s = scrape(gw)
        if value(s, "sluice_upstream_target_healthy", upstream="checked", target=sick.address) == 0 or \
                time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert value(s, "sluice_upstream_target_healthy", upstream="checked", target=sick.address) == 0
    assert value(s, "sluice_upstream_target_healthy", upstream="checked", target=good.address) == 1
    assert value(s, "sluice_upstream_target_healthy", upstream="broken", target=sick.address) == 1
    assert value(s, "sluice_circuit_state", upstream="broken", target=sick.address) == 2
    assert value(s, "sluice_circuit_state", upstream="checked", target=good.address) == 0


def test_auth_failures_by_route_and_detail(env):
    """sluice_auth_failures_total counts each refusal once, by route and the filter's detail
    code (a fixed list: no request bytes), and nothing for requests that passed."""
    up = env.backend(be.fixed(200, b"ok"), name="up")
    key = "metrics-test-key"
    gw = env.gateway(
        upstreams={"app": harness.upstream(up)},
        consumers={"c1": {"groups": ["staff"], "api_keys": [{"sha256": hashlib.sha256(key.encode()).hexdigest()}]}},
        routes=[{"name": "keys", "match": {"path_prefix": "/k"}, "upstream": "app", "auth": ["api_key"]},
                {"name": "admins", "match": {"path_prefix": "/a"}, "upstream": "app", "auth": ["api_key"],
                 "acl": {"allow_groups": ["admins"]}},
                {"name": "open", "match": {"path_prefix": "/"}, "upstream": "app"}])
    s = scrape(gw)
    assert value(s, "sluice_auth_failures_total") is None  # nothing counted, no series
    for _ in range(3):
        assert gw.request("GET", "/k").status == 401
    for _ in range(2):
        assert gw.request("GET", "/k", headers={"X-API-Key": "not-a-key"}).status == 401
    for _ in range(4):
        assert gw.request("GET", "/k", headers={"X-API-Key": key}).status == 200
    assert gw.request("GET", "/a", headers={"X-API-Key": key}).status == 403
    for _ in range(5):
        assert gw.request("GET", "/x").status == 200
    time.sleep(harness.slack(0.2))
    s = scrape(gw)
    assert value(s, "sluice_auth_failures_total", route="keys", detail="no_credentials") == 3
    assert value(s, "sluice_auth_failures_total", route="keys", detail="api_key_unknown") == 2
    assert value(s, "sluice_auth_failures_total", route="admins", detail="acl_not_in_group") == 1
    assert value(s, "sluice_auth_failures_total") == 6
    assert value(s, "sluice_auth_failures_total", route="open") is None
    # the same refusals in sluice_requests_total, by cause
    assert value(s, "sluice_requests_total", route="keys", cause="auth_missing") == 3
    assert value(s, "sluice_requests_total", route="keys", cause="auth_invalid") == 2
    assert value(s, "sluice_requests_total", route="admins", cause="forbidden") == 1
