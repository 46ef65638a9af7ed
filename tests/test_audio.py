import io
import logging
import shutil
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from birdops.audio import (
    AUDIO_EXTENSIONS,
    BLOCK_FRAMES,
    FOREIGN_AUDIO,
    MAX_SECONDS,
    MAX_STREAM_SECONDS,
    AudioError,
    CutShortAudioError,
    NonFiniteAudioError,
    NotAudioError,
    SilentAudioError,
    TooLongAudioError,
    TruncatedAudioError,
    UnsupportedFormatError,
    audio_files,
    decode_bytes,
    header_frames,
    load_audio,
    probe,
    read_ahead,
    resample,
    stream_audio,
    stream_bytes,
)
from birdops.containers import mp3_frames, ogg_links, unfinished_wav


def tone(seconds: float, rate_hz: int, freq_hz: float = 1000.0) -> np.ndarray:
    t = np.arange(int(seconds * rate_hz)) / rate_hz
    return (0.5 * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


@pytest.mark.parametrize("ext", ["wav", "flac", "ogg", "mp3"])
def test_load_audio_decodes_and_resamples(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"a.{ext}"
    stereo = np.stack([tone(1.0, 32000), tone(1.0, 32000)], axis=1)
    sf.write(path, stereo, 32000)
    wave = load_audio(path, 16000)
    assert wave.dtype == np.float32 and wave.ndim == 1
    # mp3 encoders add priming samples; lossless formats keep the exact length
    assert abs(len(wave) - 16000) <= (1200 if ext == "mp3" else 0)
    spectrum = np.abs(np.fft.rfft(wave[2000:14000]))
    assert abs(np.argmax(spectrum) * 16000 / 12000 - 1000) < 5


@pytest.mark.parametrize(
    ("ext", "channels"),
    [(e, c) for e in ("wav", "flac", "ogg", "mp3") for c in (1, 2)]
    + [("wav", 5), ("flac", 7), ("wav", 8), ("wav", 11)],
)
@pytest.mark.parametrize("rate_hz", [22050, 16000, 32000])
def test_decoding_is_bit_identical_to_reading_the_whole_file(
    tmp_path: Path, ext: str, channels: int, rate_hz: int
) -> None:
    """The block-wise decoder gives exactly what reading every channel at once, averaging them and
    resampling gives (the pipeline's cached features depend on it); 7 s spans several blocks. MP3
    included: the blocks are read forward only, never re-sought (see the damaged MP3 below)."""
    path = tmp_path / f"a.{ext}"
    noise = np.random.default_rng(0).uniform(-0.3, 0.3, (7 * 32000, channels)).astype(np.float32)
    sf.write(path, noise + tone(7.0, 32000)[:, None] * np.linspace(1, 0.5, channels), 32000)
    whole, source_rate = sf.read(path, dtype="float32", always_2d=True)
    expected = resample(whole.mean(axis=1), source_rate, rate_hz)
    np.testing.assert_array_equal(load_audio(path, rate_hz), expected)


@pytest.mark.parametrize(
    ("ext", "source_rate_hz"), [("wav", 44100), ("flac", 11025), ("ogg", 48000), ("mp3", 44100)]
)
def test_streamed_blocks_join_to_the_whole_file_decode(tmp_path: Path, ext: str, source_rate_hz: int) -> None:
    """Streamed from the file or from its bytes, the blocks are the whole-file decode, bit for bit, and
    the streamed soxr resampler gives the one-shot :func:`resample` of the whole mono mix."""
    path = tmp_path / f"a.{ext}"
    seconds = 3.3 * BLOCK_FRAMES / source_rate_hz  # several blocks and a partial last one
    noise = np.random.default_rng(1).uniform(-0.3, 0.3, (int(seconds * source_rate_hz), 2)).astype(np.float32)
    sf.write(path, noise, source_rate_hz)
    blocks = list(stream_audio(path, 22050))
    assert len(blocks) >= 4 and max(len(b) for b in blocks) <= 2 * BLOCK_FRAMES * 22050 // source_rate_hz
    joined = np.concatenate(blocks)
    np.testing.assert_array_equal(joined, load_audio(path, 22050))
    np.testing.assert_array_equal(np.concatenate(list(stream_bytes(path.read_bytes(), 22050))), joined)
    whole, _ = sf.read(path, dtype="float32", always_2d=True)
    np.testing.assert_array_equal(joined, resample(whole.mean(axis=1), source_rate_hz, 22050))


def test_streamed_checks_refuse_nan_in_a_late_block_and_silence_at_the_end(tmp_path: Path) -> None:
    rate_hz = 16000
    wave = np.full(4 * BLOCK_FRAMES, 1e-6, dtype=np.float32)  # under the silence threshold throughout
    sf.write(tmp_path / "silent.wav", wave, rate_hz, subtype="FLOAT")
    stream = stream_audio(tmp_path / "silent.wav", 8000)
    assert len([next(stream) for _ in range(4)]) == 4  # every block is handed on ...
    with pytest.raises(SilentAudioError, match=r"silent\.wav: audio is silent"):
        next(stream)  # ... and the file is refused once its last block has shown no sound
    wave[3 * BLOCK_FRAMES + 10] = np.nan
    wave[:BLOCK_FRAMES] = 0.1
    sf.write(tmp_path / "nan.wav", wave, rate_hz, subtype="FLOAT")
    stream = stream_audio(tmp_path / "nan.wav", rate_hz)
    assert len([next(stream) for _ in range(3)]) == 3
    with pytest.raises(NonFiniteAudioError, match=r"nan\.wav: audio contains NaN"):
        next(stream)


def test_corrupt_empty_and_silent_files_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp3"
    bad.write_bytes(b"\x00not audio at all" * 10)
    with pytest.raises(AudioError, match=r"bad\.mp3: cannot decode"):
        load_audio(bad, 16000)
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(8000, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match=r"silent\.wav: audio is silent"):
        load_audio(silent, 16000)
    with pytest.raises(AudioError, match="empty file"):
        decode_bytes(b"", 16000, "upload.wav")


def test_a_recording_longer_than_an_hour_streams_and_one_longer_than_a_day_is_refused(tmp_path: Path) -> None:
    rate_hz = 1000  # a low rate keeps the files small; the limits are in seconds
    hour = tmp_path / "overnight.flac"
    seconds = int(MAX_SECONDS) + 10
    sf.write(hour, tone(seconds, rate_hz, freq_hz=100.0), rate_hz)
    with pytest.raises(TooLongAudioError, match=r"overnight\.flac: 3610\.0 s long; at most 3600 s"):
        load_audio(hour, rate_hz)  # a whole-file decode holds the file: an hour at most
    streamed = list(stream_audio(hour, rate_hz))  # streamed: one block at a time
    assert sum(len(block) for block in streamed) == seconds * rate_hz
    assert max(len(block) for block in streamed) <= BLOCK_FRAMES
    day = tmp_path / "two days.flac"
    with sf.SoundFile(day, "w", samplerate=rate_hz, channels=1, format="FLAC", subtype="PCM_16") as sound:
        for _ in range(int(MAX_STREAM_SECONDS) // 1000 + 1):  # digital silence compresses to nothing
            sound.write(np.zeros(1000 * rate_hz, dtype=np.int16))
    with pytest.raises(TooLongAudioError, match=r"two days\.flac: 87000\.0 s long; at most 86400 s"):
        next(stream_audio(day, rate_hz))  # refused from the header, before a block is decoded


def damaged_in_the_middle(path: Path, rate_hz: int, seconds: float, fmt: str) -> None:
    """A recording with 3 kB of random bytes over its middle (an SD card's bad sector)."""
    noise = 0.01 * np.random.default_rng(0).standard_normal(int(seconds * rate_hz)).astype(np.float32)
    sf.write(path, tone(seconds, rate_hz) + noise, rate_hz, format=fmt)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 3000] = np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("fmt", ["FLAC", "MP3"])
def test_a_stream_asked_to_ends_at_damage_part_way_with_the_audio_before_it(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"card.{fmt.lower()}"
    damaged_in_the_middle(path, 22050, 60.0, fmt)
    before: list[np.ndarray] = []
    with pytest.raises(
        TruncatedAudioError, match=r"card\.(flac|mp3): cannot decode audio: truncated or corrupt"
    ):
        for block in stream_audio(path, 22050):  # without a damage list: refused where the damage is
            before.append(block)
    damage: list[AudioError] = []
    kept = list(stream_audio(path, 22050, damage=damage))
    assert len(damage) == 1 and isinstance(damage[0], TruncatedAudioError) and str(path) in str(damage[0])
    assert 20 * 22050 < sum(len(b) for b in kept) < 40 * 22050  # about the first half
    # the same samples as the refused stream gave before the damage, and the resampler's tail
    np.testing.assert_array_equal(np.concatenate(kept)[: sum(map(len, before))], np.concatenate(before))
    if fmt == "FLAC":  # damaged from its start (libmpg123 resyncs past an MP3's): refused all the same
        data = bytearray(path.read_bytes())
        data[100:5000] = bytes(4900)
        path.write_bytes(bytes(data))
        with pytest.raises(TruncatedAudioError):
            list(stream_audio(path, 22050, damage=[]))


def test_non_finite_samples_part_way_end_a_stream_asked_to(tmp_path: Path) -> None:
    wave = tone(30.0, 16000)
    wave[5 * BLOCK_FRAMES + 7] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, wave, 16000, subtype="FLOAT")
    damage: list[AudioError] = []
    kept = np.concatenate(list(stream_audio(path, 16000, damage=damage)))
    assert len(kept) == 5 * BLOCK_FRAMES and [type(d) for d in damage] == [NonFiniteAudioError]
    np.testing.assert_array_equal(kept, wave[: 5 * BLOCK_FRAMES])  # the blocks before the bad one
    with pytest.raises(SilentAudioError):  # what is kept is checked like a whole stream
        silent_then_nan = np.zeros_like(wave)
        silent_then_nan[5 * BLOCK_FRAMES + 7] = np.nan
        sf.write(path, silent_then_nan, 16000, subtype="FLOAT")
        list(stream_audio(path, 16000, damage=[]))


# how libsndfile writes each type the decoder lists (format, subtype); .bwf is a WAV with a bext
# chunk, .aifc a compressed AIFF
WRITTEN_AS = {
    ".wav": ("WAV", "PCM_16"),
    ".wave": ("WAV", "FLOAT"),
    ".bwf": ("WAV", "PCM_24"),
    ".rf64": ("RF64", "PCM_16"),
    ".w64": ("W64", "PCM_16"),
    ".mp3": ("MP3", "MPEG_LAYER_III"),
    ".flac": ("FLAC", "PCM_16"),
    ".ogg": ("OGG", "VORBIS"),
    ".oga": ("OGG", "VORBIS"),
    ".opus": ("OGG", "OPUS"),
    ".aif": ("AIFF", "PCM_16"),
    ".aiff": ("AIFF", "PCM_32"),
    ".aifc": ("AIFF", "ULAW"),
    ".caf": ("CAF", "ALAC_16"),
    ".au": ("AU", "PCM_16"),
    ".snd": ("AU", "ULAW"),
    ".voc": ("VOC", "PCM_16"),
    ".mp2": ("ffmpeg", "mp2"),  # libsndfile decodes MPEG Layer II but encodes Layer III only
    ".mpa": ("ffmpeg", "mp2"),
}


@pytest.mark.parametrize("ext", sorted(AUDIO_EXTENSIONS))
def test_every_listed_type_decodes(tmp_path: Path, ext: str) -> None:
    assert set(WRITTEN_AS) == AUDIO_EXTENSIONS  # a type added to the list gets a file here
    path = tmp_path / f"recording{ext.upper()}"
    format_, subtype = WRITTEN_AS[ext]
    if format_ == "ffmpeg":
        if shutil.which("ffmpeg") is None:
            pytest.skip("ffmpeg is not installed (.ci/run installs it): it writes this type")
        source = tmp_path / "source.wav"
        sf.write(source, tone(1.0, 16000), 16000)
        codec = ["-c:a", subtype, "-f", subtype]
        subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(source), *codec, str(path)], check=True)
    else:
        sf.write(path, tone(1.0, 16000), 16000, format=format_, subtype=subtype)
    wave = load_audio(path, 16000)
    spectrum = np.abs(np.fft.rfft(wave[2000:14000]))
    assert abs(np.argmax(spectrum) * 16000 / 12000 - 1000) < 5


