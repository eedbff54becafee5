#!/usr/bin/env bash
# make test-deploy: the packaging and deployment files, checked on this machine.
#   make install DESTDIR=tmp (files, the config kept on reinstall), man -l of the generated page,
#   systemd-analyze verify + security of the unit, the .deb (cpack: control, Depends, conffiles,
#   files, dpkg -x and run), the Kubernetes manifests against the API's OpenAPI schemas (and bad
#   ones rejected), the Dockerfile lint (dockerfile-utils + checklist), scripts/rootfs-check.
# Ends with "N passed, N failed". SKIP lines name a tool this machine lacks.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
T=$(mktemp -d /tmp/sluice-test-deploy.XXXXXX)
trap 'rm -rf "$T"' EXIT
pass=0 fail=0 skip=0
ok() { echo "ok   $*"; pass=$((pass + 1)); }
bad() { echo "FAIL $*"; fail=$((fail + 1)); }
skipped() { echo "SKIP $*"; skip=$((skip + 1)); }
t() { local name=$1; shift; if "$@" >"$T/out" 2>&1; then ok "$name"; else bad "$name"; sed 's/^/     /' "$T/out" | tail -20; fi; }

# ---- make install ---------------------------------------------------------------------------
D="$T/stage"
t "make install DESTDIR=... PREFIX=/usr/local" make --no-print-directory install DESTDIR="$D" PREFIX=/usr/local
for f in usr/local/bin/sluice usr/local/share/man/man1/sluice.1 usr/local/lib/systemd/system/sluice.service \
         usr/local/etc/sluice/sluice.yaml usr/local/share/doc/sluice/examples/sluice.yaml \
         usr/local/share/doc/sluice/deploy.md; do
  t "installed $f" test -s "$D/$f"
done
t "the unit's paths follow the prefix" grep -q '^ExecStart=/usr/local/bin/sluice run -c ${SLUICE_CONFIG}$' "$D/usr/local/lib/systemd/system/sluice.service"
t "no placeholder left in the unit" bash -c "! grep -q '@[A-Z]*@' '$D/usr/local/lib/systemd/system/sluice.service'"
t "the installed config validates" "$D/usr/local/bin/sluice" check -c "$D/usr/local/etc/sluice/sluice.yaml"
echo "# operator's edit" >> "$D/usr/local/etc/sluice/sluice.yaml"
make --no-print-directory install DESTDIR="$D" PREFIX=/usr/local >"$T/out" 2>&1
t "a second make install keeps an existing config" grep -q "operator's edit" "$D/usr/local/etc/sluice/sluice.yaml"
t "make install PREFIX=/usr puts the config in /etc" make --no-print-directory install DESTDIR="$T/usr-stage" PREFIX=/usr
t "  ... /etc/sluice/sluice.yaml and ExecStart=/usr/bin/sluice" bash -c "test -s '$T/usr-stage/etc/sluice/sluice.yaml' && grep -q '^ExecStart=/usr/bin/sluice ' '$T/usr-stage/usr/lib/systemd/system/sluice.service'"

# ---- the man page ---------------------------------------------------------------------------
MAN="$D/usr/local/share/man/man1/sluice.1"
if command -v man >/dev/null; then
  MANWIDTH=100 man -l "$MAN" >"$T/man.txt" 2>"$T/man.err"
  t "man -l renders sluice(1) without warnings" bash -c "test -s '$T/man.txt' && ! test -s '$T/man.err'"
  for w in NAME SYNOPSIS COMMANDS "EXIT STATUS" SIGNALS; do t "man page has $w" grep -q "^$w" "$T/man.txt"; done
  # every command of `sluice help` is in the page
  for c in $("$D/usr/local/bin/sluice" help | awk '/^commands:/{on=1;next} /^$/{on=0} on && /^  [a-z]/{print $1}'); do
    t "man page lists '$c'" grep -Eq "^ {7}$c( |$)" "$T/man.txt"
  done
else
  skipped "man -l (man not installed)"
fi

# ---- the systemd unit -----------------------------------------------------------------------
if command -v systemd-analyze >/dev/null; then
  # verify checks that ExecStart's binary exists and that man:sluice(1) resolves: point both
  # at the staged install.
  sed "s|/usr/local|$D/usr/local|g" "$D/usr/local/lib/systemd/system/sluice.service" > "$T/sluice.service"
  t "systemd-analyze verify sluice.service ($(systemd-analyze --version | head -1))" \
    env MANPATH="$D/usr/local/share/man" systemd-analyze verify "$T/sluice.service"
  systemd-analyze security --offline=true "$T/sluice.service" >"$T/sec.txt" 2>&1
  score=$(sed -n 's/.*Overall exposure level for sluice.service: \([0-9.]*\).*/\1/p' "$T/sec.txt")
  t "systemd-analyze security exposure ${score:-?} <= 2.0" python3 -c "import sys; sys.exit(0 if float('${score:-99}') <= 2.0 else 1)"
  for k in DynamicUser=yes AmbientCapabilities=CAP_NET_BIND_SERVICE CapabilityBoundingSet=CAP_NET_BIND_SERVICE \
           NoNewPrivileges=yes ProtectSystem=strict ProtectHome=yes PrivateTmp=yes PrivateDevices=yes \
           "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX" SystemCallFilter=@system-service Restart=on-failure \
           'ExecReload=/bin/kill -HUP $MAINPID' LimitNOFILE=; do
    t "unit sets $k" grep -qF "$k" deploy/systemd/sluice.service
  done
