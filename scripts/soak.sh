#!/usr/bin/env bash
# Soak test (on demand, not part of CI): one device under mixed load from concurrent client
# loops for N minutes, its resident memory and open descriptors sampled every second.
#
#   scripts/soak.sh [--minutes N] [--out DIR] [--warmup SECS] [--kernel FILE.wasm]
#
# NEARSTORE_BIN: the binary (default $CARGO_TARGET_DIR/release/nearstore, else
# ~/.cache/nearstore/target-release/release/nearstore; build it with `cargo build --release`).
# The kernel loop registers a prebuilt example kernel (grep.wasm; --kernel or
# NEARSTORE_SOAK_KERNEL, else looked up where tests and `nearstore kernel build` leave it) and
# is skipped if there is none. Nothing is built here.
# Output in DIR (default ./soak-out): samples.csv (seconds,rss_kib,fds), ops.log (seconds kind
# status ms), errors.log, device.log, summary.txt. Exits non-zero if an operation failed or the
# device died.
set -euo pipefail

MINUTES=10 OUT=soak-out WARMUP=30 WASM=${NEARSTORE_SOAK_KERNEL:-}
while (($#)); do
  case $1 in
    --minutes) MINUTES=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --kernel) WASM=$2; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "soak: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
BIN=$HOME/.cache/nearstore/target-release/release/nearstore
[[ -x ${CARGO_TARGET_DIR:-/nonexistent}/release/nearstore ]] && BIN=$CARGO_TARGET_DIR/release/nearstore
BIN=${NEARSTORE_BIN:-$BIN}
[[ -x $BIN ]] || { echo "soak: no binary at $BIN (set NEARSTORE_BIN)" >&2; exit 2; }
if [[ -z $WASM ]]; then
  T=${CARGO_TARGET_DIR:-$HOME/.cache/nearstore/target}
  for f in "$T/kernel-tests/wasm32-unknown-unknown/release/grep.wasm" \
           "$T/wasm32-unknown-unknown/release/grep.wasm" \
           "$(dirname "$0")/../kernels/examples/target/wasm32-unknown-unknown/release/grep.wasm"; do
    [[ -f $f ]] && { WASM=$f; break; }
  done
fi

mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
rm -f "$OUT"/{samples.csv,ops.log,errors.log,summary.txt}; : > "$OUT/device.log"
DATA=$(mktemp -d "${TMPDIR:-/tmp}/nearstore-soak.XXXXXX")
DEV_PID="" PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do pkill -TERM -P "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; done
  [[ -n $DEV_PID ]] && kill -KILL "$DEV_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$DATA"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
alive() { [[ -r /proc/$DEV_PID/status ]] && ! grep -q '^State:[[:space:]]*Z' "/proc/$DEV_PID/status"; }

# The device, on a port it picks itself: its start-up line names the address.
NEARSTORE_LOG=warn "$BIN" serve --data "$DATA" --listen 127.0.0.1:0 --no-demo \
  </dev/null >/dev/null 2>"$OUT/device.log" &
DEV_PID=$! T0=$EPOCHSECONDS
URL=""
for _ in $(seq 300); do
  URL=$(sed -n 's/.*nearstore device serving .* on \(grpc:\/\/[^ ]*\).*/\1/p' "$OUT/device.log")
  [[ -n $URL ]] && break
  alive || { cat "$OUT/device.log" >&2; echo "soak: the device exited at start" >&2; exit 1; }
  sleep 0.1
done
[[ -n $URL ]] || { echo "soak: the device did not start serving within 30 s" >&2; exit 1; }
export NEARSTORE_DEVICE=$URL
echo "soak: device $DEV_PID at $URL, data $DATA, $MINUTES min, output $OUT"

# The sampler starts now, so the warm-up covers loading the tables.
( echo "seconds,rss_kib,fds" > "$OUT/samples.csv"
  while alive; do
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$DEV_PID/status" 2>/dev/null) || break
    fds=$(ls "/proc/$DEV_PID/fd" 2>/dev/null | wc -l) || break
    [[ -n $rss ]] && echo "$((EPOCHSECONDS - T0)),$rss,$fds" >> "$OUT/samples.csv"
    sleep 1
  done ) &
