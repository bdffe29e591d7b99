#!/bin/bash
# GPU call 3: the failing CUDA test in detail, conventional at 16384^2 bf16 / 12288^2 fp32, 65536^2 bf16.
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
R=/tmp/res; mkdir -p $R
pack() { tar czf $OUT/res.tgz -C $R . ; }
GIGASTREAM_TEST_DEVICE=cuda timeout 60 python3 -m pytest -q -x -p no:cacheprovider --tb=short tests/streaming/test_exactness.py -k not_divisible 2>&1 | grep -v "^$" | head -40 | tee $R/log.txt
B="python3 -m gigastream.streaming.benchmark --device cuda --arch resnet34 --repeats 2"
run() { name=$1; shift; echo "== $name $(date +%T)" | tee -a $R/log.txt; timeout ${T:-100} $B "$@" --out $R/$name.json 2>&1 | grep -v "^ \|^{\|^}" | tail -8 | tee -a $R/log.txt; python3 -c "
import json,sys;d=json.load(open('$R/$name.json'))
for m,r in d['modes'].items(): print('$name',m,{k:r.get(k) for k in ('seconds_median','peak_cuda_mib','max_rel_grad_error','time_vs_conventional','cuda_memory_vs_conventional','reason')})
print(d['plan_text'])" 2>&1 | tee -a $R/log.txt; pack; }
T=120 run bf16-16384-b16-cl --size 16384 --precision bf16 --memory-budget 16GiB --channels-last --modes conventional,streaming --no-skip
T=120 run fp32-12288-b16 --size 12288 --precision fp32 --memory-budget 16GiB --no-cudnn-benchmark --modes conventional,streaming --no-skip
T=240 run bf16-65536-b40-cl --size 65536 --precision bf16 --memory-budget 40GiB --host-memory-budget 100GiB --lazy --channels-last --modes streaming --repeats 1 --warmup 1
T=60 run bf16-32768-b40-cl-prof --size 32768 --precision bf16 --memory-budget 40GiB --channels-last --lazy --modes streaming --repeats 1 --profile $R/p-bf16-32768
date +%T | tee -a $R/log.txt
pack
