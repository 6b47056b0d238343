"""Downloads over real file:// and loopback HTTP mirrors: verification, resume, atomicity."""

from __future__ import annotations

import hashlib
import http.server
import os
import shutil
import threading
import time
import zipfile
from pathlib import Path

import pytest

from matcard.datasets import REGISTRY, download_dataset, fetch, get_spec, is_downloaded, mirror_from_env
from matcard.datasets.download import download_files, download_limit, fetch_remote, file_url
from matcard.datasets.registry import RemoteFile
from matcard.errors import ChecksumError, DownloadError, UsageError
from matcard.fileio import sha256_file

VAL = REGISTRY["mp20-biternary"].files[0]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file())


def test_registry_urls_are_pinned_upstream_and_mirror_replaces_only_the_base() -> None:
    for spec in REGISTRY.values():
        for remote in spec.files:
            assert remote.url.startswith("https://")
            assert len(remote.sha256) == 64
    assert VAL.url.endswith("/data/mp_20_biternary/val.csv.gz")
    assert file_url(VAL, "http://127.0.0.1:1/base") == "http://127.0.0.1:1/base/mp20_biternary/val.csv.gz"
    assert file_url(VAL, None) == VAL.url


def test_mirror_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MATCARD_MIRROR", "http://example.invalid/x/")
    assert mirror_from_env() == "http://example.invalid/x"
    assert mirror_from_env(str(tmp_path)) == tmp_path.resolve().as_uri()
    monkeypatch.delenv("MATCARD_MIRROR")
    assert mirror_from_env() is None
    with pytest.raises(UsageError, match="mirror must be"):
        mirror_from_env("ftp://host/data")


def test_registered_sha256_match_the_real_files(shared_data: Path) -> None:
    for spec in REGISTRY.values():
        for remote in spec.files:
            local = shared_data / remote.folder / remote.name
            assert sha256_file(local) == remote.sha256, remote.relative_path
            assert remote.size is None or local.stat().st_size == remote.size


def test_file_mirror_download(file_mirror: str, tmp_path: Path) -> None:
    paths = download_dataset(get_spec("mp20-biternary"), root=tmp_path, mirror=file_mirror, progress=False)
    assert [p.name for p in paths] == ["val.csv.gz", "test.csv.gz"]
    assert all(
        sha256_file(p) == f.sha256 for p, f in zip(paths, get_spec("mp20-biternary").files, strict=True)
    )
    assert _leftovers(tmp_path) == ["test.csv.gz", "val.csv.gz"]
    assert is_downloaded(get_spec("mp20-biternary"), tmp_path)


def test_http_mirror_download_without_range_support(http_mirror: str, tmp_path: Path) -> None:
    path = fetch_remote(VAL, tmp_path, mirror=http_mirror, progress=False)
    assert sha256_file(path) == VAL.sha256


