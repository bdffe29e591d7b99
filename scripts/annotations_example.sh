#!/usr/bin/env bash
# The README's annotation example, end to end: synthetic slides -> QuPath GeoJSON annotations of
# their lesions (gigastream's own mask_to_geojson) and ROI files -> train --roi -> heatmap
# --annotations (contours + <slide_id>.attention.geojson) -> evaluate --annotations (attention
# inside the annotated tumour); the figures printed at the end, with the commit and the date.
# Usage (from anywhere): bash scripts/annotations_example.sh [OUT]   (default out/annotations; replaced)
set -euo pipefail
cd "$(dirname "$0")/.."
G=${G:-.venv/bin/gigastream}
PY=${PYTHON:-.venv/bin/python}
E=${1:-out/annotations}
rm -rf "$E"
start=$(date +%s)
$G synth --out $E/data --slides 64 --size 1024 --lesion-size 160 --block-size 256 --feather 64 \
         --no-progress
# annotations/<id>.geojson: the lesions of every positive slide as QuPath "Tumor" annotations;
# rois/<id>.geojson: every slide's ROI, the whole slide ("Region*") minus a 96 px strip along
# its left edge ("Ignore*", as a pen mark or a label would be excluded)
$PY - "$E" <<'PYEOF'
import csv, sys
from pathlib import Path
from shapely.geometry import box
from gigastream.wsi.annotation_geojson import feature_collection, geometry_feature, mask_to_geojson, write_geojson
from gigastream.wsi.reader import SlideReader
from gigastream.wsi.tissue import TissueMask
E = Path(sys.argv[1]); data = E / "data"
(E / "annotations").mkdir(); (E / "rois").mkdir()
for row in csv.DictReader(open(data / "manifest.csv", newline="")):
    sid = row["slide_id"]
    with SlideReader.open(data / row["path"]) as slide:
        w, h = slide.dimensions
        if row["label"] == "positive":
            lesions = TissueMask.load(data / "lesions" / f"{sid}.png")
            write_geojson(mask_to_geojson(lesions, "Tumor", slide=slide), E / "annotations" / f"{sid}.geojson")
    roi = [geometry_feature(box(0, 0, w, h), "Region*"), geometry_feature(box(0, 0, 96, h), "Ignore*")]
    write_geojson(feature_collection(roi), E / "rois" / f"{sid}.geojson")
PYEOF
t0=$(date +%s)
$G train --manifest $E/data/manifest.csv --out $E/run --mpp 1.0 --roi $E/rois \
         --no-progress
train_s=$(( $(date +%s) - t0 ))
$G heatmap  --checkpoint $E/run/checkpoints/best.ckpt --out $E/maps --annotations $E/annotations \
            --no-progress $E/data/slides/synth_00[0-3].tif
$G evaluate --checkpoint $E/run/checkpoints/best.ckpt --manifest $E/data/manifest.csv --out $E/eval \
            --annotations $E/annotations --no-progress
$PY - "$E" "$train_s" "$(( $(date +%s) - start ))" <<'PYEOF'
import datetime, json, subprocess, sys
from pathlib import Path
E, train_s, total_s = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
run = json.loads((E / "run/metrics.json").read_text())
ev = json.loads((E / "eval/metrics.json").read_text())
a = ev["annotations"]
tiles = sum(len(json.loads(p.read_text())["features"]) for p in (E / "maps").glob("*.attention.geojson"))
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
m, p = a["mean"], a["pooled"]
print(
    f"Run by scripts/annotations_example.sh ({datetime.date.today()}, commit {commit}): `train --roi` "
    f"took {train_s // 60} min {train_s % 60} s, validation AUC {run['final']['val_auc']:.3f} "
    f"({run['final']['slides']} slides); `heatmap --annotations` wrote "
    f"{len(list((E / 'maps').glob('*.png')))} heatmaps with {tiles} QuPath tiles; `evaluate` "
    f"scored {ev['scored_slides']} slides: AUC {ev['auc']:.3f}; attention inside the annotated "
    f"tumour of {a['slides_with_tumour']} slides: {m['attention_in_tumour']:.3f} (pooled "
    f"{p['attention_in_tumour']:.3f}) on {m['tumour_instance_fraction']:.1%} of the instances "
    f"({m['enrichment']:.1f}x uniform), instance AUC {m['instance_auc']:.3f} (pooled "
    f"{p['instance_auc']:.3f}) ({total_s // 60} min {total_s % 60} s in all)."
)
PYEOF
