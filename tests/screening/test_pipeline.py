"""screen(): streaming predictions, errors, ranking, resume, backends, ASE write-back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from matcard.errors import ConfigError, UsageError
from matcard.screening import screen
from matcard.screening.pipeline import state_dir_for

CLASSES = ["triclinic", "monoclinic", "orthorhombic", "tetragonal", "trigonal", "hexagonal", "cubic"]
PROBS = [f"prob_{c}" for c in CLASSES]


def _check_rows(frame: pd.DataFrame) -> None:
    """Every row is a well-formed prediction."""
    expected = ["id", "source", "predicted_class", "argmax_class", *PROBS, "max_prob", "flags"]
    assert list(frame.columns) == expected
    probs = frame[PROBS].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (frame["predicted_class"].to_numpy() == np.array(CLASSES)[probs.argmax(axis=1)]).all()
    np.testing.assert_allclose(frame["max_prob"].to_numpy(), probs.max(axis=1))


def _same_predictions(a: pd.DataFrame, b: pd.DataFrame) -> None:
    a = a.sort_values(["id", "source"]).reset_index(drop=True)
    b = b.sort_values(["id", "source"]).reset_index(drop=True)
    assert a["id"].tolist() == b["id"].tolist()
    assert a["predicted_class"].tolist() == b["predicted_class"].tolist()
    np.testing.assert_allclose(a[PROBS].to_numpy(), b[PROBS].to_numpy(), rtol=0, atol=1e-6)
    assert a["flags"].fillna("").tolist() == b["flags"].fillna("").tolist()


def test_folder_of_poscars_gives_one_row_each(seeded_bundle: Path, shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "s.csv"
    result = screen(seeded_bundle, shared_data / "alignn_sample_poscar", out, progress=False)
    frame = pd.read_csv(out, keep_default_na=False)
    assert len(frame) == 70 == result.n_predicted
    assert frame["id"].is_unique
    assert frame["id"].str.startswith("POSCAR-JVASP-").all()  # id_prop.csv is a label file, not a row
    _check_rows(frame)
    errors = pd.read_csv(tmp_path / "s.errors.csv")
    assert list(errors.columns) == ["source", "reason", "detail"] and len(errors) == 0
    assert sum(result.class_counts.values()) == 70
    assert not state_dir_for(out).exists()  # parts are removed after a successful merge


def test_messy_cifs_never_crash_and_every_file_is_accounted_for(
    seeded_bundle: Path, shared_data: Path, tmp_path: Path
) -> None:
    folder = shared_data / "messy_cifs"
    out = tmp_path / "messy.parquet"
    result = screen(seeded_bundle, folder, out, progress=False)
    frame = pd.read_parquet(out)
    errors = pd.read_csv(tmp_path / "messy.errors.csv", keep_default_na=False)
    _check_rows(frame)
    assert (errors["reason"].str.len() > 0).all()
    settled = {s.split("#")[0] for s in [*frame["source"], *errors["source"]]}
    structure_files = {str(p) for p in folder.iterdir() if p.suffix in {".cif", ".mcif"}}
    assert structure_files <= settled  # each file predicted (maybe per block) or listed with a reason
    assert result.n_failed == len(errors) > 0
    assert "disordered" in set(errors["reason"])
    # flags: large cells are outside the (seeded) training range; unseen elements are named
    flags = dict(zip(frame["id"], frame["flags"], strict=True))
    assert "n_atoms_out_of_range:616" in flags["P24Ru4H252C296S24N16"]
    assert "unseen_element:Ru" in flags["P24Ru4H252C296S24N16"]
    assert "cif_warning:formula_mismatch" in flags["P24Ru4H252C296S24N16"]  # reader flags pass through
    flagged_rows = frame["flags"].str.len() > 0
    assert result.n_flagged == int(flagged_rows.sum())
    assert result.flag_counts["unseen_element"] == int(frame["flags"].str.contains("unseen_element:").sum())


def test_disordered_structures_kept_are_flagged(
    seeded_bundle: Path, shared_data: Path, tmp_path: Path
) -> None:
    result = screen(
        seeded_bundle, shared_data / "messy_cifs" / "Cu7Te5.cif", None, disorder="keep", progress=False
    )
    assert len(result.predictions) == 1
    assert "disordered" in result.predictions["flags"].iloc[0].split(";")


def test_in_memory_result_and_ranked_shortlist(
    seeded_bundle: Path, mp20_subset: Path, tmp_path: Path
) -> None:
    result = screen(
        seeded_bundle, mp20_subset, None, target_class="cubic", min_prob=0.1, top_k=7, progress=False
    )
    frame = result.predictions
    assert len(frame) == 400 and frame["id"].is_unique
    assert frame["id"].tolist() == pd.read_csv(mp20_subset)["material_id"].tolist()  # input order kept
    _check_rows(frame)
    expected = frame[frame["prob_cubic"] >= 0.1].sort_values(["prob_cubic", "id"], ascending=[False, True])
    shortlist = result.shortlist
    assert shortlist["id"].tolist() == expected["id"].head(7).tolist()
    assert shortlist["rank"].tolist() == list(range(1, len(shortlist) + 1))

    out = tmp_path / "ranked.parquet"
    on_disk = screen(seeded_bundle, mp20_subset, out, target_class="cubic", top_k=3, progress=False)
    assert on_disk.shortlist_path == tmp_path / "ranked.shortlist.parquet"
    assert (
        pd.read_parquet(on_disk.shortlist_path)["id"].tolist()
        == frame.sort_values(["prob_cubic", "id"], ascending=[False, True])["id"].head(3).tolist()
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"out": "x.txt"}, "--out"),
        ({"target_class": "rare"}, "--class"),
        ({"min_prob": 1.5, "target_class": "cubic"}, "--min-prob"),
        ({"top_k": 3}, "--class"),
        ({"batch_size": 0}, "--batch-size"),
        ({"workers": 0}, "--workers"),
        ({"disorder": "drop"}, "--disorder"),
        ({"resume": True, "overwrite": True}, "--resume"),
    ],
)
def test_bad_options_fail_fast(
    seeded_bundle: Path, shared_data: Path, tmp_path: Path, kwargs: dict, match: str
) -> None:
    out = tmp_path / kwargs.pop("out", "s.csv")
    with pytest.raises(UsageError, match=match):
        screen(seeded_bundle, shared_data / "alignn_sample_poscar", out, progress=False, **kwargs)
    assert not out.exists()


def test_missing_input_is_a_usage_error(seeded_bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no-such-thing"):
        screen(seeded_bundle, tmp_path / "no-such-thing", tmp_path / "s.csv", progress=False)


def test_resume_after_an_interrupted_run(seeded_bundle: Path, mp20_subset: Path, tmp_path: Path) -> None:
    """State as a kill leaves it (a part the manifest never recorded, a temp file, a stale merge
    temp) resumes to exactly one row per structure with the uninterrupted predictions."""
    out = tmp_path / "s.parquet"
    screen(seeded_bundle, mp20_subset, out, shard_atoms=300, keep_parts=True, progress=False)
    reference = pd.read_parquet(out)
    parts = state_dir_for(out)
    manifest = json.loads((parts / "manifest.json").read_text())
    assert len(manifest["shards"]) > 5
    manifest["shards"] = manifest["shards"][: len(manifest["shards"]) // 2]  # the kill came midway
    (parts / "manifest.json").write_text(json.dumps(manifest))
    (parts / ".shard-000099.parquet.x1.tmp").write_bytes(b"partial")
    out.unlink()
    (tmp_path / ".s.parquet.abc.tmp").write_bytes(b"partial merge")

    with pytest.raises(UsageError, match="--resume"):
        screen(seeded_bundle, mp20_subset, out, shard_atoms=300, progress=False)
    resumed = screen(seeded_bundle, mp20_subset, out, shard_atoms=300, resume=True, progress=False)
    assert resumed.n_resumed > 0 and resumed.n_processed > 0
    assert resumed.n_resumed + resumed.n_processed == 400
    frame = pd.read_parquet(out)
    assert len(frame) == 400 and frame["id"].is_unique
    _same_predictions(frame, reference)
    assert not list(tmp_path.glob(".*.tmp"))
    assert not parts.exists()


def _replace_weights(directory: Path) -> None:
    """Another model written to the same bundle path (same settings, different weights)."""
    import torch

    from matcard.bundle import load_model, save_bundle

    old = load_model(directory)
    with torch.no_grad():
        for parameter in old.model.parameters():
            parameter.add_(0.5)
    info = old.info
    save_bundle(
        directory,
        old.model,
        model_name=info["model"]["name"],
        model_params=info["model"]["params"],
        in_dim=info["model"]["in_dim"],
        featurizer_config=info["featurizer"],
        class_names=info["class_names"],
        class_counts=info["class_counts"],
        training_stats=info["training_stats"],
    )


def _interrupt(out: Path) -> None:
    """Leave the state as a kill midway would: only the first half of the shards committed."""
    manifest_path = state_dir_for(out) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert len(manifest["shards"]) > 2
    manifest["shards"] = manifest["shards"][: len(manifest["shards"]) // 2]
    manifest_path.write_text(json.dumps(manifest))
    out.unlink()


def test_resume_refuses_a_model_replaced_at_the_same_path(
    seeded_bundle: Path, shared_data: Path, tmp_path: Path
) -> None:
    model = tmp_path / "model"
    shutil.copytree(seeded_bundle, model)
    folder = shared_data / "alignn_sample_poscar"
    out = tmp_path / "s.csv"
    screen(model, folder, out, shard_atoms=200, keep_parts=True, progress=False)
    _interrupt(out)
    same_content = tmp_path / "same-model-elsewhere"
    shutil.copytree(model, same_content)
    _replace_weights(model)
    with pytest.raises(ConfigError, match="model's content differs") as refused:
        screen(model, folder, out, shard_atoms=200, resume=True, progress=False)
    assert refused.value.exit_code == 2
    # the identical model at another path is the same model: resuming with it is fine
    resumed = screen(same_content, folder, out, shard_atoms=200, resume=True, progress=False)
    assert resumed.n_resumed > 0 and resumed.n_resumed + resumed.n_processed == 70


def test_resume_refuses_changed_inputs_naming_them(
    seeded_bundle: Path, shared_data: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "inputs"
    shutil.copytree(shared_data / "alignn_sample_poscar", folder)  # copy2: sizes and mtimes kept
    out = folder / "s.parquet"
    screen(seeded_bundle, folder, out, shard_atoms=200, keep_parts=True, progress=False)
    _interrupt(out)
    poscars = sorted(folder.glob("POSCAR-*"))
    for path in poscars[:3]:
        path.unlink()
    for index, path in enumerate(poscars[3:5]):
        shutil.copy(path, folder / f"NEW-{index}.vasp")
    with open(poscars[10], "a") as fh:
        fh.write("\n")
    with pytest.raises(ConfigError, match="inputs changed") as refused:
        screen(seeded_bundle, folder, out, shard_atoms=200, resume=True, progress=False)
    message = str(refused.value)
    assert "2 file(s) added" in message and "NEW-0.vasp" in message
    assert "3 file(s) removed" in message and poscars[0].name in message
    assert "1 file(s) modified" in message and poscars[10].name in message
    # put back as it was (copy2 keeps size and mtime): the resume goes on; the screen's own
    # output and state inside the input folder are not inputs
    for path in folder.glob("NEW-*"):
        path.unlink()
    for path in [*poscars[:3], poscars[10]]:
        shutil.copy2(shared_data / "alignn_sample_poscar" / path.name, path)
    resumed = screen(seeded_bundle, folder, out, shard_atoms=200, resume=True, progress=False)
    assert resumed.n_resumed > 0 and resumed.n_resumed + resumed.n_processed == 70


@pytest.mark.slow
def test_local_processes_match_in_process(seeded_bundle: Path, mp20_subset: Path, tmp_path: Path) -> None:
    local = screen(seeded_bundle, mp20_subset, tmp_path / "a.parquet", shard_atoms=500, progress=False)
    pooled = screen(
        seeded_bundle, mp20_subset, tmp_path / "b.parquet", workers=2, shard_atoms=500, progress=False
    )
    assert pooled.backend == "2 local processes"
    a, b = pd.read_parquet(local.out), pd.read_parquet(pooled.out)
    assert a["id"].tolist() == b["id"].tolist()  # same input order whatever finished first
    _same_predictions(a, b)


@pytest.mark.slow
def test_dask_local_cluster_matches_local(seeded_bundle: Path, mp20_subset: Path, tmp_path: Path) -> None:
    from distributed import LocalCluster

    local = screen(seeded_bundle, mp20_subset, tmp_path / "local.parquet", shard_atoms=500, progress=False)
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        distributed = screen(
            seeded_bundle,
            mp20_subset,
            tmp_path / "dask.parquet",
            scheduler=cluster.scheduler_address,
            shard_atoms=500,
            progress=False,
        )
        workers_used = len(cluster.scheduler_info["workers"])
    assert distributed.backend.startswith("Dask at tcp://127.0.0.1")
    assert workers_used == 2
    a, b = pd.read_parquet(local.out), pd.read_parquet(distributed.out)
    assert a["id"].tolist() == b["id"].tolist()
    _same_predictions(a, b)


def test_ase_database_write_back_is_idempotent(
    seeded_bundle: Path, shared_data: Path, tmp_path: Path
) -> None:
    import ase.db

    db_path = tmp_path / "predictions.db"
    folder = shared_data / "alignn_sample_poscar"
    result = screen(seeded_bundle, folder, tmp_path / "s.csv", ase_db=db_path, progress=False)
    frame = pd.read_csv(result.out)
    with ase.db.connect(str(db_path)) as db:
        rows = list(db.select())
    assert len(rows) == 70
    by_id = {row.key_value_pairs["matcard_id"]: row for row in rows}
    first = frame.iloc[0]
    row = by_id[first["id"]]
    assert row.matcard_class == first["predicted_class"]
    assert row.matcard_prob_cubic == pytest.approx(first["prob_cubic"])
    assert len(row.toatoms()) > 0

    screen(seeded_bundle, folder, tmp_path / "s.csv", ase_db=db_path, progress=False)  # again: updates
    with ase.db.connect(str(db_path)) as db:
        assert db.count() == 70


def test_screen_an_ase_database_and_write_back_into_it(
    seeded_bundle: Path, shared_data: Path, tmp_path: Path
) -> None:
    import ase.db
    from pymatgen.io.ase import AseAtomsAdaptor

    from matcard.structures import read_structures

    db_path = tmp_path / "candidates.db"
    records = read_structures(shared_data / "alignn_sample_poscar").records[:5]
    with ase.db.connect(str(db_path)) as db:
        for record in records:
            db.write(AseAtomsAdaptor.get_atoms(record.structure), name=record.id)
    result = screen(seeded_bundle, db_path, tmp_path / "s.parquet", ase_db=db_path, progress=False)
    assert result.n_predicted == 5
    with ase.db.connect(str(db_path)) as db:
        rows = list(db.select())
    assert len(rows) == 5  # updated in place, no new rows
    assert all("matcard_class" in row.key_value_pairs and "name" in row.key_value_pairs for row in rows)


def test_in_memory_structures_and_isolated_atoms(seeded_bundle: Path) -> None:
    from pymatgen.core import Lattice, Structure

    dense = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    sparse = Structure(Lattice.cubic(12.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])  # 10.4 Å apart
    result = screen(seeded_bundle, [dense, sparse], None, progress=False)
    frame = result.predictions
    assert len(frame) == 2 and result.n_failed == 0
    dense_flags, sparse_flags = (flags.split(";") for flags in frame["flags"])
    assert "isolated_atom" not in dense_flags
    assert "isolated_atom" in sparse_flags  # no neighbour within the 8 Å cutoff
    assert any(flag.startswith("cutoff_grown:8") for flag in sparse_flags)
    assert any(flag.startswith("volume_per_atom_out_of_range") for flag in sparse_flags)
    assert not any(flag.startswith("volume_per_atom") for flag in dense_flags)


def test_featurize_failures_are_plain_reasons_with_the_raw_detail(seeded_bundle: Path) -> None:
    from pymatgen.core import Lattice, Structure

    fine = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    overlapping = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0, 0, 0.001]])
    result = screen(seeded_bundle, [fine, overlapping], None, progress=False)
    assert result.n_predicted == 1 and result.n_failed == 1
    error = result.errors.iloc[0]
    assert error["reason"].startswith("cannot featurize: ") and "apart" in error["reason"]
    assert error["detail"].startswith("FeaturizationError: ")
    assert result.failure_reasons == {error["reason"]: 1}  # the whole reason, colons included


@pytest.mark.slow
def test_a_script_without_a_main_guard_is_told_why_its_workers_died(
    seeded_bundle: Path, mp20_subset: Path, tmp_path: Path
) -> None:
    """Spawned workers import the main module: a script without the guard starts screening again in
    each of them, and they die. The error says so (and the process exits instead of hanging)."""
    import subprocess
    import sys

    script = tmp_path / "unguarded.py"
    script.write_text(
        "from matcard.screening import screen\n"
        f"screen({str(seeded_bundle)!r}, {str(mp20_subset)!r}, {str(tmp_path / 'o.parquet')!r}, "
        "workers=2, shard_atoms=500, progress=False)\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    assert "a screening worker process died: out of memory, or a script" in done.stderr
    assert "without an `if __name__ == \"__main__\":` guard" in done.stderr
