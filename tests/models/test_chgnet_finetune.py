"""Fine-tuning pretrained CHGNet under a matcard loss: forward / backward on real structures."""

from __future__ import annotations

import pytest
import torch

from matcard import losses
from matcard.featurize.chgnet import convert, load_chgnet
from matcard.models.chgnet_finetune import ChgnetFinetune


@pytest.fixture(scope="module")
def crystal_graphs(mp20_structures):
    model = load_chgnet("0.3.0")
    return [convert(model, s) for s in mp20_structures[:6]]


def test_only_the_last_blocks_train_and_the_pretrained_part_gets_a_lower_lr(crystal_graphs):
    torch.manual_seed(0)
    model = ChgnetFinetune(0, 3, train_blocks=1, pretrained_lr_multiplier=0.1)
    shared = load_chgnet("0.3.0")
    assert not any(p.requires_grad for p in shared.parameters())  # the featurizer's copy stays frozen
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    loss_fn = losses.build("weighted_ce", [2, 2, 2])
    logits, embedding = model(crystal_graphs)
    assert logits.shape == (6, 3) and embedding.shape == (6, model.embedding_dim)
    loss = loss_fn(logits, y)
    loss.backward()
    last = model.chgnet.atom_conv_layers[-1]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in last.parameters())
    first = model.chgnet.atom_conv_layers[0]
    assert all(p.grad is None and not p.requires_grad for p in first.parameters())
    assert all(p.grad is None for p in model.chgnet.atom_embedding.parameters())
    groups = model.param_groups(1e-3)
    assert [g["lr"] for g in groups] == [1e-3, pytest.approx(1e-4)]
    optimizer = torch.optim.AdamW(groups)
    before = last.parameters().__next__().detach().clone()
    optimizer.step()
    assert not torch.equal(before, next(last.parameters()))


