"""Shared fixtures: the real data in ../shared/data, an isolated cache, a loopback HTTP mirror."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = (REPO_ROOT.parent / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real published data beside the project (never copied into the repository)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real test data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def file_mirror(shared_data: Path) -> str:
    return shared_data.as_uri()


@pytest.fixture(scope="session")
def session_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One dataset cache for the whole session, so each dataset is downloaded and parsed once."""
    return tmp_path_factory.mktemp("matcard-data")


@pytest.fixture(autouse=True)
def _isolated_matcard_env(monkeypatch: pytest.MonkeyPatch, session_data_dir: Path, file_mirror: str) -> None:
    """Never touch the checkout's data/ or the network: cache in a temp dir, mirror = shared data."""
    monkeypatch.setenv("MATCARD_DATA_DIR", str(session_data_dir))
    monkeypatch.setenv("MATCARD_MIRROR", file_mirror)
    monkeypatch.delenv("MP_API_KEY", raising=False)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def serve_directory(directory: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    """Start a real HTTP server on 127.0.0.1 (random port) serving ``directory``."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def http_mirror(shared_data: Path) -> Iterator[str]:
    """Base URL of a loopback HTTP server serving ../shared/data (supports Range requests? no:
    SimpleHTTPRequestHandler ignores Range, which downloads must tolerate)."""
    server, url = serve_directory(shared_data)
    try:
        yield url
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def aflow_dataset():
    """The embedded 288 AFLOW prototypes (no download), loaded through load_dataset."""
    from matcard.datasets import load_dataset

    return load_dataset("aflow-prototypes", progress=False)


@pytest.fixture(scope="session")
def mp20_dataset(session_data_dir: Path, file_mirror: str):
    """mp20-biternary (14,258 structures) downloaded from the file:// mirror of ../shared/data into
    the session cache and parsed once (the Parquet cache makes later loads fast)."""
    from matcard.datasets import load_dataset

    return load_dataset("mp20-biternary", mirror=file_mirror, data_dir=session_data_dir, progress=False)
