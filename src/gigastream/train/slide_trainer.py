"""Train a slide classifier (e.g. StreamingCLAM) end to end on whole slides, one slide a step.

Every step streams one whole slide through the model (exact gradients, bounded memory),
so the only label needed is the slide's. The loop:

- splits a manifest into train and validation slides (the manifest's ``split`` column if it
  has one, else stratified patient-level folds);
- trains with Adam for ``epochs`` epochs, validating after each (loss, ROC AUC, accuracy);
- writes, into the output folder, as it goes: ``checkpoints/last.pt`` and
  ``checkpoints/best.pt`` (atomically, so a run that fails part-way keeps the checkpoints of
  its completed epochs) with the resolved configuration in ``checkpoints/config.yaml`` next to
  them, ``metrics.json`` (per-epoch losses, validation metrics, seconds, peak RSS, the
  streaming plan) after every epoch, then ``training_curve.png`` and attention heatmaps of
  validation slides in ``heatmaps/``.

Example:
    >>> manifest = read_manifest("synth/manifest.csv")  # doctest: +SKIP
    >>> model = StreamingCLAM(StreamingCLAMConfig(tile_size=512))  # doctest: +SKIP
    >>> result = train_slide_classifier(model, manifest, "runs/demo", SlideTrainerConfig())  # doctest: +SKIP
    >>> result["final"]["val_auc"]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from gigastream.streaming.memory import peak_rss_mib
from gigastream.wsi.dataset import SlideDataset, SlideDatasetConfig, SlideItem
from gigastream.wsi.manifest import Manifest, stratified_folds
from gigastream.wsi.reader import SlideError

logger = logging.getLogger(__name__)

TRAIN_SPLITS = ("train", "training")
VAL_SPLITS = ("val", "valid", "validation", "test")


@dataclass
class SlideTrainerConfig:
    """How a slide classifier is trained.

    Attributes:
        epochs: passes over the training slides.
        lr: Adam learning rate.
        weight_decay: Adam (L2) weight decay.
        val_fraction: fraction of slides held out when the manifest has no ``split`` column.
        seed: seed of the split, the slide order and dropout.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        heatmaps: number of validation slides to draw attention heatmaps for.
        progress: tqdm progress bars.
    """

    epochs: int = 3
    lr: float = 1e-4
    weight_decay: float = 1e-4
    val_fraction: float = 1 / 3
    seed: int = 0
    device: str = "cpu"
    heatmaps: int = 4
    progress: bool = True

    def validate(self) -> None:
        """Raise ValueError on impossible settings."""
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")


# ----------------------------------------------------------------------------- helpers
def split_manifest(
    manifest: Manifest, val_fraction: float = 1 / 3, seed: int = 0
) -> tuple[Manifest, Manifest]:
    """Train and validation slides of a manifest.

    The manifest's ``split`` column is used when any row has one (``train``/``training``
    vs ``val``/``valid``/``validation``/``test``; other names are left out); otherwise
    fold 0 of ``round(1 / val_fraction)`` stratified patient-level folds is held out.

    Returns:
        ``(train, val)`` manifests with the original label order.

    Raises:
        ValueError: a split is empty.
    """
    if any(row.split for row in manifest.rows):
        train = [r for r in manifest.rows if (r.split or "").lower() in TRAIN_SPLITS]
        val = [r for r in manifest.rows if (r.split or "").lower() in VAL_SPLITS]
    else:
        folds = max(2, round(1 / val_fraction))
        fold_of = stratified_folds(manifest, folds=folds, seed=seed)
        train = [r for r in manifest.rows if fold_of[r.slide_id] != 0]
        val = [r for r in manifest.rows if fold_of[r.slide_id] == 0]
    if not train or not val:
        raise ValueError(
            f"need training and validation slides, got {len(train)} and {len(val)} "
            f"from {len(manifest)} slides"
        )
    return Manifest(train, list(manifest.labels)), Manifest(val, list(manifest.labels))


def classification_metrics(labels: Sequence[int], probs: np.ndarray) -> dict[str, float]:
    """ROC AUC (class 1 vs rest; NaN with one class present) and accuracy (argmax).

    Args:
        labels: class index per slide.
        probs: ``(slides, num_classes)`` softmax probabilities.
    """
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    accuracy = float((probs.argmax(axis=1) == labels).mean()) if len(labels) else math.nan
    auc = math.nan
    if len(np.unique(labels)) > 1:
        if probs.shape[1] == 2:
            auc = float(roc_auc_score(labels, probs[:, 1]))
        else:
            auc = float(roc_auc_score(labels, probs, multi_class="ovr"))
    return {"auc": auc, "accuracy": accuracy}


def _jsonable(value: Any) -> Any:
    """Config values as plain YAML/JSON types (dtypes, paths and devices as strings)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None  # strict JSON has no NaN
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _atomic_write(path: Path, write) -> None:
    """Write via a temporary file and rename, so ``path`` is never half-written."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_checkpoint(path: Path, model: nn.Module, config: dict[str, Any], **extra: Any) -> Path:
    """Save ``model``'s state dict with the resolved ``config`` (atomically)."""
    state = {"model": model.state_dict(), "config": config, **extra}
    _atomic_write(path, lambda tmp: torch.save(state, tmp))
    return path


