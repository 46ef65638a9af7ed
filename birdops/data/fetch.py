"""Download recordings and their metadata from the xeno-canto API v3 (``birdops fetch``).

The API (``https://xeno-canto.org/api/3/recordings?query=...&key=...&page=N``) needs a key; it is read
from the environment variable ``XC_API_KEY`` and never logged. v3 queries are made of tags only. This
module asks, per species and per accepted grade, best first::

    sp:"Turdus merula" q:A len:0-901      then q:B, ... down to --min-quality

Exact-grade tags are used because they are unambiguous; the documentation and third-party clients
disagree on the comparison form (``q:">C"`` vs ``q_gt:C``). ``len:LOW-HIGH`` (seconds; xeno-canto's
search help: ``len:10-15`` "will return recordings lasting between 10 and 15 seconds") asks only for
recordings ``prepare`` can accept (``--min-seconds``/``--max-seconds``, by default ``prepare.min_seconds``
and ``prepare.max_seconds``, never over the decoder's one-hour limit), a second wider on each side, since
the record's ``length`` is whole seconds. Every returned record is also checked locally (grade, species,
a downloadable ``file``, its ``length``), so a server that ignores a tag cannot let a wrong recording in,
and only recordings kept count toward ``--max-per-species``. Pages are followed through ``numPages``
until ``--max-per-species`` is reached. The summary says, per species, how many recordings were left
out and why (too long, too short, restricted, named otherwise by the API, download failed); a record
the API lists under another name than the one asked for (a renamed species) is logged with both names.

Downloads are resumable: a finished file ``audio/XC<id>.<ext>`` is never fetched again; bytes arrive in
``audio/XC<id>.<ext>.part`` (continued with an HTTP ``Range`` request after an interruption) and the file
is renamed into place only when complete. Every request waits for the rate limiter. Server errors (5xx,
429), timeouts and broken connections are retried with exponential backoff, or after the wait a
``Retry-After`` header asks for, up to ``--max-retry-after`` seconds; a longer one stops the fetch (run
it again later). A recording that still fails is logged and skipped and the others finish.
``metadata.csv`` is rewritten after every species with one row per recording on disk (schema of
:mod:`birdops.data.metadata`); if a species cannot be queried at all, the rows it had in an earlier
``metadata.csv`` are kept. The fetch exits non-zero when a species could not be queried or ends with
no recording. Standard library only (and the decoder's length limit, from :mod:`birdops.audio`).
"""

from __future__ import annotations

import argparse
import email.utils
import http.client
import json
import logging
import math
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from tqdm import tqdm

