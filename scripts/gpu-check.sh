#!/usr/bin/env bash
# One prepared run on a GPU machine lent through the `device` tool (issues 12 and 15):
#   1. builds spritediffd and spritectl against the machine's CUDA libtorch (its PyTorch's), with
#      Debian 12's .debs (spdlog, fmt, nlohmann-json, CLI11, libpng; gRPC, Protobuf, cpp-httplib
#      and theirs from .gpu/debs-server) unpacked beside it; without .gpu/debs-server, or where
#      that build fails, the offline spritediffd alone (SPRITEDIFF_OFFLINE_ONLY); then starts the
#      daemon and, where it does not answer its health check, prints a backtrace (cuda-gdb);
#   2. bench on cuda: batch-1 step time (pipelined and waited for) and DDIM rows/s eager vs CUDA
#      graphs (plain, BatchNorm folded, NCHW, cuDNN's autotuner), training images/s, and the
#      same fixed seeds on GPU (eager, graphs) and CPU, max pixel difference;
#   3. with the daemon built: the same requests (DDIM and DDPM, fixed seeds) to a daemon on cuda:0
#      and one on the CPU (fp32), max pixel difference, then bench-serving.sh and bench-load.sh
#      (CAP_CLIENTS 64, 20 s a level) against the daemon on cuda:0;
#   4. measures the bundled model with the quality meter (spritediffd eval) and, with TRAIN_OUT and
#      TRAIN_ARGS set, trains a model on the GPU and measures it.
# Everything it prints goes to $OUT/gpu-check.log; weights and the training state come back
# under $OUT (16 MiB a file: the state is split). Prepare the carried folder first, here:
#   scripts/gpu-check.sh --prepare     (writes .gpu/: debs, the data set, the meter's cache)
# then run on the device: bash scripts/gpu-check.sh   with carry [".gpu"].
set -u
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--prepare" ]; then
  set -e
  grep -qx '/.gpu/' .git/info/exclude || echo '/.gpu/' >> .git/info/exclude
  mkdir -p .gpu/debs .gpu/data .gpu/evalcache
  (cd .gpu/debs && apt-get download libspdlog-dev libspdlog1.10 libfmt-dev libfmt9 nlohmann-json3-dev \
     libcli11-dev libpng-dev libpng16-16 zlib1g-dev zlib1g)
  # The daemon and spritectl (gRPC, Protobuf, cpp-httplib, GoogleTest for CMake's checks), so the
  # run also builds and serves there; without this folder it builds the offline spritediffd alone.
  mkdir -p .gpu/debs-server
  (cd .gpu/debs-server && apt-get download libgrpc29 libgrpc++1.51 libgrpc-dev libgrpc++-dev \
     protobuf-compiler-grpc protobuf-compiler libprotoc32 libprotobuf32 libprotobuf-lite32 libprotobuf-dev \
     libabsl20220623 libabsl-dev libc-ares2 libc-ares-dev libre2-9 libre2-dev libssl3 libssl-dev \
     libcpp-httplib0.11 libcpp-httplib-dev libbrotli1 libbrotli-dev libgif7 libgif-dev libgtest-dev libgmock-dev \
     pkgconf pkgconf-bin libpkgconf3)
  cp -r ../shared/data/dcss-sprites .gpu/data/
  [ -d "${EVAL_CACHE:-state/eval-cache}" ] && cp -r "${EVAL_CACHE:-state/eval-cache}"/. .gpu/evalcache/
  du -sh .gpu
  exit 0
fi

OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu-check.log") 2>&1
T0=$(date +%s)
DEADLINE=${DEADLINE:-520}   # seconds: past it, optional steps are skipped
el() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
left() { echo $(( DEADLINE - ($(date +%s) - T0) )); }
JOBS=$(nproc)

el "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))'
g++ --version | head -1; cmake --version | head -1; command -v ninja nvcc

