"""Download recordings and their metadata from the xeno-canto API v3 (``birdops fetch``).

The API (``https://xeno-canto.org/api/3/recordings?query=...&key=...&page=N``) needs a key; it is read
from the environment variable ``XC_API_KEY`` and never logged. v3 queries are made of tags only. This
module asks, per species and per accepted grade, best first::

    sp:"Turdus merula" q:A      then q:B, ... down to --min-quality

Exact-grade tags are used because they are unambiguous; the documentation and third-party clients
disagree on the comparison form (``q:">C"`` vs ``q_gt:C``). Every returned record is also checked
locally (species, grade, a downloadable ``file``), so a server that ignores a tag cannot let a wrong
recording in. Pages are followed through ``numPages`` until ``--max-per-species`` is reached.

Downloads are resumable: a finished file ``audio/XC<id>.<ext>`` is never fetched again; bytes arrive in
``audio/XC<id>.<ext>.part`` (continued with an HTTP ``Range`` request after an interruption) and the file
is renamed into place only when complete. Every request waits for the rate limiter. Server errors (5xx,
429), timeouts and broken connections are retried with exponential backoff; a recording that still
fails is logged and skipped and the others finish. ``metadata.csv`` is rewritten after every species
with one row per recording on disk (schema of :mod:`birdops.data.metadata`); if a species cannot be
queried at all, the rows it had in an earlier ``metadata.csv`` are kept. Standard library only.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from tqdm import tqdm

from birdops.config import ParamsError, XenoCantoParams, load_params
from birdops.data.metadata import (
    AUDIO_DIR,
    LOCAL_PATH,
    METADATA_FILE,
    QUALITY_GRADES,
    DataError,
    MetadataError,
    label_of,
    quality_rank,
    read_metadata,
    row_from_api,
    write_metadata,
)

log = logging.getLogger(__name__)

API_KEY_ENV = "XC_API_KEY"
AUDIO_EXTENSIONS = (".mp3", ".wav", ".flac", ".ogg", ".m4a", ".opus")
USER_AGENT = "birdops-fetch/0.1 (+https://github.com/birdops)"
_CHUNK_BYTES = 1 << 16
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class FetchError(DataError):
    """The download cannot go on (no key, bad arguments, an API error that retrying will not fix)."""


class FetchAuthError(FetchError):
    """The API rejected the key (HTTP 401/403): nothing else can succeed, so the fetch stops."""


class _RetryableError(Exception):
    """A failure worth another try (5xx, timeout, broken connection, short body)."""


@dataclass(frozen=True)
class FetchSettings:
    """How to talk to the API."""

    api_url: str
    api_key: str
    # data.xeno_canto's (or the CLI flags'), passed in: no default that could disagree with params.yaml
    min_quality: str
    max_per_species: int
    requests_per_second: float
    timeout_seconds: float = 60.0
    retries: int = 3  # extra attempts after the first
    backoff_seconds: float = 2.0  # first retry delay, doubled each time

    @property
    def grades(self) -> tuple[str, ...]:
        """Accepted grades, best first (``"C"`` -> ``A, B, C``)."""
        return QUALITY_GRADES[: quality_rank(self.min_quality) + 1]


@dataclass
class FetchSummary:
    """What a fetch did."""

    species: int = 0
    listed: int = 0  # recordings in metadata.csv
    downloaded: int = 0
    already_present: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # recording id -> reason
    failed_species: dict[str, str] = field(default_factory=dict)  # species -> reason


class RateLimiter:
    """At most ``requests_per_second`` request starts per second (evenly spaced)."""

    def __init__(
        self,
        requests_per_second: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if requests_per_second <= 0:
            raise ValueError("requests_per_second must be > 0")
        self.interval_seconds = 1.0 / requests_per_second
        self._clock, self._sleep = clock, sleep
        self._next = -float("inf")

    def wait(self) -> None:
        """Block until the next request may start."""
        now = self._clock()
        if now < self._next:
            self._sleep(self._next - now)
            now = self._next
        self._next = now + self.interval_seconds


class XenoCantoClient:
    """HTTP to the API and its file URLs: rate-limited, retried, resumable downloads."""

    def __init__(self, settings: FetchSettings, sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings = settings
        self.limiter = RateLimiter(settings.requests_per_second, sleep=sleep)
        self._sleep = sleep

    def search_page(self, query: str, page: int) -> dict[str, Any]:
        """One page of results for ``query`` (the JSON object with ``numPages`` and ``recordings``)."""
        params = {"query": query, "key": self.settings.api_key, "page": page}
        params["per_page"] = min(500, max(50, self.settings.max_per_species))
        url = f"{self.settings.api_url}?{urllib.parse.urlencode(params)}"
        payload = self._retrying(lambda: self._read(url), f"query {query!r} page {page}")
        try:
            data = json.loads(payload)
        except json.JSONDecodeError as err:
            raise FetchError(f"query {query!r} page {page}: the API did not return JSON: {err}") from err
        if not isinstance(data, dict) or not isinstance(data.get("recordings"), list):
            raise FetchError(f"query {query!r} page {page}: unexpected answer {str(data)[:200]!r}")
        return data

    def download(self, url: str, dest: Path) -> None:
        """Fetch ``url`` into ``dest`` through ``dest.part``, resuming a partial file; atomic rename."""
        part = dest.with_name(dest.name + ".part")
        dest.parent.mkdir(parents=True, exist_ok=True)
        self._retrying(lambda: self._download_once(url, part), dest.name)
        if part.stat().st_size == 0:
            part.unlink()
            raise FetchError(f"{dest.name}: the server sent an empty file")
        # not birdops.files: the .part file is the download itself, kept across runs so an
        # interrupted one resumes with a Range request; only its last step, the rename, is atomic
        os.replace(part, dest)

    def _retrying(self, action: Callable[[], Any], what: str) -> Any:
        delay = self.settings.backoff_seconds
        for attempt in range(self.settings.retries + 1):
            try:
                return action()
            except _RetryableError as err:
                if attempt == self.settings.retries:
                    raise FetchError(f"{what}: gave up after {attempt + 1} attempts: {err}") from err
                log.warning("%s: %s; retrying in %.1f s", what, err, delay)
                self._sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def _open(self, url: str, headers: Mapping[str, str]) -> http.client.HTTPResponse:
        self.limiter.wait()
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **headers})
        try:
            response: http.client.HTTPResponse = urllib.request.urlopen(
                request, timeout=self.settings.timeout_seconds
            )
        except urllib.error.HTTPError as err:
            detail = _error_detail(err)
            err.close()
            if err.code in _RETRY_STATUS:
                raise _RetryableError(f"HTTP {err.code} {detail}") from err
            raise _HttpStatusError(err.code, f"HTTP {err.code} {detail}") from err
        except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as err:
            raise _RetryableError(str(getattr(err, "reason", err))) from err
        return response

    def _read(self, url: str) -> bytes:
        try:
            with self._open(url, {}) as response:
                return response.read()
        except _HttpStatusError as err:
            if err.code in (401, 403):
                raise FetchAuthError(f"the API rejected the key in ${API_KEY_ENV}: {err}") from err
            raise FetchError(f"the API refused the request: {err}") from err
        except (TimeoutError, ConnectionError, http.client.HTTPException) as err:
            raise _RetryableError(f"connection broke: {err}") from err

    def _download_once(self, url: str, part: Path) -> None:
        offset = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            with self._open(url, headers) as response:
                if offset and response.status != 206:
                    offset = 0  # the server ignored the range: start again
                length = response.headers.get("Content-Length")
                expected = offset + int(length) if length and length.isdigit() else None
                with part.open("ab" if offset else "wb") as handle:
                    handle.seek(offset)
                    handle.truncate()
                    shutil.copyfileobj(response, handle, _CHUNK_BYTES)
        except _HttpStatusError as err:
            if err.code == 416 and offset:  # range not satisfiable: the partial file is not a prefix
                part.unlink()
                raise _RetryableError("stale partial file discarded") from err
            raise FetchError(f"download refused: {err}") from err
        except (TimeoutError, ConnectionError, http.client.HTTPException) as err:
            raise _RetryableError(f"connection broke: {err}") from err
        size = part.stat().st_size
        if expected is not None and size != expected:
            raise _RetryableError(f"incomplete download ({size} of {expected} bytes)")


class _HttpStatusError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _error_detail(err: urllib.error.HTTPError) -> str:
    """The API's own error message when it sent one (v3: ``{"error": ..., "message": ...}``)."""
    try:
        body = json.loads(err.read() or b"{}")
    except (ValueError, OSError):
        return str(err.reason)
    if isinstance(body, dict) and body.get("message"):
        return f"{body.get('error', err.reason)}: {body['message']}"
    return str(err.reason)


