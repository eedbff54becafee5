"""Proxying: what the upstream receives (Host, hop-by-hop removal, X-Forwarded-*, Forwarded,
X-Request-Id, traceparent, header edits), response framing (length, chunked, close-delimited,
1xx, HEAD/204/304), Expect: 100-continue, pipelining, HTTP/1.0, upstream keep-alive reuse and
round-robin balancing."""
import itertools
import os
import re
import time

import pytest

import backend as be
import harness
from harness import REQUEST_ID_RE, build_request, chunk

_ids = itertools.count()


def tid():
    return f"t{os.getpid()}-{next(_ids)}"


HOP_RESPONSE_HEADERS = [("X-Up", "1"), ("Connection", "X-Secret"), ("X-Secret", "s"), ("Keep-Alive", "timeout=5"),
                        ("Proxy-Connection", "keep-alive")]


def trickled_chunked(ex):
    """A chunked body written one byte at a time, so size lines, CRLFs and the last chunk arrive
    split across many reads."""
    ex.read_body()
    ex.send_head(200, [("Transfer-Encoding", "chunked")])
    for byte in b"5;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nX-Trailer: t\r\n\r\n":
        ex.send(bytes([byte]))
        time.sleep(0.002)


@pytest.fixture(scope="module")
def rig(menv):
    up = menv.backend(be.paths({
        "/fixed": be.fixed(201, b"created", [("X-Up", "1"), ("Content-Type", "text/plain")]),
        "/hop": be.fixed(200, b"hop", HOP_RESPONSE_HEADERS),
        "/chunked": be.chunked([b"hello ", b"chunked ", b"world"], pause=0.02),
        "/chunked-trickle": trickled_chunked,
        "/close": be.close_delimited(b"x" * 10000 + b"END"),
        "/early": be.interim((103,), be.fixed(200, b"after hints")),
        "/head": be.fixed(200, b"y" * 100),
        "/nocontent": be.fixed(204),
        "/notmodified": be.fixed(304, headers=[("ETag", '"abc"')]),
        "/edits": be.fixed(200, b"edited", [("X-Resp-Set", "orig"), ("X-Resp-Add", "orig"),
                                            ("X-Resp-Remove", "gone")]),
    }), name="up")
    ka = menv.backend(be.echo(), name="ka")
    closer = menv.backend(be.fixed(200, b"bye", close=True), name="closer")
    idler = menv.backend(be.close_after(be.fixed(200, b"idle"), delay=0.05), name="idler")
    a, b = menv.backend(name="A"), menv.backend(name="B")
    c, d = menv.backend(name="C"), menv.backend(name="D")
    edits = {"request_headers": {"set": {"X-Set": "new"}, "add": {"X-Add": "added"}, "remove": ["X-Remove"]},
             "response_headers": {"set": {"X-Resp-Set": "new"}, "add": {"X-Resp-Add": "added"},
                                  "remove": ["X-Resp-Remove"]}}
    gw = menv.gateway(
        upstreams={"up": harness.upstream(up), "ka": harness.upstream(ka), "closer": harness.upstream(closer),
                   "idler": harness.upstream(idler), "pair": harness.upstream(a, b),
                   "weighted": harness.upstream((c, 3), (d, 1))},
        routes=[
            {"name": "edits", "match": {"path_prefix": "/edits"}, "upstream": "up", **edits},
            {"name": "local-echo", "match": {"path_prefix": "/local"}, "respond": {"echo": True}},
            {"name": "ka", "match": {"path_prefix": "/ka"}, "upstream": "ka"},
            {"name": "closer", "match": {"path_prefix": "/closer"}, "upstream": "closer"},
            {"name": "idler", "match": {"path_prefix": "/idler"}, "upstream": "idler"},
            {"name": "pair", "match": {"path_prefix": "/pair"}, "upstream": "pair"},
            {"name": "weighted", "match": {"path_prefix": "/weighted"}, "upstream": "weighted"},
            {"name": "plain", "match": {"path_prefix": "/"}, "upstream": "up"},
        ])
    return gw, up, {"ka": ka, "closer": closer, "idler": idler, "A": a, "B": b, "C": c, "D": d}


def upstream_request(up, marker):
    got = up.wait_requests(1, pred=lambda r: r.header("X-Test") == marker)
    assert len(got) == 1, f"upstream got {len(got)} requests marked {marker}"
    return got[0]


