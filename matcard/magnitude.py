"""Magnitude and spread of finite metric spaces (methods brief §1), for NumPy and torch inputs.

For points X = {x_1..x_N} with distances d_ij and a scale t > 0, Z_ij = exp(-t d_ij):

- weighting: w with Z w = 1;  magnitude |tX| = sum_i w_i
- spread (Willerton): E(tX) = sum_i 1 / sum_j Z_ij

This module is the single implementation shared by the standalone utility and the
cardinality losses in :mod:`matcard.losses.cardinality`. Numerics, always in float64:

- distances use a *safe* Euclidean norm: coincident rows get distance exactly 0 and a zero
  (sub)gradient instead of the NaN that d/dx ||x|| gives at 0;
- Z w = 1 is solved by Cholesky; when Z is singular or numerically indefinite (coincident
  rows, a saturated softmax landing on the zero anchor) the diagonal is shifted by an
  adaptive jitter (1e-12 growing x100 up to 1e-2, each try checked by its residual), then
  an LU solve and finally a least-squares solve are used as fallbacks;
- the gradient of the magnitude with respect to Z is the closed form -w w^T (custom
  autograd function), so a backward pass costs one outer product.

Torch inputs return torch tensors (differentiable, in the input's dtype); NumPy/array-like
inputs return Python floats / NumPy arrays.

Detached weightings for per-sample loss weights (:func:`stable_weighting`, :func:`spread_contributions`):
a raw solve of Z w = 1 is unreliable when points nearly coincide (confident correct predictions
sit almost on the zero anchor; measured anchor weights of 7 to 1,057 where they must be <= 1), so

- points closer than ``merge_tol / t`` are merged (leader clustering), the weighting of the
  cluster means is solved once (Cholesky, float64) and each cluster's weight is shared equally
  among its members; for points at distance d with t d small the exact weights of the pair are
  already nearly equal halves of one point's, so merging changes weights by O(merge_tol);
- collinear point sets (every binary task: its error vectors lie on a line) use the exact 1-D
  closed form: for sorted points with gaps g_1..g_{n-1},
  w_i = (tanh(t g_{i-1} / 2) + tanh(t g_i / 2)) / 2 with the outer gaps infinite, and
  magnitude = 1 + sum_i tanh(t g_i / 2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch

from matcard.errors import UsageError

Metric = Literal["euclidean", "precomputed"]

# Jitter schedule for the Cholesky retries: absolute diagonal shifts (Z has a unit diagonal).
_JITTERS: tuple[float, ...] = (1e-12, 1e-10, 1e-8, 1e-6, 1e-4, 1e-2)
# Squared distances below this fraction of the largest squared norm count as coincident.
_COINCIDENT_REL_TOL = 1e-14

__all__ = [
    "invariant_of_points",
    "line_weighting",
    "magnitude",
    "magnitude_dimension",
    "magnitude_from_similarity",
    "magnitude_function",
    "merge_clusters",
    "pairwise_distances",
    "scale_for_fraction",
    "similarity_matrix",
    "solve_weighting",
    "spread",
    "spread_contributions",
    "spread_from_similarity",
    "stable_weighting",
    "weighting",
]
# Default merge tolerance of stable_weighting, relative to the length scale 1/t.
MERGE_TOL = 1e-3
# Second singular value below this fraction of the first: the points lie on a line.
_COLLINEAR_REL_TOL = 1e-9


# ---------------------------------------------------------------------------------------------
# torch core (float64)
# ---------------------------------------------------------------------------------------------


def pairwise_distances(points: torch.Tensor) -> torch.Tensor:
    """Euclidean distance matrix with a safe norm: exact zeros (and zero gradient) for coincident rows.

    Uses the Gram form ||x||^2 + ||y||^2 - 2 x.y (one matmul, no N x N x D tensor), which in
    float64 is accurate to ~1e-8 in distance; that error only matters for near-coincident rows,
    which are exactly the ones snapped to 0.
    """
    if points.dim() != 2:
        raise UsageError(f"points must be a 2-D array (rows are points), got shape {tuple(points.shape)}")
    sq_norms = (points * points).sum(dim=1)
    squared = (sq_norms[:, None] + sq_norms[None, :] - 2.0 * (points @ points.T)).clamp_min(0.0)
    tolerance = _COINCIDENT_REL_TOL * (1.0 + float(sq_norms.detach().max())) if points.shape[0] else 0.0
    separated = squared > tolerance
    # sqrt only where it is safe; the where() keeps NaN/inf out of the backward pass.
    safe_squared = torch.where(separated, squared, torch.ones_like(squared))
    return torch.where(separated, torch.sqrt(safe_squared), torch.zeros_like(squared))


def similarity_matrix(distances: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    return torch.exp(-t * distances)


def solve_weighting(similarity: torch.Tensor) -> torch.Tensor:
    """Solve Z w = 1 robustly (no autograd; see module docstring for the strategy)."""
    n = similarity.shape[0]
    ones = torch.ones(n, 1, dtype=similarity.dtype, device=similarity.device)
    residual_tol = 1e-6 * max(1.0, math.sqrt(n))

    def acceptable(w: torch.Tensor, matrix: torch.Tensor) -> bool:
        if not bool(torch.isfinite(w).all()):
            return False
        return float((matrix @ w - ones).abs().max()) <= residual_tol

    with torch.no_grad():
        factor, info = torch.linalg.cholesky_ex(similarity)
        if int(info) == 0:
            w = torch.cholesky_solve(ones, factor)
            if acceptable(w, similarity):
                return w[:, 0]
        eye = torch.eye(n, dtype=similarity.dtype, device=similarity.device)
        for jitter in _JITTERS:
            shifted = similarity + jitter * eye
            factor, info = torch.linalg.cholesky_ex(shifted)
            if int(info) == 0:
                w = torch.cholesky_solve(ones, factor)
                if acceptable(w, shifted):
                    return w[:, 0]
        # Not positive definite even with jitter (e.g. a precomputed non-Euclidean metric).
        try:
            w = torch.linalg.solve(similarity, ones)
            if acceptable(w, similarity):
                return w[:, 0]
        except RuntimeError:
            pass
        w = torch.linalg.lstsq(similarity, ones, driver="gelsd" if similarity.device.type == "cpu" else None)
        return w.solution[:, 0]


class _MagnitudeOfSimilarity(torch.autograd.Function):
    """sum(Z^-1 1) with the closed-form gradient d|X|/dZ = -w w^T (Z symmetric)."""

    @staticmethod
    def forward(ctx: Any, similarity: torch.Tensor) -> torch.Tensor:
        w = solve_weighting(similarity)
        ctx.save_for_backward(w)
        return w.sum()

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> torch.Tensor:
        (w,) = ctx.saved_tensors
        return -grad_output * torch.outer(w, w)


def magnitude_from_similarity(similarity: torch.Tensor) -> torch.Tensor:
    """Magnitude from a (symmetric) similarity matrix; differentiable."""
    return _MagnitudeOfSimilarity.apply(similarity)


def spread_from_similarity(similarity: torch.Tensor) -> torch.Tensor:
    """Spread from a similarity matrix: sum_i 1 / sum_j Z_ij; differentiable, no solve."""
    return (1.0 / similarity.sum(dim=1)).sum()


class _InvariantOfPoints(torch.autograd.Function):
    """Magnitude or spread of Euclidean points in one fused step with a closed-form gradient.

    Autograd through distance -> exp -> solve allocates a dozen (N x N) temporaries per step,
    and on CPU each fresh allocation of that size costs page faults (measured: 17-25 ms per
    step at N = 257 against ~3 ms fused). Here the N x N work is done in place and the backward
    pass is written out. With A_ij = dI/dd_ij / d_ij for i != j (0 for coincident rows: the
    safe-norm subgradient),

        magnitude: dI/dd_ij = 2 t w_i w_j Z_ij          (from dI/dZ = -w w^T, Z symmetric)
        spread:    dI/dd_ij = t Z_ij (1/s_i^2 + 1/s_j^2), s = Z 1
        grad_X = diag(A 1) X - A X.
    """

    @staticmethod
    def forward(ctx: Any, points: torch.Tensor, t: float, kind: str) -> torch.Tensor:
        distances = _distances_in_place(points)
        similarity = torch.mul(distances, -t).exp_()
        if kind == "magnitude":
            state = solve_weighting(similarity)
            value = state.sum()
        else:
            state = similarity.sum(dim=1)
            value = state.reciprocal().sum()
        ctx.t, ctx.kind = t, kind
        ctx.save_for_backward(points, distances, similarity, state)
        return value

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        points, distances, similarity, state = ctx.saved_tensors
        if ctx.kind == "magnitude":
            coefficients = torch.outer(state, state).mul_(similarity).mul_(2.0 * ctx.t)
        else:
            inverse_square = state.pow(-2)
            coefficients = (inverse_square[:, None] + inverse_square[None, :]).mul_(similarity).mul_(ctx.t)
        # divide in place; the coincident entries (0/0) are overwritten with the zero subgradient
        coefficients.div_(distances).masked_fill_(distances == 0, 0.0)
        gradient = coefficients.sum(dim=1, keepdim=True) * points - coefficients @ points
        return gradient.mul_(grad_output), None, None


def _distances_in_place(points: torch.Tensor) -> torch.Tensor:
    """Safe Euclidean distances without autograd (Gram form, in place; exact 0 for coincident rows)."""
    with torch.no_grad():
        sq_norms = (points * points).sum(dim=1)
        distances = points @ points.T
        distances.mul_(-2.0).add_(sq_norms[:, None]).add_(sq_norms[None, :])
        tolerance = _COINCIDENT_REL_TOL * (1.0 + float(sq_norms.max())) if points.shape[0] else 0.0
        distances.masked_fill_(distances <= tolerance, 0.0)
        return distances.sqrt_()


def invariant_of_points(
    points: torch.Tensor, t: float, kind: Literal["magnitude", "spread"] = "magnitude"
) -> torch.Tensor:
    """Magnitude or spread of the rows of ``points`` (float64 recommended); differentiable in ``points``."""
    if kind not in ("magnitude", "spread"):
        raise UsageError(f"kind must be 'magnitude' or 'spread', got {kind!r}")
    if points.dim() != 2:
        raise UsageError(f"points must be a 2-D array (rows are points), got shape {tuple(points.shape)}")
    return _InvariantOfPoints.apply(points, float(t), kind)


# ---------------------------------------------------------------------------------------------
# public utility (NumPy or torch in, same kind out)
# ---------------------------------------------------------------------------------------------


def _check_scale(t: float | torch.Tensor) -> None:
    value = float(t.detach()) if isinstance(t, torch.Tensor) else float(t)
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"scale t must be a positive finite number, got {value!r}")


def _as_points(X: Any) -> tuple[torch.Tensor, bool, torch.dtype | None]:
    """Validated float64 points (rows), whether the input was torch, and the input's torch dtype."""
    is_torch = isinstance(X, torch.Tensor)
    tensor = X if is_torch else torch.as_tensor(np.asarray(X, dtype=np.float64))
    input_dtype = tensor.dtype if is_torch else None
    tensor = tensor.to(torch.float64)
    if tensor.dim() == 1:
        tensor = tensor[:, None]  # a 1-D array is N points on the line
    if tensor.dim() != 2 or tensor.shape[0] == 0:
        raise UsageError(f"X must be a non-empty 2-D array, got shape {tuple(tensor.shape)}")
    if not bool(torch.isfinite(tensor.detach()).all()):
        raise UsageError("X contains NaN or infinite values")
    return tensor, is_torch, input_dtype


