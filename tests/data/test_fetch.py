"""`birdops fetch` against a real HTTP server on 127.0.0.1 that speaks the xeno-canto API v3."""

from __future__ import annotations

import io
import json
import logging
import math
import re
import threading
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from birdops.audio import load_audio
from birdops.config import XenoCantoParams
from birdops.data import fetch
from birdops.data.fetch import (
    FetchAuthError,
    FetchError,
    FetchSettings,
    RateLimiter,
    api_key_from_env,
    fetch_corpus,
    fetch_recordings,
    species_query,
)
from birdops.data.metadata import read_metadata, validate_rows

KEY = "test-key"
PAGE_SIZE = 2  # small pages, so every species needs several


def audio_file(fmt: str, seed: int) -> bytes:
    """A real 0.5 s recording in ``fmt`` (wav, flac or mp3)."""
    rng = np.random.default_rng(seed)
    wave = (0.3 * np.sin(2 * np.pi * rng.uniform(1500, 4000) * np.arange(4000) / 8000)).astype(np.float32)
    buffer = io.BytesIO()
    sf.write(buffer, wave, 8000, format=fmt.upper())
    return buffer.getvalue()


# (id, genus, epithet, grade, format)
CATALOGUE = [
    ("1001", "Turdus", "merula", "A", "wav"),
    ("1002", "Turdus", "merula", "B", "flac"),
    ("1003", "Turdus", "merula", "A", "mp3"),
    ("1004", "Turdus", "merula", "C", "wav"),
    ("1005", "Turdus", "merula", "D", "wav"),  # below the default min quality C
    ("1006", "Turdus", "merula", "no score", "wav"),
    ("2001", "Parus", "major", "B", "flac"),
    ("2002", "Parus", "major", "C", "wav"),  # the server fails once: retried
    ("2003", "Parus", "major", "C", "mp3"),  # the server always fails: skipped
    ("2004", "Parus", "major", "E", "wav"),
    ("3001", "Turdus", "philomelos", "A", "wav"),  # another species of the same genus, never asked for
]
FAIL_ONCE, FAIL_ALWAYS = "2002", "2003"


@dataclass
class FakeXenoCanto:
    """State of the fake API: the files it serves and what it was asked."""

    base_url: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    file_hits: Counter[str] = field(default_factory=Counter)
    ranges: dict[str, str] = field(default_factory=dict)
    queries: list[str] = field(default_factory=list)
    broken_species: set[str] = field(default_factory=set)  # API queries naming these answer 503
    from_start: Counter[str] = field(default_factory=Counter)  # audio bodies sent from byte 0
    # a download of `stall_id` sends half its bytes, sets `stalled` and hangs until `release` is set
    stall_id: str | None = None
    stalled: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    def served_twice(self) -> list[str]:
        """Recordings whose audio was sent from its first byte more than once (a Range resume is not)."""
        return sorted(xc_id for xc_id, count in self.from_start.items() if count > 1)

    def record(self, xc_id: str, genus: str, epithet: str, grade: str, fmt: str) -> dict[str, Any]:
        return {
            "id": xc_id, "gen": genus, "sp": epithet, "ssp": "", "grp": "birds", "en": f"{genus} bird",
            "rec": f"Recordist {xc_id[0]}", "cnt": "Netherlands", "loc": "Somewhere", "lat": "52.1",
            "lon": "5.1", "alt": "10", "type": "song", "sex": "male", "stage": "adult",
            "method": "field recording", "url": f"//xeno-canto.org/{xc_id}",
            "file": f"{self.base_url}/download/{xc_id}", "file-name": f"XC{xc_id}-{genus}-{epithet}.{fmt}",
            "sono": {"small": f"//xeno-canto.org/sono/{xc_id}.png"}, "osci": {}, "lic": "//cc/by/4.0/",
            "q": grade, "length": "0:01", "time": "06:00", "date": "2020-05-01", "uploaded": "2020-05-02",
            "also": ["Parus major"] if genus == "Turdus" else [], "rmk": "", "animal-seen": "yes",
            "playback-used": "no", "temp": "", "regnr": "", "auto": "no", "dvc": "", "mic": "", "smp": "8000",
        }  # fmt: skip

    def search(self, query: str, page: int) -> dict[str, Any]:
        match = re.fullmatch(r'sp:"(\w+) (\w+)" q:([A-E])', query)
        assert match, f"unexpected query {query!r}"
        genus, epithet, grade = match.groups()
        hits = [self.record(*row) for row in CATALOGUE if row[1:4] == (genus, epithet, grade)]
        pages = max(1, math.ceil(len(hits) / PAGE_SIZE))
        return {
            "numRecordings": str(len(hits)), "numSpecies": "1", "page": page, "numPages": pages,
            "recordings": hits[(page - 1) * PAGE_SIZE : page * PAGE_SIZE],
        }  # fmt: skip


