"""Trit-plane coding (codec/planes.py) and the plane-layered codec built on it."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from codec import container
from codec.api import _padded_tensor, decode_image, encode_image, truncate
from codec.cli import cli
from codec.entropy import encode_values
from codec.errors import SiccError
from codec.latent import PLANE_CUTS
from codec.model import TINY_CONFIG, ProgressiveCodec
from codec.planes import PlaneModel, decode_planes, encode_planes, plane_schedule
from codec.train import plane_layout
from codec.weights import export_weights, gaussian_tables, load_codec, load_float_model

from .conftest import photo, photo_dir


@pytest.fixture(scope="module")
def planes():
    tables, _ = gaussian_tables()
    model = PlaneModel(tables)
    return tables, model, plane_schedule(model, PLANE_CUTS)


def gaussian_symbols(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 48, n)
    sigma = np.exp(np.linspace(np.log(0.11), np.log(256), 64))[t]
    v = np.round(rng.normal(0, sigma)).astype(np.int64)
    v[:4] = [400, -900, 20000, -32767]  # far outside their tables: escapes
    return v, t


def test_planes_round_trip_and_every_prefix_brackets_the_values(planes):
    tables, model, schedule = planes
    v, t = gaussian_symbols(40000)
    payloads = encode_planes(v, t, model, schedule)
    assert len(payloads) == len(schedule) and payloads == encode_planes(v, t, model, schedule)
    full = decode_planes(payloads, t, model, schedule)
    assert np.array_equal(full.a, v) and np.array_equal(full.b, v)
    # the same information as coding each value whole: within 1 % of entropy.py's bytes
    direct = len(encode_values(v, t, tables))
    assert abs(sum(map(len, payloads)) - direct) < 0.01 * direct
    errors = []
    for k in range(len(schedule)):
        state = decode_planes(payloads[:k], t, model, schedule)
        inside = (state.a[4:] <= v[4:]) & (v[4:] <= state.b[4:])
        assert inside.all()
        mean = state.expected()
        assert np.all((mean >= state.a) & (mean <= state.b))
        errors.append(float(np.mean((mean - v)[4:] ** 2)))
    assert all(later < earlier for earlier, later in zip(errors, errors[1:]))


def test_plane_sample_stays_in_the_intervals_and_follows_the_seed(planes):
    _, model, schedule = planes
    v, t = gaussian_symbols(20000, seed=1)
    payloads = encode_planes(v, t, model, schedule)
    state = decode_planes(payloads[:3], t, model, schedule)
    a = state.sample(np.random.default_rng(5))
    assert np.all((a >= state.a) & (a <= state.b))
    assert np.array_equal(a, state.sample(np.random.default_rng(5)))
    assert not np.array_equal(a, state.sample(np.random.default_rng(6)))
    # re-coding a draw reproduces the layers it was drawn from: the same file, another image
    assert encode_planes(a, t, model, schedule)[:3] == payloads[:3]


def test_corrupt_plane_layer_is_refused(planes):
    _, model, schedule = planes
    v, t = gaussian_symbols(1000)
    payloads = encode_planes(v, t, model, schedule)
    with pytest.raises(SiccError):
        decode_planes([payloads[0][:-1]], t, model, schedule)
    with pytest.raises(SiccError):
        decode_planes(payloads + [b""], t, model, schedule)


def test_plane_schedule_covers_every_plane_once(planes):
    _, model, schedule = planes
    steps = [s for layer in schedule for s in layer]
    for m in range(1, model.max_plane + 1):
        covered = sorted(t for s in steps if s.plane == m for t in range(s.t_min, s.t_max + 1))
        assert covered == list(range(64))
    planes_in_order = [s.plane for s in steps]
    assert planes_in_order == sorted(planes_in_order, reverse=True)


@pytest.fixture(scope="module")
def plane_weights(tmp_path_factory):
    torch.manual_seed(0)
    model = ProgressiveCodec(plane_layout(TINY_CONFIG))
    with torch.no_grad():
        model.g_a[-1].weight.mul_(40.0)
        # an untrained head predicts scales near 0 (every value an escape): spread them over the tables
        head = model.slice_nets[0][-1]
        head.bias[TINY_CONFIG.M:] = torch.linspace(0.5, 12.0, TINY_CONFIG.M)
    path = tmp_path_factory.mktemp("planes") / "planes.safetensors"
    export_weights(model, path)
    return path


def test_plane_layered_codec_round_trip(plane_weights):
    codec = load_codec(plane_weights)
    assert codec.layers_total == 1 + len(codec.schedule)
    x = _padded_tensor(np.asarray(photo(100, 70)))
    layers, y_enc = codec.encode_latent(x)
    assert len(layers) == codec.layers_total
    assert torch.equal(codec.decode_latent(layers, *x.shape[2:]), y_enc)
    assert len(np.unique(y_enc.numpy())) > 20
    # every prefix decodes; more layers, closer to the full latent
    gaps = [torch.mean((codec.decode_latent(layers[:k], *x.shape[2:]) - y_enc) ** 2).item()
            for k in range(1, len(layers) + 1)]
    assert gaps[-1] == 0 and gaps[0] > 0
    assert all(b <= a for a, b in zip(gaps, gaps[1:]))
    a = codec.decode_latent(layers[:3], *x.shape[2:], fill="sample", seed=1)
    assert torch.equal(a, codec.decode_latent(layers[:3], *x.shape[2:], fill="sample", seed=1))
    assert not torch.equal(a, codec.decode_latent(layers[:3], *x.shape[2:], fill="mean"))


def test_plane_files_are_version_2_and_truncate(plane_weights):
    buf = io.BytesIO()
    photo(96, 80).save(buf, "PNG")
    data = encode_image(buf.getvalue(), weights=plane_weights)
    head = container.parse(data).header
    assert data[4] == 2 and head.version == 2 and head.layers_total == load_codec(plane_weights).layers_total
    small = truncate(data, layers=3)
    assert container.parse(small).header.version == 2 and len(small) < len(data)
    full = np.asarray(decode_image(data, weights=plane_weights), np.float64)
    part = np.asarray(decode_image(small, weights=plane_weights), np.float64)
    assert full.shape == part.shape == (80, 96, 3)
    # a file claiming version 1 cannot have come from plane layering
    h = container.parse(small).header
    old = container.pack(container.Header(h.weights_id, h.width, h.height, h.mode, h.bit_depth, h.layers_total,
                                          (), h.extras, version=1), container.parse(small).payloads)
    with pytest.raises(SiccError, match="version 1"):
        decode_image(old, weights=plane_weights)


def test_plane_reencode_holds_the_decoded_layers(plane_weights):
    codec = load_codec(plane_weights)
    x = _padded_tensor(np.asarray(photo(64, 64)))
    layers = codec.encode(x)
    reencoder = codec.reencoder()
    for k in (2, len(layers)):
        decoded = codec.decode(layers[:k], 64, 64)
        with torch.no_grad():
            again = reencoder.reencode(x, k - 1)
        # float entropy parameters against the exact ones: an occasional symbol may differ
        assert torch.mean((again.clamp(0, 1) - decoded) ** 2) < 1e-3


def test_train_planes_head_on_frozen_transforms(tmp_path, tiny_weights):
    data = photo_dir(tmp_path / "data", 3, 96, 96)
    out = tmp_path / "run"
    r = CliRunner().invoke(cli, ["train", "codec", str(data), "--out", str(out), "--resume", str(tiny_weights),
                                  "--layering", "planes", "--freeze-transforms", "--full-weight", "1",
                                  "--steps", "3", "--batch-size", "2", "--patch-size", "64", "-q"])
    assert r.exit_code == 0, r.output
    base, trained = load_float_model(tiny_weights), load_float_model(out / "weights.safetensors")
    assert trained.cfg.layering == "planes" and trained.cfg.slices == (TINY_CONFIG.M,)
    for name in ("g_a.0.weight", "g_s.6.weight"):
        assert torch.equal(trained.state_dict()[name], base.state_dict()[name])
    assert not torch.equal(trained.state_dict()["h_s.0.weight"], base.state_dict()["h_s.0.weight"])
    buf = io.BytesIO()
    photo(64, 64).save(buf, "PNG")
    data = encode_image(buf.getvalue(), weights=out / "weights.safetensors")
    assert decode_image(data, weights=out / "weights.safetensors").size == (64, 64)


def test_train_grows_synthesis_blocks_on_a_weights_file(tmp_path, tiny_weights):
    data = photo_dir(tmp_path / "data", 2, 96, 96)
    out = tmp_path / "run"
    r = CliRunner().invoke(cli, ["train", "codec", str(data), "--out", str(out), "--resume", str(tiny_weights),
                                  "--synthesis-blocks", "1", "--steps", "2", "--batch-size", "2",
                                  "--patch-size", "64", "-q"])
    assert r.exit_code == 0, r.output
    trained = load_float_model(out / "weights.safetensors")
    # the rest of the layout is the file's
    assert trained.cfg == dataclasses.replace(load_float_model(tiny_weights).cfg, synthesis_blocks=1)
    assert trained.g_s.r1_0.body[-1].weight.abs().sum() > 0
    buf = io.BytesIO()
    photo(64, 64).save(buf, "PNG")
    data = encode_image(buf.getvalue(), weights=out / "weights.safetensors")
    assert decode_image(data, weights=out / "weights.safetensors").size == (64, 64)
    # its checkpoint resumes with the count it has, and refuses another
    again = ["train", "codec", str(tmp_path / "data"), "--out", str(out), "--resume", str(out / "checkpoint.pt"),
             "--steps", "3", "--batch-size", "2", "--patch-size", "64", "-q", "--synthesis-blocks"]
    r = CliRunner().invoke(cli, again + ["1"])
    assert r.exit_code == 0, r.output
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 3
    r = CliRunner().invoke(cli, again + ["2"])
    assert r.exit_code != 0 and "resumes its own model" in r.output


def test_plane_level_terms_are_files_of_that_many_plane_layers(plane_weights):
    # training's plane levels (--plane-levels): level k is z and k plane layers, decoded as the plain
    # decoder does, with those layers' bits per pixel of the whole batch. With rounding (eval mode)
    # the bits grow with k, and all the layers are the full file: its bits and its image.
    from codec.train import plane_fills, plane_level_lambdas, progressive_loss

    model = load_float_model(plane_weights).eval()
    fills = plane_fills()
    L = fills.levels
    x = torch.stack([_padded_tensor(np.asarray(photo(64, 64, seed=s)))[0] for s in (1, 2)])
    lambdas = plane_level_lambdas(L)
    assert len(lambdas) == L + 1 and lambdas[0] == pytest.approx(0.0018) and lambdas[-1] == pytest.approx(0.18)
    assert all(a < b for a, b in zip(lambdas[1:], lambdas[2:]))
    torch.manual_seed(0)
    with torch.no_grad():
        terms = [progressive_loss(model, x, k, lambdas, full_weight=0.5, fills=fills) for k in range(L + 1)]
    rates = [t["bpp_level"].item() for t in terms]
    assert rates[0] < rates[L // 2] < rates[L] and all(b >= a - 1e-6 for a, b in zip(rates, rates[1:]))
    full = terms[L]
    assert full["bpp_level"].item() == pytest.approx(full["bpp_full"].item(), rel=1e-3)
    assert full["mse_level"].item() == pytest.approx(full["mse_full"].item(), rel=1e-4)
    # (an untrained tiny model: a coarser decode is another image, not necessarily a worse one)
    assert terms[1]["mse_level"].item() != pytest.approx(full["mse_full"].item(), rel=1e-5)


def test_plane_lambda_ramp_sets_the_inner_levels_only():
    # --plane-lambdas LOW,HIGH moves the inner levels' ramp; z alone and the full file keep q1 and q8
    from codec.train import PLANE_LAMBDA_RAMP, plane_level_lambdas

    L = 12
    default, steeper = plane_level_lambdas(L), plane_level_lambdas(L, (0.0003, 0.17))
    assert plane_level_lambdas(L, PLANE_LAMBDA_RAMP) == default
    assert (steeper[0], steeper[-1]) == (default[0], default[-1])
    ratios = [b / a for a, b in zip(steeper[1:L], steeper[2:L])]
    assert ratios == pytest.approx([(0.17 / 0.0003) ** (1 / L)] * (L - 2))
    assert steeper[1] < default[1] and steeper[L - 1] > default[L - 1]


@pytest.mark.parametrize("value", ["0.08,0.0004", "0.1", "a,b", "0,0.1", "0.1,inf"])
def test_plane_lambda_ramp_rejects_bad_values(tmp_path, value):
    data = photo_dir(tmp_path / "data", 1, 64, 64)
    r = CliRunner().invoke(cli, ["train", "codec", str(data), "--out", str(tmp_path / "run"),
                                  "--plane-lambdas", value, "--steps", "1", "-q"])
    assert r.exit_code == 2 and "--plane-lambdas" in r.output and not (tmp_path / "run").exists()


def test_plane_lambda_ramp_needs_plane_levels(tmp_path, tiny_weights):
    data = photo_dir(tmp_path / "data", 1, 64, 64)
    r = CliRunner().invoke(cli, ["train", "codec", str(data), "--out", str(tmp_path / "run"), "--resume",
                                  str(tiny_weights), "--plane-lambdas", "0.0003,0.17", "--steps", "1", "-q"])
    assert r.exit_code == 1 and "--plane-lambdas needs --plane-levels" in r.output
    assert not (tmp_path / "run").exists()


def test_plane_levels_need_plane_weights(tmp_path, tiny_weights):
    data = photo_dir(tmp_path / "data", 2, 64, 64)
    r = CliRunner().invoke(cli, ["train", "codec", str(data), "--out", str(tmp_path / "run"), "--resume",
                                  str(tiny_weights), "--plane-levels", "--steps", "1", "-q"])
    assert r.exit_code != 0 and "--plane-levels needs plane-layered weights" in r.output


def test_chunked_coding_writes_the_same_stream(planes, monkeypatch):
    # large images are coded in chunks (bounded memory): the bytes and the draws must not change
    import codec.planes

    _, model, schedule = planes
    v, t = gaussian_symbols(30000, seed=2)
    whole = encode_planes(v, t, model, schedule)
    drawn = decode_planes(whole[:6], t, model, schedule).sample(np.random.default_rng(1))
    monkeypatch.setattr(codec.planes, "CHUNK", 777)
    assert encode_planes(v, t, model, schedule) == whole
    state = decode_planes(whole, t, model, schedule)
    assert np.array_equal(state.a, v)
    again = decode_planes(whole[:6], t, model, schedule)
    assert np.array_equal(again.sample(np.random.default_rng(1)), drawn)


def test_tabulated_choices_are_the_formats_interval_weights(planes):
    # the coder reads each plane's choices from a table (PlaneChoices); docs/format.md defines them
    # as the table's counts over each third plus the escape count at the first plane, normalised in
    # float64 and rounded to float32. Every reachable interval of every table, every plane:
    tables, model, _ = planes
    rows = 0
    for m in range(1, model.max_plane + 1):
        table = model.choices(m)
        for t in np.flatnonzero(model.planes >= m):
            lo, n = int(tables.offsets[t]), int(tables.lengths[t])
            for j in range(3 ** int(model.planes[t] - m)):
                a = -int(model.half[t]) + j * 3**m
                thirds = [a + i * 3 ** (m - 1) + np.arange(3 ** (m - 1)) for i in range(3)]
                weights = [int(sum(tables.counts[t, v - lo] for v in third if lo <= v < lo + n)) for third in thirds]
                weights.append(int(tables.counts[t, n]) if model.planes[t] == m else 0)
                if sum(weights) == 0:
                    continue  # no value of the table lies here: no element can be in this interval
                row = table.base[t] + j
                expected = (np.array(weights, np.float64) / sum(weights)).astype(np.float32)
                assert np.array_equal(table.probs[row], expected), (m, t, j)
                possible = np.flatnonzero(weights)
                assert table.only[row] == (possible[0] if possible.size == 1 else -1)
                rows += 1
    assert rows > 1000


def test_plane_fills_are_the_decoders_values_and_estimate_its_bits(planes):
    # refinement's tensor version of the plane decoder (plane_fills.py) against the coder itself:
    # the same value in every element after every prefix, and about the bits those prefixes take
    from codec.plane_fills import PlaneFills
    from codec.weights import scale_table

    tables, model, schedule = planes
    v, t = gaussian_symbols(20000, seed=4)
    fills = PlaneFills(model, schedule, gaussian_tables()[1])
    assert fills.levels == len(schedule)
    payloads = encode_planes(v, t, model, schedule)
    vt, tt = torch.from_numpy(v), torch.from_numpy(t)
    sigma = torch.from_numpy(scale_table()[t])
    coded = 0
    for k in range(len(schedule) + 1):
        expected = decode_planes(payloads[:k], t, model, schedule).expected()
        assert np.array_equal(fills.residual(vt, tt, k).numpy(), expected)
        estimate = fills.bits(vt[4:].double(), sigma[4:], tt[4:], k, noisy=False).item()
        coded += 8 * len(payloads[k - 1]) if k else 0
        assert estimate == pytest.approx(coded, rel=0.02, abs=200)  # the 4 escapes: about 80 bits
    # no plane coded, no bits, with noise or without
    assert fills.bits(vt.double(), sigma, tt, 0, noisy=True).item() == 0.0
    # the proxy (uniform noise of the interval width, as in training) charges somewhat more, with a gradient
    residual = (vt[4:].double() + 0.3).requires_grad_(True)
    noisy = fills.bits(residual, sigma[4:], tt[4:], 6, noisy=True)
    noisy.backward()
    exact = fills.bits(vt[4:].double(), sigma[4:], tt[4:], 6, noisy=False).item()
    assert noisy.item() == pytest.approx(exact, rel=0.1) and residual.grad.abs().sum() > 0
