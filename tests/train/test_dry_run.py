"""``train --dry-run``'s report (``gigastream.train.dry_run``): the largest and the median
slide planned on a GPU and on this CPU, nothing written (the printed form is checked in
``tests/cli/test_train_cli.py``)."""

from __future__ import annotations

from gigastream.train.dry_run import dry_run
from gigastream.train.preparation import prepare
from tests.train.conftest import copy_manifest, tiny_config


def test_report_plans_largest_and_median_slide(manifest):
    prepared = prepare(tiny_config(manifest), check_plan=False, check_device=False)
    report = dry_run(prepared)
    assert report.ok and report.unreadable == [] and len(report.pixels) == 8
    assert [s.role for s in report.slides] == ["largest", "median"]
    largest = report.slides[0]
    assert largest.shape == (1, 3, 256, 256) and largest.plan.est_peak_bytes > 0
    if prepared.accelerator == "cpu":
        assert [e.device for e in largest.estimates] == ["cuda", "cpu"]
    cpu = largest.estimates[-1]
    assert cpu.seconds > 0 and cpu.epoch_seconds is None
    # vgg_small's own CPU throughput (a tenth of ResNet-34's), not ResNet-34's
    assert cpu.measured_on == "2 CPU cores, fp32, streamed vgg_small"
    assert "ResNet-34" in largest.estimates[0].measured_on  # no GPU figure of its own
    assert report.slides[1].estimates[-1].epoch_seconds > 0
    text = str(report)
    assert text.startswith("precision 32; trunk vgg_small") and "StreamingPlan for input" in text


def test_a_trunk_measured_on_its_own_is_priced_at_its_own_rate():
    import math

    from gigastream.streaming.planner import StreamingPlan
    from gigastream.streaming.throughput import MEASURED, MEASURED_TRUNKS, expected_seconds

    plan = StreamingPlan((1, 3, 64, 64), [], 0, 1e12, 1e12, 0, 0)
    own = MEASURED_TRUNKS[("cpu", "fp32", "vgg_small")].flops_per_second
    resnet = MEASURED[("cpu", "fp32")].flops_per_second
    assert math.isclose(expected_seconds(plan, "cpu", "32", "vgg_small")[0], 1e12 / own)
    assert math.isclose(expected_seconds(plan, "cpu", "bf16-mixed", "vgg_small")[0], 1e12 / own)
    assert math.isclose(expected_seconds(plan, "cpu", "32", "resnet18")[0], 1e12 / resnet)
    assert math.isclose(expected_seconds(plan, "cpu", "32")[0], 1e12 / resnet)


def test_report_without_readable_slides(tmp_path, manifest):
    def unreadable(rows):  # one garbage file each (one file in both splits would be a leak)
        for row in rows:
            garbage = tmp_path / f"{row['slide_id']}.tif"
            garbage.write_bytes(b"not a slide" * 100)
            row["path"] = str(garbage)
        return rows

    bad = copy_manifest(manifest, tmp_path / "manifest.csv", unreadable)
    report = dry_run(prepare(tiny_config(bad), check_plan=False, check_device=False))
    assert not report.ok and len(report.unreadable) == 8
    assert str(report).splitlines()[-1] == "no readable slide"
    assert str(report).startswith("unreadable: ")