def _as_distances(X: Any, metric: Metric) -> tuple[torch.Tensor, bool, torch.dtype | None]:
    """Float64 distance matrix, whether the input was torch, and the input's torch dtype."""
    if metric == "euclidean":
        points, is_torch, input_dtype = _as_points(X)
        return pairwise_distances(points), is_torch, input_dtype
    is_torch = isinstance(X, torch.Tensor)
    tensor = X if is_torch else torch.as_tensor(np.asarray(X, dtype=np.float64))
    input_dtype = tensor.dtype if is_torch else None
    tensor = tensor.to(torch.float64)
    if tensor.dim() == 1 and metric == "euclidean":
        tensor = tensor[:, None]  # a 1-D array is N points on the line
    if tensor.dim() != 2 or tensor.shape[0] == 0:
        raise UsageError(f"X must be a non-empty 2-D array, got shape {tuple(tensor.shape)}")
    if not bool(torch.isfinite(tensor).all()):
        raise UsageError("X contains NaN or infinite values")
    if metric == "euclidean":
        return pairwise_distances(tensor), is_torch, input_dtype
    if metric == "precomputed":
        if tensor.shape[0] != tensor.shape[1]:
            raise UsageError(f"a precomputed distance matrix must be square, got {tuple(tensor.shape)}")
        if bool((tensor < 0).any()):
            raise UsageError("a precomputed distance matrix must be non-negative")
        if not torch.allclose(tensor, tensor.T, atol=1e-10):
            raise UsageError("a precomputed distance matrix must be symmetric")
        return tensor, is_torch, input_dtype
    raise UsageError(f"unknown metric {metric!r}; use 'euclidean' or 'precomputed'")


