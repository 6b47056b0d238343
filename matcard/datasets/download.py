"""Verified downloads: streaming, resumable, sha256-checked, atomically renamed into the cache.

A file is written to ``<dest>.part`` while it streams. An interrupted download leaves that
``.part`` behind, and the next attempt resumes it with an HTTP ``Range`` request (or restarts
cleanly when the server answers 200 instead of 206). Only a file whose sha256 matches the registry
is renamed onto its final name; on a mismatch the downloaded bytes are deleted and a
:class:`ChecksumError` names the file, the URL and both checksums. A stream is cut off (and its
``.part`` deleted) once it passes the registry's size plus a small margin, so a misbehaving mirror
cannot fill the disk. Verified hashes are remembered per (path, size, mtime, inode), so checking
that a dataset is downloaded costs one hash per file per process.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from matcard.console import make_progress
from matcard.datasets.cache import data_dir as default_data_dir
from matcard.datasets.registry import DatasetSpec, RemoteFile
from matcard.errors import ChecksumError, DownloadError, UsageError
from matcard.fileio import sha256_file

CHUNK = 1 << 16
USER_AGENT = "matcard (+https://github.com/matcard)"


def mirror_from_env(mirror: str | None = None) -> str | None:
    """The mirror base URL: the argument, else ``MATCARD_MIRROR``, else None (upstream URLs)."""
    value = mirror if mirror is not None else os.environ.get("MATCARD_MIRROR") or None
    if value is None:
        return None
    value = value.strip()
    if "://" not in value:  # a plain folder path is accepted as a file:// mirror
        value = Path(value).expanduser().resolve().as_uri()
    scheme = urllib.parse.urlsplit(value).scheme
    if scheme not in {"http", "https", "file"}:
        raise UsageError(f"mirror must be an http://, https:// or file:// URL, got {value!r}")
    return value.rstrip("/")


def file_url(remote: RemoteFile, mirror: str | None) -> str:
    """Where to fetch ``remote`` from: ``<mirror>/<folder>/<name>``, else its upstream URL."""
    if mirror:
        return f"{mirror}/{urllib.parse.quote(remote.folder)}/{urllib.parse.quote(remote.name)}"
    return remote.url


Status = Literal["downloaded", "resumed", "cached"]
_HASHES: dict[tuple[str, int, int, int], str] = {}


@dataclass(frozen=True)
class FetchedFile:
    """One file of a dataset after :func:`download_files`: where it is and what was done.

    ``status``: ``"downloaded"`` (fetched now), ``"resumed"`` (a partial download was completed) or
    ``"cached"`` (a copy already there whose sha256 was verified; nothing was fetched)."""

    remote: RemoteFile
    path: Path
    status: Status


def _stat_key(path: Path) -> tuple[str, int, int, int]:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)


def verified_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of ``path``, hashed again only when its size, mtime or inode changed."""
    file = Path(path)
    key = _stat_key(file)
    digest = _HASHES.get(key)
    if digest is None:
        digest = sha256_file(file)
        _HASHES[key] = digest
    return digest


def _remember(path: Path, digest: str) -> None:
    _HASHES[_stat_key(path)] = digest


