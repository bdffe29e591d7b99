#!/bin/bash
# GPU exploration call 1: CUDA exactness tests, 8192^2 fp32/bf16 with profiles, 65536^2 bf16 lazy.
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
R=/tmp/res; mkdir -p $R
pack() { tar czf $OUT/res.tgz -C $R . ; }
{
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv
python3 -c "import torch;print('torch',torch.__version__,'cuda',torch.version.cuda,'cudnn',torch.backends.cudnn.version())"
free -g; nproc
date +%T
GIGASTREAM_TEST_DEVICE=cuda timeout 150 python3 -m pytest -q -x -p no:cacheprovider tests/streaming/test_planned.py tests/streaming/test_exactness.py 2>&1 | tail -15
date +%T
} 2>&1 | tee $R/log.txt
B="python3 -m gigastream.streaming.benchmark --device cuda --arch resnet34 --repeats 2"
run() { name=$1; shift; echo "== $name $(date +%T)" | tee -a $R/log.txt; timeout ${T:-110} $B "$@" --out $R/$name.json 2>&1 | grep -v "^ \|^{\|^}" | tail -8 | tee -a $R/log.txt; python3 -c "
import json,sys;d=json.load(open('$R/$name.json'))
for m,r in d['modes'].items(): print('$name',m,{k:r.get(k) for k in ('seconds_median','peak_cuda_mib','max_rel_grad_error','time_vs_conventional','cuda_memory_vs_conventional','reason')})
print(d['plan_text'])" 2>&1 | tee -a $R/log.txt; pack; }
run fp32-8192-tile4096 --size 8192 --precision fp32 --tile 4096 --modes conventional,streaming --profile $R/p-fp32-8192
run fp32-8192-b10-cl --size 8192 --precision fp32 --memory-budget 10GiB --channels-last --modes conventional,streaming
run bf16-8192-b6-cl --size 8192 --precision bf16 --memory-budget 6GiB --channels-last --modes conventional,streaming --profile $R/p-bf16-8192-cl
T=200 run bf16-65536-b40-cl --size 65536 --precision bf16 --memory-budget 40GiB --host-memory-budget 100GiB --lazy --channels-last --modes streaming --repeats 1 --warmup 0
date +%T | tee -a $R/log.txt
pack
