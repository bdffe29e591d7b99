"""Real multi-process DistributedDataParallel (gloo, 2 processes) over a StreamingModule."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from gigastream.streaming import StreamingModule
from tests.exactness import assert_exact


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    trunk = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, stride=2, padding=1),
        nn.ReLU(),
    )
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    return nn.Sequential(trunk, head).double()


def _batch(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + rank)
    return torch.randn(1, 3, 48, 40, generator=gen, dtype=torch.float64), torch.tensor([rank % 2])


def _worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = _model()
        model[0] = StreamingModule(model[0], tile_size=16)
        ddp = nn.parallel.DistributedDataParallel(model)
        x, y = _batch(rank)
        loss = nn.functional.cross_entropy(ddp(x), y)
        loss.backward()
        assert model[0].last_plan.segments[0].tiles[0] >= 3
        if rank == 0:
            torch.save({n: p.grad for n, p in model.named_parameters()}, out_file)
        dist.barrier()  # nobody leaves while the other still uses the group
    except BaseException:
        dist.destroy_process_group()
        raise
    # Success: leave without interpreter teardown; gloo's threads can abort the process at
    # exit ("terminate called without an active exception") after all work is done.
    os._exit(0)


def test_ddp_two_processes_match_single_process(tmp_path):
    out_file = str(tmp_path / "grads.pt")
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), out_file), nprocs=2, join=True)
    assert os.path.exists(out_file)
    ddp_grads = torch.load(out_file, weights_only=True)

    # reference: ordinary model, the mean of the two ranks' losses (DDP averages gradients)
    model = _model()
    losses = [nn.functional.cross_entropy(model(x), y) for x, y in map(_batch, range(2))]
    (sum(losses) / 2).backward()
    ref_grads = {
        name.replace("0.", "0.trunk.", 1) if name.startswith("0.") else name: p.grad
        for name, p in model.named_parameters()
    }
    assert_exact(ddp_grads, ref_grads, "gradient of")
