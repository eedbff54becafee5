"""Rate limits through the real gateway (docs/ratelimit.md): a 100 r/s limit hammered by four
clients admits exactly rate x time + burst (counted at the backend and in the responses), keys
that do not interfere, the RateLimit / X-RateLimit headers and an honest Retry-After, state kept
across a reload of another route and reset for a changed limit, and the config errors."""
import re
import threading
import time

import pytest

import backend as be
import harness


def limited(name, path, limits, upstream=None, **extra):
    route = {"name": name, "match": {"path_prefix": path}, "rate_limit": limits}
    if upstream is not None:
        route["upstream"] = upstream
    else:
        route["respond"] = {"status": 200, "body": "ok\n"}
    route.update(extra)
    return route


def marker_route(marker):
    return {"name": "marker", "match": {"path_prefix": "/marker"}, "respond": {"status": 200, "body": marker}}


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


def burst_until_refused(gw, path, headers=None, cap=1000):
    """Admitted requests until the first refusal (the refusal is returned too)."""
    with harness.RawConn(gw.port) as c:
        for n in range(cap):
            r = c.roundtrip("GET", path, headers)
            if r.status != 200:
                return n, r
    raise AssertionError(f"no refusal within {cap} requests")


@pytest.mark.deadline(40)
def test_four_clients_for_ten_seconds_admit_rate_times_time_plus_burst(env):
    b = env.backend(be.echo())
    gw = env.gateway(upstreams={"u": harness.upstream(b)},
                     routes=[limited("api", "/api", [{"key": "ip", "rate": "100/s", "burst": 10}], upstream="u")])
    counts = {"ok": 0, "limited": 0, "other": 0}
    lock = threading.Lock()
    duration = 10.0
    # Connections are made first, so the window starts with the first request, not with a
    # (sanitizer-slow) connect.
    ready = threading.Barrier(4)
    clock = {}
    last = [0.0]
    answered = []  # when each answer arrived, all clients

    def client():
        ok = lim = other = 0
        times = []
        with harness.RawConn(gw.port, timeout=10) as c:
            if ready.wait() == 0:
                clock["start"] = time.monotonic()
            while "start" not in clock:
                time.sleep(0.0005)
            stop_at = clock["start"] + duration
            while True:
                now = time.monotonic()
                if now >= stop_at:
                    break
                r = c.roundtrip("GET", "/api/x")
                times.append(time.monotonic())
                if r.status == 200:
                    ok += 1
                elif r.status == 429 and r.header("Sluice-Error") == "rate_limited":
                    lim += 1
                else:
                    other += 1
            with lock:
                last[0] = max(last[0], now)
                answered.extend(times)
        with lock:
            counts["ok"] += ok
            counts["limited"] += lim
            counts["other"] += other

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    start = clock["start"]
    span = last[0] - start
    at_backend = len(b.wait_requests(counts["ok"], timeout=2))
    expected = 100 * duration + 10
    print(f"\nadmitted {counts['ok']} (backend {at_backend}), refused {counts['limited']}, "
          f"bound {expected:.0f} (over the measured {span:.3f} s: {100 * span + 10:.1f})")
    assert counts["other"] == 0
    assert counts["limited"] > counts["ok"]  # it really was hammered
    assert at_backend == counts["ok"]
    assert counts["ok"] <= 100 * span + 10 + 1  # never above the exact bound of the span
    # The issue's ±1%: below it only when the clients could not keep up (a sanitizer build on a
    # loaded machine can stall them for whole periods); above it, never.
    assert counts["ok"] <= expected * 1.01
    # A stretch with no answer at all longer than the burst lasts (10 at 100/s: 0.1 s) means the
    # gateway or every client was not running (a loaded machine); budget beyond the burst that
    # accrues meanwhile is lost by design. The lower bound discounts exactly that.
    marks = [start] + sorted(t for t in answered if t <= start + duration) + [start + duration]
    stalled = sum(max(0.0, b - a - 0.1) for a, b in zip(marks, marks[1:]))
    floor = (expected - 100 * stalled) * (0.9 if harness.SANITIZED else 0.99)
    assert counts["ok"] >= floor, (counts, f"stalled {stalled:.3f} s, floor {floor:.1f}")


def test_two_keys_do_not_interfere_and_a_missing_header_is_not_limited(env):
    gw = env.gateway(routes=[limited("k", "/k", [{"key": "header:X-Key", "rate": "20/m", "burst": 5}])])
    n, r = burst_until_refused(gw, "/k", [("X-Key", "alice")])
    assert n == 5
    harness.assert_gateway_error(r, 429, "rate_limited")
    n, _ = burst_until_refused(gw, "/k", [("X-Key", "bob")])
    assert n == 5
    assert gw.request("GET", "/k", [("X-Key", "alice")]).status == 429
    # No header, no key: this limit does not apply.
    for _ in range(20):
        assert gw.request("GET", "/k").status == 200


