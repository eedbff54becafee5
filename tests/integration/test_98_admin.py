"""The admin API (docs/admin.md): status, the config document, CRUD on routes / upstreams /
consumers with validation, atomic persistence and no change on failure, reload, upstream
health, bearer-token auth, and bad input of every kind."""
import os
import signal
import threading
import time

import pytest

import backend as be
import harness


def hello(name, path, body):
    return {"name": name, "match": {"path": path}, "respond": {"status": 200, "body": body}}


def base_gateway(env, **kw):
    up = env.backend(be.fixed(200, b"from-up"), name="up")
    gw = env.gateway(upstreams={"users": harness.upstream(up)},
                     routes=[{"name": "users", "match": {"path_prefix": "/users"}, "upstream": "users"},
                             hello("hello", "/hello", "hi\n")], **kw)
    return gw, up


def gen(gw):
    st, _, j = gw.admin_request("GET", "/status")
    assert st == 200, j
    return j["config"]["generation"]


def test_status_reports_the_running_gateway(env):
    gw, _ = base_gateway(env)
    for _ in range(5):
        assert gw.request("GET", "/hello").status == 200
    time.sleep(harness.slack(0.2))
    st, hdrs, j = gw.admin_request("GET", "/status")
    assert st == 200 and hdrs.get("Content-Type") == "application/json"
    assert j["pid"] == gw.pid
    assert j["workers"] == 2
    assert j["config"]["generation"] == 1 and j["config"]["last_reload"] is None
    assert j["config"]["path"].endswith("sluice.yaml")
    assert j["requests_total"] >= 5
    assert j["upstreams"] == ["users"] and j["routes"] == 2
    assert j["uptime_seconds"] >= 0 and j["started"].endswith("Z")
    assert j["connections"]["accepted_total"] >= 5


def test_config_document_round_trips(env):
    gw, _ = base_gateway(env)
    st, _, doc = gw.admin_request("GET", "/config")
    assert st == 200
    assert doc["routes"][1] == hello("hello", "/hello", "hi\n")
    assert doc["workers"] == 2
    assert doc["upstreams"]["users"]["targets"][0]["address"].startswith("127.0.0.1:")
    # PUT back what GET gave: valid, applied as a new generation, behaviour unchanged
    st, _, j = gw.admin_request("PUT", "/config", doc)
    assert st == 200, j
    assert j == {"result": "ok", "generation": 2}
    assert gw.request("GET", "/hello").body == b"hi\n"
    st, _, doc2 = gw.admin_request("GET", "/config")
    assert doc2 == doc


def test_route_crud_applies_and_persists(env):
    gw, _ = base_gateway(env)
    st, _, j = gw.admin_request("GET", "/routes")
    assert st == 200 and [r["name"] for r in j["routes"]] == ["users", "hello"]
    st, _, j = gw.admin_request("GET", "/routes/hello")
    assert st == 200 and j["respond"]["body"] == "hi\n"

    st, _, j = gw.admin_request("POST", "/routes", hello("new", "/new", "brand new\n"))
    assert st == 201 and j["generation"] == 2, j
    assert gw.request("GET", "/new").body == b"brand new\n"
    assert "brand new" in gw.config_path.read_text()

    st, _, j = gw.admin_request("POST", "/routes", hello("new", "/new2", "x"))
    assert st == 409 and j["error"] == "exists"

    st, _, j = gw.admin_request("PUT", "/routes/new", {"match": {"path": "/new"},
                                                        "respond": {"status": 202, "body": "replaced\n"}})
    assert st == 200, j
    r = gw.request("GET", "/new")
    assert r.status == 202 and r.body == b"replaced\n"

    st, _, j = gw.admin_request("PATCH", "/routes/new", {"respond": {"body": "patched\n"}})
    assert st == 200, j
    r = gw.request("GET", "/new")
    assert r.status == 202 and r.body == b"patched\n"

    st, _, j = gw.admin_request("DELETE", "/routes/new")
    assert st == 200 and j["generation"] == 5
    assert gw.request("GET", "/new").status == 404
    st, _, j = gw.admin_request("DELETE", "/routes/new")
    assert st == 404 and j["error"] == "not_found"

    # The file is the truth after a restart: a change made through the API survives it.
    gw.admin_request("POST", "/routes", hello("kept", "/kept", "still here\n"))
    gw.stop()
    gw.start(write=False)
    assert gw.request("GET", "/kept").body == b"still here\n"
    assert gw.request("GET", "/hello").body == b"hi\n"


