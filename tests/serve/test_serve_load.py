"""A bounded load test of ``birdops serve`` on loopback: a real uvicorn server process, real HTTP.

1,000 requests from 16 client threads, 10 % of them hostile (slow senders of headers or body,
oversized bodies, malformed multipart, garbage audio, garbage HTTP), while a flood of half-sent
connections exceeds the connection cap. The server must answer every hostile request with a 4xx
(or 503 with ``Retry-After``), never any other 5xx; every good request must end with its correct
answer, and none is refused with 503 (16 clients wait well within ``queue_timeout_s``; a client
would retry a 503 after ``Retry-After``, or a connection the cap closed under it); the server's
memory stays bounded. Everything is bounded in count and time. The figures are printed.

Then the connection cap: past it, a new connection closes the one that has waited longest for a
request head, so a good request is served among more idle and slow connections than the cap.
"""

from __future__ import annotations

import os
import queue
import random
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import onnx
import psutil
import pytest
from test_serve import encode, free_port, slow_heads, still_open, stop_process, wait_until_up
from tones import TONES_HZ, tone_model, tones

pytestmark = pytest.mark.slow

REQUESTS = 1000
CLIENTS = 16
HOSTILE_SHARE = 0.10
FLOOD_CONNECTIONS = 120
MAX_CONNECTIONS = 48
MAX_REQUESTS_IN_PROGRESS = 32
MAX_UPLOAD_BYTES = 400_000
HEADER_TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 3.0
MAX_ATTEMPTS = 20  # of a good request that keeps getting 503
TEST_BUDGET_S = 90.0
RSS_GROWTH_LIMIT_MB = 300.0

GOOD = {  # name -> (payload, expected top species of each window)
    "low-high-mid.wav": (
        encode(tones([(TONES_HZ[0], 1.0), (TONES_HZ[2], 1.0), (TONES_HZ[1], 0.6)]), 8000, "WAV"),
        ["Low tone", "High tone", "Mid tone"],
    ),
    "mid-low.flac": (
        encode(tones([(TONES_HZ[1], 2.0), (TONES_HZ[0], 1.0)]), 8000, "FLAC"),
        ["Mid tone", "Mid tone", "Low tone"],
    ),
    "high.wav": (encode(tones([(TONES_HZ[2], 4.0)], 16000), 16000, "WAV"), ["High tone"] * 4),
}


@dataclass
class Outcome:
    kind: str
    status: int | str  # HTTP status, or "closed" / an exception name when no response came
    seconds: float
    attempts: int = 1
    retry_after: bool = False
    correct: bool = True
    refusals: int = 0  # 503s with Retry-After before the final answer
    dropped: int = 0  # connections closed under the request before an answer (then retried)


# ------------------------------------------------------------------------------------------ clients
def good_request(client: httpx.Client, url: str, name: str) -> Outcome:
    payload, expected = GOOD[name]
    started = time.monotonic()
    refusals = dropped = 0
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            response = client.post(f"{url}/predict", files={"file": (name, payload, "audio/wav")})
        except httpx.TransportError:  # a kept-alive connection the server closed meanwhile: retry
            dropped += 1
            time.sleep(0.05)
            continue
        if response.status_code == 503 and "retry-after" in response.headers:
            refusals += 1
            time.sleep(min(float(response.headers["retry-after"]), 1.0) * random.uniform(0.3, 1.0))
            continue
        body = response.json() if response.status_code == 200 else {}
        correct = [w["top"][0]["species"] for w in body.get("windows", [])] == expected
        return Outcome(
            "good",
            response.status_code,
            time.monotonic() - started,
            attempt,
            correct=correct,
            refusals=refusals,
            dropped=dropped,
        )
    return Outcome("good", "gave up", time.monotonic() - started, MAX_ATTEMPTS, correct=False)


def raw(url: str, chunks: list[bytes], pause_s: float = 0.0, wait_s: float = 15.0) -> tuple[int | str, bool]:
    """Send ``chunks`` (``pause_s`` apart) on a fresh connection and read the answer: ``(status or
    'closed', whether it had Retry-After)``."""
    host, port = url.removeprefix("http://").split(":")
    received = b""
    with socket.create_connection((host, int(port)), timeout=wait_s) as sock:
        try:
            for chunk in chunks:
                sock.sendall(chunk)
                if pause_s:
                    time.sleep(pause_s)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server gave up on us first: read what it said
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
    if not received.startswith(b"HTTP/1.1 "):
        return "closed", False
    return int(received[9:12]), b"\r\nretry-after:" in received.lower()


def multipart(boundary: str, name: str, payload: bytes, field: str = "file") -> bytes:
    part = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    )
    return part.encode() + payload + f"\r\n--{boundary}--\r\n".encode()


