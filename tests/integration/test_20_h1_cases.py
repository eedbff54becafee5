"""HTTP/1 strictness and smuggling: the data files tests/integration/cases/h1/*.case (owned by
the parser engineer; format in cases/README.md), plus a small baseline set kept here so the case
runner is never vacuous. Each case's bytes go raw to a gateway whose catch-all route proxies to a
recording backend; checked: status, Sluice-Error cause, the connection closed after an error, and
that the backend never received a smuggled request."""
import time
from pathlib import Path

import pytest

import backend as be
import harness
from harness import assert_gateway_error, decode_case_bytes, parse_case

CASES_DIR = Path(__file__).parent / "cases" / "h1"

BASELINE = {
    "baseline-valid-get": r"""
description: a plain valid request is accepted
expect_status: 200
---
GET /ok HTTP/1.1\r\nHost: example.com\r\n\r\n
""",
    "baseline-valid-chunked-post": r"""
description: a valid chunked body is accepted
expect_status: 200
---
POST /ok HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n
5\r\nhello\r\n0\r\n\r\n
""",
    "baseline-cl-and-te": r"""
description: Content-Length with Transfer-Encoding (RFC 9112 6.3) with a smuggled request behind
expect_status: 400
expect_cause: bad_request
upstream_must_not_receive: /smuggled
---
POST /ok HTTP/1.1\r\nHost: example.com\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n
0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: example.com\r\n\r\n
""",
    "baseline-differing-content-lengths": r"""
description: two different Content-Length values
expect_status: 400
expect_cause: bad_request
upstream_must_not_receive: /smuggled
---
POST /ok HTTP/1.1\r\nHost: example.com\r\nContent-Length: 0\r\nContent-Length: 44\r\n\r\n
GET /smuggled HTTP/1.1\r\nHost: example.com\r\n\r\n
""",
    "baseline-obs-fold": r"""
description: obsolete line folding
expect_status: 400
expect_cause: bad_request
---
GET /ok HTTP/1.1\r\nHost: example.com\r\nX-Folded: a\r\n b\r\n\r\n
""",
    "baseline-space-before-colon": r"""
description: whitespace between field name and colon
expect_status: 400
expect_cause: bad_request
---
GET /ok HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n
""",
    "baseline-missing-host": r"""
description: HTTP/1.1 without Host
expect_status: 400
expect_cause: bad_request
---
GET /ok HTTP/1.1\r\nX-A: b\r\n\r\n
""",
    "baseline-bad-chunk-size": r"""
description: a chunk size that is not hex, with a request behind it
expect_status: 400
expect_cause: bad_request
upstream_must_not_receive: /smuggled
---
POST /ok HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n
zz\r\nGET /smuggled HTTP/1.1\r\nHost: example.com\r\n\r\n
""",
    "baseline-te-not-chunked": r"""
description: a transfer coding other than chunked as the final one
expect_status: 400
expect_cause: bad_request
---
POST /ok HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: gzip\r\n\r\nabc
""",
    "baseline-uri-too-long": r"""
description: a request target longer than the default max_uri_bytes (8kb)
expect_status: 414
expect_cause: uri_too_long
---
GET /{repeat:a:9000} HTTP/1.1\r\nHost: example.com\r\n\r\n
""",
    "baseline-header-too-large": r"""
description: a head longer than the default max_header_bytes (16kb)
expect_status: 431
expect_cause: header_too_large
---
GET /ok HTTP/1.1\r\nHost: example.com\r\nX-Big: {repeat:a:20000}\r\n\r\n
""",
    "baseline-nul-in-header": r"""
description: NUL in a header value
expect_status: 400
expect_cause: bad_request
---
GET /ok HTTP/1.1\r\nHost: example.com\r\nX-A: a\0b\r\n\r\n
""",
}


def file_cases():
    if not CASES_DIR.is_dir():
        return []
    return sorted(CASES_DIR.glob("*.case"))


# ---- the reader itself (no binary needed) ------------------------------------------------------


