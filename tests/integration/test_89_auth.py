"""Authentication and access control through the real gateway (docs/auth.md): API keys, Basic
against crypt(3) hashes, JWT (HS256 from the environment, RS256 from a JWKS file), ACL groups,
IP rules with trusted proxies and IPv6, CORS preflights, and the config errors of each."""
import base64
import hashlib
import hmac
import json
import os
import socket
import subprocess
import threading
import time
import warnings

import pytest

import backend as be
import harness

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import crypt  # Debian's python3.11 still ships it; it is libxcrypt underneath, like sluice


def sha(key):
    return hashlib.sha256(key.encode()).hexdigest()


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256(claims, secret, header=None):
    h = header or {"alg": "HS256", "typ": "JWT"}
    signing = f"{b64url(json.dumps(h).encode())}.{b64url(json.dumps(claims).encode())}"
    sig = hmac.new(secret, signing.encode(), hashlib.sha256).digest()
    return f"{signing}.{b64url(sig)}"


def backend_headers(resp):
    """The headers the backend saw (be.echo), lower-cased names, all values per name."""
    out = {}
    for n, v in resp.json()["headers"]:
        out.setdefault(n.lower(), []).append(v)
    return out


def last_log(gw, path, resp=None):
    """The access log line of `resp` (a gateway error: its body names the request id), or the
    last one for `path` once it is written."""
    rid = resp.json()["request_id"] if resp is not None and resp.status >= 400 else None
    entries = gw.wait_access_log(lambda e: e["path"] == path and (rid is None or e["request_id"] == rid))
    assert entries, f"no access log line for {path}"
    return entries[-1]



SECRET = b"0123456789abcdef0123456789abcdef-hs256-test-secret"


@pytest.fixture
def secret_env():
    os.environ["SLUICE_TEST_JWT_SECRET"] = SECRET.decode()
    yield "SLUICE_TEST_JWT_SECRET"
    del os.environ["SLUICE_TEST_JWT_SECRET"]


def gateway(env, routes, **top):
    up = env.backend(be.echo(), name="up")
    return env.gateway(upstreams={"app": harness.upstream(up)}, routes=routes, **top), up


# ---- API keys -------------------------------------------------------------------------------

def test_api_keys(env):
    consumers = {"mobile": {"groups": ["partners", "beta"], "api_keys": [{"sha256": sha("key-mobile")}]},
                 "web": {"api_keys": [{"sha256": sha("key-web")}, {"sha256": sha("key-web-2")}]}}
    gw, _ = gateway(env, consumers=consumers, routes=[
        {"name": "keys", "match": {"path_prefix": "/k"}, "upstream": "app", "auth": ["api_key"]},
        {"name": "query", "match": {"path_prefix": "/q"}, "upstream": "app",
         "auth": {"methods": ["api_key"], "api_key_query": "apikey", "hide_credentials": True}},
        {"name": "open", "match": {"path_prefix": "/open"}, "upstream": "app"}])
    r = gw.request("GET", "/k/1", headers={"X-API-Key": "key-mobile"})
    assert r.status == 200
    h = backend_headers(r)
    assert h["x-consumer-id"] == ["mobile"] and h["x-consumer-groups"] == ["partners,beta"]
    assert h["x-api-key"] == ["key-mobile"]  # not hidden on this route
    assert backend_headers(gw.request("GET", "/k/1", headers={"X-API-Key": "key-web-2"}))["x-consumer-id"] == ["web"]
    r = gw.request("GET", "/k/1", headers={"X-API-Key": "key-nobody"})
    harness.assert_gateway_error(r, 401, "auth_invalid")
    assert "key-nobody" not in r.body.decode()
    r = gw.request("GET", "/k/1")
    harness.assert_gateway_error(r, 401, "auth_missing")
    assert last_log(gw, "/k/1", r)["detail"] == "no_credentials"
    # a client cannot claim an identity: its X-Consumer-* never pass, on any route
    r = gw.request("GET", "/k/2", headers={"X-API-Key": "key-web", "X-Consumer-Id": "admin",
                                           "X-Consumer-Groups": "root"})
    h = backend_headers(r)
    assert h["x-consumer-id"] == ["web"] and "x-consumer-groups" not in h
    h = backend_headers(gw.request("GET", "/open", headers={"X-Consumer-Id": "admin"}))
    assert "x-consumer-id" not in h
    # the query form, hidden from the upstream
    r = gw.request("GET", "/q/1?a=1&apikey=key-mobile&b=2")
    assert r.status == 200
    got = r.json()
    assert got["query"] == "a=1&b=2" and backend_headers(r)["x-consumer-id"] == ["mobile"]
    r = gw.request("GET", "/q/1?apikey=key-web")
    assert r.json()["query"] == ""
    entry = gw.wait_access_log(lambda e: e["path"] == "/q/1" and e["consumer"] == "web")
    assert entry
    log = gw.access_log_path.read_text()
    assert "key-web" not in log and "key-mobile" not in log
    # the route table shows each route's chain
    table = {r["name"]: r for r in gw.admin_request("GET", "/routes?view=table")[2]["routes"]}
    assert table["keys"]["filters"] == ["auth api_key"] and table["open"]["filters"] == []


