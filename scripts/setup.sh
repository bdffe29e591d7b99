#!/usr/bin/env bash
# Create a fresh virtual environment (default .venv) and install gigastream with its dev and
# lora (peft) extras.
# torch==2.14.1 / torchvision==0.29.1 come from the local disk on the reference machine.
set -euo pipefail
VENV="${1:-.venv}"
PY="${PYTHON:-python3}"
rm -rf "$VENV"
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
"$VENV/bin/python" -m pip install -q -e ".[dev,lora]"
echo "gigastream installed in $VENV"
