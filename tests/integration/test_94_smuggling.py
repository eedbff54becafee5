"""Request smuggling and parser differential corpus: the data files tests/integration/smuggling/
*.case, each sent raw over one connection to the real gateway in front of a recording backend.

Checked for every case:
- the gateway's verdict: the status (and Sluice-Error cause) of its first response, or
  `forwarded` (a 200 from the backend);
- after a refusal the connection is closed with nothing more sent;
- what the backend received, re-parsed strictly from its raw bytes (ConnRecord.raw): every
  request the gateway wrote is unambiguous (one framing: one Content-Length of plain digits, or
  Transfer-Encoding exactly `chunked`, never both; CRLF line endings; token field names; a body
  that ends exactly where its framing says), their number is the one the case allows (never a
  second, smuggled request), their targets and first body are the case's, and the bytes the case
  names are (or are not) in what the backend received.

File format (the raw part is the same as tests/integration/cases, see cases/README.md):

    description: one line
    verdict: forwarded | <status>
    cause: <Sluice-Error cause>          (refusals; '-' when the response carries none)
    backend_requests: N | A-B            (how many requests the backend may see; default 1 / 0-1)
    backend_targets: /a /b               (the targets of those requests, in order)
    backend_body: <escaped bytes>        (the first request's body, de-framed, exactly)
    backend_must_receive: <escaped>      (repeatable; a substring of the backend's raw bytes)
    backend_must_not_receive: <escaped>  (repeatable)
    closed_after: yes | no               (forwarded: the gateway then closes, nothing after it runs;
                                          refusals close by default, 'no' for a keep-alive 404)
    second_response: <status>            (forwarded, then the next pipelined request gets this)
    xfail: <reason>                      (a known gateway bug: the case documents the right verdict)
    ---
    raw bytes
"""
import re
import time
from pathlib import Path

import pytest

import backend as be
import harness
from harness import assert_gateway_error, decode_case_bytes

CASES_DIR = Path(__file__).parent / "smuggling"
TOKEN_RE = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


class SmugglingCase:
    def __init__(self, path):
        self.name = path.stem
        text = path.read_text(encoding="latin-1")
        m = re.search(r"^---[ \t]*$", text, re.M)
        if not m:
            raise ValueError(f"{path}: no '---' line")
        meta = {}
        for line in text[:m.start()].splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            key, sep, value = line.partition(":")
            if not sep:
                raise ValueError(f"{path}: bad header line {line!r}")
            meta.setdefault(key.strip(), []).append(value.strip())
        known = {"description", "verdict", "cause", "backend_requests", "backend_targets", "backend_body",
                 "backend_must_receive", "backend_must_not_receive", "closed_after", "second_response", "xfail"}
        unknown = set(meta) - known
        if unknown:
            raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
        one = lambda k, d=None: meta.get(k, [d])[-1]
        self.description = one("description")
        if not self.description:
            raise ValueError(f"{path}: no description")
        v = one("verdict")
        self.forwarded = v == "forwarded"
        self.status = 200 if self.forwarded else int(v)
        self.cause = one("cause", "bad_request")
        lo, _, hi = one("backend_requests", "1" if self.forwarded else "0-1").partition("-")
        self.requests = (int(lo), int(hi or lo))
        t = one("backend_targets")
        self.targets = t.split() if t else None
        b = one("backend_body")
        self.body = decode_case_bytes(b) if b is not None else None
        self.must = [decode_case_bytes(x) for x in meta.get("backend_must_receive", [])]
        self.must_not = [decode_case_bytes(x) for x in meta.get("backend_must_not_receive", [])]
        c = one("closed_after")
        self.closed_after = c == "yes" if self.forwarded else c != "no"
        s = one("second_response")
        self.second = int(s) if s else None
        self.xfail = one("xfail")
        self.data = decode_case_bytes(text[m.end():].lstrip("\r\n"))
        if not self.data:
            raise ValueError(f"{path}: no raw bytes")


def case_files():
    return sorted(CASES_DIR.glob("*.case"))


# ---- a strict reading of what the backend received --------------------------------------------


class Unambiguous(AssertionError):
    pass


