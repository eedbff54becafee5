"""A gRPC test server (Debian's python3-grpcio) without protobuf: service `echo.Echo` over raw
bytes (no serializers), for test_63_grpc.py. Methods:

- Unary: the request bytes back; request metadata `x-*` echoed as initial metadata, the
  `x-trailer` request metadata echoed as trailing metadata.
- ServerStream: the request is an ASCII count N; answers N messages b"msg-<i>" (with `x-interval`
  seconds between them when that metadata is given).
- ClientStream: answers the total length of the messages received, in ASCII; a message
  b"abort" ends the call at once with FAILED_PRECONDITION "aborted early".
- Bidi: each message back as it arrives (so a client can play ping-pong).
- Fail: aborts INVALID_ARGUMENT "bad thing" with trailing metadata `x-why: because`.
- Slow: sleeps `x-sleep` seconds (metadata), watching for cancellation; answers b"slept".

EchoServer(port=None, tls=(cert, key), options=...) serves in this process on 127.0.0.1 and
records per call the peer (`context.peer()`: one TCP connection each), the method, and the
cancellations it observed (`add_callback` fired / `is_active()` went false). Run as a script
(`python3 grpc_echo.py --port N [--cert C --key K]`) it serves in its own process (prints
"ready" when listening) so that a test can SIGKILL it."""
import argparse
import sys
import threading
import time
from concurrent import futures

import grpc

SERVICE = "echo.Echo"


def method_path(name):
    return f"/{SERVICE}/{name}"


class Record:
    def __init__(self, method, peer, metadata):
        self.method = method
        self.peer = peer
        self.metadata = metadata
        self.started = time.monotonic()
        self.finished = None  # "ok" | "cancelled" (Slow only)
        self.ended = threading.Event()  # grpc's add_callback fired: the call is over (any way)
        self.cancelled = threading.Event()  # the servicer saw is_active() go false mid-call


class EchoServer:
    def __init__(self, port=None, tls=None, options=(), max_workers=64):
        if port is None:
            import harness
            port = harness.free_port()
        self.port = port
        self.tls = tls
        self.options = list(options)
        self.max_workers = max_workers
        self.lock = threading.Lock()
        self.calls = []  # Record per call, in order of arrival
        self.server = None
        self.start()

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    # -- lifecycle --

    def start(self):
        """(Re)starts on the same port (a fresh grpc.Server each time)."""
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=self.max_workers), options=self.options)
        self.server.add_generic_rpc_handlers((handlers(self),))
        addr = f"127.0.0.1:{self.port}"
        if self.tls:
            cert, key = self.tls
            creds = grpc.ssl_server_credentials([(open(key, "rb").read(), open(cert, "rb").read())])
            bound = self.server.add_secure_port(addr, creds)
        else:
            bound = self.server.add_insecure_port(addr)
        if bound != self.port:
            raise RuntimeError(f"grpc server could not bind {addr}")
        self.server.start()
        return self

    def stop(self, grace=None):
        """Stops (with `grace` seconds for calls in flight); returns once it has stopped."""
        if self.server is not None:
            self.server.stop(grace).wait(30)
            self.server = None

    close = stop

    # -- observations --

    def record(self, method, context):
        rec = Record(method, context.peer(), tuple(context.invocation_metadata()))
        context.add_callback(rec.ended.set)
        with self.lock:
            self.calls.append(rec)
        return rec

    def peers(self, method=None):
        """Distinct peers (= TCP connections) that made calls (to `method`)."""
        with self.lock:
            return {c.peer for c in self.calls if method is None or c.method == method}

    def find(self, method):
        with self.lock:
            return [c for c in self.calls if c.method == method]

    def wait_calls(self, method, count=1, timeout=5.0):
        deadline = time.monotonic() + timeout
        while True:
            found = self.find(method)
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.01)

    def reset(self):
        with self.lock:
            self.calls = []


def _md(context, name, default=None):
    for k, v in context.invocation_metadata():
        if k == name:
            return v
    return default


