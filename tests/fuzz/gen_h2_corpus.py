#!/usr/bin/env python3
"""Seed corpus for tests/fuzz/fuzz_h2.c: valid HTTP/2 client sessions written as raw bytes.

Each file is the target's 9-byte header (flags, three 16-bit split offsets, a clock step, a read
budget) followed by what a client sends after the connection preface (the target adds the preface unless flags bit 0).
The sessions are made with python3-h2 (the CONTINUATION one is framed by hand with hyperframe
and hpack, as h2 only splits header blocks past 16 KiB) and aimed at the fuzz config's routes:
/echo (echo, reads the body), /get (GET/HEAD only), /204, /r (small answer), /big (100 kB
answer, more than the initial window), anything else 404; max_body_bytes 24 kB,
timeouts client_body 5 s and client_idle 60 s (the target's clock moves in 250 ms steps).

    /usr/bin/python3 tests/fuzz/gen_h2_corpus.py [outdir]   (default: tests/fuzz/corpus/h2)
"""
import os
import struct
import sys

import h2.config
import h2.connection
import h2.errors
import h2.settings
from hpack import Encoder
from hyperframe.frame import (ContinuationFrame, DataFrame, GoAwayFrame, HeadersFrame, PingFrame,
                              PriorityFrame, RstStreamFrame, SettingsFrame, WindowUpdateFrame)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# flags bits (see fuzz_h2.c)
NO_PREFACE = 0x01
EOF = 0x08
DRAIN = 0x10
DEFER = 0x20
FAIL2 = 0x40
CLOCK = 0x80


def slices(n):
    """flags bits 1-2: n slices (1..4)."""
    return (n - 1) << 1


def raw_encode(enc, headers):
    return enc.encode(headers, huffman=False)


def header(flags=0, cuts=(0, 0, 0), steps=0, budget=0):
    """steps: with CLOCK, 250 ms steps the clock moves after each slice. budget: with DEFER, the
    writes the client reads before it stops reading (0: all)."""
    return bytes([flags]) + b"".join(struct.pack(">H", c) for c in cuts) + bytes([steps, budget])


class Client:
    def __init__(self, validate=True):
        cfg = h2.config.H2Configuration(client_side=True, header_encoding=None,
                                        validate_outbound_headers=validate,
                                        normalize_outbound_headers=True)
        self.c = h2.connection.H2Connection(config=cfg)
        # Header blocks without Huffman coding: the fuzzer mutates the names and values as text.
        orig = self.c.encoder.encode
        self.c.encoder.encode = lambda headers, huffman=True: orig(headers, huffman=False)
        self.c.initiate_connection()
        out = self.c.data_to_send()
        assert out.startswith(PREFACE)
        self.buf = bytearray(out[len(PREFACE):])
        # What the server says first (as fuzz_h2's config makes it): the client ACKs it.
        server = SettingsFrame(0, settings={
            SettingsFrame.MAX_CONCURRENT_STREAMS: 8,
            SettingsFrame.INITIAL_WINDOW_SIZE: 65536,
            SettingsFrame.MAX_HEADER_LIST_SIZE: 2048,
            SettingsFrame.ENABLE_PUSH: 0,
        }).serialize()
        self.c.receive_data(server)
        self.flush()

    def flush(self):
        self.buf += self.c.data_to_send()

    def req(self, method, path, extra=(), end=True, authority=b"example.test"):
        sid = self.c.get_next_available_stream_id()
        hs = [(b":method", method), (b":scheme", b"http"), (b":authority", authority), (b":path", path)]
        self.c.send_headers(sid, hs + list(extra), end_stream=end)
        self.flush()
        return sid

    def data(self, sid, payload, end=False, pad=None):
        step = 16384
        for i in range(0, len(payload), step):
            chunk = payload[i:i + step]
            last = end and i + step >= len(payload)
            self.c.send_data(sid, chunk, end_stream=last, pad_length=pad)
        if not payload and end:
            self.c.end_stream(sid)
        self.flush()

    def raw(self, b):
        self.buf += b

    def bytes(self):
        self.flush()
        return bytes(self.buf)


