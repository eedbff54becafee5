"""mTLS client certificate -> consumer (docs/auth.md "mTLS"): the `mtls` auth method identifies
the consumer from the verified client certificate by fingerprint, subject or SAN; the refusals
and their detail codes; any-of with api_key; ACL groups; the per-connection cache (many requests
on one keep-alive connection, connections with different certificates interleaved, TLS 1.2 and
1.3 resumption, a session resumed on a listener that does not trust its issuer, HTTP/2 streams
via curl); a reload changing a consumer's fingerprint; config errors with positions; a burst
from concurrent clients. Certificates are made at test time with the openssl CLI."""
import hashlib
import json
import re
import shutil
import ssl
import subprocess
import threading
import time

import pytest

import backend as be
import harness
from test_65_tls import TlsConn, _run, tls_block

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


def _client(d, name, subj, sans=None, ca="ca"):
    _run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
         f"{name}.key", "-out", f"{name}.csr", "-subj", subj, cwd=d)
    args = []
    if sans:
        (d / f"{name}.ext").write_text("subjectAltName=" + ",".join(sans) + "\n")
        args = ["-extfile", f"{name}.ext"]
    _run("openssl", "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
         "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", *args, cwd=d)


def _ca(d, name, cn):
    _run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "3", "-subj", f"/CN={cn}", cwd=d)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("mtls")
    _ca(d, "ca", "sluice mtls test CA")
    _ca(d, "ca2", "sluice second CA")
    _client(d, "a", "/CN=a.test", ["DNS:a.test"])  # the gateway's server certificate
    _client(d, "alice", "/O=Sluice Test/CN=alice", ["DNS:alice.test"])
    _client(d, "alice2", "/O=Sluice Test/CN=alice", ["DNS:alice.test"])  # same names, another key
    _client(d, "bob", "/O=Sluice Test/CN=bob", ["DNS:Bob.Svc.Test", "email:bob@example.test"])
    _client(d, "carol", "/O=Sluice Test/OU=Billing/CN=carol")
    _client(d, "dave", "/CN=dave", ["URI:spiffe://example.test/ns/prod/sa/dave"])
    _client(d, "erin", "/CN=erin", ["email:erin@example.test"])
    _client(d, "mallory", "/O=Sluice Test/CN=mallory", ["DNS:mallory.test"])  # valid, mapped to nobody
    _client(d, "other", "/CN=other", ["DNS:other.test"], ca="ca2")  # from the second CA
    return d


def fingerprint(certs, name, colons=True):
    out = subprocess.run(["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", str(certs / f"{name}.crt")],
                         capture_output=True, text=True, check=True).stdout.strip()
    fp = out.split("=", 1)[1]
    assert re.fullmatch(r"([0-9A-F]{2}:){31}[0-9A-F]{2}", fp), out
    # the same as the SHA-256 of the DER, computed here independently
    der = ssl.PEM_cert_to_DER_cert((certs / f"{name}.crt").read_text())
    assert fp.replace(":", "").lower() == hashlib.sha256(der).hexdigest()
    return fp if colons else fp.replace(":", "").lower()


def subject(certs, name):
    out = subprocess.run(["openssl", "x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in",
                          str(certs / f"{name}.crt")], capture_output=True, text=True, check=True).stdout.strip()
    return out.split("=", 1)[1].strip()


def consumers(certs, alice_cert="alice"):
    return {
        "alice": {"groups": ["partners"], "mtls": [{"fingerprint": fingerprint(certs, alice_cert)}]},
        "bob": {"mtls": [{"san": "bob.svc.test"}]},
        "carol": {"groups": ["billing"], "mtls": [{"subject": subject(certs, "carol")}]},
        "dave": {"mtls": [{"san": "spiffe://example.test/ns/prod/sa/dave"}]},
        "erin": {"mtls": [{"san": "erin@example.test"}, {"fingerprint": fingerprint(certs, "erin", colons=False)}]},
        "keyed": {"api_keys": [{"sha256": hashlib.sha256(b"key-1").hexdigest()}]},
    }


