"""WebSocket and generic Upgrade passthrough (docs/websocket.md): a WebSocket echo backend written
here (RFC 6455 handshake, masked client frames, text/binary/ping/pong/close) and a client of our
own, through the gateway: echo of many messages and a 1 MB one, both directions at once, auth and
rate limits on the upgrade request, upstreams refusing the upgrade, h2c never forwarded, an
unrequested 101, the idle timeout, backpressure with a client or an upstream that does not read,
half-close and disconnects propagated both ways, drain, the access log line, and over TLS."""
import base64
import hashlib
import json
import os
import socket
import ssl
import struct
import threading
import time

import pytest

import harness

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def accept_of(key):
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


# ---- frames -------------------------------------------------------------------------------------

def frame(opcode, payload, mask):
    b0 = 0x80 | opcode
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", b0, (0x80 if mask else 0) | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, (0x80 if mask else 0) | 126, n)
    else:
        head = struct.pack("!BBQ", b0, (0x80 if mask else 0) | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + mask_bytes(payload, key)


def mask_bytes(payload, key):
    if not payload:
        return b""
    k = (key * (len(payload) // 4 + 1))[:len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(k, "big")).to_bytes(len(payload), "big")


class Stream:
    """Exact reads over a socket with bytes left over from the HTTP head."""

    def __init__(self, sock, buf=b""):
        self.sock = sock
        self.buf = bytearray(buf)

    def read_exact(self, n):
        while len(self.buf) < n:
            d = self.sock.recv(max(65536, n - len(self.buf)))
            if not d:
                raise EOFError(f"EOF after {len(self.buf)} of {n} bytes")
            self.buf += d
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_frame(self, expect_mask):
        b0, b1 = self.read_exact(2)
        masked = bool(b1 & 0x80)
        assert masked == expect_mask, "masking is wrong for this direction"
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self.read_exact(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self.read_exact(8))[0]
        key = self.read_exact(4) if masked else None
        payload = self.read_exact(n)
        return b0 & 0x0F, mask_bytes(payload, key) if masked else payload

    def at_eof(self, timeout):
        """True when the peer closes within `timeout` (any bytes before are skipped)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                d = self.sock.recv(65536)
                if not d:
                    return True
        except (socket.timeout, TimeoutError):
            return False
        except (ConnectionResetError, ssl.SSLError):
            return True


def read_head(sock):
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = sock.recv(65536)
        if not d:
            raise EOFError("EOF in the head: " + repr(buf))
        buf += d
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = harness.Headers()
    for line in lines[1:]:
        n, v = line.split(":", 1)
        headers.append((n.strip(), v.strip()))
    return lines[0], headers, rest


# ---- the backend ----------------------------------------------------------------------------------

class WsBackend:
    """Per path after the handshake: /echo echoes every frame (ping -> pong, close -> close and
    close the socket, EOF -> close); /silent only reads; /flood sends a counting byte pattern as
    fast as it can; /halfclose echoes until the client's EOF, then sends "bye" and closes;
    /closeafter sends "hello" and closes, /resetafter sends "hello" and resets. /refuse200 and /refuse400 answer plainly, /always101
    answers 101 to anything, and a request without Upgrade gets 200 with the headers it had."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.port = harness.free_port()
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(64)
        self.requests = []  # (path, headers)
        self.eofs = []  # paths whose tunnel saw the client side end
        self.flood_sent = 0
        self.lock = threading.Lock()
        self.conns = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self):
        self.closed = True
        self.sock.close()
        for c in list(self.conns):
            try:
                c.close()
            except OSError:
                pass

    def _accept(self):
        while not self.closed:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        try:
            self._serve_one(c)
        except (OSError, EOFError, AssertionError):
            pass
        finally:
            try:
                c.close()
            except OSError:
                pass

    def _serve_one(self, c):
        while True:
            start, h, rest = read_head(c)
            path = start.split(" ")[1]
            with self.lock:
                self.requests.append((path, h))
            if path == "/always101":
                c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
                time.sleep(1)
                return
            if path.startswith("/refuse200"):
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nX-Why: no upgrade\r\n\r\nno upgrade")
                continue
            if path.startswith("/refuse400"):
                c.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 3\r\n\r\nbad")
                continue
            if h.get("Upgrade") is None:
                body = json.dumps({"headers": list(h)}).encode()
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                          % len(body) + body)
                continue
            key = h.get("Sec-WebSocket-Key")
            # /early: a frame in the same write as the 101 head
            early = frame(1, b"early from upstream", False) if path == "/early" else b""
            c.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                       f"Sec-WebSocket-Accept: {accept_of(key)}\r\nX-Backend: ws\r\n\r\n").encode() + early)
            self._tunnel(c, Stream(c, rest), path)
            return

    def _tunnel(self, c, s, path):
        if path == "/closeafter":
            c.sendall(frame(1, b"hello", False))
            return
        if path == "/resetafter":
            c.sendall(frame(1, b"hello", False))
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST
            return
        if path == "/flood":
            chunk = bytes(range(256)) * 256  # 64 KiB, the pattern restarts at every chunk
            c.settimeout(60)
            while True:
                c.sendall(chunk)
                with self.lock:
                    self.flood_sent += len(chunk)
        if path == "/stall":
            time.sleep(60)  # reads nothing: the client's bytes pile up in front of us
            return
        try:
            while True:
                if path == "/silent":
                    if not c.recv(65536):
                        raise EOFError
                    continue
                op, payload = s.read_frame(expect_mask=True)
                if op == 8:
                    c.sendall(frame(8, payload, False))
                    return
                c.sendall(frame(10 if op == 9 else op, payload, False))
        except EOFError:
            with self.lock:
                self.eofs.append(path)
            if path == "/halfclose":
                c.sendall(frame(1, b"bye", False))
            return


