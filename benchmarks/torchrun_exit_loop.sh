#!/bin/bash
# Repeats the two torchrun calls of tests/test_cli.py::test_train_codec_under_torchrun_two_ranks (a new
# 3-step run, then a resume for 3 seconds), N times, and counts the calls that fail. A failing call's
# output stays in DIR (a<i>.log, b<i>.log), with the core of a crashed rank (core_pattern permitting).
#
#     bash benchmarks/torchrun_exit_loop.sh 60 /tmp/torchrun-loop
#
# Session 28: 0 failures in 180 calls after the fix in codec/train.py (`collective_buffer`; the last 60
# beside a training run); before it, the first call of the first loop aborted (rank 1, SIGABRT at exit).
set -u
n=${1:?number of repetitions}; dir=${2:?scratch directory}
python=$(command -v python || true)
if [ -z "$python" ] || ! "$python" -c "import torch, codec" 2>/dev/null; then
    echo "python${python:+ ($python)} cannot import torch and codec: activate the venv"; exit 1
fi
mkdir -p "$dir" && cd "$dir" || exit 1
"$python" - <<'PY'
import numpy as np
from pathlib import Path
from PIL import Image
Path("data").mkdir(exist_ok=True)
rng = np.random.default_rng(0)
for i in range(2):
    Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)).save(f"data/{i}.png")
PY
ulimit -c unlimited
export OMP_NUM_THREADS=1 PYTHONWARNINGS=ignore
run=("$python" -m torch.distributed.run --standalone --nproc_per_node 2 -m codec train codec data --out run
     --batch-size 1 --patch-size 64 --small -q --device cpu)
fails=0
for i in $(seq 1 "$n"); do
    rm -rf run
    "${run[@]}" --steps 3 > "a$i.log" 2>&1 && rm "a$i.log" || fails=$((fails + 1))
    "${run[@]}" --steps 1000 --resume run/checkpoint.pt --max-minutes 0.05 > "b$i.log" 2>&1 && rm "b$i.log" \
        || fails=$((fails + 1))
    echo "$i: $fails failed so far"
done
echo "$fails of $((2 * n)) calls failed"
