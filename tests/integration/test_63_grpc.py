"""gRPC through the gateway (issue 8; docs/grpc.md): a grpc client (Debian's python3-grpcio) ->
sluice's h2c (or TLS) listener -> a `protocol: h2` upstream -> the echo.Echo server of grpc_echo.py
(raw bytes, no protobuf). Unary, server-streaming, client-streaming and bidi calls with metadata
both ways, compressed messages, a server ending a call while the client still streams; the
server's status, message and trailing metadata preserved; the gateway's own errors on gRPC
requests as trailers-only responses (grpc-status per cause, percent-encoded grpc-message,
sluice-error) while other requests keep the JSON bodies; grpc-timeout (its units, a malformed
value ignored) as the exchange's deadline, checked with a raw HTTP/2 client that has no deadline
of its own, and the upstream stream cancelled; an upstream that is down, killed mid-stream,
answering HTTP/1.1, or going away with GOAWAY (stop with grace, max connection age); a client
cancelling its call cancels the upstream call; a drain finishes the call in flight; the circuit
breaker; 50 concurrent calls over at most 2 upstream connections; a TLS upstream; 2,000 calls from
8 threads without a failure."""
import hashlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import pytest

import harness

grpc = pytest.importorskip("grpc")
pytest.importorskip("h2")
import h2.errors  # noqa: E402

import grpc_echo as ge  # noqa: E402
import h2backend as hb  # noqa: E402
from h2backend import H2TrailerClient  # noqa: E402
from h2client import hdr  # noqa: E402
from test_67_upstream_tls import certs  # noqa: E402,F401  (a fixture)

HERE = Path(__file__).resolve().parent
API_KEY = "grpc-test-key"
SC = grpc.StatusCode


def echo_server(env, **kw):
    srv = ge.EchoServer(**kw)
    env.backends.append(srv)  # stopped at teardown (close() = stop(0))
    return srv


def grpc_upstream(port, **opts):
    return {"targets": [{"address": f"127.0.0.1:{port}"}], "protocol": "h2", **opts}


def main_route(up="grpc"):
    return {"name": "echo", "match": {"path_prefix": "/echo.Echo/"}, "upstream": up}


def variant(name, **kw):
    """A route on the same gRPC paths chosen by the request metadata x-route: NAME."""
    return {"name": name, "match": {"path_prefix": "/echo.Echo/", "headers": [{"name": "x-route", "value": name}]},
            "upstream": "grpc", **kw}


@pytest.fixture(scope="module")
def rig(menv):
    """One echo server and one gateway for the module; the route variants exercise the
    gateway's errors on the same gRPC paths."""
    srv = ge.EchoServer()
    menv.backends.append(srv)
    down = harness.free_port()
    routes = [
        variant("auth", auth=["api_key"]),
        variant("deny", ip_rules={"deny": ["127.0.0.0/8"]}),
        variant("limited", rate_limit=[{"key": "ip", "rate": "1/m", "burst": 1}]),
        variant("short", timeout="500ms"),
        variant("quota", quota={"key": "ip", "limit": "1/day"}),
        {"name": "getonly", "match": {"path_prefix": "/get.Only/", "methods": ["GET"]}, "upstream": "grpc"},
        {"name": "down", "match": {"path_prefix": "/down.Echo/"}, "upstream": "down"},
        main_route(),
    ]
    consumers = {"app": {"api_keys": [{"sha256": hashlib.sha256(API_KEY.encode()).hexdigest()}]}}
    gw = menv.gateway(routes=routes, upstreams={"grpc": grpc_upstream(srv.port), "down": grpc_upstream(down)},
                      consumers=consumers, limits={"max_body_bytes": "1mb"}, timeouts={"client_body": "1s"})
    return gw, srv


@pytest.fixture
def stub(rig):
    gw, _ = rig
    s = ge.Stub(ge.channel(gw.port))
    yield s
    s.close()


def raw_grpc(port, path, msg=b"", headers=(), grpc_ct=True, timeout=5.0):
    """One call by hand over a fresh HTTP/2 connection (no deadline of its own beyond `timeout`
    for the whole exchange); returns (stream dict, seconds taken)."""
    hs = [("content-type", "application/grpc"), ("te", "trailers")] if grpc_ct else \
        [("content-type", "application/octet-stream")]
    with H2TrailerClient(port, timeout=timeout) as c:
        t0 = time.monotonic()
        st = c.request("POST", path, headers=[*hs, *headers], body=ge.frame(msg))
        return st, time.monotonic() - t0


