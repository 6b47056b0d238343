"""matcard.magnitude: closed forms, brute-force agreement, gradients, NumPy/torch behaviour."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from matcard import magnitude as mag
from matcard.errors import UsageError


def two_point_value(d: float, t: float) -> float:
    return 2.0 / (1.0 + math.exp(-t * d))


def brute_force_magnitude(points: np.ndarray, t: float) -> float:
    distances = np.linalg.norm(points[:, None, :] - points[None, :, :], axis=-1)
    return float(np.linalg.inv(np.exp(-t * distances)).sum())


@pytest.mark.parametrize("invariant", [mag.magnitude, mag.spread])
def test_one_point_is_one(invariant) -> None:
    assert invariant(np.array([[0.3, -1.2, 4.0]])) == pytest.approx(1.0, abs=1e-12)
    assert float(invariant(torch.tensor([[5.0]]))) == pytest.approx(1.0, abs=1e-7)


@pytest.mark.parametrize("invariant", [mag.magnitude, mag.spread])
@pytest.mark.parametrize(("d", "t"), [(0.1, 1.0), (1.0, 1.0), (math.sqrt(2), 1.0), (2.5, 0.3), (0.7, 4.0)])
def test_two_points_closed_form(invariant, d: float, t: float) -> None:
    points = np.array([[0.0, 0.0], [d / math.sqrt(2), d / math.sqrt(2)]])
    assert invariant(points, t=t) == pytest.approx(two_point_value(d, t), rel=1e-10)


@pytest.mark.parametrize("k", [2, 3, 10])
def test_coincident_points_count_once(k: int) -> None:
    points = np.tile(np.array([[1.0, 2.0, 3.0]]), (k, 1))
    assert mag.magnitude(points) == pytest.approx(1.0, abs=1e-6)
    assert mag.spread(points) == pytest.approx(1.0, abs=1e-12)
    # k copies of one point plus a far-away point: two distinct points
    far = np.vstack([points, [[1e4, 0.0, 0.0]]])
    assert mag.magnitude(far) == pytest.approx(2.0, abs=1e-6)


@pytest.mark.parametrize("invariant", [mag.magnitude, mag.spread])
def test_well_separated_points_approach_n(invariant) -> None:
    points = 1e3 * np.eye(7)
    assert invariant(points) == pytest.approx(7.0, abs=1e-9)
    # and the invariant grows with t towards N, staying in [1, N]
    rng = np.random.default_rng(3)
    cloud = rng.normal(size=(12, 3))
    values = [invariant(cloud, t=t) for t in (0.01, 0.1, 1.0, 10.0, 100.0)]
    assert all(1.0 - 1e-9 <= v <= 12.0 + 1e-9 for v in values)
    assert values == sorted(values)


@pytest.mark.parametrize("seed", range(6))
def test_agrees_with_brute_force_inverse(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, dim = rng.integers(2, 40), rng.integers(1, 12)
    points = rng.normal(scale=rng.uniform(0.2, 3.0), size=(n, dim))
    t = float(rng.uniform(0.2, 3.0))
    expected = brute_force_magnitude(points, t)
    assert mag.magnitude(points, t=t) == pytest.approx(expected, abs=1e-8)
    assert float(mag.magnitude(torch.tensor(points), t=t)) == pytest.approx(expected, abs=1e-8)
    w = mag.weighting(points, t=t)
    distances = np.linalg.norm(points[:, None] - points[None], axis=-1)
    np.testing.assert_allclose(np.exp(-t * distances) @ w, np.ones(n), atol=1e-8)
    assert w.sum() == pytest.approx(expected, abs=1e-8)


def test_precomputed_metric_matches_points() -> None:
    rng = np.random.default_rng(0)
    points = rng.normal(size=(15, 4))
    distances = np.linalg.norm(points[:, None] - points[None], axis=-1)
    assert mag.magnitude(distances, metric="precomputed") == pytest.approx(mag.magnitude(points), abs=1e-10)
    assert mag.spread(distances, metric="precomputed") == pytest.approx(mag.spread(points), abs=1e-12)


def test_non_euclidean_metric_uses_fallback_solver() -> None:
    # complete bipartite graph K_{3,2} with the path metric at small t: Z is not positive definite
    a, b = 3, 2
    n = a + b
    distances = np.full((n, n), 2.0)
    distances[:a, a:] = distances[a:, :a] = 1.0
    np.fill_diagonal(distances, 0.0)
    t = 0.2
    z = np.exp(-t * distances)
    assert np.linalg.eigvalsh(z).min() < 0  # the Cholesky path cannot apply
    expected = float(np.linalg.solve(z, np.ones(n)).sum())
    assert mag.magnitude(distances, t=t, metric="precomputed") == pytest.approx(expected, rel=1e-9)


def test_torch_inputs_give_differentiable_tensors_in_input_dtype() -> None:
    points = torch.randn(9, 3, dtype=torch.float32, requires_grad=True)
    value = mag.magnitude(points)
    assert isinstance(value, torch.Tensor) and value.dtype == torch.float32
    value.backward()
    assert points.grad is not None and torch.isfinite(points.grad).all()
    w = mag.weighting(points.detach().double().requires_grad_(True))
    assert isinstance(w, torch.Tensor) and w.shape == (9,)


def test_gradcheck_float64() -> None:
    torch.manual_seed(0)
    points = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: mag.magnitude(x, t=0.7), (points,))
    assert torch.autograd.gradcheck(lambda x: mag.spread(x, t=1.3), (points,))
    assert torch.autograd.gradcheck(lambda x: mag.weighting(x, t=1.0), (points,))


def test_duplicated_rows_have_finite_gradients() -> None:
    base = torch.randn(4, 3, dtype=torch.float64)
    points = torch.cat([base, base[:2]]).requires_grad_(True)
    for invariant in (mag.magnitude, mag.spread):
        value = invariant(points)
        (gradient,) = torch.autograd.grad(value, points)
        assert torch.isfinite(value) and torch.isfinite(gradient).all()
    assert float(mag.magnitude(points.detach())) == pytest.approx(float(mag.magnitude(base)), abs=1e-6)


def test_magnitude_function_dimension_and_scale_choice() -> None:
    rng = np.random.default_rng(1)
    points = rng.uniform(size=(30, 2))
    ts = np.geomspace(0.1, 100, 12)
    values = mag.magnitude_function(points, ts)
    assert values.shape == (12,)
    np.testing.assert_allclose(values, [mag.magnitude(points, t=t) for t in ts], rtol=1e-12)
    assert np.all(np.diff(values) > 0)
    torch_values = mag.magnitude_function(torch.tensor(points), torch.tensor(ts))
    np.testing.assert_allclose(torch_values.numpy(), values, rtol=1e-12)
    dimension = mag.magnitude_dimension(points, ts)
    assert dimension.shape == (12,) and np.all(dimension >= -1e-9)
    t95 = mag.scale_for_fraction(points, 0.95)
    assert mag.magnitude(points, t=t95) == pytest.approx(0.95 * 30, rel=1e-6)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: mag.magnitude(np.array([[np.nan, 0.0]])), "NaN"),
        (lambda: mag.magnitude(np.zeros((2, 2)), t=0.0), "positive"),
        (lambda: mag.spread(np.zeros((2, 3)), metric="precomputed"), "square"),
        (lambda: mag.magnitude(np.array([[0.0, 1.0], [2.0, 0.0]]), metric="precomputed"), "symmetric"),
        (lambda: mag.magnitude(np.zeros((0, 3))), "non-empty"),
        (lambda: mag.magnitude(np.zeros((2, 2)), metric="cosine"), "unknown metric"),  # type: ignore[arg-type]
        (lambda: mag.magnitude_function(np.zeros((2, 2)), []), "at least one"),
    ],
)
def test_bad_input_is_a_usage_error(call, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        call()