def _write_json(path: Path, data: dict[str, Any]) -> None:
    text = json.dumps(_jsonable(data), indent=1, allow_nan=False)
    _atomic_write(path, lambda tmp: tmp.write_text(text))


def plot_training_curve(history: list[dict[str, Any]], out: Path) -> Path:
    """Training and validation loss per epoch, and validation AUC/accuracy, as a PNG."""
    from matplotlib.figure import Figure  # no pyplot: no global state

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(9, 3.6), dpi=100)
    ax_loss, ax_metric = fig.subplots(1, 2)
    steps = [
        (h["epoch"] - 1 + (i + 1) / len(h["train_slide_losses"]), loss)
        for h in history
        for i, loss in enumerate(h["train_slide_losses"])
    ]
    if steps:
        ax_loss.plot(*zip(*steps, strict=True), ".", color="0.7", label="train (per slide)")
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train (epoch mean)")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], "s-", label="validation")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.legend(fontsize=8)
    for key, marker in (("val_auc", "o-"), ("val_accuracy", "s--")):
        values = [h[key] if h[key] is not None else math.nan for h in history]
        ax_metric.plot(epochs, values, marker, label=key.replace("_", " "))
    ax_metric.set_ylim(-0.02, 1.02)
    ax_metric.set_xlabel("epoch")
    ax_metric.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    return out


# ----------------------------------------------------------------------------- loop
def _open(dataset: SlideDataset, index: int, device: torch.device) -> SlideItem | None:
    """Slide ``index`` ready to stream on ``device``, or None (logged) if it is unusable."""
    try:
        item = dataset[index]
    except SlideError as exc:  # unreadable or no tissue (NoTissueError)
        dataset.skipped[dataset.manifest.rows[index].slide_id] = str(exc)
        logger.warning("skipping %s", exc)
        return None
    item.source.device = device  # SlideSource reads on the CPU and moves each tile
    return item


def train_epoch(
    model: nn.Module,
    dataset: SlideDataset,
    optimizer: torch.optim.Optimizer,
    order: Sequence[int],
    device: torch.device,
    progress: bool = True,
    description: str = "train",
) -> list[float]:
    """One optimiser step per slide, in ``order``; returns the loss of every slide."""
    model.train()
    losses: list[float] = []
    bar = tqdm(order, desc=description, disable=not progress, unit="slide", leave=False)
    for index in bar:  # slides without tissue are skipped (see SlideDataset.skipped)
        item = _open(dataset, index, device)
        if item is None:
            continue
        try:
            optimizer.zero_grad(set_to_none=True)
            out = model(item.source, label=item.label)
            loss = model.loss(out, item.label)
            loss.backward()
            optimizer.step()
        finally:
            item.close()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{np.mean(losses):.3f}")
    return losses


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: SlideDataset,
    device: torch.device,
    progress: bool = True,
    description: str = "validate",
) -> dict[str, Any]:
    """Loss, class probabilities and attention maps of every slide of ``dataset``.

    Returns:
        ``loss`` (mean), ``auc``, ``accuracy``, and per usable slide: ``indices`` (into
        ``dataset``), ``slide_ids``, ``labels``,
        ``probs`` ``(slides, num_classes)``, ``attention_maps`` (``(h, w)`` arrays, NaN
        where a position was not an instance).
    """
    model.eval()
    indices, slide_ids, labels, probs, losses, maps = [], [], [], [], [], []
    for index in tqdm(
        range(len(dataset)), desc=description, disable=not progress, unit="slide", leave=False
    ):
        item = _open(dataset, index, device)
        if item is None:
            continue
        try:
            out = model(item.source, label=item.label)
            losses.append(float(model.loss(out, item.label)))
        finally:
            item.close()
        indices.append(index)
        slide_ids.append(item.row.slide_id)
        labels.append(item.label)
        probs.append(torch.softmax(out.logits.double(), dim=0).cpu().numpy())
        attention = out.attention_map.double().cpu().numpy()
        maps.append(np.where(out.instances.cpu().numpy(), attention, np.nan))
    if not probs:
        raise ValueError(f"no usable validation slide (skipped: {dataset.skipped})")
    probs_array = np.stack(probs)  # (slides, num_classes)
    return {
        "loss": float(np.mean(losses)),
        **classification_metrics(labels, probs_array),
        "indices": indices,
        "slide_ids": slide_ids,
        "labels": labels,
        "probs": probs_array,
        "attention_maps": maps,
    }


