"""``experiments/resolution/run.py``: flags are checked before anything is trained or written."""

from __future__ import annotations

import pytest

from tests.experiments.conftest import experiment_module

main = experiment_module("resolution").main


def _manifest(folder, split=True):
    lines = ["slide_id,path,label" + (",split" if split else "")]
    for i, part in enumerate(["train", "train", "val", "val", "test", "test"]):
        (folder / f"s{i}.tif").write_bytes(b"")
        label = "positive" if i % 2 else "negative"
        lines.append(f"s{i},s{i}.tif,{label}" + (f",{part}" if split else ""))
    path = folder / "manifest.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("ratio", ["3:1", "3:0:2", "a:b:c"])
def test_bad_split_ratio_is_a_usage_error(tmp_path, capsys, ratio):
    argv = ["--manifest", str(_manifest(tmp_path)),
            "--out", str(tmp_path / "o"), "--split-ratio", ratio]  # fmt: skip
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "TRAIN:VAL:TEST" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_errors_name_the_fix_and_write_nothing(tmp_path, capsys):
    base = ["--out", str(tmp_path / "o")]
    assert main([*base, "--manifest", str(_manifest(tmp_path, split=False))]) == 1
    assert "no train, val, test slides" in capsys.readouterr().err
    manifest = _manifest(tmp_path)
    assert main([*base, "--manifest", str(manifest), "--mpp", "1", "0"]) == 1
    assert "positive numbers of microns" in capsys.readouterr().err
    config = tmp_path / "c.yaml"
    config.write_text("manifest: other.csv\n")
    assert main([*base, "--manifest", str(manifest), "--config", str(config)]) == 1
    assert "'manifest' is set by the experiment" in capsys.readouterr().err
    config.write_text("train: {epocs: 2}\n")
    assert main([*base, "--manifest", str(manifest), "--config", str(config)]) == 1
    assert "did you mean 'train.epochs'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
