# Sourced by the load scripts and gpu-check.sh.

# wait_health PORT [PID [TRIES]]: returns 0 once the daemon on 127.0.0.1:PORT answers its
# health check ($SPRITECTL, else build/bin/spritectl); 1 after TRIES tries 0.2 s apart (150 if
# not given), or at once when process PID has ended.
wait_health() {
  for _ in $(seq "${3:-150}"); do
    "${SPRITECTL:-build/bin/spritectl}" health --server "127.0.0.1:$1" --connect-timeout 0.2 >/dev/null 2>&1 && return 0
    [ -z "${2:-}" ] || kill -0 "$2" 2>/dev/null || return 1
    sleep 0.2
  done
  return 1
}

# start_daemon PORT starts build/bin/spritediffd serve on 127.0.0.1:PORT (THREADS intra-op
# threads, CONFIG if set, /metrics off), stops it on exit, and returns once its health service
# answers. Sets $daemon (the pid) and $SERVER.
start_daemon() {
  SERVER=127.0.0.1:$1
  build/bin/spritediffd --threads "${THREADS:-2}" ${CONFIG:+--config "$CONFIG"} serve --port "$1" --metrics-port 0 \
    >"${LOG:-/tmp/spritediff}.daemon" 2>&1 &
  daemon=$!
  trap 'kill $daemon 2>/dev/null; wait $daemon 2>/dev/null || true' EXIT
  wait_health "$1" "$daemon" 100 && return 0
  echo "the daemon did not answer on $SERVER; its log: ${LOG:-/tmp/spritediff}.daemon" >&2
  return 1
}
