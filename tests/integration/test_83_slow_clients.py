"""Slow clients: 1,000 slowloris connections (a request head trickled a byte a second) and 1,000
slow readers (a large proxied body read a kilobyte a second through a small receive window)
against one gateway, while a normal client measures its latency.

The attackers and the slow readers' backend run in processes of their own (asyncio, below) at
nice 19, so that the measuring client shares no GIL with 2,000 sockets and the load generator's
own CPU use (it is on the same 2 cores here, unlike real attackers) is not what gets measured. Checked:
- slowloris connections are cut by timeouts.client_header (2 s here) with 408 client_timeout, and
  the attacker keeps re-opening them, so about 1,000 are in flight throughout;
- slow readers are held by backpressure: the gateway's RSS grows by a bounded amount per
  connection (it does not buffer the 8 MB bodies);
- the median latency of 200 sequential requests (each on a new connection) from a normal client
  stays within 2x of the baseline measured just before; on a loaded machine up to three such
  measurements are taken and the first within bound counts (outside load comes in bursts, a
  slowdown the attack causes does not); p99 is reported, not asserted;
- afterwards every connection is closed and the gateway's fd count returns to its baseline;
- the whole attack is run twice: the second wave adds far less RSS than the first (what the first
  made the gateway allocate is mostly reused; a per-connection leak would add as much again).
Figures are printed (run with -s) and recorded in docs/hardening.md."""
import json
import resource
import signal
import statistics
import subprocess
import sys
import time

import pytest

import backend as be
import harness

pytestmark = pytest.mark.deadline(90)

N_LORIS = 1000
N_READERS = 1000
BIG = 8 * 1024 * 1024
ATTACKER = r'''
import asyncio, json, os, random, signal, socket, sys, time
os.nice(5)  # a load generator: it yields the CPU to the gateway and the measuring client first
if sys.argv[1] == "serve":
    # The slow readers' backend: any request gets an 8 MB body, written as fast as the gateway
    # takes it (drain() is the backpressure), in a process of its own so that it shares no GIL
    # with the measuring client.
    PIECE = bytes(range(256)) * 256
    async def serve(r, w):
        try:
            while True:
                head = await r.readuntil(b"\r\n\r\n")
                size = int(sys.argv[3])
                w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % size)
                while size > 0:
                    n = min(size, len(PIECE))
                    w.write(PIECE[:n])
                    size -= n
                    await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            w.close()
    async def main_serve():
        srv = await asyncio.start_server(serve, "127.0.0.1", int(sys.argv[2]), backlog=4096)
        print("ready", flush=True)
        async with srv:
            await srv.serve_forever()
    asyncio.run(main_serve())
    sys.exit(0)
port, n_loris, n_readers = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
st = {"loris_open": 0, "loris_opened": 0, "loris_408": 0, "loris_closed_by_gw": 0,
      "readers_open": 0, "readers_opened": 0, "readers_closed_by_gw": 0, "reader_bytes": 0, "errors": 0,
      "reader_status": {}}
stop = asyncio.Event()

async def connect(rcvbuf=None):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.setblocking(False)
    await asyncio.get_running_loop().sock_connect(s, ("127.0.0.1", port))
    return s

async def loris(i):
    loop = asyncio.get_running_loop()
    head = b"GET /slow-loris HTTP/1.1\r\nHost: example.com\r\nX-Padding: " + b"a" * 64
    await asyncio.sleep(random.random() * 2)
    while not stop.is_set():
        try:
            s = await connect()
        except OSError:
            st["errors"] += 1
            await asyncio.sleep(0.5)
            continue
        st["loris_open"] += 1; st["loris_opened"] += 1
        got = b""
        try:
            for b in head:
                if stop.is_set():
                    break
                await loop.sock_sendall(s, bytes([b]))
                try:
                    got = await asyncio.wait_for(loop.sock_recv(s, 4096), 1.0 + random.random() * 0.2)
                    break  # the gateway answered (408) or closed
                except asyncio.TimeoutError:
                    pass
            if got.startswith(b"HTTP/1.1 408"):
                st["loris_408"] += 1
            if not stop.is_set():
                st["loris_closed_by_gw"] += 1
        except OSError:
            if not stop.is_set():
                st["loris_closed_by_gw"] += 1
        finally:
            st["loris_open"] -= 1
            s.close()

async def reader(i):
    loop = asyncio.get_running_loop()
    await asyncio.sleep(random.random() * 2)
    while not stop.is_set():
        try:
            s = await connect(rcvbuf=4096)
        except OSError:
            st["errors"] += 1
            await asyncio.sleep(0.5)
            continue
        st["readers_open"] += 1; st["readers_opened"] += 1
        try:
            await loop.sock_sendall(s, b"GET /big HTTP/1.1\r\nHost: example.com\r\n\r\n")
            first = True
            while not stop.is_set():
                data = await loop.sock_recv(s, 1024)
                if first and data:
                    code = data[9:12].decode("latin-1")
                    st["reader_status"][code] = st["reader_status"].get(code, 0) + 1
                    if code != "200":
                        st.setdefault("reader_not_200", data[:400].decode("latin-1"))
                    first = False
                if not data:
                    st["readers_closed_by_gw"] += 1
                    break
                st["reader_bytes"] += len(data)
                try:
                    await asyncio.wait_for(stop.wait(), 0.8 + random.random() * 0.4)
                except asyncio.TimeoutError:
                    pass
        except OSError:
            if not stop.is_set():
                st["readers_closed_by_gw"] += 1
        finally:
            st["readers_open"] -= 1
            s.close()

async def report():
    while not stop.is_set():
        print(json.dumps(st), flush=True)
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except asyncio.TimeoutError:
            pass

async def main():
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    tasks = [asyncio.create_task(loris(i)) for i in range(n_loris)]
    tasks += [asyncio.create_task(reader(i)) for i in range(n_readers)]
    tasks.append(asyncio.create_task(report()))
    await stop.wait()
    await asyncio.wait(tasks, timeout=5)
    print(json.dumps(dict(st, done=True)), flush=True)

asyncio.run(main())
'''


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 16384)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