def get_simple():
    c = Client()
    c.req(b"GET", b"/r")
    return c.bytes()


def echo_headers():
    c = Client()
    c.req(b"GET", b"/echo/a/b?x=1&y=%20z", [(b"user-agent", b"fuzz/1"), (b"accept", b"*/*"),
                                           (b"x-request-id", b"abc-123"), (b"x-dup", b"1"), (b"x-dup", b"2"),
                                           (b"traceparent",
                                            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")],
          authority=b"example.test:8443")
    c.req(b"GET", b"/echo", [(b"x-escape", b"\"quote\\ \ttab \xc3\xa9")], authority=b"[::1]:8080")
    c.req(b"GET", b"/echo", [(b"x-bad", b"del\x7f")])  # nghttp2 refuses the field: RST_STREAM
    return c.bytes()


def post_echo_body():
    c = Client()
    body = bytes(range(256)) * 8
    sid = c.req(b"POST", b"/echo", [(b"content-length", str(len(body)).encode()),
                                    (b"content-type", b"application/octet-stream")], end=False)
    c.data(sid, body[:1000])
    c.data(sid, body[1000:], end=True)
    return c.bytes()


def post_stream_body():
    """No content-length: a streamed body, padded DATA, in several frames."""
    c = Client()
    sid = c.req(b"PUT", b"/echo/stream", end=False)
    for i in range(6):
        c.data(sid, bytes([65 + i]) * 2500, pad=(i * 7) % 40 if i % 2 else None)
    c.data(sid, b"", end=True)
    return c.bytes()


def several_streams():
    c = Client()
    c.req(b"GET", b"/r")
    c.req(b"GET", b"/get")
    c.req(b"HEAD", b"/get")
    c.req(b"GET", b"/204")
    c.req(b"GET", b"/nothing/here")
    sid = c.req(b"POST", b"/get", [(b"content-length", b"3")], end=False)
    c.data(sid, b"abc", end=True)
    c.req(b"DELETE", b"/echo")
    return c.bytes()


def rst_stream():
    c = Client()
    sid = c.req(b"POST", b"/echo", end=False)
    c.data(sid, b"x" * 3000)
    c.c.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
    c.flush()
    sid2 = c.req(b"GET", b"/big")
    c.c.reset_stream(sid2, h2.errors.ErrorCodes.CANCEL)
    c.flush()
    c.req(b"GET", b"/r")
    return c.bytes()


def ping_settings_window():
    c = Client()
    c.c.ping(b"12345678")
    c.c.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1000,
                         h2.settings.SettingCodes.MAX_FRAME_SIZE: 20000,
                         h2.settings.SettingCodes.HEADER_TABLE_SIZE: 256})
    c.flush()
    c.req(b"GET", b"/big")
    c.c.increment_flow_control_window(200000)
    c.flush()
    c.c.ping(b"abcdefgh")
    c.flush()
    return c.bytes()


def big_response_window():
    """/big is 100 kB: past the first 64 KiB the server waits for WINDOW_UPDATE."""
    c = Client()
    sid = c.req(b"GET", b"/big")
    c.c.increment_flow_control_window(150000)
    c.c.increment_flow_control_window(150000, stream_id=sid)
    c.flush()
    return c.bytes()


def continuation():
    """HEADERS without END_HEADERS, then two CONTINUATIONs (framed by hand)."""
    enc = Encoder()
    settings = SettingsFrame(0).serialize()
    block = raw_encode(enc, [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"example.test"),
                        (b":path", b"/echo/cont"), (b"x-one", b"1" * 60), (b"x-two", b"2" * 60),
                        (b"cookie", b"a=1"), (b"cookie", b"b=2")])
    a, b, rest = block[:20], block[20:45], block[45:]
    hf = HeadersFrame(1, data=a)
    hf.flags.add("END_STREAM")
    out = settings + hf.serialize()
    out += ContinuationFrame(1, data=b).serialize()
    cf = ContinuationFrame(1, data=rest)
    cf.flags.add("END_HEADERS")
    out += cf.serialize()
    # a second stream with a PRIORITY frame before it and a priority in its HEADERS
    out += PriorityFrame(3, depends_on=1, stream_weight=200).serialize()
    hf3 = HeadersFrame(3, data=raw_encode(enc, [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/r"),
                                           (b"host", b"h.test")]))
    for fl in ("END_HEADERS", "END_STREAM", "PRIORITY"):
        hf3.flags.add(fl)
    hf3.depends_on, hf3.stream_weight = 1, 15
    out += hf3.serialize()
    return out


