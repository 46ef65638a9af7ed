"""A real HTTP server on 127.0.0.1 that speaks the xeno-canto API v3, for the fetch tests."""

from __future__ import annotations

import io
import json
import math
import re
import threading
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import soundfile as sf

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
    ("1007", "Turdus", "merula", "A", "mp3"),  # 15:01, past prepare.max_seconds (900): within len:0-901
    ("1008", "Turdus", "merula", "B", "wav"),  # 1:05:00, past the decoder's hour: outside len:0-901
    ("1009", "Turdus", "merula", "B", "mp3"),  # restricted: no file
    ("2001", "Parus", "major", "B", "flac"),
    ("2002", "Parus", "major", "C", "wav"),  # the server fails once: retried
    ("2003", "Parus", "major", "C", "mp3"),  # the server always fails: skipped
    ("2004", "Parus", "major", "E", "wav"),
    ("3001", "Turdus", "philomelos", "A", "wav"),  # another species of the same genus, never asked for
    ("4001", "Cyanistes", "caeruleus", "A", "mp3"),  # asked for as "Parus caeruleus", its former name
    ("4002", "Cyanistes", "caeruleus", "B", "wav"),
    ("5001", "Tetrax", "tetrax", "A", "mp3"),  # a restricted species: no record has a file
    ("5002", "Tetrax", "tetrax", "C", "mp3"),
    ("6001", "Otis", "tarda", "A", "wav"),  # every download refused (404)
]
FAIL_ONCE, FAIL_ALWAYS = "2002", "2003"
LENGTHS = {"1007": "15:01", "1008": "1:05:00"}  # the others: "0:01"
RESTRICTED = {"1009", "5001", "5002"}
REFUSED = {"6001"}
# a name the API answers under another (current) one, as xeno-canto does for a renamed species
CURRENT_NAMES = {("Parus", "caeruleus"): ("Cyanistes", "caeruleus")}


@dataclass
class FakeXenoCanto:
    """State of the fake API: the files it serves and what it was asked."""

    base_url: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    file_hits: Counter[str] = field(default_factory=Counter)
    ranges: dict[str, str] = field(default_factory=dict)
    queries: list[str] = field(default_factory=list)
    broken_species: set[str] = field(default_factory=set)  # API queries naming these answer 503
    honour_length_tag: bool = True  # False: a server that ignores len: (the fetch still filters)
    nested_errors: bool = False  # error bodies as {"error": {"code", "message"}}
    # the next API requests answer (status, Retry-After header), one each, before any search
    throttled: list[tuple[int, str]] = field(default_factory=list)
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
            "id": xc_id,
            "gen": genus,
            "sp": epithet,
            "ssp": "",
            "grp": "birds",
            "en": f"{genus} bird",
            "rec": f"Recordist {xc_id[0]}",
            "cnt": "Netherlands",
            "loc": "Somewhere",
            "lat": "52.1",
            "lon": "5.1",
            "alt": "10",
            "type": "song",
            "sex": "male",
            "stage": "adult",
            "method": "field recording",
            "url": f"//xeno-canto.org/{xc_id}",
            "file": "" if xc_id in RESTRICTED else f"{self.base_url}/download/{xc_id}",
            "file-name": f"XC{xc_id}-{genus}-{epithet}.{fmt}",
            "sono": {"small": f"//xeno-canto.org/sono/{xc_id}.png"},
            "osci": {},
            "lic": "//cc/by/4.0/",
            "q": grade,
            "length": LENGTHS.get(xc_id, "0:01"),
            "time": "06:00",
            "date": "2020-05-01",
            "uploaded": "2020-05-02",
            "also": ["Parus major"] if genus == "Turdus" else [],
            "rmk": "",
            "animal-seen": "yes",
            "playback-used": "no",
            "temp": "",
            "regnr": "",
            "auto": "no",
            "dvc": "",
            "mic": "",
            "smp": "8000",
        }

    def search(self, query: str, page: int) -> dict[str, Any]:
        match = re.fullmatch(r'sp:"(\w+) (\w+)" q:([A-E]) len:(\d+)-(\d+)', query)
        assert match, f"unexpected query {query!r}"
        genus, epithet, grade, shortest, longest = match.groups()
        genus, epithet = CURRENT_NAMES.get((genus, epithet), (genus, epithet))
        hits = [self.record(*row) for row in CATALOGUE if row[1:4] == (genus, epithet, grade)]
        if self.honour_length_tag:  # "len:10-15 will return recordings lasting between 10 and 15 seconds"
            hits = [hit for hit in hits if int(shortest) <= seconds(hit["length"]) <= int(longest)]
        pages = max(1, math.ceil(len(hits) / PAGE_SIZE))
        return {
            "numRecordings": str(len(hits)),
            "numSpecies": "1",
            "page": page,
            "numPages": pages,
            "recordings": hits[(page - 1) * PAGE_SIZE : page * PAGE_SIZE],
        }


def seconds(length: str) -> int:
    """Seconds of an ``m:ss`` or ``h:mm:ss`` length."""
    total = 0
    for part in length.split(":"):
        total = 60 * total + int(part)
    return total


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
                self.error(401, "unauthorized", "invalid or missing key")
                return
            if state.throttled:
                status, retry_after = state.throttled.pop(0)
                self.error(status, "too_many_requests", "slow down", {"Retry-After": retry_after})
                return
            state.queries.append(params["query"][0])
            if any(name in params["query"][0] for name in state.broken_species):
                self.send(503, b"busy", "text/plain")
                return
            answer = state.search(params["query"][0], int(params.get("page", ["1"])[0]))
            self.send(200, json.dumps(answer).encode(), "application/json")

        def download(self, xc_id: str) -> None:
            state.file_hits[xc_id] += 1
            if xc_id in REFUSED:
                self.error(404, "not_found", f"XC{xc_id} is not available")
                return
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

        def error(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
            flat = {"error": code, "message": message}
            body = {"error": {"code": code, "message": message}} if state.nested_errors else flat
            self.send(status, json.dumps(body).encode(), "application/json", headers)

        def send(
            self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
        ) -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


def serve_xeno_canto() -> Iterator[FakeXenoCanto]:
    """The fake service on a free port for as long as the generator runs."""
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