def make_handler(state: FakeXenoCanto) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet test output
            pass

        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            if url.path == "/api/3/recordings":
                self.api(urllib.parse.parse_qs(url.query))
            elif url.path.startswith("/download/"):
                self.download(url.path.rsplit("/", 1)[1])
            else:
                self.send(404, b"not found", "text/plain")

        def api(self, params: dict[str, list[str]]) -> None:
            if params.get("key") != [KEY]:
                body = {"error": "unauthorized", "message": "invalid or missing key"}
                self.send(401, json.dumps(body).encode(), "application/json")
                return
            state.queries.append(params["query"][0])
            if any(name in params["query"][0] for name in state.broken_species):
                self.send(503, b"busy", "text/plain")
                return
            answer = state.search(params["query"][0], int(params.get("page", ["1"])[0]))
            self.send(200, json.dumps(answer).encode(), "application/json")

        def download(self, xc_id: str) -> None:
            state.file_hits[xc_id] += 1
            if xc_id == FAIL_ALWAYS or (xc_id == FAIL_ONCE and state.file_hits[xc_id] == 1):
                self.send(500, b"internal error", "text/plain")
                return
            payload = state.files[xc_id]
            requested = self.headers.get("Range")
            start = 0
            if requested:
                state.ranges[xc_id] = requested
                start = int(re.fullmatch(r"bytes=(\d+)-", requested).group(1))  # type: ignore[union-attr]
            status = 206 if requested else 200
            state.from_start[xc_id] += start == 0
            if xc_id == state.stall_id and not state.release.is_set():
                self.stall(xc_id, status, payload[start:])
                return
            self.send(status, payload[start:], "application/octet-stream")

        def stall(self, xc_id: str, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            state.stalled.set()
            state.release.wait(60)
            self.close_connection = True

        def send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


@pytest.fixture
def server() -> Iterator[FakeXenoCanto]:
    state = FakeXenoCanto()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    state.files = {row[0]: audio_file(row[4], int(row[0])) for row in CATALOGUE}
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield state
    state.release.set()
    httpd.shutdown()
    httpd.server_close()


def settings(state: FakeXenoCanto, **changes: Any) -> FetchSettings:
    base = FetchSettings(
        api_url=f"{state.base_url}/api/3/recordings", api_key=KEY, min_quality="C", max_per_species=10,
        requests_per_second=500.0, timeout_seconds=5.0, retries=2, backoff_seconds=0.01,
    )  # fmt: skip
    return replace(base, **changes)


SPECIES = ["Turdus merula", "Parus major"]
EXPECTED = {"1001", "1002", "1003", "1004", "2001", "2002"}  # grade C or better, downloadable


def test_fetch_downloads_files_and_writes_metadata(server: FakeXenoCanto, tmp_path: Path) -> None:
    summary = fetch_recordings(SPECIES, tmp_path, settings(server))
    rows = read_metadata(tmp_path / "metadata.csv")
    assert {row["id"] for row in rows} == EXPECTED
    assert validate_rows(rows, tmp_path) == []
    for row in rows:
        assert (tmp_path / row["local_path"]).read_bytes() == server.files[row["id"]]
        assert row["local_path"].startswith(f"audio/XC{row['id']}.")
        assert row["group"] == "birds"  # the API's "grp"
        assert len(load_audio(tmp_path / row["local_path"], 8000)) > 3000
    blackbird = next(row for row in rows if row["id"] == "1001")
    assert blackbird["also"] == "Parus major" and json.loads(blackbird["sono"])["small"].endswith("1001.png")
    assert summary.downloaded == len(EXPECTED) and summary.listed == len(EXPECTED)
    assert set(summary.failed) == {FAIL_ALWAYS}
    assert server.file_hits[FAIL_ONCE] == 2 and server.file_hits[FAIL_ALWAYS] == 3  # 1 try + 2 retries
    assert "1005" not in server.file_hits and "3001" not in server.file_hits
    assert not list(tmp_path.rglob("*.part"))
    assert 'sp:"Turdus merula" q:A' in server.queries and not any("q:D" in q for q in server.queries)


def test_second_run_downloads_nothing(server: FakeXenoCanto, tmp_path: Path) -> None:
    fetch_recordings(SPECIES, tmp_path, settings(server))
    hits_before = server.file_hits.copy()
    summary = fetch_recordings(SPECIES, tmp_path, settings(server))
    downloads_again = {k: v for k, v in server.file_hits.items() if k != FAIL_ALWAYS}
    assert downloads_again == {k: v for k, v in hits_before.items() if k != FAIL_ALWAYS}
    assert summary.downloaded == 0 and summary.already_present == len(EXPECTED)
    assert {row["id"] for row in read_metadata(tmp_path / "metadata.csv")} == EXPECTED
    assert server.served_twice() == []


def test_a_species_the_api_cannot_answer_keeps_its_earlier_rows(
    server: FakeXenoCanto, tmp_path: Path
) -> None:
    fetch_recordings(SPECIES, tmp_path, settings(server))
    server.broken_species.add("Parus major")
    summary = fetch_recordings(SPECIES, tmp_path, settings(server))
    assert list(summary.failed_species) == ["Parus major"] and "503" in summary.failed_species["Parus major"]
    assert {row["id"] for row in read_metadata(tmp_path / "metadata.csv")} == EXPECTED


def test_a_partial_download_is_completed(server: FakeXenoCanto, tmp_path: Path) -> None:
    payload = server.files["1002"]
    (tmp_path / "audio").mkdir()
    (tmp_path / "audio" / "XC1002.flac.part").write_bytes(payload[:100])
    fetch_recordings(["Turdus merula"], tmp_path, settings(server))
    assert server.ranges["1002"] == "bytes=100-"
    assert (tmp_path / "audio" / "XC1002.flac").read_bytes() == payload
    assert not (tmp_path / "audio" / "XC1002.flac.part").exists()


def test_max_per_species_keeps_the_best_grades(server: FakeXenoCanto, tmp_path: Path) -> None:
    summary = fetch_recordings(["Turdus merula"], tmp_path, settings(server, max_per_species=2))
    assert {row["id"] for row in read_metadata(tmp_path / "metadata.csv")} == {"1001", "1003"}
    assert summary.downloaded == 2


def test_min_quality_filter(server: FakeXenoCanto, tmp_path: Path) -> None:
    fetch_recordings(["Turdus merula"], tmp_path, settings(server, min_quality="A"))
    assert {row["id"] for row in read_metadata(tmp_path / "metadata.csv")} == {"1001", "1003"}
    assert all(query.endswith("q:A") for query in server.queries)


def test_a_rejected_key_stops_the_fetch(server: FakeXenoCanto, tmp_path: Path) -> None:
    with pytest.raises(FetchAuthError, match="invalid or missing key"):
        fetch_recordings(SPECIES, tmp_path, settings(server, api_key="wrong"))


def test_missing_api_key_is_a_clear_error() -> None:
    with pytest.raises(FetchError, match="XC_API_KEY"):
        api_key_from_env({})
    assert api_key_from_env({"XC_API_KEY": " abc "}) == "abc"


def test_cli_fetches_with_the_key_from_the_environment(
    server: FakeXenoCanto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    species_file = tmp_path / "species.txt"
    species_file.write_text("# wanted\nParus major\n")
    args = ["--species", "Turdus merula", "--species-file", str(species_file), "--out", str(tmp_path / "raw"),
            "--api-url", f"{server.base_url}/api/3/recordings", "--rate", "500",
            "--backoff", "0.01"]  # fmt: skip
    monkeypatch.delenv("XC_API_KEY", raising=False)
    with caplog.at_level(logging.ERROR):
        assert fetch.main(args) == 1
    assert "XC_API_KEY" in caplog.text and not (tmp_path / "raw").exists()
    monkeypatch.setenv("XC_API_KEY", KEY)
    assert fetch.main(args) == 0
    assert {row["id"] for row in read_metadata(tmp_path / "raw" / "metadata.csv")} == EXPECTED


def test_fetch_corpus_uses_the_xeno_canto_params(server: FakeXenoCanto, tmp_path: Path) -> None:
    params = XenoCantoParams(species=["Parus major"], min_quality="B", requests_per_second=500.0,
                             api_url=f"{server.base_url}/api/3/recordings")  # fmt: skip
    summary = fetch_corpus(params, tmp_path, api_key=KEY)
    assert summary.listed == 1 and (tmp_path / "audio" / "XC2001.flac").is_file()
    with pytest.raises(FetchError, match="species is empty"):
        fetch_corpus(XenoCantoParams(), tmp_path, api_key=KEY)


def test_species_names_are_checked() -> None:
    with pytest.raises(FetchError, match="Genus species"):
        fetch_recordings(["Turdus"], "/nonexistent", FetchSettings(api_url="http://127.0.0.1:9", api_key=KEY))
    assert species_query(" Turdus   merula ", "B") == 'sp:"Turdus merula" q:B'


def test_rate_limiter_spaces_requests_evenly() -> None:
    now = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    limiter = RateLimiter(2.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(3):
        limiter.wait()
    assert slept == pytest.approx([0.5, 0.5])
    now[0] += 10.0  # idle time is not saved up as a burst
    limiter.wait()
    limiter.wait()
    assert slept == pytest.approx([0.5, 0.5, 0.5])