@pytest.fixture
def ws_backend():
    b = WsBackend()
    yield b
    b.close()


# ---- the client -------------------------------------------------------------------------------------

class WsClient:
    def __init__(self, port, path, headers=(), upgrade="websocket", connection="Upgrade", tls_ctx=None,
                 server_hostname=None, timeout=10.0, early=b""):
        sock = socket.create_connection(("127.0.0.1", port), timeout=harness.slack(timeout))
        if tls_ctx is not None:
            sock = tls_ctx.wrap_socket(sock, server_hostname=server_hostname)
        self.sock = sock
        self.key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", "Host: ws.test"]
        if connection:
            lines.append(f"Connection: {connection}")
        if upgrade:
            lines.append(f"Upgrade: {upgrade}")
        lines += [f"Sec-WebSocket-Key: {self.key}", "Sec-WebSocket-Version: 13"]
        lines += [f"{n}: {v}" for n, v in headers]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + early)
        self.status_line, self.headers, rest = read_head(sock)
        self.status = int(self.status_line.split(" ")[1])
        self.stream = Stream(sock, rest)

    def send(self, opcode, payload):
        self.sock.sendall(frame(opcode, payload, True))

    def recv(self):
        return self.stream.read_frame(expect_mask=False)

    def echo(self, opcode, payload):
        self.send(opcode, payload)
        return self.recv()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def ws_gateway(env, backend, routes=None, **top):
    top.setdefault("timeouts", {"drain": "1s"})
    routes = routes or [{"name": "ws", "match": {"path_prefix": "/"}, "upstream": "ws"}]
    return env.gateway(upstreams={"ws": harness.upstream(backend)}, routes=routes, **top)


def log_of(gw, path, status=None):
    entries = gw.wait_access_log(lambda e: e["path"] == path and (status is None or e["status"] == status))
    assert entries, f"no access log line for {path}: {gw.access_log()}"
    return entries


def wait_for(cond, timeout, what):
    deadline = time.monotonic() + harness.slack(timeout)
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# ---- tests --------------------------------------------------------------------------------------------