def _finish(value: torch.Tensor, is_torch: bool, dtype: torch.dtype | None) -> Any:
    if is_torch:
        return value.to(dtype) if dtype is not None and dtype.is_floating_point else value
    array = value.detach().cpu().numpy()
    return float(array) if array.ndim == 0 else array


def _invariant(X: Any, t: float, metric: Metric, kind: Literal["magnitude", "spread"]) -> Any:
    _check_scale(t)
    if metric == "euclidean":
        points, is_torch, dtype = _as_points(X)
        return _finish(invariant_of_points(points, float(t), kind), is_torch, dtype)
    distances, is_torch, dtype = _as_distances(X, metric)
    evaluate = magnitude_from_similarity if kind == "magnitude" else spread_from_similarity
    return _finish(evaluate(similarity_matrix(distances, t)), is_torch, dtype)


def magnitude(X: Any, t: float = 1.0, metric: Metric = "euclidean") -> Any:
    """Magnitude |tX| of a point cloud (rows of X) or of a distance matrix (metric="precomputed")."""
    return _invariant(X, t, metric, "magnitude")


def spread(X: Any, t: float = 1.0, metric: Metric = "euclidean") -> Any:
    """Spread E(tX) of a point cloud (rows of X) or of a distance matrix (metric="precomputed")."""
    return _invariant(X, t, metric, "spread")