def test_a_change_breaking_a_reference_is_rejected_and_nothing_changes(env):
    gw, _ = base_gateway(env)
    before = gw.config_path.read_bytes()
    st, _, j = gw.admin_request("PUT", "/routes/hello", {"match": {"path": "/hello"}, "upstream": "nope"})
    assert st == 422, j
    assert j["error"] == "invalid_config"
    e = j["errors"][0]
    assert "nope" in e["message"] and e["path"] == "routes[1].upstream", e
    assert e["line"] > 0 and e["col"] > 0
    assert gw.config_path.read_bytes() == before
    assert gen(gw) == 1
    assert gw.request("GET", "/hello").body == b"hi\n"
    # deleting an upstream a route uses is the same mistake
    st, _, j = gw.admin_request("DELETE", "/upstreams/users")
    assert st == 422 and "users" in j["errors"][0]["message"], j
    assert gw.config_path.read_bytes() == before
    assert gw.request("GET", "/users/1").body == b"from-up"


def test_bad_bodies_get_clear_errors(env):
    gw, _ = base_gateway(env)
    before = gw.config_path.read_bytes()
    st, _, j = gw.admin_request("POST", "/routes", b'{"name": "x", "match": ')
    assert st == 400 and j["error"] == "bad_json" and j["line"] == 1, j
    st, _, j = gw.admin_request("POST", "/routes", b'[1, 2]')
    assert st == 400 and j["error"] == "bad_request"
    st, _, j = gw.admin_request("POST", "/routes", {"match": {"path": "/x"}})
    assert st == 400 and "name" in j["message"]
    st, _, j = gw.admin_request("PUT", "/routes/hello", {"name": "other", "match": {"path": "/x"}})
    assert st == 400
    st, _, j = gw.admin_request("POST", "/routes", {"name": "x", "match": {"path": "/x", "colour": "red"},
                                                     "respond": {"status": 200}})
    assert st == 422 and j["errors"][0]["path"] == "routes[2].match.colour", j
    assert "colour" in j["errors"][0]["message"]
    st, _, j = gw.admin_request("POST", "/routes", b'{"name": "x", "name": "y"}')
    assert st == 400 and j["error"] == "bad_json"
    st, _, j = gw.admin_request("PUT", "/config", b"listen: [ {address: \n")
    assert st == 422 and j["errors"][0]["line"] >= 1, j
    assert gw.config_path.read_bytes() == before
    assert gen(gw) == 1