def routes():
    return [
        {"name": "m", "match": {"path_prefix": "/m/"}, "upstream": "app", "auth": ["mtls"]},
        {"name": "mk", "match": {"path_prefix": "/mk/"}, "upstream": "app", "auth": ["mtls", "api_key"]},
        {"name": "acl", "match": {"path_prefix": "/acl/"}, "upstream": "app", "auth": ["mtls"],
         "acl": {"allow_groups": ["partners"]}},
        {"name": "open", "match": {"path_prefix": "/open/"}, "upstream": "app"},
    ]


def config(env, certs, up, alice_cert="alice", listen=None):
    return {"upstreams": {"app": harness.upstream(up)}, "routes": routes(),
            "consumers": consumers(certs, alice_cert), "listen": listen}


def mtls_gateway(env, certs, workers=2):
    """Listeners: plain (gw.port), TLS with client_ca optional (gw.tls_port), TLS with client_ca
    of the second CA, required (gw.tls2_port)."""
    up = env.backend(be.echo(), name="up")
    plain, tport, t2 = harness.free_port(), harness.free_port(), harness.free_port()
    listen = [{"address": f"127.0.0.1:{plain}"},
              {"address": f"127.0.0.1:{tport}",
               "tls": dict(tls_block(certs, "a"), client_ca=str(certs / "ca.crt"), client_auth="optional")},
              {"address": f"127.0.0.1:{t2}", "tls": dict(tls_block(certs, "a"), client_ca=str(certs / "ca2.crt"))}]
    cfg = config(env, certs, up, listen=listen)
    gw = env.gateway(start=False, workers=workers, **cfg)
    gw.port, gw.tls_port, gw.tls2_port, gw.up = plain, tport, t2, up
    gw.start()
    return gw


def ctx_for(certs, who=None, version=None):
    ctx = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    if who:
        ctx.load_cert_chain(str(certs / f"{who}.crt"), str(certs / f"{who}.key"))
    if version:
        ctx.minimum_version = ctx.maximum_version = version
    return ctx


def conn(gw, certs, who=None, port=None, **kw):
    return TlsConn(port or gw.tls_port, ctx_for(certs, who, kw.pop("version", None)), "a.test", **kw)


def seen(resp):
    """The X-Consumer-* headers the upstream saw (be.echo)."""
    out = {}
    for n, v in resp.json()["headers"]:
        if n.lower().startswith("x-consumer-"):
            out[n.lower()] = v
    return out


def detail_of(gw, resp):
    rid = resp.json()["request_id"]
    entries = gw.wait_access_log(lambda e: e.get("request_id") == rid)
    assert entries, f"no access log line for {rid}"
    return entries[-1]["detail"]


def refused(gw, resp, status, cause, detail):
    harness.assert_gateway_error(resp, status, cause)
    assert detail_of(gw, resp) == detail


@pytest.fixture(scope="module")
def gw(menv, certs):
    return mtls_gateway(menv, certs)


# ---- identification -------------------------------------------------------------------------

def test_fingerprint_identifies_the_consumer(gw, certs):
    with conn(gw, certs, "alice") as c:
        r = c.roundtrip("GET", "/m/1", host="a.test")
        assert r.status == 200, r.body
        assert seen(r) == {"x-consumer-id": "alice", "x-consumer-groups": "partners"}
    # a client cannot claim an identity with its own headers, certificate or not
    with conn(gw, certs, "alice") as c:
        r = c.roundtrip("GET", "/m/2", headers=[("X-Consumer-Id", "root"), ("X-Consumer-Groups", "admins")])
        assert seen(r) == {"x-consumer-id": "alice", "x-consumer-groups": "partners"}
    entry = gw.wait_access_log(lambda e: e.get("path") == "/m/2" and e.get("consumer") == "alice")
    assert entry
    # a route without auth identifies nobody, certificate or not
    with conn(gw, certs, "alice") as c:
        r = c.roundtrip("GET", "/open/1", headers=[("X-Consumer-Id", "root")])
        assert r.status == 200 and seen(r) == {}


