"""
The integration harness: starts the real sluice binary from a generated config and talks to it
with a raw HTTP/1.1 client that checks framing exactly. Standard library only.

- free_port(): a port in 20000-32000 that was free a moment ago (bind-tested; never the
  ephemeral range, never handed out twice in one run).
- to_yaml(): dict -> block YAML (strings always double-quoted, so nothing is reinterpreted).
- Gateway: one `sluice run` process in its own directory (config, stdout, stderr, access log);
  waits for admin /ready, gives .port, .admin_port, .pid, .access_log(), .stop(sig), .rss_kb().
- RawConn / Response: a client that sends exact bytes and parses responses strictly (1xx,
  Content-Length, chunked, close-delimited, HEAD/204/304), with a streaming sink for huge bodies.
- parse_case(): the `.case` format of tests/integration/cases (see README.md there).
"""
import copy
import hashlib
import http.client
import json
import os
import random
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SANITIZED = os.environ.get("SLUICE_SANITIZED") == "1"
# Timing bounds are multiplied by SLOW; an ASan build is several times slower.
SLOW = 4.0 if SANITIZED else 1.0
PORT_MIN, PORT_MAX = 20000, 32000
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
MiB = 1024 * 1024


def slack(seconds):
    """A timing bound, loosened for sanitizer builds."""
    return seconds * SLOW


def sluice_bin():
    return os.environ.get("SLUICE_BIN") or str(REPO / "build" / "sluice")


# ---- ports ------------------------------------------------------------------------------------

_ports_lock = threading.Lock()
_ports_given = set()
_rng = random.Random(os.getpid() * 7919 + time.time_ns())


def port_is_free(port):
    for addr in ("127.0.0.1", "0.0.0.0"):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind((addr, port))
        except OSError:
            return False
        finally:
            s.close()
    return True


def free_port():
    """A loopback port in [20000, 32000] that is free now and was not given out before."""
    with _ports_lock:
        for _ in range(5000):
            p = _rng.randint(PORT_MIN, PORT_MAX)
            if p in _ports_given:
                continue
            _ports_given.add(p)
            if port_is_free(p):
                return p
    raise RuntimeError("no free port in 20000-32000")


