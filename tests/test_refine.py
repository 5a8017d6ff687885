"""Encoder-side latent refinement: a smaller rate-distortion cost from the same decoder."""

import copy

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import codec.refine as refine
from codec import container
from codec.api import decode_image, encode_image, truncate
from codec.cli import cli
from codec.errors import SiccError
from codec.model import level_lambdas
from codec.weights import WEIGHTS_FORMAT, default_weights_path, export_weights, load_codec, read_weights_file, write_weights_file

from .conftest import kodak_crop, make_tiny_model, photo


def real_cost(data: bytes, img, weights) -> float:
    """What refinement minimises for MSE weights, measured on real files: the mean over layers 2..L of
    bits per pixel + lambda_k * 255^2 * MSE of the plain decode of that prefix."""
    ref = np.asarray(img, dtype=np.float64) / 255
    pixels = img.width * img.height
    levels = load_codec(weights).layers_total
    lambdas = level_lambdas(levels - 1)[1:]
    costs = []
    for k, lam in zip(range(2, levels + 1), lambdas):
        part = truncate(data, layers=k)
        rec = np.asarray(decode_image(part, weights=weights), dtype=np.float64) / 255
        costs.append(len(part) * 8 / pixels + lam * 255**2 * np.mean((rec - ref) ** 2))
    return float(np.mean(costs))


def test_refinement_lowers_the_real_cost_and_leaves_model_and_random_stream_alone(tiny_weights):
    img = photo(128, 64)
    plain = encode_image(img, weights=tiny_weights)
    model = load_codec(tiny_weights).model
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    refined = encode_image(img, weights=tiny_weights, refine=15)
    assert real_cost(refined, img, tiny_weights) < real_cost(plain, img, tiny_weights)
    assert torch.equal(rng, torch.get_rng_state())
    assert not model.training and all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert encode_image(img, weights=tiny_weights, refine=15) == refined  # seeded: same input, same file


def test_refinement_of_the_plane_layered_default_lowers_the_real_cost_of_every_layer_count():
    # Plane layering's objective: the plain decode of a few plane-layer counts per step, each with its
    # estimated bits (plane_fills.py); measured here on real files, as the decoder sees them.
    weights = default_weights_path()
    assert load_codec(weights).planes is not None
    img = kodak_crop("kodim23.png", (0, 0, 128, 128))
    plain = encode_image(img, weights=weights)
    refined = encode_image(img, weights=weights, refine=15)
    assert real_cost(refined, img, weights) < real_cost(plain, img, weights)
    assert encode_image(img, weights=weights, refine=15) == refined  # seeded
    # the plane layering must come with the latents: without it the objective would be a slice model's
    model, x = load_codec(weights).model, torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        y = model.g_a(x)
        z = model.h_a(y)
    with pytest.raises(ValueError, match="plane fills"):
        refine.refine_latents(model, x, y, z, steps=1)


def test_the_plane_objective_sees_the_decoders_bits_and_pixels():
    # in eval mode plane_layer_points is the plain decoder of every layer count: its bits and its image
    from codec.api import _padded_tensor
    from codec.model import reset_constant_buffers
    from codec.weights import load_float_model

    weights = default_weights_path()
    img = kodak_crop("kodim23.png", (0, 0, 128, 128))
    fills = load_codec(weights).plane_fills()
    model = reset_constant_buffers(load_float_model(weights)).eval()
    x = _padded_tensor(np.asarray(img))
    with torch.no_grad():
        y = model.g_a(x)
        points = refine.plane_layer_points(model, fills, x, y, model.h_a(y), range(fills.levels + 1))
    data = encode_image(img, weights=weights)
    payloads = container.parse(data).payloads
    assert len(points) == len(payloads)
    ref = np.asarray(img, dtype=np.float64) / 255
    for k, (bpp, x_hat) in enumerate(points, start=1):
        coded = 8 * sum(len(p) for p in payloads[:k])
        # each payload is whole 32-bit words and ends with the range coder's state: up to ~3 words a layer
        assert bpp.item() * 128 * 128 == pytest.approx(coded, rel=0.03, abs=96 * k)
        decoded = np.asarray(decode_image(truncate(data, layers=k), weights=weights), dtype=np.float64) / 255
        ours = np.round(x_hat.clamp(0, 1)[0].permute(1, 2, 0).double().numpy() * 255) / 255  # 8-bit, as decoded
        assert np.mean((ours - ref) ** 2) == pytest.approx(np.mean((decoded - ref) ** 2), rel=0.03)


def test_refinement_in_tiles_on_an_image_larger_than_a_tile(monkeypatch, tiny_weights):
    monkeypatch.setattr(refine, "REFINE_TILE", 8)  # 128 px tiles: a 300x200 image (20x16 latents) takes 6
    img = photo(300, 200)
    plain = encode_image(img, weights=tiny_weights)
    refined = encode_image(img, weights=tiny_weights, refine=10)
    assert decode_image(refined, weights=tiny_weights).size == (300, 200)
    assert real_cost(refined, img, tiny_weights) < real_cost(plain, img, tiny_weights)


