#!/usr/bin/env bash
# Data-parallel training throughput on this machine: images/s of `spritediffd train` with 1 rank
# and with 2 ranks (c10d Gloo over 127.0.0.1), each rank on one intra-op thread, the same
# per-rank batch; printed as a scaling ratio with the share of rank 0's step time spent waiting
# for all-reduces (what backward did not hide). Goal: >= 1.7x for 2 ranks at batch 64 per rank.
#
#   scripts/bench-distributed.sh                      # batch 64 per rank, n_feat 64, 10 two-rank steps
#   BATCH=32 STEPS=20 NFEAT=32 scripts/bench-distributed.sh
#   PRECISION=fp32 scripts/bench-distributed.sh      # fp32 | bf16 | auto (default: the config's training_precision)
#
# Both runs see the same images (a subset of DATA of 2 * BATCH * STEPS sprites, spread over its
# classes); the first progress report of each run is dropped as warm-up. On a shared machine the
# figures move with the other load: run it on a quiet one and say what else was running.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-build/bin/spritediffd}
DATA=${DATA:-../shared/data/dcss-sprites}
BATCH=${BATCH:-64}
STEPS=${STEPS:-10}
NFEAT=${NFEAT:-64}
LOG_EVERY=${LOG_EVERY:-2}
PRECISION=${PRECISION:-}
[ -x "$BIN" ] || { echo "bench-distributed: $BIN missing (cmake --build build --target spritediffd)" >&2; exit 1; }

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

# The subset: every k-th sprite of DATA, class folders and labels.txt kept.
need=$((2 * BATCH * STEPS))
mapfile -t all < <(cd "$DATA" && find . -mindepth 2 -maxdepth 2 -name '*.png' | sort)
[ "${#all[@]}" -ge "$need" ] || { echo "bench-distributed: $DATA has ${#all[@]} sprites, need $need" >&2; exit 1; }
mkdir -p "$work/data"
[ -e "$DATA/labels.txt" ] && cp "$DATA/labels.txt" "$work/data/"
for ((i = 0; i < need; i++)); do
  f=${all[$((i * ${#all[@]} / need))]}
  mkdir -p "$work/data/$(dirname "$f")"
  cp "$DATA/$f" "$work/data/$f"
done

args=(--threads 1 --device cpu train --data "$work/data" --n-feat "$NFEAT" --epochs 1 --batch-size "$BATCH"
      --grid-per-label 0 --log-every "$LOG_EVERY" --ema-decay 0 ${PRECISION:+--training-precision "$PRECISION"})

# Mean images/s and all-reduce wait share over the progress lines of a log, the first dropped.
figures() {
  grep -o 'images/s.*' "$1" >/dev/null || { echo "bench-distributed: no progress lines in $1" >&2; cat "$1" >&2; exit 1; }
  awk '/ step [0-9]+ loss / {
         for (i = 1; i <= NF; i++) { if ($(i) == "images/s") ips = $(i - 1); if ($(i) == "wait") w = $(i + 1) }
         n++; if (n > 1) { s += ips; sw += w + 0; m++ } }
       END { if (m == 0) { print "0 0" } else { printf "%.2f %.2f\n", s / m, sw / m } }' "$1"
}

echo "bench-distributed: $need sprites, batch $BATCH per rank, n_feat $NFEAT, training precision ${PRECISION:-as configured}, 1 intra-op thread per rank, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
"$BIN" "${args[@]}" --out "$work/one" >"$work/one.log" 2>&1
read -r one_ips _ < <(figures "$work/one.log")

port=$((29500 + RANDOM % 20000))
env_common=(MASTER_ADDR=127.0.0.1 MASTER_PORT=$port WORLD_SIZE=2 LOCAL_RANK=0)
env "${env_common[@]}" RANK=1 "$BIN" "${args[@]}" --out "$work/two-rank1" >"$work/two1.log" 2>&1 &
pids+=($!)
env "${env_common[@]}" RANK=0 "$BIN" "${args[@]}" --out "$work/two" >"$work/two0.log" 2>&1
wait "${pids[0]}"
read -r two_ips wait_share < <(figures "$work/two0.log")

awk -v a="$one_ips" -v b="$two_ips" -v w="$wait_share" -v batch="$BATCH" 'BEGIN {
  printf "1 rank : %8.1f images/s (batch %d)\n", a, batch
  printf "2 ranks: %8.1f images/s (global batch %d)\n", b, 2 * batch
  printf "scaling: %.2fx (goal >= 1.7x); all-reduce wait %.1f%% of rank 0 step time\n", (a > 0 ? b / a : 0), w }'
