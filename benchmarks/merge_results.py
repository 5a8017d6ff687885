"""One `sicc eval` result from sicc rows evaluated in parts (e.g. the halves of a dataset on two cores)
and the classical rows of an anchors file: results.json, results.md and rd.png, as `sicc eval` writes them.

    python benchmarks/merge_results.py OUT_DIR SICC.json[,SICC2.json] ANCHORS.json [DATASET]

The anchors' classical rows count only for the images the sicc rows cover. DATASET names the whole set
in the outputs (default: the anchors' own).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from codec.evaluate import CURVE_FIELDS, average_curves, curve_bd_rates, markdown, plot
from compare_results import rows


def main(out_dir: str, sicc_spec: str, anchors_path: str, dataset: str | None = None):
    first = json.loads(Path(sicc_spec.split(",")[0]).read_text())
    dataset = dataset or json.loads(Path(anchors_path).read_text())["dataset"]
    sicc = [r for r in rows(sicc_spec) if r["codec"] == "sicc"]
    images = {r["image"] for r in sicc}
    classical = [r for r in rows(anchors_path) if r["codec"] != "sicc" and r["image"] in images]
    curves = average_curves(sicc + classical)
    both = {c: curve_bd_rates(curves[c], curves["sicc"]) for c in curves if c != "sicc"}
    result = {"dataset": dataset, "images": len(images), "weights": first["weights"], "refine": first["refine"],
              "reused": {"from": anchors_path, "codecs": sorted({r["codec"] for r in classical})}, "skipped": [],
              "curves": {c: [dict(zip(CURVE_FIELDS, p)) for p in pts] for c, pts in curves.items()},
              "bd_rate_psnr_vs": {c: v[0] for c, v in both.items()},
              "bd_rate_lpips_vs": {c: v[1] for c, v in both.items()}, "rows": sicc + classical}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1))
    (out / "results.md").write_text(markdown(result))
    plot(result, out / "rd.png")
    print(markdown(result).split("\n\n")[1])


if __name__ == "__main__":
    main(*sys.argv[1:])
