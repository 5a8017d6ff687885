import numpy as np
import torch

from codec.api import _padded_tensor
from codec.model import TINY_CONFIG, ProgressiveCodec, bits, level_gammas, level_lambdas
from codec.train import (_COLLECTIVE_BUFFERS, Distributed, codec_update, finite_step, model_to_train, progressive_loss,
                         split_parameters)
from codec.weights import load_codec

from .conftest import photo


def test_forward_shapes_and_levels():
    model = ProgressiveCodec(TINY_CONFIG).train()
    x = torch.rand(2, 3, 64, 128)
    out = model(x, level=1)
    assert out["x_full"].shape == x.shape and out["x_level"].shape == x.shape
    assert out["likelihoods"]["z"].shape == (2, TINY_CONFIG.Z, 1, 2)
    assert [l.shape[1] for l in out["likelihoods"]["y"]] == list(TINY_CONFIG.slices)
    assert all(((l > 0) & (l <= 1)).all() for l in out["likelihoods"]["y"])


def test_estimated_rate_grows_with_level_and_loss_trains():
    torch.manual_seed(0)
    model = ProgressiveCodec(TINY_CONFIG).train()
    lams = level_lambdas(len(TINY_CONFIG.slices))
    x = torch.rand(2, 3, 64, 64)
    rates = [progressive_loss(model, x, k, lams)["bpp_level"].item() for k in range(len(TINY_CONFIG.slices))]
    assert rates == sorted(rates) and rates[0] > 0
    main, aux = split_parameters(model)
    opt, aux_opt = torch.optim.Adam(main, 1e-3), torch.optim.Adam(aux, 1e-3)
    quantiles = [q.detach().clone() for q in aux]
    records = [codec_update(model, x, step % 3, opt, aux_opt, {"lambdas": lams}) for step in range(30)]
    assert records[27]["loss"] < records[0]["loss"]  # both at level 0
    assert not any(r["skipped"] for r in records)
    assert any(not torch.equal(q, q0) for q, q0 in zip(aux, quantiles))  # the aux step ran


def test_lpips_term_adds_sic_gammas_times_lpips_and_pulls_toward_lower_lpips():
    from codec.lpips import load_lpips

    gammas = level_gammas(8, 2.0)
    assert gammas[0] == 2 * 2**5 and gammas[8] == 2 * 2**3 and gammas == sorted(gammas, reverse=True)
    S = len(TINY_CONFIG.slices)
    model, lpips = ProgressiveCodec(TINY_CONFIG).train(), load_lpips()
    lams, gammas = level_lambdas(S), level_gammas(S, 1.0)
    x = torch.rand(2, 3, 64, 64)
    torch.manual_seed(1)
    plain = progressive_loss(model, x, 1, lams)
    torch.manual_seed(1)
    tuned = progressive_loss(model, x, 1, lams, lpips, gammas)
    assert tuned["lpips_full"] > 0 and tuned["lpips_level"] > 0
    expected = plain["loss"] + 0.5 * (gammas[S] * tuned["lpips_full"] + gammas[1] * tuned["lpips_level"])
    assert torch.allclose(tuned["loss"], expected)
    # the gradient reaches the synthesis through LPIPS (whose own weights stay frozen)
    tuned["loss"].backward()
    assert model.g_s[0].weight.grad.abs().sum() > 0 and all(p.grad is None for p in lpips.parameters())


def test_full_weight_splits_the_loss_between_the_full_file_and_the_level():
    S = len(TINY_CONFIG.slices)
    model, lams = ProgressiveCodec(TINY_CONFIG).train(), level_lambdas(S)
    x = torch.rand(2, 3, 64, 64)
    for w in (0.0, 0.25, 1.0):
        torch.manual_seed(2)  # the same quantisation noise for every weighting
        t = progressive_loss(model, x, 1, lams, full_weight=w)
        full = t["bpp_full"] + lams[S] * 255**2 * t["mse_full"]
        level = t["bpp_level"] + lams[1] * 255**2 * t["mse_level"]
        assert torch.allclose(t["loss"], w * full + (1 - w) * level)
    assert not torch.allclose(full, level)


