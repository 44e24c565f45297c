#!/usr/bin/env bash
# Scenario c: 10,000 idle connections (100 rooms of 100, nobody posts) held
# for 15 s; reports the gateway's RSS per connection. Target: ≤ 4 KiB.
# Extra arguments go to the load generator; see lib.sh.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
build
start_gateway c_idle
run_loadgen c_idle --viewers 10000 --rooms 100 --posters-per-room 0 \
  --rate 0 --duration 15 --warmup 0 --drain 0 "$@"