def test_a_foreign_type_is_refused_with_how_to_convert_it(tmp_path: Path) -> None:
    phone = tmp_path / "dawn chorus.M4A"
    phone.write_bytes(b"\x00\x00\x00\x1cftypM4A \x00\x00\x00\x00M4A mp42isom" + bytes(64))
    with pytest.raises(
        UnsupportedFormatError, match=r"dawn chorus\.M4A: cannot decode audio: \.m4a \(AAC"
    ) as err:
        load_audio(phone, 16000)
    assert err.value.kind == "unsupported_format" and "ffmpeg -i IN.m4a OUT.flac" in err.value.reason
    with pytest.raises(UnsupportedFormatError, match=r"upload\.wma: .*Windows Media Audio"):
        decode_bytes(b"0&\xb2u\x8ef\xcf\x11" + bytes(100), 16000, "upload.wma")
    bad = tmp_path / "bad.wav"  # a type it reads, damaged: the decoder's own reason, no conversion hint
    bad.write_bytes(b"RIFF" + bytes(60))
    with pytest.raises(AudioError, match=r"bad\.wav: cannot decode audio") as plain:
        load_audio(bad, 16000)
    assert plain.value.kind == "not_audio"
    with pytest.raises(UnsupportedFormatError, match=r"SM2_0001\.wac: .*Wildlife Acoustics") as wac:
        decode_bytes(b"WAac" + bytes(100), 16000, "SM2_0001.wac")  # ffmpeg does not read it either
    assert "Kaleidoscope" in wac.value.reason and "ffmpeg" not in wac.value.reason