def send(gw, method, path, headers=(), body=None, **kw):
    marker = tid()
    r = gw.request(method, path, [("X-Test", marker), *headers], body, **kw)
    return r, marker


# ---- what the upstream receives ---------------------------------------------------------------


def test_basic_roundtrip(rig):
    gw, up, _ = rig
    r, m = send(gw, "GET", "/echo/x?a=1&b=2", [("X-Custom", "v")], host="svc.local")
    assert r.status == 200
    j = r.json()
    assert j["method"] == "GET" and j["target"] == "/echo/x?a=1&b=2"
    req = upstream_request(up, m)
    assert req.headers.get_all("Host") == ["svc.local"]
    assert req.header("X-Custom") == "v"


def test_response_passed_through(rig):
    gw, _, _ = rig
    r, _ = send(gw, "GET", "/fixed")
    assert (r.status, r.body, r.header("X-Up"), r.header("Content-Type")) == (201, b"created", "1", "text/plain")
    assert r.framing == "length"


def test_request_body_content_length(rig):
    gw, up, _ = rig
    body = os.urandom(5000)
    r, m = send(gw, "POST", "/echo", body=body)
    assert r.status == 200
    req = upstream_request(up, m)
    assert bytes(req.body) == body and req.body_complete


def test_request_body_chunked(rig):
    gw, up, _ = rig
    m = tid()
    pieces = [os.urandom(n) for n in (1, 100, 3000, 7)]
    with gw.conn() as c:
        c.send(build_request("POST", "/echo", [("X-Test", m), ("Transfer-Encoding", "chunked")]))
        for p in pieces:
            c.send(chunk(p))
            time.sleep(0.02)
        c.send(b"0\r\n\r\n")
        r = c.read_response()
    assert r.status == 200
    req = upstream_request(up, m)
    assert bytes(req.body) == b"".join(pieces)
    assert not (req.headers.has("Content-Length") and req.headers.has("Transfer-Encoding"))


def test_hop_by_hop_request_headers_removed(rig):
    gw, up, _ = rig
    r, m = send(gw, "GET", "/echo", [
        ("Connection", "keep-alive, X-Hop-Custom"), ("X-Hop-Custom", "secret"), ("Keep-Alive", "timeout=5"),
        ("Proxy-Connection", "keep-alive"), ("TE", "trailers"), ("Trailer", "X-T"), ("Upgrade", "foo/1"),
        ("X-Keep-Me", "1"), ("X-Multi", "a"), ("X-Multi", "b")])
    assert r.status == 200
    req = upstream_request(up, m)
    for name in ("X-Hop-Custom", "Keep-Alive", "Proxy-Connection", "TE", "Trailer", "Upgrade"):
        assert not req.headers.has(name), f"{name} reached the upstream: {req.headers}"
    for v in req.headers.get_all("Connection"):
        assert v.strip().lower() in ("keep-alive", "close"), f"client's Connection reached the upstream: {v}"
    assert req.header("X-Keep-Me") == "1"
    assert req.headers.get_all("X-Multi") == ["a", "b"] or req.headers.get_all("X-Multi") == ["a, b"]


def test_hop_by_hop_response_headers_removed(rig):
    gw, _, _ = rig
    r, _ = send(gw, "GET", "/hop")
    assert r.status == 200 and r.body == b"hop"
    assert r.header("X-Up") == "1"
    for name in ("X-Secret", "Keep-Alive", "Proxy-Connection"):
        assert not r.headers.has(name), f"{name} reached the client: {r.headers}"
    for v in r.headers.get_all("Connection"):
        assert v.strip().lower() in ("keep-alive", "close"), v


def forwarded_params(value):
    out = {}
    for elem in value.split(","):
        for pair in elem.split(";"):
            k, _, v = pair.strip().partition("=")
            out.setdefault(k.lower(), v.strip('"'))
    return out


def test_forwarding_headers_set(rig):
    gw, up, _ = rig
    r, m = send(gw, "GET", "/echo", host="svc.local")
    assert r.status == 200
    req = upstream_request(up, m)
    assert req.headers.get_all("X-Forwarded-For") == ["127.0.0.1"]
    assert req.headers.get_all("X-Forwarded-Proto") == ["http"]
    assert req.headers.get_all("X-Forwarded-Host") == ["svc.local"]
    fwd = req.headers.get_all("Forwarded")
    assert len(fwd) == 1, fwd
    p = forwarded_params(fwd[0])
    assert p.get("for") == "127.0.0.1" and p.get("proto") == "http" and p.get("host") == "svc.local", fwd


