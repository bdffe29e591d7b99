#!/usr/bin/env bash
# Reproduce experiments/resolution/README.md: a seeded synthetic dataset (96 slides of 1024^2 px
# at 0.5 um/px, lesions 160 px), split 3:1:2 into train/val/test (48/16/32 slides), and the
# recipe of `gigastream train` trained at 1, 2, 4 and 8 um/px with seeds 0, 1, 2 (12 runs, each
# in a fresh process). Runs go to $OUT/runs (finished runs are reused: rerun to continue a
# stopped sweep); results.json, runs.json, summary.md, resolution.png and heatmaps/ go to
# $RESULTS. Extra arguments go to experiments/resolution/run.py (e.g. --epochs 2 --seeds 0).
# Usage (from anywhere): bash experiments/resolution/run_all.sh [FLAGS...]
#   OUT=out/resolution RESULTS=experiments/resolution SLIDES=96 (defaults)
set -euo pipefail
cd "$(dirname "$0")/../.."
if [[ -n ${GIGASTREAM:-} ]]; then GS=$GIGASTREAM
elif [[ -x .venv/bin/gigastream ]]; then GS=.venv/bin/gigastream
else GS=gigastream; fi
if [[ -n ${PYTHON:-} ]]; then PY=$PYTHON
elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python
else PY=python; fi
OUT=${OUT:-out/resolution}
RESULTS=${RESULTS:-experiments/resolution}
SLIDES=${SLIDES:-96}
start=$(date +%s)

if [[ ! -f $OUT/data/manifest.csv ]]; then
  $GS synth --out "$OUT/data" --slides "$SLIDES" --size 1024 --lesion-size 160 --block-size 256 \
    --feather 64 --seed 0 --no-progress
fi
$PY experiments/resolution/run.py --manifest "$OUT/data/manifest.csv" --split-ratio 3:1:2 \
  --out "$OUT/runs" --results "$RESULTS" --mpp 1 2 4 8 --seeds 0 1 2 "$@"

seconds=$(( $(date +%s) - start ))
echo "wall time: $((seconds / 60)) min $((seconds % 60)) s (bash experiments/resolution/run_all.sh)"
