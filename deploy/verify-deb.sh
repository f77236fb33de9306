#!/usr/bin/env bash
# Installs the Debian package (`make deb`) on a bare Debian 12 root file system (debootstrap
# minbase: nothing else installed by hand; apt brings the package's dependencies from the
# mirror) and proves it, printing each check:
#   the unit passes `systemd-analyze verify`; the package made its user, config and state;
#   the daemon started as the unit starts it (user spritediff, from /, no flags but the port)
#   reads the installed config, answers health, returns sprites, and runs a training job whose
#   model lands in the state directory and is served at once; SIGTERM stops it with exit 0.
# No container engine is needed: the root is entered with chroot (the daemon shares the host's
# network; it listens on 127.0.0.1:$PORT). Needs root and the network to a Debian mirror. Slow
# (debootstrap and the dependencies' download): not a CTest.
#   DEB=build/spritediff_0.1.0_amd64.deb BASE=/var/tmp/spritediff-deb-base deploy/verify-deb.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DEB=${DEB:-$(ls -t build/spritediff_*.deb 2>/dev/null | head -1)}
BASE=${BASE:-/var/tmp/spritediff-deb-base}   # a pristine debootstrap, kept between runs
ROOT=${ROOT:-/var/tmp/spritediff-deb-root}   # a fresh copy of it for each run
PORT=${PORT:-50071}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
DATA=${DATA:-../shared/data/dcss-sprites}

step() { printf '\n== %s\n' "$*"; }
failures=0
check() {  # check DESCRIPTION COMMAND...
  local what=$1; shift
  if "$@" >/dev/null 2>&1; then echo "ok   $what"; else echo "FAIL $what"; failures=$((failures + 1)); fi
}
in_root() { chroot "$ROOT" "$@"; }

[ -n "$DEB" ] && [ -f "$DEB" ] || { echo "verify-deb: no package; run make deb (or set DEB)" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "verify-deb: needs root (debootstrap, chroot)" >&2; exit 1; }

step "bare Debian 12: debootstrap --variant=minbase bookworm ($BASE)"
command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
if [ ! -x "$BASE/usr/bin/apt-get" ]; then
  rm -rf "$BASE"
  debootstrap --variant=minbase bookworm "$BASE" "$MIRROR" >/dev/null
fi
umount_all() {
  for m in proc sys dev/pts dev; do umount -l "$ROOT/$m" 2>/dev/null || true; done
}
cleanup() {
  [ -n "${daemon:-}" ] && kill "$daemon" 2>/dev/null || true
  umount_all
}
trap cleanup EXIT
umount_all
rm -rf "$ROOT"
cp -a "$BASE" "$ROOT"
mount -t proc proc "$ROOT/proc"
mount --rbind /sys "$ROOT/sys"
mount --rbind /dev "$ROOT/dev"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
echo "packages before: $(in_root dpkg-query -W | wc -l)"

step "apt-get install ./$(basename "$DEB") (dependencies from the mirror)"
cp "$DEB" "$ROOT/tmp/spritediff.deb"
in_root apt-get update -qq
# policy-rc.d: no init system runs in the chroot; the unit is exercised by hand below.
DEBIAN_FRONTEND=noninteractive in_root apt-get install -y -qq --no-install-recommends /tmp/spritediff.deb > /tmp/verify-deb-apt.log 2>&1 \
  || { tail -20 /tmp/verify-deb-apt.log; exit 1; }
echo "packages after: $(in_root dpkg-query -W | wc -l); $(in_root dpkg-query -W -f='${Package} ${Version} ${Installed-Size} KiB\n' spritediff)"
in_root dpkg-query -W -f='${Depends}\n' spritediff | tr ',' '\n' | sed -n 's/^ */  depends: /; 1,40p'

