"""Helpers of the CLI tests: run ``gigastream`` in-process, check one-line errors."""

from __future__ import annotations

import re

from gigastream.cli.main import main

#: The start of a refused command's line: ``gigastream train: error: ``, ``gigastream bench
#: mil: error: ``, ...
ERROR = re.compile(r"^gigastream( [a-z]+)+: error: ")


def cli(capsys, *args) -> tuple[int, str, str]:
    """``gigastream ARGS`` in this process: ``(exit code, stdout, stderr)``."""
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(code: int, err: str, *needles: str) -> str:
    """Assert a refused command: exit 1, one line ``gigastream <command>: error: ...`` holding
    every needle; returns the line."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1, err
    assert len(lines) == 1 and ERROR.match(lines[0]), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def train_args(manifest, out, config, *flags) -> list:
    """The arguments of ``gigastream train`` on ``manifest`` into ``out`` with ``config``."""
    return ["train", "--manifest", manifest, "--out", out, "--config", config, *flags]