def port_accepts(port, timeout=0.5):
    """True if something accepts TCP connections on 127.0.0.1:port."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=timeout).close()
        return True
    except OSError:
        return False


# ---- YAML -------------------------------------------------------------------------------------

_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


def _scalar(v):
    if v is True:
        return "true"
    if v is False:
        return "false"
    if v is None:
        return "null"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    raise TypeError(f"cannot write {type(v).__name__} to YAML")


def _flow(v):
    if isinstance(v, (dict, list)):
        return json.dumps(v)  # JSON is YAML flow syntax
    return _scalar(v)


def _key(k):
    return k if _PLAIN_KEY.match(k) else json.dumps(k)


def _emit(obj, ind):
    pad = " " * ind
    if isinstance(obj, dict):
        if not obj:
            return [pad + "{}"]
        out = []
        for k, v in obj.items():
            if isinstance(v, (dict, list)) and v:
                out.append(f"{pad}{_key(k)}:")
                out.extend(_emit(v, ind + 2))
            else:
                out.append(f"{pad}{_key(k)}: {_flow(v)}")
        return out
    if isinstance(obj, list):
        if not obj:
            return [pad + "[]"]
        out = []
        for item in obj:
            if isinstance(item, dict) and item:
                sub = _emit(item, ind + 2)
                sub[0] = pad + "- " + sub[0][ind + 2:]
                out.extend(sub)
            else:
                out.append(pad + "- " + _flow(item))
        return out
    return [pad + _scalar(obj)]


def to_yaml(obj):
    return "\n".join(_emit(obj, 0)) + "\n"


def upstream(*targets, **opts):
    """An upstream config: targets are objects with .port, ports, or (target, weight) pairs."""
    out = []
    for t in targets:
        weight = None
        if isinstance(t, tuple):
            t, weight = t
        port = t if isinstance(t, int) else t.port
        entry = {"address": f"127.0.0.1:{port}"}
        if weight is not None:
            entry["weight"] = weight
        out.append(entry)
    cfg = {"targets": out}
    cfg.update(opts)
    return cfg


# ---- the client -------------------------------------------------------------------------------


class ConnectionClosed(Exception):
    """The peer closed (or reset) the connection before the expected bytes arrived."""


class ProtocolError(AssertionError):
    """The bytes received are not valid HTTP/1.1 framing."""


class IncompleteBody(AssertionError):
    """The connection ended inside a response body; .response has what arrived."""

    def __init__(self, msg, response):
        super().__init__(msg)
        self.response = response


class SockReader:
    """Buffered reads from a socket; `on_data` sees every byte received (for recording)."""

    RECV = 256 * 1024

    def __init__(self, sock, on_data=None):
        self.sock = sock
        self.buf = bytearray()
        self.pos = 0
        self.on_data = on_data

    def avail(self):
        return len(self.buf) - self.pos

    def _recv(self, n):
        try:
            data = self.sock.recv(n)
        except ConnectionResetError as e:
            raise ConnectionClosed("connection reset") from e
        if not data:
            raise ConnectionClosed("connection closed")
        if self.on_data:
            self.on_data(data)
        return data

    def fill(self):
        if self.pos and (self.pos == len(self.buf) or self.pos > MiB):
            del self.buf[: self.pos]
            self.pos = 0
        self.buf += self._recv(self.RECV)

    def read_until(self, delim, limit):
        """Bytes up to and including `delim`."""
        scan = self.pos
        while True:
            i = self.buf.find(delim, scan)
            if i >= 0:
                end = i + len(delim)
                out = bytes(self.buf[self.pos:end])
                self.pos = end
                return out
            if self.avail() > limit:
                raise ProtocolError(f"no {delim!r} within {limit} bytes")
            scan = max(self.pos, len(self.buf) - len(delim) + 1)
            rel = scan - self.pos
            self.fill()  # may compact: keep scan relative to pos
            scan = self.pos + rel

    def read_line(self, limit=64 * 1024):
        return self.read_until(b"\r\n", limit)[:-2]

    def read_exact(self, n):
        out = bytearray()
        self.consume(n, out.extend)
        return bytes(out)

    def consume(self, n, sink):
        """Passes exactly n bytes to sink(bytes-like), in pieces."""
        while n > 0:
            if self.avail():
                take = min(n, self.avail())
                sink(self.buf[self.pos:self.pos + take])
                self.pos += take
                n -= take
            else:
                data = self._recv(min(n, self.RECV))
                if len(data) > n:  # cannot happen: recv(n) returns at most n
                    raise AssertionError("recv overrun")
                sink(data)
                n -= len(data)

    def consume_to_eof(self, sink):
        if self.avail():
            sink(self.buf[self.pos:])
            self.pos = len(self.buf)
        while True:
            try:
                data = self._recv(self.RECV)
            except ConnectionClosed:
                return
            sink(data)


def parse_header_lines(lines):
    headers = []
    for line in lines:
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep:
            raise ProtocolError(f"header line without colon: {line!r}")
        headers.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))
    return headers


class Headers(list):
    """A list of (name, value) with case-insensitive lookups."""

    def get(self, name, default=None):
        name = name.lower()
        for n, v in self:
            if n.lower() == name:
                return v
        return default

    def get_all(self, name):
        name = name.lower()
        return [v for n, v in self if n.lower() == name]

    def has(self, name):
        return bool(self.get_all(name))


class Response:
    def __init__(self, version, status, reason, headers, raw_head):
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = Headers(headers)
        self.raw_head = raw_head
        self.body = b""
        self.body_len = 0
        self.framing = "none"  # none | length | chunked | close
        self.trailers = Headers()
        self.interim = []  # 1xx responses before this one, as Response objects
        self.complete = False

    def header(self, name, default=None):
        return self.headers.get(name, default)

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError as e:
            raise AssertionError(f"body is not JSON: {self.body[:300]!r}") from e

    def __repr__(self):
        return f"<Response {self.status} {self.framing} {self.body_len}B {self.body[:120]!r}>"


_STATUS_RE = re.compile(rb"^HTTP/1\.([01]) ([0-9]{3})(?: (.*))?$")


def _body_kind(resp, head_request):
    if head_request or resp.status in (204, 304) or 100 <= resp.status < 200:
        return "none", 0
    te = resp.headers.get_all("transfer-encoding")
    if te:
        codings = [c.strip().lower() for v in te for c in v.split(",") if c.strip()]
        if resp.headers.has("content-length"):
            raise ProtocolError("response has both Transfer-Encoding and Content-Length")
        if codings[-1:] != ["chunked"]:
            raise ProtocolError(f"unsupported transfer coding {te}")
        if resp.version == "HTTP/1.0":
            raise ProtocolError("chunked response to/for HTTP/1.0")
        return "chunked", 0
    cls = resp.headers.get_all("content-length")
    if cls:
        if len(set(cls)) != 1 or not cls[0].isdigit():
            raise ProtocolError(f"bad Content-Length {cls}")
        return "length", int(cls[0])
    return "close", 0


def read_response(reader, head_request=False, sink=None, keep_interim=True):
    """Reads one final response (collecting 1xx before it) from a SockReader."""
    interim = []
    while True:
        raw = reader.read_until(b"\r\n\r\n", 1024 * 1024)
        lines = raw[:-4].split(b"\r\n")
        m = _STATUS_RE.match(lines[0])
        if not m:
            raise ProtocolError(f"bad status line {lines[0][:200]!r}")
        resp = Response("HTTP/1." + m.group(1).decode(), int(m.group(2)),
                        (m.group(3) or b"").decode("latin-1"), parse_header_lines(lines[1:]), raw)
        if 100 <= resp.status < 200 and resp.status != 101:
            interim.append(resp)
            continue
        break
    resp.interim = interim if keep_interim else []
    kind, length = _body_kind(resp, head_request)
    resp.framing = kind
    parts = []

    def take(data):
        resp.body_len += len(data)
        if sink is not None:
            sink(data)
        else:
            parts.append(bytes(data))

    try:
        if kind == "length":
            reader.consume(length, take)
        elif kind == "chunked":
            while True:
                line = reader.read_line()
                size_txt = line.split(b";", 1)[0].strip(b" \t")
                if not size_txt or not re.fullmatch(rb"[0-9A-Fa-f]+", size_txt):
                    raise ProtocolError(f"bad chunk size line {line[:100]!r}")
                size = int(size_txt, 16)
                if size == 0:
                    trailer_lines = []
                    while True:
                        tl = reader.read_line()
                        if not tl:
                            break
                        trailer_lines.append(tl)
                    resp.trailers = Headers(parse_header_lines(trailer_lines))
                    break
                reader.consume(size, take)
                if reader.read_exact(2) != b"\r\n":
                    raise ProtocolError("chunk data not followed by CRLF")
        elif kind == "close":
            reader.consume_to_eof(take)
    except ConnectionClosed as e:
        resp.body = b"".join(parts)
        raise IncompleteBody(f"connection ended inside a {kind} body after {resp.body_len} bytes ({e})",
                             resp) from None
    resp.body = b"".join(parts)
    resp.complete = True
    return resp


def build_request(method, target, headers=None, body=None, version="HTTP/1.1", host="test.local"):
    """Request bytes. Host is added first unless given (or host=None); Content-Length is added
    for a body unless Content-Length or Transfer-Encoding is given. A str body is UTF-8."""
    hdrs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    names = {n.lower() for n, _ in hdrs}
    lines = [f"{method} {target} {version}"]
    if host is not None and "host" not in names:
        lines.append(f"Host: {host}")
    if isinstance(body, str):
        body = body.encode()
    if body is not None and "content-length" not in names and "transfer-encoding" not in names:
        hdrs.append(("Content-Length", str(len(body))))
    lines += [f"{n}: {v}" for n, v in hdrs]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def chunk(data):
    """One chunk of the chunked coding (RFC 9112 §7.1)."""
    return b"%x\r\n" % len(data) + data + b"\r\n"


def chunked_body(pieces):
    return b"".join(chunk(p) for p in pieces if p) + b"0\r\n\r\n"


class RawConn:
    """One client connection to 127.0.0.1:port: exact bytes out, strictly parsed responses in."""

    def __init__(self, port, timeout=5.0):
        self.port = port
        self.timeout = slack(timeout)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = SockReader(self.sock)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def settimeout(self, seconds):
        self.sock.settimeout(slack(seconds) if seconds is not None else None)

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("latin-1")
        self.sock.sendall(data)

    def request(self, method, target, headers=None, body=None, **kw):
        self.send(build_request(method, target, headers, body, **kw))

    def read_response(self, head=False, sink=None, timeout=None):
        if timeout is not None:
            self.settimeout(timeout)
        try:
            return read_response(self.reader, head_request=head, sink=sink)
        finally:
            if timeout is not None:
                self.sock.settimeout(self.timeout)

    def read_head(self, timeout=None):
        """Reads only the next response head (e.g. a 100 Continue); returns a Response without body."""
        if timeout is not None:
            self.settimeout(timeout)
        try:
            raw = self.reader.read_until(b"\r\n\r\n", 1024 * 1024)
        finally:
            if timeout is not None:
                self.sock.settimeout(self.timeout)
        lines = raw[:-4].split(b"\r\n")
        m = _STATUS_RE.match(lines[0])
        if not m:
            raise ProtocolError(f"bad status line {lines[0][:200]!r}")
        return Response("HTTP/1." + m.group(1).decode(), int(m.group(2)), (m.group(3) or b"").decode(),
                        parse_header_lines(lines[1:]), raw)

    def roundtrip(self, method, target, headers=None, body=None, timeout=None, **kw):
        self.request(method, target, headers, body, **kw)
        return self.read_response(head=(method == "HEAD"), timeout=timeout)

    def wait_closed(self, timeout=2.0):
        """Waits for the peer to close. Returns (closed, bytes received meanwhile)."""
        extra = bytearray()
        if self.reader.avail():
            extra += self.reader.buf[self.reader.pos:]
            self.reader.pos = len(self.reader.buf)
        deadline = time.monotonic() + slack(timeout)
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False, bytes(extra)
                self.sock.settimeout(left)
                data = self.sock.recv(65536)
                if not data:
                    return True, bytes(extra)
                extra += data
        except (ConnectionResetError, BrokenPipeError):
            return True, bytes(extra)
        except socket.timeout:
            return False, bytes(extra)
        finally:
            try:
                self.sock.settimeout(self.timeout)
            except OSError:
                pass


def request(port, method, target, headers=None, body=None, timeout=5.0, **kw):
    """One request on a fresh connection; returns the Response."""
    with RawConn(port, timeout=timeout) as c:
        return c.roundtrip(method, target, headers, body, **kw)


def assert_gateway_error(resp, status, cause):
    """A response sluice made itself (DESIGN.md "Errors the gateway makes")."""
    assert resp.status == status, f"expected {status} {cause}, got {resp!r} {resp.headers}"
    assert resp.header("Sluice-Error") == cause, f"Sluice-Error {resp.header('Sluice-Error')!r} != {cause!r}"
    ctype = resp.header("Content-Type", "")
    assert ctype.split(";")[0].strip().lower() == "application/json", f"Content-Type {ctype!r}"
    body = resp.json()
    assert body.get("error") == cause, body
    assert isinstance(body.get("message"), str) and body["message"], body
    rid = resp.header("X-Request-Id")
    assert rid and REQUEST_ID_RE.match(rid), f"X-Request-Id {rid!r}"
    assert body.get("request_id") == rid, f"body request_id {body.get('request_id')!r} != header {rid!r}"
    return body


# ---- the gateway process ----------------------------------------------------------------------

ACTIVE = []  # Gateway objects not yet cleaned up; their logs are attached to failing tests


class GatewayDied(AssertionError):
    pass


def run_cli(args, timeout=15, cwd=None):
    """Runs `sluice ARGS...` to completion; returns CompletedProcess (text)."""
    return subprocess.run([sluice_bin(), *args], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=slack(timeout), cwd=cwd)


class Gateway:
    """One `sluice run -c DIR/sluice.yaml` process. Missing listen/admin/workers/logging keys are
    filled in: a fresh port, a fresh admin port, 2 workers, JSON access log to DIR/access.log."""

    def __init__(self, workdir, config, name="sluice"):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.port = free_port()
        self.admin_port = free_port()
        self.config_path = self.dir / "sluice.yaml"
        self.access_log_path = self.dir / "access.log"
        self.stdout_path = self.dir / "stdout.log"
        self.stderr_path = self.dir / "stderr.log"
        self.config = self.complete(config)
        self.proc = None
        self.returncode = None
        self.signalled = False  # a test sent a stopping signal: an exit is expected
        self.shared = False  # one gateway for a whole module (restarted after a failing test)
        self.restarts = 0
        self._files = []
        # Optional, for fault injection: a callable run in the child before exec (e.g. lowering
        # RLIMIT_NOFILE with resource.setrlimit), and variables added to its environment.
        self.preexec_fn = None
        self.extra_env = {}
        self.stdout_override = None  # e.g. subprocess.PIPE: the test then owns proc.stdout

    def complete(self, config):
        cfg = copy.deepcopy(config)
        out = {"listen": [{"address": f"127.0.0.1:{self.port}"}],
               "admin": {"address": f"127.0.0.1:{self.admin_port}"},
               "workers": 2,
               "logging": {"access": {"path": str(self.access_log_path), "format": "json"}, "level": "info"}}
        out.update(cfg)
        return out

    def write_config(self, config=None):
        if config is not None:
            self.config = self.complete(config)
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(to_yaml(self.config))
        os.replace(tmp, self.config_path)

    # -- lifecycle --

    def start(self, wait=True, write=True):
        """`write=False` starts on the file as it is (e.g. as the admin API left it)."""
        if write:
            self.write_config()
        out = open(self.stdout_path, "ab") if self.stdout_override is None else self.stdout_override
        err = open(self.stderr_path, "ab")
        self._files = [out, err] if self.stdout_override is None else [err]
        env = dict(os.environ)
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
        env.update(self.extra_env)
        # preexec_fn only when set: a test may have wrapped Popen with its own (test_96_doctor.py).
        extra = {"preexec_fn": self.preexec_fn} if self.preexec_fn is not None else {}
        self.proc = subprocess.Popen([sluice_bin(), "run", "-c", str(self.config_path)], stdin=subprocess.DEVNULL,
                                     stdout=out, stderr=err, cwd=str(self.dir), env=env, start_new_session=True,
                                     **extra)
        self.signalled = False
        if self not in ACTIVE:
            ACTIVE.append(self)
        if wait:
            self.wait_ready()
        return self

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout=10.0):
        deadline = time.monotonic() + slack(timeout)
        while True:
            rc = self.proc.poll()
            if rc is not None:
                self.returncode = rc
                self.signalled = True  # a failed start is reported here, not restarted
                raise GatewayDied(f"sluice exited with {rc} before /ready\n{self.log_tail()}")
            if self.admin_status("/ready") == 200:
                return
            if time.monotonic() > deadline:
                self.kill()
                raise GatewayDied(f"sluice not ready after {slack(timeout)}s\n{self.log_tail()}")
            time.sleep(0.05)

    def admin_get(self, path, timeout=2.0):
        """(status, headers, body) of GET on the admin listener."""
        c = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=slack(timeout))
        try:
            c.request("GET", path)
            r = c.getresponse()
            return r.status, Headers(r.getheaders()), r.read()
        finally:
            c.close()

    def admin_request(self, method, path, body=None, headers=None, timeout=5.0):
        """(status, headers, parsed JSON or raw bytes) of any request on the admin listener.
        `body` may be bytes, str, or a JSON-able object (sent as JSON)."""
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode()
        c = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=slack(timeout))
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            raw = r.read()
            try:
                data = json.loads(raw) if raw else None
            except ValueError:
                data = raw
            return r.status, Headers(r.getheaders()), data
        finally:
            c.close()

    def admin_status(self, path):
        try:
            return self.admin_get(path, timeout=1.0)[0]
        except (OSError, http.client.HTTPException):
            return None

    def send_signal(self, sig):
        if sig != signal.SIGHUP:
            self.signalled = True
        if self.alive():
            os.kill(self.proc.pid, sig)

    def crashed(self):
        """Started, not asked to stop, and gone."""
        return self.proc is not None and not self.signalled and self.proc.poll() is not None

    def restart(self):
        """Starts the gateway again with the same config and ports, killing it first if it runs
        (for a module's shared gateway: a crash, hang or confusion left by one failing test must
        not fail every later test of the module)."""
        if self.alive():
            self.signalled = True
            self.send_signal(signal.SIGTERM)
            if self.wait(2) is None:
                self.kill()
        for f in self._files:
            f.close()
        self._files = []
        self.restarts += 1
        with open(self.stderr_path, "a") as f:
            f.write(f"--- harness: restart #{self.restarts} ---\n")
        self.start()

    def wait(self, timeout):
        """Exit code, or None if still running after `timeout` seconds."""
        try:
            self.returncode = self.proc.wait(timeout=slack(timeout))
            return self.returncode
        except subprocess.TimeoutExpired:
            return None

    def stop(self, sig=signal.SIGTERM, timeout=15.0):
        """Sends `sig` and waits for the exit; returns the exit code (the test fails if it hangs)."""
        self.send_signal(sig)
        rc = self.wait(timeout)
        if rc is None:
            self.kill()
            raise AssertionError(f"sluice did not exit within {slack(timeout)}s of {sig!r}\n{self.log_tail()}")
        return rc

    def kill(self):
        self.signalled = True
        if self.alive():
            os.kill(self.proc.pid, signal.SIGKILL)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for f in self._files:
            f.close()
        self._files = []

    def shutdown(self, timeout=5.0):
        """Teardown: SIGTERM and wait (so sanitizer builds report leaks), SIGKILL if it lingers.
        Returns the exit code, or None if it had to be killed (or was not running)."""
        rc = None
        if self.alive():
            self.send_signal(signal.SIGTERM)
            rc = self.wait(timeout)
        self.cleanup()
        return rc

    def cleanup(self):
        self.kill()
        if self in ACTIVE:
            ACTIVE.remove(self)

    def reload(self, config):
        """Writes a new config and sends SIGHUP."""
        self.write_config(config)
        self.send_signal(signal.SIGHUP)

    # -- observation --

    def status_kb(self, field):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise KeyError(field)

    def rss_kb(self):
        return self.status_kb("VmRSS")

    def hwm_kb(self):
        return self.status_kb("VmHWM")

    def access_log(self):
        """The access log's complete lines, parsed; a line that is not a JSON object fails the test."""
        try:
            data = self.access_log_path.read_text()
        except FileNotFoundError:
            return []
        out = []
        for line in data.split("\n")[:-1]:  # the last piece is empty or still being written
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise AssertionError(f"access log line is not JSON: {line[:300]!r}") from e
            assert isinstance(obj, dict), line
            out.append(obj)
        return out

    def wait_access_log(self, pred=None, count=1, timeout=5.0):
        """Waits until `count` entries satisfy pred (default: any); returns them (maybe fewer)."""
        deadline = time.monotonic() + slack(timeout)
        while True:
            entries = [e for e in self.access_log() if pred is None or pred(e)]
            if len(entries) >= count or time.monotonic() > deadline:
                return entries
            time.sleep(0.05)

    def log_entry(self, request_id, timeout=5.0):
        entries = self.wait_access_log(lambda e: e.get("request_id") == request_id, 1, timeout)
        assert len(entries) == 1, f"expected one access log line for {request_id}, got {entries}"
        return entries[0]

    def log_tail(self, lines=80):
        out = []
        for p in (self.stderr_path, self.stdout_path):
            try:
                text = p.read_text(errors="replace").splitlines()
            except FileNotFoundError:
                continue
            out.append(f"--- {p.name} (last {lines} lines) ---")
            out.extend(text[-lines:])
        return "\n".join(out)

    # -- clients --

    def conn(self, timeout=5.0):
        return RawConn(self.port, timeout=timeout)

    def request(self, method, target, headers=None, body=None, **kw):
        return request(self.port, method, target, headers, body, **kw)


