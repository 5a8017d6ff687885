"""The CLI contract (SPEC §1): outputs, exit codes, one-line errors, no clobbering, batches, pipes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from codec.cli import cli
from codec.device import has_fast_bf16

from .conftest import photo, photo_dir


@pytest.fixture
def run():
    def invoke(*args, input=None):
        return CliRunner().invoke(cli, [str(a) for a in args], input=input, catch_exceptions=False)
    return invoke


@pytest.fixture
def images(tmp_path):
    paths = []
    for i, size in enumerate([(64, 48), (33, 70), (100, 64)]):
        p = tmp_path / f"img{i}.png"
        photo(*size, seed=i).save(p)
        paths.append(p)
    return paths


def one_error_line(result, *needles):
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert lines and all(l.startswith("sicc") for l in lines), result.stderr
    assert "Traceback" not in result.stderr
    for n in needles:
        assert n in result.stderr, result.stderr


def test_encode_decode_default_names(run, images, tiny_weights):
    src = images[0]
    r = run("encode", src, "--weights", tiny_weights)
    assert r.exit_code == 0, r.stderr
    sic = src.with_suffix(".sic")
    assert sic.exists()
    out = src.parent / "back.png"
    r = run("decode", sic, "-o", out, "--weights", tiny_weights)
    assert r.exit_code == 0 and Image.open(out).size == (64, 48)


def test_never_overwrite_without_force(run, images, tiny_weights):
    src = images[0]
    sic = src.with_suffix(".sic")
    sic.write_bytes(b"precious")
    r = run("encode", src, "--weights", tiny_weights)
    assert r.exit_code == 1
    one_error_line(r, "img0.png", "exists", "--force")
    assert sic.read_bytes() == b"precious"
    assert run("encode", src, "--weights", tiny_weights, "-f").exit_code == 0
    assert sic.read_bytes()[:4] == b"\x89SIC"
    assert not [p for p in src.parent.iterdir() if p.name.endswith(".tmp")]


def test_batch_into_directory_with_a_bad_input(run, images, tiny_weights, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_text("not an image")
    out = tmp_path / "out"
    r = run("encode", *images, bad, tmp_path / "missing.png", "-o", out, "-j", 2, "--weights", tiny_weights)
    assert r.exit_code == 1
    assert sorted(p.name for p in out.iterdir()) == ["img0.sic", "img1.sic", "img2.sic"]
    assert "broken.png" in r.stderr and "missing.png" in r.stderr and "2 of 5 inputs failed" in r.stderr
    decoded = tmp_path / "decoded"
    r = run("decode", *sorted(out.iterdir()), "-o", decoded, "-j", 2, "--weights", tiny_weights)
    assert r.exit_code == 0, r.stderr
    assert [Image.open(decoded / f"img{i}.png").size for i in range(3)] == [(64, 48), (33, 70), (100, 64)]


def test_usage_errors_exit_2(run, images, tiny_weights):
    assert run("encode", images[0], "--layers", 1, "--bpp", 0.5).exit_code == 2
    assert run("encode", images[0], "--psnr", 30, "--bytes", 900).exit_code == 2
    assert run("encode", images[0], "--psnr", 0).exit_code == 2
    assert run("truncate", images[0], "-o", "x.sic").exit_code == 2  # no rate given
    assert run("encode").exit_code == 2
    assert run("decode", "a.sic", "b.sic", "-o", "-").exit_code == 2
    assert run("encode", images[0], "--layers", 0).exit_code == 2


def test_info_json_and_truncate(run, images, tiny_weights, tmp_path):
    sic = tmp_path / "a.sic"
    assert run("encode", images[2], "-o", sic, "--weights", tiny_weights).exit_code == 0
    info = json.loads(run("info", sic, "--json").stdout)
    assert info["width"] == 100 and info["height"] == 64 and info["file_bytes"] == sic.stat().st_size
    assert len(info["layers"]) == info["layers_total"] == 4
    for row in info["layers"]:
        assert {"bytes", "cumulative_bytes", "bpp"} <= row.keys()
    small = tmp_path / "b.sic"
    r = run("truncate", sic, "-o", small, "--layers", 2)
    assert r.exit_code == 0
    assert small.stat().st_size == info["layers"][1]["cumulative_bytes"]
    r = run("truncate", sic, "-o", small, "--layers", 1)
    assert r.exit_code == 1 and "exists" in r.stderr
    by_bpp = tmp_path / "c.sic"
    assert run("truncate", sic, "-o", by_bpp, "--bpp", info["layers"][2]["bpp"]).exit_code == 0
    assert by_bpp.stat().st_size == info["layers"][2]["cumulative_bytes"]
    human = run("info", sic)
    assert human.exit_code == 0 and "100x64" in human.stdout


def test_bad_sic_inputs_fail_with_one_line(run, images, tiny_weights, tmp_path):
    sic = tmp_path / "a.sic"
    run("encode", images[0], "-o", sic, "--weights", tiny_weights)
    data = sic.read_bytes()
    flipped = bytearray(data)
    flipped[-3] ^= 0x10
    cases = {
        "empty.sic": b"", "random.sic": os.urandom(300), "cut.sic": data[: len(data) - 5],
        "flip.sic": bytes(flipped), "png.sic": images[0].read_bytes(), "head.sic": data[:20],
    }
    for name, blob in cases.items():
        p = tmp_path / name
        p.write_bytes(blob)
        out = tmp_path / (name + ".png")
        r = run("decode", p, "-o", out, "--weights", tiny_weights)
        assert r.exit_code == 1, name
        one_error_line(r, name)
        assert not out.exists()
    r = run("decode", tmp_path / "cut.sic", "-o", tmp_path / "partial.png", "--weights", tiny_weights,
            "--allow-partial")
    assert r.exit_code == 0
    r = run("decode", tmp_path, "-o", tmp_path / "dir.png", "--weights", tiny_weights)
    assert r.exit_code == 1 and "directory" in r.stderr


def test_wrong_or_corrupt_weights(run, images, tiny_weights, other_weights, tmp_path):
    sic = tmp_path / "a.sic"
    run("encode", images[0], "-o", sic, "--weights", tiny_weights)
    r = run("decode", sic, "-o", tmp_path / "x.png", "--weights", other_weights)
    assert r.exit_code == 1
    one_error_line(r, "made with weights")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    r = run("encode", images[0], "-o", tmp_path / "y.sic", "--weights", junk)
    assert r.exit_code == 1 and "weights" in r.stderr and not (tmp_path / "y.sic").exists()


def test_pipes_through_stdin_and_stdout(images, tiny_weights):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    sicc = [sys.executable, "-c", "from codec.cli import main; main()"]
    enc = subprocess.run(sicc + ["encode", "-", "-o", "-", "--weights", str(tiny_weights)],
                         input=images[1].read_bytes(), capture_output=True, env=env)
    assert enc.returncode == 0 and enc.stdout[:4] == b"\x89SIC", enc.stderr
    dec = subprocess.run(sicc + ["decode", "-", "-o", "-", "--weights", str(tiny_weights)], input=enc.stdout,
                         capture_output=True, env=env)
    assert dec.returncode == 0 and dec.stdout[:8] == b"\x89PNG\r\n\x1a\n"
    bad = subprocess.run(sicc + ["decode", "-", "-o", "-"], input=b"garbage", capture_output=True, env=env)
    assert bad.returncode == 1 and bad.stderr.decode().strip().count("\n") == 0 and not bad.stdout


def test_train_codec_small_run_gives_usable_weights(run, tmp_path, images):
    data = photo_dir(tmp_path / "data", 3, 96, 80)
    out = tmp_path / "run"
    r = run("train", "codec", data, "--out", out, "--steps", 6, "--batch-size", 2, "--patch-size", 64, "--small", "-q",
            "--reg-alpha", 0.1)
    assert r.exit_code == 0, r.stderr
    weights = out / "weights.safetensors"
    logs = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert logs[-1]["step"] == 6 and np.isfinite(logs[-1]["loss"])
    assert logs[-1]["h_cond"] > 0  # the regularizer's H(X|X^) estimate, bits per pixel
    sic = tmp_path / "t.sic"
    assert run("encode", images[0], "-o", sic, "--weights", weights).exit_code == 0
    assert run("decode", sic, "-o", tmp_path / "t.png", "--weights", weights).exit_code == 0
    # resume continues from the checkpoint, at the learning rate asked for (not the checkpoint's),
    # here with the transforms under bf16 autocast; checkpoints written while the model used
    # CompressAI's EntropyBottleneck carry its table buffers, which resuming must accept
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    state["model"].update({"entropy_bottleneck._offset": torch.zeros(4), "entropy_bottleneck._cdf_length": torch.zeros(4),
                           "entropy_bottleneck._quantized_cdf": torch.zeros(4, 8)})
    torch.save(state, out / "checkpoint.pt")
    r = run("train", "codec", data, "--out", out, "--steps", 8, "--batch-size", 2, "--patch-size", 64,
            "--resume", out / "checkpoint.pt", "-q", "--reg-alpha", 0.1, "--lr", 5e-5, "--precision", "bf16",
            "--lpips-weight", 1, "--full-weight", 0.25, "--z-rate-weight", 2)
    assert r.exit_code == 0, r.stderr
    # emulated bf16 (CPUs without AVX512-BF16/AMX) is far slower than fp32: the user is told so
    assert ("no native bf16" in r.stderr) == (not has_fast_bf16(torch.device("cpu")))
    last = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 8 and np.isfinite(last["loss"]) and 0 < last["lpips_full"] < 1
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert state["opt"]["param_groups"][0]["lr"] == 5e-5


def test_train_without_images_fails_with_one_line_and_writes_nothing(run, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for kind in ("codec", "prior"):
        r = run("train", kind, empty, "--out", tmp_path / "run", "--steps", 1, "--small")
        assert r.exit_code == 1 and not (tmp_path / "run").exists()
        one_error_line(r, f"{empty}: no training images found")
        assert r.stderr.count(str(empty)) == 1


def test_train_resume_from_a_file_that_is_not_a_checkpoint_fails_with_one_line(run, tmp_path):
    data = photo_dir(tmp_path / "data", 1, 64, 64)
    junk, other = tmp_path / "junk.pt", tmp_path / "list.pt"
    junk.write_bytes(b"not a checkpoint")
    torch.save([1, 2], other)
    unreadable = "not a readable checkpoint"
    for resume, layout, needle in [(junk, [], unreadable), (junk, ["--synthesis-blocks", 1], unreadable),
                                   (other, [], "not a sicc training checkpoint")]:
        r = run("train", "codec", data, "--out", tmp_path / "run", "--resume", resume, "--steps", 1, *layout)
        assert r.exit_code == 1 and not (tmp_path / "run").exists()
        one_error_line(r, f"{resume}: {needle}")
        assert str(data) not in r.stderr  # the error is the checkpoint's, not the data's
    r = run("train", "prior", data, "--out", tmp_path / "prior", "--resume", other, "--steps", 1)
    assert r.exit_code == 1
    one_error_line(r, "not a sicc training checkpoint")
    # each trainer's checkpoint is refused by the other
    codec_run, prior_run = tmp_path / "codec-ok", tmp_path / "prior-ok"
    for kind, out in (("codec", codec_run), ("prior", prior_run)):
        r = run("train", kind, data, "--out", out, "--steps", 1, "--batch-size", 1, "--patch-size", 64, "--small", "-q")
        assert r.exit_code == 0, r.stderr
    for kind, resume in (("prior", codec_run), ("codec", prior_run)):
        r = run("train", kind, data, "--out", tmp_path / "again", "--resume", resume / "checkpoint.pt", "--steps", 2)
        assert r.exit_code == 1 and not (tmp_path / "again").exists()
        one_error_line(r, "the other trainer's model")
    # a codec checkpoint with a value its own model refuses is named as such, not as the other trainer's
    state = torch.load(codec_run / "checkpoint.pt", weights_only=False)
    state["config"] = json.dumps({**json.loads(state["config"]), "synthesis_blocks": -1})
    damaged = tmp_path / "damaged.pt"
    torch.save(state, damaged)
    r = run("train", "codec", data, "--out", tmp_path / "again", "--resume", damaged, "--steps", 2)
    assert r.exit_code == 1 and not (tmp_path / "again").exists()
    one_error_line(r, "invalid model settings", "synthesis_blocks -1")


def test_eval_writes_curves_table_and_plot(run, tmp_path, tiny_weights):
    data = photo_dir(tmp_path / "set", 2, 64, 48)
    out = tmp_path / "eval"
    r = run("eval", data, "--out", out, "--codecs", "sicc,jpeg,webp", "--weights", tiny_weights, "-q")
    assert r.exit_code == 0, r.stderr
    res = json.loads((out / "results.json").read_text())
    assert set(res["curves"]) == {"sicc", "jpeg", "webp"}
    assert len(res["curves"]["sicc"]) == 4 and len(res["rows"]) == 2 * (4 + 11 + 11)
    jpeg_bpp = [p["bpp"] for p in res["curves"]["jpeg"]]
    assert jpeg_bpp == sorted(jpeg_bpp) and all(p["psnr"] > 10 for p in res["curves"]["jpeg"])
    assert (out / "rd.png").stat().st_size > 1000 and "| sicc vs |" in (out / "results.md").read_text()
    assert run("eval", data, "--codecs", "nope").exit_code == 2

    # --anchors: the classical rows come from the earlier run, unchanged; sicc and missing codecs are measured
    again = tmp_path / "again"
    r = run("eval", data, "--out", again, "--codecs", "sicc,jpeg,j2k", "--weights", tiny_weights, "-q",
            "--anchors", out / "results.json")
    assert r.exit_code == 0, r.stderr
    res2 = json.loads((again / "results.json").read_text())
    assert res2["reused"]["codecs"] == ["jpeg"] and set(res2["curves"]) == {"sicc", "jpeg", "j2k"}
    assert [r for r in res2["rows"] if r["codec"] == "jpeg"] == [r for r in res["rows"] if r["codec"] == "jpeg"]
    assert res2["curves"]["jpeg"] == res["curves"]["jpeg"] and "reused from" in (again / "results.md").read_text()
    # an anchor file for other images is not reused
    (data / "1.png").rename(data / "2.png")
    r = run("eval", data, "--out", again, "--codecs", "sicc,jpeg", "--weights", tiny_weights, "-q",
            "--anchors", out / "results.json")
    assert r.exit_code == 0 and json.loads((again / "results.json").read_text())["reused"] is None
    (tmp_path / "bad.json").write_text("{}")
    r = run("eval", data, "--codecs", "jpeg", "--anchors", tmp_path / "bad.json")
    assert r.exit_code == 1 and "not a sicc eval results.json" in r.stderr


def test_eval_measures_pixels_without_the_metadata_some_codecs_carry(tmp_path, tiny_weights):
    from PIL import Image, ImageCms

    from codec.evaluate import evaluate

    plain = photo_dir(tmp_path / "plain", 1, 64, 48)
    tagged = tmp_path / "tagged"
    tagged.mkdir()
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.open(plain / "0.png").save(tagged / "0.png", icc_profile=srgb)
    res = [evaluate(d, tmp_path / f"eval-{d.name}", ["sicc", "avif"], tiny_weights) for d in (plain, tagged)]
    # sicc would carry the profile in its container (and AVIF in its own); here both code the same pixels.
    assert [r["bytes"] for r in res[0]["rows"]] == [r["bytes"] for r in res[1]["rows"]]


def test_bd_rate_of_a_curve_against_itself_and_a_cheaper_one():
    from codec.evaluate import bd_rate

    curve = [(0.25, 28.0), (0.5, 31.0), (1.0, 34.5), (2.0, 38.0)]
    assert abs(bd_rate(curve, curve)) < 1e-9
    cheaper = [(b * 0.8, p) for b, p in curve]
    assert abs(bd_rate(curve, cheaper) - (-20.0)) < 1e-6


def test_rd_slopes_are_the_lambda_of_a_known_curve():
    from codec.evaluate import rd_slopes

    # bpp = -b ln(D) with D = 255^2 MSE: -dbpp/dD = b / D exactly, so central differences on a fine
    # grid recover it, and halving the rate per unit of log-distortion halves every lambda.
    b = 0.3
    psnrs = np.linspace(25, 40, 61)
    distortion = 255**2 * 10 ** (-psnrs / 10)
    curve = [(-b * np.log(d) + 4, p) for d, p in zip(distortion, psnrs)]
    slopes = rd_slopes(curve)
    assert len(slopes) == len(curve) - 2
    assert np.allclose(slopes, b / distortion[1:-1], rtol=1e-3)
    assert np.allclose(rd_slopes([(r / 2, p) for r, p in curve]), np.array(slopes) / 2)


def test_outputs_get_normal_permissions_and_missing_folders_fail_cleanly(run, images, tiny_weights, tmp_path):
    out = tmp_path / "perm.sic"
    assert run("encode", images[0], "-o", out, "--weights", tiny_weights).exit_code == 0
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask
    r = run("encode", images[0], "-o", tmp_path / "no" / "such" / "dir.sic", "--weights", tiny_weights)
    assert r.exit_code == 1
    one_error_line(r, "cannot write")


def test_ctrl_c_as_a_temp_file_is_made_leaves_the_whole_file_and_no_temp(tmp_path, monkeypatch):
    import signal
    import tempfile

    from codec.cli import write_atomic

    made = tempfile.mkstemp

    def mkstemp_then_ctrl_c(*args, **kwargs):
        out = made(*args, **kwargs)
        signal.raise_signal(signal.SIGINT)  # the temp file exists; the try that would remove it has not begun
        return out

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp_then_ctrl_c)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal has it
    try:
        with pytest.raises(KeyboardInterrupt):
            write_atomic(str(tmp_path / "a.sic"), b"all of it", force=False)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert [p.name for p in tmp_path.iterdir()] == ["a.sic"] and (tmp_path / "a.sic").read_bytes() == b"all of it"


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_ctrl_c_stops_a_batch_and_leaves_only_complete_files(tmp_path, tiny_weights, jobs):
    import signal
    import time

    from codec import container

    sources = []
    for i in range(40):
        sources.append(tmp_path / f"{i:02d}.png")
        photo(512, 384, seed=i).save(sources[-1])
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    # Ctrl-C as a terminal delivers it: a shell's background jobs (`pytest ... &`) start with SIGINT
    # ignored, which the child would inherit and rightly keep
    child = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); from codec.cli import main; main()"
    proc = subprocess.Popen([sys.executable, "-c", child, "encode", *map(str, sources),
                             "-o", str(out), "--weights", str(tiny_weights), "-j", jobs],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.time() + 120
    while not (out.exists() and any(out.glob("*.sic"))) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.decode().strip().splitlines()[-1] == "sicc: interrupted" and b"Traceback" not in err
    written = sorted(p.name for p in out.iterdir())
    assert 0 < len(written) < len(sources) and all(name.endswith(".sic") for name in written)  # no temp files
    for name in written:
        assert not container.parse((out / name).read_bytes()).problem


def test_train_codec_under_torchrun_two_ranks(tmp_path, images):
    # two CPU ranks (gloo): rank 0 alone logs and checkpoints, and its clock stops both ranks together
    # (a rank left waiting in a collective would hang until the timeout)
    data = photo_dir(tmp_path / "data", 2, 96, 80)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "codec",
           "train", "codec", str(data), "--out", str(out), "--steps", "3", "--batch-size", "1", "--patch-size", "64",
           "--small", "-q", "--device", "cpu"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[:3000] + "\n...\n" + r.stderr[-2000:]  # a rank's own error comes first
    logs = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert [l["step"] for l in logs] == [3]
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 3
    r = subprocess.run(cmd[:-2] + ["--steps", "1000", "--resume", str(out / "checkpoint.pt"), "--max-minutes", "0.05",
                                   "--device", "cpu"], env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[:3000] + "\n...\n" + r.stderr[-2000:]  # a rank's own error comes first
    assert 3 < torch.load(out / "checkpoint.pt", weights_only=False)["step"] < 1000
    sic = tmp_path / "t.sic"
    assert subprocess.run([sys.executable, "-m", "codec", "encode", str(images[0]), "-o", str(sic), "--weights",
                           str(out / "weights.safetensors")], env=env).returncode == 0
