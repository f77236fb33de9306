#!/usr/bin/env bash
# Prints the serving figures of docs/performance.md ("Serving"), all measured in one run on
# this machine: offline batch-32 DDIM-25 sampling, the daemon under 32 concurrent
# one-sprite clients, the daemon one request at a time, and the time to first frame for a
# request that arrives while a DDPM-500 batch is running. The daemon runs with CONFIG if set,
# else the built-in defaults (docs/configuration.md). Needs `make build` first.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=build/bin
THREADS=${THREADS:-2}
MODEL=${MODEL:-sprites16}
GUIDANCE=${GUIDANCE:-2}
PORT=${PORT:-50091}
SERVER=127.0.0.1:$PORT
LOG=$(mktemp -d)/bench

field() {  # field JSON KEY [SUBKEY]: a number from one line of JSON
  if [ $# -eq 3 ]; then
    sed -n "s/.*\"$2\": *{[^}]*\"$3\": *\([-0-9.e+]*\).*/\1/p" <<<"$1"
  else
    sed -n "s/.*\"$2\": *\([-0-9.e+]*\).*/\1/p" <<<"$1"
  fi
}

echo "== offline: spritediffd bench (threads $THREADS, model $MODEL)"
offline=$($BIN/spritediffd --threads "$THREADS" bench --model "$MODEL" --batches 1,4,16,32,64 --ddim-batch 32 --steps 25 | tee /dev/stderr | tail -1)
if [ "$GUIDANCE" = "1" ]; then offline_sps=$(field "$offline" ddim_samples_per_s); else offline_sps=$(field "$offline" ddim_guided_samples_per_s); fi

echo "== daemon on $SERVER${CONFIG:+ (config $CONFIG)}"
. scripts/daemon-lib.sh
start_daemon "$PORT"

common="--server $SERVER --count 1 --steps 25 --guidance $GUIDANCE --label food"
$BIN/spritectl bench $common --clients 4 --requests 1 --json >/dev/null  # warm-up
concurrent=$($BIN/spritectl bench $common --clients 32 --requests 3 --json)
echo "32 clients x 3 requests: $concurrent"
sequential=$($BIN/spritectl bench $common --clients 1 --requests 8 --json)
echo "1 client x 8 requests:   $sequential"

# A DDPM-500 batch of 32 rows runs in the background; a DDIM request arrives during it.
$BIN/spritectl sample --server "$SERVER" --sampler ddpm --count 32 --guidance "$GUIDANCE" --label hero \
  --frame-every 0 --quiet --timeout 3600 --out "$LOG.ddpm" >/dev/null &
background=$!
sleep 3
probe=$($BIN/spritectl bench $common --clients 1 --requests 5 --frame-every 1 --json)
echo "probe during DDPM-500:   $probe"
kill $background 2>/dev/null || true
wait $background 2>/dev/null || true

conc_sps=$(field "$concurrent" sprites_per_s)
seq_sps=$(field "$sequential" sprites_per_s)
ttff=$(field "$probe" first_event_ms p50)
probe_run=$(field "$probe" server_run_ms p50)
awk -v off="$offline_sps" -v conc="$conc_sps" -v seq="$seq_sps" -v ttff="$ttff" -v run="$probe_run" -v g="$GUIDANCE" 'BEGIN {
  step = run / 25;
  printf "\n== summary (guidance %s, DDIM-25, one sprite per request)\n", g;
  printf "offline batch-32 sampling:           %8.2f sprites/s\n", off;
  printf "daemon, 32 concurrent clients:        %8.2f sprites/s  (%.2f x offline batch-32; goal >= 0.85)\n", conc, conc / off;
  printf "daemon, one request at a time:        %8.2f sprites/s  (32 clients are %.1f x this; goal >= 10)\n", seq, conc / seq;
  printf "first frame during a DDPM-500 batch:  %8.1f ms = %.2f step times of %.1f ms (goal <= 3)\n", ttff, ttff / step, step;
}'

# Side by side with the course's PyTorch model (../shared/reference/course_ref.py), same
# thread count, unguided DDIM-25 at batch 32, run right after ours; skipped without
# Debian's python3-torch.
REF=../shared/reference/course_ref.py
if [ -f "$REF" ] && /usr/bin/python3 -c 'import torch' 2>/dev/null; then
  ref=$(/usr/bin/python3 "$REF" --threads "$THREADS" --batch 32 --only-ddim)
  echo "course reference (PyTorch): $ref"
  awk -v ours="$(field "$offline" ddim_samples_per_s)" -v ref="$(field "$ref" ddim_samples_per_s)" 'BEGIN {
    printf "offline unguided DDIM-25, batch 32:   %8.2f sprites/s  (course PyTorch model: %.2f; ratio %.2f)\n", ours, ref, ours / ref;
  }'
else
  echo "(course reference skipped: needs $REF and /usr/bin/python3 with torch: apt-get install python3-torch)"
fi
