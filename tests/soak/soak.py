#!/usr/bin/env python3
"""Soak: a long mixed load against the real binary, watching memory, descriptors and answers.

    /usr/bin/python3 tests/soak/soak.py [--seconds 600] [--bin build/sluice] [--out DIR]
    make soak            # 10 minutes, release build;  make soak-asan: the same under ASan+UBSan
    VALGRIND=1 ...       # runs sluice under valgrind memcheck (slow: use --seconds 120)

For the whole run, at once: wrk on a keep-alive route (if installed), clients opening a new
connection per request, uploads of 256 KiB (echoed back as a digest), requests that fail
upstream (500s, resets mid-body, a dead target: retries and the breaker), unknown routes, bad
requests, an API-key route with good and bad keys, a rate-limited route, admin scrapes, and a
config reload every 5 s alternating between two configs. HTTP/2 to an upstream (the gateway itself,
`protocol: h2`): uploads with their digest and an inner error through /viah2. HTTP/2 too (when python3-h2 and h2load
are installed): h2load on the keep-alive route over h2c, directly and through /viah2, and a checked HTTP/2 client running
several streams at once on one connection (a GET, an upload with its digest, an unknown route,
and a stream it resets while the upstream is still answering).

Every checked answer must be the one its request calls for (the status and, for errors, the
cause). Every 5 s RSS and open descriptors are sampled into OUT/samples.tsv. At the end, once the
load has stopped and the pools' idle timeout has passed: descriptors are back at the level after
warm-up, RSS grew by less than a bound over the steady part of the run (a leak of one small
allocation per request would show as tens of MB over millions of requests), and the process
is alive and answers. Exit status 0 when all of that holds; the summary is OUT/summary.txt.
"""
import argparse
import hashlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
import backend as B  # noqa: E402
import harness  # noqa: E402

API_KEY = "soak-key-0123456789abcdef"


def handler(ex):
    path = ex.req.target.split("?", 1)[0]
    if path.endswith("/upload"):
        n, digest = ex.sink_body()
        ex.respond(200, f"{n} {digest}")
    elif path.endswith("/err"):
        ex.read_body(store=False)
        ex.respond(500, b"boom")
    elif path.endswith("/reset"):
        ex.read_body(store=False)
        ex.send_head(200, [("Content-Length", "100000")])
        ex.send(b"x" * 1000)
        ex.reset()
    elif path.endswith("/slow"):
        ex.read_body(store=False)
        time.sleep(0.2)
        ex.respond(200, b"slow")
    else:
        ex.read_body(store=False)
        ex.respond(200, b"ok")


def config(up, generation, dead_port, self_port):
    keepalive = {"max_idle": 64, "idle_timeout": "1s"}
    return {
        "limits": {"max_connections": 20000},
        "consumers": {"soak": {"api_keys": [{"sha256": hashlib.sha256(API_KEY.encode()).hexdigest()}]}},
        "upstreams": {
            "app": harness.upstream(up.port, keepalive=keepalive),
            "flaky": {**harness.upstream(up.port, dead_port, keepalive=keepalive),
                      "retries": {"attempts": 2}},
            # The gateway itself over h2c: /viah2/... goes out as HTTP/2 streams and comes back
            # in as /... (protocol: h2, docs/grpc.md).
            "self_h2": harness.upstream(self_port, protocol="h2", keepalive={"idle_timeout": "1s"}),
        },
        "routes": [
            {"name": "fast", "match": {"path_prefix": "/fast"}, "upstream": "app",
             "response_headers": {"set": {"X-Gen": str(generation)}}},
            {"name": "app", "match": {"path_prefix": "/app"}, "upstream": "app"},
            {"name": "flaky", "match": {"path_prefix": "/flaky"}, "upstream": "flaky"},
            {"name": "keyed", "match": {"path_prefix": "/keyed"}, "upstream": "app", "auth": ["api_key"]},
            {"name": "limited", "match": {"path_prefix": "/limited"}, "upstream": "app",
             "rate_limit": [{"key": "ip", "rate": "200/s", "burst": 20}]},
            {"name": "viah2", "match": {"path_prefix": "/viah2"}, "upstream": "self_h2", "strip_prefix": True},
            {"name": "local", "match": {"path_prefix": "/local"},
             "respond": {"status": 200, "body": f"gen {generation}\n"}},
        ],
    }