def download_limit(size: int | None) -> int | None:
    """Most bytes accepted for a file of registered ``size`` (None: no known size, no cap)."""
    return None if size is None else size + max(1 << 16, size // 100)


def _file_path(url: str) -> Path:
    parts = urllib.parse.urlsplit(url)
    return Path(urllib.request.url2pathname(parts.path))


def _hash_existing(path: Path) -> hashlib._Hash:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest


def _open_stream(url: str, offset: int, timeout: float) -> tuple[Iterator[bytes], int | None, bool]:
    """(chunks, total size or None, resumed?) for an http(s) or file URL starting at ``offset``."""
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme == "file":
        path = _file_path(url)
        if not path.is_file():
            raise DownloadError(f"{path.name}: not found on the mirror ({url})")
        total = path.stat().st_size
        resumed = 0 < offset < total

        def read_file() -> Iterator[bytes]:
            with open(path, "rb") as fh:
                if resumed:
                    fh.seek(offset)
                while chunk := fh.read(CHUNK):
                    yield chunk

        return read_file(), total, resumed
    if scheme not in {"http", "https"}:
        raise DownloadError(f"unsupported URL scheme in {url!r}")
    import requests

    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = requests.get(url, stream=True, timeout=timeout, headers=headers)
    except requests.RequestException as err:
        raise DownloadError(f"cannot reach {url}: {err}") from err
    if response.status_code == 416:  # our partial file is not a prefix the server knows: restart
        response.close()
        return _open_stream(url, 0, timeout)
    if response.status_code >= 400:
        response.close()
        raise DownloadError(f"{url}: HTTP {response.status_code} {response.reason}")
    resumed = response.status_code == 206
    length = response.headers.get("Content-Length")
    total = (int(length) + (offset if resumed else 0)) if length and length.isdigit() else None

    def read_http() -> Iterator[bytes]:
        try:
            yield from response.iter_content(CHUNK)
        except requests.RequestException as err:
            raise DownloadError(f"download of {url} interrupted: {err}") from err
        finally:
            response.close()

    return read_http(), total, resumed


def fetch(
    url: str,
    dest: str | os.PathLike[str],
    *,
    sha256: str | None,
    size: int | None = None,
    force: bool = False,
    progress: bool = True,
    timeout: float = 60.0,
    description: str | None = None,
) -> Path:
    """Download ``url`` to ``dest`` (verified and atomic); returns ``dest``.

    An existing ``dest`` with the right checksum is kept unless ``force``. A leftover
    ``dest.part`` is resumed. Raises DownloadError / ChecksumError (exit code 1).
    """
    path, _ = fetch_with_status(
        url,
        dest,
        sha256=sha256,
        size=size,
        force=force,
        progress=progress,
        timeout=timeout,
        description=description,
    )
    return path


def fetch_with_status(
    url: str,
    dest: str | os.PathLike[str],
    *,
    sha256: str | None,
    size: int | None = None,
    force: bool = False,
    progress: bool = True,
    timeout: float = 60.0,
    description: str | None = None,
) -> tuple[Path, Status]:
    """:func:`fetch`, also saying whether the file was downloaded, resumed or already cached.

    ``size``: the registered size; a stream longer than :func:`download_limit` is aborted."""
    target = Path(dest)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not force:
        if sha256 is None or verified_sha256(target) == sha256:
            return target, "cached"
        target.unlink()  # a corrupt cached copy is replaced, never trusted
    part = target.with_name(target.name + ".part")
    if force:
        part.unlink(missing_ok=True)
    offset = part.stat().st_size if part.exists() else 0
    chunks, total, resumed = _open_stream(url, offset, timeout)
    if not resumed:
        offset = 0
    limit = download_limit(size)
    if limit is not None and total is not None and total > limit:
        next(chunks, None)  # start the generator so that close() runs its finally (closes the socket)
        chunks.close()  # type: ignore[attr-defined]
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"download of {target.name} refused: {url} announces {total} bytes, "
            f"more than the {size} registered (limit {limit})"
        )
    try:
        digest = _stream_to_part(
            chunks,
            part,
            resumed=resumed,
            completed=offset,
            total=total or size,
            limit=limit,
            label=description or f"Downloading {target.name}",
            progress=progress,
        )
    except _TooLong:
        raise DownloadError(
            f"download of {target.name} aborted: {url} sent more than {limit} bytes "
            f"(registered size {size}); the partial download was deleted"
        ) from None
    except (DownloadError, OSError) as err:
        kept = part.stat().st_size if part.exists() else 0
        raise DownloadError(
            f"download of {target.name} failed: {err}; {kept} bytes kept in {part.name}, run again to resume"
        ) from err
    actual = digest.hexdigest()
    if sha256 is not None and actual != sha256:
        part.unlink(missing_ok=True)
        raise ChecksumError(
            f"checksum mismatch for {target.name} from {url}: expected sha256 {sha256}, got {actual}; "
            "the download was deleted"
        )
    os.replace(part, target)
    _remember(target, actual)
    return target, "resumed" if resumed else "downloaded"


def _stream_to_part(
    chunks: Iterator[bytes],
    part: Path,
    *,
    resumed: bool,
    completed: int,
    total: int | None,
    limit: int | None,
    label: str,
    progress: bool,
) -> hashlib._Hash:
    """Append the stream to ``part`` and hash it; past ``limit`` bytes, delete ``part`` and raise
    :class:`_TooLong` (garbage beyond the expected end is never kept for a resume)."""
    digest = _hash_existing(part) if resumed else hashlib.sha256()
    written = completed
    with (
        make_progress(transient=True, disable=not progress) as bar,
        open(part, "ab" if resumed else "wb") as fh,
    ):
        task = bar.add_task(label, total=total, completed=completed)
        for chunk in chunks:
            written += len(chunk)
            if limit is not None and written > limit:
                chunks.close()  # type: ignore[attr-defined]
                fh.close()
                part.unlink(missing_ok=True)
                raise _TooLong
            fh.write(chunk)
            digest.update(chunk)
            bar.advance(task, len(chunk))
        fh.flush()
        os.fsync(fh.fileno())
    return digest


