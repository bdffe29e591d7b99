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


def test_a_run_spilled_to_the_run_folder_trains_as_in_memory(manifest, tmp_path):
    from gigastream.train.fitting import fit

    lazy = {"preload_pixels": 0}  # every slide read tile by tile from its file
    train = {"epochs": 1, "heatmaps": 0}
    in_memory = tiny_config(manifest, data=lazy, train=train)
    spilled = tiny_config(manifest, data=lazy, train=train, model={"input_cache": 0})
    assert fit(in_memory, tmp_path / "memory")["status"] == "completed"
    assert fit(spilled, tmp_path / "spill")["status"] == "completed"
    a = _weights(tmp_path / "memory" / "checkpoints" / "last.ckpt")
    b = _weights(tmp_path / "spill" / "checkpoints" / "last.ckpt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    cache = tmp_path / "spill" / "cache"
    assert cache.is_dir() and list(cache.iterdir()) == []  # used, and nothing left behind
    assert not (tmp_path / "memory" / "cache").exists()  # everything fitted in memory


def test_spill_folder_settings(tmp_path):
    assert spill_folder("run", tmp_path) == tmp_path / "cache"
    assert spill_folder("run") is None  # no run: nowhere to spill
    assert spill_folder("off", tmp_path) is None and spill_folder(None, tmp_path) is None
    assert spill_folder(str(tmp_path / "x"), tmp_path) == tmp_path / "x"


def test_a_bad_input_cache_is_one_clear_error():
    with pytest.raises(ValueError, match="input_cache: .*'lots'.*or 'auto'"):
        StreamingMILConfig(input_cache="lots").validate()
