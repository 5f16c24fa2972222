# syntax=docker/dockerfile:1
# The operator's image: the release binary on distroless, as the non-root user, nothing else.
#   docker build -t mqtt-dsp-operator:0.1.0 .
# The Helm chart runs it as uid/gid 65532 with a read-only root filesystem.

# Rust 1.89 is the workspace's rust-version; CI builds with a newer stable, so take the newest
# 1.x on the same Debian as the runtime image (the binary links glibc dynamically).
ARG RUST_IMAGE=rust:1-bookworm

FROM ${RUST_IMAGE} AS build
WORKDIR /src
# The whole workspace: cargo loads every member's manifest even for `-p`.
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY operator ./operator
COPY e2e ./e2e
# Cache mounts keep the registry and build artefacts between builds; the binary is copied out
# of the cached target/ because cache mounts are not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p mqtt-dsp-operator \
 && install -D -m 0755 target/release/mqtt-dsp-operator /out/mqtt-dsp-operator

# glibc and libgcc only (ring's C code needs no more); no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/mqtt-dsp-operator /usr/local/bin/mqtt-dsp-operator
# distroless' "nonroot" user; numeric so runAsNonRoot can verify it.
USER 65532:65532
# /healthz, /readyz, /metrics (--listen).
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/mqtt-dsp-operator"]
CMD ["run"]