def test_z_rate_weight_charges_the_hyperlatent_bits_again_and_logs_the_true_rate():
    S = len(TINY_CONFIG.slices)
    model, lams = ProgressiveCodec(TINY_CONFIG).train(), level_lambdas(S)
    x = torch.rand(2, 3, 64, 64)
    torch.manual_seed(3)
    z_bpp = bits(model(x, 0)["likelihoods"]["z"]) / (2 * 64 * 64)
    runs = {}
    for w in (1.0, 4.0):
        torch.manual_seed(3)  # the same quantisation noise for every weighting
        runs[w] = progressive_loss(model, x, 0, lams, z_rate_weight=w)
    assert z_bpp > 0
    # the loss is ~1e3 (an untrained model): float32 resolves its differences to ~1e-4
    assert torch.allclose(runs[4.0]["loss"] - runs[1.0]["loss"], 3 * z_bpp, atol=5e-4)
    assert torch.equal(runs[4.0]["bpp_full"], runs[1.0]["bpp_full"])


def test_lpips_term_scores_the_clamped_image_the_decoder_delivers():
    from codec.evaluate import lpips as lpips_of_arrays
    from codec.lpips import load_lpips

    S = len(TINY_CONFIG.slices)
    torch.manual_seed(0)
    model = ProgressiveCodec(TINY_CONFIG).train()
    # The synthesis' last bias pushes every pixel far out of range, as an LPIPS-gamed decoder did.
    with torch.no_grad():
        model.g_s[-1].bias.fill_(3.0)
    x = torch.rand(1, 3, 64, 64)
    terms = progressive_loss(model, x, 1, level_lambdas(S), load_lpips(), level_gammas(S, 1.0))
    delivered = (terms["x_full"].detach().clamp(0, 1)[0].permute(1, 2, 0) * 255).round().numpy()
    reference = (x[0].permute(1, 2, 0) * 255).round().numpy()
    assert abs(terms["lpips_full"].item() - lpips_of_arrays(reference, delivered)) < 0.02


def test_collectives_send_only_buffers_held_for_the_whole_process(monkeypatch):
    # gloo's worker may free a finished collective's tensor after Python dropped it, which aborts an
    # exiting interpreter (train.py, _COLLECTIVE_BUFFERS); two ranks simulated: all_reduce sums with a
    # peer whose gradients are 3x ours, broadcast brings rank 0's value
    sent = []

    def all_reduce(t):
        sent.append(t)
        t.mul_(4)

    def broadcast(t, src):
        sent.append(t)
        t.fill_(7.5)

    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    monkeypatch.setattr(torch.distributed, "broadcast", broadcast)
    dist = Distributed.alone()
    dist.world = 2
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    params = list(model.parameters())
    for step in range(2):
        model.zero_grad(set_to_none=True)
        model(torch.randn(5, 3)).sum().backward()
        ours = [p.grad.clone() for p in params]
        dist.average_gradients(params)
        assert all(torch.allclose(p.grad, 2 * g) for p, g in zip(params, ours))
    assert dist.rank0_value(1.0) == 7.5 and dist.rank0_value(2.0) == 7.5
    held = [id(t) for t in _COLLECTIVE_BUFFERS.values()]
    assert len(sent) == 4 and all(id(t) in held for t in sent)
    assert sent[0] is sent[1] and sent[2] is sent[3]  # reused, not one per call


def test_a_nonfinite_gradient_skips_the_update_and_keeps_the_optimiser_state():
    torch.manual_seed(0)
    model = ProgressiveCodec(TINY_CONFIG).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-3)
    x = torch.rand(1, 3, 64, 64)
    progressive_loss(model, x, 1, level_lambdas(len(TINY_CONFIG.slices)))["loss"].backward()
    assert finite_step(opt, params, clip=1.0)
    before = [p.detach().clone() for p in params]
    adam_steps = opt.state[params[0]]["step"].item()
    (progressive_loss(model, x, 1, level_lambdas(len(TINY_CONFIG.slices)))["loss"] * float("nan")).backward()
    assert not finite_step(opt, params, clip=1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, params))
    assert opt.state[params[0]]["step"].item() == adam_steps and all(p.grad is None for p in params)


def test_training_resumed_from_a_weights_file_keeps_the_likelihood_floor(tmp_path):
    from codec.weights import export_weights, load_float_model

    torch.manual_seed(0)
    path = tmp_path / "w.safetensors"
    export_weights(ProgressiveCodec(TINY_CONFIG), path)
    # fp16 holds the 1e-9 floor as 0: a latent far out in the tail then costs infinitely many bits
    assert load_float_model(path).entropy_bottleneck.likelihood_lower_bound.bound.item() == 0
    torch.manual_seed(1)
    load_float_model(path)
    rng_after_load = torch.get_rng_state()
    torch.manual_seed(1)
    model, state = model_to_train(path)
    # restoring the constants leaves the seeded stream (crops, noise) where loading alone leaves it
    assert state is None and torch.equal(torch.get_rng_state(), rng_after_load)
    assert model.entropy_bottleneck.likelihood_lower_bound.bound.item() == torch.tensor(1e-9).item()
    z = torch.full((1, TINY_CONFIG.Z, 1, 1), 1e4)
    _, lik = model.entropy_bottleneck(z)
    assert torch.isfinite(bits(lik))
    # the parameters are the file's
    assert torch.equal(model.g_s[0].weight, load_float_model(path).g_s[0].weight)


