"""`matcard datasets`, `matcard download`, `matcard inspect`: the issue's acceptance commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from matcard.datasets import REGISTRY

runner = CliRunner()
REPO = Path(__file__).resolve().parent.parent


def _json(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_datasets_lists_the_registry(session_data_dir: Path) -> None:
    rows = json.loads(runner.invoke(app, ["datasets", "--json"]).stdout)
    assert [r["name"] for r in rows] == list(REGISTRY)
    by_name = {r["name"]: r for r in rows}
    assert by_name["aflow-prototypes"]["cached"] == "embedded"
    assert by_name["materials-project"]["cached"] == "live"
    assert by_name["mp20-biternary"]["files"][0]["sha256"] == REGISTRY["mp20-biternary"].files[0].sha256
    human = runner.invoke(app, ["datasets"])
    assert human.exit_code == 0
    assert "mp20-biternary" in human.output and "glass-tg" in human.output


@pytest.mark.slow
def test_mp20_download_file_mirror_then_inspect(
    mp20_dataset, file_mirror: str, session_data_dir: Path
) -> None:
    # mp20_dataset has parsed the data into this session's cache, so inspect reads the Parquet cache.
    download = runner.invoke(app, ["download", "mp20-biternary", "--mirror", file_mirror])
    assert download.exit_code == 0, download.output
    assert (session_data_dir / "mp20_biternary" / "val.csv.gz").is_file()
    summary = _json(runner.invoke(app, ["inspect", "mp20-biternary", "--task", "crystal_system", "--json"]))
    assert summary["n_structures"] == 14258 and summary["n_failed"] == 0
    assert summary["class_counts"] == {
        "triclinic": 391,
        "monoclinic": 1733,
        "orthorhombic": 2991,
        "tetragonal": 2509,
        "trigonal": 1470,
        "hexagonal": 1823,
        "cubic": 3341,
    }
    assert summary["imbalance_ratio"] == pytest.approx(3341 / 391, rel=1e-3)


def test_download_over_http_and_corrupted_file(shared_data: Path, tmp_path: Path, http_mirror: str) -> None:
    from tests.conftest import serve_directory

    dest = tmp_path / "cache"
    ok = runner.invoke(app, ["download", "perov5", "--dest", str(dest), "--mirror", http_mirror])
    assert ok.exit_code == 0, ok.output
    assert sorted(p.name for p in (dest / "perov5").iterdir()) == ["test.csv", "val.csv"]

    served = tmp_path / "served" / "perov5"
    served.mkdir(parents=True)
    for name in ("val.csv", "test.csv"):
        data = bytearray((shared_data / "perov5" / name).read_bytes())
        if name == "val.csv":
            data[1000] = (data[1000] + 1) % 256  # one byte changed
        (served / name).write_bytes(bytes(data))
    server, url = serve_directory(tmp_path / "served")
    try:
        bad_dest = tmp_path / "bad-cache"
        bad = runner.invoke(app, ["download", "perov5", "--dest", str(bad_dest), "--mirror", url])
    finally:
        server.shutdown()
        server.server_close()
    assert bad.exit_code == 1
    assert "checksum" in bad.output and "val.csv" in bad.output
    leftovers = [p for p in bad_dest.rglob("*") if p.is_file()] if bad_dest.exists() else []
    assert leftovers == []


def test_inspect_messy_cifs_within_a_minute(shared_data: Path) -> None:
    started = time.monotonic()
    summary = _json(runner.invoke(app, ["inspect", str(shared_data / "messy_cifs"), "--json"]))
    assert time.monotonic() - started < 60
    files = {p.name for p in (shared_data / "messy_cifs").iterdir()}
    failed = {Path(f["source"].split("#")[0]).name for f in summary["failures"]}
    skipped = {Path(s["source"]).name for s in summary["skipped"]}
    assert all(f["reason"] for f in summary["failures"])
    assert summary["n_failed"] == len(summary["failures"])
    # every file is read (counted) or listed with a reason
    assert summary["n_structures"] > 0
    assert "bad_superflat_inf_loop.cif" in failed and "SOURCES.tsv" in skipped
    unlisted = files - failed - skipped
    from matcard.structures import read_structures

    read_ids = {
        Path(r.source.split("#")[0]).name for r in read_structures(shared_data / "messy_cifs").records
    }
    assert unlisted <= read_ids


def test_inspect_cgcnn_and_alignn_folders(shared_data: Path) -> None:
    cgcnn = runner.invoke(app, ["inspect", str(shared_data / "cgcnn_sample_classification")])
    assert cgcnn.exit_code == 0, cgcnn.output
    assert "50.0 %" in cgcnn.output
    summary = _json(
        runner.invoke(app, ["inspect", str(shared_data / "cgcnn_sample_classification"), "--json"])
    )
    assert summary["class_counts"] == {"0": 5, "1": 5} and summary["n_structures"] == 10
    alignn = _json(runner.invoke(app, ["inspect", str(shared_data / "alignn_sample_poscar"), "--json"]))
    assert alignn["n_structures"] == 70 and alignn["n_failed"] == 0
    assert [s["reason"] for s in alignn["skipped"]] == ["label file (id_prop.csv)"]


def test_inspect_aflow_offline_in_a_real_subprocess(tmp_path: Path) -> None:
    env = {**os.environ, "MATCARD_MIRROR": "http://127.0.0.1:9", "MATCARD_DATA_DIR": str(tmp_path)}
    command = [
        sys.executable,
        str(REPO / "cli.py"),
        "inspect",
        "aflow-prototypes",
        "--task",
        "crystal_system",
    ]
    done = subprocess.run(
        [*command, "--json"], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)  # nothing but the JSON object on stdout
    assert summary["n_structures"] == 288
    assert summary["class_counts"]["cubic"] == 66 and summary["class_counts"]["triclinic"] == 4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["inspect", "no-such-dataset"], "unknown dataset"),
        (["inspect", "aflow-prototypes", "--task", "nonsense"], "unknown task"),
        (["inspect", "aflow-prototypes", "--disorder", "average"], "--disorder"),
        (["download"], "give a dataset name"),
        (["download", "mp-20"], "unknown dataset"),
        (["download", "perov5", "--mirror", "ftp://x"], "mirror must be"),
    ],
)
def test_bad_usage_exits_2(args: list[str], message: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_missing_mirror_file_exits_1(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["download", "perov5", "--dest", str(tmp_path), "--mirror", tmp_path.as_uri()]
    )
    assert result.exit_code == 1
    assert "not found on the mirror" in result.output


def test_nothing_readable_exits_1_after_reporting(shared_data: Path) -> None:
    bad = shared_data / "messy_cifs" / "bad_superflat_inf_loop.cif"
    result = runner.invoke(app, ["inspect", str(bad), "--json"])
    assert result.exit_code == 1
    summary = json.loads(result.stdout)
    assert summary["n_structures"] == 0 and summary["n_failed"] == 1
    human = runner.invoke(app, ["inspect", str(bad)])
    assert human.exit_code == 1 and "no structures could be read" in human.output


def test_download_says_what_it_fetched_and_what_was_already_cached(file_mirror: str, tmp_path: Path) -> None:
    args = ["download", "perov5", "--dest", str(tmp_path), "--mirror", file_mirror]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "2 downloaded, 0 already cached" in first.output
    assert "already cached (verified)" not in first.output
    (tmp_path / "perov5" / "test.csv").unlink()
    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    assert "1 downloaded, 1 already cached" in second.output
    assert "already cached (verified)" in second.output
