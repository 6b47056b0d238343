"""Magnitude and spread losses: the reference construction, modes, numerics and gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from matcard import magnitude as mag
from matcard.errors import ConfigError, UsageError
from matcard.losses import build

COUNTS = [50, 10, 5]


def error_points(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    errors = F.one_hot(target, logits.shape[1]).double() - torch.softmax(logits.double(), 1)
    return torch.cat([errors, torch.zeros(1, logits.shape[1], dtype=torch.float64)])


@pytest.mark.parametrize("name", ["magnitude", "spread"])
def test_replace_mode_is_invariant_of_errors_with_anchor_minus_one(name: str) -> None:
    torch.manual_seed(0)
    logits, target = torch.randn(16, 3, dtype=torch.float64), torch.randint(0, 3, (16,))
    expected = getattr(mag, name)(error_points(logits, target)) - 1.0
    assert float(build(name, COUNTS)(logits, target)) == pytest.approx(float(expected), abs=1e-10)


@pytest.mark.parametrize("name", ["magnitude", "spread"])
def test_perfect_batch_scores_zero_and_single_error_closed_form(name: str) -> None:
    loss = build(name, COUNTS)
    target = torch.tensor([0, 1, 2, 0])
    perfect = 1e4 * F.one_hot(target, 3).float()
    assert float(loss(perfect, target)) == pytest.approx(0.0, abs=1e-6)
    # one sample predicted uniformly: its error vector is at distance d from the anchor
    logits = perfect.clone()
    logits[0] = 0.0
    d = float(torch.linalg.vector_norm(F.one_hot(torch.tensor(0), 3) - torch.full((3,), 1 / 3)))
    z = math.exp(-d)
    # magnitude: the four points on the anchor count once, a two-point space;
    # spread weighs the clusters (4 points at the anchor, 1 error): 4/(4+z) + 1/(1+4z)
    two_point = 2.0 / (1.0 + z) - 1.0
    expected = two_point if name == "magnitude" else 4.0 / (4.0 + z) + 1.0 / (1.0 + 4.0 * z) - 1.0
    assert float(loss(logits, target)) == pytest.approx(expected, abs=1e-5)


def test_identical_mistakes_count_about_once() -> None:
    loss = build("magnitude", [10, 10, 10], t=5.0)
    target = torch.zeros(6, dtype=torch.long)
    same = torch.tensor([[0.0, 8.0, 0.0]]).repeat(6, 1)  # six identical confident mistakes
    distinct = torch.tensor(
        [[0.0, 8.0, 0.0], [0.0, 0.0, 8.0], [0.0, 8.0, 8.0], [0, 4.0, 0], [0, 0, 4.0], [1, 3, 0]]
    )
    assert float(loss(same, target)) < 1.01
    assert float(loss(distinct, target)) > 3.0


@pytest.mark.parametrize("name", ["magnitude", "spread"])
def test_gradcheck_float64(name: str) -> None:
    torch.manual_seed(1)
    target = torch.randint(0, 3, (10,))
    logits = torch.randn(10, 3, dtype=torch.float64, requires_grad=True)
    for params in ({}, {"mode": "add", "lam": 0.5}, {"mode": "multiply"}, {"t": 2.5}):
        loss = build(name, COUNTS, **params)
        assert torch.autograd.gradcheck(lambda z, loss=loss: loss(z, target), (logits,))


@pytest.mark.parametrize("name", ["magnitude", "spread"])
@pytest.mark.parametrize("t", [1.0, "auto"])
def test_float32_duplicated_rows_and_saturated_softmax_stay_finite(name: str, t: float | str) -> None:
    loss = build(name, COUNTS, t=t)
    target = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    rows = torch.tensor([[3.0, -1.0, 0.5], [3.0, -1.0, 0.5], [3.0, -1.0, 0.5], [0.0, 1e4, 0.0]])
    saturated = torch.tensor([[1e4, 0.0, 0.0], [0.0, 0.0, 1e4], [-1e4, 1e4, 0.0], [0.0, 0.0, 50.0]])
    logits = torch.cat([rows, saturated]).requires_grad_(True)
    value = loss(logits, target)
    value.backward()
    assert value.dtype == torch.float32
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()
    # an all-perfect saturated batch collapses every error vector onto the anchor
    perfect = (1e4 * F.one_hot(target, 3).float()).requires_grad_(True)
    value = loss(perfect, target)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(perfect.grad).all()


def test_modes_combine_with_cross_entropy() -> None:
    torch.manual_seed(2)
    logits, target = torch.randn(12, 3), torch.randint(0, 3, (12,))
    invariant = float(build("magnitude", COUNTS)(logits, target)) + 1.0
    ce = float(F.cross_entropy(logits, target))
    assert float(build("magnitude", COUNTS, mode="multiply")(logits, target)) == pytest.approx(
        ce * invariant, rel=1e-5
    )
    add = build("magnitude", COUNTS, mode="add", lam=0.3)(logits, target)
    assert float(add) == pytest.approx(ce + 0.3 * (invariant - 1.0), rel=1e-5)
    divide = build("magnitude", COUNTS, mode="divide")(logits, target)
    assert float(divide) == pytest.approx(ce / invariant, rel=1e-5)


def test_embeddings_source() -> None:
    torch.manual_seed(3)
    logits, target = torch.randn(8, 3), torch.randint(0, 3, (8,))
    embeddings = torch.randn(8, 5, requires_grad=True)
    loss = build("spread", COUNTS, source="embeddings")
    assert loss.uses_embeddings and loss.mode == "divide"
    value = loss(logits, target, embeddings)
    value.backward()
    expected = F.cross_entropy(logits, target) / mag.spread(embeddings.detach().double())
    assert float(value.detach()) == pytest.approx(float(expected), rel=1e-5)
    assert torch.isfinite(embeddings.grad).all() and embeddings.grad.abs().sum() > 0
    with pytest.raises(UsageError, match="embeddings"):
        loss(logits, target)
    with pytest.raises(ConfigError, match="replace"):
        build("magnitude", COUNTS, source="embeddings", mode="replace")


def test_auto_scale_is_recorded_and_bounded() -> None:
    loss = build("magnitude", COUNTS, t="auto", t_bounds=(0.5, 20.0))
    torch.manual_seed(4)
    loss(torch.randn(32, 3), torch.randint(0, 3, (32,)))
    assert 0.5 <= loss.last_t <= 20.0
    # with the scale chosen, the batch's invariant is auto_fraction of its distinct points (unless clamped)
    assert build("magnitude", COUNTS).last_t == 1.0


@pytest.mark.parametrize(
    "params", [{"t": 0}, {"t": "big"}, {"mode": "sum"}, {"auto_fraction": 1.5}, {"lam": -1}, {"source": "x"}]
)
def test_bad_parameters_fail_fast(params: dict) -> None:
    with pytest.raises(ConfigError):
        build("magnitude", COUNTS, **params)


def test_trains_in_a_plain_torch_loop() -> None:
    torch.manual_seed(5)
    centres = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.0]])
    target = torch.randint(0, 3, (256,))
    features = centres[target] + 0.3 * torch.randn(256, 2)
    model = torch.nn.Linear(2, 3)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.5)
    loss_fn = build("magnitude", torch.bincount(target, minlength=3))
    with torch.no_grad():
        first = float(loss_fn(model(features), target))
    for _ in range(60):
        optimiser.zero_grad()
        loss_fn(model(features[:64]), target[:64]).backward()
        optimiser.step()
    with torch.no_grad():
        assert float(loss_fn(model(features), target)) < 0.5 * first
        assert (model(features).argmax(1) == target).float().mean() > 0.9