# ------------------------------------------------------------------------------------------ search
def species_query(species: str, grade: str) -> str:
    """The v3 query of one species at one exact grade: ``sp:"Genus species" q:A``."""
    return f'sp:"{" ".join(species.split())}" q:{grade}'


def search_species(client: XenoCantoClient, species: str) -> list[dict[str, Any]]:
    """Up to ``max_per_species`` downloadable records of ``species``, best grades first."""
    settings = client.settings
    found: dict[str, dict[str, Any]] = {}
    for grade in settings.grades:
        page, pages = 1, 1
        while page <= pages and len(found) < settings.max_per_species:
            data = client.search_page(species_query(species, grade), page)
            pages = int(data.get("numPages") or 1)
            for record in data["recordings"]:
                if len(found) < settings.max_per_species and _wanted(record, species, grade):
                    found.setdefault(str(record["id"]), record)
            page += 1
    return list(found.values())


def _wanted(record: Mapping[str, Any], species: str, grade: str) -> bool:
    """Whether an API record is the species and grade asked for and can be downloaded."""
    if not isinstance(record, Mapping) or not str(record.get("id", "")).strip():
        return False
    row = {"gen": str(record.get("gen", "")), "sp": str(record.get("sp", ""))}
    same_species = label_of(row).lower() == " ".join(species.split()).lower()
    if not str(record.get("file") or "").strip():
        log.info("XC%s: no downloadable file (restricted species?); skipped", record.get("id"))
        return False
    return same_species and str(record.get("q", "")).strip().upper() == grade