def test_san_subject_uri_and_email(gw, certs):
    # DNS SAN, written in another case in the certificate (DNS names compare without case)
    for who, want in (("bob", "bob"), ("carol", "carol"), ("dave", "dave"), ("erin", "erin")):
        with conn(gw, certs, who) as c:
            r = c.roundtrip("GET", "/m/x")
            assert r.status == 200, (who, r.body)
            assert seen(r)["x-consumer-id"] == want
    with conn(gw, certs, "carol") as c:
        assert seen(c.roundtrip("GET", "/m/x"))["x-consumer-groups"] == "billing"


def test_no_certificate_no_tls_and_unknown_certificate(gw, certs):
    with conn(gw, certs) as c:  # client_auth: optional lets a client without a certificate in
        r = c.roundtrip("GET", "/m/none")
        refused(gw, r, 401, "auth_missing", "mtls_no_certificate")
    r = harness.request(gw.port, "GET", "/m/plain")
    refused(gw, r, 401, "auth_missing", "mtls_no_tls")
    with conn(gw, certs, "mallory") as c:  # verified, but no consumer has it
        r = c.roundtrip("GET", "/m/unknown")
        refused(gw, r, 401, "auth_invalid", "mtls_unknown_certificate")
        assert "mallory" not in r.body.decode()
    # the refusals are counted by route and detail (an unlisted detail is `other` until the
    # metrics list names it; either way the route's auth failures grow)
    _, _, body = gw.admin_get("/metrics")
    assert re.search(r'sluice_auth_failures_total\{route="m",detail="[a-z_]+"\} [1-9]', body.decode())


def test_any_of_with_api_key(gw, certs):
    with conn(gw, certs) as c:  # no certificate, a key: the key decides
        r = c.roundtrip("GET", "/mk/1", headers=[("X-API-Key", "key-1")])
        assert r.status == 200 and seen(r)["x-consumer-id"] == "keyed"
    r = harness.request(gw.port, "GET", "/mk/2", headers=[("X-API-Key", "key-1")])
    assert r.status == 200 and seen(r)["x-consumer-id"] == "keyed"
    with conn(gw, certs, "bob") as c:  # a certificate first in the list decides
        r = c.roundtrip("GET", "/mk/3", headers=[("X-API-Key", "key-1")])
        assert r.status == 200 and seen(r)["x-consumer-id"] == "bob"
    with conn(gw, certs, "mallory") as c:  # an unknown certificate is refused, not skipped
        refused(gw, c.roundtrip("GET", "/mk/4", headers=[("X-API-Key", "key-1")]), 401, "auth_invalid",
                "mtls_unknown_certificate")
    with conn(gw, certs) as c:  # nothing at all: any of them would have done
        refused(gw, c.roundtrip("GET", "/mk/5"), 401, "auth_missing", "no_credentials")


def test_acl_groups_apply(gw, certs):
    with conn(gw, certs, "alice") as c:
        assert c.roundtrip("GET", "/acl/1").status == 200
    with conn(gw, certs, "bob") as c:
        refused(gw, c.roundtrip("GET", "/acl/2"), 403, "forbidden", "acl_not_in_group")


# ---- the per-connection cache ---------------------------------------------------------------

def test_keepalive_and_interleaved_connections(gw, certs):
    with conn(gw, certs, "alice") as a, conn(gw, certs, "bob") as b, conn(gw, certs) as n:
        for i in range(60):
            ra = a.roundtrip("GET", f"/m/a{i}")
            rb = b.roundtrip("GET", f"/m/b{i}")
            assert ra.status == 200 and seen(ra)["x-consumer-id"] == "alice", i
            assert rb.status == 200 and seen(rb)["x-consumer-id"] == "bob", i
            if i % 10 == 0:
                assert n.roundtrip("GET", f"/m/n{i}").status == 401
                assert n.roundtrip("GET", f"/mk/n{i}", headers=[("X-API-Key", "key-1")]).status == 200


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_resumed_session_keeps_the_identity(gw, certs, version):
    ctx = ctx_for(certs, "carol", version)
    with TlsConn(gw.tls_port, ctx, "a.test") as c:
        assert seen(c.roundtrip("GET", "/m/r1"))["x-consumer-id"] == "carol"
        sess = c.sock.session
    with TlsConn(gw.tls_port, ctx, "a.test", session=sess) as c:
        assert c.sock.session_reused, "the session was not resumed"
        r = c.roundtrip("GET", "/m/r2")
        assert r.status == 200 and seen(r)["x-consumer-id"] == "carol"


