"""Upstream TLS (docs/tls.md "Upstream TLS"): the gateway as a verifying TLS client of its
upstreams. A Python ssl backend (the harness backend with each accepted socket wrapped) checks:
verification against a CA file, a wrong CA and a name mismatch refused as
upstream_connect_failed with the OpenSSL reason in the access log, verify: false, SNI sent
(configured and derived), client certificates, keep-alive reuse and session resumption, load,
a backend dying mid-response or during the handshake, a WebSocket tunnel over TLS, a large
body, TLS health probes, and `sluice check` errors with positions. Certificates are made at
test time with the openssl CLI."""
import hashlib
import json
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time

import pytest

import backend as be
import harness

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


def _run(*args, cwd):
    subprocess.run(args, cwd=cwd, check=True, capture_output=True)


def _ca(d, name, cn):
    _run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "3", "-subj", f"/CN={cn}", cwd=d)


def _leaf(d, name, cn, sans, ca="ca", days=2):
    _run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
         f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=d)
    (d / f"{name}.ext").write_text("subjectAltName=" + ",".join(sans) + "\n")
    _run("openssl", "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
         "-CAcreateserial", "-out", f"{name}.crt", "-days", str(days), "-extfile", f"{name}.ext", cwd=d)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("upcerts")
    _ca(d, "ca", "upstream test CA")
    _ca(d, "otherca", "some other CA")
    _ca(d, "clientca", "client CA")
    _leaf(d, "server", "backend.test", ["DNS:backend.test", "DNS:localhost", "IP:127.0.0.1"])
    _leaf(d, "client", "sluice-gateway", ["DNS:gateway.test"], ca="clientca")
    _leaf(d, "client2", "another", ["DNS:another.test"], ca="clientca")
    # self-signed, for verify: false
    _run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", "self.key", "-out", "self.crt", "-days", "2", "-subj", "/CN=self", cwd=d)
    (d / "garbage.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    return d


class TLSBackend(be.Backend):
    """The harness backend behind TLS: each accepted socket is wrapped (server side) in its own
    serving thread, then served as usual. Counts handshakes, resumptions and the SNI seen."""

    def __init__(self, ctx, handler=None, name="tlsbackend"):
        self.ctx = ctx
        self.handshakes = 0
        self.resumed = 0
        self.snis = []
        self.tls_errors = []
        ctx.sni_callback = self._on_sni
        super().__init__(handler, name=name)

    def _on_sni(self, sslobj, name, ctx):
        with self.lock:
            self.snis.append(name)
        return None

    def _serve(self, sock, rec):
        sock.settimeout(10)
        try:
            ssock = self.ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            ssock.do_handshake()
        except (ssl.SSLError, OSError) as e:
            with self.lock:
                self.tls_errors.append(str(e))
            try:
                # As a careful server does (nginx's lingering close): the alert, then FIN, and
                # what the client already sent is read away, so no RST overtakes the alert.
                ssock.shutdown(socket.SHUT_WR)
                ssock.settimeout(0.5)
                while ssock.recv(65536):
                    pass
            except (OSError, NameError):
                pass
            try:
                ssock.close()
            except (OSError, NameError):
                pass
            rec.closed.set()
            return
        with self.lock:
            self.handshakes += 1
            self.resumed += 1 if ssock.session_reused else 0
            self._live.add(ssock)
        super()._serve(ssock, rec)


def server_ctx(certs, cert="server", client_ca=None, maxv=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(certs / f"{cert}.crt"), str(certs / f"{cert}.key"))
    if client_ca:
        ctx.load_verify_locations(str(certs / f"{client_ca}.crt"))
        ctx.verify_mode = ssl.CERT_REQUIRED
    if maxv:
        ctx.maximum_version = maxv
    return ctx


def tls_backend(env, certs, handler=None, **kw):
    b = TLSBackend(server_ctx(certs, **kw), handler or be.echo())
    env.backends.append(b)
    return b


def gw_for(env, b, tls, address=None, **up):
    cfg = {"targets": [{"address": address or b.address}], "tls": tls}
    cfg.update(up)
    return env.gateway(routes=[{"name": "r", "match": {"path_prefix": "/"}, "upstream": "u"}],
                       upstreams={"u": cfg})


def detail_of(gw, resp):
    rid = resp.header("x-request-id")
    entries = gw.wait_access_log(lambda e: e.get("request_id") == rid, 1)
    return entries[0].get("detail", "") if entries else ""


# ---- verification -----------------------------------------------------------------------------


def test_proxy_with_ca_file(env, certs):
    b = tls_backend(env, certs, be.fixed(200, b"hello over tls", headers=[("X-B", "1")]))
    gw = gw_for(env, b, {"ca": str(certs / "ca.crt")})
    r = harness.request(gw.port, "GET", "/x?y=1")
    assert r.status == 200 and r.body == b"hello over tls"
    assert r.header("x-b") == "1"
    req = b.wait_requests(1)[0]
    assert req.target == "/x?y=1"
    # an IP target: no SNI (RFC 6066), and the certificate matched on its IP SAN
    assert b.snis == [None]


def test_https_target_form(env, certs):
    """`address: https://host:port` is a TLS target (TLS on with the upstream's `tls` or its
    defaults); the address everywhere else is host:port."""
    b = tls_backend(env, certs, be.fixed(200, b"via https://"))
    gw = gw_for(env, b, {"ca": str(certs / "ca.crt")}, address=f"https://127.0.0.1:{b.port}")
    r = harness.request(gw.port, "GET", "/")
    assert r.body == b"via https://"
    rid = r.header("x-request-id")
    e = gw.wait_access_log(lambda e: e.get("request_id") == rid, 1)[0]
    assert e["target"] == b.address, e


def test_ca_relative_to_config_file(env, certs):
    b = tls_backend(env, certs, be.fixed(200, b"rel"))
    gw = env.gateway(start=False, routes=[{"name": "r", "match": {"path_prefix": "/"}, "upstream": "u"}],
                     upstreams={"u": {"targets": [{"address": b.address}], "tls": {"ca": "ca.crt"}}})
    shutil.copy(certs / "ca.crt", gw.dir / "ca.crt")
    gw.start()
    assert harness.request(gw.port, "GET", "/").body == b"rel"


def test_wrong_ca_is_connect_failure(env, certs):
    b = tls_backend(env, certs)
    gw = gw_for(env, b, {"ca": str(certs / "otherca.crt")})
    r = harness.request(gw.port, "GET", "/")
    harness.assert_gateway_error(r, 502, "upstream_connect_failed")
    assert "tls: certificate verify failed: unable to get local issuer certificate" in detail_of(gw, r)
    assert b"certificate" not in r.body  # the reason is the log's, not the client's
    assert b.requests == []
    for _ in range(5):
        harness.request(gw.port, "GET", "/")
    # stderr says it once per target (not per request), with the reason
    warn = f"upstream u target {b.address}: tls: certificate verify failed: unable to get local issuer certificate"
    assert gw.stderr_path.read_text().count(warn) == 1, gw.stderr_path.read_text()
    # the system trust store does not know the test CA either
    gw2 = gw_for(env, b, True)
    r = harness.request(gw2.port, "GET", "/")
    harness.assert_gateway_error(r, 502, "upstream_connect_failed")
    assert "certificate verify failed" in detail_of(gw2, r)
    assert gw.alive() and gw2.alive()


def test_verify_false_against_self_signed(env, certs):
    b = tls_backend(env, certs, be.fixed(200, b"self"), cert="self")
    gw = gw_for(env, b, {"verify": False})
    assert harness.request(gw.port, "GET", "/").body == b"self"
    assert "upstream u: tls.verify is false" in gw.stderr_path.read_text()
    # ... while verifying refuses it
    gw2 = gw_for(env, b, {"ca": str(certs / "ca.crt")})
    harness.assert_gateway_error(harness.request(gw2.port, "GET", "/"), 502, "upstream_connect_failed")


def test_plain_upstream_to_tls_backend_and_back(env, certs):
    """A plain upstream and a TLS one to the same TLS address never share a connection."""
    b = tls_backend(env, certs, be.fixed(200, b"ok"))
    gw = env.gateway(routes=[{"name": "t", "match": {"path_prefix": "/t"}, "upstream": "t"},
                             {"name": "p", "match": {"path_prefix": "/p"}, "upstream": "p"}],
                     upstreams={"t": {"targets": [{"address": b.address}], "tls": {"ca": str(certs / "ca.crt")}},
                                "p": {"targets": [{"address": b.address}]}},
                     workers=1)
    with harness.RawConn(gw.port) as c:
        for _ in range(3):
            assert c.roundtrip("GET", "/t").status == 200
            r = c.roundtrip("GET", "/p")
            assert r.status == 502  # plain HTTP to a TLS server: not a response
            assert c.roundtrip("GET", "/t").status == 200


def test_reload_picks_up_new_ca_file(env, certs):
    """The same config text, a CA file with new contents: after the reload, new connections
    verify with it (the proxy takes the context of the snapshot it serves, and pools are keyed
    by the context's contents, so the old pool is not reused)."""
    b = tls_backend(env, certs, be.fixed(200, b"rotated"))
    gw = env.gateway(start=False, routes=[{"name": "r", "match": {"path_prefix": "/"}, "upstream": "u"}],
                     upstreams={"u": {"targets": [{"address": b.address}], "tls": {"ca": "trust.pem"}}})
    (gw.dir / "trust.pem").write_bytes((certs / "otherca.crt").read_bytes())
    gw.start()
    harness.assert_gateway_error(harness.request(gw.port, "GET", "/"), 502, "upstream_connect_failed")
    (gw.dir / "trust.pem").write_bytes((certs / "ca.crt").read_bytes())
    status, _, body = gw.admin_request("POST", "/reload")
    assert status == 200, body
    harness.wait_for(lambda: harness.request(gw.port, "GET", "/").status == 200, 5, "the new CA in use")
    assert harness.request(gw.port, "GET", "/").body == b"rotated"
    assert f"upstream u target {b.address}: tls handshakes succeed again" in gw.stderr_path.read_text()


# ---- SNI ----------------------------------------------------------------------------------------


def test_sni_configured_and_derived(env, certs):
    b = tls_backend(env, certs, be.fixed(200, b"sni"))
    gw = gw_for(env, b, {"ca": str(certs / "ca.crt"), "sni": "backend.test"})
    assert harness.request(gw.port, "GET", "/").status == 200
    assert b.snis[-1] == "backend.test"
    gw2 = gw_for(env, b, {"ca": str(certs / "ca.crt")}, address=f"localhost:{b.port}")
    r = None
    for _ in range(50):  # the name resolves asynchronously after start
        r = harness.request(gw2.port, "GET", "/")
        if r.status == 200:
            break
        time.sleep(0.1)
    assert r.status == 200
    assert b.snis[-1] == "localhost"


def test_sni_mismatch_fails_verification(env, certs):
    b = tls_backend(env, certs)
    gw = gw_for(env, b, {"ca": str(certs / "ca.crt"), "sni": "wrong.test"})
    r = harness.request(gw.port, "GET", "/")
    harness.assert_gateway_error(r, 502, "upstream_connect_failed")
    assert "hostname mismatch" in detail_of(gw, r)
    assert "wrong.test" in b.snis


# ---- client certificates ----------------------------------------------------------------------


@pytest.mark.parametrize("maxv", [None, ssl.TLSVersion.TLSv1_2], ids=["tls13", "tls12"])
def test_client_certificate(env, certs, maxv):
    b = tls_backend(env, certs, be.fixed(200, b"mtls"), client_ca="clientca", maxv=maxv)
    ok = gw_for(env, b, {"ca": str(certs / "ca.crt"), "client_cert": str(certs / "client.crt"),
                         "client_key": str(certs / "client.key")})
    assert harness.request(ok.port, "GET", "/").body == b"mtls"
    none = gw_for(env, b, {"ca": str(certs / "ca.crt")})
    r = harness.request(none.port, "GET", "/")
    harness.assert_gateway_error(r, 502, "upstream_connect_failed")
    d = detail_of(none, r)
    assert d.startswith("tls: ") and ("certificate" in d or "handshake failure" in d), d
    assert b.requests and len(b.requests) == 1  # only the accepted gateway's request was served


# ---- connections ------------------------------------------------------------------------------


def test_keepalive_reuse(env, certs):
    b = tls_backend(env, certs, be.fixed(200, b"k" * 100))
    gw = gw_for(env, b, {"ca": str(certs / "ca.crt")})
    with harness.RawConn(gw.port) as c:
        for _ in range(50):
            r = c.roundtrip("GET", "/")
            assert r.status == 200 and r.body == b"k" * 100
    assert b.handshakes < 5, b.handshakes
    assert len(b.requests) == 50


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "plain"])
def test_server_closing_pooled_connections(env, certs, tls):
    """The backend closes each connection after its response without saying so: the pooled
    connection is dropped when its close arrives, or, when the close races the next request,
    that request is retried once on a fresh connection, whose response (head and body in
    separate reads) must not be taken for cut short by the old connection's EOF."""
    def h(ex):
        ex.send_head(200, [("Content-Length", "4")])
        time.sleep(0.005)
        ex.send(b"once")
        time.sleep(0.01)
        ex.close()

    if tls:
        b = tls_backend(env, certs, h)
        gw = gw_for(env, b, {"ca": str(certs / "ca.crt")})
    else:
        b = env.backend(h)
        gw = env.gateway(routes=[{"name": "r", "match": {"path_prefix": "/"}, "upstream": "u"}],
                         upstreams={"u": {"targets": [{"address": b.address}]}})
    with harness.RawConn(gw.port) as c:
        for i in range(30):
            r = c.roundtrip("GET", f"/{i}")
            assert r.status == 200 and r.body == b"once", (i, r)
            time.sleep(0.012 if i % 2 else 0.0)
    assert len(b.requests) >= 30


