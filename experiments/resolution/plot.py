"""The resolution experiment's plot: test AUC and lesion attention against resolution."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gigastream.train.metrics import mean_sd


def plot_resolution(rows: Sequence[dict[str, Any]], out: str | Path) -> Path:
    """Write the resolution experiment's plot: test AUC and lesion attention against mpp.

    Left: test AUC of every run (dots) and the mean ± sd per resolution, against the
    resolution (µm/px, log scale, finest on the left). Right: attention mass on lesion
    instances and the fraction of instances that overlap a lesion (mean ± sd), if measured.

    Args:
        rows: ``results.json`` rows of the sweep (``mpp``, ``test_auc``,
            ``attention_in_lesion``, ``lesion_fraction``).
        out: PNG file to write.

    Returns:
        ``out``.
    """
    from matplotlib.figure import Figure

    mpps = sorted({float(r["mpp"]) for r in rows})

    def stats(key: str) -> tuple[list[float], list[float]]:
        pairs = [mean_sd([r[key] for r in rows if r["mpp"] == m]) for m in mpps]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    fig = Figure(figsize=(9, 3.8), dpi=100)
    ax_auc, ax_att = fig.subplots(1, 2)
    for ax in (ax_auc, ax_att):
        ax.set_xscale("log", base=2)
        ax.set_xticks(mpps, [f"{m:g}" for m in mpps])
        ax.minorticks_off()
        ax.set_xlabel("resolution (µm/px; coarser →)")
    seen = [(float(r["mpp"]), r["test_auc"]) for r in rows if r["test_auc"] is not None]
    if seen:
        xs, ys = zip(*seen, strict=True)
        ax_auc.plot(xs, ys, "o", color="0.6", markersize=4, label="one run (seed)")
    mean, sd = stats("test_auc")
    ax_auc.errorbar(mpps, mean, yerr=sd, fmt="s-", capsize=4, label="mean ± sd")
    ax_auc.axhline(0.5, color="0.6", lw=0.8, ls=":", label="chance")
    ax_auc.set_ylim(0.3, 1.02)
    ax_auc.set_ylabel("test AUC")
    ax_auc.legend(fontsize=8, loc="lower left")
    if any(r.get("attention_in_lesion") is not None for r in rows):
        mean, sd = stats("attention_in_lesion")
        ax_att.errorbar(mpps, mean, yerr=sd, fmt="o-", capsize=4, label="attention on lesions")
        mean, sd = stats("lesion_fraction")
        ax_att.errorbar(
            mpps, mean, yerr=sd, fmt="s--", capsize=4, label="lesion fraction of instances"
        )
        ax_att.set_ylim(0, 1.02)
        ax_att.set_ylabel("share (positive test slides)")
        ax_att.legend(fontsize=8, loc="upper left")
    else:
        ax_att.set_axis_off()
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out)
    return out


__all__ = ["plot_resolution"]
