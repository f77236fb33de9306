#!/usr/bin/env python3
"""`spritediffd eval` refuses bad flags with a message naming the flag and a non-zero exit,
before it trains a classifier or samples anything. Usage: check_eval_flags.py SPRITEDIFFD REPO_ROOT"""
import shutil
import subprocess
import sys
import tempfile

binary, root = sys.argv[1], sys.argv[2]
cache = tempfile.mkdtemp(prefix="spritediff-eval-flags-")
base = [binary, "--threads", "1", "eval", "--model", "models/sprites16", "--cache-dir", cache]
cases = [
    (base + ["--per-class", "2"], "--per-class"),
    (base + ["--sweep-grid", "ddim:25:x:2"], "SAMPLER:STEPS:ETA:GUIDANCE"),
    (base + ["--sweep-grid", "euler:25:0:1"], "samplers: ddpm | ddim | dpmpp-2m | dpmpp-2m-sde"),
    (base + ["--sweep-grid", "ddim:900:0:1"], "steps must be in [1, 500]"),
    (base + ["--eta", "2"], "eta must be in [0, 1]"),
    (base + ["--sampler", "plms"], "--sampler"),
    (base + ["--data", "/nonexistent-sprites"], "/nonexistent-sprites"),
    (base + ["--images", "x.png", "--sweep"], "leave out --sweep"),
    (base + ["--grid-rows", "hero"], "--grid-rows needs --images"),
    ([binary, "eval", "--model", "no-such-model", "--cache-dir", cache], "no-such-model"),
]
failed = 0
for argv, expected in cases:
    # The timeout only guards against a hang; a refusal takes well under a second.
    proc = subprocess.run(argv, cwd=root, capture_output=True, text=True, timeout=120)
    output = proc.stdout + proc.stderr
    ok = proc.returncode != 0 and expected in output
    print(("ok  " if ok else "FAIL"), " ".join(argv[1:]), "->", proc.returncode, output.strip().splitlines()[-1:] )
    failed += not ok
shutil.rmtree(cache, ignore_errors=True)
sys.exit(1 if failed else 0)
