#!/usr/bin/env bash
# Installs what building and testing Nearstore needs on a fresh machine of this kind
# (Debian with rustup): Rust components and the wasm32 target. Idempotent and quiet when done.
set -euo pipefail

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo is not installed; install Rust 1.95 with rustup first" >&2
  exit 1
fi
if command -v rustup >/dev/null 2>&1; then
  installed_targets=$(rustup target list --installed 2>/dev/null || true)
  if ! grep -qx wasm32-unknown-unknown <<<"$installed_targets"; then
    echo "setup: adding the wasm32-unknown-unknown target (for kernels)"
    rustup target add wasm32-unknown-unknown
  fi
  installed_components=$(rustup component list --installed 2>/dev/null || true)
  for c in rustfmt clippy; do
    if ! grep -q "^$c" <<<"$installed_components"; then
      echo "setup: adding rustup component $c"
      rustup component add "$c"
    fi
  done
fi
# The reference engines (DuckDB, DataFusion) and the pyarrow client test run in a Python
# virtual environment, which needs the venv module (Debian ships it as python3-venv).
if ! python3 -c "import ensurepip, venv" >/dev/null 2>&1; then
  echo "setup: installing python3-venv (for the reference engines and the pyarrow test)"
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq && apt-get install -y -qq python3-venv
  else
    sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv
  fi
fi
