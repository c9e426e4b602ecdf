#!/bin/bash
# One device call: the ensemble step beside the PyTorch yardsticks, the meta-test,
# fusion and scaling benchmarks on one GPU, each bounded by `timeout` so the whole
# call ends in about seven minutes. At most 8 files land in OUTDIR (what a device call
# returns): one .jsonl per benchmark, device.txt, and stderr.log for all of them.
#   bash benchmarks/gpu_session.sh OUTDIR          (GPU sizes)
#   SMALL=1 bash benchmarks/gpu_session.sh OUTDIR  (seconds-long check on a CPU)
# Run from the repository root (the benchmarks run as modules, `python -m benchmarks.NAME`).
# The ensemble run needs the yardsticks, which are not part of the project: put the two
# yardstick scripts (torch_ensemble_step.py, jax_naive_ensemble_step.py; see
# benchmarks/ensemble_vs_torch.py) into the ignored folder .yardsticks/ of the checkout and
# carry it to the device; without it the ensemble run is skipped.
set -u
OUT=${1:?usage: gpu_session.sh OUTDIR}
mkdir -p "$OUT"
B=benchmarks
export PYTHONUNBUFFERED=1
if [ -n "${SMALL:-}" ]; then
  ZF=3; IV="--models 2 --hw 16 --per-class 2 --steps 2 --repeats 1"; M="--small"; MT="--tasks 8 --steps 5"; HW32="--hw 32 --batch-sizes 4,8"; HW84="--hw 32 --batch-sizes 8"
  FU="--small"; SC="--small"; TT="--torch-tasks 2 --torch-vmap-batch 2"; EN="--small"
else
  IV="--models 100 --hw 32 --filters 32 --per-class 20 --steps 20"; M=""; MT="--tasks 600 --steps 100"; HW32="--hw 32 --batch-sizes 100,600"; HW84="--hw 84 --batch-sizes 100,300"
  FU="--models 1000 --steps 2000 --conv-hw 84"; SC="--sinusoid 100,1000,10000 --conv4 100,1000 --conv-hw 84"
  TT="--torch-tasks 30 --torch-vmap-batch 30"; EN="--rounds 2"
fi
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true) > "$OUT/device.txt" 2>&1
run() {  # name seconds command...
  local name=$1 secs=$2; shift 2
  echo "== $name ($(date -u +%T))"
  echo "== $name" >> "$OUT/stderr.log"
  timeout "$secs" "$@" > "$OUT/$name.jsonl" 2>> "$OUT/stderr.log"
  echo "   rc=$? ($(date -u +%T))"; tail -n 3 "$OUT/$name.jsonl"
}
if [ -d .yardsticks ]; then
  run ensemble 200 python -m benchmarks.ensemble_vs_torch $EN --bench-dir .yardsticks
else
  echo "== ensemble skipped: no .yardsticks/ (put the two yardstick scripts there)"
fi
run metatest32 70 python $B/metatest_throughput.py $MT $HW32 --repeats 1 --torch $TT --zoo-features ${ZF:-100}
run metatest84 80 python $B/metatest_throughput.py $MT $HW84 --repeats 1 --torch $TT
run fusion 35 python $B/fusion_throughput.py $FU --repeats 1
run inversion 60 python -m benchmarks.inversion_throughput $IV
run scaling 90 python -m benchmarks.scaling $SC --workdir /tmp/dfl2l_scaling