def test_consumers_are_keys_and_anonymous_callers_fall_back_to_their_ip(env):
    import hashlib
    consumers = {c: {"api_keys": [{"sha256": hashlib.sha256(f"key-{c}".encode()).hexdigest()}]} for c in ("a", "b")}
    gw = env.gateway(consumers=consumers,
                     routes=[limited("c", "/c", [{"key": "consumer", "rate": "10/m", "burst": 3}],
                                     auth=["api_key", "anonymous"])])
    assert burst_until_refused(gw, "/c", [("X-API-Key", "key-a")])[0] == 3
    assert burst_until_refused(gw, "/c", [("X-API-Key", "key-b")])[0] == 3
    assert burst_until_refused(gw, "/c")[0] == 3  # anonymous: the client address


def test_headers_and_an_honest_retry_after(env):
    gw = env.gateway(routes=[
        limited("both", "/both", [{"key": "ip", "rate": "1/s", "burst": 2, "name": "slow"}]),
        limited("ietf", "/ietf", [{"key": "ip", "rate": "10/m"}], rate_limit_headers="ietf"),
        limited("legacy", "/legacy", [{"key": "ip", "rate": "10/m"}], rate_limit_headers="legacy"),
        limited("none", "/none", [{"key": "ip", "rate": "10/m"}], rate_limit_headers="none"),
        {"name": "open", "match": {"path_prefix": "/open"}, "respond": {"status": 200}},
    ])
    with harness.RawConn(gw.port) as c:
        r1 = c.roundtrip("GET", "/both")
        r2 = c.roundtrip("GET", "/both")
        r3 = c.roundtrip("GET", "/both")
    assert r1.status == 200 and r2.status == 200
    assert r1.header("RateLimit-Policy") == '"slow";q=1;w=1'
    assert r1.header("RateLimit") == '"slow";r=1;t=1'
    assert r2.header("RateLimit") == '"slow";r=0;t=2'
    assert (r1.header("X-RateLimit-Limit"), r1.header("X-RateLimit-Remaining"), r1.header("X-RateLimit-Reset")) == \
        ("2", "1", "1")
    assert r2.header("X-RateLimit-Remaining") == "0"
    body = harness.assert_gateway_error(r3, 429, "rate_limited")
    assert "retry" in body["message"].lower()
    assert r3.header("X-RateLimit-Remaining") == "0" and r3.header("RateLimit") == '"slow";r=0;t=2'
    ra = int(r3.header("Retry-After"))
    assert ra == 1
    entry = gw.log_entry(body["request_id"])
    assert entry.get("detail") == "rate_limit:slow"
    # Honest: after Retry-After seconds the same request is admitted.
    time.sleep(ra)
    assert gw.request("GET", "/both").status == 200

    r = gw.request("GET", "/ietf")
    assert r.header("RateLimit-Policy") == '"0";q=10;w=60' and r.header("RateLimit") == '"0";r=0;t=6'  # default burst: 10/m is below 1/s, so 1
    assert not r.headers.has("X-RateLimit-Limit")
    r = gw.request("GET", "/legacy")
    assert r.header("X-RateLimit-Limit") == "1" and not r.headers.has("RateLimit")
    r = gw.request("GET", "/none")
    assert not r.headers.has("RateLimit") and not r.headers.has("X-RateLimit-Limit")
    r = gw.request("GET", "/open")
    assert not r.headers.has("RateLimit") and not r.headers.has("Retry-After")
    for path in ("/ietf", "/ietf"):
        gw.request("GET", path)

    # sluice_rate_limited_total{route,limit}: labels from config, counted per refusing limit.
    # Counted in the log phase, which may end just after the client has its answer: poll.
    want = ('sluice_rate_limited_total{route="both",limit="slow"} 1', 'sluice_rate_limited_total{route="ietf",limit="0"} 2')
    deadline = time.monotonic() + harness.slack(3)
    while True:
        status, _, text = gw.admin_get("/metrics")
        assert status == 200
        text = text.decode()
        if all(w in text for w in want) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert all(w in text for w in want), text
    assert re.search(r"^sluice_rate_limit_table_full_total 0$", text, re.M)


def test_retry_after_is_whole_seconds_rounded_up(env):
    gw = env.gateway(routes=[limited("m", "/m", [{"key": "ip", "rate": "2/m", "burst": 1}])])
    assert gw.request("GET", "/m").status == 200
    r = gw.request("GET", "/m")
    assert r.status == 429
    assert 29 <= int(r.header("Retry-After")) <= 30