DEPS=/tmp/spritediff-deps
mkdir -p $DEPS
for f in .gpu/debs/*.deb; do dpkg -x "$f" $DEPS; done
SERVER=OFF
if ls .gpu/debs-server/*.deb > /dev/null 2>&1; then
  for f in .gpu/debs-server/*.deb; do dpkg -x "$f" $DEPS; done
  SERVER=ON
  # cpp-httplib is found through pkg-config: only the unpacked .pc files, their paths under $DEPS.
  export PKG_CONFIG_LIBDIR=$DEPS/usr/lib/x86_64-linux-gnu/pkgconfig:$DEPS/usr/share/pkgconfig PKG_CONFIG_SYSROOT_DIR=$DEPS
  export PATH=$DEPS/usr/bin:$PATH
fi
TORCH_DIR=$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))')
export LD_LIBRARY_PATH=$DEPS/usr/lib/x86_64-linux-gnu:$TORCH_DIR/lib:${LD_LIBRARY_PATH:-}
CUDA_ROOT=$(dirname "$(dirname "$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)")")
BIN=build-gpu/bin/spritediffd

LOGS=/tmp/spritediff-logs   # build logs stay there; their errors are printed (8 files come back)
mkdir -p $LOGS
GEN="Unix Makefiles"; command -v ninja > /dev/null && GEN=Ninja
cmake_build() {  # $1: ON|OFF for SPRITEDIFF_DISTRIBUTED; $2: ON for the daemon and spritectl too
  local targets="spritediffd"; [ "${2:-OFF}" = ON ] && targets="spritediffd spritectl"
  rm -f build-gpu/CMakeCache.txt
  cmake -S . -B build-gpu -G "$GEN" -DCMAKE_BUILD_TYPE=Release -DSPRITEDIFF_OFFLINE_ONLY=$([ "${2:-OFF}" = ON ] && echo OFF || echo ON) \
    -DSPRITEDIFF_TCMALLOC=OFF -DPKG_CONFIG_EXECUTABLE=$DEPS/usr/bin/pkgconf \
    -DSPRITEDIFF_DISTRIBUTED="$1" -DCMAKE_PREFIX_PATH="$TORCH_DIR/share/cmake;$DEPS/usr" \
    -DCUDAToolkit_ROOT="$CUDA_ROOT" -DCMAKE_CUDA_COMPILER="$CUDA_ROOT/bin/nvcc" > $LOGS/cmake.log 2>&1 \
    || { tail -30 $LOGS/cmake.log; return 2; }
  grep -i "spritediff:\|cuda\|warn" $LOGS/cmake.log | head -12
  local keep="-k"; [ "$GEN" = Ninja ] && keep="-k 0"
  cmake --build build-gpu -j "$JOBS" --target $targets -- $keep > $LOGS/build.log 2>&1 \
    || { grep "error:" $LOGS/build.log | sort -u | head -20; grep -B2 -A8 "error" $LOGS/build.log | head -60; return 1; }
}

manual_build() {  # no CMake: g++ straight against the wheel's headers and libraries
  # Debian's headers first: the wheel ships its own (newer) fmt, which Debian's spdlog cannot use.
  local inc="-I. -I$DEPS/usr/include -I$DEPS/usr/include/libpng16 -I$TORCH_DIR/include \
    -I$TORCH_DIR/include/torch/csrc/api/include -I$CUDA_ROOT/include"
  local defs="-DSPRITEDIFF_OFFLINE_ONLY=1 -DSPRITEDIFF_NO_DISTRIBUTED=1 -D_GLIBCXX_USE_CXX11_ABI=1"
  mkdir -p build-gpu/obj build-gpu/bin
  local srcs="common/image.cc common/file_util.cc common/labels.cc common/config.cc common/client_text.cc
    $(ls core/*.cc) commands/command_common.cc commands/train_command.cc commands/sample_command.cc
    commands/bench_command.cc commands/import_command.cc commands/preview_command.cc commands/eval_command.cc
    server/main.cc"
  echo $srcs | tr ' ' '\n' | grep . | xargs -P "$JOBS" -I{} sh -c \
    'extra=""; [ "{}" = core/step_graphs.cc ] && extra=-DSPRITEDIFF_WITH_CUDA=1; \
     g++ -std=c++17 -O2 -pthread '"$defs"' $extra '"$inc"' -c {} -o build-gpu/obj/$(echo {} | tr / _).o' \
     > $LOGS/manual.log 2>&1 || { grep -A8 error $LOGS/manual.log | head -60; return 1; }
  g++ -o $BIN build-gpu/obj/*.o -L"$TORCH_DIR/lib" -Wl,-rpath,"$TORCH_DIR/lib" -Wl,--no-as-needed -ltorch \
    -ltorch_cuda -ltorch_cpu -lc10_cuda -lc10 -Wl,--as-needed -L$DEPS/usr/lib/x86_64-linux-gnu -lspdlog -lfmt \
    -lpng16 -lz -pthread -ldl >> $LOGS/manual.log 2>&1 || { tail -30 $LOGS/manual.log; return 1; }
}

# PyTorch's wheels (2.11 at least) ship no Gloo headers, which c10d's ProcessGroupGloo.hpp needs.
DIST=OFF; [ -f "$TORCH_DIR/include/gloo/algorithm.h" ] && DIST=ON
rm -f "$BIN"  # a warm machine keeps build-gpu/: never report a binary this run did not build
rc=1
if [ $SERVER = ON ]; then
  el "build with the daemon (CMake, SPRITEDIFF_DISTRIBUTED=OFF)"
  cmake_build OFF ON
  rc=$?
  [ $rc = 0 ] || el "the daemon's build failed (rc $rc): the offline spritediffd alone"
fi
[ $rc = 0 ] || { el "build (CMake, SPRITEDIFF_DISTRIBUTED=$DIST)"; cmake_build $DIST; rc=$?; }
if [ $rc != 0 ]; then
  if [ $rc = 1 ] && [ $DIST = ON ]; then
    el "build failed with c10d: again with SPRITEDIFF_DISTRIBUTED=OFF"
    cmake_build OFF || { el "CMake build failed: manual build"; manual_build; }
  else
    el "CMake configure or build failed (rc $rc): manual build"
    manual_build
  fi
fi
[ -x $BIN ] || { el "no binary; giving up"; exit 1; }
ldd $BIN | grep -E "torch|c10|cuda" | head
el "built"

# wait_health PORT PID: up to 30 s for the daemon to answer, with this build's spritectl.
. scripts/daemon-lib.sh
SPRITECTL=build-gpu/bin/spritectl

# The daemon must start: where it does not answer, its log and a backtrace (cuda-gdb debugs
# host code too; its first run here found the scheduler thread calling MKL's Fortran entry).
if [ -x build-gpu/bin/spritectl ]; then
  build-gpu/bin/spritediffd --threads 2 --device cpu serve --port 50069 --metrics-port 0 > /tmp/smoke.log 2>&1 &
  smoke=$!
  if wait_health 50069 $smoke; then
    el "the daemon started and answered"
    kill $smoke; wait $smoke 2> /dev/null
  else
    kill $smoke 2> /dev/null; wait $smoke 2> /dev/null
    el "the daemon did not answer (exit $?)"; tail -5 /tmp/smoke.log
    command -v cuda-gdb > /dev/null && timeout 60 cuda-gdb -batch -ex run -ex bt --args \
      build-gpu/bin/spritediffd --threads 2 --device cpu serve --port 50069 --metrics-port 0 2>&1 | grep -v "^\[New Thread\|^\[Thread" | head -40
    [ -n "${STOP_IF_DAEMON_FAILS:-}" ] && exit 3
  fi
fi

BENCH_ARGS="--model models/sprites16 --batches 1,64 --ddim-batch 1,64 --repeats 20"
timeout 150 $BIN --threads 8 --device cuda bench $BENCH_ARGS --train-batch 100 --check-cpu 40
el "bench done"
# The levers of the graphed step, each timed against its own eager baseline in the same process.
# BENCH_VARIANTS: ';'-separated flag sets (default: folded as the daemon serves on a GPU, the
# NCHW layout, cuDNN's autotuner; empty: none).
IFS=';' read -r -a VARIANTS <<< "${BENCH_VARIANTS---fold-batchnorm;--nchw;--cudnn-benchmark}"
for v in "${VARIANTS[@]}"; do
  [ "$(left)" -gt 150 ] || { el "skipping bench $v: $(left) s left"; continue; }
  el "bench $v"
  timeout 90 $BIN --threads 8 --device cuda bench $BENCH_ARGS $v
done

# The daemon on cuda:0 as a user runs it (build/bin, the built-in defaults, "device": "auto"): the
# same request answered by it and by a CPU daemon (fp32) compared pixel by pixel, then the
# serving figures and the open-loop sweep (CAP_CLIENTS max_batch_rows: a GPU fills to it).
if [ -x build-gpu/bin/spritectl ] && [ "$(left)" -gt 200 ]; then
  rm -rf build && ln -s build-gpu build
  el "daemon on cuda and on the CPU: the same request"
  build/bin/spritediffd --threads 8 serve --port 50061 --metrics-port 0 > $OUT/daemon-cuda.log 2>&1 &
  gpu_pid=$!
  build/bin/spritediffd --threads 8 --device cpu --precision fp32 serve --port 50062 --metrics-port 0 \
    > /tmp/daemon-cpu.log 2>&1 &
  cpu_pid=$!
  wait_health 50061 $gpu_pid || echo "the daemon on cuda did not answer; its log: $OUT/daemon-cuda.log"
  wait_health 50062 $cpu_pid || echo "the daemon on the CPU did not answer; its log: /tmp/daemon-cpu.log"
  for port in 50061 50062; do
    for label in hero food; do
      timeout 60 build/bin/spritectl sample --server 127.0.0.1:$port --label $label --count 16 --seed 7 --quiet \
        --out /tmp/sprites-$port-$label/ || echo "sample on port $port failed: $?"
      timeout 60 build/bin/spritectl sample --server 127.0.0.1:$port --label $label --count 4 --seed 7 --quiet \
        --sampler ddpm --out /tmp/sprites-$port-$label-ddpm/ || echo "ddpm sample on port $port failed: $?"
    done
  done
  python3 - <<'PY'
import glob, os
import numpy as np
from PIL import Image
worst = 0
for d in sorted(glob.glob('/tmp/sprites-50061-*')):
    other = d.replace('50061', '50062')
    names = sorted(f for f in os.listdir(d) if f.endswith('.png') and 'grid' not in f)
    diffs = []
    for f in names:
        a = np.asarray(Image.open(os.path.join(d, f)).convert('RGB'), dtype=np.int16)
        b = np.asarray(Image.open(os.path.join(other, f)).convert('RGB'), dtype=np.int16)
        diffs.append(int(np.abs(a - b).max()))
    worst = max([worst] + diffs)
    print(f"{os.path.basename(d)}: {len(names)} sprites, max pixel difference cuda vs cpu fp32 per sprite {diffs}")
print(f"daemon cuda vs cpu fp32: max pixel difference {worst}/255")
PY
  grep -i "device\|graph\|warn\|error" $OUT/daemon-cuda.log | head -8
  kill $gpu_pid $cpu_pid; wait $gpu_pid $cpu_pid 2> /dev/null
  el "bench-serving on cuda"
  THREADS=8 timeout 150 scripts/bench-serving.sh 2>&1 | grep -v '^{' | tail -14
  [ "$(left)" -gt 150 ] && { el "bench-load on cuda"; THREADS=8 CAP_CLIENTS=64 DURATION=20 timeout $(( $(left) - 40 )) scripts/bench-load.sh; }
fi

EVAL="--data .gpu/data/dcss-sprites --cache-dir .gpu/evalcache --per-class 100"
el "eval models/sprites16 (its defaults)"
timeout 60 $BIN --threads 8 --device cuda eval --model models/sprites16 $EVAL

# Optional training: TRAIN_OUT=runs/NAME TRAIN_ARGS="--init-from models/sprites16 --epochs 150 ..." trains
# runs/NAME/model on the GPU (fresh optimizer: a training state written by Debian's libtorch 1.13
# does not resume under the wheel's 2.x, whose Adam fails on it) and measures it.
if [ -n "${TRAIN_OUT:-}" ] && [ "$(left)" -gt 120 ]; then
  el "training $TRAIN_OUT, $(left) s left"
  timeout $(( $(left) - 60 )) $BIN --threads 8 --device cuda train --data .gpu/data/dcss-sprites \
    --out "$TRAIN_OUT/model" --state "$TRAIN_OUT/train-state.pt" --n-feat 64 --height 16 ${TRAIN_ARGS:-} \
    > "$OUT/train.log" 2>&1
  echo "train exit $?"; tail -3 "$OUT/train.log"
  [ -f "$TRAIN_OUT/model/model.json" ] && timeout 50 $BIN --threads 8 --device cuda eval --model "$TRAIN_OUT/model" \
    $EVAL --sampler ddim --steps 25 --eta 1 --guidance 2.5
fi

el "packing"
if [ -n "${TRAIN_OUT:-}" ] && [ -d "$TRAIN_OUT/model" ]; then
  tar -czf "$OUT/model.tgz" -C "$TRAIN_OUT" model
  [ -f "$TRAIN_OUT/train-state.pt" ] && split -b 15M -d "$TRAIN_OUT/train-state.pt" "$OUT/train-state.pt.part-"
fi
ls -la "$OUT"
el "done"