def test_methods_sizes_and_unknown_paths(env):
    gw, _ = base_gateway(env)
    st, hdrs, j = gw.admin_request("DELETE", "/status")
    assert st == 405 and hdrs.get("Allow") == "GET, HEAD" and j["error"] == "method_not_allowed"
    st, hdrs, _ = gw.admin_request("GET", "/reload")
    assert st == 405 and hdrs.get("Allow") == "POST"
    st, _, j = gw.admin_request("GET", "/nope")
    assert st == 404 and j["error"] == "not_found"
    st, _, j = gw.admin_request("GET", "/routes/a/b/c/d/e")
    assert st == 404
    st, _, j = gw.admin_request("GET", "/routes/%zz")
    assert st == 404
    # an oversized body is refused from its Content-Length, before it is read
    with harness.RawConn(gw.admin_port) as c:
        c.send(b"POST /routes HTTP/1.1\r\nHost: a\r\nContent-Length: 1048577\r\n\r\n{")
        r = c.read_response()
        assert r.status == 413 and r.json()["error"] == "request_too_large"
    # chunked bodies are refused with a clear status, not hung on
    with harness.RawConn(gw.admin_port) as c:
        c.send(b"POST /routes HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        r = c.read_response()
        assert r.status == 411
    # a client that promises a body and never sends it is dropped at the admin timeout, and
    # the admin listener keeps answering meanwhile
    with harness.RawConn(gw.admin_port) as c:
        c.send(b"POST /routes HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n{")
        assert gw.admin_request("GET", "/health")[0] == 200
    assert gw.alive()


def test_upstream_and_consumer_collections(env):
    gw, up = base_gateway(env)
    other = env.backend(be.fixed(200, b"from-other"), name="other")
    st, _, j = gw.admin_request("GET", "/upstreams")
    assert st == 200 and list(j["upstreams"]) == ["users"]
    st, _, j = gw.admin_request("POST", "/upstreams", {"name": "orders", **harness.upstream(other)})
    assert st == 201, j
    st, _, j = gw.admin_request("GET", "/upstreams/orders")
    assert st == 200 and "name" not in j and j["targets"][0]["address"] == f"127.0.0.1:{other.port}"
    st, _, j = gw.admin_request("POST", "/routes", {"name": "orders", "match": {"path_prefix": "/orders"},
                                                     "upstream": "orders"})
    assert st == 201, j
    assert gw.request("GET", "/orders/1").body == b"from-other"
    st, _, j = gw.admin_request("PATCH", "/upstreams/orders", {"balance": "least_conn"})
    assert st == 200, j
    assert gw.admin_request("GET", "/upstreams/orders")[2]["balance"] == "least_conn"
    # consumers are validated like everything else (the auth feature gives them meaning)
    st, _, j = gw.admin_request("GET", "/consumers")
    assert st == 200 and j == {"consumers": {}}
    st, _, j = gw.admin_request("GET", "/consumers/nobody")
    assert st == 404


def test_reload_endpoint(env):
    gw, _ = base_gateway(env)
    cfg = dict(gw.config)
    cfg["routes"] = cfg["routes"] + [hello("late", "/late", "late\n")]
    gw.write_config(cfg)
    st, _, j = gw.admin_request("POST", "/reload")
    assert st == 200 and j == {"result": "ok", "generation": 2}
    assert gw.request("GET", "/late").body == b"late\n"
    gw.config_path.write_text("listen: [ {address: 127.0.0.1:1} ]\nroutes:\n  - name: x\n    upstream: ghost\n")
    st, _, j = gw.admin_request("POST", "/reload")
    assert st == 422 and j["error"] == "invalid_config"
    assert all(e["file"].endswith("sluice.yaml") for e in j["errors"])
    assert any(e.get("line") == 4 for e in j["errors"]), j
    assert gw.request("GET", "/late").body == b"late\n"
    st, _, s = gw.admin_request("GET", "/status")
    assert s["config"]["generation"] == 2
    assert s["config"]["last_reload"]["result"] == "failed" and s["config"]["last_reload"]["errors"]


def test_yaml_put_keeps_the_file_as_sent(env):
    gw, _ = base_gateway(env)
    text = gw.config_path.read_text()
    text = "# owned by the platform team\n" + text.replace("hi\\n", "yaml put\\n")
    st, _, j = gw.admin_request("PUT", "/config", text, headers={"Content-Type": "application/yaml"})
    assert st == 200, j
    assert gw.config_path.read_text() == text
    assert gw.request("GET", "/hello").body == b"yaml put\n"


def test_persist_failure_changes_nothing(env):
    gw, _ = base_gateway(env)
    before = gw.config_path.read_bytes()
    # the temporary file's name is taken by a directory: the write fails before the rename
    blocker = gw.config_path.parent / f"{gw.config_path.name}.tmp.{gw.pid}"
    blocker.mkdir()
    try:
        st, _, j = gw.admin_request("POST", "/routes", hello("new", "/new", "x"))
        assert st == 500 and j["error"] == "persist_failed", j
        assert gw.request("GET", "/new").status == 404
        assert gw.config_path.read_bytes() == before
        assert gen(gw) == 1
    finally:
        blocker.rmdir()
    st, _, j = gw.admin_request("POST", "/routes", hello("new", "/new", "x"))
    assert st == 201


@pytest.mark.deadline(60)
def test_concurrent_changes_are_serialised(env):
    gw, _ = base_gateway(env)
    results = []

    def add(i):
        results.append(gw.admin_request("POST", "/routes", hello(f"r{i}", f"/r{i}", f"{i}\n"), timeout=20)[0])

    threads = [threading.Thread(target=add, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [201] * 12
    names = [r["name"] for r in gw.admin_request("GET", "/routes")[2]["routes"]]
    assert sorted(names) == sorted(["users", "hello"] + [f"r{i}" for i in range(12)])
    for i in range(12):
        assert gw.request("GET", f"/r{i}").body == f"{i}\n".encode()
    assert gen(gw) == 13


def test_upstream_health_view(env):
    up = env.backend(be.paths({"/healthz": be.fixed(200, b"ok")}), name="up")
    closed_port = harness.free_port()
    gw = env.gateway(upstreams={"users": harness.upstream(
        up, closed_port, health={"active": {"path": "/healthz", "interval": "200ms", "timeout": "100ms",
                                            "healthy": 1, "unhealthy": 1}})},
        routes=[{"name": "users", "match": {"path_prefix": "/"}, "upstream": "users"}])
    deadline = time.monotonic() + harness.slack(5)
    while True:
        st, _, j = gw.admin_request("GET", "/upstreams/users/health")
        assert st == 200
        t = {x["address"]: x for x in j["targets"]}
        bad = t[f"127.0.0.1:{closed_port}"]
        if bad["health"] == "unhealthy" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert j["upstream"] == "users" and j["balance"] == "round_robin"
    good = t[f"127.0.0.1:{up.port}"]
    assert good["health"] == "healthy" and good["available"] is True and good["circuit"] == "closed"
    assert good["last_check"]["result"] == "status 200"
    assert good["requests_1m"] >= 0 and good["errors_1m"] >= 0 and 0 <= good["error_rate_1m"] <= 1
    assert bad["health"] == "unhealthy" and bad["available"] is False
    assert bad["last_check"]["result"] != "status 200"
    st, _, j = gw.admin_request("GET", "/upstreams/ghost/health")
    assert st == 404 and "ghost" in j["message"]


def test_token_required_when_configured(env):
    os.environ["SLUICE_TEST_ADMIN_TOKEN"] = "s3cret-token"
    gw, _ = base_gateway(env, start=False)
    gw.config["admin"] = {"address": f"127.0.0.1:{gw.admin_port}", "token_env": "SLUICE_TEST_ADMIN_TOKEN"}
    gw.start()
    st, hdrs, j = gw.admin_request("GET", "/status")
    assert st == 401 and j["error"] == "unauthorized" and hdrs.get("WWW-Authenticate") == "Bearer"
    assert gw.admin_request("GET", "/metrics")[0] == 401
    assert gw.admin_request("GET", "/status", headers={"Authorization": "Bearer wrong"})[0] == 401
    assert gw.admin_request("GET", "/status", headers={"Authorization": "Bearer s3cret-tokenX"})[0] == 401
    assert gw.admin_request("GET", "/status", headers={"Authorization": "Bearer s3cret-token"})[0] == 200
    assert gw.admin_request("GET", "/status", headers={"Authorization": "bearer s3cret-token"})[0] == 200
    # the orchestrator's probes need no token
    assert gw.admin_request("GET", "/health")[0] == 200
    assert gw.admin_request("GET", "/ready")[0] == 200
    assert "s3cret" not in gw.stderr_path.read_text()
    # the variable gone: the gateway refuses to start rather than run an open admin API
    gw.stop()
    del os.environ["SLUICE_TEST_ADMIN_TOKEN"]
    gw.proc = None
    with pytest.raises(harness.GatewayDied):
        gw.start()
    assert "SLUICE_TEST_ADMIN_TOKEN" in gw.stderr_path.read_text()


def test_sighup_reload_is_recorded(env):
    gw, _ = base_gateway(env)
    gw.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + harness.slack(3)
    while gen(gw) != 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    st, _, s = gw.admin_request("GET", "/status")
    assert s["config"]["generation"] == 2 and s["config"]["last_reload"]["result"] == "ok"


def test_changes_work_whatever_strings_the_config_holds(env):
    """Found by fuzz_document: a running config holding a string YAML cannot write plain (a
    leading '@', DEL, C1 controls) must not make every later API change fail."""
    gw = env.gateway(routes=[hello("odd", "/odd", "@home"), hello("ctl", "/ctl", "a\x7fb\u0085c")])
    st, _, j = gw.admin_request("POST", "/routes", hello("other", "/other", "fine"))
    assert st == 201, j
    assert gw.request("GET", "/odd").body == b"@home"
    assert gw.request("GET", "/ctl").body == "a\x7fb\u0085c".encode()
    st, _, doc = gw.admin_request("GET", "/routes/odd")
    assert doc["respond"]["body"] == "@home"
