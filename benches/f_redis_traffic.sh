#!/usr/bin/env bash
# Scenario f: what Redis sends per published comment as the number of gateway
# instances and rooms grows, in two layouts:
#   partitioned - each room's viewers are all on one instance (rooms spread
#                 over instances, as a room-affine load balancer would do);
#   everywhere  - every instance has viewers in every room.
# With per-room subscriptions an instance receives only comments of rooms it
# serves, so in the partitioned layout each comment reaches one instance
# whatever the fleet size; in the everywhere layout it reaches all of them.
# Measured: Redis's total_net_output_bytes (INFO stats) per comment, and the
# comments each instance took from the bus (/api/stats comments_fanned_out).
# Writes benches/results/f_redis_traffic.json. Extra arguments go to every
# load generator run.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
build
EXTRA=("$@")

ROOMS_PER_RUN=${ROOMS_PER_RUN:-64}
VIEWERS_PER_ROOM=${VIEWERS_PER_ROOM:-4}
RATE=${RATE:-2}
DURATION=${DURATION:-10}
OUT=$RESULTS/f_redis_traffic.json
rows=()

fanned_out() { curl -fsS "http://$1/api/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["comments_fanned_out"])'; }
redis_out() { redis-cli -u "$REDIS_URL" INFO stats | sed -n 's/^total_net_output_bytes:\([0-9]*\).*/\1/p' | tr -d '\r'; }

measure() { # measure LAYOUT INSTANCES ROOMS
  local layout=$1 k=$2 rooms=$3 i
  start_redis
  GATEWAY_PIDS=() GATEWAY_ADDRS=()
  for i in $(seq 1 "$k"); do
    start_gateway "f-$layout-$k-$i" DANMAKU_REDIS_URL="$REDIS_URL" DANMAKU_INSTANCE_ID="f-$i"
  done
  wait_for_quiet
  local before_redis before_fan=() after_fan=()
  before_redis=$(redis_out)
  for i in "${!GATEWAY_ADDRS[@]}"; do before_fan+=("$(fanned_out "${GATEWAY_ADDRS[$i]}")"); done
  local runs=()
  if [[ $layout == partitioned ]]; then
    for i in "${!GATEWAY_ADDRS[@]}"; do
      "$LOADGEN_BIN" --gateway "${GATEWAY_ADDRS[$i]}" --room-prefix "f$i" --rooms $((rooms / k)) \
        --viewers $((rooms / k * VIEWERS_PER_ROOM)) --posters-per-room 1 --rate "$RATE" \
        --duration "$DURATION" --warmup 1 --drain 2 --json "$LOGS/f-$layout-$k-$i.json" "${EXTRA[@]}" \
        >"$LOGS/f-$layout-$k-$i.out" 2>&1 &
      runs+=($!)
    done
  else
    local targets=()
    for i in "${!GATEWAY_ADDRS[@]}"; do targets+=(--gateway "${GATEWAY_ADDRS[$i]}"); done
    "$LOADGEN_BIN" "${targets[@]}" --room-prefix f --rooms "$rooms" \
      --viewers $((rooms * VIEWERS_PER_ROOM)) --posters-per-room 1 --rate "$RATE" \
      --duration "$DURATION" --warmup 1 --drain 2 --json "$LOGS/f-$layout-$k-0.json" "${EXTRA[@]}" \
      >"$LOGS/f-$layout-$k-0.out" 2>&1 &
    runs+=($!)
  fi
  for i in "${runs[@]}"; do wait "$i" || die "a load generator failed (see $LOGS)"; done
  local after_redis
  after_redis=$(redis_out)
  for i in "${!GATEWAY_ADDRS[@]}"; do after_fan+=("$(fanned_out "${GATEWAY_ADDRS[$i]}")"); done
  local acked
  acked=$(python3 -c 'import json,sys; print(sum(json.load(open(f))["posts_acked"] for f in sys.argv[1:]))' "$LOGS"/f-"$layout"-"$k"-*.json)
  local received=0
  for i in "${!after_fan[@]}"; do received=$((received + after_fan[$i] - before_fan[$i])); done
  rows+=("{\"layout\":\"$layout\",\"instances\":$k,\"rooms\":$rooms,\"comments\":$acked,\"redis_bytes_out\":$((after_redis - before_redis)),\"instance_receptions\":$received}")
  echo "$layout k=$k rooms=$rooms: comments=$acked redis_out=$((after_redis - before_redis)) B receptions=$received" >&2
  stop_gateways
  stop_redis
  rm -f "$LOGS"/f-"$layout"-"$k"-*.json
}

for k in 1 2 4; do
  measure partitioned "$k" "$ROOMS_PER_RUN"
  measure everywhere "$k" "$ROOMS_PER_RUN"
done
measure partitioned 4 $((ROOMS_PER_RUN * 4))

mkdir -p "$RESULTS"
printf '%s\n' "${rows[@]}" | python3 -c '
import json, sys
rows = [json.loads(l) for l in sys.stdin]
for r in rows:
    r["redis_bytes_per_comment"] = round(r["redis_bytes_out"] / max(r["comments"], 1), 1)
    r["instances_reached_per_comment"] = round(r["instance_receptions"] / max(r["comments"], 1), 3)
json.dump({"scenario": "f_redis_traffic", "rows": rows}, open(sys.argv[1], "w"), indent=1)
for r in rows:
    print("%-12s instances=%d rooms=%4d comments=%6d  redis bytes/comment=%7.1f  instances reached/comment=%.3f" % (
        r["layout"], r["instances"], r["rooms"], r["comments"], r["redis_bytes_per_comment"], r["instances_reached_per_comment"]))
' "$OUT"
