"""Audio decoding and windowing: numpy, soundfile and scipy only (serving imports this, never torch).

Waveforms are float32 mono arrays in [-1, 1], shape ``(samples,)``; they are values, never changed
in place.

Every decode (prepare's probe, the cache, evaluation, export parity, ``birdops predict`` and the
service) goes through :func:`load_audio` / :func:`decode_bytes`, which read the header first and refuse
a file before decoding it when it is outside the limits below, then decode in blocks of
:data:`BLOCK_FRAMES` frames, mixing down to mono as they read. Peak memory is therefore bounded by the
mono buffer (at most :data:`MAX_SOURCE_SAMPLES` float32 samples, 128 MiB), one block
(``BLOCK_FRAMES * MAX_CHANNELS * 4`` bytes, 16 MiB) and the resampler's float64 work arrays (about three
times the mono buffer's size in the worst case), whatever the file. Mono output is bit-identical to
decoding the whole file at once and averaging its channels.

Every refusal is an :class:`AudioError` subclass naming the file and the reason; ``kind`` is a short
machine-readable code (``"empty"``, ``"not_audio"``, ...).
"""

from __future__ import annotations

import io
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

# peak below which a decoded file is treated as silent (about -100 dBFS)
SILENCE_PEAK = 1e-5
MIN_RATE_HZ = 1_000  # sample rates accepted in a header: 1 kHz .. 384 kHz
MAX_RATE_HZ = 384_000
MAX_CHANNELS = 32
MAX_SECONDS = 3600.0  # one hour
MAX_SOURCE_SAMPLES = 2**25  # mono samples at the source rate (128 MiB as float32): 11 min at 48 kHz
MIN_SECONDS = 0.1  # shorter audio is refused whatever the window (a few samples are not a recording)
MIN_WINDOW_SHARE = 0.25  # with ``window_seconds``: audio shorter than this share of a window is refused
BLOCK_FRAMES = 2**16


class AudioError(ValueError):
    """A recording cannot be used; the message names the file and the reason."""

    kind = "unusable"

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


class EmptyAudioError(AudioError):
    kind = "empty"


class NotAudioError(AudioError):
    kind = "not_audio"


class TruncatedAudioError(AudioError):
    kind = "truncated"


class UnsupportedRateError(AudioError):
    kind = "unsupported_rate"


class TooManyChannelsError(AudioError):
    kind = "too_many_channels"


class TooLongAudioError(AudioError):
    kind = "too_long"


class TooShortAudioError(AudioError):
    kind = "too_short"


class NonFiniteAudioError(AudioError):
    kind = "non_finite"


class SilentAudioError(AudioError):
    kind = "silent"


def load_audio(path: str | Path, sample_rate_hz: int, window_seconds: float | None = None) -> np.ndarray:
    """Decode ``path`` to float32 mono at ``sample_rate_hz``: shape ``(samples,)``.

    Raises an :class:`AudioError` subclass naming the file when it is empty, not audio, truncated,
    outside the limits, shorter than :data:`MIN_SECONDS` (or than :data:`MIN_WINDOW_SHARE` of
    ``window_seconds`` when given), non-finite or silent.
    """
    path = Path(path)
    name = str(path)
    try:
        size = path.stat().st_size
    except OSError as err:
        raise AudioError(name, f"cannot open: {err.strerror or err}") from err
    if size == 0:
        raise EmptyAudioError(name, "empty file (0 bytes)")
    with path.open("rb") as handle:
        head = handle.read(512)
        handle.seek(0)
        _check_not_text(head, name)
        return _decode(handle, sample_rate_hz, name, window_seconds)


def decode_bytes(
    payload: bytes,
    sample_rate_hz: int,
    name: str = "<upload>",
    window_seconds: float | None = None,
) -> np.ndarray:
    """Like :func:`load_audio` for an in-memory file (an HTTP upload); ``name`` is only for messages."""
    if not payload:
        raise EmptyAudioError(name, "empty file (0 bytes)")
    _check_not_text(payload[:512], name)
    return _decode(io.BytesIO(payload), sample_rate_hz, name, window_seconds)


