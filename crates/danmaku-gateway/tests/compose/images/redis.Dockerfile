# Stand-in for redis:7.0 built from Debian's package (the compose test
# reaches no registry): same binary path, working directory, user and
# command as the official image.
ARG BASE
FROM ${BASE}
RUN set -eu; apt-get update; \
    apt-get install -y --no-install-recommends redis-server; \
    rm -rf /var/lib/apt/lists/*; \
    redis-server --version | grep -q ' v=7\.0\.'; \
    ln -s /usr/bin/redis-server /usr/local/bin/redis-server; \
    ln -s /usr/bin/redis-cli /usr/local/bin/redis-cli; \
    mkdir -p /data; chown redis:redis /data
WORKDIR /data
USER redis
EXPOSE 6379
CMD ["redis-server"]