def test_global_limit_applies_to_every_route_with_one_budget(env):
    gw = env.gateway(rate_limit=[{"key": "ip", "rate": "10/m", "burst": 4, "name": "gw"}],
                     routes=[limited("a", "/a", [{"key": "ip", "rate": "100/m", "burst": 10}]),
                             {"name": "b", "match": {"path_prefix": "/b"}, "respond": {"status": 200}}])
    statuses = [gw.request("GET", p).status for p in ("/a", "/b", "/a", "/b", "/a", "/b")]
    assert statuses == [200, 200, 200, 200, 429, 429]
    r = gw.request("GET", "/b")
    assert r.status == 429 and r.json()["error"] == "rate_limited"
    assert r.header("RateLimit-Policy") == '"gw";q=10;w=60'


def test_reload_keeps_unchanged_limits_and_resets_changed_ones(env):
    keep = limited("keep", "/keep", [{"key": "ip", "rate": "20/m", "burst": 3}])
    change = limited("change", "/change", [{"key": "ip", "rate": "20/m", "burst": 3}])
    gw = env.gateway(routes=[keep, change, marker_route("one")])
    assert burst_until_refused(gw, "/keep")[0] == 3
    assert burst_until_refused(gw, "/change")[0] == 3
    # Another route changes: /keep's budget is still spent (no burst refill).
    other = {"name": "other", "match": {"path_prefix": "/other"}, "respond": {"status": 204}}
    cfg = {"routes": [keep, change, other, marker_route("two")]}
    reload_and_wait(gw, cfg, "two")
    assert gw.request("GET", "/keep").status == 429
    assert gw.request("GET", "/change").status == 429
    # /change gets another burst: a changed limit starts fresh; /keep still has none.
    changed = limited("change", "/change", [{"key": "ip", "rate": "20/m", "burst": 4}])
    reload_and_wait(gw, {"routes": [keep, changed, other, marker_route("three")]}, "three")
    assert gw.request("GET", "/keep").status == 429
    assert burst_until_refused(gw, "/change")[0] == 4


def test_limits_under_a_short_hammer_stay_within_one_request(env):
    gw = env.gateway(routes=[limited("s", "/s", [{"key": "route", "rate": "20/s", "burst": 5}])])
    ok = [0]
    lock = threading.Lock()
    start = time.monotonic()
    stop_at = start + 3

    def client():
        n = 0
        with harness.RawConn(gw.port) as c:
            while time.monotonic() < stop_at:
                n += c.roundtrip("GET", "/s").status == 200
        with lock:
            ok[0] += n

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    span = time.monotonic() - start
    assert ok[0] <= 20 * span + 5 + 1, (ok[0], span)
    # The lower bound needs clients fast enough to keep asking; a sanitizer's or valgrind's slow
    # process may leave part of the budget unasked for.
    if not harness.SANITIZED:
        assert 20 * 3 + 5 - 2 <= ok[0], (ok[0], span)


BAD_CASES = [
    ({"key": "cosumer", "rate": "10/s"}, "unknown part 'cosumer'"),
    ({"key": "ip", "rate": "10 per second"}, "expected a rate like 100/s"),
    ({"key": "ip", "rate": "0/s"}, "admits nothing"),
    ({"key": "ip", "rate": "1/d", "burst": 1000}, "days to refill"),
    ({"rate": "1/s"}, "missing required key 'key'"),
    ({"key": "header:a b", "rate": "1/s"}, "not a valid header name"),
]


@pytest.mark.parametrize("limit,message", BAD_CASES)
def test_bad_configs_are_reported_with_positions(tmp_path, sluice_bin, limit, message):
    cfg = {"listen": [{"address": f"127.0.0.1:{harness.free_port()}"}],
           "admin": {"address": f"127.0.0.1:{harness.free_port()}"},
           "routes": [limited("r", "/", [limit])]}
    text = harness.to_yaml(cfg)
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    r = harness.run_cli(["check", "-c", str(path)])
    assert r.returncode == 1, r.stdout + r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert any(re.match(re.escape(str(path)) + r":\d+:\d+: ", ln) and message in ln for ln in lines), r.stderr