def goaway():
    c = Client()
    c.req(b"GET", b"/r")
    c.req(b"GET", b"/big")
    c.c.close_connection(error_code=h2.errors.ErrorCodes.NO_ERROR)
    return c.bytes()


def trailers():
    c = Client()
    sid = c.req(b"POST", b"/echo", [(b"te", b"trailers")], end=False)
    c.data(sid, b"hello body")
    c.c.send_headers(sid, [(b"x-checksum", b"abc"), (b"x-more", b"1")], end_stream=True)
    c.flush()
    return c.bytes()


def large_headers():
    """Past limits.max_header_bytes (2 kB): 431. 20 kB of block is HEADERS + CONTINUATION."""
    c = Client()
    # 17 kB of raw (not Huffman-coded) values: past one 16 kB frame, so HEADERS + CONTINUATION.
    c.req(b"GET", b"/echo", [(b"x-big-%d" % i, b"~^" * 500) for i in range(17)])
    c.req(b"GET", b"/r", [(b"x-mid", b"m" * 1900)])
    return c.bytes()


def long_uri():
    c = Client()
    c.req(b"GET", b"/echo/" + b"u" * 600)
    c.req(b"GET", b"/echo?" + b"q=1&" * 100)
    return c.bytes()


def cookies():
    c = Client()
    c.req(b"GET", b"/echo", [(b"cookie", b"a=1; b=2; c=3"), (b"cookie", b"d=4"), (b"x-after", b"1"),
                            (b"cookie", b"e=5")])
    return c.bytes()


def content_length():
    c = Client()
    c.req(b"POST", b"/echo", [(b"content-length", b"200000")], end=False)  # 413 before reading
    sid = c.req(b"POST", b"/echo", [(b"content-length", b"0")], end=False)
    c.data(sid, b"", end=True)
    sid = c.req(b"POST", b"/r", [(b"content-length", b"5")], end=False)  # answered before the body
    c.data(sid, b"12345", end=True)
    return c.bytes()


def connect_and_odd():
    c = Client(validate=False)
    sid = c.c.get_next_available_stream_id()
    c.c.send_headers(sid, [(b":method", b"CONNECT"), (b":authority", b"example.test:443")], end_stream=False)
    c.flush()
    c.req(b"OPTIONS", b"/echo", [(b"origin", b"http://o.test"), (b"access-control-request-method", b"POST")])
    c.req(b"BREW", b"/echo")
    return c.bytes()


def rapid_reset():
    """More resets than completions past RESET_FLOOR (200): GOAWAY ENHANCE_YOUR_CALM."""
    c = Client()
    for _ in range(205):
        sid = c.req(b"GET", b"/echo", end=False)
        c.c.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        c.flush()
    return c.bytes()


def hand_frames():
    """Frames h2 would not send: an unknown frame type, RST_STREAM after END_STREAM, GOAWAY
    with debug data, WINDOW_UPDATE 0 on a stream."""
    enc = Encoder()
    out = SettingsFrame(0).serialize()
    hf = HeadersFrame(1, data=raw_encode(enc, [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/echo"),
                                          (b":authority", b"a.test")]))
    hf.flags.add("END_HEADERS")
    out += hf.serialize()
    out += DataFrame(1, data=b"z" * 100).serialize()
    out += struct.pack(">I", 5)[1:] + bytes([0xfa, 0, 0, 0, 0, 1]) + b"hello"  # unknown type 0xfa
    df = DataFrame(1, data=b"end")
    df.flags.add("END_STREAM")
    out += df.serialize()
    out += RstStreamFrame(1, error_code=8).serialize()
    out += PingFrame(0, opaque_data=b"\0" * 8).serialize()
    out += GoAwayFrame(0, last_stream_id=0, error_code=0, additional_data=b"bye").serialize()
    out += WindowUpdateFrame(1, window_increment=0).serialize()  # nghttp2: connection error
    return out


