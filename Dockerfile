# The operator image the Helm chart deploys (charts/apiguard: image.repository
# ghcr.io/apiguard/apiguard, tag = the chart's appVersion = the crate version):
#
#   docker build -t ghcr.io/apiguard/apiguard:0.1.0 .
#
# Stage 1 builds a statically linked binary (musl); stage 2 is distroless "static": no shell,
# no package manager, running as the non-root user 65532 the chart's securityContext expects.
# This Dockerfile has not been built in the project's CI (no container engine there); see
# README "Container image".

FROM docker.io/library/rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --target x86_64-unknown-linux-musl --bin apiguard \
 && cp target/x86_64-unknown-linux-musl/release/apiguard /apiguard \
 && /apiguard --version

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /apiguard /usr/local/bin/apiguard
USER 65532:65532
EXPOSE 8443 8080
ENTRYPOINT ["/usr/local/bin/apiguard"]
CMD ["run"]
