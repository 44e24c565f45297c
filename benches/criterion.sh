#!/usr/bin/env bash
# Codec micro-benchmarks (crates/danmaku-proto/benches/codec.rs) under
# criterion; the summary is kept in benches/results/criterion.txt.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$ROOT/benches/results"
cd "$ROOT"
cargo bench -p danmaku-proto "$@" 2>&1 | tee "$ROOT/target/criterion.log"
grep -E '^[a-z].*/|time:|thrpt:' "$ROOT/target/criterion.log" >"$ROOT/benches/results/criterion.txt" || true
