"""Load figures of ``birdops serve`` on loopback: what a load client sees, printed, never asserted.

    python benchmarks/serve_load.py [--clients 16,64] [--requests 1000] [--slow-clients 200]
                                    [--set queue_timeout_s=0.2 ...]

For each count of concurrent clients, a fresh server (``birdops serve`` in a subprocess: real uvicorn,
real onnxruntime on the CPU, the tone detector of ``tests/tones.py``, the settings' defaults apart
from the upload limit and the header and body deadlines of ``tests/serve/test_serve_load.py``) gets
``--requests`` uploads, 10 % of them hostile (the load test's kinds), each sent once: a 503 is counted,
not retried. ``--set`` overrides a setting (``BIRDOPS_SERVE_<NAME>``). Printed: the final statuses of
the good and the hostile requests, how many 503s came without ``Retry-After`` (none should), p50 /
p99 latency of the good requests answered 200, the wall time and the server's peak RSS.

Then the slow-client case: a server with its default deadlines, ``--slow-clients`` connections that
send a request head a byte at a time and hang on, and one good request meanwhile: its status, detail
and latency.

The figures are one machine's at one moment (the clients share its cores with the server).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

TESTS = Path(__file__).resolve().parent.parent / "tests"
STARTUP_S = 60.0


@dataclass(frozen=True)
class Answer:
    good: bool
    status: str  # the HTTP status, or what happened instead ("closed", an exception's name)
    seconds: float
    retry_after: bool = False  # the answer had a Retry-After header


@dataclass(frozen=True)
class LoadFigures:
    clients: int
    answers: list[Answer]
    wall_s: float
    peak_rss_mb: float

    def row(self) -> list[str]:
        good = Counter(a.status for a in self.answers if a.good)
        hostile = Counter(a.status for a in self.answers if not a.good)
        hostile_4xx = sum(n for status, n in hostile.items() if status.startswith("4"))
        ok_s = np.array([a.seconds for a in self.answers if a.good and a.status == "200"])
        p50, p99 = (f"{1000 * np.percentile(ok_s, q):.0f}" if len(ok_s) else "-" for q in (50, 99))
        bare_503 = sum(a.status == "503" and not a.retry_after for a in self.answers)
        return [
            str(self.clients),
            str(len(self.answers)),
            str(good["200"]),
            str(good["503"]),
            str(sum(good.values()) - good["200"] - good["503"]),
            str(hostile_4xx),
            str(hostile["503"]),
            str(sum(hostile.values()) - hostile_4xx - hostile["503"]),
            str(bare_503),
            p50,
            p99,
            f"{self.wall_s:.1f}",
            f"{self.peak_rss_mb:.0f}",
        ]


HEADER = [
    "clients",
    "requests",
    "good 200",
    "good 503",
    "good other",
    "hostile 4xx",
    "hostile 503",
    "hostile other",
    "503 w/o Retry-After",
    "p50 ms",
    "p99 ms",
    "wall s",
    "peak RSS MB",
]


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = [header, ["-" * w for w in widths], *rows]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(line, widths, strict=True)) for line in lines)


# ------------------------------------------------------------------------------------------ server
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_server(model: Path, env: dict[str, str], log: Path) -> Iterator[tuple[str, psutil.Process]]:
    """``birdops serve`` in a subprocess on a free loopback port: ``(base URL, process)``."""
    port = free_port()
    command = [sys.executable, "-m", "birdops.cli", "serve", "--model", str(model), "--port", str(port)]
    settings = {"BIRDOPS_SERVE_DEVICE": "cpu", "BIRDOPS_SERVE_LOG_LEVEL": "warning", **env}
    with log.open("w") as out:
        process = subprocess.Popen(command, env={**os.environ, **settings}, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"birdops serve did not start:\n{log.read_text()}")
            try:
                if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        yield url, psutil.Process(process.pid)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def watch_rss(process: psutil.Process, stop: threading.Event) -> Callable[[], float]:
    """Sample ``process``'s RSS every 50 ms until ``stop``; the returned function gives the peak (MB)."""
    peak = [process.memory_info().rss / 2**20]

    def sample() -> None:
        while not stop.wait(0.05):
            try:
                peak[0] = max(peak[0], process.memory_info().rss / 2**20)
            except psutil.Error:
                return

    threading.Thread(target=sample, daemon=True).start()
    return lambda: peak[0]


# ------------------------------------------------------------------------------------------- load
def one_request(load: Any, url: str, client: httpx.Client, name: str) -> Answer:
    """Send one job of the load test's mix once: a good upload or a hostile request."""
    started = time.monotonic()
    if name in load.GOOD:
        payload, _ = load.GOOD[name]
        try:
            response = client.post(f"{url}/predict", files={"file": (name, payload, "audio/wav")})
        except httpx.TransportError as err:
            return Answer(True, type(err).__name__, time.monotonic() - started)
        retry_after = "retry-after" in response.headers
        return Answer(True, str(response.status_code), time.monotonic() - started, retry_after)
    try:
        code, retry_after = load.hostile(name, url)()
    except OSError as err:
        return Answer(False, type(err).__name__, time.monotonic() - started)
    return Answer(False, str(code), time.monotonic() - started, retry_after)


