"""
Scriptable HTTP/1.1 backends on loopback for the integration tests.

Backend(handler) listens on 127.0.0.1:<free port>, serves each connection in its own thread and
records everything: per connection the exact bytes received (up to a cap) and per request the
parsed head and body. A handler is a function of one Exchange; the factories below build the
usual ones (echo, fixed, chunked, close-delimited, streamed, sink, sleeps, hang-ups, garbage,
1xx) and `paths({...})` picks one by path prefix, so one backend can play many parts.

Blackhole() is a listener whose accept queue is full, so a connect to it never completes: the
kernel drops the SYNs (Linux drops a SYN when the listener's accept queue is full), which is how
upstream connect timeouts are produced on loopback.
"""
import hashlib
import json
import struct
import socket
import threading
import time
import traceback
import urllib.parse

from harness import ConnectionClosed, Headers, SockReader, free_port, parse_header_lines

PATTERN = bytes(range(256)) * 1024  # 256 KiB; streamed bodies repeat it
RECORD_CAP = 4 * 1024 * 1024  # raw bytes kept per connection (all are counted)
BODY_CAP = 1024 * 1024  # body bytes kept per request (all are counted)


class Request:
    def __init__(self, conn, index, raw_head):
        self.conn = conn  # ConnRecord
        self.index = index  # order of arrival over the whole backend
        self.raw_head = raw_head
        self.time = time.monotonic()
        lines = raw_head[:-4].split(b"\r\n")
        parts = lines[0].decode("latin-1").split(" ")
        if len(parts) != 3:
            raise ValueError(f"bad request line {lines[0]!r}")
        self.method, self.target, self.version = parts
        path, _, query = self.target.partition("?")
        self.path, self.query = path, query
        self.headers = Headers(parse_header_lines(lines[1:]))
        self.body = bytearray()
        self.body_len = 0
        self.body_complete = False
        te = ",".join(self.headers.get_all("transfer-encoding")).lower()
        if "chunked" in te:
            self.framing = "chunked"
        elif self.headers.has("content-length"):
            self.framing = "length"
        else:
            self.framing = "none"
            self.body_complete = True

    def header(self, name, default=None):
        return self.headers.get(name, default)

    def param(self, name, default=None):
        return urllib.parse.parse_qs(self.query).get(name, [default])[0]

    @property
    def wants_keep_alive(self):
        conn = ",".join(self.headers.get_all("connection")).lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" in conn
        return "close" not in conn

    def __repr__(self):
        return f"<Request #{self.index} {self.method} {self.target} conn={self.conn.id} body={self.body_len}>"


class ConnRecord:
    def __init__(self, cid, peer):
        self.id = cid
        self.peer = peer
        self.raw = bytearray()
        self.nbytes = 0
        self.requests = []
        self.opened = time.monotonic()
        self.closed = threading.Event()

    def record(self, data):
        self.nbytes += len(data)
        room = RECORD_CAP - len(self.raw)
        if room > 0:
            self.raw += data[:room]


