"""
A threaded HTTP/2 backend over python3-h2 (Debian's), for the upstream-h2 and gRPC tests: h2c
with prior knowledge on 127.0.0.1, or TLS with ALPN h2 (`ssl_ctx=`). The counterpart of
backend.Backend for `protocol: h2` upstreams.

- One reader thread per connection feeds the h2 state machine; one writer thread per connection
  sends what it produced (so nothing ever blocks the reader on a full socket); each request
  stream runs the handler in a thread of its own.
- A handler gets an H2Exchange: `.req` (method, path, query, authority, headers, body as read),
  `read_body()` / `iter_body()` (request DATA is acknowledged, i.e. the window given back, only
  as the handler consumes it: real flow control), `send_headers`, `send_data` (waits for the
  peer's stream and connection windows), `send_trailers`, `respond(status, body, headers,
  trailers)`, `reset(code)`, `goaway()`, `.cancelled` (the peer reset the stream).
- Records: connections (`connection_count`, peers, ALPN), requests (`requests`, `find`,
  `wait_requests`), resets received, and handler errors (`errors`).

H2TrailerClient is h2client.H2Client that also keeps response trailers (`st["trailers"]`).
"""
import hashlib
import json
import queue
import socket
import ssl
import threading
import time
import traceback
import urllib.parse

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hyperframe.frame

import harness
from harness import Headers, free_port
from h2client import H2Client

PATTERN = bytes(range(256)) * 1024  # 256 KiB, as backend.PATTERN
_PATTERN2 = PATTERN * 2
BODY_CAP = 16 * 1024 * 1024  # request body bytes kept per request


class H2ConnRecord:
    def __init__(self, cid, peer):
        self.id = cid
        self.peer = peer
        self.alpn = None
        self.requests = []
        self.opened = time.monotonic()
        self.closed = threading.Event()
        self.goaway_received = None  # error code of a GOAWAY from the client


class H2Request:
    def __init__(self, conn, index, stream_id, headers):
        self.conn = conn
        self.index = index
        self.stream_id = stream_id
        self.time = time.monotonic()
        self.headers = Headers([(n, v) for n, v in headers if not n.startswith(":")])
        pseudo = {n: v for n, v in headers if n.startswith(":")}
        self.pseudo = pseudo
        self.method = pseudo.get(":method")
        self.target = pseudo.get(":path", "")
        self.authority = pseudo.get(":authority")
        self.scheme = pseudo.get(":scheme")
        self.path, _, self.query = self.target.partition("?")
        self.body = bytearray()
        self.body_len = 0
        self.body_complete = False
        self.trailers = Headers()
        self.reset_by_peer = None  # error code of a RST_STREAM from the client

    def header(self, name, default=None):
        return self.headers.get(name, default)

    def param(self, name, default=None):
        return urllib.parse.parse_qs(self.query).get(name, [default])[0]

    def __repr__(self):
        return f"<H2Request #{self.index} {self.method} {self.target} conn={self.conn.id} sid={self.stream_id}>"


class StreamClosed(Exception):
    """The stream was reset (by either side) or the connection ended."""


