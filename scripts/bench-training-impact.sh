#!/usr/bin/env bash
# Sampling latency with and without a training job in the same daemon, measured in one run:
# the same spritectl load (CLIENTS clients, one DDIM-25 sprite per request) first on an idle
# daemon, then while a fine-tuning job of the bundled model runs (training_threads threads).
# The job then runs to its end and its published model (with its generated card) is left in
# $WORK/models/$JOB_MODEL; KEEP=DIR copies the card, grid and loss log there.
# Needs `make build` and the bundled model.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=build/bin
THREADS=${THREADS:-2}
TRAIN_THREADS=${TRAIN_THREADS:-1}
CLIENTS=${CLIENTS:-4}
REQUESTS=${REQUESTS:-6}
EPOCHS=${EPOCHS:-5}
JOB_MODEL=${JOB_MODEL:-sprites16-ft}
PORT=${PORT:-50093}
SERVER=127.0.0.1:$PORT
WORK=$(mktemp -d)

mkdir -p "$WORK/models" "$WORK/data" "$WORK/state"
cp -r models/sprites16 "$WORK/models/"
cp -r ../shared/data/dcss-sprites "$WORK/data/dcss-sprites"  # a copy: links out of the data root are refused
cat >"$WORK/config.json" <<JSON
{"threads": $THREADS, "training_threads": $TRAIN_THREADS, "max_concurrent_jobs": 1}
JSON

$BIN/spritediffd --config "$WORK/config.json" serve --port "$PORT" --models-dir "$WORK/models" \
  --data-root "$WORK/data" --state-dir "$WORK/state" >"$WORK/daemon.log" 2>&1 &
daemon=$!
trap 'kill $daemon 2>/dev/null; wait $daemon 2>/dev/null || true' EXIT
for _ in $(seq 100); do $BIN/spritectl health --server "$SERVER" --connect-timeout 0.2 >/dev/null 2>&1 && break; sleep 0.2; done

load="--server $SERVER --count 1 --steps 25 --guidance 2 --label food --clients $CLIENTS --requests $REQUESTS --json"
$BIN/spritectl bench --server "$SERVER" --count 1 --steps 25 --clients 2 --requests 1 --json >/dev/null  # warm-up
idle=$($BIN/spritectl bench $load)
echo "idle daemon:        $idle"

job=$($BIN/spritectl train submit --server "$SERVER" --name "$JOB_MODEL" --dataset dcss-sprites \
  --base-model sprites16 --epochs "$EPOCHS" --lr 2e-4 --checkpoint-every "$EPOCHS" --class-balance sqrt | awk '{print $1}')
echo "submitted $job (fine-tune of sprites16, $EPOCHS epochs, $TRAIN_THREADS training thread(s))"
until $BIN/spritectl train get --server "$SERVER" "$job" | grep -q '"step"'; do sleep 1; done
busy=$($BIN/spritectl bench $load)
echo "during training:    $busy"

p() { sed -n "s/.*\"latency_ms\":{[^}]*\"$1\":\([-0-9.e+]*\).*/\1/p" <<<"$2"; }
awk -v i50="$(p p50 "$idle")" -v i95="$(p p95 "$idle")" -v b50="$(p p50 "$busy")" -v b95="$(p p95 "$busy")" \
    -v c="$CLIENTS" -v t="$THREADS" -v tt="$TRAIN_THREADS" 'BEGIN {
  printf "\n== sampling latency, %d clients, DDIM-25 guided, %d serving + %d training threads\n", c, t, tt;
  printf "idle:            p50 %7.1f ms   p95 %7.1f ms\n", i50, i95;
  printf "job running:     p50 %7.1f ms   p95 %7.1f ms   (p95 x%.2f)\n", b50, b95, b95 / i95;
}'

echo; echo "== waiting for $job to finish"
$BIN/spritectl train watch --server "$SERVER" "$job" --quiet
if [ -n "${KEEP:-}" ]; then
  mkdir -p "$KEEP"
  cp "$WORK/models/$JOB_MODEL/README.md" "$WORK/models/$JOB_MODEL/samples.png" "$WORK/models/$JOB_MODEL/training-log.csv" "$KEEP/"
  echo "card, grid and loss log copied to $KEEP"
fi
