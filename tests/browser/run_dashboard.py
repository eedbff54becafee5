#!/usr/bin/env python3
"""The dashboard's browser test (make test-browser). Starts sluice with the admin token required
and an upstream of two targets with active health checks, sends traffic, kills one target, then
runs dashboard.test.mjs (headless chromium through playwright-core) against GET /, which checks
the finding, the target's state, the charts, the layout at 1280x800 and 390x844, and the banner
when the gateway stops answering. Screenshots go to tests/browser/out/ (or $OUT_DIR).

Uses the integration harness (tests/integration) for ports, config and backends. Exit status:
0 when every check passed, 1 otherwise; 77 when chromium or node_modules are missing (a skip).
"""
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "integration"))

import backend as be  # noqa: E402
import harness  # noqa: E402

SKIP = 77
TOKEN = "dashboard-test-token-5f1c"
TOKEN_ENV = "SLUICE_DASHBOARD_TEST_TOKEN"


def find_chromium():
    for c in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser"):
        if c and os.access(c, os.X_OK):
            return c
    return None


def traffic(gw, stop):
    """Steady requests through the gateway: what the charts and the doctor's windows count."""
    while not stop.is_set():
        for path in ("/api/users", "/api/orders", "/hi", "/missing"):
            try:
                harness.request(gw.port, "GET", path, timeout=2.0)
            except (OSError, harness.ConnectionClosed, AssertionError):
                pass
        stop.wait(0.05)


def main():
    chromium = find_chromium()
    if chromium is None:
        print("test-browser: SKIP: no chromium (apt-get install -y chromium, or set CHROMIUM)")
        return SKIP
    if not (HERE / "node_modules" / "playwright-core").is_dir():
        print("test-browser: SKIP: playwright-core is not installed (npm ci --prefix tests/browser)")
        return SKIP
    if not Path(harness.sluice_bin()).exists():
        print(f"test-browser: no sluice binary at {harness.sluice_bin()} (build it, or set SLUICE_BIN)")
        return 1
    out_dir = Path(os.environ.get("OUT_DIR") or HERE / "out")
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / "run"
    shutil.rmtree(work, ignore_errors=True)

    os.environ[TOKEN_ENV] = TOKEN  # the gateway reads it at start (admin.token_env)
    live = be.Backend(be.fixed(200, b"ok\n"), name="live")
    doomed = be.Backend(be.fixed(200, b"ok\n"), name="doomed")
    health = {"active": {"path": "/healthz", "interval": "1s", "timeout": "500ms", "healthy": 1, "unhealthy": 2}}
    gw = harness.Gateway(work, {
        "upstreams": {"u": harness.upstream(live, doomed, health=health)},
        "routes": [{"name": "hi", "match": {"path": "/hi"}, "respond": {"status": 200, "body": "hi\n"}},
                   {"name": "api", "match": {"path_prefix": "/api"}, "upstream": "u"}],
    })
    gw.config["admin"]["token_env"] = TOKEN_ENV
    stop = threading.Event()
    rc = 1
    try:
        gw.start()
        threading.Thread(target=traffic, args=(gw, stop), daemon=True).start()
        time.sleep(harness.slack(3))  # some healthy history before the fault
        dead = doomed.address
        doomed.close()  # the fault: the target's process is gone, connects are refused
        env = dict(os.environ, DASH_URL=f"http://127.0.0.1:{gw.admin_port}", DASH_TOKEN=TOKEN,
                   DEAD_TARGET=dead, LIVE_TARGET=live.address, GATEWAY_PID=str(gw.pid),
                   OUT_DIR=str(out_dir), CHROMIUM=chromium)
        rc = subprocess.run(["node", str(HERE / "dashboard.test.mjs")], env=env, cwd=str(HERE),
                            timeout=harness.slack(180)).returncode
    finally:
        stop.set()
        if gw.alive():
            os.kill(gw.pid, signal.SIGCONT)  # in case the browser test stopped it and then failed
        code = gw.shutdown()
        live.close()
        if code not in (0, None):
            print(f"test-browser: sluice exited with {code}\n{gw.log_tail()}")
            rc = rc or 1
        if rc:
            print(f"test-browser: gateway logs in {work}")
    return 1 if rc else 0


if __name__ == "__main__":
    sys.exit(main())
