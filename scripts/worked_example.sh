#!/usr/bin/env bash
# The README's worked example, run end to end, and its numbers printed as the README states them
# (with the commit and the date), so the README's figures are regenerated, never typed.
# Usage (from anywhere): bash scripts/worked_example.sh [OUT]   (default out/example; replaced)
set -euo pipefail
cd "$(dirname "$0")/.."
G=${G:-.venv/bin/gigastream}
PY=${PYTHON:-.venv/bin/python}
E=${1:-out/example}
rm -rf "$E"
start=$(date +%s)
$G synth --out $E/data --slides 64 --size 1024 --lesion-size 160 --block-size 256 --feather 64
$G splits --manifest $E/data/manifest.csv --out $E/data/splits.csv --folds 4
t0=$(date +%s)
$G train --manifest $E/data/manifest.csv --splits $E/data/splits.csv --fold 0 --out $E/runs/f0 \
         --mpp 1.0 --epochs 20 --no-progress
train_s=$(( $(date +%s) - t0 ))
$G evaluate --checkpoint $E/runs/f0/checkpoints/best.ckpt --manifest $E/data/manifest.csv \
            --out $E/eval --no-progress
$G predict  --checkpoint $E/runs/f0/checkpoints/best.ckpt --out $E/pred --no-progress \
            $E/data/slides/synth_00[01].tif
$G heatmap  --checkpoint $E/runs/f0/checkpoints/best.ckpt --out $E/maps --tiff --no-progress \
            $E/data/slides/synth_000.tif
$PY - "$E" "$train_s" "$(( $(date +%s) - start ))" <<'PYEOF'
import csv, json, subprocess, sys, datetime
from pathlib import Path
E, train_s, total_s = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
run = json.loads((E / "runs/f0/metrics.json").read_text())
ev = json.loads((E / "eval/metrics.json").read_text())
with open(E / "pred/predictions.csv", newline="") as f:
    pred = {r["slide_id"]: float(r["p_positive"]) for r in csv.DictReader(f)}
with open(E / "eval/predictions.csv", newline="") as f:
    evp = {r["slide_id"]: float(r["p_positive"]) for r in csv.DictReader(f)}
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
same = "; the same as evaluate's" if all(abs(pred[s] - evp[s]) < 5e-5 for s in pred if s in evp) else ""
print(
    f"Run by scripts/worked_example.sh ({datetime.date.today()}, commit {commit}): `train` took "
    f"{train_s // 60} min {train_s % 60} s, validation AUC {run['final']['val_auc']:.3f} "
    f"({run['final']['slides']} slides of fold 0); "
    f"`evaluate` scored {ev.get('scored_slides')} slides ({ev.get('split')}): AUC {ev['auc']:.3f}, "
    f"accuracy {ev['accuracy']:.3f}, Brier {ev.get('brier', float('nan')):.3f}, ECE {ev.get('ece', float('nan')):.3f}; "
    f"`predict`: " + ", ".join(f"{s} p(positive) {p:.4f}" for s, p in sorted(pred.items())) + same +
    f" ({total_s // 60} min {total_s % 60} s in all)."
)
PYEOF
