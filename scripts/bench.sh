#!/usr/bin/env bash
# Benchmarks on demand (not part of CI; release profile): the storage read path against fio
# (installed with apt-get if missing). Arguments go to the bench (e.g. --quick, --size-mib 512).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
scripts/setup.sh
cargo bench -p nearstore-benches --bench reader -- --install-fio "$@"