def dechunk(raw, i):
    """Strict RFC 9112 7.1 chunked body from raw[i:]; returns (body, end) or (body, None) if cut."""
    body = bytearray()
    while True:
        j = raw.find(b"\r\n", i)
        if j < 0:
            return bytes(body), None
        line = raw[i:j]
        if b"\n" in line or b"\r" in line:
            raise Unambiguous(f"bare CR/LF in a chunk line {line!r}")
        size_s = line.split(b";", 1)[0]
        if not re.fullmatch(rb"[0-9A-Fa-f]{1,16}", size_s):
            raise Unambiguous(f"chunk size {line!r} is not plain hex")
        size = int(size_s, 16)
        i = j + 2
        if size == 0:
            # trailer section: field lines, then an empty line
            while True:
                j = raw.find(b"\r\n", i)
                if j < 0:
                    return bytes(body), None
                if j == i:
                    return bytes(body), j + 2
                tline = raw[i:j]
                name = tline.split(b":", 1)[0]
                if b":" not in tline or not TOKEN_RE.match(name):
                    raise Unambiguous(f"bad trailer line {tline!r}")
                i = j + 2
        if len(raw) < i + size + 2:
            body += raw[i:i + size]
            return bytes(body), None
        body += raw[i:i + size]
        if raw[i + size:i + size + 2] != b"\r\n":
            raise Unambiguous(f"chunk data not followed by CRLF at {i + size}")
        i += size + 2


def split_requests(raw):
    """The requests in one upstream connection's bytes: [(request_line, headers, body, complete)].
    Raises Unambiguous if the bytes could be framed in more than one way."""
    out = []
    i = 0
    raw = bytes(raw)
    while i < len(raw):
        j = raw.find(b"\r\n\r\n", i)
        if j < 0:
            raise Unambiguous(f"bytes after the last request that are not a request: {raw[i:i + 200]!r}")
        lines = raw[i:j].split(b"\r\n")
        for ln in lines:
            if b"\r" in ln or b"\n" in ln or b"\0" in ln:
                raise Unambiguous(f"bare CR/LF or NUL in {ln!r}")
        rl = lines[0]
        if not re.fullmatch(rb"[A-Z]+ [^ ]+ HTTP/1\.[01]", rl):
            raise Unambiguous(f"bad request line {rl!r}")
        headers = []
        for ln in lines[1:]:
            name, sep, value = ln.partition(b":")
            if not sep or not TOKEN_RE.match(name):
                raise Unambiguous(f"bad field line {ln!r}")
            headers.append((name.lower(), value.strip(b" \t")))
        cls = [v for n, v in headers if n == b"content-length"]
        tes = [v for n, v in headers if n == b"transfer-encoding"]
        hosts = [v for n, v in headers if n == b"host"]
        if len(hosts) != 1:
            raise Unambiguous(f"{len(hosts)} Host fields in {rl!r}")
        if cls and tes:
            raise Unambiguous(f"Content-Length and Transfer-Encoding in {rl!r}")
        if len(cls) > 1 or len(tes) > 1:
            raise Unambiguous(f"repeated framing fields in {rl!r}: {cls} {tes}")
        i = j + 4
        if tes:
            if tes[0] != b"chunked":
                raise Unambiguous(f"Transfer-Encoding {tes[0]!r}")
            body, end = dechunk(raw, i)
        elif cls:
            if not re.fullmatch(rb"[0-9]{1,15}", cls[0]):
                raise Unambiguous(f"Content-Length {cls[0]!r}")
            n = int(cls[0])
            body = raw[i:i + n]
            end = i + n if len(raw) >= i + n else None
        else:
            body, end = b"", i
        out.append((rl, headers, body, end is not None))
        if end is None:
            break  # a body cut short: only legitimate as the last thing on the connection
        i = end
    return out


def backend_requests(rec):
    """All requests on all of the recorder's connections, strictly parsed."""
    with rec.lock:
        raws = [bytes(c.raw) for c in rec.conns if c.raw]
    reqs = []
    for raw in raws:
        reqs.extend(split_requests(raw))
    return reqs


# ---- the reader itself --------------------------------------------------------------------------


def test_corpus_is_well_formed_and_large_enough():
    files = case_files()
    assert len(files) >= 40, f"only {len(files)} cases in {CASES_DIR}"
    for p in files:
        c = SmugglingCase(p)
        assert 100 <= c.status <= 599, p
        assert c.requests[0] <= c.requests[1] <= 3, p


def test_strict_backend_reader():
    ok = b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n" \
         b"GET /b HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"
    reqs = split_requests(ok)
    assert [(r[0], r[2], r[3]) for r in reqs] == [(b"POST /a HTTP/1.1", b"hello", True), (b"GET /b HTTP/1.1", b"hi", True)]
    for bad in (b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGARBAGE",
                b"GET /a HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
                b"GET /a HTTP/1.1\r\nHost: x\r\nX A: b\r\n\r\n"):
        with pytest.raises(Unambiguous):
            split_requests(bad)