class RssSampler:
    """Samples a process's VmRSS every 20 ms in a thread; .peak_kb is the largest seen."""

    def __init__(self, gateway, interval=0.02):
        self.gw = gateway
        self.interval = interval
        self.peak_kb = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.peak_kb = max(self.peak_kb, self.gw.rss_kb())
            except (OSError, KeyError):
                return
            self._stop.wait(self.interval)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(5)


def md5_of_pattern(nbytes, pattern):
    h = hashlib.md5()
    full, rest = divmod(nbytes, len(pattern))
    for _ in range(full):
        h.update(pattern)
    h.update(pattern[:rest])
    return h.hexdigest()


# ---- .case files ------------------------------------------------------------------------------

class Case:
    def __init__(self, name, meta, data):
        self.name = name
        self.meta = meta
        self.data = data
        self.description = meta.get("description", "")
        try:
            self.expect_status = int(meta["expect_status"])
        except (KeyError, ValueError) as e:
            raise ValueError(f"{name}: expect_status missing or not a number") from e
        cause = meta.get("expect_cause", "").strip()
        self.expect_cause = None if cause in ("", "-") else cause
        mnr = meta.get("upstream_must_not_receive")
        self.must_not_receive = decode_case_bytes(mnr) if mnr else None

    @property
    def accepted(self):
        return self.expect_status == 200

    def __repr__(self):
        return f"<Case {self.name} {self.expect_status}>"


