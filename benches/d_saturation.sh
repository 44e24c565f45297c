#!/usr/bin/env bash
# Scenario d: one room of 5,000 viewers at rising post rates until the room
# no longer holds: p99 over 150 ms, or more than 0.1 % of deliveries lost.
# Each step runs on a fresh gateway for STEP_SECONDS (default 15) and writes
# benches/results/d_saturation/rate-<R>.json; the summary, with the highest
# deliveries/s that held, goes to benches/results/d_saturation.json.
# Target: 1,500,000 deliveries/s (300 posts/s × 5,000 viewers).
# RATES overrides the steps; extra arguments go to the load generator.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
command -v jq >/dev/null || die "jq is needed for the summary (apt-get install jq)"

RATES=${RATES:-100 200 300 400 500 600 800 1000 1200 1500 2000}
STEP_SECONDS=${STEP_SECONDS:-15}
P99_LIMIT_MS=150
LOSS_LIMIT=0.001

build
rm -rf "$RESULTS/d_saturation"
steps=()
for rate in $RATES; do
  start_gateway "d_saturation_rate-$rate"
  rc=0
  run_loadgen "d_saturation/rate-$rate" --viewers 5000 --rooms 1 --posters-per-room 2 \
    --rate "$rate" --duration "$STEP_SECONDS" --warmup 2 --drain 3 --connect-rate 5000 \
    "$@" || rc=$?
  stop_gateways
  json=$RESULTS/d_saturation/rate-$rate.json
  [[ -f "$json" ]] || die "the load generator wrote no report for rate $rate (exit $rc)"
  steps+=("$json")
  # A step holds when the room kept up (p99 and loss within limits, nobody
  # disconnected) and the posters really offered the rate.
  held=$(jq --argjson p99 "$P99_LIMIT_MS" --argjson loss "$LOSS_LIMIT" \
    '(.latency.p99_ms < $p99) and (.loss_ratio <= $loss) and (.connections_failed == 0)
     and (.connections_closed_early == 0) and (.posts_per_s >= 0.95 * .rate_per_room)' "$json")
  jq -r --arg held "$held" \
    '"rate \(.rate_per_room)/s: \(.deliveries_per_s | floor) deliveries/s, p99 \(.latency.p99_ms) ms, loss \(.loss_ratio), cpu gateway \(.cpu.gateway_pct | floor) % loadgen \(.cpu.loadgen_pct | floor) % -> held: \($held)"' \
    "$json" >&2
  [[ "$held" == true && "$rc" == 0 ]] || break
  sleep 2
done

jq -s --argjson p99 "$P99_LIMIT_MS" --argjson loss "$LOSS_LIMIT" '
  def held: (.latency.p99_ms < $p99) and (.loss_ratio <= $loss) and (.connections_failed == 0)
    and (.connections_closed_early == 0) and (.posts_per_s >= 0.95 * .rate_per_room);
  {
    limits: { p99_ms: $p99, loss_ratio: $loss },
    meta: .[0].meta,
    steps: [ .[] | {
      rate_per_room, posts_per_s, deliveries_per_s, frames_per_s, bytes_per_s,
      p50_ms: .latency.p50_ms, p99_ms: .latency.p99_ms, p999_ms: .latency.p999_ms,
      max_ms: .latency.max_ms, loss_ratio, duplicates: .deliveries.duplicates,
      connections_closed_early, cpu, held: held } ],
    max_held: ([ .[] | select(held) ] | max_by(.deliveries_per_s)
      | if . == null then null else { rate_per_room, deliveries_per_s, p99_ms: .latency.p99_ms } end)
  }' "${steps[@]}" >"$RESULTS/d_saturation.json"
jq . "$RESULTS/d_saturation.json" >&2
