#!/bin/bash
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
R=/tmp/res; mkdir -p $R; : > $R/log.txt
pack() { tar czf $OUT/res.tgz -C $R . ; }
B="python3 -m gigastream.streaming.benchmark --device cuda --arch resnet34 --repeats 2"
run() { name=$1; shift; echo "== $name $(date +%T)" | tee -a $R/log.txt; timeout ${T:-100} $B "$@" --out $R/$name.json 2>&1 | grep -v "^ \|^{\|^}" | tail -8 | tee -a $R/log.txt; python3 -c "
import json,sys;d=json.load(open('$R/$name.json'))
for m,r in d['modes'].items(): print('$name',m,{k:r.get(k) for k in ('seconds_median','peak_cuda_mib','max_rel_grad_error','time_vs_conventional','cuda_memory_vs_conventional','reason')})
print(d['plan_text'])" 2>&1 | tee -a $R/log.txt; pack; }
T=60 run fp32-8192-b9 --size 8192 --precision fp32 --memory-budget 9GiB --no-cudnn-benchmark --modes streaming
T=60 run fp32-8192-b8 --size 8192 --precision fp32 --memory-budget 8GiB --no-cudnn-benchmark --modes streaming
T=280 run bf16-131072-b80-cl --size 131072 --precision bf16 --memory-budget 80GiB --host-memory-budget 110GiB --lazy --channels-last --modes streaming --repeats 1 --warmup 0
pack
