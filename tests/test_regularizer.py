import torch

from codec.regularizer import ConditionalSourceModel


def test_fitting_q_lowers_the_conditional_entropy_estimate():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (2, 3, 24, 24)).float() / 255
    x_hat = (x + 0.03 * torch.randn_like(x)).clamp(0, 1)
    q = ConditionalSourceModel(hidden=8)
    opt = torch.optim.Adam(q.parameters(), 1e-2)
    first = q.bits_per_pixel(x, x_hat).item()
    for _ in range(60):
        loss = q.bits_per_pixel(x, x_hat)
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = q.bits_per_pixel(x, x_hat).item()
    assert 0 < last < first
    # a better reconstruction leaves less uncertainty about x
    assert q.bits_per_pixel(x, x).item() < last


def test_gradient_reaches_the_reconstruction():
    q = ConditionalSourceModel(hidden=8)
    x = torch.rand(1, 3, 8, 8)
    x_hat = torch.rand(1, 3, 8, 8, requires_grad=True)
    q.bits_per_pixel(x, x_hat).backward()
    assert x_hat.grad is not None and x_hat.grad.abs().sum() > 0
