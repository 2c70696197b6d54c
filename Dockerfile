# churnd production image.
#
#   docker build -t churnd .
#   docker run --rm --read-only -v churnd-state:/var/lib/churnd -p 9898:9898 \
#     -e CHURND__REDIS__URL=rediss://redis.internal:6380/0 churnd
#
# Configuration: the image ships config/default.toml (the documented defaults) in /app;
# everything deployment-specific comes from CHURND__SECTION__KEY environment variables (or a
# file passed with `--config`). Nothing secret is baked in: give the Redis password as
# CHURND__REDIS__PASSWORD and the API token as a mounted file (CHURND__HTTP__CUSTOMER_TOKEN_FILE)
# from a secret store at run time.
#
# The root filesystem can be read-only (`docker run --read-only`, Kubernetes
# readOnlyRootFilesystem): churnd writes only its snapshots, under /var/lib/churnd.

############################################################################################
# Builder
############################################################################################
FROM rust:1.95-slim-bookworm AS builder

WORKDIR /build

# Dependency layer: build every dependency against the real Cargo.toml/Cargo.lock with stub
# sources, so the layer is only rebuilt when the manifest or the lock file changes.
# Cargo.toml declares a library (src/lib.rs), the binary (src/main.rs) and the `[[bench]]`
# targets hot_path, model and snapshot: Cargo refuses to load the manifest if a declared bench's file is
# missing, even though `cargo build` never compiles benches (keep this list in step with
# Cargo.toml). Test targets are auto-discovered, so tests/ is not needed.
# TLS is rustls with the ring provider: ring's C and assembly build with the gcc the rust
# image has; no OpenSSL headers, cmake or perl are needed.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && : > src/lib.rs \
    && echo 'fn main() {}' > benches/hot_path.rs \
    && echo 'fn main() {}' > benches/model.rs \
    && echo 'fn main() {}' > benches/snapshot.rs \
    && cargo build --release --locked --bin churnd \
    && rm -rf src benches

# The real sources. COPY keeps the files' modification times from the build context, which
# can be older than the stubs' build above; touching the crate roots makes Cargo rebuild
# churnd itself instead of reusing the stub binary. build.rs records the source revision in
# churnd_build_info{revision}: the context has no .git, so it comes from the REVISION build
# argument (`--build-arg REVISION="$(git rev-parse --short=12 HEAD)"`), else "unknown".
COPY build.rs ./
COPY src ./src
COPY benches ./benches
ARG REVISION=unknown
RUN touch src/lib.rs src/main.rs \
    && CHURND_REVISION="${REVISION}" cargo build --release --locked --bin churnd \
    && ./target/release/churnd --version

############################################################################################
# Runtime
############################################################################################
FROM debian:bookworm-slim

# Build metadata; pass e.g. --build-arg REVISION="$(git rev-parse --short=12 HEAD)" (the
# builder stage above puts the same argument in churnd_build_info).
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="churnd" \
      org.opencontainers.image.description="Streaming churn-scoring daemon: Redis streams in, RFM features and churn probabilities in memory, win-back tasks out" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim"

# No packages are installed. The binary links only glibc, libm and libgcc_s (all in the base
# image). TLS to Redis (rediss://) is rustls, statically linked, and trusts the web PKI roots
# compiled into the binary (webpki-roots), so no system CA store and no ca-certificates
# package is needed. For a private CA, mount its PEM file and set CHURND__REDIS__TLS_CA_FILE.
#
# A fixed, unprivileged user; the state directory (snapshots) is its own and the only path
# churnd writes to.
RUN groupadd --gid 10001 churnd \
    && useradd --uid 10001 --gid 10001 --no-log-init --no-create-home \
       --home-dir /var/lib/churnd --shell /usr/sbin/nologin churnd \
    && mkdir -p /var/lib/churnd \
    && chown 10001:10001 /var/lib/churnd \
    && chmod 0750 /var/lib/churnd

COPY --from=builder /build/target/release/churnd /usr/local/bin/churnd
# The licence travels with the binary, where Debian keeps every package's.
COPY LICENSE /usr/share/doc/churnd/LICENSE

# The working directory makes the defaults resolve: config/default.toml is read from it and
# model.path defaults to models/cdnow.json. Both stay root-owned (read-only to churnd); to serve
# another model, mount a directory over /app/models or set CHURND__MODEL__PATH.
WORKDIR /app
COPY config/default.toml ./config/default.toml
COPY models ./models

# Snapshots of customer state go to the volume (state.dir defaults to "state" under the
# working directory, which is read-only here). churnd creates the directory.
ENV CHURND__STATE__DIR=/var/lib/churnd/state

# Logs as one JSON object per line on stderr: a container's logs go to a collector (the
# Kubernetes node's agent, a Docker logging driver), which keeps the fields as fields and
# a multi-line message as one record. People reading `docker logs` by eye can set
# CHURND__LOG__FORMAT=text (never coloured here: stderr is not a terminal without `-t`).
ENV CHURND__LOG__FORMAT=json

USER 10001:10001
VOLUME ["/var/lib/churnd"]

# http.addr defaults to 0.0.0.0:9898: /metrics, /healthz (liveness), /readyz (readiness), and
# the customer endpoints under /v1/ (guard them with CHURND__HTTP__CUSTOMER_TOKEN_FILE).
EXPOSE 9898

# Liveness only: /healthz answers 200 whenever the HTTP server runs, independent of Redis
# (use /readyz for readiness). churnd has no built-in HTTP client and the slim base has no
# curl or wget; rather than install curl and its libraries just for this, the check uses
# bash (an essential package, already in the base image) and its /dev/tcp redirection to
# send one HTTP/1.1 request and require status 200 on the status line (anything else, a
# refused connection or no answer within 3 s exits 1, Docker's "unhealthy").
# Kubernetes ignores HEALTHCHECK: configure livenessProbe/readinessProbe there instead.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9898 && printf 'GET /healthz HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\nConnection: close\\r\\n\\r\\n' >&3 && read -r -t 3 _ status _ <&3 && [ \"$status\" = 200 ] || exit 1"]

# churnd runs as PID 1 and handles SIGTERM itself: it stops reading, drains the batches in
# flight (up to shutdown.drain_timeout_ms, 10 s by default; keep the stop timeout above it,
# e.g. `docker stop -t 30`) and exits 0. SIGHUP reloads the model.
STOPSIGNAL SIGTERM
ENTRYPOINT ["churnd"]
CMD ["run"]