def probe(path: str | Path) -> tuple[float, int, int]:
    """``(duration_s, channels, sample_rate_hz)`` from the header alone, checked against the limits
    (raises like :func:`load_audio`); nothing is decoded but the header."""
    path = Path(path)
    name = str(path)
    try:
        size = path.stat().st_size
    except OSError as err:
        raise AudioError(name, f"cannot open: {err.strerror or err}") from err
    if size == 0:
        raise EmptyAudioError(name, "empty file (0 bytes)")
    with path.open("rb") as handle:
        _check_not_text(handle.read(512), name)
        handle.seek(0)
        with _quiet_stderr():
            sound = _open(handle, name)
            with sound:
                frames, channels, rate = _checked_header(sound, name)
    return frames / rate, channels, rate


def _check_not_text(head: bytes, name: str) -> None:
    text = head.lstrip()[:64].lower()
    if text.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body")):
        raise NotAudioError(name, "not audio: the file is HTML/XML text (an error page saved as audio?)")
    if text.startswith((b"{", b"[")) and b"\x00" not in head:
        raise NotAudioError(name, "not audio: the file is JSON text")


_stderr_lock = threading.Lock()


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null (the C decoders, libmpg123 in particular, print there);
    a lock keeps threads from restoring each other's descriptor. Python's own ``sys.stderr`` writes
    made meanwhile are lost too, so the block is kept to the C calls."""
    with _stderr_lock:
        with suppress(AttributeError, ValueError):
            sys.stderr.flush()
        try:
            saved = os.dup(2)
        except OSError:  # no descriptor 2 at all: nothing to hide
            yield
            return
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)


def _open(source: Any, name: str) -> sf.SoundFile:
    try:
        return sf.SoundFile(source)
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError, TypeError) as err:
        reason = getattr(err, "error_string", None) or str(err)
        raise NotAudioError(name, f"cannot decode audio: {_clean_reason(reason)}") from err


def _clean_reason(reason: str) -> str:
    """libsndfile's messages name the file object (``<_io.BytesIO object at 0x..>``) or claim it does
    not exist; keep only the part that says what is wrong."""
    if "does not exist or is not a regular file" in reason or " object at 0x" in reason:
        return "not a recognised audio format"
    reason = reason.split(": ")[-1].strip().rstrip(".")
    if reason.lower() in ("", "format not recognised"):
        return "not a recognised audio format"
    return reason


def _checked_header(sound: sf.SoundFile, name: str) -> tuple[int, int, int]:
    frames, channels, rate = int(sound.frames), int(sound.channels), int(sound.samplerate)
    if not MIN_RATE_HZ <= rate <= MAX_RATE_HZ:
        raise UnsupportedRateError(name, f"sample rate {rate} Hz is outside {MIN_RATE_HZ}..{MAX_RATE_HZ} Hz")
    if not 1 <= channels <= MAX_CHANNELS:
        raise TooManyChannelsError(name, f"{channels} channels; at most {MAX_CHANNELS} are accepted")
    if frames <= 0:
        raise TruncatedAudioError(name, "no audio samples (empty or truncated file)")
    seconds = frames / rate
    if seconds > MAX_SECONDS:
        raise TooLongAudioError(name, f"{seconds:.1f} s long; at most {MAX_SECONDS:g} s are accepted")
    if frames > MAX_SOURCE_SAMPLES:
        raise TooLongAudioError(
            name,
            f"{frames} samples at {rate} Hz ({seconds:.1f} s) exceed the decoding limit of "
            f"{MAX_SOURCE_SAMPLES} samples; resample or cut it first",
        )
    return frames, channels, rate


def _decode(source: Any, sample_rate_hz: int, name: str, window_seconds: float | None) -> np.ndarray:
    """Header checks, then a block-wise decode and mix-down of ``source``, then :func:`_clean`."""
    with _quiet_stderr():
        sound = _open(source, name)
        with sound:
            frames, channels, rate = _checked_header(sound, name)
            try:
                mono, filled = _read_mono(sound, frames, channels)
            except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as err:
                reason = getattr(err, "error_string", None) or str(err)
                raise TruncatedAudioError(
                    name, f"cannot decode audio: truncated or corrupt data ({_clean_reason(reason)})"
                ) from err
    if filled == 0:
        raise TruncatedAudioError(name, "no audio samples (empty or truncated file)")
    if filled < frames:
        # a header promising more frames than the file holds: a truncated file; keep what is there
        mono = mono[:filled]
    return _clean(mono, rate, sample_rate_hz, name, window_seconds)


def _read_mono(sound: sf.SoundFile, frames: int, channels: int) -> tuple[np.ndarray, int]:
    """The mono mix of ``sound`` and how many frames it really held. A mono file is read in one call
    straight into the result (libsndfile's MP3 decoder gives other float values for mono files read
    in pieces); a multi-channel one in blocks of :data:`BLOCK_FRAMES`, each averaged over channels."""
    mono = np.empty(frames, dtype=np.float32)
    if channels == 1:
        read = sound.read(frames, dtype="float32", always_2d=True, out=mono[:, None])
        return mono, int(read.shape[0])
    filled = 0
    for block in sound.blocks(blocksize=BLOCK_FRAMES, dtype="float32", always_2d=True, frames=frames):
        n = min(block.shape[0], frames - filled)
        mono[filled : filled + n] = block[:n].mean(axis=1)
        filled += n
        if filled >= frames:
            break
    return mono, filled


def _clean(
    mono: np.ndarray,
    source_rate_hz: int,
    sample_rate_hz: int,
    name: str,
    window_seconds: float | None = None,
) -> np.ndarray:
    seconds = len(mono) / source_rate_hz
    minimum = MIN_SECONDS
    if window_seconds is not None:
        minimum = max(minimum, MIN_WINDOW_SHARE * window_seconds)
    if seconds < minimum:
        raise TooShortAudioError(name, f"{seconds * 1000:.1f} ms of audio; at least {minimum:g} s are needed")
    if not np.all(np.isfinite(mono)):
        raise NonFiniteAudioError(name, "audio contains NaN or infinite samples")
    if float(np.max(np.abs(mono))) < SILENCE_PEAK:
        raise SilentAudioError(name, "audio is silent")
    return resample(mono, source_rate_hz, sample_rate_hz)


def resample(wave: np.ndarray, source_rate_hz: int, target_rate_hz: int) -> np.ndarray:
    """Polyphase resampling (anti-aliased) from ``source_rate_hz`` to ``target_rate_hz``."""
    if source_rate_hz == target_rate_hz:
        return wave.astype(np.float32, copy=False)
    if source_rate_hz <= 0 or target_rate_hz <= 0:
        raise ValueError(f"sample rates must be positive, got {source_rate_hz} -> {target_rate_hz}")
    ratio = Fraction(target_rate_hz, source_rate_hz).limit_denominator(1000)
    if ratio.numerator < 1:
        raise ValueError(f"cannot resample {source_rate_hz} Hz to {target_rate_hz} Hz")
    out = resample_poly(wave, ratio.numerator, ratio.denominator)
    return np.asarray(out, dtype=np.float32)


def frame_windows(
    wave: np.ndarray, sample_rate_hz: int, window_seconds: float, hop_seconds: float
) -> tuple[np.ndarray, np.ndarray]:
    """Cut ``wave`` into windows: ``(windows (N, window_samples), starts_s (N,))``.

    Windows start every ``hop_seconds``; the last one is zero-padded, so every sample is covered and a
    recording shorter than one window gives a single padded window.
    """
    window_samples = round(window_seconds * sample_rate_hz)
    hop_samples = round(hop_seconds * sample_rate_hz)
    if window_samples <= 0 or hop_samples <= 0:
        raise ValueError("window_seconds and hop_seconds must be positive")
    n = max(1, int(np.ceil(max(len(wave) - window_samples, 0) / hop_samples)) + 1)
    padded = np.zeros((n - 1) * hop_samples + window_samples, dtype=np.float32)
    padded[: len(wave)] = wave
    starts = np.arange(n) * hop_samples
    windows = np.stack([padded[s : s + window_samples] for s in starts])
    return windows, starts / sample_rate_hz