def test_echo_messages_large_ping_close_and_log(env, ws_backend):
    gw = ws_gateway(env, ws_backend)
    ws = WsClient(gw.port, "/echo")
    assert ws.status == 101, ws.status_line
    assert ws.headers.get("Sec-WebSocket-Accept") == accept_of(ws.key)
    assert ws.headers.get("Upgrade").lower() == "websocket"
    assert ws.headers.get("Connection").lower() == "upgrade"
    assert ws.headers.get("X-Backend") == "ws"
    # what the upstream saw: the upgrade kept, the client's key passed through
    path, seen = ws_backend.requests[-1]
    assert seen.get("Upgrade") == "websocket" and seen.get("Connection").lower() == "upgrade"
    assert seen.get("Sec-WebSocket-Key") == ws.key and seen.get("Sec-WebSocket-Version") == "13"
    sent = 0
    for i in range(300):
        msg = f"message {i} ".encode() * (i % 7 + 1)
        assert ws.echo(1, msg) == (1, msg)
        sent += len(msg)
    big = os.urandom(1024 * 1024)
    assert ws.echo(2, big) == (2, big)
    assert ws.echo(9, b"ping!") == (10, b"ping!")
    assert ws.echo(8, b"\x03\xe8bye") == (8, b"\x03\xe8bye")
    assert ws.stream.at_eof(harness.slack(5)), "the gateway kept the client side open after the upstream closed"
    ws.close()
    (e,) = log_of(gw, "/echo")
    assert e["status"] == 101 and e["upstream"] == "ws" and e["cause"] == ""
    assert e["bytes_in"] > sent + len(big) and e["bytes_out"] > sent + len(big)
    assert e["duration_ms"] > 0
    # counted once, when the tunnel ended
    _, _, body = gw.admin_get("/metrics")
    rows = [line for line in body.decode().splitlines()
            if line.startswith("sluice_requests_total{") and 'status="101"' in line]
    assert len(rows) == 1 and rows[0].endswith(" 1"), rows


def test_bytes_sent_with_the_heads_are_forwarded_first(env, ws_backend):
    gw = ws_gateway(env, ws_backend)
    ws = WsClient(gw.port, "/early", early=frame(1, b"early from client", True))
    assert ws.status == 101
    assert ws.recv() == (1, b"early from upstream")
    assert ws.recv() == (1, b"early from client")
    assert ws.echo(1, b"after") == (1, b"after")
    ws.close()


