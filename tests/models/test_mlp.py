from __future__ import annotations

import math

import torch
from torch_geometric.data import Batch, Data

from matcard.models import build_model


def _batch(x: torch.Tensor) -> Batch:
    return Batch.from_data_list([Data(x=row.view(1, -1)) for row in x])


def test_input_scaling_is_fitted_and_saved_with_the_weights():
    torch.manual_seed(0)
    features = torch.randn(50, 4) * torch.tensor([1e3, 1.0, 1e-3, 0.0]) + torch.tensor([5e3, 0, 0, 7.0])
    model = build_model("mlp", 4, 3)
    model.fit_input_scaling(features)
    assert torch.allclose(model.feature_mean, features.mean(0), rtol=1e-4, atol=1e-6)
    assert model.feature_std[3] == 1.0  # constant feature: no division by zero
    restored = build_model("mlp", 4, 3)
    restored.load_state_dict(model.state_dict())
    model.eval()
    restored.eval()
    with torch.no_grad():
        assert torch.equal(model(_batch(features[:5]))[0], restored(_batch(features[:5]))[0])


def test_non_finite_descriptors_are_replaced_by_the_training_mean():
    model = build_model("mlp", 3, 2).eval()
    model.fit_input_scaling(torch.tensor([[1.0, 2.0, 3.0], [3.0, float("nan"), 5.0]]))
    assert model.feature_mean[1] == 2.0
    with torch.no_grad():
        logits, embedding = model(_batch(torch.tensor([[2.0, float("nan"), math.inf]])))
    assert torch.isfinite(logits).all() and embedding.shape == (1, 128)