def fd_count(pid):
    return harness.fd_count(pid, looks=3)


class Load:
    def __init__(self, gw, deadline):
        self.gw = gw
        self.deadline = deadline
        self.lock = threading.Lock()
        self.counts = {}
        self.failures = []

    def done(self, kind, ok, what=""):
        with self.lock:
            c = self.counts.setdefault(kind, [0, 0])
            c[0] += 1
            if not ok:
                c[1] += 1
                if len(self.failures) < 50:
                    self.failures.append(f"{time.strftime('%H:%M:%S')} {kind}: {what}")

    def running(self):
        return time.monotonic() < self.deadline

    def loop(self, kind, fn):
        while self.running():
            try:
                ok, what = fn()
            except Exception as e:  # a connection error is a failure of the checked request
                ok, what = False, repr(e)
            self.done(kind, ok, what)


def expect(r, status, cause=None):
    if r.status != status:
        return False, f"{r.status} (want {status}) {r.body[:200]!r}"
    if cause:
        got = r.header("Sluice-Error")
        if got != cause:
            return False, f"cause {got} (want {cause})"
    return True, ""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=int(os.environ.get("SOAK_SECONDS", 600)))
    ap.add_argument("--bin", default=os.environ.get("SLUICE_BIN", str(harness.REPO / "build" / "sluice")))
    ap.add_argument("--out", default=str(harness.REPO / "out" / "soak" / time.strftime("%Y%m%d-%H%M%S")))
    ap.add_argument("--rss-bound-mb", type=float, default=float(os.environ.get("SOAK_RSS_BOUND_MB", 8)))
    args = ap.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ["SLUICE_BIN"] = args.bin
    valgrind = os.environ.get("VALGRIND") == "1"

    up = B.Backend(handler, name="soak-backend", backlog=1024)
    dead_port = harness.free_port()
    gw = harness.Gateway(out / "gw", {})
    gw.config = gw.complete(config(up, 0, dead_port, gw.port))
    gw.config["logging"] = {"access": {"path": "off"}, "level": "warn"}
    if valgrind:
        vg_log = out / "valgrind.log"
        real = args.bin
        wrapper = out / "sluice-vg"
        wrapper.write_text(f"#!/bin/sh\nexec valgrind --leak-check=full --show-leak-kinds=definite,indirect "
                           f"--errors-for-leak-kinds=definite,indirect --error-exitcode=99 "
                           f"--log-file={vg_log} {real} \"$@\"\n")
        wrapper.chmod(0o755)
        os.environ["SLUICE_BIN"] = str(wrapper)
    gw.start()
    pid = gw.pid
    idle_fds = fd_count(pid)  # before any load: listeners, loops, log files; no pooled connection
    print(f"soak: sluice pid {pid}, {args.seconds}s, out {out}", flush=True)

    start = time.monotonic()
    deadline = start + args.seconds
    load = Load(gw, deadline)

    def new_conn_fast():
        return expect(harness.request(gw.port, "GET", "/fast/x", timeout=10), 200)

    def upload():
        body = os.urandom(256 * 1024)
        r = harness.request(gw.port, "POST", "/app/upload", body=body, timeout=20)
        want = f"{len(body)} {hashlib.md5(body).hexdigest()}".encode()
        return (r.status == 200 and r.body == want), f"{r.status} {r.body[:100]!r}"

    def errors():
        with harness.RawConn(gw.port, timeout=10) as c:
            ok, what = expect(c.roundtrip("GET", "/app/err"), 500)
            if not ok:
                return ok, what
            ok, what = expect(c.roundtrip("GET", "/nowhere"), 404, "route_not_found")
            if not ok:
                return ok, what
            ok, what = expect(c.roundtrip("GET", "/keyed/x", headers={"X-API-Key": "wrong"}), 401, "auth_invalid")
            if not ok:
                return ok, what
            ok, what = expect(c.roundtrip("GET", "/keyed/x", headers={"X-API-Key": API_KEY}), 200)
            if not ok:
                return ok, what
        # a bad request closes its connection
        r = harness.request(gw.port, "GET", "/app/x", headers={"Content-Length": "1", "Transfer-Encoding": "chunked"})
        return expect(r, 400)

    def flaky():
        r = harness.request(gw.port, "GET", "/flaky/x", timeout=10)
        return (r.status in (200, 502, 503)), f"{r.status} {r.body[:200]!r}"

    def resets():
        # the upstream resets mid-body: the client sees a truncated response, never a hang
        try:
            with harness.RawConn(gw.port, timeout=10) as c:
                c.request("GET", "/app/reset")
                c.read_response()
            return False, "a truncated body was delivered as complete"
        except (harness.IncompleteBody, harness.ConnectionClosed, ConnectionError):
            return True, ""

    def limited():
        r = harness.request(gw.port, "GET", "/limited/x", timeout=10)
        if r.status == 429:
            return expect(r, 429, "rate_limited")
        return expect(r, 200)

    def admin():
        st, _, body = gw.admin_get("/metrics", timeout=10)
        if st != 200 or b"sluice_requests_total" not in body:
            return False, f"/metrics {st}"
        st, _, body = gw.admin_get("/doctor", timeout=10)
        return st == 200, f"/doctor {st}"

    h2_state = {"conn": None, "used": 0}

    def h2_streams():
        # One connection for 50 rounds, then a new one; each round four streams at once.
        from h2client import H2Client, hdr
        import h2.errors
        if h2_state["conn"] is None or h2_state["used"] >= 50 or h2_state["conn"].closed:
            if h2_state["conn"] is not None:
                h2_state["conn"].close()
            h2_state["conn"], h2_state["used"] = H2Client(gw.port, timeout=10), 0
        c = h2_state["conn"]
        h2_state["used"] += 1
        body = os.urandom(64 * 1024)
        get = c.start("GET", "/fast/h2")
        up = c.start("POST", "/app/upload", body=body)
        lost = c.start("GET", "/nowhere")
        gone = c.start("GET", "/app/slow")
        c.conn.reset_stream(gone, h2.errors.ErrorCodes.CANCEL)
        c.flush()
        g, u, n = c.wait([get, up, lost], timeout=20)
        for sid in (get, up, lost, gone):
            c.streams.pop(sid, None)
        if g["status"] != 200 or bytes(g["body"]) != b"ok":
            return False, f"h2 GET {g['status']} {bytes(g['body'])[:100]!r}"
        want = f"{len(body)} {hashlib.md5(body).hexdigest()}".encode()
        if u["status"] != 200 or bytes(u["body"]) != want:
            return False, f"h2 upload {u['status']} {bytes(u['body'])[:100]!r}"
        if n["status"] != 404 or hdr(n, "sluice-error") != "route_not_found":
            return False, f"h2 unknown route {n['status']} {hdr(n, 'sluice-error')}"
        return True, ""

    def via_h2():
        # HTTP/1.1 in, HTTP/2 to the upstream (the gateway itself), HTTP/1.1 to the backend: an
        # upload's digest, and an inner error passed back with its cause.
        body = os.urandom(32 * 1024)
        r = harness.request(gw.port, "POST", "/viah2/app/upload", body=body, timeout=10)
        ok, what = expect(r, 200)
        if not ok:
            return ok, "via h2 upload: " + what
        if r.body != f"{len(body)} {hashlib.md5(body).hexdigest()}".encode():
            return False, f"via h2 upload digest {r.body[:100]!r}"
        return expect(harness.request(gw.port, "GET", "/viah2/nowhere", timeout=10), 404, "route_not_found")

    def slow_keepalive():
        with harness.RawConn(gw.port, timeout=10) as c:
            for _ in range(5):
                ok, what = expect(c.roundtrip("GET", "/app/slow"), 200)
                if not ok:
                    return ok, what
        return True, ""

    jobs = [("new_conn", new_conn_fast)] * 3 + [("upload", upload)] * 2 + [("errors", errors), ("flaky", flaky),
                                                                             ("reset", resets), ("limited", limited),
                                                                             ("admin", admin), ("slow", slow_keepalive),
                                                                             ("via_h2", via_h2)]
    if importlib.util.find_spec("h2") is not None:  # python3-h2: the HTTP/2 job needs it
        jobs.append(("h2", h2_streams))
    else:
        print("soak: python3-h2 missing: no checked HTTP/2 client", flush=True)
    threads = [threading.Thread(target=load.loop, args=job, daemon=True) for job in jobs]
    for t in threads:
        t.start()

    wrk_proc = None
    if shutil.which("wrk"):
        wrk_proc = subprocess.Popen(["wrk", "-t1", "-c32", f"-d{args.seconds}s", f"http://127.0.0.1:{gw.port}/fast/w"],
                                    stdout=open(out / "wrk.txt", "w"), stderr=subprocess.STDOUT)

    h2load_proc = None
    if shutil.which("h2load"):
        h2load_proc = subprocess.Popen(["h2load", "-D", str(args.seconds), "-c", "8", "-m", "8",
                                        f"http://127.0.0.1:{gw.port}/fast/h2load",
                                        f"http://127.0.0.1:{gw.port}/viah2/fast/h2load"],
                                       stdout=open(out / "h2load.txt", "w"), stderr=subprocess.STDOUT)

    samples = open(out / "samples.tsv", "w")
    samples.write("t_s\trss_kb\tfds\treloads\n")
    reloads = 0
    warm_rss = None
    next_reload = start + 5
    next_sample = start
    while time.monotonic() < deadline:
        now = time.monotonic()
        if now >= next_reload:
            reloads += 1
            gw.reload(config(up, reloads, dead_port, gw.port) | {"logging": gw.config["logging"]})
            next_reload += 5
        if now >= next_sample:
            up.reset()  # the backend's own records would grow for the whole run otherwise
            rss, fds = gw.rss_kb(), fd_count(pid)
            samples.write(f"{now - start:.0f}\t{rss}\t{fds}\t{reloads}\n")
            samples.flush()
            # Warm-up: the first 40% of the run, in which malloc's arenas and the pools find
            # their size (RSS rises in shrinking steps); after it, RSS must stay flat.
            if warm_rss is None and now - start >= args.seconds * 0.4:
                warm_rss = rss
            next_sample += 5
        if not gw.alive():
            break
        time.sleep(0.1)

    for t in threads:
        t.join(60)
    wrk_out = ""
    if wrk_proc:
        try:
            wrk_proc.wait(60)
        except subprocess.TimeoutExpired:
            wrk_proc.kill()
        wrk_out = (out / "wrk.txt").read_text()

    h2load_out = ""
    if h2load_proc:
        try:
            h2load_proc.wait(60)
        except subprocess.TimeoutExpired:
            h2load_proc.kill()
        h2load_out = (out / "h2load.txt").read_text()
    if h2_state["conn"] is not None:
        h2_state["conn"].close()

    problems = []
    if not gw.alive():
        problems.append(f"sluice died: {gw.log_tail()}")
    else:
        # idle upstream connections time out (1s), clients are gone: back to the warm level
        settle = time.monotonic() + harness.slack(10)
        while time.monotonic() < settle and fd_count(pid) > idle_fds:
            time.sleep(0.5)
        end_rss, end_fds = gw.rss_kb(), fd_count(pid)
        samples.write(f"{time.monotonic() - start:.0f}\t{end_rss}\t{end_fds}\t{reloads}\n")
        ok = harness.request(gw.port, "GET", "/local/x")
        if ok.status != 200 or ok.body != f"gen {reloads}\n".encode():
            problems.append(f"after the load: {ok.status} {ok.body!r} (want gen {reloads})")
        if end_fds > idle_fds:
            problems.append(f"descriptors {idle_fds} before the load -> {end_fds} at the end: "
                            f"{sorted(os.listdir(f'/proc/{pid}/fd'))}")
        growth_mb = (end_rss - warm_rss) / 1024
        if growth_mb > args.rss_bound_mb:
            problems.append(f"RSS grew {growth_mb:.1f} MB after warm-up ({warm_rss} -> {end_rss} kB), "
                            f"bound {args.rss_bound_mb} MB")
    samples.close()
    if load.failures:
        problems.append("checked requests failed:\n  " + "\n  ".join(load.failures[:20]))
    wrk_reqs = 0
    for line in wrk_out.splitlines():
        if " requests in " in line:
            wrk_reqs = int(line.split()[0])
        if "Non-2xx" in line or "Socket errors" in line:
            problems.append(f"wrk: {line.strip()}")
    h2load_reqs = 0
    if h2load_proc:
        m = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored",
                      h2load_out)
        codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", h2load_out)
        if not m or not codes:
            problems.append(f"h2load: no result\n{h2load_out[-500:]}")
        else:
            h2load_reqs = int(m.group(1))
            if int(m.group(2)) or int(m.group(3)) or sum(int(codes.group(k)) for k in (2, 3, 4)):
                problems.append(f"h2load: {m.group(0)}; {codes.group(0)}")

    if gw.alive():
        rc = gw.stop(signal.SIGTERM, timeout=120 if valgrind else 30)
        if rc != 0:  # a sanitizer's leak report, or valgrind's errors, end in a non-zero exit
            problems.append(f"sluice exited {rc} on SIGTERM\n{gw.log_tail()}")
    up.close()
    if valgrind:
        log = (out / "valgrind.log").read_text()
        summary = [ln for ln in log.splitlines() if "ERROR SUMMARY" in ln or "definitely lost" in ln
                   or "indirectly lost" in ln]
        print("\n".join(summary))
        if "ERROR SUMMARY: 0 errors" not in log:
            problems.append(f"valgrind reported errors (exit {gw.returncode}): see {out / 'valgrind.log'}")

    total = sum(c[0] for c in load.counts.values())
    lines = [f"soak: {args.seconds}s, {reloads} reloads, {wrk_reqs} wrk keep-alive requests, "
             f"{h2load_reqs} h2load HTTP/2 requests, "
             f"{total} checked requests ({', '.join(f'{k} {v[0]}' for k, v in sorted(load.counts.items()))}), "
             f"failed {sum(c[1] for c in load.counts.values())}"]
    try:
        rows = [ln.split("\t") for ln in (out / "samples.tsv").read_text().splitlines()[1:]]
        rss = [int(r[1]) for r in rows]
        fds = [int(r[2]) for r in rows]
        lines.append(f"RSS kB: start {rss[0]}, after warm-up {warm_rss}, peak {max(rss)}, end {rss[-1]}; "
                     f"fds: before the load {idle_fds}, peak {max(fds)}, end {fds[-1]}")
    except (IndexError, ValueError, FileNotFoundError):
        pass
    lines += problems or ["result: PASS"]
    (out / "summary.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    json.dump({"problems": problems, "counts": load.counts}, open(out / "result.json", "w"), indent=1)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
