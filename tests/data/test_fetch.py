"""`birdops fetch` against a real HTTP server on 127.0.0.1 that speaks the xeno-canto API v3."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from params_yaml import section, write_params
from xenocanto import FAIL_ALWAYS, FAIL_ONCE, KEY, FakeXenoCanto

from birdops.audio import load_audio
from birdops.data import fetch
from birdops.data.fetch import (
    DOWNLOAD_FAILED,
    RESTRICTED,
    FetchAuthError,
    FetchError,
    FetchSettings,
    RateLimiter,
    RetryAfterTooLongError,
    api_key_from_env,
    error_message,
    fetch_corpus,
    fetch_recordings,
    retry_after_seconds,
    species_query,
)
from birdops.data.metadata import read_metadata, validate_rows


def settings(state: FakeXenoCanto, **changes: Any) -> FetchSettings:
    base = FetchSettings(
        api_url=f"{state.base_url}/api/3/recordings",
        api_key=KEY,
        min_quality="C",
        max_per_species=10,
        requests_per_second=500.0,
        max_retry_after_seconds=300.0,
        min_seconds=1.0,  # prepare's
        max_seconds=900.0,
        timeout_seconds=5.0,
        retries=2,
        backoff_seconds=0.01,
    )
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
    assert not {"1005", "1007", "1008", "1009", "3001"} & set(server.file_hits)
    assert not list(tmp_path.rglob("*.part"))
    assert 'sp:"Turdus merula" q:A len:0-901' in server.queries
    assert not any("q:D" in q for q in server.queries)


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
    assert all(" q:A " in query for query in server.queries)


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
    args = [
        "--species",
        "Turdus merula",
        "--species-file",
        str(species_file),
        "--out",
        str(tmp_path / "raw"),
        "--api-url",
        f"{server.base_url}/api/3/recordings",
        "--rate",
        "500",
        "--backoff",
        "0.01",
    ]
    monkeypatch.delenv("XC_API_KEY", raising=False)
    with caplog.at_level(logging.ERROR):
        assert fetch.main(args) == 1
    assert "XC_API_KEY" in caplog.text and not (tmp_path / "raw").exists()
    monkeypatch.setenv("XC_API_KEY", KEY)
    assert fetch.main(args) == 0
    assert {row["id"] for row in read_metadata(tmp_path / "raw" / "metadata.csv")} == EXPECTED


def test_fetch_corpus_uses_the_xeno_canto_params(server: FakeXenoCanto, tmp_path: Path) -> None:
    params = section(
        "data.xeno_canto",
        species=["Parus major"],
        min_quality="B",
        requests_per_second=500.0,
        api_url=f"{server.base_url}/api/3/recordings",
    )
    summary = fetch_corpus(params, section("prepare", max_seconds=60.0), tmp_path, api_key=KEY)
    assert summary.listed == 1 and (tmp_path / "audio" / "XC2001.flac").is_file()
    assert server.queries == ['sp:"Parus major" q:A len:0-61', 'sp:"Parus major" q:B len:0-61']
    with pytest.raises(FetchError, match="species is empty"):
        fetch_corpus(section("data.xeno_canto", species=[]), section("prepare"), tmp_path, api_key=KEY)


def test_species_names_are_checked() -> None:
    with pytest.raises(FetchError, match="Genus species"):
        fetch_recordings(
            ["Turdus"],
            "/nonexistent",
            FetchSettings(
                api_url="http://127.0.0.1:9",
                api_key=KEY,
                min_quality="C",
                max_per_species=150,
                requests_per_second=1.0,
                max_retry_after_seconds=300.0,
                min_seconds=1.0,
                max_seconds=900.0,
            ),
        )
    queried = species_query(" Turdus   merula ", "B", FetchSettings("", "", "C", 1, 1.0, 0.0, 2.5, 60.5))
    assert queried == 'sp:"Turdus merula" q:B len:1-62'


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


def test_cli_flags_left_out_come_from_data_xeno_canto_in_params(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    xeno_canto = {
        "min_quality": "A",
        "max_per_species": 2,
        "requests_per_second": 500.0,
        "api_url": "http://h",
        "max_retry_after_seconds": 12.0,
    }
    prepare = {"min_seconds": 2.0, "max_seconds": 80.0}
    path = write_params(tmp_path / "params.yaml", data={"xeno_canto": xeno_canto}, prepare=prepare)
    args = fetch.build_parser().parse_args(["--out", "raw", "--params", str(path), "--max-per-species", "7"])
    filled = fetch.with_params_defaults(args)
    assert (filled.min_quality, filled.max_per_species, filled.rate, filled.api_url) == (
        "A",
        7,
        500.0,
        "http://h",
    )
    assert (filled.max_retry_after, filled.min_seconds, filled.max_seconds) == (12.0, 2.0, 80.0)
    absent = ["--out", str(tmp_path / "raw"), "--params", str(tmp_path / "absent.yaml")]
    every = ["--min-quality", "B", "--max-per-species", "3", "--rate", "2", "--api-url", "http://x"]
    every += ["--min-seconds", "1", "--max-seconds", "60", "--max-retry-after", "30"]
    given = fetch.build_parser().parse_args([*absent, *every])
    assert fetch.with_params_defaults(given) is given  # every flag given: no params.yaml is read
    with caplog.at_level(logging.ERROR):
        assert fetch.main(["--species", "Turdus merula", *absent]) == 1
    assert "absent.yaml: cannot read parameters" in caplog.text


# ------------------------------------------------------------------ what is left out, and said so
def test_too_long_and_restricted_recordings_are_left_out_before_download_and_counted(
    server: FakeXenoCanto, tmp_path: Path
) -> None:
    """Turdus merula: 1007 (15:01) is past prepare.max_seconds (900 s) but inside the query's
    len:0-901, 1008 (1:05:00) outside it, 1009 restricted. None is downloaded, none counts toward
    --max-per-species: four recordings asked for are four that prepare can use."""
    summary = fetch_recordings(["Turdus merula"], tmp_path, settings(server, max_per_species=4))
    assert {row["id"] for row in read_metadata(tmp_path / "metadata.csv")} == {"1001", "1002", "1003", "1004"}
    assert not {"1007", "1008", "1009"} & set(server.file_hits)
    assert all(query.endswith(" len:0-901") for query in server.queries)
    outcome = summary.outcomes["Turdus merula"]
    assert outcome.listed == 4 and outcome.left_out == {"longer than 900 s": 1, RESTRICTED: 1}
    assert summary.empty_species == {}


def test_the_length_filter_holds_when_the_server_ignores_the_len_tag(
    server: FakeXenoCanto, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server.honour_length_tag = False
    with caplog.at_level(logging.INFO, logger="birdops.data.fetch"):
        summary = fetch_recordings(["Turdus merula"], tmp_path, settings(server, max_seconds=7200.0))
    # asked for up to two hours: the decoder's one-hour limit still applies
    assert all(query.endswith(" len:0-3601") for query in server.queries)
    left_out = summary.outcomes["Turdus merula"].left_out
    assert left_out == {"longer than 3600 s": 1, RESTRICTED: 1}  # 1008; 1007 (901 s) is kept
    assert "1008" not in server.file_hits and "1007" in server.file_hits
    assert (
        "Turdus merula: 5 of the 10 recordings asked for; left out: 1 longer than 3600 s, 1 restricted"
        in (caplog.text)
    )


def test_a_species_that_gets_nothing_is_named_with_why_and_the_fetch_fails(
    server: FakeXenoCanto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    wanted = ["Turdus merula", "Parus caeruleus", "Tetrax tetrax", "Otis tarda", "Aquila nipalensis"]
    with caplog.at_level(logging.INFO, logger="birdops.data.fetch"):
        summary = fetch_recordings(wanted, tmp_path, settings(server))
    empty = summary.empty_species
    assert set(empty) == set(wanted[1:])
    # the API answers the former name with the current one's recordings: both names are said
    assert empty["Parus caeruleus"].endswith(
        "2 named Cyanistes caeruleus by the API (if Cyanistes caeruleus is the species' current name, "
        "ask for it by that name)"
    )
    assert "XC4001: asked for Parus caeruleus, the API answered with a recording of Cyanistes caeruleus" in (
        caplog.text
    )
    assert empty["Tetrax tetrax"] == f"every recording the API listed was left out: 2 {RESTRICTED}"
    assert empty["Otis tarda"] == f"every recording the API listed was left out: 1 {DOWNLOAD_FAILED}"
    assert "HTTP 404 not_found: XC6001 is not available" in summary.failed["6001"]
    assert empty["Aquila nipalensis"] == "the API lists no recording of the grades and lengths asked for"
    for name, why in empty.items():
        assert f"species {name} has no recording: {why}" in caplog.text
    assert {row["id"] for row in read_metadata(tmp_path / "metadata.csv")} == {"1001", "1002", "1003", "1004"}

    monkeypatch.setenv("XC_API_KEY", KEY)
    cli = ["--out", str(tmp_path / "cli"), "--api-url", f"{server.base_url}/api/3/recordings"]
    cli += ["--rate", "500", "--backoff", "0.01", "--retries", "1"]
    assert fetch.main(["--species", "Turdus merula", "Tetrax tetrax", *cli]) == 1
    assert fetch.main(["--species", "Turdus merula", *cli]) == 0


# ---------------------------------------------------------------------- Retry-After, error bodies
def test_retry_after_is_waited_out(server: FakeXenoCanto, tmp_path: Path) -> None:
    slept: list[float] = []
    server.throttled = [(429, "7"), (503, "3")]
    summary = fetch_recordings(["Parus major"], tmp_path, settings(server), sleep=slept.append)
    assert summary.listed == 2
    assert [s for s in slept if s >= 1] == [7.0, 3.0]  # not the 0.01 s backoff; the rate limiter's are ms


def test_a_retry_after_past_the_limit_stops_the_fetch(
    server: FakeXenoCanto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    slept: list[float] = []
    server.throttled = [(429, "3600")]
    with pytest.raises(RetryAfterTooLongError, match=r"wait 3600 s \(Retry-After\), longer than .*\(300 s\)"):
        fetch_recordings(SPECIES, tmp_path, settings(server), sleep=slept.append)
    assert max(slept, default=0.0) < 1 and server.file_hits == {}
    monkeypatch.setenv("XC_API_KEY", KEY)
    server.throttled = [(503, "120")]
    cli = ["--species", "Parus major", "--out", str(tmp_path / "cli"), "--rate", "500"]
    cli += ["--api-url", f"{server.base_url}/api/3/recordings", "--max-retry-after", "60"]
    with caplog.at_level(logging.ERROR):
        assert fetch.main(cli) == 1
    assert "HTTP 503 too_many_requests: slow down, and the server asks to wait 120 s" in caplog.text


def test_retry_after_is_read_as_seconds_or_an_http_date() -> None:
    now = datetime(2025, 10, 21, 7, 28, 0, tzinfo=timezone.utc)
    assert retry_after_seconds("120", now) == 120.0
    assert retry_after_seconds("Tue, 21 Oct 2025 07:29:30 GMT", now) == 90.0
    assert retry_after_seconds("Tue, 21 Oct 2025 07:00:00 GMT", now) == 0.0  # already past
    assert retry_after_seconds(None, now) is None and retry_after_seconds("soon", now) is None


def test_a_nested_error_body_keeps_its_message(server: FakeXenoCanto, tmp_path: Path) -> None:
    server.nested_errors = True
    with pytest.raises(FetchAuthError, match="HTTP 401 unauthorized: invalid or missing key"):
        fetch_recordings(SPECIES, tmp_path, settings(server, api_key="wrong"))
    summary = fetch_recordings(["Otis tarda"], tmp_path, settings(server))
    assert "HTTP 404 not_found: XC6001 is not available" in summary.failed["6001"]
    assert error_message({"error": {"code": "invalid_query", "message": "unknown tag"}}) == (
        "invalid_query: unknown tag"
    )
    assert error_message({"error": "unauthorized", "message": "bad key"}) == "unauthorized: bad key"
    assert error_message({"message": "only a message"}) == "only a message"
    assert error_message(["not", "an", "object"]) is None
