"""The plan search's own pieces: the Pareto pruning and the cuts it may choose from.

:func:`~gigastream.streaming.planner.search.prune` is compared with a brute-force Pareto
front on random labels with many ties; planned cuts are checked to skip the boundaries
before element-wise units (whose plans the cost model cannot tell apart), while fixed
cuts keep them.
"""

from __future__ import annotations

import random

import pytest
from torch import nn

from gigastream.streaming import StreamingModule
from gigastream.streaming.planner import search
from gigastream.streaming.planner.search import CRITERIA, Label, prune


def _labels(rng: random.Random, n: int) -> list[Label]:
    """Labels drawn from few values, so that ties and exact duplicates are common."""
    return [
        Label(
            stored=rng.randrange(4),
            peak=rng.randrange(4),
            flops=float(rng.randrange(4)),
            parent=None,
            step=(i,),
            host_stored=rng.randrange(3),
            host_peak=rng.randrange(3),
        )
        for i in range(n)
    ]


def _brute_front(labels: list[Label], key: str) -> set[tuple]:
    """The dimensions of the labels that no other label is <= in every dimension of (one
    of each group of equal labels survives)."""
    dims = [(*(getattr(lb, c) for c in CRITERIA[key]), lb.stored, lb.host_stored) for lb in labels]
    front = set()
    for d in dims:
        if not any(e != d and all(a <= b for a, b in zip(e, d, strict=True)) for e in dims):
            front.add(d)
    return front


@pytest.mark.parametrize("key", sorted(CRITERIA))
@pytest.mark.parametrize("n", [2, 7, 63, 64, 65, 300])
def test_prune_keeps_exactly_the_pareto_front(key, n, monkeypatch):
    monkeypatch.setattr(search, "_PRUNE_BLOCK", 16)  # several blocks even for small fronts
    rng = random.Random(n * 7 + len(key))
    labels = _labels(rng, n)
    kept = prune(labels, key)
    dims = [(*(getattr(lb, c) for c in CRITERIA[key]), lb.stored, lb.host_stored) for lb in kept]
    assert len(dims) == len(set(dims)), "one label per group of equal ones"
    assert set(dims) == _brute_front(labels, key)
    # the first of equal labels (in input order) is the one kept: deterministic plans
    for lb in kept:
        d = (*(getattr(lb, c) for c in CRITERIA[key]), lb.stored, lb.host_stored)
        first = next(
            x
            for x in labels
            if (*(getattr(x, c) for c in CRITERIA[key]), x.stored, x.host_stored) == d
        )
        assert lb is first


def _vgg_like() -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = 3
    for out in (8, 16, 16):
        layers += [nn.Conv2d(channels, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
        layers.append(nn.MaxPool2d(2))
        channels = out
    return nn.Sequential(*layers).eval()


def test_planned_cuts_skip_the_boundaries_before_element_wise_units():
    net = _vgg_like()
    plan = StreamingModule(net, memory_budget="2MiB").plan((1, 3, 256, 256))
    starts = [int(s.names[0]) for s in plan.segments]
    assert len(starts) > 1, "the budget forces several segments"
    kinds = [type(m) for m in net]
    for i in starts:
        assert kinds[i] not in (nn.BatchNorm2d, nn.ReLU), (starts, kinds)


def test_fixed_cuts_may_still_cut_before_an_element_wise_unit():
    net = _vgg_like()
    plan = StreamingModule(net, tile_size=64, segments=["1", "3"]).plan((1, 3, 256, 256))
    assert [int(s.names[0]) for s in plan.segments] == [0, 1, 3]
