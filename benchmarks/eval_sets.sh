#!/usr/bin/env bash
# The evaluation sets and classical anchors that docs/results.md's commands name, rebuilt under runs/
# (ignored by git, so a fresh checkout has none of it):
#   runs/kodakA, runs/kodakB      kodim01-12 and kodim13-24 (links), one half per core
#   runs/other-photos             the five non-Kodak photos (benchmarks/other_photos.py)
#   runs/otherA, runs/otherB      astronaut, chelsea, coffee / motorcycle_left, rocket (links)
#   runs/eval-kodak-anchors       JPEG, WebP, AVIF, JPEG XL, JPEG 2000 on all of Kodak
#   runs/eval-other-anchors       the same on the five photos
# Run from the repository root with the venv active: bash benchmarks/eval_sets.sh [KODAK_DIR]
# Sets already there are kept. The anchors take about 17 minutes on one core beside two training
# threads; JPEG XL needs cjxl/djxl (Debian: apt-get install libjxl-tools), else it is left out.
set -euo pipefail
kodak=$(realpath "${1:-../shared/data/kodak}")

link_set() {  # link_set DIR FILE... : DIR holds links to the FILEs (absolute paths)
    local dir=$1
    shift
    [ -d "$dir" ] && return
    mkdir -p "$dir.tmp"
    for f in "$@"; do ln -s "$(realpath "$f")" "$dir.tmp/"; done
    mv "$dir.tmp" "$dir"
}

link_set runs/kodakA "$kodak"/kodim{01..12}.png
link_set runs/kodakB "$kodak"/kodim{13..24}.png
[ -d runs/other-photos ] || python benchmarks/other_photos.py runs/other-photos
link_set runs/otherA runs/other-photos/{astronaut,chelsea,coffee}.png
link_set runs/otherB runs/other-photos/{motorcycle_left,rocket}.png

command -v cjxl > /dev/null || echo "eval_sets: no cjxl here: the anchors leave JPEG XL out" >&2
for set in "kodak $kodak" "other runs/other-photos"; do
    read -r name dir <<< "$set"
    out=runs/eval-$name-anchors
    [ -f "$out/results.json" ] && continue
    OMP_NUM_THREADS=1 sicc eval "$dir" --out "$out" --codecs jpeg,webp,avif,jxl,j2k -q
done
