#!/usr/bin/env bash
# Reproduce experiments/mnist_bags/README.md. One run at a time, one thread each, every run in
# its own process (peak memory is per process). Every run trains on the project's engine
# (MILClassifier in the Trainer of gigastream.train.trainer.build_trainer) into its own run
# folder $RUNS/NAME (metrics.json, test_predictions.csv, checkpoints/best.ckpt; default
# out/mnist_bags, ignored by git); its metrics.json is copied to $OUT/NAME.json (default
# experiments/mnist_bags/results), which summarize.py reads.
# Usage (from the repository root):
#   bash experiments/mnist_bags/run_all.sh [table|flat|timing|float64|bench|check|all]
# "check" is the short re-check on the engine (seed 0, N = 50 and 500, baseline and accumulate,
# float64 at N = 500), written to experiments/mnist_bags/results_lightning unless OUT is set.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
if [[ -n ${PYTHON:-} ]]; then PY=$PYTHON
elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python
else PY=python; fi
DIR=experiments/mnist_bags
what=${1:-all}
if [[ $what == check ]]; then OUT=${OUT:-$DIR/results_lightning}; else OUT=${OUT:-$DIR/results}; fi
RUNS=${RUNS:-out/mnist_bags}
mkdir -p "$OUT"

run() {  # run NAME FLAGS... ; skips runs whose JSON exists (delete it to redo)
  local name=$1; shift
  [[ -f $OUT/$name.json ]] && return 0
  echo "== $name: $*" >&2
  $PY $DIR/run.py --config $DIR/config.yaml --threads 1 --no-progress \
    --out "$RUNS/$name" "$@"
  cp "$RUNS/$name/metrics.json" "$OUT/$name.json"
}

# bags and epochs per bag size: fewer, larger bags as N grows (same order of training time)
size_flags() {
  case $1 in
    50) echo "--train-bags 100 --val-bags 40 --test-bags 100 --epochs 8" ;;
    500) echo "--train-bags 50 --val-bags 20 --test-bags 50 --epochs 5" ;;
    5000) echo "--train-bags 20 --val-bags 10 --test-bags 40 --epochs 4" ;;
  esac
}

if [[ $what == table || $what == all ]]; then
  for seed in 0 1 2; do
    for n in 50 500 5000; do
      for strategy in baseline accumulate sample; do
        [[ $n == 5000 && $strategy == baseline ]] && continue
        # shellcheck disable=SC2046
        run "table_${strategy}_n${n}_s${seed}" --strategy $strategy --bag-size $n --seed $seed $(size_flags $n)
      done
    done
  done
fi

if [[ $what == flat || $what == all ]]; then
  # peak memory against bag size at a fixed chunk size (4 training bags, 1 epoch)
  for n in 100 1000 10000; do
    for strategy in baseline accumulate; do
      run "flat_${strategy}_n${n}" --strategy $strategy --bag-size $n --train-bags 4 --val-bags 2 \
        --test-bags 2 --epochs 1 --seed 0
    done
  done
fi

if [[ $what == timing || $what == all ]]; then
  # time per training bag, baseline vs accumulate (and accumulate keeping graphs within a
  # memory budget), interleaved and repeated so that load from other processes hits all alike
  for rep in 0 1 2; do
    for n in 500 5000; do
      run "timing_baseline_n${n}_r${rep}" --strategy baseline --bag-size $n --train-bags 8 \
        --val-bags 2 --test-bags 2 --epochs 1 --seed $rep
      run "timing_accumulate_n${n}_r${rep}" --strategy accumulate --bag-size $n --train-bags 8 \
        --val-bags 2 --test-bags 2 --epochs 1 --seed $rep
      run "timing_accumulate-budget_n${n}_r${rep}" --strategy accumulate --bag-size $n \
        --memory-budget-mib 64 --train-bags 8 --val-bags 2 --test-bags 2 --epochs 1 --seed $rep
    done
  done
fi

if [[ $what == float64 || $what == all ]]; then
  # same seed in float64: accumulate should follow baseline's training trajectory
  for strategy in baseline accumulate; do
    # shellcheck disable=SC2046
    run "float64_${strategy}_n500_s0" --strategy $strategy --bag-size 500 --seed 0 --precision 64 \
      $(size_flags 500)
  done
fi

if [[ $what == check ]]; then
  for n in 50 500; do
    for strategy in baseline accumulate; do
      # shellcheck disable=SC2046
      run "table_${strategy}_n${n}_s0" --strategy $strategy --bag-size $n --seed 0 $(size_flags $n)
    done
  done
  for strategy in baseline accumulate; do
    # shellcheck disable=SC2046
    run "float64_${strategy}_n500_s0" --strategy $strategy --bag-size 500 --seed 0 --precision 64 \
      $(size_flags 500)
  done
fi

if [[ $what == bench || $what == all ]]; then
  # steady-state time of one bag in one process (warm-up, median of 5): where the time goes
  [[ -f $OUT/bench_mil_chunked.json ]] || $PY benchmarks/bench_mil_chunked.py \
    --bag-sizes 500 5000 --repeats 5 --out "$OUT/bench_mil_chunked.json"
fi

$PY $DIR/summarize.py --results "$OUT"
