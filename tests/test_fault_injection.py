"""Fault injection: real `matcard download` / `matcard featurize` processes are SIGKILLed mid-work,
rerun, and must end exactly where an uninterrupted run ends (same bytes, same arrays, nothing stale).
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from matcard.datasets import get_spec
from matcard.fileio import sha256_file

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


class ThrottledMirror:
    """A real loopback HTTP mirror of a folder that honours ``Range`` and sends ``rate`` bytes per
    second, so a kill lands mid-transfer. ``ranges`` records the Range header of every request."""

    def __init__(self, root: Path, rate: int) -> None:
        self.ranges: list[str | None] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                path = root / self.path.lstrip("/")
                header = self.headers.get("Range")
                owner.ranges.append(header)
                data = path.read_bytes()
                start = int(header[6:].split("-")[0]) if header else 0
                self.send_response(206 if header else 200)
                if header:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.send_header("Connection", "close")
                self.end_headers()
                block = rate // 20
                try:
                    for offset in range(start, len(data), block):
                        self.wfile.write(data[offset : offset + block])
                        time.sleep(0.05)
                except OSError:  # the client was killed
                    pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def throttled_mirror(shared_data: Path) -> Iterator[ThrottledMirror]:
    mirror = ThrottledMirror(shared_data, rate=4 << 20)  # perov5 (7.3 MB) takes about 2 s
    yield mirror
    mirror.close()


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as handle:
        return subprocess.Popen(
            [sys.executable, str(REPO / "cli.py"), *args], env=env, stdout=handle, stderr=handle
        )


def _kill_when(process: subprocess.Popen[bytes], condition: Callable[[], bool], log: Path) -> None:
    """SIGKILL ``process`` (by its pid) as soon as ``condition()`` holds; it must not finish first."""
    deadline = time.monotonic() + 120
    while not condition():
        assert process.poll() is None, f"finished before the kill point: {log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, "kill point never reached"
        time.sleep(0.002)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def test_download_killed_mid_transfer_resumes_to_identical_files(
    throttled_mirror: ThrottledMirror, tmp_path: Path
) -> None:
    spec = get_spec("perov5")
    val, test = (tmp_path / "cache" / f.relative_path for f in spec.files)
    env = {**os.environ, "MATCARD_DATA_DIR": str(tmp_path / "data")}
    args = ["download", "perov5", "--dest", str(tmp_path / "cache"), "--mirror", throttled_mirror.url]
    log = tmp_path / "download.log"
    val_part, test_part = (p.with_name(p.name + ".part") for p in (val, test))
    kill_points = [  # a third of val, two thirds of val, half of test (val complete by then)
        lambda: _size(val_part) > spec.files[0].size // 3,
        lambda: _size(val_part) > 2 * spec.files[0].size // 3,
        lambda: _size(test_part) > spec.files[1].size // 2,
    ]
    for point in kill_points:
        _kill_when(_start(args, env, log), point, log)
        finished = [p for p in (val, test) if p.exists()]
        assert all(sha256_file(p) == f.sha256 for p, f in zip(finished, spec.files, strict=False))
        assert _size(val_part) <= spec.files[0].size and _size(test_part) <= spec.files[1].size
    assert val.exists() and not test.exists()  # the last kill hit test.csv, after val.csv was placed
    done = subprocess.run(
        [sys.executable, str(REPO / "cli.py"), *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "1 downloaded, 1 already cached" in done.stdout  # the download summary is a result
    for path, remote in zip((val, test), spec.files, strict=True):
        assert sha256_file(path) == remote.sha256  # identical to an uninterrupted download
    assert sorted(p.name for p in (tmp_path / "cache").rglob("*") if p.is_file()) == ["test.csv", "val.csv"]
    resumed = [r for r in throttled_mirror.ranges if r]
    assert len(resumed) >= 2, throttled_mirror.ranges  # the kills were resumed, not restarted


def _store_arrays(path: Path) -> tuple[dict, list[dict[str, np.ndarray]]]:
    from matcard.featurize import FeatureStore

    store = FeatureStore.read(path)
    assert store.complete and not store.verify()
    manifest = store.to_manifest()
    for shard in manifest["shards"]:
        del shard["sha256"], shard["bytes"]  # zip timestamps inside .npz differ between runs
    manifest.pop("seconds")
    return manifest, [store.load_shard(i) for i in sorted(store.shards)]


def test_featurize_killed_between_and_during_shards_resumes_to_identical_store(
    shared_data: Path, tmp_path: Path
) -> None:
    source = shared_data / "alignn_sample_poscar"  # 70 structures, 35 shards of 2
    env = {**os.environ, "MATCARD_DATA_DIR": str(tmp_path / "data")}

    def args(out: Path) -> list[str]:
        return ["featurize", str(source), "--jobs", "1", "--shard-size", "2", "--out", str(out), "--json"]

    def shards_listed(out: Path) -> int:
        try:
            return len(json.loads((out / "manifest.json").read_text())["shards"])
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            return 0

    reference, killed = tmp_path / "reference", tmp_path / "killed"
    # the uninterrupted run, in this process (the CLI is a thin shell over these two calls)
    from matcard.datasets import load_dataset
    from matcard.featurize import featurize_dataset

    dataset = load_dataset(source, progress=False, data_dir=tmp_path / "data")
    featurize_dataset(dataset, "graph", out=reference, jobs=1, shard_size=2, progress=False)
    log = tmp_path / "featurize.log"
    for minimum in (1, 4, 12):  # killed after at least 1, then 4, then 12 shards were committed
        _kill_when(_start(args(killed), env, log), lambda m=minimum: shards_listed(killed) >= m, log)
        listed = shards_listed(killed)
        assert 0 < listed < 35
    resumed = subprocess.run(
        [sys.executable, str(REPO / "cli.py"), *args(killed)], env=env, capture_output=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    summary = json.loads(resumed.stdout)
    assert summary["count"] == 70 and summary["failures"] == 0
    ref_manifest, ref_shards = _store_arrays(reference)
    got_manifest, got_shards = _store_arrays(killed)
    ref_manifest.pop("path", None), got_manifest.pop("path", None)
    assert got_manifest == ref_manifest
    for ref, got in zip(ref_shards, got_shards, strict=True):
        assert ref.keys() == got.keys()
        for name in ref:
            np.testing.assert_array_equal(ref[name], got[name], err_msg=name)
    ids = [str(i) for shard in got_shards for i in shard["ids"]]
    assert len(ids) == len(set(ids)) == 70  # nothing duplicated, nothing missing
    files = sorted(p.name for p in killed.iterdir())
    assert files == sorted([".lock", "manifest.json", *(f"shard-{i:05d}.npz" for i in range(35))])