# ---- Basic ----------------------------------------------------------------------------------

@pytest.mark.deadline(60)
def test_basic_auth_with_crypt_hashes(env):
    bcrypt_hash = crypt.crypt("s3cret", crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=1 << 10))
    sha512_hash = crypt.crypt("other pass:with colon", crypt.mksalt(crypt.METHOD_SHA512))
    consumers = {"alice": {"groups": ["ops"], "basic_auth": [{"username": "alice", "password_hash": bcrypt_hash}]},
                 "bob": {"basic_auth": [{"username": "bob", "password_hash": sha512_hash}]}}
    gw, _ = gateway(env, consumers=consumers, routes=[
        {"name": "basic", "match": {"path_prefix": "/b"}, "upstream": "app",
         "auth": {"methods": ["basic"], "realm": "staff", "hide_credentials": True}},
        {"name": "hello", "match": {"path": "/hello"}, "respond": {"status": 200, "body": "hi"}}])

    def basic(u, p):
        return {"Authorization": "Basic " + base64.b64encode(f"{u}:{p}".encode()).decode()}

    r = gw.request("GET", "/b", headers=basic("alice", "s3cret"))
    assert r.status == 200
    h = backend_headers(r)
    assert h["x-consumer-id"] == ["alice"] and h["x-consumer-groups"] == ["ops"] and "authorization" not in h
    assert gw.request("GET", "/b", headers=basic("alice", "s3cret")).status == 200  # cached path
    assert gw.request("GET", "/b", headers=basic("bob", "other pass:with colon")).status == 200
    for u, p, detail in (("alice", "wrong", "basic_bad_password"), ("carol", "x", "basic_unknown_user"),
                         ("alice", "s3cret ", "basic_bad_password")):
        r = gw.request("GET", "/b", headers=basic(u, p))
        harness.assert_gateway_error(r, 401, "auth_invalid")
        assert r.header("WWW-Authenticate") == 'Basic realm="staff", charset="UTF-8"'
        assert last_log(gw, "/b", r)["detail"] == detail
    r = gw.request("GET", "/b", headers={"Authorization": "Basic !!notbase64"})
    harness.assert_gateway_error(r, 401, "auth_invalid")
    r = gw.request("GET", "/b")
    harness.assert_gateway_error(r, 401, "auth_missing")
    assert r.header("WWW-Authenticate").startswith("Basic realm=")

    # Hashing runs off the event loop: while slow bcrypt checks are in flight, other requests on
    # the same worker are answered at once (a loop blocked by bcrypt would serialise them).
    slow = crypt.crypt("pw", crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=1 << 14))
    consumers["slow"] = {"basic_auth": [{"username": "slow", "password_hash": slow}]}
    cfg = dict(gw.config)
    cfg["consumers"] = consumers
    gw.write_config(cfg)
    st, _, j = gw.admin_request("POST", "/reload")
    assert st == 200, j
    started = time.monotonic()
    results = []
    ts = [threading.Thread(target=lambda: results.append(gw.request("GET", "/b", headers=basic("slow", f"bad{i}"),
                                                                      timeout=30).status)) for i in range(4)]
    for t in ts:
        t.start()
    time.sleep(0.05)
    hello = [gw.request("GET", "/hello").status for _ in range(20)]
    hello_done = time.monotonic() - started
    for t in ts:
        t.join()
    all_done = time.monotonic() - started
    assert hello == [200] * 20 and results == [401] * 4
    assert hello_done < all_done, (hello_done, all_done)


# ---- JWT ------------------------------------------------------------------------------------