def test_head_only_fine_tuning_learns_a_real_batch(crystal_graphs):
    torch.manual_seed(0)
    model = ChgnetFinetune(0, 2, train_blocks=0)
    assert len(model.param_groups(1e-2)) == 1  # nothing pretrained is trained
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    optimizer = torch.optim.AdamW(model.param_groups(1e-2))
    first = last = None
    for _ in range(30):
        logits, _ = model(crystal_graphs)
        loss = torch.nn.functional.cross_entropy(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        first = loss.item() if first is None else first
        last = loss.item()
    assert last < 0.5 * first


# --------------------------------------------------------------------------------------------
# end to end: matcard train / bundle / matcard screen with the real CHGNet
# --------------------------------------------------------------------------------------------
TASK = "spacegroup.number>=195"
TINY = [
    "--model", "chgnet_finetune", "--task", TASK, "--seed", "3",
    "--set", "data.limit=80", "--set", "model.params.train_blocks=1", "--set", "trainer.batch_size=16",
    "--set", "optim.schedule=none", "--set", "trainer.threads=1", "--quiet",
]  # fmt: skip


@pytest.fixture(scope="module")
def env(session_data_dir, file_mirror):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MATCARD_DATA_DIR", str(session_data_dir))
        patch.setenv("MATCARD_MIRROR", file_mirror)
        yield


def _train(*args: str) -> None:
    from typer.testing import CliRunner

    from cli import app

    result = CliRunner().invoke(app, ["train", *args])
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def runs(env, tmp_path_factory):
    """(a run trained 1 epoch then resumed to 2, the same run trained 2 epochs straight)."""
    root = tmp_path_factory.mktemp("chgnet_finetune")
    _train("--out", str(root / "resumed"), "--epochs", "1", *TINY)
    _train("--out", str(root / "resumed"), "--epochs", "2", "--resume", "--quiet")
    _train("--out", str(root / "whole"), "--epochs", "2", *TINY)
    return root / "resumed", root / "whole"


def _history(run_dir):
    import pandas as pd

    return pd.read_csv(run_dir / "history.csv").drop(columns="epoch_seconds")


@pytest.mark.slow
def test_cli_training_resumes_exactly_and_reports_what_chgnet_cannot_read(runs):
    import json

    import pandas as pd

    resumed, whole = runs
    pd.testing.assert_frame_equal(_history(resumed), _history(whole))
    assert len(_history(resumed)) == 2
    failures = pd.read_csv(resumed / "failures.csv")
    assert failures.to_dict("records")[0]["id"] == "A_aP4_2_aci"
    assert "Cf not supported by CHGNet" in failures["reason"].iloc[0]
    info = json.loads((resumed / "model" / "bundle.json").read_text())
    assert info["model"] == {
        "name": "chgnet_finetune",
        "in_dim": 0,
        "params": {"train_blocks": 1, "model_version": "0.3.0"},
    }
    assert info["featurizer"] == {"kind": "chgnet_graph", "model_version": "0.3.0", "chgnet_version": "0.4.2"}
    assert info["decision"]["temperature"] > 0  # the post-hoc decision layer was fitted


@pytest.mark.slow
def test_the_bundle_predicts_what_training_recorded(runs, aflow_dataset):
    import numpy as np
    import pandas as pd

    from matcard.bundle import load_model

    run_dir = runs[0]
    table = pd.read_parquet(run_dir / "predictions.parquet")
    test = table[table["split"] == "test"]
    positions = [aflow_dataset.ids.index(i) for i in test["id"]]
    model = load_model(run_dir)
    frame = model.predict([aflow_dataset.structure(p) for p in positions], decision="argmax")
    assert frame["error"].isna().all()
    logits = model.predict_logits_data([model.featurizer(aflow_dataset.structure(p)) for p in positions])
    recorded = test[[f"logit_{name}" for name in model.class_names]].to_numpy()
    np.testing.assert_allclose(logits, recorded, rtol=1e-4, atol=1e-5)
    calibrated = model.decide_logits(recorded, "argmax").proba  # the decision layer's temperature
    probabilities = frame[[f"prob_{name}" for name in model.class_names]].to_numpy()
    np.testing.assert_allclose(probabilities, calibrated, rtol=1e-4, atol=1e-6)
    again = load_model(run_dir).predict([aflow_dataset.structure(p) for p in positions], decision="argmax")
    pd.testing.assert_frame_equal(frame, again)


@pytest.mark.slow
def test_screen_converts_real_cif_files_and_reports_the_ones_chgnet_cannot_use(runs, shared_data, tmp_path):
    import pandas as pd
    from typer.testing import CliRunner

    from cli import app

    cifs = sorted((shared_data / "cgcnn_sample_classification").glob("*.cif"))[:4]
    disordered = shared_data / "messy_cifs" / "srycoo.cif"
    out = tmp_path / "screen.csv"
    result = CliRunner().invoke(
        app,
        ["screen", str(runs[0]), *map(str, cifs), str(disordered), "--out", str(out), "--disorder", "keep"],
    )
    assert result.exit_code == 0, result.output
    predictions = pd.read_csv(out)
    assert sorted(predictions["id"].astype(str)) == sorted(path.stem for path in cifs)
    assert predictions[["prob_negative", "prob_positive"]].sum(axis=1).round(6).eq(1).all()
    errors = pd.read_csv(tmp_path / "screen.errors.csv")
    assert errors["source"].str.endswith("srycoo.cif").all() and len(errors) == 1
    assert "disordered structure (CHGNet needs one species per site)" in errors["reason"].iloc[0]


def _resealed_copy(run_dir, tmp_path, edit):
    """A copy of the bundle edited and re-sealed: consistent checksums, inconsistent content."""
    import json
    import shutil

    from matcard.bundle_schema import seal

    bundle = tmp_path / "model"
    shutil.copytree(run_dir / "model", bundle)
    info = json.loads((bundle / "bundle.json").read_text())
    edit(info)
    (bundle / "bundle.json").write_text(json.dumps(seal(info, bundle)))
    return bundle


@pytest.mark.slow
def test_a_bundle_for_another_checkpoint_or_chgnet_is_refused(runs, tmp_path):
    from matcard.bundle import load_model
    from matcard.errors import BundleError

    def other_checkpoint(info):
        info["featurizer"]["model_version"] = "0.2.0"

    def other_chgnet(info):
        info["featurizer"]["chgnet_version"] = "0.1.0"

    bundle = _resealed_copy(runs[0], tmp_path / "a", other_checkpoint)
    with pytest.raises(BundleError, match=r"model\.params\.model_version.*'0\.3\.0'.*'0\.2\.0'") as error:
        load_model(bundle)
    assert error.value.field == "model.params.model_version"
    bundle = _resealed_copy(runs[0], tmp_path / "b", other_chgnet)
    with pytest.raises(BundleError, match=r"chgnet 0\.1\.0.*chgnet 0\.4\.2 is installed") as error:
        load_model(bundle)
    assert error.value.field == "featurizer.chgnet_version"


def test_bad_settings_fail_before_any_data_work_naming_the_field(env, tmp_path):
    from typer.testing import CliRunner

    from cli import app

    runner = CliRunner()
    base = ["train", "--model", "chgnet_finetune", "--out", str(tmp_path / "run"), "--quiet"]
    result = runner.invoke(app, [*base, "--set", "model.params.model_version=9.9"])
    assert result.exit_code == 2
    assert "model.params" in result.output and "model_version" in result.output and "'9.9'" in result.output
    assert "0.3.0" in result.output  # the checkpoints it does have
    result = runner.invoke(app, [*base, "--set", "featurizer.params.model_version=0.2.0"])
    assert result.exit_code == 2 and "featurizer.params.model_version" in result.output
    result = runner.invoke(app, [*base, "--set", "model.params.train_blocks=9"])
    assert result.exit_code == 2 and "train_blocks must be in 0..4" in " ".join(result.output.split())
    assert not (tmp_path / "run" / "splits").exists()
