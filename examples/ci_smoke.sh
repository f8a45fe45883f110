#!/usr/bin/env bash
# A CI smoke test of sdlite as a black box: build a tiny model, sample with --json, check the files
# and the exit codes scripts rely on. Offline; about 15 seconds on 2 CPU cores.
# usage: examples/ci_smoke.sh [SDLITE_BINARY]   (default: sdlite on PATH)
set -euo pipefail
SDLITE=${1:-sdlite}
export HF_HUB_OFFLINE=1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$SDLITE" init "$work/model" --preset tiny --seed 0 >/dev/null

"$SDLITE" sample "a red circle on a blue background" --model "$work/model" --seed 7 --num-images 2 \
  --steps 10 --out "$work/out" --json --quiet >"$work/results.jsonl"

python3 - "$work/results.jsonl" <<'PY'
import json, struct, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
assert [r["seed"] for r in rows] == [7, 8], rows
for r in rows:
    with open(r["path"], "rb") as f:
        data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", r["path"]
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (r["width"], r["height"]), (width, height)
    assert b"parameters" in data and b"sdlite" in data, "metadata chunks missing"
print(f"ok: {len(rows)} images with metadata")
PY

expect() {  # expect CODE COMMAND...: the command must fail with exactly that exit code
  local want=$1; shift
  set +e; "$@" >/dev/null 2>&1; local got=$?; set -e
  [ "$got" -eq "$want" ] || { echo "expected exit $want, got $got: $*" >&2; exit 1; }
}
expect 2 "$SDLITE" sample "x" --model "$work/model" --height 100
expect 2 "$SDLITE" sample "x" --model "$work/model" --scheduler nope
expect 4 "$SDLITE" sample "x" --model "$work/missing"
expect 4 "$SDLITE" sample "x" --model not-cached/anywhere --offline
printf '{"prompt": "x", "stepz": 1}\n' >"$work/bad.jsonl"
expect 3 "$SDLITE" sample --prompts-file "$work/bad.jsonl" --model "$work/model"
echo "ok: exit codes 2, 3, 4 as documented"