def test_session_resumption(env, certs):
    """The backend closes after every response: each request is a new connection, which offers
    the session its pool kept."""
    b = tls_backend(env, certs, be.fixed(200, b"r", close=True))
    gw = gw_for(env, b, {"ca": str(certs / "ca.crt")}, )
    for _ in range(6):
        assert harness.request(gw.port, "GET", "/").status == 200
    assert b.handshakes == 6
    assert b.resumed >= 3, (b.handshakes, b.resumed)


def test_concurrent_load(env, certs):
    b = tls_backend(env, certs, be.echo())
    gw = gw_for(env, b, {"ca": str(certs / "ca.crt")})
    failures = []

    def client(i):
        try:
            with harness.RawConn(gw.port, timeout=20) as c:
                for j in range(50):
                    body = f"client {i} request {j} ".encode() * (1 + j % 7)
                    r = c.roundtrip("POST", f"/c{i}/{j}", body=body)
                    if r.status != 200 or body not in r.body:
                        failures.append((i, j, r.status))
        except Exception as e:  # noqa: BLE001 - any failure counts
            failures.append((i, repr(e)))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert failures == []
    assert len(b.requests) == 1000
    assert b.handshakes <= 80, b.handshakes  # pooled, not one per request


def test_large_streamed_body(env, certs):
    size = 3 * 1024 * 1024 + 12345
    data = bytes((i * 7 + i // 1000) & 0xFF for i in range(size))

    def big(ex):
        if ex.req.target == "/chunked":
            ex.send_head(200, [("Transfer-Encoding", "chunked")])
            for off in range(0, size, 50000):
                piece = data[off:off + 50000]
                ex.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            ex.send(b"0\r\n\r\n")
        else:
            ex.respond(200, data)

    b = tls_backend(env, certs, big)
    gw = gw_for(env, b, {"ca": str(certs / "ca.crt")})
    want = hashlib.sha256(data).hexdigest()
    with harness.RawConn(gw.port, timeout=30) as c:
        for path in ("/length", "/chunked", "/length"):
            r = c.roundtrip("GET", path, timeout=30)
            assert r.status == 200
            assert len(r.body) == size and hashlib.sha256(r.body).hexdigest() == want, path


def test_large_body_to_slow_client(env, certs):
    """Backpressure: a client that reads slowly gets every byte; the gateway does not buffer
    the whole body (its RSS stays far below the body size)."""
    size = 8 * 1024 * 1024
    data = b"0123456789abcdef" * (size // 16)
    b = tls_backend(env, certs, be.fixed(200, data))
    gw = gw_for(env, b, {"ca": str(certs / "ca.crt")})
    rss0 = gw.rss_kb()
    s = socket.create_connection(("127.0.0.1", gw.port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
    s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    got = bytearray()
    peak = 0
    s.settimeout(30)
    while True:
        d = s.recv(16384)
        if not d:
            break
        got += d
        if len(got) % (1024 * 1024) < 16384:
            time.sleep(0.2)
            peak = max(peak, gw.rss_kb() - rss0)
        head_end = got.find(b"\r\n\r\n")
        if head_end > 0 and len(got) - head_end - 4 >= size:
            break
    s.close()
    head_end = got.find(b"\r\n\r\n")
    assert bytes(got[head_end + 4:]) == data
    assert peak < 6 * 1024, f"RSS grew by {peak} kB while streaming {size >> 20} MB"


def test_backend_dies_mid_response(env, certs):
    def h(ex):
        if ex.req.target == "/die":
            ex.send_head(200, [("Content-Length", "100000")])
            ex.send(b"x" * 1000)
            ex.reset()
        else:
            ex.respond(200, b"fine")

    b = tls_backend(env, certs, h)
    gw = gw_for(env, b, {"ca": str(certs / "ca.crt")})
    with pytest.raises((harness.IncompleteBody, harness.ConnectionClosed)):
        harness.request(gw.port, "GET", "/die")
    for _ in range(5):
        assert harness.request(gw.port, "GET", "/ok").body == b"fine"
    assert gw.alive()


class RudeServer:
    """Accepts and then resets (mode "reset"), closes (mode "close"), or answers garbage."""

    def __init__(self, mode):
        self.mode = mode
        self.port = harness.free_port()
        self.ls = socket.socket()
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(("127.0.0.1", self.port))
        self.ls.listen(64)
        self.stop = False
        threading.Thread(target=self.loop, daemon=True).start()

    def loop(self):
        import struct
        while not self.stop:
            try:
                s, _ = self.ls.accept()
            except OSError:
                return
            try:
                s.settimeout(2)
                s.recv(4096)  # the ClientHello
                if self.mode == "reset":
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                elif self.mode == "garbage":
                    s.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                s.close()
            except OSError:
                pass

    def close(self):
        self.stop = True
        try:
            self.ls.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.ls.close()


@pytest.mark.parametrize("mode", ["reset", "close", "garbage"])
def test_handshake_refused(env, certs, mode):
    rude = RudeServer(mode)
    try:
        b = tls_backend(env, certs, be.fixed(200, b"still here"))
        gw = env.gateway(routes=[{"name": "bad", "match": {"path_prefix": "/bad"}, "upstream": "bad"},
                                 {"name": "good", "match": {"path_prefix": "/"}, "upstream": "good"}],
                         upstreams={"bad": {"targets": [{"address": f"127.0.0.1:{rude.port}"}],
                                            "tls": {"ca": str(certs / "ca.crt")}},
                                    "good": {"targets": [{"address": b.address}],
                                             "tls": {"ca": str(certs / "ca.crt")}}})
        for _ in range(3):
            r = harness.request(gw.port, "GET", "/bad")
            harness.assert_gateway_error(r, 502, "upstream_connect_failed")
            d = detail_of(gw, r)
            assert d.startswith("tls: "), d
            assert harness.request(gw.port, "GET", "/").body == b"still here"
        assert gw.alive()
    finally:
        rude.close()


def test_handshake_timeout_is_connect_timeout(env, certs):
    """A server that accepts and never answers the ClientHello: the connect timeout covers it."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(16)
    try:
        gw = gw_for(env, None, {"ca": str(certs / "ca.crt")}, address=f"127.0.0.1:{ls.getsockname()[1]}",
                    timeouts={"connect": "300ms"})
        t0 = time.monotonic()
        r = harness.request(gw.port, "GET", "/")
        harness.assert_gateway_error(r, 502, "upstream_connect_failed")
        assert time.monotonic() - t0 < harness.slack(3)
        assert detail_of(gw, r) == "tls: handshake timed out"
    finally:
        ls.close()


def test_websocket_tunnel_over_tls(env, certs):
    def h(ex):
        ex.send_head(101, [("Upgrade", "websocket"), ("Connection", "Upgrade")], reason="Switching Protocols")
        ex.closed = True
        sock, reader = ex.sock, ex.reader
        if reader.avail():
            sock.sendall(bytes(reader.buf[reader.pos:]).upper())
            reader.pos = len(reader.buf)
        while True:
            data = sock.recv(65536)
            if not data:
                break
            sock.sendall(data.upper())
        sock.sendall(b"BYE")
        sock.close()

    b = tls_backend(env, certs, h)
    gw = gw_for(env, b, {"ca": str(certs / "ca.crt")})
    s = socket.create_connection(("127.0.0.1", gw.port))
    s.settimeout(10)
    s.sendall(b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(4096)
    assert buf.startswith(b"HTTP/1.1 101")
    rest = buf.split(b"\r\n\r\n", 1)[1]
    big = b"abcdefgh" * 40000
    s.sendall(b"hello " + big)
    want = (b"hello " + big).upper()
    got = rest
    while len(got) < len(want):
        d = s.recv(65536)
        assert d, "tunnel closed early"
        got += d
    assert got == want
    s.shutdown(socket.SHUT_WR)  # half-close: the backend sees TLS's end and says goodbye
    tail = b""
    while True:
        d = s.recv(4096)
        if not d:
            break
        tail += d
    assert tail == b"BYE"
    s.close()
    assert harness.request(gw.port, "GET", "/x").status in (101, 200, 502)  # still serving


# ---- health checks ----------------------------------------------------------------------------


def test_health_probes_over_tls(env, certs):
    good = tls_backend(env, certs, be.fixed(200, b"ok"))
    bad = tls_backend(env, certs, be.fixed(200, b"ok"), cert="self")
    gw = env.gateway(routes=[{"name": "r", "match": {"path_prefix": "/"}, "upstream": "u"}],
                     upstreams={"u": {"targets": [{"address": good.address}, {"address": bad.address}],
                                      "tls": {"ca": str(certs / "ca.crt")},
                                      "health": {"active": {"path": "/hc", "interval": "200ms",
                                                            "timeout": "150ms", "unhealthy": 1}}}})
    deadline = time.monotonic() + harness.slack(5)
    while True:
        st, _, j = gw.admin_request("GET", "/upstreams/u/health")
        assert st == 200
        t = {x["address"]: x for x in j["targets"]}
        if (t[bad.address]["health"] == "unhealthy" and t[good.address]["last_check"]) \
                or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert t[good.address]["health"] == "healthy"
    assert t[good.address]["last_check"]["result"] == "status 200"
    assert t[bad.address]["health"] == "unhealthy"
    assert t[bad.address]["last_check"]["result"].startswith("tls: certificate verify failed"), t[bad.address]
    assert good.find(lambda r: r.target == "/hc")  # probed over TLS: a real request arrived
    for _ in range(10):
        assert harness.request(gw.port, "GET", "/").status == 200


def test_health_probe_refused_client_certificate(env, certs):
    """TLS 1.3: a server refusing the (missing) client certificate says so after the handshake;
    the probe's result names the alert."""
    b = tls_backend(env, certs, be.fixed(200, b"ok"), client_ca="clientca")
    gw = env.gateway(routes=[{"name": "r", "match": {"path_prefix": "/"}, "upstream": "u"}],
                     upstreams={"u": {"targets": [{"address": b.address}], "tls": {"ca": str(certs / "ca.crt")},
                                      "health": {"active": {"interval": "300ms", "timeout": "200ms"}}}})

    def result():
        st, _, j = gw.admin_request("GET", "/upstreams/u/health")
        lc = j["targets"][0]["last_check"]
        return lc["result"] if lc else ""

    harness.wait_for(lambda: result() != "", 5, "a probe result")
    assert result() == "tls: tlsv13 alert certificate required"


def test_doctor_names_the_tls_failure(env, certs):
    """A target whose certificate does not verify: the doctor's connectivity finding for it
    carries the TLS reason (from its health probes)."""
    good = tls_backend(env, certs, be.fixed(200, b"ok"))
    bad = tls_backend(env, certs, be.fixed(200, b"ok"), cert="self")
    gw = env.gateway(routes=[{"name": "r", "match": {"path_prefix": "/"}, "upstream": "u"}],
                     upstreams={"u": {"targets": [{"address": good.address}, {"address": bad.address}],
                                      "tls": {"ca": str(certs / "ca.crt")},
                                      "health": {"active": {"interval": "300ms", "timeout": "200ms"}}}})
    deadline = time.monotonic() + harness.slack(10)
    found = None
    while time.monotonic() < deadline and found is None:
        for _ in range(10):
            harness.request(gw.port, "GET", "/")
        status, _, body = gw.admin_get("/doctor")
        assert status == 200
        for f in json.loads(body)["findings"]:
            if f["where"] == {"upstream": "u", "target": bad.address} and "tls: certificate verify failed" in \
                    json.dumps(f):
                found = f
        time.sleep(0.25)
    assert found is not None, body
    assert found["cause"] == "connectivity"


# ---- configuration ----------------------------------------------------------------------------


def check(tmp_path, tls, name="c.yaml"):
    cfg = {"listen": [{"address": "127.0.0.1:1"}],
           "upstreams": {"u": {"targets": [{"address": "127.0.0.1:9"}], "tls": tls}},
           "routes": [{"name": "r", "match": {"path_prefix": "/"}, "upstream": "u"}]}
    p = tmp_path / name
    p.write_text(harness.to_yaml(cfg))
    r = harness.run_cli(["check", "-c", str(p)])
    return r.returncode, r.stdout + r.stderr, p


def line_of(path, needle):
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if needle in line:
            return i
    raise AssertionError(f"{needle} not in {path}")


def test_check_accepts_good_blocks(tmp_path, certs):
    for tls in (True, False, {"verify": False}, {"ca": str(certs / "ca.crt"), "min_version": "1.3"},
                {"ca": str(certs / "ca.crt"), "sni": "backend.test", "client_cert": str(certs / "client.crt"),
                 "client_key": str(certs / "client.key")}):
        rc, out, _ = check(tmp_path, tls)
        assert rc == 0, (tls, out)


@pytest.mark.parametrize("tls,needle,msg", [
    ({"ca": "missing/ca.pem"}, "ca:", r"tls: cannot read ca file '.*missing/ca.pem': No such file or directory"),
    ({"ca": "GARBAGE"}, "ca:", r"tls: no PEM certificate in ca file"),
    ({"client_cert": "CLIENT"}, "client_cert:", r"tls: client_cert needs client_key"),
    ({"client_key": "CLIENTKEY"}, "client_key:", r"tls: client_key needs client_cert"),
    ({"client_cert": "CLIENT", "client_key": "OTHERKEY"}, "client_key:",
     r"tls: client_key '.*client2.key' does not match the client certificate"),
    ({"client_cert": "missing.crt", "client_key": "CLIENTKEY"}, "client_cert:",
     r"tls: cannot read client_cert file '.*missing.crt'"),
    ({"client_cert": "CLIENT", "client_key": "GARBAGE"}, "client_key:", r"tls: no PEM private key in client_key"),
    ({"verify": False, "ca": "CA"}, "ca:", r"tls: ca is not used with verify: false"),
    ({"sni": "127.0.0.1"}, "sni:", r"tls.sni: .*is an IP address"),
    ({"min_version": "1.1"}, "min_version:", r"min_version"),
    ({"verify": "maybe"}, "verify:", r"verify"),
    ({"cipher": "x"}, "cipher:", r"unknown key 'cipher' in upstream tls"),
])
def test_check_reports_positions(tmp_path, certs, tls, needle, msg):
    subst = {"CA": str(certs / "ca.crt"), "CLIENT": str(certs / "client.crt"),
             "CLIENTKEY": str(certs / "client.key"), "OTHERKEY": str(certs / "client2.key"),
             "GARBAGE": str(certs / "garbage.pem")}
    tls = {k: subst.get(v, v) if isinstance(v, str) else v for k, v in tls.items()}
    rc, out, p = check(tmp_path, tls)
    assert rc != 0, out
    line = line_of(p, needle)
    m = re.search(re.escape(str(p)) + rf":{line}:(\d+): (.*)", out)
    assert m, f"no error at line {line} of {p}:\n{out}\n{p.read_text()}"
    assert re.search(msg, m.group(2)), out


def test_start_refuses_bad_tls_config(env, certs):
    gw = env.gateway(start=False, routes=[{"name": "r", "match": {"path_prefix": "/"}, "upstream": "u"}],
                     upstreams={"u": {"targets": [{"address": "127.0.0.1:9"}],
                                      "tls": {"client_cert": str(certs / "client.crt")}}})
    with pytest.raises(Exception):
        gw.start()
    assert "client_cert needs client_key" in gw.log_tail()