def test_jwt_hs256_from_the_environment(env, secret_env):
    issuers = {"corp": {"issuer": "https://idp.test", "audiences": ["api"], "secret_env": secret_env,
                        "leeway": "5s", "groups_claim": "roles", "claims_to_headers": {"email": "X-User-Email"}}}
    gw, _ = gateway(env, jwt_issuers=issuers, consumers={"u1": {"groups": ["staff"]}}, routes=[
        {"name": "jwt", "match": {"path_prefix": "/j"}, "upstream": "app", "auth": [{"jwt": "corp"}]},
        {"name": "admins", "match": {"path_prefix": "/admin"}, "upstream": "app", "auth": [{"jwt": "corp"}],
         "acl": {"allow_groups": ["admin"]}}])
    now = int(time.time())
    good = {"iss": "https://idp.test", "aud": "api", "sub": "u1", "exp": now + 60, "roles": ["admin", "dev"],
            "email": "u1@example.test"}
    r = gw.request("GET", "/j", headers={"Authorization": "Bearer " + hs256(good, SECRET)})
    assert r.status == 200
    h = backend_headers(r)
    assert h["x-consumer-id"] == ["u1"] and h["x-consumer-groups"] == ["staff,admin,dev"]
    assert h["x-user-email"] == ["u1@example.test"]
    # a client's own X-User-Email never passes, token or not
    r = gw.request("GET", "/j", headers={"Authorization": "Bearer " + hs256(good, SECRET), "X-User-Email": "evil"})
    assert backend_headers(r)["x-user-email"] == ["u1@example.test"]
    assert gw.request("GET", "/admin", headers={"Authorization": "Bearer " + hs256(good, SECRET)}).status == 200

    cases = [
        (dict(good, exp=now - 60), "auth_expired", "jwt_expired"),
        (dict(good, aud="other"), "auth_invalid", "jwt_bad_audience"),
        (dict(good, iss="https://evil.test"), "auth_invalid", "jwt_bad_issuer"),
        (dict(good, nbf=now + 600), "auth_invalid", "jwt_not_yet_valid"),
    ]
    for claims, cause, detail in cases:
        r = gw.request("GET", "/j", headers={"Authorization": "Bearer " + hs256(claims, SECRET)})
        harness.assert_gateway_error(r, 401, cause)
        assert r.header("WWW-Authenticate") == "Bearer"
        assert last_log(gw, "/j", r)["detail"] == detail
    bad_sig = hs256(good, b"another secret that is long enough for HS256!!")
    r = gw.request("GET", "/j", headers={"Authorization": "Bearer " + bad_sig})
    harness.assert_gateway_error(r, 401, "auth_invalid")
    assert last_log(gw, "/j", r)["detail"] == "jwt_bad_signature"
    none_alg = hs256(good, SECRET, header={"alg": "none", "typ": "JWT"}).rsplit(".", 1)[0] + "."
    harness.assert_gateway_error(gw.request("GET", "/j", headers={"Authorization": "Bearer " + none_alg}), 401,
                                 "auth_invalid")
    harness.assert_gateway_error(gw.request("GET", "/j", headers={"Authorization": "Bearer x.y"}), 401,
                                 "auth_invalid")
    # ACL on the groups the token brought
    dev = dict(good, roles=["dev"], sub="u2")
    r = gw.request("GET", "/admin", headers={"Authorization": "Bearer " + hs256(dev, SECRET)})
    harness.assert_gateway_error(r, 403, "forbidden")
    assert last_log(gw, "/admin", r)["detail"] == "acl_not_in_group"
    # the token never reaches the log
    assert hs256(good, SECRET).split(".")[2] not in gw.access_log_path.read_text()


def rsa_key(tmp_path, name):
    key = tmp_path / f"{name}.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(key)],
                   check=True, capture_output=True)
    mod = subprocess.run(["openssl", "rsa", "-in", str(key), "-noout", "-modulus"], check=True, capture_output=True,
                         text=True).stdout.strip().split("=", 1)[1]
    return key, {"kty": "RSA", "kid": name, "alg": "RS256", "use": "sig", "n": b64url(bytes.fromhex(mod)),
                 "e": b64url((65537).to_bytes(3, "big"))}


def rs256(claims, key, kid):
    header = {"alg": "RS256", "typ": "JWT", "kid": kid}
    signing = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(key)], input=signing.encode(), check=True,
                         capture_output=True).stdout
    return f"{signing}.{b64url(sig)}"


