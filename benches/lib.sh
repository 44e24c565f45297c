#!/usr/bin/env bash
# Shared helpers of the benchmark scenarios. Sourced by the scenario scripts,
# not run on its own.
#
# Every scenario: builds the gateway and the load generator in release mode,
# starts a gateway (or two, and a Redis) on free loopback ports with the
# benchmark settings below, waits until /readyz answers (which implies
# /healthz), runs danmaku-loadgen with --gateway-pid, writes the report to
# benches/results/<scenario>.json, and stops what it started on exit.
#
# Gateway settings come from the environment: any DANMAKU_* variable you set
# is passed on and recorded in the report, so a tuning run is just e.g.
#   DANMAKU_FLUSH_WINDOW_MS=20 benches/a_one_room.sh
# Arguments given to a scenario script are appended to the loadgen command
# line (later options win), e.g. `benches/a_one_room.sh --format msgpack`.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RESULTS=${RESULTS:-$ROOT/benches/results}
LOGS=${LOGS:-$ROOT/target/bench-logs}
GATEWAY_BIN=${GATEWAY_BIN:-$ROOT/target/release/danmaku-gateway}
LOADGEN_BIN=$ROOT/target/release/danmaku-loadgen

# Benchmark settings: lift the per-connection post limit (5 per 10 s) so a
# few posters can carry a room's whole rate. Values already in the
# environment win.
export DANMAKU_POST_RATE_COUNT=${DANMAKU_POST_RATE_COUNT:-1000000}
export DANMAKU_POST_BURST=${DANMAKU_POST_BURST:-1000000}
# Likewise the per-address budget (every poster shares 127.0.0.x) and the
# duplicate check (the load generator's texts repeat); moderation state in
# memory, so a benchmark leaves no data directory behind.
export DANMAKU_IP_RATE_COUNT=${DANMAKU_IP_RATE_COUNT:-1000000}
export DANMAKU_IP_BURST=${DANMAKU_IP_BURST:-1000000}
export DANMAKU_DUPLICATE_WINDOW_MS=${DANMAKU_DUPLICATE_WINDOW_MS:-0}
export DANMAKU_DATA_DIR=${DANMAKU_DATA_DIR:-}
# Every load generator connection comes from one address: no per-address cap.
export DANMAKU_MAX_CONNECTIONS_PER_IP=${DANMAKU_MAX_CONNECTIONS_PER_IP:-0}
export DANMAKU_LISTEN=${DANMAKU_LISTEN:-127.0.0.1:0}
export DANMAKU_LOG_FORMAT=json
export RUST_LOG=${RUST_LOG:-info}

# The gateways started by start_gateway, and the Redis of start_redis.
GATEWAY_PIDS=()
GATEWAY_ADDRS=()
REDIS_PID=
REDIS_DIR=

mkdir -p "$RESULTS" "$LOGS"

die() {
  echo "error: $*" >&2
  exit 1
}

build() {
  (cd "$ROOT" && cargo build --release -p danmaku-gateway -p danmaku-loadgen)
}

# stop_pid PID: SIGTERM, then wait for a graceful exit (SIGKILL after 15 s).
stop_pid() {
  local pid=$1
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 150); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# stop_gateways: stops every gateway this script started.
stop_gateways() {
  local pid
  for pid in "${GATEWAY_PIDS[@]}"; do stop_pid "$pid"; done
  GATEWAY_PIDS=()
  GATEWAY_ADDRS=()
}

# stop_redis: stops the Redis this script started and removes its directory.
stop_redis() {
  if [[ -n "$REDIS_PID" ]]; then stop_pid "$REDIS_PID"; fi
  if [[ -n "$REDIS_DIR" ]]; then rm -rf "$REDIS_DIR"; fi
  REDIS_PID=
  REDIS_DIR=
}

cleanup() {
  stop_gateways
  stop_redis
}
trap cleanup EXIT

# start_gateway NAME [VAR=VALUE ...]: starts a gateway with the benchmark
# settings plus the given variables, adds it to GATEWAY_PIDS and
# GATEWAY_ADDRS, and waits until it is ready (/readyz: with Redis, until it
# reached Redis). The log goes to $LOGS/NAME.gateway.log.
start_gateway() {
  local log=$LOGS/$1.gateway.log
  shift
  (cd "$ROOT" && exec env "$@" "$GATEWAY_BIN") >"$log" 2>&1 &
  local pid=$! addr=
  GATEWAY_PIDS+=("$pid")
  for _ in $(seq 1 100); do
    addr=$(grep -o '"message":"Gateway listening","addr":"[^"]*"' "$log" |
      head -n1 | sed 's/.*"addr":"\([^"]*\)"/\1/' || true)
    [[ -n "$addr" ]] && break
    kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; die "the gateway exited"; }
    sleep 0.1
  done
  [[ -n "$addr" ]] || die "the gateway did not say where it listens (see $log)"
  GATEWAY_ADDRS+=("$addr")
  for _ in $(seq 1 100); do
    curl -fsS "http://$addr/readyz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  die "http://$addr/readyz did not answer 200 (see $log)"
}

