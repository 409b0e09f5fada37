"""Audio loading and validation.

`load_audio` returns 16 kHz mono float32 for any file soundfile reads (WAV, FLAC, OGG, MP3, AIFF,
...), at any rate and channel count, optionally cropped; it decodes and resamples in blocks, so a
read costs little more than its result, and it never decodes more than `DECODE_LIMIT_S` of a file
at once. `inspect_audio` checks a file without keeping its samples (it streams in blocks, so
hours-long files cost no memory) and raises `AudioError` with one reason from `REASONS`.
`validate_manifest` runs that check over a manifest, fills in measured durations, and sorts
utterances into usable and rejected, so that preparing a corpus with a few bad files keeps going.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf
import soxr

from after.data.manifest import Manifest, Utterance
from after.errors import AudioError, quoted
from after.io import atomic_write_text, not_a_file

SAMPLE_RATE = 16_000
# A header claiming a rate outside these is lying (a 42 KB file "at 1 Hz" would be a 6-hour clip).
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 4_000, 768_000
MAX_DURATION_S = 600.0  # default of --max-duration: a clip longer than 10 minutes is no utterance
DECODE_LIMIT_S = 3600.0  # no read decodes more of one file than this (230 MB at 16 kHz)
MAX_PEAK = 100.0  # samples beyond +40 dB over full scale mean a wrongly scaled float file
LEVEL_FRAME_S = 0.05  # silence is judged on the loudest frame of this length

# reason -> what the user should do about it
REASONS: dict[str, str] = {
    "missing": "check the path, or re-run `after prepare` for the corpus",
    "unreadable": "check the file's permissions (it must be readable by this user)",
    "not_audio": "the file is not audio in any format soundfile reads; replace it or drop it",
    "corrupt": "the file is damaged (truncated or undecodable); re-export or re-download it",
    "empty": "the file holds no samples; re-export it or drop it",
    "too_short": "the clip is shorter than the minimum; drop it or lower --min-duration",
    "too_long": "the clip is longer than the maximum; cut it into utterances or raise "
    "--max-duration",
    "silent": "the clip is (near) digital silence; check the recording or lower --silence-dbfs",
    "nonfinite": "the file holds NaN or infinite samples; re-export it as 16-bit PCM",
    "out_of_range": "samples lie far beyond full scale (the file is scaled wrongly); re-export "
    "it as 16-bit PCM",
    "unknown_label": "the label is not one of the expected labels; fix the label or the label list",
    "bad_name": "rename it to a UTF-8 name, e.g. convmv -f latin1 -t utf-8 --notest -r DIR",
}

# First bytes of the containers soundfile can read: a file that starts otherwise is "not audio"
# rather than a damaged audio file.
_MAGIC = (b"RIFF", b"RIFX", b"RF64", b"fLaC", b"OggS", b"FORM", b"ID3", b".snd", b"caff", b"wvpk")
_BLOCK_FRAMES = 1 << 18


@dataclass(frozen=True, slots=True)
class AudioInfo:
    """What `inspect_audio` measured. `level_dbfs` is the RMS of the loudest `LEVEL_FRAME_S`
    frame (over all channels), relative to full scale: quiet speech has a loud part, silence has
    none."""

    path: str
    sample_rate: int
    channels: int
    num_frames: int
    duration_s: float
    level_dbfs: float


def _fail(path: str, reason: str, detail: str) -> AudioError:
    return AudioError(path, reason, detail, REASONS[reason])


def _classify_open_error(path: str, err: Exception) -> AudioError:
    """Turn a soundfile open error into a reason, looking at the file itself to tell them apart."""
    p = Path(path)
    if p.is_symlink() and not p.exists():
        return _fail(path, "missing", "a symlink that loops or points to nothing")
    if not p.exists():
        return _fail(path, "missing", "no such file")
    if p.is_dir():
        return _fail(path, "not_audio", "is a folder")
    try:
        with p.open("rb") as f:
            head = f.read(12)
    except OSError as e:
        return _fail(path, "unreadable", e.strerror or str(e))
    if not head:
        return _fail(path, "empty", "the file is 0 bytes")
    if head.startswith(_MAGIC) or head[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2"):
        return _fail(path, "corrupt", f"has an audio header but cannot be decoded ({err})")
    return _fail(path, "not_audio", "format not recognised")


def _wav_declared_bytes(path: str) -> tuple[int, int] | None:
    """For a RIFF/WAVE file: (bytes its `data` chunk declares, bytes actually present), else None.

    libsndfile silently reads what is there of a truncated WAV; comparing with the header tells us
    it was cut.
    """
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"RIFF" or (f.read(4), f.read(4))[1] != b"WAVE":
                return None
            size = os.fstat(f.fileno()).st_size
            while True:
                header = f.read(8)
                if len(header) < 8:
                    return None
                chunk, length = header[:4], struct.unpack("<I", header[4:])[0]
                if chunk == b"data":
                    # Streaming writers leave the size unknown (0xFFFFFFFF); libsndfile reads on.
                    return None if length == 0xFFFFFFFF else (length, size - f.tell())
                f.seek(length + (length & 1), os.SEEK_CUR)
    except OSError:
        return None


def _open(path: str) -> sf.SoundFile:
    problem = not_a_file(path)
    if problem is not None and "NUL" in problem:
        raise _fail(path, "missing", problem)
    if problem is not None and problem.endswith("not a regular file"):
        raise _fail(path, "not_audio", problem)  # reading a FIFO or a device could block forever
    try:
        f = sf.SoundFile(path)
    except PermissionError as e:
        raise _fail(path, "unreadable", e.strerror or "permission denied") from None
    except (sf.SoundFileError, OSError, RuntimeError, TypeError, ValueError) as e:
        raise _classify_open_error(path, e) from None
    if not MIN_SAMPLE_RATE <= f.samplerate <= MAX_SAMPLE_RATE:
        f.close()
        raise _fail(
            path,
            "corrupt",
            f"the header claims a sample rate of {f.samplerate} Hz; audio has "
            f"{MIN_SAMPLE_RATE:,} to {MAX_SAMPLE_RATE:,} Hz",
        )
    return f


def inspect_audio(
    path: str | os.PathLike[str],
    *,
    min_duration_s: float = 0.25,
    silence_dbfs: float = -60.0,
    max_duration_s: float | None = MAX_DURATION_S,
) -> AudioInfo:
    """Check that a file is usable speech audio; raise `AudioError` with a reason otherwise.

    Reads the file in blocks (constant memory). Checks in order: exists, is a regular file and
    readable, is audio with a plausible sample rate, not truncated, has samples, at most
    `max_duration_s` long (None: any length), decodes to the end, no NaN/inf, no samples far beyond
    full scale, at least `min_duration_s` long, and its loudest `LEVEL_FRAME_S` above
    `silence_dbfs` (whole-clip RMS would call quiet speech with long pauses silent).
    """
    p = os.fspath(path)
    with _open(p) as f:
        sample_rate, channels, frames = f.samplerate, f.channels, f.frames
        declared = _wav_declared_bytes(p)
        if declared is not None and declared[0] > declared[1]:
            raise _fail(
                p,
                "corrupt",
                f"truncated: header declares {declared[0]} data bytes, found {declared[1]}",
            )
        if frames == 0:
            raise _fail(p, "empty", "0 samples")
        duration = frames / sample_rate
        if max_duration_s is not None and duration > max_duration_s:
            raise _fail(p, "too_long", f"{duration:.1f} s > {max_duration_s:g} s")
        frame = max(1, round(LEVEL_FRAME_S * sample_rate))
        loudest, decoded = 0.0, 0
        try:
            blocks = f.blocks(
                blocksize=frame * max(1, _BLOCK_FRAMES // frame), dtype="float64", always_2d=True
            )
            for block in blocks:
                _check_samples(p, block)
                loudest = max(loudest, _loudest_frame_power(block, frame))
                decoded += len(block)
        except (sf.SoundFileError, RuntimeError) as e:
            raise _fail(p, "corrupt", f"decoding stopped after {decoded} frames ({e})") from None
    if duration < min_duration_s:
        raise _fail(p, "too_short", f"{duration:.3f} s < {min_duration_s} s")
    level = 10 * math.log10(loudest) if loudest > 0 else -math.inf
    if level < silence_dbfs:
        raise _fail(
            p, "silent", f"its loudest {LEVEL_FRAME_S:g} s is at {level:.1f} dBFS < {silence_dbfs}"
        )
    return AudioInfo(p, sample_rate, channels, frames, duration, level)


def _check_samples(path: str, x: np.ndarray) -> None:
    if not np.isfinite(x).all():
        raise _fail(path, "nonfinite", "contains NaN or infinite samples")
    peak = float(np.abs(x).max(initial=0.0))
    if peak > MAX_PEAK:
        raise _fail(path, "out_of_range", f"samples reach {peak:.3g}; full scale is 1")


def _loudest_frame_power(block: np.ndarray, frame: int) -> float:
    """The largest mean square over consecutive `frame`-long frames of a (T, C) block (the last
    frame may be shorter)."""
    full = len(block) // frame * frame
    powers = np.square(block[:full]).reshape(-1, frame * block.shape[1]).mean(axis=1)
    tail = np.square(block[full:]).mean() if full < len(block) else 0.0
    return float(max(powers.max(initial=0.0), tail))


Crop = Literal["start", "center", "random"]


def load_audio(
    path: str | os.PathLike[str],
    *,
    sample_rate: int = SAMPLE_RATE,
    max_duration_s: float | None = None,
    crop: Crop = "start",
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Load a file as mono float32 at `sample_rate`, shape (num_samples,).

    Channels are averaged. With `max_duration_s`, only that much is read (from the start, the
    centre, or a random offset drawn from `rng`), so long files are never decoded whole; without
    it, a file longer than `DECODE_LIMIT_S` is refused (`too_long`). Decoding, downmixing and
    resampling go block by block, so memory is about the size of the result. Raises `AudioError`
    for unusable files.
    """
    p = os.fspath(path)
    with _open(p) as f:
        sr, frames = f.samplerate, f.frames
        start, stop = 0, frames
        if max_duration_s is not None and frames > (n := math.ceil(max_duration_s * sr)):
            if crop == "center":
                start = (frames - n) // 2
            elif crop == "random":
                if rng is None:
                    raise ValueError("crop='random' needs an rng")
                start = int(rng.integers(0, frames - n + 1))
            stop = start + n
        elif frames > DECODE_LIMIT_S * sr:
            raise _fail(
                p,
                "too_long",
                f"{frames / sr:.0f} s; nothing decodes more than {DECODE_LIMIT_S:g} s of a file "
                "at once",
            )
        return _decode(f, p, start, stop, sample_rate)