def test_jwt_rs256_from_a_jwks_file_and_confusion_attacks(env, tmp_path):
    key1, jwk1 = rsa_key(tmp_path, "k1")
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [jwk1]}))
    issuers = {"idp": {"issuer": "https://idp.test", "jwks_file": str(jwks)}}
    gw, _ = gateway(env, jwt_issuers=issuers, routes=[
        {"name": "jwt", "match": {"path_prefix": "/j"}, "upstream": "app", "auth": [{"jwt": "idp"}]}])
    claims = {"iss": "https://idp.test", "sub": "svc-1", "exp": int(time.time()) + 60}
    tok = rs256(claims, key1, "k1")
    for _ in range(3):  # first verified, then from the cache
        r = gw.request("GET", "/j", headers={"Authorization": "Bearer " + tok})
        assert r.status == 200 and backend_headers(r)["x-consumer-id"] == ["svc-1"]
    r = gw.request("GET", "/j", headers={"Authorization": "Bearer " + rs256(claims, key1, "k9")})
    harness.assert_gateway_error(r, 401, "auth_invalid")
    assert last_log(gw, "/j", r)["detail"] == "jwt_unknown_kid"
    # HS256 "signed" with the public key's bytes: the key is pinned to RS256
    pub = subprocess.run(["openssl", "pkey", "-in", str(key1), "-pubout"], check=True, capture_output=True).stdout
    forged = hs256(claims, pub, header={"alg": "HS256", "typ": "JWT", "kid": "k1"})
    r = gw.request("GET", "/j", headers={"Authorization": "Bearer " + forged})
    harness.assert_gateway_error(r, 401, "auth_invalid")
    assert last_log(gw, "/j", r)["detail"] == "jwt_alg_not_allowed"
    # a tampered payload fails even with a valid signature of another payload
    h, p, s = tok.split(".")
    tampered = f"{h}.{b64url(json.dumps(dict(claims, sub='admin')).encode())}.{s}"
    r = gw.request("GET", "/j", headers={"Authorization": "Bearer " + tampered})
    harness.assert_gateway_error(r, 401, "auth_invalid")
    assert last_log(gw, "/j", r)["detail"] == "jwt_bad_signature"
    r = gw.request("GET", "/j", headers={"Authorization": "Bearer " + "a" * 100_000})
    assert r.status in (401, 431)


def test_any_one_of_several_methods_and_anonymous(env, secret_env):
    gw, _ = gateway(env, jwt_issuers={"corp": {"issuer": "i", "secret_env": secret_env}},
                    consumers={"k": {"api_keys": [{"sha256": sha("the-key")}]}},
                    routes=[{"name": "either", "match": {"path_prefix": "/e"}, "upstream": "app",
                             "auth": ["api_key", {"jwt": "corp"}, "anonymous"]}])
    assert backend_headers(gw.request("GET", "/e", headers={"X-API-Key": "the-key"}))["x-consumer-id"] == ["k"]
    tok = hs256({"iss": "i", "sub": "t", "exp": int(time.time()) + 60}, SECRET)
    assert backend_headers(gw.request("GET", "/e", headers={"Authorization": "Bearer " + tok}))["x-consumer-id"] == ["t"]
    r = gw.request("GET", "/e")
    assert r.status == 200 and "x-consumer-id" not in backend_headers(r)
    # a wrong credential is refused even though anonymous would be let in
    harness.assert_gateway_error(gw.request("GET", "/e", headers={"X-API-Key": "nope"}), 401, "auth_invalid")


# ---- IP rules -------------------------------------------------------------------------------

