"""Every baseline loss against a small hand-computed example, plus the registry and interface."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from matcard.errors import ConfigError, UsageError
from matcard.losses import LOSSES, build, class_weights, posthoc_logit_adjust

LOGITS = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
TARGET = torch.tensor([0, 1, 1])
COUNTS = [3, 1]  # class 0 frequent, class 1 rare


def log_softmax_row(row: list[float]) -> list[float]:
    top = max(row)
    norm = top + math.log(sum(math.exp(v - top) for v in row))
    return [v - norm for v in row]


def per_sample_ce(logits: torch.Tensor, target: torch.Tensor) -> list[float]:
    return [-log_softmax_row(row.tolist())[int(y)] for row, y in zip(logits, target, strict=True)]


CE = per_sample_ce(LOGITS, TARGET)  # [ln(1+e^-2), ln(1+e^-1), ln 2]


def test_registry_names_and_interface() -> None:
    expected = {"ce", "weighted_ce", "focal", "class_balanced", "ldam", "logit_adjusted", "balanced_softmax"}
    expected |= {"seesaw", "equalization", "inverse_view", "ot_reweight", "magnitude", "spread", "mse"}
    assert expected <= set(LOSSES)
    for name in LOSSES:
        loss = build(name, [40, 10, 5])
        assert isinstance(loss, torch.nn.Module) and loss.name == name
        assert isinstance(loss.uses_embeddings, bool)
        loss.on_epoch_start(0, 10)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_works_in_a_plain_torch_loop(name: str) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU())
    head = torch.nn.Linear(8, 3)
    optimiser = torch.optim.SGD([*model.parameters(), *head.parameters()], lr=0.05)
    counts = [60, 12, 6]
    loss_fn = build(name, counts)
    target = torch.tensor([0] * 60 + [1] * 12 + [2] * 6)
    features = torch.randn(78, 4) + target[:, None].float()
    for epoch in range(3):
        loss_fn.on_epoch_start(epoch, 3)
        for batch in torch.split(torch.randperm(78), 16):
            embeddings = model(features[batch])
            value = loss_fn(head(embeddings), target[batch], embeddings if loss_fn.uses_embeddings else None)
            assert value.dim() == 0 and torch.isfinite(value)
            optimiser.zero_grad()
            value.backward()
            assert all(torch.isfinite(p.grad).all() for p in head.parameters())
            optimiser.step()
    state = loss_fn.state_dict()
    rebuilt = build(name, counts)
    rebuilt.load_state_dict(state)  # buffers (EMA, meta memory...) survive a checkpoint


def test_build_fails_fast_naming_the_field() -> None:
    with pytest.raises(ConfigError, match="unknown loss 'nope'"):
        build("nope", COUNTS)
    with pytest.raises(ConfigError, match="'gama'"):
        build("focal", COUNTS, gama=2.0)
    with pytest.raises(ConfigError, match="class_counts"):
        build("ce", [5])
    with pytest.raises(ConfigError, match="non-negative"):
        build("ce", [5, -1])
    with pytest.raises(ConfigError, match="scheme"):
        build("weighted_ce", COUNTS, scheme="log")
    assert build("Cross-Entropy", COUNTS).name == "ce"


def test_bad_call_shapes_are_usage_errors() -> None:
    loss = build("ce", COUNTS)
    with pytest.raises(UsageError, match="shape"):
        loss(torch.zeros(3, 3), TARGET)
    with pytest.raises(UsageError, match="targets"):
        loss(torch.zeros(3, 2), torch.tensor([0, 1]))


def test_cross_entropy_and_mse() -> None:
    assert float(build("ce", COUNTS)(LOGITS, TARGET)) == pytest.approx(sum(CE) / 3, rel=1e-12)
    probabilities = [[math.exp(v) for v in log_softmax_row(row.tolist())] for row in LOGITS]
    squared = [
        sum((p - (1.0 if c == int(y) else 0.0)) ** 2 for c, p in enumerate(row))
        for row, y in zip(probabilities, TARGET, strict=True)
    ]
    assert float(build("mse", COUNTS)(LOGITS, TARGET)) == pytest.approx(sum(squared) / 6, rel=1e-12)


def test_class_weight_schemes_by_hand() -> None:
    counts = [30, 10, 5]
    np.testing.assert_allclose(class_weights(counts, "inverse"), [45 / 90, 45 / 30, 45 / 15])
    inv_sqrt = np.array([30, 10, 5]) ** -0.5
    np.testing.assert_allclose(class_weights(counts, "inverse_sqrt"), inv_sqrt * 3 / inv_sqrt.sum())
    np.testing.assert_allclose(class_weights(counts, "median"), [10 / 30, 1.0, 2.0])
    effective = np.array([(1 - 0.9**n) / 0.1 for n in counts])
    cb = (1 / effective) * 3 / (1 / effective).sum()
    np.testing.assert_allclose(class_weights(counts, "class_balanced", beta=0.9), cb)


@pytest.mark.parametrize("scheme", ["inverse", "inverse_sqrt", "median"])
def test_weighted_ce(scheme: str) -> None:
    w = class_weights(COUNTS, scheme).tolist()
    expected = sum(w[int(y)] * loss_i for y, loss_i in zip(TARGET, CE, strict=True)) / 3
    assert float(build("weighted_ce", COUNTS, scheme=scheme)(LOGITS, TARGET)) == pytest.approx(
        expected, rel=1e-6
    )


def test_focal_binary_defaults() -> None:
    # gamma 2, alpha 0.25 on class 1 (and 0.75 on class 0)
    expected = 0.0
    for row, y in zip(LOGITS, TARGET, strict=True):
        log_p = log_softmax_row(row.tolist())[int(y)]
        alpha = 0.25 if int(y) == 1 else 0.75
        expected += -alpha * (1 - math.exp(log_p)) ** 2 * log_p
    assert float(build("focal", COUNTS)(LOGITS, TARGET)) == pytest.approx(expected / 3, rel=1e-6)
    # gamma 0 without alpha is plain cross-entropy
    assert float(build("focal", COUNTS, gamma=0.0, alpha=None)(LOGITS, TARGET)) == pytest.approx(sum(CE) / 3)


def test_class_balanced_ce_and_focal() -> None:
    e0, e1 = (1 - 0.9**3) / 0.1, 1.0
    w = [(1 / e0) * 2 / (1 / e0 + 1 / e1), (1 / e1) * 2 / (1 / e0 + 1 / e1)]
    expected = sum(w[int(y)] * loss_i for y, loss_i in zip(TARGET, CE, strict=True)) / 3
    assert float(build("class_balanced", COUNTS, beta=0.9)(LOGITS, TARGET)) == pytest.approx(
        expected, rel=1e-6
    )
    focal = 0.0
    for row, y in zip(LOGITS, TARGET, strict=True):
        log_p = log_softmax_row(row.tolist())[int(y)]
        focal += -w[int(y)] * (1 - math.exp(log_p)) ** 2 * log_p
    value = build("class_balanced", COUNTS, beta=0.9, base="focal")(LOGITS, TARGET)
    assert float(value) == pytest.approx(focal / 3, rel=1e-6)


def test_ldam_margins_and_deferred_reweighting() -> None:
    counts = [16, 1]  # n^-1/4 = 0.5 and 1: margins 0.25 and 0.5
    loss = build("ldam", counts, s=2.0, beta=0.9)
    assert loss.margins.tolist() == pytest.approx([0.25, 0.5])
    shifted = LOGITS.clone()
    for i, y in enumerate(TARGET.tolist()):
        shifted[i, y] -= [0.25, 0.5][y]
    ce = per_sample_ce(2.0 * shifted, TARGET)
    loss.on_epoch_start(0, 10)
    assert float(loss(LOGITS, TARGET)) == pytest.approx(sum(ce) / 3, rel=1e-6)
    loss.on_epoch_start(8, 10)  # DRW from 80 % of training: class-balanced weights, weighted mean
    e = [(1 - 0.9**16) / 0.1, 1.0]
    w = [(1 / e[c]) * 2 / (1 / e[0] + 1 / e[1]) for c in (0, 1)]
    weighted = sum(w[int(y)] * loss_i for y, loss_i in zip(TARGET, ce, strict=True)) / sum(
        w[int(y)] for y in TARGET
    )
    assert float(loss(LOGITS, TARGET)) == pytest.approx(weighted, rel=1e-6)
    loss.on_epoch_start(7, 10)
    assert loss.active_weight.tolist() == [1.0, 1.0]
    loss.on_epoch_start(50, -1)  # unlimited training (Lightning max_epochs=-1): never deferred
    assert loss.active_weight.tolist() == [1.0, 1.0]


def test_logit_adjustment_and_balanced_softmax() -> None:
    log_prior = [math.log(0.75), math.log(0.25)]
    for tau in (1.0, 0.5):
        adjusted = LOGITS + tau * torch.tensor(log_prior, dtype=torch.float64)
        expected = sum(per_sample_ce(adjusted, TARGET)) / 3
        assert float(build("logit_adjusted", COUNTS, tau=tau)(LOGITS, TARGET)) == pytest.approx(
            expected, rel=1e-6
        )
    balanced = build("balanced_softmax", COUNTS)(LOGITS, TARGET)
    assert float(balanced) == pytest.approx(float(build("logit_adjusted", COUNTS)(LOGITS, TARGET)), rel=1e-12)
    posthoc = posthoc_logit_adjust(LOGITS, COUNTS)
    np.testing.assert_allclose(
        posthoc.numpy(), (LOGITS - torch.tensor(log_prior, dtype=torch.float64)).numpy()
    )
    assert posthoc.argmax(1).tolist() == [0, 1, 1]


def test_seesaw_by_hand() -> None:
    counts = [10, 1]
    logits = torch.tensor([[1.0, 0.5], [2.0, 0.0]], dtype=torch.float64)
    target = torch.tensor([0, 1])
    loss = build("seesaw", counts, p=0.8, q=2.0)
    # sample 0 (frequent class 0): class 1 is rarer -> mitigation (1/10)^0.8;
    # sigma_1 < sigma_0 -> no compensation
    s01 = (1 / 10) ** 0.8
    l0 = -math.log(math.exp(1.0) / (math.exp(1.0) + s01 * math.exp(0.5)))
    # sample 1 (rare class 1): class 0 is more frequent -> no mitigation;
    # sigma_0 > sigma_1 -> compensation (sigma_0/sigma_1)^2
    sigma = [math.exp(v) for v in log_softmax_row([2.0, 0.0])]
    s10 = (sigma[0] / sigma[1]) ** 2
    l1 = -math.log(math.exp(0.0) / (math.exp(0.0) + s10 * math.exp(2.0)))
    assert float(loss(logits, target)) == pytest.approx((l0 + l1) / 2, rel=1e-6)
    plain = build("seesaw", counts, p=0.0, q=0.0)(logits, target)
    assert float(plain) == pytest.approx(sum(per_sample_ce(logits, target)) / 2, rel=1e-9)


def test_equalization_drops_rare_negatives() -> None:
    counts = [80, 15, 5]  # frequencies 0.8, 0.15, 0.05; threshold 0.1 -> class 2 is rare
    logits = torch.tensor([[1.0, 0.0, 3.0], [0.0, 2.0, 1.0], [0.5, 0.0, 1.0]], dtype=torch.float64)
    target = torch.tensor([0, 1, 2])
    loss = build("equalization", counts, threshold=0.1, gamma=1.0)
    assert loss.rare.tolist() == [False, False, True]
    expected = [
        -log_softmax_row([1.0, 0.0])[0],  # class 2 removed from sample 0's softmax
        -log_softmax_row([0.0, 2.0])[1],  # and from sample 1's
        -log_softmax_row([0.5, 0.0, 1.0])[2],  # a rare sample keeps its own class
    ]
    assert float(loss(logits, target)) == pytest.approx(sum(expected) / 3, rel=1e-6)
    logits.requires_grad_(True)
    loss(logits, target).backward()
    assert logits.grad[0, 2] == 0 and logits.grad[1, 2] == 0  # no negative gradient onto the rare class
    loss.eval()
    logits = logits.detach()
    assert float(loss(logits, target)) == pytest.approx(sum(per_sample_ce(logits, target)) / 3)


def test_inverse_view_closed_form_update() -> None:
    loss = build("inverse_view", COUNTS, alpha=0.5, momentum=0.9)
    first = loss(LOGITS, TARGET)
    assert float(first) == pytest.approx(sum(CE) / 3, rel=1e-9)  # weights start at one
    # class means of this batch: L0 = CE[0], L1 = (CE[1] + CE[2]) / 2 (first batch: EMA = batch mean)
    l0, l1 = CE[0], (CE[1] + CE[2]) / 2
    mean = (l0 + l1) / 2
    w = [(mean * l0 + 0.5) / (l0**2 + 0.5), (mean * l1 + 0.5) / (l1**2 + 0.5)]
    w = [v / (sum(w) / 2) for v in w]
    assert loss.class_weight.tolist() == pytest.approx(w, rel=1e-9)
    assert loss.imbalance_coefficient == pytest.approx(max(l0, l1) / min(l0, l1))
    # the next batch is weighted by those weights; evaluation mode leaves the state alone
    second = loss(LOGITS, TARGET)
    expected = sum(w[int(y)] * loss_i for y, loss_i in zip(TARGET, CE, strict=True)) / 3
    assert float(second) == pytest.approx(expected, rel=1e-9)
    loss.eval()
    state = loss.class_weight.clone()
    loss(LOGITS, TARGET)
    assert torch.equal(state, loss.class_weight)


def test_weighted_ce_with_explicit_class_weights() -> None:
    loss = build("weighted_ce", COUNTS, weights=[1, 8.9])  # a control at any measured ratio
    assert loss.realised_class_weights() == pytest.approx([1.0, 8.9])
    expected = (torch.tensor([1.0, 8.9, 8.9], dtype=torch.float64) * torch.tensor(CE)).mean()
    assert float(loss(LOGITS, TARGET)) == pytest.approx(float(expected), rel=1e-6)
    for bad in (
        [1.0, 2.0, 3.0],
        [1.0, -2.0],
        [1.0, 0.0],
        [math.nan, 1.0],
        [1.0, math.inf],
        "1,2",
        [1.0, "x"],
    ):
        with pytest.raises(ConfigError, match="weights"):
            build("weighted_ce", COUNTS, weights=bad)
    with pytest.raises(ConfigError, match="weights"):
        build("weighted_ce", COUNTS, weights=[1.0, 2.0], scheme="inverse")


@pytest.mark.parametrize(
    ("name", "params", "kind"),
    [
        ("ce", {}, None),
        ("weighted_ce", {}, "fixed"),
        ("class_balanced", {}, "fixed"),
        ("focal", {"alpha": None}, "fixed"),
        ("ldam", {}, "fixed"),
        ("inverse_view", {}, "tracked"),
        ("ot_reweight", {}, "tracked"),
    ],
)
def test_realised_class_weights(name: str, params: dict, kind: str | None) -> None:
    loss = build(name, COUNTS, **params)
    if kind is None:
        assert loss.realised_class_weights() is None
        return
    if kind == "fixed":
        assert len(loss.realised_class_weights()) == len(COUNTS)
        return
    assert loss.realised_class_weights() is None  # nothing seen yet
    for _ in range(2):
        loss(LOGITS.clone().requires_grad_(True), TARGET)
    realised = loss.realised_class_weights()
    assert len(realised) == len(COUNTS)
    present = set(TARGET.tolist())
    assert all(math.isfinite(v) and v > 0 for c, v in enumerate(realised) if c in present)
