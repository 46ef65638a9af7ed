"""``birdops serve`` as a real server: the CLI started in a subprocess (uvicorn on 127.0.0.1, a free
port), real HTTP requests with httpx. The model is the tone detector of ``test_inference``."""

from __future__ import annotations

import io
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np
import onnx
import pytest
import soundfile as sf
from tones import LABELS, TONES_HZ, tone_model, tones

from birdops.serve import app as serve_app
from birdops.serve import detect, guards, uploads
from birdops.serve.inference import open_classifier
from birdops.serve.queue import InferenceBudget, InferenceQueue, InferenceTimeout, Overloaded
from birdops.serve.settings import FD_RESERVE, MAX_DERIVED_CONNECTIONS, ServeSettings

MAX_UPLOAD_BYTES = 400_000
MAX_AUDIO_SECONDS = 20.0
MAX_REQUESTS_IN_PROGRESS = 24
SLOW_CLIENTS = 200
HEADER_TIMEOUT_S = 1.5
BODY_TIMEOUT_S = 2.0
STARTUP_SECONDS = 60.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("server") / "server.log"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, server_log: Path) -> Iterator[str]:
    """The base URL of a running ``birdops serve``; settings from the environment and the options."""
    model = tmp_path_factory.mktemp("model") / "tones.onnx"
    onnx.save(tone_model(), str(model))
    port = free_port()
    env = {
        **os.environ,
        "BIRDOPS_SERVE_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
        "BIRDOPS_SERVE_MAX_AUDIO_SECONDS": str(MAX_AUDIO_SECONDS),
        "BIRDOPS_SERVE_TOP_K": "2",
        "BIRDOPS_SERVE_DEVICE": "cpu",
        "BIRDOPS_SERVE_INTRA_OP_THREADS": "1",
        "BIRDOPS_SERVE_MAX_REQUESTS_IN_PROGRESS": str(MAX_REQUESTS_IN_PROGRESS),
        "BIRDOPS_SERVE_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        "BIRDOPS_SERVE_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
    }
    command = [sys.executable, "-m", "birdops.cli", "serve", "--model", str(model), "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    with server_log.open("w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until_up(url, process, server_log)
        yield url
    finally:
        stop_process(process)


def stop_process(process: subprocess.Popen[str]) -> None:
    """End a server process: SIGTERM, then SIGKILL when it has not exited within 10 s."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_until_up(url: str, process: subprocess.Popen[str], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"birdops serve exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    pytest.fail(f"birdops serve did not answer within {STARTUP_SECONDS} s")


def encode(wave: np.ndarray, rate_hz: int, fmt: str) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, wave, rate_hz, format=fmt)
    return buffer.getvalue()


def post(url: str, payload: bytes, filename: str = "call.wav", **params: Any) -> httpx.Response:
    files = {"file": (filename, payload, "application/octet-stream")}
    return httpx.post(f"{url}/predict", files=files, params=params, timeout=30.0)


LOW_HIGH_MID = tones([(TONES_HZ[0], 1.0), (TONES_HZ[2], 1.0), (TONES_HZ[1], 0.6)])  # 2.6 s at 8 kHz


# ---------------------------------------------------------------------------------- the endpoints
def test_health_ready_and_docs(server: str) -> None:
    assert httpx.get(f"{server}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{server}/ready").json()
    assert ready["status"] == "ready" and ready["variant"] == "tones" and ready["model_sha256"] == "abc123"
    assert ready["num_labels"] == 3 and ready["labels"] == ["Low tone", "Mid tone", "High tone"]
    assert (ready["sample_rate_hz"], ready["window_seconds"], ready["hop_seconds"]) == (8000, 1.0, 1.0)
    assert ready["providers"] == ["CPUExecutionProvider"]  # BIRDOPS_SERVE_DEVICE=cpu
    assert (ready["max_upload_bytes"], ready["max_audio_seconds"]) == (MAX_UPLOAD_BYTES, MAX_AUDIO_SECONDS)
    schema = httpx.get(f"{server}/openapi.json").json()
    assert {"/predict", "/health", "/ready"} <= set(schema["paths"])
    assert {"408", "413", "422", "503"} <= set(schema["paths"]["/predict"]["post"]["responses"])
    docs = httpx.get(f"{server}/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_a_wav_upload_is_classified_window_by_window(server: str) -> None:
    response = post(server, encode(LOW_HIGH_MID, 8000, "WAV"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["filename"] == "call.wav" and body["variant"] == "tones"
    assert body["duration_s"] == pytest.approx(2.6)
    windows = body["windows"]
    assert [(w["start_s"], w["end_s"]) for w in windows] == [
        (0.0, 1.0),
        (1.0, 2.0),
        (2.0, pytest.approx(2.6)),
    ]
    assert [w["top"][0]["species"] for w in windows] == ["Low tone", "High tone", "Mid tone"]
    assert all(len(w["top"]) == 2 for w in windows)  # BIRDOPS_SERVE_TOP_K=2
    # the tone model has no thresholds (an older export): every species passes at 0.0, with a warning
    assert body["activation"] == "softmax" and body["thresholds"] == dict.fromkeys(LABELS, 0.0)
    assert body["warnings"] == [detect.NO_THRESHOLDS_WARNING]
    assert (body["windows_classified"], body["detections"], body["top_k"]) == (3, 6, 2)
    assert body["message"] == "6 detections of 3 species"
    # the file: each species wins one of the three windows, its best score is that window's
    assert {s["species"] for s in body["species"]} == set(LABELS)
    assert all(s["score"] > 0.99 for s in body["species"])
    one = post(server, encode(LOW_HIGH_MID, 8000, "WAV"), top_k=1).json()
    assert all(len(w["top"]) == 1 for w in one["windows"]) and one["detections"] == 3
    assert {s["species"]: (s["windows"], s["first_start_s"], s["last_end_s"]) for s in one["species"]} == {
        "Low tone": (1, 0.0, 1.0),
        "High tone": (1, 1.0, 2.0),
        "Mid tone": (1, 2.0, pytest.approx(2.6)),
    }
    scores = [s["score"] for s in one["species"]]
    assert scores == sorted(scores, reverse=True)  # best first


def test_an_mp3_upload_at_another_rate_is_resampled(server: str) -> None:
    wave = tones([(TONES_HZ[2], 2.0), (TONES_HZ[0], 2.0)], 22050)
    response = post(server, encode(wave, 22050, "MP3"), filename="field/recording.mp3")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["filename"] == "recording.mp3"
    assert [w["top"][0]["species"] for w in body["windows"]][:4] == [
        "High tone",
        "High tone",
        "Low tone",
        "Low tone",
    ]


# ---------------------------------------------------------------------------------------- refusals
def test_an_oversized_upload_is_refused_before_it_is_read(server: str) -> None:
    response = post(server, b"\0" * (MAX_UPLOAD_BYTES + 50_000), filename="big.wav")
    assert response.status_code == 413
    assert f"at most {MAX_UPLOAD_BYTES} bytes" in response.json()["detail"]


def test_an_oversized_chunked_upload_is_cut_off(server: str) -> None:
    """No Content-Length: the server counts the streamed body and stops at the limit."""
    boundary = "birdopsboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    def body() -> Iterator[bytes]:
        yield head
        for _ in range(20):  # 20 x 64 KiB, well over the limit
            yield b"\1" * 65536
        yield tail

    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    response = httpx.post(f"{server}/predict", content=body(), headers=headers, timeout=30.0)
    assert response.status_code == 413
    assert "upload too large" in response.json()["detail"]


def test_a_file_just_under_the_upload_limit_is_accepted(server: str) -> None:
    payload = encode(tones([(TONES_HZ[1], 3.0)]), 8000, "WAV")
    padded = payload + b"\0" * (MAX_UPLOAD_BYTES - len(payload))  # trailing bytes after the WAV data
    assert len(padded) == MAX_UPLOAD_BYTES
    assert post(server, padded).status_code == 200


@pytest.mark.parametrize(
    ("payload", "filename"),
    [
        (b"this is not audio at all" * 50, "notes.wav"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "truncated.wav"),
        (b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(range(256)) * 8, "broken.mp3"),
        (b"fLaC\x00\x00\x00\x22" + b"\xff" * 300, "broken.flac"),
        (b"OggS" + b"\x00" * 400, "broken.ogg"),
    ],
)
def test_corrupt_audio_is_a_client_error(server: str, payload: bytes, filename: str) -> None:
    response = post(server, payload, filename=filename)
    assert response.status_code == 422, response.text
    assert filename in response.json()["detail"] and "cannot decode audio" in response.json()["detail"]
    assert "object at 0x" not in response.json()["detail"]  # no repr of the in-memory file


def test_an_upload_damaged_part_way_is_classified_up_to_the_damage(server: str) -> None:
    payload = bytearray(encode(tones([(TONES_HZ[2], 20.0)]), 8000, "FLAC"))
    middle = len(payload) // 2
    payload[middle : middle + 2000] = (
        np.random.default_rng(1).integers(0, 256, 2000, dtype=np.uint8).tobytes()
    )
    response = post(server, bytes(payload), filename="cut.flac")
    assert response.status_code == 200, response.text
    body = response.json()
    assert 5 < body["duration_s"] < 15 and body["windows_classified"] == -(-body["duration_s"] // 1)
    (warning,) = [w for w in body["warnings"] if "damaged" in w]
    assert warning.startswith(f"classified up to {body['duration_s']:.1f} s, where the file is damaged")


def test_error_details_never_show_object_reprs() -> None:
    message = "x.wav: cannot decode audio: Error opening <_io.BytesIO object at 0x7f3a2c1b9e40>: bad"
    assert uploads.clean_detail(message) == "x.wav: cannot decode audio: Error opening the upload: bad"


def test_an_empty_or_missing_file_is_a_client_error(server: str) -> None:
    empty = post(server, b"", filename="empty.wav")
    assert empty.status_code == 422 and "empty file" in empty.json()["detail"]
    missing = httpx.post(f"{server}/predict", data={"other": "x"}, timeout=10.0)
    assert missing.status_code == 422
    silent = post(server, encode(np.zeros(8000, dtype=np.float32), 8000, "WAV"), filename="silence.wav")
    assert silent.status_code == 422 and "silent" in silent.json()["detail"]
    wav = encode(LOW_HIGH_MID, 8000, "WAV")
    two = [("file", ("a.wav", wav, "audio/wav")), ("file", ("b.wav", wav, "audio/wav"))]
    both = httpx.post(f"{server}/predict", files=two, timeout=30.0)  # one would be dropped silently
    assert both.status_code == 422 and "one file per request" in both.json()["detail"]
    # a type the decoder refuses by name: the same words, and the converter, as birdops predict gives
    foreign = post(server, b"\x00\x00\x00\x20ftypM4A \x00\x00\x00\x00" + bytes(2000), filename="call.m4a")
    detail = foreign.json()["detail"]
    assert foreign.status_code == 422 and "ffmpeg -i IN.m4a OUT.flac" in detail
    assert "call.m4a: cannot decode audio: .m4a (AAC or ALAC audio in an MP4 container)" in detail


def test_too_long_audio_is_refused(server: str) -> None:
    long_wave = np.tile(tones([(TONES_HZ[0], 1.0)], 4000), int(MAX_AUDIO_SECONDS) + 5)  # 25 s at 4 kHz
    payload = encode(long_wave, 4000, "FLAC")
    assert len(payload) < MAX_UPLOAD_BYTES  # small enough as bytes: the duration is what is refused
    response = post(server, payload, filename="long.flac")
    assert response.status_code == 413
    assert (
        "25.0 s long" in response.json()["detail"] and f"{MAX_AUDIO_SECONDS:g} s" in response.json()["detail"]
    )


def test_a_bad_query_is_a_client_error(server: str) -> None:
    assert post(server, encode(LOW_HIGH_MID, 8000, "WAV"), top_k=0).status_code == 422


def test_the_client_file_name_is_only_a_label(server: str) -> None:
    response = post(server, encode(LOW_HIGH_MID, 8000, "WAV"), filename="../../etc/passwd.wav")
    assert response.status_code == 200
    assert response.json()["filename"] == "passwd.wav"
    assert uploads.display_name("a\x00b\n.wav") == "ab.wav"
    assert uploads.display_name("C:\\Users\\x\\..\\rec.wav") == "rec.wav"
    assert uploads.display_name(None) == uploads.display_name("/") == "upload"


# ------------------------------------------------------------------------------------- slow clients
def raw_exchange(url: str, data: bytes, wait_s: float) -> tuple[bytes, float]:
    """Send ``data`` on a fresh connection, then read until the server closes it (at most ``wait_s``):
    ``(what the server sent, seconds until it closed)``."""
    host, port = url.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=wait_s) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received, time.monotonic() - started


def test_a_slow_sender_of_headers_is_cut_off(server: str) -> None:
    """Half a request head, then nothing: 408 after the header timeout, and the connection closes."""
    received, seconds = raw_exchange(server, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Ty", 15.0)
    assert received.startswith(b"HTTP/1.1 408 ") and b"request headers not received" in received
    assert HEADER_TIMEOUT_S - 0.2 < seconds < HEADER_TIMEOUT_S + 3.0
    idle, seconds = raw_exchange(server, b"", 15.0)  # a connection that never sends a byte
    assert idle == b"" and seconds < HEADER_TIMEOUT_S + 3.0


def test_a_slow_body_is_cut_off(server: str) -> None:
    head = (
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        b"Content-Length: 5000\r\n\r\n--b\r\n"
    )
    received, seconds = raw_exchange(server, head, 15.0)
    assert received.startswith(b"HTTP/1.1 408 ") and b"request body not received within" in received
    assert BODY_TIMEOUT_S - 0.2 < seconds < BODY_TIMEOUT_S + 3.0


def slow_heads(url: str, count: int) -> list[socket.socket]:
    """``count`` connections, each with the start of a request head sent and the rest held back."""
    port = int(url.rsplit(":", 1)[1])
    sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
    for sock in sockets:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-")
    return sockets


def still_open(sock: socket.socket) -> bool:
    """Whether the server has neither answered nor closed ``sock`` (nothing to read yet; what there
    is stays to be read)."""
    sock.setblocking(False)
    try:
        sock.recv(1, socket.MSG_PEEK)
        return False  # b"": closed; bytes: an answer
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.setblocking(True)


def test_a_good_request_is_answered_while_200_slow_clients_hang_on(server: str) -> None:
    """Connections still sending their head are not counted against any cap (the header timeout
    cuts them): with 200 of them open, a good request is answered at once and they are all still
    there."""
    held = slow_heads(server, SLOW_CLIENTS)
    try:
        time.sleep(0.2)
        response = post(server, encode(LOW_HIGH_MID, 8000, "WAV"))
        assert response.status_code == 200, response.text
        assert [w["top"][0]["species"] for w in response.json()["windows"]] == [
            "Low tone",
            "High tone",
            "Mid tone",
        ]
        load = httpx.get(f"{server}/ready").json()["load"]
        assert load["connections"] > SLOW_CLIENTS and load["requests_in_progress"] == 1  # /ready itself
        assert all(still_open(sock) for sock in held)
    finally:
        for sock in held:
            sock.close()


def test_requests_in_progress_past_the_cap_get_503_with_retry_after(server: str) -> None:
    """Requests whose heads are in and whose bodies trickle do count: past the cap, 503 + Retry-After;
    once they are cut off (408 after the body timeout), the server takes requests again."""
    port = int(server.rsplit(":", 1)[1])
    head = (
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        b"Content-Length: 5000\r\n\r\n--b\r\n"
    )
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(MAX_REQUESTS_IN_PROGRESS)]
    try:
        for sock in held:
            sock.sendall(head)
        time.sleep(0.3)
        response = post(server, encode(LOW_HIGH_MID, 8000, "WAV"))
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert "too many requests in progress" in response.json()["detail"]
        answers = []
        for sock in held:
            sock.settimeout(BODY_TIMEOUT_S + 5.0)
            answers.append(sock.recv(65536)[:12])
        assert answers == [b"HTTP/1.1 408"] * MAX_REQUESTS_IN_PROGRESS
    finally:
        for sock in held:
            sock.close()
    assert post(server, encode(LOW_HIGH_MID, 8000, "WAV")).status_code == 200


# --------------------------------------------------------------------------------------- concurrency
def test_16_concurrent_clients_are_all_answered_without_a_503(server: str) -> None:
    """Admission by time: 16 clients at once wait for the two inference slots (a few tens of ms each,
    against queue_timeout_s = 10 s) instead of being refused; every answer is the same."""
    payload = encode(LOW_HIGH_MID, 8000, "FLAC")
    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(lambda _: post(server, payload, filename="same.flac"), range(48)))
    assert [r.status_code for r in responses] == [200] * 48
    bodies = [r.json() for r in responses]
    assert all(body == bodies[0] for body in bodies)
    load = httpx.get(f"{server}/ready").json()["load"]
    assert load["queued_bytes"] == 0 and load["requests_waiting"] == 0
    assert 0 < load["service_estimate_s"] < 1.0  # measured: below the conservative start (1 s)


def test_the_server_logged_no_error_and_answered_no_5xx(server: str, server_log: Path) -> None:
    """Run last: whatever the requests above sent, the server never failed (the one 503 is the
    cap on requests in progress')."""
    httpx.get(f"{server}/health")
    text = server_log.read_text()
    assert "Traceback" not in text and "ERROR" not in text
    assert '"GET /health HTTP/1.1" 200' in text  # the access log is there to be checked
    assert re.findall(r'HTTP/1\.1" (5\d\d)', text) == ["503"]
    assert "device cpu: running on CPUExecutionProvider" in text  # the one line about the provider


def test_bad_settings_stop_the_server_before_it_starts(tmp_path: Path) -> None:
    assert serve_app.main(["--model", str(tmp_path / "missing.onnx")]) == 2
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not onnx")
    assert serve_app.main(["--model", str(garbage), "--device", "cpu"]) == 1


def test_a_hop_under_one_sample_stops_the_server_before_it_starts(
    model_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("BIRDOPS_SERVE_HOP_SECONDS", "1e-6")

    def started(*args: object, **kwargs: object) -> None:
        raise AssertionError("the server started")

    monkeypatch.setattr(serve_app.uvicorn, "run", started)
    assert serve_app.main(["--model", str(model_path), "--device", "cpu"]) == 2
    assert "invalid settings: hop_seconds: a hop of 1e-06 s is under one sample" in caplog.text


# ------------------------------------------------------------------------------- the queue, in-process
def test_the_queue_admits_while_the_expected_wait_fits_its_timeout() -> None:
    """One slot, 0.3 s per request, 1 s to wait: the running request and three waiting ones are
    expected to take 1.2 s, so a fifth is refused at once with the seconds until it would fit; a
    waiter that really waits past the timeout is refused then."""

    async def scenario() -> list[str]:
        queue = InferenceQueue(slots=1, wait_timeout_s=1.0, max_bytes=1000, service_s=0.3)
        events: list[str] = []
        release = anyio.Event()

        async def holder() -> None:
            async with queue.admit(10):
                events.append("running")
                await release.wait()

        async def waiter(name: str) -> None:
            try:
                async with queue.admit(10):
                    events.append(f"{name} ran")
            except Overloaded as err:
                events.append(f"{name}: {err}")

        async with anyio.create_task_group() as tasks:
            assert queue.expected_wait_s() == 0.0
            tasks.start_soon(holder)
            await anyio.sleep(0.05)
            assert queue.expected_wait_s() == pytest.approx(0.3)
            for name in ("a", "b", "c"):
                tasks.start_soon(waiter, name)
                await anyio.sleep(0.05)
            assert (queue.running, queue.waiting, queue.held_bytes) == (1, 3, 40)
            assert queue.expected_wait_s() == pytest.approx(1.2) and queue.saturated
            with pytest.raises(Overloaded, match=r"expected wait .* is 1\.2 s") as refused:
                async with queue.admit(10):
                    pass
            assert refused.value.retry_after_s == 1  # ceil(1.2 - 1.0)
            await anyio.sleep(1.0)  # the waiters' second is up
            assert (queue.running, queue.waiting, queue.held_bytes) == (1, 0, 10)
            release.set()
        assert queue.held_bytes == 0 and queue.measured == 1
        async with queue.admit(10):  # everything was given back
            assert queue.running == 1
        return events

    events = anyio.run(scenario)
    timed_out = "server busy: no inference slot within 1 s"
    assert events == ["running", f"a: {timed_out}", f"b: {timed_out}", f"c: {timed_out}"]


def test_the_queue_bounds_the_bytes_of_the_admitted_uploads() -> None:
    """Time allowing, an upload is refused when it would take the admitted uploads (running and
    waiting) past max_bytes; a smaller one that fits is admitted."""

    async def scenario() -> None:
        queue = InferenceQueue(slots=1, wait_timeout_s=10.0, max_bytes=1000, service_s=0.1)
        release = anyio.Event()

        async def hold(size_bytes: int) -> None:
            async with queue.admit(size_bytes):
                await release.wait()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(hold, 600)
            tasks.start_soon(hold, 300)  # waits
            await anyio.sleep(0.05)
            assert queue.held_bytes == 900 and queue.expected_wait_s() <= 0.2
            with pytest.raises(Overloaded, match="hold 900 bytes; this one's 200 would pass 1000"):
                async with queue.admit(200):
                    pass
            tasks.start_soon(hold, 100)  # fits exactly
            await anyio.sleep(0.05)
            assert (queue.waiting, queue.held_bytes, queue.saturated) == (2, 1000, True)
            release.set()
        assert queue.held_bytes == 0 and not queue.saturated

    anyio.run(scenario)


def test_the_service_estimate_starts_conservative_then_follows_the_measured_times() -> None:
    queue = InferenceQueue(slots=2, wait_timeout_s=10.0, max_bytes=1000, service_s=1.0)
    queue.running, queue.waiting = 2, 5
    assert queue.expected_wait_s() == pytest.approx(3.0)  # 2 running + 5 ahead: 3 rounds of 2 slots
    queue._measured(0.1)
    assert queue.service_s == pytest.approx(0.1)  # the first measurement replaces the stand-in
    queue._measured(0.6)
    assert queue.service_s == pytest.approx(0.1 + 0.2 * 0.5)
    for _ in range(60):
        queue._measured(0.05)
    assert queue.service_s == pytest.approx(0.05, abs=1e-6)
    assert queue.expected_wait_s() == pytest.approx(0.15, abs=1e-5)


def test_a_queue_past_its_time_budget_answers_503_with_retry_after_and_ready_says_saturated(
    tmp_path: Path,
) -> None:
    from starlette.testclient import TestClient

    model = tmp_path / "tones.onnx"
    onnx.save(tone_model(), str(model))
    settings = ServeSettings(model_path=model, device="cpu", retry_after_s=3, max_connections=200)
    classifier = open_classifier(settings.model_path, settings.device)
    payload = encode(LOW_HIGH_MID, 8000, "WAV")
    files = {"file": ("call.wav", payload, "audio/wav")}
    with TestClient(serve_app.create_app(classifier, settings)) as client:
        assert client.post("/predict", files=files).status_code == 200
        ready = client.get("/ready")
        assert ready.status_code == 200 and ready.json()["status"] == "ready"
        assert ready.json()["load"]["max_connections"] == 200
        queue = client.app.state.service.queue  # type: ignore[attr-defined]
        queue.running, queue.service_s = settings.max_concurrent_inferences, 100.0  # a 100 s wait
        response = client.post("/predict", files=files)
        assert response.status_code == 503 and response.headers["retry-after"] == "90"  # 100 s - 10 s
        assert "expected wait for an inference is 100.0 s" in response.json()["detail"]
        ready = client.get("/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "saturated"
        assert ready.headers["retry-after"] == "90" and ready.json()["ready"] is False
        assert ready.json()["load"]["expected_wait_s"] == 100.0
        queue.running, queue.service_s = 0, 0.05
        queue.held_bytes = settings.max_queued_bytes - len(payload) // 2  # no room for this upload
        response = client.post("/predict", files=files)
        assert response.status_code == 503 and response.headers["retry-after"] == "3"
        assert f"would pass {settings.max_queued_bytes}" in response.json()["detail"]
        queue.held_bytes = 0
        assert client.post("/predict", files=files).status_code == 200
    with TestClient(serve_app.create_app(None, settings)) as client:  # no model yet
        ready = client.get("/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "loading"
        assert client.post("/predict", files=files).status_code == 503


def test_the_limits_must_fit_together_and_the_connection_cap_follows_the_descriptor_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tmp_path / "tones.onnx"
    onnx.save(tone_model(), str(model))
    with pytest.raises(ValueError, match="must hold at least one upload"):
        ServeSettings(model_path=model, max_upload_bytes=1000, max_queued_bytes=999)
    with pytest.raises(ValueError, match=r"max_connections \(64\) must be above max_requests_in_progress"):
        ServeSettings(model_path=model, max_connections=64)
    settings = ServeSettings(model_path=model)  # 128 requests in progress
    monkeypatch.setattr(guards.resource, "getrlimit", lambda _: (1024, 4096))
    assert guards.connection_cap(settings) == 1024 - 128 - FD_RESERVE
    monkeypatch.setattr(guards.resource, "getrlimit", lambda _: (1_048_576, 1_048_576))
    assert guards.connection_cap(settings) == MAX_DERIVED_CONNECTIONS
    monkeypatch.setattr(guards.resource, "getrlimit", lambda _: (256, 4096))
    with pytest.raises(ValueError, match=r"file-descriptor limit \(256\) leaves 64 connections"):
        guards.connection_cap(settings)
    assert serve_app.main(["--model", str(model)]) == 2  # refused before the model is loaded
    assert guards.connection_cap(ServeSettings(model_path=model, max_connections=500)) == 500


def test_an_inference_past_its_deadline_is_stopped(tmp_path: Path) -> None:
    model = tmp_path / "tones.onnx"
    onnx.save(tone_model(), str(model))
    settings = ServeSettings(model_path=model, device="cpu", batch_size=1)
    classifier = open_classifier(settings.model_path, settings.device)
    payload = encode(LOW_HIGH_MID, 8000, "WAV")
    budget = InferenceBudget(0.5)
    assert len(uploads.classify_upload(classifier, settings, payload, "a.wav", budget).scores) == 3
    budget.expire()
    with pytest.raises(InferenceTimeout, match=r"within 0\.5 s"):
        uploads.classify_upload(classifier, settings, payload, "a.wav", budget)


def test_an_upload_is_classified_as_it_is_decoded_like_the_whole_file(tmp_path: Path) -> None:
    """classify_upload streams the upload's blocks into the windows: the scores are exactly those of the
    whole decoded upload; audio past max_audio_seconds is refused (413) as the blocks show it, even when
    the header does not say so."""
    from birdops.audio import BLOCK_FRAMES, decode_bytes

    model = tmp_path / "tones.onnx"
    onnx.save(tone_model(), str(model))
    settings = ServeSettings(model_path=model, device="cpu", batch_size=3, hop_seconds=0.4)
    classifier = open_classifier(settings.model_path, settings.device)
    plan = [(TONES_HZ[k % 3], 0.9) for k in range(12)]  # 10.8 s at 44.1 kHz: 8 blocks
    wave = tones(plan, 44100)
    payload = encode(np.stack([wave, 0.5 * wave], axis=1), 44100, "FLAC")
    assert len(wave) > 7 * BLOCK_FRAMES
    streamed = uploads.classify_upload(classifier, settings, payload, "a.flac")
    whole = classifier.predict_windows(decode_bytes(payload, classifier.sample_rate_hz, "a.flac"), 0.4, 3)
    np.testing.assert_array_equal(streamed.scores, whole.scores)
    np.testing.assert_array_equal(streamed.starts_s, whole.starts_s)
    blocks = uploads.upload_blocks(payload, classifier.sample_rate_hz, 2.0, "a.flac", 1.0)
    with pytest.raises(uploads.AudioTooLong, match=r"a\.flac: audio is 10\.8 s long"):
        next(blocks)  # from the header, before anything is decoded
    blocks = uploads.upload_blocks(payload, classifier.sample_rate_hz, 2.0, "a.flac", 1.0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(uploads, "audio_seconds", lambda payload, name: 1.0)  # a header that lies
        with pytest.raises(uploads.AudioTooLong, match=r"a\.flac: audio is 2\.\d s long"):
            list(blocks)


def test_a_chained_ogg_upload_is_classified_through_every_link_and_held_to_the_limit(tmp_path: Path) -> None:
    """``cat a.ogg b.ogg`` uploaded: the header check counts both links (the first alone is within the
    limit), and the scores are those of both links decoded one after the other."""
    from birdops.audio import decode_bytes

    model = tmp_path / "tones.onnx"
    onnx.save(tone_model(), str(model))
    settings = ServeSettings(model_path=model, device="cpu", batch_size=3, hop_seconds=1.0)
    classifier = open_classifier(settings.model_path, settings.device)
    first, second = (tones([(TONES_HZ[k], 2.0)], rate_hz) for k, rate_hz in ((0, 16000), (2, 22050)))
    payload = encode(first, 16000, "OGG") + encode(second, 22050, "OGG")
    assert uploads.audio_seconds(payload, "chain.ogg") == pytest.approx(4.0)
    result = uploads.classify_upload(classifier, settings, payload, "chain.ogg")
    assert list(result.scores.argmax(axis=1)) == [0, 0, 2, 2]
    whole = classifier.predict_windows(decode_bytes(payload, classifier.sample_rate_hz, "chain.ogg"), 1.0, 3)
    np.testing.assert_array_equal(result.scores, whole.scores)
    blocks = uploads.upload_blocks(payload, classifier.sample_rate_hz, 3.0, "chain.ogg", 1.0)
    with pytest.raises(uploads.AudioTooLong, match=r"chain\.ogg: audio is 4\.0 s long"):
        next(blocks)  # from the headers, before anything is decoded


# ------------------------------------------------------------------------------ detections (a detector)
DAWN = [(TONES_HZ[1], 1.0), (0, 1.0), (TONES_HZ[0], 0.5), (TONES_HZ[2], 0.5)]  # mid, noise, low + high
# the detector's scores: mid 0.945; noise < 0.01; low 0.907 and high 0.906; the quiet mid tone 0.300
DAWN_WAVE = np.concatenate([tones(DAWN), tones([(TONES_HZ[1], 1.0)], amplitude=0.03)])
LOW, MID, HIGH = LABELS


@pytest.fixture(scope="module")
def detector_server(detector_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``birdops serve`` of the tone detector (sigmoid scores, thresholds 0.5), default settings."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("detector_server") / "server.log"
    command = [
        sys.executable,
        "-m",
        "birdops.cli",
        "serve",
        "--model",
        str(detector_path),
        "--port",
        str(port),
    ]
    command += ["--device", "cpu", "--threads", "1"]
    url = f"http://127.0.0.1:{port}"
    with log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until_up(url, process, log_path)
        yield url
    finally:
        stop_process(process)


def detect_upload(url: str, wave: np.ndarray, thresholds: str | None = None, **params: Any) -> httpx.Response:
    files = {"file": ("dawn.wav", encode(wave, 8000, "WAV"), "audio/wav")}
    data = {} if thresholds is None else {"thresholds": thresholds}
    return httpx.post(f"{url}/predict", files=files, data=data, params=params, timeout=30.0)


def window_species(body: dict[str, Any]) -> list[tuple[float, list[str]]]:
    return [(w["start_s"], [s["species"] for s in w["top"]]) for w in body["windows"]]


def test_only_detections_are_answered_with_the_species_of_the_file(detector_server: str) -> None:
    response = detect_upload(detector_server, DAWN_WAVE)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["activation"] == "sigmoid" and body["warnings"] == []
    assert body["thresholds"] == dict.fromkeys(LABELS, 0.5) and body["top_k"] == 5  # the top_k setting
    assert (body["windows_classified"], body["detections"]) == (4, 3)
    assert body["message"] == "3 detections of 3 species"
    assert window_species(body) == [(0.0, [MID]), (2.0, [LOW, HIGH])]  # not the noise, not the quiet tone
    assert [(s["species"], s["windows"], s["first_start_s"], s["last_end_s"]) for s in body["species"]] == [
        (MID, 1, 0.0, 1.0),
        (LOW, 1, 2.0, 3.0),
        (HIGH, 1, 2.0, 3.0),
    ]
    assert [s["score"] for s in body["species"]] == [
        pytest.approx(x, abs=1e-3) for x in (0.9446, 0.9072, 0.9061)
    ]
    ready = httpx.get(f"{detector_server}/ready").json()
    assert ready["activation"] == "sigmoid" and ready["thresholds"] == [0.5, 0.5, 0.5]
    assert ready["calibration"] == {"scale": 0.8, "bias": -3.0}


def test_a_recording_without_detections_says_so(detector_server: str) -> None:
    response = detect_upload(detector_server, tones([(0, 3.0)]))
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["windows_classified"], body["detections"], body["message"]) == (3, 0, "no detections")
    assert body["species"] == [] and body["windows"] == []


def test_min_score_thresholds_top_k_and_all_choose_what_is_answered(detector_server: str) -> None:
    url = detector_server
    body = detect_upload(url, DAWN_WAVE, min_score=0.2).json()
    assert window_species(body) == [(0.0, [MID]), (2.0, [LOW, HIGH]), (3.0, [MID])]
    assert body["thresholds"] == dict.fromkeys(LABELS, 0.2)
    body = detect_upload(url, DAWN_WAVE, thresholds='{"Mid tone": 0.25, "High tone": 0.95}').json()
    assert window_species(body) == [(0.0, [MID]), (2.0, [LOW]), (3.0, [MID])]
    assert body["thresholds"] == {LOW: 0.5, MID: 0.25, HIGH: 0.95}
    assert window_species(detect_upload(url, DAWN_WAVE, top_k=1).json()) == [(0.0, [MID]), (2.0, [LOW])]
    body = detect_upload(url, DAWN_WAVE, all="true", top_k=1).json()
    assert window_species(body) == [(0.0, [MID]), (1.0, [HIGH]), (2.0, [LOW]), (3.0, [MID])]
    assert body["thresholds"] is None and body["detections"] == 4
    assert detect_upload(url, DAWN_WAVE, all="true", top_k=2).json()["detections"] == 8


@pytest.mark.parametrize(
    ("thresholds", "params", "detail"),
    [
        ('{"Robin": 0.5}', {}, "thresholds, species 'Robin': unknown species 'Robin'"),
        ('{"Mid tone": 1.5}', {}, "thresholds, species 'Mid tone': the threshold 1.5 is outside [0, 1]"),
        ('{"Mid tone": 0.5', {}, "thresholds: expected a JSON object"),
        ("Mid tone,0.5", {}, 'thresholds: expected a JSON object {"species": threshold}'),
        (None, {"all": "true", "min_score": 0.3}, "'all' reports every window whatever the thresholds"),
    ],
)
def test_thresholds_that_cannot_be_used_are_a_422_that_says_why(
    detector_server: str, thresholds: str | None, params: dict[str, Any], detail: str
) -> None:
    response = detect_upload(detector_server, DAWN_WAVE, thresholds, **params)
    assert response.status_code == 422 and detail in response.json()["detail"], response.text


def test_out_of_range_parameters_are_a_422_naming_the_parameter(detector_server: str) -> None:
    for params in ({"min_score": 1.5}, {"min_score": -0.1}, {"top_k": 0}, {"all": "maybe"}):
        response = detect_upload(detector_server, DAWN_WAVE, **params)
        assert response.status_code == 422, params
        (error,) = response.json()["detail"]
        assert error["loc"] == ["query", next(iter(params))]


def test_embeddings_are_answered_for_every_window_when_asked(tmp_path: Path) -> None:
    """``?embeddings=true``: every window's embedding (the model's second output), each value reading
    back to the float32 the model gave; a model without the output answers 422 before the upload is
    classified."""
    from starlette.testclient import TestClient

    model, plain = tmp_path / "embedder.onnx", tmp_path / "tones.onnx"
    onnx.save(tone_model(embedding=True), str(model))
    onnx.save(tone_model(), str(plain))
    settings = ServeSettings(model_path=model, device="cpu", hop_seconds=0.5)
    classifier = open_classifier(settings.model_path, settings.device)
    payload = encode(DAWN_WAVE, 8000, "WAV")
    files = {"file": ("dawn.wav", payload, "audio/wav")}
    expected = classifier.predict_bytes(payload, "dawn.wav", 0.5, settings.batch_size, embeddings=True)
    assert expected.embeddings is not None
    with TestClient(serve_app.create_app(classifier, settings)) as client:
        body = client.post("/predict", files=files, params={"embeddings": "true"}).json()
        assert len(body["embeddings"]) == body["windows_classified"] == len(expected.starts_s) == 7
        vectors = np.array([w["embedding"] for w in body["embeddings"]], dtype=np.float32)
        np.testing.assert_array_equal(vectors, expected.embeddings)
        assert [(w["start_s"], w["end_s"]) for w in body["embeddings"]] == list(
            zip(expected.starts_s.tolist(), expected.ends_s.tolist(), strict=True)
        )
        assert client.post("/predict", files=files).json()["embeddings"] is None  # only when asked
        assert client.get("/ready").json()["embedding_dim"] == 6
    settings = ServeSettings(model_path=plain, device="cpu")
    with TestClient(
        serve_app.create_app(open_classifier(settings.model_path, settings.device), settings)
    ) as client:
        response = client.post("/predict", files=files, params={"embeddings": "true"})
        assert response.status_code == 422 and "has no embedding output" in response.json()["detail"]
        assert client.get("/ready").json()["embedding_dim"] is None
