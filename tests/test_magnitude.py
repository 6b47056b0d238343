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


# ---------------------------------------------------------------------------------------------
# stable_weighting / line_weighting / spread_contributions (detached per-sample loss weights)
# ---------------------------------------------------------------------------------------------


def brute_force_weighting(points: np.ndarray, t: float) -> np.ndarray:
    distances = np.linalg.norm(points[:, None, :] - points[None, :, :], axis=-1)
    return np.linalg.solve(np.exp(-t * distances), np.ones(points.shape[0]))


@pytest.mark.parametrize("dimension", [1, 3])
@pytest.mark.parametrize("t", [0.5, 2.0, 20.0])
def test_stable_weighting_matches_a_direct_solve_on_well_conditioned_points(dimension: int, t: float) -> None:
    points = np.random.default_rng(10).normal(size=(15, dimension)) * (1.0 if t < 10 else 0.2)
    weights = mag.stable_weighting(points, t)
    assert weights == pytest.approx(brute_force_weighting(points, t), abs=1e-9)
    assert weights.sum() == pytest.approx(mag.magnitude(points, t), abs=1e-9)


def test_line_closed_form_two_points_and_collinear_points_in_the_plane() -> None:
    weights = mag.line_weighting(torch.tensor([0.0, 0.7], dtype=torch.float64), 3.0)
    assert float(weights.sum()) == pytest.approx(two_point_value(0.7, 3.0), abs=1e-15)
    # binary error vectors e_i = (y1 - p1) (-1, 1): distances are sqrt(2) |p1_i - p1_j|
    rng = np.random.default_rng(11)
    p1, y1 = rng.uniform(size=30), (rng.uniform(size=30) < 0.3).astype(float)
    errors = np.vstack([np.stack([p1 - y1, y1 - p1], axis=1), np.zeros((1, 2))])
    expected = brute_force_weighting(errors, 5.0)
    assert mag.stable_weighting(errors, 5.0) == pytest.approx(expected, abs=1e-9)
    on_line = mag.line_weighting(torch.from_numpy(math.sqrt(2.0) * np.append(y1 - p1, 0.0)), 5.0)
    assert on_line.numpy() == pytest.approx(expected, abs=1e-9)


def test_identical_points_share_one_unit_of_weight() -> None:
    points = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    weights = mag.stable_weighting(points, 1.5)
    distinct = brute_force_weighting(points[[0, 1, 4]], 1.5)
    assert weights[1:4] == pytest.approx([distinct[1] / 3] * 3, abs=1e-12)
    assert weights[[0, 4]] == pytest.approx(distinct[[0, 2]], abs=1e-12)
    assert weights.sum() == pytest.approx(mag.magnitude(points, 1.5), abs=1e-9)


def confident_batch(rng: np.random.Generator, n: int = 200, classes: int = 3) -> np.ndarray:
    """Error vectors of a mostly-confident model: many rows within 1e-7..1e-3 of the zero anchor."""
    target = np.eye(classes)[rng.integers(0, classes, n)]
    logits = rng.normal(size=(n, classes)) + 25.0 * rng.uniform(size=(n, 1)) * target
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    return np.vstack([target - probabilities, np.zeros((1, classes))])  # anchor last


@pytest.mark.parametrize("t", [1.0, 20.0, "auto"])
def test_near_anchor_points_keep_the_anchor_weight_at_most_one(t: float | str) -> None:
    rng = np.random.default_rng(12)
    errors = confident_batch(rng)
    scale = mag.scale_for_fraction(errors, 0.5) if t == "auto" else t
    weights = mag.stable_weighting(errors, scale)
    assert np.isfinite(weights).all()
    assert weights[-1] <= 1.0 + 1e-9
    # merging rows within 1e-3 / t of each other moves the magnitude only slightly (the unmerged
    # reference is itself a jittered solve of a near-singular Z here)
    assert weights.sum() == pytest.approx(mag.magnitude(errors, scale), rel=2e-2)
    # weights of points in the plane may be slightly negative, but nothing blows up
    assert np.abs(weights).max() <= 1.0 + 1e-6


def test_clustered_weights_are_continuous_under_tiny_perturbations() -> None:
    rng = np.random.default_rng(13)
    errors = confident_batch(rng, n=120)
    base = mag.stable_weighting(errors, 20.0)
    for size in (1e-10, 1e-7):
        moved = errors + size * rng.normal(size=errors.shape)
        assert np.abs(mag.stable_weighting(moved, 20.0) - base).max() < 2e-2
    # coincident pair against a pair 1e-6 apart (merged, both sides of the tolerance)
    pair = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    split = np.vstack([pair, pair[1] + [1e-6, 0.0]])
    joined = np.vstack([pair, pair[1]])
    assert mag.stable_weighting(split, 20.0) == pytest.approx(mag.stable_weighting(joined, 20.0), abs=1e-3)
    unmerged = mag.stable_weighting(split, 20.0, merge_tol=0.0)  # exact solve of four distinct points
    assert unmerged == pytest.approx(mag.stable_weighting(joined, 20.0), abs=1e-3)


def test_spread_contributions_sum_to_the_spread_and_reject_bad_input() -> None:
    points = np.random.default_rng(14).normal(size=(9, 2))
    contributions = mag.spread_contributions(points, 2.0)
    assert contributions.sum() == pytest.approx(mag.spread(points, 2.0), abs=1e-12)
    tensor = mag.spread_contributions(torch.tensor(points, requires_grad=True), 2.0)
    assert isinstance(tensor, torch.Tensor) and not tensor.requires_grad
    with pytest.raises(UsageError):
        mag.stable_weighting(points, 0.0)
    with pytest.raises(UsageError):
        mag.stable_weighting(points, 1.0, merge_tol=-1.0)
