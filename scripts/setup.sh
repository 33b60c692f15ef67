#!/usr/bin/env bash
# Installs what building and testing Nearstore needs on a fresh machine of this kind
# (Debian with rustup): Rust components and the wasm32 target, clang and lld (C kernels),
# Node.js and npm (AssemblyScript kernels; `nearstore kernel build` installs the pinned compiler
# with npm itself), python3-venv. Idempotent and quiet when done.
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
# Debian packages, installed when a command they bring is missing.
apt_install() {
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
  fi
}
# C kernels are built with clang for wasm32 and linked by lld's wasm-ld.
if ! command -v clang >/dev/null 2>&1 || ! command -v wasm-ld >/dev/null 2>&1; then
  echo "setup: installing clang and lld (for C kernels)"
  apt_install clang lld
fi
# AssemblyScript kernels: the compiler runs on Node.js (20 or newer) and comes from npm.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "setup: installing nodejs and npm (for AssemblyScript kernels)"
  apt_install nodejs npm
fi
# The reference engines (DuckDB, DataFusion) and the pyarrow client test run in a Python
# virtual environment, which needs the venv module (Debian ships it as python3-venv).
if ! python3 -c "import ensurepip, venv" >/dev/null 2>&1; then
  echo "setup: installing python3-venv (for the reference engines and the pyarrow test)"
  apt_install python3-venv
fi
