"""Manifests: reading, label indices, validation listing every bad row, stratified patient folds."""

from __future__ import annotations

import csv
from collections import Counter

import pytest

from gigastream.wsi.manifest import (
    ManifestError,
    ManifestRow,
    read_manifest,
    read_splits,
    stratified_folds,
    write_manifest,
    write_splits,
)


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def _touch(folder, *names):
    for name in names:
        (folder / name).write_bytes(b"x")


def test_read_manifest_labels_and_optional_columns(tmp_path):
    _touch(tmp_path, "a.svs", "b.svs", "c.svs")
    path = _write(
        tmp_path / "m.csv",
        [
            "slide_id,path,label,case_id,split,mpp",
            "a,a.svs,tumor,p1,train,0.25",
            "b,b.svs,normal,p1,,",
            f"c,{tmp_path / 'c.svs'},tumor,,test,",
        ],
    )
    manifest = read_manifest(path)
    assert manifest.labels == ["normal", "tumor"]
    assert manifest.label_to_index == {"normal": 0, "tumor": 1}
    a, b, c = manifest.rows
    assert (
        a.path == tmp_path / "a.svs" and a.mpp == 0.25 and a.split == "train" and a.case_id == "p1"
    )
    assert b.mpp is None and b.split is None
    assert c.case_id == "c" and manifest.label_index(c) == 1


def test_fixed_label_order_from_a_model(tmp_path):
    _touch(tmp_path, "a.svs")
    path = _write(tmp_path / "m.csv", ["slide_id,path,label", "a,a.svs,tumor"])
    manifest = read_manifest(path, labels=["tumor", "normal"])
    assert manifest.label_to_index == {"tumor": 0, "normal": 1}


def test_every_bad_row_is_listed_at_once(tmp_path):
    _touch(tmp_path, "a.svs", "b.svs")
    path = _write(
        tmp_path / "m.csv",
        [
            "slide_id,path,label",
            "a,a.svs,tumor",
            "b,missing.svs,tumor",
            "a,b.svs,normal",
            "d,b.svs,",
            "e,b.svs,weird",
            ",b.svs,tumor",
            "g,b.svs,tumor",
        ],
    )
    with pytest.raises(ManifestError) as info:
        read_manifest(path, labels=["normal", "tumor"])
    errors = info.value.errors
    assert len(errors) == 5
    text = str(info.value)
    for fragment in (
        "line 3 (b): file not found",
        "line 4 (a): duplicate slide_id 'a' (first on line 2)",
        "line 5 (d): empty label",
        "line 6 (e): unknown label 'weird'",
        "line 7 (?): empty slide_id",
    ):
        assert fragment in text


def test_bad_mpp_empty_path_missing_columns_and_no_rows(tmp_path):
    _touch(tmp_path, "a.svs")
    path = _write(tmp_path / "m.csv", ["slide_id,path,label,mpp", "a,a.svs,x,abc", "b,,x,"])
    with pytest.raises(ManifestError, match="mpp must be a positive number") as info:
        read_manifest(path)
    assert "empty path" in str(info.value)
    with pytest.raises(ManifestError, match="missing column"):
        read_manifest(_write(tmp_path / "n.csv", ["slide_id,file,label", "a,a.svs,x"]))
    with pytest.raises(ManifestError, match="no rows"):
        read_manifest(_write(tmp_path / "e.csv", ["slide_id,path,label"]))
    with pytest.raises(FileNotFoundError, match="manifest not found"):
        read_manifest(tmp_path / "absent.csv")


def test_write_then_read_round_trip(tmp_path):
    _touch(tmp_path, "a.tif")
    rows = [ManifestRow("a", tmp_path / "a.tif", "pos", "case", "train", 0.5)]
    path = write_manifest(tmp_path / "m.csv", rows)
    assert "a,a.tif,pos,case,train,0.5" in path.read_text()
    assert read_manifest(path).rows == rows


def _manifest(n_cases=30, seed=0):
    import random

    rng = random.Random(seed)
    rows = []
    for case in range(n_cases):
        label = "pos" if case % 3 == 0 else "neg"
        for k in range(rng.randint(1, 3)):
            rows.append(ManifestRow(f"s{case}_{k}", f"s{case}_{k}.tif", label, f"p{case}"))
    from gigastream.wsi.manifest import Manifest

    return Manifest(rows, ["neg", "pos"])


