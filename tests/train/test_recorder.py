"""Keeping ``metrics.json`` true (``gigastream.train.recorder``): failure reasons, interrupts
and signal handling outside Lightning's loop."""

from __future__ import annotations

import errno
import signal

import pytest

from gigastream.train.recorder import RunInterrupted, Signals, failure_reason, is_interrupt


def test_failure_reason_is_one_line():
    assert failure_reason(ValueError("bad tile\nsecond line")) == "ValueError: bad tile"
    assert failure_reason(RuntimeError()) == "RuntimeError"
    full = OSError(errno.ENOSPC, "No space left on device", "/runs/x/last.ckpt")
    assert failure_reason(full) == (
        "/runs/x/last.ckpt: no space left on the device: free some space or choose another --out"
    )


def test_interrupts_are_not_failures():
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    assert is_interrupt(KeyboardInterrupt()) and is_interrupt(RunInterrupted("stop"))
    assert is_interrupt(SIGTERMException()) and not is_interrupt(RuntimeError("x"))


def test_signal_outside_the_loop_interrupts_at_once():
    signals = Signals()
    with signals.installed():
        assert signal.getsignal(signal.SIGTERM) == signals.handler
        with pytest.raises(RunInterrupted, match="stopped by signal 15"):
            signals.handler(signal.SIGTERM, None)
    assert signal.getsignal(signal.SIGTERM) != signals.handler  # restored


def test_first_signal_inside_the_loop_stops_at_the_next_step():
    class Connector:
        received_sigterm = False

    class Trainer:
        _signal_connector = Connector()

    signals = Signals()
    signals.trainer = Trainer()
    signals.handler(signal.SIGINT, None)
    assert Trainer._signal_connector.received_sigterm
    with pytest.raises(RunInterrupted):  # a second signal does not wait
        signals.handler(signal.SIGINT, None)
