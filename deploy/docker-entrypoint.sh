#!/bin/sh
# Entry point of the gateway image. Gives each replica a fleet-unique
# instance id and address from its container hostname (compose cannot put
# the hostname into the environment itself), then becomes the gateway with
# exec, so the gateway is PID 1 and receives docker's SIGTERM to drain (1001).
set -eu
if [ -z "${DANMAKU_INSTANCE_ID:-}" ]; then
    DANMAKU_INSTANCE_ID="${HOSTNAME:-$(cat /proc/sys/kernel/hostname)}"
    export DANMAKU_INSTANCE_ID
fi
# What /api/instances shows as the replica's address: its hostname, which
# Docker's DNS resolves on the stack's networks, not the wildcard it binds.
if [ -z "${DANMAKU_PUBLIC_ADDRESS:-}" ]; then
    DANMAKU_PUBLIC_ADDRESS="$(cat /proc/sys/kernel/hostname):$(listen="${DANMAKU_LISTEN:-0.0.0.0:8080}"; echo "${listen##*:}")"
    export DANMAKU_PUBLIC_ADDRESS
fi
if [ "${1:-}" = "" ] || [ "${1#-}" != "$1" ]; then
    set -- danmaku-gateway "$@"
fi
exec "$@"