class H2Exchange:
    def __init__(self, conn, req):
        self.c = conn  # _Conn
        self.req = req
        self.sid = req.stream_id
        self.chunks = queue.Queue()  # (bytes, flow-controlled length) | None at the end
        self.cancelled = threading.Event()
        self.head_sent = False
        self.ended = False  # we sent END_STREAM (or reset)

    @property
    def backend(self):
        return self.c.backend

    # -- reading --

    def iter_body(self, timeout=60.0):
        """The request body as it arrives; each piece's window is given back once taken."""
        while not self.req.body_complete:
            try:
                item = self.chunks.get(timeout=timeout)
            except queue.Empty:
                raise StreamClosed("no request data in time") from None
            if item is None:
                self.req.body_complete = True
                return
            if isinstance(item, Exception):
                raise item
            data, fc = item
            self.c.ack(self.sid, fc)
            self.req.body_len += len(data)
            yield data

    def read_body(self, store=True, hasher=None):
        for data in self.iter_body():
            if hasher is not None:
                hasher.update(data)
            if store and len(self.req.body) < BODY_CAP:
                self.req.body += data[: BODY_CAP - len(self.req.body)]
        return bytes(self.req.body)

    # -- writing --

    def send_headers(self, status=200, headers=(), end=False):
        hdrs = [(":status", str(status)), *[(n.lower(), str(v)) for n, v in headers]]
        self.c.call(lambda h: h.send_headers(self.sid, hdrs, end_stream=end))
        self.head_sent = True
        self.ended = self.ended or end

    def send_data(self, data, end=False):
        """Sends `data` in frames as the peer's windows allow (waits for WINDOW_UPDATE)."""
        self.c.send_data(self, memoryview(data), end)
        self.ended = self.ended or end

    def send_trailers(self, trailers):
        hdrs = [(n.lower(), str(v)) for n, v in trailers]
        self.c.call(lambda h: h.send_headers(self.sid, hdrs, end_stream=True))
        self.ended = True

    def send_raw_headers(self, headers, end=False):
        """A HEADERS frame made by hand, past h2's checks (uppercase names, connection fields,
        no :status...): for upstreams that break HTTP/2. h2's own state does not see it."""
        with self.c.lock:
            block = self.c.h2.encoder.encode(list(headers), huffman=False)  # (Huffman in Python is slow)
            size = self.c.h2.max_outbound_frame_size
            pieces = [block[i:i + size] for i in range(0, len(block), size)] or [b""]
            frames = [hyperframe.frame.HeadersFrame(self.sid, data=pieces[0])]
            frames += [hyperframe.frame.ContinuationFrame(self.sid, data=p) for p in pieces[1:]]
            frames[-1].flags.add("END_HEADERS")
            if end:
                frames[0].flags.add("END_STREAM")
            self.c._queue_locked()
            self.c.out.put(b"".join(f.serialize() for f in frames))
        self.head_sent = True
        self.ended = self.ended or end

    def end(self):
        self.c.call(lambda h: h.end_stream(self.sid))
        self.ended = True

    def respond(self, status=200, body=b"", headers=(), trailers=None, length=True):
        """A whole response: content-length (unless length=False or trailers), the body, trailers."""
        if isinstance(body, str):
            body = body.encode()
        headers = list(headers)
        if length and trailers is None and not any(n.lower() == "content-length" for n, _ in headers):
            headers.append(("content-length", str(len(body))))
        if self.req.method == "HEAD" or status in (204, 304):
            body = b""  # the head only (content-length as for a GET)
        no_body = not body and not trailers
        self.send_headers(status, headers, end=no_body)
        if no_body:
            return
        if body:
            self.send_data(body, end=not trailers)
        if trailers:
            self.send_trailers(trailers)

    def reset(self, code=h2.errors.ErrorCodes.INTERNAL_ERROR):
        self.c.call(lambda h: h.reset_stream(self.sid, code))
        self.ended = True

    def goaway(self, code=h2.errors.ErrorCodes.NO_ERROR, last_stream_id=None):
        """GOAWAY on this exchange's connection (streams up to last_stream_id, default all open
        ones, may finish)."""
        self.c.goaway(code, last_stream_id)

    def close_connection(self, reset=False):
        self.c.close(reset=reset)