_REPEAT_RE = re.compile(r"\{repeat:((?:(?!\{repeat:).)*?):(\d+)\}", re.S)


def decode_case_bytes(text):
    """Raw request text -> bytes: real newlines dropped, {repeat:X:N} expanded, then the
    escapes \\r \\n \\t \\0 \\\\ \\xHH interpreted (any other backslash stays literal)."""
    s = text.replace("\r", "").replace("\n", "")
    while True:
        s2 = _REPEAT_RE.sub(lambda m: m.group(1) * int(m.group(2)), s)
        if s2 == s:
            break
        s = s2
    out = bytearray()
    i, n = 0, len(s)
    simple = {"r": b"\r", "n": b"\n", "t": b"\t", "0": b"\0", "\\": b"\\"}
    while i < n:
        c = s[i]
        if c == "\\" and i + 1 < n:
            e = s[i + 1]
            if e in simple:
                out += simple[e]
                i += 2
                continue
            if e == "x" and re.fullmatch(r"[0-9A-Fa-f]{2}", s[i + 2:i + 4]):
                out.append(int(s[i + 2:i + 4], 16))
                i += 4
                continue
        out += c.encode("utf-8")
        i += 1
    return bytes(out)


def parse_case(text, name="<case>"):
    m = re.search(r"^---[ \t]*\r?$", text, re.M)
    if not m:
        raise ValueError(f"{name}: no '---' line")
    meta = {}
    for line in text[:m.start()].splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        k, sep, v = s.partition(":")
        if not sep:
            raise ValueError(f"{name}: bad header line {line!r}")
        meta[k.strip().lower()] = v.strip()
    raw = text[m.end():]
    if raw.startswith("\n"):
        raw = raw[1:]
    return Case(name, meta, decode_case_bytes(raw))


