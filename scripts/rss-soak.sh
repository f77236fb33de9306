#!/usr/bin/env bash
# Daemon memory (issue 15): RSS of an idle daemon with the bundled model, then RSS sampled
# every 10 s while open-loop load (Poisson arrivals at RATE requests/s, the bench-load.sh mix)
# runs for MINUTES minutes. Prints the idle RSS, the RSS at the end of each half of the load,
# and the growth of the second half over the first (flat = no per-step allocation that grows
# with uptime). Needs `make build` first.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=build/bin
THREADS=${THREADS:-2}
PORT=${PORT:-50094}
RATE=${RATE:-5}
MINUTES=${MINUTES:-10}
LOG=$(mktemp -d)/soak
MIX="--count 1 --label hero --mix-steps 10,25,50 --mix-guidance 1,2,3 --seed 1"

. scripts/daemon-lib.sh
start_daemon "$PORT"
rss() { awk '/^VmRSS/ { print int($2 / 1024) }' /proc/$daemon/status; }
sleep 5
idle=$(rss)
echo "idle RSS with the bundled model: $idle MB (goal < 400)"

half=$((MINUTES * 30))
$BIN/spritectl bench --server "$SERVER" $MIX --rate "$RATE" --duration $((MINUTES * 60)) --json >"$LOG.load" 2>&1 &
load=$!
samples=()
for ((t = 10; t <= MINUTES * 60; t += 10)); do
  sleep 10
  samples+=("$(rss)")
  [ $t -eq $half ] && first=$(rss)
done
wait $load || true
second=$(rss)
echo "RSS samples every 10 s (MB): ${samples[*]}"
echo "RSS after the first half ($((MINUTES / 2)) min): $first MB; after the second: $second MB"
awk -v a="$first" -v b="$second" 'BEGIN { printf "growth over the second half: %.1f%%\n", (b - a) * 100 / a }'
echo "load: $(head -c 700 "$LOG.load")"
