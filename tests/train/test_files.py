"""Files of a run (``gigastream.train.files``): every checkpoint and YAML file is read safely.

``torch.load`` anywhere in the package is called with ``weights_only=True`` and YAML is read
with ``yaml.safe_load`` only, so a checkpoint or config file cannot run code.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"


def _calls(attribute: str):
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                owner = node.func.value
                if node.func.attr == attribute and isinstance(owner, ast.Name):
                    yield path, owner.id, node


def test_every_torch_load_is_weights_only():
    loads = [(p, n) for p, owner, n in _calls("load") if owner == "torch"]
    assert loads, "no torch.load( call found: is SRC right?"
    for path, node in loads:
        flags = {k.arg: k.value for k in node.keywords}
        assert isinstance(flags.get("weights_only"), ast.Constant), f"{path}:{node.lineno}"
        assert flags["weights_only"].value is True, f"{path}:{node.lineno}"


def test_yaml_is_read_with_safe_load_only():
    unsafe = ("load", "load_all", "full_load", "full_load_all", "unsafe_load", "unsafe_load_all")
    for attribute in unsafe:
        found = [f"{p}:{n.lineno}" for p, owner, n in _calls(attribute) if owner == "yaml"]
        assert not found, f"yaml.{attribute} used: {found}"
    assert any(owner == "yaml" for _, owner, _ in _calls("safe_load"))
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        assert "from yaml import" not in text and "yaml.Loader" not in text, path
