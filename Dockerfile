# syntax=docker/dockerfile:1
# batchlens: release build in a full Rust image, run in a slim one as a non-root user that
# owns its data volume (0700; the service creates its files 0600 inside).

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# BuildKit cache mounts keep the registry and compiled dependencies between builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin batchlens \
    && cp target/release/batchlens /usr/local/bin/batchlens

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates tzdata \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 batchlens \
    && useradd --system --uid 10001 --gid batchlens --home-dir /var/lib/batchlens --shell /usr/sbin/nologin batchlens \
    && mkdir -p /var/lib/batchlens \
    && chown batchlens:batchlens /var/lib/batchlens \
    && chmod 0700 /var/lib/batchlens
COPY --from=build /usr/local/bin/batchlens /usr/local/bin/batchlens
COPY batchlens.example.toml /etc/batchlens/batchlens.example.toml
USER batchlens
WORKDIR /var/lib/batchlens
ENV BATCHLENS__DATA_DIR=/var/lib/batchlens \
    BATCHLENS__SERVER__PORT=8080 \
    BATCHLENS__LOG__FORMAT=json
VOLUME ["/var/lib/batchlens"]
EXPOSE 8080
# The binary probes its own /healthz: no curl in the image.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/batchlens", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/batchlens"]
