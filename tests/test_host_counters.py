"""What the host did during a step (:mod:`gigastream.host_counters`), from made-up counters
with known answers and from real ones."""

from __future__ import annotations

import os

import pytest

from gigastream import host_counters
from gigastream.host_counters import Snapshot, between, snapshot, summary


def _snap(wall, user, system, machine, faults=0):
    return Snapshot(wall, user, system, faults, 0, 0, 0, machine)


def _machine(user=0.0, system=0.0, idle=0.0, steal=0.0):
    return {
        "user": user, "nice": 0.0, "system": system, "idle": idle, "iowait": 0.0,
        "irq": 0.0, "softirq": 0.0, "steal": steal,
    }  # fmt: skip


def test_shares_add_up_from_known_counters(monkeypatch):
    """10 s on 2 cores = 20 core-seconds: we used 8, others 6, steal 2, idle 4."""
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    before = _snap(0.0, 0.0, 0.0, _machine(), faults=5)
    after = _snap(10.0, 7.0, 1.0, _machine(user=12.0, system=2.0, idle=4.0, steal=2.0), faults=25)
    d = between(before, after)
    assert d["cpu_seconds"] == 8.0 and d["cpu_use"] == 0.4 and d["system_seconds"] == 1.0
    assert d["others_share"] == 0.3  # (14 busy - 8 ours) / 20
    assert d["steal_share"] == 0.1 and d["idle_share"] == 0.2
    assert d["minor_faults"] == 20
    assert d["cpu_use"] + d["others_share"] + d["steal_share"] + d["idle_share"] == pytest.approx(1)


def test_without_proc_stat_the_machine_shares_are_none(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    d = between(_snap(0.0, 0.0, 0.0, None), _snap(1.0, 0.5, 0.0, None))
    assert d["cpu_use"] == 0.5 and d["others_share"] is None and d["steal_share"] is None
    assert summary([d])["others_share_max"] is None


def test_summary_takes_the_worst_share_and_the_mean_counts(monkeypatch):
    steps = [
        {"cpu_use": 0.9, "others_share": 0.05, "steal_share": 0.0, "minor_faults": 10,
         "major_faults": 0, "voluntary_switches": 2, "involuntary_switches": 4},
        {"cpu_use": 0.6, "others_share": 0.35, "steal_share": 0.1, "minor_faults": 30,
         "major_faults": 2, "voluntary_switches": 4, "involuntary_switches": 8},
    ]  # fmt: skip
    s = summary(steps)
    assert s["steps"] == 2 and s["cpu_use_min"] == 0.6
    assert s["others_share_max"] == 0.35 and s["steal_share_max"] == 0.1
    assert s["minor_faults_per_step"] == 20 and s["involuntary_switches_per_step"] == 6
    assert summary([]) == {}


def test_real_counters_see_this_process_work():
    before = snapshot()
    x = 0
    for i in range(2_000_000):
        x += i * i
    chunk = bytearray(64 * 2**20)  # fresh pages: minor faults once touched
    chunk[::4096] = b"\x01" * (len(chunk) // 4096)
    d = between(before, snapshot())
    assert d["cpu_seconds"] > 0 and d["wall_seconds"] > 0 and d["minor_faults"] > 1000
    if before.machine is not None:  # Linux
        assert 0 <= d["others_share"] <= 1 and 0 <= d["steal_share"] <= 1
    assert host_counters.cpu_model()
