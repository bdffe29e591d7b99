#!/bin/bash
# The training engine on CUDA for the first time: the demo (24 epochs) with --device cuda, bf16.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
cd /tmp && S=$(date +%s)
timeout 210 python3 -m gigastream.cli.main demo --out /tmp/demo_cuda --device cuda --precision bf16-mixed --sources $OLDPWD/.gpu/images 2>&1 | grep -v "it/s\|s/it" | tail -25
echo "wall $(( $(date +%s) - S )) s"
cp /tmp/demo_cuda/metrics.json $OUT/ 2>/dev/null; cp /tmp/demo_cuda/training_curve.png $OUT/ 2>/dev/null; ls /tmp/demo_cuda
