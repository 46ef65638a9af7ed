from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from birdops.audio import (
    BLOCK_FRAMES,
    AudioError,
    NonFiniteAudioError,
    SilentAudioError,
    decode_bytes,
    load_audio,
    read_ahead,
    resample,
    stream_audio,
    stream_bytes,
)


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
    resampling gives (the pipeline's cached features depend on it); 7 s spans several blocks. Mono MP3
    is the exception: libsndfile's MP3 decoder rounds reads of other sizes differently, by a few float32
    steps of the decoded samples, under 1e-6 of full scale (-120 dBFS) before and after resampling."""
    path = tmp_path / f"a.{ext}"
    noise = np.random.default_rng(0).uniform(-0.3, 0.3, (7 * 32000, channels)).astype(np.float32)
    sf.write(path, noise + tone(7.0, 32000)[:, None] * np.linspace(1, 0.5, channels), 32000)
    whole, source_rate = sf.read(path, dtype="float32", always_2d=True)
    expected = resample(whole.mean(axis=1), source_rate, rate_hz)
    decoded = load_audio(path, rate_hz)
    if ext == "mp3" and channels == 1:
        assert decoded.shape == expected.shape
        assert 0 < np.max(np.abs(decoded - expected)) <= 1e-6
    else:
        np.testing.assert_array_equal(decoded, expected)


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


def test_read_ahead_gives_the_same_blocks_and_raises_where_the_stream_did(tmp_path: Path) -> None:
    path = tmp_path / "long.flac"
    rng = np.random.default_rng(5)
    sf.write(path, (0.1 * rng.standard_normal(10 * 32000)).astype(np.float32), 32000)
    direct = list(stream_audio(path, 22050))
    ahead = list(read_ahead(stream_audio(path, 22050), depth=2))
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


def test_read_ahead_stops_and_closes_the_stream_when_its_consumer_stops() -> None:
    closed: list[bool] = []

    def endless() -> Iterator[np.ndarray]:
        try:
            while True:
                yield np.zeros(4, dtype=np.float32)
        finally:
            closed.append(True)

    blocks = read_ahead(endless(), depth=2)
    assert next(blocks).shape == (4,)
    blocks.close()  # the consumer is done (predict failed, a request was refused): no thread is left
    assert closed == [True]