class _Conn:
    """One HTTP/2 server connection: the reader loop, the writer thread, the streams."""

    def __init__(self, backend, sock, rec):
        self.backend = backend
        self.sock = sock
        self.rec = rec
        self.lock = threading.Condition()
        cfg = h2.config.H2Configuration(client_side=False, header_encoding="utf-8",
                                        validate_inbound_headers=True)
        self.h2 = h2.connection.H2Connection(config=cfg)
        self.out = queue.Queue()
        self.exchanges = {}
        self.dead = False
        self.goaway_sent = None  # last stream id of the GOAWAY we sent
        self.settings_acks = 0

    # all access to self.h2 goes through call() / ack() under the lock; the bytes it produces are
    # queued for the writer in the same critical section, so their order is kept
    def call(self, fn):
        with self.lock:
            if self.dead:
                raise StreamClosed("connection closed")
            try:
                r = fn(self.h2)
            except (h2.exceptions.StreamClosedError, h2.exceptions.NoSuchStreamError) as e:
                raise StreamClosed(str(e)) from e
            self._queue_locked()
            return r

    def _queue_locked(self):
        data = self.h2.data_to_send()
        if data:
            self.out.put(data)

    def ack(self, sid, n):
        if n <= 0:
            return
        with self.lock:
            if self.dead:
                return
            try:
                self.h2.acknowledge_received_data(n, sid)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                pass
            self._queue_locked()

    def send_data(self, ex, view, end):
        deadline = time.monotonic() + 60
        with self.lock:
            while True:
                if self.dead or ex.cancelled.is_set():
                    raise StreamClosed("stream or connection gone while sending")
                if not view:
                    if end:
                        self.h2.end_stream(ex.sid)
                        self._queue_locked()
                    return
                try:
                    n = min(self.h2.local_flow_control_window(ex.sid), self.h2.max_outbound_frame_size, len(view))
                except (h2.exceptions.StreamClosedError, h2.exceptions.NoSuchStreamError) as e:
                    raise StreamClosed(str(e)) from e
                if n <= 0:
                    if time.monotonic() > deadline:
                        raise StreamClosed("the peer's window stayed closed for 60 s")
                    self.lock.wait(0.5)
                    continue
                self.h2.send_data(ex.sid, view[:n].tobytes(), end_stream=(end and n == len(view)))
                view = view[n:]
                self._queue_locked()
                if end and not view:
                    return

    def goaway(self, code=0, last_stream_id=None):
        """A GOAWAY frame written by hand: h2's close_connection() would also close its state
        machine, and a graceful server goes on serving the streams up to last_stream_id."""
        with self.lock:
            if self.dead:
                return
            last = self.h2.highest_inbound_stream_id if last_stream_id is None else last_stream_id
            self._queue_locked()
            self.out.put(hyperframe.frame.GoAwayFrame(0, last_stream_id=last, error_code=int(code)).serialize())
            self.goaway_sent = last

    def close(self, reset=False):
        if reset:
            import struct
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # -- threads --

    def writer(self):
        while True:
            data = self.out.get()
            if data is None:
                return
            try:
                self.sock.sendall(data)
            except OSError:
                with self.lock:
                    self.dead = True
                    self.lock.notify_all()
                return

    def serve(self):
        wt = threading.Thread(target=self.writer, daemon=True, name=f"{self.backend.name}-w{self.rec.id}")
        wt.start()
        try:
            with self.lock:
                self.h2.initiate_connection()
                self._queue_locked()
                if self.backend.max_concurrent_streams is not None:
                    mcs = h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS
                    self.out.put(hyperframe.frame.SettingsFrame(
                        0, settings={mcs: self.backend.max_concurrent_streams}).serialize())
            while True:
                try:
                    data = self.sock.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    return
                try:
                    with self.lock:
                        events = self.h2.receive_data(data)
                        self._queue_locked()
                except h2.exceptions.ProtocolError as e:
                    self.backend.protocol_errors.append(f"conn {self.rec.id}: {e!r}")
                    with self.lock:
                        self._queue_locked()  # h2 queued a GOAWAY
                    return
                for ev in events:
                    self.handle(ev)
        finally:
            with self.lock:
                self.dead = True
                self.lock.notify_all()
                for ex in self.exchanges.values():
                    ex.chunks.put(StreamClosed("connection closed"))
                    ex.cancelled.set()
            self.out.put(None)
            wt.join(5)
            try:
                self.sock.close()
            except OSError:
                pass
            self.rec.closed.set()
            with self.backend.lock:
                self.backend._live.discard(self)

    def handle(self, ev):
        b = self.backend
        if isinstance(ev, h2.events.RequestReceived):
            if self.goaway_sent is not None and ev.stream_id > self.goaway_sent:
                # a stream opened after our GOAWAY: refused, and counted (a client bug)
                with b.lock:
                    b.after_goaway.append((self.rec.id, ev.stream_id))
                self.call(lambda h: h.reset_stream(ev.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM))
                return
            limit = b.max_concurrent_streams
            if limit is not None and len(self.exchanges) >= limit:
                # over our advertised limit: refused; `known` once the peer acknowledged it
                with b.lock:
                    b.refused.append((self.rec.id, ev.stream_id, self.settings_acks >= 2))
                self.call(lambda h: h.reset_stream(ev.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM))
                return
            with b.lock:
                req = H2Request(self.rec, b._seq, ev.stream_id, ev.headers)
                b._seq += 1
                self.rec.requests.append(req)
                b.requests.append(req)
            ex = H2Exchange(self, req)
            with self.lock:
                self.exchanges[ev.stream_id] = ex
            if ev.stream_ended is not None:
                ex.chunks.put(None)
            threading.Thread(target=self.run_handler, args=(ex,), daemon=True,
                             name=f"{b.name}-c{self.rec.id}s{ev.stream_id}").start()
        elif isinstance(ev, h2.events.DataReceived):
            ex = self.exchanges.get(ev.stream_id)
            if ex is None or ex.ended and ex.req.body_complete:
                self.ack(ev.stream_id, ev.flow_controlled_length)
            else:
                ex.chunks.put((ev.data, ev.flow_controlled_length))
        elif isinstance(ev, h2.events.TrailersReceived):
            ex = self.exchanges.get(ev.stream_id)
            if ex is not None:
                ex.req.trailers = Headers(ev.headers)
        elif isinstance(ev, h2.events.StreamEnded):
            ex = self.exchanges.get(ev.stream_id)
            if ex is not None:
                ex.chunks.put(None)
        elif isinstance(ev, h2.events.StreamReset):
            ex = self.exchanges.get(ev.stream_id)
            if ex is not None:
                ex.req.reset_by_peer = ev.error_code
                ex.cancelled.set()
                ex.chunks.put(StreamClosed(f"stream reset by the peer ({ev.error_code!r})"))
                with b.lock:
                    b.resets.append((self.rec.id, ev.stream_id, ev.error_code))
            with self.lock:
                self.lock.notify_all()
        elif isinstance(ev, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            with self.lock:
                self.lock.notify_all()
        elif isinstance(ev, h2.events.SettingsAcknowledged):
            self.settings_acks += 1  # the 2nd is for the hand-made MAX_CONCURRENT_STREAMS
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.rec.goaway_received = ev.error_code

    def run_handler(self, ex):
        b = self.backend
        try:
            b.handler(ex)
            if not ex.head_sent and not ex.ended:
                ex.respond(500, b"handler sent nothing")
            elif not ex.ended:
                ex.end()
        except StreamClosed:
            pass
        except Exception:
            with b.lock:
                b.errors.append(traceback.format_exc())
            try:
                ex.reset()
            except StreamClosed:
                pass
        finally:
            # what the handler did not read: drained and acknowledged so the connection's window
            # is not lost
            if not ex.req.body_complete and not ex.cancelled.is_set():
                try:
                    for _ in ex.iter_body(timeout=30):
                        pass
                except StreamClosed:
                    pass
            with self.lock:
                self.exchanges.pop(ex.sid, None)


class H2Backend:
    """An HTTP/2 server on 127.0.0.1:<free port> (h2c prior knowledge, or TLS + ALPN h2)."""

    def __init__(self, handler=None, name="h2backend", ssl_ctx=None, port=None, max_concurrent_streams=None):
        self.name = name
        self.handler = handler or echo()
        self.ssl_ctx = ssl_ctx
        if ssl_ctx is not None:
            ssl_ctx.set_alpn_protocols(["h2"])
        self.max_concurrent_streams = max_concurrent_streams
        self.port = port or free_port()
        self.lock = threading.Lock()
        self.conns = []
        self.requests = []
        self.resets = []  # (conn id, stream id, error code) of RST_STREAMs received
        self.errors = []  # handler exceptions
        self.protocol_errors = []  # connections ended by an h2 protocol error of the peer
        self.tls_errors = []
        self.refused = []  # (conn id, stream id, limit known to the peer) refused over max_concurrent_streams
        self.after_goaway = []  # (conn id, stream id) opened by the peer after our GOAWAY
        self._live = set()
        self._seq = 0
        self._stopping = False
        self._listen()

    def _listen(self):
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", self.port))
        self.lsock.listen(512)
        self._stopping = False
        threading.Thread(target=self._accept_loop, args=(self.lsock,), daemon=True,
                         name=f"{self.name}-accept").start()

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    @property
    def connection_count(self):
        with self.lock:
            return len(self.conns)

    def find(self, pred):
        with self.lock:
            return [r for r in self.requests if pred(r)]

    def wait_requests(self, count=1, pred=None, timeout=5.0):
        deadline = time.monotonic() + harness.slack(timeout)
        while True:
            with self.lock:
                found = [r for r in self.requests if pred is None or pred(r)]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.01)

    def goaway_all(self, code=0, last_stream_id=None):
        with self.lock:
            live = list(self._live)
        for c in live:
            c.goaway(code, last_stream_id)

    def close(self, reset_live=False):
        """Stops listening and shuts every live connection down (with RST when reset_live)."""
        self._stopping = True
        try:
            self.lsock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.lsock.close()
        except OSError:
            pass
        with self.lock:
            live = list(self._live)
        for c in live:
            c.close(reset=reset_live)

    def restart(self):
        """Listens again on the same port (after close())."""
        self._listen()

    def _accept_loop(self, lsock):
        while not self._stopping:
            try:
                sock, peer = lsock.accept()
            except OSError:
                return
            with self.lock:
                rec = H2ConnRecord(len(self.conns), peer)
                self.conns.append(rec)
            threading.Thread(target=self._serve, args=(sock, rec), daemon=True,
                             name=f"{self.name}-conn{rec.id}").start()

    def _serve(self, sock, rec):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.ssl_ctx is not None:
            sock.settimeout(10)
            try:
                sock = self.ssl_ctx.wrap_socket(sock, server_side=True)
            except (ssl.SSLError, OSError) as e:
                with self.lock:
                    self.tls_errors.append(str(e))
                sock.close()
                rec.closed.set()
                return
            rec.alpn = sock.selected_alpn_protocol()
            if rec.alpn != "h2":
                with self.lock:
                    self.tls_errors.append(f"ALPN selected {rec.alpn!r}")
                sock.close()
                rec.closed.set()
                return
        sock.settimeout(None)
        c = _Conn(self, sock, rec)
        if self.max_concurrent_streams is not None:
            # h2 would make a stream over its own limit a connection error; a server refuses
            # such a stream (REFUSED_STREAM, RFC 9113 §5.1.2), which _Conn.handle does itself
            c.h2.local_settings = h2.settings.Settings(
                client=False, initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 100000})
        with self.lock:
            self._live.add(c)
        c.serve()