def local_path_for(record: Mapping[str, Any]) -> str:
    """``audio/XC<id>.<ext>``; the extension comes from ``file-name`` (``.mp3`` when unknown)."""
    suffix = PurePosixPath(str(record.get("file-name") or "")).suffix.lower()
    extension = suffix if suffix in AUDIO_EXTENSIONS else ".mp3"
    return f"{AUDIO_DIR}/XC{record['id']}{extension}"


def file_url(record: Mapping[str, Any]) -> str:
    """The download URL of a record (protocol-relative URLs get ``https:``)."""
    url = str(record["file"]).strip()
    return f"https:{url}" if url.startswith("//") else url


# ---------------------------------------------------------------------------------------- download
def fetch_recordings(
    species: Sequence[str],
    out_dir: str | Path,
    settings: FetchSettings,
    sleep: Callable[[float], None] = time.sleep,
) -> FetchSummary:
    """Download every species of ``species`` into ``out_dir`` and (re)write ``out_dir/metadata.csv``."""
    names = _clean_species(species)
    out_dir = Path(out_dir)
    client = XenoCantoClient(settings, sleep=sleep)
    previous = _previous_rows(out_dir / METADATA_FILE)
    summary = FetchSummary(species=len(names))
    rows_by_species: dict[str, list[dict[str, str]]] = {}
    for name in tqdm(names, desc="species", unit="sp", disable=None):
        try:
            records = search_species(client, name)
        except FetchAuthError:
            raise
        except FetchError as err:
            log.error("%s: cannot query the API: %s; keeping its earlier rows, if any", name, err)
            summary.failed_species[name] = str(err)
            rows_by_species[name] = [r for r in previous if _same_label(r, name) and _on_disk(r, out_dir)]
        else:
            rows_by_species[name] = _download_all(client, records, out_dir, summary)
        _write_rows(out_dir, rows_by_species)
    summary.listed = sum(len(rows) for rows in rows_by_species.values())
    _log_summary(summary)
    return summary


def _download_all(
    client: XenoCantoClient, records: Iterable[Mapping[str, Any]], out_dir: Path, summary: FetchSummary
) -> list[dict[str, str]]:
    rows = []
    for record in records:
        local = local_path_for(record)
        dest = out_dir / local
        if dest.is_file() and dest.stat().st_size > 0:
            summary.already_present += 1
        else:
            try:
                client.download(file_url(record), dest)
            except FetchError as err:
                log.warning("XC%s: skipped: %s", record["id"], err)
                summary.failed[str(record["id"])] = str(err)
                continue
            summary.downloaded += 1
        rows.append(row_from_api(record, local))
    return rows


def fetch_corpus(params: XenoCantoParams, out_dir: str | Path, api_key: str | None = None) -> FetchSummary:
    """A download with ``params`` (``data.xeno_canto``) into ``out_dir``, resumed where one stopped.

    ``api_key`` defaults to the ``XC_API_KEY`` environment variable.
    """
    if not params.species:
        raise FetchError("data.xeno_canto.species is empty: list the scientific names to download")
    settings = FetchSettings(
        api_url=params.api_url,
        api_key=api_key if api_key is not None else api_key_from_env(),
        min_quality=params.min_quality,
        max_per_species=params.max_per_species,
        requests_per_second=params.requests_per_second,
    )
    return fetch_recordings(params.species, out_dir, settings)


def api_key_from_env(environ: Mapping[str, str] | None = None) -> str:
    """The API key from ``XC_API_KEY``; :class:`FetchError` explaining how to get one when unset."""
    key = (os.environ if environ is None else environ).get(API_KEY_ENV, "").strip()
    if not key:
        raise FetchError(
            f"the xeno-canto API v3 needs a key: set the environment variable {API_KEY_ENV} "
            "(registered xeno-canto members find theirs on https://xeno-canto.org/account)"
        )
    return key