from birdops.audio import MAX_SECONDS
from birdops.config import ParamsError, PrepareParams, XenoCantoParams, load_params
from birdops.data.metadata import (
    AUDIO_DIR,
    LOCAL_PATH,
    METADATA_FILE,
    QUALITY_GRADES,
    DataError,
    MetadataError,
    label_of,
    parse_length_seconds,
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


# why a listed recording was not fetched (FetchSummary.outcomes' left_out keys, besides the length ones)
RESTRICTED = "restricted (no file to download)"
NO_LENGTH = "length unreadable"
DOWNLOAD_FAILED = "download failed"


class FetchError(DataError):
    """The download cannot go on (no key, bad arguments, an API error that retrying will not fix)."""


class FetchHalt(FetchError):
    """Nothing more can succeed now, so the whole fetch stops (what it got is on disk and listed)."""


class FetchAuthError(FetchHalt):
    """The API rejected the key (HTTP 401/403)."""


class RetryAfterTooLongError(FetchHalt):
    """The server asked to wait longer (``Retry-After``) than ``--max-retry-after`` allows."""


class _RetryableError(Exception):
    """A failure worth another try (5xx, 429, timeout, broken connection, short body), with the wait
    the server asked for in a ``Retry-After`` header, if any."""

    def __init__(self, message: str, retry_after_seconds: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


@dataclass(frozen=True)
class FetchSettings:
    """How to talk to the API."""

    api_url: str
    api_key: str
    # data.xeno_canto's (or the CLI flags'), passed in: no default that could disagree with params.yaml
    min_quality: str
    max_per_species: int
    requests_per_second: float
    max_retry_after_seconds: float  # the longest Retry-After waited out; a longer one stops the fetch
    # prepare.min_seconds / max_seconds: recordings prepare would refuse for their length are not fetched
    min_seconds: float
    max_seconds: float
    timeout_seconds: float = 60.0
    retries: int = 3  # extra attempts after the first
    backoff_seconds: float = 2.0  # first retry delay, doubled each time

    @property
    def grades(self) -> tuple[str, ...]:
        """Accepted grades, best first (``"C"`` -> ``A, B, C``)."""
        return QUALITY_GRADES[: quality_rank(self.min_quality) + 1]

    @property
    def longest_seconds(self) -> float:
        """The longest recording fetched: ``max_seconds``, at most the decoder's limit (one hour)."""
        return min(self.max_seconds, MAX_SECONDS)


@dataclass
class SpeciesOutcome:
    """What a fetch got for one species."""

    listed: int = 0  # its rows in metadata.csv
    left_out: Counter[str] = field(default_factory=Counter)  # why -> recordings the API listed, not fetched
    query_error: str = ""  # the API could not be queried (its earlier rows, if any, were kept)


@dataclass
class FetchSummary:
    """What a fetch did."""

    species: int = 0
    listed: int = 0  # recordings in metadata.csv
    downloaded: int = 0
    already_present: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # recording id -> reason
    failed_species: dict[str, str] = field(default_factory=dict)  # species -> why it could not be queried
    outcomes: dict[str, SpeciesOutcome] = field(default_factory=dict)  # species -> what it got

    @property
    def empty_species(self) -> dict[str, str]:
        """Each species that ended with no recording, and why."""
        return {name: why_empty(outcome) for name, outcome in self.outcomes.items() if not outcome.listed}


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
                self._sleep(self._wait_seconds(err, delay, what))
                delay *= 2
        raise AssertionError("unreachable")

    def _wait_seconds(self, err: _RetryableError, backoff_seconds: float, what: str) -> float:
        """The wait before the next try: the server's ``Retry-After`` when it sent one (refused past
        ``max_retry_after_seconds``), else the backoff."""
        asked = err.retry_after_seconds
        if asked is None:
            log.warning("%s: %s; retrying in %.1f s", what, err, backoff_seconds)
            return backoff_seconds
        limit = self.settings.max_retry_after_seconds
        if asked > limit:
            raise RetryAfterTooLongError(
                f"{what}: {err}, and the server asks to wait {asked:g} s (Retry-After), longer than "
                f"--max-retry-after / data.xeno_canto.max_retry_after_seconds ({limit:g} s): the fetch "
                "stops here; run it again later (files already fetched are kept)"
            )
        log.warning("%s: %s; retrying in %.1f s, as the server's Retry-After asks", what, err, asked)
        return asked

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
                wait = retry_after_seconds(err.headers.get("Retry-After") if err.headers else None)
                raise _RetryableError(f"HTTP {err.code} {detail}", wait) from err
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
    """The API's own error message when it sent one, else the HTTP reason."""
    try:
        body = json.loads(err.read() or b"{}")
    except (ValueError, OSError):
        return str(err.reason)
    return error_message(body) or str(err.reason)


def error_message(body: Any) -> str | None:
    """The message of a JSON error body, flat (``{"error": "unauthorized", "message": "..."}``) or
    nested (``{"error": {"code": "...", "message": "..."}}``), led by its error name or code."""
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    if isinstance(error, dict):
        name, message = error.get("code"), error.get("message")
    else:
        name, message = error, body.get("message")
    parts = [str(part) for part in (name, message) if part not in (None, "")]
    return ": ".join(parts) or None


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait: delta-seconds or an HTTP date (RFC 9110); None
    when absent or unreadable (the backoff applies), 0 for a date already past."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


# ------------------------------------------------------------------------------------------ search
def species_query(species: str, grade: str, settings: FetchSettings) -> str:
    """The v3 query of one species at one exact grade and the lengths fetched:
    ``sp:"Genus species" q:A len:0-901`` (whole seconds, a second wider than the limits on each side)."""
    low = max(0, math.floor(settings.min_seconds - 1))
    high = math.ceil(settings.longest_seconds + 1)
    return f'sp:"{" ".join(species.split())}" q:{grade} len:{low}-{high}'


def search_species(client: XenoCantoClient, species: str) -> tuple[list[dict[str, Any]], Counter[str]]:
    """Up to ``max_per_species`` records of ``species`` to download, best grades first, and how many
    of the others the API listed were left out, by reason (each recording counted once)."""
    settings = client.settings
    found: dict[str, dict[str, Any]] = {}
    left_out: Counter[str] = Counter()
    seen: set[str] = set()
    for grade in settings.grades:
        page, pages = 1, 1
        while page <= pages and len(found) < settings.max_per_species:
            data = client.search_page(species_query(species, grade, settings), page)
            pages = int(data.get("numPages") or 1)
            for record in data["recordings"]:
                xc_id = str(record.get("id", "")).strip() if isinstance(record, Mapping) else ""
                if len(found) == settings.max_per_species or not xc_id or xc_id in seen:
                    continue
                if str(record.get("q", "")).strip().upper() != grade:
                    continue  # a server ignoring q: lists it again under its own grade's query
                seen.add(xc_id)
                reason = leave_out_reason(record, species, settings)
                if reason is None:
                    found[xc_id] = record
                else:
                    left_out[reason] += 1
            page += 1
    return list(found.values()), left_out


def leave_out_reason(record: Mapping[str, Any], species: str, settings: FetchSettings) -> str | None:
    """None when ``record`` (of the grade asked for) is to be downloaded, else why not: another
    species' name, no file to download, or a ``length`` outside what ``prepare`` accepts."""
    named = label_of({"gen": str(record.get("gen", "")), "sp": str(record.get("sp", ""))})
    if named.lower() != " ".join(species.split()).lower():
        log.warning(
            "XC%s: asked for %s, the API answered with a recording of %s; dropped (if %s is the "
            "species' current name, ask for it by that name)",
            record.get("id"),
            species,
            named,
            named,
        )
        return named_otherwise(named)
    if not str(record.get("file") or "").strip():
        log.info("XC%s: no downloadable file (restricted species?); skipped", record.get("id"))
        return RESTRICTED
    return length_problem(str(record.get("length") or ""), settings)


def named_otherwise(name: str) -> str:
    """The left-out reason of a record the API lists under ``name``, not the species asked for."""
    return f"named {name} by the API"


def length_problem(length: str, settings: FetchSettings) -> str | None:
    """Why a recording of xeno-canto ``length`` (``m:ss``) is not fetched, or None. ``length`` is whole
    seconds (rounded or cut: the API does not say), so only a recording a second or more past a limit
    is left out: its true duration is past the limit too, and ``prepare`` would refuse it."""
    try:
        seconds = parse_length_seconds(length)
    except ValueError:
        return NO_LENGTH
    if seconds >= settings.longest_seconds + 1:
        return f"longer than {settings.longest_seconds:g} s"
    if seconds <= settings.min_seconds - 1:
        return f"shorter than {settings.min_seconds:g} s"
    return None


def why_empty(outcome: SpeciesOutcome) -> str:
    """Why a species ended with no recording, from what the fetch saw of it."""
    if outcome.query_error:
        return f"the API could not be queried: {outcome.query_error}"
    if not outcome.left_out:
        return "the API lists no recording of the grades and lengths asked for"
    counts = ", ".join(f"{count} {reason}" for reason, count in outcome.left_out.most_common())
    why = f"every recording the API listed was left out: {counts}"
    renamed = [reason for reason in outcome.left_out if reason.startswith("named ")]
    if renamed:
        names = " or ".join(reason.removeprefix("named ").removesuffix(" by the API") for reason in renamed)
        why += f" (if {names} is the species' current name, ask for it by that name)"
    return why


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
        outcome = summary.outcomes[name] = SpeciesOutcome()
        try:
            records, outcome.left_out = search_species(client, name)
        except FetchHalt:
            raise
        except FetchError as err:
            log.error("%s: cannot query the API: %s; keeping its earlier rows, if any", name, err)
            summary.failed_species[name] = outcome.query_error = str(err)
            rows_by_species[name] = [r for r in previous if _same_label(r, name) and _on_disk(r, out_dir)]
        else:
            rows_by_species[name] = _download_all(client, records, out_dir, summary, outcome)
        outcome.listed = len(rows_by_species[name])
        _write_rows(out_dir, rows_by_species)
    summary.listed = sum(len(rows) for rows in rows_by_species.values())
    _log_summary(summary, settings.max_per_species)
    return summary


def _download_all(
    client: XenoCantoClient,
    records: Iterable[Mapping[str, Any]],
    out_dir: Path,
    summary: FetchSummary,
    outcome: SpeciesOutcome,
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
            except FetchHalt:
                raise
            except FetchError as err:
                log.warning("XC%s: skipped: %s", record["id"], err)
                summary.failed[str(record["id"])] = str(err)
                outcome.left_out[DOWNLOAD_FAILED] += 1
                continue
            summary.downloaded += 1
        rows.append(row_from_api(record, local))
    return rows


def fetch_corpus(
    params: XenoCantoParams, prepare: PrepareParams, out_dir: str | Path, api_key: str | None = None
) -> FetchSummary:
    """A download with ``params`` (``data.xeno_canto``) into ``out_dir``, resumed where one stopped,
    of recordings whose length ``prepare`` (its ``min_seconds``/``max_seconds``) accepts.

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
        max_retry_after_seconds=params.max_retry_after_seconds,
        min_seconds=prepare.min_seconds,
        max_seconds=prepare.max_seconds,
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


def _log_summary(summary: FetchSummary, max_per_species: int) -> None:
    log.info(
        "fetch: %d species, %d recordings listed (%d downloaded, %d already present), %d failed",
        summary.species,
        summary.listed,
        summary.downloaded,
        summary.already_present,
        len(summary.failed),
    )
    for name, outcome in summary.outcomes.items():
        if outcome.listed:
            left_out = ", ".join(f"{count} {reason}" for reason, count in outcome.left_out.most_common())
            log.info(
                "%s: %d of the %d recordings asked for%s",
                name,
                outcome.listed,
                max_per_species,
                f"; left out: {left_out}" if left_out else "",
            )
    for name, reason in summary.failed_species.items():
        log.error("species %s not updated: %s", name, reason)
    for name, why in summary.empty_species.items():
        log.error("species %s has no recording: %s", name, why)


# --------------------------------------------------------------------------------------------- CLI
# the flags a user may leave out, and the params.yaml key (dotted path) each then takes its value from
PARAMS_FLAGS: dict[str, str] = {
    "min_quality": "data.xeno_canto.min_quality",
    "max_per_species": "data.xeno_canto.max_per_species",
    "rate": "data.xeno_canto.requests_per_second",
    "api_url": "data.xeno_canto.api_url",
    "max_retry_after": "data.xeno_canto.max_retry_after_seconds",
    "min_seconds": "prepare.min_seconds",
    "max_seconds": "prepare.max_seconds",
}


def build_parser() -> argparse.ArgumentParser:
    """The ``birdops fetch`` arguments; those of :data:`PARAMS_FLAGS` left out take their values from
    ``--params`` (:func:`with_params_defaults`)."""
    parser = argparse.ArgumentParser(
        prog="birdops fetch",
        description=f"Download recordings and metadata from the xeno-canto API v3 (key in ${API_KEY_ENV}).",
    )
    parser.add_argument("--species", nargs="+", default=[], help='scientific names, e.g. "Turdus merula"')
    parser.add_argument("--species-file", type=Path, help="a text file with one scientific name per line")
    parser.add_argument("--out", type=Path, required=True, help="raw folder: audio/ and metadata.csv")
    parser.add_argument(
        "--params",
        type=Path,
        default=Path("params.yaml"),
        help="its data.xeno_canto and prepare.min_seconds/max_seconds set the flags left out",
    )
    parser.add_argument("--min-quality", choices=QUALITY_GRADES)
    parser.add_argument("--max-per-species", type=int)
    parser.add_argument("--min-seconds", type=float, help="shorter recordings are not fetched")
    parser.add_argument("--max-seconds", type=float, help="longer recordings are not fetched (at most 3600)")
    parser.add_argument("--rate", type=float, help="requests per second")
    parser.add_argument("--api-url")
    parser.add_argument("--retries", type=int, default=3, help="extra attempts after a server error")
    parser.add_argument("--backoff", type=float, default=2.0, help="first retry delay in seconds (doubles)")
    parser.add_argument(
        "--max-retry-after", type=float, help="the longest Retry-After waited out, in seconds; longer stops"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    return parser


def with_params_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with each flag of :data:`PARAMS_FLAGS` left out set from its key in ``args.params``
    (read only when a flag is left out)."""
    missing = [flag for flag in PARAMS_FLAGS if getattr(args, flag) is None]
    if not missing:
        return args
    params: Any = load_params(args.params)
    from_params = {flag: _value_at(params, PARAMS_FLAGS[flag]) for flag in missing}
    return argparse.Namespace(**{**vars(args), **from_params})


def _value_at(params: Any, dotted: str) -> Any:
    for name in dotted.split("."):
        params = getattr(params, name)
    return params


def main(argv: list[str]) -> int:
    """``birdops fetch``: 0 when every species was queried and got at least one recording (single
    failed files are only logged and counted in the summary)."""
    args = build_parser().parse_args(argv)
    try:
        args = with_params_defaults(args)
        species = list(args.species) + _read_species_file(args.species_file)
        if args.max_per_species < 1 or args.rate <= 0 or args.retries < 0 or args.max_retry_after < 0:
            raise FetchError(
                "--max-per-species must be >= 1, --rate > 0, --retries >= 0 and --max-retry-after >= 0"
            )
        if not 0 <= args.min_seconds < args.max_seconds:
            raise FetchError("--min-seconds must be >= 0 and below --max-seconds")
        settings = FetchSettings(
            api_url=args.api_url,
            api_key=api_key_from_env(),
            min_quality=args.min_quality,
            max_per_species=args.max_per_species,
            requests_per_second=args.rate,
            max_retry_after_seconds=args.max_retry_after,
            min_seconds=args.min_seconds,
            max_seconds=args.max_seconds,
            timeout_seconds=args.timeout,
            retries=args.retries,
            backoff_seconds=args.backoff,
        )
        summary = fetch_recordings(species, args.out, settings)
    except (DataError, ParamsError) as err:
        log.error("%s", err)
        return 1
    return 1 if summary.failed_species or summary.empty_species else 0


def _read_species_file(path: Path | None) -> list[str]:
    if path is None:
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise FetchError(f"{path}: cannot read the species list: {err}") from err
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