# ---- handlers ---------------------------------------------------------------------------------------


def echo(status=200, headers=()):
    """200 JSON: what the backend received (method, target, authority, headers, body, trailers)."""

    def h(ex):
        body = ex.read_body()
        r = ex.req
        payload = {"backend": ex.backend.name, "conn": r.conn.id, "stream": r.stream_id, "method": r.method,
                   "target": r.target, "path": r.path, "query": r.query, "authority": r.authority,
                   "scheme": r.scheme, "headers": [[n, v] for n, v in r.headers], "body_len": r.body_len,
                   "body": body.decode("latin-1") if r.body_len <= 65536 else None,
                   "trailers": [[n, v] for n, v in r.trailers]}
        ex.respond(status, json.dumps(payload).encode(), [("content-type", "application/json"), *headers])

    return h


def fixed(status=200, body=b"", headers=(), trailers=None):
    def h(ex):
        ex.read_body()
        ex.respond(status, body, headers, trailers)

    return h


def stream(nbytes=None, piece=16384, length=True, trailers=None, pause=0.0):
    """nbytes (or ?n=) of PATTERN in `piece`-byte DATA writes, with or without content-length,
    then optional trailers."""

    def h(ex):
        ex.read_body()
        n = int(ex.req.param("n", nbytes))
        headers = [("content-type", "application/octet-stream")]
        if length:
            headers.append(("content-length", str(n)))
        ex.send_headers(200, headers)
        sent = 0
        while sent < n:
            k = min(piece, n - sent, len(PATTERN))
            off = sent % len(PATTERN)
            chunk = _PATTERN2[off:off + k]
            last = sent + k == n and not trailers
            ex.send_data(chunk, end=last)
            sent += k
            if pause:
                time.sleep(pause)
        if trailers:
            ex.send_trailers(trailers)
        elif n == 0:
            ex.end()

    return h


