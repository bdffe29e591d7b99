#!/bin/bash
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
R=/tmp/res; mkdir -p $R; : > $R/log.txt
free -g | tee -a $R/log.txt
timeout 330 python3 -m gigastream.streaming.benchmark --device cuda --arch resnet34 --size 131072 --precision bf16 --memory-budget 80GiB --host-memory-budget 110GiB --lazy --channels-last --modes streaming --repeats 1 --warmup 0 --out $R/bf16-131072-b80-cl.json 2>&1 | tail -30 | tee -a $R/log.txt
tar czf $OUT/res.tgz -C $R .