def audio_windows(
    path: str | os.PathLike[str], window_s: float
) -> Iterator[tuple[float, float, np.ndarray]]:
    """A file of any length as consecutive windows of equal length, at most `window_s` each:
    (start s, end s, 16 kHz mono float32 samples). Only one window is in memory at a time."""
    p = os.fspath(path)
    with _open(p) as f:
        sr, frames = f.samplerate, f.frames
        count = max(1, math.ceil(frames / (window_s * sr)))
        bounds = [round(k * frames / count) for k in range(count + 1)]
        for start, stop in itertools.pairwise(bounds):
            yield start / sr, stop / sr, _decode(f, p, start, stop, SAMPLE_RATE)


def _decode(f: sf.SoundFile, path: str, start: int, stop: int, sample_rate: int) -> np.ndarray:
    """Frames [start, stop) of an open file as mono float32 at `sample_rate`, decoded, mixed down
    and resampled block by block."""
    resampler = None
    if f.samplerate != sample_rate:
        resampler = soxr.ResampleStream(f.samplerate, sample_rate, 1, dtype="float32", quality="HQ")
    parts, left = [], stop - start
    try:
        f.seek(start)
        while left > 0:
            block = f.read(min(_BLOCK_FRAMES, left), dtype="float32", always_2d=True)
            if not len(block):
                break  # the file ends before its header said
            left -= len(block)
            mono = block.mean(axis=1) if block.shape[1] > 1 else block[:, 0]
            _check_samples(path, mono)
            parts.append(mono if resampler is None else resampler.resample_chunk(mono))
    except (sf.SoundFileError, RuntimeError) as e:
        raise _fail(path, "corrupt", f"cannot decode ({e})") from None
    if not parts:
        raise _fail(path, "empty", "0 samples")
    if resampler is not None:
        parts.append(resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)


