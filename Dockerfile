# syntax=docker/dockerfile:1
# The moat operator image: `moat run` in the operator Deployment, `moat agent` in broker pods.
#   docker build -t ghcr.io/moat-dev/moat:<version> .
# (Not built in CI: the project's machines have no container engine.)

# --- build: the release binary (Cargo's registry and target dir are BuildKit caches)
FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin moat \
    && install -D -m 0555 target/release/moat /out/moat

# --- runtime: glibc and CA certificates only; no shell, no package manager; non-root
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/moat /usr/local/bin/moat
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/moat"]
CMD ["run"]