class Exchange:
    """One request as a handler sees it."""

    def __init__(self, backend, sock, reader, req):
        self.backend = backend
        self.sock = sock
        self.reader = reader
        self.req = req
        self.keep_alive = req.wants_keep_alive
        self.closed = False
        self.auto_continue = True  # send 100 Continue before reading a body that expects it
        self._continued = False

    @property
    def head_request(self):
        return self.req.method == "HEAD"

    # -- reading --

    def _maybe_continue(self):
        if (self.auto_continue and not self._continued and not self.req.body_complete
                and self.req.header("expect", "").lower() == "100-continue"):
            self._continued = True
            self.send(b"HTTP/1.1 100 Continue\r\n\r\n")

    def read_body(self, store=True, hasher=None):
        """Reads the whole request body (decoding chunked); returns the kept bytes."""
        req = self.req
        if req.body_complete:
            return bytes(req.body)
        self._maybe_continue()

        def take(data):
            req.body_len += len(data)
            if hasher is not None:
                hasher.update(data)
            if store and len(req.body) < BODY_CAP:
                req.body += data[: BODY_CAP - len(req.body)]

        if req.framing == "length":
            self.reader.consume(int(req.header("content-length")), take)
        else:
            while True:
                line = self.reader.read_line()
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while self.reader.read_line():
                        pass  # trailers
                    break
                self.reader.consume(size, take)
                if self.reader.read_exact(2) != b"\r\n":
                    raise ValueError("chunk data not followed by CRLF")
        req.body_complete = True
        return bytes(req.body)

    def sink_body(self):
        """Reads the body without keeping it; returns (bytes, md5 hex)."""
        h = hashlib.md5()
        self.read_body(store=False, hasher=h)
        return self.req.body_len, h.hexdigest()

    # -- writing --

    def send(self, data):
        self.sock.sendall(data)

    def send_head(self, status, headers=(), reason=None, version="HTTP/1.1"):
        reason = reason if reason is not None else REASONS.get(status, "Status")
        lines = [f"{version} {status} {reason}"] + [f"{n}: {v}" for n, v in headers]
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def respond(self, status=200, body=b"", headers=(), reason=None, close=False):
        """A complete response framed by Content-Length (none for 1xx/204/304, no body bytes for HEAD)."""
        if isinstance(body, str):
            body = body.encode()
        headers = list(headers)
        names = {n.lower() for n, _ in headers}
        if close:
            headers.append(("Connection", "close"))
            self.keep_alive = False
        if status not in (204, 304) and not 100 <= status < 200 and not names & {"content-length",
                                                                                  "transfer-encoding"}:
            headers.append(("Content-Length", str(len(body))))
        self.send_head(status, headers, reason)
        if body and not self.head_request and status not in (204, 304):
            self.send(body)

    def close(self):
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def reset(self):
        """Closes with RST (SO_LINGER 0)."""
        self.closed = True
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


REASONS = {100: "Continue", 103: "Early Hints", 200: "OK", 201: "Created", 204: "No Content",
           304: "Not Modified", 400: "Bad Request", 404: "Not Found", 500: "Internal Server Error",
           503: "Service Unavailable"}


class Backend:
    def __init__(self, handler=None, name="backend", backlog=512):
        self.name = name
        self.handler = handler or echo()
        self.port = free_port()
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", self.port))
        self.lsock.listen(backlog)
        self.lock = threading.Lock()
        self.conns = []
        self.requests = []
        self.errors = []  # handler exceptions other than the peer going away
        self._live = set()
        self._stopping = False
        self._seq = 0
        threading.Thread(target=self._accept_loop, name=f"{name}-accept", daemon=True).start()

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    @property
    def connection_count(self):
        with self.lock:
            return len(self.conns)

    def reset(self):
        """Forgets the records (live connections keep being served and recorded afresh)."""
        with self.lock:
            self.conns = [c for c in self.conns if not c.closed.is_set()]
            for c in self.conns:
                c.raw = bytearray()
                c.nbytes = 0
                c.requests = []
            self.requests = []
            self.errors = []

    def raw_received(self):
        with self.lock:
            return b"".join(bytes(c.raw) for c in self.conns)

    def wait_requests(self, count=1, pred=None, timeout=5.0):
        from harness import slack
        deadline = time.monotonic() + slack(timeout)
        while True:
            with self.lock:
                found = [r for r in self.requests if pred is None or pred(r)]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.01)

    def find(self, pred):
        with self.lock:
            return [r for r in self.requests if pred(r)]

    def close(self):
        self._stopping = True
        try:
            # shutdown first: a close alone leaves the socket listening while the accept thread
            # still blocks in accept() on it, so one more connection could be taken.
            self.lsock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.lsock.close()
        except OSError:
            pass
        with self.lock:
            live = list(self._live)
        for s in live:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _accept_loop(self):
        while not self._stopping:
            try:
                sock, peer = self.lsock.accept()
            except OSError:
                return
            with self.lock:
                rec = ConnRecord(len(self.conns), peer)
                self.conns.append(rec)
                self._live.add(sock)
            threading.Thread(target=self._serve, args=(sock, rec), name=f"{self.name}-conn{rec.id}",
                             daemon=True).start()

    def _serve(self, sock, rec):
        sock.settimeout(120)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = SockReader(sock, on_data=rec.record)
        try:
            while True:
                try:
                    head = reader.read_until(b"\r\n\r\n", 1024 * 1024)
                except (ConnectionClosed, OSError):
                    return
                with self.lock:
                    try:
                        req = Request(rec, self._seq, head)
                    except ValueError:
                        self.errors.append(f"unparsable request head {head[:200]!r}")
                        return
                    self._seq += 1
                    rec.requests.append(req)
                    self.requests.append(req)
                ex = Exchange(self, sock, reader, req)
                try:
                    self.handler(ex)
                    if not ex.closed and not req.body_complete:
                        ex.read_body()
                except (ConnectionClosed, OSError):
                    return
                except Exception:
                    self.errors.append(traceback.format_exc())
                    return
                if ex.closed or not ex.keep_alive:
                    return
        finally:
            with self.lock:
                self._live.discard(sock)
            try:
                sock.close()
            except OSError:
                pass
            rec.closed.set()


