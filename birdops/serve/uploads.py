"""An upload, from its bytes to its window scores: the client's file name made safe for messages,
the duration checked from the file's header before anything is decoded and again on the decoded
samples (``max_audio_seconds``), then decoded from memory block by block as its windows are
classified, so memory does not grow with the audio's length. Decoder messages are cleaned of Python
object reprs before a client sees them."""

from __future__ import annotations

import dataclasses
import io
import logging
import re
from collections.abc import Iterator
from typing import cast

import numpy as np
import onnxruntime as ort
import soundfile as sf

from birdops.audio import HEADERLESS_RATE_HZ, AudioError, header_frames, stream_bytes
from birdops.serve.inference import Classifier, WindowScores
from birdops.serve.queue import BudgetedSession, InferenceBudget
from birdops.serve.settings import ServeSettings

log = logging.getLogger(__name__)

DISPLAY_NAME_CHARS = 100


class AudioTooLong(AudioError):
    """The upload decodes to more audio than the server accepts."""


# "<_io.BytesIO object at 0x7f...>" and the like: decoder messages name the in-memory file so
OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")


def clean_detail(message: str) -> str:
    """A message fit for a client: no Python object reprs (addresses of in-memory files)."""
    return OBJECT_REPR.sub("the upload", message)


def display_name(filename: str | None) -> str:
    """The client's file name as a label for messages: last path component, printable characters,
    at most ``DISPLAY_NAME_CHARS``. It is never used as a path."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable())[:DISPLAY_NAME_CHARS]
    return name or "upload"


def audio_seconds(payload: bytes, name: str) -> float:
    """The duration the file's headers announce (every link of a chained Ogg file), without decoding it."""
    try:
        rate_hz, frames = header_frames(io.BytesIO(payload), name)
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError, TypeError) as err:
        # the decoder's refusal says why in words (a type birdops does not read, with how to convert
        # it); libsndfile's own names an in-memory file and a format it does not recognise
        next(iter(stream_bytes(payload, HEADERLESS_RATE_HZ, name)), None)
        raise AudioError(name, f"cannot decode audio: {clean_detail(str(err))}") from err
    return frames / rate_hz if rate_hz > 0 else 0.0


def check_duration(seconds: float, max_seconds: float, name: str) -> None:
    if seconds > max_seconds:
        raise AudioTooLong(
            name, f"audio is {seconds:.1f} s long; this server accepts at most {max_seconds:g} s"
        )


def upload_blocks(
    payload: bytes,
    sample_rate_hz: int,
    max_seconds: float,
    name: str,
    window_seconds: float | None = None,
    damage: list[AudioError] | None = None,
) -> Iterator[np.ndarray]:
    """The upload decoded from memory block by block (:func:`birdops.audio.stream_bytes`): its duration
    checked from the header before anything is decoded, then on the decoded samples as they come.
    Every failure is an :class:`AudioError` (a decoder's unexpected exception on odd bytes included);
    what the consumer of the blocks raises is its own. With a ``damage`` list, an upload damaged part
    way ends at the damage, which the list receives (:func:`birdops.audio.stream_audio`)."""
    try:
        check_duration(audio_seconds(payload, name), max_seconds, name)
        blocks = stream_bytes(payload, sample_rate_hz, name, window_seconds, damage)
        samples = 0
        for block in blocks:
            samples += len(block)
            check_duration(samples / sample_rate_hz, max_seconds, name)
            yield block
    except AudioError:
        raise
    except Exception as err:  # a decoder bug on one odd upload is still the upload's problem
        log.warning("%s: unexpected decode error %s: %s", name, type(err).__name__, err)
        raise AudioError(name, f"cannot decode audio: {type(err).__name__}") from err


def classify_upload(
    classifier: Classifier,
    settings: ServeSettings,
    payload: bytes,
    name: str,
    budget: InferenceBudget | None = None,
    embeddings: bool = False,
) -> WindowScores:
    """Decode and classify an upload (blocking), streamed: the windows run as the blocks are decoded,
    so memory does not grow with the audio's length; with a ``budget``, its runs keep to it; with
    ``embeddings``, each window's embedding comes too."""
    damage: list[AudioError] = []
    rate_hz, window_s = classifier.sample_rate_hz, classifier.window_seconds
    blocks = upload_blocks(payload, rate_hz, settings.max_audio_seconds, name, window_s, damage)
    if budget is not None:
        if budget.expired:
            raise budget.error()
        session = cast(ort.InferenceSession, BudgetedSession(classifier.session, budget))
        classifier = dataclasses.replace(classifier, session=session)
    result = classifier.predict_stream(blocks, settings.hop_seconds, settings.batch_size, embeddings)
    return result.stopped_at(damage)