def test_x_forwarded_for_appends(rig):
    gw, up, _ = rig
    r, m = send(gw, "GET", "/echo", [("X-Forwarded-For", "203.0.113.7")])
    assert r.status == 200
    xff = upstream_request(up, m).headers.get_all("X-Forwarded-For")
    assert [re.sub(r"\s+", "", v) for v in xff] == ["203.0.113.7,127.0.0.1"], xff


def test_forwarded_proto_and_host_are_not_taken_from_the_client(rig):
    gw, up, _ = rig
    r, m = send(gw, "GET", "/echo", [("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "evil.test")],
                host="svc.local")
    assert r.status == 200
    req = upstream_request(up, m)
    assert req.headers.get_all("X-Forwarded-Proto") == ["http"]
    assert req.headers.get_all("X-Forwarded-Host") == ["svc.local"]


def test_request_id_generated(rig):
    gw, up, _ = rig
    ids = set()
    for _ in range(3):
        r, m = send(gw, "GET", "/echo")
        sent = upstream_request(up, m).headers.get_all("X-Request-Id")
        assert len(sent) == 1 and REQUEST_ID_RE.match(sent[0]), sent
        assert r.header("X-Request-Id") == sent[0]
        ids.add(sent[0])
    assert len(ids) == 3, "request ids repeat"


@pytest.mark.parametrize("rid", ["abc-123_X.y", "a" * 128, "0"])
def test_valid_request_id_kept(rig, rid):
    gw, up, _ = rig
    r, m = send(gw, "GET", "/echo", [("X-Request-Id", rid)])
    assert upstream_request(up, m).headers.get_all("X-Request-Id") == [rid]
    assert r.header("X-Request-Id") == rid
    assert gw.log_entry(rid)["request_id"] == rid


@pytest.mark.parametrize("rid", ["has space", "a" * 129, "bad!char", "", "ünï"])
def test_invalid_request_id_replaced(rig, rid):
    gw, up, _ = rig
    r, m = send(gw, "GET", "/echo", [("X-Request-Id", rid)])
    assert r.status == 200, r
    sent = upstream_request(up, m).headers.get_all("X-Request-Id")
    assert len(sent) == 1 and sent[0] != rid and REQUEST_ID_RE.match(sent[0]), sent
    assert r.header("X-Request-Id") == sent[0]


def test_traceparent_continued(rig):
    """The trace goes on with sluice's own span as the parent (test_88_trace.py has the rest)."""
    gw, up, _ = rig
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    r, m = send(gw, "GET", "/echo", [("traceparent", tp)])
    assert r.status == 200
    sent = upstream_request(up, m).headers.get_all("traceparent")
    assert len(sent) == 1 and sent[0] != tp, sent
    assert sent[0].startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-") and sent[0].endswith("-01"), sent


def test_request_header_edits(rig):
    gw, up, _ = rig
    r, m = send(gw, "GET", "/edits", [("X-Set", "old"), ("X-Set", "older"), ("X-Add", "orig"),
                                      ("X-Remove", "x"), ("x-remove", "y")])
    assert r.status == 200
    h = upstream_request(up, m).headers
    assert h.get_all("X-Set") == ["new"]
    assert h.get_all("X-Add") == ["orig", "added"] or h.get_all("X-Add") == ["orig, added"]
    assert not h.has("X-Remove")
    r, m = send(gw, "GET", "/edits")
    h = upstream_request(up, m).headers
    assert h.get_all("X-Set") == ["new"] and h.get_all("X-Add") == ["added"]


def test_response_header_edits(rig):
    gw, _, _ = rig
    r, _ = send(gw, "GET", "/edits")
    assert r.status == 200 and r.body == b"edited"
    assert r.headers.get_all("X-Resp-Set") == ["new"]
    assert r.headers.get_all("X-Resp-Add") in (["orig", "added"], ["orig, added"])
    assert not r.headers.has("X-Resp-Remove")


# ---- response framing --------------------------------------------------------------------------


def test_chunked_response_rechunked(rig):
    gw, _, _ = rig
    r, _ = send(gw, "GET", "/chunked")
    assert r.status == 200 and r.framing == "chunked" and r.body == b"hello chunked world"


def test_chunked_response_split_at_every_byte(rig):
    gw, _, _ = rig
    with gw.conn() as c:
        r = c.roundtrip("GET", "/chunked-trickle", timeout=10)
        assert r.status == 200 and r.body == b"hello0123456789abcdef", (r, r.headers)
        assert c.roundtrip("GET", "/fixed").status == 201, "connection unusable after a trickled chunked body"


def test_underscore_header_names_not_forwarded(rig):
    """Backends that map '_' to '-' would read Transfer_Encoding as framing (smuggling)."""
    gw, up, _ = rig
    r, m = send(gw, "GET", "/echo", [("Transfer_Encoding", "chunked"), ("X_Custom", "1"), ("X-Custom-Ok", "1")])
    assert r.status == 200
    req = upstream_request(up, m)
    assert not req.headers.has("Transfer_Encoding") and not req.headers.has("X_Custom"), req.headers
    assert req.header("X-Custom-Ok") == "1"


def test_close_delimited_response_becomes_chunked_for_http11(rig):
    gw, _, _ = rig
    with gw.conn() as c:
        r = c.roundtrip("GET", "/close")
        assert r.status == 200 and r.framing == "chunked", (r, r.headers)
        assert r.body == b"x" * 10000 + b"END"
        assert c.roundtrip("GET", "/fixed").status == 201, "connection unusable after a re-framed response"


def test_close_delimited_response_to_http10_client(rig):
    gw, _, _ = rig
    with gw.conn() as c:
        c.request("GET", "/close", version="HTTP/1.0", host=None)
        r = c.read_response()
        assert r.status == 200 and r.framing in ("close", "length"), r
        assert r.body == b"x" * 10000 + b"END"
        assert c.wait_closed(2)[0]


def test_interim_103_passed_through(rig):
    gw, _, _ = rig
    r, _ = send(gw, "GET", "/early")
    assert r.status == 200 and r.body == b"after hints"
    assert [i.status for i in r.interim] == [103], r.interim
    assert r.interim[0].header("Link") == "</style.css>; rel=preload"


@pytest.mark.parametrize("path", ["/echo", "/local/echo"])
def test_expect_100_continue(rig, path):
    gw, up, _ = rig
    m = tid()
    body = b"hello world"
    with gw.conn() as c:
        c.send(build_request("POST", path, [("X-Test", m), ("Expect", "100-continue"),
                                            ("Content-Length", str(len(body)))]))
        cont = c.read_head(timeout=3)
        assert cont.status == 100, cont.raw_head
        c.send(body)
        r = c.read_response()
    assert r.status == 200
    if path == "/echo":
        assert bytes(upstream_request(up, m).body) == body
    else:
        assert r.json()["body_bytes"] == len(body)


def test_head_has_no_body(rig):
    gw, _, _ = rig
    with gw.conn() as c:
        r = c.roundtrip("HEAD", "/head")
        assert r.status == 200 and r.body == b""
        assert r.header("Content-Length") in ("100", None)
        r = c.roundtrip("GET", "/fixed")  # a stray body would corrupt this
        assert r.status == 201 and r.body == b"created"


def test_204_and_304_have_no_body(rig):
    gw, _, _ = rig
    with gw.conn() as c:
        r = c.roundtrip("GET", "/nocontent")
        assert r.status == 204 and r.body == b""
        r = c.roundtrip("GET", "/notmodified")
        assert r.status == 304 and r.body == b"" and r.header("ETag") == '"abc"'
        assert not r.headers.has("Transfer-Encoding")
        assert c.roundtrip("GET", "/fixed").body == b"created"


# ---- pipelining, HTTP/1.0 ----------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["/echo", "/local/echo"])
def test_pipelined_requests_answered_in_order(rig, prefix):
    gw, _, _ = rig
    n = 12
    reqs = []
    for i in range(n):
        if i % 3 == 1:
            reqs.append(build_request("POST", f"{prefix}?i={i}", body=b"b" * (i * 100)))
        else:
            reqs.append(build_request("GET", f"{prefix}?i={i}"))
    with gw.conn() as c:
        c.send(b"".join(reqs))
        for i in range(n):
            r = c.read_response()
            assert r.status == 200, (i, r)
            j = r.json()
            assert j["query"] == f"i={i}", f"response {i} answers {j['query']}"
            got = j["body_len"] if "body_len" in j else j["body_bytes"]
            assert got == (i * 100 if i % 3 == 1 else 0)


def test_http10_closes_by_default(rig):
    gw, _, _ = rig
    with gw.conn() as c:
        c.request("GET", "/fixed", version="HTTP/1.0", host=None)
        r = c.read_response()
        assert r.status == 201 and r.body == b"created"
        assert r.version == "HTTP/1.1" or r.version == "HTTP/1.0"
        assert c.wait_closed(2)[0], "HTTP/1.0 without keep-alive must be closed"


def test_http10_keep_alive_on_request(rig):
    gw, _, _ = rig
    with gw.conn() as c:
        for _ in range(3):
            c.request("GET", "/fixed", [("Connection", "keep-alive")], version="HTTP/1.0", host="svc.local")
            r = c.read_response()
            assert r.status == 201 and r.body == b"created" and r.framing == "length"
            assert "keep-alive" in r.header("Connection", "").lower()


def test_http10_client_never_gets_chunked(rig):
    gw, _, _ = rig
    with gw.conn() as c:
        c.request("GET", "/chunked", [("Connection", "keep-alive")], version="HTTP/1.0", host="svc.local")
        r = c.read_response()
        assert r.status == 200 and r.body == b"hello chunked world"
        assert r.framing in ("length", "close"), r
        if r.framing == "close":
            assert c.wait_closed(2)[0]


# ---- upstream connections ----------------------------------------------------------------------


def test_upstream_keepalive_reused_on_one_client_connection(rig):
    gw, _, bes = rig
    ka = bes["ka"]
    before = ka.connection_count
    with gw.conn() as c:
        for i in range(30):
            assert c.roundtrip("GET", f"/ka/{i}").status == 200
    assert ka.connection_count - before <= 2, f"{ka.connection_count - before} upstream connections for 30 requests"


def test_upstream_keepalive_reused_across_client_connections(rig):
    gw, _, bes = rig
    ka = bes["ka"]
    before = ka.connection_count
    for i in range(30):
        assert gw.request("GET", f"/ka/n{i}").status == 200
    assert ka.connection_count - before <= 4, f"{ka.connection_count - before} upstream connections for 30 requests"


def test_upstream_connection_close_is_honoured(rig):
    gw, _, bes = rig
    closer = bes["closer"]
    before = closer.connection_count
    # The upstream's response and its FIN arrive together; 40 rounds make a race there show.
    with gw.conn() as c:
        for i in range(40):
            r = c.roundtrip("GET", "/closer")
            assert r.status == 200 and r.body == b"bye", (i, r)
    assert closer.connection_count - before == 40


def test_pooled_connection_closed_by_upstream_is_not_used(rig):
    gw, _, bes = rig
    with gw.conn() as c:
        for _ in range(6):
            r = c.roundtrip("GET", "/idler")
            assert r.status == 200 and r.body == b"idle", r
            time.sleep(0.2)  # the upstream closes its side 50 ms after each response


def test_round_robin_spreads_over_targets(rig):
    gw, _, bes = rig
    a0, b0 = len(bes["A"].requests), len(bes["B"].requests)
    for i in range(40):
        assert gw.request("GET", f"/pair/{i}").status == 200
    a, b = len(bes["A"].requests) - a0, len(bes["B"].requests) - b0
    assert a + b == 40 and a >= 12 and b >= 12, (a, b)


def test_weighted_round_robin(rig):
    gw, _, bes = rig
    c0, d0 = len(bes["C"].requests), len(bes["D"].requests)
    with gw.conn() as c:
        for i in range(40):
            assert c.roundtrip("GET", f"/weighted/{i}").status == 200
    c, d = len(bes["C"].requests) - c0, len(bes["D"].requests) - d0
    assert c + d == 40 and 24 <= c <= 36, f"weights 3:1 gave {c}:{d}"


def test_many_headers_forwarded_in_order(rig):
    gw, up, _ = rig
    hdrs = [(f"X-H{i}", f"v{i}" * 5) for i in range(60)]
    r, m = send(gw, "GET", "/echo", hdrs)
    assert r.status == 200
    got = [(n, v) for n, v in upstream_request(up, m).headers if n.lower().startswith("x-h")]
    assert [(n.lower(), v) for n, v in got] == [(n.lower(), v) for n, v in hdrs]


def test_echo_json_is_valid_for_odd_header_values(rig):
    gw, _, _ = rig
    r, _ = send(gw, "GET", "/local/x", [("X-Quote", 'a "b" \\ c'), ("X-Ctl", "tab\there")])
    assert r.status == 200
    j = r.json()
    assert j["headers"]["x-quote"] == 'a "b" \\ c' and j["headers"]["x-ctl"] == "tab\there"
