"""Downstream TLS (docs/tls.md): certificates chosen by SNI (exact, wildcard, default), the
version policy (1.2 and 1.3 in, 1.1 out), proxying over TLS with keep-alive, chunked uploads and
large downloads, the handshake timeout, garbage instead of a ClientHello, `sluice check` errors
with positions for bad certificates, certificates reloaded without dropping open connections,
and the sluice_tls_* metrics. Certificates are made at test time with the openssl CLI."""
import hashlib
import json
import re
import shutil
import socket
import ssl
import subprocess
import time
import warnings

import pytest

import backend as be
import harness

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


def _run(*args, cwd):
    subprocess.run(args, cwd=cwd, check=True, capture_output=True)


def _leaf(d, name, cn, sans, days=2, ca="ca"):
    _run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
         f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=d)
    (d / f"{name}.ext").write_text("subjectAltName=" + ",".join(f"DNS:{s}" for s in sans) + "\n")
    _run("openssl", "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
         "-CAcreateserial", "-out", f"{name}.crt", "-days", str(days), "-extfile", f"{name}.ext", cwd=d)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    _run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", "ca.key", "-out", "ca.crt", "-days", "3", "-subj", "/CN=sluice test CA", cwd=d)
    _leaf(d, "a", "a.test", ["a.test"])
    _leaf(d, "a2", "a.test", ["a.test"])  # the same name, another certificate: for the reload
    _leaf(d, "b", "b.test", ["b.test"])
    _leaf(d, "w", "wild", ["*.wild.test"])
    _leaf(d, "expired", "old.test", ["old.test"], days=-1)
    _leaf(d, "soon", "soon.test", ["soon.test"], days=5)
    # mTLS: a client certificate from the test CA, and one from a CA the gateway does not trust
    _leaf(d, "client", "client-one", ["client-one.test"])
    _run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", "rogueca.key", "-out", "rogueca.crt", "-days", "3", "-subj", "/CN=rogue CA", cwd=d)
    _leaf(d, "rogue", "rogue-client", ["rogue.test"], ca="rogueca")
    (d / "garbage.crt").write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    return d


def tls_block(certs, *names):
    return {"certificates": [{"cert": str(certs / f"{n}.crt"), "key": str(certs / f"{n}.key")} for n in names]}


def tls_gateway(env, certs, routes, names=("a", "b", "w"), **top):
    """A gateway with a plain listener (gw.port) and a TLS one (gw.tls_port)."""
    plain, tport = harness.free_port(), harness.free_port()
    listen = [{"address": f"127.0.0.1:{plain}"},
              {"address": f"127.0.0.1:{tport}", "tls": tls_block(certs, *names)}]
    gw = env.gateway(routes=routes, start=False, listen=listen, **top)
    gw.port = plain
    gw.tls_port = tport
    gw.start()
    return gw


def client_ctx(certs, minv=None, maxv=None):
    ctx = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    if minv:
        ctx.minimum_version = minv
    if maxv:
        ctx.maximum_version = maxv
    return ctx


class TlsConn(harness.RawConn):
    """RawConn over TLS: the same strict response parsing."""

    def __init__(self, port, ctx, server_name, timeout=5.0, session=None):
        self.port = port
        self.timeout = harness.slack(timeout)
        raw = socket.create_connection(("127.0.0.1", port), timeout=self.timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = ctx.wrap_socket(raw, server_hostname=server_name, session=session)
        self.reader = harness.SockReader(self.sock)


def peer_cn(port, server_name, certs):
    """The CN of the certificate the gateway presents for `server_name` (None: no SNI)."""
    ctx = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    ctx.check_hostname = False
    with socket.create_connection(("127.0.0.1", port), timeout=harness.slack(5)) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_name) as s:
            cert = s.getpeercert()
    return dict(x[0] for x in cert["subject"])["commonName"], cert["serialNumber"]


