"""Load shedding (limits.max_inflight): past the limit a worker refuses the lowest-priority
routes first with 503 gateway_overloaded and Retry-After, while important routes are still
served; below it, everything is served again."""
import threading
import time

import pytest

import backend as be
import harness


@pytest.mark.deadline(60)
def test_low_priority_routes_are_shed_first(env):
    up = env.backend(be.sleep_then(1.0), name="slow")
    fast = env.backend(be.fixed(200, b"ok"), name="fast")
    gw = env.gateway(workers=1, limits={"max_inflight": 4},
                     upstreams={"slow": harness.upstream(up), "fast": harness.upstream(fast)},
                     routes=[{"name": "hold", "match": {"path_prefix": "/hold"}, "upstream": "slow", "priority": 9},
                             {"name": "low", "match": {"path_prefix": "/low"}, "upstream": "fast", "priority": 0},
                             {"name": "mid", "match": {"path_prefix": "/mid"}, "upstream": "fast"},
                             {"name": "high", "match": {"path_prefix": "/high"}, "upstream": "fast", "priority": 9}])
    assert gw.request("GET", "/low").status == 200  # idle: nothing is shed
    held = []
    threads = [threading.Thread(target=lambda: held.append(gw.request("GET", "/hold", timeout=10).status))
               for _ in range(4)]
    for t in threads:
        t.start()
    # All four held at the backend, so in flight at the gateway; with the next request that makes
    # 5 on a worker whose share is 4: 125%, priorities 0-2 shed.
    assert up.wait_requests(4, timeout=10)
    r = gw.request("GET", "/low")
    harness.assert_gateway_error(r, 503, "gateway_overloaded")
    assert r.header("Retry-After") == "1"
    entry = gw.wait_access_log(lambda e: e["request_id"] == r.json()["request_id"])
    assert entry and entry[0]["detail"] == "shed_inflight"
    assert gw.request("GET", "/mid").status == 200  # priority 5: still above the shed levels
    assert gw.request("GET", "/high").status == 200
    for t in threads:
        t.join()
    assert held == [200] * 4  # the routes being served were never cut off
    assert gw.request("GET", "/low").status == 200  # back under the limit
    assert fast.wait_requests(4)
