"""GET /consumers/NAME/usage on the admin API (docs/admin.md, docs/ratelimit.md "Reading a
consumer's usage"): the limits and quota a consumer meets, what it spent (counted by requests
through the gateway), what is left, when it resets, recovery of the budget over time, keys that
are not the consumer's own, an unknown consumer (404 in the API's error format), a method the
endpoint does not take, the admin token, and cluster mode (this node's view, said so)."""
import hashlib
import os
import shutil
import time

import pytest

import harness


def sha(key):
    return hashlib.sha256(key.encode()).hexdigest()


CONSUMERS = {"alice": {"api_keys": [{"sha256": sha("key-alice")}]},
             "bob": {"api_keys": [{"sha256": sha("key-bob")}]}}


def config(rate="5/s", burst=5, quota="4/day"):
    return dict(
        consumers=CONSUMERS,
        rate_limit=[{"key": "consumer", "rate": "1000/h", "burst": 1000, "name": "global-per-consumer"}],
        routes=[
            {"name": "api", "match": {"path_prefix": "/api"}, "respond": {"status": 200, "body": "ok\n"},
             "auth": ["api_key"],
             "rate_limit": [{"key": "consumer", "rate": rate, "burst": burst, "name": "per-consumer"},
                            {"key": "ip", "rate": "1000/s", "burst": 1000, "name": "per-ip"}]},
            {"name": "metered", "match": {"path_prefix": "/metered"}, "respond": {"status": 200, "body": "ok\n"},
             "auth": ["api_key"], "quota": {"key": "consumer", "limit": quota, "name": "plan"}},
            {"name": "open", "match": {"path_prefix": "/open"}, "respond": {"status": 200, "body": "ok\n"}},
        ])


def usage(gw, name, headers=None):
    st, _, j = gw.admin_request("GET", f"/consumers/{name}/usage", headers=headers)
    return st, j


def item(j, route, name):
    found = [i for i in j["limits"] if i["route"] == route and i["name"] == name]
    assert len(found) == 1, j
    return found[0]


def spend(gw, path, key, n):
    statuses = []
    with harness.RawConn(gw.port) as c:
        for _ in range(n):
            statuses.append(c.roundtrip("GET", path, {"X-API-Key": key}).status)
    return statuses


def test_usage_shows_what_requests_spent_and_leaves_others_alone(env):
    # 1 request per 10 s steady, burst 5: the spend stays visible for the whole test.
    gw = env.gateway(**config(rate="6/m", burst=5))
    st, j = usage(gw, "alice")
    assert st == 200, j
    assert j["consumer"] == "alice" and j["source"] == "local" and j["cluster"] is False
    per = item(j, "api", "per-consumer")
    assert per["type"] == "rate_limit" and per["rate"] == 6 and per["burst"] == 5 and per["period"] == "minute"
    assert per["per_consumer"] is True
    assert per["usage"]["tracked"] is False and per["usage"]["remaining"] == 5 and per["usage"]["used"] == 0
    # The ip-keyed limit applies but is not the consumer's own budget: no figures.
    ip = item(j, "api", "per-ip")
    assert ip["per_consumer"] is False and ip["usage"] is None
    glob = item(j, "*", "global-per-consumer")
    assert glob["usage"]["remaining"] == 1000

    assert spend(gw, "/api/x", "key-alice", 3) == [200, 200, 200]
    st, j = usage(gw, "alice")
    per = item(j, "api", "per-consumer")["usage"]
    assert per["tracked"] is True and per["used"] == 3 and per["remaining"] == 2, per
    assert per["limit"] == 5 and per["retry_after_seconds"] == 0
    # Three requests at 10 s each: back to a full budget in at most 30 s (rounded up).
    assert 20 < per["reset_seconds"] <= 30, per
    assert item(j, "*", "global-per-consumer")["usage"]["used"] == 3
    # bob spent nothing
    st, jb = usage(gw, "bob")
    assert st == 200 and item(jb, "api", "per-consumer")["usage"]["used"] == 0

    # Spend the rest and one more: the refusal shows as no remaining and a retry time.
    assert spend(gw, "/api/x", "key-alice", 3) == [200, 200, 429]
    st, j = usage(gw, "alice")
    per = item(j, "api", "per-consumer")["usage"]
    assert per["remaining"] == 0 and per["used"] == 5, per
    assert 1 <= per["retry_after_seconds"] <= 10, per
    # Reading changed nothing: a second read says the same and the limit still refuses.
    assert item(usage(gw, "alice")[1], "api", "per-consumer")["usage"]["remaining"] == 0
    assert spend(gw, "/api/x", "key-alice", 1) == [429]


