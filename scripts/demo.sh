#!/usr/bin/env bash
# The newcomer's first command: builds nearstore, starts a device with a generated TPC-H
# lineitem table (scale factor 0.1 unless --scale says otherwise) and queries it end to end.
# Extra arguments go to `nearstore demo` (see `nearstore demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
scripts/setup.sh
echo "building nearstore (a cold build takes about 15 minutes on 2 cores; later runs are incremental)"
cargo build -p nearstore
exec "$CARGO_TARGET_DIR/debug/nearstore" demo "$@"