def test_one_corrupted_byte_fails_with_checksum_and_leaves_nothing(
    shared_data: Path, tmp_path: Path, make_server
) -> None:
    served = tmp_path / "served" / "mp20_biternary"
    served.mkdir(parents=True)
    data = bytearray((shared_data / "mp20_biternary" / "val.csv.gz").read_bytes())
    data[len(data) // 2] ^= 0x01
    (served / "val.csv.gz").write_bytes(bytes(data))
    server = make_server(tmp_path / "served")
    cache = tmp_path / "cache"
    with pytest.raises(ChecksumError) as info:
        fetch_remote(VAL, cache, mirror=server.url, progress=False)
    message = str(info.value)
    assert "checksum" in message and VAL.sha256 in message and "val.csv.gz" in message
    assert hashlib.sha256(bytes(data)).hexdigest() in message
    assert _leftovers(cache) == []


def test_resume_with_range_requests(shared_data: Path, tmp_path: Path, make_server) -> None:
    server = make_server(shared_data, ranges=True)
    cache = tmp_path / "cache"
    part = cache / VAL.folder / (VAL.name + ".part")
    part.parent.mkdir(parents=True)
    original = (shared_data / VAL.relative_path).read_bytes()
    part.write_bytes(original[:500_000])
    path = fetch_remote(VAL, cache, mirror=server.url, progress=False)
    assert sha256_file(path) == VAL.sha256
    assert server.requests == [(f"/{VAL.relative_path}", "bytes=500000-")]
    assert not part.exists()


def test_restart_when_server_ignores_range(shared_data: Path, tmp_path: Path, make_server) -> None:
    server = make_server(shared_data, ranges=False)
    cache = tmp_path / "cache"
    part = cache / VAL.folder / (VAL.name + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"garbage that is not a prefix of the file")
    path = fetch_remote(VAL, cache, mirror=server.url, progress=False)
    assert sha256_file(path) == VAL.sha256  # the 200 answer restarted the file from byte 0


def test_dropped_connection_keeps_part_and_next_run_resumes(
    shared_data: Path, tmp_path: Path, make_server
) -> None:
    cache = tmp_path / "cache"
    flaky = make_server(shared_data, ranges=True, truncate_at=300_000)
    with pytest.raises(DownloadError, match=r"val\.csv\.gz.*run again to resume"):
        fetch_remote(VAL, cache, mirror=flaky.url, progress=False)
    part = cache / VAL.folder / (VAL.name + ".part")
    kept = part.stat().st_size
    assert 0 < kept <= 300_000
    assert not (cache / VAL.relative_path).exists()  # never a half file under the final name
    good = make_server(shared_data, ranges=True)
    path = fetch_remote(VAL, cache, mirror=good.url, progress=False)
    assert sha256_file(path) == VAL.sha256
    assert good.requests[0][1] == f"bytes={kept}-"


def test_missing_file_on_mirror(tmp_path: Path, make_server) -> None:
    server = make_server(tmp_path)
    with pytest.raises(DownloadError, match="404"):
        fetch_remote(VAL, tmp_path / "cache", mirror=server.url, progress=False)
    with pytest.raises(DownloadError, match="not found on the mirror"):
        fetch_remote(VAL, tmp_path / "cache", mirror=tmp_path.as_uri(), progress=False)
    with pytest.raises(DownloadError, match="cannot reach"):
        fetch_remote(VAL, tmp_path / "cache", mirror="http://127.0.0.1:9", progress=False)


def test_verified_copy_is_reused_and_corrupt_copy_replaced(file_mirror: str, tmp_path: Path) -> None:
    path = fetch_remote(VAL, tmp_path, mirror=file_mirror, progress=False)
    first_mtime = path.stat().st_mtime_ns
    assert fetch_remote(VAL, tmp_path, mirror="http://127.0.0.1:9", progress=False) == path  # no network
    assert path.stat().st_mtime_ns == first_mtime
    path.write_bytes(b"corrupt")
    fetch_remote(VAL, tmp_path, mirror=file_mirror, progress=False)
    assert sha256_file(path) == VAL.sha256
    fetch(file_url(VAL, file_mirror), path, sha256=VAL.sha256, force=True, progress=False)
    assert sha256_file(path) == VAL.sha256


def test_archive_member_from_upstream_wheel(shared_data: Path, tmp_path: Path, make_server) -> None:
    # Matbench CSVs are members of a PyPI wheel upstream; serve a real zip holding the real CSV.
    wheel_dir = tmp_path / "pypi"
    wheel_dir.mkdir()
    with zipfile.ZipFile(wheel_dir / "crabnet-2.0.8-py3-none-any.whl", "w") as zf:
        zf.write(shared_data / "matbench_composition" / "glass.csv", "crabnet/data/matbench/glass.csv")
    server = make_server(wheel_dir)
    spec_file = get_spec("matbench-glass").files[0]
    remote = RemoteFile(
        spec_file.folder,
        spec_file.name,
        f"{server.url}/crabnet-2.0.8-py3-none-any.whl",
        spec_file.sha256,
        spec_file.size,
        archive_member=spec_file.archive_member,
    )
    path = fetch_remote(remote, tmp_path / "cache", mirror=None, progress=False)
    assert sha256_file(path) == spec_file.sha256
    bad = RemoteFile(remote.folder, "other.csv", remote.url, "0" * 64, archive_member=remote.archive_member)
    with pytest.raises(ChecksumError, match=r"checksum mismatch for other\.csv"):
        fetch_remote(bad, tmp_path / "cache", mirror=None, progress=False)
    assert not (tmp_path / "cache" / remote.folder / "other.csv").exists()


def test_download_leaves_no_temp_files_on_checksum_error_for_file_mirror(
    shared_data: Path, tmp_path: Path
) -> None:
    mirror = tmp_path / "mirror"
    shutil.copytree(shared_data / "mp20_biternary", mirror / "mp20_biternary")
    target = mirror / "mp20_biternary" / "val.csv.gz"
    target.chmod(0o644)
    data = bytearray(target.read_bytes())
    data[0] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(ChecksumError):
        fetch_remote(VAL, tmp_path / "cache", mirror=mirror.as_uri(), progress=False)
    assert _leftovers(tmp_path / "cache") == []


def test_same_size_corruption_is_not_downloaded_and_is_fetched_again(
    file_mirror: str, tmp_path: Path
) -> None:
    spec = get_spec("mp20-biternary")
    download_dataset(spec, root=tmp_path, mirror=file_mirror, progress=False)
    assert is_downloaded(spec, tmp_path)
    path = tmp_path / VAL.relative_path
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x10  # same size, one bit different
    path.write_bytes(bytes(data))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))  # a later change
    assert path.stat().st_size == VAL.size
    assert not is_downloaded(spec, tmp_path)
    statuses = [f.status for f in download_files(spec, root=tmp_path, mirror=file_mirror, progress=False)]
    assert statuses == ["downloaded", "cached"]
    assert sha256_file(path) == VAL.sha256 and is_downloaded(spec, tmp_path)