@pytest.mark.deadline(60)
def test_usage_resets_as_the_budget_is_earned_back(env):
    # one request per 2 s, burst 4: empty for 2 s after the refusal, full again within 8 s
    gw = env.gateway(**config(rate="30/m", burst=4))
    assert spend(gw, "/api/x", "key-alice", 5) == [200, 200, 200, 200, 429]
    st, j = usage(gw, "alice")
    per = item(j, "api", "per-consumer")["usage"]
    assert per["remaining"] == 0 and 0 < per["reset_seconds"] <= 8, per
    deadline = time.monotonic() + harness.slack(20)
    while time.monotonic() < deadline:
        per = item(usage(gw, "alice")[1], "api", "per-consumer")["usage"]
        if per["remaining"] == 4:
            break
        time.sleep(0.2)
    assert per["remaining"] == 4 and per["used"] == 0 and per["tracked"] is False, per
    assert spend(gw, "/api/x", "key-alice", 5) == [200] * 4 + [429]


def test_quota_usage_counts_in_the_calendar_window(env):
    gw = env.gateway(**config(quota="4/day"))
    st, j = usage(gw, "alice")
    q = item(j, "metered", "plan")
    assert q["type"] == "quota" and q["limit"] == 4 and q["period"] == "day"
    assert q["usage"]["used"] == 0 and q["usage"]["remaining"] == 4
    assert spend(gw, "/metered", "key-alice", 3) == [200, 200, 200]
    q = item(usage(gw, "alice")[1], "metered", "plan")["usage"]
    assert q["used"] == 3 and q["remaining"] == 1 and q["tracked"] is True, q
    assert q["window_start"].endswith("T00:00:00.000Z") and q["window_end"].endswith("T00:00:00.000Z"), q
    assert 0 < q["reset_seconds"] <= 86400
    assert spend(gw, "/metered", "key-alice", 2) == [200, 429]
    q = item(usage(gw, "alice")[1], "metered", "plan")["usage"]
    assert q["used"] == 4 and q["remaining"] == 0 and q["retry_after_seconds"] == q["reset_seconds"], q
    # bob's window is his own
    assert item(usage(gw, "bob")[1], "metered", "plan")["usage"]["used"] == 0


def test_a_global_limit_keyed_by_route_is_listed_per_route(env):
    cfg = config()
    cfg["rate_limit"] = [{"key": "consumer+route", "rate": "10/m", "burst": 10, "name": "per-route"}]
    gw = env.gateway(**cfg)
    assert spend(gw, "/api/x", "key-alice", 2) == [200, 200]
    assert spend(gw, "/metered/x", "key-alice", 1) == [200]
    j = usage(gw, "alice")[1]
    per_route = {i["route"]: i["usage"]["used"] for i in j["limits"] if i["name"] == "per-route"}
    assert per_route == {"api": 2, "metered": 1, "open": 0}, j


