"""A training run whose slides do not fit the input cache keeps what the forward decoded in
a memory-mapped file in the run folder's ``cache/`` (``model.input_spill: run``, the
default): the run trains bit for bit as with the pixels in memory, and leaves no file."""

from __future__ import annotations

import pytest
import torch

from gigastream.models.streaming_mil import StreamingMILConfig, spill_folder
from tests.train.conftest import tiny_config


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_a_run_spilled_to_the_run_folder_trains_as_in_memory_after_mv_and_resume(
    manifest, tmp_path
):
    """With the default DataLoader workers: one epoch spilled to ``RUN/cache``, the run
    folder moved (``mv``), resumed there for a second epoch (the same folder, reused): the
    weights equal those of two epochs with the pixels in memory, bit for bit; the moved
    run spills into its new folder and leaves nothing, the old path is not recreated."""
    from gigastream.train.config import DataConfig
    from gigastream.train.fitting import fit

    # every slide read tile by tile from its file, in the default worker processes
    data = {"preload_pixels": 0, "num_workers": DataConfig().num_workers}
    assert data["num_workers"] > 0

    def config(epochs: int, **model):
        train = {"epochs": epochs, "heatmaps": 0}
        return tiny_config(manifest, data=data, train=train, model=model)

    # the reference: the same one epoch + resumed second epoch, with the pixels in memory
    assert fit(config(1), tmp_path / "memory")["status"] == "completed"
    assert fit(config(2), tmp_path / "memory", resume=True)["status"] == "completed"
    first = tmp_path / "spill"
    assert fit(config(1, input_cache=0), first)["status"] == "completed"
    assert (first / "cache").is_dir() and list((first / "cache").iterdir()) == []
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    first.rename(moved)  # mv spill elsewhere/moved
    (moved / "cache").rmdir()  # so that the resumed run's own spill shows
    metrics = fit(config(2, input_cache=0), moved, resume=True)
    assert metrics["status"] == "completed"
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]  # the first from before the mv
    a = _weights(tmp_path / "memory" / "checkpoints" / "last.ckpt")
    b = _weights(moved / "checkpoints" / "last.ckpt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert (moved / "cache").is_dir()  # the resumed run spilled into its new folder
    assert list((moved / "cache").iterdir()) == []  # and left nothing behind
    assert not first.exists()  # the old path is not recreated by the resumed run
    assert not (tmp_path / "memory" / "cache").exists()  # everything fitted in memory


def test_spill_folder_settings(tmp_path):
    assert spill_folder("run", tmp_path) == tmp_path / "cache"
    assert spill_folder("run") is None  # no run: nowhere to spill
    assert spill_folder("off", tmp_path) is None and spill_folder(None, tmp_path) is None
    assert spill_folder(str(tmp_path / "x"), tmp_path) == tmp_path / "x"


def test_a_bad_input_cache_is_one_clear_error():
    with pytest.raises(ValueError, match="input_cache: .*'lots'.*or 'auto'"):
        StreamingMILConfig(input_cache="lots").validate()