def write_heatmaps(
    model: nn.Module,
    dataset: SlideDataset,
    evaluation: dict[str, Any],
    out_dir: Path,
    count: int,
    label_names: Sequence[str],
) -> list[Path]:
    """Attention heatmap PNGs of up to ``count`` validation slides (classes alternating)."""
    from gigastream.viz.heatmap import heatmap_png

    out_dir.mkdir(parents=True, exist_ok=True)
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(evaluation["labels"]):
        by_class.setdefault(label, []).append(i)
    chosen: list[int] = []
    while len(chosen) < min(count, len(evaluation["labels"])):  # round-robin over classes
        for indices in by_class.values():
            if indices and len(chosen) < count:
                chosen.append(indices.pop(0))
    paths = []
    for i in chosen:
        item = dataset[evaluation["indices"][i]]
        try:
            slide_id = evaluation["slide_ids"][i]
            prob = evaluation["probs"][i]
            predicted = int(np.argmax(prob))
            title = (
                f"{slide_id}: true {label_names[evaluation['labels'][i]]}, predicted "
                f"{label_names[predicted]} (p={prob[predicted]:.2f})"
            )
            paths.append(
                heatmap_png(
                    item.source.reader,
                    evaluation["attention_maps"][i],
                    out_dir / f"{slide_id}.png",
                    cell_um=model.output_stride * item.source.mpp,
                    title=title,
                    label="attention",
                )
            )
        finally:
            item.close()
    return paths