def test_case_reader_escapes_and_repeat():
    assert decode_case_bytes("GET / HTTP/1.1\\r\\n\nHost: a\\r\\n\\r\\n") == b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    assert decode_case_bytes("{repeat:ab:3}|{repeat:\\x41:2}|\\t\\0\\x7f") == b"ababab|AA|\t\x00\x7f"
    assert decode_case_bytes("a{repeat:x\\r\\n:2}b") == b"ax\r\nx\r\nb"
    c = parse_case("description: d\nexpect_status: 400\nexpect_cause: bad_request\n"
                   "upstream_must_not_receive: /smug\n---\nGET /\n HTTP/1.1\\r\\n\\r\\n\n", "x")
    assert (c.expect_status, c.expect_cause, c.must_not_receive) == (400, "bad_request", b"/smug")
    assert c.data == b"GET / HTTP/1.1\r\n\r\n"


def test_case_files_parse():
    """Every data file is well-formed (a broken file would otherwise be silently skipped)."""
    files = file_cases()
    if not files:
        pytest.skip(f"no case files in {CASES_DIR} yet")
    for p in files:
        c = parse_case(p.read_text(), p.stem)
        assert c.data, p
        assert 100 <= c.expect_status <= 599, p


# ---- against the gateway -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def rig(menv):
    rec = menv.backend(be.fixed(200, b"ok", [("Content-Type", "text/plain")]), name="recorder")
    gw = menv.gateway(
        upstreams={"rec": harness.upstream(rec)},
        routes=[{"name": "all", "match": {"path_prefix": "/"}, "upstream": "rec"}],
        timeouts={"client_header": "2s", "client_body": "2s"},
    )
    return gw, rec


def run_case(gw, rec, case):
    rec.reset()
    with gw.conn(timeout=6) as c:
        try:
            c.send(case.data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the gateway may answer and close before taking every byte
        resp = c.read_response(timeout=6)
        if case.accepted:
            assert resp.status == 200 and resp.header("Sluice-Error") is None, \
                f"{case.name} ({case.description}): expected acceptance, got {resp!r} {resp.headers}"
            # A case may legitimately hold several pipelined requests: one response each.
            time.sleep(0.1)
            responses = 1
            while len(rec.requests) > responses:
                r = c.read_response(timeout=3)
                assert r.status == 200, f"{case.name}: pipelined response {responses}: {r!r}"
                responses += 1
        else:
            assert resp.status == case.expect_status, \
                f"{case.name} ({case.description}): expected {case.expect_status}, got {resp!r} {resp.headers}"
            cause = case.expect_cause or resp.header("Sluice-Error")
            assert_gateway_error(resp, case.expect_status, cause)
            closed, extra = c.wait_closed(2)
            assert closed, f"{case.name}: connection left open after {resp.status}"
            assert not extra, f"{case.name}: bytes after the error response: {extra[:200]!r}"
    time.sleep(0.1)  # let anything the gateway forwarded reach the recorder
    received = rec.raw_received()
    if case.must_not_receive:
        assert case.must_not_receive not in received, \
            f"{case.name}: the upstream received {case.must_not_receive!r}:\n{received[:1000]!r}"
    heads = len(rec.requests)
    if case.accepted:
        assert heads == responses, f"{case.name}: upstream saw {heads} requests, client got {responses} responses"
    else:
        # A framing error found in the body may come after the head was forwarded, never later.
        assert heads <= 1, f"{case.name}: upstream saw {heads} requests: {rec.requests}"
    assert not rec.errors, rec.errors


@pytest.mark.parametrize("name", sorted(BASELINE))
def test_baseline_case(rig, name):
    run_case(*rig, parse_case(BASELINE[name], name))


@pytest.mark.parametrize("path", file_cases() or [pytest.param(None, marks=pytest.mark.skip(
    reason=f"no case files in {CASES_DIR} yet"))], ids=lambda p: p.stem if p else "none")
def test_h1_case(rig, path):
    run_case(*rig, parse_case(path.read_text(), path.stem))