def digest():
    """Reads the body without keeping it; answers {"len": N, "sha256": hex, "trailers": [...]}."""

    def h(ex):
        hs = hashlib.sha256()
        ex.read_body(store=False, hasher=hs)
        ex.respond(200, json.dumps({"len": ex.req.body_len, "sha256": hs.hexdigest(),
                                    "trailers": [[n, v] for n, v in ex.req.trailers]}).encode(),
                   [("content-type", "application/json")])

    return h


def sleep_then(seconds, then=None):
    then = then or fixed(200, b"slept")

    def h(ex):
        ex.read_body()
        end = time.monotonic() + seconds
        while time.monotonic() < end and not ex.cancelled.is_set():
            time.sleep(0.01)
        then(ex)

    return h


def paths(mapping, default=None):
    keys = sorted(mapping, key=len, reverse=True)
    default = default or echo()

    def h(ex):
        for k in keys:
            if ex.req.path.startswith(k):
                return mapping[k](ex)
        return default(ex)

    return h


class Http1Liar:
    """A TCP server that answers whatever comes with an HTTP/1.1 response and closes: what an
    HTTP/1.1-only server does to an h2c preface (an upstream wrongly set to `protocol: h2`)."""

    def __init__(self):
        self.port = free_port()
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", self.port))
        self.lsock.listen(64)
        self.accepted = 0
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            try:
                s, _ = self.lsock.accept()
            except OSError:
                return
            self.accepted += 1
            try:
                s.settimeout(2)
                s.recv(65536)
                s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
                time.sleep(0.1)
            except OSError:
                pass
            s.close()

    def close(self):
        try:
            self.lsock.close()
        except OSError:
            pass