def test_a_new_slice_layout_starts_from_the_files_transforms(tmp_path):
    import dataclasses

    import pytest

    from codec.errors import SiccError
    from codec.weights import export_weights, load_float_model

    torch.manual_seed(0)
    path = tmp_path / "w.safetensors"
    export_weights(ProgressiveCodec(TINY_CONFIG), path)
    donor = load_float_model(path)
    wide = dataclasses.replace(TINY_CONFIG, slices=(16, 16))
    model, _ = model_to_train(path, wide)
    assert model.cfg == wide and len(model.slice_nets) == 2
    for name in ("g_a.0.weight", "g_s.6.weight", "h_s.0.weight", "entropy_bottleneck.quantiles"):
        assert torch.equal(model.state_dict()[name], donor.state_dict()[name])
    # slice network 1 now sees 16 earlier channels, not 8: it cannot come from the file
    assert model.slice_nets[1][0].weight.shape[1] == TINY_CONFIG.hyper + 16
    assert model.entropy_bottleneck.likelihood_lower_bound.bound.item() > 0
    # a checkpoint carries optimiser state for its own layout: it resumes only that
    torch.save({"config": TINY_CONFIG.to_json(), "model": donor.state_dict()}, tmp_path / "c.pt")
    with pytest.raises(SiccError):
        model_to_train(tmp_path / "c.pt", wide)


def test_synthesis_blocks_start_as_the_identity_on_a_files_decoder_and_then_train(tmp_path):
    import dataclasses
    import json

    import pytest

    from codec.latent import SYNTHESIS_MARGIN
    from codec.model import ModelConfig
    from codec.tiling import apply_tiled
    from codec.weights import export_weights, load_float_model

    torch.manual_seed(0)
    path = tmp_path / "w.safetensors"
    export_weights(ProgressiveCodec(TINY_CONFIG), path)
    grown_cfg = dataclasses.replace(TINY_CONFIG, synthesis_blocks=2)
    model, _ = model_to_train(path, grown_cfg)
    donor = load_float_model(path)
    assert model.cfg == grown_cfg and sum(name.startswith("g_s.r") for name in model.state_dict()) == 2 * 2 * 4
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.eval()(x)["x_full"], donor(x)["x_full"])
    # the blocks' zero last convs still pass gradients to themselves: one step makes them count
    main, aux = split_parameters(model.train())
    codec_update(model, x, 1, torch.optim.Adam(main, 1e-3), torch.optim.Adam(aux, 1e-3),
                 {"lambdas": level_lambdas(len(TINY_CONFIG.slices))})
    last = model.g_s.r3_1.body[-1].weight
    assert last.abs().sum() > 0
    with torch.no_grad():
        assert not torch.equal(model.eval()(x)["x_full"], donor(x)["x_full"])
    export_weights(model, tmp_path / "grown.safetensors")
    reloaded = load_float_model(tmp_path / "grown.safetensors")
    assert reloaded.cfg == grown_cfg and torch.equal(reloaded.g_s.r3_1.body[-1].weight, last.detach().half().float())
    # tiled synthesis (large images) still covers the blocks' wider receptive field
    with torch.no_grad():
        torch.nn.init.normal_(reloaded.g_s.r1_0.body[-1].weight, std=0.1)
        y = torch.randn(1, TINY_CONFIG.M, 20, 14)
        whole = reloaded.g_s(y)
        tiled = apply_tiled(reloaded.g_s, y, 16, 1, 8, SYNTHESIS_MARGIN)
    assert (tiled - whole).abs().max() < 1e-4
    # a weights file's configuration is checked before any network is built from it
    for bad in (-1, "2", 1.5):
        with pytest.raises(ValueError):
            ModelConfig.from_json(dataclasses.replace(TINY_CONFIG, synthesis_blocks=1).to_json().replace(
                '"synthesis_blocks": 1', f'"synthesis_blocks": {json.dumps(bad)}'))


