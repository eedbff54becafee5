"""Every error cause the gateway makes today, its wire form (status, Sluice-Error, JSON body,
X-Request-Id), what happens to the connection, and the access log line (all fields)."""
import time

import pytest

import backend as be
import harness
from harness import REQUEST_ID_RE, assert_gateway_error, build_request, chunked_body, free_port

LOG_KEYS = {"time", "request_id", "client", "method", "path", "route", "upstream", "target", "status", "cause",
            "bytes_in", "bytes_out", "duration_ms", "upstream_connect_ms", "upstream_first_byte_ms"}


@pytest.fixture(scope="module")
def rig(menv):
    refused_port = free_port()  # nothing listens there
    bad = menv.backend(be.paths({
        "/bad/close-before-head": be.hangup(),
        "/bad/reset-before-head": be.hangup(reset=True),
        "/bad/close-mid-head": be.hangup(first=b"HTTP/1.1 200 OK\r\nContent-Le"),
        "/bad/garbage": be.garbage(b"THIS IS NOT HTTP AT ALL\r\n\r\n"),
        "/bad/bad-status": be.garbage(b"HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n"),
        "/bad/bad-header": be.garbage(b"HTTP/1.1 200 OK\r\nBad Header: x\r\nContent-Length: 0\r\n\r\n"),
        "/bad/bad-length": be.garbage(b"HTTP/1.1 200 OK\r\nContent-Length: 12abc\r\n\r\n"),
        "/bad/cut-length": be.partial_body(1000, 100, then="close"),
        "/bad/cut-chunked": be.partial_body(1000, 100, then="close", mode="chunked"),
        "/bad/reset-mid-body": be.partial_body(1000, 100, then="reset"),
    }), name="bad")
    rec = menv.backend(be.echo(), name="rec")
    fresh = menv.backend(be.fixed(200, b"fresh", close=True), name="fresh")  # a new connection each time
    gw = menv.gateway(
        limits={"max_body_bytes": "1kb", "max_uri_bytes": "1kb", "max_header_bytes": "4kb"},
        upstreams={"refused": harness.upstream(refused_port, timeouts={"connect": "1s"}),
                   "bad": harness.upstream(bad, timeouts={"read": "3s"}),
                   "rec": harness.upstream(rec), "fresh": harness.upstream(fresh)},
        routes=[
            {"name": "refused", "match": {"path_prefix": "/refused"}, "upstream": "refused"},
            {"name": "bad", "match": {"path_prefix": "/bad"}, "upstream": "bad"},
            {"name": "proxy", "match": {"path_prefix": "/proxy"}, "upstream": "rec"},
            {"name": "fresh", "match": {"path_prefix": "/fresh"}, "upstream": "fresh"},
            {"name": "local", "match": {"path_prefix": "/local"}, "respond": {"echo": True}},
            {"name": "only-get", "match": {"path_prefix": "/only-get", "methods": ["GET"]},
             "respond": {"echo": True}},
        ])
    return gw, rec, refused_port, fresh


def log_of(gw, body):
    return gw.log_entry(body["request_id"])


def test_route_not_found(rig):
    gw, _, _, _ = rig
    body = assert_gateway_error(gw.request("GET", "/nowhere"), 404, "route_not_found")
    e = log_of(gw, body)
    assert (e["status"], e["cause"], e["route"], e["upstream"], e["target"]) == (404, "route_not_found", "", "", "")


def test_method_not_allowed(rig):
    gw, _, _, _ = rig
    r = gw.request("POST", "/only-get", body=b"x")
    assert_gateway_error(r, 405, "method_not_allowed")
    allow = {m.strip().upper() for m in r.header("Allow", "").split(",")}
    assert "GET" in allow and "POST" not in allow, r.header("Allow")


def test_bad_request_closes_connection(rig):
    gw, _, _, _ = rig
    with gw.conn() as c:
        c.send(b"GET /local HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n")
        body = assert_gateway_error(c.read_response(), 400, "bad_request")
        assert c.wait_closed(2)[0]
    assert log_of(gw, body)["cause"] == "bad_request"


