"""Streaming: 100 MB bodies up and down (Content-Length, chunked, close-delimited) arrive intact
(md5 both ends) while sluice's memory stays bounded, also when one side stops reading for a
while (backpressure); many small chunks both ways."""
import hashlib
import json
import os
import threading
import time

import pytest

import backend as be
import harness
from harness import MiB, RssSampler, build_request, chunk, md5_of_pattern

BIG = 100 * MiB
RSS_LIMIT_KB = 64 * 1024
pytestmark = pytest.mark.deadline(60)


@pytest.fixture
def rig(env):
    big = env.backend(be.paths({
        "/sink-slow": be.sink(pause=1.5),
        "/sink": be.sink(),
        "/down-chunked": be.stream(mode="chunked"),
        "/down-close": be.stream(mode="close"),
        "/down": be.stream(mode="length"),
        "/echo-chunked": be.echo_chunked(piece=777),
    }), name="big")
    gw = env.gateway(upstreams={"big": harness.upstream(big, timeouts={"read": "30s", "send": "30s"})},
                     routes=[{"name": "big", "match": {"path_prefix": "/"}, "upstream": "big"}],
                     limits={"max_body_bytes": "1gb"},
                     timeouts={"client_body": "30s"})
    return gw, big


def assert_rss_bounded(gw, sampler):
    if harness.SANITIZED:
        return  # ASan's shadow memory and quarantine make RSS meaningless
    hwm = gw.hwm_kb()
    assert sampler.peak_kb < RSS_LIMIT_KB and hwm < RSS_LIMIT_KB, \
        f"sluice RSS peak {sampler.peak_kb} kB, VmHWM {hwm} kB (limit {RSS_LIMIT_KB} kB)"


def upload(gw, path, nbytes, chunked=False):
    """Sends nbytes of PATTERN; returns the upstream's {"bytes", "md5"} answer."""
    view = memoryview(be.PATTERN)
    with gw.conn(timeout=30) as c:
        headers = [("Transfer-Encoding", "chunked")] if chunked else [("Content-Length", str(nbytes))]
        c.send(build_request("POST", path, headers))
        sent = 0
        while sent < nbytes:
            piece = view[: min(len(view), nbytes - sent)]
            c.send(chunk(bytes(piece)) if chunked else piece)
            sent += len(piece)
        if chunked:
            c.send(b"0\r\n\r\n")
        r = c.read_response()
    assert r.status == 200, r
    return r.json()


def download(gw, path, pause_after=None, pause=0.0, version="HTTP/1.1"):
    """Reads the whole response through an md5; optionally stops reading for `pause` seconds once
    `pause_after` bytes arrived. Returns (response, md5 hex)."""
    h = hashlib.md5()
    state = {"n": 0, "paused": pause_after is None}

    def sink(data):
        h.update(data)
        state["n"] += len(data)
        if not state["paused"] and state["n"] >= pause_after:
            state["paused"] = True
            time.sleep(pause)

    with gw.conn(timeout=30) as c:
        c.request("GET", path, version=version)
        r = c.read_response(sink=sink)
    return r, h.hexdigest()


def test_upload_100mb_content_length(rig):
    gw, _ = rig
    with RssSampler(gw) as s:
        got = upload(gw, "/sink", BIG)
    assert got == {"bytes": BIG, "md5": md5_of_pattern(BIG, be.PATTERN)}
    assert_rss_bounded(gw, s)


def test_upload_100mb_chunked(rig):
    gw, _ = rig
    with RssSampler(gw) as s:
        got = upload(gw, "/sink", BIG, chunked=True)
    assert got == {"bytes": BIG, "md5": md5_of_pattern(BIG, be.PATTERN)}
    assert_rss_bounded(gw, s)


def test_upload_to_slow_upstream_is_backpressured(rig):
    gw, _ = rig
    with RssSampler(gw) as s:
        got = upload(gw, "/sink-slow", BIG)  # the upstream reads nothing for 1.5 s
    assert got["bytes"] == BIG
    assert_rss_bounded(gw, s)


def test_download_100mb_content_length_with_slow_reader(rig):
    gw, _ = rig
    with RssSampler(gw) as s:
        r, md5 = download(gw, f"/down?n={BIG}", pause_after=MiB, pause=1.5)
    assert r.status == 200 and r.framing == "length" and r.body_len == BIG
    assert md5 == md5_of_pattern(BIG, be.PATTERN)
    assert_rss_bounded(gw, s)


def test_download_100mb_chunked(rig):
    gw, _ = rig
    with RssSampler(gw) as s:
        r, md5 = download(gw, f"/down-chunked?n={BIG}", pause_after=10 * MiB, pause=1.0)
    assert r.status == 200 and r.framing == "chunked" and r.body_len == BIG
    assert md5 == md5_of_pattern(BIG, be.PATTERN)
    assert_rss_bounded(gw, s)


def test_download_close_delimited_streams(rig):
    gw, _ = rig
    n = 30 * MiB
    with RssSampler(gw) as s:
        r, md5 = download(gw, f"/down-close?n={n}", pause_after=MiB, pause=1.0)
    assert r.status == 200 and r.framing == "chunked" and r.body_len == n
    assert md5 == md5_of_pattern(n, be.PATTERN)
    assert_rss_bounded(gw, s)


def test_100mb_up_and_100mb_down_at_once(rig):
    gw, _ = rig
    results, errors = {}, []

    def up():
        try:
            results["up"] = upload(gw, "/sink-slow", BIG)
        except BaseException as e:  # noqa: B902 - reported below
            errors.append(e)

    def down():
        try:
            results["down"] = download(gw, f"/down?n={BIG}", pause_after=5 * MiB, pause=1.0)
        except BaseException as e:
            errors.append(e)

    with RssSampler(gw) as s:
        threads = [threading.Thread(target=up), threading.Thread(target=down)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(50)
    assert not errors, errors
    assert results["up"] == {"bytes": BIG, "md5": md5_of_pattern(BIG, be.PATTERN)}
    r, md5 = results["down"]
    assert r.body_len == BIG and md5 == md5_of_pattern(BIG, be.PATTERN)
    assert_rss_bounded(gw, s)


def test_many_small_chunks_both_ways(rig):
    gw, big = rig
    pieces = [os.urandom(1 + (i * 37) % 300) for i in range(800)]
    body = b"".join(pieces)
    with gw.conn() as c:
        c.send(build_request("POST", "/echo-chunked", [("Transfer-Encoding", "chunked")]))
        for i, p in enumerate(pieces):
            c.send(chunk(p))
            if i % 100 == 0:
                time.sleep(0.02)
        c.send(b"0\r\n\r\n")
        r = c.read_response()
        assert r.status == 200 and r.framing == "chunked"
        assert r.body == body
        # The connection is still in sync afterwards.
        r = c.roundtrip("POST", "/sink", body=b"z" * 10)
        assert json.loads(r.body)["bytes"] == 10
