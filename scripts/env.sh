# Sourced by the scripts: one cargo target directory outside the clone, so repeated runs (and
# CI runs of fresh clones on the same machine) build incrementally.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/nearstore/target}"
export CARGO_TERM_PROGRESS_WHEN="${CARGO_TERM_PROGRESS_WHEN:-auto}"
