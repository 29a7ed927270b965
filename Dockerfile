# The operator image the Helm chart deploys (charts/apiguard: image.repository
# ghcr.io/apiguard/apiguard, tag = the chart's appVersion = the crate version):
#
#   docker build -t ghcr.io/apiguard/apiguard:0.1.0 .
#
# Stage 1 builds the binary on Debian 12 (glibc 2.36); stage 2 is distroless "cc" on Debian 12:
# glibc, libgcc and CA certificates, no shell, no package manager, running as the non-root user
# 65532 the chart's securityContext expects. glibc rather than a static musl build: musl's
# allocator is markedly slower under a multi-threaded async server, and this is the same kind
# of binary (Debian 12 glibc, dynamically linked) the test suite runs.
#
# tests/image.sh (run by tests/cluster/image.rs) builds this file's final stage with buildah, from a
# base assembled locally the same way (see docs/install.md, "Container image": there is no
# registry on the development and CI machines), and runs it with crun: read-only root, uid 65532.

FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin apiguard \
 && cp target/release/apiguard /apiguard \
 && /apiguard --version

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /apiguard /usr/local/bin/apiguard
USER 65532:65532
EXPOSE 8443 8080
ENTRYPOINT ["/usr/local/bin/apiguard"]
CMD ["run"]