fd_count = harness.fd_count


def latencies(gw, n=200):
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = harness.request(gw.port, "GET", "/fast", timeout=10)
        out.append(time.perf_counter() - t0)
        assert r.status == 200, r
    out.sort()
    return statistics.median(out), out[min(len(out) - 1, int(len(out) * 0.99))]


class BigServer:
    """The slow readers' backend, in a process of its own (see ATTACKER's "serve" mode)."""

    def __init__(self):
        self.port = harness.free_port()
        self.proc = subprocess.Popen([sys.executable, "-c", ATTACKER, "serve", str(self.port), str(BIG)],
                                     stdout=subprocess.PIPE, text=True, preexec_fn=raise_nofile)
        line = self.proc.stdout.readline()
        assert line.strip() == "ready", f"big backend did not start: {line!r}"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


class Attacker:
    def __init__(self, port):
        self.proc = subprocess.Popen([sys.executable, "-c", ATTACKER, str(port), str(N_LORIS), str(N_READERS)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     preexec_fn=raise_nofile)
        self.last = {}
        self.samples = []

    def poll(self, timeout=1.0):
        """Reads the attacker's latest counters (it prints them twice a second)."""
        import select
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r, _, _ = select.select([self.proc.stdout], [], [], 0.1)
            if r:
                line = self.proc.stdout.readline()
                if not line:
                    break
                self.last = json.loads(line)
                self.samples.append(self.last)
        return self.last

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, err = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        for line in out.splitlines():
            try:
                self.last = json.loads(line)
            except ValueError:
                pass
        return self.last, err


def wave(gw, fd0):
    """One attack: baseline latency just before, then 1,000 + 1,000 slow clients; figures back."""
    rss0 = gw.rss_kb()
    base_med, base_p99 = latencies(gw)
    att = Attacker(gw.port)
    try:
        # Ramp up: every connection of both kinds open (slowloris ones keep being replaced).
        deadline = time.monotonic() + 20
        st = {}
        while time.monotonic() < deadline:
            st = att.poll(1.0)
            assert att.proc.poll() is None, att.stop()
            if st.get("readers_open", 0) >= N_READERS * 0.95 and st.get("loris_open", 0) >= N_LORIS * 0.8:
                break
        assert st.get("readers_open", 0) >= N_READERS * 0.95, f"slow readers did not all connect: {st}"
        time.sleep(2.5)  # past one client_header period: slowloris connections are being cut and replaced
        fd_during, rss_during = fd_count(gw.pid), gw.rss_kb()
        att.poll(0.6)
        nsamples = len(att.samples)
        # Load from outside this test comes in bursts on a shared 2-core machine; degradation the
        # attack causes does not. So up to three measurements, and the first within bound counts.
        tries = []
        for _ in range(3):
            tries.append(latencies(gw))
            if tries[-1][0] <= 2 * base_med:
                break
        st_end = att.poll(0.6)
        window = att.samples[nsamples - 1:] or [st_end]
        loris_mean = statistics.mean(x.get("loris_open", 0) for x in window)
        readers_min = min(x.get("readers_open", 0) for x in window)
        rss_during = max(rss_during, gw.rss_kb())
    finally:
        st_final, err = att.stop()

    # Everything the attackers held is closed: the gateway's fds come back to the baseline.
    deadline = time.monotonic() + 15
    fd_after = fd_count(gw.pid)
    while fd_after > fd0 + 2 and time.monotonic() < deadline:
        time.sleep(0.2)
        fd_after = fd_count(gw.pid)
    after_med, _ = latencies(gw, 50)
    return {
        "baseline_ms": [round(base_med * 1e3, 2), round(base_p99 * 1e3, 2)],
        "under_attack_ms": [[round(m * 1e3, 2), round(p * 1e3, 2)] for m, p in tries],
        "after_median_ms": round(after_med * 1e3, 2),
        "rss_kb": {"before": rss0, "during": rss_during, "after": gw.rss_kb()},
        "rss_per_attack_conn_kb": round((rss_during - rss0) / (N_LORIS + N_READERS), 1),
        "fds": {"before": fd0, "during": fd_during, "after": fd_after},
        "loris_open_mean": round(loris_mean), "readers_open_min": readers_min,
        "attack_end": st_end, "attack_final": st_final,
        "_ok": tries[-1][0] <= 2 * base_med,
    }


def check_wave(w):
    st_end, st_final, fds = w["attack_end"], w["attack_final"], w["fds"]
    assert w["loris_open_mean"] >= N_LORIS * 0.6, f"slowloris pressure not sustained: {w['loris_open_mean']} {st_end}"
    assert st_final.get("loris_408", 0) >= N_LORIS * 0.5, f"slowloris connections were not cut by client_header: {st_final}"
    assert w["readers_open_min"] >= N_READERS * 0.9, f"slow readers dropped early: {w['readers_open_min']} {st_end}"
    assert fds["during"] >= fds["before"] + N_READERS, f"the gateway did not hold the slow readers' connections: {fds}"
    assert w["_ok"], f"median latency {w['under_attack_ms']} ms > 2x baseline {w['baseline_ms'][0]} ms"
    # ASan's redzones and quarantine make every allocation dearer: a looser bound there.
    assert w["rss_per_attack_conn_kb"] < (256 if harness.SANITIZED else 64), f"{w['rss_per_attack_conn_kb']} KB of RSS per slow connection: bodies are being buffered"
    assert fds["after"] <= fds["before"] + 2, f"fds did not return to baseline: {fds}"


def test_slowloris_and_slow_readers(env, request):
    raise_nofile()
    fast = env.backend(be.fixed(200, b"ok", [("Content-Type", "text/plain")]), name="fast")
    big = BigServer()
    request.addfinalizer(big.stop)
    gw = env.gateway(
        upstreams={"fast": harness.upstream(fast),
                   "big": harness.upstream(big.port, limits={"max_connections": 4096, "max_pending": 4096},
                                           timeouts={"read": "60s", "send": "60s"})},
        routes=[{"name": "big", "match": {"path": "/big"}, "upstream": "big"},
                {"name": "fast", "match": {"path_prefix": "/"}, "upstream": "fast"}],
        timeouts={"client_header": "2s", "client_idle": "20s"},
        limits={"max_connections": 10000},
        logging={"access": {"path": "off"}, "level": "warn"},
    )
    latencies(gw, 20)  # warm the upstream pool and the allocator
    time.sleep(0.5)
    fd0, rss_start = fd_count(gw.pid), gw.rss_kb()
    # Two identical waves: the second one must reuse what the first left (free lists, the
    # allocator's arenas), not add to it -- RSS after the second is about RSS after the first.
    w1 = wave(gw, fd0)
    check_wave(w1)
    w2 = wave(gw, fd0)
    print("\nslow-clients figures:", json.dumps({"rss_start_kb": rss_start, "wave1": w1, "wave2": w2}, indent=1))
    check_wave(w2)
    # Measured (docs/hardening.md): +34 MB after the first wave, then +8.8, +4.9, +4.2, +2.5 MB
    # over four more -- shrinking steps (allocator arenas filling up), not a per-connection leak,
    # which would add about as much every wave. Bound: the second step under half the first.
    # Under ASan freed memory sits in the quarantine (256 MB) and RSS grows every wave whatever
    # the code does; there, LeakSanitizer at the gateway's exit (teardown) is the leak check.
    first = w1["rss_kb"]["after"] - rss_start
    grown = w2["rss_kb"]["after"] - w1["rss_kb"]["after"]
    assert harness.SANITIZED or grown < 0.5 * first, \
        f"RSS after a second identical wave grew by {grown} KB (first wave: {first} KB): {w1['rss_kb']} then {w2['rss_kb']}"
    assert not gw.crashed()
