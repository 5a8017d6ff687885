"""Library API: modes, metadata, truncation equivalence, rate options, repeatability."""

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from codec import container
from codec.api import decode_image, encode_image, truncate
from codec.errors import SiccError

from .conftest import photo, psnr


def test_round_trip_keeps_size_and_mode(tiny_weights):
    img = photo(77, 45)
    data = encode_image(img, weights=tiny_weights)
    out = decode_image(data, weights=tiny_weights)
    assert out.size == (77, 45) and out.mode == "RGB"
    assert container.parse(data).header.mode == "RGB"


@pytest.mark.parametrize("mode,decoded", [
    ("L", "L"), ("1", "L"), ("LA", "LA"), ("RGBA", "RGBA"), ("P", "RGB"), ("CMYK", "RGB"), ("I;16", "I;16"),
    ("YCbCr", "RGB"), ("F", "L"), ("I", "I;16"),
])
def test_modes_map_back_as_documented(tiny_weights, mode, decoded):
    base = photo(40, 30)
    if mode == "LA":
        img = base.convert("LA")
    elif mode == "I;16":
        img = Image.fromarray(np.asarray(base.convert("L")).astype(np.uint16) * 257)
    elif mode == "I":
        img = Image.fromarray(np.asarray(base.convert("L")).astype(np.int32) * 257)
    else:
        img = base.convert(mode)
    data = encode_image(img, weights=tiny_weights)
    out = decode_image(data, weights=tiny_weights)
    assert out.mode == decoded and out.size == img.size
    if mode in ("I;16", "I"):
        assert np.asarray(out).max() > 255  # full 16-bit range restored


def test_alpha_is_lossless(tiny_weights):
    img = photo(50, 33).convert("RGBA")
    alpha = np.random.default_rng(0).integers(0, 256, (33, 50), dtype=np.uint8)
    img.putalpha(Image.fromarray(alpha, "L"))
    out = decode_image(encode_image(img, weights=tiny_weights), weights=tiny_weights)
    assert out.mode == "RGBA" and np.array_equal(np.asarray(out)[..., 3], alpha)


def test_palette_transparency_becomes_alpha(tiny_weights):
    img = photo(32, 32).convert("P")
    img.info["transparency"] = 0
    out = decode_image(encode_image(img, weights=tiny_weights), weights=tiny_weights)
    assert out.mode == "RGBA"


def test_icc_and_exif_kept_unless_stripped(tiny_weights):
    img = photo(40, 40)
    exif = Image.Exif()
    exif[0x010F] = "sicc test camera"
    buf = io.BytesIO()
    img.save(buf, "PNG", icc_profile=b"fake-icc-profile", exif=exif.tobytes())
    data = encode_image(buf.getvalue(), weights=tiny_weights)
    out = decode_image(data, weights=tiny_weights)
    assert out.info["icc_profile"] == b"fake-icc-profile"
    assert b"sicc test camera" in out.info["exif"]
    stripped = container.parse(encode_image(buf.getvalue(), weights=tiny_weights, strip=True)).header
    assert stripped.icc_profile is None and stripped.exif is None


def test_truncate_equals_decode_layers_for_every_k(tiny_weights):
    img = photo(70, 90)
    data = encode_image(img, weights=tiny_weights)
    total = len(container.parse(data).header.layers)
    sizes = []
    for k in range(1, total + 1):
        small = truncate(data, layers=k)
        sizes.append(len(small))
        a = np.asarray(decode_image(small, weights=tiny_weights))
        b = np.asarray(decode_image(data, weights=tiny_weights, layers=k))
        assert np.array_equal(a, b) and a.shape == (90, 70, 3)
    assert sizes == sorted(sizes) and sizes[-1] == len(data)


def test_rate_options_at_encode_pick_the_largest_prefix(tiny_weights):
    img = photo(64, 64)
    full = encode_image(img, weights=tiny_weights)
    h = container.parse(full).header
    two = container.prefix_size(h, 2)
    assert encode_image(img, weights=tiny_weights, nbytes=two) == truncate(full, layers=2)
    assert encode_image(img, weights=tiny_weights, bpp=two * 8 / 64**2) == truncate(full, layers=2)
    assert encode_image(img, weights=tiny_weights, layers=1) == truncate(full, layers=1)
    with pytest.raises(SiccError, match="budget"):
        encode_image(img, weights=tiny_weights, nbytes=10)
    with pytest.raises(SiccError):
        encode_image(img, weights=tiny_weights, layers=1, bpp=1.0)
    with pytest.raises(SiccError, match="at most one"):
        encode_image(img, weights=tiny_weights, layers=1, psnr=30.0)
    with pytest.raises(SiccError, match="psnr must be positive"):
        encode_image(img, weights=tiny_weights, psnr=0.0)


def test_encoding_is_repeatable_to_the_byte(tiny_weights):
    img = photo(64, 48)
    assert encode_image(img, weights=tiny_weights) == encode_image(img, weights=tiny_weights)


