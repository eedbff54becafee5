"""Traffic splitting per route (`split`, `sticky`): weighted shares over the wire, a sticky
header keeping each client on one version, and a SIGHUP reload moving all traffic at run time
(blue-green switch-over). Each upstream has one backend answering with its version."""
import time

import pytest

import backend as be
import harness

pytestmark = pytest.mark.deadline(90)


def versions(env):
    v1 = env.backend(be.fixed(200, b"v1"), name="v1")
    v2 = env.backend(be.fixed(200, b"v2"), name="v2")
    return v1, v2


def config(v1, v2, w1, w2, sticky=None):
    route = {"name": "users", "match": {"path_prefix": "/users"},
             "split": [{"upstream": "users-v1", "weight": w1}, {"upstream": "users-v2", "weight": w2}]}
    if sticky:
        route["sticky"] = sticky
    return {"upstreams": {"users-v1": harness.upstream(v1), "users-v2": harness.upstream(v2)},
            "routes": [route]}


def fetch(gw, n, headers_of=lambda i: []):
    out = []
    with gw.conn(timeout=10) as c:
        for i in range(n):
            r = c.roundtrip("GET", f"/users/{i}", headers_of(i))
            assert r.status == 200, r
            assert r.body in (b"v1", b"v2"), r
            out.append(r.body.decode())
    return out


def test_weighted_shares(env):
    v1, v2 = versions(env)
    gw = env.gateway(**config(v1, v2, 80, 20))
    got = fetch(gw, 1000)
    share = got.count("v2") / len(got)
    print(f"v2 share {share:.1%}")
    assert 0.15 <= share <= 0.25, f"v2 got {share:.1%} of 1000 requests, want 20% +- 5"


def test_sticky_header_keeps_each_key_on_one_version(env):
    v1, v2 = versions(env)
    gw = env.gateway(**config(v1, v2, 80, 20, sticky="header:X-User"))
    keys = [f"user-{i}" for i in range(200)]
    seen = {k: set() for k in keys}
    for _ in range(3):
        for k, v in zip(keys, fetch(gw, len(keys), lambda i: [("X-User", keys[i])])):
            seen[k].add(v)
    moved = [k for k in keys if len(seen[k]) != 1]
    assert not moved, f"keys answered by both versions: {moved[:10]}"
    share = sum(1 for k in keys if seen[k] == {"v2"}) / len(keys)
    print(f"keys on v2: {share:.1%}")
    assert 0.10 <= share <= 0.30, f"{share:.1%} of 200 keys on v2, want about 20%"


def test_reload_moves_all_traffic(env):
    v1, v2 = versions(env)
    gw = env.gateway(**config(v1, v2, 80, 20))
    assert "v1" in fetch(gw, 100)
    gw.reload(config(v1, v2, 0, 100))
    # The reload is asynchronous: wait until a whole batch is on v2, then require it to stay.
    deadline = time.monotonic() + harness.slack(5)
    while time.monotonic() < deadline and set(fetch(gw, 50)) != {"v2"}:
        time.sleep(0.05)
    got = fetch(gw, 500)
    assert set(got) == {"v2"}, f"after weights 0/100, v1 still answered {got.count('v1')} of 500"
    assert gw.alive(), gw.log_tail()
