#!/bin/bash
# GPU call 2: CUDA exactness tests and the measured table (all but 65536^2).
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
R=/tmp/res; mkdir -p $R
pack() { tar czf $OUT/res.tgz -C $R . ; }
{
date +%T
GIGASTREAM_TEST_DEVICE=cuda timeout 100 python3 -m pytest -q -p no:cacheprovider tests/streaming/test_planned.py tests/streaming/test_exactness.py tests/streaming/test_host_budget.py 2>&1 | tail -6
date +%T
} 2>&1 | tee $R/log.txt
pack
B="python3 -m gigastream.streaming.benchmark --device cuda --arch resnet34 --repeats 2"
run() { name=$1; shift; echo "== $name $(date +%T)" | tee -a $R/log.txt; timeout ${T:-100} $B "$@" --out $R/$name.json 2>&1 | grep -v "^ \|^{\|^}" | tail -8 | tee -a $R/log.txt; python3 -c "
import json,sys;d=json.load(open('$R/$name.json'))
for m,r in d['modes'].items(): print('$name',m,{k:r.get(k) for k in ('seconds_median','peak_cuda_mib','max_rel_grad_error','time_vs_conventional','cuda_memory_vs_conventional','reason')})
print(d['plan_text'])" 2>&1 | tee -a $R/log.txt; pack; }
N=--no-cudnn-benchmark
run fp32-4096 --size 4096 --precision fp32 --tile 2048 $N --modes conventional,checkpoint,streaming
run fp32-8192-b7 --size 8192 --precision fp32 --memory-budget 7GiB $N --modes conventional,checkpoint,streaming
run fp32-8192-b10 --size 8192 --precision fp32 --memory-budget 10GiB $N --modes streaming
run bf16-8192-b8-cl --size 8192 --precision bf16 --memory-budget 8GiB --channels-last --modes conventional,checkpoint,streaming
T=130 run bf16-16384-b16-cl --size 16384 --precision bf16 --memory-budget 16GiB --channels-last --modes conventional,streaming
T=100 run fp32-12288-b16 --size 12288 --precision fp32 --memory-budget 16GiB $N --modes conventional,streaming
T=80 run bf16-32768-b40-cl --size 32768 --precision bf16 --memory-budget 40GiB --channels-last --lazy --modes streaming
date +%T | tee -a $R/log.txt
pack
