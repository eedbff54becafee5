"""A synchronous HTTP/2 client for the tests and the soak (python3-h2, Debian's): one connection,
h2c or TLS with ALPN h2, several streams at once, uploads that follow the flow-control windows,
and the frames' events kept per stream. Imported only where h2 is installed."""
import socket
import ssl
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

import harness


class H2Client:
    """One HTTP/2 connection (h2c, or TLS with ALPN h2) driven synchronously."""

    def __init__(self, port, tls_ctx=None, server_name=None, timeout=5.0, window=None):
        self.timeout = harness.slack(timeout)
        raw = socket.create_connection(("127.0.0.1", port), timeout=self.timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls_ctx is not None:
            tls_ctx.set_alpn_protocols(["h2", "http/1.1"])
            raw = tls_ctx.wrap_socket(raw, server_hostname=server_name)
            assert raw.selected_alpn_protocol() == "h2"
        self.sock = raw
        cfg = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config=cfg)
        self.conn.initiate_connection()
        if window is not None:
            self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.flush()
        self.streams = {}  # id -> dict(status, headers, body, ended, reset)
        self.goaway = None
        self.closed = False
        self.auto_ack = True

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def start(self, method, path, headers=(), body=None, authority="test.local", end=True):
        sid = self.conn.get_next_available_stream_id()
        hdrs = [(":method", method), (":path", path), (":scheme", "https"), (":authority", authority), *headers]
        self.conn.send_headers(sid, hdrs, end_stream=body is None and end)
        self.streams[sid] = {"status": None, "headers": [], "body": bytearray(), "ended": False, "reset": None}
        if body is not None:
            self.send_body(sid, body, end=end)
        self.flush()
        return sid

    def send_body(self, sid, body, end=True):
        """Sends as much as the windows allow, reading (and acking) frames while it waits."""
        view = memoryview(body)
        try:
            while view:
                st = self.streams.get(sid)
                if st is not None and (st["ended"] or st["reset"] is not None):
                    return  # the server answered and ended the stream: stop sending
                n = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size, len(view))
                if n <= 0:
                    self.flush()
                    assert self.pump() is not False, "connection closed during an upload"
                    continue
                self.conn.send_data(sid, view[:n].tobytes())
                view = view[n:]
            if end:
                self.conn.end_stream(sid)
        except h2.exceptions.StreamClosedError:
            return  # reset by the server (e.g. RST NO_ERROR after a complete answer)
        finally:
            self.flush()

    def pump(self, timeout=None):
        """Reads once and handles the events: True, None when nothing came in time, False when
        the server closed the connection."""
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
            elif isinstance(ev, h2.events.InformationalResponseReceived):
                pass
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

    def wait(self, sids, timeout=None):
        deadline = time.monotonic() + (timeout or self.timeout)
        while not all(self.streams[s]["ended"] or self.streams[s]["reset"] is not None for s in sids):
            assert time.monotonic() < deadline, "streams did not end in time"
            if self.pump(max(0.05, deadline - time.monotonic())) is False:
                break
        return [self.streams[s] for s in sids]

    def request(self, method, path, headers=(), body=None, authority="test.local"):
        sid = self.start(method, path, headers, body, authority)
        (st,) = self.wait([sid])
        return st


def hdr(st, name):
    for n, v in st["headers"]:
        if n == name:
            return v
    return None
