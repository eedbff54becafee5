#!/usr/bin/env python3
"""Keys and tokens for bench/auth (not a test; prints nothing but a summary line).

    bench/auth_tokens.py DIR N

Writes into DIR:
  rsa.pem, ec.pem          private keys (openssl genpkey: RSA 2048, EC P-256)
  jwks.json                their public halves as a JWK Set (kid rs1 / es1, alg pinned)
  secret                   the HS256 secret (for secret_env)
  api_key, api_key.sha256  an API key and the SHA-256 hex that goes in consumers:
  hot_hs.txt hot_rs.txt hot_es.txt   one token each (the "hot" token every connection reuses)
  cold_rs.txt cold_es.txt  N distinct tokens each (a unique jti per token), one per line

Claims are those of bench/jwt_verify.c (iss, aud, sub, exp, iat, groups, scope), with exp a week
ahead. Keys come from the openssl command; signatures from the same OpenSSL's libcrypto through
ctypes (one `openssl dgst -sign` process per token costs ~17 ms here, i.e. minutes for the cold
sets); without libcrypto it falls back to the openssl command. ES256 signatures are converted
from DER to the JWS R||S form below. The hot RS256/ES256 tokens are cross-checked with
`openssl dgst -verify`.
"""
import base64
import ctypes
import ctypes.util
import hashlib
import hmac
import json
import os
import secrets
import subprocess
import sys
import time

ISSUER = "https://idp.bench.example/realms/main"


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def run(*args, data=None):
    return subprocess.run(args, input=data, check=True, capture_output=True).stdout


# ---- DER ECDSA-Sig-Value -> R||S (RFC 7518 §3.4) ----
def der_to_rs(der, size=32):
    def read_len(b, i):
        n = b[i]
        if n < 0x80:
            return n, i + 1
        k = n & 0x7F
        return int.from_bytes(b[i + 1:i + 1 + k], "big"), i + 1 + k
    assert der[0] == 0x30
    _, i = read_len(der, 1)
    out = b""
    for _ in range(2):
        assert der[i] == 0x02
        n, i = read_len(der, i + 1)
        v = int.from_bytes(der[i:i + n], "big")
        i += n
        out += v.to_bytes(size, "big")
    return out


# ---- signing: libcrypto through ctypes, or the openssl command ----
class Signer:
    def __init__(self, pem_path):
        self.path = pem_path
        self.lib = None
        name = ctypes.util.find_library("crypto")
        try:
            lib = ctypes.CDLL(name or "libcrypto.so.3")
            P = ctypes.c_void_p
            lib.BIO_new_mem_buf.restype = P
            lib.BIO_new_mem_buf.argtypes = [ctypes.c_char_p, ctypes.c_int]
            lib.PEM_read_bio_PrivateKey.restype = P
            lib.PEM_read_bio_PrivateKey.argtypes = [P, P, P, P]
            lib.BIO_free.argtypes = [P]
            lib.EVP_MD_CTX_new.restype = P
            lib.EVP_MD_CTX_free.argtypes = [P]
            lib.EVP_sha256.restype = P
            lib.EVP_DigestSignInit.argtypes = [P, P, P, P, P]
            lib.EVP_DigestSign.argtypes = [P, ctypes.c_char_p, ctypes.POINTER(ctypes.c_size_t), ctypes.c_char_p,
                                           ctypes.c_size_t]
            pem = open(pem_path, "rb").read()
            bio = lib.BIO_new_mem_buf(pem, len(pem))
            self.pkey = lib.PEM_read_bio_PrivateKey(bio, None, None, None)
            lib.BIO_free(bio)
            if self.pkey:
                self.lib = lib
        except OSError:
            self.lib = None

    def sign(self, msg):
        """DER for ECDSA, raw for RSA PKCS#1 v1.5, SHA-256."""
        if self.lib is None:
            return run("openssl", "dgst", "-sha256", "-sign", self.path, data=msg)
        lib = self.lib
        ctx = lib.EVP_MD_CTX_new()
        try:
            if lib.EVP_DigestSignInit(ctx, None, lib.EVP_sha256(), None, self.pkey) != 1:
                raise RuntimeError("EVP_DigestSignInit")
            buf = ctypes.create_string_buffer(1024)
            n = ctypes.c_size_t(len(buf))
            if lib.EVP_DigestSign(ctx, buf, ctypes.byref(n), msg, len(msg)) != 1:
                raise RuntimeError("EVP_DigestSign")
            return buf.raw[:n.value]
        finally:
            lib.EVP_MD_CTX_free(ctx)