# ---- manifests -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rejection:
    """An utterance left out of a manifest, and why."""

    id: str
    path: str
    reason: str
    detail: str

    @property
    def fix(self) -> str:
        return REASONS[self.reason]


@dataclass(frozen=True)
class ValidationReport:
    usable: Manifest
    rejected: list[Rejection]


def check_utterance(
    u: Utterance,
    *,
    min_duration_s: float = 0.25,
    silence_dbfs: float = -60.0,
    max_duration_s: float | None = MAX_DURATION_S,
    labels: Iterable[str] | None = None,
) -> Utterance | Rejection:
    """The utterance with its measured duration, or the reason it cannot be used."""
    if not (_is_utf8(u.path) and _is_utf8(u.id)):  # manifests and messages are UTF-8 text
        return Rejection(
            _printable(u.id), _printable(u.path), "bad_name", "the file name is not valid UTF-8"
        )
    if labels is not None and u.label is not None and u.label not in set(labels):
        return Rejection(
            u.id, u.path, "unknown_label", f"label {quoted(u.label)} not in {sorted(labels)}"
        )
    try:
        info = inspect_audio(
            u.path,
            min_duration_s=min_duration_s,
            silence_dbfs=silence_dbfs,
            max_duration_s=max_duration_s,
        )
    except AudioError as e:
        return Rejection(u.id, u.path, e.reason, e.detail)
    return dataclasses.replace(u, duration_s=round(info.duration_s, 4))


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _printable(text: str) -> str:
    """A name with undecodable bytes (kept by Python as surrogates) shown as escapes."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def validate_manifest(
    manifest: Manifest,
    *,
    min_duration_s: float = 0.25,
    silence_dbfs: float = -60.0,
    max_duration_s: float | None = MAX_DURATION_S,
    labels: Iterable[str] | None = None,
    num_workers: int = 4,
    on_item: Callable[[], None] | None = None,
) -> ValidationReport:
    """Check every utterance's audio (in parallel threads; libsndfile releases the GIL).

    Returns the usable utterances, in manifest order, with `duration_s` measured, and the
    rejections.
    """
    allowed = None if labels is None else sorted(labels)

    def one(u: Utterance) -> Utterance | Rejection:
        result = check_utterance(
            u,
            min_duration_s=min_duration_s,
            silence_dbfs=silence_dbfs,
            max_duration_s=max_duration_s,
            labels=allowed,
        )
        if on_item is not None:
            on_item()
        return result

    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        results = list(pool.map(one, manifest))
    usable = [r for r in results if isinstance(r, Utterance)]
    rejected = [r for r in results if isinstance(r, Rejection)]
    return ValidationReport(Manifest(usable, labels=manifest.label_set), rejected)


def write_rejections(path: str | os.PathLike[str], rejected: list[Rejection]) -> Path:
    """Write rejections as JSONL (id, path, reason, detail, fix), atomically."""
    rows = [
        json.dumps(
            {"id": r.id, "path": r.path, "reason": r.reason, "detail": r.detail, "fix": r.fix}
        )
        for r in rejected
    ]
    return atomic_write_text(path, "".join(row + "\n" for row in rows))


def clip_duration(u: Utterance) -> float:
    """`u.duration_s`, else read from the file header (no decoding); 0.0 if it cannot be read
    (the clip's own loading then reports why)."""
    if u.duration_s is not None:
        return u.duration_s
    try:
        return float(sf.info(u.path).duration)
    except (sf.SoundFileError, RuntimeError, OSError):
        return 0.0
