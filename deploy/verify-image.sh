#!/usr/bin/env bash
# Builds docker/Dockerfile without a docker engine (Debian's buildah, chroot isolation, on a
# bookworm base made with debootstrap; see ../shared/notes/containers.md), starts the daemon
# from the image, and checks from outside that the health service answers and that a sample
# request returns sprites. Prints each check. Needs root. Slow (a full build): not a CTest.
# REUSE_IMAGE=1 skips the build when spritediff:cpu already exists.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-50061}
ROOTFS=${ROOTFS:-/var/tmp/spritediff-bookworm-rootfs}

step() { printf '\n== %s\n' "$*"; }

step "tools: buildah, podman, debootstrap"
command -v buildah >/dev/null && command -v debootstrap >/dev/null && command -v podman >/dev/null || \
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah podman debootstrap >/dev/null

if ! podman image exists docker.io/library/debian:bookworm-slim; then
  step "base image: debootstrap --variant=minbase bookworm (close to, not the same as, the official slim image)"
  MIRROR=$(sed -n 's/^URIs: //p' /etc/apt/sources.list.d/debian.sources | head -1)
  rm -rf "$ROOTFS"
  debootstrap --variant=minbase bookworm "$ROOTFS" "$MIRROR" >/dev/null
  tar -C "$ROOTFS" -c . | podman import - localhost/debian:bookworm-slim >/dev/null
  podman tag localhost/debian:bookworm-slim docker.io/library/debian:bookworm-slim
fi

if [ "${REUSE_IMAGE:-0}" = 1 ] && buildah inspect --type image spritediff:cpu >/dev/null 2>&1; then
  step "build: skipped (REUSE_IMAGE=1), using the existing spritediff:cpu"
else
  step "build: buildah bud -f docker/Dockerfile -t spritediff:cpu ."
  buildah bud --pull=never --isolation chroot --format docker -t spritediff:cpu -f docker/Dockerfile .  # docker format keeps HEALTHCHECK
fi

step "secrets: a throwaway CA, server certificate and tokens (as deploy/README.md makes them)"
sec=$(mktemp -d)
(
  cd "$sec"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -keyout ca.key -out spritediff-ca.crt -subj /CN=verify-ca 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout spritediff-tls.key \
    -out tls.csr -subj /CN=spritediff 2>/dev/null
  printf 'subjectAltName=DNS:spritediff,IP:127.0.0.1\n' > tls.ext
  openssl x509 -req -in tls.csr -CA spritediff-ca.crt -CAkey ca.key -CAcreateserial -days 2 \
    -out spritediff-tls.crt -extfile tls.ext 2>/dev/null
  openssl rand -hex 32 > admin.token
  printf 'admin %s verify\n' "$(tr -d '\n' < admin.token | sha256sum | cut -d' ' -f1)" > spritediff-tokens
  chmod 644 ./*  # read by the image's uid 10001; throwaway files
)
chmod 755 "$sec"  # mktemp -d makes it 0700: uid 10001 could not reach the files inside
conn="--server 127.0.0.1:$PORT --tls-ca $sec/spritediff-ca.crt --tls-server-name spritediff"

step "run: spritediffd serve from the image on port $PORT"
c=$(buildah from spritediff:cpu)
cleanup() { pkill -f "spritediffd --config configs/container.json serve --port $PORT" 2>/dev/null || true; buildah rm "$c" >/dev/null 2>&1 || true; }
trap cleanup EXIT
# A small copy of the real sprites (4 per class) as a training dataset inside the container.
mini=$(mktemp -d)
for cls in $(cat ../shared/data/dcss-sprites/labels.txt); do
  files=(../shared/data/dcss-sprites/"$cls"/*.png)  # not ls | head: SIGPIPE under pipefail
  mkdir -p "$mini/$cls"; cp "${files[@]:0:4}" "$mini/$cls/"
done
cp ../shared/data/dcss-sprites/labels.txt "$mini/"
buildah copy --chown spritediff:spritediff "$c" "$mini" /srv/spritediff/data/mini >/dev/null
buildah run --isolation chroot --user spritediff --workingdir /srv/spritediff -v "$sec:/run/secrets:ro" "$c" -- \
  spritediffd --config configs/container.json serve --port "$PORT" > /tmp/spritediff-image.log 2>&1 &
for _ in $(seq 120); do
  build/bin/spritectl health $conn --connect-timeout 0.5 >/dev/null 2>&1 && break
  sleep 1
done

step "check: health from outside the image (host spritectl)"
build/bin/spritectl health $conn
step "check: a request without a token is refused (UNAUTHENTICATED)"
refused=$(build/bin/spritectl models $conn 2>&1 || true)
echo "$refused"
grep -q UNAUTHENTICATED <<<"$refused"
step "check: health with the image's own spritectl (the HEALTHCHECK command)"
buildah run --isolation chroot -v "$sec:/run/secrets:ro" "$c" -- spritectl health --server "127.0.0.1:$PORT" \
  --tls-ca /run/secrets/spritediff-ca.crt --tls-server-name spritediff
step "check: a sample request returns sprites"
out=$(mktemp -d)
build/bin/spritectl sample $conn --token-file "$sec/admin.token" --label food --count 4 --quiet --out "$out"
ls "$out"
test -s "$out/sprite-003.png" && test -s "$out/grid.png"
step "check: a training job runs inside the image and its model is served at once"
build/bin/spritectl train submit $conn --token-file "$sec/admin.token" --name verify-mini --dataset mini --n-feat 8 \
  --epochs 2 --batch-size 8 --checkpoint-every 1 --watch --quiet
build/bin/spritectl sample $conn --token-file "$sec/admin.token" --model verify-mini --label food --count 2 --steps 5 --quiet --out "$out/mini"
test -s "$out/mini/sprite-001.png"
step "check: the daemon runs as a non-root user (the image has no shell or id: read its uid from /proc)"
# the daemon itself (argv[0] as the runtime resolved it), not buildah's processes that name it
pid=$(pgrep -f "^(/usr/local/bin/)?spritediffd --config configs/container.json serve --port $PORT" | head -1)
uid=$(awk '/^Uid:/ { print $2 }' "/proc/$pid/status")
echo "daemon pid $pid uid $uid"
test "$uid" != 0
step "check: image size (goal < 600 MB)"
size=$(podman image inspect spritediff:cpu --format '{{.Size}}')
awk -v s="$size" 'BEGIN { printf "spritediff:cpu is %.0f MB\n", s / 1e6; exit !(s < 600e6) }'
echo; echo "verify-image: all checks passed (daemon log: /tmp/spritediff-image.log)"