def body_stalled():
    """A body that stops coming: client_body (5 s) expires, 408."""
    c = Client()
    sid = c.req(b"POST", b"/echo", [(b"content-length", b"5000")], end=False)
    c.data(sid, b"p" * 1000)
    c.req(b"GET", b"/r")
    return c.bytes()


def body_over_limit():
    """No content-length, 30 kB of body: past max_body_bytes (24 kB) while echo reads it."""
    c = Client()
    sid = c.req(b"POST", b"/echo/up", end=False)
    for i in range(3):
        c.data(sid, bytes([48 + i]) * 10000)
    c.data(sid, b"", end=True)
    c.req(b"GET", b"/r")
    return c.bytes()


def idle():
    c = Client()
    c.req(b"GET", b"/r")
    return c.bytes()


# /up/<script>: the target's scripted upstream handler (see fuzz_h2.c for the ops).

def up_body_held():
    """The handler holds each body slice for a loop turn: more DATA arrives behind it."""
    c = Client()
    sid = c.req(b"POST", b"/up/b....r..r..R.hwf", end=False)
    for i in range(4):
        c.data(sid, bytes([97 + i]) * 700)
    c.data(sid, b"", end=True)
    return c.bytes()


def up_stream_response():
    """A streamed 80 kB response behind a 103: past the window, WINDOW_UPDATEs let it go on."""
    c = Client()
    sid = c.req(b"GET", b"/up/ihW.W.wf")
    c.c.increment_flow_control_window(60000)
    c.c.increment_flow_control_window(30000, stream_id=sid)
    c.flush()
    c.c.increment_flow_control_window(60000, stream_id=sid)
    c.flush()
    return c.bytes()


def up_abort_and_error():
    c = Client()
    sid = c.req(b"POST", b"/up/bR.h.w.a", end=False)
    c.data(sid, b"x" * 100, end=True)
    sid = c.req(b"POST", b"/up/b.e", end=False)
    c.data(sid, b"y" * 10, end=True)
    c.req(b"GET", b"/up/l.w.f")
    c.req(b"GET", b"/up/0w")
    c.req(b"HEAD", b"/up/hwf")
    c.req(b"GET", b"/up/hwwwwf", [(b"x-pad", b"1")])
    return c.bytes()


def up_client_resets():
    """The client resets streams the handler is working on: on_abort."""
    c = Client()
    a = c.req(b"POST", b"/up/b.h.w...w...f", end=False)
    c.data(a, b"q" * 500)
    b = c.req(b"GET", b"/up/h.W.W.f")
    c.c.reset_stream(a, h2.errors.ErrorCodes.CANCEL)
    c.flush()
    c.c.reset_stream(b, h2.errors.ErrorCodes.CANCEL)
    c.flush()
    c.req(b"GET", b"/up/.....f")
    return c.bytes()


def up_goaway_mid():
    c = Client()
    c.req(b"GET", b"/up/h.W.W.W.f")
    sid = c.req(b"POST", b"/up/b..R", end=False)
    c.data(sid, b"z" * 300)
    c.c.close_connection(error_code=h2.errors.ErrorCodes.NO_ERROR)
    return c.bytes()


def up_body_too_large_unread():
    """30 kB of body before the handler reads (past max_body_bytes): RST CANCEL, then the
    handler's body_start hears 413."""
    c = Client()
    sid = c.req(b"POST", b"/up/...b.R", end=False)
    for i in range(3):
        c.data(sid, bytes([65 + i]) * 10000)
    return c.bytes()


