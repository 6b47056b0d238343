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
    assert float(build(name, COUNTS, mode="replace")(logits, target)) == pytest.approx(
        float(expected), abs=1e-10
    )


@pytest.mark.parametrize("name", ["magnitude", "spread"])
def test_perfect_batch_scores_zero_and_single_error_closed_form(name: str) -> None:
    loss = build(f"{name}_reference", COUNTS)
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
    loss = build("magnitude", [10, 10, 10], t=5.0, mode="replace")
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
    for params in (
        {"mode": "replace"},
        {"mode": "add", "lam": 0.5},
        {"mode": "multiply"},
        {"mode": "replace", "t": 2.5},
    ):
        loss = build(name, COUNTS, **params)
        assert torch.autograd.gradcheck(lambda z, loss=loss: loss(z, target), (logits,))


@pytest.mark.parametrize("name", ["magnitude", "spread"])
@pytest.mark.parametrize("t", [1.0, "auto"])
@pytest.mark.parametrize("mode", ["replace", "weight"])
def test_float32_duplicated_rows_and_saturated_softmax_stay_finite(
    name: str, t: float | str, mode: str
) -> None:
    loss = build(name, COUNTS, t=t, mode=mode)
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
    invariant = float(build("magnitude", COUNTS, mode="replace")(logits, target)) + 1.0
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
    assert build("magnitude", COUNTS, mode="replace").last_t == 1.0
    assert build("magnitude_reference", COUNTS).last_t == 1.0
    assert build("magnitude", COUNTS).last_t == 100.0  # the default of mode "weight"