def weighting(X: Any, t: float = 1.0, metric: Metric = "euclidean") -> Any:
    """The weighting w solving Z w = 1 (its sum is the magnitude). Torch inputs get a differentiable w."""
    _check_scale(t)
    distances, is_torch, dtype = _as_distances(X, metric)
    similarity = similarity_matrix(distances, t)
    if is_torch and similarity.requires_grad:
        # Differentiable through the solve: w = w0 - Z^-1 (Z w0 - 1) has value w0 and the
        # exact first-order gradient, with w0 from the robust solver.
        w0 = solve_weighting(similarity.detach())
        ones = torch.ones_like(w0)
        residual = (similarity @ w0 - ones)[:, None]
        try:
            correction = torch.linalg.solve(similarity.detach(), residual)[:, 0]
        except RuntimeError:  # exactly singular (coincident points): minimum-norm correction
            correction = (torch.linalg.pinv(similarity.detach(), hermitian=True) @ residual)[:, 0]
        w = w0 - correction
    else:
        w = solve_weighting(similarity)
    return _finish(w, is_torch, dtype)


def magnitude_function(
    X: Any, ts: Sequence[float] | np.ndarray | torch.Tensor, metric: Metric = "euclidean"
) -> Any:
    """The magnitude function t -> |tX| evaluated at each scale in ``ts`` (distances computed once)."""
    scales = [float(t) for t in (ts.tolist() if isinstance(ts, torch.Tensor | np.ndarray) else ts)]
    if not scales:
        raise UsageError("ts must contain at least one scale")
    for t in scales:
        _check_scale(t)
    distances, is_torch, dtype = _as_distances(X, metric)
    values = torch.stack([magnitude_from_similarity(similarity_matrix(distances, t)) for t in scales])
    return _finish(values, is_torch, dtype)