# ---- a client that keeps trailers ---------------------------------------------------------------------


class H2TrailerClient(H2Client):
    """h2client.H2Client, plus per stream: "trailers" (a trailing HEADERS), "informational"."""

    def start(self, *a, **kw):
        sid = super().start(*a, **kw)
        self.streams[sid].setdefault("trailers", [])
        return sid

    def pump(self, timeout=None):
        self.sock.settimeout(timeout if timeout is not None else self.timeout)
        try:
            data = self.sock.recv(65536)
        except (socket.timeout, TimeoutError):
            return None
        except (ConnectionResetError, ssl.SSLError):
            data = b""
        if not data:
            self.closed = True
            return False
        for ev in self.conn.receive_data(data):
            sid = getattr(ev, "stream_id", None)
            st = self.streams.get(sid)
            if isinstance(ev, h2.events.ResponseReceived):
                st["status"] = int(dict(ev.headers)[":status"])
                st["headers"] = ev.headers
            elif isinstance(ev, h2.events.TrailersReceived):
                st["trailers"] = ev.headers
            elif isinstance(ev, h2.events.DataReceived):
                st["body"] += ev.data
                if self.auto_ack:
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, sid)
            elif isinstance(ev, h2.events.StreamEnded):
                st["ended"] = True
            elif isinstance(ev, h2.events.StreamReset):
                if st is not None:
                    st["reset"] = ev.error_code
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.goaway = ev
        self.flush()
        return True