def head(length: int, boundary: str = "b0undary") -> bytes:
    return (
        f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def hostile(kind: str, url: str) -> Callable[[], tuple[int | str, bool]]:
    rng = np.random.default_rng(abs(hash(kind)) % 2**32)
    if kind == "slow headers":  # a byte at a time, slower than the header deadline allows
        start = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; b"
        return lambda: raw(url, [start[i : i + 1] for i in range(len(start))], pause_s=0.1)
    if kind == "slow body":
        body = multipart("b0undary", "slow.wav", GOOD["high.wav"][0])
        return lambda: raw(url, [head(len(body)), *[body[i : i + 64] for i in range(0, 1600, 64)]], 0.25)
    if kind == "oversized (Content-Length)":
        return lambda: raw(url, [head(10 * MAX_UPLOAD_BYTES)])
    if kind == "oversized (streamed)":
        body = multipart("b0undary", "big.wav", b"\1" * (2 * MAX_UPLOAD_BYTES))
        chunked = (
            b"".join(
                b"%x\r\n%s\r\n" % (len(body[i : i + 65536]), body[i : i + 65536])
                for i in range(0, len(body), 65536)
            )
            + b"0\r\n\r\n"
        )
        start = (
            b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: multipart/form-data; boundary=b0undary\r\n\r\n"
        )
        return lambda: raw(url, [start, chunked])
    if kind == "malformed multipart":
        body = b"--wrong\r\nContent-Disposition: form-data; name=file\r\n\r\nxx" + bytes(
            rng.integers(0, 256, 300, dtype=np.uint8)
        )
        return lambda: raw(url, [head(len(body)) + body])
    if kind == "garbage audio":
        body = multipart(
            "b0undary", "garbage.mp3", b"ID3\x04" + bytes(rng.integers(0, 256, 5000, dtype=np.uint8))
        )
        return lambda: raw(url, [head(len(body)) + body])
    if kind == "garbage http":
        return lambda: raw(
            url,
            [
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
                + bytes(rng.integers(0, 256, 200, dtype=np.uint8))
            ],
        )
    raise ValueError(kind)


HOSTILE_KINDS = (
    "slow headers",
    "slow body",
    "oversized (Content-Length)",
    "oversized (streamed)",
    "malformed multipart",
    "garbage audio",
    "garbage http",
)


def jobs(seed: int = 0) -> list[str]:
    n_hostile = round(REQUESTS * HOSTILE_SHARE)
    names = [kind for i in range(n_hostile) for kind in [HOSTILE_KINDS[i % len(HOSTILE_KINDS)]]]
    names += [list(GOOD)[i % len(GOOD)] for i in range(REQUESTS - n_hostile)]
    random.Random(seed).shuffle(names)
    return names


# ------------------------------------------------------------------------------------------ server
@contextmanager
def running_server(tmp_path: Path, env: dict[str, str]) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``birdops serve`` of the tone model on a free loopback port, with ``env``'s settings on top of
    the CPU, one thread and warnings only: ``(base URL, process)``; its log must hold no traceback."""
    model = tmp_path / "tones.onnx"
    onnx.save(tone_model(), str(model))
    port = free_port()
    settings = {
        "BIRDOPS_SERVE_DEVICE": "cpu",
        "BIRDOPS_SERVE_INTRA_OP_THREADS": "1",
        "BIRDOPS_SERVE_LOG_LEVEL": "warning",
        **env,
    }
    log = tmp_path / "server.log"
    command = [sys.executable, "-m", "birdops.cli", "serve", "--model", str(model), "--port", str(port)]
    with log.open("w") as out:
        process = subprocess.Popen(
            command, env={**os.environ, **settings}, stdout=out, stderr=subprocess.STDOUT, text=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, process, log)
        yield url, process
    finally:
        stop_process(process)
        text = log.read_text()
        assert "Traceback" not in text, text[-4000:]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    env = {
        "BIRDOPS_SERVE_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
        "BIRDOPS_SERVE_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
        "BIRDOPS_SERVE_MAX_REQUESTS_IN_PROGRESS": str(MAX_REQUESTS_IN_PROGRESS),
        "BIRDOPS_SERVE_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        "BIRDOPS_SERVE_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
    }
    with running_server(tmp_path, env) as running:
        yield running


def watch_rss(pid: int, stop: threading.Event, peak: list[float]) -> None:
    process = psutil.Process(pid)
    while not stop.is_set():
        peak[0] = max(peak[0], process.memory_info().rss / 2**20)
        stop.wait(0.05)


def flood(url: str, stop: threading.Event, held: list[int]) -> None:
    """Half-sent requests on more connections than the cap, renewed as the server drops them."""
    host, port = url.removeprefix("http://").split(":")
    sockets: list[socket.socket] = []
    try:
        for _ in range(FLOOD_CONNECTIONS):
            sock = socket.create_connection((host, int(port)), timeout=5)
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le")
            sockets.append(sock)
        held[0] = len(sockets)
        stop.wait(HEADER_TIMEOUT_S + 2.0)  # the server cuts them off meanwhile
    finally:
        for sock in sockets:
            sock.close()


# -------------------------------------------------------------------------------------------- test
def test_the_server_holds_under_a_bounded_hostile_load(server: tuple[str, subprocess.Popen[str]]) -> None:
    url, process = server
    baseline_mb = psutil.Process(process.pid).memory_info().rss / 2**20
    work: queue.SimpleQueue[str] = queue.SimpleQueue()
    for name in jobs():
        work.put(name)
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    started = time.monotonic()

    def client_loop() -> None:
        with httpx.Client(timeout=30.0) as client:
            while time.monotonic() - started < TEST_BUDGET_S:
                try:
                    name = work.get_nowait()
                except queue.Empty:
                    return
                if name in GOOD:
                    outcome = good_request(client, url, name)
                else:
                    t0 = time.monotonic()
                    try:
                        status, retry_after = hostile(name, url)()
                    except OSError as err:
                        status, retry_after = type(err).__name__, False
                    outcome = Outcome(name, status, time.monotonic() - t0, retry_after=retry_after)
                with lock:
                    outcomes.append(outcome)

    stop, peak, held = threading.Event(), [baseline_mb], [0]
    monitor = threading.Thread(target=watch_rss, args=(process.pid, stop, peak), daemon=True)
    flooder = threading.Thread(target=flood, args=(url, stop, held), daemon=True)
    monitor.start()
    flooder.start()
    clients = [threading.Thread(target=client_loop, daemon=True) for _ in range(CLIENTS)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(timeout=TEST_BUDGET_S + 30.0)
    stop.set()
    flooder.join(timeout=10)
    monitor.join(timeout=5)
    wall_s = time.monotonic() - started
    assert not any(t.is_alive() for t in clients), "a client is stuck"

    good = [o for o in outcomes if o.kind == "good"]
    bad = [o for o in outcomes if o.kind != "good"]
    latencies = np.array([o.seconds for o in good])
    by_status = Counter(str(o.status) for o in outcomes)
    hostile_by_kind = {
        kind: dict(Counter(str(o.status) for o in bad if o.kind == kind)) for kind in HOSTILE_KINDS
    }
    retried = sum(o.attempts > 1 for o in good)
    refusals, dropped = sum(o.refusals for o in good), sum(o.dropped for o in good)
    p50, p99, worst = (1000 * float(np.percentile(latencies, q)) for q in (50, 99, 100))
    print(
        f"\n{len(outcomes)} requests ({len(good)} good, {len(bad)} hostile) from {CLIENTS} clients "
        f"in {wall_s:.1f} s, with {held[0]} half-sent connections held against a cap of {MAX_CONNECTIONS}"
    )
    print(f"final answers by status: {dict(sorted(by_status.items()))}")
    print(f"hostile by kind: {hostile_by_kind}")
    print(
        f"good: p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {worst:.0f} ms; {retried} retried, at most "
        f"{max(o.attempts for o in good)} attempts; on the way {refusals} answers 503 with "
        f"Retry-After and {dropped} dropped connections"
    )
    print(f"server RSS: {baseline_mb:.0f} MB at start, peak {peak[0]:.0f} MB")

    assert len(outcomes) == REQUESTS and wall_s < TEST_BUDGET_S
    assert all(o.status == 200 and o.correct for o in good), [
        o for o in good if o.status != 200 or not o.correct
    ][:5]
    assert refusals == 0  # admitted by time: 16 clients wait for a slot rather than get 503
    for o in bad:  # a refusal is a 4xx, or a 503 that says when to come back; never another 5xx
        assert isinstance(o.status, int), o
        assert 400 <= o.status < 500 or (o.status == 503 and o.retry_after), o
    assert peak[0] - baseline_mb < RSS_GROWTH_LIMIT_MB
    assert httpx.get(f"{url}/ready", timeout=10).status_code == 200  # and it recovers


def test_past_the_connection_cap_the_longest_waiting_connection_makes_room(tmp_path: Path) -> None:
    """Cap 40: 30 idle connections and 30 that sent half a head, opened alternately. Each connection
    past the cap closes the one that has waited longest for a request head (an idle one silently, a
    slow sender with 503 + Retry-After), so a good request is answered and the newest ones are left."""
    env = {"BIRDOPS_SERVE_MAX_CONNECTIONS": "40", "BIRDOPS_SERVE_MAX_REQUESTS_IN_PROGRESS": "8"}
    with running_server(tmp_path, env) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        held: list[socket.socket] = []
        for _ in range(30):
            held.append(socket.create_connection(("127.0.0.1", port)))
            held += slow_heads(url, 1)
            time.sleep(0.01)  # in this order on the server's side too
        time.sleep(0.3)
        try:
            payload, expected = GOOD["low-high-mid.wav"]
            response = httpx.post(f"{url}/predict", files={"file": ("a.wav", payload)}, timeout=30.0)
            assert response.status_code == 200
            assert [w["top"][0]["species"] for w in response.json()["windows"]] == expected
            open_now = [still_open(sock) for sock in held]
            closed = open_now.index(True)  # the oldest ones were closed, in order
            assert 20 <= closed <= 22 and all(open_now[closed:]), open_now
            slow_answer = held[1].recv(65536)  # a slow sender: told why
            assert slow_answer.startswith(b"HTTP/1.1 503 ") and b"retry-after: 1" in slow_answer
            assert b"closed to make room" in slow_answer
            assert held[0].recv(65536) == b""  # an idle one: closed without a word
        finally:
            for sock in held:
                sock.close()
