"""StreamingMIL: the streamed model equals the same model run without streaming.

Float64, tight tolerances: slide logits, the loss, the input gradient and the gradient of
every parameter (trunk, head and CLAM instance classifiers) agree with the ordinary
whole-image computation, with tiles small enough that every streamed segment is cut into
several tiles.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from gigastream import SlideReader
from gigastream.models.streaming_mil import StreamingMIL, StreamingMILConfig
from gigastream.wsi.source import IMAGENET, SlideSource
from gigastream.wsi.tissue import TissueMask
from tests.exactness import assert_same_gradients


def _model(**overrides) -> StreamingMIL:
    torch.manual_seed(0)
    config = StreamingMILConfig(
        arch="resnet18",
        head="clam_sb",
        pool=2,
        tile_size=96,
        head_options={"hidden_dim": 32, "attn_dim": 16, "dropout": 0.0},
        **overrides,
    )
    return StreamingMIL(config).double()


def _slide_fn(model, label: int, stream: bool):
    """``x -> {logits, attention, loss}`` of the slide model, streamed or not."""

    def run(x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = model(x, label=label, stream=stream)
        return {"logits": out.logits, "attention": out.attention, "loss": model.loss(out, label)}

    return run


@pytest.mark.parametrize("label", [0, 1])
def test_streamed_equals_conventional_float64(label):
    model = _model()
    model.train()  # BatchNorm stays frozen: streaming needs it in eval mode
    assert not any(m.training for m in model.trunk.modules() if isinstance(m, torch.nn.BatchNorm2d))
    x = torch.randn(1, 3, 192, 160, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    # every parameter that takes part gets a finite gradient (the CLAM instance classifier
    # of the other class gets none without subtyping: it is not in this bag's loss)
    unused = {
        f"head.instance_classifiers.{1 - label}.weight",
        f"head.instance_classifiers.{1 - label}.bias",
    }
    assert_same_gradients(
        _slide_fn(model, label, stream=False),
        _slide_fn(model, label, stream=True),
        x,
        model,
        loss=lambda out: out["loss"],
        unused=unused,
    )
    plan = model.trunk.last_plan
    tiles = [s.tiles[0] * s.tiles[1] for s in plan.segments if s.mode == "stream"]
    assert tiles and max(tiles) > 1, str(plan)  # the test really streams in several tiles


def test_attention_map_shape_and_sum():
    model = _model().eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 192, 160, dtype=torch.float64))
    assert out.logits.shape == (2,)
    assert out.attention_map.shape == (3, 3)  # ceil(192 / 64), ceil(160 / 64)
    assert out.instances.all()
    assert (out.attention >= 0).all()
    assert_close(out.attention.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert_close(out.attention_map.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert model.output_stride == 64


def test_tissue_instances_from_slide_source():
    image = np.full((384, 320, 3), 240, np.uint8)
    image[:, :160] = (190, 90, 170)  # tissue on the left half
    slide = SlideReader.from_array(image, mpp=0.5)
    mask = TissueMask(np.zeros((24, 20), bool), mpp=8.0)
    mask.mask[:, :10] = True
    source = SlideSource(slide, mpp=1.0, tissue_mask=mask, normalize=IMAGENET, dtype=torch.float64)
    model = _model().eval()
    with torch.no_grad():
        out = model(source)
        whole = model(source.read((slice(None),) * 4))  # the same pixels, all positions
    assert out.attention_map.shape == (3, 3)  # (192, 160) at 1 um/px
    assert out.instances[:, :2].all() and not out.instances[:, 2:].any()
    assert out.attention.shape == (6,)
    assert_close(out.attention.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert (out.attention_map[~out.instances] == 0).all()
    assert whole.attention.shape == (9,)  # a tensor carries no mask: every position


def test_weights_path_loads_local_state_dict(tmp_path):
    import torchvision

    torch.manual_seed(3)
    reference = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    model = StreamingMIL(StreamingMILConfig(arch="resnet18", weights=str(path)))
    assert_close(model.trunk.trunk[0].weight, reference.conv1.weight)
    assert_close(model.trunk.trunk[7][1].conv2.weight, reference.layer4[1].conv2.weight)


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="arch must be one of"):
        StreamingMIL(StreamingMILConfig(arch="vgg16"))
    with pytest.raises(FileNotFoundError, match="trunk weights file not found"):
        StreamingMIL(StreamingMILConfig(weights=str(tmp_path / "missing.pth")))
    with pytest.raises(ValueError, match="needs tile_size or memory_budget"):
        StreamingMIL(StreamingMILConfig(tile_size=None))
    bad = tmp_path / "bad.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not a torchvision resnet18 state_dict"):
        StreamingMIL(StreamingMILConfig(arch="resnet18", weights=str(bad)))
    model = _model()
    with pytest.raises(ValueError, match="takes one slide"):
        model(torch.randn(2, 3, 64, 64, dtype=torch.float64))


def test_folded_batchnorm_model_equals_the_unfolded_one_float64():
    """``fold_batchnorm``: the same logits, loss and every parameter gradient (streamed)."""
    plain, folded = _model(), _model(fold_batchnorm=True)
    assert folded.trunk.folded_batchnorms == 20 and plain.trunk.folded_batchnorms == 0
    assert list(folded.state_dict()) == list(plain.state_dict())  # checkpoints are the same
    x = torch.randn(1, 3, 192, 160, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    runs = []
    for model in (plain, folded):
        model.train()
        out = _slide_fn(model, 1, stream=True)(x)
        out["loss"].backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        runs.append((out, grads))
    (a, ga), (b, gb) = runs
    for key in ("logits", "attention", "loss"):
        assert_close(b[key], a[key], rtol=1e-10, atol=1e-12)
    assert ga.keys() == gb.keys() and any(".bn" in n for n in ga)
    for name, grad in ga.items():
        scale = max(1.0, grad.abs().max().item())
        assert_close(
            gb[name], grad, rtol=1e-10, atol=1e-12 * scale, msg=lambda m, n=name: f"{n}: {m}"
        )