def test_ip_rules_and_trusted_proxies(env):
    v6_port = harness.free_port()
    up = env.backend(be.echo(), name="up")
    gw = env.gateway(upstreams={"app": harness.upstream(up)}, start=False,
                     ip_rules={"deny": ["192.0.2.0/24"]}, trusted_proxies=["127.0.0.0/8"],
                     routes=[{"name": "lan", "match": {"path_prefix": "/lan"}, "upstream": "app",
                              "ip_rules": {"allow": ["10.0.0.0/8", "2001:db8::/32"]}},
                             {"name": "v6only", "match": {"path_prefix": "/v6"}, "upstream": "app",
                              "ip_rules": {"allow": ["::1"]}},
                             {"name": "any", "match": {"path_prefix": "/"}, "upstream": "app"}])
    gw.config["listen"] = [{"address": f"127.0.0.1:{gw.port}"}, {"address": f"[::1]:{v6_port}"}]
    gw.start()
    xff = lambda v: {"X-Forwarded-For": v}  # noqa: E731
    # the peer (127.0.0.1) is a trusted proxy: the client is the right-most untrusted address
    assert gw.request("GET", "/lan", headers=xff("10.1.2.3")).status == 200
    assert gw.request("GET", "/lan", headers=xff("203.0.113.9, 10.1.2.3")).status == 200
    assert gw.request("GET", "/lan", headers=xff("10.1.2.3, 203.0.113.9")).status == 403
    assert gw.request("GET", "/lan", headers=xff("2001:db8::7")).status == 200
    r = gw.request("GET", "/lan")  # no XFF: the client is the proxy itself, not in 10/8
    harness.assert_gateway_error(r, 403, "forbidden")
    assert last_log(gw, "/lan", r)["detail"] == "ip_denied"
    # the global deny applies to every route
    harness.assert_gateway_error(gw.request("GET", "/x", headers=xff("192.0.2.55")), 403, "forbidden")
    assert gw.request("GET", "/x", headers=xff("198.51.100.1")).status == 200
    # IPv6 peer on the [::1] listener
    s = socket.create_connection(("::1", v6_port), timeout=5)
    try:
        s.sendall(b"GET /v6 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    harness.assert_gateway_error(gw.request("GET", "/v6"), 403, "forbidden")


# ---- CORS -----------------------------------------------------------------------------------

def test_cors(env):
    gw, _ = gateway(env, routes=[
        {"name": "api", "match": {"path_prefix": "/api", "methods": ["GET", "POST", "PUT", "DELETE"]}, "upstream": "app",
         "cors": {"origins": ["https://app.example"], "methods": ["GET", "POST", "PUT"],
                  "headers": ["Content-Type", "X-Trace"], "expose_headers": ["X-Total"], "credentials": True,
                  "max_age": "1h"}},
        {"name": "pub", "match": {"path_prefix": "/pub"}, "upstream": "app", "cors": {"origins": ["*"]}}])
    pre = {"Origin": "https://app.example", "Access-Control-Request-Method": "PUT",
           "Access-Control-Request-Headers": "content-type, x-trace"}
    r = gw.request("OPTIONS", "/api/x", headers=pre)
    assert r.status == 204, r
    assert r.header("Access-Control-Allow-Origin") == "https://app.example"
    assert r.header("Access-Control-Allow-Credentials") == "true"
    assert r.header("Access-Control-Allow-Methods") == "GET, POST, PUT"
    assert r.header("Access-Control-Allow-Headers") == "Content-Type, X-Trace"
    assert r.header("Access-Control-Max-Age") == "3600" and r.header("Vary") == "Origin"
    r = gw.request("OPTIONS", "/api/x", headers=dict(pre, Origin="https://evil.example"))
    harness.assert_gateway_error(r, 403, "forbidden")
    r = gw.request("OPTIONS", "/api/x", headers=dict(pre, **{"Access-Control-Request-Method": "DELETE"}))
    harness.assert_gateway_error(r, 403, "forbidden")
    r = gw.request("OPTIONS", "/api/x", headers=dict(pre, **{"Access-Control-Request-Headers": "x-other"}))
    harness.assert_gateway_error(r, 403, "forbidden")
    r = gw.request("GET", "/api/x", headers={"Origin": "https://app.example"})
    assert r.status == 200 and r.header("Access-Control-Allow-Origin") == "https://app.example"
    assert r.header("Access-Control-Expose-Headers") == "X-Total"
    r = gw.request("GET", "/api/x", headers={"Origin": "https://evil.example"})
    assert r.status == 200 and r.header("Access-Control-Allow-Origin") is None
    r = gw.request("GET", "/pub", headers={"Origin": "https://anyone.example"})
    assert r.header("Access-Control-Allow-Origin") == "*"
    # a plain OPTIONS (not a preflight) is routed as OPTIONS: 405 on this route; a preflight
    # for a method the route does not serve at all is a plain OPTIONS too
    assert gw.request("OPTIONS", "/api/x").status == 405
    r = gw.request("OPTIONS", "/api/x", headers=dict(pre, **{"Access-Control-Request-Method": "PATCH"}))
    assert r.status == 405
    assert up_saw_no_preflight(gw)


def up_saw_no_preflight(gw):
    return not [e for e in gw.access_log() if e["method"] == "OPTIONS" and e["upstream"]]


# ---- config errors --------------------------------------------------------------------------

def check_errors(env, tmp_path, cfg):
    path = tmp_path / "bad.yaml"
    path.write_text(harness.to_yaml(cfg))
    r = harness.run_cli(["check", "-c", str(path)])
    assert r.returncode == 1, r.stdout
    return r.stderr


def test_auth_config_errors(env, tmp_path):
    base = {"listen": [{"address": "127.0.0.1:20999"}], "upstreams": {"u": {"targets": [{"address": "127.0.0.1:1"}]}}}
    err = check_errors(env, tmp_path, dict(base, routes=[
        {"name": "a", "match": {"path": "/a"}, "upstream": "u", "acl": {"allow_groups": ["x"]}}]))
    assert "acl needs auth" in err
    err = check_errors(env, tmp_path, dict(base, routes=[
        {"name": "a", "match": {"path": "/a"}, "upstream": "u", "auth": [{"jwt": "ghost"}]}]))
    assert "no jwt issuer named 'ghost'" in err
    err = check_errors(env, tmp_path, dict(base, consumers={"a": {"api_keys": [{"sha256": "abc"}]}},
                                           routes=[{"name": "a", "match": {"path": "/a"}, "upstream": "u"}]))
    assert "64 hex digits" in err
    err = check_errors(env, tmp_path, dict(base, consumers={"a": {"api_keys": [{"sha256": sha("k")}]},
                                                            "b": {"api_keys": [{"sha256": sha("k")}]}},
                                           routes=[{"name": "a", "match": {"path": "/a"}, "upstream": "u"}]))
    assert "also consumer a's" in err
    err = check_errors(env, tmp_path, dict(base, ip_rules={"allow": ["10.0.0.1/8", "300.1.1.1", "::1/129"]},
                                           routes=[{"name": "a", "match": {"path": "/a"}, "upstream": "u"}]))
    assert "bits set past its /8" in err and "not an IP address" in err and "at most 128" in err
    err = check_errors(env, tmp_path, dict(base, jwt_issuers={"i": {"issuer": "x", "jwks_file": "/nonexistent.json",
                                                                    "algorithms": ["HS256"]}},
                                           routes=[{"name": "a", "match": {"path": "/a"}, "upstream": "u"}]))
    assert "HS algorithms need a shared secret" in err
    err = check_errors(env, tmp_path, dict(base, routes=[
        {"name": "a", "match": {"path": "/a"}, "upstream": "u",
         "cors": {"origins": ["*"], "credentials": True}}]))
    assert "credentials cannot be allowed for any origin" in err


# ---- JWKS from a URL: rotation and provider outage ---------------------------------------------

@pytest.mark.deadline(60)
def test_jwks_url_rotation_and_outage(env, tmp_path):
    key1, jwk1 = rsa_key(tmp_path, "k1")
    key2, jwk2 = rsa_key(tmp_path, "k2")
    served = {"keys": [jwk1]}
    fetches = []

    def jwks(ex):
        ex.read_body()
        fetches.append(time.monotonic())
        ex.respond(200, json.dumps(served).encode(), [("Content-Type", "application/json")])

    idp = env.backend(jwks, name="idp")
    issuers = {"idp": {"issuer": "https://idp.test", "jwks_url": f"http://127.0.0.1:{idp.port}/jwks",
                       "jwks_refresh": "1s", "jwks_timeout": "500ms"}}
    gw, _ = gateway(env, jwt_issuers=issuers, routes=[
        {"name": "jwt", "match": {"path_prefix": "/j"}, "upstream": "app", "auth": [{"jwt": "idp"}]}])
    claims = {"iss": "https://idp.test", "sub": "svc", "exp": int(time.time()) + 120}
    t1, t2 = rs256(claims, key1, "k1"), rs256(claims, key2, "k2")

    def status(tok):
        return gw.request("GET", "/j", headers={"Authorization": "Bearer " + tok}).status

    def eventually(tok, want, seconds=6):
        deadline = time.monotonic() + harness.slack(seconds)
        while status(tok) != want:
            assert time.monotonic() < deadline, f"token still not {want}"
            time.sleep(0.1)

    eventually(t1, 200)  # the first fetch ran at start
    assert status(t2) == 401
    served["keys"] = [jwk1, jwk2]  # rotation, step 1: the new key is published
    eventually(t2, 200)
    assert status(t1) == 200  # old tokens keep working while their key is in the set
    served["keys"] = [jwk2]  # step 2: the old key leaves
    eventually(t1, 401)
    assert status(t2) == 200
    # the provider goes down: the last good set keeps serving, without a restart
    idp.close()
    time.sleep(harness.slack(2.5))
    for _ in range(5):
        assert status(t2) == 200
    assert "jwks for idp" in gw.stderr_path.read_text()


# ---- OAuth2 token introspection (RFC 7662) ---------------------------------------------------

@pytest.mark.deadline(60)
def test_token_introspection(env):
    import urllib.parse
    os.environ["SLUICE_TEST_INTROSPECT_SECRET"] = "c3cr3t/with+chars"
    calls = []
    slow = {"on": False}

    def introspect(ex):
        body = bytes(ex.read_body()).decode()
        calls.append(body)
        want = "Basic " + base64.b64encode(b"gw-client:c3cr3t%2Fwith%2Bchars").decode()
        if ex.req.headers.get("authorization") != want:
            ex.respond(401, b'{"error":"invalid_client"}', [("Content-Type", "application/json")])
            return
        if slow["on"]:
            time.sleep(1.0)
        form = urllib.parse.parse_qs(body)
        tok = form.get("token", [""])[0]
        answers = {"tok-alice": {"active": True, "sub": "alice", "exp": int(time.time()) + 60, "scope": "read"},
                   "tok-bob": {"active": True, "sub": "bob"},
                   "tok-revoked": {"active": False},
                   "tok-expired": {"active": True, "sub": "carol", "exp": int(time.time()) - 5},
                   "tok-anon": {"active": True}}
        ex.respond(200, json.dumps(answers.get(tok, {"active": False})).encode(),
                   [("Content-Type", "application/json")])

    idp = env.backend(introspect, name="idp")
    endpoints = {"idp": {"url": f"http://127.0.0.1:{idp.port}/introspect", "client_id": "gw-client",
                         "client_secret_env": "SLUICE_TEST_INTROSPECT_SECRET", "timeout": "300ms",
                         "cache_ttl": "30s"}}
    try:
        # One worker: the verdict cache is per worker, and with two the connections' spread
        # decided whether a cached token met its cache (a flake under ASan).
        gw, _ = gateway(env, introspection=endpoints, consumers={"alice": {"groups": ["readers"]}}, workers=1,
                        routes=[{"name": "opaque", "match": {"path_prefix": "/o"}, "upstream": "app",
                                 "auth": [{"introspection": "idp"}]}])
    finally:
        del os.environ["SLUICE_TEST_INTROSPECT_SECRET"]

    def call(tok):
        return gw.request("GET", "/o", headers={"Authorization": "Bearer " + tok})

    r = call("tok-alice")
    assert r.status == 200
    h = backend_headers(r)
    assert h["x-consumer-id"] == ["alice"] and h["x-consumer-groups"] == ["readers"]
    assert "token=tok-alice" in calls[0] and "token_type_hint=access_token" in calls[0]
    n = len(calls)
    for _ in range(5):  # cached for the token's lifetime (bounded by cache_ttl): no more calls
        assert call("tok-alice").status == 200
    assert len(calls) == n  # one worker, one cache: no call at all
    assert backend_headers(call("tok-bob"))["x-consumer-id"] == ["bob"]
    for tok, cause, detail in (("tok-revoked", "auth_invalid", "token_inactive"),
                               ("tok-unknown", "auth_invalid", "token_inactive"),
                               ("tok-expired", "auth_expired", "token_expired"),
                               ("tok-anon", "auth_invalid", "introspection_no_consumer")):
        r = call(tok)
        harness.assert_gateway_error(r, 401, cause)
        assert r.header("WWW-Authenticate") == "Bearer"
        assert last_log(gw, "/o", r)["detail"] == detail
    # a slow endpoint: the request ends at the introspection timeout, not hangs
    slow["on"] = True
    started = time.monotonic()
    r = call("tok-new-1")
    harness.assert_gateway_error(r, 504, "upstream_timeout")
    assert last_log(gw, "/o", r)["detail"] == "introspection_timeout"
    assert time.monotonic() - started < harness.slack(0.9)
    slow["on"] = False
    # the endpoint down: new tokens fail with a clear cause, cached ones keep working
    idp.close()
    r = call("tok-new-2")
    harness.assert_gateway_error(r, 502, "upstream_connect_failed")
    assert last_log(gw, "/o", r)["detail"] == "introspection_unavailable"
    assert [call("tok-alice").status for _ in range(6)] == [200] * 6
    assert "c3cr3t" not in gw.stderr_path.read_text() + gw.access_log_path.read_text()


def test_introspection_with_wrong_client_secret(env):
    def refuse(ex):
        ex.read_body()
        ex.respond(401, b'{"error":"invalid_client"}', [("Content-Type", "application/json")])

    idp = env.backend(refuse, name="idp")
    os.environ["SLUICE_TEST_INTROSPECT_SECRET"] = "wrong"
    try:
        gw, _ = gateway(env, introspection={"idp": {"url": f"http://127.0.0.1:{idp.port}/i", "client_id": "c",
                                                    "client_secret_env": "SLUICE_TEST_INTROSPECT_SECRET"}},
                        routes=[{"name": "o", "match": {"path_prefix": "/o"}, "upstream": "app",
                                 "auth": [{"introspection": "idp"}]}])
    finally:
        del os.environ["SLUICE_TEST_INTROSPECT_SECRET"]
    r = gw.request("GET", "/o", headers={"Authorization": "Bearer t"})
    harness.assert_gateway_error(r, 502, "upstream_bad_response")
    assert last_log(gw, "/o", r)["detail"] == "introspection_client_rejected"
    # the secret's variable unset: the config is refused with the variable named
    path = gw.dir / "check.yaml"
    path.write_text(harness.to_yaml(gw.config))
    res = harness.run_cli(["check", "-c", str(path)])
    assert res.returncode == 1 and "SLUICE_TEST_INTROSPECT_SECRET is not set" in res.stderr


@pytest.mark.deadline(60)
def test_clients_leaving_while_auth_waits(env):
    """A client that goes away while its Basic hash runs on the thread pool, or while its token
    is being introspected, cancels that work: no crash, no leak (ASan), later requests served."""
    slow_hash = crypt.crypt("pw", crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=1 << 13))
    held = threading.Event()

    def introspect(ex):
        ex.read_body()
        held.wait(5)  # answers only after the client has left
        ex.respond(200, b'{"active": true, "sub": "late"}', [("Content-Type", "application/json")])

    idp = env.backend(introspect, name="idp")
    os.environ["SLUICE_TEST_INTROSPECT_SECRET"] = "s"
    try:
        gw, up = gateway(env, consumers={"slow": {"basic_auth": [{"username": "slow", "password_hash": slow_hash}]}},
                         introspection={"idp": {"url": f"http://127.0.0.1:{idp.port}/i", "client_id": "c",
                                                "client_secret_env": "SLUICE_TEST_INTROSPECT_SECRET",
                                                "timeout": "3s"}},
                         routes=[{"name": "b", "match": {"path_prefix": "/b"}, "upstream": "app", "auth": ["basic"]},
                                 {"name": "o", "match": {"path_prefix": "/o"}, "upstream": "app",
                                  "auth": [{"introspection": "idp"}]},
                                 {"name": "hello", "match": {"path": "/hello"}, "respond": {"status": 200}}])
    finally:
        del os.environ["SLUICE_TEST_INTROSPECT_SECRET"]
    basic = "Basic " + base64.b64encode(b"slow:pw").decode()
    for _ in range(5):  # each leaves while its hash (~0.5 s at cost 13) is running
        with harness.RawConn(gw.port) as c:
            c.send(harness.build_request("GET", "/b", {"Authorization": basic}))
            time.sleep(0.1)
    for i in range(5):  # each leaves once its introspection call is at the endpoint
        with harness.RawConn(gw.port) as c:
            c.send(harness.build_request("GET", "/o", {"Authorization": f"Bearer t{i}"}))
            assert len(idp.wait_requests(i + 1)) == i + 1
    held.set()
    time.sleep(harness.slack(1.0))  # the hashes and the endpoint finish after their clients left
    assert gw.request("GET", "/hello").status == 200
    assert gw.request("GET", "/b", headers={"Authorization": basic}, timeout=20).status == 200
    assert not up.find(lambda r: r.path.startswith("/o"))  # nothing was forwarded for a gone client
    assert gw.alive()