def test_stores_local_and_redis_are_checked(tmp_path, sluice_bin):
    base = {"listen": [{"address": f"127.0.0.1:{harness.free_port()}"}],
            "routes": [limited("r", "/", [{"key": "ip", "rate": "1/s"}])]}
    path = tmp_path / "s.yaml"
    path.write_text(harness.to_yaml(dict(base, stores={"local": {"max_keys": 1000}})))
    r = harness.run_cli(["check", "-c", str(path)])
    assert r.returncode == 0, r.stderr
    # `check` validates stores.redis without connecting (cluster mode: tests/integration/test_92_cluster.py).
    path.write_text(harness.to_yaml(dict(base, stores={"redis": {"address": "127.0.0.1:6379", "on_failure": "deny",
                                                                 "slice": 10}})))
    r = harness.run_cli(["check", "-c", str(path)])
    assert r.returncode == 0, r.stderr
    path.write_text(harness.to_yaml(dict(base, stores={"redis": {"address": "127.0.0.1:6379", "on_failure": "open"}})))
    r = harness.run_cli(["check", "-c", str(path)])
    assert r.returncode == 1 and "on_failure: expected one of allow, deny, got 'open'" in r.stderr, r.stderr


def test_a_full_table_admits_and_counts(env):
    # 16 slots: one bucket, so the 17th live key finds it full.
    gw = env.gateway(stores={"local": {"max_keys": 16}},
                     routes=[limited("f", "/f", [{"key": "header:X-Key", "rate": "1/m", "burst": 1}])])
    for i in range(16):
        assert gw.request("GET", "/f", [("X-Key", f"k{i}")]).status == 200
    assert gw.request("GET", "/f", [("X-Key", "k3")]).status == 429  # known keys still limited
    for _ in range(3):
        assert gw.request("GET", "/f", [("X-Key", "one-too-many")]).status == 200
    text = gw.admin_get("/metrics")[2].decode()
    assert re.search(r"^sluice_rate_limit_table_full_total 3$", text, re.M), text


def test_admin_api_changes_keep_or_reset_limit_state(env):
    keep = limited("keep", "/keep", [{"key": "ip", "rate": "20/m", "burst": 2}])
    gw = env.gateway(routes=[keep, limited("tune", "/tune", [{"key": "ip", "rate": "20/m", "burst": 2}])])
    assert burst_until_refused(gw, "/keep")[0] == 2
    assert burst_until_refused(gw, "/tune")[0] == 2
    # A new route through the API: every other limit keeps its spent budget.
    status, _, body = gw.admin_request("POST", "/routes", {"name": "new", "match": {"path_prefix": "/new"},
                                                           "respond": {"status": 204}})
    assert status == 201, body
    assert gw.request("GET", "/new").status == 204
    assert gw.request("GET", "/keep").status == 429
    assert gw.request("GET", "/tune").status == 429
    # A changed limit (merge patch of its rate) starts fresh; the untouched one does not.
    status, _, body = gw.admin_request("PATCH", "/routes/tune",
                                       {"rate_limit": [{"key": "ip", "rate": "30/m", "burst": 2}]})
    assert status == 200, body
    assert burst_until_refused(gw, "/tune")[0] == 2
    assert gw.request("GET", "/keep").status == 429


def seconds_to_next(period):
    import datetime
    now = datetime.datetime.now(datetime.timezone.utc)
    if period == "hour":
        nxt = now.replace(minute=0, second=0, microsecond=0) + datetime.timedelta(hours=1)
    elif period == "day":
        nxt = now.replace(hour=0, minute=0, second=0, microsecond=0) + datetime.timedelta(days=1)
    else:
        first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        nxt = first.replace(year=first.year + 1, month=1) if first.month == 12 else first.replace(month=first.month + 1)
    return (nxt - now).total_seconds()


@pytest.mark.parametrize("period", ["hour", "day", "month"])
def test_quota_per_calendar_window(env, period):
    gw = env.gateway(routes=[{"name": "q", "match": {"path_prefix": "/q"}, "respond": {"status": 200},
                              "quota": {"key": "header:X-Key", "limit": f"3/{period}", "name": "plan"}},
                             marker_route("one")])
    assert burst_until_refused(gw, "/q", [("X-Key", "a")])[0] == 3
    r = gw.request("GET", "/q", [("X-Key", "a")])
    body = harness.assert_gateway_error(r, 429, "quota_exceeded")
    want = seconds_to_next(period)
    assert abs(int(r.header("Retry-After")) - want) <= 2, (r.header("Retry-After"), want)
    assert gw.log_entry(body["request_id"]).get("detail") == "quota:plan"
    assert burst_until_refused(gw, "/q", [("X-Key", "b")])[0] == 3  # another key
    # A reload of another route keeps the count.
    cfg = {"routes": [gw.config["routes"][0], marker_route("two")]}
    reload_and_wait(gw, cfg, "two")
    assert gw.request("GET", "/q", [("X-Key", "a")]).status == 429
