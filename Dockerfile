# syntax=docker/dockerfile:1
# sluice container image: build on Debian bookworm, run on bookworm-slim as a non-root user.
#   docker build -t sluice .
#   docker run -p 8080:8080 --stop-timeout 35 sluice
#   docker run -p 8080:8080 -v "$PWD/my.yaml:/etc/sluice/sluice.yaml:ro" sluice
# The config is /etc/sluice/sluice.yaml (deploy/sluice.yaml by default), read-only for the
# gateway: admin API changes answer 500 persist_failed (docs/deploy.md). scripts/rootfs-check
# builds the same runtime root without Docker and starts the binary in it.

ARG DEBIAN_RELEASE=bookworm

FROM debian:${DEBIAN_RELEASE} AS build
# The build dependencies of scripts/setup, less what only the tests and benchmarks use.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential cmake pkg-config python3 \
      libuv1-dev libssl-dev libnghttp2-dev libfyaml-dev libjansson-dev libhiredis-dev \
      libpcre2-dev libcrypt-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cmake -S . -B /build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_INSTALL_PREFIX=/usr \
      -DSLUICE_TESTS=OFF -DSLUICE_WERROR=OFF \
 && cmake --build /build -j"$(nproc)" --target sluice sluice_manpage \
 && DESTDIR=/out cmake --install /build --component sluice --strip \
 && /out/usr/bin/sluice check -c /out/etc/sluice/sluice.yaml

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# Only the shared libraries the binary links (ldd build/sluice); scripts/rootfs-check reads this
# list from here, so keep it on one line.
ARG RUNTIME_PACKAGES="ca-certificates libuv1 libssl3 libnghttp2-14 libfyaml0 libjansson4 libhiredis0.14 libpcre2-8-0 libcrypt1"
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ${RUNTIME_PACKAGES} \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 sluice \
 && useradd --system --uid 10001 --gid sluice --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin sluice
COPY --from=build /out/usr/bin/sluice /usr/bin/sluice
COPY --from=build /out/etc/sluice/sluice.yaml /etc/sluice/sluice.yaml
COPY --from=build /out/usr/share/man/man1/sluice.1 /usr/share/man/man1/sluice.1
# `sluice health|routes|doctor` run in the container (docker exec) find ./sluice.yaml here.
WORKDIR /etc/sluice
USER 10001:10001
EXPOSE 8080
# SIGTERM drains (timeouts.drain, 30s by default): give `docker stop` more than its default 10s.
STOPSIGNAL SIGTERM
# The check runs inside the container's network namespace, so the loopback-only admin listener
# answers it. GET /health needs no token even when admin.token_env is set; `sluice probe URL`
# exits 0 on a status below 500 and 1 on no answer, without curl in the image.
HEALTHCHECK --interval=10s --timeout=7s --start-period=5s --retries=3 \
  CMD ["/usr/bin/sluice", "probe", "http://127.0.0.1:8001/health"]
ENTRYPOINT ["/usr/bin/sluice"]
CMD ["run", "-c", "/etc/sluice/sluice.yaml"]
