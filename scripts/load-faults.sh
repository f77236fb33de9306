#!/usr/bin/env bash
# Load and faults against a real daemon on loopback, printing the figures docs/performance.md quotes:
#   1. 200 concurrent streams for DURATION seconds, PERIODS times (2): errors, and the daemon's
#      peak and median RSS (sampled every second) in each period, and its settled RSS: 3 s
#      after the period's last wave, once the batch has drained. That is what a period left
#      behind, the figure a leak would move. With tcmalloc it includes the free pages kept for
#      the next wave (they go back only after release_idle_s, 10 s, of idleness); with glibc,
#      release_memory_s has trimmed them. Memory plateaus when a period adds < 5% over the one
#      before.
#   2. 100 clients killed mid-stream (disconnects): the daemon keeps serving, RSS after.
#   3. SIGTERM under load: exit status and seconds to exit.
#   4. kill -9 during checkpoints and publishes of a small training job, KILLS times: after
#      each restart no *.tmp file is left in models/ or state/, and the job ends SUCCEEDED
#      with its model served.
# Needs `make build` (spritediffd, spritectl) and the real sprites. Takes ~3 minutes plus
# 2 x DURATION. Usage: scripts/load-faults.sh   (env: DURATION=60 CLIENTS=200 PERIODS=2 KILLS=5 PORT=50093;
# LOAD_CONFIG=', "field": value' adds config fields;
# STOP_AFTER_LOAD=1 stops after part 1)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=build/bin
DURATION=${DURATION:-60}
CLIENTS=${CLIENTS:-200}
KILLS=${KILLS:-5}
PERIODS=${PERIODS:-2}
PORT=${PORT:-50093}
SERVER=127.0.0.1:$PORT
DATA=${DATA:-../shared/data/dcss-sprites}
WORK=$(mktemp -d /tmp/spritediff-load.XXXXXX)
mkdir -p "$WORK/models" "$WORK/data" "$WORK/state"
cp -r models/sprites16 "$WORK/models/"
daemon=""