PCT_ENCODED = re.compile(r"(?:[\x20-\x24\x26-\x7e]|%[0-9A-F]{2})*")


def assert_trailers_only(st, code, cause):
    """A gateway error on a gRPC request: one HEADERS frame ending the stream with :status 200,
    content-type application/grpc, grpc-status, grpc-message `<cause>: <sentence>` (gRPC
    percent-encoding) and sluice-error; no body, no separate trailers. Returns the sentence."""
    # (a RST_STREAM NO_ERROR after the answer only stops an upload the gateway no longer reads)
    assert st["ended"] and st["reset"] in (None, 0), st
    assert st["status"] == 200, st
    assert bytes(st["body"]) == b"" and not st.get("trailers"), st
    assert hdr(st, "content-type") == "application/grpc", st["headers"]
    assert hdr(st, "grpc-status") == str(code), st["headers"]
    assert hdr(st, "sluice-error") == cause, st["headers"]
    raw = hdr(st, "grpc-message")
    assert raw is not None and PCT_ENCODED.fullmatch(raw), f"grpc-message not percent-encoded: {raw!r}"
    msg = urllib.parse.unquote(raw)
    assert msg.startswith(f"{cause}: ") and len(msg) > len(cause) + 3, msg
    return msg[len(cause) + 2:]


# ---- the four kinds of call ----------------------------------------------------------------------------


def test_unary_with_metadata_both_ways(rig, stub):
    """A unary call: the bytes come back; request metadata x-* (also a binary -bin one) is seen
    by the server and echoed as initial metadata; trailing metadata reaches the client; a
    512 KiB message crosses intact; the server saw the gateway's x-forwarded-for."""
    gw, srv = rig
    md = [("x-a", "one"), ("x-data-bin", b"\x00\x01\xfe\xff"), ("x-trailer", "tail-1"), ("x-mark", "unary-md")]
    resp, call = stub.Unary.with_call(b"hello grpc", metadata=md, timeout=10)
    assert resp == b"hello grpc"
    assert call.code() == SC.OK
    init = dict(call.initial_metadata())
    assert init.get("x-a") == "one" and init.get("x-data-bin") == b"\x00\x01\xfe\xff", init
    assert dict(call.trailing_metadata()).get("x-trailer") == "tail-1"
    big = os.urandom(512 * 1024)
    assert stub.Unary(big, timeout=10) == big
    rec = [c for c in srv.find("Unary") if dict(c.metadata).get("x-mark") == "unary-md"]
    assert len(rec) == 1
    seen = dict(rec[0].metadata)
    assert seen.get("x-forwarded-for") == "127.0.0.1", rec[0].metadata
    assert seen.get("x-request-id"), rec[0].metadata


def test_compressed_messages_pass_through(rig):
    """gzip-compressed messages (grpc-encoding) pass through the gateway untouched both ways."""
    gw, _ = rig
    with ge.Stub(ge.channel(gw.port, options=[("grpc.default_compression_algorithm", 2)])) as s:
        msg = b"compress me " * 5000
        assert s.Unary(msg, timeout=10, compression=grpc.Compression.Gzip) == msg
        assert list(s.Bidi(iter([msg, msg[:100]]), timeout=10, compression=grpc.Compression.Gzip)) == [msg, msg[:100]]


def test_server_streaming(stub):
    """A server-streaming call: 200 messages, in order, then OK."""
    call = stub.ServerStream(b"200", timeout=10)
    assert list(call) == [b"msg-%d" % i for i in range(200)]
    assert call.code() == SC.OK


def test_client_streaming(stub):
    """A client-streaming call: 100 messages of different sizes; the server counts all bytes."""
    msgs = [os.urandom(i * 97 % 5000) for i in range(100)]
    assert stub.ClientStream(iter(msgs), timeout=10) == str(sum(map(len, msgs))).encode()