def fire(load: Any, url: str, clients: int, names: list[str]) -> list[Answer]:
    """``clients`` threads working through ``names``, each request sent once."""
    work = iter(names)
    lock = threading.Lock()
    answers: list[Answer] = []

    def client_loop() -> None:
        with httpx.Client(timeout=60.0) as client:
            while True:
                with lock:
                    name = next(work, None)
                if name is None:
                    return
                answer = one_request(load, url, client, name)
                with lock:
                    answers.append(answer)

    threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def load_figures(
    load: Any, model: Path, clients: int, requests: int, overrides: dict[str, str], work: Path
) -> LoadFigures:
    env = {
        "BIRDOPS_SERVE_MAX_UPLOAD_BYTES": str(load.MAX_UPLOAD_BYTES),
        "BIRDOPS_SERVE_HEADER_TIMEOUT_S": str(load.HEADER_TIMEOUT_S),
        "BIRDOPS_SERVE_BODY_TIMEOUT_S": str(load.BODY_TIMEOUT_S),
        "BIRDOPS_SERVE_INTRA_OP_THREADS": "1",
        **overrides,
    }
    load.REQUESTS = requests
    names = load.jobs()
    with running_server(model, env, work / f"load-{clients}.log") as (url, process):
        stop = threading.Event()
        peak = watch_rss(process, stop)
        started = time.monotonic()
        answers = fire(load, url, clients, names)
        wall_s = time.monotonic() - started
        stop.set()
        return LoadFigures(clients, answers, wall_s, peak())


# ------------------------------------------------------------------------------------ slow clients
def hang_on(url: str, count: int, stop: threading.Event, opened: list[int]) -> None:
    """``count`` connections that send a request head a byte every half second, never finishing it,
    until ``stop`` (or until the server closes them)."""
    host, port = url.removeprefix("http://").split(":")
    head = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x"
    sockets = []
    for _ in range(count):
        try:
            sockets.append(socket.create_connection((host, int(port)), timeout=5))
        except OSError:
            break
    opened[0] = len(sockets)
    try:
        for i in range(len(head)):
            for sock in sockets:
                with suppress(OSError):  # the server has closed it
                    sock.sendall(head[i : i + 1])
            if stop.wait(0.5):
                return
    finally:
        for sock in sockets:
            sock.close()


def slow_client_figures(load: Any, model: Path, slow_clients: int, work: Path) -> list[str]:
    env = {"BIRDOPS_SERVE_MAX_UPLOAD_BYTES": str(load.MAX_UPLOAD_BYTES)}
    name = "low-high-mid.wav"
    payload, _ = load.GOOD[name]
    with running_server(model, env, work / "slow.log") as (url, _):
        stop, opened = threading.Event(), [0]
        slow = threading.Thread(target=hang_on, args=(url, slow_clients, stop, opened), daemon=True)
        slow.start()
        time.sleep(1.5)  # every slow client connected and sending
        started = time.monotonic()
        try:
            response = httpx.post(f"{url}/predict", files={"file": (name, payload)}, timeout=30.0)
            status = str(response.status_code)
            detail = "" if response.status_code == 200 else response.json().get("detail", "")
        except httpx.HTTPError as err:
            status, detail = type(err).__name__, str(err)
        seconds = time.monotonic() - started
        stop.set()
        slow.join()
    return [str(opened[0]), status, f"{1000 * seconds:.0f}", detail or "-"]


# ------------------------------------------------------------------------------------------ main
def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="16,64", help="comma-separated counts of concurrent clients")
    parser.add_argument("--requests", type=int, default=1000, help="requests per client count")
    parser.add_argument("--slow-clients", type=int, default=200, help="0 skips the slow-client case")
    parser.add_argument("--model", type=Path, help="an exported .onnx model (default: the tone detector)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a ServeSettings field for the load runs (repeatable)",
    )
    args = parser.parse_args(argv)
    if not all("=" in item for item in args.set):
        parser.error("--set takes NAME=VALUE")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    sys.path[:0] = [str(TESTS), str(TESTS / "serve")]  # the load test's clients and the tone model
    import onnx
    import test_serve_load as load
    from tones import tone_model

    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"birdops-serve-load-{os.getpid()}"
    work.mkdir(parents=True)
    model = args.model
    if model is None:
        model = work / "tones.onnx"
        onnx.save(tone_model(), str(model))
    overrides = {f"BIRDOPS_SERVE_{k.upper()}": v for k, v in (item.split("=", 1) for item in args.set)}
    rows = []
    for clients in (int(n) for n in args.clients.split(",") if n):
        rows.append(load_figures(load, model, clients, args.requests, overrides, work).row())
        print(table(HEADER, rows[-1:]), flush=True)
    settings = ", ".join(args.set) or "defaults"
    print(f"\nload ({100 * load.HOSTILE_SHARE:.0f} % hostile; each request sent once; {settings}):")
    print(table(HEADER, rows))
    if args.slow_clients:
        row = slow_client_figures(load, model, args.slow_clients, work)
        print(f"\nslow clients (a good request while {args.slow_clients} connections hang on):")
        print(table(["slow clients", "good status", "ms", "detail"], [row]))
    print(f"\nserver logs: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
