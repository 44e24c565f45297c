#!/usr/bin/env bash
# Scenario k: rooms that come and go. 10,000 rooms of one viewer each, every
# room posting 1 comment per 5 s for 10 s (2,000 posts/s in all), then
# everyone leaves. Reports the gateway's RSS before, with the rooms, and
# 5 s and 30 s after the last viewer left: whether memory comes back.
# Extra arguments go to the load generator; see lib.sh. GATEWAY_BIN picks
# a gateway built with another allocator (`--features mimalloc|jemalloc`,
# with SKIP_BUILD=1);
# ALLOC names the variant in the report file name.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[[ -n "${SKIP_BUILD:-}" ]] || build
name=k_room_churn${ALLOC:+-$ALLOC}
start_gateway "$name"
pid=${GATEWAY_PIDS[0]}
run_loadgen "$name" --viewers 10000 --rooms 10000 --posters-per-room 1 \
  --rate 0.2 --duration 10 --warmup 1 --drain 2 --connect-rate 5000 "$@"
rss() { awk '/^VmRSS/ {print $2}' "/proc/$pid/status"; }
sleep 5
after5=$(rss)
sleep 25
after30=$(rss)
json=$RESULTS/$name.json
jq --argjson a5 "$after5" --argjson a30 "$after30" \
  '.after_leave = { rss_5s_kib: $a5, rss_30s_kib: $a30 }' "$json" >"$json.tmp" && mv "$json.tmp" "$json"
jq -c '{variant: env.ALLOC, before: .gateway_memory.rss_before_kib, connected: .gateway_memory.rss_connected_kib,
  end: .gateway_memory.rss_end_kib, after_leave, loss_ratio, p99_ms: .latency.p99_ms}' "$json" >&2