class Blackhole:
    """A listening socket that never accepts and whose accept queue is full: connects hang."""

    def __init__(self):
        self.port = free_port()
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.bind(("127.0.0.1", self.port))
        self.lsock.listen(0)
        self.fill = []
        for _ in range(16):
            s = socket.socket()
            s.settimeout(0.3)
            try:
                s.connect(("127.0.0.1", self.port))
                self.fill.append(s)
            except OSError:
                s.close()
                break
        probe = socket.socket()
        probe.settimeout(0.5)
        try:
            probe.connect(("127.0.0.1", self.port))
            raise RuntimeError("blackhole: a probe connect completed; the accept queue is not full")
        except socket.timeout:
            pass
        finally:
            probe.close()

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def close(self):
        for s in self.fill:
            s.close()
        self.lsock.close()


# ---- handlers -----------------------------------------------------------------------------------


def echo(status=200, headers=()):
    """200 JSON: what the backend received (method, target, headers as [name, value] pairs, body)."""

    def h(ex):
        body = ex.read_body()
        r = ex.req
        payload = {"backend": ex.backend.name, "conn": r.conn.id, "index": r.index, "method": r.method,
                   "target": r.target, "path": r.path, "query": r.query, "version": r.version,
                   "headers": [[n, v] for n, v in r.headers], "body_len": r.body_len,
                   "body": body.decode("latin-1") if r.body_len <= 65536 else None}
        ex.respond(status, json.dumps(payload).encode(), [("Content-Type", "application/json"), *headers])

    return h


def fixed(status=200, body=b"", headers=(), reason=None, close=False):
    def h(ex):
        ex.read_body()
        ex.respond(status, body, headers, reason, close)

    return h


def chunked(pieces, headers=(), trailers=(), pause=0.0):
    """A chunked response of the given pieces (with an optional pause between them)."""

    def h(ex):
        ex.read_body()
        ex.send_head(200, [*headers, ("Transfer-Encoding", "chunked")])
        for i, p in enumerate(pieces):
            if i and pause:
                time.sleep(pause)
            ex.send(b"%x\r\n" % len(p) + p + b"\r\n")
        ex.send(b"0\r\n" + b"".join(f"{n}: {v}\r\n".encode() for n, v in trailers) + b"\r\n")

    return h


def echo_chunked(piece=1000):
    """Answers the request body back, chunked in pieces of `piece` bytes."""

    def h(ex):
        body = ex.read_body()
        ex.send_head(200, [("Transfer-Encoding", "chunked"), ("Content-Type", "application/octet-stream")])
        for i in range(0, len(body), piece):
            p = body[i:i + piece]
            ex.send(b"%x\r\n" % len(p) + p + b"\r\n")
        ex.send(b"0\r\n\r\n")

    return h


def close_delimited(body, headers=()):
    """A response without Content-Length or chunked: the body ends when the connection closes."""

    def h(ex):
        ex.read_body()
        ex.send_head(200, [*headers, ("Connection", "close")])
        ex.send(body)
        ex.close()

    return h


