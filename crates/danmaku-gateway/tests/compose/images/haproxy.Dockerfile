# Stand-in for haproxy:2.6 built from Debian's package (the compose test
# reaches no registry): same binary path, config path, user, stop signal
# and command as the official image.
ARG BASE
FROM ${BASE}
RUN set -eu; apt-get update; \
    apt-get install -y --no-install-recommends haproxy; \
    rm -rf /var/lib/apt/lists/*; \
    haproxy -v | grep -q 'version 2\.6\.'; \
    ln -s /usr/sbin/haproxy /usr/local/sbin/haproxy; \
    mkdir -p /usr/local/etc/haproxy /var/lib/haproxy; \
    chown haproxy:haproxy /var/lib/haproxy
WORKDIR /var/lib/haproxy
USER haproxy
STOPSIGNAL SIGUSR1
CMD ["haproxy", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]