def test_latent_round_trip_is_exact(tiny_weights):
    codec = load_codec(tiny_weights)
    x = _padded_tensor(np.asarray(photo(100, 70)))
    layers, y_enc = codec.encode_latent(x)
    assert len(layers) == codec.layers_total
    y_dec = codec.decode_latent(layers, *x.shape[2:])
    assert torch.equal(y_enc, y_dec)
    assert len(np.unique(y_enc.numpy())) > 20  # the code carries information
    # fewer layers: transmitted slices still exact, the rest filled
    partial = codec.decode_latent(layers[:2], *x.shape[2:])
    n = TINY_CONFIG.slices[0]
    assert torch.equal(partial[:, :n], y_enc[:, :n]) and not torch.equal(partial, y_enc)


def test_exact_decode_matches_the_float_network(tiny_weights):
    codec = load_codec(tiny_weights)
    x = _padded_tensor(np.asarray(photo(64, 64)))
    layers = codec.encode(x)
    exact = codec.decode(layers, 64, 64)
    with torch.no_grad():
        ref = codec.model(x)["x_full"].clamp(0, 1)
    assert torch.mean((exact - ref) ** 2) < 1e-3


def test_sample_fill_is_seeded(tiny_weights):
    codec = load_codec(tiny_weights)
    x = _padded_tensor(np.asarray(photo(64, 64)))
    layers = codec.encode(x)[:2]
    a = codec.decode_latent(layers, 64, 64, fill="sample", seed=1)
    b = codec.decode_latent(layers, 64, 64, fill="sample", seed=1)
    c = codec.decode_latent(layers, 64, 64, fill="sample", seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    n = TINY_CONFIG.slices[0]
    assert torch.equal(a[:, :n], c[:, :n])  # transmitted slice untouched


def test_tiled_transforms_match_whole_image(monkeypatch, tiny_weights):
    import codec.latent as latent

    codec = load_codec(tiny_weights)
    x = _padded_tensor(np.asarray(photo(300, 200)))
    whole_layers, whole_y = codec.encode_latent(x)
    whole = codec.decode(whole_layers, *x.shape[2:])
    monkeypatch.setattr(latent, "TILE_PX", 128)
    _, tiled_y = codec.encode_latent(x)
    # float transforms on other tile shapes may differ by ulps: a rare symbol may round differently
    assert (tiled_y == whole_y).double().mean() > 0.999
    tiled = codec.decode(whole_layers, *x.shape[2:])
    assert (tiled - whole).abs().max() < 1e-4


def test_z_tables_cover_the_learned_density():
    from codec.entropy import TOTAL
    from codec.weights import z_tables

    model = ProgressiveCodec(TINY_CONFIG)
    tabs = z_tables(model)
    assert len(tabs.lengths) == TINY_CONFIG.Z
    escape = tabs.counts[np.arange(TINY_CONFIG.Z), tabs.lengths]
    assert (escape <= 8).all() and (tabs.counts.sum(axis=1) == TOTAL).all()  # tail mass ~1e-6 per table
    assert (tabs.offsets < 0).all() and (tabs.offsets + tabs.lengths > 0).all()  # the median is inside


def test_the_exported_weights_are_the_runs_moving_average_and_a_resume_continues_it(tmp_path):
    from codec.train import WeightAverage, train_codec
    from codec.weights import load_float_model

    from .conftest import photo_dir

    model = ProgressiveCodec(TINY_CONFIG)
    average = WeightAverage(model, 0.75)
    start = model.g_s[0].weight.detach().clone()
    with torch.no_grad():
        model.g_s[0].weight.add_(1.0)
    average.update(model)
    assert torch.allclose(average.model.g_s[0].weight, start + 0.25)
    average.update(model)
    assert torch.allclose(average.model.g_s[0].weight, start + 1 - 0.75**2)

    data, out, name = photo_dir(tmp_path / "data", 2, 96, 96), tmp_path / "run", "g_s.0.weight"
    run = dict(batch_size=1, patch_size=64, cfg=TINY_CONFIG, progress=False, lr=1e-2, ema=0.5)
    train_codec(data, out, steps=3, **run)
    first = torch.load(out / "checkpoint.pt", weights_only=False)
    exported = load_float_model(out / "weights.safetensors").state_dict()[name]
    assert torch.equal(exported, first["ema"][name].half().float())
    assert not torch.equal(exported, first["model"][name].half().float())
    train_codec(data, out, steps=4, resume=out / "checkpoint.pt", **run)
    second = torch.load(out / "checkpoint.pt", weights_only=False)
    assert second["step"] == 4
    assert torch.allclose(second["ema"][name], 0.5 * first["ema"][name] + 0.5 * second["model"][name])
