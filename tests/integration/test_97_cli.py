"""CLI commands over the admin API: `sluice health`, `routes`, `reload`, `doctor` and `probe`.

Most tests run the real binary against a fake admin API (FakeAdmin: http.server on a free
loopback port serving the JSON shapes of docs/admin.md), which also lets them serve bad
answers: not JSON, 500, 401, a refused connection, a server that never answers. `probe` also
runs against real backends, a closed port and a name that does not resolve, and over TLS against
Python ssl backends with certificates made at test time by the openssl CLI (verification with
--ca, the system store, --insecure, a name mismatch, an upstream's own `tls` settings) and the
HTTP/2 preface check of `protocol: h2` upstreams against a second sluice's h2c and TLS listeners.
The last tests run against a real gateway's admin API, and skip an endpoint that gateway does
not have yet."""
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import backend as be
import harness
from harness import free_port, slack, sluice_bin


def cli(args, token=None, cwd=None, timeout=20):
    """Runs `sluice ARGS` with SLUICE_ADMIN_TOKEN set to `token` (or unset)."""
    env = dict(os.environ)
    env.pop("SLUICE_ADMIN_TOKEN", None)
    if token is not None:
        env["SLUICE_ADMIN_TOKEN"] = token
    return subprocess.run([sluice_bin(), *args], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=slack(timeout), cwd=cwd, env=env)


def one_line_error(r):
    """A failed command says why in exactly one line on stderr, starting with 'sluice: '."""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("sluice: "), lines[0]
    return lines[0]


# ---- the fake admin API ------------------------------------------------------------------------


class FakeAdmin:
    """Answers `GET|POST path` from `self.answers`: path (with query) -> (status, body). A body
    that is a dict/list is sent as JSON; bytes as they are. Records every request."""

    def __init__(self, token=None):
        self.port = free_port()
        self.answers = {}
        self.requests = []
        self.token = token
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _answer(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                fake.requests.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                                      "body": body})
                if fake.token is not None and self.headers.get("Authorization") != f"Bearer {fake.token}":
                    status, out = 401, {"error": "unauthorized"}
                else:
                    status, out = fake.answers.get((self.command, self.path), (404, {"error": "not_found"}))
                data = out if isinstance(out, bytes) else json.dumps(out).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def on(self, path, body, status=200, method="GET"):
        self.answers[(method, path)] = (status, body)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Silent:
    """Accepts connections and never answers (the accepted sockets are held open)."""

    def __init__(self):
        self.port = free_port()
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", self.port))
        self.lsock.listen(16)
        self.held = []
        self.stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stop:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            self.held.append(c)

    def close(self):
        self.stop = True
        self.lsock.close()
        for c in self.held:
            c.close()


@pytest.fixture
def fake():
    f = FakeAdmin()
    yield f
    f.close()


STATUS = {"version": "0.2.0", "pid": 4242, "started": "2026-11-26T10:00:00Z", "uptime_seconds": 3725, "workers": 2,
          "config": {"path": "sluice.yaml", "generation": 3,
                     "last_reload": {"result": "ok", "time": "2026-11-26T10:30:00Z"}},
          "connections": {"active": 12, "idle": 40, "accepted_total": 91234, "max": 100000},
          "requests_total": 1234567, "routes": 5, "upstreams": ["users", "orders"]}


def target(address, health="healthy", circuit="closed", ewma=1.9, last="status 200", req=812, err=4, ejected=False):
    return {"address": address, "weight": 1, "available": health == "healthy" and not ejected, "health": health,
            "ejected": ejected, "circuit": circuit, "inflight": 3, "ewma_ms": ewma,
            "last_check": None if last is None else {"time": "2026-11-26T10:59:58Z", "result": last},
            "requests_1m": req, "errors_1m": err, "error_rate_1m": (err / req) if req else 0}


USERS_HEALTH = {"upstream": "users", "balance": "round_robin",
                "targets": [target("127.0.0.1:9001"),
                            target("10.0.0.5:9001", health="unhealthy", circuit="open", ewma=None,
                                   last="connection refused", req=100, err=38, ejected=True)]}
ORDERS_HEALTH = {"upstream": "orders", "balance": "least_conn",
                 "targets": [target("127.0.0.1:9002", health="unchecked", ewma=None, last=None, req=0, err=0)]}

ROUTES = {"routes": [
    {"order": 1, "name": "users-api", "hosts": ["api.example.com"], "path": "prefix /users",
     "methods": ["GET", "POST"], "headers": [], "action": "upstream users", "filters": ["strip_prefix", "timeout 30s"]},
    {"order": 2, "name": "hello", "hosts": [], "path": "any", "methods": [], "headers": [],
     "action": "respond 200", "filters": []}]}

FINDING = {"severity": "critical", "cause": "connectivity",
           "where": {"upstream": "users", "target": "10.0.0.5:9001"},
           "since": "2026-11-26T10:02:11Z",
           "summary": "38% of requests to users failed to connect to 10.0.0.5:9001 (connection refused)",
           "evidence": {"requests": 812, "upstream_connect_failed": 309, "ejected": True},
           "action": "check that the service on 10.0.0.5:9001 is running: sluice probe users"}