def test_uri_too_long_closes_connection(rig):
    gw, _, _, _ = rig
    with gw.conn() as c:
        c.send(build_request("GET", "/local/" + "a" * 2000))
        assert_gateway_error(c.read_response(), 414, "uri_too_long")
        assert c.wait_closed(2)[0]


def test_uri_just_under_the_limit_is_fine(rig):
    gw, _, _, _ = rig
    r = gw.request("GET", "/local/" + "a" * 900)
    assert r.status == 200 and r.json()["path"] == "/local/" + "a" * 900


@pytest.mark.parametrize("shape", ["one-big-header", "many-headers"])
def test_header_too_large_closes_connection(rig, shape):
    gw, _, _, _ = rig
    headers = [("X-Big", "a" * 5000)] if shape == "one-big-header" else [(f"X-H{i}", "b" * 90) for i in range(60)]
    with gw.conn() as c:
        c.send(build_request("GET", "/local", headers))
        assert_gateway_error(c.read_response(), 431, "header_too_large")
        assert c.wait_closed(2)[0]


def test_body_at_the_limit_is_accepted(rig):
    gw, _, _, _ = rig
    r = gw.request("POST", "/local", body=b"x" * 1024)
    assert r.status == 200 and r.json()["body_bytes"] == 1024
    r = gw.request("POST", "/local", [("Transfer-Encoding", "chunked")], chunked_body([b"y" * 512, b"y" * 512]))
    assert r.status == 200 and r.json()["body_bytes"] == 1024