def test_refine_option_on_the_command_line(tmp_path, tiny_weights):
    src = tmp_path / "a.png"
    photo(64, 64).save(src)
    out = CliRunner().invoke(cli, ["encode", str(src), "--refine", "3", "--weights", str(tiny_weights), "-q"])
    assert out.exit_code == 0, out.output
    assert decode_image((tmp_path / "a.sic").read_bytes(), weights=tiny_weights).size == (64, 64)
    bad = CliRunner().invoke(cli, ["encode", str(src), "--refine", "-1", "-f", "--weights", str(tiny_weights)])
    assert bad.exit_code == 2
    with pytest.raises(SiccError):
        encode_image(photo(64, 64), weights=tiny_weights, refine=-1)
    # --device picks where the analysis and the refinement run; the file stays a plain .sic
    on_cpu = CliRunner().invoke(cli, ["encode", str(src), "-o", str(tmp_path / "cpu.sic"), "--refine", "3",
                                      "--device", "cpu", "--weights", str(tiny_weights), "-q"])
    assert on_cpu.exit_code == 0, on_cpu.output
    assert (tmp_path / "cpu.sic").read_bytes() == (tmp_path / "a.sic").read_bytes() or torch.cuda.is_available()
    if not torch.cuda.is_available():
        no_gpu = CliRunner().invoke(cli, ["encode", str(src), "-o", str(tmp_path / "gpu.sic"), "--device", "cuda",
                                          "--weights", str(tiny_weights), "-q"])
        assert no_gpu.exit_code == 1 and "no CUDA device" in no_gpu.output and not (tmp_path / "gpu.sic").exists()


def test_weights_record_their_lpips_weight_and_refinement_follows_it(tmp_path):
    model = make_tiny_model()
    mse, perceptual = tmp_path / "mse.safetensors", tmp_path / "lpips.safetensors"
    export_weights(model, mse)
    export_weights(model, perceptual, lpips_weight=2.0)
    assert load_codec(mse).lpips_weight == 0.0 and load_codec(perceptual).lpips_weight == 2.0
    img = photo(64, 64)
    # the same network codes the same bytes; refined, the LPIPS term moves the latents elsewhere
    def layers(weights, steps):
        return container.parse(encode_image(img, weights=weights, refine=steps)).payloads

    assert layers(mse, 0) == layers(perceptual, 0)
    assert layers(mse, 3) != layers(perceptual, 3)


def test_a_malformed_lpips_weight_is_refused(tmp_path):
    arrays, meta, _ = read_weights_file(default_weights_path(), WEIGHTS_FORMAT)
    bad = tmp_path / "bad.safetensors"
    write_weights_file({k: torch.from_numpy(v) for k, v in arrays.items()}, {**meta, "lpips_weight": "-1"}, bad)
    with pytest.raises(SiccError, match="malformed"):
        load_codec(bad)


def test_the_objective_averages_layers_two_on_and_lpips_weights_hold_z():
    model = make_tiny_model().eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        y = model.g_a(x)
        z = model.h_a(y)
        points = refine.layer_points(model, x, y, z)
        lambdas = level_lambdas(len(model.cfg.slices))
        terms = [bpp + lam * 255**2 * torch.mean((x_hat - x) ** 2) for (bpp, x_hat), lam in zip(points, lambdas)]
        assert len(points) == len(model.cfg.slices) + 1
        assert torch.allclose(refine.refinement_loss(model, x, y, z), torch.stack(terms[1:]).mean())
        zero_lpips = lambda a, b: torch.zeros(a.shape[0])
        assert torch.allclose(refine.refinement_loss(model, x, y, z, zero_lpips, 1.0), torch.stack(terms[1:]).mean())
    # MSE weights move both latents; LPIPS weights move y and code z as the analysis gave it
    y_mse, z_mse = refine.refine_latents(model, x, y, z, steps=2)
    y_lpips, z_lpips = refine.refine_latents(model, x, y, z, steps=2, lpips_weight=1.0)
    assert not torch.equal(y_mse, y) and not torch.equal(z_mse, z)
    assert not torch.equal(y_lpips, y) and torch.equal(z_lpips, z)


def test_a_held_z_enters_the_objective_rounded_as_the_decoder_sees_it(monkeypatch):
    model = make_tiny_model().eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        y = model.g_a(x)
        z = model.h_a(y) + 0.3  # off the integer grid, where noise and rounding differ
        decoder_view = refine.layer_points(model, x, y, z)
    refining = copy.deepcopy(model).train()  # refinement runs the model in train mode
    held = refine.decoded_hyper(refining, z)
    assert refining.entropy_bottleneck.training and not model.entropy_bottleneck.training
    assert all(torch.equal(a, b) for a, b in zip(held, refine.decoded_hyper(model, z)))
    assert not model.entropy_bottleneck.training  # each model is left in the mode it was in
    with torch.no_grad():
        via_held = refine.layer_points(model, x, y, z, held_hyper=held)
    for (bpp, x_hat), (bpp_held, x_hat_held) in zip(decoder_view, via_held):
        assert torch.allclose(bpp, bpp_held) and torch.allclose(x_hat, x_hat_held)
    # refinement asks for it once per tile, and only where z is held (LPIPS weights)
    calls = []
    monkeypatch.setattr(refine, "decoded_hyper", lambda m, zz: calls.append(1) or held)
    refine.refine_latents(model, x, y, z, steps=2)
    assert calls == []
    refine.refine_latents(model, x, y, z, steps=2, lpips_weight=1.0)
    assert calls == [1]
