#!/usr/bin/env bash
# Scenario g: a hot room. 5,000 viewers spread evenly over the density tiers
# 15, 30, 60, 120 comments/s and unlimited (posters ask for unlimited),
# 2,000 posts/s offered for 30 s: 10,000,000 deliveries/s if nothing were
# sampled. Reports each tier's received rate against its budget, the worst
# 5 s of any viewer (target: within 110 % of its budget), whether recorded
# viewers of one tier got the same comments and lower tiers' comments all
# reached higher tiers, gateway CPU, wire bytes per delivery and the p99
# latency of what was delivered.
# Compression and format come from the extra arguments, e.g.
#   benches/g_hot_room.sh --deflate --format msgpack
# and DANMAKU_PERMESSAGE_DEFLATE=false turns it off on the gateway.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
build
name=${G_NAME:-g_hot_room}
start_gateway "$name"
run_loadgen "$name" --viewers 5000 --rooms 1 --posters-per-room 20 \
  --rate 2000 --duration 30 --warmup 2 --drain 3 --connect-rate 5000 \
  --density 15,30,60,120,0 --record-per-density 2 "$@"
