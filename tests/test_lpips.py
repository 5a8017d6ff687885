import torch

from codec.lpips import load_lpips

from .conftest import photo


def _tensor(img):
    import numpy as np

    # np.array copies: PIL's buffer is read-only, which torch warns about
    return torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float() / 255


def test_lpips_orders_distortions():
    lp = load_lpips()
    x = _tensor(photo(96, 96))
    torch.manual_seed(0)
    small = (x + 0.02 * torch.randn_like(x)).clamp(0, 1)
    large = (x + 0.10 * torch.randn_like(x)).clamp(0, 1)
    with torch.no_grad():
        d0, d1, d2 = lp(x, x).item(), lp(x, small).item(), lp(x, large).item()
    assert d0 == 0.0 and 0 < d1 < d2 < 1.5
    assert abs(lp(x, large).item() - lp(large, x).item()) < 1e-6
