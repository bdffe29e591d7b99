"""Search for a demo training recipe: a plain PyTorch loop over in-memory synthetic slides.

Each slide is small (1024^2 px at 0.5 um/px -> 512^2 at 1 um/px), so its whole input
tensor is read once with the library's SlideDataset/SlideSource and kept in memory; the
trunk runs unstreamed (streaming is exact, so the gradients are the same). One JSON line
per run (settings, per-epoch validation AUC, wall times) is appended to ``--log``.

Example:
    python experiments/demo_recipe/explore.py --slides 64 --arch vgg_small --head topk \
        --epochs 8 --tag try1
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gigastream.mil.heads import create_mil_head
from gigastream.models.trunks import build_trunk, calibrate_batchnorm
from gigastream.train.slide_trainer import classification_metrics, split_manifest
from gigastream.wsi.dataset import SlideDataset, SlideDatasetConfig
from gigastream.wsi.manifest import read_manifest
from gigastream.wsi.synth import SynthConfig, synthesize_dataset

SOURCES = ["/work/shared/data/images", "/work/shared/data/slides"]
HERE = Path(__file__).resolve().parent


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a = p.add_argument
    # data
    a("--slides", type=int, default=64)
    a("--size", type=int, default=1024, help="level-0 edge at 0.5 um/px")
    a("--lesion-size", type=int, default=128)
    a("--min-lesions", type=int, default=1)
    a("--max-lesions", type=int, default=3)
    a("--contrast", type=float, default=0.6)
    a("--max-lesion-fraction", type=float, default=None)
    a("--block-size", type=int, default=256)
    a("--feather", type=int, default=32)
    a("--synth-seed", type=int, default=0)
    a("--mpp", type=float, default=1.0)
    a("--val-fraction", type=float, default=0.25)
    # model
    a("--arch", default="vgg_small")
    a("--weights", default=None)
    a("--pool", type=int, default=1, help="extra max-pool after the trunk")
    a("--head", default="topk")
    a("--head-options", default="{}", help="JSON")
    a("--bn-calib", type=int, default=8, help="training slides used to calibrate BN (0: none)")
    # optimisation
    a("--lr-trunk", type=float, default=1e-3)
    a("--lr-head", type=float, default=1e-3)
    a("--wd", type=float, default=1e-4)
    a("--warmup", type=int, default=0, help="optimiser steps of linear warm-up")
    a("--schedule", default="cosine", choices=("cosine", "constant"))
    a("--accum", type=int, default=1, help="slides per optimiser step")
    a("--epochs", type=int, default=10)
    a("--clip", type=float, default=0.0, help="gradient norm clipping (0: off)")
    a("--balanced", type=int, default=1, help="alternate positive and negative slides")
    a("--augment", type=int, default=1, help="random flips/rot90")
    a("--budget", type=float, default=600.0, help="stop training after this many seconds")
    a("--seed", type=int, default=0)
    a("--threads", type=int, default=2)
    a("--eval-every", type=int, default=1)
    a("--tag", default="")
    a("--log", default=str(HERE / "results" / "runs.jsonl"))
    return p.parse_args()


def synth(args) -> tuple[Path, float, dict]:
    config = SynthConfig(
        slides=args.slides,
        size=args.size,
        lesion_size=args.lesion_size,
        min_lesions=args.min_lesions,
        max_lesions=args.max_lesions,
        lesion_contrast=args.contrast,
        block_size=args.block_size,
        feather=args.feather,
        seed=args.synth_seed,
    )
    if args.max_lesion_fraction is not None:
        config.max_lesion_fraction = args.max_lesion_fraction
    key = "_".join(f"{k}{v}" for k, v in sorted(asdict(config).items()) if k != "seed")
    out = Path("/tmp/recipe") / f"d{hashlib.sha1(key.encode()).hexdigest()[:10]}_s{args.synth_seed}"
    t0 = time.perf_counter()
    if not (out / "manifest.csv").is_file():
        synthesize_dataset(out, config, SOURCES, progress=False)
    return out / "manifest.csv", time.perf_counter() - t0, asdict(config)


def tissue_config(edge_um: float):
    """Tissue masker settings scaled to a small slide (as the demo's): 256 px mask."""
    from gigastream.wsi.tissue import TissueMaskConfig

    defaults = TissueMaskConfig()
    return TissueMaskConfig(
        mpp=min(defaults.mpp, max(0.5, edge_um / 256)),
        min_object_um2=min(defaults.min_object_um2, 0.002 * edge_um**2),
        max_hole_um2=min(defaults.max_hole_um2, 0.005 * edge_um**2),
    )


def load(manifest, mpp: float, stride: int, edge_um: float):
    cfg = SlideDatasetConfig(mpp=mpp, tissue=tissue_config(edge_um))
    items = []
    for item in SlideDataset(manifest, cfg):
        x = item.source.read((slice(None),) * 4).clone()  # (1, 3, H, W)
        mask = item.tissue_mask
        _, _, height, width = x.shape
        gh, gw = math.ceil(height / stride), math.ceil(width / stride)
        sub = 4
        stride_um = stride * float(item.source.mpp)
        ys = (np.arange(gh * sub) + 0.5) * stride_um / sub / mask.mpp
        xs = (np.arange(gw * sub) + 0.5) * stride_um / sub / mask.mpp
        mh, mw = mask.mask.shape
        fine = mask.mask[
            np.minimum(ys.astype(int), mh - 1)[:, None], np.minimum(xs.astype(int), mw - 1)[None]
        ]
        cells = torch.from_numpy(fine.reshape(gh, sub, gw, sub).any(axis=(1, 3)))
        items.append((x, cells, item.label, item.row.slide_id))
        item.close()
    return items


def augment(x: torch.Tensor, cells: torch.Tensor, rng: np.random.Generator):
    k = int(rng.integers(4))
    x, cells = torch.rot90(x, k, (2, 3)), torch.rot90(cells, k, (0, 1))
    if rng.random() < 0.5:
        x, cells = x.flip(3), cells.flip(1)
    return x.contiguous(), cells.contiguous()


class Model(nn.Module):
    def __init__(self, args):
        super().__init__()
        self.trunk, channels, stride = build_trunk(args.arch, args.weights)
        self.pool = nn.MaxPool2d(args.pool, args.pool, ceil_mode=True)
        self.stride = stride * args.pool
        self.head = create_mil_head(args.head, channels, 2, **json.loads(args.head_options))

    def forward(self, x, cells, label=None):
        fmap = self.pool(self.trunk(x))  # (1, C, h, w)
        feats = fmap[0].permute(1, 2, 0)[cells]  # (N, C)
        return self.head(feats, label=label)


def evaluate(model, items):
    model.eval()
    probs, labels = [], []
    with torch.no_grad():
        for x, cells, label, _ in items:
            out = model(x, cells)
            probs.append(out.logits.softmax(-1).numpy())
            labels.append(label)
    model.train()
    model.trunk.apply(lambda m: m.eval() if isinstance(m, nn.BatchNorm2d) else None)
    probs = np.stack(probs)
    m = classification_metrics(labels, probs)
    return m["auc"], m["accuracy"], float(probs[:, 1].std())


def main() -> None:
    args = parse()
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    manifest_path, t_synth, synth_config = synth(args)
    manifest = read_manifest(manifest_path)
    train_m, val_m = split_manifest(manifest, args.val_fraction, seed=args.seed)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = Model(args)
    t0 = time.perf_counter()
    edge_um = args.size * 0.5
    train = load(train_m, args.mpp, model.stride, edge_um)
    val = load(val_m, args.mpp, model.stride, edge_um)
    t_load = time.perf_counter() - t0
    lesion_frac = []
    for row in manifest.rows:
        les = json.loads((manifest_path.parent / "lesions" / f"{row.slide_id}.json").read_text())
        if les["lesions"]:
            lesion_frac.append(sum(math.pi * l["radius"] ** 2 for l in les["lesions"]))
    t0 = time.perf_counter()
    if args.bn_calib:
        calib = [train[i][0] for i in rng.permutation(len(train))[: args.bn_calib]]
        calibrate_batchnorm(model.trunk, [torch.cat(calib[i : i + 4]) for i in range(0, len(calib), 4)])
    model.trunk.apply(lambda m: m.eval() if isinstance(m, nn.BatchNorm2d) else None)
    t_calib = time.perf_counter() - t0
    groups = [
        {"params": [p for p in model.trunk.parameters()], "lr": args.lr_trunk},
        {"params": [p for p in model.head.parameters()], "lr": args.lr_head},
    ]
    opt = torch.optim.AdamW(groups, weight_decay=args.wd)
    steps_per_epoch = math.ceil(len(train) / args.accum)
    total = steps_per_epoch * args.epochs

    def factor(step):
        w = min(1.0, (step + 1) / args.warmup) if args.warmup else 1.0
        if args.schedule == "cosine":
            return w * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
        return w

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    history = []
    auc0 = evaluate(model, val)
    t_train0 = time.perf_counter()
    stopped = False
    n_slides = 0
    for epoch in range(args.epochs):
        order = rng.permutation(len(train))
        if args.balanced:  # alternate classes so every accumulation window is balanced
            pos = [i for i in order if train[i][2] == 1]
            neg = [i for i in order if train[i][2] == 0]
            order = [i for pair in zip(pos, neg) for i in pair] + pos[len(neg):] + neg[len(pos):]
        losses = []
        for i, idx in enumerate(order):
            x, cells, label, _ = train[idx]
            if args.augment:
                x, cells = augment(x, cells, rng)
            out = model(x, cells, label=label)
            loss = model.head.loss(out, label)
            (loss / args.accum).backward()
            losses.append(float(loss.detach()))
            n_slides += 1
            if (i + 1) % args.accum == 0 or i + 1 == len(order):
                if args.clip:
                    nn.utils.clip_grad_norm_(model.parameters(), args.clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
                sched.step()
            if time.perf_counter() - t_start > args.budget:
                stopped = True
                break
        rec = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "t": time.perf_counter() - t_start}
        if (epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs or stopped:
            rec["auc"], rec["acc"], rec["prob_sd"] = evaluate(model, val)
        history.append(rec)
        print(json.dumps(rec), flush=True)
        if stopped:
            break
    t_train = time.perf_counter() - t_train0
    result = {
        "tag": args.tag,
        "args": vars(args),
        "synth": synth_config,
        "n_train": len(train),
        "n_val": len(val),
        "val_pos": int(sum(v[2] for v in val)),
        "instances_per_slide": float(np.mean([int(t[1].sum()) for t in train])),
        "input_shape": list(train[0][0].shape),
        "lesion_px_level0_mean": float(np.mean(lesion_frac)) if lesion_frac else 0.0,
        "auc_init": auc0[0],
        "history": history,
        "final_auc": history[-1].get("auc"),
        "best_auc": max(h.get("auc", 0) or 0 for h in history),
        "t_synth_s": t_synth,
        "t_load_s": t_load,
        "t_calib_s": t_calib,
        "t_train_s": t_train,
        "s_per_slide": t_train / max(n_slides, 1),
        "t_total_s": time.perf_counter() - t_start,
        "stopped_by_budget": stopped,
        "torch": torch.__version__,
        "threads": args.threads,
    }
    Path(args.log).parent.mkdir(parents=True, exist_ok=True)
    with open(args.log, "a") as f:
        f.write(json.dumps(result) + "\n")
    print(
        f"RESULT {args.tag}: final AUC {result['final_auc']} best {result['best_auc']} "
        f"total {result['t_total_s']:.0f}s synth {t_synth:.0f}s {result['s_per_slide']:.2f}s/slide"
    )


if __name__ == "__main__":
    main()