@pytest.mark.parametrize("route", ["/local", "/proxy"])
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_request_too_large(rig, route, framing):
    gw, rec, _, _ = rig
    marker = f"big-{route[1:]}-{framing}"
    if framing == "content-length":
        data = build_request("POST", route, [("X-Test", marker)], b"x" * 1025)
    else:
        data = build_request("POST", route, [("X-Test", marker), ("Transfer-Encoding", "chunked")],
                             chunked_body([b"x" * 600, b"x" * 600]))
    with gw.conn() as c:
        try:
            c.send(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert_gateway_error(c.read_response(), 413, "request_too_large")
    time.sleep(0.2)
    got = rec.find(lambda r: r.header("X-Test") == marker)
    if framing == "content-length":
        assert got == [], "a body known to be too large was forwarded"
    assert not [r for r in got if r.body_complete], "the upstream received the whole oversized body"


def test_upstream_connect_refused(rig):
    gw, _, port, _ = rig
    r = gw.request("GET", "/refused/x")
    body = assert_gateway_error(r, 502, "upstream_connect_failed")
    assert str(port) not in r.body.decode("latin-1"), "the error body leaks the upstream address"
    e = log_of(gw, body)
    assert (e["status"], e["cause"], e["upstream"], e["route"]) == (502, "upstream_connect_failed", "refused",
                                                                     "refused")
    assert e["target"] == f"127.0.0.1:{port}"


@pytest.mark.parametrize("what", ["close-before-head", "reset-before-head", "close-mid-head"])
def test_upstream_reset(rig, what):
    gw, _, _, _ = rig
    body = assert_gateway_error(gw.request("GET", f"/bad/{what}"), 502, "upstream_reset")
    e = log_of(gw, body)
    assert (e["cause"], e["upstream"]) == ("upstream_reset", "bad")


@pytest.mark.parametrize("what", ["garbage", "bad-status", "bad-header", "bad-length"])
def test_upstream_bad_response(rig, what):
    gw, _, _, _ = rig
    r = gw.request("GET", f"/bad/{what}")
    body = assert_gateway_error(r, 502, "upstream_bad_response")
    assert b"NOT HTTP" not in r.body
    assert log_of(gw, body)["cause"] == "upstream_bad_response"


@pytest.mark.parametrize("what", ["cut-length", "cut-chunked", "reset-mid-body"])
def test_upstream_dying_mid_body_cuts_the_client_response(rig, what):
    """The head went out already: the client must see an incomplete body and a closed connection,
    never a well-framed truncated body."""
    gw, _, _, _ = rig
    with gw.conn() as c:
        c.request("GET", f"/bad/{what}")
        with pytest.raises(harness.IncompleteBody) as ei:
            c.read_response(timeout=5)
    r = ei.value.response
    assert r.status == 200 and r.body_len <= 100
    rid = r.header("X-Request-Id")
    e = gw.log_entry(rid)
    assert e["status"] == 200 and e["upstream"] == "bad"


def test_access_log_line_for_a_proxied_request(rig):
    gw, _, _, fresh = rig
    r = gw.request("POST", "/fresh/p?q=1", body=b"0123456789")
    assert r.status == 200 and r.body == b"fresh"
    e = gw.log_entry(r.header("X-Request-Id"))
    assert LOG_KEYS <= set(e), f"missing {LOG_KEYS - set(e)}"
    assert isinstance(e["time"], str) and e["time"]
    assert e["client"].startswith("127.0.0.1")
    assert (e["method"], e["path"], e["route"], e["upstream"]) == ("POST", "/fresh/p", "fresh", "fresh")
    assert e["target"] == fresh.address
    assert (e["status"], e["cause"]) == (200, "")
    assert isinstance(e["bytes_in"], int) and e["bytes_in"] >= 10
    assert isinstance(e["bytes_out"], int) and e["bytes_out"] >= len(r.body)
    for k in ("duration_ms", "upstream_connect_ms", "upstream_first_byte_ms"):
        assert isinstance(e[k], (int, float)) and not isinstance(e[k], bool) and e[k] >= 0, (k, e[k])
    # The upstream closes after each response, so this request made a connect of its own.
    assert e["upstream_connect_ms"] <= e["upstream_first_byte_ms"] <= e["duration_ms"], e


def test_access_log_line_for_a_pooled_request(rig):
    gw, rec, _, _ = rig
    with gw.conn() as c:
        assert c.roundtrip("GET", "/proxy/pooled").status == 200
        before = rec.connection_count
        r = c.roundtrip("GET", "/proxy/pooled")
        assert r.status == 200
    reused = rec.connection_count == before
    e = gw.log_entry(r.header("X-Request-Id"))
    assert (e["upstream"], e["target"], e["status"]) == ("rec", rec.address, 200)
    if reused:  # no connect was made: -1 by the exchange's contract (src/http/exchange.h)
        assert e["upstream_connect_ms"] == -1, e
    assert 0 <= e["upstream_first_byte_ms"] <= e["duration_ms"]


def test_access_log_line_for_a_local_response(rig):
    gw, _, _, _ = rig
    r = gw.request("GET", "/local/l")
    e = gw.log_entry(r.header("X-Request-Id"))
    assert LOG_KEYS <= set(e)
    assert (e["route"], e["upstream"], e["target"], e["status"], e["cause"]) == ("local", "", "", 200, "")


def test_every_response_has_a_request_id_and_one_log_line(rig):
    gw, _, _, _ = rig
    ids = []
    for method, path in [("GET", "/local"), ("GET", "/nowhere"), ("GET", "/proxy/a"), ("POST", "/only-get")]:
        r = gw.request(method, path, body=b"" if method == "POST" else None)
        rid = r.header("X-Request-Id")
        assert rid and REQUEST_ID_RE.match(rid), (path, r.headers)
        ids.append(rid)
    assert len(set(ids)) == len(ids)
    for rid in ids:
        gw.log_entry(rid)  # exactly one line each


def test_gateway_survives_all_of_the_above(rig):
    gw, _, _, _ = rig
    assert gw.alive()
    assert gw.admin_get("/health")[0] == 200
    assert gw.request("GET", "/local").status == 200
