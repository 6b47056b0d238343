"""Shared model layers: the Gaussian distance expansion keeps torch-geometric's numbers and state."""

from __future__ import annotations

import torch
from torch_geometric.nn.models.schnet import GaussianSmearing

from matcard.models.layers import gaussian_expansion


def test_gaussian_expansion_equals_torch_geometric_to_below_float32_resolution() -> None:
    """The exponent is floored at -87 (exp's fast path); values, gradients and the state dict are
    torch-geometric's, the floored Gaussians within 2e-38 of theirs."""
    ours, reference = gaussian_expansion(8.0, 0.2), GaussianSmearing(0.0, 8.0, 41)
    assert ours.state_dict().keys() == reference.state_dict().keys()
    for key, value in reference.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value)
    torch.manual_seed(0)
    distances = torch.rand(4000) * 10.0
    expanded, exact = ours(distances), reference(distances)
    assert expanded.shape == exact.shape == (4000, 41)
    assert float((expanded - exact).abs().max()) < 2e-38
    far = exact < 1e-30
    assert bool(far.any()) and torch.equal(expanded[~far], exact[~far])  # untouched where it matters
    d64 = (torch.rand(500, dtype=torch.float64) * 9.0).requires_grad_(True)
    d64_ref = d64.detach().clone().requires_grad_(True)
    weights = torch.randn(41, dtype=torch.float64)
    (ours.double()(d64) @ weights).sum().backward()
    (reference.double()(d64_ref) @ weights).sum().backward()
    torch.testing.assert_close(d64.grad, d64_ref.grad, rtol=0, atol=1e-30)
