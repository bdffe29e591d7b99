#!/usr/bin/env bash
# Reproduce experiments/breast_ucsb/README.md: the UCSB breast TMA benchmark of Ilse et al. 2018
# (58 images, 32x32 px patches, one bag per image), 5 repeats x 4 stratified folds of every
# configuration, each run one `gigastream train` in a fresh process. Run folders go to $OUT
# (default out/breast_ucsb, ignored by git; finished runs are reused, so rerunning continues a
# stopped sweep); results.json, summary.md and heatmaps/ go to $RESULTS (default this folder).
# Expected time on a 2-core CPU: about 2 h for the four patch configurations (80 runs; measured
# ~220 s per accumulate run, ~150 s per baseline run, each on one core, two at a time) plus the
# 20 streamed-model runs (not timed); the 60-minute target of issue 14 is not met at these
# settings.
# Extra arguments go to run.py (e.g. --repeats 0 --configs abmil-accumulate).
# Usage (from anywhere): bash experiments/breast_ucsb/run_all.sh [FLAGS...]
#   THREADS=1 PARALLEL=2 (defaults: two runs at a time, one thread each, on a 2-core CPU)
set -euo pipefail
cd "$(dirname "$0")/../.."
if [[ -n ${PYTHON:-} ]]; then PY=$PYTHON
elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python
else PY=python; fi
OUT=${OUT:-out/breast_ucsb}
RESULTS=${RESULTS:-experiments/breast_ucsb}
THREADS=${THREADS:-1}
PARALLEL=${PARALLEL:-2}
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
start=$(date +%s)

$PY experiments/breast_ucsb/run.py --out "$OUT" --results "$RESULTS" \
  --configs abmil-accumulate gated-accumulate abmil-baseline gated-sample streaming \
  --repeats 0 1 2 3 4 --folds 0 1 2 3 --epochs 8 \
  --threads "$THREADS" --parallel "$PARALLEL" --workers 1 \
  --heatmap-config gated-accumulate "$@"

seconds=$(( $(date +%s) - start ))
echo "wall time: $((seconds / 60)) min $((seconds % 60)) s (bash experiments/breast_ucsb/run_all.sh)"