def test_is_downloaded_hashes_each_file_version_once(
    file_mirror: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from matcard.datasets import download as download_module

    spec = get_spec("perov5")
    download_dataset(spec, root=tmp_path, mirror=file_mirror, progress=False)
    hashed: list[str] = []
    real = download_module.sha256_file
    monkeypatch.setattr(download_module, "sha256_file", lambda p: hashed.append(Path(p).name) or real(p))
    for _ in range(5):
        assert is_downloaded(spec, tmp_path)
    assert hashed == []  # the download itself recorded the verified hashes
    (tmp_path / "perov5" / "val.csv").touch()
    os.utime(tmp_path / "perov5" / "val.csv", ns=(0, 10**18))
    assert is_downloaded(spec, tmp_path) and is_downloaded(spec, tmp_path)
    assert hashed == ["val.csv"]


def test_download_status_distinguishes_fetched_from_cached(file_mirror: str, tmp_path: Path) -> None:
    spec = get_spec("perov5")
    first = download_files(spec, root=tmp_path, mirror=file_mirror, progress=False)
    assert [f.status for f in first] == ["downloaded", "downloaded"]
    again = download_files(spec, root=tmp_path, mirror="http://127.0.0.1:9", progress=False)  # no network
    assert [f.status for f in again] == ["cached", "cached"]
    assert [f.path for f in again] == [f.path for f in first]


class _EndlessServer:
    """A real loopback HTTP server whose every answer is an endless body (no Content-Length, or a
    lying one), stopping only when the client hangs up or after ``ceiling`` bytes."""

    def __init__(self, announce: int | None, ceiling: int = 256 << 20) -> None:
        self.sent = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(200)
                if announce is not None:
                    self.send_header("Content-Length", str(announce))
                self.end_headers()
                block = b"x" * (1 << 16)
                try:
                    while owner.sent < ceiling:
                        self.wfile.write(block)
                        owner.sent += len(block)
                except OSError:  # the client hung up: what a bounded download must do
                    pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize("announce", [None, 10**12])
def test_endless_stream_is_cut_at_the_registered_size(tmp_path: Path, announce: int | None) -> None:
    server = _EndlessServer(announce)
    cache = tmp_path / "cache"
    started = time.monotonic()
    try:
        with pytest.raises(DownloadError, match=r"val\.csv\.gz.*(sent more than|announces)") as info:
            fetch_remote(VAL, cache, mirror=server.url, progress=False)
    finally:
        server.close()
    assert not isinstance(info.value, ChecksumError)
    assert str(download_limit(VAL.size)) in str(info.value)
    assert time.monotonic() - started < 30
    assert _leftovers(cache) == []  # neither the file nor a .part to "resume"
    assert not is_downloaded(get_spec("mp20-biternary"), cache)
    # the client stopped reading near the limit (socket buffers aside), far below the ceiling
    assert server.sent < download_limit(VAL.size) + (16 << 20)