def test_ogg_flac_is_refused_by_name_whatever_its_extension(tmp_path: Path) -> None:
    """libsndfile reads FLAC and Ogg but not FLAC in Ogg: said so, not "unknown error in flac decoder"."""
    page = b"OggS\x00\x02" + bytes(20) + b"\x01\x33" + b"\x7fFLAC\x01\x00\x00\x01fLaC" + bytes(40)
    for name in ("dawn.oga", "dawn.ogg", "dawn"):
        with pytest.raises(UnsupportedFormatError, match=rf"{name}: cannot decode audio: FLAC audio in an"):
            decode_bytes(page, 16000, name)
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed (.ci/run installs it): it writes a real Ogg FLAC file")
    source, ogg = tmp_path / "a.wav", tmp_path / "recorder.oga"
    sf.write(source, tone(1.0, 16000), 16000)
    subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(source), "-c:a", "flac", str(ogg)], check=True)
    with pytest.raises(UnsupportedFormatError, match=r"recorder\.oga: .*ffmpeg -i IN\.oga OUT\.flac"):
        load_audio(ogg, 16000)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed (.ci/run installs it)")
def test_a_real_aac_file_is_refused_by_name(tmp_path: Path) -> None:
    source, phone = tmp_path / "a.wav", tmp_path / "phone.m4a"
    sf.write(source, tone(1.0, 16000), 16000)
    subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(source), "-c:a", "aac", str(phone)], check=True)
    with pytest.raises(UnsupportedFormatError, match=r"phone\.m4a: cannot decode audio: \.m4a"):
        load_audio(phone, 16000)