def test_a_key_with_a_header_part_is_not_the_consumers_own(env):
    """consumer+header:NAME: the budget is per header value too, so the usage read (which has no
    request, hence no header) lists the limit without figures, whatever was spent against it."""
    cfg = config()
    cfg["routes"][0]["rate_limit"] = [{"key": "consumer+header:X-Tenant", "rate": "10/m", "burst": 10,
                                       "name": "per-tenant"},
                                      {"key": "consumer", "rate": "10/m", "burst": 10, "name": "per-consumer"}]
    gw = env.gateway(**cfg)
    with harness.RawConn(gw.port) as c:
        for _ in range(2):
            assert c.roundtrip("GET", "/api/x", {"X-API-Key": "key-alice", "X-Tenant": "t1"}).status == 200
    j = usage(gw, "alice")[1]
    tenant = item(j, "api", "per-tenant")
    assert tenant["per_consumer"] is False and tenant["usage"] is None, tenant
    assert item(j, "api", "per-consumer")["usage"]["used"] == 2, j


def test_unknown_consumer_and_wrong_method(env):
    gw = env.gateway(**config())
    st, j = usage(gw, "mallory")
    assert st == 404 and j["error"] == "not_found" and "mallory" in j["message"], j
    st, hdrs, j = gw.admin_request("POST", "/consumers/alice/usage", body={})
    assert st == 405 and j["error"] == "method_not_allowed" and hdrs.get("Allow") == "GET, HEAD"
    # the collection endpoints are untouched
    st, _, j = gw.admin_request("GET", "/consumers/alice")
    assert st == 200 and "api_keys" in j
    # a consumer added at runtime is known at once, with a full budget
    st, _, _ = gw.admin_request("PUT", "/consumers/carol", body={"api_keys": [{"sha256": sha("key-carol")}]})
    assert st in (200, 201)
    st, j = usage(gw, "carol")
    assert st == 200 and item(j, "api", "per-consumer")["usage"]["remaining"] == 5


def test_no_limits_is_an_empty_list(env):
    gw = env.gateway(consumers=CONSUMERS,
                     routes=[{"name": "open", "match": {"path_prefix": "/"}, "respond": {"status": 200}}])
    st, j = usage(gw, "alice")
    assert st == 200 and j["limits"] == [], j


def test_usage_needs_the_admin_token_when_set(env):
    os.environ["SLUICE_TEST_USAGE_TOKEN"] = "usage-token"
    gw = env.gateway(start=False, **config())
    gw.config["admin"] = {"address": f"127.0.0.1:{gw.admin_port}", "token_env": "SLUICE_TEST_USAGE_TOKEN"}
    gw.start()
    st, j = usage(gw, "alice")
    assert st == 401 and j["error"] == "unauthorized"
    st, j = usage(gw, "mallory")
    assert st == 401, "an unknown consumer must not be told apart without the token"
    st, j = usage(gw, "alice", headers={"Authorization": "Bearer usage-token"})
    assert st == 200 and j["consumer"] == "alice"


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_cluster_mode_reports_the_local_view_and_says_so(env, tmp_path):
    from test_92_cluster import Redis, wait_store_up
    r = Redis(tmp_path).start()
    try:
        cfg = config(rate="6/m", burst=5)
        cfg["stores"] = {"redis": {"address": f"127.0.0.1:{r.port}", "on_failure": "allow"}}
        gw = env.gateway(**cfg)
        wait_store_up([gw])
        assert spend(gw, "/api/x", "key-alice", 2) == [200, 200]
        st, j = usage(gw, "alice")
        assert st == 200 and j["cluster"] is True and j["source"] == "local" and "Redis" in j["note"], j
        # Redis decided: this node's table holds nothing for the key.
        assert item(j, "api", "per-consumer")["usage"]["tracked"] is False
        # Redis gone, allow: this node decides on its table, and the usage shows it.
        r.kill()
        wait_store_up([gw], up=False)
        assert spend(gw, "/api/x", "key-alice", 3) == [200, 200, 200]
        per = item(usage(gw, "alice")[1], "api", "per-consumer")["usage"]
        assert per["tracked"] is True and per["used"] == 3, per
    finally:
        r.kill()
