"""Views of audio files whose headers mislead the decoder (libsndfile), so that it reads what they hold.

Byte-level reading of three containers, with nothing decoded (the standard library only; ``birdops.audio``
opens the views):

- a chained Ogg file (:func:`ogg_links`): links of one logical stream after another (``cat a.ogg
  b.ogg``, a stream recorder's output); libsndfile reads the first and says the file ends there;
- a WAV file whose header was never finished (:func:`unfinished_wav`): a recorder that lost power, a
  program that was killed, left sizes of 0 or of its first write; libsndfile reads what they say;
- an MP3 file that says it is shorter than its frames are (:func:`mp3_frames`, :func:`mp3_pieces`):
  a variable-bitrate stream without a Xing frame, whose length libmpg123 guesses from the first
  frame's bitrate, or files joined with ``cat``, whose first Info tag counts its own frames;
  libsndfile reads no further than that length.

A :class:`View` is the file made of pieces: byte ranges of it and bytes of its own (a link, a header
with other sizes, a frame put in front).
"""

from __future__ import annotations

import bisect
import io
import itertools
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

Piece = tuple[int, int] | bytes  # a byte range [start, end) of the file, or bytes of a view's own

# a logical stream's first page: capture pattern, version 0, the begin-of-stream flag, granule position 0
_OGG_BOS_PAGE = b"OggS\x00\x02" + bytes(8)
MAX_OGG_LINKS = 1024  # links of a chained Ogg file (a stream recorder's tracks); more are refused
_WAV_PADDING_PROBE = 4096  # bytes after a WAV's data that tell padding (zeros) from unannounced audio
_WAV_MAX_CHUNKS = 1024  # chunks of a WAV file walked to find its data (real files have a few)
# MPEG audio Layer III: bitrates (kbit/s) by index, MPEG-1 and MPEG-2/2.5; sample rates by version
_MP3_BITRATES = {
    True: (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    False: (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_MP3_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
# where a Xing/Info tag starts after the frame header: (MPEG-1, mono) -> the side information's size
_XING_OFFSETS = {(True, False): 32, (True, True): 17, (False, False): 17, (False, True): 9}
_MP3_RESYNC_BYTES = 65536  # how far past damage the next frames are looked for
MP3_MARGIN_FRAMES = 3  # frames a decoder may leave out (its delay, the encoder's padding)
_TRAILING_TAGS = (b"ID3", b"TAG", b"APETAGEX")  # ID3v2, ID3v1 and APE tags, appended without a chunk


@dataclass(frozen=True)
class Mp3Frames:
    """What the frames of an MPEG Layer III stream hold (:func:`mp3_frames`)."""

    first: int  # offset of the first frame (after an ID3v2 tag)
    header: bytes  # its 4 header bytes
    audio_frames: int  # frames a decoder turns into audio: all but a Xing/Info frame first
    samples_per_frame: int
    tag: int | None  # offset of the first frame's Xing/Info tag, if it has one
    tag_counts: tuple[int, int] | None  # its (frames, bytes) (bytes -1: not counted); None: no frames
    end: int  # where the last frame ends


def mp3_frames(source: BinaryIO) -> Mp3Frames | None:
    """The frames of an MP3 file, counted by walking their headers (ID3v2 tags between them skipped,
    a damaged stretch passed by finding the next two frames in a row, as libmpg123 resyncs), or None
    for a file that does not start as MP3 (an ID3v2 tag, then a Layer III frame) or whose Xing/Info
    tag already counts its frames and bytes (within 1%). ``source`` is left at its start."""
    try:
        first = _id3_end(source, 0)
        source.seek(first)
        head = source.read(4)
        frame = _mp3_frame(head)
        if frame is None:
            return None
        key, _, samples = frame
        size = source.seek(0, io.SEEK_END)
        tag = first + 4 + _XING_OFFSETS[key[0] == 3, key[2] == 3]
        source.seek(tag)
        xing = source.read(16)
        has_tag = xing[:4] in (b"Xing", b"Info")
        counted = _xing_counts(xing) if has_tag else None
        if counted is not None and abs(counted[1] - (size - first)) <= 0.01 * (size - first):
            return None  # the tag counts the frames and bytes of the whole stream
        header = head
        count, position = 0, first
        while position < size:
            source.seek(position)
            head = source.read(10)
            frame = _mp3_frame(head[:4])
            if frame is not None and frame[0] == key:
                count, position = count + 1, position + frame[1]
            elif head[:3] == b"ID3":
                position = _id3_end(source, position)
            else:
                found = _mp3_sync(source, position + 1, key)
                if found is None:
                    break
                position = found
        audio = count - 1 if has_tag else count
        return Mp3Frames(first, header, audio, samples, tag if has_tag else None, counted, position)
    finally:
        source.seek(0)


def mp3_pieces(source: BinaryIO, frames: Mp3Frames, announced: int) -> list[Piece] | None:
    """For an MP3 file whose ``frames`` (:func:`mp3_frames`) hold more than the ``announced`` length a
    decoder takes from it (libmpg123's estimate from the first frame's bitrate, or a Xing/Info tag of
    the first of files joined with ``cat``), the pieces of a :class:`View` of it that says how many
    they are: the tag's counts patched, or a Xing frame put in front of the first frame (a decoder then
    leaves out its 529 samples of delay, as for any file with the tag); None otherwise."""
    spf = frames.samples_per_frame
    if frames.audio_frames * spf <= announced + MP3_MARGIN_FRAMES * spf:
        return None
    size = source.seek(0, io.SEEK_END)
    source.seek(0)
    if frames.tag is None:
        return [(0, frames.first), _xing_frame(frames), (frames.first, size)]
    if frames.tag_counts is None:
        return None  # a tag without a frame count: nothing to patch
    patches = {frames.tag + 8: struct.pack(">I", frames.audio_frames)}
    if frames.tag_counts[1] >= 0:
        patches[frames.tag + 12] = struct.pack(">I", min(frames.end - frames.first, 2**32 - 1))
    return patched(size, patches)


def _mp3_frame(head: bytes) -> tuple[tuple[int, int, int], int, int] | None:
    """``((version, sample rate index, channel mode), frame bytes, samples)`` of an MPEG audio Layer III
    frame header (4 bytes); None when ``head`` is not one (free or bad bitrate, reserved fields)."""
    if len(head) < 4 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return None
    version, layer = (head[1] >> 3) & 3, (head[1] >> 1) & 3
    bitrate, rate, padding = head[2] >> 4, (head[2] >> 2) & 3, (head[2] >> 1) & 1
    if version == 1 or layer != 1 or bitrate in (0, 15) or rate == 3:
        return None
    mpeg1 = version == 3
    kbps, rate_hz = _MP3_BITRATES[mpeg1][bitrate], _MP3_RATES[version][rate]
    return (
        (version, rate, head[3] >> 6),
        (144_000 if mpeg1 else 72_000) * kbps // rate_hz + padding,
        (1152 if mpeg1 else 576),
    )


def _mp3_sync(source: BinaryIO, start: int, key: tuple[int, int, int]) -> int | None:
    """The first offset from ``start`` (within :data:`_MP3_RESYNC_BYTES`) of two frames of stream
    ``key`` in a row."""
    data = _read_at(source, start, _MP3_RESYNC_BYTES)
    index = data.find(b"\xff")
    while index >= 0:
        frame = _mp3_frame(data[index : index + 4])
        if frame is not None and frame[0] == key:
            after = _mp3_frame(_read_at(source, start + index + frame[1], 4))
            if after is not None and after[0] == key:
                return start + index
        index = data.find(b"\xff", index + 1)
    return None


def _id3_end(source: BinaryIO, position: int) -> int:
    """Where an ID3v2 tag at ``position`` ends (its header's synchsafe size, and footer); ``position``
    when there is none."""
    head = _read_at(source, position, 10)
    if len(head) < 10 or head[:3] != b"ID3":
        return position
    size = (head[6] & 0x7F) << 21 | (head[7] & 0x7F) << 14 | (head[8] & 0x7F) << 7 | (head[9] & 0x7F)
    return position + 10 + size + (10 if head[5] & 0x10 else 0)


def _xing_counts(tag: bytes) -> tuple[int, int] | None:
    """``(frames, bytes)`` of a Xing/Info tag (``bytes`` -1 when it has none); None without frames."""
    flags = struct.unpack(">I", tag[4:8])[0] if len(tag) >= 16 else 0
    if not flags & 1:
        return None
    frames = struct.unpack(">I", tag[8:12])[0]
    return frames, struct.unpack(">I", tag[12:16])[0] if flags & 2 else -1


def _xing_frame(frames: Mp3Frames) -> bytes:
    """A Xing frame of the stream of ``frames``' first frame (its header without CRC or padding, the
    frame silent) counting its audio frames: what LAME puts in front of a stream."""
    b0, b1, b2, b3 = frames.header
    offset = 4 + _XING_OFFSETS[(b1 >> 3) & 3 == 3, b3 >> 6 == 3]  # MPEG-1?, mono?
    for bitrate in range(b2 >> 4, 15):  # the first frame's bitrate, or the lowest that holds the tag
        head = bytes([b0, b1 | 1, bitrate << 4 | b2 & 0x0D, b3])  # no CRC, no padding
        frame = _mp3_frame(head)
        if frame is not None and frame[1] >= offset + 12:
            break
    assert frame is not None  # the first frame's stream, at its highest bitrate at the latest
    body = bytearray(frame[1])
    body[:4] = head
    body[offset : offset + 12] = b"Xing" + struct.pack(">II", 1, frames.audio_frames)
    return bytes(body)


def _read_at(source: BinaryIO, position: int, count: int) -> bytes:
    source.seek(position)
    return source.read(count)


def unfinished_wav(source: BinaryIO) -> tuple[int, int, list[Piece]] | None:
    """For a RIFF WAVE file whose header was never finished -- its ``data`` chunk announces fewer bytes
    (often 0) than follow it to the end of the file, and those are not further chunks or zero padding:
    a recorder that lost power, a recording program that was killed (Python's ``wave`` writes the
    sizes of its first write and corrects them on closing); at least :data:`_WAV_PADDING_PROBE` bytes
    more, not chunks, zeros or tags -- ``(bytes announced, bytes held, pieces)``: the file with RIFF
    and data sizes that say what it holds, as the pieces of a :class:`View`. ``None`` for every
    other file. ``source`` is left at its start."""
    try:
        source.seek(0)
        riff = source.read(12)
        if len(riff) < 12 or riff[:4] != b"RIFF" or riff[8:12] != b"WAVE":
            return None
        size = source.seek(0, io.SEEK_END)
        position = 12
        for _ in range(_WAV_MAX_CHUNKS):  # the chunks, to the data chunk
            if position + 8 > size:
                return None
            source.seek(position)
            chunk_id, chunk_size = struct.unpack("<4sI", source.read(8))
            if chunk_id == b"data":
                break
            position += 8 + chunk_size + (chunk_size & 1)
        else:
            return None
        start = position + 8
        holds = size - start
        if chunk_size >= holds or chunk_size == 0xFFFFFFFF:  # all there (or cut off), or "to the end"
            return None
        after = start + chunk_size + (chunk_size & 1)
        if size - after < _WAV_PADDING_PROBE or _chunks_to_the_end(source, after, size):
            return None  # a few bytes (a tag), or chunks (LIST, id3)
        excess = source.read(_WAV_PADDING_PROBE)
        if not any(excess) or excess.startswith(_TRAILING_TAGS):
            return None  # zero padding to a card's cluster, or tags appended as they are to an MP3
        data_size = holds if holds < 2**32 else 0xFFFFFFFF  # the largest says "to the end"
        riff_size = size - 8 if size - 8 < 2**32 else 0xFFFFFFFF
        patches = {4: struct.pack("<I", riff_size), position + 4: struct.pack("<I", data_size)}
        return chunk_size, holds, patched(size, patches)
    finally:
        source.seek(0)


def _chunks_to_the_end(source: BinaryIO, position: int, size: int) -> bool:
    """Whether ``source`` holds well-formed RIFF chunks (an ASCII id and a size) from ``position`` to
    exactly its end (a last chunk of odd size may lack its pad byte), or more than
    :data:`_WAV_MAX_CHUNKS` of them; ``source`` is left at ``position``."""
    start = position
    for _ in range(_WAV_MAX_CHUNKS):
        if position >= size:
            break
        source.seek(position)
        header = source.read(8)
        if len(header) < 8 or not all(32 <= c < 127 for c in header[:4]):
            break
        chunk_size = struct.unpack("<I", header[4:])[0]
        position += 8 + chunk_size + (chunk_size & 1)
    else:
        position = size
    source.seek(start)
    return position in (size, size + 1)


def ogg_links(source: BinaryIO, most: int | None = None) -> list[tuple[int, int]]:
    """The byte ranges ``[start, end)`` of the links of an Ogg file: one for a file of one logical
    stream (or of several multiplexed from its start), one more for each stream that starts after
    the earlier ones (``cat a.ogg b.ogg``, a stream recorder's chained output); none for a file that
    does not start as Ogg. A stream starts with a begin-of-stream page (flag 2, granule position and
    page number 0: 14 fixed bytes and 4 more, no accident in compressed data), found by a search of
    the bytes (a file of millions of tiny pages costs what a large one does); those right after one
    another are multiplexed, one link. At most ``most`` links; ``source`` is left at its start."""
    try:
        source.seek(0)
        if source.read(4) != b"OggS":
            return []
        starts, bos_end = [0], _ogg_page_end(source, 0)
        for position in _find_all(source, _OGG_BOS_PAGE):
            source.seek(position + 18)
            if position == 0 or source.read(4) != bytes(4):  # page number 0
                continue
            if position != bos_end:  # after another stream's pages, not beside its first page
                if most is not None and len(starts) >= most:
                    break
                starts.append(position)
            bos_end = _ogg_page_end(source, position)
        end = source.seek(0, io.SEEK_END)
    finally:
        source.seek(0)
    return [(start, stop) for start, stop in zip(starts, [*starts[1:], end], strict=True)]


def _ogg_page_end(source: BinaryIO, position: int) -> int:
    """Where the Ogg page at ``position`` ends: its 27-byte header, segment table and segments."""
    source.seek(position + 26)
    count = source.read(1)
    table = source.read(count[0]) if count else b""
    return position + 27 + len(table) + sum(table)


def _find_all(source: BinaryIO, pattern: bytes, chunk_bytes: int = 1 << 20) -> Iterator[int]:
    """The offsets of ``pattern`` in ``source``, in order, read a chunk at a time (the caller may seek
    in between: each chunk is read from where the previous one ended)."""
    offset, carry = 0, b""
    while True:
        source.seek(offset)
        chunk = source.read(chunk_bytes)
        if not chunk:
            return
        data, base = carry + chunk, offset - len(carry)
        found = data.find(pattern)
        while found >= 0:
            yield base + found
            found = data.find(pattern, found + 1)
        offset += len(chunk)
        carry = data[-(len(pattern) - 1) :]


class View(io.RawIOBase):
    """A read-only, seekable file made of ``pieces``, one after the other: byte ranges ``(start, end)``
    of ``source`` and ``bytes`` of their own (a link of a chained file, a header with other sizes, a
    frame put in front). Several may share ``source``: each keeps its own position and seeks ``source``
    there before it reads."""

    def __init__(self, source: BinaryIO, pieces: Sequence[Piece]) -> None:
        super().__init__()
        self._source, self._pieces, self._position = source, list(pieces), 0
        sizes = [len(piece) if isinstance(piece, bytes) else piece[1] - piece[0] for piece in self._pieces]
        self._starts = [0, *itertools.accumulate(sizes)]  # where each piece starts in the view; the end

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._starts[-1]}[whence]
        self._position = max(0, base + offset)
        return self._position

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._position < self._starts[-1]:
            index = bisect.bisect_right(self._starts, self._position) - 1
            piece, skip = self._pieces[index], self._position - self._starts[index]
            count = min(len(view) - done, self._starts[index + 1] - self._position)
            if isinstance(piece, bytes):
                view[done : done + count] = piece[skip : skip + count]
            else:
                self._source.seek(piece[0] + skip)
                count = int(self._source.readinto(view[done : done + count]))  # type: ignore[attr-defined]
                if count == 0:  # the source is shorter than it was
                    break
            done += count
            self._position += count
        return done


def patched(size: int, patches: dict[int, bytes]) -> list[Piece]:
    """The pieces of a :class:`View` of ``size`` bytes of a source with ``patches`` (``{offset: bytes}``,
    apart from each other) read instead of what it holds there."""
    pieces: list[Piece] = []
    position = 0
    for offset, patch in sorted(patches.items()):
        pieces += [(position, offset), patch]
        position = offset + len(patch)
    return [*pieces, (position, size)]