def handlers(srv):
    def unary(request, context):
        srv.record("Unary", context)
        echo = [(k, v) for k, v in context.invocation_metadata() if k.startswith("x-") and k != "x-trailer"]
        if echo:
            context.send_initial_metadata(tuple(echo))
        trailer = _md(context, "x-trailer")
        if trailer is not None:
            context.set_trailing_metadata((("x-trailer", trailer),))
        return request

    def server_stream(request, context):
        srv.record("ServerStream", context)
        n = int(request.decode("ascii"))
        interval = float(_md(context, "x-interval", "0"))
        for i in range(n):
            if i and interval:
                time.sleep(interval)
            if not context.is_active():
                return
            yield b"msg-%d" % i

    def client_stream(request_iterator, context):
        srv.record("ClientStream", context)
        total = 0
        for msg in request_iterator:
            if msg == b"abort":
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, "aborted early")
            total += len(msg)
        return str(total).encode("ascii")

    def bidi(request_iterator, context):
        srv.record("Bidi", context)
        for msg in request_iterator:
            yield msg

    def fail(request, context):
        srv.record("Fail", context)
        context.set_trailing_metadata((("x-why", "because"),))
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad thing")

    def slow(request, context):
        rec = srv.record("Slow", context)
        end = time.monotonic() + float(_md(context, "x-sleep", "1"))
        while time.monotonic() < end:
            if not context.is_active():
                rec.cancelled.set()
                rec.finished = "cancelled"
                return b""
            time.sleep(0.02)
        rec.finished = "ok"
        return b"slept"

    return grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
    })


def cancelled_calls(srv, method):
    """Calls to `method` whose servicer saw a cancellation (not a normal end)."""
    return [c for c in srv.find(method) if c.finished == "cancelled"]


# ---- the client side ------------------------------------------------------------------------------


def channel(port, tls_ca=None, server_name=None, options=()):
    """A channel to 127.0.0.1:port: h2c (insecure), or TLS verifying with `tls_ca`. Never through
    an HTTP proxy from the environment."""
    opts = [("grpc.enable_http_proxy", 0), *options]
    if server_name:
        opts.append(("grpc.ssl_target_name_override", server_name))
    if tls_ca:
        creds = grpc.ssl_channel_credentials(root_certificates=open(tls_ca, "rb").read())
        return grpc.secure_channel(f"127.0.0.1:{port}", creds, options=opts)
    return grpc.insecure_channel(f"127.0.0.1:{port}", options=opts)


class Stub:
    """The six methods of echo.Echo on a channel, over raw bytes."""

    def __init__(self, ch):
        self.channel = ch
        self.Unary = ch.unary_unary(method_path("Unary"))
        self.ServerStream = ch.unary_stream(method_path("ServerStream"))
        self.ClientStream = ch.stream_unary(method_path("ClientStream"))
        self.Bidi = ch.stream_stream(method_path("Bidi"))
        self.Fail = ch.unary_unary(method_path("Fail"))
        self.Slow = ch.unary_unary(method_path("Slow"))

    def close(self):
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def frame(msg, compressed=False):
    """One gRPC length-prefixed message (for raw HTTP/2 clients)."""
    return bytes([1 if compressed else 0]) + len(msg).to_bytes(4, "big") + msg


def unframe(data):
    """The messages of a gRPC body; fails on a truncated one."""
    out, i = [], 0
    while i < len(data):
        assert i + 5 <= len(data), f"truncated gRPC frame header at {i}"
        n = int.from_bytes(data[i + 1:i + 5], "big")
        assert i + 5 + n <= len(data), f"truncated gRPC message at {i}"
        out.append(bytes(data[i + 5:i + 5 + n]))
        i += 5 + n
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--cert")
    ap.add_argument("--key")
    a = ap.parse_args()
    srv = EchoServer(a.port, tls=(a.cert, a.key) if a.cert else None)
    print("ready", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        srv.stop(0)


if __name__ == "__main__":
    sys.exit(main())
