"""Routing: hosts (exact, wildcard, case, port), path exact/prefix/regex precedence, methods (405
with Allow), header matches, 404, strip_prefix and regex rewrite, respond (static and echo)."""
import pytest

import backend as be
import harness
from harness import REQUEST_ID_RE, assert_gateway_error

ECHO = {"echo": True}


@pytest.fixture(scope="module")
def rig(menv):
    up = menv.backend(be.echo(), name="up")
    routes = [
        {"name": "exact-host", "match": {"hosts": ["api.example.com"], "path_prefix": "/"}, "respond": ECHO},
        {"name": "wildcard-host", "match": {"hosts": ["*.example.com"], "path_prefix": "/"}, "respond": ECHO},
        {"name": "narrow-host", "match": {"hosts": ["narrow.example.net"], "path_prefix": "/only"}, "respond": ECHO},
        {"name": "ping-exact", "match": {"path": "/ping"},
         "respond": {"status": 200, "body": "pong\n", "content_type": "text/plain"}},
        {"name": "ping-prefix", "match": {"path_prefix": "/ping"}, "respond": ECHO},
        {"name": "ping-deep", "match": {"path_prefix": "/ping/deep"}, "respond": ECHO},
        {"name": "regex", "match": {"path_regex": "^/items/[0-9]+$"}, "respond": ECHO},
        {"name": "m-read", "match": {"path_prefix": "/m", "methods": ["GET", "POST"]}, "respond": ECHO},
        {"name": "m-delete", "match": {"path_prefix": "/m", "methods": ["DELETE"]}, "respond": ECHO},
        {"name": "h-exact", "match": {"path_prefix": "/h", "headers": [{"name": "X-Env", "value": "canary"}]},
         "respond": ECHO},
        {"name": "h-present", "match": {"path_prefix": "/h", "headers": [{"name": "X-Debug", "present": True}]},
         "respond": ECHO},
        {"name": "h-regex", "match": {"path_prefix": "/h", "headers": [{"name": "X-Ver", "regex": "^v[0-9]+$"}]},
         "respond": ECHO},
        {"name": "h-any", "match": {"path_prefix": "/h"}, "respond": ECHO},
        {"name": "strip", "match": {"path_prefix": "/api"}, "upstream": "up", "strip_prefix": True},
        {"name": "rewrite", "match": {"path_prefix": "/old/"}, "upstream": "up",
         "rewrite": {"regex": "^/old/(.*)$", "replacement": "/new/$1"}},
        {"name": "proxied", "match": {"path_prefix": "/proxy"}, "upstream": "up"},
        {"name": "static", "match": {"path": "/static"},
         "respond": {"status": 201, "body": "made\n", "content_type": "text/x-test"}},
    ]
    gw = menv.gateway(upstreams={"up": harness.upstream(up)}, routes=routes)
    return gw, up


def route_of(gw, method, path, host="test.local", headers=None, body=None):
    r = gw.request(method, path, headers, body, host=host)
    assert r.status == 200, f"{method} {host}{path}: {r!r} {r.headers}"
    return r.json()["route"]


@pytest.mark.parametrize("host,route", [
    ("api.example.com", "exact-host"),
    ("API.Example.COM", "exact-host"),
    ("api.example.com:8080", "exact-host"),
    ("a.example.com", "wildcard-host"),
    ("A.EXAMPLE.com:80", "wildcard-host"),
])
def test_host_matching(rig, host, route):
    gw, _ = rig
    assert route_of(gw, "GET", "/ping", host=host) == route


def test_wildcard_does_not_match_bare_domain(rig):
    gw, _ = rig
    # example.com is not *.example.com: it falls to the host-less routes, where /zzz matches nothing.
    assert_gateway_error(gw.request("GET", "/zzz", host="example.com"), 404, "route_not_found")
    assert route_of(gw, "GET", "/ping/x", host="example.com") == "ping-prefix"


def test_host_group_falls_back_when_no_path_matches(rig):
    gw, _ = rig
    assert route_of(gw, "GET", "/only/x", host="narrow.example.net") == "narrow-host"
    # Nothing of narrow.example.net's group matches /items/42: the host-less routes decide.
    assert route_of(gw, "GET", "/items/42", host="narrow.example.net") == "regex"
    assert route_of(gw, "GET", "/items/42", host="other.test") == "regex"
    assert_gateway_error(gw.request("GET", "/nothing", host="narrow.example.net"), 404, "route_not_found")


@pytest.mark.parametrize("path,route", [
    ("/ping/x", "ping-prefix"),
    ("/pingpong", "ping-prefix"),
    ("/ping/deep", "ping-deep"),
    ("/ping/deeper/still", "ping-deep"),
    ("/items/42", "regex"),
])
def test_path_precedence(rig, path, route):
    gw, _ = rig
    assert route_of(gw, "GET", path) == route