def test_folds_keep_patients_together_and_stratify():
    manifest = _manifest()
    fold_of = stratified_folds(manifest, folds=5, seed=1)
    by_case = {}
    for row in manifest.rows:
        by_case.setdefault(row.case_id, set()).add(fold_of[row.slide_id])
    assert all(len(folds) == 1 for folds in by_case.values())
    pos = Counter(fold_of[r.slide_id] for r in manifest.rows if r.label == "pos")
    neg = Counter(fold_of[r.slide_id] for r in manifest.rows if r.label == "neg")
    assert len(pos) == 5 and len(neg) == 5
    assert max(pos.values()) - min(pos.values()) <= 3
    assert max(neg.values()) - min(neg.values()) <= 3
    assert stratified_folds(manifest, folds=5, seed=1) == fold_of  # seeded


def test_write_splits_csv(tmp_path):
    manifest = _manifest(10)
    path = write_splits(manifest, tmp_path / "splits.csv", folds=3, seed=0)
    with open(path) as fh:
        header = next(csv.reader(fh))
    assert header == ["slide_id", "case_id", "label", "fold"]
    assert read_splits(path) == stratified_folds(manifest, folds=3, seed=0)


def test_fold_errors():
    with pytest.raises(ValueError, match="folds must be at least 2"):
        stratified_folds(_manifest(5), folds=1)
    with pytest.raises(ValueError, match="4 cases cannot fill 5 folds"):
        stratified_folds(_manifest(4), folds=5)


# ----------------------------------------------------------------------------- faults (issue 15)
def test_slide_ids_that_are_not_safe_file_names_are_refused(tmp_path):
    _touch(tmp_path, "a.svs")
    path = _write(
        tmp_path / "m.csv",
        [
            "slide_id,path,label",
            "../../x,a.svs,tumor",
            "a/b,a.svs,tumor",
            ".hidden,a.svs,normal",
            "with space,a.svs,normal",
            "TCGA-01.2_A,a.svs,normal",  # letters, digits and . _ - are fine
        ],
    )
    with pytest.raises(ManifestError) as info:
        read_manifest(path)
    assert len(info.value.errors) == 4
    text = str(info.value)
    for bad in ("'../../x'", "'a/b'", "'.hidden'", "'with space'"):
        assert f"slide_id {bad}" in text
    assert "TCGA-01.2_A" not in text
    assert "letters, digits, '.', '_' and '-'" in text and "not start with '.'" in text


@pytest.mark.parametrize("mpp", ["0", "-0.5", "inf", "nan"])
def test_non_positive_or_non_finite_mpp_is_refused(tmp_path, mpp):
    _touch(tmp_path, "a.svs")
    path = _write(tmp_path / "m.csv", ["slide_id,path,label,mpp", f"a,a.svs,x,{mpp}"])
    with pytest.raises(ManifestError, match="line 2 \\(a\\): mpp must be a positive number"):
        read_manifest(path)


def test_a_manifest_that_is_not_utf8_names_the_file_and_the_fix(tmp_path):
    _touch(tmp_path, "a.svs", "b.svs")
    path = tmp_path / "m.csv"
    path.write_bytes(
        "slide_id,path,label\na,a.svs,normal\nb,b.svs,tumeur bénigne\n".encode("latin-1")
    )
    with pytest.raises(ManifestError) as info:
        read_manifest(path)
    text = str(info.value)
    assert str(path) in text and "line 3" in text and "save it as UTF-8" in text


def test_splits_file_without_fold_column_or_integer_folds_is_one_line(tmp_path):
    no_fold = _write(tmp_path / "s1.csv", ["slide_id,case_id,label", "a,a,x"])
    with pytest.raises(ManifestError) as info:
        read_splits(no_fold)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(no_fold)) and "'fold'" in message
    assert "gigastream splits" in message
    bad = _write(tmp_path / "s2.csv", ["slide_id,case_id,label,fold", "a,a,x,0", "b,b,x,one"])
    with pytest.raises(ManifestError) as info:
        read_splits(bad)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(bad))
    assert "line 3" in message and "'fold'" in message and "'one'" in message
    latin = tmp_path / "s3.csv"
    latin.write_bytes("slide_id,case_id,label,fold\né,a,x,0\n".encode("latin-1"))
    with pytest.raises(ManifestError, match="save it as UTF-8") as info:
        read_splits(latin)
    assert "\n" not in str(info.value) and str(latin) in str(info.value)