# start_redis: starts a throw-away redis-server (no persistence) on a free
# loopback port and sets REDIS_URL.
start_redis() {
  command -v redis-server >/dev/null || die "redis-server is needed (apt-get install redis-server)"
  REDIS_DIR=$(mktemp -d)
  local port
  for _ in $(seq 1 20); do
    port=$((20000 + RANDOM % 20000))
    redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
      --dir "$REDIS_DIR" >"$LOGS/redis.log" 2>&1 &
    REDIS_PID=$!
    for _ in $(seq 1 50); do
      if redis-cli -p "$port" ping >/dev/null 2>&1; then
        REDIS_URL=redis://127.0.0.1:$port/
        return 0
      fi
      kill -0 "$REDIS_PID" 2>/dev/null || break
      sleep 0.1
    done
    stop_pid "$REDIS_PID"
  done
  die "could not start redis-server (see $LOGS/redis.log)"
}

# machine_busy_pct SECONDS: busy CPU of the whole machine over SECONDS, in
# percent of one core (200 = both cores of a 2-core machine).
machine_busy_pct() {
  local -a a b
  read -r -a a < <(grep '^cpu ' /proc/stat)
  sleep "$1"
  read -r -a b < <(grep '^cpu ' /proc/stat)
  local busy=0 idle=0 i
  for i in 1 2 3 4 5 6 7 8; do busy=$((busy + b[i] - a[i])); done
  idle=$((b[4] - a[4] + b[5] - a[5]))
  echo $(((busy - idle) * 100 / ($(getconf CLK_TCK) * $1)))
}

# wait_for_quiet: the machine is shared (builds, tests); a benchmark run next
# to a compiler measures the compiler. Waits up to QUIET_WAIT seconds
# (default 300) for the machine to be under QUIET_PCT (default 15) percent of
# one core busy, then goes ahead anyway, and notes what it saw.
wait_for_quiet() {
  local deadline=$((SECONDS + ${QUIET_WAIT:-300})) busy
  while :; do
    busy=$(machine_busy_pct 2)
    if ((busy < ${QUIET_PCT:-15})); then break; fi
    if ((SECONDS >= deadline)); then
      echo "warning: machine still ${busy}% busy; measuring anyway" >&2
      break
    fi
    echo "waiting for a quiet machine (${busy}% of one core busy)..." >&2
  done
  QUIET_BUSY_PCT=$busy
}

# The commit measured, and whether the tree had changes on top of it.
commit_meta() {
  local commit dirty
  commit=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
  dirty=$(git -C "$ROOT" status --porcelain --untracked-files=no -- crates Cargo.toml Cargo.lock config 2>/dev/null |
    awk '{print $2}' | paste -sd, - || true)
  echo "--meta" "commit=$commit" "--meta" "dirty_files=${dirty:-none}"
}

# run_loadgen RESULT [loadgen args...]: runs the load generator against the
# running gateways and writes $RESULTS/RESULT.json.
run_loadgen() {
  local result=$1
  shift
  local json=$RESULTS/$result.json
  mkdir -p "$(dirname "$json")"
  wait_for_quiet
  local gateway_env
  gateway_env=$(env | grep '^DANMAKU_' | grep -v '^DANMAKU_LISTEN=' | sort | paste -sd' ' -)
  local -a targets=()
  local i
  for i in "${!GATEWAY_ADDRS[@]}"; do
    targets+=(--gateway "${GATEWAY_ADDRS[$i]}" --gateway-pid "${GATEWAY_PIDS[$i]}")
  done
  # shellcheck disable=SC2046 # commit_meta yields separate words on purpose
  "$LOADGEN_BIN" "${targets[@]}" --json "$json" \
    --meta "gateway_env=$gateway_env" \
    --meta "busy_before_pct=$QUIET_BUSY_PCT" \
    --meta "machine=$(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -n1), kernel $(uname -r)" \
    $(commit_meta) \
    "$@"
}