class _TooLong(Exception):
    """The stream passed its size limit (internal: turned into a DownloadError)."""


def _extract_member(archive: Path, member: str, dest: Path, sha256: str) -> Path:
    """Copy one member of a zip archive (a wheel) to ``dest`` after checking its sha256."""
    with zipfile.ZipFile(archive) as zf:
        try:
            data = zf.read(member)
        except KeyError as err:
            raise DownloadError(f"{archive.name} has no member {member}") from err
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise ChecksumError(
            f"checksum mismatch for {dest.name} (member {member} of {archive.name}): "
            f"expected sha256 {sha256}, got {actual}"
        )
    part = dest.with_name(dest.name + ".part")
    with open(part, "wb") as fh:
        shutil.copyfileobj(io.BytesIO(data), fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(part, dest)
    return dest


def fetch_remote(
    remote: RemoteFile,
    root: Path,
    *,
    mirror: str | None = None,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Download one registered file into ``root/<folder>/<name>``; returns the path."""
    return fetch_remote_with_status(remote, root, mirror=mirror, force=force, progress=progress)[1]


def fetch_remote_with_status(
    remote: RemoteFile,
    root: Path,
    *,
    mirror: str | None = None,
    force: bool = False,
    progress: bool = True,
) -> tuple[RemoteFile, Path, Status]:
    """:func:`fetch_remote`, also saying whether the file was downloaded or already cached."""
    dest = root / remote.folder / remote.name
    if remote.archive_member and not mirror:
        if dest.exists() and not force and verified_sha256(dest) == remote.sha256:
            return remote, dest, "cached"
        archive = root / ".archives" / Path(urllib.parse.urlsplit(remote.url).path).name
        fetch(remote.url, archive, sha256=remote.archive_sha256, force=force, progress=progress)
        dest.parent.mkdir(parents=True, exist_ok=True)
        return remote, _extract_member(archive, remote.archive_member, dest, remote.sha256), "downloaded"
    path, status = fetch_with_status(
        file_url(remote, mirror),
        dest,
        sha256=remote.sha256,
        size=remote.size,
        force=force,
        progress=progress,
        description=f"Downloading {remote.relative_path}",
    )
    return remote, path, status


def download_files(
    spec: DatasetSpec,
    *,
    root: str | os.PathLike[str] | None = None,
    mirror: str | None = None,
    force: bool = False,
    progress: bool = True,
) -> list[FetchedFile]:
    """Download every file of a registered dataset; says per file what was done."""
    base = Path(root) if root is not None else default_data_dir()
    resolved = mirror_from_env(mirror)
    return [
        FetchedFile(*fetch_remote_with_status(f, base, mirror=resolved, force=force, progress=progress))
        for f in spec.files
    ]


def download_dataset(
    spec: DatasetSpec,
    *,
    root: str | os.PathLike[str] | None = None,
    mirror: str | None = None,
    force: bool = False,
    progress: bool = True,
) -> list[Path]:
    """Download every file of a registered dataset; returns the local paths."""
    return [f.path for f in download_files(spec, root=root, mirror=mirror, force=force, progress=progress)]


def is_downloaded(spec: DatasetSpec, root: str | os.PathLike[str] | None = None) -> bool:
    """All files present with their registered sha256 (hashed once per file version per process)."""
    if spec.embedded:
        return True
    if not spec.files:
        return False
    base = Path(root) if root is not None else default_data_dir()
    for remote in spec.files:
        path = base / remote.folder / remote.name
        if not path.is_file() or (remote.size is not None and path.stat().st_size != remote.size):
            return False
        if verified_sha256(path) != remote.sha256:
            return False
    return True


__all__ = [
    "FetchedFile",
    "download_dataset",
    "download_files",
    "download_limit",
    "fetch",
    "fetch_remote",
    "fetch_with_status",
    "file_url",
    "is_downloaded",
    "mirror_from_env",
    "verified_sha256",
]
