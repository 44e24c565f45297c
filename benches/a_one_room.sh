#!/usr/bin/env bash
# Scenario a: one room of 5,000 viewers, 100 posts/s for 30 s
# (500,000 deliveries/s offered). Target: ≥ 99.9 % delivered, p99 < 150 ms.
# Extra arguments go to the load generator; see lib.sh.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
build
start_gateway a_one_room
run_loadgen a_one_room --viewers 5000 --rooms 1 --posters-per-room 2 \
  --rate 100 --duration 30 --warmup 2 --drain 3 "$@"
