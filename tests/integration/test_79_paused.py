"""A backend process paused with SIGSTOP: the kernel still accepts its connections, so only
the read timeout can catch it. Requests to it end with upstream_timeout at the configured time
while other routes keep answering at once."""
import os
import signal
import subprocess
import sys
import time

import harness

SERVER = r"""
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def test_paused_backend_times_out_and_others_are_served(env, tmp_path):
    port = harness.free_port()
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    proc = subprocess.Popen([sys.executable, str(script), str(port)], stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not harness.port_accepts(port) and time.monotonic() < deadline:
            time.sleep(0.05)
        gw = env.gateway(
            upstreams={"paused": {"targets": [{"address": f"127.0.0.1:{port}"}],
                                  "timeouts": {"connect": "1s", "read": "700ms"}, "retries": {"attempts": 1}}},
            routes=[{"name": "paused", "match": {"path_prefix": "/p"}, "upstream": "paused"},
                    {"name": "local", "match": {"path_prefix": "/"}, "respond": {"status": 200, "body": "here"}}])
        assert gw.request("GET", "/p").status == 200  # it works before the pause
        os.kill(proc.pid, signal.SIGSTOP)
        results = {}

        def slow():
            t0 = time.monotonic()
            results["r"] = harness.request(gw.port, "GET", "/p", timeout=10)
            results["t"] = time.monotonic() - t0

        import threading
        t = threading.Thread(target=slow, daemon=True)
        t.start()
        time.sleep(0.1)
        t0 = time.monotonic()
        for _ in range(20):  # meanwhile, other routes answer at once
            assert gw.request("GET", "/").body == b"here"
        assert time.monotonic() - t0 < 0.5 * 20 * harness.slack(0.05) + 0.5
        t.join(10)
        harness.assert_gateway_error(results["r"], 504, "upstream_timeout")
        assert 0.6 <= results["t"] <= 0.7 + harness.slack(0.6), results["t"]
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
        proc.wait(5)