@pytest.mark.parametrize(
    "params",
    [
        {"t": 0},
        {"t": "big"},
        {"mode": "sum"},
        {"auto_fraction": 1.5},
        {"lam": -1},
        {"source": "x"},
        {"max_weight": 0.5},
        {"warmup_epochs": -1},
        {"warmup_epochs": 1.5},
        {"merge_tol": -1},
        {"source": "embeddings", "mode": "weight"},
    ],
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


# ---------------------------------------------------------------------------------------------
# the constant predictor: no optimum of the default forms, a trap of the reference form
# ---------------------------------------------------------------------------------------------

SAFE_DEFAULTS = ["magnitude", "spread", "magnitude_class_geometry"]


def constant_batch(batch: int, positive_fraction: float) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Binary batch and the prior-constant logits (every row predicts the batch's class prior)."""
    positives = max(1, round(positive_fraction * batch))
    target = torch.zeros(batch, dtype=torch.long)
    target[:positives] = 1
    logits = torch.zeros(batch, 2, dtype=torch.float64)
    logits[:, 1] = math.log(positives / (batch - positives))
    return logits, target, [batch - positives, positives]


def frozen_loss(name: str, counts: list[int], batch: int, target: torch.Tensor):
    """The loss in evaluation mode (state fixed) and its embeddings argument."""
    loss = build(name, counts)
    embeddings = None
    if loss.uses_embeddings:
        embeddings = torch.randn(batch, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        loss(torch.zeros(batch, 2, dtype=torch.float64), target, embeddings)  # fill the banks once
    return loss.eval(), embeddings


def perturbation_outcome(loss, logits, target, embeddings, size=1e-3, directions=48) -> tuple[float, float]:
    """Fraction of random per-sample logit perturbations that lower the loss, and the change
    after a small step along minus the gradient."""
    base = float(loss(logits, target, embeddings))
    generator = torch.Generator().manual_seed(1)
    lower = sum(
        float(
            loss(
                logits + size * torch.randn(logits.shape, generator=generator, dtype=torch.float64),
                target,
                embeddings,
            )
        )
        < base
        for _ in range(directions)
    )
    moving = logits.clone().requires_grad_(True)
    loss(moving, target, embeddings).backward()
    step = 1e-2 * math.sqrt(logits.shape[0]) * moving.grad / moving.grad.norm()
    return lower / directions, float(loss(logits - step, target, embeddings)) - base


@pytest.mark.parametrize("name", SAFE_DEFAULTS)
@pytest.mark.parametrize("batch", [32, 256])
@pytest.mark.parametrize("positive_fraction", [0.04, 0.28])
def test_constant_predictor_is_not_a_local_minimum_of_default_forms(name, batch, positive_fraction) -> None:
    logits, target, counts = constant_batch(batch, positive_fraction)
    loss, embeddings = frozen_loss(name, counts, batch, target)
    lowering, gradient_change = perturbation_outcome(loss, logits, target, embeddings)
    assert lowering >= 0.3
    assert gradient_change < 0


@pytest.mark.parametrize("name", ["magnitude_reference", "spread_reference"])
@pytest.mark.parametrize("batch", [32, 256])
@pytest.mark.parametrize("positive_fraction", [0.04, 0.28])
def test_reference_form_traps_the_constant_predictor(name, batch, positive_fraction) -> None:
    # documents the collapse: at t = 1 almost every small perturbation of the constant raises the
    # invariant (linearly in the perturbation), so the constant is a local minimum in logit space
    logits, target, counts = constant_batch(batch, positive_fraction)
    loss, _ = frozen_loss(name, counts, batch, target)
    assert loss.mode == "replace" and loss.t == 1.0
    lowering, _ = perturbation_outcome(loss, logits, target, None, directions=24)
    assert lowering <= 0.1  # default forms: >= 0.3 (most batches: 0.5 to 0.9)


# ---------------------------------------------------------------------------------------------
# mode "weight": detached, normalised, capped per-sample weights
# ---------------------------------------------------------------------------------------------


def test_default_mode_is_weight_and_constant_gets_inverse_frequency_weights() -> None:
    logits, target, counts = constant_batch(256, 0.28)
    for name in ("magnitude", "spread"):
        loss = build(name, counts)
        assert loss.mode == "weight" and loss.t == 100.0
        loss(logits, target)
        weights = loss.last_weights
        assert float(weights.mean()) == pytest.approx(1.0)
        # each of the two clusters of identical errors shares about one unit of weight
        ratio = float(weights[target == 1].mean() / weights[target == 0].mean())
        assert ratio == pytest.approx(counts[0] / counts[1], rel=0.1)


@pytest.mark.parametrize("name", ["magnitude", "spread"])
def test_weights_are_detached_mean_one_and_capped(name: str) -> None:
    torch.manual_seed(6)
    target = torch.tensor([0] * 30 + [1, 2])
    logits = torch.cat([torch.tensor([[4.0, 0.0, 0.0]]).repeat(30, 1), torch.randn(2, 3)]).double()
    logits[:30] += 1e-9 * torch.randn(30, 3, dtype=torch.float64)  # near-duplicates of one row
    logits.requires_grad_(True)
    loss = build(name, COUNTS, max_weight=3.0)
    value = loss(logits, target)
    value.backward()
    weights = loss.last_weights
    assert torch.isfinite(weights).all() and not weights.requires_grad
    assert float(weights.mean()) == pytest.approx(1.0) and float(weights.max()) <= 3.0 + 1e-9
    # the gradient is that of CE with the weights held fixed: nothing flows through w
    fixed = logits.detach().clone().requires_grad_(True)
    (weights * F.cross_entropy(fixed, target, reduction="none")).mean().backward()
    assert torch.allclose(logits.grad, fixed.grad, atol=1e-12)
    expected = (weights * F.cross_entropy(logits.detach(), target, reduction="none")).mean()
    assert float(value.detach()) == pytest.approx(float(expected))


def test_distinct_mistakes_outweigh_a_cluster_of_identical_ones() -> None:
    target = torch.zeros(12, dtype=torch.long)
    same = torch.tensor([[0.0, 3.0, 0.0]]).repeat(6, 1)  # six identical mistakes
    distinct = torch.tensor(
        [[0.0, 3.0, 1.0], [0.0, 1.0, 3.0], [0, 2.0, 2.0], [1, 3, 0], [1, 0, 3], [0, 0, 2.5]]
    )
    loss = build("magnitude", [10, 10, 10], max_weight=100.0)
    loss(torch.cat([same, distinct]), target)
    weights = loss.last_weights
    assert torch.allclose(weights[:6], weights[0].expand(6))  # the cluster shares its weight equally
    assert float(weights[0]) < 0.3 * float(weights[6:].min())
    assert float(weights[:6].sum()) < 1.5 * float(weights[6:].max())  # about one mistake's worth


@pytest.mark.parametrize("name", ["magnitude", "spread", "inverse_view"])
def test_realised_class_weights_accumulate_over_training_batches(name: str) -> None:
    torch.manual_seed(7)
    loss = build(name, COUNTS)
    assert loss.realised_class_weights() is None
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    for _ in range(3):
        logits, target = torch.randn(16, 3, requires_grad=True), torch.randint(0, 3, (16,))
        if name == "inverse_view":
            weights = loss.class_weight[target].clone()
            loss(logits, target)
        else:
            loss(logits, target)
            weights = loss.last_weights
        seen.append((weights.double(), target))
    loss.eval()
    loss(torch.randn(16, 3), torch.zeros(16, dtype=torch.long))  # validation batches do not count
    all_weights = torch.cat([w for w, _ in seen])
    all_target = torch.cat([t for _, t in seen])
    expected = [float(all_weights[all_target == c].mean()) for c in range(3)]
    assert loss.realised_class_weights() == pytest.approx(expected)
    restored = build(name, COUNTS)
    restored.load_state_dict(loss.state_dict())
    assert restored.realised_class_weights() == pytest.approx(expected)


def test_replace_and_combined_modes_report_no_realised_weights() -> None:
    loss = build("magnitude", COUNTS, mode="add")
    loss(torch.randn(8, 3), torch.randint(0, 3, (8,)))
    assert loss.realised_class_weights() is None


# ---------------------------------------------------------------------------------------------
# warm-up, reference names
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["add", "multiply"])
def test_warmup_is_plain_cross_entropy_then_the_cardinality_term(mode: str) -> None:
    torch.manual_seed(8)
    logits, target = torch.randn(12, 3), torch.randint(0, 3, (12,))
    loss = build("magnitude", COUNTS, mode=mode, warmup_epochs=2)
    reference = build("magnitude", COUNTS, mode=mode)
    ce = float(F.cross_entropy(logits, target))
    assert float(loss(logits, target)) == pytest.approx(ce)
    loss.on_epoch_start(1, 10)
    assert float(loss(logits, target)) == pytest.approx(ce)
    loss.on_epoch_start(2, 10)
    assert float(loss(logits, target)) == pytest.approx(float(reference(logits, target)))
    restored = build("magnitude", COUNTS, mode=mode, warmup_epochs=2)
    restored.load_state_dict(loss.state_dict())  # the switch is a buffer: checkpointed
    assert bool(restored.cardinality_on)


@pytest.mark.parametrize("name", ["magnitude", "spread"])
def test_reference_names_are_the_replace_form(name: str) -> None:
    torch.manual_seed(9)
    logits, target = torch.randn(10, 3), torch.randint(0, 3, (10,))
    reference = build(f"{name}_reference", COUNTS)
    assert (reference.mode, reference.t) == ("replace", 1.0)
    assert float(reference(logits, target)) == pytest.approx(
        float(build(name, COUNTS, mode="replace")(logits, target))
    )
