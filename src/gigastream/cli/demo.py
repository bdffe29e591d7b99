"""``gigastream demo``: synthetic slides -> StreamingCLAM trained end to end -> metrics, heatmaps.

Writes a small synthetic dataset, trains a StreamingCLAM model (streamed ResNet trunk + CLAM
head) on whole slides with slide labels only, validates it and writes ``metrics.json``,
``training_curve.png``, ``heatmaps/*.png`` and ``checkpoints/`` (with ``config.yaml``) into
``--out``. Settings: defaults < ``--config`` YAML (sections ``synth``, ``model``, ``train``,
``data``) < command-line flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

COMMAND = ("demo",)
HELP = "train StreamingCLAM end to end on a small synthetic slide dataset (~3-5 min on 2 CPU cores)"

#: Where the demo looks for real H&E to cut synthetic tissue from (first existing wins).
SOURCE_CANDIDATES = ("../shared/data", "shared/data")

# demo-sized defaults: 12 slides of 2048^2 px at 0.5 um/px, streamed at 1 um/px (1024^2
# inputs in 512 px tiles); 8 train, 4 validation; 4 epochs (~4 min on one CPU thread)
DEMO_SLIDES, DEMO_SIZE, DEMO_MPP, DEMO_TILE, DEMO_EPOCHS = 12, 2048, 1.0, 512, 4
DEMO_LESION_SIZE = 256  # level-0 px: 128 px at 1 um/px, two instances across


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--config", type=Path, help="YAML file of settings (flags override it)")
    parser.add_argument("--epochs", type=int, help=f"training epochs (default {DEMO_EPOCHS})")
    parser.add_argument("--slides", type=int, help=f"synthetic slides (default {DEMO_SLIDES})")
    parser.add_argument(
        "--size", type=int, help=f"slide edge in level-0 pixels at 0.5 um/px (default {DEMO_SIZE})"
    )
    parser.add_argument(
        "--mpp", type=float, help=f"resolution the slides are streamed at (default {DEMO_MPP})"
    )
    parser.add_argument("--arch", choices=("resnet18", "resnet34", "resnet50"), help="trunk")
    parser.add_argument("--weights", type=Path, help="local torchvision state_dict for the trunk")
    parser.add_argument("--tile-size", type=int, help=f"streaming tile edge (default {DEMO_TILE})")
    parser.add_argument("--lr", type=float, help="Adam learning rate")
    parser.add_argument("--seed", type=int, help="seed of data, split, initialisation (default 0)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default cpu)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--sources",
        type=Path,
        nargs="+",
        help="H&E images/slides to cut synthetic tissue from (default: ../shared/data)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _find_sources(given: list[Path] | None) -> list[Path]:
    if given:
        return given
    roots = [Path.cwd() / c for c in SOURCE_CANDIDATES]
    roots.append(Path(__file__).resolve().parents[3] / SOURCE_CANDIDATES[0])  # repo checkout
    for root in roots:
        found = [root / sub for sub in ("images", "slides") if (root / sub).is_dir()]
        if found:
            return found
    return []


def procedural_he_image(path: Path, size: int = 1024, seed: int = 0) -> Path:
    """Write a procedural H&E-like PNG: pink fibrous stroma with clusters of dark nuclei.

    The fallback texture source when no real H&E image is at hand (e.g. a fresh ``pip
    install``): the demo then still runs, on cruder tissue. Real H&E (``--sources``) is
    better.
    """
    from PIL import Image
    from skimage.draw import ellipse

    rng = np.random.default_rng(seed)

    def smooth_noise(cells: int) -> np.ndarray:  # (size, size) in [0, 1]
        grid = Image.fromarray(rng.random((cells, cells), dtype=np.float32), mode="F")
        return np.asarray(grid.resize((size, size), Image.BICUBIC)).clip(0, 1)

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = smooth_noise(4) * np.pi
    phase = (xx * np.cos(angle) + yy * np.sin(angle)) / 4.0 + 12.0 * smooth_noise(24)
    fibres = (0.5 + 0.5 * np.sin(phase)) * smooth_noise(16)
    shade = 0.6 * smooth_noise(8) + 0.5 * fibres  # (size, size)
    stroma = np.array([235, 165, 200], np.float32)
    dark = np.array([200, 110, 170], np.float32)
    image = stroma + (dark - stroma) * shade[..., None]  # (size, size, 3)
    density = smooth_noise(6)
    for _ in range(size * size // 250):
        y, x = rng.integers(0, size, 2)
        if rng.random() > density[y, x] ** 2:
            continue
        rows, cols = ellipse(
            y, x, rng.uniform(3, 7), rng.uniform(3, 7), (size, size), rotation=rng.uniform(0, np.pi)
        )
        image[rows, cols] = np.array([95, 50, 140]) + rng.normal(0, 12, 3)
    image += rng.normal(0, 6, image.shape)
    Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(path)
    return path


def _overlay(obj, section: dict | None, name: str):
    """``obj`` (a dataclass) with the fields of a YAML section replaced."""
    if not section:
        return obj
    fields = {f.name for f in dataclasses.fields(obj)}
    unknown = sorted(set(section) - fields)
    if unknown:
        raise ValueError(f"unknown {name} setting(s) in --config: {', '.join(unknown)}")
    return dataclasses.replace(obj, **section)


def _set(obj, **values):
    return dataclasses.replace(obj, **{k: v for k, v in values.items() if v is not None})


def demo_tissue_config(synth):
    """Tissue masker settings scaled to small synthetic slides.

    The defaults (8 um/px, specks below ~(316 um)^2) suit real slides of centimetres; a
    demo slide is about a millimetre wide, so the mask resolution and the speck and hole
    sizes are scaled to the slide (a 256 px mask, specks below 0.2% of the slide).
    """
    from gigastream.wsi.tissue import TissueMaskConfig

    edge_um = synth.size * synth.mpp
    defaults = TissueMaskConfig()
    return TissueMaskConfig(
        mpp=min(defaults.mpp, max(synth.mpp, edge_um / 256)),
        min_object_um2=min(defaults.min_object_um2, 0.002 * edge_um**2),
        max_hole_um2=min(defaults.max_hole_um2, 0.005 * edge_um**2),
    )


def run(args: argparse.Namespace) -> int:
    package_logger = logging.getLogger("gigastream")
    level = package_logger.level
    if args.verbose == 0:  # a demo shows what it does: the library's INFO log lines
        package_logger.setLevel(logging.INFO)
    try:
        return _run(args)
    finally:
        package_logger.setLevel(level)


def _run(args: argparse.Namespace) -> int:
    import torch
    import yaml

    from gigastream.models.streaming_clam import StreamingCLAM, StreamingCLAMConfig
    from gigastream.train.slide_trainer import SlideTrainerConfig, train_slide_classifier
    from gigastream.wsi.dataset import SlideDatasetConfig
    from gigastream.wsi.manifest import read_manifest
    from gigastream.wsi.synth import SynthConfig, synthesize_dataset
    from gigastream.wsi.tissue import TissueMaskConfig

    file_cfg = yaml.safe_load(args.config.read_text()) if args.config else {}
    if not isinstance(file_cfg, dict):
        raise ValueError(f"{args.config}: expected a mapping of sections")
    unknown = sorted(set(file_cfg) - {"synth", "model", "train", "data"})
    if unknown:
        raise ValueError(f"unknown section(s) in --config: {', '.join(unknown)}")
    seed = args.seed if args.seed is not None else file_cfg.get("train", {}).get("seed", 0)

    synth = SynthConfig(slides=DEMO_SLIDES, size=DEMO_SIZE, lesion_size=DEMO_LESION_SIZE, seed=seed)
    synth = _set(
        _overlay(synth, file_cfg.get("synth"), "synth"), slides=args.slides, size=args.size
    )
    synth.lesion_size = min(synth.lesion_size, synth.size // 4)  # small slides, small lesions
    model_cfg = _overlay(StreamingCLAMConfig(tile_size=DEMO_TILE), file_cfg.get("model"), "model")
    model_cfg = _set(
        model_cfg,
        arch=args.arch,
        tile_size=args.tile_size,
        weights_path=str(args.weights) if args.weights else None,
    )
    train_cfg = _overlay(SlideTrainerConfig(epochs=DEMO_EPOCHS), file_cfg.get("train"), "train")
    train_cfg = _set(
        train_cfg,
        epochs=args.epochs,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        progress=False if args.no_progress else None,
    )
    data_cfg = _set(
        _overlay(SlideDatasetConfig(mpp=DEMO_MPP), file_cfg.get("data"), "data"), mpp=args.mpp
    )
    if not (file_cfg.get("data") or {}).get("tissue"):
        data_cfg.tissue = demo_tissue_config(synth)
    elif isinstance(data_cfg.tissue, dict):
        data_cfg.tissue = TissueMaskConfig(**data_cfg.tissue)
    if args.threads:
        torch.set_num_threads(args.threads)

    start = time.perf_counter()
    out: Path = args.out
    sources = _find_sources(args.sources)
    if not sources:
        out.mkdir(parents=True, exist_ok=True)
        sources = [procedural_he_image(out / "procedural_he.png", seed=synth.seed)]
        logger.warning(
            "no H&E images found (pass --sources): cutting tissue from a procedural texture, %s",
            sources[0],
        )
    manifest_path = synthesize_dataset(out / "data", synth, sources, progress=train_cfg.progress)
    synth_seconds = time.perf_counter() - start
    print(f"wrote {synth.slides} synthetic slides of {synth.size}^2 px in {synth_seconds:.1f} s")
    manifest = read_manifest(manifest_path)

    torch.manual_seed(train_cfg.seed)
    model_cfg.num_classes = len(manifest.labels)
    model = StreamingCLAM(model_cfg)
    resolved = {"model": model_cfg, "synth": synth, "sources": [str(s) for s in sources]}
    metrics = train_slide_classifier(model, manifest, out, train_cfg, data_cfg, resolved)

    total = time.perf_counter() - start
    final = metrics["final"]
    positive = manifest.labels[-1]
    slides = ", ".join(
        f"{p['slide_id']} ({p['label']}) {p['probs'][-1]:.3f}" for p in final["predictions"]
    )
    print(
        f"done in {total:.0f} s (data {synth_seconds:.0f} s, training+validation "
        f"{metrics['seconds']:.0f} s), peak RSS {metrics['peak_rss_mib']:.0f} MiB\n"
        f"validation ({len(metrics['val_slides'])} slides): AUC {final['val_auc']:.3f}, "
        f"accuracy {final['val_accuracy']:.3f}, loss {final['val_loss']:.4f}\n"
        f"p({positive}) per validation slide: {slides}\n"
        f"outputs in {out}: metrics.json, training_curve.png, heatmaps/, checkpoints/"
    )
    low, high = final["val_prob_range"]
    if high - low < 0.05:
        print(
            f"note: validation predictions span only {low:.3f}..{high:.3f}: the model has not "
            "learned to tell the classes apart yet (train longer, on more or larger slides, "
            "or from pretrained --weights); on so few slides AUC and accuracy are coarse."
        )
    return 0
