"""SlideDataset: manifest rows to streamable items; user masks; tissue-free slides skipped."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from gigastream.wsi.dataset import SlideDataset, SlideDatasetConfig
from gigastream.wsi.manifest import read_manifest
from gigastream.wsi.tissue import NoTissueError, TissueMask, TissueMaskConfig


@pytest.fixture
def manifest(tmp_path):
    tissue = np.full((512, 512, 3), 244, np.uint8)
    tissue[64:448, 96:416] = (190, 100, 170)
    Image.fromarray(tissue).save(tmp_path / "tissue.png")
    Image.fromarray(np.full((512, 512, 3), 244, np.uint8)).save(tmp_path / "glass.png")
    (tmp_path / "m.csv").write_text(
        "slide_id,path,label,mpp\ntissue,tissue.png,tumor,2.0\nglass,glass.png,normal,2.0\n"
    )
    return read_manifest(tmp_path / "m.csv")


CONFIG = dict(mpp=4.0, tissue=TissueMaskConfig(mpp=8.0))


def test_items_stream_and_masks_are_cached(manifest, tmp_path):
    dataset = SlideDataset(manifest, SlideDatasetConfig(**CONFIG, mask_dir=tmp_path / "masks"))
    item = dataset[0]
    assert item.label == 1 and item.row.slide_id == "tissue"
    assert item.source.shape == torch.Size([1, 3, 256, 256])
    assert 0.3 < item.tissue_mask.tissue_fraction < 0.6
    assert (tmp_path / "masks" / "tissue.png").is_file()
    item.close()


def test_tissue_free_slides_raise_on_index_and_are_skipped_when_iterating(manifest):
    dataset = SlideDataset(manifest, SlideDatasetConfig(**CONFIG))
    with pytest.raises(NoTissueError, match="glass: no tissue found"):
        dataset[1]
    items = list(dataset)
    assert [i.row.slide_id for i in items] == ["tissue"]
    assert list(dataset.skipped) == ["glass"] and "no tissue" in dataset.skipped["glass"]


def test_user_mask_file_is_used(manifest, tmp_path):
    masks = tmp_path / "user-masks"
    masks.mkdir()
    user = np.zeros((32, 32), np.uint8)
    user[:, :16] = 255  # the user says: the left half of the glass slide is tissue
    Image.fromarray(user).save(masks / "glass.png")
    dataset = SlideDataset(manifest, SlideDatasetConfig(**CONFIG, mask_dir=masks))
    item = dataset[1]
    assert item.tissue_mask.mpp == pytest.approx(32.0)  # 512 px * 2 um / 32 px
    assert item.tissue_mask.tissue_fraction == pytest.approx(0.5)
    assert isinstance(TissueMask.load(masks / "glass.png", mpp=32.0), TissueMask)
    item.close()


def test_unreadable_slides_are_skipped(manifest, tmp_path):
    (tmp_path / "tissue.png").write_bytes(b"broken")
    dataset = SlideDataset(manifest, SlideDatasetConfig(**CONFIG))
    assert list(dataset) == []
    assert "cannot read the image" in dataset.skipped["tissue"]
