# Sourced by the load scripts: start_daemon PORT starts build/bin/spritediffd serve on
# 127.0.0.1:PORT (THREADS intra-op threads, CONFIG if set, /metrics off), stops it on exit,
# and returns once its health service answers. Sets $daemon (the pid) and $SERVER.
start_daemon() {
  SERVER=127.0.0.1:$1
  build/bin/spritediffd --threads "${THREADS:-2}" ${CONFIG:+--config "$CONFIG"} serve --port "$1" --metrics-port 0 \
    >"${LOG:-/tmp/spritediff}.daemon" 2>&1 &
  daemon=$!
  trap 'kill $daemon 2>/dev/null; wait $daemon 2>/dev/null || true' EXIT
  for _ in $(seq 100); do
    build/bin/spritectl health --server "$SERVER" --connect-timeout 0.2 >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "the daemon did not answer on $SERVER; its log: ${LOG:-/tmp/spritediff}.daemon" >&2
  return 1
}
