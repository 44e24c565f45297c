#!/usr/bin/env bash
# Scenario e: scenario a's load (one room of 5,000 viewers, 100 posts/s for
# 30 s) spread over two gateways joined by a Redis bus: half the viewers and
# one of the two posters on each, so every comment crosses Redis to reach
# the other half. Starts a throw-away redis-server on a free port.
# Extra arguments go to the load generator; see lib.sh.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
build
start_redis
start_gateway e_two_gateways-1 DANMAKU_REDIS_URL="$REDIS_URL" DANMAKU_INSTANCE_ID=bench-gw-1
start_gateway e_two_gateways-2 DANMAKU_REDIS_URL="$REDIS_URL" DANMAKU_INSTANCE_ID=bench-gw-2
run_loadgen e_two_gateways --viewers 5000 --rooms 1 --posters-per-room 2 \
  --rate 100 --duration 30 --warmup 2 --drain 3 --meta "bus=redis $(redis-server --version | cut -d' ' -f3)" "$@"
