#!/usr/bin/env bash
# Clang's thread-safety analysis (-Wthread-safety, as errors) over the daemon's sources: every
# file under server/ and common/ that the main build compiles, checked with -fsyntax-only and
# the build's own flags (build/compile_commands.json), so no second build of core is needed.
# GUARDED_BY and friends: common/thread_annotations.h. `make thread-safety` runs it after the
# main build; .ci/run runs it. JOBS=N files at once (default: nproc); ONLY=REGEX checks only
# the files whose path matches.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
JOBS=${JOBS:-$(nproc)}
command -v clang++ >/dev/null || { echo "thread-safety: clang++ not found (scripts/install-deps.sh installs clang)" >&2; exit 1; }
[ -f "$BUILD_DIR/compile_commands.json" ] || { echo "thread-safety: no $BUILD_DIR/compile_commands.json; run make build" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# One shell command per file: the compile command with clang++, -fsyntax-only, the analysis as
# errors, and GCC's precompiled header replaced by its plain-text header (clang reads no .gch).
/usr/bin/python3 - "$BUILD_DIR/compile_commands.json" "$work" > "$work/commands" <<'PY'
import json, os, re, shlex, shutil, sys
entries, work = json.load(open(sys.argv[1])), sys.argv[2]
seen = set()
for e in entries:
    rel = os.path.relpath(e["file"], os.getcwd())
    if not (rel.startswith("server/") or rel.startswith("common/")) or rel in seen:
        continue
    if os.environ.get("ONLY") and not re.search(os.environ["ONLY"], rel):
        continue
    seen.add(rel)
    args = shlex.split(e["command"])[1:]
    out, skip = ["clang++", "-fsyntax-only", "-Wthread-safety", "-Werror=thread-safety", "-Wno-unknown-warning-option"], False
    for i, a in enumerate(args):
        if skip:
            skip = False
            continue
        if a in ("-o", "-c"):
            skip = a == "-o"
            continue
        if a == "-include" and args[i + 1].endswith("cmake_pch.hxx"):
            copy = os.path.join(work, str(len(seen)) + "-pch.hxx")  # no .gch beside it
            shutil.copy(args[i + 1], copy)
            out += ["-include", copy]
            skip = True
            continue
        if a in ("-Winvalid-pch",) or a.startswith("-fpch"):
            continue
        out.append(a)
    print(" ".join(shlex.quote(x) for x in out) + " " + shlex.quote(e["file"]))
PY
count=$(wc -l < "$work/commands")
echo "thread-safety: clang -Wthread-safety over $count files of server/ and common/"
if xargs -P "$JOBS" -I{} -d '\n' sh -c '{} 2>&1 || exit 255' < "$work/commands" > "$work/log"; then
  echo "thread-safety: no findings"
else
  cat "$work/log"
  echo "thread-safety: findings above" >&2
  exit 1
fi
