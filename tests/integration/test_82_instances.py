"""Many instances (docs/deploy.md "Running several instances"): three sluice processes on
loopback share one real redis-server (test_92_cluster's helpers), a test client spreads its load
over them, and one instance is SIGKILLed mid-load.

- the cluster-wide rate limit holds: what the client saw admitted stays within rate x time +
  burst, over the whole run, the kill included;
- the killed instance loses only what was in flight on it at the kill: failures happen only on
  connections to it, within the kill moment, at most one per client thread (each has at most
  one request in flight); the client's balancer takes it out as it is killed (as a load
  balancer's health check would, only at once), so the figures are what the kill itself costs;
- the other two carry on with no failure at all, and keep serving.
"""
import os
import shutil
import signal
import time

import pytest

import backend as be
import harness
import test_92_cluster as cluster
from harness import slack
from test_81_upgrade import Load

pytestmark = [pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed"),
              pytest.mark.deadline(90)]

RATE, BURST = 50, 10


@pytest.fixture
def redis(tmp_path):
    r = cluster.Redis(tmp_path).start()
    yield r
    r.kill()


def test_three_instances_one_killed_mid_load(env, redis):
    app = env.backend(be.sleep_then(0.02, be.fixed(200, b"ok\n")))
    limit = {"key": "route", "rate": f"{RATE}/s", "burst": BURST}
    gws = [env.gateway(upstreams={"app": harness.upstream(app)},
                       routes=[{"name": "api", "match": {"path_prefix": "/api"}, "upstream": "app",
                                "rate_limit": [limit]}],
                       # a slow (sanitizer) build must not time out into per-node fallback limits
                       stores=cluster.store(redis, command_timeout="5s")) for _ in range(3)]
    cluster.wait_store_up(gws)
    ports = [g.port for g in gws]
    victim = gws[1]

    load = Load(ports, ["/api/a", "/api/b"], keepalive=6, fresh=3)
    t0 = time.monotonic()
    load.start()
    try:
        load.wait_requests(300)
        time.sleep(max(0.0, t0 + 3.0 - time.monotonic()))
        before = {p: dict(c) for p, c in load.counts.items()}
        # The balancer takes it out as it dies (as a health check would, only at once): no new
        # request goes to it, and what fails is exactly what was in flight on connections to it.
        load.down.add(victim.port)
        t_kill = time.monotonic()
        os.kill(victim.pid, signal.SIGKILL)
        victim.kill()  # reaps it
        # keep going on two for as long again
        load.wait_requests(300)
        time.sleep(max(0.0, t_kill + 3.0 - time.monotonic()))
    finally:
        load.stop()
    t1 = time.monotonic()
    span = t1 - t0
    bound = RATE * span + BURST
    ok = load.statuses.get(200, 0)
    limited = load.statuses.get(429, 0)
    others = ports[:1] + ports[2:]
    lost = [e for e in load.events if e[1] == victim.port]
    stale_on_victim = load.counts.get(victim.port, {}).get("stale_retries", 0)
    print(f"\n3 instances, one redis, {RATE}/s burst {BURST} over {span:.2f} s; instance on :{victim.port} "
          f"SIGKILLed at +{t_kill - t0:.2f} s:")
    print(f"  requests answered {load.total('ok')} (200 admitted {ok}, 429 limited {limited}), "
          f"admitted vs bound {ok} / {bound:.0f} ({100 * (ok - bound) / bound:+.1f}%)")
    for p in ports:
        c = load.counts.get(p, {})
        after = c.get("ok", 0) - before.get(p, {}).get("ok", 0)
        print(f"  :{p}{' (killed)' if p == victim.port else ''}: answered {c.get('ok', 0)} ({after} after the kill), "
              f"failed {c.get('failed', 0)}, refused {c.get('refused', 0)}, "
              f"stale keep-alive retries {c.get('stale_retries', 0)}")
    print(f"  requests hit by the kill: {len(lost)} failed + {stale_on_victim} retried on another instance "
          f"(client threads: {len(load.threads)})")
    for e in lost:
        print(f"    +{e[0] - t_kill:.3f} s {e[2]}: {e[3]}")

    fallbacks = [cluster.metric(g, "sluice_store_fallbacks_total") for g in gws if g is not victim]
    print(f"  redis fallbacks on the survivors: {fallbacks}")
    # The limit is cluster-wide and held through the kill (every decision was Redis's).
    assert fallbacks == [0, 0]
    assert ok <= bound + 1
    assert limited > ok, "the load did not saturate the limit: the bound proves nothing"
    assert ok >= 0.8 * RATE * span
    # The survivors: no failure at all, and they kept serving.
    for p in others:
        c = load.counts[p]
        assert c["failed"] == 0 and c["refused"] == 0 and c["stale_retries"] == 0, (p, c)
        assert c["ok"] - before[p]["ok"] > 50, (p, c, before[p])
    # The victim: only what it had in flight when it died.
    assert len(lost) + stale_on_victim <= len(load.threads)
    for when, _, _, _ in lost:
        assert t_kill <= when <= t_kill + slack(1.0), (when - t_kill, lost)
    assert all(g.alive() for g in gws if g is not victim)