def claims(now, jti=None):
    c = {"iss": ISSUER, "aud": "api", "sub": "user-1234", "exp": now + 7 * 86400, "iat": now - 60,
         "groups": ["partners", "staff"], "scope": "read write"}
    if jti is not None:
        c["jti"] = jti
    return c


def signing_input(alg, kid, cl):
    h = {"alg": alg, "typ": "JWT"}
    if kid:
        h["kid"] = kid
    return (b64url(json.dumps(h, separators=(",", ":")).encode()) + "." +
            b64url(json.dumps(cl, separators=(",", ":")).encode())).encode()


def token(alg, signer_or_secret, kid, cl):
    si = signing_input(alg, kid, cl)
    if alg == "HS256":
        sig = hmac.new(signer_or_secret, si, hashlib.sha256).digest()
    elif alg == "RS256":
        sig = signer_or_secret.sign(si)
    else:
        sig = der_to_rs(signer_or_secret.sign(si))
    return si.decode() + "." + b64url(sig)


def main():
    d, n = sys.argv[1], int(sys.argv[2])
    os.makedirs(d, exist_ok=True)
    p = lambda f: os.path.join(d, f)
    run("openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", p("rsa.pem"))
    run("openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", p("ec.pem"))
    mod = run("openssl", "rsa", "-in", p("rsa.pem"), "-noout", "-modulus").decode().strip().split("=", 1)[1]
    spki = run("openssl", "pkey", "-in", p("ec.pem"), "-pubout", "-outform", "DER")
    point = spki[-65:]
    assert point[0] == 4
    jwks = {"keys": [
        {"kty": "RSA", "kid": "rs1", "alg": "RS256", "use": "sig", "n": b64url(bytes.fromhex(mod)),
         "e": b64url((65537).to_bytes(3, "big"))},
        {"kty": "EC", "kid": "es1", "alg": "ES256", "use": "sig", "crv": "P-256", "x": b64url(point[1:33]),
         "y": b64url(point[33:])}]}
    open(p("jwks.json"), "w").write(json.dumps(jwks, indent=1) + "\n")
    secret = secrets.token_hex(32).encode()  # 64 bytes of hex: above HS256's 32-byte minimum
    open(p("secret"), "wb").write(secret)
    key = "bench-" + secrets.token_hex(16)
    open(p("api_key"), "w").write(key)
    open(p("api_key.sha256"), "w").write(hashlib.sha256(key.encode()).hexdigest())

    rs, es = Signer(p("rsa.pem")), Signer(p("ec.pem"))
    now = int(time.time())
    hot = {"hs": token("HS256", secret, None, claims(now)), "rs": token("RS256", rs, "rs1", claims(now)),
           "es": token("ES256", es, "es1", claims(now))}
    for k, t in hot.items():
        open(p(f"hot_{k}.txt"), "w").write(t + "\n")
    # cross-check the hot RS256 signature with the openssl command
    si, sig = hot["rs"].rsplit(".", 1)
    sigf = p("hot_rs.sig")
    open(sigf, "wb").write(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    pub = p("rsa.pub.pem")
    open(pub, "wb").write(run("openssl", "pkey", "-in", p("rsa.pem"), "-pubout"))
    run("openssl", "dgst", "-sha256", "-verify", pub, "-signature", sigf, data=si.encode())
    os.remove(sigf)

    t0 = time.monotonic()
    for alg, signer, kid, f in (("RS256", rs, "rs1", "cold_rs.txt"), ("ES256", es, "es1", "cold_es.txt")):
        with open(p(f), "w") as out:
            for i in range(n):
                out.write(token(alg, signer, kid, claims(now, f"cold-{i:06d}")) + "\n")
    how = "libcrypto via ctypes" if rs.lib else "openssl dgst per token"
    print(f"auth_tokens: {d}: 2 x {n} cold tokens in {time.monotonic() - t0:.1f} s ({how}); "
          f"token bytes: HS256 {len(hot['hs'])}, RS256 {len(hot['rs'])}, ES256 {len(hot['es'])}")


if __name__ == "__main__":
    main()
