"""The dashboard on the admin listener (docs/dashboard.md), without a browser: the shape and the
counts of `GET /stats`, the page and its files at `/` and `/dashboard/*` (content types, the
Content-Security-Policy, no inline script or style, no gateway data), and the admin token: it
guards /stats, while the static page loads without it (a browser cannot send a bearer token
with a navigation; the page asks for it when /stats answers 401). The browser test is
tests/browser (make test-browser)."""
import re
import time

import pytest

import backend as be
import harness

CAUSE_KEYS = {"connectivity", "routing", "auth", "rate_limit", "latency", "resources", "other", "upstream_5xx"}
TOP_KEYS = {"time", "time_ms", "version", "pid", "uptime_seconds", "workers", "config", "latency_buckets_ms",
            "totals", "unrouted", "routes", "upstreams", "connections", "resources", "doctor"}


def stats(gw, headers=None):
    st, hdrs, j = gw.admin_request("GET", "/stats", headers=headers)
    assert st == 200, (st, j)
    assert hdrs.get("Content-Type") == "application/json" and hdrs.get("Cache-Control") == "no-store", hdrs
    return j


def check_hist(h):
    assert set(h) == {"buckets", "count", "sum_ms"}, h
    assert len(h["buckets"]) == 17 and all(isinstance(b, int) and b >= 0 for b in h["buckets"]), h
    assert h["count"] == sum(h["buckets"]), h
    assert h["sum_ms"] >= 0


def dashboard_gateway(env, token_env=None):
    live = env.backend(be.fixed(200, b"ok"), name="live")
    dead = f"127.0.0.1:{harness.free_port()}"  # nothing listens: connects are refused
    gw = env.gateway(upstreams={"u": {"targets": [{"address": live.address}, {"address": dead}]}},
                     routes=[{"name": "hi", "match": {"path": "/hi"}, "respond": {"status": 200, "body": "hi"}},
                             {"name": "api", "match": {"path_prefix": "/api"}, "upstream": "u"}], start=False)
    if token_env is not None:
        gw.config["admin"]["token_env"] = token_env
    gw.start()
    return gw, live, dead


def test_stats_shape_and_counts(env):
    gw, live, dead = dashboard_gateway(env)
    for _ in range(6):
        assert gw.request("GET", "/hi").status == 200
        gw.request("GET", "/api/x")
        assert gw.request("GET", "/nope").status == 404
    time.sleep(harness.slack(0.3))
    j = stats(gw)
    assert set(j) == TOP_KEYS, sorted(j)
    assert j["pid"] == gw.pid and j["workers"] == 2 and j["time"].endswith("Z")
    assert abs(j["time_ms"] / 1000 - time.time()) < 60
    assert j["config"]["generation"] == 1 and j["config"]["last_reload"] is None
    assert j["config"]["path"].endswith("sluice.yaml")

    b = j["latency_buckets_ms"]
    assert len(b) == 17 and b[-1] is None and b == sorted(b[:-1]) + [None], b

    t = j["totals"]
    assert t["requests"] >= 18, t
    assert set(t["errors_by_cause"]) == CAUSE_KEYS, t
    assert t["errors_by_cause"]["routing"] >= 6 and t["causes"]["route_not_found"] >= 6, t
    assert t["errors"] == sum(t["errors_by_cause"].values()), t
    check_hist(t["ttfb"])
    assert j["unrouted"]["requests"] >= 6 and j["unrouted"]["errors"] >= 6, j["unrouted"]

    # Routes: the route table view (match order) with cumulative counts.
    names = [r["name"] for r in j["routes"]]
    st, _, table = gw.admin_request("GET", "/routes?view=table")
    assert names == [r["name"] for r in table["routes"]], (names, table)
    by = {r["name"]: r for r in j["routes"]}
    assert by["hi"]["requests"] == 6 and by["hi"]["errors"] == 0, by["hi"]
    assert by["api"]["requests"] == 6 and by["api"]["action"] == "upstream u", by["api"]
    for r in j["routes"]:
        assert set(r["errors_by_cause"]) == CAUSE_KEYS, r
        assert r["rate_limited"] == 0 and r["cache"] is None, r
        assert r["latency"]["count"] == r["requests"] and len(r["latency"]["buckets"]) == len(j["latency_buckets_ms"])

    # Upstreams: the /upstreams/NAME/health view plus cumulative tries and a TTFB histogram.
    (u,) = j["upstreams"]
    assert u["upstream"] == "u" and u["balance"] == "round_robin"
    addrs = [x["address"] for x in u["targets"]]
    assert addrs == [live.address, dead], addrs
    for x in u["targets"]:
        assert {"health", "circuit", "inflight", "ewma_ms", "last_check", "available", "ejected"} <= set(x), x
        assert x["circuit"] in ("closed", "half_open", "open"), x
    check_hist(u["ttfb"])
    assert u["ttfb"]["count"] >= 1 and u["tries"] >= u["ttfb"]["count"], u

    c = j["connections"]
    assert c["max"] == 100000 and c["accepted_total"] >= 18, c
    r = j["resources"]
    assert r["fds_open"] > 0 and r["rss_bytes"] > 0 and (r["fds_limit"] is None or r["fds_limit"] >= r["fds_open"]), r
    assert j["doctor"]["window_seconds"] == 60 and isinstance(j["doctor"]["findings"], list)

    # Counters are cumulative: a later poll never shows less, and counts the new requests.
    for _ in range(4):
        gw.request("GET", "/hi")
    time.sleep(harness.slack(0.3))
    j2 = stats(gw)
    assert j2["totals"]["requests"] >= j["totals"]["requests"] + 4
    assert {r["name"]: r for r in j2["routes"]}["hi"]["requests"] == 10
    assert j2["time_ms"] >= j["time_ms"]