def test_server_ends_the_call_while_the_client_still_streams(stub):
    """The server aborts a client-streaming call at its first message while the client goes on
    sending for 3 s: the client gets FAILED_PRECONDITION "aborted early" at once, not when it
    stops sending."""
    def requests():
        yield b"abort"
        for _ in range(150):
            time.sleep(0.02)
            yield b"more"

    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as ei:
        stub.ClientStream(requests(), timeout=20)
    assert ei.value.code() == SC.FAILED_PRECONDITION and ei.value.details() == "aborted early", ei.value
    assert time.monotonic() - t0 < harness.slack(1.5)


def test_bidi_ping_pong(stub):
    """A bidi call played as ping-pong: each message is sent only after the answer to the previous
    one came back, so nothing may be held back in either direction by the gateway."""
    q = queue.Queue()

    def requests():
        while True:
            m = q.get()
            if m is None:
                return
            yield m

    call = stub.Bidi(requests(), timeout=20)
    for i in range(20):
        msg = b"ping-%d-" % i + os.urandom(i * 50)
        q.put(msg)
        assert next(call) == msg
    q.put(None)
    assert list(call) == []
    assert call.code() == SC.OK


def test_server_error_status_message_and_trailers_preserved(stub, rig):
    """The server aborts INVALID_ARGUMENT "bad thing" with trailing metadata x-why: because: the
    client sees exactly that through the gateway (grpc client and raw wire)."""
    with pytest.raises(grpc.RpcError) as ei:
        stub.Fail(b"x", timeout=10)
    e = ei.value
    assert e.code() == SC.INVALID_ARGUMENT and e.details() == "bad thing"
    assert ("x-why", "because") in [(m.key, m.value) for m in e.trailing_metadata()]
    gw, _ = rig
    st, _ = raw_grpc(gw.port, "/echo.Echo/Fail")
    fields = dict(st["headers"]) | dict(st.get("trailers") or [])
    assert st["status"] == 200 and fields.get("grpc-status") == "3", st
    assert urllib.parse.unquote(fields.get("grpc-message", "")) == "bad thing"
    assert fields.get("x-why") == "because" and "sluice-error" not in fields


# ---- the gateway's errors --------------------------------------------------------------------------------


ERRORS = [
    # (id, path, extra headers, body, grpc code, cause)
    ("route_not_found", "/nope.Svc/Call", [], b"", 12, "route_not_found"),
    ("method_not_allowed", "/get.Only/Call", [], b"", 12, "method_not_allowed"),
    ("auth_missing", "/echo.Echo/Unary", [("x-route", "auth")], b"", 16, "auth_missing"),
    ("auth_invalid", "/echo.Echo/Unary", [("x-route", "auth"), ("x-api-key", "wrong")], b"", 16, "auth_invalid"),
    ("forbidden", "/echo.Echo/Unary", [("x-route", "deny")], b"", 7, "forbidden"),
    ("request_too_large", "/echo.Echo/Unary", [], b"z" * (1024 * 1024 + 10), 8, "request_too_large"),
    ("header_too_large", "/echo.Echo/Unary", [("x-big", "v" * 20000)], b"", 8, "header_too_large"),
    ("uri_too_long", "/echo.Echo/Unary?" + "q" * 9000, [], b"", 8, "uri_too_long"),
    ("upstream_connect_failed", "/down.Echo/Unary", [], b"", 14, "upstream_connect_failed"),
]


