#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ for a bounded number of executions each (default
# 200000; pass another count as $1). Installs cargo-fuzz if missing. libFuzzer needs a few
# unstable compiler flags; RUSTC_BOOTSTRAP lets the stable toolchain accept them.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
RUNS="${1:-200000}"
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
export RUSTC_BOOTSTRAP=1
cd fuzz
for t in plan filter_text; do
  echo "== fuzz $t ($RUNS runs)"
  cargo fuzz run --sanitizer none "$t" -- -runs="$RUNS" -max_len=4096 2>&1 | tail -n 3
done
for t in parquet_footer kernel_output; do
  echo "== fuzz $t ($RUNS runs)"
  cargo fuzz run --sanitizer none --features runtime "$t" -- -runs="$RUNS" -max_len=4096 2>&1 | tail -n 3
done
