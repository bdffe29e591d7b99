#!/usr/bin/env bash
# The project's test command: lint + the test suite, in the environment made by scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
"$VENV/bin/ruff" check src tests benchmarks experiments
"$VENV/bin/python" -m pytest -q "$@"