@pytest.mark.deadline(40)
def test_stats_names_the_dead_target_and_follows_reloads(env):
    gw, live, dead = dashboard_gateway(env)
    deadline = time.monotonic() + harness.slack(15)
    found = None
    while time.monotonic() < deadline and found is None:
        for _ in range(10):
            gw.request("GET", "/api/x")
        j = stats(gw)
        found = next((f for f in j["doctor"]["findings"]
                      if f["cause"] == "connectivity" and f["where"].get("target") == dead), None)
        time.sleep(0.3)
    assert found is not None, j["doctor"]
    tgt = {x["address"]: x for x in j["upstreams"][0]["targets"]}
    assert tgt[dead]["errors_1m"] >= 1, tgt
    st, _, r = gw.admin_request("POST", "/reload")
    assert st == 200, r
    j = stats(gw)
    assert j["config"]["generation"] == 2 and j["config"]["last_reload"]["result"] == "ok", j["config"]


def test_page_and_files(env):
    gw, _, _ = dashboard_gateway(env)
    st, hdrs, body = gw.admin_get("/")
    assert st == 200, body
    assert hdrs.get("Content-Type") == "text/html; charset=utf-8", hdrs
    assert hdrs.get("Cache-Control") == "no-store"
    csp = hdrs.get("Content-Security-Policy", "")
    for d in ("default-src 'self'", "script-src 'self'", "style-src 'self'", "connect-src 'self'",
              "object-src 'none'", "frame-ancestors 'none'", "base-uri 'none'"):
        assert d in csp, csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, csp
    assert hdrs.get("X-Content-Type-Options") == "nosniff"
    html = body.decode()
    assert html.lower().startswith("<!doctype html>") and "<title>sluice dashboard</title>" in html
    # Under that policy inline code would not run: every script and style is a file of ours.
    assert re.findall(r"<script\b[^>]*>", html) == ['<script src="/dashboard/app.js" defer>'], html
    assert "<style" not in html and " style=" not in html and "javascript:" not in html
    assert not re.search(r"\son[a-z]+=", html), "inline event handler"
    assert not re.search(r"(src|href)=\"(https?:)?//", html), "an external asset"
    for path, ctype in (("/dashboard/app.js", "text/javascript; charset=utf-8"),
                        ("/dashboard/app.css", "text/css; charset=utf-8")):
        st, hdrs, body = gw.admin_get(path)
        assert st == 200 and hdrs.get("Content-Type") == ctype and len(body) > 1000, (path, st, hdrs)
        assert hdrs.has("Content-Security-Policy") and hdrs.get("Cache-Control") == "no-store"
        assert b"http://" not in body and b"https://" not in body, f"{path} refers to an outside address"
    st, _, j = gw.admin_request("GET", "/dashboard/nope.js")
    assert st == 404 and j["error"] == "not_found"
    st, _, j = gw.admin_request("GET", "/dashboard/app.js/x")
    assert st == 404
    st, hdrs, j = gw.admin_request("POST", "/", body=b"")
    assert st == 405 and hdrs.get("Allow") == "GET, HEAD"
    st, hdrs, j = gw.admin_request("HEAD", "/")
    assert st == 200 and j is None and int(hdrs.get("Content-Length")) > 1000
    st, hdrs, j = gw.admin_request("POST", "/stats", body=b"")
    assert st == 405 and hdrs.get("Allow") == "GET, HEAD"


def test_token_guards_stats_not_the_static_page(env, monkeypatch):
    monkeypatch.setenv("SLUICE_T99_TOKEN", "t99-secret")
    gw, live, dead = dashboard_gateway(env, token_env="SLUICE_T99_TOKEN")
    st, hdrs, j = gw.admin_request("GET", "/stats")
    assert st == 401 and j["error"] == "unauthorized" and hdrs.get("WWW-Authenticate") == "Bearer", (st, j)
    st, _, j = gw.admin_request("GET", "/stats", headers={"Authorization": "Bearer wrong"})
    assert st == 401, j
    j = stats(gw, headers={"Authorization": "Bearer t99-secret"})
    assert j["upstreams"][0]["targets"][0]["address"] == live.address
    # The page and its files are the same bytes in every binary: no config, counters or names.
    for path in ("/", "/dashboard/app.js", "/dashboard/app.css"):
        st, _, body = gw.admin_get(path)
        assert st == 200, path
        for secret in (live.address, dead, str(live.port), "t99-secret", "SLUICE_T99_TOKEN"):
            assert secret.encode() not in body, (path, secret)
    st, _, _ = gw.admin_request("GET", "/status")
    assert st == 401
