"""W3C trace context and request ids: a valid `traceparent` is continued upstream with the same
trace-id and flags and a parent-id that is sluice's own span id (the access log's span_id);
anything invalid (uppercase, all-zero ids, another version, garbage) or absent starts a fresh
trace; `tracestate` passes unchanged. X-Request-Id is on every access log line, in every error
body, and the client gets exactly one."""
import re

import pytest

import backend as be
import harness

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
TRACEPARENT_RE = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


@pytest.fixture(scope="module")
def rig(menv):
    up = menv.backend(be.echo(headers=[("X-Request-Id", "upstream-own-id")]), name="up")
    dead = harness.free_port()  # nothing listens: connects are refused
    gw = menv.gateway(
        upstreams={"up": harness.upstream(up), "dead": harness.upstream(dead, retries={"attempts": 1})},
        routes=[{"name": "proxied", "match": {"path_prefix": "/p/"}, "upstream": "up"},
                {"name": "down", "match": {"path_prefix": "/down/"}, "upstream": "dead"},
                {"name": "local", "match": {"path_prefix": "/l/"}, "respond": {"status": 200, "body": "ok"}}])
    return gw, up


def proxied(rig, rid, headers):
    gw, up = rig
    r = gw.request("GET", f"/p/{rid}", [("X-Request-Id", rid), *headers])
    assert r.status == 200, r
    assert r.headers.get_all("X-Request-Id") == [rid], r.headers  # ours only, not the upstream's too
    got = up.wait_requests(1, lambda q: q.path == f"/p/{rid}")
    assert len(got) == 1
    req = got[0]
    tps = req.headers.get_all("traceparent")
    assert len(tps) == 1, req.headers
    m = TRACEPARENT_RE.match(tps[0])
    assert m, tps
    entry = gw.log_entry(rid)
    return req, m.group(1), m.group(2), m.group(3), entry


def test_valid_traceparent_is_continued_with_our_span(rig):
    state = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    for flags in ("01", "00"):
        rid = f"trace-valid-{flags}"
        req, trace, parent, fl, entry = proxied(
            rig, rid, [("traceparent", f"00-{TRACE}-{PARENT}-{flags}"), ("tracestate", state)])
        assert trace == TRACE and fl == flags
        assert parent != PARENT and parent != "0" * 16
        assert entry["trace_id"] == TRACE
        assert entry["span_id"] == parent
        assert req.headers.get_all("tracestate") == [state]


@pytest.mark.parametrize("value", [
    None,
    f"00-{TRACE.upper()}-{PARENT}-01",
    f"00-{TRACE}-{PARENT.upper()}-01",
    f"00-{'0' * 32}-{PARENT}-01",
    f"00-{TRACE}-{'0' * 16}-01",
    f"01-{TRACE}-{PARENT}-01",
    f"ff-{TRACE}-{PARENT}-01",
    f"00-{TRACE}-{PARENT}-01-extra",
    "garbage",
], ids=["absent", "upper-trace", "upper-parent", "zero-trace", "zero-parent", "version-01", "version-ff",
        "trailing", "garbage"])
def test_invalid_or_absent_traceparent_starts_a_trace(rig, value):
    rid = f"trace-new-{abs(hash(value)) % 10**12}"
    headers = [("traceparent", value)] if value is not None else []
    req, trace, parent, flags, entry = proxied(rig, rid, headers + [("tracestate", "a=b")])
    assert trace != TRACE and trace != "0" * 32
    assert parent != "0" * 16 and parent != PARENT
    assert flags == "01"
    assert entry["trace_id"] == trace and entry["span_id"] == parent
    assert req.headers.get_all("tracestate") == ["a=b"]


def test_every_request_gets_its_own_span(rig):
    spans, traces = set(), set()
    for i in range(20):
        _, trace, parent, _, _ = proxied(rig, f"trace-many-{i}", [("traceparent", f"00-{TRACE}-{PARENT}-01")])
        traces.add(trace)
        spans.add(parent)
    assert traces == {TRACE} and len(spans) == 20


def test_local_answer_logs_no_span_and_request_ids_everywhere(rig):
    gw, _ = rig
    r = gw.request("GET", "/l/x", [("X-Request-Id", "trace-local")])
    assert r.status == 200
    entry = gw.log_entry("trace-local")
    assert entry["trace_id"] == "" and entry["span_id"] == ""
    # a gateway error after a try: request id in the header, the body and the log line
    r = gw.request("GET", "/down/x", [("traceparent", f"00-{TRACE}-{PARENT}-01")])
    body = harness.assert_gateway_error(r, 502, "upstream_connect_failed")
    entry = gw.log_entry(body["request_id"])
    assert entry["cause"] == "upstream_connect_failed"
    assert entry["trace_id"] == TRACE and len(entry["span_id"]) == 16
    # a routing error and a parse error, before any route: generated ids, logged too
    r = gw.request("GET", "/nowhere")
    body = harness.assert_gateway_error(r, 404, "route_not_found")
    assert gw.log_entry(body["request_id"])["status"] == 404
    with gw.conn() as c:
        c.send(b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n")
        r = c.read_response()
    body = harness.assert_gateway_error(r, 400, "bad_request")
    assert gw.log_entry(body["request_id"])["status"] == 400