def magnitude_dimension(X: Any, ts: Sequence[float] | np.ndarray, metric: Metric = "euclidean") -> np.ndarray:
    """The magnitude dimension: slope of log|tX| against log t at each t in ``ts`` (finite differences)."""
    scales = np.asarray(ts, dtype=np.float64)
    if scales.size < 2:
        raise UsageError("magnitude_dimension needs at least two scales")
    values = magnitude_function(X.detach() if isinstance(X, torch.Tensor) else X, scales, metric)
    values = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    return np.gradient(np.log(values.astype(np.float64)), np.log(scales))


def scale_for_fraction(
    X: Any,
    fraction: float = 0.95,
    invariant: Literal["magnitude", "spread"] = "magnitude",
    metric: Metric = "euclidean",
    t_min: float = 1e-3,
    t_max: float = 1e3,
) -> float:
    """Smallest t (bisection in log t) at which the invariant reaches ``fraction`` of its limit.

    The limit is the number of distinct points (coincident points count once). The result is
    clamped to [t_min, t_max]; a set of one distinct point returns t_min.
    """
    if not 0.0 < fraction < 1.0:
        raise UsageError(f"fraction must lie in (0, 1), got {fraction}")
    distances, _, _ = _as_distances(X.detach() if isinstance(X, torch.Tensor) else X, metric)
    return _scale_for_fraction_distances(distances, fraction, invariant, t_min, t_max)


def _scale_for_fraction_distances(
    distances: torch.Tensor, fraction: float, invariant: str, t_min: float, t_max: float, iterations: int = 40
) -> float:
    with torch.no_grad():
        n = distances.shape[0]
        # distinct points: rows with no zero-distance partner before them
        upper = torch.triu(distances == 0, diagonal=1)
        distinct = n - int(upper.any(dim=0).sum())
        if distinct <= 1:
            return t_min
        target = fraction * distinct
        evaluate = magnitude_from_similarity if invariant == "magnitude" else spread_from_similarity

        def value(t: float) -> float:
            return float(evaluate(similarity_matrix(distances, t)))

        if value(t_min) >= target:
            return t_min
        if value(t_max) < target:
            return t_max
        low, high = math.log(t_min), math.log(t_max)
        for _ in range(iterations):
            middle = 0.5 * (low + high)
            if value(math.exp(middle)) >= target:
                high = middle
            else:
                low = middle
        return math.exp(high)


# ---------------------------------------------------------------------------------------------
# detached, well-conditioned weightings (per-sample loss weights)
# ---------------------------------------------------------------------------------------------


def line_weighting(coordinates: torch.Tensor, t: float) -> torch.Tensor:
    """Exact weighting of points on a line (1-D coordinates, any order); float64, no solve.

    Coincident points get unequal shares here (a zero gap contributes tanh(0) = 0 to one side);
    :func:`stable_weighting` merges them first.
    """
    x = coordinates.detach().to(torch.float64).reshape(-1)
    order = torch.argsort(x)
    half_gaps = torch.tanh(0.5 * float(t) * torch.diff(x[order]))
    one = x.new_ones(1)
    sorted_weights = 0.5 * (torch.cat([one, half_gaps]) + torch.cat([half_gaps, one]))
    weights = torch.empty_like(x)
    weights[order] = sorted_weights
    return weights


