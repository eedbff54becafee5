#!/usr/bin/env python3
"""Seed corpus for tests/fuzz/fuzz_h2up.c: what an HTTP/2 upstream server sends, as raw bytes.

Each file is the target's 22-byte header (flags, two chunk sizes, slow-server budget, clock
step, drain step, then a behaviour and a schedule byte per stream; see fuzz_h2up.c) followed by
the server's side of an h2c connection: SETTINGS, SETTINGS ACK, responses on streams 1, 3, 5...
(the client's streams in submission order) as HEADERS (HPACK from python3-hpack), DATA,
trailers, RST_STREAM, GOAWAY, WINDOW_UPDATE, PING; some invalid on purpose.

    /usr/bin/python3 tests/fuzz/gen_h2up_corpus.py [outdir]   (default: tests/fuzz/corpus/h2up)
"""
import os
import struct
import sys

from hpack import Encoder
from hyperframe.frame import (ContinuationFrame, DataFrame, GoAwayFrame, HeadersFrame, PingFrame,
                              PushPromiseFrame, RstStreamFrame, SettingsFrame, WindowUpdateFrame)

# flags (byte 0)
SMALL = 0x08
CLOCK = 0x10
REFUSE = 0x20
EOF = 0x40
JUMP = 0x80
# behaviour byte per stream
BODY = 0x01
BIG = 0x08
C_HALF, C_LATE, C_NEVER = 0x10, 0x20, 0x30
E_HEAD, E_DATA, E_LATE = 0x40, 0x80, 0xC0


def slices(n):
    return (n - 1) << 1


def header(nstreams=1, flags=0, chunks=(0, 0), budget=0, clock=0, drain=0, streams=()):
    streams = list(streams) + [(0, 0)] * (8 - len(streams))
    b = bytes([flags | (nstreams - 1), chunks[0], chunks[1], budget, clock, drain])
    for beh, sched in streams:
        b += bytes([beh, sched])
    assert len(b) == 22
    return b


class Server:
    def __init__(self):
        self.enc = Encoder()
        self.out = b""

    def raw(self, b):
        self.out += b
        return self

    def settings(self, **kw):
        f = SettingsFrame(0)
        ids = {"max_concurrent_streams": 3, "initial_window_size": 4, "max_frame_size": 5,
               "header_table_size": 1, "enable_push": 2, "max_header_list_size": 6}
        for k, v in kw.items():
            f.settings[ids[k]] = v
        return self.raw(f.serialize())

    def ack(self):
        f = SettingsFrame(0)
        f.flags.add("ACK")
        return self.raw(f.serialize())

    def headers(self, sid, fields, end=False, split=False):
        block = self.enc.encode(fields)
        if split and len(block) > 2:
            f = HeadersFrame(sid)
            f.data = block[:2]
            if end:
                f.flags.add("END_STREAM")
            c = ContinuationFrame(sid)
            c.data = block[2:]
            c.flags.add("END_HEADERS")
            return self.raw(f.serialize() + c.serialize())
        f = HeadersFrame(sid)
        f.data = block
        f.flags.add("END_HEADERS")
        if end:
            f.flags.add("END_STREAM")
        return self.raw(f.serialize())

    def data(self, sid, payload, end=False, pad=0):
        f = DataFrame(sid)
        f.data = payload
        if pad:
            f.flags.add("PADDED")
            f.pad_length = pad
        if end:
            f.flags.add("END_STREAM")
        return self.raw(f.serialize())

    def rst(self, sid, code):
        return self.raw(RstStreamFrame(sid, error_code=code).serialize())

    def goaway(self, last, code=0, debug=b""):
        return self.raw(GoAwayFrame(0, last_stream_id=last, error_code=code, additional_data=debug).serialize())

    def window(self, sid, inc):
        return self.raw(WindowUpdateFrame(sid, window_increment=inc).serialize())

    def ping(self, ack=False):
        f = PingFrame(0, opaque_data=b"12345678")
        if ack:
            f.flags.add("ACK")
        return self.raw(f.serialize())


