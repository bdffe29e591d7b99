"""The benchmark's worker entry point, and the core's import boundary."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import gigastream.streaming
from gigastream.streaming import benchmark

FORBIDDEN = ("gigastream.cli", "gigastream.train", "gigastream.wsi", "gigastream.models")


def test_streaming_imports_no_application_layer():
    """Nothing under gigastream.streaming imports the CLI, training, WSI or model packages."""
    root = Path(gigastream.streaming.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            else:
                continue
            found += [f"{path.name}: {n}" for n in names if n.startswith(FORBIDDEN)]
    assert not found, found


@pytest.mark.parametrize("argv", [[], ["--size", "64"], ["--worker"]])
def test_worker_reads_only_its_json(argv, capsys):
    assert benchmark.main(argv) == 2
    assert "--worker JSON" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("precision", "tf32", "match"),
    [
        ("fp32", False, "--precision must be one of"),
        ("32", True, "--tf32 needs --device cuda"),
        ("16-mixed", False, "16-mixed needs --device cuda"),
    ],
)
def test_bad_precision_is_refused(precision, tf32, match):
    import torch

    with pytest.raises(ValueError, match=match):
        benchmark.check_precision(precision, tf32, torch.device("cpu"))
    assert benchmark.check_precision("32", False, torch.device("cpu")) == "32-true"