def train_slide_classifier(
    model: nn.Module,
    manifest: Manifest,
    out: str | Path,
    config: SlideTrainerConfig | None = None,
    data: SlideDatasetConfig | None = None,
    resolved_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train ``model`` on the manifest's slides and write the outputs (module docstring).

    Args:
        model: a slide classifier: ``model(source, label=y)`` gives an output with
            ``logits``, ``attention_map`` ``(h, w)`` and ``instances`` ``(h, w)``;
            ``model.loss(out, y)`` the loss; ``model.output_stride`` input pixels per
            attention cell; optionally ``model.trunk.last_plan`` (a streaming plan).
        manifest: the slides.
        out: output folder (created).
        config: training settings.
        data: how slides are read (mpp, tissue masks; ``mask_dir`` defaults to
            ``out/masks``).
        resolved_config: the full configuration of the run (model, data, ...), written
            to ``checkpoints/config.yaml`` and stored in every checkpoint.

    Returns:
        The contents of ``metrics.json``.
    """
    import yaml

    config = config or SlideTrainerConfig()
    config.validate()
    out = Path(out)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    data = dataclasses.replace(data or SlideDatasetConfig())
    if data.mask_dir is None:
        data.mask_dir = out / "masks"
    device = torch.device(config.device)
    resolved = _jsonable(
        {**(resolved_config or {}), "train": config, "data": data, "labels": manifest.labels}
    )
    (out / "checkpoints" / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))

    train_manifest, val_manifest = split_manifest(manifest, config.val_fraction, config.seed)
    train_set, val_set = SlideDataset(train_manifest, data), SlideDataset(val_manifest, data)
    logger.info(
        "training on %d slides, validating on %d (labels %s)",
        len(train_set),
        len(val_set),
        manifest.labels,
    )
    torch.manual_seed(config.seed)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    order_rng = np.random.default_rng(config.seed)

    metrics: dict[str, Any] = {
        "status": "running",
        "train_slides": [r.slide_id for r in train_manifest.rows],
        "val_slides": [r.slide_id for r in val_manifest.rows],
        "labels": list(manifest.labels),
        "parameters": sum(p.numel() for p in params),
        "epochs": [],
        "plan": None,
        "config": resolved,
    }
    best_score = -math.inf
    start = time.perf_counter()
    evaluation: dict[str, Any] = {}
    try:
        for epoch in range(1, config.epochs + 1):
            t0 = time.perf_counter()
            order = order_rng.permutation(len(train_set)).tolist()
            desc = f"epoch {epoch}/{config.epochs} train"
            losses = train_epoch(model, train_set, optimizer, order, device, config.progress, desc)
            train_seconds = time.perf_counter() - t0
            if not losses:
                raise ValueError(f"no usable training slide (skipped: {train_set.skipped})")
            plan = getattr(getattr(model, "trunk", None), "last_plan", None)
            if metrics["plan"] is None and plan is not None:
                logger.debug("streaming plan (every slide of this shape):\n%s", plan)
                metrics["plan"] = {"text": str(plan), **plan.to_dict()}
            t1 = time.perf_counter()
            desc = f"epoch {epoch}/{config.epochs} validate"
            evaluation = evaluate(model, val_set, device, config.progress, desc)
            record = {
                "epoch": epoch,
                "train_loss": float(np.mean(losses)),
                "train_slide_losses": losses,
                "skipped_slides": {**train_set.skipped, **val_set.skipped},
                "val_loss": evaluation["loss"],
                "val_auc": evaluation["auc"],
                "val_accuracy": evaluation["accuracy"],
                "train_seconds": train_seconds,
                "val_seconds": time.perf_counter() - t1,
                "seconds_per_train_slide": train_seconds / len(losses),
                "peak_rss_mib": peak_rss_mib(),
            }
            metrics["epochs"].append(record)
            logger.info(
                "epoch %d: train loss %.4f, val loss %.4f, val AUC %.3f, val accuracy %.3f "
                "(%.0f s train, %.0f s validation, peak RSS %.0f MiB)",
                epoch,
                record["train_loss"],
                record["val_loss"],
                record["val_auc"],
                record["val_accuracy"],
                record["train_seconds"],
                record["val_seconds"],
                record["peak_rss_mib"],
            )
            extra = {"epoch": epoch, "labels": list(manifest.labels), "metrics": record}
            save_checkpoint(
                out / "checkpoints" / "last.pt",
                model,
                resolved,
                optimizer=optimizer.state_dict(),
                **extra,
            )
            # best by validation AUC, ties (and NaN AUCs) broken by lower validation loss
            auc = record["val_auc"] if not math.isnan(record["val_auc"]) else -1.0
            score = auc - 1e-6 * record["val_loss"]
            if score > best_score:
                best_score = score
                save_checkpoint(out / "checkpoints" / "best.pt", model, resolved, **extra)
                metrics["best_epoch"] = epoch
            metrics["seconds"] = time.perf_counter() - start
            metrics["peak_rss_mib"] = peak_rss_mib()
            _write_json(out / "metrics.json", metrics)
    except BaseException as exc:
        metrics["status"] = f"failed: {type(exc).__name__}: {exc}"
        metrics["seconds"] = time.perf_counter() - start
        metrics["peak_rss_mib"] = peak_rss_mib()
        _write_json(out / "metrics.json", metrics)
        raise

    plot_training_curve(metrics["epochs"], out / "training_curve.png")
    heatmaps = write_heatmaps(
        model, val_set, evaluation, out / "heatmaps", config.heatmaps, manifest.labels
    )
    last_class = evaluation["probs"][:, -1]  # p(last class), e.g. p(positive)
    metrics["final"] = {
        "val_prob_range": [float(last_class.min()), float(last_class.max())],
        "val_auc": evaluation["auc"],
        "val_accuracy": evaluation["accuracy"],
        "val_loss": evaluation["loss"],
        "predictions": [
            {"slide_id": s, "label": manifest.labels[y], "probs": p.tolist()}
            for s, y, p in zip(
                evaluation["slide_ids"], evaluation["labels"], evaluation["probs"], strict=True
            )
        ],
    }
    metrics["outputs"] = {
        "training_curve": "training_curve.png",
        "heatmaps": [str(p.relative_to(out)) for p in heatmaps],
        "checkpoints": ["checkpoints/last.pt", "checkpoints/best.pt"],
        "config": "checkpoints/config.yaml",
    }
    metrics["status"] = "completed"
    metrics["seconds"] = time.perf_counter() - start
    metrics["peak_rss_mib"] = peak_rss_mib()
    _write_json(out / "metrics.json", metrics)
    return metrics


__all__ = [
    "SlideTrainerConfig",
    "classification_metrics",
    "evaluate",
    "peak_rss_mib",
    "split_manifest",
    "train_epoch",
    "train_slide_classifier",
    "write_heatmaps",
]
