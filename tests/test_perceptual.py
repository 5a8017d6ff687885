"""Diffusion prior, sampler and perceptual decoding (tiny models, CPU, few steps)."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from codec.api import decode_image, encode_image
from codec.cli import cli
from codec.diffusion import TINY_UNET, LinearSchedule, UNet, denoising_loss, sample
from codec.errors import SiccError
from codec.perceptual import export_prior, invert, load_prior

from .conftest import photo


@pytest.fixture(scope="module")
def tiny_prior(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("prior") / "prior.safetensors"
    export_prior(UNet(TINY_UNET), path)
    return path


def test_unet_keeps_any_size():
    net = UNet(TINY_UNET)
    x = torch.randn(2, 3, 37, 50)
    assert net(x, torch.tensor([0, 999])).shape == x.shape


def test_schedule_and_loss():
    s = LinearSchedule()
    assert s.alpha_bar(-1) == 1.0 and 0 < s.alpha_bar(999) < 1e-4 < s.alpha_bar(0) < 1
    torch.manual_seed(0)
    net = UNet(TINY_UNET)
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    losses = []
    for _ in range(40):
        loss = denoising_loss(net, s, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-10:]) < np.mean(losses[:10])


def test_guidance_pulls_samples_towards_the_constraint():
    torch.manual_seed(0)
    net = UNet(TINY_UNET).requires_grad_(False)
    s = LinearSchedule()
    target = torch.rand(1, 3, 16, 16) * 2 - 1
    start = torch.randn(1, 3, 16, 16)
    free = sample(net, s, start, 999, 10, generator=torch.Generator().manual_seed(1))
    guided = sample(net, s, start, 999, 10, guidance=lambda x0: torch.linalg.vector_norm(x0 - target),
                    generator=torch.Generator().manual_seed(1))
    assert free.shape == guided.shape and guided.abs().max() <= 1
    assert (guided - target).norm() < (free - target).norm()


def test_strength_zero_is_the_plain_decode(tiny_weights, tiny_prior):
    from codec.weights import load_codec

    x = torch.rand(1, 3, 64, 64)
    assert invert(load_codec(tiny_weights).model, x, 1, load_prior(tiny_prior), strength=0.0) is x


def test_perceptual_decode_is_seeded_and_keeps_the_size(tiny_weights, tiny_prior):
    data = encode_image(photo(70, 50), weights=tiny_weights)
    kw = dict(weights=tiny_weights, perceptual=True, prior_weights=tiny_prior, steps=3, device="cpu", layers=2)
    a = np.asarray(decode_image(data, seed=1, **kw))
    b = np.asarray(decode_image(data, seed=1, **kw))
    c = np.asarray(decode_image(data, seed=2, **kw))
    plain = np.asarray(decode_image(data, weights=tiny_weights, layers=2))
    assert a.shape == plain.shape == (50, 70, 3)
    assert np.array_equal(a, b) and not np.array_equal(a, c) and not np.array_equal(a, plain)


def test_perceptual_without_a_prior_is_a_clear_error(tiny_weights, tmp_path):
    data = encode_image(photo(32, 32), weights=tiny_weights)
    with pytest.raises(SiccError, match="prior"):
        decode_image(data, weights=tiny_weights, perceptual=True, prior_weights=tmp_path / "none.safetensors")


def test_train_prior_cli_then_decode_with_it(tmp_path, tiny_weights):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(2):
        photo(48, 40, seed=i).save(data / f"{i}.png")
    out = tmp_path / "prior"
    run = CliRunner().invoke
    r = run(cli, ["train", "prior", str(data), "--out", str(out), "--steps", "5", "--batch-size", "2",
                  "--patch-size", "32", "--small", "-q"], catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    assert json.loads((out / "log.jsonl").read_text().splitlines()[-1])["step"] == 5
    src, sic, png = tmp_path / "a.png", tmp_path / "a.sic", tmp_path / "a-perceptual.png"
    photo(40, 40).save(src)
    assert run(cli, ["encode", str(src), "-o", str(sic), "--weights", str(tiny_weights)]).exit_code == 0
    r = run(cli, ["decode", str(sic), "-o", str(png), "--weights", str(tiny_weights), "--perceptual", "--steps", "2",
                  "--prior-weights", str(out / "prior.safetensors"), "--device", "cpu", "--strength", "0.5"])
    assert r.exit_code == 0, r.stderr
    assert Image.open(png).size == (40, 40)
