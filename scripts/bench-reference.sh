#!/usr/bin/env bash
# spritediffd against the course's PyTorch model (../shared/reference/course_ref.py), timed
# back to back on this machine with the same thread count, and printed as ratios: batch-1 step
# latency, unguided and guided DDIM-25 at batch 32 and 64, training images/s at one batch.
# Ours runs three times: as loaded, with its BatchNorms folded into the convolutions (what the
# daemon serves with fold_batchnorm on), and in bf16 (precision bf16, or auto on a CPU with
# native bf16; its training row is mixed precision, training_precision bf16: bf16 convolutions,
# float32 weights). bf16 runs right after the reference, so the headline ratios compare two
# adjacent minutes of this shared machine; every sampling figure on both sides is the median of
# SAMPLE_REPEATS timed runs. Needs `make build` and python3-torch (Debian).
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
MODEL=${MODEL:-sprites16}
TRAIN_BATCH=${TRAIN_BATCH:-100}
REPEATS=${REPEATS:-20}
SAMPLE_REPEATS=${SAMPLE_REPEATS:-3}
command -v /usr/bin/python3 >/dev/null && /usr/bin/python3 -c 'import torch' 2>/dev/null || {
  echo "bench-reference: needs Debian's python3-torch (apt-get install python3-torch)" >&2; exit 1; }

echo "== reference: course_ref.py model in PyTorch (threads $THREADS)"
ref=$(/usr/bin/python3 scripts/bench_reference.py --threads "$THREADS" --batches 32,64 --train-batch "$TRAIN_BATCH" \
  --repeats "$REPEATS" --sample-repeats "$SAMPLE_REPEATS" | tail -1)
echo "$ref"
ours() {  # ours PRECISION [bench flags]
  build/bin/spritediffd --threads "$THREADS" --precision "$1" bench --model "$MODEL" --batches 1,32 \
    --ddim-batch 32,64 --steps 25 --repeats "$REPEATS" --sample-repeats "$SAMPLE_REPEATS" --train-batch "$TRAIN_BATCH" "${@:2}" | tail -1
}
echo "== spritediffd bench, precision bf16 (as the shipped config serves on this CPU; training in mixed bf16)"
bf16=$(ours bf16 --check-precision 40 --train-precision bf16)
echo "$bf16"
echo "== spritediffd bench (threads $THREADS, fp32)"
eager=$(ours fp32)
echo "$eager"
echo "== spritediffd bench --fold-batchnorm (fp32)"
folded=$(ours fp32 --fold-batchnorm)
echo "$folded"

/usr/bin/python3 - "$ref" "$eager" "$folded" "$bf16" <<'PY'
import json, sys
ref, eager, folded, bf16 = (json.loads(a) for a in sys.argv[1:5])
rows = [("batch-1 step latency (ms, lower is better)", lambda j: j["step_ms_batch1"], True)]
for b in ("32", "64"):
    rows.append((f"unguided DDIM-25 batch {b} (sprites/s)", lambda j, b=b: j["samples_per_s_by_batch" if "samples_per_s_by_batch" in j else "ddim_samples_per_s"][b], False))
    rows.append((f"guided DDIM-25 batch {b} (sprites/s)", lambda j, b=b: j["guided_samples_per_s_by_batch" if "guided_samples_per_s_by_batch" in j else "ddim_guided_samples_per_s"][b], False))
rows.append((f"training batch {ref['train_batch']} (images/s)", lambda j: j["train_images_per_s"], False))
print(f"\n{'measure':48} {'reference':>10} {'ours':>10} {'ratio':>7} {'folded':>10} {'ratio':>7} {'bf16':>10} {'ratio':>7}")
for name, get, lower in rows:
    r, e, f, h = get(ref), get(eager), get(folded), get(bf16)
    ratio = (lambda x: r / x) if lower else (lambda x: x / r)
    print(f"{name:48} {r:10.3f} {e:10.3f} {ratio(e):6.2f}x {f:10.3f} {ratio(f):6.2f}x {h:10.3f} {ratio(h):6.2f}x")
print("\nratio: how many times faster ours is (goal: >= 1.5x sampling, >= 1.2x training)")
c = bf16["check_precision"]
print(f"bf16 vs fp32 sprites, {c['rows']} fixed seeds at the model's defaults: max pixel difference "
      f"{c['max_pixel_diff']}/255, {100 * c['pixels_off_by_more_than_8']:.2f}% of values off by more than 8")
PY
