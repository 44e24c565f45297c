#!/usr/bin/env bash
# Scenario b: 500 rooms of 20 viewers, 2 posts/s in every room for 30 s
# (1,000 posts/s and 20,000 deliveries/s in total, spread thin).
# Extra arguments go to the load generator; see lib.sh.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
build
start_gateway b_many_rooms
run_loadgen b_many_rooms --viewers 10000 --rooms 500 --posters-per-room 2 \
  --rate 2 --duration 30 --warmup 2 --drain 3 "$@"
