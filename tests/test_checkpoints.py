"""matcard.checkpoints: plain-data loading (a crafted pickle is refused, never run), atomic writes,
and the RNG / loss state that makes a resumed epoch draw what an uninterrupted one draws."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from matcard import losses
from matcard.checkpoints import (
    capture_rng,
    checked_resume_checkpoints,
    checkpoint_io_class,
    load_checkpoint,
    restore_resume_state,
    restore_rng,
    resume_state,
)
from matcard.errors import MatcardError


class Payload:
    """Unpickling this creates ``marker``: what a malicious checkpoint would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.marker, "w"))


def write_payload(path, marker) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "epoch": 3, "evil": Payload(str(marker))}, path)


def test_a_crafted_checkpoint_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "checkpoints" / "best.ckpt"
    write_payload(path, marker)
    with pytest.raises(MatcardError, match=r"refusing to load .*best\.ckpt"):
        load_checkpoint(path)
    # Lightning's own loading path (trainer.fit(ckpt_path=...)) goes through the same plugin
    with pytest.raises(MatcardError, match="refusing"):
        checkpoint_io_class()().load_checkpoint(path, weights_only=False)
    with pytest.raises(MatcardError, match="refusing"):
        checked_resume_checkpoints(path.parent)
    assert not marker.exists()


def test_plain_checkpoints_round_trip_atomically(tmp_path):
    io = checkpoint_io_class()()
    extra = resume_state(torch.nn.Module(), None)
    state = {"state_dict": {"w": torch.arange(3.0)}, "epoch": 1, "matcard": extra}
    io.save_checkpoint(state, tmp_path / "last.ckpt")
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary left behind
    loaded = load_checkpoint(tmp_path / "last.ckpt")
    assert torch.equal(loaded["state_dict"]["w"], torch.arange(3.0)) and loaded["epoch"] == 1
    assert checked_resume_checkpoints(tmp_path) == tmp_path / "last.ckpt"
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(MatcardError, match=r"junk\.ckpt"):
        checked_resume_checkpoints(tmp_path)


def test_restored_rng_draws_the_same_numbers():
    state = capture_rng()
    expected = (random.random(), np.random.rand(), torch.rand(3), torch.randperm(10))
    random.random(), np.random.rand(), torch.rand(5)  # the state moves on
    restore_rng(state)
    again = (random.random(), np.random.rand(), torch.rand(3), torch.randperm(10))
    assert expected[:2] == again[:2]
    assert torch.equal(expected[2], again[2]) and torch.equal(expected[3], again[3])


def test_resume_state_survives_weights_only_and_restores_loss_and_sampler(tmp_path):
    loss = losses.build("ot_reweight", [10, 5])
    loss.fixed_meta = True
    sampler = losses.ClassBalancedSampler([0, 0, 1], seed=1)
    list(sampler), list(sampler)  # two epochs drawn
    torch.save({"state_dict": {}, "matcard": resume_state(loss, sampler)}, tmp_path / "c.ckpt")
    state = load_checkpoint(tmp_path / "c.ckpt")["matcard"]
    fresh_loss = losses.build("ot_reweight", [10, 5])
    fresh_sampler = losses.ClassBalancedSampler([0, 0, 1], seed=1)
    restore_resume_state(state, fresh_loss, fresh_sampler)
    assert fresh_loss.fixed_meta is True and fresh_sampler.epoch == 2
    assert list(fresh_sampler) == list(sampler)