def stream(nbytes=None, mode="length", pause_at=None, pause=0.0):
    """Streams nbytes (or ?n= from the query) of PATTERN; mode: length | chunked | close.
    With pause_at, sleeps `pause` seconds once that many bytes were sent."""

    def h(ex):
        ex.read_body()
        n = int(ex.req.param("n", nbytes))
        headers = [("Content-Type", "application/octet-stream")]
        if mode == "length":
            headers.append(("Content-Length", str(n)))
        elif mode == "chunked":
            headers.append(("Transfer-Encoding", "chunked"))
        else:
            headers.append(("Connection", "close"))
        ex.send_head(200, headers)
        sent, paused = 0, False
        view = memoryview(PATTERN)
        while sent < n:
            piece = view[: min(len(PATTERN), n - sent)]
            if mode == "chunked":
                ex.send(b"%x\r\n" % len(piece))
                ex.send(piece)
                ex.send(b"\r\n")
            else:
                ex.send(piece)
            sent += len(piece)
            if pause_at is not None and not paused and sent >= pause_at:
                paused = True
                time.sleep(pause)
        if mode == "chunked":
            ex.send(b"0\r\n\r\n")
        if mode == "close":
            ex.close()

    return h


def sink(pause=0.0):
    """Reads the body without keeping it (after `pause` seconds); answers {"bytes": N, "md5": hex}."""

    def h(ex):
        if pause:
            time.sleep(pause)
        n, md5 = ex.sink_body()
        ex.respond(200, json.dumps({"bytes": n, "md5": md5}).encode(), [("Content-Type", "application/json")])

    return h


def sleep_then(seconds, then=None):
    """Reads the body, sleeps, then runs `then` (default: 200 "slept")."""
    then = then or fixed(200, b"slept")

    def h(ex):
        ex.read_body()
        time.sleep(seconds)
        then(ex)

    return h


def trickle_head(lines, interval, body=b""):
    """Sends the status line and each header line `interval` seconds apart."""

    def h(ex):
        ex.read_body()
        for line in lines:
            ex.send(line.encode() + b"\r\n")
            time.sleep(interval)
        ex.send(b"\r\n" + body)

    return h


def partial_body(total, sent, then="close", stall=10.0, mode="length"):
    """Promises `total` bytes (Content-Length, or chunked), sends `sent`, then closes, resets or stalls."""

    def h(ex):
        ex.read_body()
        if mode == "length":
            ex.send_head(200, [("Content-Length", str(total))])
            ex.send(PATTERN[:sent])
        else:
            ex.send_head(200, [("Transfer-Encoding", "chunked")])
            ex.send(b"%x\r\n" % total + PATTERN[:sent])
        if then == "stall":
            time.sleep(stall)
            ex.close()
        elif then == "reset":
            ex.reset()
        else:
            ex.close()

    return h


def hangup(reset=False, first=b""):
    """Reads the request, sends `first` (maybe part of a head), then closes or resets."""

    def h(ex):
        ex.read_body()
        if first:
            ex.send(first)
            time.sleep(0.05)
        if reset:
            ex.reset()
        else:
            ex.close()

    return h


def garbage(data):
    """Reads the request, answers `data` verbatim and closes."""

    def h(ex):
        ex.read_body()
        ex.send(data)
        time.sleep(0.05)
        ex.close()

    return h


def interim(codes=(103,), then=None, headers=(("Link", "</style.css>; rel=preload"),)):
    """Sends 1xx responses (e.g. 103 Early Hints) before `then` (default 200 "final")."""
    then = then or fixed(200, b"final")

    def h(ex):
        ex.read_body()
        for c in codes:
            ex.send_head(c, headers)
        then(ex)

    return h


def close_after(handler, delay=0.05):
    """Runs handler (a keep-alive response), then closes the connection `delay` seconds later,
    as a server with a short idle timeout does."""

    def h(ex):
        handler(ex)
        time.sleep(delay)
        ex.close()

    return h


def paths(mapping, default=None):
    """Chooses a handler by the longest matching path prefix of the request."""
    keys = sorted(mapping, key=len, reverse=True)
    default = default or echo()

    def h(ex):
        for k in keys:
            if ex.req.path.startswith(k):
                return mapping[k](ex)
        return default(ex)

    return h
