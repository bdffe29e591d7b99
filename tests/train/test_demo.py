"""The demo's settings and data (``gigastream.train.demo``; the command end to end is in
``tests/cli/test_demo.py``)."""

from __future__ import annotations

from gigastream.train.config_files import load_config
from gigastream.train.demo import DEMO_RUN, DEMO_SYNTH, write_demo_data
from gigastream.wsi.synth import SynthConfig


def test_demo_settings_are_the_base_of_yaml_and_flags():
    config = load_config({"model": {"head": "clam_sb"}}, {"train": {"epochs": 2}}, base=DEMO_RUN)
    assert config.train.heatmaps == 6 and config.data.num_workers == 1
    assert config.train.epochs == 2 and config.model.head == "clam_sb"
    assert config.model.head_options == {}  # another head: its own defaults
    assert DEMO_RUN.train.epochs == load_config({}).train.epochs  # base left as it was
    synth = load_config({"slides": 3}, cls=SynthConfig, base=DEMO_SYNTH)
    assert (synth.slides, synth.size, synth.lesion_size) == (3, 1024, 160)


def test_a_resumed_demo_keeps_its_data(tmp_path):
    manifest = tmp_path / "data" / "manifest.csv"
    manifest.parent.mkdir()
    manifest.write_text("slide_id,path,label\n")
    assert write_demo_data(tmp_path, DEMO_SYNTH, [], resume=True) == manifest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # nothing else written
