"""The entropy-parameter path is exact: no summation order, thread count or backend changes it."""

import torch
import torch.nn.functional as F
from torch import nn

from codec.exact import ONE, IntConv, IntSequential, to_fixed
from codec.model import ExactEntropyModel

from .conftest import make_tiny_model


def _reordered_conv(layer: IntConv, a: torch.Tensor) -> torch.Tensor:
    """The same integer conv by another algorithm: im2col + matmul with the input channels reversed."""
    w = layer.weight.flip(1)
    cols = F.unfold(a.flip(1), w.shape[-2:], padding=layer.padding)  # [B, C*k*k, L]
    acc = (w.reshape(w.shape[0], -1) @ cols).reshape(a.shape[0], w.shape[0], a.shape[2], a.shape[3])
    return torch.floor((acc + layer.bias) * layer.inv_scale + 0.5)


def test_int_conv_is_independent_of_summation_order():
    torch.manual_seed(0)
    conv = nn.Conv2d(24, 8, 3, padding=1)
    layer = IntConv(conv, relu=False)
    a = to_fixed(torch.randn(2, 24, 9, 7) * 30)
    assert torch.equal(layer(a).clamp(-(2.0**24), 2.0**24), _reordered_conv(layer, a))


def test_int_conv_tracks_the_float_conv():
    torch.manual_seed(1)
    conv = nn.Conv2d(16, 6, 3, padding=1)
    x = torch.randn(1, 16, 8, 8) * 4
    exact = IntSequential(nn.Sequential(conv, nn.ReLU()))(to_fixed(x)) / ONE
    ref = torch.relu(conv(x)).double()
    assert (exact - ref).abs().max() < 0.05


def _params(exact: ExactEntropyModel, z_sym):
    hyper = exact.hyper(z_sym)
    prev, out = [], []
    for k, size in enumerate(exact.cfg.slices):
        mean, scale = exact.slice_params(k, hyper, prev)
        prev.append(mean)
        out += [mean, scale]
    return out


def test_exact_model_is_identical_across_thread_counts():
    model = make_tiny_model()
    exact = ExactEntropyModel(model)
    z_sym = torch.randint(-6, 7, (1, model.cfg.Z, 3, 4))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _params(exact, z_sym)
        torch.set_num_threads(2)
        two = _params(exact, z_sym)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, two))
    assert all(torch.equal(t, t.round()) for t in one)  # integers throughout


def test_row_bands_give_the_same_integers(monkeypatch):
    import codec.exact as exact

    torch.manual_seed(2)
    layer = IntConv(nn.Conv2d(5, 4, 3, padding=1), relu=True)
    a = to_fixed(torch.randn(1, 5, 23, 9) * 10)
    whole = layer(a)
    monkeypatch.setattr(exact, "_CHUNK_ELEMENTS", 5 * 9 * 9 * 4)  # 4 rows per band
    assert torch.equal(layer(a), whole)


def test_files_decode_to_the_encoders_latent_whatever_the_float_path(tiny_weights, monkeypatch):
    """Another machine is simulated three ways: the encoder's float analysis transform perturbed by
    noise (its symbols may change, that is allowed), the decoder with another thread count and another
    convolution algorithm for the integer networks (im2col, channels reversed), and float64 float
    transforms. The decoder must rebuild the encoder's latent bit for bit every time."""
    import numpy as np

    import codec.exact as exact_mod
    from codec.weights import load_codec

    from .conftest import photo

    codec = load_codec(tiny_weights)
    x = torch.tensor(np.asarray(photo(128, 64)), dtype=torch.float32).permute(2, 0, 1)[None] / 255
    clean_layers, clean_latent = codec.encode_latent(x)
    noise = torch.Generator().manual_seed(0)
    hook = codec.model.g_a.register_forward_hook(
        lambda module, inputs, out: out + 1e-3 * torch.randn(out.shape, generator=noise))
    try:
        layers, latent = codec.encode_latent(x)
    finally:
        hook.remove()
    assert layers != clean_layers  # the perturbation did reach the symbols
    threads = torch.get_num_threads()
    monkeypatch.setattr(exact_mod.IntConv, "_conv", lambda self, a: _reordered_accumulate(self, a))
    try:
        torch.set_num_threads(2 if threads == 1 else 1)
        assert torch.equal(codec.decode_latent(layers, 64, 128), latent)
        assert torch.equal(codec.decode_latent(clean_layers, 64, 128), clean_latent)
    finally:
        torch.set_num_threads(threads)
    codec.model.double()  # load_codec's instance is shared: restored below (fp32 -> fp64 -> fp32 is exact)
    try:
        layers64, latent64 = codec.encode_latent(x.double())
    finally:
        codec.model.float()
    assert torch.equal(codec.decode_latent(layers64, 64, 128), latent64)


def _reordered_accumulate(layer: IntConv, a: torch.Tensor) -> torch.Tensor:
    w = layer.weight.flip(1)
    cols = F.unfold(a.flip(1), w.shape[-2:], padding=layer.padding)
    return (w.reshape(w.shape[0], -1) @ cols).reshape(a.shape[0], w.shape[0], a.shape[2], a.shape[3])