SAMPLER=$!; PIDS+=($SAMPLER)

# run_op KIND WANT SUBCOMMAND ARGS...: WANT is `ok`, or text the error must contain (a failure
# the call is meant to meet); anything else counts as a failure, its output in errors.log.
run_op() {
  local kind=$1 want=$2 t0=$EPOCHREALTIME err rc=0 st=ok; shift 2
  err=$(timeout 300 "$BIN" "$@" 2>&1) || rc=$?
  local ms=$(( (${EPOCHREALTIME/[.,]/} - ${t0/[.,]/}) / 1000 ))
  if [[ $want == ok ]]; then ((rc == 0)) || st=fail
  elif ((rc == 0)) || [[ $err != *"$want"* ]]; then st=fail; fi
  echo "$((EPOCHSECONDS - T0)) $kind $st $ms" >> "$OUT/ops.log"
  [[ $st == ok ]] || printf '%s %s rc=%d: %s\n' "$(date +%T)" "$kind" "$rc" "${err//$'\n'/ }" >> "$OUT/errors.log"
}

# Setup: lineitem to query, orders whose stored Parquet object becomes the upload file.
"$BIN" tpch --tables lineitem,orders --scale 0.05 >/dev/null
UP=$OUT/upload.parquet
obj=$("$BIN" describe orders | awk '$1 == "object" {print $2; exit}')
cp "$DATA/objects/$obj.parquet" "$UP"

Q1="select l_returnflag, l_linestatus, sum(l_quantity) as sum_qty, sum(l_extendedprice) as base,
  sum(l_extendedprice * (1 - l_discount)) as disc, sum(l_extendedprice * (1 - l_discount) * (1 + l_tax)) as charge,
  avg(l_quantity) as avg_qty, avg(l_discount) as avg_disc, count(*) as n from lineitem
  where l_shipdate <= date '1998-09-02' group by l_returnflag, l_linestatus order by l_returnflag, l_linestatus"
Q6="select sum(l_extendedprice * l_discount) as revenue from lineitem where l_shipdate >= date '1994-01-01'
  and l_shipdate < date '1995-01-01' and l_discount between 0.05 and 0.07 and l_quantity < 24"
END=$((EPOCHSECONDS + MINUTES * 60))
running() { ((EPOCHSECONDS < END)) && alive; }

sql_loop() {
  local i=0
  while running; do
    run_op sql_q1 ok sql "$Q1"
    run_op sql_q6 ok sql "$Q6"
    case $((i++ % 4)) in
      0) run_op sql_q6_auto ok sql --mode auto "$Q6" ;;
      1) run_op sql_q6_remote ok sql --mode remote "$Q6" ;;
      2) run_op sql_join ok sql "select o_orderpriority, count(*) from orders join lineitem on o_orderkey = l_orderkey
           where l_commitdate < l_receiptdate group by o_orderpriority order by o_orderpriority" ;;
      3) run_op query ok query --table lineitem --filter "l_quantity < 24" --group-by l_shipmode \
           --agg "sum(l_extendedprice * l_discount) as revenue" --no-stats ;;
    esac
  done
}
upload_loop() {
  local i=0 t
  while running; do
    t=soak_up_$((i++))
    run_op put ok put "$UP" --table "$t"
    run_op put_conflict table_exists put "$UP" --table "$t"
    run_op append ok put "$UP" --table "$t" --mode append
    run_op replace ok put "$UP" --table "$t" --mode replace
    run_op describe ok describe "$t"
    run_op sql_upload ok sql "select o_orderstatus, count(*) from $t group by o_orderstatus"
    run_op drop ok drop "$t"
    run_op drop_missing unknown_table drop "$t"
  done
}
kernel_loop() {
  local i=0 k
  while running; do
    k=soak_grep_$((i++))
    run_op kernel_register ok kernel register "$WASM" --name "$k"
    run_op sql_kernel ok sql "select count(*) from lineitem where $k(l_comment, 'special')"
    run_op kernel_list ok kernel list
    run_op kernel_remove ok kernel remove "$k"
  done
}
admin_loop() {
  while running; do
    run_op info ok info; run_op tables ok tables; run_op scrub ok scrub
    sleep 2
  done
}
LOOPS=()
for loop in sql_loop sql_loop upload_loop admin_loop; do $loop & LOOPS+=($!); done
if [[ -n $WASM ]]; then kernel_loop & LOOPS+=($!); else echo "soak: no grep.wasm found, kernel loop skipped"; fi
PIDS+=("${LOOPS[@]}")
wait "${LOOPS[@]}" || true

