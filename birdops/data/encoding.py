"""Encode waveforms to the container formats xeno-canto serves, byte-for-byte reproducibly.

libsndfile writes MP3, WAV and FLAC deterministically, but an Ogg stream carries a random serial
number in every page; :func:`encode_audio` replaces it with one derived from the caller's ``serial``
and recomputes the page checksums, so the same waveform always gives the same bytes.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import soundfile as sf

# (libsndfile container, subtype) per file extension
_CONTAINERS: dict[str, tuple[str, str]] = {
    "mp3": ("MP3", "MPEG_LAYER_III"),
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
}
_BIT_REVERSED = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


def encode_audio(wave: np.ndarray, sample_rate_hz: int, fmt: str, serial: int = 0) -> bytes:
    """The bytes of a mono file holding ``wave`` (float32 ``(samples,)`` in [-1, 1]) in format ``fmt``.

    ``serial`` only matters for Ogg (the stream serial number, 32 bits).
    """
    if fmt not in _CONTAINERS:
        raise ValueError(f"unsupported audio format {fmt!r}; expected one of {', '.join(_CONTAINERS)}")
    container, subtype = _CONTAINERS[fmt]
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(wave, -1.0, 1.0), sample_rate_hz, format=container, subtype=subtype)
    data = buffer.getvalue()
    return set_ogg_serial(data, serial & 0xFFFFFFFF) if fmt == "ogg" else data


def set_ogg_serial(data: bytes, serial: int) -> bytes:
    """Rewrite the stream serial number of every page of a single-stream Ogg file, fixing checksums."""
    out = bytearray(data)
    position = 0
    while position < len(out):
        if out[position : position + 4] != b"OggS":
            raise ValueError(f"not an Ogg page at byte {position}")
        segments = out[position + 26]
        body = sum(out[position + 27 : position + 27 + segments])
        end = position + 27 + segments + body
        struct.pack_into("<I", out, position + 14, serial)
        struct.pack_into("<I", out, position + 22, 0)  # the checksum is computed with this field zeroed
        struct.pack_into("<I", out, position + 22, ogg_crc(bytes(out[position:end])))
        position = end
    return bytes(out)


def ogg_crc(data: bytes) -> int:
    """Ogg page checksum: CRC-32, polynomial 0x04C11DB7, MSB first, initial value 0, no final xor.

    zlib's CRC-32 is the bit-reflected form of the same polynomial with initial and final value ~0.
    Reflecting every byte, removing the ~0 terms (the CRC of as many zero bytes) and reflecting the
    result gives the Ogg form at C speed instead of a Python loop.
    """
    reflected = zlib.crc32(data.translate(_BIT_REVERSED)) ^ zlib.crc32(bytes(len(data)))
    return int(f"{reflected:032b}"[::-1], 2)
