#!/usr/bin/env bash
# The test command: formatting, lints, the offload-vs-transfer gate, then every test of the
# workspace (dev profile).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
scripts/setup.sh
echo "== cargo fmt --check"
cargo fmt --all --check
# The kernel and fuzz workspaces, built for their own targets, are formatted alike.
for ws in kernels/builtin kernels/examples fuzz; do
  (cd "$ws" && cargo fmt --all --check)
done
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== offload / remote scan / full transfer gate (TPC-H SF 0.01; DuckDB and DataFusion as references; fails on any mismatch)"
cargo run --quiet -p nearstore -- bench compare --scale 0.01 --runs 1 --link-gbps 10 --reference install --check \
  --out "$CARGO_TARGET_DIR/compare-gate"
echo "== cargo test"
cargo test --workspace
