# Stand-in for rust:1.95-bookworm, for the compose test on a machine that
# reaches no image registry: a Debian base with the C tools the official
# image has (jemalloc's build needs cc and make) and this machine's own Rust
# toolchain, copied in by the test as `toolchain/`, and the machine's local
# certificate authorities (`certs/`, from /usr/local/share/ca-certificates),
# which cargo needs where a proxy stands between it and crates.io. Same
# variables and PATH as the official image.
ARG BASE
FROM ${BASE}
RUN set -eu; apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates gcc libc6-dev make pkg-config; \
    rm -rf /var/lib/apt/lists/*
COPY certs/ /usr/local/share/ca-certificates/
RUN update-ca-certificates
COPY toolchain /usr/local/rust
ENV RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN mkdir -p /usr/local/cargo/bin && cargo --version && rustc --version