# ---- against the gateway -------------------------------------------------------------------------


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
        if case.forwarded:
            assert resp.status == 200 and resp.header("Sluice-Error") is None, \
                f"{case.name} ({case.description}): expected forwarding, got {resp!r} {resp.headers} {resp.body[:300]!r}"
            for _ in range(case.requests[1] - 1):
                r = c.read_response(timeout=6)
                assert r.status == 200, f"{case.name}: pipelined response: {r!r}"
            if case.second is not None:
                r = c.read_response(timeout=6)
                assert r.status == case.second, f"{case.name}: second response {r!r}, expected {case.second}"
                closed, extra = c.wait_closed(3)
                assert closed and not extra, f"{case.name}: after the refused request: closed={closed} {extra[:200]!r}"
            if case.closed_after:
                closed, extra = c.wait_closed(3)
                assert closed, f"{case.name}: connection left open after Connection: close / HTTP/1.0"
                assert not extra, f"{case.name}: bytes after the last response: {extra[:200]!r}"
        else:
            if case.cause == "-":
                assert resp.status == case.status, f"{case.name}: expected {case.status}, got {resp!r} {resp.headers}"
            else:
                assert resp.status == case.status and resp.header("Sluice-Error") == case.cause, \
                    f"{case.name} ({case.description}): expected {case.status} {case.cause}, got {resp!r} {resp.headers} {resp.body[:300]!r}"
                assert_gateway_error(resp, case.status, case.cause)
            if case.closed_after:
                closed, extra = c.wait_closed(3)
                assert closed, f"{case.name}: connection left open after {resp.status}"
                assert not extra, f"{case.name}: bytes after the error response: {extra[:200]!r}"
    time.sleep(0.15)  # let anything the gateway forwarded reach the recorder
    try:
        reqs = backend_requests(rec)
    except Unambiguous as e:
        raise AssertionError(f"{case.name}: the backend received an ambiguous stream: {e}\n"
                             f"{rec.raw_received()[:2000]!r}") from None
    raw = rec.raw_received()
    lo, hi = case.requests
    assert lo <= len(reqs) <= hi, \
        f"{case.name}: the backend received {len(reqs)} requests, allowed {lo}-{hi}: {[r[0] for r in reqs]}\n{raw[:2000]!r}"
    if case.forwarded:
        assert all(r[3] for r in reqs), f"{case.name}: a forwarded request's body was cut: {raw[:2000]!r}"
    if case.targets is not None:
        got = [r[0].split(b" ")[1].decode("latin-1") for r in reqs]
        assert got == case.targets, f"{case.name}: backend targets {got}, expected {case.targets}"
    if case.body is not None:
        assert reqs and reqs[0][2] == case.body, \
            f"{case.name}: backend body {reqs[0][2] if reqs else None!r}, expected {case.body!r}"
    for m in case.must:
        assert m in raw, f"{case.name}: the backend did not receive {m!r}:\n{raw[:2000]!r}"
    for m in case.must_not:
        assert m not in raw, f"{case.name}: the backend received {m!r}:\n{raw[:2000]!r}"
    assert not rec.errors, rec.errors


def _param(p):
    c = SmugglingCase(p)
    marks = [pytest.mark.xfail(reason=c.xfail, strict=True)] if c.xfail else []
    return pytest.param(p, id=p.stem, marks=marks)


@pytest.mark.parametrize("path", [_param(p) for p in case_files()])
def test_smuggling_case(rig, path):
    run_case(*rig, SmugglingCase(path))


def test_a_framing_error_in_the_body_is_named_like_one_in_the_head(env):
    """The reason of a chunked-body refusal reaches the answer and the log (docs/http1.md)."""
    up = env.backend(be.echo(), name="up")
    gw = env.gateway(upstreams={"u": harness.upstream(up)},
                     routes=[{"name": "r", "match": {"path_prefix": "/"}, "upstream": "u"}])
    with harness.RawConn(gw.port) as c:
        c.send(b"POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n")
        r = c.read_response()
    harness.assert_gateway_error(r, 400, "bad_request")
    body = r.json()
    assert body["message"] != "The request is malformed.", body
    entry = gw.wait_access_log(lambda e: e["request_id"] == body["request_id"])
    assert entry and entry[0]["detail"] == body["message"], (entry, body)