def test_bytes_and_pixels_do_not_change_with_thread_count(tiny_weights, tmp_path):
    from codec.weights import default_weights_path

    # the shipped model is wide enough for thread-dependent float sums to flip rounded pixels
    weights = default_weights_path() if default_weights_path().exists() else tiny_weights
    src = tmp_path / "in.png"
    photo(330, 270).save(src)
    code = (
        "import sys, hashlib, numpy as np; from codec.api import encode_image, decode_image;"
        f"d = encode_image({str(src)!r}, weights={str(weights)!r});"
        f"img = decode_image(d, weights={str(weights)!r});"
        "print(hashlib.sha256(d).hexdigest(), hashlib.sha256(np.asarray(img).tobytes()).hexdigest())"
    )
    outs = set()
    for threads in ("1", "2", "3"):
        env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONWARNINGS": "ignore"}
        import os

        r = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                           check=True)
        outs.add(r.stdout.strip())
    assert len(outs) == 1


def test_partial_files_refused_unless_allowed(tiny_weights):
    data = encode_image(photo(64, 64), weights=tiny_weights)
    h = container.parse(data).header
    end_of_layer_2 = len(data) - sum(e.length for e in h.layers[2:])
    cut = data[: end_of_layer_2 + 1]
    with pytest.raises(SiccError, match="2 of 4 layers intact"):
        decode_image(cut, weights=tiny_weights)
    out = decode_image(cut, weights=tiny_weights, allow_partial=True)
    ref = decode_image(data, weights=tiny_weights, layers=2)
    assert np.array_equal(np.asarray(out), np.asarray(ref))


def test_other_weights_are_refused_with_a_clear_message(tiny_weights, other_weights):
    data = encode_image(photo(32, 32), weights=tiny_weights)
    with pytest.raises(SiccError, match="made with weights"):
        decode_image(data, weights=other_weights)


def test_decode_sample_differs_by_seed(tiny_weights):
    data = encode_image(photo(64, 64), weights=tiny_weights)
    a = decode_image(data, weights=tiny_weights, layers=1, sample=True, seed=3)
    b = decode_image(data, weights=tiny_weights, layers=1, sample=True, seed=3)
    c = decode_image(data, weights=tiny_weights, layers=1, sample=True, seed=4)
    assert np.array_equal(np.asarray(a), np.asarray(b)) and not np.array_equal(np.asarray(a), np.asarray(c))


def test_huge_image_header_is_refused_before_decoding():
    import struct
    import zlib

    def chunk(tag, body):
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    with pytest.raises(SiccError, match="too large"):
        encode_image(png)


def test_unreadable_inputs_are_refused(tiny_weights):
    for junk in (b"", b"hello, I am text", b"\x89PNG\r\n\x1a\n" + b"\0" * 30):
        with pytest.raises(SiccError):
            encode_image(junk, weights=tiny_weights)
    buf = io.BytesIO()
    photo(64, 64).save(buf, "PNG")
    with pytest.raises(SiccError):
        encode_image(buf.getvalue()[:-200], weights=tiny_weights)


def test_multi_frame_images_are_refused_not_cut_to_their_first_frame(tiny_weights):
    frames = [photo(24, 16, seed=i) for i in range(3)]
    for fmt in ("GIF", "PNG", "TIFF"):  # an animated GIF, an APNG, a multi-page TIFF
        buf = io.BytesIO()
        frames[0].save(buf, fmt, save_all=True, append_images=frames[1:])
        with pytest.raises(SiccError, match="3 frames"):
            encode_image(buf.getvalue(), weights=tiny_weights)
    # one frame is coded as usual, and so is a camera JPEG (MPO) whose second frame is a preview
    single, camera = io.BytesIO(), io.BytesIO()
    frames[0].save(single, "GIF", save_all=True)
    frames[0].save(camera, "MPO", save_all=True, append_images=frames[1:2])
    for data in (single.getvalue(), camera.getvalue()):
        assert decode_image(encode_image(data, weights=tiny_weights), weights=tiny_weights).size == (24, 16)


def test_a_cmyk_profile_is_not_attached_to_the_rgb_it_decodes_to(tiny_weights):
    from PIL import ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    cmyk_header = srgb[:16] + b"CMYK" + srgb[20:]  # only the colour space field is read
    rgb = photo(24, 16)
    for img, icc, kept in ((rgb.convert("CMYK"), cmyk_header, False), (rgb, srgb, True),
                           (rgb.convert("L"), srgb, False)):
        buf = io.BytesIO()
        img.save(buf, "TIFF", icc_profile=icc)
        out = decode_image(encode_image(buf.getvalue(), weights=tiny_weights), weights=tiny_weights)
        assert (out.info.get("icc_profile") == icc) == kept, img.mode


def test_psnr_helper_sanity():
    img = photo(16, 16)
    assert psnr(img, img) == 100.0  # capped for identical images


@pytest.mark.parametrize("size", [(1, 1), (1, 130), (65, 2), (129, 64)])
def test_any_size_round_trips(tiny_weights, size):
    img = photo(*size)
    out = decode_image(encode_image(img, weights=tiny_weights), weights=tiny_weights)
    assert out.size == size


def test_package_exposes_the_api(tiny_weights):
    import codec

    data = codec.encode_image(photo(20, 20), weights=tiny_weights)
    assert codec.decode_image(codec.truncate(data, layers=1), weights=tiny_weights).size == (20, 20)