def test_no_resumption_on_a_listener_that_does_not_trust_the_issuer(gw, certs):
    """Session tickets are keyed process-wide, but each listener has its own session id context
    (its address and the contents of its client CA bundle, src/tls/context.c): a session begun on
    the listener trusting `ca` does not resume on the one trusting only `ca2`, so the full
    handshake there refuses alice's certificate. (Were it resumed, the auth filter's own check
    would still refuse it as mtls_unverified.)"""
    ctx = ctx_for(certs, "alice", ssl.TLSVersion.TLSv1_2)
    with TlsConn(gw.tls_port, ctx, "a.test") as c:
        assert c.roundtrip("GET", "/m/s1").status == 200
        sess = c.sock.session
    with pytest.raises((ssl.SSLError, ConnectionError, harness.ConnectionClosed)):
        with TlsConn(gw.tls2_port, ctx, "a.test", session=sess) as c:
            assert not c.sock.session_reused
            c.roundtrip("GET", "/m/s2")
    # the first listener still resumes its own session
    with TlsConn(gw.tls_port, ctx, "a.test", session=sess) as c:
        assert c.sock.session_reused
        assert seen(c.roundtrip("GET", "/m/s3"))["x-consumer-id"] == "alice"


# ---- reload ---------------------------------------------------------------------------------

def test_reload_changes_the_fingerprint(env, certs):
    gw = mtls_gateway(env, certs)
    with conn(gw, certs, "alice") as old:
        assert seen(old.roundtrip("GET", "/m/before"))["x-consumer-id"] == "alice"
        with conn(gw, certs, "alice2") as c:
            refused(gw, c.roundtrip("GET", "/m/before2"), 401, "auth_invalid", "mtls_unknown_certificate")
        cfg = dict(gw.config)
        cfg["consumers"] = consumers(certs, alice_cert="alice2")
        gw.reload(cfg)

        def switched():
            with conn(gw, certs, "alice2") as c:
                return c.roundtrip("GET", "/m/after").status == 200
        harness.wait_for(switched, 10, "the reload to apply")
        with conn(gw, certs, "alice2") as c:
            assert seen(c.roundtrip("GET", "/m/after"))["x-consumer-id"] == "alice"
        # the connection opened before the reload: its next request uses the new consumers
        # (the connection caches the certificate's facts, not who they belonged to)
        refused(gw, old.roundtrip("GET", "/m/old-conn"), 401, "auth_invalid", "mtls_unknown_certificate")


# ---- config errors --------------------------------------------------------------------------

def check(tmp_path, cfg):
    path = tmp_path / "bad.yaml"
    text = harness.to_yaml(cfg)
    path.write_text(text)
    r = harness.run_cli(["check", "-c", str(path)])
    assert r.returncode == 1, r.stdout
    return text.splitlines(), r.stdout + r.stderr


def line_of(lines, needle):
    return next(i + 1 for i, l in enumerate(lines) if needle in l)


