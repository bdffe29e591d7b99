"""The plan search: a dynamic programme over a trunk's unit boundaries.

A *state* is a boundary (and whether the map there is in host memory, and how the segment
before it ran); a *label* carries the device and host bytes the segments so far hold for
backward, the device and host peaks so far and the compute so far. Every segment choice
(where it ends, keep or stream with which tile grid, whether its output map is offloaded)
extends the labels; labels that hold at least as much and are no better are dropped.
Estimated peak of the backward pass of segment ``k``::

    device: held by segments <= k (stored input maps, kept graphs) + final output
            + gradient of k's output map + gradient accumulator of k's input map + k's work
    host:   offloaded maps at k's input and before (later ones are freed by then)
            + k's output gradient and input gradient accumulator, where offloaded

where a map or gradient offloaded to host memory counts nothing on the device.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from gigastream.streaming.planner.cost import TRANSFER_FLOPS_PER_BYTE, Option, TrunkCosts

# a plan that keeps less in host memory is preferred unless its estimated compute exceeds the
# fastest plan's by more than this fraction (host memory is shared with the rest of the
# process, and transfers are only roughly priced by TRANSFER_FLOPS_PER_BYTE)
OFFLOAD_TOLERANCE = 0.05

# what a search minimises (then breaks ties on), per key
CRITERIA = {
    "flops": ("flops", "host_peak", "peak"),
    "peak": ("peak", "flops"),
    "host": ("host_peak", "flops"),
}

_MAX_FRONT = 256  # a front is pruned as it fills past this many labels
_PRUNE_BLOCK = 64  # labels tested together by :func:`prune`


@dataclass
class Label:
    """A partial plan: the segments up to a boundary, and what they cost."""

    stored: int  # device bytes held for backward by the segments so far
    peak: int  # device peak so far
    flops: float
    parent: Label | None
    step: tuple | None  # (start, stop, option, offload_input)
    host_stored: int = 0  # host bytes of the offloaded maps so far (held until their backward)
    host_peak: int = 0  # host peak so far

    def path(self) -> list[Label]:
        """The labels from the first segment's to this one (the plan's segments, in order)."""
        chain = []
        lb = self
        while lb.parent is not None:
            chain.append(lb)
            lb = lb.parent
        chain.reverse()
        return chain


@dataclass(frozen=True)
class _Step:
    """One segment choice from a state, and what it adds to every label it extends."""

    start: int
    stop: int
    option: Option
    offload_input: bool
    offload_output: bool
    held: int  # device bytes the segment holds for backward from now on
    local: int  # device bytes alive only while the segment runs backward
    host_map: int  # host bytes of its offloaded output map
    host_local: int  # host bytes of its gradients while it runs backward
    flops: float


def prune(labels: list[Label], key: str) -> list[Label]:
    """Pareto front: drop labels that hold at least as much on the device and in host memory
    (which is all that decides what can follow) and are no better by any criterion of ``key``.

    Labels are visited in lexicographic order of their dimensions, so a label can only be
    dominated by one before it, and (dominance being transitive) by one on the front if
    by any. They are tested in blocks: each block against the front so far in one
    vectorised comparison, then against the labels before it in the block (the planner's
    hot loop: one numpy call per block instead of per label).
    """
    if len(labels) <= 1:
        return labels
    criteria = CRITERIA[key]
    rows = [(*(getattr(lb, c) for c in criteria), lb.stored, lb.host_stored) for lb in labels]
    order = sorted(range(len(labels)), key=rows.__getitem__)
    dims = np.asarray([rows[i] for i in order], dtype=np.float64)  # bytes < 2**53: exact
    front = np.empty((0, dims.shape[1]))
    kept: list[int] = []
    for lo in range(0, len(order), _PRUNE_BLOCK):
        d = dims[lo : lo + _PRUNE_BLOCK]
        alive = ~(front[None, :, :] <= d[:, None, :]).all(axis=2).any(axis=1)
        # within the block: dominated by an earlier label of the block (sorted, so earlier
        # ones can dominate later ones only); a dominated one dominates nothing new
        inner = np.tril((d[None, :, :] <= d[:, None, :]).all(axis=2), k=-1)
        for i in np.flatnonzero(alive):
            if (inner[i] & alive).any():
                alive[i] = False
        if alive.any():
            front = np.concatenate([front, d[alive]])
            kept.extend(lo + int(i) for i in np.flatnonzero(alive))
    return [labels[order[i]] for i in kept]


class Search:
    """Searches the plans of one trunk at one input shape.

    Args:
        costs: the trunk's spans and their options (:func:`~.cost.trunk_costs`).
        offload: ``False``: no map in host memory; ``"auto"``: where the budget demands;
            ``True``: every map between two streamed segments.
    """

    def __init__(self, costs: TrunkCosts, offload: bool | str) -> None:
        self.costs = costs
        self.allow_offload = offload in (True, "auto")
        self.force_offload = offload is True

    def run(
        self,
        budget: float,
        key: str,
        host_limit: float,
        first_at_tile_size: bool = False,
        max_flops: float = math.inf,
        use_offload: bool = True,
    ) -> Label | None:
        """Best plan within ``budget`` (device) and ``host_limit`` (host), by ``CRITERIA[key]``:
        min compute ("flops"), min device peak ("peak") or min host peak ("host"), the last
        among plans of compute <= ``max_flops``.

        ``first_at_tile_size``: the first segment streams with the largest tiles allowed.
        ``use_offload=False``: no map goes to host memory (unless ``offload=True`` forces it)."""
        m = self.costs.n_units
        fronts: dict[tuple, list[Label]] = {(0, False, "input"): [Label(0, 0, 0.0, None, None)]}
        finals: list[Label] = []
        for j in self.costs.boundaries[:-1]:
            for state in [s for s in fronts if s[0] == j]:
                labels = prune(fronts.pop(state), key)
                for step in self._steps(state, first_at_tile_size, use_offload):
                    new = self._extend(labels, step, budget, host_limit, max_flops)
                    if not new:
                        continue
                    if step.stop == m:
                        finals.extend(new)
                    else:
                        nxt_state = (step.stop, step.offload_output, step.option.mode)
                        fronts.setdefault(nxt_state, []).extend(new)
                # keep fronts small as they fill
                for s in list(fronts):
                    if len(fronts[s]) > _MAX_FRONT:
                        fronts[s] = prune(fronts[s], key)
        if not finals:
            return None
        return min(finals, key=lambda lb: tuple(getattr(lb, c) for c in CRITERIA[key]))

    def best(self, budget: float, key: str, host_limit: float, **kwargs) -> Label | None:
        """:meth:`run`, searching offload only where it pays (``offload="auto"``).

        The search over offloading choices is by far the largest (minutes for trunks of
        many units), so the best plan without offload is searched first; offload is then
        searched only among plans faster than it by more than the tolerance (labels above
        that compute are dropped as they are made), and kept only if one exists."""
        if not (self.allow_offload and not self.force_offload):
            return self.run(budget, key, host_limit, **kwargs)
        found = self.run(budget, key, host_limit, use_offload=False, **kwargs)
        if found is None:
            return self.run(budget, key, host_limit, **kwargs)
        if key != "flops":
            return found
        faster = self.run(
            budget, key, host_limit, max_flops=found.flops / (1 + OFFLOAD_TOLERANCE), **kwargs
        )
        return faster if faster is not None else found

    def _options(self, j: int, stop: int, first_at_tile_size: bool) -> list[Option]:
        opts = self.costs.options[(j, stop)]
        if first_at_tile_size and j == 0:
            opts = [o for o in opts if o.mode == "stream"][:1]
        return opts

    def _steps(self, state: tuple, first_at_tile_size: bool, use_offload: bool) -> Iterator[_Step]:
        """Every segment choice from ``state``, in a fixed order."""
        c = self.costs
        j, off_j, prev = state
        stored_j = 0 if (off_j or (j == 0 and c.lazy_input) or prev == "keep") else c.map_bytes[j]
        grad_in = 0 if off_j or (j == 0 and not c.input_requires_grad) else c.map_bytes[j]
        # an offloaded input map's gradient is accumulated in host memory
        host_grad_in = c.map_bytes[j] if off_j else 0
        for stop in c.ends_from(j):
            for opt in self._options(j, stop, first_at_tile_size):
                if opt.mode == "keep" and off_j:
                    continue
                if self.force_offload and prev == "stream" and opt.mode == "stream" and not off_j:
                    continue
                can_off = (
                    self.allow_offload
                    and (use_offload or self.force_offload)
                    and opt.mode == "stream"
                    and stop < c.n_units
                )
                for off_out in (False, True) if can_off else (False,):
                    grad_out = 0 if off_out else c.map_bytes[stop]
                    host_map = c.map_bytes[stop] if off_out else 0
                    flops = opt.flops
                    if off_out:
                        flops += TRANSFER_FLOPS_PER_BYTE * 6 * c.map_bytes[stop]
                    yield _Step(
                        start=j,
                        stop=stop,
                        option=opt,
                        offload_input=off_j,
                        offload_output=off_out,
                        held=stored_j + (opt.graph_bytes if opt.mode == "keep" else 0),
                        local=grad_out + grad_in + opt.work_bytes + c.out_bytes,
                        host_map=host_map,
                        host_local=host_grad_in + host_map,  # the gradients, in backward
                        flops=flops,
                    )

    @staticmethod
    def _extend(
        labels: list[Label], step: _Step, budget: float, host_limit: float, max_flops: float
    ) -> list[Label]:
        """``labels`` followed by ``step``, those within the budgets and ``max_flops``."""
        new = []
        for lb in labels:
            stored = lb.stored + step.held
            peak = max(lb.peak, stored + step.local)
            host_peak = max(
                lb.host_peak,
                lb.host_stored + step.host_local,
                lb.host_stored + step.host_map,  # forward: every map
            )
            total = lb.flops + step.flops
            if peak > budget or host_peak > host_limit or total > max_flops:
                continue
            new.append(
                Label(
                    stored,
                    peak,
                    total,
                    lb,
                    (step.start, step.stop, step.option, step.offload_input),
                    lb.host_stored + step.host_map,
                    host_peak,
                )
            )
        return new