def test_exact_path_wins_and_static_respond(rig):
    gw, _ = rig
    r = gw.request("GET", "/ping")
    assert r.status == 200 and r.body == b"pong\n"
    assert r.header("Content-Type") == "text/plain"
    assert REQUEST_ID_RE.match(r.header("X-Request-Id", ""))
    r = gw.request("GET", "/static?x=1")
    assert (r.status, r.body, r.header("Content-Type")) == (201, b"made\n", "text/x-test")


def test_regex_is_anchored_as_written(rig):
    gw, _ = rig
    assert_gateway_error(gw.request("GET", "/items/42x"), 404, "route_not_found")
    assert_gateway_error(gw.request("GET", "/items/"), 404, "route_not_found")


def test_route_not_found(rig):
    gw, _ = rig
    body = assert_gateway_error(gw.request("GET", "/nowhere"), 404, "route_not_found")
    entry = gw.log_entry(body["request_id"])
    assert entry["status"] == 404 and entry["cause"] == "route_not_found"
    assert entry["route"] == "" and entry["upstream"] == "" and entry["target"] == ""


def test_methods_route_by_method(rig):
    gw, _ = rig
    assert route_of(gw, "GET", "/m/x") == "m-read"
    assert route_of(gw, "POST", "/m/x", body=b"abc") == "m-read"
    assert route_of(gw, "DELETE", "/m/x") == "m-delete"


def test_method_not_allowed_lists_allowed(rig):
    gw, _ = rig
    r = gw.request("PUT", "/m/x", body=b"")
    assert_gateway_error(r, 405, "method_not_allowed")
    allow = {m.strip().upper() for m in r.header("Allow", "").split(",") if m.strip()}
    assert {"GET", "POST", "DELETE"} <= allow, r.header("Allow")
    assert "PUT" not in allow


@pytest.mark.parametrize("headers,route", [
    ([("X-Env", "canary")], "h-exact"),
    ([("X-Env", "Canary")], "h-any"),  # exact values are case-sensitive
    ([("X-Env", "prod")], "h-any"),
    ([("X-Debug", "")], "h-present"),
    ([("x-debug", "1")], "h-present"),  # names are case-insensitive
    ([("X-Ver", "v12")], "h-regex"),
    ([("X-Ver", "12v")], "h-any"),
    ([("X-Ver", "v1"), ("X-Env", "canary")], "h-exact"),  # config order among equals
    ([], "h-any"),
])
def test_header_matching(rig, headers, route):
    gw, _ = rig
    assert route_of(gw, "GET", "/h/x", headers=headers) == route


def test_echo_reports_the_request(rig):
    gw, _ = rig
    r = gw.request("POST", "/anything?x=1&y=2", [("X-Rep", "a"), ("X-Rep", "b"), ("X-One", "1")], b"12345",
                   host="api.example.com")
    assert r.status == 200
    assert r.header("Content-Type", "").startswith("application/json")
    j = r.json()
    assert j["method"] == "POST" and j["path"] == "/anything" and j["query"] == "x=1&y=2"
    assert j["http_version"] == "HTTP/1.1"
    assert j["headers"]["x-rep"] == "a, b"
    assert j["headers"]["x-one"] == "1"
    assert j["headers"]["host"] == "api.example.com"
    assert j["body_bytes"] == 5
    assert j["route"] == "exact-host"
    assert j["request_id"] == r.header("X-Request-Id")


@pytest.mark.parametrize("path,upstream_target", [
    ("/api/users/1?q=1", "/users/1?q=1"),
    ("/api/", "/"),
    ("/api", "/"),
])
def test_strip_prefix(rig, path, upstream_target):
    gw, up = rig
    r = gw.request("GET", path)
    assert r.status == 200, r
    assert r.json()["target"] == upstream_target


@pytest.mark.parametrize("path,upstream_target", [
    ("/old/a/b", "/new/a/b"),
    ("/old/a/b?z=9", "/new/a/b?z=9"),
])
def test_regex_rewrite(rig, path, upstream_target):
    gw, up = rig
    r = gw.request("GET", path)
    assert r.status == 200, r
    assert r.json()["target"] == upstream_target


def test_unchanged_path_is_forwarded_byte_for_byte(rig):
    gw, _ = rig
    target = "/proxy/a%20b/%2F/c;p=1?x=%41&y&z=a+b"
    r = gw.request("GET", target)
    assert r.status == 200, r
    assert r.json()["target"] == target


def test_echo_reports_http10(rig):
    gw, _ = rig
    with gw.conn() as c:
        c.request("GET", "/ping/v?a", version="HTTP/1.0", host=None)
        r = c.read_response()
        assert r.status == 200
        j = r.json()
        assert (j["http_version"], j["route"], j["query"]) == ("HTTP/1.0", "ping-prefix", "a")
        assert c.wait_closed(2)[0]
