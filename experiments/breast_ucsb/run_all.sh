#!/usr/bin/env bash
# Reproduce the main table of experiments/breast_ucsb/README.md: the UCSB breast TMA benchmark
# of Ilse et al. 2018 (58 images, 32x32 px patches, one bag per image), stratified 4-fold
# cross-validation (repeat R: splits seed R, training seed R), each run one `gigastream train`
# in a fresh process, two at a time, one thread each:
#   streamed vgg_small + gated ABMIL over the whole image (1 um/px)   5 repeats x 4 folds, 4 epochs
#   gated ABMIL, accumulate (exact, chunks of 256 patches)           5 repeats x 4 folds, 4 epochs
#   gated ABMIL, baseline (whole bag in one graph)                   repeat 0, 4 epochs
#   ABMIL, accumulate                                                repeat 0, 4 epochs
#   gated ABMIL, sample (64 random patches per step)                 5 repeats x 4 folds, 6 epochs
#   gated ABMIL, frozen (random encoder not trained; head only)      5 repeats x 4 folds, 15 epochs
# Run folders go to $OUT (default out/breast_ucsb, ignored by git; finished runs are reused,
# so rerunning continues a stopped sweep); results.json, summary.md and heatmaps/ go to
# $RESULTS (default this folder). Measured wall time on a 2-core CPU: see the README.
# Extra arguments go to run.py (e.g. --plan gated-accumulate=0@8 to run one configuration).
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
  --plan streaming=0,1,2,3,4@4 gated-accumulate=0,1,2,3,4@4 gated-baseline=0@4 \
         abmil-accumulate=0@4 gated-sample=0,1,2,3,4@6 gated-frozen=0,1,2,3,4@15 \
  --streaming-mpp 1.0 --threads "$THREADS" --parallel "$PARALLEL" --workers 1 \
  --heatmap-config streaming gated-accumulate "$@"

seconds=$(( $(date +%s) - start ))
echo "wall time: $((seconds / 60)) min $((seconds % 60)) s (bash experiments/breast_ucsb/run_all.sh)"
