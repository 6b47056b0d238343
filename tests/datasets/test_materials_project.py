"""The real mp-api client driven against a stub Materials Project server on 127.0.0.1.

The stub implements the two routes the client uses for a summary search (``/heartbeat`` and
``/materials/summary/``) with element / site-count filtering and ``_limit`` / ``_skip`` paging,
serving real structures (AFLOW prototypes) so that labels can be checked.
"""

from __future__ import annotations

import http.server
import json
import threading
import urllib.parse
from collections.abc import Iterator

import pytest

from matcard.datasets import load_dataset
from matcard.errors import MatcardError, UsageError

ORDERINGS = ["NM", "FM", "AFM", "FiM", None]


class StubMP:
    def __init__(self, documents: list[dict], fail: bool = False) -> None:
        self.documents = documents
        self.requests: list[tuple[str, dict[str, list[str]], str | None]] = []
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query)
                stub.requests.append((url.path, query, self.headers.get("x-api-key")))
                if url.path.rstrip("/").endswith("heartbeat"):
                    body: dict = {
                        "db_version": "2025.09.25",
                        "access_controlled_batch_ids": [],
                        "version": "0.90.0",
                    }
                elif url.path.startswith("/materials/summary"):
                    if fail:
                        self.send_error(500, "Internal Server Error")
                        return
                    docs = stub.documents
                    if "elements" in query:
                        wanted = set(query["elements"][0].split(","))
                        docs = [d for d in docs if wanted <= set(d["elements"])]
                    if "nsites_max" in query:
                        docs = [d for d in docs if d["nsites"] <= int(query["nsites_max"][0])]
                    skip = int(query.get("_skip", ["0"])[0])
                    limit = int(query.get("_limit", ["1000"])[0])
                    fields = query.get("_fields", [""])[0].split(",")
                    page = [{k: v for k, v in d.items() if k in fields} for d in docs[skip : skip + limit]]
                    body = {"data": page, "meta": {"total_doc": len(docs)}}
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def documents(aflow_dataset) -> list[dict]:
    docs = []
    for i, structure in enumerate(aflow_dataset.structures()[:40]):
        docs.append(
            {
                "material_id": f"mp-{1000 + i}",
                "structure": structure.as_dict(),
                "symmetry": {"number": int(aflow_dataset.table["spacegroup.number"][i])},
                "band_gap": 0.0 if i % 3 == 0 else 1.5,
                "is_metal": i % 3 == 0,
                "ordering": ORDERINGS[i % len(ORDERINGS)],
                "formula_pretty": structure.composition.reduced_formula,
                "energy_above_hull": 0.0,
                "elements": sorted(el.symbol for el in structure.composition.elements),
                "nsites": len(structure),
            }
        )
    return docs


@pytest.fixture
def stub(documents: list[dict]) -> Iterator[StubMP]:
    server = StubMP(documents)
    yield server
    server.close()


def test_query_through_the_real_client(stub: StubMP, documents: list[dict], aflow_dataset) -> None:
    key = "k" * 32
    dataset = load_dataset("materials-project", api_key=key, endpoint=stub.url, max_sites=8, progress=False)
    expected = [d for d in documents if d["nsites"] <= 8]
    assert dataset.ids == [d["material_id"] for d in expected]
    summary_calls = [r for r in stub.requests if r[0].startswith("/materials/summary")]
    assert summary_calls and all(r[2] == key for r in summary_calls)
    assert summary_calls[0][1]["nsites_max"] == ["8"]
    assert "structure" in summary_calls[0][1]["_fields"][0]

    systems = dataset.labels("crystal_system")
    want = aflow_dataset.labels("crystal_system").y[[int(d["material_id"][3:]) - 1000 for d in expected]]
    assert systems.y.tolist() == want.tolist()
    metal = dataset.labels("metal").class_counts()
    assert metal["metal"] == sum(d["band_gap"] == 0 for d in expected)
    ordering = dataset.labels("magnetic_ordering").class_counts()
    assert sum(ordering.values()) == len(expected) and "Unknown" in ordering
    assert dataset.structures()[0] == aflow_dataset.structures()[int(expected[0]["material_id"][3:]) - 1000]


def test_element_filter_and_limit(
    stub: StubMP, documents: list[dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MP_API_KEY", "m" * 32)
    monkeypatch.setenv("MP_API_ENDPOINT", stub.url)
    element = documents[0]["elements"][0]
    matching = [d["material_id"] for d in documents if element in d["elements"]]
    dataset = load_dataset("materials-project", elements=element, progress=False)
    assert dataset.ids == matching
    limited = load_dataset("materials-project", elements=[element], limit=1, progress=False)
    assert limited.ids == matching[:1]


def test_errors(documents: list[dict], monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UsageError, match="MP_API_KEY"):
        load_dataset("materials-project", elements="Si", progress=False)
    monkeypatch.setenv("MP_API_KEY", "m" * 32)
    with pytest.raises(UsageError, match="at least one filter"):
        load_dataset("materials-project", progress=False)
    with pytest.raises(UsageError, match="unknown materials-project query option"):
        load_dataset("materials-project", colour="blue", progress=False)
    broken = StubMP(documents, fail=True)
    try:
        with pytest.raises(MatcardError, match="Materials Project query failed"):
            load_dataset("materials-project", endpoint=broken.url, elements="Si", progress=False)
    finally:
        broken.close()


def test_inspect_command_with_query(
    stub: StubMP, documents: list[dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from cli import app

    monkeypatch.setenv("MP_API_KEY", "m" * 32)
    monkeypatch.setenv("MP_API_ENDPOINT", stub.url)
    args = ["inspect", "materials-project", "--query", "max_sites=4", "--task", "metal", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    expected = [d for d in documents if d["nsites"] <= 4]
    assert summary["n_structures"] == len(expected)
    assert summary["class_counts"]["metal"] == sum(d["band_gap"] == 0 for d in expected)
    bad = CliRunner().invoke(app, ["inspect", "materials-project", "--query", "max_sites"])
    assert bad.exit_code == 2 and "KEY=VALUE" in bad.output
