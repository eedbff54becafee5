#!/usr/bin/env python3
"""A checklist for the Dockerfile, in place of hadolint (not packaged for Debian, and its
release binaries cannot be fetched here). Each rule names the hadolint rule it stands for, where
there is one, plus checks of our own that tie the image to the project:

    tests/deploy/dockerfile-checklist.py Dockerfile [.dockerignore] [BINARY]

Prints one line per rule (ok / FAIL) and exits 1 if any failed.
"""
import re
import shlex
import subprocess
import sys

path = sys.argv[1] if len(sys.argv) > 1 else "Dockerfile"
ignore_path = sys.argv[2] if len(sys.argv) > 2 else ".dockerignore"
binary = sys.argv[3] if len(sys.argv) > 3 else None
text = open(path).read()
# Join continuation lines, drop comments.
logical = []
for ln in re.sub(r"\\\n", " ", text).split("\n"):
    s = ln.strip()
    if s and not s.startswith("#"):
        logical.append(s)
instrs = [(l.split(None, 1)[0].upper(), l.split(None, 1)[1] if " " in l else "") for l in logical]
args = {}
for op, rest in instrs:
    if op == "ARG" and "=" in rest:
        k, v = rest.split("=", 1)
        args[k] = v.strip('"')
stages, cur = [], None
for op, rest in instrs:
    if op == "FROM":
        cur = {"from": rest, "ins": []}
        stages.append(cur)
    elif cur is not None:
        cur["ins"].append((op, rest))
final = stages[-1] if stages else {"from": "", "ins": []}
fins = final["ins"]
results = []


def check(name, ok, detail=""):
    results.append(ok)
    print(("ok   " if ok else "FAIL ") + name + ("" if ok or not detail else ": " + detail))


def expand(s):
    return re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), s)


check("multi-stage build (two or more FROM)", len(stages) >= 2)
images = [expand(s["from"].split()[0]) for s in stages]
check("DL3006/DL3007: every base image has a tag, none :latest",
      all(":" in i and not i.endswith(":latest") for i in images), ", ".join(images))
check("runtime stage is debian:bookworm-slim", images[-1] == "debian:bookworm-slim", images[-1] if images else "")
names = {s["from"].split()[-1] for s in stages if " as " in s["from"].lower()}
froms = [re.search(r"--from=(\S+)", r).group(1) for o, r in fins if o == "COPY" and "--from=" in r]
check("DL3022: COPY --from names a stage of this file", all(f in names for f in froms), ", ".join(froms))
runs = [r for s in stages for o, r in s["ins"] if o == "RUN"]
inst = [r for r in runs if "apt-get install" in r]
check("DL3014: apt-get install -y", all(re.search(r"apt-get install[^&;]*\s-y\b", r) for r in inst))
check("DL3015: apt-get install --no-install-recommends", all("--no-install-recommends" in r for r in inst))
check("DL3009: apt lists removed in the same RUN", all("rm -rf /var/lib/apt/lists/*" in r for r in inst))
check("apt-get update in the same RUN as install (no stale cache layer)", all("apt-get update" in r for r in inst))
check("DL3005: no apt-get upgrade/dist-upgrade", not any(re.search(r"apt-get (dist-)?upgrade", r) for r in runs))
check("DL3004: no sudo", not any(re.search(r"\bsudo\b", r) for r in runs))
check("DL3003: no cd in RUN (WORKDIR instead)", not any(re.search(r"(^|&&|;)\s*cd\s", r) for r in runs))
check("DL3020: COPY, not ADD, for local files", not any(o == "ADD" for s in stages for o, _ in s["ins"]))
check("DL3000: WORKDIR is absolute", all(r.startswith("/") for s in stages for o, r in s["ins"] if o == "WORKDIR"))
users = [r for o, r in fins if o == "USER"]
check("DL3002: the runtime stage ends as a non-root USER",
      bool(users) and users[-1].split(":")[0] not in ("root", "0"), users[-1] if users else "no USER")
check("EXPOSE 8080 in the runtime stage", any(o == "EXPOSE" and "8080" in r.split() for o, r in fins))
check("STOPSIGNAL SIGTERM (sluice drains on it)", any(o == "STOPSIGNAL" and r == "SIGTERM" for o, r in fins))
hc = [r for o, r in fins if o == "HEALTHCHECK"]
check("HEALTHCHECK in the runtime stage", len(hc) == 1)
check("HEALTHCHECK asks the admin /health on loopback (needs no token)",
      bool(hc) and re.search(r"http://127\.0\.0\.1:8001/health", hc[0]) is not None)
check("DL3025: ENTRYPOINT and CMD in JSON form",
      all(r.startswith("[") for o, r in fins if o in ("CMD", "ENTRYPOINT")) and
      any(o == "CMD" for o, _ in fins))
check("config at /etc/sluice/sluice.yaml",
      any(o == "COPY" and r.split()[-1] == "/etc/sluice/sluice.yaml" for o, r in fins))
try:
    ign = [l.strip() for l in open(ignore_path) if l.strip() and not l.startswith("#")]
except OSError:
    ign = []
check(".dockerignore keeps .git and build dirs out of the context",
      ".git" in ign and any(i.startswith("build") for i in ign), ignore_path)
# The runtime packages provide every library the binary links (dpkg -S of each ldd path).
pkgs = set(expand(args.get("RUNTIME_PACKAGES", "")).split())
if binary:
    ldd = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
    libs = re.findall(r"=> (/\S+)", ldd)
    missing = []
    for lib in libs:
        if re.search(r"/lib(c|m|pthread|dl|rt)\.so", lib):
            continue                                  # libc6: in every Debian image
        out = subprocess.run(["dpkg", "-S", lib], capture_output=True, text=True).stdout
        if not out:
            import os
            out = subprocess.run(["dpkg", "-S", os.path.realpath(lib)], capture_output=True, text=True).stdout
        owner = out.split(":")[0] if out else "?"
        if owner not in pkgs:
            missing.append("%s (%s)" % (lib, owner))
    check("RUNTIME_PACKAGES cover every library the binary links", not missing, ", ".join(missing))
print("dockerfile-checklist: %d passed, %d failed" % (results.count(True), results.count(False)))
sys.exit(0 if all(results) else 1)