else
  skipped "systemd-analyze (not installed)"
fi

# ---- the Debian package ---------------------------------------------------------------------
if command -v dpkg-deb >/dev/null && command -v cpack >/dev/null; then
  t "make package (cpack -G DEB)" make --no-print-directory package
  DEB=$(ls -t build-pkg/sluice_*_*.deb 2>/dev/null | head -1)
  if [ -n "$DEB" ]; then
    dpkg-deb -I "$DEB" >"$T/info.txt"; dpkg-deb -c "$DEB" >"$T/list.txt"
    deps=$(dpkg-deb -f "$DEB" Depends)
    for p in libuv1 libssl3 libnghttp2-14 libfyaml0 libjansson4 libhiredis0.14 libpcre2-8-0 libcrypt1 libc6; do
      t "Depends has $p" grep -q "\b$p\b" <<<"$deps"
    done
    for f in ./usr/bin/sluice ./usr/share/man/man1/sluice.1 ./usr/lib/systemd/system/sluice.service ./etc/sluice/sluice.yaml; do
      t "the .deb holds $f" grep -q " $f\$" "$T/list.txt"
    done
    dpkg-deb --ctrl-tarfile "$DEB" | tar -xO ./conffiles >"$T/conffiles" 2>/dev/null
    t "conffiles lists /etc/sluice/sluice.yaml" grep -qx /etc/sluice/sluice.yaml "$T/conffiles"
    t "the packaged unit runs /usr/bin/sluice with /etc/sluice/sluice.yaml" bash -c \
      "dpkg-deb --fsys-tarfile '$DEB' | tar -xO ./usr/lib/systemd/system/sluice.service | grep -q '^Environment=SLUICE_CONFIG=/etc/sluice/sluice.yaml$'"
    dpkg -x "$DEB" "$T/x"
    t "dpkg -x: the packaged binary runs (version)" "$T/x/usr/bin/sluice" version
    t "dpkg -x: the packaged config validates" "$T/x/usr/bin/sluice" check -c "$T/x/etc/sluice/sluice.yaml"
  else
    bad "no .deb in build-pkg/"
  fi
else
  skipped "the .deb (dpkg-deb or cpack missing)"
fi

# ---- npm tools: kubernetes-models (OpenAPI schemas), dockerfile-utils ------------------------
NODE_OK=1
if ! command -v npm >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null 2>&1 || true
  fi
fi
if command -v npm >/dev/null; then
  if [ ! -d tests/deploy/node_modules/kubernetes-models ] || [ ! -d tests/deploy/node_modules/dockerfile-utils ]; then
    npm ci --prefix tests/deploy --no-audit --no-fund --loglevel=error >"$T/npm.txt" 2>&1 || { NODE_OK=0; cat "$T/npm.txt"; }
  fi
else
  NODE_OK=0
fi
if [ $NODE_OK = 1 ]; then
  t "Kubernetes manifests validate (kubernetes-models schemas, strict fields)" node tests/deploy/validate-k8s.mjs deploy/kubernetes/*.yaml
  sed -n 's/^\(validate-k8s: .*\)/     \1/p' "$T/out"
  for f in tests/deploy/bad/*.yaml; do
    t "the validator rejects $(basename "$f")" bash -c "! node tests/deploy/validate-k8s.mjs '$f'"
  done
  t "dockerfile-utils lint Dockerfile" tests/deploy/node_modules/.bin/dockerfile-utils lint Dockerfile
else
  bad "npm is not available: the manifests and the Dockerfile were not schema-checked"
fi
# the config inside the ConfigMap validates like a file (token_env's variable set for check)
sed -n '/sluice.yaml: |/,$p' deploy/kubernetes/configmap.yaml | tail -n +2 | sed 's/^    //' >"$T/cm.yaml"
t "the ConfigMap's sluice.yaml passes sluice check" env SLUICE_ADMIN_TOKEN=x build/sluice check -c "$T/cm.yaml"
t "the Dockerfile checklist (hadolint rules + ours)" tests/deploy/dockerfile-checklist.py Dockerfile .dockerignore build/sluice
sed 's/^USER 10001:10001/USER root/; s/--no-install-recommends \${RUNTIME_PACKAGES}/${RUNTIME_PACKAGES}/' Dockerfile >"$T/Dockerfile.bad"
t "the checklist rejects a root USER and a missing --no-install-recommends" bash -c \
  "out=\$(tests/deploy/dockerfile-checklist.py '$T/Dockerfile.bad' .dockerignore); ! [ \$? = 0 ] && grep -q 'FAIL DL3002' <<<\"\$out\" && grep -q 'FAIL DL3015' <<<\"\$out\""

# ---- the image's root filesystem without Docker ---------------------------------------------
if [ "$(id -u)" = 0 ] && ! command -v debootstrap >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null 2>&1 || true
fi
t "scripts/rootfs-check (${SLUICE_ROOTFS_MODE:-auto} mode)" scripts/rootfs-check --binary build/sluice ${SLUICE_ROOTFS_MODE:+--mode "$SLUICE_ROOTFS_MODE"}
grep '^rootfs-check: OK' "$T/out" | sed 's/^/     /'

echo "test-deploy: $pass passed, $fail failed, $skip skipped"
echo "$pass passed, $fail failed"
[ $fail = 0 ]