def up_stalled_reader():
    """The client stops reading while a big answer is in a pending write, then resets it."""
    c = Client()
    a = c.req(b"GET", b"/up/hWzu.W.f")
    c.req(b"GET", b"/r")
    c.c.reset_stream(a, h2.errors.ErrorCodes.CANCEL)
    c.flush()
    c.req(b"GET", b"/up/h.w.w.f")
    return c.bytes()


def http1_no_preface():
    """Flags bit 0: no preface: an HTTP/1.1 request is not HTTP/2 (bad client magic)."""
    return b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"


SEEDS = [
    ("01-get-simple", get_simple, 0, (0, 0, 0)),
    ("02-echo-headers", echo_headers, slices(3), (30, 70, 0)),
    ("03-post-echo-body", post_echo_body, slices(2), (120, 0, 0)),
    ("04-post-stream-body", post_stream_body, slices(4) | DEFER, (200, 5000, 9000)),
    ("05-several-streams", several_streams, 0, (0, 0, 0)),
    ("06-several-streams-drain", several_streams, slices(2) | DRAIN, (60, 0, 0)),
    ("07-rst-stream", rst_stream, slices(2), (90, 0, 0)),
    ("08-ping-settings-window", ping_settings_window, slices(3), (40, 90, 0)),
    ("09-big-response-window", big_response_window, slices(2) | DEFER, (60, 0, 0)),
    ("10-continuation", continuation, 0, (0, 0, 0)),
    ("11-goaway", goaway, EOF, (0, 0, 0)),
    ("12-trailers", trailers, slices(2) | EOF, (70, 0, 0)),
    ("13-large-headers", large_headers, 0, (0, 0, 0)),
    ("14-long-uri", long_uri, 0, (0, 0, 0)),
    ("15-cookies", cookies, 0, (0, 0, 0)),
    ("16-content-length", content_length, slices(2), (80, 0, 0)),
    ("17-connect-options", connect_and_odd, 0, (0, 0, 0)),
    ("18-rapid-reset", rapid_reset, 0, (0, 0, 0)),
    ("19-hand-frames", hand_frames, slices(4), (40, 80, 120)),
    ("20-http1-no-preface", http1_no_preface, NO_PREFACE, (0, 0, 0)),
    ("21-write-fails", several_streams, slices(2) | DEFER | FAIL2, (70, 0, 0)),
    ("22-body-timeout", body_stalled, slices(2) | CLOCK, (200, 0, 0), 24),
    ("23-idle-timeout", idle, slices(2) | CLOCK, (65535, 0, 0), 250),
    ("24-drain-grace", several_streams, slices(3) | DRAIN | CLOCK, (130, 180, 0), 5),
    ("25-body-over-limit", body_over_limit, slices(3), (300, 12000, 0)),
    ("26-up-body-held", up_body_held, slices(4), (150, 900, 1700)),
    ("27-up-stream-response", up_stream_response, slices(3) | DEFER, (100, 125, 0)),
    ("28-up-abort-error", up_abort_and_error, slices(2), (200, 0, 0)),
    ("29-up-client-resets", up_client_resets, slices(3) | DEFER, (180, 720, 0)),
    ("30-up-goaway-eof", up_goaway_mid, slices(2) | EOF | DEFER, (120, 0, 0)),
    ("31-up-clock", up_client_resets, slices(2) | CLOCK | DEFER, (300, 0, 0), 21),
    ("32-up-body-too-large", up_body_too_large_unread, 0, (0, 0, 0)),
    ("33-stalled-reader-reset", up_stalled_reader, slices(2) | DEFER, (150, 0, 0), 0, 1),
    ("34-stalled-reader-timeout", up_stalled_reader, slices(2) | DEFER | CLOCK, (150, 0, 0), 250, 2),
    ("35-write-fails-async", up_abort_and_error, slices(2) | DEFER | FAIL2, (200, 0, 0)),
]


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                             "corpus", "h2")
    os.makedirs(out, exist_ok=True)
    for name, fn, flags, cuts, *steps in SEEDS:
        data = header(flags, cuts, *steps) + fn()
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
        print("%-28s %6d bytes" % (name, len(data)))


if __name__ == "__main__":
    main()
