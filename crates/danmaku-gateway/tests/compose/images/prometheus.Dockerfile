# Stand-in for prom/prometheus:v2.42.0 built from Debian's package (the
# compose test reaches no registry): same entrypoint, config path, data
# directory, user and default command as the official image.
ARG BASE
FROM ${BASE}
RUN set -eu; apt-get update; \
    apt-get install -y --no-install-recommends prometheus; \
    rm -rf /var/lib/apt/lists/*; \
    prometheus --version 2>&1 | grep -q 'version 2\.42\.0'; \
    mkdir -p /prometheus; chown nobody:nogroup /prometheus
WORKDIR /prometheus
USER nobody
EXPOSE 9090
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
