"""Audio decoding and resampling: numpy, soundfile and soxr only (serving imports this, never torch).

Waveforms are float32 mono arrays in [-1, 1], shape ``(samples,)``; they are values, never changed
in place.

Every decode (prepare's probe, the cache, evaluation, export parity, ``birdops predict`` and the
service) goes through this module. It reads the header first and refuses a file before decoding it
when it is outside the limits below, then decodes in blocks of :data:`BLOCK_FRAMES` frames, mixing each
block down to mono, checking it and resampling it with one streaming soxr resampler as it reads:

- :func:`stream_audio` / :func:`stream_bytes` yield the resampled blocks one at a time (``birdops
  predict`` and the service), so memory does not grow with the file's length; the whole-file limits
  :data:`MAX_SOURCE_SAMPLES` and :data:`MAX_SECONDS` do not apply to them, only
  :data:`MAX_STREAM_SECONDS` (a day).
- :func:`read_ahead` takes a stream's blocks in a background thread, a few ahead of their consumer,
  so that decoding overlaps with what is done with the blocks (``birdops predict``, the service).
- :func:`load_audio` / :func:`decode_bytes` join the same blocks into one array (the feature cache,
  evaluation, export parity). Their peak memory is the output twice over (the blocks and the joined
  array; at most :data:`MAX_SOURCE_SAMPLES` source samples) plus one block, whatever the file.

Both give the same samples, bit for bit: one reader, one resampler (:func:`resample` is soxr's
one-shot resampler at the same quality, equal to the streamed one, ``tests/test_audio.py``). Mono
output is bit-identical to decoding the whole file at once and averaging its channels, MP3 included,
damaged frames included: blocks are read forward only (:func:`_read_forward`), so libmpg123 decodes
every frame once, in order, as a whole-file read and the ``mpg123`` command do.

A chained Ogg file (links of one logical stream after another: ``cat a.ogg b.ogg``) is decoded link by
link, each mixed down and resampled on its own, and checked as one stream (:func:`ogg_links`). A WAV
file whose header was never finished, and an MP3 file that says it is shorter than its frames are (files
joined, a variable-bitrate stream without a Xing frame), are read to their end, with a warning
(:mod:`birdops.containers` reads their bytes; :func:`_decodable_parts` opens its views).

Every refusal is an :class:`AudioError` subclass naming the file and the reason; ``kind`` is a short
machine-readable code (``"empty"``, ``"not_audio"``, ...). A streamed decode raises the refusals found
in the data (non-finite samples, a corrupt block) at the block that holds them, and those that need the
whole file (silent, too short for a truncated file) after its last block.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path, PurePath
from queue import SimpleQueue
from typing import Any, BinaryIO

import numpy as np
import soundfile as sf
import soxr

from birdops.containers import (
    MAX_OGG_LINKS,
    MP3_MARGIN_FRAMES,
    Piece,
    View,
    mp3_frames,
    mp3_pieces,
    ogg_links,
    unfinished_wav,
)

log = logging.getLogger(__name__)

# peak below which a decoded file is treated as silent (about -100 dBFS)
SILENCE_PEAK = 1e-5
MIN_RATE_HZ = 1_000  # sample rates accepted in a header: 1 kHz .. 384 kHz
MAX_RATE_HZ = 384_000
MAX_CHANNELS = 32
# the rate a file is decoded at only to learn why its header cannot be read (any rate: the decoder
# refuses such a file before resampling)
HEADERLESS_RATE_HZ = 48_000
# samples of an MPEG-1 Layer III frame (the most a frame holds): the slack of a declared length
MP3_FRAME_SAMPLES = 1152
MAX_SECONDS = 3600.0  # one hour: a whole-file decode (load_audio, decode_bytes)
# a streamed decode (stream_audio, stream_bytes: birdops predict, segments, the service, whose own
# limit comes first): memory does not grow with the length, so a day, a field recorder's longest file
MAX_STREAM_SECONDS = 24 * 3600.0
# frames at the source rate a whole-file decode accepts (128 MiB as float32 mono): 11 min at 48 kHz
MAX_SOURCE_SAMPLES = 2**25
MIN_SECONDS = 0.1  # shorter audio is refused whatever the window (a few samples are not a recording)
MIN_WINDOW_SHARE = 0.25  # with ``window_seconds``: audio shorter than this share of a window is refused
BLOCK_FRAMES = 2**16
READ_AHEAD_SAMPLES = 4 * BLOCK_FRAMES  # read_ahead's default: samples decoded ahead of their consumer
_PAIRWISE_MIN = 8  # numpy sums this many values or more pairwise (float rounding: another order)
# soxr's "high quality" recipe (20-bit precision, about 120 dB; linear phase): the one resampler of
# training and serving. VHQ's 28 bits would cost more for detail far under SILENCE_PEAK (-100 dBFS).
RESAMPLE_QUALITY = "HQ"
# file types the decoder reads (libsndfile's, MP3 and Ogg Opus included), by extension
AUDIO_EXTENSIONS = frozenset(
    {".wav", ".wave", ".bwf", ".rf64", ".w64", ".mp3", ".flac", ".ogg", ".oga", ".opus"}
    | {".aif", ".aiff", ".aifc", ".caf", ".au", ".snd"}
    | {".mp2", ".mpa", ".voc"}  # MPEG Layer II (broadcast and older recorders' audio), Creative VOC
)
# common audio types it does not read, and what they usually hold: a file of one of these is refused
# with a way to convert it, and a folder's files of these types are refused by name, not passed over
FOREIGN_AUDIO = {
    ".m4a": "AAC or ALAC audio in an MP4 container",
    ".mp4": "an MP4 container",
    ".m4b": "AAC audio in an MP4 container",
    ".aac": "AAC audio",
    ".3gp": "AMR or AAC audio in a 3GP container",
    ".amr": "AMR speech audio",
    ".wma": "Windows Media Audio",
    ".webm": "Opus or Vorbis audio in a WebM container",
    ".mkv": "a Matroska container",
    ".mka": "audio in a Matroska container",
    ".mov": "a QuickTime container",
    ".ac3": "Dolby Digital audio",
    ".wv": "WavPack audio",
    ".ape": "Monkey's Audio",
    ".tta": "True Audio",
    ".spx": "Speex speech audio",
    ".mpc": "Musepack audio",
    ".dsf": "DSD audio",
    ".ra": "RealAudio",
    ".wac": "Wildlife Acoustics' compressed recorder audio",
    ".w4v": "Wildlife Acoustics' compressed recorder audio",
}
# how to convert a foreign type that ffmpeg does not read (the others: ffmpeg -i IN.ext OUT.flac)
FOREIGN_CONVERSION = {
    ".wac": "with Wildlife Acoustics' Kaleidoscope or its WAC to WAV converter",
    ".w4v": "with Wildlife Acoustics' Kaleidoscope or its WAC to WAV converter",
}


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


class UnsupportedFormatError(NotAudioError):
    """Audio of a common type the decoder does not read (:data:`FOREIGN_AUDIO`)."""

    kind = "unsupported_format"


class TruncatedAudioError(AudioError):
    kind = "truncated"


class CutShortAudioError(TruncatedAudioError):
    """The audio ends before the length its header declares (an MP3 file's Xing/Info count, an Ogg
    file's last page): a copy cut off, or damaged data the decoder passed over without an error. A
    stream with a ``damage`` list ends there as at any damage; a whole-file decode keeps what there is,
    with a warning (:func:`_checked`)."""


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
    outside the limits (:data:`MAX_SOURCE_SAMPLES` included), shorter than :data:`MIN_SECONDS` (or
    than :data:`MIN_WINDOW_SHARE` of ``window_seconds`` when given), non-finite or silent.
    """
    return _joined(_stream_file(Path(path), sample_rate_hz, window_seconds, whole_file=True))


def decode_bytes(
    payload: bytes,
    sample_rate_hz: int,
    name: str = "<upload>",
    window_seconds: float | None = None,
) -> np.ndarray:
    """Like :func:`load_audio` for an in-memory file (an HTTP upload); ``name`` is only for messages."""
    return _joined(_stream_payload(payload, sample_rate_hz, name, window_seconds, whole_file=True))


def stream_audio(
    path: str | Path,
    sample_rate_hz: int,
    window_seconds: float | None = None,
    damage: list[AudioError] | None = None,
) -> Iterator[np.ndarray]:
    """Float32 mono blocks ``(samples,)`` of ``path`` at ``sample_rate_hz``, decoded as they are taken;
    joined, they are :func:`load_audio`'s array. Refusals are :func:`load_audio`'s but for
    :data:`MAX_SOURCE_SAMPLES`, raised while iterating (see the module docstring).

    With a ``damage`` list, damaged data after the first block (a corrupt or cut-off stretch the
    decoder cannot pass, non-finite samples) ends the stream there instead: the blocks before it are
    the stream, checked like a whole one (long enough, not silent), and the refusal it would have
    raised is appended to ``damage``. Damage before any audio is still raised."""
    return _stream_file(Path(path), sample_rate_hz, window_seconds, False, damage)


def stream_bytes(
    payload: bytes,
    sample_rate_hz: int,
    name: str = "<upload>",
    window_seconds: float | None = None,
    damage: list[AudioError] | None = None,
) -> Iterator[np.ndarray]:
    """:func:`stream_audio` of an in-memory file (an HTTP upload); ``name`` is only for messages."""
    return _stream_payload(payload, sample_rate_hz, name, window_seconds, False, damage)


def read_ahead(blocks: Iterator[np.ndarray], samples: int = READ_AHEAD_SAMPLES) -> Iterator[np.ndarray]:
    """``blocks``'s items, taken from it by a background thread up to ``samples`` samples ahead of the
    consumer (at least one block): decoding and resampling (C code that releases the GIL) overlap with
    what the consumer does with the blocks before (``birdops predict``: onnxruntime). A consumer that
    takes a batch of windows at a time needs a batch's samples ahead, or the two take turns (the
    thread stops when its few blocks are queued; the consumer waits for the rest of its batch). The
    same blocks in the same order; a refusal raised by ``blocks`` is raised here, at the block where it
    was found. When the consumer stops early, the thread stops at its next block and ``blocks`` is
    closed."""
    queue: SimpleQueue[tuple[str, Any]] = SimpleQueue()
    room = threading.Condition()
    queued = 0  # samples in the queue
    stop = threading.Event()

    def put(item: tuple[str, Any], size: int) -> bool:
        nonlocal queued
        with room:
            while queued >= samples and not stop.is_set():
                room.wait(0.05)
            if stop.is_set():
                return False
            queued += size
        queue.put(item)
        return True

    def produce() -> None:
        try:
            for block in blocks:
                if not put(("block", block), len(block)):
                    return
            put(("end", None), 0)
        except BaseException as err:  # handed to the consumer, which raises it
            put(("error", err), 0)
        finally:
            close = getattr(blocks, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="birdops-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = queue.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            with room:
                queued -= len(value)
                room.notify()
            yield value
    finally:
        stop.set()
        thread.join()


def probe(path: str | Path) -> tuple[float, int, int]:
    """``(duration_s, channels, sample_rate_hz)`` from the header alone, checked against the limits
    (raises like :func:`load_audio`); nothing is decoded but the header."""
    path = Path(path)
    name = str(path)
    _check_size(path, name)
    with path.open("rb") as handle:
        _check_not_text(handle.read(512), name)
        headers = _link_headers(_decodable_parts(handle, name)[0], name, whole_file=True)
    _, channels, rate = headers[0]
    return sum(frames / rate for frames, _, rate in headers), channels, rate


def header_frames(source: BinaryIO, name: str) -> tuple[int, int]:
    """``(rate_hz, frames)``: the sample rate of the file's first link and the frames at that rate of all
    its links (a chained Ogg file's later links counted at the first one's rate: :func:`ogg_links`), as
    the headers announce them. Nothing is decoded and no limit applied; libsndfile's own exception when
    it cannot open the file (a caller that wants the reason in words decodes it), an
    :class:`AudioError` naming ``name`` for a chain of too many links."""
    headers = []
    for part in _decodable_parts(source, name)[0]:
        with _quiet_stderr(), sf.SoundFile(part) as sound:
            headers.append((int(sound.samplerate), int(sound.frames)))
    rate_hz = headers[0][0]
    return rate_hz, headers[0][1] + sum(round(f * rate_hz / r) for r, f in headers[1:] if r > 0)


def _joined(blocks: Iterable[np.ndarray]) -> np.ndarray:
    parts = list(blocks)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _check_size(path: Path, name: str) -> None:
    try:
        size = path.stat().st_size
    except OSError as err:
        raise AudioError(name, f"cannot open: {err.strerror or err}") from err
    if size == 0:
        raise EmptyAudioError(name, "empty file (0 bytes)")


def _stream_file(
    path: Path,
    sample_rate_hz: int,
    window_seconds: float | None,
    whole_file: bool,
    damage: list[AudioError] | None = None,
) -> Iterator[np.ndarray]:
    name = str(path)
    _check_size(path, name)
    with path.open("rb") as handle:
        _check_not_text(handle.read(512), name)
        handle.seek(0)
        yield from _stream(handle, sample_rate_hz, name, window_seconds, whole_file, damage)


def _stream_payload(
    payload: bytes,
    sample_rate_hz: int,
    name: str,
    window_seconds: float | None,
    whole_file: bool,
    damage: list[AudioError] | None = None,
) -> Iterator[np.ndarray]:
    if not payload:
        raise EmptyAudioError(name, "empty file (0 bytes)")
    _check_not_text(payload[:512], name)
    yield from _stream(io.BytesIO(payload), sample_rate_hz, name, window_seconds, whole_file, damage)


def _check_not_text(head: bytes, name: str) -> None:
    text = head.lstrip()[:64].lower()
    if text.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body")):
        raise NotAudioError(name, "not audio: the file is HTML/XML text (an error page saved as audio?)")
    if text.startswith((b"{", b"[")) and b"\x00" not in head:
        raise NotAudioError(name, "not audio: the file is JSON text")


_stderr_lock = threading.RLock()
_stderr_depth = 0  # nested _quiet_stderr blocks of the thread holding _stderr_lock


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null (the C decoders, libmpg123 in particular, print there);
    a lock keeps threads from restoring each other's descriptor. Python's own ``sys.stderr`` writes
    made meanwhile are lost too, so the block is kept to the C calls. Reentrant: a block opened inside
    another one of the same thread leaves the descriptor to the outer one (a plain lock would wait
    for itself, and every other thread's decode behind it)."""
    global _stderr_depth
    with _stderr_lock:
        if _stderr_depth:
            _stderr_depth += 1
            try:
                yield
            finally:
                _stderr_depth -= 1
            return
        _stderr_depth = 1
        try:
            with _quiet_descriptor():
                yield
        finally:
            _stderr_depth = 0


@contextmanager
def _quiet_descriptor() -> Iterator[None]:
    """Descriptor 2 at /dev/null for the block (:func:`_quiet_stderr`'s outermost block)."""
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
        suffix = PurePath(name).suffix.lower()
        if suffix in FOREIGN_AUDIO:
            raise _not_read(name, f"{suffix} ({FOREIGN_AUDIO[suffix]})", suffix) from err
        if _is_ogg_flac(source):
            raise _not_read(name, "FLAC audio in an Ogg container (Ogg FLAC)", suffix or ".oga") from err
        reason = getattr(err, "error_string", None) or str(err)
        raise NotAudioError(name, f"cannot decode audio: {_clean_reason(reason)}") from err


def _not_read(name: str, what: str, suffix: str) -> UnsupportedFormatError:
    """The refusal of audio of a type birdops does not read: what it holds and how to convert it."""
    how = FOREIGN_CONVERSION.get(suffix, f"e.g. ffmpeg -i IN{suffix} OUT.flac")
    reason = f"cannot decode audio: {what} is not a type birdops reads; convert the file to FLAC or WAV first"
    return UnsupportedFormatError(name, f"{reason}, {how}")


def _is_ogg_flac(source: Any) -> bool:
    """Whether ``source`` (a file object) starts as an Ogg stream of FLAC, which libsndfile does not
    read although it reads both FLAC and Ogg (its first packet is ``\\x7fFLAC``)."""
    try:
        source.seek(0)
        head = source.read(128)
    except (AttributeError, OSError, ValueError):
        return False
    return isinstance(head, bytes) and head.startswith(b"OggS") and b"\x7fFLAC" in head


def _clean_reason(reason: str) -> str:
    """libsndfile's messages name the file object (``<_io.BytesIO object at 0x..>``) or claim it does
    not exist; keep only the part that says what is wrong."""
    if "does not exist or is not a regular file" in reason or " object at 0x" in reason:
        return "not a recognised audio format"
    reason = reason.split(": ")[-1].strip().rstrip(".")
    if reason.lower() in ("", "format not recognised"):
        return "not a recognised audio format"
    return reason


def _checked_header(sound: sf.SoundFile, name: str, whole_file: bool) -> tuple[int, int, int]:
    """``(frames, channels, rate)`` of the header, within the limits (:data:`MAX_SOURCE_SAMPLES` and
    :data:`MAX_SECONDS` for a ``whole_file`` decode, :data:`MAX_STREAM_SECONDS` for a streamed one)."""
    frames, channels, rate = int(sound.frames), int(sound.channels), int(sound.samplerate)
    if not MIN_RATE_HZ <= rate <= MAX_RATE_HZ:
        raise UnsupportedRateError(name, f"sample rate {rate} Hz is outside {MIN_RATE_HZ}..{MAX_RATE_HZ} Hz")
    if not 1 <= channels <= MAX_CHANNELS:
        raise TooManyChannelsError(name, f"{channels} channels; at most {MAX_CHANNELS} are accepted")
    if frames <= 0:
        raise TruncatedAudioError(name, "no audio samples (empty or truncated file)")
    _check_duration(frames / rate, frames, rate, name, whole_file)
    return frames, channels, rate


def _check_duration(seconds: float, frames: int, rate: int | None, name: str, whole_file: bool) -> None:
    """Refuse ``frames`` source samples lasting ``seconds`` beyond the limits of a ``whole_file`` or
    streamed decode (``rate``: theirs, None for the links of a chained file)."""
    limit_s = MAX_SECONDS if whole_file else MAX_STREAM_SECONDS
    if seconds > limit_s:
        raise TooLongAudioError(name, f"{seconds:.1f} s long; at most {limit_s:g} s are accepted")
    if whole_file and frames > MAX_SOURCE_SAMPLES:
        raise TooLongAudioError(
            name,
            f"{frames} samples{'' if rate is None else f' at {rate} Hz'} ({seconds:.1f} s) exceed the "
            f"decoding limit of {MAX_SOURCE_SAMPLES} samples; resample or cut it first",
        )


def _stream(
    source: BinaryIO,
    sample_rate_hz: int,
    name: str,
    window_seconds: float | None,
    whole_file: bool,
    damage: list[AudioError] | None = None,
) -> Iterator[np.ndarray]:
    """Header checks, then the block-wise decode, mix-down, checks and resampling of ``source``.

    What is decoded is :func:`_decodable_parts`' view of the file: the links of a chained Ogg file
    (:func:`ogg_links`) one after the other, each mixed down and resampled on its own (their rates and
    channels may differ) and checked as one stream; a file whose header says less than it holds, as
    what it holds."""
    minimum_s = MIN_SECONDS if window_seconds is None else max(MIN_SECONDS, MIN_WINDOW_SHARE * window_seconds)
    parts, warning = _decodable_parts(source, name)
    if warning is not None:
        log.warning("%s", warning)
    if len(parts) > 1:
        headers = _link_headers(parts, name, whole_file)
        _check_length(sum(frames / rate for frames, _, rate in headers), minimum_s, name)
        blocks = _link_blocks(parts, headers, name, sample_rate_hz)
        yield from _checked(blocks, sample_rate_hz, minimum_s, name, damage)
        return
    with _opened(parts[0], name) as sound:
        with _quiet_stderr():
            frames, channels, rate = _checked_header(sound, name, whole_file)
        _check_length(frames / rate, minimum_s, name)  # refused before decoding when the header says so
        ends_early = functools.partial(_cut_short, parts[0], sound.format, frames, rate, name)
        mono = _mono_blocks(sound, frames, channels, name, ends_early)
        blocks = _checked(mono, rate, minimum_s, name, damage)
        yield from _resampled(blocks, rate, sample_rate_hz)


@contextmanager
def _opened(source: Any, name: str) -> Iterator[sf.SoundFile]:
    """``source`` opened by libsndfile (:func:`_open`), closed on leaving."""
    with _quiet_stderr():
        sound = _open(source, name)
    try:
        yield sound
    finally:
        with _quiet_stderr():
            sound.close()


def _link_headers(parts: Sequence[Any], name: str, whole_file: bool) -> list[tuple[int, int, int]]:
    """:func:`_checked_header` of each link of a file (:func:`_decodable_parts`), opened one at a time, and
    the limits on the length of them all together."""
    headers = []
    for part in parts:
        with _opened(part, name) as sound, _quiet_stderr():
            headers.append(_checked_header(sound, name, whole_file))
    if len(headers) > 1:
        frames = sum(frames for frames, _, _ in headers)
        _check_duration(sum(f / rate for f, _, rate in headers), frames, None, name, whole_file)
    return headers


def _link_blocks(
    parts: Sequence[Any], headers: Sequence[tuple[int, int, int]], name: str, sample_rate_hz: int
) -> Iterator[np.ndarray]:
    """The links' mono blocks at ``sample_rate_hz``, one link open at a time, each resampled on its own."""
    for part, (frames, channels, rate) in zip(parts, headers, strict=True):
        part.seek(0)  # opened before, for its header
        with _opened(part, name) as sound:
            yield from _resampled(_mono_blocks(sound, frames, channels, name), rate, sample_rate_hz)


def _decodable_parts(source: BinaryIO, name: str) -> tuple[list[Any], str | None]:
    """What libsndfile is to open for ``source``, and what a decode of it should warn of (None: nothing):
    ``[source]``; for a chained Ogg file, a view of each link (:func:`ogg_links`: libsndfile alone reads
    only the first link and says the file ends there; more than :data:`MAX_OGG_LINKS` are refused);
    for a WAV file whose header was never finished, the file with the header's sizes as the file holds
    them (:func:`unfinished_wav`); for an MP3 file whose length libsndfile takes for less than its
    frames hold, the file with a frame count that says so (:func:`mp3_frames`). The warning is the
    decode's to give (:func:`_stream`), not a header read's, so a file read both ways warns once."""
    links = ogg_links(source, MAX_OGG_LINKS + 1)
    if len(links) > MAX_OGG_LINKS:
        raise NotAudioError(
            name, f"cannot decode audio: a chained Ogg file of more than {MAX_OGG_LINKS} links"
        )
    if len(links) > 1:
        return [View(source, [link]) for link in links], None
    for view in (_mp3_pieces, _wav_pieces):
        found = view(source, name)
        if found is not None:
            pieces, warning = found
            return [View(source, pieces)], warning
    return [source], None


def _wav_pieces(source: BinaryIO, name: str) -> tuple[list[Piece], str] | None:
    """For a WAV file whose header was never finished (:func:`unfinished_wav`), a :class:`View` of it
    with the sizes of what it holds, and the warning; None otherwise."""
    unfinished = unfinished_wav(source)
    if unfinished is None:
        return None
    declared, holds, pieces = unfinished
    return pieces, (
        f"{name}: the WAV header says {declared} bytes of audio, the file holds {holds} (a recording "
        "that was never finished: its header was not updated at the end); read to the end of the file"
    )


def _mp3_pieces(source: BinaryIO, name: str) -> tuple[list[Piece], str] | None:
    """:func:`~birdops.containers.mp3_pieces` of an MP3 file against the length libsndfile announces
    (it reads no further, so the rest would be lost), and the warning; None for every other file."""
    frames = mp3_frames(source)
    if frames is None:
        return None
    try:
        with _quiet_stderr(), sf.SoundFile(source) as sound:
            announced = int(sound.frames)
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError, TypeError):
        return None  # the decoder's refusal comes when it is opened again
    finally:
        source.seek(0)
    pieces = mp3_pieces(source, frames, announced)
    if pieces is None:
        return None
    return pieces, (
        f"{name}: the MP3 file says it lasts {announced} samples, its frames hold "
        f"{frames.audio_frames * frames.samples_per_frame} (files joined, or a stream without a Xing "
        "header); all are read"
    )


def _mono_blocks(
    sound: sf.SoundFile,
    frames: int,
    channels: int,
    name: str,
    ends_early: Callable[[int], AudioError | None] | None = None,
) -> Iterator[np.ndarray]:
    """The mono mix of ``sound`` in blocks of at most :data:`BLOCK_FRAMES` frames, each averaged over
    its channels; at most the header's ``frames`` (a header promising more than the file holds: a
    truncated file, whose frames present are kept). Where the data ends before ``frames``,
    ``ends_early(frames read)`` says whether that is damage to raise (:func:`_cut_short`)."""
    buffer = np.empty((BLOCK_FRAMES, channels), dtype=np.float32)  # (F, C), reused by every read
    left = frames
    while left > 0:
        wanted = min(BLOCK_FRAMES, left)
        try:
            with _quiet_stderr():
                read = _read_forward(sound, buffer[:wanted])
        except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as err:
            reason = getattr(err, "error_string", None) or str(err)
            raise TruncatedAudioError(
                name, f"cannot decode audio: truncated or corrupt data ({_clean_reason(reason)})"
            ) from err
        if read > 0:
            yield _mix_down(buffer[:read])  # (F,)
            left -= read
        if read < wanted:
            short = None if ends_early is None else ends_early(frames - left)
            if short is not None:
                raise short
            return


def _cut_short(
    source: Any, file_format: str, announced: int, rate_hz: int, name: str, read: int
) -> CutShortAudioError | None:
    """Whether audio that ended after ``read`` of the ``announced`` frames was cut short: only where the
    length is declared, not estimated -- an Ogg file (its last page's position) or an MP3 file whose
    Xing/Info tag counts more frames than the file holds (without the tag, the decoder's length is a
    guess from the first frame's bitrate). A few frames of slack: a decoder's delay and padding."""
    if announced - read <= MP3_MARGIN_FRAMES * MP3_FRAME_SAMPLES:
        return None
    if file_format in ("MP3", "MPEG"):  # soundfile names it MP3 (libsndfile: MPEG)
        position = source.tell()
        try:
            frames = mp3_frames(source)
        finally:
            source.seek(position)
        counted = None if frames is None or frames.tag_counts is None else frames.tag_counts[0]
        if frames is None or counted is None or counted <= frames.audio_frames + MP3_MARGIN_FRAMES:
            return None
    elif file_format != "OGG":
        return None
    return CutShortAudioError(
        name,
        f"the audio ends at {read / rate_hz:.1f} s of the {announced / rate_hz:.1f} s its header declares "
        "(a copy cut off, or damaged data the decoder passed over)",
    )


def _read_forward(sound: sf.SoundFile, out: np.ndarray) -> int:
    """Decode the next ``len(out)`` frames (at most) into ``out (F, C)`` float32, C-contiguous,
    from where the previous read stopped; returns how many were read.

    libsndfile's own read, not ``SoundFile.read``: that one seeks to the position it has just reached
    after every read (``SoundFile._cdata_io``), and libsndfile's MP3 seek restarts libmpg123 a few
    frames back with an empty bit reservoir. On a clean MP3 that rounds some samples differently
    (under 1e-6); next to a damaged frame it conceals the damage differently (0.38 of full scale on
    ``tests/test_audio.py``'s damaged MP3), so the blocks would not join to the whole-file read. A read
    that only moves forward decodes every frame once, in order, as ``sf.read`` and ``mpg123`` do.
    """
    pointer = sf._ffi.cast("float *", sf._ffi.from_buffer(out))
    read = int(sf._snd.sf_readf_float(sound._file, pointer, len(out)))
    error = int(sf._snd.sf_error(sound._file))
    if error:
        raise sf.LibsndfileError(error)
    return read


def _mix_down(block: np.ndarray) -> np.ndarray:
    """``block (F, C) -> (F,)``, the mean over channels, bit-identical to ``block.mean(axis=1)``: numpy
    sums fewer than :data:`_PAIRWISE_MIN` values in order, as the column sums here do (about 30x faster
    than its reduction over a short axis); more channels take numpy's pairwise mean itself."""
    channels = block.shape[1]
    if channels >= _PAIRWISE_MIN:
        out: np.ndarray = block.mean(axis=1)
        return out
    mono = block[:, 0].copy()
    for channel in range(1, channels):
        mono += block[:, channel]
    if channels > 1:
        mono /= channels
    return mono


def _checked(
    blocks: Iterable[np.ndarray],
    rate_hz: int,
    minimum_s: float,
    name: str,
    damage: list[AudioError] | None = None,
) -> Iterator[np.ndarray]:
    """``blocks`` as they come, refused at the first non-finite sample or damaged block (with a
    ``damage`` list and blocks before it, they end there: :func:`stream_audio`); after the last one,
    refused when they are too short or silent. No full-length temporary: each block's min and max
    say both."""
    samples = 0
    peak = 0.0
    try:
        for block in blocks:
            low, high = float(block.min()), float(block.max())  # NaN propagates through min and max
            if not (np.isfinite(low) and np.isfinite(high)):
                raise NonFiniteAudioError(name, "audio contains NaN or infinite samples")
            peak = max(peak, high, -low)
            samples += len(block)
            yield block
    except (TruncatedAudioError, NonFiniteAudioError) as err:
        if isinstance(err, CutShortAudioError) and damage is None and samples:
            log.warning("%s", err)  # a whole-file decode keeps what there is, as it always did
        elif damage is None or samples == 0:
            raise
        else:
            damage.append(err)
    if samples == 0:
        raise TruncatedAudioError(name, "no audio samples (empty or truncated file)")
    _check_length(samples / rate_hz, minimum_s, name)
    if peak < SILENCE_PEAK:
        raise SilentAudioError(name, "audio is silent")


def _check_length(seconds: float, minimum_s: float, name: str) -> None:
    if seconds < minimum_s:
        raise TooShortAudioError(
            name, f"{seconds * 1000:.1f} ms of audio; at least {minimum_s:g} s are needed"
        )


def _resampled(
    blocks: Iterable[np.ndarray], source_rate_hz: int, target_rate_hz: int
) -> Iterator[np.ndarray]:
    """``blocks`` through one streaming soxr resampler; joined, equal to :func:`resample` of the
    joined blocks. Empty pieces (the filter's delay at the start) are not yielded."""
    if source_rate_hz == target_rate_hz:
        yield from blocks
        return
    _check_rates(source_rate_hz, target_rate_hz)
    stream = soxr.ResampleStream(source_rate_hz, target_rate_hz, 1, dtype="float32", quality=RESAMPLE_QUALITY)
    for block in blocks:
        out = stream.resample_chunk(block)
        if len(out):
            yield out
    out = stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)  # the filter's tail
    if len(out):
        yield out


def resample(wave: np.ndarray, source_rate_hz: int, target_rate_hz: int) -> np.ndarray:
    """``wave (samples,)`` from ``source_rate_hz`` to ``target_rate_hz``: soxr at
    :data:`RESAMPLE_QUALITY` (anti-aliased), float32; the streamed decode gives the same samples."""
    if source_rate_hz == target_rate_hz:
        return wave.astype(np.float32, copy=False)
    _check_rates(source_rate_hz, target_rate_hz)
    out = soxr.resample(
        np.ascontiguousarray(wave, dtype=np.float32), source_rate_hz, target_rate_hz, quality=RESAMPLE_QUALITY
    )
    return np.asarray(out, dtype=np.float32)


def _check_rates(source_rate_hz: int, target_rate_hz: int) -> None:
    if source_rate_hz <= 0 or target_rate_hz <= 0:
        raise ValueError(f"sample rates must be positive, got {source_rate_hz} -> {target_rate_hz}")


def audio_files(folder: str | Path) -> list[Path]:
    """The audio files under ``folder`` (recursive, sorted): the types the decoder reads
    (:data:`AUDIO_EXTENSIONS`) and the common ones it refuses by name (:data:`FOREIGN_AUDIO`), any
    case of extension. Hidden files and folders are left out (names starting with a dot: the
    ``._NAME.WAV`` resource forks macOS writes next to each recording on a memory card, ``.Trash``)."""
    root = Path(folder)
    return sorted(
        path
        for path in root.rglob("*")
        if is_audio_name(path)
        and not any(part.startswith(".") for part in path.relative_to(root).parts)
        and path.is_file()
    )


def is_audio_name(path: str | Path) -> bool:
    """Whether the file's extension (any case) is an audio type: one the decoder reads or one it
    refuses by name (:data:`AUDIO_EXTENSIONS`, :data:`FOREIGN_AUDIO`)."""
    suffix = PurePath(path).suffix.lower()
    return suffix in AUDIO_EXTENSIONS or suffix in FOREIGN_AUDIO