def table(stdout):
    """The rows of an aligned table, split on runs of two or more spaces, header row first."""
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    return [re.split(r"\s{2,}", ln.strip()) for ln in lines]


def columns_aligned(stdout, header_word):
    """The table from the header line on has one blank gutter (2+ spaces, at the same offsets on
    every line) between each pair of columns, and no trailing blanks."""
    lines = stdout.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(header_word))
    rows = [ln for ln in lines[start:] if ln.strip()]
    ncols = len(re.split(r"\s{2,}", rows[0].strip()))
    width = max(len(ln) for ln in rows)
    blank = [all(i >= len(ln) or ln[i] == " " for ln in rows) for i in range(width)]
    gutters = len(re.findall(r"11+", "".join("1" if b else "0" for b in blank)))
    assert gutters == ncols - 1, "\n".join(rows)
    assert all(ln == ln.rstrip() for ln in rows), "no trailing blanks"


# ---- health ------------------------------------------------------------------------------------


def test_health_table(fake, tmp_path):
    fake.on("/status", STATUS)
    fake.on("/upstreams/users/health", USERS_HEALTH)
    fake.on("/upstreams/orders/health", ORDERS_HEALTH)
    r = cli(["health", "--admin", fake.url], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    first = r.stdout.splitlines()[0]
    assert first == "sluice 0.2.0, pid 4242, up 1h2m, 2 workers, config generation 3, 12 active connections"
    rows = table(r.stdout)[1:]
    assert rows[0] == ["UPSTREAM", "TARGET", "HEALTH", "CIRCUIT", "IN-FLIGHT", "EWMA", "ERR RATE 1M", "LAST CHECK"]
    assert rows[1] == ["users", "127.0.0.1:9001", "healthy", "closed", "3", "1.9ms", "0.5% (4/812)",
                       "10:59:58Z status 200"]
    assert rows[2] == ["users", "10.0.0.5:9001", "unhealthy, ejected", "open", "3", "-", "38.0% (38/100)",
                       "10:59:58Z connection refused"]
    assert rows[3] == ["orders", "127.0.0.1:9002", "unchecked", "closed", "3", "-", "-", "-"]
    columns_aligned(r.stdout, "UPSTREAM")
    paths = [q["path"] for q in fake.requests]
    assert paths == ["/status", "/upstreams/users/health", "/upstreams/orders/health"]
    assert all(q["headers"].get("Connection") == "close" for q in fake.requests)


def test_health_json(fake, tmp_path):
    fake.on("/status", STATUS)
    fake.on("/upstreams/users/health", USERS_HEALTH)
    fake.on("/upstreams/orders/health", ORDERS_HEALTH)
    r = cli(["health", "--json", "--admin", fake.url], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out == {"status": STATUS, "upstreams": [USERS_HEALTH, ORDERS_HEALTH]}
    assert r.stdout.startswith("{\n  "), "pretty-printed"


def test_health_no_upstreams_and_odd_names(fake, tmp_path):
    fake.on("/status", dict(STATUS, upstreams=["a b/c"]))
    fake.on("/upstreams/a%20b%2Fc/health", {"upstream": "a b/c", "balance": "round_robin", "targets": []})
    r = cli(["health", "--admin", fake.url], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "a b/c" in r.stdout and "(no targets)" in r.stdout
    fake.on("/status", dict(STATUS, upstreams=[]))
    r = cli(["health", "--admin", fake.url], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "no upstreams configured" in r.stdout


def test_token_is_sent(tmp_path):
    f = FakeAdmin(token="s3cret")
    try:
        f.on("/status", dict(STATUS, upstreams=[]))
        r = cli(["health", "--admin", f.url], token="s3cret", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert f.requests[-1]["headers"]["Authorization"] == "Bearer s3cret"

        r = cli(["health", "--admin", f.url], cwd=tmp_path)
        assert r.returncode == 1
        line = one_line_error(r)
        assert "SLUICE_ADMIN_TOKEN" in line and "requires a token" in line
        assert "Authorization" not in f.requests[-1]["headers"]

        r = cli(["routes", "--admin", f.url], token="wrong", cwd=tmp_path)
        assert r.returncode == 1
        line = one_line_error(r)
        assert "SLUICE_ADMIN_TOKEN" in line and "refused" in line
        assert "wrong" not in r.stderr, "the token is never printed"
    finally:
        f.close()


# ---- routes ------------------------------------------------------------------------------------


def test_routes_table(fake, tmp_path):
    fake.on("/routes?view=table", ROUTES)
    r = cli(["routes", "--admin", fake.url + "/"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = table(r.stdout)
    assert rows[0] == ["ORDER", "NAME", "HOSTS", "PATH", "METHODS", "ACTION", "FILTERS"]
    assert rows[1] == ["1", "users-api", "api.example.com", "prefix /users", "GET, POST", "upstream users",
                       "strip_prefix, timeout 30s"]
    assert rows[2] == ["2", "hello", "*", "any", "any", "respond 200", "-"]
    columns_aligned(r.stdout, "ORDER")
    assert fake.requests[0]["path"] == "/routes?view=table"

    r = cli(["routes", "--json", "--admin", fake.url], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == ROUTES

    # A path in --admin is a prefix (an admin API behind a proxy).
    fake.on("/gw/admin/routes?view=table", ROUTES)
    r = cli(["routes", "--admin", f"127.0.0.1:{fake.port}/gw/admin/"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert fake.requests[-1]["path"] == "/gw/admin/routes?view=table"


def test_routes_headers_column_and_empty(fake, tmp_path):
    routes = json.loads(json.dumps(ROUTES))
    routes["routes"][0]["headers"] = ["X-Canary: 1", "X-Debug absent"]
    fake.on("/routes?view=table", routes)
    r = cli(["routes", "--admin", fake.url], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = table(r.stdout)
    assert rows[0][5] == "HEADERS"
    assert rows[1][5] == "X-Canary: 1, X-Debug absent"
    assert rows[2][5] == "-"

    fake.on("/routes?view=table", {"routes": []})
    r = cli(["routes", "--admin", fake.url], cwd=tmp_path)
    assert r.returncode == 0
    assert "no routes configured" in r.stdout


# ---- reload ------------------------------------------------------------------------------------


def test_reload_ok_and_rejected(fake, tmp_path):
    fake.on("/reload", {"result": "ok", "generation": 4}, method="POST")
    r = cli(["reload", "--admin", fake.url], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "reloaded: generation 4\n"
    assert fake.requests[-1]["method"] == "POST"

    bad = {"error": "invalid_config", "message": "the change was not applied",
           "errors": [{"file": "/etc/sluice.yaml", "line": 12, "col": 17, "path": "routes[0].upstream",
                       "message": "routes[0].upstream: no upstream named \"nope\""},
                      {"file": "/etc/sluice.yaml", "line": 0, "col": 0, "path": "",
                       "message": "cannot read the file"}]}
    fake.on("/reload", bad, status=422, method="POST")
    r = cli(["reload", "--admin", fake.url], cwd=tmp_path)
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr.splitlines() == [
        "/etc/sluice.yaml:12:17: routes[0].upstream: no upstream named \"nope\"",
        "/etc/sluice.yaml: cannot read the file",
        "sluice: reload failed with 2 errors; the running config is unchanged"]

    r = cli(["reload", "--json", "--admin", fake.url], cwd=tmp_path)
    assert r.returncode == 1
    assert json.loads(r.stdout) == bad


# ---- doctor ------------------------------------------------------------------------------------


def test_doctor(fake, tmp_path):
    fake.on("/doctor", {"window_seconds": 60, "findings": []})
    r = cli(["doctor", "--admin", fake.url], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "no findings in the last 60 s: nothing wrong seen\n"

    info = dict(FINDING, severity="info", cause="latency", where={"route": "hello"})
    fake.on("/doctor", {"window_seconds": 60, "findings": [FINDING, info]})
    r = cli(["doctor", "--admin", fake.url], cwd=tmp_path)
    assert r.returncode == 1, "a critical finding fails the command, like a health check"
    paragraphs = r.stdout.strip().split("\n\n")
    assert len(paragraphs) == 2
    assert paragraphs[0].splitlines() == [
        "critical  connectivity  upstream users, target 10.0.0.5:9001",
        "  since:    2026-11-26T10:02:11Z",
        "  summary:  38% of requests to users failed to connect to 10.0.0.5:9001 (connection refused)",
        "  evidence: requests=812, upstream_connect_failed=309, ejected=true",
        "  action:   check that the service on 10.0.0.5:9001 is running: sluice probe users"]
    assert paragraphs[1].startswith("info  latency  route hello\n")

    fake.on("/doctor", {"window_seconds": 60, "findings": [info]})
    r = cli(["doctor", "--admin", fake.url], cwd=tmp_path)
    assert r.returncode == 0, "info findings alone do not fail"

    fake.on("/doctor?window=300", {"window_seconds": 300, "findings": [dict(FINDING, severity="warning")]})
    r = cli(["doctor", "--json", "--window", "300", "--admin", fake.url], cwd=tmp_path)
    assert r.returncode == 1
    assert json.loads(r.stdout)["window_seconds"] == 300

    r = cli(["doctor", "--window", "soon", "--admin", fake.url], cwd=tmp_path)
    assert r.returncode == 2
    one_line_error(r)


# ---- bad answers and no answer -----------------------------------------------------------------


def test_admin_down(tmp_path):
    port = free_port()
    for cmd in (["health"], ["routes"], ["reload"], ["doctor"], ["probe", "users"]):
        r = cli([*cmd, "--admin", f"http://127.0.0.1:{port}"], cwd=tmp_path)
        assert r.returncode == 1, (cmd, r.stdout)
        assert one_line_error(r) == (f"sluice: cannot reach the admin API at http://127.0.0.1:{port}: connection "
                                     "refused (is sluice running? set --admin)")


def test_admin_default_address_from_config(fake, tmp_path):
    fake.on("/routes?view=table", {"routes": []})
    cfg = tmp_path / "other.yaml"
    cfg.write_text(harness.to_yaml({"listen": [{"address": f"127.0.0.1:{free_port()}"}],
                                    "admin": {"address": f"0.0.0.0:{fake.port}", "token_env": "SLUICE_T"}}))
    r = cli(["routes", "-c", str(cfg)], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert len(fake.requests) == 1, "a wildcard admin address is reached on loopback"

    # ./sluice.yaml when there is no -c
    (tmp_path / "sluice.yaml").write_text(cfg.read_text())
    r = cli(["routes"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert len(fake.requests) == 2

    # A config that does not load: the built-in default, named in the error.
    bad = tmp_path / "bad.yaml"
    bad.write_text("listen: [\n")
    r = cli(["routes", "-c", str(bad)], cwd=tmp_path)
    if r.returncode != 0:
        assert "http://127.0.0.1:8001" in one_line_error(r)


def test_bad_answers(fake, tmp_path):
    fake.on("/routes?view=table", b"<html>hello</html>")
    r = cli(["routes", "--admin", fake.url], cwd=tmp_path)
    assert r.returncode == 1
    assert "not JSON" in one_line_error(r)

    fake.on("/routes?view=table", {"error": "internal_error", "message": "boom"}, status=500)
    r = cli(["routes", "--admin", fake.url], cwd=tmp_path)
    assert r.returncode == 1
    assert one_line_error(r) == f"sluice: the admin API at {fake.url} answered 500 internal_error: boom"

    fake.on("/routes?view=table", {"something": "else"})
    r = cli(["routes", "--admin", fake.url], cwd=tmp_path)
    assert r.returncode == 1
    assert "routes" in one_line_error(r)

    fake.on("/routes?view=table", {"routes": [{"name": "a", "match": {"path_prefix": "/"}}]})
    r = cli(["routes", "--admin", fake.url], cwd=tmp_path)
    assert r.returncode == 1
    assert "does not serve the compiled route table" in one_line_error(r)

    r = cli(["routes", "--admin", "ftp://x"], cwd=tmp_path)
    assert r.returncode == 2
    assert "bad admin URL" in one_line_error(r)


@pytest.mark.deadline(40)
def test_admin_never_answers(tmp_path):
    s = Silent()
    try:
        t0 = time.monotonic()
        r = cli(["health", "--admin", f"http://127.0.0.1:{s.port}"], cwd=tmp_path)
        took = time.monotonic() - t0
        assert r.returncode == 1
        assert "did not answer within 5 s" in one_line_error(r)
        assert 4.5 <= took <= slack(8), took
    finally:
        s.close()


def test_usage_errors(tmp_path):
    for args in (["probe"], ["routes", "--bogus"], ["health", "extra"], ["routes", "--admin"],
                 ["probe", "a", "b"], ["probe", "ftp://127.0.0.1:1/"], ["probe", "http://h:99999/"],
                 ["probe", "--ca", "ca.pem", "http://127.0.0.1:1/"], ["probe", "--insecure", "http://127.0.0.1:1/"],
                 ["probe", "--ca", "ca.pem", "--insecure", "https://127.0.0.1:1/"], ["probe", "--ca"],
                 ["routes", "--insecure"], ["health", "--ca", "x.pem"]):
        r = cli(args, cwd=tmp_path)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        one_line_error(r)
    r = cli(["help"])
    assert r.returncode == 0
    for cmd in ("reload", "health", "routes", "probe", "doctor", "--admin", "--json", "SLUICE_ADMIN_TOKEN", "--ca",
                "--insecure"):
        assert cmd in r.stdout


# ---- probe -------------------------------------------------------------------------------------


def test_probe_url(env, tmp_path):
    b = env.backend(be.fixed(204))
    r = cli(["probe", f"http://127.0.0.1:{b.port}/x?y=1"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = table(r.stdout)
    assert rows[0] == ["TARGET", "DNS", "CONNECT", "TLS", "FIRST BYTE", "TOTAL", "STATUS"]
    assert rows[1][0] == f"127.0.0.1:{b.port}"
    assert rows[1][1] == "0.0ms" and rows[1][3] == "-" and rows[1][6] == "204"
    assert all(re.fullmatch(r"\d+\.\dms", c) for c in (rows[1][2], rows[1][4], rows[1][5])), rows[1]
    req = b.wait_requests(1)[0]
    assert (req.method, req.target) == ("GET", "/x?y=1")
    assert req.header("connection") == "close"
    assert req.header("host") == f"127.0.0.1:{b.port}"

    r = cli(["probe", "--json", f"http://127.0.0.1:{b.port}/"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    t = json.loads(r.stdout)["targets"]
    assert len(t) == 1
    assert set(t[0]) == {"address", "dns_ms", "connect_ms", "tls_ms", "first_byte_ms", "total_ms", "status", "error"}
    assert t[0]["dns_ms"] == 0 and t[0]["tls_ms"] is None and t[0]["status"] == 204 and t[0]["error"] is None
    assert 0 <= t[0]["connect_ms"] <= t[0]["total_ms"] and 0 <= t[0]["first_byte_ms"] <= t[0]["total_ms"]


def test_probe_url_failures(env, tmp_path):
    closed = free_port()
    r = cli(["probe", "--json", f"http://127.0.0.1:{closed}/"], cwd=tmp_path)
    assert r.returncode == 1
    t = json.loads(r.stdout)["targets"][0]
    assert t["error"] == "connection refused" and t["status"] is None and t["connect_ms"] is None

    r = cli(["probe", "http://no-such-host.invalid:8080/"], cwd=tmp_path)
    assert r.returncode == 1
    assert table(r.stdout)[1][-1] in ("name not resolved", "timed out")

    b = env.backend(be.fixed(503, b"down"))
    r = cli(["probe", f"http://localhost:{b.port}/"], cwd=tmp_path)
    assert r.returncode == 1, "a 5xx answer is a failed probe"
    row = table(r.stdout)[1]
    assert row[-1] == "503" and row[1].endswith("ms"), row

    g = env.backend(be.garbage(b"SSH-2.0-OpenSSH\r\n\r\n"))
    r = cli(["probe", f"http://127.0.0.1:{g.port}/"], cwd=tmp_path)
    assert r.returncode == 1
    assert table(r.stdout)[1][-1] not in ("", "-")


@pytest.mark.deadline(40)
def test_probe_url_timeout(env, tmp_path):
    s = Silent()
    try:
        t0 = time.monotonic()
        r = cli(["probe", f"http://127.0.0.1:{s.port}/"], cwd=tmp_path)
        assert r.returncode == 1
        assert table(r.stdout)[1][-1] == "timed out"
        assert time.monotonic() - t0 <= slack(8)
    finally:
        s.close()


def test_probe_upstream(env, fake, tmp_path):
    ok = env.backend(be.fixed(200, b"ok"))
    closed = free_port()
    fake.on("/upstreams/users", {"targets": [{"address": ok.address}, {"address": f"127.0.0.1:{closed}"}],
                                 "health": {"active": {"path": "/healthz", "interval": "2s"}}})
    r = cli(["probe", "users", "--admin", fake.url], cwd=tmp_path)
    assert r.returncode == 1, "one target refused"
    assert r.stdout.splitlines()[0] == "probing upstream users: GET /healthz on 2 targets"
    rows = table(r.stdout)[1:]
    assert rows[1][0] == ok.address and rows[1][-1] == "200"
    assert rows[2][0] == f"127.0.0.1:{closed}" and rows[2][-1] == "connection refused"
    req = ok.wait_requests(1)[0]
    assert (req.method, req.path) == ("GET", "/healthz")

    fake.on("/upstreams/users", {"targets": [{"address": ok.address}]})
    r = cli(["probe", "users", "--json", "--admin", fake.url], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    t = json.loads(r.stdout)["targets"]
    assert [x["address"] for x in t] == [ok.address] and t[0]["status"] == 200
    assert ok.wait_requests(2)[1].path == "/", "no active health path: probe /"

    r = cli(["probe", "nope", "--admin", fake.url], cwd=tmp_path)
    assert r.returncode == 1
    assert one_line_error(r) == "sluice: no upstream named 'nope'"


# ---- probe over TLS ----------------------------------------------------------------------------

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _leaf(d, name, sans, ca="ca"):
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", f"{name}.key",
             "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
    (d / f"{name}.ext").write_text("subjectAltName=" + ",".join(sans) + "\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
             "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=d)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """A test CA; `server` (localhost and 127.0.0.1) and `other` (other.test only) signed by it;
    `self`, self-signed."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl CLI")
    d = tmp_path_factory.mktemp("probecerts")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "ca.key",
             "-out", "ca.crt", "-days", "3", "-subj", "/CN=probe test CA", cwd=d)
    _leaf(d, "server", ["DNS:localhost", "IP:127.0.0.1"])
    _leaf(d, "other", ["DNS:other.test"])
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "self.key",
             "-out", "self.crt", "-days", "2", "-subj", "/CN=self", cwd=d)
    return d


class TLSBackend(be.Backend):
    """The harness backend behind TLS (each accepted socket wrapped server side), recording the
    SNI and the ALPN protocol each handshake agreed."""

    def __init__(self, certs, cert="server", handler=None, alpn=("http/1.1",)):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(certs / f"{cert}.crt"), str(certs / f"{cert}.key"))
        self.ctx.set_alpn_protocols(list(alpn))
        self.ctx.sni_callback = self._on_sni
        self.snis = []
        self.alpns = []
        self.tls_errors = []
        super().__init__(handler or be.fixed(200, b"ok"), name="tlsprobe")

    def _on_sni(self, sslobj, name, ctx):
        with self.lock:
            self.snis.append(name)

    def _serve(self, sock, rec):
        sock.settimeout(10)
        try:
            ssock = self.ctx.wrap_socket(sock, server_side=True)
        except (ssl.SSLError, OSError) as e:
            with self.lock:
                self.tls_errors.append(str(e))
            sock.close()
            rec.closed.set()
            return
        with self.lock:
            self.alpns.append(ssock.selected_alpn_protocol())
            self._live.add(ssock)
        super()._serve(ssock, rec)


def tls_backend(env, certs, **kw):
    b = TLSBackend(certs, **kw)
    env.backends.append(b)
    return b


MS = r"\d+\.\dms"


def probe_row(r, header_lines=0):
    """The one target row of a probe's table, after `header_lines` lines before the table."""
    rows = table(r.stdout)
    assert rows[header_lines] == ["TARGET", "DNS", "CONNECT", "TLS", "FIRST BYTE", "TOTAL", "STATUS"], r.stdout
    assert len(rows) == header_lines + 2, r.stdout
    return rows[header_lines + 1]


@needs_openssl
def test_probe_https_url(env, certs, tmp_path):
    """An https:// URL with --ca: SNI and the name from the URL's host, ALPN http/1.1, the TLS
    column is the handshake's time and the GET goes over TLS; --json has tls_ms as a number."""
    b = tls_backend(env, certs, handler=be.fixed(204))
    r = cli(["probe", "--ca", str(certs / "ca.crt"), f"https://localhost:{b.port}/x?y=1"], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    row = probe_row(r)
    assert row[0] == f"localhost:{b.port}" and row[6] == "204", row
    assert all(re.fullmatch(MS, c) for c in row[1:6]), row
    req = b.wait_requests(1)[0]
    assert (req.method, req.target) == ("GET", "/x?y=1")
    assert req.header("host") == f"localhost:{b.port}"
    assert b.snis == ["localhost"] and b.alpns == ["http/1.1"]

    r = cli(["probe", "--json", f"--ca={certs / 'ca.crt'}", f"https://127.0.0.1:{b.port}/"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    t = json.loads(r.stdout)["targets"][0]
    assert t["status"] == 204 and t["error"] is None
    assert isinstance(t["tls_ms"], float) and 0 < t["tls_ms"] <= t["total_ms"], t
    assert t["connect_ms"] + t["tls_ms"] + t["first_byte_ms"] <= t["total_ms"] + 0.01, t
    assert b.snis[-1] is None, "no SNI for an IP literal (RFC 6066); its IP SAN matched"


@needs_openssl
def test_probe_https_verification_failures(env, certs, tmp_path):
    """Without --ca the test CA is unknown (the system store is used): the handshake's reason is
    the STATUS, exit 1, no first byte. A certificate for another name, and a self-signed one,
    fail with their own reasons; --insecure skips verification and says so."""
    b = tls_backend(env, certs)
    url = f"https://localhost:{b.port}/"
    r = cli(["probe", url], cwd=tmp_path)
    assert r.returncode == 1, r.stdout
    row = probe_row(r)
    assert row[6] == "tls: certificate verify failed: unable to get local issuer certificate", row
    assert re.fullmatch(MS, row[2]) and row[3] == "-" and row[4] == "-" and row[5] == "-", row
    assert b.requests == []

    r = cli(["probe", "--json", url], cwd=tmp_path)
    assert r.returncode == 1
    t = json.loads(r.stdout)["targets"][0]
    assert t["error"].startswith("tls: certificate verify failed") and t["tls_ms"] is None and t["status"] is None

    r = cli(["probe", "--insecure", url], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[0] == "note: --insecure: the server's certificate and name are not verified"
    row = probe_row(r, header_lines=1)
    assert row[6] == "200" and re.fullmatch(MS, row[3]), row

    other = tls_backend(env, certs, cert="other")
    r = cli(["probe", "--ca", str(certs / "ca.crt"), f"https://localhost:{other.port}/"], cwd=tmp_path)
    assert r.returncode == 1
    assert probe_row(r)[6] == "tls: certificate verify failed: hostname mismatch", r.stdout

    selfsigned = tls_backend(env, certs, cert="self")
    r = cli(["probe", "--ca", str(certs / "ca.crt"), f"https://localhost:{selfsigned.port}/"], cwd=tmp_path)
    assert r.returncode == 1
    assert probe_row(r)[6] == "tls: certificate verify failed: self-signed certificate", r.stdout
    r = cli(["probe", "--insecure", f"https://localhost:{selfsigned.port}/"], cwd=tmp_path)
    assert r.returncode == 0 and probe_row(r, header_lines=1)[6] == "200", r.stdout

    r = cli(["probe", "--ca", str(tmp_path / "missing.pem"), url], cwd=tmp_path)
    assert r.returncode == 1
    assert probe_row(r)[6] == f"tls: cannot read the CA file {tmp_path / 'missing.pem'}: No such file or directory"


@needs_openssl
def test_probe_https_to_plain_server(env, tmp_path, certs):
    """A server that does not speak TLS: a `tls:` reason from OpenSSL, exit 1."""
    plain = env.backend(be.fixed(200, b"plain"))
    r = cli(["probe", "--ca", str(certs / "ca.crt"), f"https://127.0.0.1:{plain.port}/"], cwd=tmp_path)
    assert r.returncode == 1
    status = probe_row(r)[6]
    assert status.startswith("tls: ") and len(status) > 5, status


@needs_openssl
def test_probe_tls_upstream_settings(env, fake, certs, tmp_path):
    """`sluice probe NAME` uses the upstream's `tls` as GET /upstreams/NAME shows it: `ca`
    relative to the config file's directory (from GET /status), `sni`, https:// targets;
    `verify: false` is said in the header line."""
    b = tls_backend(env, certs)
    fake.on("/status", dict(STATUS, config={"path": str(certs / "sluice.yaml"), "generation": 1}))
    fake.on("/upstreams/sec", {"targets": [{"address": f"https://127.0.0.1:{b.port}"}],
                               "tls": {"ca": "ca.crt", "sni": "localhost"},
                               "health": {"active": {"path": "/hz"}}})
    r = cli(["probe", "sec", "--admin", fake.url], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[0] == "probing upstream sec: GET /hz over TLS on 1 target"
    row = probe_row(r, header_lines=1)
    assert row[0] == f"https://127.0.0.1:{b.port}" and row[6] == "200" and re.fullmatch(MS, row[3]), row
    assert b.snis == ["localhost"], "the configured sni is sent (and checked: the certificate names localhost)"
    assert b.wait_requests(1)[0].path == "/hz"

    # The same upstream with a `ca` that is not the issuer: verification fails.
    (tmp_path / "conf").mkdir()
    shutil.copy(certs / "self.crt", tmp_path / "conf" / "ca.crt")
    r = cli(["probe", "sec", "--admin", fake.url, "-c", str(tmp_path / "conf" / "sluice.yaml")], cwd=tmp_path)
    assert r.returncode == 1, "-c FILE's directory is used for relative paths: its ca.crt is the wrong CA"
    assert probe_row(r, header_lines=1)[6].startswith("tls: certificate verify failed"), r.stdout

    fake.on("/upstreams/sec", {"targets": [{"address": b.address}], "tls": {"verify": False}})
    r = cli(["probe", "sec", "--admin", fake.url], cwd=tmp_path)
    assert r.returncode == 0, r.stdout
    assert r.stdout.splitlines()[0] == "probing upstream sec: GET / over TLS (certificate not verified) on 1 target"
    assert probe_row(r, header_lines=1)[6] == "200"

    fake.on("/upstreams/sec", {"targets": [{"address": b.address}], "tls": True})
    r = cli(["probe", "sec", "--admin", fake.url], cwd=tmp_path)
    assert r.returncode == 1, "tls: true verifies against the system store, which lacks the test CA"
    assert probe_row(r, header_lines=1)[6] == "tls: certificate verify failed: unable to get local issuer certificate"
    r = cli(["probe", "sec", "--admin", fake.url, "--ca", str(certs / "ca.crt")], cwd=tmp_path)
    assert r.returncode == 0, "--ca overrides the upstream's trust: " + r.stdout


@needs_openssl
def test_real_tls_upstream_probe(env, certs, tmp_path):
    """Against a real gateway: an upstream with `tls: {ca: ca.crt}` (relative to its config
    file) is probed over TLS with that CA: a TLS time and 200."""
    b = tls_backend(env, certs)
    gw = env.gateway(start=False, routes=[{"name": "r", "match": {"path_prefix": "/"}, "upstream": "u"}],
                     upstreams={"u": {"targets": [{"address": b.address}], "tls": {"ca": "ca.crt"}}})
    shutil.copy(certs / "ca.crt", gw.dir / "ca.crt")
    gw.start()
    r = cli(["probe", "u", "--admin", f"http://127.0.0.1:{gw.admin_port}"], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[0] == "probing upstream u: GET / over TLS on 1 target"
    row = probe_row(r, header_lines=1)
    assert row[0] == b.address and row[6] == "200" and re.fullmatch(MS, row[3]), row
    assert b.alpns[-1] == "http/1.1"


@needs_openssl
def test_probe_h2_upstream(env, certs, tmp_path):
    """A `protocol: h2` upstream: the probe sends the HTTP/2 preface instead of a GET and times
    the server's SETTINGS as FIRST BYTE: `h2 ok` against a second sluice's h2c listener and its
    TLS listener (ALPN h2); an HTTP/1.1-only server and a TLS server without h2 in ALPN fail."""
    inner = env.gateway(routes=[{"name": "hi", "match": {"path_prefix": "/"}, "respond": {"status": 200}}])
    tls_port = free_port()
    env.gateway(
        listen=[{"address": f"127.0.0.1:{tls_port}",
                 "tls": {"certificates": [{"cert": str(certs / "server.crt"), "key": str(certs / "server.key")}]}}],
        routes=[{"name": "hi", "match": {"path_prefix": "/"}, "respond": {"status": 200}}])
    http1 = env.backend(be.fixed(200, b"h1"))
    no_h2 = tls_backend(env, certs)
    outer = env.gateway(
        routes=[{"name": "r", "match": {"path_prefix": "/"}, "respond": {"status": 204}}],
        upstreams={"grpc": {"protocol": "h2", "targets": [{"address": f"127.0.0.1:{inner.port}"}]},
                   "grpcs": {"protocol": "h2", "targets": [{"address": f"https://localhost:{tls_port}"},
                                                           {"address": f"https://{no_h2.address}"}],
                             "tls": {"ca": str(certs / "ca.crt"), "sni": "localhost"}},
                   "h1": {"protocol": "h2", "targets": [{"address": http1.address}]}})
    admin = ["--admin", f"http://127.0.0.1:{outer.admin_port}"]
    needs(outer, "/upstreams/grpc")

    r = cli(["probe", "grpc", *admin], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[0] == "probing upstream grpc: the HTTP/2 preface (h2c) on 1 target"
    row = probe_row(r, header_lines=1)
    assert row[6] == "h2 ok" and row[3] == "-", row
    assert all(re.fullmatch(MS, c) for c in (row[2], row[4], row[5])), row

    r = cli(["probe", "grpcs", *admin], cwd=tmp_path)
    assert r.returncode == 1, "the second target does not select h2"
    assert r.stdout.splitlines()[0] == "probing upstream grpcs: the HTTP/2 preface over TLS on 2 targets"
    rows = table(r.stdout)[2:]
    assert rows[0][0] == f"https://localhost:{tls_port}" and rows[0][6] == "h2 ok", rows
    assert all(re.fullmatch(MS, c) for c in rows[0][1:6]), rows
    assert rows[1][6] == "tls: the server did not select h2 (ALPN)", rows
    assert no_h2.requests == []

    r = cli(["probe", "--json", "grpc", *admin], cwd=tmp_path)
    assert r.returncode == 0
    t = json.loads(r.stdout)["targets"][0]
    assert t["error"] is None and t["status"] is None and t["tls_ms"] is None and t["first_byte_ms"] >= 0, t

    r = cli(["probe", "h1", *admin], cwd=tmp_path)
    assert r.returncode == 1
    status = probe_row(r, header_lines=1)[6]
    assert status.startswith("h2: "), status


# ---- against a real gateway --------------------------------------------------------------------


def needs(gw, path):
    """Skips when the gateway's admin API does not have `path` yet."""
    try:
        status = gw.admin_status(path)
    except Exception:
        status = None
    if status == 404:
        pytest.skip(f"the admin API has no {path} yet")
    if path == "/routes?view=table":
        body = gw.admin_request("GET", path)[2]
        if not (isinstance(body, dict) and body.get("routes") and "order" in body["routes"][0]):
            pytest.skip("the admin API does not serve the route table view yet")


@pytest.fixture(scope="module")
def real(menv):
    """One gateway for the tests against the real admin API, with its upstream's backend."""
    up = menv.backend(be.fixed(200, b"ok"), name="users")
    gw = menv.gateway(upstreams={"users": harness.upstream(up, health={"active": {"path": "/healthz",
                                                                                  "interval": "2s"}})},
                      routes=[{"name": "hello", "match": {"path_prefix": "/"}, "respond": {"status": 200}},
                              {"name": "users-api", "match": {"path_prefix": "/users", "methods": ["GET"]},
                               "upstream": "users", "strip_prefix": True, "timeout": "30s"}])
    return gw, up, ["--admin", f"http://127.0.0.1:{gw.admin_port}"]


def test_real_routes(real, tmp_path):
    gw, up, admin = real
    needs(gw, "/routes?view=table")
    r = cli(["routes", *admin], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = table(r.stdout)
    assert rows[1] == ["1", "users-api", "*", "prefix /users", "GET", "upstream users", "strip_prefix, timeout 30s"]
    assert rows[2] == ["2", "hello", "*", "prefix /", "any", "respond 200", "-"]


def test_real_probe(real, tmp_path):
    gw, up, admin = real
    needs(gw, "/upstreams/users")
    r = cli(["probe", "users", *admin], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    row = table(r.stdout)[2]
    assert row[0] == up.address and row[-1] == "200"
    r = cli(["probe", "nope", *admin], cwd=tmp_path)
    assert r.returncode == 1
    assert one_line_error(r) == "sluice: no upstream named 'nope'"


def test_real_health(real, tmp_path):
    gw, up, admin = real
    needs(gw, "/status")
    needs(gw, "/upstreams/users/health")
    r = cli(["health", *admin], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert any(row[:2] == ["users", up.address] for row in table(r.stdout)), r.stdout


def test_real_doctor(real, tmp_path):
    gw, up, admin = real
    needs(gw, "/doctor")
    r = cli(["doctor", *admin], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


def test_real_reload(real, tmp_path):
    gw, up, admin = real
    r = cli(["reload", *admin], cwd=tmp_path)
    if r.returncode == 1 and "answered 404" in r.stderr:
        pytest.skip("the admin API has no POST /reload yet")
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(r"reloaded: generation \d+\n", r.stdout)