def metric(gw, family, **labels):
    _, _, body = gw.admin_get("/metrics")
    total = None
    for line in body.decode().splitlines():
        if not line.startswith(family + "{") and not line.startswith(family + " "):
            continue
        m = re.match(r"^([a-z_]+)(\{(.*)\})? (\S+)$", line)
        assert m, line
        got = dict(re.findall(r'([a-z_]+)="([^"]*)"', m.group(3) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total = (total or 0) + float(m.group(4))
    return total


wait_for = harness.poll_value


RESPOND = [{"name": "hello", "match": {"path_prefix": "/"},
            "respond": {"status": 200, "body": "hello\n", "content_type": "text/plain"}}]


def test_sni_picks_exact_wildcard_and_default(env, certs):
    gw = tls_gateway(env, certs, RESPOND)
    assert peer_cn(gw.tls_port, "a.test", certs)[0] == "a.test"
    assert peer_cn(gw.tls_port, "b.test", certs)[0] == "b.test"
    assert peer_cn(gw.tls_port, "B.Test", certs)[0] == "b.test"
    assert peer_cn(gw.tls_port, "x.wild.test", certs)[0] == "wild"
    # a wildcard covers one label only; unknown names and no SNI get the first certificate
    assert peer_cn(gw.tls_port, "y.x.wild.test", certs)[0] == "a.test"
    assert peer_cn(gw.tls_port, "wild.test", certs)[0] == "a.test"
    assert peer_cn(gw.tls_port, "nobody.test", certs)[0] == "a.test"
    assert peer_cn(gw.tls_port, None, certs)[0] == "a.test"
    # verified clients (hostname checked against the CA-signed certificate) for two hosts
    for host in ("a.test", "b.test", "x.wild.test"):
        with TlsConn(gw.tls_port, client_ctx(certs), host) as c:
            r = c.roundtrip("GET", "/", host=host)
            assert r.status == 200 and r.body == b"hello\n"
            assert c.sock.selected_alpn_protocol() is None  # no ALPN offered, none chosen


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_curl_with_sni_to_two_hosts(env, certs):
    gw = tls_gateway(env, certs, RESPOND)
    for host in ("a.test", "b.test"):
        r = subprocess.run(["curl", "-sS", "-v", "--resolve", f"{host}:{gw.tls_port}:127.0.0.1", "--cacert",
                            str(certs / "ca.crt"), f"https://{host}:{gw.tls_port}/"],
                           capture_output=True, text=True, timeout=harness.slack(15))
        assert r.returncode == 0, r.stderr
        assert r.stdout == "hello\n"
        assert f"CN={host}" in r.stderr
        # curl offers h2 and http/1.1: the listener prefers h2 (docs/http2.md)
        assert "ALPN: server accepted h2" in r.stderr or "ALPN, server accepted to use h2" in r.stderr
        r = subprocess.run(["curl", "-sS", "-v", "--http1.1", "--resolve", f"{host}:{gw.tls_port}:127.0.0.1",
                            "--cacert", str(certs / "ca.crt"), f"https://{host}:{gw.tls_port}/"],
                           capture_output=True, text=True, timeout=harness.slack(15))
        assert r.stdout == "hello\n"
        assert "ALPN: server accepted http/1.1" in r.stderr or "ALPN, server accepted to use http/1.1" in r.stderr


def test_versions_12_and_13_in_11_out(env, certs):
    gw = tls_gateway(env, certs, RESPOND)
    for v in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        with TlsConn(gw.tls_port, client_ctx(certs, v, v), "a.test") as c:
            assert c.sock.version() == {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[v]
            assert c.roundtrip("GET", "/").status == 200
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            old.minimum_version = ssl.TLSVersion.TLSv1
            old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.set_ciphers("ALL:@SECLEVEL=0")
    except (ValueError, ssl.SSLError):
        pytest.skip("this Python/OpenSSL cannot even offer TLS 1.1")
    before = metric(gw, "sluice_tls_handshake_failures_total", reason="version") or 0
    with socket.create_connection(("127.0.0.1", gw.tls_port), timeout=harness.slack(5)) as raw:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            with old.wrap_socket(raw, server_hostname="a.test") as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
                s.recv(100)
    # refused by the server (counted there), not merely by the client library
    assert wait_for(lambda: (metric(gw, "sluice_tls_handshake_failures_total", reason="version") or 0) > before)


def test_proxy_over_tls_keepalive_chunked_upload_and_big_download(env, certs):
    big = bytes(range(256)) * 8192  # 2 MiB
    up = env.backend(be.paths({"/big": be.fixed(200, big), "/": be.echo()}), name="up")
    routes = [{"name": "p", "match": {"path_prefix": "/"}, "upstream": "up"}]
    gw = tls_gateway(env, certs, routes, upstreams={"up": harness.upstream(up)})
    upload = bytes((i * 7) % 251 for i in range(300_000))
    with TlsConn(gw.tls_port, client_ctx(certs), "b.test") as c:
        r = c.roundtrip("GET", "/first?x=1", host="b.test")
        assert r.status == 200 and r.json()["path"] == "/first"
        pieces = [upload[i:i + 65_000] for i in range(0, len(upload), 65_000)]
        r = c.roundtrip("POST", "/upload", headers=[("Transfer-Encoding", "chunked")],
                        body=harness.chunked_body(pieces), host="b.test")
        assert r.status == 200
        assert r.json()["body_len"] == len(upload)
        r = c.roundtrip("GET", "/big", host="b.test")
        assert r.status == 200 and hashlib.sha256(r.body).digest() == hashlib.sha256(big).digest()
        r = c.roundtrip("GET", "/last", host="b.test")
        assert r.status == 200
    reqs = up.wait_requests(4)
    assert len({q.conn.id for q in reqs}) >= 1
    # the upstream learns the client's scheme; a client's own claim is replaced, not believed
    for q in reqs:
        assert q.headers.get_all("X-Forwarded-Proto") == ["https"], q.headers
        assert q.header("Forwarded").endswith("proto=https;host=\"b.test\""), q.header("Forwarded")
    r = harness.request(gw.port, "GET", "/plain", headers={"X-Forwarded-Proto": "https"})
    assert r.status == 200
    plain = up.wait_requests(5)[-1]
    assert plain.headers.get_all("X-Forwarded-Proto") == ["http"], plain.headers
    posted = [q for q in reqs if q.method == "POST"][0]
    assert bytes(posted.body) == upload
    # the same access log as plain HTTP: one line per request, with the right sizes
    def logged():
        return [ln for ln in gw.access_log() if ln.get("path") in ("/first", "/upload", "/big", "/last")]

    lines = wait_for(lambda: len(logged()) == 4 and logged())
    assert lines and all(ln["status"] == 200 for ln in lines), logged()
    assert [ln["bytes_in"] > len(upload) for ln in lines] == [False, True, False, False]
    assert lines[2]["bytes_out"] > len(big)


def test_handshake_timeout_and_garbage_do_not_hurt_others(env, certs):
    gw = tls_gateway(env, certs, RESPOND, timeouts={"client_header": "1s"})
    silent = socket.create_connection(("127.0.0.1", gw.tls_port), timeout=harness.slack(5))
    garbage = socket.create_connection(("127.0.0.1", gw.tls_port), timeout=harness.slack(5))
    garbage.sendall(bytes(range(256)) * 8)
    plain_http = socket.create_connection(("127.0.0.1", gw.tls_port), timeout=harness.slack(5))
    plain_http.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
    # a good client is served meanwhile
    with TlsConn(gw.tls_port, client_ctx(certs), "a.test") as c:
        assert c.roundtrip("GET", "/").status == 200
    for s in (garbage, plain_http):
        s.settimeout(harness.slack(3))
        data = b""
        try:
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        except ConnectionResetError:
            pass
        assert b"HTTP/1.1" not in data  # at most a TLS alert, never an answer in the clear
        s.close()
    started = time.monotonic()
    silent.settimeout(harness.slack(5))
    try:
        assert silent.recv(100) == b""
    except ConnectionResetError:
        pass
    assert time.monotonic() - started < harness.slack(4)
    silent.close()
    assert wait_for(lambda: metric(gw, "sluice_tls_handshake_failures_total", reason="timeout"))
    assert wait_for(lambda: metric(gw, "sluice_tls_handshake_failures_total", reason="protocol"))
    assert gw.alive()
    with TlsConn(gw.tls_port, client_ctx(certs), "b.test") as c:
        assert c.roundtrip("GET", "/").status == 200
    # the plain listener of the same gateway is untouched
    assert gw.request("GET", "/").status == 200


def test_client_dying_mid_handshake(env, certs):
    gw = tls_gateway(env, certs, RESPOND)
    # a ClientHello's first bytes, then a reset; many times: nothing leaks, nothing crashes
    hello = bytes.fromhex("160301020001")  # record header + handshake type, then silence
    for _ in range(50):
        s = socket.create_connection(("127.0.0.1", gw.tls_port), timeout=harness.slack(5))
        s.sendall(hello)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
    assert wait_for(lambda: (metric(gw, "sluice_tls_handshake_failures_total", reason="closed") or 0) >= 50)
    with TlsConn(gw.tls_port, client_ctx(certs), "a.test") as c:
        assert c.roundtrip("GET", "/").status == 200


def yaml_line_of(path, needle):
    """The last line holding `needle` (the second certificate is the one under test)."""
    found = [i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line]
    assert found, f"{needle} not in {path}"
    return found[-1]


@pytest.mark.parametrize("cert,key,part,message", [
    ("missing.crt", "a.key", "cert", "cannot read certificate"),
    ("a.crt", "missing.key", "key", "cannot read key"),
    ("a.crt", "b.key", "key", "does not match certificate"),
    ("expired.crt", "expired.key", "cert", "expired on"),
    ("garbage.crt", "a.key", "cert", "holds no PEM certificate"),
    ("a.crt", "a.crt", "key", "holds no PEM private key"),
])
def test_check_reports_bad_certificates_with_positions(tmp_path, certs, cert, key, part, message):
    cfg = tmp_path / "sluice.yaml"
    port = harness.free_port()
    cfg.write_text(harness.to_yaml({
        "listen": [{"address": f"127.0.0.1:{port}", "tls": {"certificates": [
            {"cert": str(certs / "b.crt"), "key": str(certs / "b.key")},
            {"cert": str(certs / cert), "key": str(certs / key)}]}}],
        "routes": RESPOND}))
    r = harness.run_cli(["check", "-c", str(cfg)])
    assert r.returncode == 1, r.stdout + r.stderr
    out = r.stdout + r.stderr
    line = yaml_line_of(cfg, f'{part}: "{certs / (cert if part == "cert" else key)}"')
    m = re.search(rf"{re.escape(str(cfg))}:(\d+):(\d+): .*{re.escape(message)}", out)
    assert m, out
    assert int(m.group(1)) == line, out
    assert int(m.group(2)) > 1


def test_check_accepts_good_tls_and_relative_paths(tmp_path, certs):
    for n in ("a.crt", "a.key"):
        shutil.copy(certs / n, tmp_path / n)
    cfg = tmp_path / "sluice.yaml"
    cfg.write_text(harness.to_yaml({
        "listen": [{"address": f"127.0.0.1:{harness.free_port()}",
                    "tls": {"certificates": [{"cert": "a.crt", "key": "a.key"}], "min_version": "1.3"}}],
        "routes": RESPOND}))
    r = harness.run_cli(["check", "-c", str(cfg)], cwd="/")
    assert r.returncode == 0, r.stdout + r.stderr
    cfg.write_text(cfg.read_text().replace('"1.3"', '"1.1"'))
    r = harness.run_cli(["check", "-c", str(cfg)], cwd="/")
    assert r.returncode == 1 and "min_version" in r.stdout + r.stderr


def test_min_version_13_refuses_12(env, certs):
    tport = harness.free_port()
    listen = [{"address": f"127.0.0.1:{tport}", "tls": dict(tls_block(certs, "a"), min_version="1.3")}]
    env.gateway(routes=RESPOND, listen=listen)
    with pytest.raises(ssl.SSLError):
        TlsConn(tport, client_ctx(certs, maxv=ssl.TLSVersion.TLSv1_2), "a.test")
    with TlsConn(tport, client_ctx(certs), "a.test") as c:
        assert c.sock.version() == "TLSv1.3"


def test_reload_swaps_certificates_without_dropping_connections(env, certs):
    gw = tls_gateway(env, certs, RESPOND, names=("a", "b"))
    cn, serial_before = peer_cn(gw.tls_port, "a.test", certs)
    old = TlsConn(gw.tls_port, client_ctx(certs), "a.test")
    assert old.roundtrip("GET", "/").status == 200
    cfg = dict(gw.config)
    cfg["listen"] = [gw.config["listen"][0],
                     {"address": f"127.0.0.1:{gw.tls_port}", "tls": tls_block(certs, "a2", "b")}]
    gw.reload(cfg)
    assert wait_for(lambda: peer_cn(gw.tls_port, "a.test", certs)[1] != serial_before)
    # the connection opened before the reload keeps working, on its old certificate
    assert old.roundtrip("GET", "/").status == 200
    assert old.sock.getpeercert()["serialNumber"] == serial_before
    old.close()
    # a reload with a broken certificate is refused; the running one keeps serving
    serial_now = peer_cn(gw.tls_port, "a.test", certs)[1]
    bad = dict(cfg)
    bad["listen"] = [cfg["listen"][0], {"address": f"127.0.0.1:{gw.tls_port}", "tls": tls_block(certs, "expired")}]
    gw.write_config(bad)
    status, _, body = gw.admin_request("POST", "/reload")
    assert status >= 400, body
    assert "expired" in str(body)
    assert peer_cn(gw.tls_port, "a.test", certs)[1] == serial_now


def test_tls_metrics_and_expiry_gauge(env, certs):
    gw = tls_gateway(env, certs, RESPOND)
    with TlsConn(gw.tls_port, client_ctx(certs), "a.test") as c:
        assert c.roundtrip("GET", "/").status == 200
    listener = f"127.0.0.1:{gw.tls_port}"
    assert wait_for(lambda: metric(gw, "sluice_tls_handshakes_total", listener=listener))
    left = metric(gw, "sluice_tls_certificate_expiry_seconds", listener=listener, name="a.test")
    assert left is not None and 0 < left <= 2 * 86400 + 60
    assert metric(gw, "sluice_tls_certificate_expiry_seconds", listener=listener, name="*.wild.test")


def test_doctor_warns_of_a_certificate_near_its_end(env, certs):
    gw = tls_gateway(env, certs, RESPOND, names=("a", "soon"))
    listener = f"127.0.0.1:{gw.tls_port}"

    def findings():
        status, _, body = gw.admin_get("/doctor")
        assert status == 200
        return {f["evidence"].get("certificate"): f for f in json.loads(body)["findings"]
                if f["where"].get("listener") == listener}

    got = wait_for(lambda: len(findings()) == 2 and findings(), timeout=10)
    assert got and set(got) == {"a.test", "soon.test"}, got
    soon = got["soon.test"]
    assert soon["severity"] == "warning" and soon["cause"] == "connectivity"
    assert 4 * 86400 < soon["evidence"]["seconds_left"] <= 5 * 86400 + 60
    assert "soon.test" in soon["summary"] and "reload" in soon["action"]
    # a.test was made for 2 days, so it is already under the critical bound
    assert got["a.test"]["severity"] == "critical"
    left = metric(gw, "sluice_tls_certificate_expiry_seconds", listener=listener, name="soon.test")
    assert 4 * 86400 < left <= 5 * 86400 + 60


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_session_tickets_resume_on_every_worker(env, certs, version):
    gw = tls_gateway(env, certs, RESPOND, workers=2)
    ctx = client_ctx(certs, version, version)
    with TlsConn(gw.tls_port, ctx, "a.test") as c:
        assert c.roundtrip("GET", "/").status == 200  # TLS 1.3 tickets arrive after the handshake
        session = c.sock.session
        assert not c.sock.session_reused
    # new connections land on either worker (SO_REUSEPORT): the ticket keys are shared
    for _ in range(12):
        with TlsConn(gw.tls_port, ctx, "a.test", session=session) as c:
            assert c.roundtrip("GET", "/").status == 200
            assert c.sock.session_reused
            session = c.sock.session
    listener = f"127.0.0.1:{gw.tls_port}"
    assert wait_for(lambda: metric(gw, "sluice_tls_handshakes_total", listener=listener, resumed="true") == 12)
    # a ticket from another process's keys does not resume (but still connects)
    other = tls_gateway(env, certs, RESPOND)
    with TlsConn(other.tls_port, ctx, "a.test", session=session) as c:
        assert c.roundtrip("GET", "/").status == 200
        assert not c.sock.session_reused


def test_pipelining_continue_and_streamed_chunked_over_tls(env, certs):
    up = env.backend(be.paths({"/stream": be.stream(3_000_000, mode="chunked"), "/sink": be.sink(),
                               "/": be.echo()}), name="up")
    routes = [{"name": "p", "match": {"path_prefix": "/"}, "upstream": "up"}]
    gw = tls_gateway(env, certs, routes, upstreams={"up": harness.upstream(up)})
    with TlsConn(gw.tls_port, client_ctx(certs), "a.test") as c:
        # three requests in one TLS write (often one record): answered in order
        c.send(b"".join(harness.build_request("GET", f"/pipe/{i}", host="a.test") for i in range(3)))
        for i in range(3):
            r = c.read_response()
            assert r.status == 200 and r.json()["path"] == f"/pipe/{i}"
        # Expect: 100-continue: the interim answer comes through TLS before the body is sent
        body = b"x" * 100_000
        c.send(harness.build_request("POST", "/sink", [("Expect", "100-continue"),
                                                       ("Content-Length", str(len(body)))], host="a.test"))
        interim = c.read_head(timeout=5)
        assert interim.status == 100
        c.send(body)
        r = c.read_response()
        assert r.status == 200 and r.json()["bytes"] == len(body)
        # a streamed chunked download, relayed chunk by chunk
        r = c.roundtrip("GET", "/stream", host="a.test")
        assert r.status == 200 and len(r.body) == 3_000_000
        assert r.body[:256] == be.PATTERN[:256]


@pytest.mark.deadline(60)
def test_slow_tls_reader_is_backpressured(env, certs):
    """A client that reads a big response slowly: sluice must not buffer it whole (the upstream
    is paused instead), and the bytes arrive intact."""
    total = 40 * harness.MiB
    up = env.backend(be.stream(total), name="up")
    routes = [{"name": "p", "match": {"path_prefix": "/"}, "upstream": "up"}]
    gw = tls_gateway(env, certs, routes, upstreams={"up": harness.upstream(up)}, workers=1)
    rss_before = gw.rss_kb()
    c = TlsConn(gw.tls_port, client_ctx(certs), "a.test", timeout=30)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    c.request("GET", "/big", host="a.test")
    head = c.read_head(timeout=10)
    assert head.status == 200
    time.sleep(harness.slack(1.0))  # let sluice fill whatever it buffers
    grown_kb = gw.rss_kb() - rss_before
    assert grown_kb < 16 * 1024, f"sluice grew by {grown_kb} KiB while the client was not reading"
    got = len(c.reader.buf) - c.reader.pos
    h = hashlib.sha256(bytes(c.reader.buf[c.reader.pos:]))
    while got < total:
        data = c.sock.recv(1 << 20)
        assert data, f"closed after {got} bytes"
        h.update(data)
        got += len(data)
    assert got == total
    want = hashlib.sha256()
    for i in range(0, total, len(be.PATTERN)):
        want.update(be.PATTERN[: min(len(be.PATTERN), total - i)])
    assert h.digest() == want.digest()
    c.close()


def mtls_client(certs, who=None):
    ctx = client_ctx(certs)
    if who:
        ctx.load_cert_chain(str(certs / f"{who}.crt"), str(certs / f"{who}.key"))
    return ctx


def served(port, ctx):
    """True when a request over a TLS connection made with `ctx` is answered (TLS 1.3 clients
    finish their side of the handshake before the server has checked their certificate, so a
    refusal shows on the first read)."""
    try:
        with TlsConn(port, ctx, "a.test") as c:
            return c.roundtrip("GET", "/").status == 200
    except (ssl.SSLError, ConnectionError, harness.ConnectionClosed, OSError):
        return False


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_mtls_required_and_optional(env, certs, version):
    required, optional = harness.free_port(), harness.free_port()
    block = tls_block(certs, "a")
    listen = [{"address": f"127.0.0.1:{required}", "tls": dict(block, client_ca=str(certs / "ca.crt"))},
              {"address": f"127.0.0.1:{optional}",
               "tls": dict(block, client_ca=str(certs / "ca.crt"), client_auth="optional")}]
    gw = env.gateway(routes=RESPOND, listen=listen)

    def ctx(who=None):
        c = mtls_client(certs, who)
        c.minimum_version = c.maximum_version = version
        return c

    assert served(required, ctx("client"))
    assert not served(required, ctx())  # no certificate
    assert not served(required, ctx("rogue"))  # a certificate from another CA
    assert served(optional, ctx())
    assert served(optional, ctx("client"))
    assert not served(optional, ctx("rogue"))  # offered, so it must verify
    assert wait_for(lambda: (metric(gw, "sluice_tls_handshake_failures_total", listener=f"127.0.0.1:{required}",
                                    reason="certificate") or 0) >= 2)


def test_check_reports_a_bad_client_ca(tmp_path, certs):
    cfg = tmp_path / "sluice.yaml"
    cfg.write_text(harness.to_yaml({
        "listen": [{"address": f"127.0.0.1:{harness.free_port()}",
                    "tls": dict(tls_block(certs, "a"), client_ca=str(certs / "a.key"))}],
        "routes": RESPOND}))
    r = harness.run_cli(["check", "-c", str(cfg)])
    assert r.returncode == 1
    line = yaml_line_of(cfg, "client_ca:")
    assert re.search(rf":{line}:\d+: tls: client_ca: .*no usable PEM CA certificate", r.stdout + r.stderr), r.stdout


# ---- the gateway as a TLS client: JWKS over https ----------------------------------------------

def _https_jwks_server(certs, name, jwks):
    """A JWKS endpoint over TLS on 127.0.0.1 with the certificate `name`; returns (server, port)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(certs / f"{name}.crt"), str(certs / f"{name}.key"))
    return harness.serve_json(jwks, ssl_context=ctx)


@pytest.mark.deadline(90)
def test_jwks_over_https_is_verified(env, certs, tmp_path):
    """jwks_url over https: fetched when the server's certificate chains to the trusted CA
    (SSL_CERT_FILE) and names the URL's host; refused when it chains to another CA, or names
    another host, and the tokens of that issuer are then refused with the outage logged."""
    from test_89_auth import rs256, rsa_key
    d = certs
    (d / "ip.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name, ca in (("idp-good", "ca"), ("idp-rogue", "rogueca")):
        _run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
             f"{name}.key", "-out", f"{name}.csr", "-subj", "/CN=idp", cwd=d)
        _run("openssl", "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", "ip.ext", cwd=d)
    key, jwk = rsa_key(tmp_path, "k1")
    servers = [_https_jwks_server(d, n, {"keys": [jwk]}) for n in ("idp-good", "idp-rogue", "a")]
    try:
        (good, gport), (_, rport), (_, aport) = servers
        iss = "https://idp.test"
        issuers = {n: {"issuer": iss, "jwks_url": f"https://127.0.0.1:{p}/jwks", "jwks_refresh": "1s",
                       "jwks_timeout": "1s"}
                   for n, p in (("good", gport), ("rogue", rport), ("wrongname", aport))}
        up = env.backend(be.echo(), name="up")
        gw = env.gateway(upstreams={"app": harness.upstream(up)}, jwt_issuers=issuers, start=False,
                         routes=[{"name": n, "match": {"path_prefix": f"/{n}"}, "upstream": "app",
                                  "auth": [{"jwt": n}]} for n in issuers])
        gw.extra_env["SSL_CERT_FILE"] = str(d / "ca.crt")
        gw.start()
        tok = rs256({"iss": iss, "sub": "svc", "exp": int(time.time()) + 120}, key, "k1")
        auth = {"Authorization": "Bearer " + tok}
        assert wait_for(lambda: gw.request("GET", "/good/x", headers=auth).status == 200, 10), gw.log_tail()
        for n in ("rogue", "wrongname"):
            r = gw.request("GET", f"/{n}/x", headers=auth)
            assert r.status == 401, (n, r)
        log = gw.stderr_path.read_text()
        for n in ("rogue", "wrongname"):
            assert re.search(rf"jwks for {n}: fetch failed \(TLS handshake failed", log), log[-3000:]
        assert "jwks for good: fetch failed" not in log, log[-3000:]
    finally:
        for srv, _ in servers:
            srv.shutdown()
            srv.server_close()


# ---- OCSP stapling ----------------------------------------------------------------------------------


def _ocsp_response(d, cert, out, status="V", minutes=None):
    """A DER OCSP response about `cert` signed by the test CA (openssl's own responder code)."""
    serial = subprocess.run(["openssl", "x509", "-in", f"{cert}.crt", "-noout", "-serial"], cwd=d, check=True,
                            capture_output=True, text=True).stdout.strip().split("=")[1]
    _run("openssl", "ocsp", "-issuer", "ca.crt", "-cert", f"{cert}.crt", "-reqout", f"{out}.req", "-no_nonce", cwd=d)
    exp = time.strftime("%y%m%d%H%M%SZ", time.gmtime(time.time() + 2 * 86400))
    revoked = time.strftime("%y%m%d%H%M%SZ", time.gmtime(time.time() - 3600)) if status == "R" else ""
    (d / f"{out}.index").write_text(f"{status}\t{exp}\t{revoked}\t{serial}\tunknown\t/CN=x\n")
    validity = ["-nmin", str(minutes)] if minutes else ["-ndays", "1"]
    _run("openssl", "ocsp", "-index", f"{out}.index", "-rsigner", "ca.crt", "-rkey", "ca.key", "-CA", "ca.crt",
         "-reqin", f"{out}.req", "-respout", f"{out}.der", *validity, cwd=d)
    return d / f"{out}.der"


def _s_client_status(port, name, certs):
    r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", name, "-status",
                        "-CAfile", str(certs / "ca.crt")], input="", capture_output=True, text=True,
                       timeout=harness.slack(15))
    return r.stdout


def test_ocsp_staple_served_per_certificate_and_checked_at_load(env, certs, tmp_path):
    good = _ocsp_response(certs, "a", "a-good")
    tport = harness.free_port()
    tls = tls_block(certs, "a", "b")
    tls["certificates"][0]["ocsp"] = str(good)
    gw = env.gateway(routes=RESPOND, start=False)
    gw.config["listen"].append({"address": f"127.0.0.1:{tport}", "tls": tls})
    gw.start()
    for proto in ([], ["-tls1_2"]):
        out = _s_client_status(tport, "a.test", certs) if not proto else subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{tport}", "-servername", "a.test", "-status", "-tls1_2",
             "-CAfile", str(certs / "ca.crt")], input="", capture_output=True, text=True,
            timeout=harness.slack(15)).stdout
        assert "OCSP Response Status: successful" in out and "Cert Status: good" in out, out
    # b.test has no staple: the client asked and got none
    out = _s_client_status(tport, "b.test", certs)
    assert "OCSP response: no response sent" in out, out
    # a fresh staple is healthy for the doctor; one an hour from stale is a finding
    def ocsp_findings():
        status, _, body = gw.admin_get("/doctor")
        assert status == 200
        return [f for f in json.loads(body)["findings"] if "OCSP" in f["summary"]]

    assert not ocsp_findings()
    soon = _ocsp_response(certs, "a", "a-soon", minutes=60)
    cfg = dict(gw.config)
    cfg["listen"][1]["tls"]["certificates"][0]["ocsp"] = str(soon)
    gw.reload(cfg)
    found = wait_for(ocsp_findings)
    assert found and found[0]["where"]["listener"] == f"127.0.0.1:{tport}", found
    assert found[0]["cause"] == "connectivity" and "goes stale at" in found[0]["summary"]
    # bad staples are refused with the position of the `ocsp:` key
    revoked = _ocsp_response(certs, "a", "a-revoked", status="R")
    about_b = _ocsp_response(certs, "b", "b-good")
    for path, message in ((revoked, "says the certificate was revoked"), (about_b, "is not about this certificate"),
                          (certs / "a.crt", "is not a DER OCSP response"), (certs / "nope.der", "cannot read")):
        cfg = tmp_path / "ocsp.yaml"
        cfg.write_text(harness.to_yaml({"listen": [{"address": f"127.0.0.1:{harness.free_port()}", "tls": {
            "certificates": [{"cert": str(certs / "a.crt"), "key": str(certs / "a.key"), "ocsp": str(path)}]}}],
            "routes": RESPOND}))
        r = harness.run_cli(["check", "-c", str(cfg)])
        out = r.stdout + r.stderr
        line = yaml_line_of(cfg, f'ocsp: "{path}"')
        m = re.search(rf"{re.escape(str(cfg))}:(\d+):(\d+): tls: .*{re.escape(message)}", out)
        assert r.returncode == 1 and m and int(m.group(1)) == line, out