def test_config_errors_with_positions(tmp_path, certs):
    base = {"listen": [{"address": f"127.0.0.1:{harness.free_port()}"}],
            "upstreams": {"u": {"targets": [{"address": "127.0.0.1:1"}]}}}
    route = [{"name": "r", "match": {"path": "/a"}, "upstream": "u", "auth": ["mtls"]}]
    lines, err = check(tmp_path, dict(base, routes=route))
    assert re.search(rf"bad.yaml:{line_of(lines, 'mtls')}:\d+: route r: auth: mtls needs a listener with "
                     r"tls.client_ca", err), err
    # a TLS listener without client_ca does not count
    tls_only = dict(base, listen=[{"address": f"127.0.0.1:{harness.free_port()}", "tls": tls_block(certs, "a")}])
    _, err = check(tmp_path, dict(tls_only, routes=route))
    assert "mtls needs a listener with tls.client_ca" in err
    ok = dict(base, listen=[{"address": f"127.0.0.1:{harness.free_port()}",
                             "tls": dict(tls_block(certs, "a"), client_ca=str(certs / "ca.crt"))}])
    no_route = [{"name": "r", "match": {"path": "/a"}, "upstream": "u"}]
    for bad in ("abc", "zz" * 32, fingerprint(certs, "alice")[:-1], fingerprint(certs, "alice") + ":00",
                fingerprint(certs, "alice").replace(":", "", 3)):
        lines, err = check(tmp_path, dict(ok, consumers={"x": {"mtls": [{"fingerprint": bad}]}}, routes=no_route))
        assert re.search(rf"bad.yaml:{line_of(lines, 'fingerprint')}:\d+: mtls: fingerprint: expected the SHA-256",
                         err), (bad, err)
    lines, err = check(tmp_path, dict(ok, consumers={"x": {"mtls": [{"san": "x.test", "subject": "CN=x"}]}},
                                      routes=no_route))
    assert "one of fingerprint, subject or san per entry" in err
    _, err = check(tmp_path, dict(ok, consumers={"x": {"mtls": [{}]}}, routes=no_route))
    assert "each entry needs fingerprint, subject or san" in err
    _, err = check(tmp_path, dict(ok, consumers={"x": {"mtls": [{"subject": "carol"}]}}, routes=no_route))
    assert "expected an RFC 4514 name" in err
    lines, err = check(tmp_path, dict(ok, consumers={"x": {"mtls": [{"san": "A.test"}]},
                                                     "y": {"mtls": [{"san": "a.TEST"}]}}, routes=no_route))
    assert "consumer y: this mtls entry is also consumer x's" in err
    fp = fingerprint(certs, "alice")
    _, err = check(tmp_path, dict(ok, consumers={"x": {"mtls": [{"fingerprint": fp},
                                                                {"fingerprint": fp.replace(":", "").lower()}]}},
                                  routes=no_route))
    assert "consumer x: this mtls entry is listed twice" in err
    _, err = check(tmp_path, dict(ok, routes=[{"name": "r", "match": {"path": "/a"}, "upstream": "u",
                                                "auth": [{"mtls": "x"}]}]))
    assert "unknown method 'mtls'" in err or "unknown method mtls" in err, err
    # and the good config passes
    path = tmp_path / "good.yaml"
    path.write_text(harness.to_yaml(dict(ok, consumers={"x": {"mtls": [{"fingerprint": fp}]}}, routes=route)))
    r = harness.run_cli(["check", "-c", str(path)])
    assert r.returncode == 0, r.stdout + r.stderr


# ---- load -----------------------------------------------------------------------------------

@pytest.mark.deadline(120)
def test_burst_of_concurrent_clients(gw, certs):
    people = ["alice", "bob", "carol", "dave", "erin"]
    errors, done = [], []

    def client(k):
        who = people[k % len(people)]
        try:
            with conn(gw, certs, who, timeout=20) as c:
                for i in range(50):
                    r = c.roundtrip("GET", f"/m/load/{k}/{i}")
                    if r.status != 200 or seen(r)["x-consumer-id"] != who:
                        errors.append((k, i, r.status, r.body[:200]))
                        return
                    done.append(1)
        except Exception as e:  # noqa: BLE001 - any failure is a test failure, reported below
            errors.append((k, repr(e)))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(10)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(harness.slack(90))
    assert not errors, errors[:5]
    assert len(done) == 500
    print(f"500 mTLS requests from 10 keep-alive clients in {time.monotonic() - t0:.2f}s")


# ---- curl, and HTTP/2 streams on one connection -------------------------------------------------