# Stop the device (SIGTERM: it finishes in-flight calls) and summarise.
DIED=0 DEV_RC=0
if alive; then
  kill -TERM "$DEV_PID"
  for _ in $(seq 300); do alive || break; sleep 0.1; done
  alive && { echo "soak: the device did not stop within 30 s of SIGTERM" >&2; DIED=1; kill -KILL "$DEV_PID"; }
else
  DIED=1
fi
wait "$DEV_PID" 2>/dev/null || DEV_RC=$?
DEV_PID=""; wait "$SAMPLER" || true
LEFT=$(find "$DATA/objects" -type f | wc -l)
{
  echo "== nearstore soak: $MINUTES min, device exit status $DEV_RC$( ((DIED)) && echo ', DIED before the end')"
  awk '{n[$2]++; if ($3 != "ok") f[$2]++; ms[$2] += $4; if ($4 > mx[$2]) mx[$2] = $4}
    END {printf "%-16s %7s %6s %8s %8s\n", "operation", "runs", "failed", "avg_ms", "max_ms"
      for (k in n) printf "%-16s %7d %6d %8.0f %8d\n", k, n[k], f[k], ms[k] / n[k], mx[k]}' "$OUT/ops.log" |
    { read -r h; echo "$h"; sort; }
  [[ -s $OUT/errors.log ]] && { echo "failures by operation and message (digits as N):"
    awk '{k = $2; sub(/^[^ ]+ [^ ]+ /, ""); gsub(/[0-9]+/, "N"); print k, $0}' "$OUT/errors.log" |
      sort | uniq -c | sort -rn | head -n 20; }
  echo "object files left in the data dir: $LEFT (lineitem + orders: 4 expected, .parquet + .pi each)"
  awk -F, -v w="$WARMUP" -v e=$((END - T0)) 'NR > 1 && $1 <= e {
      for (c = 2; c <= 3; c++) { if (n == 0 || $c < lo[c]) lo[c] = $c; if ($c > hi[c]) hi[c] = $c; last[c] = $c }
      n++
      if ($1 >= w) { if (!m) { b[2] = $2; b[3] = $3; t0 = $1 }
        m++; x = ($1 - t0) / 60; sx += x; sxx += x * x
        for (c = 2; c <= 3; c++) { sy[c] += $c; sxy[c] += x * $c } } }
    END { split(",rss_kib,fds", name, ",")
      printf "%d samples under load, %d after the %d s warm-up (start = first of those)\n", n, m, w
      printf "%-8s %10s %10s %10s %10s %10s %12s\n", "", "start", "end", "min", "max", "growth", "slope/min"
      for (c = 2; c <= 3; c++) {
        d = m * sxx - sx * sx; s = d > 0 ? (m * sxy[c] - sx * sy[c]) / d : 0
        printf "%-8s %10d %10d %10d %10d %+10d %+12.1f\n", name[c], b[c], last[c], lo[c], hi[c], last[c] - b[c], s } }' \
    "$OUT/samples.csv"
} | tee "$OUT/summary.txt"
FAILED=$(awk '$3 != "ok"' "$OUT/ops.log" | wc -l)
if ((FAILED || DIED || DEV_RC)); then
  echo "soak: FAILED ($FAILED failed operations, see $OUT/errors.log; device died: $DIED, exit $DEV_RC)" >&2
  exit 1
fi
echo "soak: ok"