def test_audio_files_lists_audio_types_and_leaves_hidden_ones_out(tmp_path: Path) -> None:
    for name in ("b.FLAC", "a.wav", "sub/c.caf", "sub/phone.m4a", "notes.txt", "._a.wav", ".Trash/d.wav"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "folder.wav").mkdir()  # a folder named like audio is not a file
    names = [p.relative_to(tmp_path).as_posix() for p in audio_files(tmp_path)]
    assert names == ["a.wav", "b.FLAC", "sub/c.caf", "sub/phone.m4a"]
    assert not AUDIO_EXTENSIONS & FOREIGN_AUDIO.keys()


def ogg_link(wave: np.ndarray, rate_hz: int, subtype: str) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, wave, rate_hz, format="OGG", subtype=subtype)
    return buffer.getvalue()


def chained_ogg(tmp_path: Path, subtype: str) -> tuple[Path, list[Path]]:
    """An Ogg file of three links (``cat a.ogg b.ogg c.ogg``: rates, channels and tones differ), and
    each link as a file of its own."""
    links = [
        ogg_link(tone(1.5, 16000, 440.0), 16000, subtype),
        ogg_link(np.stack([tone(2.0, 48000, 880.0)] * 2, axis=1), 48000, subtype),
        ogg_link(tone(1.0, 24000, 1760.0), 24000, subtype),
    ]
    parts = [tmp_path / f"link{i}.ogg" for i in range(len(links))]
    for part, payload in zip(parts, links, strict=True):
        part.write_bytes(payload)
    chain = tmp_path / "chain.ogg"
    chain.write_bytes(b"".join(links))
    return chain, parts


