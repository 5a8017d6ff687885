#!/bin/bash
# Continue weights on a lent GPU: the session-14 device call (docs/training.md, sessions 14, 18, 20, 26, 30).
#
# Here, once (.gpudata/ and .whl/ are git-ignored; .whl/ holds the wheels of docs/training.md session 11):
#     bash benchmarks/gpu_continue.sh prepare [MB] [PART]  # .gpudata/partPART: part PART (0) of the data
# Part 0 is the shuffled files, each taken while it still fits under MB; part 1 does the same with the
# files part 0 left, and so on. Take every weights file out of the index for the calls (64 MiB limit:
# `git rm -q --cached weights/*.safetensors` with `/weights/*.safetensors` in .git/info/exclude; `git
# reset -q -- weights` after) and copy the file to resume from to .gpudata/resume.safetensors. Send
# each part in a short call of its own, command `bash benchmarks/gpu_continue.sh stage P`, carry
# [".gpudata/partP", ".gpudata/resume.safetensors", ".whl"] (the first call; later ones need only the
# part): it copies the part to /tmp/data and .gpudata/*.safetensors to /tmp/, and installs the wheels
# (all of it stays for the next call while the machine is warm). With a tree under 1 MB, `prepare 62 P`
# makes three parts (0-2, session 18), `prepare 52 P` too with a 10 MB weights file beside part 0
# (session 26). Then `bash benchmarks/gpu_continue.sh train` (or `stage 2 && ... train` in one call).
# Each arm is "name resume lr lpips-weight [more sicc train options]"; the fp16 model files and logs
# come back in $OUT (up to three arms: 8 files at most come back).
set -u
cd "$(dirname "$0")/.."
install_wheels() {  # once per machine: what stays in /tmp serves the later calls
  [ -d /tmp/site ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 3
}
case "${1:-}" in
prepare)
  python3 - "${2:-29}" "${3:-0}" <<'PY'
import glob, os, random, shutil, sys
cap, part = float(sys.argv[1]) * 1e6, int(sys.argv[2])
fs = sorted(glob.glob("../shared/data/train/*/*")); random.seed(2026); random.shuffle(fs)
dest = f".gpudata/part{part}"
shutil.rmtree(dest, ignore_errors=True); os.makedirs(dest)  # no files of an earlier cap
size = {f: os.path.getsize(f) for f in fs}
for _ in range(part + 1):
    total, taken, left = 0, [], []
    for f in fs:  # the shuffled order, every file that still fits (session 11 used 44.5 MB)
        if total + size[f] <= cap:
            total += size[f]; taken.append(f)
        else:
            left.append(f)
    fs = left
for f in taken:  # named by folder too: two folders may hold the same file name
    shutil.copy(f, f"{dest}/{os.path.basename(os.path.dirname(f))}-{os.path.basename(f)}")
print(f"part {part}: {len(taken)} images, {total / 1e6:.1f} MB in {dest}; {len(fs)} images in later parts")
PY
  ;;
stage)
  mkdir -p /tmp/data && cp ".gpudata/part${2:-0}"/* /tmp/data/ && echo "$(ls /tmp/data | wc -l) images in /tmp/data" || exit 3
  for f in .gpudata/*.safetensors; do [ -e "$f" ] && cp "$f" /tmp/ && echo "$f in /tmp"; done
  if [ -d .whl ]; then install_wheels; fi
  ;;
train)
  install_wheels
  export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt"
  ARMS=${ARMS:-"M /tmp/resume.safetensors 1e-4 0 --plane-levels --full-weight 0.05 --ema 0.999"}  # the default's recipe
  IFS=';' read -ra arms <<< "$ARMS"
  for arm in "${arms[@]}"; do
    read -r name resume lr weight more <<< "$arm"
    # $more unquoted: its words are options, e.g. "--z-rate-weight 2"
    OMP_NUM_THREADS=4 python3 -m codec train codec "${DATA:-/tmp/data}" --out "/tmp/run-$name" \
      --resume "$resume" --device cuda --precision bf16 --batch-size 16 --patch-size 256 --lr "$lr" \
      --lpips-weight "$weight" --threads 4 --max-minutes "${MIN:-8.6}" --seed "${SEED:-31}" -q $more \
      > "/tmp/train-$name.out" 2>&1 &
  done
  # the GPU's load 90 s in, unless every arm has ended by then (a crash should cost seconds)
  for _ in $(seq 90); do sleep 1; [ -n "$(jobs -r)" ] || break; done
  nvidia-smi >> "$OUT/gpu.txt"
  wait
  for arm in "${arms[@]}"; do
    read -r name _ <<< "$arm"
    cp "/tmp/run-$name/weights.safetensors" "$OUT/$name.safetensors" || tail -n 5 "/tmp/train-$name.out"
    cp "/tmp/run-$name/log.jsonl" "$OUT/$name.log.jsonl"  # JSON lines only: plot_training.py reads it
    { echo "== $name"; cat "/tmp/train-$name.out"; } >> "$OUT/train.out"  # one file: at most 8 come back
    tail -n 1 "/tmp/run-$name/log.jsonl" | cut -c1-300
  done
  ;;
*) echo "usage: bash benchmarks/gpu_continue.sh prepare [MB] [PART] | stage [PART] | train  (env ARMS, MIN, SEED, DATA)" >&2
   exit 2 ;;
esac