def curl(gw, certs, who, urls, *extra):
    args = ["curl", "-sS", "-v", "--resolve", f"a.test:{gw.tls_port}:127.0.0.1", "--cacert", str(certs / "ca.crt")]
    if who:
        args += ["--cert", str(certs / f"{who}.crt"), "--key", str(certs / f"{who}.key")]
    args += list(extra)
    for u in urls:
        args += ["-o", "/dev/stdout", f"https://a.test:{gw.tls_port}{u}"]
    return subprocess.run(args, capture_output=True, text=True, timeout=harness.slack(20))


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_curl_http1_and_http2(gw, certs):
    r = curl(gw, certs, "bob", ["/m/c1", "/m/c2"], "--http1.1")
    assert r.returncode == 0, r.stderr
    bodies = [json.loads(b) for b in r.stdout.replace("}{", "}\n{").splitlines()]
    assert len(bodies) == 2
    for b in bodies:
        assert ["X-Consumer-Id", "bob"] in [list(h) for h in b["headers"]], b["headers"]
    assert "Re-using existing connection" in r.stderr  # two requests, one connection
    # HTTP/2: several streams of one connection (the exchange carries the same TLS connection)
    r = curl(gw, certs, "alice", ["/m/h1", "/m/h2", "/m/h3"], "--http2")
    assert r.returncode == 0, r.stderr
    if "ALPN: server accepted h2" not in r.stderr:
        pytest.skip("the gateway did not negotiate h2")
    bodies = [json.loads(b) for b in r.stdout.replace("}{", "}\n{").splitlines()]
    assert len(bodies) == 3
    for b in bodies:
        assert ["X-Consumer-Id", "alice"] in [list(h) for h in b["headers"]], b["headers"]
    r = curl(gw, certs, None, ["/m/h4"], "--http2")
    assert r.returncode == 0 and json.loads(r.stdout)["error"] == "auth_missing", r.stdout


# ---- intermediate CAs and resumption ------------------------------------------------------------

@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_intermediate_ca_in_the_bundle_keeps_resumed_sessions_verified(env, certs, version):
    """A client certificate issued by an intermediate CA, the client sending leaf + intermediate.
    A resumed session keeps only the leaf, which is verified again against client_ca: with the
    intermediate in the client_ca bundle (docs/auth.md says so) the resumed session is still
    identified; with the root alone it would be mtls_unverified."""
    d = certs
    if not (d / "chain.crt").exists():
        _run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "int.key",
             "-out", "int.csr", "-subj", "/CN=sluice test intermediate", cwd=d)
        (d / "int.ext").write_text("basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n")
        _run("openssl", "x509", "-req", "-in", "int.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "int.crt", "-days", "2", "-extfile", "int.ext", cwd=d)
        _client(d, "leaf", "/CN=leaf", ["DNS:chained.test"], ca="int")
        (d / "chain.crt").write_text((d / "leaf.crt").read_text() + (d / "int.crt").read_text())
        (d / "bundle.crt").write_text((d / "ca.crt").read_text() + (d / "int.crt").read_text())
    up = env.backend(be.echo(), name="up")
    tport = harness.free_port()
    listen = [{"address": f"127.0.0.1:{tport}",
               "tls": dict(tls_block(certs, "a"), client_ca=str(d / "bundle.crt"))}]
    gw = env.gateway(upstreams={"app": harness.upstream(up)}, routes=routes(), listen=listen,
                     consumers={"chained": {"mtls": [{"san": "chained.test"}]}})
    ctx = ctx_for(certs, None, version)
    ctx.load_cert_chain(str(d / "chain.crt"), str(d / "leaf.key"))
    with TlsConn(tport, ctx, "a.test") as c:
        assert seen(c.roundtrip("GET", "/m/first"))["x-consumer-id"] == "chained"
        sess = c.sock.session
    with TlsConn(tport, ctx, "a.test", session=sess) as c:
        assert c.sock.session_reused
        r = c.roundtrip("GET", "/m/resumed")
        assert r.status == 200, detail_of(gw, r)
        assert seen(r)["x-consumer-id"] == "chained"
