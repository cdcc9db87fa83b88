"""The closed-form OPT-3 gradient equals autograd's on the objective it optimises."""

import pytest
import torch

from client_sdk.privacy.opt3 import opt3_objective, opt3_value_and_grad


@pytest.mark.parametrize("use_cos, use_pearson", [(True, True), (True, False), (False, True)])
def test_closed_form_gradient_matches_autograd(use_cos, use_pearson):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 24, generator=g, dtype=torch.float64).requires_grad_(True)
    a, b, c = (torch.randn(64, 24, generator=g, dtype=torch.float64) for _ in range(3))
    args = (a if use_cos else None, b if use_pearson else None, c, 0.5, -1.0)
    value = opt3_objective(x, *args)
    (expected,) = torch.autograd.grad(value.sum(), x)
    got_value, got_grad = opt3_value_and_grad(x.detach(), *args)
    assert torch.allclose(got_value, value.detach(), atol=1e-12)
    assert torch.allclose(got_grad, expected, atol=1e-10)