@pytest.mark.parametrize("subtype", ["VORBIS", "OPUS"])
def test_a_chained_ogg_file_decodes_every_link_in_turn(tmp_path: Path, subtype: str) -> None:
    chain, parts = chained_ogg(tmp_path, subtype)
    sizes = [part.stat().st_size for part in parts]
    with chain.open("rb") as handle:
        assert ogg_links(handle) == [(0, sizes[0]), (sizes[0], sum(sizes[:2])), (sum(sizes[:2]), sum(sizes))]
        assert handle.tell() == 0
    # each link decoded and resampled on its own, joined: what libsndfile alone gave was the first
    expected = np.concatenate([load_audio(part, 22050) for part in parts])
    assert np.array_equal(load_audio(chain, 22050), expected)
    assert np.array_equal(np.concatenate(list(stream_audio(chain, 22050))), expected)
    assert np.array_equal(decode_bytes(chain.read_bytes(), 22050, "chain.ogg"), expected)
    assert probe(chain)[0] == pytest.approx(4.5, abs=0.01)
    for seconds, freq_hz in ((0.5, 440.0), (2.5, 880.0), (4.0, 1760.0)):  # a tone of each link, in order
        middle = expected[int(seconds * 22050) :][:11025]
        assert abs(np.argmax(np.abs(np.fft.rfft(middle))) * 2 - freq_hz) < 5


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed (.ci/run installs it)")
def test_a_chained_ogg_file_lasts_what_ffmpeg_decodes(tmp_path: Path) -> None:
    chain, _ = chained_ogg(tmp_path, "VORBIS")
    pcm = subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-i", str(chain), "-ac", "1", "-ar", "16000", "-f", "f32le", "-"],
        check=True,
        capture_output=True,
    ).stdout
    # to 0.1 s: ffmpeg keeps some of the samples past a Vorbis link's last granule position (36 ms here)
    assert len(load_audio(chain, 16000)) == pytest.approx(len(pcm) // 4, abs=1600)


def test_the_links_of_a_chained_ogg_file_are_held_to_the_limits_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chain, parts = chained_ogg(tmp_path, "VORBIS")
    monkeypatch.setattr("birdops.audio.MAX_SECONDS", 4.0)  # each link is shorter, the chain longer
    for part in parts:
        load_audio(part, 16000)
    with pytest.raises(TooLongAudioError, match=r"chain\.ogg: 4\.5 s long; at most 4 s"):
        load_audio(chain, 16000)
    assert sum(len(block) for block in stream_audio(chain, 16000)) == 72000  # a stream's limit is a day
    assert ogg_links(io.BytesIO(parts[0].read_bytes())) == [(0, parts[0].stat().st_size)]
    assert ogg_links(io.BytesIO(b"RIFF" + bytes(60))) == []
    monkeypatch.setattr("birdops.audio.MAX_OGG_LINKS", 2)  # links are counted before any is opened
    with pytest.raises(NotAudioError, match=r"chain\.ogg: cannot decode audio: a chained Ogg file of more"):
        next(stream_audio(chain, 16000))
    assert len(ogg_links(io.BytesIO(chain.read_bytes()), most=2)) == 2


def wav_sizes(payload: bytes, riff_size: int, data_size: int) -> bytes:
    """A canonical 44-byte-header WAV with its RIFF and data sizes set."""
    assert payload[36:40] == b"data"
    sizes = struct.pack("<I", riff_size), struct.pack("<I", data_size)
    return payload[:4] + sizes[0] + payload[8:40] + sizes[1] + payload[44:]


@pytest.mark.parametrize(
    ("case", "data_size"),
    [("the header of an empty file (sizes 0)", 0), ("the sizes of the first write (Python's wave)", 32000)],
)
def test_a_wav_whose_header_was_never_finished_is_read_to_its_end(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, case: str, data_size: int
) -> None:
    """A recorder that lost power, a recording program that was killed: the audio is all there, the
    header's sizes were never updated. libsndfile alone reads what the header says (nothing, a second)."""
    finished = tmp_path / "finished.wav"
    sf.write(finished, tone(3.0, 16000), 16000, subtype="PCM_16")
    payload = wav_sizes(finished.read_bytes(), 36 + data_size, data_size)
    unfinished = tmp_path / "unfinished.wav"
    unfinished.write_bytes(payload)
    assert sf.info(unfinished).frames == data_size // 2
    expected = load_audio(finished, 22050)
    with caplog.at_level("WARNING", logger="birdops.audio"):
        assert np.array_equal(load_audio(unfinished, 22050), expected)
    said = f"unfinished.wav: the WAV header says {data_size} bytes of audio, the file holds 96000"
    assert said in caplog.text
    assert np.array_equal(np.concatenate(list(stream_audio(unfinished, 22050))), expected)
    assert np.array_equal(decode_bytes(payload, 22050, "upload.wav"), expected)
    caplog.clear()
    assert probe(unfinished)[0] == 3.0
    with unfinished.open("rb") as handle:
        assert header_frames(handle, "unfinished.wav") == (16000, 48000)
    assert "WAV header says" not in caplog.text  # a header read does not warn: the decode does, once
    if shutil.which("ffmpeg") is not None and data_size == 0:  # ffmpeg reads a size of 0 to the end too
        pcm = subprocess.run(
            ["ffmpeg", "-loglevel", "error", "-i", str(unfinished), "-f", "s16le", "-"],
            check=True,
            capture_output=True,
        ).stdout
        assert len(pcm) == 96000


def test_what_follows_a_finished_wav_s_data_is_not_read_as_audio(tmp_path: Path) -> None:
    """Chunks after the data (LIST, id3), zero padding to a card's cluster and tags appended as to an
    MP3 are not audio; a file cut off before the end of its data keeps what it holds."""
    finished = tmp_path / "finished.wav"
    sf.write(finished, tone(1.0, 16000), 16000, subtype="PCM_16")
    payload = finished.read_bytes()
    info = b"INFO" + b"ISFT" + struct.pack("<I", 6) + b"birds\x00"
    listed = payload + b"LIST" + struct.pack("<I", len(info)) + info
    listed = wav_sizes(listed, len(listed) - 8, 32000)
    tagged = payload + b"ID3\x04\x00\x00" + bytes(range(256)) * 40  # an ID3 tag appended as to an MP3
    cases = {
        "listed.wav": listed,
        "padded.wav": payload + bytes(8192),
        "tagged.wav": tagged,
        "tag-v1.wav": payload + b"TAG" + b"dawn chorus".ljust(125, b" "),
        "cut.wav": payload[:20044],
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with io.BytesIO(data) as handle:
            assert unfinished_wav(handle) is None
        assert len(load_audio(tmp_path / name, 16000)) == (10000 if name == "cut.wav" else 16000)


MPEG2_BITRATES_KBPS = (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)


def vbr_mp3_without_xing(tmp_path: Path, rate_hz: int, channels: int) -> Path:
    """12 s of variable-bitrate MP3 (3 s near silence: small frames, then noise: large ones) without the
    Xing frame that counts them, as streaming encoders write it: libmpg123 estimates the length from
    the first frame's bitrate."""
    rng = np.random.default_rng(0)
    noise = rng.normal(0.0, 0.1, (9 * rate_hz, channels)).astype(np.float32)
    quiet = np.repeat(0.001 * tone(3.0, rate_hz, 440.0)[:, None], channels, axis=1)
    buffer = io.BytesIO()
    sf.write(buffer, np.concatenate([quiet, noise]), rate_hz, format="MP3", bitrate_mode="VARIABLE")
    payload = buffer.getvalue()
    assert mp3_frames(io.BytesIO(payload)) is None  # its Xing tag counts the whole stream
    mpeg1 = rate_hz >= 32000
    side_info = (17 if channels == 1 else 32) if mpeg1 else (9 if channels == 1 else 17)
    assert payload[4 + side_info : 8 + side_info] == b"Xing"
    kbps = (MP3_BITRATES_KBPS if mpeg1 else MPEG2_BITRATES_KBPS)[payload[2] >> 4]
    first_frame_bytes = (144_000 if mpeg1 else 72_000) * kbps // rate_hz + ((payload[2] >> 1) & 1)
    path = tmp_path / "stream.mp3"
    path.write_bytes(payload[first_frame_bytes:])
    return path


@pytest.mark.parametrize(("rate_hz", "channels"), [(44100, 1), (22050, 2)])
def test_an_mp3_without_a_xing_frame_is_read_to_its_last_frame(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, rate_hz: int, channels: int
) -> None:
    path = vbr_mp3_without_xing(tmp_path, rate_hz, channels)
    plain = sf.read(path, dtype="float32", always_2d=True)[0].mean(axis=1)  # libsndfile alone stops early
    with path.open("rb") as handle:
        frames = mp3_frames(handle)
    spf = 1152 if rate_hz == 44100 else 576
    assert frames is not None and frames.tag is None and frames.samples_per_frame == spf
    assert len(plain) < 0.8 * frames.audio_frames * spf
    with caplog.at_level("WARNING", logger="birdops.audio"):
        wave = load_audio(path, rate_hz)
    assert f"stream.mp3: the MP3 file says it lasts {len(plain)} samples, its frames hold" in caplog.text
    # a Xing frame in front: every frame decoded, the decoder's delay of 529 samples left out
    assert len(wave) == frames.audio_frames * spf - 529
    np.testing.assert_array_equal(wave[: len(plain) - 529], plain[529:])
    assert np.array_equal(np.concatenate(list(stream_audio(path, rate_hz))), wave)
    assert np.array_equal(decode_bytes(path.read_bytes(), rate_hz, "upload.mp3"), wave)
    assert probe(path)[0] == pytest.approx(len(wave) / rate_hz)
    if shutil.which("mpg123") is not None:  # the command decodes every frame too (and keeps the delay)
        pcm = subprocess.run(["mpg123", "-q", "-s", str(path)], check=True, capture_output=True).stdout
        assert len(pcm) // (2 * channels) == len(wave) + 529


def test_mp3_files_joined_are_read_to_the_last_frame_of_the_last(tmp_path: Path) -> None:
    """``cat a.mp3 b.mp3``: the first file's Info tag counts its own frames only."""
    parts = [tmp_path / "a.mp3", tmp_path / "b.mp3"]
    for part, (seconds, freq_hz) in zip(parts, ((2.0, 440.0), (3.0, 1760.0)), strict=True):
        sf.write(part, tone(seconds, 44100, freq_hz), 44100, format="MP3")
    joined = tmp_path / "joined.mp3"
    joined.write_bytes(parts[0].read_bytes() + parts[1].read_bytes())
    assert sf.info(joined).frames == sf.info(parts[0]).frames  # libsndfile alone: the first file
    first = load_audio(parts[0], 44100)
    wave = load_audio(joined, 44100)
    assert abs(len(wave) - 5.0 * 44100) < 4 * 1152  # the second's tag frame and delays: a few frames
    np.testing.assert_array_equal(wave[: len(first) - 1152], first[:-1152])  # the first, as it was
    late = wave[int(4.0 * 44100) :][:11025]
    assert abs(np.argmax(np.abs(np.fft.rfft(late))) * 4 - 1760.0) < 10
    if shutil.which("mpg123") is not None:
        pcm = subprocess.run(["mpg123", "-q", "-s", str(joined)], check=True, capture_output=True).stdout
        assert len(pcm) // 2 == len(wave)


def test_the_header_of_mp3_files_joined_is_read_without_waiting_on_itself(tmp_path: Path) -> None:
    """``header_frames`` (the service's and ``birdops segments``' look at a file before decoding it)
    on an MP3 whose frames outnumber its tag: reading the frames quiets the decoder's stderr inside
    the header's own quiet block. A second thread's decode afterwards proves the lock was let go."""
    parts = [tmp_path / "a.mp3", tmp_path / "b.mp3"]
    for part, seconds in zip(parts, (1.0, 2.0), strict=True):
        sf.write(part, tone(seconds, 44100, 880.0), 44100, format="MP3")
    joined = tmp_path / "joined.mp3"
    joined.write_bytes(parts[0].read_bytes() + parts[1].read_bytes())

    found: list[Any] = []

    def in_a_thread(work: Callable[[], Any]) -> Any:
        # a daemon thread: a deadlock fails the test at the timeout instead of hanging the run
        found.clear()
        thread = threading.Thread(target=lambda: found.append(work()), daemon=True)
        thread.start()
        thread.join(timeout=60)
        assert found, "the decoder did not return within 60 s"
        return found[0]

    def header() -> tuple[int, int]:
        with joined.open("rb") as handle:
            return header_frames(handle, "joined.mp3")

    rate_hz, frames = in_a_thread(header)
    assert rate_hz == 44100 and abs(frames - 3.0 * 44100) < 4 * 1152  # both files' frames
    wave = in_a_thread(lambda: load_audio(joined, 44100))
    assert isinstance(wave, np.ndarray) and len(wave) > 2.9 * 44100


@pytest.mark.parametrize("kind", ["mp3 cut in half", "ogg damaged in the middle"])
def test_audio_that_ends_before_its_declared_length_is_named_as_damage(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An MP3 file whose Info tag counts twice the frames it holds (a copy cut off), an Ogg file whose
    pages the decoder skips past damaged bytes: libsndfile ends early without an error. A stream with a
    damage list ends there and names it; a whole-file decode keeps the same samples, with a warning."""
    fmt = "MP3" if kind.startswith("mp3") else "OGG"
    whole = tmp_path / f"whole.{fmt.lower()}"
    sf.write(whole, tone(12.0, 44100, 880.0), 44100, format=fmt)
    data = bytearray(whole.read_bytes())
    middle = len(data) // 2
    if fmt == "MP3":
        data = data[:middle]
    else:
        noise = np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8)
        data[middle : middle + 3000] = noise.tobytes()
    path = tmp_path / f"damaged.{fmt.lower()}"
    path.write_bytes(bytes(data))
    damage: list[AudioError] = []
    streamed = np.concatenate(list(stream_audio(path, 22050, damage=damage)))
    assert len(damage) == 1 and isinstance(damage[0], CutShortAudioError)
    message = str(damage[0])
    assert f"{path}: the audio ends at " in message and "of the 12.0 s its header declares" in message
    assert 2.0 < len(streamed) / 22050 < 11.0
    with caplog.at_level(logging.WARNING):
        np.testing.assert_array_equal(load_audio(path, 22050), streamed)  # kept, as it always was
    assert "its header declares" in caplog.text
    clean: list[AudioError] = []
    assert len(np.concatenate(list(stream_audio(whole, 22050, damage=clean)))) == 12 * 22050 and clean == []


# MPEG-1 Layer III bitrates (kbit/s) by the header's 4-bit index
MP3_BITRATES_KBPS = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
MP3_FRAME_SAMPLES = 1152


def mp3_frame_offsets(payload: bytes, rate_hz: int) -> list[int]:
    """Byte offsets of the frames of an MPEG-1 Layer III file without CRC (an ID3v2 tag skipped)."""
    offset = 0
    if payload[:3] == b"ID3":
        offset = 10 + ((payload[6] << 21) | (payload[7] << 14) | (payload[8] << 7) | payload[9])
    offsets = []
    while offset + 4 <= len(payload):
        header = payload[offset : offset + 4]
        assert header[0] == 0xFF and header[1] & 0xFE == 0xFA, f"no MPEG-1 Layer III frame at byte {offset}"
        offsets.append(offset)
        offset += 144_000 * MP3_BITRATES_KBPS[header[2] >> 4] // rate_hz + (header[2] >> 1 & 1)
    return offsets


def damage_mp3_frame(payload: bytes, frame_offset: int) -> bytes:
    """``payload`` with the mono side information of the frame at ``frame_offset`` damaged as a bit
    error would: zeroed, then granule 0's ``part2_3_length`` (bits 18-29) set to its maximum, more
    main data than the bit reservoir holds (libmpg123: "part2_3_length too large")."""
    damaged = bytearray(payload)
    side = frame_offset + 4  # after the 4-byte header; 17 bytes of side information for mono
    damaged[side : side + 17] = bytes(17)
    for bit in range(18, 30):
        damaged[side + bit // 8] |= 0x80 >> (bit % 8)
    return bytes(damaged)


def chirp_mp3(seconds: float, rate_hz: int) -> bytes:
    """A real MP3 (libsndfile's LAME writer, as the embedded corpus writes its MP3s): a warbling
    tone in noise, mono."""
    t = np.arange(int(seconds * rate_hz)) / rate_hz
    noise = np.random.default_rng(0).standard_normal(len(t))
    wave = 0.3 * np.sin(2 * np.pi * (2000 + 800 * np.sin(np.pi * t)) * t) + 0.05 * noise
    buffer = io.BytesIO()
    sf.write(buffer, wave.astype(np.float32), rate_hz, format="MP3")
    return buffer.getvalue()


def damaged_mp3s(tmp_path: Path, rate_hz: int) -> Iterator[tuple[int, Path, np.ndarray]]:
    """``(damaged frame, file, its clean decode)`` for each of the frames around the end of the first
    decoding block, damaged one per file."""
    clean = chirp_mp3(3.0, rate_hz)
    offsets = mp3_frame_offsets(clean, rate_hz)
    clean_wave, _ = sf.read(io.BytesIO(clean), dtype="float32")
    boundary_frame = BLOCK_FRAMES // MP3_FRAME_SAMPLES
    for frame in range(boundary_frame - 3, boundary_frame + 3):
        path = tmp_path / f"damaged-{frame}.mp3"
        path.write_bytes(damage_mp3_frame(clean, offsets[frame]))
        yield frame, path, clean_wave


def test_a_damaged_mp3_streams_to_the_whole_file_read(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """One damaged frame near a block boundary: the streamed blocks, the whole-file decode and the
    decode of its bytes all equal libsndfile's one read of the whole file, sample for sample. A reader
    that seeks back to its position after every block (soundfile's ``SoundFile.read``) restarted
    libmpg123 next to the damage and differed there by up to 7.7."""
    rate_hz = 44_100
    for frame, path, clean_wave in damaged_mp3s(tmp_path, rate_hz):
        capfd.readouterr()
        whole, _ = sf.read(path, dtype="float32")
        assert "part2_3_length" in capfd.readouterr().err  # libmpg123 found the damage ...
        assert np.abs(whole - clean_wave).max() > 0.1  # ... and it changed the sound
        blocks = list(stream_audio(path, rate_hz))
        assert len(blocks) == -(-len(whole) // BLOCK_FRAMES)
        np.testing.assert_array_equal(np.concatenate(blocks), whole, err_msg=f"frame {frame} damaged")
        np.testing.assert_array_equal(load_audio(path, rate_hz), whole)
        np.testing.assert_array_equal(np.concatenate(list(stream_bytes(path.read_bytes(), rate_hz))), whole)


NO_MPG123 = "needs the mpg123 command (apt-get install mpg123)"


@pytest.mark.skipif(shutil.which("mpg123") is None, reason=NO_MPG123)
def test_a_damaged_mp3_streams_to_what_mpg123_decodes(tmp_path: Path) -> None:
    rate_hz = 44_100
    for frame, path, _ in damaged_mp3s(tmp_path, rate_hz):
        command = ["mpg123", "--quiet", "--encoding", "f32", "--stdout", str(path)]  # mono float32
        reference = np.frombuffer(subprocess.run(command, capture_output=True, check=True).stdout, np.float32)
        streamed = np.concatenate(list(stream_audio(path, rate_hz)))
        np.testing.assert_array_equal(streamed, reference, err_msg=f"frame {frame} damaged")


def test_read_ahead_gives_the_same_blocks_and_raises_where_the_stream_did(tmp_path: Path) -> None:
    path = tmp_path / "long.flac"
    rng = np.random.default_rng(5)
    sf.write(path, (0.1 * rng.standard_normal(10 * 32000)).astype(np.float32), 32000)
    direct = list(stream_audio(path, 22050))
    ahead = list(read_ahead(stream_audio(path, 22050), samples=2))
    assert len(ahead) == len(direct) > 2 and all(
        np.array_equal(a, b) for a, b in zip(ahead, direct, strict=True)
    )

    def broken() -> Iterator[np.ndarray]:
        yield np.zeros(4, dtype=np.float32)
        raise AudioError("x.flac", "corrupt block")

    blocks = read_ahead(broken())
    assert next(blocks).shape == (4,)
    with pytest.raises(AudioError, match="corrupt block"):
        next(blocks)


def test_read_ahead_decodes_up_to_its_samples_ahead_and_no_further() -> None:
    made: list[int] = []

    def counted() -> Iterator[np.ndarray]:
        for index in range(100):
            made.append(index)
            yield np.full(10, index, dtype=np.float32)

    blocks = read_ahead(counted(), samples=35)
    assert next(blocks)[0] == 0
    # the thread queues blocks 1-4 (the one that reaches 35 samples is the last queued), decodes block
    # 5 and holds it until the consumer takes one
    deadline = time.monotonic() + 10
    while len(made) < 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    assert len(made) == 6
    assert [int(b[0]) for b in blocks] == list(range(1, 100))  # then every block, in order


def test_read_ahead_stops_and_closes_the_stream_when_its_consumer_stops() -> None:
    closed: list[bool] = []

    def endless() -> Iterator[np.ndarray]:
        try:
            while True:
                yield np.zeros(4, dtype=np.float32)
        finally:
            closed.append(True)

    blocks = read_ahead(endless(), samples=8)
    assert next(blocks).shape == (4,)
    blocks.close()  # the consumer is done (predict failed, a request was refused): no thread is left
    assert closed == [True]