def ok(sid, body=b"hello", cl=True, trailers=None, s=None, status="200"):
    s = s or Server()
    h = [(":status", status), ("content-type", "text/plain")]
    if cl:
        h.append(("content-length", str(len(body))))
    if not body and not trailers:
        return s.headers(sid, h, end=True)
    s.headers(sid, h)
    if body:
        s.data(sid, body, end=trailers is None)
    if trailers:
        s.headers(sid, trailers, end=True)
    return s


def start(**kw):
    return Server().settings(**kw).ack()


def seeds():
    grpc_tr = [("grpc-status", "0"), ("grpc-message", "")]
    # 1. one GET, 200 with content-length
    s = start(max_concurrent_streams=100)
    yield "get-200", header(1, streams=[(0, 0)]), ok(1, s=s).out
    # 2. the same in 1-byte and 7-byte chunks
    s = start()
    yield "get-200-bytewise", header(1, chunks=(1, 7)), ok(1, s=s).out
    # 3. three streams, interleaved, one with trailers (gRPC-like), one 204
    s = start(max_concurrent_streams=10)
    s.headers(1, [(":status", "200"), ("content-type", "application/grpc")])
    s.headers(3, [(":status", "204")], end=True)
    s.data(1, b"\x00\x00\x00\x00\x05hello")
    s.headers(5, [(":status", "200")])
    s.data(5, b"x" * 300, end=True)
    s.headers(1, grpc_tr, end=True)
    yield "three-interleaved", header(3, chunks=(40, 9)), s.out
    # 4. POST with a body in 3 slices, answered after it
    s = start()
    s.window(0, 1 << 20).window(1, 1 << 20)
    yield "post-3-slices", header(1, streams=[(BODY | slices(3), 0)]), ok(1, s=s, body=b"done").out
    # 5. POST with big slices and a small server window: WINDOW_UPDATEs let it through
    s = Server().settings(initial_window_size=1000).ack()
    for _ in range(8):
        s.window(0, 20000).window(1, 20000)
    ok(1, s=s, body=b"ok")
    yield "post-big-window", header(1, chunks=(20, 3), streams=[(BODY | BIG | slices(4), 0)]), s.out
    # 6. early response while the request body is still going
    s = start()
    ok(1, s=s, body=b"early")
    yield "post-early-answer", header(1, streams=[(BODY | slices(4) | C_LATE, 0)]), s.out
    # 7. RST_STREAM on one, REFUSED_STREAM on another, the third completes
    s = start()
    s.headers(1, [(":status", "200")])
    s.rst(1, 2)
    s.rst(3, 7)
    ok(5, s=s)
    yield "rst-refused", header(3, chunks=(13, 0)), s.out
    # 8. GOAWAY after stream 1: stream 3 refused, a later stream opens a new connection
    s = start()
    s.goaway(1)
    ok(1, s=s)
    yield "goaway-last-1", header(3, streams=[(0, 0), (0, 0), (0, 0x02)]), s.out
    # 9. GOAWAY with an error and debug data
    s = start()
    s.goaway(0, 2, b"internal")
    yield "goaway-error", header(2), s.out
    # 10. max_concurrent_streams 1: each stream its own connection
    s = start(max_concurrent_streams=1)
    ok(1, s=s)
    yield "max-concurrent-1", header(3), s.out
    # 11. PING, SETTINGS changes mid-stream, 1xx informational before the final head
    s = start()
    s.ping()
    s.headers(1, [(":status", "103"), ("link", "</a.css>; rel=preload")])
    s.settings(initial_window_size=70000, max_frame_size=32768)
    s.ping(ack=True)
    ok(1, s=s, body=b"a" * 1000)
    yield "ping-1xx-settings", header(1, chunks=(64, 5)), s.out
    # 12. a body larger than the stream window, consumed late (the window reopens)
    s = start()
    s.headers(1, [(":status", "200")])
    for i in range(6):
        s.data(1, bytes([65 + i]) * 16384)
    s.data(1, b"", end=True)
    yield "big-body-late-consume", header(1, chunks=(0, 0), streams=[(C_LATE, 0)]), s.out
    # 13. the server overruns the window (never consumed): flow-control error
    yield "overrun-window", header(1, chunks=(200, 180), streams=[(C_NEVER, 0)]), s.out
    # 14. the user ends streams inside callbacks
    s = start()
    s.headers(1, [(":status", "200")])
    s.data(1, b"abc")
    s.headers(3, [(":status", "200")])
    s.data(3, b"def")
    s.headers(3, grpc_tr, end=True)
    s.headers(5, [(":status", "200")])
    s.data(5, b"ghi", end=True)
    yield "end-in-callbacks", header(3, streams=[(E_HEAD, 0), (E_DATA, 0), (E_LATE, 0)]), s.out
    # 15. the harness cancels stream 1 midway; stream 3 submitted at step 2
    s = start()
    s.headers(1, [(":status", "200")])
    s.data(1, b"x" * 100)
    s.data(1, b"y" * 100)
    ok(3, s=s)
    yield "cancel-midway", header(2, chunks=(30, 30), streams=[(0, 0x20), (0, 0x02)]), s.out
    # 16. a stream submitted from another's closed
    s = start()
    ok(1, s=s)
    ok(3, s=s)
    yield "submit-from-closed", header(2, chunks=(9, 9), streams=[(0, 0), (0, 0x0F)]), s.out
    # 17. server EOF with streams open
    s = start()
    s.headers(1, [(":status", "200")])
    yield "server-eof", header(2, flags=EOF), s.out
    # 18. connection refused
    yield "refused", header(2, flags=REFUSE, streams=[(BODY, 0), (0, 0)]), b""
    # 19. connect timeout (clock jumps before the connect completes)
    yield "connect-timeout", header(1, flags=JUMP), start().out
    # 20. slow server, big bodies, clock moving: send timeout
    s = start()
    s.window(0, 1 << 24).window(1, 1 << 24)
    for _ in range(4):
        s.ping()
    yield "slow-server-send-timeout", header(1, flags=SMALL | CLOCK, chunks=(17, 17), budget=0, clock=10,
                                             streams=[(BODY | BIG | slices(4), 0)]), s.out
    # 21. slow server that does read
    yield "slow-server-reads", header(1, flags=SMALL, budget=40, streams=[(BODY | BIG | slices(4), 0)]), s.out
    # 22. idle timeout after the stream ends
    s = start()
    ok(1, s=s)
    yield "idle-timeout", header(1, flags=CLOCK, clock=20), s.out
    # 23. drain (close_idle) while a stream runs
    s = start()
    s.headers(1, [(":status", "200")])
    s.data(1, b"z" * 50, end=True)
    yield "drain-midway", header(1, chunks=(20, 20), drain=2), s.out
    # 24. CONTINUATION, padded DATA
    s = start()
    s.headers(1, [(":status", "200"), ("x-long", "v" * 40)], split=True)
    s.data(1, b"padded", end=True, pad=10)
    yield "continuation-padded", header(1), s.out
    # 25. invalid: DATA before HEADERS
    s = start()
    s.data(1, b"nope", end=True)
    yield "bad-data-first", header(1), s.out
    # 26. invalid: content-length mismatch
    s = start()
    s.headers(1, [(":status", "200"), ("content-length", "10")])
    s.data(1, b"short", end=True)
    yield "bad-content-length", header(1), s.out
    # 27. invalid: a PUSH_PROMISE (push is off)
    s = start()
    pp = PushPromiseFrame(1, promised_stream_id=2)
    pp.data = Encoder().encode([(":method", "GET"), (":path", "/p"), (":scheme", "http"), (":authority", "a")])
    pp.flags.add("END_HEADERS")
    s.raw(pp.serialize())
    yield "bad-push-promise", header(1), s.out
    # 28. invalid: no :status, uppercase field name, bad status
    s = start()
    s.headers(1, [("content-type", "x")], end=True)
    s.headers(3, [(":status", "2x0")], end=True)
    s.headers(5, [(":status", "200"), ("Bad", "1")], end=True)
    yield "bad-heads", header(3), s.out
    # 29. invalid: garbage instead of SETTINGS, and an HTTP/1.1 answer
    yield "not-h2", header(1), b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    # 30. a head too large for our limits (many fields)
    s = start()
    s.headers(1, [(":status", "200")] + [("x-f%d" % i, "v" * 10) for i in range(140)], end=True)
    yield "head-too-many-fields", header(1), s.out
    # 31. trailers after a body with POST bodies on 4 streams, late slices
    s = start()
    for sid in (1, 3, 5, 7):
        ok(sid, s=s, body=b"r%d" % sid, cl=False, trailers=grpc_tr)
    yield "four-posts-trailers", header(4, chunks=(100, 17), streams=[(BODY | slices(2) | C_LATE, 0)] * 4), s.out
    # 32. eight streams, mixed
    s = start(max_concurrent_streams=4)
    for sid in range(1, 17, 2):
        ok(sid, s=s, body=b"b" * sid)
    beh = [(0, 0), (BODY, 0), (C_HALF, 0), (E_DATA, 0), (BODY | slices(2), 1), (0, 0x31), (C_LATE, 2), (E_LATE, 0)]
    yield "eight-mixed", header(8, chunks=(50, 11), streams=beh), s.out
    # 33. RST_STREAM with NO_ERROR after a complete response (early answer to a POST)
    s = start()
    ok(1, s=s, body=b"done")
    s.rst(1, 0)
    yield "post-rst-no-error", header(1, streams=[(BODY | slices(4) | C_LATE, 0)]), s.out
    # 34. WINDOW_UPDATE of 0 (a stream error), and one that overflows the connection window
    s = start()
    s.window(1, 0)
    s.window(0, 0x7fffffff)
    yield "bad-window-updates", header(2, streams=[(BODY, 0), (0, 0)]), s.out
    # 35. a head larger than 64 KiB in few fields (HEADERS + CONTINUATIONs)
    s = start()
    block = s.enc.encode([(":status", "200")] + [("x-big%d" % i, "v" * 15000) for i in range(5)])
    f = HeadersFrame(1)
    f.data = block[:16000]
    f.flags.add("END_STREAM")
    s.raw(f.serialize())
    rest = block[16000:]
    while rest:
        c = ContinuationFrame(1)
        c.data = rest[:16000]
        rest = rest[16000:]
        if not rest:
            c.flags.add("END_HEADERS")
        s.raw(c.serialize())
    yield "head-too-large", header(1), s.out
    # 36. the server resets the socket while the request body is stuck in a full send buffer
    s = start()
    s.window(0, 1 << 24).window(1, 1 << 24)
    yield "reset-while-writing", header(1, flags=SMALL | EOF, streams=[(BODY | BIG | slices(4), 0)]), s.out
    # 37. data keeps coming in the same read after the user ended the stream in `head`
    s = start()
    s.headers(1, [(":status", "200")])
    s.data(1, b"after the end")
    s.data(1, b"more", end=True)
    ok(3, s=s)
    yield "data-after-user-end", header(2, streams=[(E_HEAD, 0), (0, 0)]), s.out


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "corpus", "h2up")
    os.makedirs(out, exist_ok=True)
    n = 0
    for name, hdr, body in seeds():
        with open(os.path.join(out, name), "wb") as f:
            f.write(hdr + body)
        n += 1
    print("%d seeds in %s" % (n, out))


if __name__ == "__main__":
    main()