def merge_clusters(points: torch.Tensor, tolerance: float) -> torch.Tensor:
    """Cluster label per row (leader clustering): a row joins the first earlier leader within tolerance."""
    return _labels_from_distances(_distances_in_place(points.detach().to(torch.float64)), tolerance)


def _labels_from_distances(distances: torch.Tensor, tolerance: float) -> torch.Tensor:
    close = (distances <= tolerance).cpu().numpy()
    n = close.shape[0]
    labels = np.arange(n, dtype=np.int64)
    crowded = np.flatnonzero(close.sum(axis=1) > 1)
    if crowded.size:  # only rows with a close neighbour need the sequential pass
        labels[:] = -1
        next_label = 0
        for row in range(n):
            if labels[row] >= 0:
                continue
            members = close[row] & (labels < 0)
            labels[members] = next_label
            next_label += 1
    return torch.from_numpy(labels).to(distances.device)


def _line_coordinates(points: torch.Tensor) -> torch.Tensor | None:
    """1-D coordinates of the rows when they are collinear (distances preserved), else None."""
    if points.shape[1] == 1:
        return points[:, 0]
    if points.shape[0] <= 2:  # one or two points always lie on a line
        return torch.linalg.vector_norm(points - points[0], dim=1)
    centred = points - points.mean(dim=0, keepdim=True)
    _, singular, right = torch.linalg.svd(centred, full_matrices=False)
    if float(singular[0]) == 0.0 or float(singular[1]) <= _COLLINEAR_REL_TOL * float(singular[0]):
        return centred @ right[0]
    return None


def _stable_weighting_tensor(points: torch.Tensor, t: float, merge_tol: float) -> torch.Tensor:
    with torch.no_grad():
        points = points.detach().to(torch.float64)
        distances = _distances_in_place(points)
        labels = _labels_from_distances(distances, merge_tol / t)
        n_clusters = int(labels.max()) + 1
        if n_clusters == points.shape[0] and _line_coordinates(points) is None:
            return solve_weighting(distances.mul_(-t).exp_())  # nothing merged: one solve
        sizes = torch.bincount(labels, minlength=n_clusters).to(torch.float64)
        centres = torch.zeros(n_clusters, points.shape[1], dtype=torch.float64, device=points.device)
        centres.index_add_(0, labels, points).div_(sizes[:, None])
        coordinates = _line_coordinates(centres)
        if coordinates is not None:
            cluster_weights = line_weighting(coordinates, t)
        else:
            similarity = _distances_in_place(centres).mul_(-t).exp_()
            cluster_weights = solve_weighting(similarity)
        return (cluster_weights / sizes)[labels]


def stable_weighting(X: Any, t: float = 1.0, merge_tol: float = MERGE_TOL) -> Any:
    """Detached weighting of Euclidean points, robust to (near-)coincident rows; sums to the magnitude.

    Rows closer than ``merge_tol / t`` share their cluster's weight equally; collinear sets use
    the exact 1-D closed form, others one Cholesky solve on the cluster means (module docstring).
    """
    _check_scale(t)
    if not merge_tol >= 0:
        raise UsageError(f"merge_tol must be >= 0, got {merge_tol!r}")
    points, is_torch, dtype = _as_points(X.detach() if isinstance(X, torch.Tensor) else X)
    return _finish(_stable_weighting_tensor(points, float(t), float(merge_tol)), is_torch, dtype)


def spread_contributions(X: Any, t: float = 1.0) -> Any:
    """Each point's share of the spread, 1 / sum_j Z_ij (detached; sums to the spread)."""
    _check_scale(t)
    points, is_torch, dtype = _as_points(X.detach() if isinstance(X, torch.Tensor) else X)
    with torch.no_grad():
        contributions = _distances_in_place(points).mul_(-float(t)).exp_().sum(dim=1).reciprocal_()
    return _finish(contributions, is_torch, dtype)