def _clean_species(species: Sequence[str]) -> list[str]:
    names = list(dict.fromkeys(" ".join(name.split()) for name in species if name.strip()))
    bad = [name for name in names if len(name.split()) != 2]
    if bad:
        raise FetchError(f"species must be scientific names 'Genus species'; got {', '.join(map(repr, bad))}")
    if not names:
        raise FetchError("no species to fetch")
    return names


def _previous_rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    try:
        return read_metadata(path)
    except MetadataError as err:
        log.warning("ignoring the earlier %s: %s", path.name, err)
        return []


def _same_label(row: Mapping[str, str], species: str) -> bool:
    return label_of(row).lower() == species.lower()


def _on_disk(row: Mapping[str, str], out_dir: Path) -> bool:
    return bool(row.get(LOCAL_PATH)) and (out_dir / row[LOCAL_PATH]).is_file()


def _write_rows(out_dir: Path, rows_by_species: Mapping[str, list[dict[str, str]]]) -> None:
    rows = [row for name in sorted(rows_by_species) for row in rows_by_species[name]]
    write_metadata(out_dir / METADATA_FILE, rows)


def _log_summary(summary: FetchSummary) -> None:
    log.info(
        "fetch: %d species, %d recordings listed (%d downloaded, %d already present), %d failed",
        summary.species,
        summary.listed,
        summary.downloaded,
        summary.already_present,
        len(summary.failed),
    )
    for name, reason in summary.failed_species.items():
        log.error("species %s not updated: %s", name, reason)


# --------------------------------------------------------------------------------------------- CLI
# the flags a user may leave out, and the data.xeno_canto key each then takes its value from
PARAMS_FLAGS: dict[str, str] = {
    "min_quality": "min_quality",
    "max_per_species": "max_per_species",
    "rate": "requests_per_second",
    "api_url": "api_url",
}


def build_parser() -> argparse.ArgumentParser:
    """The ``birdops fetch`` arguments; those of :data:`PARAMS_FLAGS` left out are ``data.xeno_canto``'s
    values in ``--params`` (:func:`with_params_defaults`)."""
    parser = argparse.ArgumentParser(
        prog="birdops fetch",
        description=f"Download recordings and metadata from the xeno-canto API v3 (key in ${API_KEY_ENV}).",
    )
    parser.add_argument("--species", nargs="+", default=[], help='scientific names, e.g. "Turdus merula"')
    parser.add_argument("--species-file", type=Path, help="a text file with one scientific name per line")
    parser.add_argument("--out", type=Path, required=True, help="raw folder: audio/ and metadata.csv")
    parser.add_argument(
        "--params", type=Path, default=Path("params.yaml"), help="its data.xeno_canto sets the flags left out"
    )
    parser.add_argument("--min-quality", choices=QUALITY_GRADES)
    parser.add_argument("--max-per-species", type=int)
    parser.add_argument("--rate", type=float, help="requests per second")
    parser.add_argument("--api-url")
    parser.add_argument("--retries", type=int, default=3, help="extra attempts after a server error")
    parser.add_argument("--backoff", type=float, default=2.0, help="first retry delay in seconds (doubles)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    return parser


def with_params_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with each flag of :data:`PARAMS_FLAGS` left out set from ``data.xeno_canto`` in
    ``args.params`` (read only when a flag is left out)."""
    missing = [flag for flag in PARAMS_FLAGS if getattr(args, flag) is None]
    if not missing:
        return args
    section = load_params(args.params).data.xeno_canto
    from_params = {flag: getattr(section, PARAMS_FLAGS[flag]) for flag in missing}
    return argparse.Namespace(**{**vars(args), **from_params})


def main(argv: list[str]) -> int:
    """``birdops fetch``: 0 when every species was queried (single failed files are only logged)."""
    args = build_parser().parse_args(argv)
    try:
        args = with_params_defaults(args)
        species = list(args.species) + _read_species_file(args.species_file)
        if args.max_per_species < 1 or args.rate <= 0 or args.retries < 0:
            raise FetchError("--max-per-species must be >= 1, --rate > 0 and --retries >= 0")
        settings = FetchSettings(
            api_url=args.api_url,
            api_key=api_key_from_env(),
            min_quality=args.min_quality,
            max_per_species=args.max_per_species,
            requests_per_second=args.rate,
            timeout_seconds=args.timeout,
            retries=args.retries,
            backoff_seconds=args.backoff,
        )
        summary = fetch_recordings(species, args.out, settings)
    except (DataError, ParamsError) as err:
        log.error("%s", err)
        return 1
    return 1 if summary.failed_species else 0


def _read_species_file(path: Path | None) -> list[str]:
    if path is None:
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise FetchError(f"{path}: cannot read the species list: {err}") from err
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
