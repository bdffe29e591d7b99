"""Print the runs of ``results/runs.jsonl`` as a markdown table (one row per run)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

path = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "results" / "runs.jsonl")
print(
    "| tag | slides (train/val) | lesion px | trunk | head options | lr trunk/head | accum | epochs run | val AUC by epoch | final AUC | s/slide | total s |"
)
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for line in path.read_text().splitlines():
    r = json.loads(line)
    a = r["args"]
    if a["epochs"] < 2:
        continue
    aucs = " ".join(f"{h['auc']:.2f}" for h in r["history"] if h.get("auc") is not None)
    print(
        f"| {r['tag']} | {r['n_train']}/{r['n_val']} | {a['lesion_size']} | {a['arch']} | "
        f"{a['head']} {a['head_options']} | {a['lr_trunk']:g}/{a['lr_head']:g} | {a['accum']} | "
        f"{len(r['history'])} | {aucs} | {r['final_auc']:.3f} | {r['s_per_slide']:.2f} | {r['t_total_s']:.0f} |"
    )
