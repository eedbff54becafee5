"""Host-name targets: resolved off the workers, re-resolved every dns_refresh, and a name that
does not resolve takes its target out of rotation instead of failing requests or crashing."""
import time

import backend as be
import harness


def route():
    return [{"name": "r", "match": {"path_prefix": "/"}, "upstream": "u"}]


def test_unresolvable_target_is_skipped_not_failed(env):
    up = env.backend(be.fixed(200, b"ok"), name="ok")
    gw = env.gateway(upstreams={"u": {"targets": [{"address": "no-such-host.invalid:80"},
                                                   {"address": f"127.0.0.1:{up.port}"}]}},
                     routes=route())
    time.sleep(harness.slack(0.5))  # the lookup of the bad name fails
    for _ in range(30):
        r = gw.request("GET", "/")
        assert r.status == 200 and r.body == b"ok", r
    log = gw.stderr_path.read_text()
    assert "no-such-host.invalid" in log and "cannot resolve" in log, log[-1000:]
    assert gw.alive()


def test_only_unresolvable_targets_answer_no_healthy_upstream(env):
    gw = env.gateway(upstreams={"u": {"targets": [{"address": "no-such-host.invalid:80"}]}}, routes=route())
    time.sleep(harness.slack(0.5))
    harness.assert_gateway_error(gw.request("GET", "/"), 503, "no_healthy_upstream")


def test_hostname_target_is_resolved_and_refreshed(env):
    up = env.backend(be.fixed(200, b"by-name"), name="named")
    gw = env.gateway(logging={"access": {"path": "off"}, "level": "debug"},
                     upstreams={"u": {"targets": [{"address": f"localhost:{up.port}"}], "dns_refresh": "1s"}},
                     routes=route())
    deadline = time.monotonic() + harness.slack(3)
    r = None
    while time.monotonic() < deadline:
        r = gw.request("GET", "/")
        if r.status == 200:
            break
        time.sleep(0.05)
    assert r.status == 200 and r.body == b"by-name", r
    time.sleep(harness.slack(3.5))
    # Refreshes are checked once a second, so with dns_refresh 1s a name is resolved again
    # every one to two seconds: at least twice more in 3.5 s on top of the first lookup.
    resolved = gw.stderr_path.read_text().count(f"localhost:{up.port} resolved to 127.0.0.1")
    assert resolved >= 3, f"resolved {resolved} times in ~4 s with dns_refresh 1s"
    assert gw.request("GET", "/").status == 200
