#!/usr/bin/env bash
# Installs the Debian packages spritediff builds and runs with. Idempotent: packages that
# are already installed are skipped, so a second run does nothing and needs no network.
set -euo pipefail

PACKAGES=(
  libgloo-dev
  build-essential cmake pkg-config
  libtorch-dev
  # libtorch calls BLAS through libblas.so.3; without this Debian gives it the reference
  # netlib BLAS, which makes a batch-1 forward ~7x and DDIM sampling ~1.6x slower here.
  libopenblas0-openmp
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libspdlog-dev nlohmann-json3-dev libpng-dev libgif-dev
  libcli11-dev libcpp-httplib-dev
  libgtest-dev
  libgoogle-perftools-dev  # tcmalloc_minimal: RSS that plateaus under load (CMakeLists.txt)
  libssl-dev   # SHA-256 and the CSPRNG for bearer tokens (server/auth.cc)
  openssl      # the auth tests make a throwaway CA and certificates with its CLI
  python3 python3-yaml
  clang        # make thread-safety: clang's -Wthread-safety over the daemon (scripts/thread-safety.sh)
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "install-deps: need root or sudo to install: ${missing[*]}" >&2; exit 1
  fi
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
