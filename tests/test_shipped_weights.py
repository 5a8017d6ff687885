"""The shipped default weights: found without flags, packaged in the wheel, and progressive on photos."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from codec import container
from codec.api import decode_image, encode_image, truncate
from codec.errors import SiccError
from codec.weights import DEFAULT_WEIGHTS, default_weights_path, load_codec, weights_path

from .conftest import ROOT, kodak_crop, psnr

pytestmark = pytest.mark.skipif(not default_weights_path().exists(), reason="no shipped weights yet")


@pytest.mark.parametrize("name,box", [("kodim23.png", (256, 128, 512, 384)), ("kodim13.png", (0, 0, 320, 200))])
def test_layers_span_low_to_high_rate_with_rising_psnr(name, box):
    img = kodak_crop(name, box)
    data = encode_image(img)
    h = container.parse(data).header
    pixels = img.width * img.height
    bpps, psnrs = [], []
    for k in range(1, len(h.layers) + 1):
        part = truncate(data, layers=k)
        bpps.append(len(part) * 8 / pixels)
        psnrs.append(psnr(img, decode_image(part)))
    assert bpps[0] <= 0.2 and bpps[-1] >= 0.8, bpps
    assert all(b > a for a, b in zip(psnrs, psnrs[1:])), psnrs


def test_psnr_target_keeps_the_fewest_layers_that_reach_it():
    img = kodak_crop("kodim13.png", (0, 0, 320, 200))
    full = encode_image(img)
    n = len(container.parse(full).header.layers)
    quality = [psnr(img, decode_image(full, layers=k)) for k in range(1, n + 1)]
    assert encode_image(img, psnr=(quality[5] + quality[6]) / 2) == truncate(full, layers=7)
    assert encode_image(img, psnr=quality[6]) == truncate(full, layers=7)  # reaching it exactly is enough
    assert encode_image(img, psnr=quality[0] / 2) == truncate(full, layers=1)
    assert encode_image(img, psnr=quality[-1]) == full
    with pytest.raises(SiccError, match="whole file reaches"):
        encode_image(img, psnr=quality[-1] + 0.5)


def test_wheel_carries_the_weights_and_works_from_any_directory(tmp_path):
    wheel_dir, target = tmp_path / "wheel", tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheel_dir), str(ROOT)], check=True, capture_output=True)
    (wheel,) = wheel_dir.glob("sicc-*.whl")
    assert f"codec/shipped_weights/{DEFAULT_WEIGHTS}" in zipfile.ZipFile(wheel).namelist()
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    # Dependencies from this environment, sicc only from the wheel (no .pth processing of the editable install).
    deps = [p for p in sys.path if p.endswith("site-packages")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), *deps]), "PYTHONWARNINGS": "ignore",
           "OMP_NUM_THREADS": "1"}
    work = tmp_path / "elsewhere"
    work.mkdir()
    kodak_crop().resize((64, 64)).save(work / "a.png")
    code = ("import codec, sys; from codec.cli import main; assert 'site' in codec.__file__, codec.__file__;"
            "sys.argv = ['sicc'] + sys.argv[1:]; main()")
    for args in (["encode", "a.png"], ["decode", "a.sic", "-o", "b.png"]):
        r = subprocess.run([sys.executable, "-S", "-c", code, *args], cwd=work, env=env, capture_output=True,
                           text=True)
        assert r.returncode == 0, r.stderr
    assert np.asarray(__import__("PIL.Image").Image.open(work / "b.png")).shape == (64, 64, 3)


def test_weights_are_chosen_by_shipped_name_or_path(tmp_path, monkeypatch):
    from codec.errors import SiccError
    from codec.weights import load_codec

    default = default_weights_path()
    for name in ("sicc-base", "sicc-base.safetensors", None):
        assert weights_path(name) == default
    assert load_codec("sicc-base") is load_codec(None)
    # A file in the working directory wins over a shipped name; a path with folders is never a name.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sicc-base").write_bytes(b"not weights")
    assert weights_path("sicc-base") == Path("sicc-base")
    assert weights_path("nowhere/sicc-base") == Path("nowhere/sicc-base")
    with pytest.raises(SiccError, match="weights file not found"):
        load_codec("sicc-no-such-weights")


LPIPS_WEIGHTS = "sicc-base-lpips"


@pytest.mark.skipif(not weights_path(LPIPS_WEIGHTS).exists(), reason="no perceptual weights shipped yet")
def test_perceptual_weights_are_chosen_by_name_and_found_again_by_the_file():
    from codec.evaluate import lpips

    img = kodak_crop("kodim13.png", (0, 0, 320, 200))
    data = encode_image(img, weights=LPIPS_WEIGHTS)
    assert container.parse(data).header.weights_id != container.parse(encode_image(img)).header.weights_id
    ref = np.asarray(img)
    # Decoded without --weights: the file's weights id names the shipped perceptual file.
    scores = [lpips(ref, np.asarray(decode_image(truncate(data, layers=k)))) for k in (2, 5, 9)]
    assert scores[0] > scores[1] > scores[2], scores
    # --refine follows each file's training objective: LPIPS for the perceptual file, MSE for the default
    assert load_codec(weights_path(LPIPS_WEIGHTS)).lpips_weight > 0 and load_codec().lpips_weight == 0
