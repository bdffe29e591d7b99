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
# Optional: cuCIM's slide reader (data.backend: cucim), so its tests run too. Its CUDA
# packages (cupy, CUDA 13 libraries) are left out: they would replace torch's, and its
# reader works on the CPU without them. A GPU machine installs it whole: pip install
# "gigastream[cucim]". Where no wheel exists the tests of that backend skip.
"$VENV/bin/python" -m pip install -q --no-deps "cucim-cu13>=25.0" lazy_loader click \
    || echo "cuCIM not installed (optional): the cucim backend's tests will skip"
echo "gigastream installed in $VENV"
