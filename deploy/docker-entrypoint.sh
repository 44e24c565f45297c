#!/bin/sh
# Entry point of the gateway image. Gives each replica a fleet-unique
# instance id from its container hostname (compose cannot put the hostname
# into the environment itself), then becomes the gateway with exec, so the
# gateway is PID 1 and receives docker's SIGTERM to drain (1001).
set -eu
if [ -z "${DANMAKU_INSTANCE_ID:-}" ]; then
    DANMAKU_INSTANCE_ID="${HOSTNAME:-$(cat /proc/sys/kernel/hostname)}"
    export DANMAKU_INSTANCE_ID
fi
if [ "${1:-}" = "" ] || [ "${1#-}" != "$1" ]; then
    set -- danmaku-gateway "$@"
fi
exec "$@"