def load_cases(directory):
    return [parse_case(p.read_text(), p.stem) for p in sorted(Path(directory).glob("*.case"))]


def wait_for(pred, timeout, what, interval=0.05):
    """Polls `pred` until it is true; fails after `timeout` seconds (scaled by slack())."""
    deadline = time.monotonic() + slack(timeout)
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(interval)


def _symbolizer_pipes(pid):
    """Pipes `pid` shares with a child llvm-symbolizer: a sanitizer starts one (two pipes) the
    first time it symbolizes a report, a suppressed one too; they are the sanitizer's, not
    descriptors the gateway opened."""
    inodes = set()
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
            if f"\nPPid:\t{pid}\n" not in text or "symboliz" not in text.split("\n", 1)[0]:
                continue
            fd_dir = status.parent / "fd"
            for fd in fd_dir.iterdir():
                target = os.readlink(fd)
                if target.startswith("pipe:"):
                    inodes.add(target)
        except OSError:
            continue
    return inodes


def fd_count(pid, looks=5):
    """Open descriptors of `pid`: the fewest over a few looks (the doctor's 2 s sample opens
    /proc/self/fd for a moment), not counting a sanitizer's symbolizer pipes."""
    counts = []
    for i in range(looks):
        if i:
            time.sleep(0.03)
        targets = []
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                pass
        pipes = _symbolizer_pipes(pid) if SANITIZED else set()
        counts.append(sum(1 for t in targets if t not in pipes))
    return min(counts)


def poll_value(pred, timeout=5.0, interval=0.05):
    """Polls `pred` until it returns something true and returns that (or its last falsy value
    after `timeout` seconds, scaled by slack())."""
    deadline = time.monotonic() + slack(timeout)
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    return pred()


def serve_json(doc, port=None, ssl_context=None, on_get=None):
    """Serves a JSON document to every GET on 127.0.0.1 from a thread: `doc` is the document or a
    callable returning it (read at each request); `on_get()` runs first when given. Returns
    (server, port); server.shutdown() and server.server_close() stop it (the port then refuses)."""
    import http.server

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if on_get is not None:
                on_get()
            body = json.dumps(doc() if callable(doc) else doc).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    port = port or free_port()

    class Server(http.server.ThreadingHTTPServer):
        allow_reuse_address = True

    srv = Server(("127.0.0.1", port), H)
    if ssl_context is not None:
        srv.socket = ssl_context.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, port