def test_both_directions_at_once_several_tunnels(env, ws_backend):
    gw = ws_gateway(env, ws_backend)
    errors = []

    def one(n):
        try:
            ws = WsClient(gw.port, "/echo")
            assert ws.status == 101
            msgs = [os.urandom((i * 977 + n * 131) % 70000 + 1) for i in range(60)]
            t = threading.Thread(target=lambda: [ws.send(2, m) for m in msgs])
            t.start()
            for m in msgs:
                assert ws.recv() == (2, m)
            t.join()
            ws.send(8, b"")
            assert ws.recv()[0] == 8
            ws.close()
        except Exception as ex:  # reported below, from the main thread
            errors.append(repr(ex))

    threads = [threading.Thread(target=one, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(harness.slack(25))
    assert not errors, errors
    assert len(log_of(gw, "/echo")) == 4 or len(gw.wait_access_log(lambda e: e["path"] == "/echo", count=4)) == 4


def test_auth_applies_to_the_upgrade(env, ws_backend):
    consumers = {"app": {"api_keys": [{"sha256": hashlib.sha256(b"good-key").hexdigest()}]}}
    gw = ws_gateway(env, ws_backend, consumers=consumers, routes=[
        {"name": "ws", "match": {"path_prefix": "/"}, "upstream": "ws", "auth": ["api_key"]}])
    ws = WsClient(gw.port, "/echo")
    assert ws.status == 401 and ws.headers.get("Sluice-Error") == "auth_missing"
    ws.close()
    bad = WsClient(gw.port, "/echo", headers=[("X-API-Key", "wrong")])
    assert bad.status == 401
    bad.close()
    assert ws_backend.requests == [], "a refused upgrade reached the upstream"
    ok = WsClient(gw.port, "/echo", headers=[("X-API-Key", "good-key")])
    assert ok.status == 101
    assert ok.echo(1, b"authorised") == (1, b"authorised")
    ok.close()
    e = log_of(gw, "/echo", status=101)[-1]
    assert e["consumer"] == "app"


def test_rate_limit_applies_to_upgrades(env, ws_backend):
    gw = ws_gateway(env, ws_backend, routes=[
        {"name": "ws", "match": {"path_prefix": "/"}, "upstream": "ws",
         "rate_limit": [{"key": "ip", "rate": "3/m", "burst": 3}]}])
    statuses = []
    for _ in range(5):
        ws = WsClient(gw.port, "/echo")
        statuses.append(ws.status)
        if ws.status == 101:
            assert ws.echo(1, b"x") == (1, b"x")
        else:
            assert ws.headers.get("Sluice-Error") == "rate_limited"
        ws.close()
    assert statuses == [101, 101, 101, 429, 429]
    assert len(ws_backend.requests) == 3


def test_upstream_refusing_the_upgrade_is_a_normal_response(env, ws_backend):
    gw = ws_gateway(env, ws_backend)
    ws = WsClient(gw.port, "/refuse200")
    assert ws.status == 200 and ws.headers.get("X-Why") == "no upgrade"
    assert ws.stream.read_exact(10) == b"no upgrade"
    # the connection stays plain HTTP/1.1 with keep-alive: a next request on it works
    ws.sock.sendall(b"GET /refuse400 HTTP/1.1\r\nHost: ws.test\r\n\r\n")
    status, h, rest = read_head(ws.sock)
    assert status.startswith("HTTP/1.1 400") and (rest + ws.sock.recv(3) if len(rest) < 3 else rest) == b"bad"
    ws.close()
    assert [e["status"] for e in log_of(gw, "/refuse400")] == [400]
    assert log_of(gw, "/refuse200")[0]["status"] == 200


def test_h2c_upgrade_is_not_forwarded(env, ws_backend):
    gw = ws_gateway(env, ws_backend)
    ws = WsClient(gw.port, "/plain", upgrade="h2c", connection="Upgrade, HTTP2-Settings",
                  headers=[("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA")])
    assert ws.status == 200
    ws.close()
    path, seen = ws_backend.requests[-1]
    assert path == "/plain" and not seen.has("Upgrade") and not seen.has("HTTP2-Settings")
    assert all("upgrade" not in v.lower() for v in seen.get_all("Connection"))
    # h2c among other protocols: only the others go up
    ws = WsClient(gw.port, "/echo", upgrade="h2c, websocket")
    assert ws.status == 101 and ws.echo(1, b"hi") == (1, b"hi")
    ws.close()
    assert ws_backend.requests[-1][1].get("Upgrade") == "websocket"


def test_upgrade_without_connection_token_or_on_post_is_not_an_upgrade(env, ws_backend):
    gw = ws_gateway(env, ws_backend)
    ws = WsClient(gw.port, "/plain", connection="keep-alive")
    assert ws.status == 200
    ws.close()
    assert not ws_backend.requests[-1][1].has("Upgrade")


def test_unrequested_101_is_a_bad_response(env, ws_backend):
    gw = ws_gateway(env, ws_backend)
    r = gw.request("GET", "/always101")
    harness.assert_gateway_error(r, 502, "upstream_bad_response")


@pytest.mark.deadline(40)
def test_idle_timeout_closes_both_sides(env, ws_backend):
    gw = ws_gateway(env, ws_backend, timeouts={"drain": "1s", "tunnel_idle": "700ms"})
    # traffic more often than the timeout keeps a tunnel open past it
    busy = WsClient(gw.port, "/echo")
    assert busy.status == 101
    for _ in range(8):
        assert busy.echo(9, b"keep") == (10, b"keep")
        time.sleep(0.25)
    idle = WsClient(gw.port, "/silent")
    assert idle.status == 101
    t0 = time.monotonic()
    assert idle.stream.at_eof(harness.slack(10)), "an idle tunnel was not closed"
    assert time.monotonic() - t0 >= 0.5
    wait_for(lambda: "/silent" in ws_backend.eofs, 5, "the upstream side of the idle tunnel to close")
    e = log_of(gw, "/silent")[0]
    assert e["status"] == 101 and e["detail"] == "tunnel idle timeout"
    busy.close()
    idle.close()


def wait_until_backend_blocks(ws_backend):
    """Polls the flooding backend until its byte count stops growing for a second (the gateway
    stopped reading from it); returns that count. Fails if it never stops."""
    last, stable_since = -1, time.monotonic()
    deadline = time.monotonic() + harness.slack(20)
    while time.monotonic() < deadline:
        with ws_backend.lock:
            sent = ws_backend.flood_sent
        if sent != last:
            last, stable_since = sent, time.monotonic()
        elif time.monotonic() - stable_since > 1.0:
            break
        time.sleep(0.1)
    assert time.monotonic() - stable_since > 1.0, f"the backend never blocked ({last} bytes sent)"
    return last


@pytest.mark.deadline(60)
def test_backpressure_with_a_client_that_does_not_read(env, ws_backend):
    gw = ws_gateway(env, ws_backend)
    ws = WsClient(gw.port, "/flood")
    assert ws.status == 101
    ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    rss0 = gw.rss_kb()
    # The backend sends as fast as it can; we read nothing. Its total must stop growing.
    last = wait_until_backend_blocks(ws_backend)
    assert last < 64 * 1024 * 1024, f"{last} bytes went into the gateway for a client that reads nothing"
    grew = gw.rss_kb() - rss0
    print(f"backpressure: backend blocked after {last} bytes, gateway RSS grew {grew} KiB")
    assert grew < 16 * 1024, f"gateway RSS grew {grew} KiB with a non-reading client"
    # Now read: the bytes arrive intact and in order, and the flow resumes.
    got = ws.stream.read_exact(4 * 1024 * 1024)
    pattern = bytes(range(256)) * (len(got) // 256)
    assert got == pattern
    wait_for(lambda: ws_backend.flood_sent > last, 10, "the backend to send again")
    ws.close()
    log_of(gw, "/flood")


@pytest.mark.deadline(60)
def test_backpressure_with_an_upstream_that_does_not_read(env, ws_backend):
    gw = ws_gateway(env, ws_backend)
    ws = WsClient(gw.port, "/stall")
    assert ws.status == 101
    rss0 = gw.rss_kb()
    ws.sock.settimeout(0.5)
    chunk = b"\x00" * 65536
    sent, stalls = 0, 0
    deadline = time.monotonic() + harness.slack(20)
    while time.monotonic() < deadline and stalls < 3:
        try:
            sent += ws.sock.send(chunk)
            stalls = 0
        except (socket.timeout, TimeoutError):
            stalls += 1  # nothing taken for 0.5 s
    assert stalls >= 3, f"the gateway kept taking bytes for an upstream that reads nothing ({sent} bytes)"
    assert sent < 64 * 1024 * 1024
    grew = gw.rss_kb() - rss0
    print(f"backpressure upstream: client blocked after {sent} bytes, gateway RSS grew {grew} KiB")
    assert grew < 16 * 1024, f"gateway RSS grew {grew} KiB with a non-reading upstream"
    ws.close()


def test_client_disconnect_closes_upstream_side(env, ws_backend):
    gw = ws_gateway(env, ws_backend)
    ws = WsClient(gw.port, "/silent")
    assert ws.status == 101
    ws.sock.sendall(frame(1, b"partial", True))
    ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
    ws.close()
    wait_for(lambda: "/silent" in ws_backend.eofs, 5, "the upstream side to close")
    e = log_of(gw, "/silent")[0]
    assert e["status"] == 101 and e["bytes_in"] > 0


def test_upstream_close_closes_client_side(env, ws_backend):
    gw = ws_gateway(env, ws_backend)
    ws = WsClient(gw.port, "/closeafter")
    assert ws.status == 101
    assert ws.recv() == (1, b"hello")
    assert ws.stream.at_eof(harness.slack(5))
    ws.close()
    e = log_of(gw, "/closeafter")[0]
    assert e["status"] == 101


def test_upstream_reset_ends_the_tunnel_with_its_cause(env, ws_backend):
    gw = ws_gateway(env, ws_backend)
    ws = WsClient(gw.port, "/resetafter")
    assert ws.status == 101
    assert ws.stream.at_eof(harness.slack(5))  # "hello" may or may not come before: the RST can drop it
    ws.close()
    e = log_of(gw, "/resetafter")[0]
    # Linux may report the RST to the gateway's read as ECONNRESET or, once the error was taken,
    # as a plain EOF: both must end the tunnel; only the first names the reset.
    assert e["status"] == 101 and e["detail"] in ("upstream reset the tunnel", "")
    # the gateway is still fine
    ws2 = WsClient(gw.port, "/echo")
    assert ws2.status == 101
    assert ws2.echo(1, b"after") == (1, b"after")
    ws2.close()


def test_half_close_is_propagated_both_ways(env, ws_backend):
    gw = ws_gateway(env, ws_backend)
    ws = WsClient(gw.port, "/halfclose")
    assert ws.status == 101
    assert ws.echo(1, b"one") == (1, b"one")
    ws.send(1, b"two")
    ws.sock.shutdown(socket.SHUT_WR)  # our EOF reaches the backend, which still answers
    assert ws.recv() == (1, b"two")
    assert ws.recv() == (1, b"bye")
    assert ws.stream.at_eof(harness.slack(5))
    ws.close()
    assert "/halfclose" in ws_backend.eofs
    assert log_of(gw, "/halfclose")[0]["status"] == 101


@pytest.mark.deadline(40)
def test_drain_closes_tunnels_after_the_drain_timeout(env, ws_backend):
    gw = ws_gateway(env, ws_backend, timeouts={"drain": "1s"})
    ws = WsClient(gw.port, "/echo")
    assert ws.status == 101
    t0 = time.monotonic()
    gw.send_signal(15)
    assert ws.echo(1, b"still open while draining") == (1, b"still open while draining")
    assert ws.stream.at_eof(harness.slack(10)), "the tunnel outlived the drain"
    assert gw.wait(harness.slack(10)) == 0
    assert time.monotonic() - t0 < harness.slack(10)
    ws.close()


@pytest.fixture
def tls_gw(env, ws_backend, tmp_path):
    """(gateway, TLS port, client context): a gateway with one TLS listener for ws.test."""
    import shutil
    import subprocess
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl CLI")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", "ws.key", "-out", "ws.crt", "-days", "2", "-subj", "/CN=ws.test",
                    "-addext", "subjectAltName=DNS:ws.test"], cwd=tmp_path, check=True, capture_output=True)
    tport = harness.free_port()
    gw = ws_gateway(env, ws_backend, listen=[{"address": f"127.0.0.1:{tport}", "tls": {
        "certificates": [{"cert": str(tmp_path / "ws.crt"), "key": str(tmp_path / "ws.key")}]}}])
    return gw, tport, ssl.create_default_context(cafile=str(tmp_path / "ws.crt"))


def test_over_tls(tls_gw):
    gw, tport, ctx = tls_gw
    ws = WsClient(tport, "/echo", tls_ctx=ctx, server_hostname="ws.test")
    assert ws.status == 101 and ws.headers.get("Sec-WebSocket-Accept") == accept_of(ws.key)
    for i in range(50):
        assert ws.echo(1, b"tls %d" % i) == (1, b"tls %d" % i)
    # (one thread: an ssl.SSLSocket must not be read and written from two threads at once; the
    # backend reads the whole frame before echoing, so this does not deadlock)
    big = os.urandom(1024 * 1024)
    assert ws.echo(2, big) == (2, big)
    assert ws.echo(8, b"") == (8, b"")
    ws.close()
    assert log_of(gw, "/echo")[0]["status"] == 101


@pytest.mark.deadline(60)
def test_over_tls_a_client_that_does_not_read(tls_gw, ws_backend):
    gw, tport, ctx = tls_gw
    ws = WsClient(tport, "/flood", tls_ctx=ctx, server_hostname="ws.test")
    assert ws.status == 101
    rss0 = gw.rss_kb()
    wait_until_backend_blocks(ws_backend)
    grew = gw.rss_kb() - rss0
    assert grew < 16 * 1024, f"gateway RSS grew {grew} KiB with a non-reading TLS client"
    got = ws.stream.read_exact(2 * 1024 * 1024)
    assert got == bytes(range(256)) * (len(got) // 256)
    ws.close()


def test_over_tls_half_close_is_a_close_notify(tls_gw):
    """The client's close_notify (TLS's half-close) reaches the upstream as an EOF; the upstream's
    last words and its EOF come back, ending in our close_notify."""
    gw, tport, ctx = tls_gw
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="ws.test")
    sock = socket.create_connection(("127.0.0.1", tport), timeout=harness.slack(5))

    def flush():
        d = out.read()
        if d:
            sock.sendall(d)

    def pump():
        d = sock.recv(65536)
        if not d:
            inc.write_eof()
        else:
            inc.write(d)
        return bool(d)

    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            flush()
            pump()
    flush()
    key = base64.b64encode(os.urandom(16)).decode()
    obj.write(("GET /halfclose HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode() + frame(1, b"two", True))
    flush()
    try:
        obj.unwrap()  # our close_notify; we keep reading
    except ssl.SSLWantReadError:
        pass
    flush()
    data, end = b"", None
    while end is None:
        try:
            d = obj.read(65536)
            if not d:
                end = "close_notify"
            data += d
        except ssl.SSLWantReadError:
            if not pump():
                end = "eof"
        except ssl.SSLZeroReturnError:
            end = "close_notify"
    sock.close()
    assert data.startswith(b"HTTP/1.1 101 ")
    assert data.endswith(frame(1, b"two", False) + frame(1, b"bye", False)), data[-60:]
    assert end == "close_notify", end