start_daemon() {  # start_daemon EXTRA_CONFIG_JSON_FIELDS
  printf '{"max_concurrent_jobs": 1, "shutdown_grace_s": 10, "max_queued_rows": 4096, "max_concurrent_streams": 100 %s %s}\n' \
    "${1:-}" "${LOAD_CONFIG:-}" > "$WORK/config.json"
  $BIN/spritediffd --config "$WORK/config.json" --threads 2 serve --port "$PORT" --models-dir "$WORK/models" \
    --data-root "$WORK/data" --state-dir "$WORK/state" >>"$WORK/daemon.log" 2>&1 &
  daemon=$!
  for _ in $(seq 300); do $BIN/spritectl health --server "$SERVER" --connect-timeout 0.2 >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "daemon did not start; log: $WORK/daemon.log" >&2
  exit 1
}
stop_daemon() { [ -n "$daemon" ] && kill "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null || true; daemon=""; }
cleanup() { stop_daemon; jobs -p | xargs -r kill 2>/dev/null || true; [ "${KEEP_WORK:-0}" = 1 ] || rm -rf "$WORK"; }
trap cleanup EXIT
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
field() { sed -n "s/.*\"$2\": *\([-0-9.e+]*\).*/\1/p" <<<"$1"; }

# Runs CLIENTS concurrent streams (one request each, repeated) for $1 seconds; prints
# "requests errors peak_rss_kb median_rss_kb settled_rss_kb".
load_period() {
  local end=$((SECONDS + $1)) peak=0 requests=0 errors=0 out
  (while [ $SECONDS -lt $end ]; do r=$(rss_kb "$daemon"); echo "$r"; sleep 1; done) > "$WORK/rss" &
  local sampler=$!
  while [ $SECONDS -lt $end ]; do
    # bench exits 1 when any request failed; its JSON line (with the error count) is what we want
    out=$({ $BIN/spritectl bench --server "$SERVER" --clients "$CLIENTS" --requests 1 --count 1 --steps 10 \
          --frame-every 2 --label food --json 2>&1 || true; } | tail -1)
    local n ok
    n=$(field "$out" requests | cut -d. -f1); ok=$(field "$out" ok | cut -d. -f1)
    requests=$((requests + ${n:-0}))
    errors=$((errors + ${n:-$CLIENTS} - ${ok:-0}))
    # what failed, by status code, for the summary (the JSON's "errors" map, or bench's own words)
    [ "${n:-$CLIENTS}" = "${ok:-0}" ] || { grep -o '"errors":{[^}]*}' <<<"$out" || echo "$out"; } >> "$WORK/errors"
  done
  wait $sampler || true
  peak=$(sort -n "$WORK/rss" | tail -1)
  median=$(sort -n "$WORK/rss" | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
  sleep 3
  echo "$requests $errors $peak $median $(rss_kb "$daemon")"
}

echo "== 1. $CLIENTS concurrent streams, $PERIODS periods of ${DURATION}s (work dir $WORK)"
start_daemon
errors=0 prev=0 prev_m=0 prev_s=0 growth=0 mgrowth=0 sgrowth=0
pct() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (b - a) * 100.0 / a }'; }
for k in $(seq "$PERIODS"); do
  read -r r e p m settled < <(load_period "$DURATION")
  errors=$((errors + e))
  if [ "$prev" -gt 0 ]; then
    growth=$(pct "$prev" "$p") mgrowth=$(pct "$prev_m" "$m") sgrowth=$(pct "$prev_s" "$settled")
    echo "period $k: $r requests, $e errors, RSS peak $((p / 1024)) MiB (${growth}% over period $((k - 1))), median $((m / 1024)) MiB (${mgrowth}%), settled $((settled / 1024)) MiB (${sgrowth}%)"
  else
    echo "period $k: $r requests, $e errors, RSS peak $((p / 1024)) MiB, median $((m / 1024)) MiB, settled $((settled / 1024)) MiB"
  fi
  prev=$p prev_m=$m prev_s=$settled
done
if [ -s "$WORK/errors" ]; then echo "failed requests, per bench round:"; sort "$WORK/errors" | uniq -c; fi
[ "${STOP_AFTER_LOAD:-0}" = 1 ] && exit 0

echo "== 2. 100 clients killed mid-stream"
before=$(rss_kb "$daemon")
pids=()
for i in $(seq 100); do
  $BIN/spritectl sample --server "$SERVER" --count 4 --steps 200 --sampler ddpm --label hero --out "$WORK/out-$i" \
    >/dev/null 2>&1 &
  pids+=($!)
  disown $!  # no "Killed" line per client
done
sleep 2
kill -9 "${pids[@]}" 2>/dev/null || true
sleep 3
if $BIN/spritectl sample --server "$SERVER" --count 1 --steps 5 --out "$WORK/after" >/dev/null 2>&1; then ok=yes; else ok=no; fi
echo "serving after 100 disconnects: $ok; RSS $((before / 1024)) -> $(( $(rss_kb "$daemon") / 1024 )) MiB"

echo "== 3. SIGTERM under load"
$BIN/spritectl bench --server "$SERVER" --clients 50 --requests 20 --count 1 --steps 25 --label food --json \
  >"$WORK/bench-term" 2>&1 &
bench=$!
sleep 2
t0=$(date +%s.%N)
kill -TERM "$daemon"
set +e; wait "$daemon"; status=$?; set -e
t1=$(date +%s.%N)
daemon=""
wait $bench 2>/dev/null || true
echo "exit status $status after $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }') s (grace 10 s)"

echo "== 4. kill -9 during checkpoints and publish, $KILLS times"
mkdir -p "$WORK/data/mini"
cp "$DATA/labels.txt" "$WORK/data/mini/"
for cls in $(cat "$DATA/labels.txt"); do
  mkdir -p "$WORK/data/mini/$cls"
  # sed, not head: head's early exit would kill ls with SIGPIPE, and pipefail the script
  ls "$DATA/$cls" | sed -n 1,8p | while read -r f; do cp "$DATA/$cls/$f" "$WORK/data/mini/$cls/"; done
done
start_daemon
id=$($BIN/spritectl train submit --server "$SERVER" --name crashy --dataset mini --n-feat 16 --epochs 40 \
     --batch-size 8 --checkpoint-every 1 | grep -o 'job-[0-9]*' | head -1)
leftovers=0
for k in $(seq "$KILLS"); do
  sleep "$(awk -v k="$k" 'BEGIN { srand(k); printf "%.2f", 0.5 + rand() * 2 }')"
  kill -9 "$daemon"; wait "$daemon" 2>/dev/null || true; daemon=""
  start_daemon
  n=$(find "$WORK/models" "$WORK/state" -name '*.tmp' | wc -l)
  leftovers=$((leftovers + n))
  state=$($BIN/spritectl train get --server "$SERVER" "$id" | sed -n 's/.*"state": *"\([A-Z_]*\)".*/\1/p' | head -1)
  echo "kill $k: restarted, $n temporaries after the sweep, job $id $state"
done
$BIN/spritectl train watch --server "$SERVER" "$id" >/dev/null 2>&1 && final=SUCCEEDED || final=not-succeeded
served=$($BIN/spritectl models --server "$SERVER" | grep -c crashy || true)
orphans=$(ls "$WORK/models/crashy" 2>/dev/null | grep -c '^weights-' || true)
resumes=$($BIN/spritectl train get --server "$SERVER" "$id" | sed -n 's/.*"resumes": *\([0-9]*\).*/\1/p' | head -1)
card=$(sed -n 's/^| resumed after daemon restarts[^|]*| \([0-9]*\) |$/\1/p' "$WORK/models/crashy/README.md" 2>/dev/null)
echo "after $KILLS kill -9: job $final, model served: $served, weights files in its dir: $orphans, temporaries seen: $leftovers"
echo "resumes: GetJob ${resumes:-0}, model card ${card:-missing}"
stop_daemon
echo "== figures: streams $CLIENTS, errors $errors, RSS growth ${growth}% peak, ${mgrowth}% median, ${sgrowth}% settled (last period over the one before), SIGTERM exit $status, kill -9 temporaries $leftovers"
