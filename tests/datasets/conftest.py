"""Fixtures for download tests: real loopback HTTP servers with controllable behaviour."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


class RecordingServer:
    """A real HTTP server on 127.0.0.1 serving files from a folder.

    ``ranges``: honour ``Range: bytes=N-`` with 206 responses. ``truncate_at``: send the full
    Content-Length but close the connection after that many body bytes (a dropped download).
    ``requests`` records (path, Range header) of every request.
    """

    def __init__(self, root: Path, *, ranges: bool = False, truncate_at: int | None = None) -> None:
        self.root = root
        self.ranges = ranges
        self.truncate_at = truncate_at
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                range_header = self.headers.get("Range")
                server.requests.append((self.path, range_header))
                path = server.root / self.path.lstrip("/")
                if not path.is_file():
                    self.send_error(404, "Not Found")
                    return
                data = path.read_bytes()
                start = 0
                if server.ranges and range_header and range_header.startswith("bytes="):
                    start = int(range_header[6:].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                if server.truncate_at is not None:
                    self.wfile.write(body[: server.truncate_at])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def make_server() -> Iterator[Callable[..., RecordingServer]]:
    servers: list[RecordingServer] = []

    def make(root: Path, **kwargs: object) -> RecordingServer:
        server = RecordingServer(root, **kwargs)  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()
