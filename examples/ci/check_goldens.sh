#!/bin/sh
# Golden-image regression check for CI with sdlite's built-in model: CPU only, offline, no make.
#
# First run (no PNG under GOLDENS): make 20 goldens (4 prompts x 5 fixed seeds) and stop; commit them.
# Every later run: `sdlite check` regenerates each golden from its own metadata and compares the pixels.
# The script exits with sdlite's code: 0 all within tolerance; 7 some images differ (REPORT lists them as
# JUnit failures, DIFFS holds a heatmap per failing image); 3 a golden unreadable; 4 model missing; see
# `sdlite --help` for the rest. About 30 s per run on 2 CPU cores.
#
# usage: examples/ci/check_goldens.sh [GOLDENS] [REPORT] [DIFFS]   (defaults: goldens report.xml diffs)
# env:   SDLITE       the sdlite command (default: sdlite on PATH)
#        SAMPLE_ARGS  extra `sdlite sample` options for making goldens (e.g. "--fast" or "--steps 20")
#        CHECK_ARGS   extra `sdlite check` options (e.g. "--tolerance 6")
set -eu
GOLDENS=${1:-goldens}
REPORT=${2:-report.xml}
DIFFS=${3:-diffs}
SDLITE=${SDLITE:-sdlite}
export HF_HUB_OFFLINE=1 # the built-in model ships with sdlite: nothing is downloaded
unset SDLITE_MODEL      # goldens of the built-in model, whatever the runner's environment says

if [ -z "$(find "$GOLDENS" -name '*.png' 2>/dev/null | head -n 1)" ]; then
    # shellcheck disable=SC2086 # SAMPLE_ARGS is a list of options
    "$SDLITE" sample \
        "a red circle on a blue background" "a yellow triangle on a black background" \
        "a white square on a green background" "a purple circle on a black background" \
        --seed 42 --num-images 5 --out "$GOLDENS" --quiet ${SAMPLE_ARGS:-} >/dev/null
    echo "made $(find "$GOLDENS" -name '*.png' | wc -l | tr -d ' ') goldens in $GOLDENS: commit them (git add $GOLDENS); every later run checks against them"
    exit 0
fi

# shellcheck disable=SC2086 # CHECK_ARGS is a list of options
exec "$SDLITE" check "$GOLDENS" --junit "$REPORT" --diff "$DIFFS" --quiet ${CHECK_ARGS:-}
