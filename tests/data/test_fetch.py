"""`birdops fetch` against a real HTTP server on 127.0.0.1 that speaks the xeno-canto API v3."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from params_yaml import section, write_params
from xenocanto import FAIL_ALWAYS, FAIL_ONCE, KEY, FakeXenoCanto

from birdops.audio import load_audio
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


def settings(state: FakeXenoCanto, **changes: Any) -> FetchSettings:
    base = FetchSettings(
        api_url=f"{state.base_url}/api/3/recordings",
        api_key=KEY,
        min_quality="C",
        max_per_species=10,
        requests_per_second=500.0,
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
    summary = fetch_corpus(params, tmp_path, api_key=KEY)
    assert summary.listed == 1 and (tmp_path / "audio" / "XC2001.flac").is_file()
    with pytest.raises(FetchError, match="species is empty"):
        fetch_corpus(section("data.xeno_canto", species=[]), tmp_path, api_key=KEY)


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
            ),
        )
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


def test_cli_flags_left_out_come_from_data_xeno_canto_in_params(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    xeno_canto = {
        "min_quality": "A",
        "max_per_species": 2,
        "requests_per_second": 500.0,
        "api_url": "http://h",
    }
    path = write_params(tmp_path / "params.yaml", data={"xeno_canto": xeno_canto})
    args = fetch.build_parser().parse_args(["--out", "raw", "--params", str(path), "--max-per-species", "7"])
    filled = fetch.with_params_defaults(args)
    assert (filled.min_quality, filled.max_per_species, filled.rate, filled.api_url) == (
        "A",
        7,
        500.0,
        "http://h",
    )
    absent = ["--out", str(tmp_path / "raw"), "--params", str(tmp_path / "absent.yaml")]
    every = ["--min-quality", "B", "--max-per-species", "3", "--rate", "2", "--api-url", "http://x"]
    given = fetch.build_parser().parse_args([*absent, *every])
    assert fetch.with_params_defaults(given) is given  # every flag given: no params.yaml is read
    with caplog.at_level(logging.ERROR):
        assert fetch.main(["--species", "Turdus merula", *absent]) == 1
    assert "absent.yaml: cannot read parameters" in caplog.text