step "what the package installed"
check "/usr/bin/spritediffd and /usr/bin/spritectl" in_root test -x /usr/bin/spritediffd -a -x /usr/bin/spritectl
check "/etc/spritediff/config.json is a conffile" sh -c "chroot '$ROOT' dpkg-query -W -f='\${Conffiles}' spritediff | grep -q /etc/spritediff/config.json"
check "system user spritediff" in_root getent passwd spritediff
check "bundled model copied to /var/lib/spritediff/models/sprites16" in_root test -f /var/lib/spritediff/models/sprites16/model.json
check "docs under /usr/share/doc/spritediff" in_root test -f /usr/share/doc/spritediff/docs/configuration.md
check "unit /lib/systemd/system/spritediff.service" in_root test -f /lib/systemd/system/spritediff.service
in_root /usr/bin/spritediffd config | sed -n '1,2p'

step "the daemon as the unit starts it: user spritediff, from /, the installed config"
mkdir -p "$ROOT/var/lib/spritediff/data/mini"
for cls in "$DATA"/*/; do
  c=$(basename "$cls"); mkdir -p "$ROOT/var/lib/spritediff/data/mini/$c"
  find "$cls" -maxdepth 1 -name '*.png' | sort | sed -n '1,8p' | xargs -I{} cp {} "$ROOT/var/lib/spritediff/data/mini/$c/"
done
[ -f "$DATA/labels.txt" ] && cp "$DATA/labels.txt" "$ROOT/var/lib/spritediff/data/mini/"
in_root chown -R spritediff:spritediff /var/lib/spritediff/data
chroot --userspec=spritediff:spritediff "$ROOT" sh -c "cd / && exec /usr/bin/spritediffd --threads 2 serve --port $PORT" \
  > /tmp/verify-deb-daemon.log 2>&1 &
daemon=$!
for _ in $(seq 300); do
  in_root spritectl health --server "127.0.0.1:$PORT" --connect-timeout 0.2 >/dev/null 2>&1 && break
  sleep 0.2
done
grep -m1 "listening on" /tmp/verify-deb-daemon.log || true
check "health answers" in_root spritectl health --server "127.0.0.1:$PORT"
check "start-up line names the installed config" grep -q "config /etc/spritediff/config.json (installed)" /tmp/verify-deb-daemon.log
check "sample: 4 food sprites" sh -c "chroot '$ROOT' spritectl sample --server 127.0.0.1:$PORT --label food --count 4 --seed 7 --quiet --out /tmp/out && [ \$(ls '$ROOT'/tmp/out/sprite-*.png | wc -l) -eq 4 ]"
check "training job mini (1 epoch) succeeds" in_root spritectl train submit --server "127.0.0.1:$PORT" --name mini \
  --dataset mini --epochs 1 --batch-size 8 --n-feat 16 --watch --quiet
check "its model is in the state directory's models" in_root test -f /var/lib/spritediff/models/mini/model.json
check "its job record is under /var/lib/spritediff/state" sh -c "ls '$ROOT'/var/lib/spritediff/state/jobs/*/job.json"
check "the new model is served at once" sh -c "chroot '$ROOT' spritectl models --server 127.0.0.1:$PORT | grep -q mini"
check "files the daemon wrote belong to spritediff" sh -c "[ -z \"\$(find '$ROOT'/var/lib/spritediff ! -user \$(chroot '$ROOT' id -u spritediff) -newer '$ROOT/tmp/spritediff.deb')\" ]"
kill -TERM "$daemon"
rc=0; wait "$daemon" || rc=$?
daemon=""
check "SIGTERM: exit 0" test "$rc" -eq 0

step "systemd-analyze verify spritediff.service (systemd installed into the root for this check only)"
DEBIAN_FRONTEND=noninteractive in_root apt-get install -y -qq --no-install-recommends systemd > /tmp/verify-deb-systemd.log 2>&1 \
  || tail -5 /tmp/verify-deb-systemd.log
if in_root systemd-analyze verify /lib/systemd/system/spritediff.service; then
  echo "ok   systemd-analyze verify spritediff.service"
else
  echo "FAIL systemd-analyze verify spritediff.service"; failures=$((failures + 1))
fi
in_root systemd-analyze security --offline=yes --no-pager /lib/systemd/system/spritediff.service > /tmp/verify-deb-security.log 2>&1 || true
grep -m1 "Overall exposure level" /tmp/verify-deb-security.log || true

step "result"
if [ "$failures" -eq 0 ]; then echo "verify-deb: every check passed"; else echo "verify-deb: $failures check(s) failed"; exit 1; fi