@pytest.mark.parametrize("path,headers,body,code,cause", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_gateway_error_is_trailers_only(rig, path, headers, body, code, cause):
    """Each cause on a gRPC request: a trailers-only answer with its grpc-status; the same request
    without the gRPC content type gets the JSON error body (same cause, same sentence); the
    access log has the cause."""
    gw, _ = rig
    st, _ = raw_grpc(gw.port, path, body, headers)
    sentence = assert_trailers_only(st, code, cause)
    rid = hdr(st, "x-request-id")
    assert rid, st["headers"]
    assert gw.log_entry(rid)["cause"] == cause
    if cause == "request_too_large":
        return  # the JSON form is test_68's; the limit is the same
    js, _ = raw_grpc(gw.port, path, body, headers, grpc_ct=False)
    assert js["status"] != 200 and hdr(js, "sluice-error") == cause, js
    assert hdr(js, "content-type").startswith("application/json") and hdr(js, "grpc-status") is None
    assert json.loads(bytes(js["body"]))["message"] == sentence


def test_quota_exceeded_and_stalled_upload(rig):
    """A 1/day quota: the first call passes, the second is RESOURCE_EXHAUSTED (quota_exceeded);
    a call whose request stream stalls past timeouts.client_body: DEADLINE_EXCEEDED
    (client_timeout) as a trailers-only answer, and the connection goes on."""
    gw, _ = rig
    st, _ = raw_grpc(gw.port, "/echo.Echo/Unary", b"q1", [("x-route", "quota")])
    assert st["status"] == 200 and ge.unframe(st["body"]) == [b"q1"], st
    st, _ = raw_grpc(gw.port, "/echo.Echo/Unary", b"q2", [("x-route", "quota")])
    assert_trailers_only(st, 8, "quota_exceeded")
    with H2TrailerClient(gw.port, timeout=10) as c:
        sid = c.start("POST", "/echo.Echo/ClientStream", headers=[("content-type", "application/grpc"),
                                                                  ("te", "trailers")],
                      body=ge.frame(b"first"), end=False)
        t0 = time.monotonic()
        (st,) = c.wait([sid], timeout=10)
        assert 0.8 < time.monotonic() - t0 < harness.slack(4)
        if st["status"] is None or bytes(st["body"]):
            pytest.fail(f"no trailers-only answer: {st}")
        assert_trailers_only(st, 4, "client_timeout")
        st = c.request("POST", "/echo.Echo/Unary", headers=[("content-type", "application/grpc"), ("te", "trailers")],
                       body=ge.frame(b"after"))
        assert ge.unframe(st["body"]) == [b"after"]


def test_rate_limited_and_codes_seen_by_a_grpc_client(rig, stub):
    """A grpc client sees the gateway's errors as statuses with the `cause: sentence` details:
    UNIMPLEMENTED, UNAUTHENTICATED, PERMISSION_DENIED, UNAVAILABLE, and RESOURCE_EXHAUSTED once a
    1/min rate limit is spent (the first call passes); a valid API key passes the auth route."""
    gw, _ = rig
    nope = stub.channel.unary_unary("/nope.Svc/Call")
    cases = [(lambda: nope(b"", timeout=10), SC.UNIMPLEMENTED, "route_not_found"),
             (lambda: stub.Unary(b"", metadata=[("x-route", "auth")], timeout=10), SC.UNAUTHENTICATED, "auth_missing"),
             (lambda: stub.Unary(b"", metadata=[("x-route", "deny")], timeout=10), SC.PERMISSION_DENIED, "forbidden"),
             (lambda: stub.channel.unary_unary("/down.Echo/Unary")(b"", timeout=10), SC.UNAVAILABLE,
              "upstream_connect_failed")]
    for fn, code, cause in cases:
        with pytest.raises(grpc.RpcError) as ei:
            fn()
        assert ei.value.code() == code, (cause, ei.value)
        assert ei.value.details().startswith(f"{cause}: "), ei.value.details()
    assert stub.Unary(b"key ok", metadata=[("x-route", "auth"), ("x-api-key", API_KEY)], timeout=10) == b"key ok"
    assert stub.Unary(b"first", metadata=[("x-route", "limited")], timeout=10) == b"first"
    with pytest.raises(grpc.RpcError) as ei:
        stub.Unary(b"second", metadata=[("x-route", "limited")], timeout=10)
    assert ei.value.code() == SC.RESOURCE_EXHAUSTED and ei.value.details().startswith("rate_limited: ")


# ---- deadlines -------------------------------------------------------------------------------------------


def test_grpc_timeout_is_the_gateways_deadline(env):
    """grpc-timeout: 300m from a raw client with no deadline of its own, to an upstream that
    ignores grpc-timeout and takes 5 s (an h2backend playing a gRPC server): the gateway itself
    answers DEADLINE_EXCEEDED (trailers-only, 4, upstream_timeout) at about 0.3 s, the access
    log says upstream_timeout, and the upstream stream is reset (not left running)."""
    b, seen = _sleeper_backend(env, 5)
    gw = env.gateway(routes=[main_route()], upstreams={"grpc": grpc_upstream(b.port)})
    st, took = raw_grpc(gw.port, "/echo.Echo/Slow", headers=[("grpc-timeout", "300m")], timeout=10)
    assert_trailers_only(st, 4, "upstream_timeout")
    assert 0.25 <= took < harness.slack(2.0), took
    assert gw.log_entry(hdr(st, "x-request-id"))["cause"] == "upstream_timeout"
    assert len(seen) == 1
    assert seen[0].cancelled.wait(harness.slack(3)), "the upstream stream was not reset after the deadline"


def _sleeper_backend(env, seconds):
    """An h2backend playing a gRPC server that ignores grpc-timeout: answers b"late" (status 0)
    after `seconds`, unless its stream is reset first. Returns (backend, exchanges seen)."""
    seen = []

    def sleeper(ex):
        seen.append(ex)
        ex.read_body()
        ex.cancelled.wait(seconds)
        if not ex.cancelled.is_set():
            ex.send_headers(200, [("content-type", "application/grpc")])
            ex.send_data(ge.frame(b"late"))
            ex.send_trailers([("grpc-status", "0")])

    b = hb.H2Backend(sleeper, name="grpc-sleeper")
    env.backends.append(b)
    return b, seen


@pytest.mark.parametrize("value,expect", [("300000u", 0.3), ("90000000n", 0.09), ("1S", 1.0), ("1M", None),
                                          ("123456789m", None), ("10x", None), ("", None)])
def test_grpc_timeout_units(env, value, expect):
    """grpc-timeout's units (n, u, m, S, M, H; at most 8 digits): a valid value shorter than the
    1.5 s the upstream takes ends the call at that time with DEADLINE_EXCEEDED; a longer one, or
    a malformed one (ignored), lets the call complete."""
    b, seen = _sleeper_backend(env, 1.5)
    gw = env.gateway(routes=[main_route()], upstreams={"grpc": grpc_upstream(b.port)})
    st, took = raw_grpc(gw.port, "/echo.Echo/Slow", headers=[("grpc-timeout", value)], timeout=10)
    if expect is not None:
        assert_trailers_only(st, 4, "upstream_timeout")
        assert expect - 0.05 <= took < expect + harness.slack(1.0), took
    else:
        assert st["status"] == 200 and ge.unframe(st["body"]) == [b"late"], st
        assert dict(st["trailers"]).get("grpc-status") == "0", st
        assert took >= 1.4


def test_grpc_timeout_with_a_grpc_server(rig):
    """grpc-timeout: 300m to the real server's 5 s call: DEADLINE_EXCEEDED (4) at about 0.3 s,
    from the gateway or from the server (which also reads grpc-timeout; they race), and the
    server's call is over."""
    gw, srv = rig
    st, took = raw_grpc(gw.port, "/echo.Echo/Slow", headers=[("grpc-timeout", "300m"), ("x-sleep", "5"),
                                                             ("x-mark", "deadline-raw")], timeout=10)
    fields = dict(st["headers"]) | dict(st.get("trailers") or [])
    assert st["status"] == 200 and fields.get("grpc-status") == "4", st
    assert 0.25 <= took < harness.slack(2.0), took
    rec = [c for c in srv.find("Slow") if dict(c.metadata).get("x-mark") == "deadline-raw"]
    assert len(rec) == 1
    assert rec[0].ended.wait(harness.slack(3)), "the upstream call went on after the deadline"


def test_route_timeout_wins_when_shorter(rig):
    """grpc-timeout 10S on a route with `timeout: 500ms`: the route's deadline applies."""
    gw, _ = rig
    st, took = raw_grpc(gw.port, "/echo.Echo/Slow", headers=[("grpc-timeout", "10S"), ("x-sleep", "5"),
                                                             ("x-route", "short")], timeout=10)
    assert_trailers_only(st, 4, "upstream_timeout")
    assert 0.4 <= took < harness.slack(2.5), took


def test_grpc_client_deadline(stub):
    """A grpc client's timeout=0.3 on a 5 s call: DEADLINE_EXCEEDED well under 5 s."""
    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as ei:
        stub.Slow(b"", metadata=[("x-sleep", "5")], timeout=0.3)
    assert ei.value.code() == SC.DEADLINE_EXCEEDED
    assert time.monotonic() - t0 < harness.slack(2.0)


def test_client_reset_cancels_the_upstream_call(rig):
    """A client that resets its stream (RST_STREAM CANCEL) mid-call: the server's call is
    cancelled (its context goes inactive) and the access log says 499."""
    gw, srv = rig
    with H2TrailerClient(gw.port) as c:
        sid = c.start("POST", "/echo.Echo/Slow", headers=[("content-type", "application/grpc"), ("te", "trailers"),
                                                           ("x-sleep", "8"), ("x-mark", "reset-me")],
                      body=ge.frame(b""))
        recs = harness.poll_value(lambda: [r for r in srv.find("Slow") if dict(r.metadata).get("x-mark") == "reset-me"])
        assert recs, "the call did not reach the server"
        c.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        c.flush()
        assert recs[0].cancelled.wait(harness.slack(3)), "the upstream call was not cancelled"
        assert recs[0].ended.wait(harness.slack(3))
    lines = harness.poll_value(lambda: [e for e in gw.access_log() if e.get("path") == "/echo.Echo/Slow"
                                        and e.get("status") == 499], 3)
    assert lines, [e for e in gw.access_log() if e.get("path") == "/echo.Echo/Slow"]


# ---- connections ----------------------------------------------------------------------------------------


def test_50_concurrent_calls_share_the_upstream_connection(env):
    """50 concurrent calls from 5 client connections, one worker: they run at once (the server
    sleeps 0.3 s in each) over at most 2 upstream TCP connections (distinct peers the server saw)."""
    srv = echo_server(env)
    gw = env.gateway(routes=[main_route()], upstreams={"grpc": grpc_upstream(srv.port)}, workers=1)
    stubs = [ge.Stub(ge.channel(gw.port)) for _ in range(5)]
    try:
        t0 = time.monotonic()
        futs = [stubs[i % 5].Slow.future(b"", metadata=[("x-sleep", "0.3")], timeout=20) for i in range(50)]
        assert [f.result() for f in futs] == [b"slept"] * 50
        took = time.monotonic() - t0
    finally:
        for s in stubs:
            s.close()
    assert len(srv.find("Slow")) == 50
    assert len(srv.peers()) <= 2, srv.peers()
    assert took < harness.slack(50 * 0.3 / 3), took


def test_upstream_down_is_unavailable(env):
    """No server at the upstream's address: UNAVAILABLE with `upstream_connect_failed: ...`."""
    port = harness.free_port()
    gw = env.gateway(routes=[main_route()], upstreams={"grpc": grpc_upstream(port)})
    with ge.Stub(ge.channel(gw.port)) as s:
        with pytest.raises(grpc.RpcError) as ei:
            s.Unary(b"x", timeout=10)
    assert ei.value.code() == SC.UNAVAILABLE and ei.value.details().startswith("upstream_connect_failed: ")
    st, _ = raw_grpc(gw.port, "/echo.Echo/Unary")
    assert_trailers_only(st, 14, "upstream_connect_failed")


def _spawn_server(port, *extra):
    p = subprocess.Popen([sys.executable, str(HERE / "grpc_echo.py"), "--port", str(port), *extra],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(HERE),
                         start_new_session=True)
    line = p.stdout.readline()
    assert line.strip() == "ready", (line, p.stderr.read() if p.poll() is not None else "")
    return p


@pytest.mark.deadline(60)
def test_upstream_killed_mid_stream_then_back(env):
    """The server process is SIGKILLed while a server-streaming call is sending: the client's call
    fails within a few seconds (not at its own 20 s deadline), the gateway lives, and once the
    server is back calls succeed again (over a new connection)."""
    port = harness.free_port()
    proc = _spawn_server(port)
    try:
        gw = env.gateway(routes=[main_route()], upstreams={"grpc": grpc_upstream(port)})
        with ge.Stub(ge.channel(gw.port)) as s:
            assert s.Unary(b"before", timeout=10) == b"before"
            call = s.ServerStream(b"1000", metadata=[("x-interval", "0.05")], timeout=20)
            assert [next(call) for _ in range(3)] == [b"msg-0", b"msg-1", b"msg-2"]
            proc.kill()
            proc.wait(10)
            t0 = time.monotonic()
            with pytest.raises(grpc.RpcError) as ei:
                for _ in call:
                    pass
            assert time.monotonic() - t0 < harness.slack(5), "the call hung after the server died"
            assert ei.value.code() not in (SC.OK, SC.DEADLINE_EXCEEDED), ei.value
            assert gw.alive()
            with pytest.raises(grpc.RpcError) as ei:
                s.Unary(b"while down", timeout=10)
            assert ei.value.code() == SC.UNAVAILABLE
            proc = _spawn_server(port)

            def ok():
                try:
                    return s.Unary(b"after", timeout=5) == b"after"
                except grpc.RpcError:
                    return False

            assert harness.poll_value(ok, 8, 0.2), "calls did not succeed after the server came back"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_http1_answer_on_h2c_is_a_gateway_error(env):
    """An upstream answering the h2c preface with "HTTP/1.1 200 OK ...": a gateway error
    (INTERNAL upstream_bad_response or UNAVAILABLE upstream_reset), quickly, never a hang."""
    liar = hb.Http1Liar()
    env.backends.append(liar)
    gw = env.gateway(routes=[main_route()], upstreams={"grpc": grpc_upstream(liar.port)})
    st, took = raw_grpc(gw.port, "/echo.Echo/Unary", timeout=10)
    cause = hdr(st, "sluice-error")
    assert cause in ("upstream_bad_response", "upstream_reset"), st
    assert_trailers_only(st, 13 if cause == "upstream_bad_response" else 14, cause)
    assert took < harness.slack(3)
    with ge.Stub(ge.channel(gw.port)) as s:
        with pytest.raises(grpc.RpcError) as ei:
            s.Unary(b"x", timeout=10)
    assert ei.value.code() in (SC.INTERNAL, SC.UNAVAILABLE), ei.value
    assert gw.alive()


def test_goaway_on_server_stop_lets_the_call_finish(env):
    """The server stops with a grace period (GOAWAY) while a 1.5 s call is open: that call
    completes OK; after a restart on the same port, new calls succeed over a new connection."""
    srv = echo_server(env)
    gw = env.gateway(routes=[main_route()], upstreams={"grpc": grpc_upstream(srv.port)}, workers=1)
    with ge.Stub(ge.channel(gw.port)) as s:
        assert s.Unary(b"warm", timeout=10) == b"warm"
        fut = s.Slow.future(b"", metadata=[("x-sleep", "1.5")], timeout=15)
        assert srv.wait_calls("Slow", 1, harness.slack(5))
        stopped = srv.server.stop(10)
        assert fut.result() == b"slept"
        assert stopped.wait(harness.slack(10))
        first_peer = srv.find("Slow")[0].peer
        srv.start()

        def ok():
            try:
                return s.Unary(b"again", timeout=5) == b"again"
            except grpc.RpcError:
                return False

        assert harness.poll_value(ok, 8, 0.2)
        assert srv.find("Unary")[-1].peer != first_peer


@pytest.mark.deadline(60)
def test_goaway_on_max_connection_age_moves_new_calls(env):
    """A server that sends GOAWAY when a connection is 0.6 s old (with a long grace): a call
    open across it completes OK, calls keep succeeding throughout, over more than one
    connection."""
    srv = echo_server(env, options=[("grpc.max_connection_age_ms", 600), ("grpc.max_connection_age_grace_ms", 20000)])
    gw = env.gateway(routes=[main_route()], upstreams={"grpc": grpc_upstream(srv.port)}, workers=1)
    with ge.Stub(ge.channel(gw.port)) as s:
        slow = s.Slow.future(b"", metadata=[("x-sleep", "2")], timeout=20)
        failures, n = [], 0
        end = time.monotonic() + 2.5
        while time.monotonic() < end:
            try:
                assert s.Unary(b"%d" % n, timeout=5) == b"%d" % n
            except grpc.RpcError as e:
                failures.append((n, e.code(), e.details()))
            n += 1
            time.sleep(0.05)
        assert slow.result() == b"slept"
    assert failures == [], failures
    assert len(srv.peers("Unary")) >= 2, srv.peers()


def test_drain_finishes_the_call_in_flight(env):
    """SIGTERM while a 1 s call is in flight on the h2 upstream: the call completes OK and the
    gateway exits 0."""
    srv = echo_server(env)
    gw = env.gateway(routes=[main_route()], upstreams={"grpc": grpc_upstream(srv.port)}, timeouts={"drain": "10s"})
    with ge.Stub(ge.channel(gw.port)) as s:
        fut = s.Slow.future(b"", metadata=[("x-sleep", "1")], timeout=15)
        assert srv.wait_calls("Slow", 1, harness.slack(5))
        gw.send_signal(signal.SIGTERM)
        assert fut.result() == b"slept"
    assert gw.wait(harness.slack(10)) == 0


def test_circuit_open_is_unavailable(env):
    """Calls failing at the gateway (the upstream resets every stream) open the circuit; then
    calls get UNAVAILABLE with `circuit_open: ...` without reaching the upstream."""
    def resetter(ex):
        ex.read_body()
        ex.reset(h2.errors.ErrorCodes.INTERNAL_ERROR)

    b = hb.H2Backend(resetter, name="resetter")
    env.backends.append(b)
    breaker = {"failure_ratio": 0.5, "min_requests": 4, "window": "30s", "open_for": "30s", "half_open_requests": 1}
    gw = env.gateway(routes=[main_route()], upstreams={"grpc": grpc_upstream(b.port, circuit_breaker=breaker)})
    codes = []
    for _ in range(8):
        st, _ = raw_grpc(gw.port, "/echo.Echo/Unary")
        codes.append((hdr(st, "grpc-status"), hdr(st, "sluice-error")))
    assert codes[:4] == [("14", "upstream_reset")] * 4, codes
    assert codes[-1] == ("14", "circuit_open"), codes
    before = len(b.requests)
    st, _ = raw_grpc(gw.port, "/echo.Echo/Unary")
    assert_trailers_only(st, 14, "circuit_open")
    assert len(b.requests) == before


# ---- TLS, load ---------------------------------------------------------------------------------------------


def test_tls_upstream_and_tls_listener(env, certs):
    """A TLS gRPC server (grpc.ssl_server_credentials) behind `protocol: h2` + `tls: {ca}`: unary
    and streaming calls work, from an h2c client and from a TLS client (ALPN h2 on a TLS
    listener of the gateway)."""
    srv = echo_server(env, tls=(str(certs / "server.crt"), str(certs / "server.key")))
    gw = env.gateway(routes=[main_route()], start=False,
                     upstreams={"grpc": grpc_upstream(srv.port, tls={"ca": str(certs / "ca.crt")})})
    tport = harness.free_port()
    gw.config["listen"].append({"address": f"127.0.0.1:{tport}", "tls": {"certificates": [
        {"cert": str(certs / "server.crt"), "key": str(certs / "server.key")}]}})
    gw.start()
    for ch in (ge.channel(gw.port), ge.channel(tport, tls_ca=str(certs / "ca.crt"), server_name="backend.test")):
        with ge.Stub(ch) as s:
            assert s.Unary(b"over tls", timeout=10) == b"over tls"
            assert list(s.ServerStream(b"5", timeout=10)) == [b"msg-%d" % i for i in range(5)]
            assert s.ClientStream(iter([b"a" * 10, b"b" * 20]), timeout=10) == b"30"
    assert len(srv.find("Unary")) == 2


@pytest.mark.deadline(180)
def test_load_2000_unary_calls_from_8_threads(env):
    """2,000 unary calls (8 threads, a channel each) through one gateway: no failure, every answer
    its own request, memory growth bounded, the gateway alive."""
    srv = echo_server(env)
    gw = env.gateway(routes=[main_route()], upstreams={"grpc": grpc_upstream(srv.port)})
    with ge.Stub(ge.channel(gw.port)) as s:
        for i in range(100):
            assert s.Unary(b"warm-%d" % i, timeout=10) == b"warm-%d" % i
    base = gw.rss_kb()
    failures, done = [], [0]
    lock = threading.Lock()

    def worker(t):
        with ge.Stub(ge.channel(gw.port)) as s:
            for i in range(250):
                msg = b"t%d-c%d-" % (t, i) + os.urandom(i % 200)
                try:
                    got = s.Unary(msg, timeout=20)
                    if got != msg:
                        failures.append(("mismatch", t, i))
                except grpc.RpcError as e:
                    failures.append((t, i, e.code(), e.details()))
                with lock:
                    done[0] += 1

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(harness.slack(150))
    assert failures == [], failures[:10]
    assert done[0] == 2000
    assert gw.alive()
    if not harness.SANITIZED:
        grown = gw.rss_kb() - base
        assert grown < 32 * 1024, f"RSS grew {grown} KiB over 2,000 calls"
